//! The one parser of `/proc/<pid>/mountinfo` (proc(5)), for everything that needs the mount
//! table: the cgroup v2 mount (`event::container`), the executable filesystems the exec check
//! marks (`actions::fanotify`) and the kernel device of a mount (`actions::enforce_ebpf`).
//!
//! A line is `id parent major:minor root mount-point mount-options [optional...] - fstype
//! source super-options`: six fixed fields, zero or more optional fields (`shared:N`,
//! `master:N`, ...) ended by a lone `-`, then three more. Fields are separated by single
//! spaces; the kernel writes space, tab, newline and backslash inside a field as `\ooo`
//! (octal), which is undone here for the paths and strings.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// The calling process's mount table.
pub const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

#[derive(Debug, thiserror::Error)]
pub enum MountinfoError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mountinfo line {line_no} is malformed ({reason}): {line:?}")]
    Malformed {
        /// 1-based line number in the text.
        line_no: usize,
        line: String,
        reason: &'static str,
    },
}

/// One mount (one mountinfo line), escapes undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount id (`statx`'s `stx_mnt_id`).
    pub id: u64,
    pub parent: u64,
    /// The superblock's device (`st_dev` of files there, except on btrfs and a few others).
    pub major: u32,
    pub minor: u32,
    /// The directory of the filesystem this mount shows.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,noexec,...`).
    pub options: String,
    /// Optional fields (`shared:5`, `master:1`, ...), possibly none.
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

impl Mount {
    /// The kernel's internal encoding of the device (`super_block.s_dev`).
    pub fn kernel_dev(&self) -> u32 {
        palisade_common::kernel::kernel_dev(self.major, self.minor)
    }

    /// Whether per-mount option `name` (e.g. `noexec`) is set.
    pub fn has_option(&self, name: &str) -> bool {
        self.options.split(',').any(|o| o == name)
    }
}

/// Parses one line; `line_no` (1-based) only names it in the error.
pub fn parse_line(line: &str, line_no: usize) -> Result<Mount, MountinfoError> {
    let malformed = |reason| MountinfoError::Malformed {
        line_no,
        line: line.to_owned(),
        reason,
    };
    let fields: Vec<&str> = line.split(' ').collect();
    // The separator is the first lone `-` after the six fixed fields (an optional field is
    // `tag[:value]`, never `-`; escaped fields never contain a space).
    let sep = fields
        .iter()
        .skip(6)
        .position(|f| *f == "-")
        .map(|p| p + 6)
        .ok_or_else(|| malformed("no ` - ` separator after six fields"))?;
    let [id, parent, dev, root, mount_point, options] = [0, 1, 2, 3, 4, 5].map(|i| fields[i]);
    let tail = &fields[sep + 1..];
    let [fstype, source, super_options] = match tail {
        [a, b, c, ..] => [*a, *b, *c],
        _ => return Err(malformed("fewer than three fields after the separator")),
    };
    let (major, minor) = dev
        .split_once(':')
        .ok_or_else(|| malformed("device is not major:minor"))?;
    let num = |s: &str, what| s.parse::<u64>().map_err(|_| malformed(what));
    let num32 = |s: &str, what| s.parse::<u32>().map_err(|_| malformed(what));
    Ok(Mount {
        id: num(id, "mount id is not a number")?,
        parent: num(parent, "parent id is not a number")?,
        major: num32(major, "device major is not a number")?,
        minor: num32(minor, "device minor is not a number")?,
        root: PathBuf::from(OsString::from_vec(unescape(root))),
        mount_point: PathBuf::from(OsString::from_vec(unescape(mount_point))),
        options: text(options),
        optional: fields[6..sep].iter().map(|f| text(f)).collect(),
        fstype: text(fstype),
        source: text(source),
        super_options: text(super_options),
    })
}

/// Parses a whole mountinfo text; the first malformed line is an error naming it (the kernel
/// never writes one, so it means this is not a mountinfo text).
pub fn parse(text: &str) -> Result<Vec<Mount>, MountinfoError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| parse_line(l, i + 1))
        .collect()
}

/// The calling process's mounts ([`SELF_MOUNTINFO`]). The kernel writes bytes other than
/// space, tab, newline and backslash raw, so one mount point that is not UTF-8 (any user can
/// make one with a FUSE mount) must not make the whole table unreadable: such bytes become
/// U+FFFD, that mount's paths then name nothing (lookups on it fail and it is skipped), and
/// every other mount reads as before.
pub fn read_self() -> Result<Vec<Mount>, MountinfoError> {
    let bytes = std::fs::read(SELF_MOUNTINFO).map_err(|source| MountinfoError::Read {
        path: PathBuf::from(SELF_MOUNTINFO),
        source,
    })?;
    parse(&String::from_utf8_lossy(&bytes))
}

/// `statx(2)` of `path` relative to `dirfd` (the one raw call behind a file's mount id and
/// device, for block-exec identities and the exec check's mount points).
pub(crate) fn statx(
    dirfd: std::os::fd::RawFd,
    path: &std::ffi::CStr,
    flags: i32,
    mask: u32,
) -> std::io::Result<libc::statx> {
    // SAFETY: all-zero is a valid `statx` (plain integers).
    #[expect(unsafe_code, reason = "zeroed plain-data struct")]
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    #[expect(unsafe_code, reason = "statx has no safe wrapper in std")]
    // SAFETY: `path` is NUL-terminated and outlives the call; `stx` is writable; the kernel
    // checks `dirfd`.
    let rc = unsafe { libc::statx(dirfd, path.as_ptr(), flags, mask, &mut stx) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stx)
}

/// The filesystem type (`f_type`, a magic number such as `BPF_FS_MAGIC`) of the filesystem
/// holding `path`, from `statfs(2)`.
pub(crate) fn filesystem_magic(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: all-zero is a valid `statfs` (plain integers).
    #[expect(unsafe_code, reason = "zeroed plain-data struct")]
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    #[expect(unsafe_code, reason = "statfs has no safe wrapper in std")]
    // SAFETY: `c` is NUL-terminated and outlives the call; `st` is writable.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // `f_type` is signed on some targets; the magics are 32-bit patterns.
    Ok(st.f_type as u32 as u64)
}

/// `s` with `\ooo` escapes undone; a backslash not followed by three octal digits stays.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                // `\777` does not fit a byte; the kernel never writes it.
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn text(s: &str) -> String {
    String::from_utf8_lossy(&unescape(s)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_of_a_line() {
        let m = parse_line(
            "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
            1,
        )
        .unwrap();
        assert_eq!(
            m,
            Mount {
                id: 36,
                parent: 35,
                major: 98,
                minor: 0,
                root: PathBuf::from("/mnt1"),
                mount_point: PathBuf::from("/mnt2"),
                options: "rw,noatime".into(),
                optional: vec!["master:1".into()],
                fstype: "ext3".into(),
                source: "/dev/root".into(),
                super_options: "rw,errors=continue".into(),
            }
        );
        assert_eq!(m.kernel_dev(), 98 << 20);
        assert!(m.has_option("noatime") && !m.has_option("noexec") && !m.has_option("no"));
    }

    #[test]
    fn optional_fields_none_or_several() {
        let none = parse_line("25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro", 1).unwrap();
        assert!(none.optional.is_empty());
        assert_eq!(none.fstype, "tmpfs");
        let many = parse_line(
            "26 25 0:23 / /a rw shared:5 master:2 propagate_from:3 unbindable - cgroup2 cgroup2 rw",
            1,
        )
        .unwrap();
        assert_eq!(
            many.optional,
            ["shared:5", "master:2", "propagate_from:3", "unbindable"]
        );
        assert_eq!(
            (many.fstype.as_str(), many.source.as_str()),
            ("cgroup2", "cgroup2")
        );
    }

    #[test]
    fn escapes_are_undone() {
        let m = parse_line(
            r"40 1 8:1 /dir\040x /mnt/a\040b\011c\134d\012e rw - fuse.my\040fs my\134src rw",
            1,
        )
        .unwrap();
        assert_eq!(m.root, PathBuf::from("/dir x"));
        assert_eq!(m.mount_point, PathBuf::from("/mnt/a b\tc\\d\ne"));
        assert_eq!(m.fstype, "fuse.my fs");
        assert_eq!(m.source, "my\\src");
        // A mount point that is itself ` - ` does not end the fixed fields.
        let tricky = parse_line(r"41 1 8:1 / /\040-\040 rw - ext4 /dev/x rw", 1).unwrap();
        assert_eq!(tricky.mount_point, PathBuf::from("/ - "));
        // Not an escape: a trailing or non-octal backslash stays.
        assert_eq!(unescape(r"/p\"), b"/p\\");
        assert_eq!(unescape(r"/p\08x"), b"/p\\08x");
        // Non-UTF-8 bytes survive in paths.
        let raw = parse_line(r"42 1 8:1 / /\377 rw - ext4 /dev/x rw", 1).unwrap();
        assert_eq!(
            raw.mount_point,
            PathBuf::from(OsString::from_vec(b"/\xff".to_vec()))
        );
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        let text = "25 24 0:22 / /tmp rw - tmpfs tmpfs rw\nnot a mountinfo line\n";
        let err = parse(text).unwrap_err();
        match &err {
            MountinfoError::Malformed { line_no, line, .. } => {
                assert_eq!((*line_no, line.as_str()), (2, "not a mountinfo line"));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(err.to_string().contains("not a mountinfo line"), "{err}");
        for (line, why) in [
            ("1 2 0:1 / /x rw tmpfs tmpfs rw", "separator"),
            ("1 2 0:1 / /x - tmpfs tmpfs rw", "separator"),
            ("1 2 0:1 / /x rw - tmpfs tmpfs", "fewer than three"),
            ("1 2 01 / /x rw - tmpfs tmpfs rw", "major:minor"),
            ("1 2 0:x / /x rw - tmpfs tmpfs rw", "minor"),
            ("x 2 0:1 / /x rw - tmpfs tmpfs rw", "mount id"),
        ] {
            let e = parse_line(line, 7).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("line 7"), "{line:?}: {e}");
        }
    }

    #[test]
    fn reads_this_process_mounts() {
        let mounts = read_self().unwrap();
        let root = mounts
            .iter()
            .find(|m| m.mount_point == std::path::Path::new("/"))
            .expect("a root mount");
        assert!(root.id > 0);
        assert!(mounts.iter().any(|m| m.fstype == "proc"));
    }
}
