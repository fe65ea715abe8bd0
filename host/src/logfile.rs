//! An append-only log file that follows rotation, for the alert file output and the action
//! audit log. logrotate's default `create` mode renames the file and expects the writer to
//! start a new one; a writer that keeps its descriptor writes on into `audit.jsonl.1` forever,
//! and after the next rotation into a deleted file. So before writing, at most once per check
//! interval, the file at the path is compared with the open one (device and inode) and the path
//! is reopened when they differ or it is gone. `copytruncate` needs nothing: writes are
//! `O_APPEND`, so they land at the new end.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An append-mode file reopened by path after rotation. Nothing written is lost: until the
/// check sees the rotation, lines go to the renamed file, which logrotate keeps.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
    /// (device, inode) of `file`.
    identity: (u64, u64),
    check_every: Duration,
    last_check: Instant,
    /// The last byte written was not a newline: a rotation now would split a line.
    mid_line: bool,
}

impl LogFile {
    /// Opens `path` for appending, creating it when missing. `check_every` bounds how often a
    /// write looks for a rotation (zero: before every write).
    pub fn open(path: &Path, check_every: Duration) -> io::Result<LogFile> {
        let (file, identity) = open_append(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            identity,
            check_every,
            last_check: Instant::now(),
            mid_line: false,
        })
    }

    /// Reopens the path when it no longer names the open file. A failed reopen (say the
    /// directory went too) keeps the old file, so the line is still written somewhere, and
    /// is logged; the next check tries again.
    fn follow_rotation(&mut self) {
        if self.last_check.elapsed() < self.check_every {
            return;
        }
        self.last_check = Instant::now();
        let current = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
        if current.as_ref().ok() == Some(&self.identity) {
            return;
        }
        match open_append(&self.path) {
            Ok((file, identity)) => {
                tracing::info!(path = %self.path.display(), "log file rotated; writing to the new file");
                self.file = file;
                self.identity = identity;
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "log file rotated but cannot be reopened; still writing to the old one");
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<(File, (u64, u64))> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let meta = file.metadata()?;
    Ok((file, (meta.dev(), meta.ino())))
}

impl Write for LogFile {
    /// A `BufWriter` above hands its buffer over in `write` calls that may stop mid-line: the
    /// rotation is only followed at a line boundary, so no line is split across two files.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.mid_line {
            self.follow_rotation();
        }
        let n = self.file.write(buf)?;
        if let Some(last) = buf.get(..n).and_then(<[u8]>::last) {
            self.mid_line = *last != b'\n';
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn follows_a_rename_and_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = LogFile::open(&path, Duration::ZERO).unwrap();
        log.write_all(b"one\n").unwrap();
        // logrotate `create`: rename, then the writer must start a new file.
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        log.write_all(b"two\n").unwrap();
        assert_eq!(read(&dir.path().join("audit.jsonl.1")), "one\n");
        assert_eq!(read(&path), "two\n");
        // Removed outright: recreated.
        std::fs::remove_file(&path).unwrap();
        log.write_all(b"three\n").unwrap();
        assert_eq!(read(&path), "three\n");
    }

    #[test]
    fn copytruncate_needs_no_reopen_and_appends_at_the_new_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        let mut log = LogFile::open(&path, Duration::ZERO).unwrap();
        log.write_all(b"one\n").unwrap();
        std::fs::copy(&path, dir.path().join("alerts.jsonl.1")).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        log.write_all(b"two\n").unwrap();
        assert_eq!(read(&path), "two\n");
    }

    /// A rotation seen in the middle of a line waits for its end.
    #[test]
    fn a_line_is_never_split_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        let mut log = LogFile::open(&path, Duration::ZERO).unwrap();
        log.write_all(b"first half").unwrap();
        std::fs::rename(&path, dir.path().join("alerts.jsonl.1")).unwrap();
        log.write_all(b" second half\n").unwrap();
        log.write_all(b"next\n").unwrap();
        assert_eq!(
            read(&dir.path().join("alerts.jsonl.1")),
            "first half second half\n"
        );
        assert_eq!(read(&path), "next\n");
    }

    #[test]
    fn checks_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        let mut log = LogFile::open(&path, Duration::from_secs(3600)).unwrap();
        std::fs::rename(&path, dir.path().join("alerts.jsonl.1")).unwrap();
        log.write_all(b"one\n").unwrap();
        // Not checked yet: the line went to the renamed file, not lost.
        assert_eq!(read(&dir.path().join("alerts.jsonl.1")), "one\n");
        assert!(!path.exists());
    }

    #[test]
    fn a_failed_reopen_keeps_writing_to_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("audit.jsonl");
        let mut log = LogFile::open(&path, Duration::ZERO).unwrap();
        let moved = dir.path().join("logs.old");
        std::fs::rename(&sub, &moved).unwrap();
        log.write_all(b"kept\n").unwrap();
        assert_eq!(read(&moved.join("audit.jsonl")), "kept\n");
    }
}
