//! Hot reload plumbing: turns the state of the plugin directory into a stream of
//! [`PluginChange`]s (load/replace, unload) for the plugin registry.
//!
//! A plugin in the directory is a *unit* keyed by its stem: `<stem>.wasm` plus an optional sidecar
//! `<stem>.toml`. Hidden files, editor and download temp files, other extensions and
//! subdirectories are ignored. This module owns discovery ([`scan`]), reading a unit exactly once
//! so that what was hashed is what gets loaded ([`read_unit`]), deciding what changed
//! ([`reconcile`]) and the long-running directory [`Watcher`]. It must not validate or load
//! components: the registry does that and keeps the old version running if the new one is bad.

mod reconcile;
mod watcher;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub use reconcile::{decide, initial_units, read_unit, reconcile, AppliedUnit};
pub use watcher::{WatchSettings, Watcher};

/// File name suffix of a plugin component.
pub const WASM_EXT: &str = "wasm";
/// File name suffix of a plugin's optional sidecar manifest.
pub const SIDECAR_EXT: &str = "toml";

/// Suffixes of files that editors and downloaders write before the real file is in place.
const TEMP_SUFFIXES: &[&str] = &[".swp", ".swx", "~", ".tmp", ".part", ".crdownload"];

/// Why the directory or one of its files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("plugin directory {dir} does not exist")]
    MissingDir { dir: PathBuf },
    #[error("plugin directory {dir} is not a directory")]
    NotADir { dir: PathBuf },
    #[error("cannot list plugin directory {dir}: {source}")]
    ReadDir { dir: PathBuf, source: io::Error },
    #[error("cannot stat plugin file {path}: {source}")]
    Stat { path: PathBuf, source: io::Error },
    #[error("cannot read plugin file {path}: {source}")]
    ReadFile { path: PathBuf, source: io::Error },
    /// The file changed (or vanished) between being observed and being read: it is being written
    /// right now. Retried once it settles; never loaded half-written.
    #[error("plugin file {path} changed while being read: {reason}")]
    Unstable { path: PathBuf, reason: String },
    #[error("plugin file {path} kept changing while being read ({attempts} attempts)")]
    NeverSettled { path: PathBuf, attempts: u32 },
    #[error("sidecar {path} is not valid UTF-8: {source}")]
    SidecarNotUtf8 {
        path: PathBuf,
        source: std::string::FromUtf8Error,
    },
    #[error("cannot watch plugin directory {dir}: {source}")]
    Watch { dir: PathBuf, source: notify::Error },
    #[error("cannot start the reload thread for {dir}: {source}")]
    Thread { dir: PathBuf, source: io::Error },
}

/// Which file of a unit a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    Wasm,
    Sidecar,
}

/// What one observation of a file saw. Two equal observations some time apart mean nobody wrote
/// the file in between (the inode's change time moves on every write, rename and `touch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    pub path: PathBuf,
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// Inode change time (seconds, nanoseconds): also moves when a file is renamed into place
    /// with an old mtime (`cp -p`, `rsync`, `tar`).
    pub changed: (i64, i64),
    pub dev: u64,
    pub ino: u64,
}

impl FileStat {
    fn from_metadata(path: PathBuf, meta: &std::fs::Metadata) -> Self {
        FileStat {
            path,
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// Whether `meta` (taken from an open handle) describes the same, unchanged file.
    fn matches(&self, meta: &std::fs::Metadata) -> bool {
        self.len == meta.len()
            && self.modified == meta.modified().ok()
            && self.changed == (meta.ctime(), meta.ctime_nsec())
            && self.dev == meta.dev()
            && self.ino == meta.ino()
    }
}

/// One unit as listed by [`scan`]: file metadata only, nothing read yet. A stem with only a
/// sidecar is listed with `wasm: None` so that a sidecar written before its component is tracked;
/// it is not a plugin until the `.wasm` appears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub stem: String,
    pub wasm: Option<FileStat>,
    pub sidecar: Option<FileStat>,
}

impl UnitState {
    fn file_mut(&mut self, role: FileRole) -> &mut Option<FileStat> {
        match role {
            FileRole::Wasm => &mut self.wasm,
            FileRole::Sidecar => &mut self.sidecar,
        }
    }
}

/// A unit read from disk once: the bytes here are exactly the bytes that were hashed, so the
/// registry loads what the watcher compared, even if the file changes again afterwards.
///
/// Invariant: `sidecar.is_some() == sidecar_text.is_some()`.
#[derive(Clone)]
pub struct UnitSnapshot {
    pub stem: String,
    pub wasm: PathBuf,
    /// SHA-256 of `wasm_bytes`.
    pub wasm_hash: [u8; 32],
    pub wasm_bytes: Arc<[u8]>,
    /// Sidecar path and SHA-256 of its contents.
    pub sidecar: Option<(PathBuf, [u8; 32])>,
    pub sidecar_text: Option<String>,
}

impl UnitSnapshot {
    /// Lower-case hex of the component's SHA-256, for logs and the compiled-component cache.
    pub fn wasm_hash_hex(&self) -> String {
        hex::encode(self.wasm_hash)
    }

    /// Path of the sidecar, if the unit has one.
    pub fn sidecar_path(&self) -> Option<&Path> {
        self.sidecar.as_ref().map(|(path, _)| path.as_path())
    }
}

// Hand-written so that logging a change never dumps megabytes of component bytes.
impl fmt::Debug for UnitSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitSnapshot")
            .field("stem", &self.stem)
            .field("wasm", &self.wasm)
            .field("wasm_hash", &self.wasm_hash_hex())
            .field("wasm_len", &self.wasm_bytes.len())
            .field(
                "sidecar",
                &self
                    .sidecar
                    .as_ref()
                    .map(|(path, hash)| (path, hex::encode(hash))),
            )
            .finish()
    }
}

/// What the registry is asked to do.
#[derive(Debug, Clone)]
pub enum PluginChange {
    /// Load a new plugin or replace the running one with this content.
    Upsert(UnitSnapshot),
    /// The plugin's `.wasm` is gone: unload it.
    Remove { stem: String },
}

impl PluginChange {
    /// The unit this change is about.
    pub fn stem(&self) -> &str {
        match self {
            PluginChange::Upsert(snapshot) => &snapshot.stem,
            PluginChange::Remove { stem } => stem,
        }
    }
}

/// Whether a directory entry name belongs to a unit, and as which file. Returns `None` for
/// everything the watcher ignores.
pub fn classify(name: &OsStr) -> Option<(String, FileRole)> {
    // Non-UTF-8 names cannot be plugin names in logs, config grants or metrics labels.
    let name = name.to_str()?;
    if name.starts_with('.') || TEMP_SUFFIXES.iter().any(|suffix| name.ends_with(suffix)) {
        return None;
    }
    let (stem, ext) = name.rsplit_once('.')?;
    if stem.is_empty() {
        return None;
    }
    let role = match ext {
        WASM_EXT => FileRole::Wasm,
        SIDECAR_EXT => FileRole::Sidecar,
        _ => return None,
    };
    Some((stem.to_owned(), role))
}

/// Lists the units in `dir` with their file metadata (size, times, inode). Follows symlinks;
/// skips subdirectories, dangling links and files that vanish while being listed.
pub fn scan(dir: &Path) -> Result<BTreeMap<String, UnitState>, ReloadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ReloadError::MissingDir {
            dir: dir.to_path_buf(),
        },
        io::ErrorKind::NotADirectory => ReloadError::NotADir {
            dir: dir.to_path_buf(),
        },
        _ => ReloadError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        },
    })?;
    let mut units: BTreeMap<String, UnitState> = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|source| ReloadError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let Some((stem, role)) = classify(&entry.file_name()) else {
            continue;
        };
        let path = entry.path();
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            // Deleted between listing and stat, or a dangling symlink: not there.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ReloadError::Stat { path, source }),
        };
        if !meta.is_file() {
            continue;
        }
        let unit = units.entry(stem.clone()).or_insert_with(|| UnitState {
            stem,
            wasm: None,
            sidecar: None,
        });
        *unit.file_mut(role) = Some(FileStat::from_metadata(path, &meta));
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str) -> Option<(String, FileRole)> {
        classify(OsStr::new(name))
    }

    #[test]
    fn classifies_units_and_ignores_the_rest() {
        assert_eq!(role("shell.wasm"), Some(("shell".into(), FileRole::Wasm)));
        assert_eq!(
            role("shell.toml"),
            Some(("shell".into(), FileRole::Sidecar))
        );
        assert_eq!(
            role("sensitive.files.wasm"),
            Some(("sensitive.files".into(), FileRole::Wasm))
        );
        for ignored in [
            ".shell.wasm",
            ".shell.wasm.swp",
            "shell.wasm~",
            "shell.wasm.tmp",
            "shell.wasm.part",
            "shell.toml.swp",
            ".wasm",
            "wasm",
            "shell.so",
            "README.md",
            "shell.WASM",
        ] {
            assert_eq!(role(ignored), None, "{ignored} must be ignored");
        }
    }

    #[test]
    fn scan_lists_units_and_skips_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"aa").unwrap();
        std::fs::write(dir.path().join("a.toml"), b"x = 1").unwrap();
        std::fs::write(dir.path().join("b.toml"), b"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        std::fs::create_dir(dir.path().join("c.wasm")).unwrap();
        std::os::unix::fs::symlink("nowhere", dir.path().join("d.wasm")).unwrap();
        let units = scan(dir.path()).unwrap();
        assert_eq!(units.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(units["a"].wasm.as_ref().unwrap().len, 2);
        assert!(units["a"].sidecar.is_some());
        assert!(units["b"].wasm.is_none());
    }

    #[test]
    fn scan_names_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("plugins");
        let error = scan(&missing).unwrap_err();
        assert!(matches!(error, ReloadError::MissingDir { .. }));
        assert!(error.to_string().contains(&*missing.to_string_lossy()));
    }
}
