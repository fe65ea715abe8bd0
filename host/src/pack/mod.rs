//! Plugin packs: a `.tar.gz` holding `pack.toml` and plugin components with their sidecars,
//! signed by a detached minisign signature `FILE.minisig` beside it (as the `minisign` CLI
//! writes it). This module owns building a pack from a directory, opening one (signature,
//! archive and manifest checks), validating its components through a registry, and
//! installing, listing and removing packs in a plugin directory ([`install`]). It also owns the
//! plugin directory permission check ([`permissions`]) and the plugin project scaffold
//! ([`scaffold`]), the other two pieces of "run code other people wrote as root".
//!
//! A pack is read whole into memory (bounded by [`MAX_PACK_BYTES`]) so the bytes that are
//! verified are the bytes that are unpacked.

pub mod commands;
pub mod install;
pub mod manifest;
pub mod permissions;
pub mod polyglot;
pub mod scaffold;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use minisign_verify::{PublicKey, Signature};

pub use manifest::{PackManifest, PackMeta, PackPlugin, Version, MANIFEST_NAME, PACK_FORMAT};

use crate::capability::Capability;
use crate::plugin::registry::{LoadRequest, Registry};
use crate::plugin::PluginKind;

/// Largest pack file read (compressed).
pub const MAX_PACK_BYTES: u64 = 256 << 20;
/// Largest single file inside a pack (uncompressed).
pub const MAX_ENTRY_BYTES: u64 = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: cannot write: {reason}")]
    Write { file: String, reason: String },
    #[error("{file}: {reason}")]
    Manifest { file: String, reason: String },
    #[error("{file}: too large ({size} bytes; a pack may be at most {max})")]
    TooLarge { file: String, size: u64, max: u64 },
    #[error("trust key {key}: not a minisign public key file nor a base64 key: {reason}")]
    BadKey { key: String, reason: String },
    #[error("{file}: unsigned pack (no {signature}); refusing it. Sign it with `minisign -Sm {file}`, or pass --allow-unsigned to install it anyway")]
    Unsigned { file: String, signature: String },
    #[error("{file}: signed pack but no trusted key given; pass --trust PUBKEY (a minisign.pub file or the base64 key)")]
    NoTrustKey { file: String },
    #[error("{signature}: not a minisign signature: {reason}")]
    BadSignatureFile { signature: String, reason: String },
    #[error("{file}: signature check failed ({reason}); the pack was modified, truncated, or signed by another key. Nothing was installed")]
    SignatureMismatch { file: String, reason: String },
    #[error("{file}: not a readable .tar.gz pack ({reason}); it may be truncated or corrupt")]
    Archive { file: String, reason: String },
    #[error("{file}: entry {entry:?}: {reason}")]
    BadEntry {
        file: String,
        entry: String,
        reason: String,
    },
    #[error("{file}: {entry} is listed in pack.toml but missing")]
    Missing { file: String, entry: String },
    #[error("pack {pack} needs palisade {min_host_version} or later; this is palisade {host}")]
    HostTooOld {
        pack: String,
        min_host_version: String,
        host: String,
    },
    #[error("pack {pack}: plugin {file} is not valid: {reason}")]
    Plugin {
        pack: String,
        file: String,
        reason: String,
    },
    #[error("pack {pack}: plugin {file} requests capability {capability} that pack.toml does not declare for it; add it to its `capabilities`")]
    Undeclared {
        pack: String,
        file: String,
        capability: Capability,
    },
    #[error("{path}: already exists and {owner}; remove it first (or `palisade pack remove`)")]
    Conflict { path: PathBuf, owner: String },
    #[error("no pack named {name} is installed in {dir}")]
    NotInstalled { name: String, dir: PathBuf },
    #[error("{file}: install record is invalid: {reason}")]
    Record { file: String, reason: String },
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> PackError {
    PackError::Read {
        file: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> PackError {
    PackError::Write {
        file: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The signature file of `pack`: `<pack>.minisig`, as `minisign -Sm <pack>` writes it.
pub fn signature_path(pack: &Path) -> PathBuf {
    let mut name = pack.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

/// A public key packs must be signed with.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    key: PublicKey,
    /// Where it came from, for messages.
    pub origin: String,
}

impl TrustedKey {
    /// `text` is a minisign public key file (as `minisign -G` writes it) or the base64 key.
    pub fn parse(text: &str) -> Result<Self, PackError> {
        let path = Path::new(text);
        let key = if path.is_file() {
            let content = std::fs::read_to_string(path).map_err(|e| PackError::BadKey {
                key: text.to_string(),
                reason: e.to_string(),
            })?;
            // A key file is "untrusted comment: ..." then the key; accept a bare key line too.
            if content.lines().count() >= 2 {
                PublicKey::decode(&content)
            } else {
                PublicKey::from_base64(content.trim())
            }
        } else {
            PublicKey::from_base64(text.trim())
        };
        let key = key.map_err(|e| PackError::BadKey {
            key: text.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            key,
            origin: text.to_string(),
        })
    }
}

/// What was established about a pack's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureStatus {
    /// Verified with the trusted key; the signature's trusted comment.
    Verified { trusted_comment: String },
    /// Not verified, allowed by `--allow-unsigned`.
    Unverified,
}

/// How `open` treats signatures.
#[derive(Debug, Clone, Copy)]
pub struct TrustPolicy<'a> {
    pub key: Option<&'a TrustedKey>,
    /// Accept a pack without a signature (or without a key to check it with).
    pub allow_unsigned: bool,
}

/// An opened pack: signature checked per policy, archive read, manifest checked.
#[derive(Debug, Clone)]
pub struct Pack {
    pub file: PathBuf,
    pub manifest: PackManifest,
    /// File name -> content, every entry of the archive.
    pub files: BTreeMap<String, Vec<u8>>,
    pub signature: SignatureStatus,
}

/// What validation found out about one plugin of a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSummary {
    pub file: String,
    pub name: String,
    pub version: String,
    pub kind: PluginKind,
    pub has_sidecar: bool,
    /// Declared in pack.toml.
    pub declared: Vec<Capability>,
    /// Requested by the plugin's `describe()`.
    pub requested: Vec<Capability>,
}

impl Pack {
    /// Reads `file`, checks its signature per `policy`, unpacks it in memory and checks the
    /// manifest, the entries and the host version. Nothing is written anywhere.
    pub fn open(file: &Path, policy: TrustPolicy<'_>) -> Result<Pack, PackError> {
        let shown = file.display().to_string();
        let size = std::fs::metadata(file)
            .map_err(|e| read_err(file, e))?
            .len();
        if size > MAX_PACK_BYTES {
            return Err(PackError::TooLarge {
                file: shown,
                size,
                max: MAX_PACK_BYTES,
            });
        }
        let bytes = std::fs::read(file).map_err(|e| read_err(file, e))?;
        let signature = check_signature(file, &bytes, policy)?;
        let files = read_archive(&shown, &bytes)?;
        let Some(text) = files.get(MANIFEST_NAME) else {
            return Err(PackError::Missing {
                file: shown,
                entry: MANIFEST_NAME.into(),
            });
        };
        let text = std::str::from_utf8(text).map_err(|_| PackError::BadEntry {
            file: shown.clone(),
            entry: MANIFEST_NAME.into(),
            reason: "not UTF-8".into(),
        })?;
        let manifest = PackManifest::parse(text, &format!("{shown}:{MANIFEST_NAME}"))?;
        for name in files.keys() {
            if !manifest.allows(name) {
                return Err(PackError::BadEntry {
                    file: shown,
                    entry: name.clone(),
                    reason: "not a plugin or sidecar listed in pack.toml".into(),
                });
            }
        }
        for plugin in &manifest.plugins {
            if !files.contains_key(&plugin.file) {
                return Err(PackError::Missing {
                    file: shown,
                    entry: plugin.file.clone(),
                });
            }
        }
        manifest.check_host(Version::host())?;
        Ok(Pack {
            file: file.to_path_buf(),
            manifest,
            files,
            signature,
        })
    }

    pub fn name(&self) -> &str {
        &self.manifest.pack.name
    }

    /// Validates every plugin of the pack from `dir` (where its files were written) through
    /// `registry` (a scratch one: plugins are loaded, described, initialised and removed again).
    pub fn validate_in(
        &self,
        dir: &Path,
        registry: &Registry,
    ) -> Result<Vec<PluginSummary>, PackError> {
        validate_dir(&self.manifest, dir, registry)
    }
}

fn check_signature(
    file: &Path,
    bytes: &[u8],
    policy: TrustPolicy<'_>,
) -> Result<SignatureStatus, PackError> {
    let shown = file.display().to_string();
    let sig_path = signature_path(file);
    let sig_text = match std::fs::read_to_string(&sig_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(read_err(&sig_path, e)),
    };
    let (Some(sig_text), Some(key)) = (sig_text.as_ref(), policy.key) else {
        if policy.allow_unsigned {
            tracing::warn!(pack = %shown, "installing a pack whose signature was not verified (--allow-unsigned)");
            return Ok(SignatureStatus::Unverified);
        }
        return Err(if sig_text.is_none() {
            PackError::Unsigned {
                file: shown,
                signature: sig_path.display().to_string(),
            }
        } else {
            PackError::NoTrustKey { file: shown }
        });
    };
    let signature = Signature::decode(sig_text).map_err(|e| PackError::BadSignatureFile {
        signature: sig_path.display().to_string(),
        reason: e.to_string(),
    })?;
    // Legacy (non-prehashed) signatures are accepted: minisign wrote them by default until
    // 0.10, and the global signature over the trusted comment is checked either way.
    key.key
        .verify(bytes, &signature, true)
        .map_err(|e| PackError::SignatureMismatch {
            file: shown,
            reason: e.to_string(),
        })?;
    Ok(SignatureStatus::Verified {
        trusted_comment: signature.trusted_comment().to_string(),
    })
}

/// Unpacks a `.tar.gz` in memory: plain regular files with plain names only, each at most
/// [`MAX_ENTRY_BYTES`], no duplicates; the gzip trailer (CRC, length) must check out.
fn read_archive(shown: &str, bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, PackError> {
    let archive_err = |reason: String| PackError::Archive {
        file: shown.to_string(),
        reason,
    };
    let bad_entry = |entry: &str, reason: &str| PackError::BadEntry {
        file: shown.to_string(),
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    let gz = flate2::read::GzDecoder::new(bytes);
    let mut archive = tar::Archive::new(gz);
    let mut files = BTreeMap::new();
    let entries = archive.entries().map_err(|e| archive_err(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| archive_err(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| archive_err(e.to_string()))?
            .into_owned();
        let name = path.to_string_lossy().into_owned();
        let plain = path.components().count() == 1
            && matches!(
                path.components().next(),
                Some(std::path::Component::Normal(_))
            )
            && !name.starts_with('.');
        if !plain {
            return Err(bad_entry(
                &name,
                "not a plain file name (no directories, no '..', not hidden)",
            ));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad_entry(
                &name,
                "not a regular file (links and devices are refused)",
            ));
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| archive_err(e.to_string()))?;
        if size > MAX_ENTRY_BYTES {
            return Err(bad_entry(&name, &format!("too large ({size} bytes)")));
        }
        let mut content = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut content)
            .map_err(|e| archive_err(format!("reading {name}: {e}")))?;
        if files.insert(name.clone(), content).is_some() {
            return Err(bad_entry(&name, "appears twice"));
        }
    }
    // The tar end marker may come before the end of the gzip stream: read to the end so the
    // CRC and length trailer are checked and a cut-off file is caught.
    let mut gz = archive.into_inner();
    std::io::copy(&mut gz, &mut std::io::sink()).map_err(|e| archive_err(e.to_string()))?;
    Ok(files)
}

/// Loads each plugin of `manifest` from `dir` into `registry`, checks its capabilities against
/// the declaration, and removes it again.
pub fn validate_dir(
    manifest: &PackManifest,
    dir: &Path,
    registry: &Registry,
) -> Result<Vec<PluginSummary>, PackError> {
    let pack = manifest.pack.name.clone();
    let mut out = Vec::new();
    for plugin in &manifest.plugins {
        let path = dir.join(&plugin.file);
        let invalid = |reason: String| PackError::Plugin {
            pack: pack.clone(),
            file: plugin.file.clone(),
            reason,
        };
        let req = LoadRequest::from_file(&path).map_err(|e| invalid(e.to_string()))?;
        let has_sidecar = req.sidecar.is_some();
        let loaded = registry.load(&req).map_err(|e| invalid(e.to_string()))?;
        let set = registry.snapshot();
        let info = set
            .all()
            .find(|p| p.name() == loaded.name)
            .map(|p| p.info.clone());
        registry.remove(&req.stem);
        let Some(info) = info else {
            return Err(invalid("loaded but not found in the registry".into()));
        };
        let requested: Vec<Capability> = info.capabilities.iter().collect();
        for cap in &requested {
            if !plugin.capabilities.contains(cap) {
                return Err(PackError::Undeclared {
                    pack: pack.clone(),
                    file: plugin.file.clone(),
                    capability: *cap,
                });
            }
        }
        out.push(PluginSummary {
            file: plugin.file.clone(),
            name: info.name.clone(),
            version: info.version.clone(),
            kind: info.kind,
            has_sidecar,
            declared: plugin.capabilities.clone(),
            requested,
        });
    }
    Ok(out)
}

/// Builds `out` (a `.tar.gz`) from `dir`, which holds `pack.toml`, the plugins it lists and
/// their optional sidecars. Every plugin is validated through `registry` first. The archive is
/// reproducible (sorted order, zero times and owners). Sign it afterwards with
/// `minisign -Sm OUT`.
pub fn build(
    dir: &Path,
    out: &Path,
    registry: &Registry,
) -> Result<(PackManifest, Vec<PluginSummary>), PackError> {
    let manifest_path = dir.join(MANIFEST_NAME);
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| read_err(&manifest_path, e))?;
    let manifest = PackManifest::parse(&text, &manifest_path.display().to_string())?;
    for plugin in &manifest.plugins {
        if !dir.join(&plugin.file).is_file() {
            return Err(PackError::Missing {
                file: dir.display().to_string(),
                entry: plugin.file.clone(),
            });
        }
    }
    let summaries = validate_dir(&manifest, dir, registry)?;
    let mut entries: Vec<(String, Vec<u8>)> = vec![(MANIFEST_NAME.to_string(), text.into_bytes())];
    for plugin in &manifest.plugins {
        let sidecar = dir.join(plugin.sidecar());
        if sidecar.is_file() {
            let bytes = std::fs::read(&sidecar).map_err(|e| read_err(&sidecar, e))?;
            entries.push((plugin.sidecar(), bytes));
        }
        let wasm = dir.join(&plugin.file);
        let bytes = std::fs::read(&wasm).map_err(|e| read_err(&wasm, e))?;
        entries.push((plugin.file.clone(), bytes));
    }
    let bytes = write_archive(&entries).map_err(|e| write_err(out, e))?;
    install::write_atomically(out, &bytes, 0o644)?;
    Ok((manifest, summaries))
}

/// A gzip'd tar of `entries`, in order, with fixed metadata.
pub fn write_archive(entries: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    builder.mode(tar::HeaderMode::Deterministic);
    for (name, data) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, data.as_slice())?;
    }
    builder.into_inner()?.finish()
}
