//! Reading units and deciding what changed: a unit's files are read once, checked against what a
//! scan observed (a file still being written is rejected as unstable, never loaded half-written),
//! hashed, and compared with what was last applied. Only a content change produces an
//! [`PluginChange::Upsert`]; touching a file without changing it produces nothing.
//! This module does no waiting on the directory; the watcher decides when a unit is settled.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::{scan, FileStat, PluginChange, ReloadError, UnitSnapshot, UnitState};

/// How long a one-shot load ([`initial_units`]) waits for files that were changed very recently.
const ONE_SHOT_SETTLE: Duration = Duration::from_millis(150);
/// How many times a one-shot load looks again before giving up on a file that keeps changing.
const ONE_SHOT_ATTEMPTS: u32 = 20;

/// The content hashes of a unit as last handed to the registry. Recorded whether or not the
/// registry accepted it, so a rejected version is not sent again until its content changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedUnit {
    pub wasm_hash: [u8; 32],
    pub sidecar_hash: Option<[u8; 32]>,
}

impl From<&UnitSnapshot> for AppliedUnit {
    fn from(snapshot: &UnitSnapshot) -> Self {
        AppliedUnit {
            wasm_hash: snapshot.wasm_hash,
            sidecar_hash: snapshot.sidecar.as_ref().map(|(_, hash)| *hash),
        }
    }
}

/// Reads a unit's files once. `Ok(None)` when the unit has no `.wasm` (a lone sidecar is not a
/// plugin). Fails with [`ReloadError::Unstable`] when a file differs from the observation in
/// `state` (size, times or inode) before or after reading, or yields a different number of bytes.
pub fn read_unit(state: &UnitState) -> Result<Option<UnitSnapshot>, ReloadError> {
    let Some(wasm) = &state.wasm else {
        return Ok(None);
    };
    let wasm_bytes = read_verified(wasm)?;
    let wasm_hash: [u8; 32] = Sha256::digest(&wasm_bytes).into();
    let (sidecar, sidecar_text) = match &state.sidecar {
        None => (None, None),
        Some(stat) => {
            let bytes = read_verified(stat)?;
            let hash: [u8; 32] = Sha256::digest(&bytes).into();
            let text = String::from_utf8(bytes).map_err(|source| ReloadError::SidecarNotUtf8 {
                path: stat.path.clone(),
                source,
            })?;
            (Some((stat.path.clone(), hash)), Some(text))
        }
    };
    Ok(Some(UnitSnapshot {
        stem: state.stem.clone(),
        wasm: wasm.path.clone(),
        wasm_hash,
        wasm_bytes: Arc::from(wasm_bytes),
        sidecar,
        sidecar_text,
    }))
}

/// Reads a whole file through one handle and checks, on that handle, that it is the file that
/// was observed and that nobody wrote to it while it was read.
fn read_verified(stat: &FileStat) -> Result<Vec<u8>, ReloadError> {
    let unstable = |reason: String| ReloadError::Unstable {
        path: stat.path.clone(),
        reason,
    };
    let read_error = |source: io::Error| ReloadError::ReadFile {
        path: stat.path.clone(),
        source,
    };
    let mut file = match File::open(&stat.path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(unstable("it vanished".into()))
        }
        Err(source) => return Err(read_error(source)),
    };
    let before = file.metadata().map_err(read_error)?;
    if !stat.matches(&before) {
        return Err(unstable("it changed after it was observed".into()));
    }
    // The capacity is only a hint; a file larger than memory fails in read_to_end.
    let mut bytes = Vec::with_capacity(usize::try_from(stat.len).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 != stat.len {
        return Err(unstable(format!(
            "read {} bytes where {} were observed",
            bytes.len(),
            stat.len
        )));
    }
    let after = file.metadata().map_err(read_error)?;
    if !stat.matches(&after) {
        return Err(unstable("it was written to while being read".into()));
    }
    Ok(bytes)
}

/// What to ask of the registry for one unit, given what was last applied and what is on disk
/// now (`None`: no `.wasm`). `None` when nothing changed.
pub fn decide(
    stem: &str,
    applied: Option<&AppliedUnit>,
    current: Option<UnitSnapshot>,
) -> Option<PluginChange> {
    match (applied, current) {
        (None, None) => None,
        (Some(_), None) => Some(PluginChange::Remove {
            stem: stem.to_owned(),
        }),
        (Some(applied), Some(snapshot)) if *applied == AppliedUnit::from(&snapshot) => None,
        (_, Some(snapshot)) => Some(PluginChange::Upsert(snapshot)),
    }
}

/// One-shot reconcile of the whole directory against `previous` (stem → what was applied):
/// reads every unit now, without waiting for files to settle, and returns the changes in stem
/// order. A file caught mid-write fails the whole call with [`ReloadError::Unstable`]; a unit
/// that cannot be read (permissions, a non-UTF-8 sidecar) is logged and left as it was.
pub fn reconcile(
    previous: &BTreeMap<String, AppliedUnit>,
    dir: &Path,
) -> Result<Vec<PluginChange>, ReloadError> {
    let units = scan(dir)?;
    let stems: BTreeSet<&String> = units.keys().chain(previous.keys()).collect();
    let mut changes = Vec::new();
    for stem in stems {
        let current = match units.get(stem).map(read_unit) {
            None => None,
            Some(Ok(current)) => current,
            Some(Err(error @ ReloadError::Unstable { .. })) => return Err(error),
            // As in the watcher: an unreadable unit keeps what was applied (no change).
            Some(Err(error)) => {
                tracing::error!(plugin = %stem, %error, "cannot reload plugin; keeping the running version");
                continue;
            }
        };
        if let Some(change) = decide(stem, previous.get(stem), current) {
            changes.push(change);
        }
    }
    Ok(changes)
}

/// Loads every unit of `dir` once, for runs that do not watch (`palisade replay`). Files changed
/// within the last moments are given time to settle first, and a file caught mid-write is read
/// again, so a plugin being copied in is not loaded half-written. A unit that cannot be read
/// (permissions, a sidecar that is not UTF-8) is logged and left out, as the watcher does; only
/// a directory that cannot be listed, or a file that never stops changing, fails the call.
pub fn initial_units(dir: &Path) -> Result<Vec<UnitSnapshot>, ReloadError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last_attempt = attempt >= ONE_SHOT_ATTEMPTS;
        let units = scan(dir)?;
        if let Some(young) = recently_changed(&units, ONE_SHOT_SETTLE) {
            if last_attempt {
                return Err(ReloadError::NeverSettled {
                    path: young.path.clone(),
                    attempts: attempt,
                });
            }
            tracing::debug!(path = %young.path.display(), "plugin file changed moments ago; waiting for it to settle");
            std::thread::sleep(ONE_SHOT_SETTLE);
            continue;
        }
        let mut snapshots = Vec::with_capacity(units.len());
        let mut unstable = None;
        for state in units.values() {
            match read_unit(state) {
                Ok(Some(snapshot)) => snapshots.push(snapshot),
                Ok(None) => {
                    if let Some(sidecar) = &state.sidecar {
                        tracing::warn!(path = %sidecar.path.display(), plugin = %state.stem, "sidecar without a .wasm component; ignored");
                    }
                }
                Err(ReloadError::Unstable { path, reason }) => {
                    unstable = Some((path, reason));
                    break;
                }
                // One unreadable unit (permissions, a non-UTF-8 sidecar) must not keep the
                // others from loading; the watcher skips it the same way.
                Err(error) => {
                    tracing::error!(plugin = %state.stem, %error, "cannot load plugin; skipped");
                }
            }
        }
        match unstable {
            None => return Ok(snapshots),
            Some((path, _)) if last_attempt => {
                return Err(ReloadError::NeverSettled {
                    path,
                    attempts: attempt,
                })
            }
            Some((path, reason)) => {
                tracing::debug!(path = %path.display(), %reason, "plugin file changed while being read; reading again");
                std::thread::sleep(ONE_SHOT_SETTLE);
            }
        }
    }
}

/// The first file in `units` whose inode changed less than `settle` ago. Uses the inode change
/// time, which the kernel moves on every write and rename and which cannot be set back.
fn recently_changed(units: &BTreeMap<String, UnitState>, settle: Duration) -> Option<&FileStat> {
    let now = SystemTime::now();
    units
        .values()
        .flat_map(|unit| unit.wasm.iter().chain(unit.sidecar.iter()))
        .find(|stat| {
            let (secs, nanos) = stat.changed;
            let (Ok(secs), Ok(nanos)) = (u64::try_from(secs), u32::try_from(nanos)) else {
                return false;
            };
            let changed_at = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
            // A change time in the future (clock stepped back) counts as recent.
            now.duration_since(changed_at)
                .map_or(true, |age| age < settle)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(wasm: &[u8], sidecar: Option<&str>) -> UnitSnapshot {
        UnitSnapshot {
            stem: "p".into(),
            wasm: "p.wasm".into(),
            wasm_hash: Sha256::digest(wasm).into(),
            wasm_bytes: Arc::from(wasm),
            sidecar: sidecar.map(|text| ("p.toml".into(), Sha256::digest(text.as_bytes()).into())),
            sidecar_text: sidecar.map(str::to_owned),
        }
    }

    #[test]
    fn decide_compares_content_hashes() {
        let applied = AppliedUnit::from(&snapshot(b"v1", Some("a = 1")));
        assert!(decide("p", Some(&applied), Some(snapshot(b"v1", Some("a = 1")))).is_none());
        assert!(matches!(
            decide("p", Some(&applied), Some(snapshot(b"v2", Some("a = 1")))),
            Some(PluginChange::Upsert(_))
        ));
        assert!(matches!(
            decide("p", Some(&applied), Some(snapshot(b"v1", Some("a = 2")))),
            Some(PluginChange::Upsert(_))
        ));
        assert!(matches!(
            decide("p", Some(&applied), Some(snapshot(b"v1", None))),
            Some(PluginChange::Upsert(_))
        ));
        assert!(matches!(
            decide("p", Some(&applied), None),
            Some(PluginChange::Remove { stem }) if stem == "p"
        ));
        assert!(decide("p", None, None).is_none());
        assert!(matches!(
            decide("p", None, Some(snapshot(b"v1", None))),
            Some(PluginChange::Upsert(_))
        ));
    }

    #[test]
    fn read_rejects_a_file_that_changed_since_observed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wasm");
        std::fs::write(&path, b"half").unwrap();
        let units = scan(dir.path()).unwrap();
        std::fs::write(&path, b"half and the rest").unwrap();
        let error = read_unit(&units["p"]).unwrap_err();
        assert!(matches!(error, ReloadError::Unstable { .. }), "{error}");
        let units = scan(dir.path()).unwrap();
        let snapshot = read_unit(&units["p"]).unwrap().unwrap();
        assert_eq!(&*snapshot.wasm_bytes, b"half and the rest");
    }

    #[test]
    fn read_rejects_a_sidecar_that_is_not_utf8() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.wasm"), b"w").unwrap();
        std::fs::write(dir.path().join("p.toml"), [0xff, 0xfe]).unwrap();
        let units = scan(dir.path()).unwrap();
        let error = read_unit(&units["p"]).unwrap_err();
        assert!(matches!(error, ReloadError::SidecarNotUtf8 { .. }));
        assert!(error.to_string().contains("p.toml"));
    }

    #[test]
    fn reconcile_reports_upserts_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"a").unwrap();
        std::fs::write(dir.path().join("b.wasm"), b"b").unwrap();
        let mut previous = BTreeMap::new();
        previous.insert(
            "a".to_owned(),
            AppliedUnit::from(&{
                let mut s = snapshot(b"a", None);
                s.stem = "a".into();
                s
            }),
        );
        previous.insert("gone".to_owned(), AppliedUnit::from(&snapshot(b"x", None)));
        let changes = reconcile(&previous, dir.path()).unwrap();
        let summary: Vec<_> = changes
            .iter()
            .map(|change| match change {
                PluginChange::Upsert(s) => format!("upsert {}", s.stem),
                PluginChange::Remove { stem } => format!("remove {stem}"),
            })
            .collect();
        assert_eq!(summary, ["upsert b", "remove gone"]);
    }
}
