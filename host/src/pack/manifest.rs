//! `pack.toml`: the strict, versioned description of a plugin pack (name, version, the plugin
//! files it carries, the capabilities each plugin requests, the oldest host it runs on), and the
//! `MAJOR.MINOR.PATCH` comparison used for `min_host_version`.
//!
//! Must not touch the file system or the registry: it turns text into values only.

use serde::{Deserialize, Serialize};

use super::PackError;
use crate::capability::Capability;

/// The only `pack.toml` format this host reads.
pub const PACK_FORMAT: u32 = 1;

/// The file name of the manifest inside a pack and in a pack source directory.
pub const MANIFEST_NAME: &str = "pack.toml";

/// A parsed, checked `pack.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackManifest {
    /// Format of this file (`1`).
    pub version: u32,
    pub pack: PackMeta,
    /// The plugins, in install order.
    pub plugins: Vec<PackPlugin>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackMeta {
    /// Pack name: `[a-z0-9][a-z0-9_-]*`, at most 64 bytes (also the install record's name).
    pub name: String,
    /// The pack's own version, `MAJOR.MINOR.PATCH`.
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// The oldest palisade version whose plugin contract this pack was built for.
    pub min_host_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackPlugin {
    /// The component's file name, `<stem>.wasm`; a sidecar `<stem>.toml` travels with it when
    /// the source directory has one.
    pub file: String,
    /// Capabilities the plugin requests in `describe()`, declared up front so an operator sees
    /// them before installing. A plugin requesting an undeclared capability is refused.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
}

impl PackPlugin {
    /// `<stem>` of `<stem>.wasm`.
    pub fn stem(&self) -> &str {
        self.file.strip_suffix(".wasm").unwrap_or(&self.file)
    }

    /// The sidecar's file name, `<stem>.toml`.
    pub fn sidecar(&self) -> String {
        format!("{}.toml", self.stem())
    }
}

/// A valid pack, plugin or file stem: lower-case letters, digits, `-`, `_`; not hidden.
fn is_valid_stem(stem: &str) -> bool {
    !stem.is_empty()
        && stem.len() <= 64
        && stem
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && stem
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A `MAJOR.MINOR.PATCH` version (a pre-release or build suffix after `-`/`+` is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        let v = Version(parts.next()??, parts.next()??, parts.next()??);
        if parts.next().is_some() {
            return None;
        }
        Some(v)
    }

    /// This palisade's version.
    pub fn host() -> Version {
        Version::parse(env!("CARGO_PKG_VERSION")).unwrap_or(Version(0, 0, 0))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl PackManifest {
    /// Parses and checks `text`; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, PackError> {
        let bad = |reason: String| PackError::Manifest {
            file: origin.to_string(),
            reason,
        };
        // Read the format first, so a future format says so rather than "unknown key".
        #[derive(Deserialize)]
        struct Head {
            version: Option<toml::Value>,
        }
        let head: Head = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        match head.version {
            Some(toml::Value::Integer(v)) if v == i64::from(PACK_FORMAT) => {}
            Some(other) => {
                return Err(bad(format!(
                "version: this host reads pack format {PACK_FORMAT}, got {other}; upgrade palisade"
            )))
            }
            None => {
                return Err(bad(format!(
                    "version: missing (add `version = {PACK_FORMAT}` at the top)"
                )))
            }
        }
        let manifest: PackManifest = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            bad(format!("{at}{}", e.message()))
        })?;
        manifest.check().map_err(bad)?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), String> {
        if !is_valid_stem(&self.pack.name) {
            return Err(format!(
                "pack.name {:?}: use lower-case letters, digits, '-' and '_' (at most 64, starting with a letter or digit)",
                self.pack.name
            ));
        }
        if Version::parse(&self.pack.version).is_none() {
            return Err(format!(
                "pack.version {:?}: expected MAJOR.MINOR.PATCH",
                self.pack.version
            ));
        }
        if Version::parse(&self.pack.min_host_version).is_none() {
            return Err(format!(
                "pack.min_host_version {:?}: expected MAJOR.MINOR.PATCH",
                self.pack.min_host_version
            ));
        }
        if self.plugins.is_empty() {
            return Err(
                "plugins: a pack carries at least one plugin ([[plugins]] file = \"x.wasm\")"
                    .into(),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, plugin) in self.plugins.iter().enumerate() {
            let Some(stem) = plugin.file.strip_suffix(".wasm") else {
                return Err(format!(
                    "plugins[{i}].file {:?}: must name a .wasm file",
                    plugin.file
                ));
            };
            if !is_valid_stem(stem) {
                return Err(format!(
                    "plugins[{i}].file {:?}: a plain file name of lower-case letters, digits, '-' and '_' ending in .wasm",
                    plugin.file
                ));
            }
            if !seen.insert(stem) {
                return Err(format!("plugins[{i}].file {:?}: listed twice", plugin.file));
            }
            let mut caps = plugin.capabilities.clone();
            caps.sort();
            caps.dedup();
            if caps.len() != plugin.capabilities.len() {
                return Err(format!("plugins[{i}].capabilities: listed twice"));
            }
        }
        Ok(())
    }

    /// Every file the pack may contain: the manifest, each plugin and its optional sidecar.
    pub fn allows(&self, name: &str) -> bool {
        name == MANIFEST_NAME
            || self
                .plugins
                .iter()
                .any(|p| p.file == name || p.sidecar() == name)
    }

    /// Refuses a pack made for a newer host.
    pub fn check_host(&self, host: Version) -> Result<(), PackError> {
        let min = Version::parse(&self.pack.min_host_version).unwrap_or(Version(u64::MAX, 0, 0));
        if host < min {
            return Err(PackError::HostTooOld {
                pack: self.pack.name.clone(),
                min_host_version: self.pack.min_host_version.clone(),
                host: host.to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1
[pack]
name = "demo"
version = "1.2.3"
description = "two plugins"
min_host_version = "0.1.0"

[[plugins]]
file = "shell-spawn.wasm"

[[plugins]]
file = "notify-high.wasm"
capabilities = ["notify"]
"#;

    #[test]
    fn parses_a_good_manifest() {
        let m = PackManifest::parse(GOOD, "pack.toml").unwrap();
        assert_eq!(m.pack.name, "demo");
        assert_eq!(m.plugins[1].capabilities, vec![Capability::Notify]);
        assert!(m.allows("shell-spawn.toml"));
        assert!(m.allows("pack.toml"));
        assert!(!m.allows("other.wasm"));
    }

    #[test]
    fn refuses_bad_manifests_with_reasons() {
        let cases = [
            (
                GOOD.replace("version = 1\n", "version = 2\n"),
                "pack format 1",
            ),
            (GOOD.replace("version = 1\n", ""), "missing"),
            (
                GOOD.replace("description", "descripton"),
                "unknown field `descripton`",
            ),
            (GOOD.replace("\"demo\"", "\"../x\""), "pack.name"),
            (
                GOOD.replace("shell-spawn.wasm", "../shell.wasm"),
                "plugins[0].file",
            ),
            (
                GOOD.replace("notify-high.wasm", "shell-spawn.wasm"),
                "listed twice",
            ),
            (GOOD.replace("\"notify\"", "\"root\""), "unknown variant"),
            (GOOD.replace("\"1.2.3\"", "\"1.2\""), "pack.version"),
        ];
        for (text, want) in cases {
            let err = PackManifest::parse(&text, "pack.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
            assert!(err.starts_with("pack.toml"), "{err}");
        }
    }

    #[test]
    fn host_version_gate() {
        let m = PackManifest::parse(&GOOD.replace("\"0.1.0\"", "\"9.0.0\""), "p").unwrap();
        let err = m.check_host(Version(0, 1, 0)).unwrap_err().to_string();
        assert!(err.contains("9.0.0") && err.contains("0.1.0"), "{err}");
        assert!(m.check_host(Version(9, 0, 1)).is_ok());
        assert!(Version::parse("1.2.3-rc1") == Some(Version(1, 2, 3)));
        assert!(Version::parse("1.2.3.4").is_none());
    }
}
