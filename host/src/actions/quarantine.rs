//! The `quarantine-file` actuator: moves a file into a root-only quarantine directory, where
//! the copy is owned by root with mode 0000, beside a JSON metadata record (original path,
//! sha256, owner, mode, times, alert, action); release restores it byte-identical with its
//! owner, mode and times. A move within one filesystem is a rename; across filesystems it is
//! copy, fsync, unlink. It only ever touches regular files, never follows a symlink, never
//! overwrites anything on restore, and never quarantines its own directory's contents.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::audit::{now_ns, rfc3339};
use super::{ActionError, ActionRequest, ActiveAction, Actuator, ExecContext, Outcome};

/// Default quarantine directory (the `actions.quarantine_dir` default).
pub const DEFAULT_QUARANTINE_DIR: &str = "/var/lib/palisade/quarantine";

/// The metadata record written beside each quarantined file as `<action id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineRecord {
    pub version: u32,
    pub action_id: String,
    pub alert_id: String,
    pub responder: String,
    /// Where the file was, and where restore puts it back.
    pub original_path: PathBuf,
    /// The quarantined copy's file name inside the quarantine directory.
    pub stored_as: String,
    /// Lower-case hex sha256 of the contents; checked again before restoring.
    pub sha256: String,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (including setuid/setgid/sticky) as an octal string, e.g. "0644".
    pub mode: String,
    /// Modification and access times, ns since the Unix epoch.
    pub mtime_ns: i64,
    pub atime_ns: i64,
    /// Links the file had; more than 1 means its contents stay reachable through the others.
    pub nlink: u64,
    /// When it was quarantined (RFC 3339) and the same instant in ns since the Unix epoch.
    pub quarantined_at: String,
    pub ts_ns: u64,
}

impl QuarantineRecord {
    fn mode_bits(&self) -> Option<u32> {
        u32::from_str_radix(&self.mode, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct QuarantineActuator {
    dir: PathBuf,
}

impl QuarantineActuator {
    /// Quarantines into `dir` (created 0700 on first use).
    pub fn new(dir: impl Into<PathBuf>) -> QuarantineActuator {
        QuarantineActuator { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the quarantine directory if needed and makes it root-only (0700). A symlink or
    /// a non-directory there is refused rather than followed.
    fn ensure_dir(&self) -> Result<(), ActionError> {
        let failed = |what: &str, e: io::Error| {
            ActionError::Failed(format!(
                "quarantine directory {}: {what}: {e}",
                self.dir.display()
            ))
        };
        match fs::symlink_metadata(&self.dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(ActionError::Failed(format!(
                    "quarantine directory {} is not a directory",
                    self.dir.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.dir).map_err(|e| failed("cannot create", e))?;
            }
            Err(e) => return Err(failed("cannot inspect", e)),
        }
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| failed("cannot make it 0700", e))
    }

    /// Moves `path` into quarantine; returns the record (also written to disk) and the record's
    /// path, which is the action's undo handle.
    pub fn quarantine(
        &self,
        path: &str,
        ctx: &ExecContext<'_>,
    ) -> Result<(QuarantineRecord, PathBuf), ActionError> {
        let original = PathBuf::from(path);
        if !original.is_absolute() || path.contains('\0') {
            return Err(ActionError::InvalidTarget(format!(
                "{path:?}: an absolute path expected"
            )));
        }
        let meta = fs::symlink_metadata(&original).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ActionError::InvalidTarget(format!("{path}: no such file")),
            _ => ActionError::Failed(format!("{path}: {e}")),
        })?;
        if !meta.file_type().is_file() {
            return Err(ActionError::InvalidTarget(format!(
                "{path}: not a regular file (symlinks, directories and devices are not quarantined)"
            )));
        }
        self.ensure_dir()?;
        let qdir = fs::canonicalize(&self.dir)
            .map_err(|e| ActionError::Failed(format!("{}: {e}", self.dir.display())))?;
        if let Some(parent) = original.parent().and_then(|p| fs::canonicalize(p).ok()) {
            if parent.starts_with(&qdir) {
                return Err(ActionError::InvalidTarget(format!(
                    "{path} is inside the quarantine directory"
                )));
            }
        }

        let stem = file_stem_for(ctx.action_id);
        let stored_as = format!("{stem}.data");
        let data = self.dir.join(&stored_as);
        let record_path = self.dir.join(format!("{stem}.json"));
        if fs::symlink_metadata(&data).is_ok() || fs::symlink_metadata(&record_path).is_ok() {
            return Err(ActionError::Failed(format!(
                "{} already exists in quarantine",
                data.display()
            )));
        }

        let sha256 = move_in(&original, &meta, &data)?;
        let fail_back = |err: ActionError| {
            // Best effort: put the file back where it was, so a failed quarantine leaves the
            // system as it found it.
            if let Err(e) = move_out(&data, &original, &meta_owner(&meta)) {
                tracing::error!(path, quarantined = %data.display(), error = %e, "could not undo a failed quarantine; the file stays in quarantine");
            }
            err
        };
        if let Err(e) = lock_down(&data) {
            return Err(fail_back(e));
        }
        let ts_ns = now_ns();
        let record = QuarantineRecord {
            version: 1,
            action_id: ctx.action_id.to_owned(),
            alert_id: ctx.alert_id.to_owned(),
            responder: ctx.responder.to_owned(),
            original_path: original.clone(),
            stored_as,
            sha256,
            size: meta.len(),
            uid: meta.uid(),
            gid: meta.gid(),
            mode: format!("{:04o}", meta.mode() & 0o7777),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            atime_ns: meta
                .atime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.atime_nsec()),
            nlink: meta.nlink(),
            quarantined_at: rfc3339(ts_ns),
            ts_ns,
        };
        if let Err(e) = write_record(&record_path, &record) {
            return Err(fail_back(e));
        }
        if record.nlink > 1 {
            tracing::warn!(
                path,
                nlink = record.nlink,
                "quarantined file has other hard links; its contents stay reachable through them"
            );
        }
        tracing::info!(path, quarantined = %data.display(), sha256 = %record.sha256, "file quarantined");
        Ok((record, record_path))
    }

    /// Reads the record at `record_path` (which must be inside the quarantine directory).
    pub fn read_record(&self, record_path: &Path) -> Result<QuarantineRecord, ActionError> {
        if record_path.parent() != Some(self.dir.as_path()) {
            return Err(ActionError::InvalidTarget(format!(
                "{} is not a record in quarantine directory {}",
                record_path.display(),
                self.dir.display()
            )));
        }
        let text = fs::read_to_string(record_path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ActionError::InvalidTarget(format!(
                "quarantine record {} is gone",
                record_path.display()
            )),
            _ => ActionError::Failed(format!("{}: {e}", record_path.display())),
        })?;
        let record: QuarantineRecord = serde_json::from_str(&text).map_err(|e| {
            ActionError::Failed(format!("{}: unreadable record: {e}", record_path.display()))
        })?;
        if record.stored_as.contains('/') || record.stored_as.starts_with('.') {
            return Err(ActionError::Failed(format!(
                "{}: bad stored_as {:?}",
                record_path.display(),
                record.stored_as
            )));
        }
        Ok(record)
    }

    /// Puts the file of the record at `record_path` back, byte-identical, with its owner, mode
    /// and times, then removes the record. Refuses to overwrite anything at the original path.
    pub fn restore(&self, record_path: &Path) -> Result<QuarantineRecord, ActionError> {
        let record = self.read_record(record_path)?;
        let data = self.dir.join(&record.stored_as);
        if !is_root() {
            // Without root (unit tests) a mode-0000 copy cannot be read back to check it.
            let _ = fs::set_permissions(&data, fs::Permissions::from_mode(0o400));
        }
        let digest = hash_file(&data).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                ActionError::Failed(format!("quarantined copy {} is missing", data.display()))
            }
            _ => ActionError::Failed(format!("{}: {e}", data.display())),
        })?;
        if digest != record.sha256 {
            return Err(ActionError::Failed(format!(
                "quarantined copy {} was altered (sha256 {digest}, recorded {}); not restored",
                data.display(),
                record.sha256
            )));
        }
        let original = &record.original_path;
        if fs::symlink_metadata(original).is_ok() {
            return Err(ActionError::InvalidTarget(format!(
                "{} exists again; restoring would overwrite it",
                original.display()
            )));
        }
        let owner = Owner {
            uid: record.uid,
            gid: record.gid,
            mode: record.mode_bits().ok_or_else(|| {
                ActionError::Failed(format!(
                    "{}: bad mode {:?}",
                    record_path.display(),
                    record.mode
                ))
            })?,
            mtime_ns: record.mtime_ns,
            atime_ns: record.atime_ns,
        };
        move_out(&data, original, &owner)?;
        if let Err(e) = fs::remove_file(record_path) {
            tracing::warn!(record = %record_path.display(), error = %e, "file restored but its quarantine record could not be removed");
        }
        sync_dir(&self.dir);
        tracing::info!(path = %original.display(), "quarantined file restored");
        Ok(record)
    }
}

/// Owner, mode and times to give a restored file.
#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime_ns: i64,
    atime_ns: i64,
}

fn meta_owner(meta: &fs::Metadata) -> Owner {
    Owner {
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
        mtime_ns: meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec()),
        atime_ns: meta
            .atime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.atime_nsec()),
    }
}

/// Action ids become file names: anything but letters, digits, '-' and '_' is replaced.
fn file_stem_for(action_id: &str) -> String {
    let stem: String = action_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem.is_empty() {
        format!("q-{}", now_ns())
    } else {
        stem
    }
}

/// Moves `original` (whose lstat was `meta`) to `data`; returns the contents' sha256.
fn move_in(original: &Path, meta: &fs::Metadata, data: &Path) -> Result<String, ActionError> {
    match rename_noreplace(original, data) {
        Ok(()) => {
            // The name may have been swapped for something else between the lstat and the
            // rename: check that what arrived is the file that was inspected.
            let moved = fs::symlink_metadata(data)
                .map_err(|e| ActionError::Failed(format!("{}: {e}", data.display())))?;
            if moved.dev() != meta.dev()
                || moved.ino() != meta.ino()
                || !moved.file_type().is_file()
            {
                let _ = rename_noreplace(data, original);
                return Err(ActionError::InvalidTarget(format!(
                    "{} changed while being quarantined; left in place",
                    original.display()
                )));
            }
            sync_parent(original);
            sync_dir(data.parent().unwrap_or(Path::new("/")));
            hash_file(data).map_err(|e| ActionError::Failed(format!("{}: {e}", data.display())))
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let digest = copy_across(original, Some(meta), data, None)?;
            fs::remove_file(original).map_err(|e| {
                let _ = fs::remove_file(data);
                ActionError::Failed(format!(
                    "cannot unlink {} after copying it: {e}",
                    original.display()
                ))
            })?;
            sync_parent(original);
            Ok(digest)
        }
        Err(e) => Err(ActionError::Failed(format!(
            "cannot move {} to {}: {e}",
            original.display(),
            data.display()
        ))),
    }
}

/// Moves the quarantined `data` back to `original` with `owner`'s owner, mode and times.
fn move_out(data: &Path, original: &Path, owner: &Owner) -> Result<(), ActionError> {
    // Set ownership while the file is still in the root-only directory, so the file never
    // appears at its old path with the wrong owner or mode. chown before chmod: chown clears
    // setuid/setgid bits.
    apply_owner(data, owner)?;
    match rename_noreplace(data, original) {
        Ok(()) => {
            sync_parent(original);
            sync_parent(data);
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_across(data, None, original, Some(owner))?;
            fs::remove_file(data).map_err(|e| {
                ActionError::Failed(format!(
                    "restored, but cannot remove the quarantined copy {}: {e}",
                    data.display()
                ))
            })?;
            sync_parent(data);
            Ok(())
        }
        Err(e) => {
            let _ = lock_down(data);
            Err(match e.raw_os_error() {
                Some(libc::EEXIST) => ActionError::InvalidTarget(format!(
                    "{} exists again; restoring would overwrite it",
                    original.display()
                )),
                Some(libc::ENOENT) => ActionError::InvalidTarget(format!(
                    "the directory of {} is gone",
                    original.display()
                )),
                _ => ActionError::Failed(format!(
                    "cannot move {} back to {}: {e}",
                    data.display(),
                    original.display()
                )),
            })
        }
    }
}

/// Copies `from` to a new file `to` (never overwriting), fsyncing it, and returns the sha256.
/// With `expect`, `from` must still be the inode that was inspected; with `owner`, the copy
/// gets that owner, mode and times, else it is left root-only (0000).
fn copy_across(
    from: &Path,
    expect: Option<&fs::Metadata>,
    to: &Path,
    owner: Option<&Owner>,
) -> Result<String, ActionError> {
    let failed = |what: &str, p: &Path, e: io::Error| {
        ActionError::Failed(format!("{what} {}: {e}", p.display()))
    };
    let mut src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)
        .map_err(|e| failed("cannot open", from, e))?;
    let src_meta = src.metadata().map_err(|e| failed("cannot stat", from, e))?;
    if let Some(meta) = expect {
        if src_meta.dev() != meta.dev()
            || src_meta.ino() != meta.ino()
            || !src_meta.file_type().is_file()
        {
            return Err(ActionError::InvalidTarget(format!(
                "{} changed while being quarantined; left in place",
                from.display()
            )));
        }
    }
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => {
                ActionError::InvalidTarget(format!("{} exists; not overwritten", to.display()))
            }
            _ => failed("cannot create", to, e),
        })?;
    let result = (|| -> Result<String, ActionError> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = src
                .read(&mut buf)
                .map_err(|e| failed("cannot read", from, e))?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            dst.write_all(chunk)
                .map_err(|e| failed("cannot write", to, e))?;
        }
        match owner {
            Some(owner) => apply_owner_fd(&dst, to, owner)?,
            None => dst
                .set_permissions(fs::Permissions::from_mode(0o000))
                .map_err(|e| failed("cannot chmod", to, e))?,
        }
        dst.sync_all().map_err(|e| failed("cannot fsync", to, e))?;
        Ok(hex::encode(hasher.finalize()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(to);
    } else {
        sync_parent(to);
    }
    result
}

/// Root-owned (when running as root) and mode 0000.
fn lock_down(path: &Path) -> Result<(), ActionError> {
    if is_root() {
        std::os::unix::fs::lchown(path, Some(0), Some(0))
            .map_err(|e| ActionError::Failed(format!("cannot chown {}: {e}", path.display())))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o000))
        .map_err(|e| ActionError::Failed(format!("cannot chmod {}: {e}", path.display())))
}

/// By path: `path` sits in the root-only quarantine directory, where nobody else can swap it.
fn apply_owner(path: &Path, owner: &Owner) -> Result<(), ActionError> {
    let failed = |what: &str, e: io::Error| {
        ActionError::Failed(format!("cannot {what} {}: {e}", path.display()))
    };
    if is_root() {
        std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))
            .map_err(|e| failed("chown", e))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(owner.mode))
        .map_err(|e| failed("chmod", e))?;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| failed("set times of", io::Error::from_raw_os_error(libc::EINVAL)))?;
    let times = [timespec(owner.atime_ns), timespec(owner.mtime_ns)];
    // SAFETY: a NUL-terminated path and a pointer to two initialised timespecs.
    #[expect(unsafe_code, reason = "utimensat through libc")]
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(failed("set times of", io::Error::last_os_error()));
    }
    Ok(())
}

fn timespec(ns: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    }
}

fn apply_owner_fd(file: &File, path: &Path, owner: &Owner) -> Result<(), ActionError> {
    let failed = |what: &str, e: io::Error| {
        ActionError::Failed(format!("cannot {what} {}: {e}", path.display()))
    };
    if is_root() {
        std::os::unix::fs::fchown(file, Some(owner.uid), Some(owner.gid))
            .map_err(|e| failed("chown", e))?;
    }
    file.set_permissions(fs::Permissions::from_mode(owner.mode))
        .map_err(|e| failed("chmod", e))?;
    let times = [timespec(owner.atime_ns), timespec(owner.mtime_ns)];
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor and a pointer to two initialised timespecs.
    #[expect(unsafe_code, reason = "futimens through libc")]
    let rc = unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) };
    if rc != 0 {
        return Err(failed("set times of", io::Error::last_os_error()));
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    #[expect(unsafe_code, reason = "geteuid through libc")]
    let euid = unsafe { libc::geteuid() };
    euid == 0
}

/// rename(2) that fails with EEXIST instead of replacing an existing target.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that outlive the call; AT_FDCWD resolves them like
    // rename(2); RENAME_NOREPLACE is a plain flag.
    #[expect(
        unsafe_code,
        reason = "renameat2 through the raw syscall (no glibc version dependency)"
    )]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn hash_file(path: &Path) -> io::Result<String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    Ok(hex::encode(sha256_of(file)?))
}

/// SHA-256 of everything `reader` yields: the one file hasher of the actions (quarantine
/// records, block-exec rules and its exec check).
pub(crate) fn sha256_of(mut reader: impl Read) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hasher.finalize().into())
}

/// Writes `record` to `path` atomically (temp file, fsync, rename), mode 0600.
fn write_record(path: &Path, record: &QuarantineRecord) -> Result<(), ActionError> {
    let failed = |e: io::Error| {
        ActionError::Failed(format!(
            "cannot write quarantine record {}: {e}",
            path.display()
        ))
    };
    let mut text = serde_json::to_vec_pretty(record).map_err(|e| failed(io::Error::other(e)))?;
    text.push(b'\n');
    let tmp = path.with_extension("json.tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(failed)?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(failed)?;
    fs::rename(&tmp, path).map_err(failed)?;
    sync_parent(path);
    Ok(())
}

/// fsync of a directory, so a rename or unlink in it survives a crash. Best effort: a
/// filesystem that cannot fsync directories has nothing better to offer.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
}

impl Actuator for QuarantineActuator {
    fn execute(&self, ctx: &ExecContext<'_>, req: &ActionRequest) -> Result<Outcome, ActionError> {
        let ActionRequest::QuarantineFile { path } = req else {
            return Err(ActionError::Failed(format!(
                "quarantine actuator got a {} request",
                req.name()
            )));
        };
        let (_record, record_path) = self.quarantine(path, ctx)?;
        Ok(Outcome::Held {
            handle: record_path.display().to_string(),
        })
    }

    fn release(&self, action: &ActiveAction) -> Result<(), ActionError> {
        self.restore(Path::new(&action.handle)).map(|_| ())
    }

    /// The file is already in quarantine on disk: re-applying only checks that it still is.
    fn reapply(
        &self,
        _ctx: &ExecContext<'_>,
        action: &ActiveAction,
    ) -> Result<Outcome, ActionError> {
        let record_path = Path::new(&action.handle);
        let record = self.read_record(record_path)?;
        let data = self.dir.join(&record.stored_as);
        if !data.is_file() {
            return Err(ActionError::Failed(format!(
                "quarantined copy {} is missing",
                data.display()
            )));
        }
        Ok(Outcome::Held {
            handle: action.handle.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(id: &str) -> ExecContext<'_> {
        ExecContext {
            responder: "r",
            alert_id: "al-1",
            action_id: id,
        }
    }

    #[test]
    fn stems_are_safe_file_names() {
        assert_eq!(file_stem_for("act-18c-1"), "act-18c-1");
        assert_eq!(file_stem_for("../x"), "___x");
    }

    #[test]
    fn same_filesystem_round_trip_without_root() {
        let dir = tempfile::tempdir().unwrap();
        let q = QuarantineActuator::new(dir.path().join("q"));
        let file = dir.path().join("victim.sh");
        fs::write(&file, b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o751)).unwrap();
        let (record, handle) = q.quarantine(file.to_str().unwrap(), &ctx("act-1")).unwrap();
        assert!(!file.exists());
        assert_eq!(record.mode, "0751");
        assert_eq!(record.alert_id, "al-1");
        let data = q.dir().join(&record.stored_as);
        assert_eq!(fs::metadata(&data).unwrap().mode() & 0o7777, 0);
        assert_eq!(fs::metadata(q.dir()).unwrap().mode() & 0o777, 0o700);
        // Restoring refuses to overwrite a file that appeared at the original path.
        fs::write(&file, b"new").unwrap();
        assert!(matches!(
            q.restore(&handle),
            Err(ActionError::InvalidTarget(_))
        ));
        fs::remove_file(&file).unwrap();
        q.restore(&handle).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"#!/bin/sh\necho hi\n");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o751);
        assert!(!handle.exists());
        assert!(!data.exists());
    }

    #[test]
    fn refuses_symlinks_relative_paths_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let q = QuarantineActuator::new(dir.path().join("q"));
        let target = dir.path().join("t");
        fs::write(&target, b"x").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for p in [
            link.to_str().unwrap(),
            "relative/file",
            "/nonexistent/palisade/x",
            dir.path().to_str().unwrap(),
        ] {
            assert!(
                matches!(
                    q.quarantine(p, &ctx("a")),
                    Err(ActionError::InvalidTarget(_))
                ),
                "{p}"
            );
        }
        assert!(target.exists() && link.exists());
    }
}
