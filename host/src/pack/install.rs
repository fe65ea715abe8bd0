//! Installing, listing and removing packs in a plugin directory. An install never leaves a
//! half-written plugin where the watcher can see it: files are written to a private temp dir
//! beside the plugin dir (same file system), validated there, then renamed in one by one,
//! each plugin's sidecar before its component so a hot reload sees the pair. A small record per
//! pack, `<plugins>/.packs/<name>.toml` (hidden, so the watcher ignores it), says which files
//! belong to which pack.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{read_err, write_err, Pack, PackError, PluginSummary, SignatureStatus};
use crate::plugin::registry::Registry;

/// The directory of install records inside a plugin directory.
pub const RECORDS_DIR: &str = ".packs";
/// Format of an install record.
pub const RECORD_FORMAT: u32 = 1;

/// What `<plugins>/.packs/<name>.toml` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledPack {
    pub version: u32,
    pub name: String,
    pub pack_version: String,
    #[serde(default)]
    pub description: String,
    /// The pack file it was installed from.
    pub source: String,
    /// The signature's trusted comment, or "unverified".
    pub signature: String,
    /// Seconds since the epoch.
    pub installed_at: u64,
    pub files: Vec<InstalledFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledFile {
    pub name: String,
    pub sha256: String,
}

/// What an install did.
#[derive(Debug, Clone)]
pub struct InstallReport {
    pub record: InstalledPack,
    pub plugins: Vec<PluginSummary>,
    /// The previous version's record, when this was an upgrade.
    pub replaced: Option<InstalledPack>,
    /// Files of the previous version that the new one no longer carries, removed.
    pub removed: Vec<String>,
}

/// Writes `bytes` to `path` through a temp file in the same directory and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PackError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(path, e));
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn record_path(plugins_dir: &Path, name: &str) -> PathBuf {
    plugins_dir.join(RECORDS_DIR).join(format!("{name}.toml"))
}

/// Reads one install record.
pub fn read_record(path: &Path) -> Result<InstalledPack, PackError> {
    let text = std::fs::read_to_string(path).map_err(|e| read_err(path, e))?;
    let record: InstalledPack = toml::from_str(&text).map_err(|e| PackError::Record {
        file: path.display().to_string(),
        reason: e.message().to_string(),
    })?;
    if record.version != RECORD_FORMAT {
        return Err(PackError::Record {
            file: path.display().to_string(),
            reason: format!(
                "version {} (this host reads {RECORD_FORMAT})",
                record.version
            ),
        });
    }
    Ok(record)
}

/// The packs installed in `plugins_dir`, sorted by name.
pub fn list(plugins_dir: &Path) -> Result<Vec<InstalledPack>, PackError> {
    let dir = plugins_dir.join(RECORDS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(&dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| read_err(&dir, e))?.path();
        let is_record = path.extension().is_some_and(|e| e == "toml")
            && !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if is_record {
            out.push(read_record(&path)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A private directory removed (with its content) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create_beside(plugins_dir: &Path, pack: &str) -> Result<Self, PackError> {
        use std::os::unix::fs::DirBuilderExt;
        let parent = plugins_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = parent.join(format!(
            ".palisade-pack-{pack}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| write_err(&path, e))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Installs `pack` into `plugins_dir`: checks that no file it brings belongs to something
/// else, writes and validates everything in a temp dir through `registry` (a scratch registry,
/// not the daemon's), then renames the files in and writes the record. Installing a pack of
/// the same name again upgrades it (files the new version dropped are removed).
pub fn install(
    pack: &Pack,
    plugins_dir: &Path,
    registry: &Registry,
) -> Result<InstallReport, PackError> {
    if !plugins_dir.is_dir() {
        return Err(read_err(plugins_dir, "not a directory (create it first)"));
    }
    let name = pack.name().to_string();
    let previous = match read_record(&record_path(plugins_dir, &name)) {
        Ok(record) => Some(record),
        Err(PackError::Read { .. }) if !record_path(plugins_dir, &name).exists() => None,
        Err(e) => return Err(e),
    };
    let owned_before = |file: &str| {
        previous
            .as_ref()
            .is_some_and(|r| r.files.iter().any(|f| f.name == file))
    };
    // Refuse to overwrite a file another pack, or the operator, put there.
    let others = list(plugins_dir)?;
    for file in pack.files.keys().filter(|f| *f != super::MANIFEST_NAME) {
        let target = plugins_dir.join(file);
        if target.exists() && !owned_before(file) {
            let owner = others
                .iter()
                .find(|r| r.name != name && r.files.iter().any(|f| &f.name == file))
                .map(|r| format!("belongs to pack {}", r.name))
                .unwrap_or_else(|| "was not installed by a pack".into());
            return Err(PackError::Conflict {
                path: target,
                owner,
            });
        }
    }

    let staging = TempDir::create_beside(plugins_dir, &name)?;
    let mut files = Vec::new();
    for (file, bytes) in &pack.files {
        if file == super::MANIFEST_NAME {
            continue;
        }
        write_atomically(&staging.0.join(file), bytes, 0o644)?;
        files.push(InstalledFile {
            name: file.clone(),
            sha256: sha256_hex(bytes),
        });
    }
    let plugins = pack.validate_in(&staging.0, registry)?;

    // Sidecar first, then the component: the watcher's unit is complete when the .wasm lands.
    for plugin in &pack.manifest.plugins {
        for file in [plugin.sidecar(), plugin.file.clone()] {
            if pack.files.contains_key(&file) {
                let (from, to) = (staging.0.join(&file), plugins_dir.join(&file));
                std::fs::rename(&from, &to).map_err(|e| write_err(&to, e))?;
            }
        }
    }
    // Files the previous version had and this one does not: components first.
    let mut removed = Vec::new();
    if let Some(prev) = &previous {
        let mut stale: Vec<&InstalledFile> = prev
            .files
            .iter()
            .filter(|f| !pack.files.contains_key(&f.name))
            .collect();
        stale.sort_by_key(|f| !f.name.ends_with(".wasm"));
        for f in stale {
            remove_file_if_present(&plugins_dir.join(&f.name))?;
            removed.push(f.name.clone());
        }
    }
    let record = InstalledPack {
        version: RECORD_FORMAT,
        name: name.clone(),
        pack_version: pack.manifest.pack.version.clone(),
        description: pack.manifest.pack.description.clone(),
        source: pack.file.display().to_string(),
        signature: match &pack.signature {
            SignatureStatus::Verified { trusted_comment } => trusted_comment.clone(),
            SignatureStatus::Unverified => "unverified".into(),
        },
        installed_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        files,
    };
    write_record(plugins_dir, &record)?;
    tracing::info!(pack = %name, version = %record.pack_version, dir = %plugins_dir.display(), "pack installed");
    Ok(InstallReport {
        record,
        plugins,
        replaced: previous,
        removed,
    })
}

fn write_record(plugins_dir: &Path, record: &InstalledPack) -> Result<(), PackError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = plugins_dir.join(RECORDS_DIR);
    std::fs::DirBuilder::new()
        .mode(0o755)
        .recursive(true)
        .create(&dir)
        .map_err(|e| write_err(&dir, e))?;
    let path = record_path(plugins_dir, &record.name);
    let text = toml::to_string(record).map_err(|e| write_err(&path, e))?;
    write_atomically(&path, text.as_bytes(), 0o644)
}

fn remove_file_if_present(path: &Path) -> Result<(), PackError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(write_err(path, e)),
    }
}

/// Removes pack `name` from `plugins_dir`: its components first (so the watcher unloads
/// them), then sidecars, then the record. Returns the record.
pub fn remove(plugins_dir: &Path, name: &str) -> Result<InstalledPack, PackError> {
    let path = record_path(plugins_dir, name);
    if !path.is_file() {
        return Err(PackError::NotInstalled {
            name: name.to_string(),
            dir: plugins_dir.to_path_buf(),
        });
    }
    let record = read_record(&path)?;
    let mut files: Vec<&InstalledFile> = record.files.iter().collect();
    files.sort_by_key(|f| !f.name.ends_with(".wasm"));
    for f in files {
        // Names come from our own record, but a record is a file an attacker could edit:
        // never follow a path out of the plugin dir.
        if f.name.contains('/') || f.name.starts_with('.') {
            continue;
        }
        remove_file_if_present(&plugins_dir.join(&f.name))?;
    }
    remove_file_if_present(&path)?;
    tracing::info!(pack = %name, dir = %plugins_dir.display(), "pack removed");
    Ok(record)
}
