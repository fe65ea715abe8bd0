//! The kernel-backed actuators `block-exec` and `network-quarantine`, and the loader of their
//! eBPF object (`palisade-enforce`, built beside the event programs by host/build.rs and
//! embedded). Owns the bpffs pin directory (`actions.bpf_pin_dir`): the block map and the
//! quarantine links are pinned there, so `palisade actions release` (another process) can undo
//! them and a restarted daemon finds them. Never touches the event source's object.
//!
//! **block-exec.** A rule is a set of path keys in the pinned `BLOCK_EXEC` hash map; the
//! `enforce_exec` program on `sched/sched_process_exec` sends SIGKILL to any process whose
//! exec'd filename is a key, before the new image runs user code, whatever its parent. Without
//! CO-RE the program sees the filename the exec call named (`bprm->filename`), not an inode,
//! so a rule for a path blocks that absolute path, its canonical form and its aliases through
//! the symlinked bin directories (`/bin` -> `/usr/bin`); execs by a relative name, through
//! `/proc/self/fd`, or of a copy or hard link elsewhere are not matched. A rule for a sha256 is
//! resolved by the host, when the rule is made and again at each daemon start, to the
//! executable files carrying that hash under the hash roots (bin directories and temp dirs,
//! [`DEFAULT_HASH_ROOTS`]); those paths are then blocked as above. A copy made after that
//! resolution is not blocked (stated in docs/configuration.md). Each key counts its
//! holders (the map value), so two rules on one path release independently. The program
//! lives while the daemon does; the first block in a process clears the pinned map, since the
//! daemon re-applies every held rule from the state file at start.
//!
//! **network-quarantine.** The workload is resolved like `freeze` does (cgroup id, container
//! id, cgroup path; never the root or the daemon's own cgroup), and must be a cgroup v2
//! directory. `netq_ingress` and `netq_egress` (cgroup_skb) are attached to it as bpf_links
//! (multi-attach semantics: other programs there keep working; any drop wins) and drop every
//! packet except, when `actions.network_quarantine.allow_loopback` is set, loopback traffic.
//! Both links are pinned as `netq-<action id>-{ingress,egress}` and their descriptors closed,
//! so the quarantine holds even while the daemon is down; release unpins them, which detaches.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::{CgroupSkb, CgroupSkbAttachType, TracePoint};
use aya::{Ebpf, EbpfLoader};
use palisade_common::enforce as abi;
use sha2::{Digest, Sha256};

use super::freeze::{CgroupLayout, FreezeActuator, Freezer};
use super::{ActionError, ActionRequest, ActiveAction, Actuator, ExecContext, ExecMatch, Outcome};

/// The enforcement programs, built by host/build.rs (aya-build) and embedded 8-byte aligned.
static ENFORCE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-enforce"));

/// Where a sha256 rule looks for the files carrying the hash (each searched to
/// [`HASH_MAX_DEPTH`] levels; missing ones are skipped, symlinked ones visited once).
pub const DEFAULT_HASH_ROOTS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
    "/tmp",
    "/var/tmp",
    "/dev/shm",
];
/// Directory levels searched below each hash root.
pub const HASH_MAX_DEPTH: usize = 3;
/// Most files hashed for one sha256 rule.
pub const HASH_MAX_FILES: usize = 20_000;
/// Larger files are never hashed (a blocked payload is rarely that big).
pub const HASH_MAX_BYTES: u64 = 256 << 20;
/// Bin directories that may be symlinks (usrmerge): a blocked path below one's target is also
/// blocked under the link's name.
const ALIAS_DIRS: &[&str] = &[
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/lib",
    "/lib64",
];

/// Errors of the enforcement object (turned into `ActionError::Failed`/`Unsupported` at the
/// actuator boundary, with the names kept).
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("cannot create bpffs pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not on a bpf filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`)")]
    NotBpffs { path: PathBuf },
    #[error("loading the enforcement eBPF object failed: {source}")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF program {program}: {reason}")]
    Program {
        program: &'static str,
        reason: String,
    },
    #[error("eBPF map {map}: {reason}")]
    Map { map: String, reason: String },
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bpf link {path}: {reason}")]
    Link { path: PathBuf, reason: String },
}

impl From<EnforceError> for ActionError {
    fn from(e: EnforceError) -> ActionError {
        match e {
            EnforceError::NotBpffs { .. } => ActionError::Unsupported(e.to_string()),
            other => ActionError::Failed(other.to_string()),
        }
    }
}

/// Settings of both actuators, from `[actions]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforceSettings {
    /// bpffs directory of the pinned map and links.
    pub pin_dir: PathBuf,
    /// Quarantined workloads keep loopback traffic.
    pub allow_loopback: bool,
    /// Where sha256 rules look for files.
    pub hash_roots: Vec<PathBuf>,
}

impl EnforceSettings {
    pub fn from_config(actions: &crate::config::ActionsConfig) -> EnforceSettings {
        EnforceSettings {
            pin_dir: actions.bpf_pin_dir.clone(),
            allow_loopback: actions.network_quarantine.allow_loopback,
            hash_roots: DEFAULT_HASH_ROOTS.iter().map(PathBuf::from).collect(),
        }
    }
}

/// What the block-exec program counted since it was loaded in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockCounters {
    pub checked: u64,
    pub killed: u64,
    pub signal_failed: u64,
    pub read_failed: u64,
}

/// The loaded object, shared by both actuators; programs are loaded and attached on first use.
struct Loaded {
    ebpf: Ebpf,
    exec_attached: bool,
    netq_loaded: bool,
}

/// The enforcement object of one process: loaded lazily, so the operator's CLI, which only
/// releases, never loads or attaches anything.
pub struct Enforcer {
    settings: EnforceSettings,
    loaded: Mutex<Option<Loaded>>,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Enforcer {
    pub fn new(settings: EnforceSettings) -> Enforcer {
        Enforcer {
            settings,
            loaded: Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &EnforceSettings {
        &self.settings
    }

    fn block_map_pin(&self) -> PathBuf {
        self.settings.pin_dir.join(abi::MAP_BLOCK_EXEC)
    }

    /// Creates the pin directory (0700) and checks it is on bpffs.
    fn ensure_pin_dir(&self) -> Result<(), EnforceError> {
        let dir = &self.settings.pin_dir;
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|source| EnforceError::PinDir {
                path: dir.clone(),
                source,
            })?;
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        }
        if !is_bpffs(dir) {
            return Err(EnforceError::NotBpffs { path: dir.clone() });
        }
        Ok(())
    }

    /// The loaded object (loading it on first use).
    fn object(&self) -> Result<MutexGuard<'_, Option<Loaded>>, EnforceError> {
        let mut guard = lock(&self.loaded);
        if guard.is_none() {
            self.ensure_pin_dir()?;
            let allow: u32 = u32::from(self.settings.allow_loopback);
            let ebpf = EbpfLoader::new()
                .default_map_pin_directory(&self.settings.pin_dir)
                .override_global(abi::GLOBAL_NETQ_ALLOW_LOOPBACK, &allow, true)
                .load(ENFORCE_OBJECT)
                .map_err(|source| EnforceError::Load {
                    source: Box::new(source),
                })?;
            *guard = Some(Loaded {
                ebpf,
                exec_attached: false,
                netq_loaded: false,
            });
        }
        Ok(guard)
    }

    /// Attaches the exec program (once per process), clearing the pinned map first: the
    /// daemon re-applies every held block from the state file, so anything else in the map is
    /// left over from a previous daemon.
    fn ensure_exec(&self) -> Result<MutexGuard<'_, Option<Loaded>>, EnforceError> {
        let mut guard = self.object()?;
        let Some(loaded) = guard.as_mut() else {
            return Err(EnforceError::Program {
                program: abi::PROG_BLOCK_EXEC,
                reason: "object not loaded".into(),
            });
        };
        if !loaded.exec_attached {
            let stale = clear_block_map(&mut loaded.ebpf)?;
            if stale > 0 {
                tracing::info!(
                    entries = stale,
                    "block-exec: cleared entries left by a previous daemon"
                );
            }
            let program = loaded
                .ebpf
                .program_mut(abi::PROG_BLOCK_EXEC)
                .ok_or_else(|| prog_err(abi::PROG_BLOCK_EXEC, "not in the object"))?;
            let tp: &mut TracePoint = program
                .try_into()
                .map_err(|e| prog_err(abi::PROG_BLOCK_EXEC, e))?;
            tp.load()
                .map_err(|e| prog_err(abi::PROG_BLOCK_EXEC, format!("load: {}", chain(&e))))?;
            tp.attach("sched", "sched_process_exec").map_err(|e| {
                prog_err(
                    abi::PROG_BLOCK_EXEC,
                    format!("attach sched/sched_process_exec: {}", chain(&e)),
                )
            })?;
            loaded.exec_attached = true;
            tracing::info!(pin = %self.block_map_pin().display(), "block-exec: exec program attached");
        }
        Ok(guard)
    }

    fn ensure_netq(&self) -> Result<MutexGuard<'_, Option<Loaded>>, EnforceError> {
        let mut guard = self.object()?;
        let Some(loaded) = guard.as_mut() else {
            return Err(prog_err(abi::PROG_NETQ_EGRESS, "object not loaded"));
        };
        if !loaded.netq_loaded {
            for name in [abi::PROG_NETQ_INGRESS, abi::PROG_NETQ_EGRESS] {
                let program = loaded
                    .ebpf
                    .program_mut(name)
                    .ok_or_else(|| prog_err(name, "not in the object"))?;
                let skb: &mut CgroupSkb = program.try_into().map_err(|e| prog_err(name, e))?;
                skb.load()
                    .map_err(|e| prog_err(name, format!("load: {}", chain(&e))))?;
            }
            loaded.netq_loaded = true;
        }
        Ok(guard)
    }

    /// Adds one holder to each key (attaching the program first if needed).
    pub fn block_keys(&self, keys: &[String]) -> Result<(), EnforceError> {
        let mut guard = self.ensure_exec()?;
        let Some(loaded) = guard.as_mut() else {
            return Err(prog_err(abi::PROG_BLOCK_EXEC, "object not loaded"));
        };
        let map = loaded
            .ebpf
            .map_mut(abi::MAP_BLOCK_EXEC)
            .ok_or_else(|| map_err(abi::MAP_BLOCK_EXEC, "not in the object"))?;
        let mut map: BpfHashMap<&mut MapData, [u8; abi::BLOCK_PATH_LEN], abi::BlockRefs> =
            BpfHashMap::try_from(map).map_err(|e| map_err(abi::MAP_BLOCK_EXEC, e))?;
        for key in keys {
            let k = path_key(key).ok_or_else(|| map_err(abi::MAP_BLOCK_EXEC, "key too long"))?;
            let refs = map.get(&k, 0).unwrap_or(0);
            map.insert(k, refs.saturating_add(1), 0)
                .map_err(|e| map_err(abi::MAP_BLOCK_EXEC, e))?;
        }
        Ok(())
    }

    /// Removes one holder from each key through the pinned map (works from any process; a
    /// missing pin or key means there is nothing left to undo).
    pub fn unblock_keys(&self, keys: &[String]) -> Result<(), EnforceError> {
        let pin = self.block_map_pin();
        if !pin.exists() {
            tracing::info!(pin = %pin.display(), "block-exec: no pinned map; nothing to release");
            return Ok(());
        }
        let data = MapData::from_pin(&pin).map_err(|e| map_err(&pin.display().to_string(), e))?;
        let mut map: BpfHashMap<MapData, [u8; abi::BLOCK_PATH_LEN], abi::BlockRefs> =
            BpfHashMap::try_from(Map::HashMap(data))
                .map_err(|e| map_err(abi::MAP_BLOCK_EXEC, e))?;
        for key in keys {
            let Some(k) = path_key(key) else { continue };
            match map.get(&k, 0) {
                Ok(refs) if refs > 1 => map
                    .insert(k, refs - 1, 0)
                    .map_err(|e| map_err(abi::MAP_BLOCK_EXEC, e))?,
                Ok(_) => map
                    .remove(&k)
                    .map_err(|e| map_err(abi::MAP_BLOCK_EXEC, e))?,
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Keys currently in the pinned block map (for tests and diagnostics).
    pub fn blocked_keys(&self) -> Vec<String> {
        let Ok(data) = MapData::from_pin(self.block_map_pin()) else {
            return Vec::new();
        };
        let Ok(map) = BpfHashMap::<MapData, [u8; abi::BLOCK_PATH_LEN], abi::BlockRefs>::try_from(
            Map::HashMap(data),
        ) else {
            return Vec::new();
        };
        map.keys()
            .filter_map(Result::ok)
            .map(|k| {
                let end = k.iter().position(|&b| b == 0).unwrap_or(k.len());
                String::from_utf8_lossy(&k[..end]).into_owned()
            })
            .collect()
    }

    /// The exec program's counters, once it is attached in this process.
    pub fn block_counters(&self) -> Option<BlockCounters> {
        let guard = lock(&self.loaded);
        let loaded = guard.as_ref()?;
        let map = loaded.ebpf.map(abi::MAP_BLOCK_COUNTERS)?;
        let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).ok()?;
        let sum = |i: u32| {
            counters
                .get(&i, 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0)
        };
        Some(BlockCounters {
            checked: sum(abi::BLOCK_COUNTER_CHECKED),
            killed: sum(abi::BLOCK_COUNTER_KILLED),
            signal_failed: sum(abi::BLOCK_COUNTER_SIGNAL_FAILED),
            read_failed: sum(abi::BLOCK_COUNTER_READ_FAILED),
        })
    }

    /// Attaches both quarantine programs to `cgroup` and pins the links at `pins`
    /// (ingress, egress); the descriptors are closed so only the pins hold the links.
    fn quarantine(&self, cgroup: &Path, pins: &[PathBuf; 2]) -> Result<(), EnforceError> {
        let mut guard = self.ensure_netq()?;
        let Some(loaded) = guard.as_mut() else {
            return Err(prog_err(abi::PROG_NETQ_EGRESS, "object not loaded"));
        };
        let dir = fs::File::open(cgroup).map_err(|source| EnforceError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        let plan = [
            (
                abi::PROG_NETQ_INGRESS,
                CgroupSkbAttachType::Ingress,
                &pins[0],
            ),
            (abi::PROG_NETQ_EGRESS, CgroupSkbAttachType::Egress, &pins[1]),
        ];
        let mut pinned: Vec<PathBuf> = Vec::new();
        for (name, attach_type, pin) in plan {
            let result = (|| {
                let program = loaded
                    .ebpf
                    .program_mut(name)
                    .ok_or_else(|| prog_err(name, "not in the object"))?;
                let skb: &mut CgroupSkb = program.try_into().map_err(|e| prog_err(name, e))?;
                // A bpf_link attachment (kernel >= 5.7) takes no flags and always runs beside
                // the cgroup's other programs (multi-attach semantics: any drop wins).
                let id = skb
                    .attach(&dir, attach_type, CgroupAttachMode::Single)
                    .map_err(|e| {
                        prog_err(
                            name,
                            format!("attach to {}: {}", cgroup.display(), chain(&e)),
                        )
                    })?;
                let link = skb.take_link(id).map_err(|e| prog_err(name, e))?;
                let fd_link = FdLink::try_from(link).map_err(|e| EnforceError::Link {
                    path: pin.clone(),
                    reason: format!("not a bpf_link (kernel older than 5.7?): {e}"),
                })?;
                let _ = fs::remove_file(pin);
                fd_link.pin(pin).map_err(|e| EnforceError::Link {
                    path: pin.clone(),
                    reason: e.to_string(),
                })?;
                Ok::<(), EnforceError>(())
            })();
            if let Err(e) = result {
                // Never leave half a quarantine behind.
                for p in &pinned {
                    let _ = unpin_link(p);
                }
                return Err(e);
            }
            pinned.push(pin.clone());
        }
        Ok(())
    }
}

/// An error with its sources (aya's syscall errors keep the errno in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn prog_err(program: &'static str, reason: impl std::fmt::Display) -> EnforceError {
    EnforceError::Program {
        program,
        reason: reason.to_string(),
    }
}

fn map_err(map: &str, reason: impl std::fmt::Display) -> EnforceError {
    EnforceError::Map {
        map: map.to_owned(),
        reason: reason.to_string(),
    }
}

/// Removes every entry of the block map; returns how many there were.
fn clear_block_map(ebpf: &mut Ebpf) -> Result<usize, EnforceError> {
    let map = ebpf
        .map_mut(abi::MAP_BLOCK_EXEC)
        .ok_or_else(|| map_err(abi::MAP_BLOCK_EXEC, "not in the object"))?;
    let mut map: BpfHashMap<&mut MapData, [u8; abi::BLOCK_PATH_LEN], abi::BlockRefs> =
        BpfHashMap::try_from(map).map_err(|e| map_err(abi::MAP_BLOCK_EXEC, e))?;
    let keys: Vec<[u8; abi::BLOCK_PATH_LEN]> = map.keys().filter_map(Result::ok).collect();
    for k in &keys {
        let _ = map.remove(k);
    }
    Ok(keys.len())
}

/// Unpins a link; the link (and its attachment) goes with its last reference. A missing pin
/// was already released.
fn unpin_link(pin: &Path) -> Result<(), EnforceError> {
    if !pin.exists() {
        return Ok(());
    }
    match PinnedLink::from_pin(pin) {
        Ok(link) => {
            link.unpin().map_err(|e| EnforceError::Link {
                path: pin.to_path_buf(),
                reason: format!("unpin: {e}"),
            })?;
            Ok(())
        }
        // Not a link (a stray file): removing it is all release can do.
        Err(e) => fs::remove_file(pin).map_err(|source| EnforceError::Link {
            path: pin.to_path_buf(),
            reason: format!("{e}; remove: {source}"),
        }),
    }
}

/// A block-map key: the path, NUL-terminated and zero-padded; `None` when it does not fit
/// (the kernel never matches a filename that fills the key).
fn path_key(path: &str) -> Option<[u8; abi::BLOCK_PATH_LEN]> {
    let bytes = path.as_bytes();
    if bytes.len() >= abi::BLOCK_PATH_LEN - 1 || bytes.contains(&0) {
        return None;
    }
    let mut key = [0u8; abi::BLOCK_PATH_LEN];
    key[..bytes.len()].copy_from_slice(bytes);
    Some(key)
}

/// Whether `dir` is on a bpf filesystem: its deepest enclosing mount in /proc/mounts is one.
fn is_bpffs(dir: &Path) -> bool {
    let Ok(dir) = fs::canonicalize(dir) else {
        return false;
    };
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_src, point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(point)
                .then(|| (point.len(), fstype == "bpf"))
        })
        .max_by_key(|(len, _)| *len)
        .is_some_and(|(_, bpf)| bpf)
}

/// The keys that block `path`: itself, its canonical form, and its aliases through symlinked
/// bin directories. `path` must be absolute and short enough for a key.
pub fn exec_keys(path: &str) -> Result<Vec<String>, ActionError> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(ActionError::InvalidTarget(format!(
            "block-exec path {path:?} must be absolute without `..`"
        )));
    }
    if path_key(path).is_none() {
        return Err(ActionError::InvalidTarget(format!(
            "block-exec path {path:?} is longer than {} bytes",
            abi::BLOCK_PATH_LEN - 2
        )));
    }
    let mut keys = BTreeSet::from([path.to_owned()]);
    if let Ok(canonical) = fs::canonicalize(p) {
        for alias in aliases(&canonical) {
            if let Some(s) = alias.to_str().filter(|s| path_key(s).is_some()) {
                keys.insert(s.to_owned());
            }
        }
        if let Some(s) = canonical.to_str().filter(|s| path_key(s).is_some()) {
            keys.insert(s.to_owned());
        }
    }
    Ok(keys.into_iter().collect())
}

/// Names of `canonical` under each symlinked bin directory whose target contains it.
fn aliases(canonical: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ALIAS_DIRS {
        let dir = Path::new(dir);
        let is_link = fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            continue;
        }
        let Ok(target) = fs::canonicalize(dir) else {
            continue;
        };
        if let Ok(rest) = canonical.strip_prefix(&target) {
            out.push(dir.join(rest));
        }
    }
    out
}

/// Executable regular files under `roots` whose sha256 is `hash` (lower-case hex), searched
/// to [`HASH_MAX_DEPTH`] levels, at most [`HASH_MAX_FILES`] files hashed; each file once even
/// when two roots reach it.
pub fn files_with_sha256(roots: &[PathBuf], hash: &str) -> Vec<PathBuf> {
    let mut seen_dirs = BTreeSet::new();
    let mut seen_files = BTreeSet::new();
    let mut found = Vec::new();
    let mut hashed = 0usize;
    let mut stack: Vec<(PathBuf, usize)> = roots.iter().rev().map(|r| (r.clone(), 0)).collect();
    while let Some((dir, depth)) = stack.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() || !seen_dirs.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                if depth < HASH_MAX_DEPTH {
                    stack.push((path, depth + 1));
                }
                continue;
            }
            // Symlinks are followed to their file (counted once by inode).
            let Ok(m) = fs::metadata(&path) else { continue };
            if !m.is_file()
                || m.permissions().mode() & 0o111 == 0
                || m.len() > HASH_MAX_BYTES
                || !seen_files.insert((m.dev(), m.ino()))
            {
                continue;
            }
            if hashed >= HASH_MAX_FILES {
                tracing::warn!(
                    limit = HASH_MAX_FILES,
                    "block-exec: sha256 search stopped at its file limit"
                );
                return found;
            }
            hashed += 1;
            if sha256_file(&path).as_deref() == Some(hash) {
                found.push(path);
            }
        }
    }
    found
}

fn sha256_file(path: &Path) -> Option<String> {
    let mut file = fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Some(hex::encode(hasher.finalize()))
}

/// The `block-exec` actuator; see the module docs.
#[derive(Debug, Clone)]
pub struct BlockExecActuator {
    enforcer: std::sync::Arc<Enforcer>,
}

impl BlockExecActuator {
    pub fn new(enforcer: std::sync::Arc<Enforcer>) -> BlockExecActuator {
        BlockExecActuator { enforcer }
    }

    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    /// The keys a rule blocks right now (a sha256 is resolved to files here).
    pub fn resolve(&self, rule: &ExecMatch) -> Result<Vec<String>, ActionError> {
        match rule {
            ExecMatch::Path(path) => exec_keys(path),
            ExecMatch::Sha256(hash) => {
                let hash = hash.to_ascii_lowercase();
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ActionError::InvalidTarget(format!(
                        "sha256 {hash:?}: 64 hex digits expected"
                    )));
                }
                let roots = &self.enforcer.settings.hash_roots;
                let files = files_with_sha256(roots, &hash);
                if files.is_empty() {
                    return Err(ActionError::InvalidTarget(format!(
                        "no executable file with sha256 {hash} under {}",
                        roots
                            .iter()
                            .map(|r| r.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                let mut keys = BTreeSet::new();
                for file in files {
                    if let Some(s) = file.to_str() {
                        if let Ok(k) = exec_keys(s) {
                            keys.extend(k);
                        }
                    }
                }
                Ok(keys.into_iter().collect())
            }
        }
    }
}

/// Handles are the JSON list of keys the action holds.
fn keys_from_handle(handle: &str) -> Result<Vec<String>, ActionError> {
    serde_json::from_str(handle)
        .map_err(|e| ActionError::Failed(format!("unreadable block-exec handle {handle:?}: {e}")))
}

impl Actuator for BlockExecActuator {
    fn execute(&self, _ctx: &ExecContext<'_>, req: &ActionRequest) -> Result<Outcome, ActionError> {
        let ActionRequest::BlockExec(rule) = req else {
            return Err(ActionError::Failed(format!(
                "block-exec actuator got a {} request",
                req.name()
            )));
        };
        let keys = self.resolve(rule)?;
        self.enforcer.block_keys(&keys)?;
        tracing::info!(keys = %keys.join(","), "block-exec: rule installed");
        let handle = serde_json::to_string(&keys)
            .map_err(|e| ActionError::Failed(format!("block-exec handle: {e}")))?;
        Ok(Outcome::Held { handle })
    }

    fn release(&self, action: &ActiveAction) -> Result<(), ActionError> {
        let keys = keys_from_handle(&action.handle)?;
        self.enforcer.unblock_keys(&keys)?;
        tracing::info!(keys = %keys.join(","), "block-exec: rule removed");
        Ok(())
    }
}

/// The `network-quarantine` actuator; see the module docs.
#[derive(Debug)]
pub struct NetQuarantineActuator {
    enforcer: std::sync::Arc<Enforcer>,
    resolver: FreezeActuator,
}

/// What a quarantine holds: the cgroup and the two pinned links.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineHandle {
    pub cgroup: PathBuf,
    pub links: [PathBuf; 2],
}

impl NetQuarantineActuator {
    pub fn new(enforcer: std::sync::Arc<Enforcer>) -> NetQuarantineActuator {
        NetQuarantineActuator::with_layout(enforcer, CgroupLayout::detect())
    }

    pub fn with_layout(
        enforcer: std::sync::Arc<Enforcer>,
        layout: CgroupLayout,
    ) -> NetQuarantineActuator {
        NetQuarantineActuator {
            enforcer,
            resolver: FreezeActuator::with_layout(layout),
        }
    }

    fn pins(&self, action_id: &str) -> Result<[PathBuf; 2], ActionError> {
        if action_id.is_empty()
            || !action_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ActionError::Failed(format!(
                "action id {action_id:?} cannot name a pin"
            )));
        }
        let dir = &self.enforcer.settings.pin_dir;
        Ok([
            dir.join(format!("netq-{action_id}-ingress")),
            dir.join(format!("netq-{action_id}-egress")),
        ])
    }

    fn handle_of(action: &ActiveAction) -> Result<QuarantineHandle, ActionError> {
        serde_json::from_str(&action.handle).map_err(|e| {
            ActionError::Failed(format!(
                "unreadable network-quarantine handle {:?}: {e}",
                action.handle
            ))
        })
    }

    /// Whether the links of `handle` are in place (pinned).
    pub fn is_held(handle: &QuarantineHandle) -> bool {
        handle.links.iter().all(|l| l.exists())
    }
}

impl Actuator for NetQuarantineActuator {
    fn execute(&self, ctx: &ExecContext<'_>, req: &ActionRequest) -> Result<Outcome, ActionError> {
        let ActionRequest::NetworkQuarantine(workload) = req else {
            return Err(ActionError::Failed(format!(
                "network-quarantine actuator got a {} request",
                req.name()
            )));
        };
        let target = self.resolver.resolve(workload)?;
        if target.freezer != Freezer::V2 {
            return Err(ActionError::Unsupported(format!(
                "{} is a cgroup v1 directory; network quarantine needs the workload's cgroup v2",
                target.dir.display()
            )));
        }
        let links = self.pins(ctx.action_id)?;
        self.enforcer.quarantine(&target.dir, &links)?;
        tracing::info!(cgroup = %target.dir.display(), allow_loopback = self.enforcer.settings.allow_loopback, "network quarantine attached");
        let handle = QuarantineHandle {
            cgroup: target.dir,
            links,
        };
        let handle = serde_json::to_string(&handle)
            .map_err(|e| ActionError::Failed(format!("network-quarantine handle: {e}")))?;
        Ok(Outcome::Held { handle })
    }

    fn release(&self, action: &ActiveAction) -> Result<(), ActionError> {
        let handle = Self::handle_of(action)?;
        // Only pins this actuator makes (a hand-edited state file naming another file).
        let dir = &self.enforcer.settings.pin_dir;
        for link in &handle.links {
            let ours = link.parent() == Some(dir.as_path())
                && link
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("netq-"));
            if !ours {
                return Err(ActionError::InvalidTarget(format!(
                    "{} is not a quarantine pin under {}",
                    link.display(),
                    dir.display()
                )));
            }
        }
        for link in &handle.links {
            unpin_link(link)?;
        }
        tracing::info!(cgroup = %handle.cgroup.display(), "network quarantine released");
        Ok(())
    }

    /// The pinned links outlive the daemon: when both are still there the quarantine never
    /// stopped; otherwise what is left is removed and the quarantine is attached again.
    fn reapply(
        &self,
        ctx: &ExecContext<'_>,
        action: &ActiveAction,
    ) -> Result<Outcome, ActionError> {
        if let Ok(handle) = Self::handle_of(action) {
            if Self::is_held(&handle) && handle.cgroup.is_dir() {
                return Ok(Outcome::Held {
                    handle: action.handle.clone(),
                });
            }
            for link in &handle.links {
                let _ = unpin_link(link);
            }
        }
        self.execute(ctx, &action.request)
    }
}

/// Whether BPF LSM programs can be used here: the kernel must support the program type and
/// have `bpf` in its active LSM list. Logged at start; deny-open uses fanotify either way
/// (this daemon has no BPF LSM path yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsmSupport {
    /// The active LSMs (`/sys/kernel/security/lsm`), when readable.
    pub active: Option<String>,
    /// `bpf` is among them.
    pub bpf_active: bool,
}

/// Probes for BPF LSM (see [`LsmSupport`]).
pub fn probe_bpf_lsm() -> LsmSupport {
    let active = fs::read_to_string("/sys/kernel/security/lsm")
        .ok()
        .map(|s| s.trim().to_owned());
    let bpf_active = active
        .as_deref()
        .is_some_and(|l| l.split(',').any(|m| m == "bpf"));
    LsmSupport { active, bpf_active }
}

/// Logs what the kernel offers the enforcement actuators (daemon start).
pub fn log_kernel_support() {
    let lsm = probe_bpf_lsm();
    tracing::info!(
        bpf_lsm = lsm.bpf_active,
        active_lsms = lsm.active.as_deref().unwrap_or("(securityfs not readable)"),
        "BPF LSM {}; deny-open uses fanotify permission events",
        if lsm.bpf_active {
            "is available"
        } else {
            "is not available"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_zero_padded_and_bounded() {
        let k = path_key("/usr/bin/nc").unwrap();
        assert_eq!(&k[..11], b"/usr/bin/nc");
        assert!(k[11..].iter().all(|&b| b == 0));
        assert!(path_key(&"a".repeat(abi::BLOCK_PATH_LEN - 2)).is_some());
        assert!(path_key(&"a".repeat(abi::BLOCK_PATH_LEN - 1)).is_none());
        assert!(path_key("a\0b").is_none());
    }

    #[test]
    fn exec_keys_refuse_relative_and_dotdot_and_add_canonical_forms() {
        assert!(matches!(
            exec_keys("bin/sh"),
            Err(ActionError::InvalidTarget(_))
        ));
        assert!(matches!(
            exec_keys("/usr/../bin/sh"),
            Err(ActionError::InvalidTarget(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let keys = exec_keys(link.to_str().unwrap()).unwrap();
        let canonical = fs::canonicalize(&real).unwrap();
        assert!(keys.contains(&link.display().to_string()));
        assert!(keys.contains(&canonical.display().to_string()), "{keys:?}");
    }

    #[test]
    fn sha256_search_finds_executables_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, b"payload").unwrap();
        fs::set_permissions(&a, fs::Permissions::from_mode(0o755)).unwrap();
        let sub = dir.path().join("x/y");
        fs::create_dir_all(&sub).unwrap();
        let b = sub.join("b");
        fs::write(&b, b"payload").unwrap();
        fs::set_permissions(&b, fs::Permissions::from_mode(0o700)).unwrap();
        // Same contents, not executable: not a candidate.
        fs::write(dir.path().join("c"), b"payload").unwrap();
        let hash = hex::encode(Sha256::digest(b"payload"));
        let roots = vec![dir.path().to_path_buf(), dir.path().to_path_buf()];
        let mut found = files_with_sha256(&roots, &hash);
        found.sort();
        assert_eq!(found, vec![a, b]);
    }

    #[test]
    fn handles_round_trip() {
        let h = QuarantineHandle {
            cgroup: PathBuf::from("/sys/fs/cgroup/unified/x"),
            links: [
                PathBuf::from("/p/netq-a-ingress"),
                PathBuf::from("/p/netq-a-egress"),
            ],
        };
        let s = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<QuarantineHandle>(&s).unwrap(), h);
        let keys = vec!["/a".to_owned(), "/b".to_owned()];
        assert_eq!(
            keys_from_handle(&serde_json::to_string(&keys).unwrap()).unwrap(),
            keys
        );
    }
}
