//! The `quarantine-file` actuator: moves a file into a root-only quarantine directory, where
//! the copy is owned by root with mode 0000, beside a JSON metadata record (original path,
//! sha256, owner, mode, times, alert, action); release restores it byte-identical with its
//! owner, mode and times. A move within one filesystem is a rename; across filesystems it is
//! copy, fsync, unlink. It only ever touches regular files, never follows a symlink, never
//! overwrites anything on restore, and never quarantines its own directory's contents.
//!
//! The original's directory is opened once with [`safe_path::open_parent`] (no symlink
//! followed unless root owns it) and every operation on the original is relative to that
//! descriptor: a user who swaps their directory for a symlink (`/tmp/a -> /etc`) between the
//! alert and the request, or during a copy, or before a restore, gets a refusal instead of
//! root acting in the link's target.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::audit::{now_ns, rfc3339};
use super::safe_path::{self, SafePathError};
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
    /// Device and inode of the original's directory when quarantined (absent in records
    /// written before they were kept); a restore into another directory there is logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_dev: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ino: Option<u64>,
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
        let (parent, name) = safe_path::open_parent(&original).map_err(|e| {
            unsafe_path_error("quarantine", &e).unwrap_or_else(|| {
                if e.is_not_found() {
                    ActionError::InvalidTarget(format!("{path}: no such file"))
                } else {
                    ActionError::Failed(e.to_string())
                }
            })
        })?;
        let parent_meta = parent
            .metadata()
            .map_err(|e| ActionError::Failed(format!("{}: {e}", parent.path.display())))?;
        let parent_path = parent.path.clone();
        let src = At::in_dir(parent.fd, &name, original.clone())?;
        let meta = src.lstat().map_err(|e| match e.kind() {
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
        if parent_path.starts_with(&qdir) {
            return Err(ActionError::InvalidTarget(format!(
                "{path} is inside the quarantine directory"
            )));
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

        let data_at = At::path(&data)?;
        let sha256 = move_in(&src, &meta, &data_at)?;
        let fail_back = |err: ActionError| {
            // Best effort: put the file back where it was, so a failed quarantine leaves the
            // system as it found it.
            if let Err(e) = move_out(&data_at, &src, &meta_owner(&meta)) {
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
            parent_dev: Some(parent_meta.dev()),
            parent_ino: Some(parent_meta.ino()),
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
        // The directory is opened as at quarantine time: a user's symlink there now would make
        // root write the file wherever it points.
        let (parent, name) = safe_path::open_parent(original).map_err(|e| {
            unsafe_path_error("restore", &e).unwrap_or_else(|| {
                if e.is_not_found() {
                    ActionError::InvalidTarget(format!(
                        "the directory of {} is gone",
                        original.display()
                    ))
                } else {
                    ActionError::Failed(format!("not restored: {e}"))
                }
            })
        })?;
        if let (Some(dev), Some(ino), Ok(now)) =
            (record.parent_dev, record.parent_ino, parent.metadata())
        {
            if (now.dev(), now.ino()) != (dev, ino) {
                tracing::warn!(
                    path = %original.display(),
                    dir = %parent.path.display(),
                    "restoring into a directory that is not the one the file was quarantined from"
                );
            }
        }
        let dst = At::in_dir(parent.fd, &name, original.clone())?;
        if dst.lstat().is_ok() {
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
        move_out(&At::path(&data)?, &dst, &owner)?;
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

/// The refusal of a path through a symlink not owned by root, logged; `None` for other
/// resolution errors.
fn unsafe_path_error(op: &str, e: &SafePathError) -> Option<ActionError> {
    if !matches!(e, SafePathError::UntrustedSymlink { .. }) {
        return None;
    }
    e.warn_if_untrusted(op, "refused");
    Some(ActionError::InvalidTarget(format!("{op} refused: {e}")))
}

/// A name to act on without resolving a path again: `name` in the directory `dir` (the
/// original's directory, opened by [`safe_path`]), or, with no `dir`, the absolute `name`
/// (a file in the root-only quarantine directory, where nobody else can swap anything).
/// `shown` is the path for messages.
#[derive(Debug)]
struct At {
    dir: Option<OwnedFd>,
    name: CString,
    shown: PathBuf,
}

impl At {
    fn in_dir(dir: OwnedFd, name: &std::ffi::OsStr, shown: PathBuf) -> Result<At, ActionError> {
        let name = CString::new(name.as_bytes())
            .map_err(|_| ActionError::InvalidTarget(format!("{}: NUL in name", shown.display())))?;
        Ok(At {
            dir: Some(dir),
            name,
            shown,
        })
    }

    fn path(path: &Path) -> Result<At, ActionError> {
        let name = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| ActionError::InvalidTarget(format!("{}: NUL in name", path.display())))?;
        Ok(At {
            dir: None,
            name,
            shown: path.to_owned(),
        })
    }

    fn dirfd(&self) -> RawFd {
        self.dir.as_ref().map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd)
    }

    fn open(&self, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
        safe_path::openat(self.dirfd(), &self.name, flags | libc::O_NOFOLLOW, mode).map(File::from)
    }

    /// lstat(2) of the name.
    fn lstat(&self) -> io::Result<fs::Metadata> {
        self.open(libc::O_PATH, 0)?.metadata()
    }

    fn unlink(&self) -> io::Result<()> {
        // SAFETY: a NUL-terminated name that outlives the call; the kernel checks the dirfd.
        #[expect(unsafe_code, reason = "unlinkat has no safe wrapper in std")]
        let rc = unsafe { libc::unlinkat(self.dirfd(), self.name.as_ptr(), 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// fsync of the directory holding the name (best effort, as [`sync_dir`]).
    fn sync_dir(&self) {
        match &self.dir {
            Some(dir) => {
                if let Ok(d) =
                    safe_path::openat(dir.as_raw_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
                {
                    let _ = File::from(d).sync_all();
                }
            }
            None => sync_parent(&self.shown),
        }
    }
}

/// Moves `original` (whose lstat was `meta`) to `data`; returns the contents' sha256.
fn move_in(original: &At, meta: &fs::Metadata, data: &At) -> Result<String, ActionError> {
    let changed = || {
        ActionError::InvalidTarget(format!(
            "{} changed while being quarantined; left in place",
            original.shown.display()
        ))
    };
    match rename_noreplace(original, data) {
        Ok(()) => {
            // The name may have been swapped for something else between the lstat and the
            // rename: check that what arrived is the file that was inspected.
            let moved = data
                .lstat()
                .map_err(|e| ActionError::Failed(format!("{}: {e}", data.shown.display())))?;
            if moved.dev() != meta.dev()
                || moved.ino() != meta.ino()
                || !moved.file_type().is_file()
            {
                let _ = rename_noreplace(data, original);
                return Err(changed());
            }
            original.sync_dir();
            data.sync_dir();
            hash_file(&data.shown)
                .map_err(|e| ActionError::Failed(format!("{}: {e}", data.shown.display())))
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let digest = copy_across(original, Some(meta), data, None)?;
            // Unlink in the directory the copy came from, and only the inode copied.
            let unlinked = match original.lstat() {
                Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => {
                    original.unlink().map_err(|e| {
                        ActionError::Failed(format!(
                            "cannot unlink {} after copying it: {e}",
                            original.shown.display()
                        ))
                    })
                }
                Ok(_) => Err(changed()),
                Err(e) => Err(ActionError::Failed(format!(
                    "{} after copying it: {e}",
                    original.shown.display()
                ))),
            };
            if let Err(e) = unlinked {
                let _ = data.unlink();
                return Err(e);
            }
            original.sync_dir();
            Ok(digest)
        }
        Err(e) => Err(ActionError::Failed(format!(
            "cannot move {} to {}: {e}",
            original.shown.display(),
            data.shown.display()
        ))),
    }
}

/// Moves the quarantined `data` back to `original` with `owner`'s owner, mode and times.
fn move_out(data: &At, original: &At, owner: &Owner) -> Result<(), ActionError> {
    // Set ownership while the file is still in the root-only directory, so the file never
    // appears at its old path with the wrong owner or mode. chown before chmod: chown clears
    // setuid/setgid bits.
    apply_owner(&data.shown, owner)?;
    match rename_noreplace(data, original) {
        Ok(()) => {
            original.sync_dir();
            data.sync_dir();
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_across(data, None, original, Some(owner))?;
            data.unlink().map_err(|e| {
                ActionError::Failed(format!(
                    "restored, but cannot remove the quarantined copy {}: {e}",
                    data.shown.display()
                ))
            })?;
            data.sync_dir();
            Ok(())
        }
        Err(e) => {
            let _ = lock_down(&data.shown);
            Err(match e.raw_os_error() {
                Some(libc::EEXIST) => ActionError::InvalidTarget(format!(
                    "{} exists again; restoring would overwrite it",
                    original.shown.display()
                )),
                Some(libc::ENOENT) => ActionError::InvalidTarget(format!(
                    "the directory of {} is gone",
                    original.shown.display()
                )),
                _ => ActionError::Failed(format!(
                    "cannot move {} back to {}: {e}",
                    data.shown.display(),
                    original.shown.display()
                )),
            })
        }
    }
}

/// Copies `from` to a new file `to` (never overwriting), fsyncing it, and returns the sha256.
/// With `expect`, `from` must still be the inode that was inspected; with `owner`, the copy
/// gets that owner, mode and times, else it is left root-only (0000).
fn copy_across(
    from: &At,
    expect: Option<&fs::Metadata>,
    to: &At,
    owner: Option<&Owner>,
) -> Result<String, ActionError> {
    let failed = |what: &str, p: &At, e: io::Error| {
        ActionError::Failed(format!("{what} {}: {e}", p.shown.display()))
    };
    let mut src = from
        .open(libc::O_RDONLY, 0)
        .map_err(|e| failed("cannot open", from, e))?;
    let src_meta = src.metadata().map_err(|e| failed("cannot stat", from, e))?;
    if let Some(meta) = expect {
        if src_meta.dev() != meta.dev()
            || src_meta.ino() != meta.ino()
            || !src_meta.file_type().is_file()
        {
            return Err(ActionError::InvalidTarget(format!(
                "{} changed while being quarantined; left in place",
                from.shown.display()
            )));
        }
    }
    let mut dst = to
        .open(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => ActionError::InvalidTarget(format!(
                "{} exists; not overwritten",
                to.shown.display()
            )),
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
            Some(owner) => apply_owner_fd(&dst, &to.shown, owner)?,
            None => dst
                .set_permissions(fs::Permissions::from_mode(0o000))
                .map_err(|e| failed("cannot chmod", to, e))?,
        }
        dst.sync_all().map_err(|e| failed("cannot fsync", to, e))?;
        Ok(hex::encode(hasher.finalize()))
    })();
    if result.is_err() {
        let _ = to.unlink();
    } else {
        to.sync_dir();
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

/// renameat2(2) that fails with EEXIST instead of replacing an existing target.
fn rename_noreplace(from: &At, to: &At) -> io::Result<()> {
    // SAFETY: two NUL-terminated names that outlive the call, each relative to its directory
    // descriptor (or AT_FDCWD for an absolute name); RENAME_NOREPLACE is a plain flag.
    #[expect(
        unsafe_code,
        reason = "renameat2 through the raw syscall (no glibc version dependency)"
    )]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            from.dirfd(),
            from.name.as_ptr(),
            to.dirfd(),
            to.name.as_ptr(),
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

    /// Makes `link` a symlink to `target` owned by a user (nobody, when the tests run as root;
    /// else the test user, who is not root either).
    fn user_symlink(target: &Path, link: &Path) {
        std::os::unix::fs::symlink(target, link).unwrap();
        if is_root() {
            std::os::unix::fs::lchown(link, Some(65534), Some(65534)).unwrap();
        }
    }

    #[test]
    fn a_directory_swapped_for_a_user_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let q = QuarantineActuator::new(dir.path().join("q"));
        // The alert named a/shadow; then the user replaced their directory a with a link to
        // a directory of root's ("etc").
        let a = dir.path().join("a");
        fs::create_dir(&a).unwrap();
        fs::write(a.join("shadow"), b"user's").unwrap();
        let etc = dir.path().join("etc");
        fs::create_dir(&etc).unwrap();
        fs::write(etc.join("shadow"), b"root's").unwrap();
        fs::rename(&a, dir.path().join("a.old")).unwrap();
        user_symlink(&etc, &a);

        let err = q
            .quarantine(a.join("shadow").to_str().unwrap(), &ctx("act-swap"))
            .unwrap_err();
        let ActionError::InvalidTarget(msg) = &err else {
            panic!("invalid target expected, got {err:?}");
        };
        assert!(
            msg.contains("symlink") && msg.contains(&a.display().to_string()),
            "{msg}"
        );
        assert_eq!(fs::read(etc.join("shadow")).unwrap(), b"root's");
        assert!(!q.dir().join("act-swap.data").exists());
    }

    #[test]
    fn restore_into_a_directory_that_became_a_user_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let q = QuarantineActuator::new(dir.path().join("q"));
        let a = dir.path().join("a");
        fs::create_dir(&a).unwrap();
        let file = a.join("payload.sh");
        fs::write(&file, b"#!/bin/sh\n").unwrap();
        let (record, handle) = q.quarantine(file.to_str().unwrap(), &ctx("act-r")).unwrap();
        let parent = fs::metadata(&a).unwrap();
        assert_eq!(
            (record.parent_dev, record.parent_ino),
            (Some(parent.dev()), Some(parent.ino()))
        );
        // The user points a at a directory root trusts (profile.d, say).
        let trusted = dir.path().join("profile.d");
        fs::create_dir(&trusted).unwrap();
        let moved = dir.path().join("a.old");
        fs::rename(&a, &moved).unwrap();
        user_symlink(&trusted, &a);

        let err = q.restore(&handle).unwrap_err();
        assert!(
            matches!(&err, ActionError::InvalidTarget(m) if m.contains("symlink")),
            "{err:?}"
        );
        assert!(!trusted.join("payload.sh").exists());
        // Still quarantined, record intact.
        assert_eq!(q.read_record(&handle).unwrap(), record);
        assert!(fs::symlink_metadata(q.dir().join(&record.stored_as)).is_ok());

        // The real directory back: the restore goes through.
        fs::remove_file(&a).unwrap();
        fs::rename(&moved, &a).unwrap();
        q.restore(&handle).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"#!/bin/sh\n");
    }

    #[test]
    fn records_without_the_parent_identity_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let q = QuarantineActuator::new(dir.path().join("q"));
        fs::create_dir_all(q.dir()).unwrap();
        let record = q.dir().join("old.json");
        fs::write(
            &record,
            r#"{"version":1,"action_id":"a","alert_id":"b","responder":"r",
            "original_path":"/tmp/x","stored_as":"old.data","sha256":"00","size":1,"uid":0,
            "gid":0,"mode":"0644","mtime_ns":0,"atime_ns":0,"nlink":1,
            "quarantined_at":"2026-01-01T00:00:00Z","ts_ns":0}"#,
        )
        .unwrap();
        let r = q.read_record(&record).unwrap();
        assert_eq!((r.parent_dev, r.parent_ino), (None, None));
        assert!(!serde_json::to_string(&r).unwrap().contains("parent_"));
    }
}
