//! The plugin directory permission check. Plugins run inside the daemon, which runs as root to
//! load eBPF programs and act on processes: whoever can write the plugin directory, one of its
//! files, or a directory above it (rename the plugin dir away and put another in its place) can
//! choose what the daemon runs and which responders act. `palisade run` refuses such a directory;
//! the offline tools (`replay`, `plugin check`) only warn.
//!
//! Accepted owners are root and the user the daemon runs as; group or other write permission is
//! refused, except on an ancestor with the sticky bit (like /tmp), where others cannot rename
//! entries they do not own.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const S_ISVTX: u32 = 0o1000;

#[derive(Debug, thiserror::Error)]
pub enum PermissionError {
    #[error("{path}: cannot check permissions: {reason}")]
    Stat { path: PathBuf, reason: String },
    #[error(
        "{path}: {what} is {problem}, which would let others choose the code palisade runs as root; fix it with `{fix}`"
    )]
    Unsafe {
        path: PathBuf,
        what: &'static str,
        problem: String,
        fix: String,
    },
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[expect(unsafe_code, reason = "geteuid through libc")]
    unsafe {
        libc::geteuid()
    }
}

fn stat(path: &Path) -> Result<std::fs::Metadata, PermissionError> {
    std::fs::metadata(path).map_err(|e| PermissionError::Stat {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn quote(path: &Path) -> String {
    let s = path.display().to_string();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// One path's verdict: `None` when safe.
fn problem(meta: &std::fs::Metadata, euid: u32, allow_sticky: bool) -> Option<String> {
    let mode = meta.mode();
    let owner = meta.uid();
    if owner != 0 && owner != euid {
        return Some(format!("owned by uid {owner}"));
    }
    if mode & 0o022 != 0 && !(allow_sticky && mode & S_ISVTX != 0) {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Some(format!("writable by {who} (mode {:o})", mode & 0o7777));
    }
    None
}

/// Checks `dir`, its ancestors and every plugin file in it as if the daemon ran as `euid`.
pub fn check_plugin_dir_as(dir: &Path, euid: u32) -> Result<(), PermissionError> {
    let owner_fix = if euid == 0 {
        "root:root".to_string()
    } else {
        format!("{euid}")
    };
    let canonical = match dir.canonicalize() {
        Ok(path) => path,
        // A missing directory is the loader's to report (or the watcher's to wait for); whoever
        // could create it is decided by its existing parents, so check those.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return check_ancestors(dir, euid, &owner_fix, true);
        }
        Err(e) => {
            return Err(PermissionError::Stat {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    let meta = stat(&canonical)?;
    if let Some(problem) = problem(&meta, euid, false) {
        return Err(PermissionError::Unsafe {
            fix: format!("chown {owner_fix} {p} && chmod 755 {p}", p = quote(dir)),
            path: dir.to_path_buf(),
            what: "the plugin directory",
            problem,
        });
    }
    check_ancestors(&canonical, euid, &owner_fix, false)?;
    let entries = std::fs::read_dir(&canonical).map_err(|e| PermissionError::Stat {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    for entry in entries {
        let entry = entry.map_err(|e| PermissionError::Stat {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        // The files the daemon reads: what the watcher would load (not hidden entries).
        if crate::reload::classify(&entry.file_name()).is_none() {
            continue;
        }
        let path = dir.join(entry.file_name());
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(PermissionError::Stat {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        if let Some(problem) = problem(&meta, euid, false) {
            return Err(PermissionError::Unsafe {
                fix: format!("chown {owner_fix} {p} && chmod 644 {p}", p = quote(&path)),
                path,
                what: "a plugin file",
                problem,
            });
        }
    }
    Ok(())
}

/// Checks the directories above `dir` (the existing ones, when `dir` does not exist yet).
fn check_ancestors(
    dir: &Path,
    euid: u32,
    owner_fix: &str,
    missing: bool,
) -> Result<(), PermissionError> {
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| PermissionError::Stat {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            })?
            .join(dir)
    };
    for ancestor in absolute.ancestors().skip(1) {
        let meta = match std::fs::metadata(ancestor) {
            Ok(meta) => meta,
            Err(e) if missing && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(PermissionError::Stat {
                    path: ancestor.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        };
        if let Some(problem) = problem(&meta, euid, true) {
            return Err(PermissionError::Unsafe {
                fix: format!(
                    "chown {owner_fix} {p} && chmod go-w {p}",
                    p = quote(ancestor)
                ),
                path: ancestor.to_path_buf(),
                what: "a parent of the plugin directory",
                problem,
            });
        }
    }
    Ok(())
}

/// [`check_plugin_dir_as`] for this process's effective user.
pub fn check_plugin_dir(dir: &Path) -> Result<(), PermissionError> {
    check_plugin_dir_as(dir, effective_uid())
}
