//! The kernel-backed actuators `block-exec` and `network-quarantine`, and the loader of their
//! eBPF object (`palisade-enforce`, built beside the event programs by host/build.rs and
//! embedded). Owns the bpffs pin directory (`actions.bpf_pin_dir`): the block maps and the
//! quarantine links are pinned there, so `palisade actions release` (another process) can undo
//! them and a restarted daemon finds them. Never touches the event source's object.
//!
//! **block-exec.** The `enforce_exec` program on `sched/sched_process_exec` sends SIGKILL to a
//! process whose new image matches a rule, before it runs user code, whatever its parent. It
//! matches two kinds of key, each in its own pinned map with a holder count per key (so two
//! rules on one file release independently, and `palisade actions release` in another process
//! can edit them):
//! - **file identity** (`BLOCK_EXEC_INODE`): (device, inode) of `current->mm->exe_file`, read
//!   in the kernel at offsets resolved from the running kernel's BTF (`ebpf::btf`). A path
//!   rule resolves its path, following symlinks, to the file's identity when it is made and
//!   again at each daemon start; the exec is then blocked whatever name it uses: a relative
//!   name, a symlink, a hard link, `/proc/self/fd/N`, `execveat(fd, "", AT_EMPTY_PATH)`, a bind
//!   mount. The device is the kernel's `s_dev`, taken from the mount's line in
//!   `/proc/self/mountinfo` (`statx` mount id; the table is read once per rule resolution),
//!   not `st_dev` (which differs on btrfs). The daemon keeps an `O_PATH` descriptor on every
//!   blocked file so its inode number cannot be reused by another file while the rule holds.
//!   When the BTF offsets are unknown, identity matching is off (logged as an error at load)
//!   and only path keys apply.
//! - **path string** (`BLOCK_EXEC`): the filename the exec call named, as the rule wrote it,
//!   its canonical form and its aliases through symlinked bin directories (`/bin` ->
//!   `/usr/bin`). This covers what the identity cannot: a path that does not exist yet, a file
//!   replaced later by a new one (new inode) at the same path, and scripts (whose `exe_file` is
//!   the interpreter, so only the script's path can match).
//!
//! A rule for a sha256 blocks, by identity and path, the executable files carrying that hash
//! under the hash roots ([`DEFAULT_HASH_ROOTS`]) when it is made and at each start, and records
//! the hash in the pinned `BLOCK_EXEC_SHA256` map; while any is recorded, a fanotify exec check
//! (`fanotify::OpenDenier::check_execs`, `FAN_OPEN_EXEC_PERM` on every executable filesystem)
//! hashes each file being executed (once per (device, inode, size, mtime, ctime)) and denies a
//! match with EPERM, so a copy made after the rule is refused too. The program lives while the
//! daemon does; the first block in a process clears the pinned maps, since the daemon re-applies
//! every held rule from the state file at start.
//!
//! Not covered: a binary run through the dynamic loader (`ld.so ./x`: `exe_file` is the loader
//! and the file is only mmapped), and a sha256 match on a file larger than [`HASH_MAX_BYTES`].
//!
//! **network-quarantine.** The workload is resolved like `freeze` does (cgroup id, container
//! id, cgroup path; never the root or the daemon's own cgroup), and must be a cgroup v2
//! directory. `netq_ingress` and `netq_egress` (cgroup_skb) are attached to it as bpf_links
//! (multi-attach semantics: other programs there keep working; any drop wins) and drop every
//! packet except, when `actions.network_quarantine.allow_loopback` is set, loopback traffic.
//! Both links are pinned as `netq-<action id>-{ingress,egress}` and their descriptors closed,
//! so the quarantine holds even while the daemon is down; release unpins them, which detaches.
//! The handle records the cgroup id: a workload restarted under the same name gets a new cgroup
//! at the same path, on which the old links do nothing (they stay pinned, attached to the
//! removed cgroup), so [`Actuator::holds`] compares the id and the broker attaches again.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::{CgroupSkb, CgroupSkbAttachType, TracePoint};
use aya::Pod;
use aya::{Ebpf, EbpfLoader};
use palisade_common::enforce as abi;
use palisade_common::kernel::{self as kabi, KernelOffsets};

use super::fanotify::{DenySettings, ExecCheck, OpenDenier};
use super::safe_path::{self, SafePathError};
use crate::mountinfo;

use super::freeze::{CgroupIdentity, CgroupLayout, FreezeActuator, FreezeTarget, Freezer};
use super::{
    ActionError, ActionRequest, ActiveAction, Actuator, ExecContext, ExecMatch, Hold, Outcome,
};

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
    #[error("cannot use bpffs pin directory {path}: {source}")]
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
    #[error("sha256 exec check (fanotify): {reason}")]
    ExecCheck { reason: String },
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
    /// Match execs by file identity (needs the BTF offsets); `false` keeps path keys only.
    pub inode_match: bool,
    /// Deadline and default of the sha256 exec check (`[actions.deny]`).
    pub exec_check: DenySettings,
}

impl EnforceSettings {
    pub fn from_config(actions: &crate::config::ActionsConfig) -> EnforceSettings {
        EnforceSettings {
            pin_dir: actions.bpf_pin_dir.clone(),
            allow_loopback: actions.network_quarantine.allow_loopback,
            hash_roots: DEFAULT_HASH_ROOTS.iter().map(PathBuf::from).collect(),
            inode_match: true,
            exec_check: DenySettings::from_config(&actions.deny),
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
    /// Kills that matched by file identity.
    pub killed_by_inode: u64,
    /// Execs whose file identity was not read (offsets unknown or a read failed).
    pub inode_unavailable: u64,
}

/// One blocked file by identity: the kernel's device encoding (`s_dev`), the inode number,
/// and the path it was resolved from (for people reading `actions list`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKey {
    pub dev: u32,
    pub ino: u64,
    pub path: String,
}

impl FileKey {
    fn key(&self) -> abi::InodeKey {
        [u64::from(self.dev), self.ino]
    }
}

/// The keys one block-exec action holds (its handle, as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockKeys {
    /// Path-string keys.
    pub paths: Vec<String>,
    /// File-identity keys.
    #[serde(default)]
    pub files: Vec<FileKey>,
    /// The sha256 (lower-case hex) recorded for the exec check, when the rule is one and the
    /// check runs.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// What the sha256 exec check did since it started in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecCheckCounters {
    /// Execs whose hash was looked up (some rule recorded, or the hash already cached).
    pub checked: u64,
    /// Files hashed (cache misses).
    pub hashed: u64,
    /// Execs denied.
    pub denied: u64,
    /// Files over [`HASH_MAX_BYTES`], allowed unhashed.
    pub too_large: u64,
    /// Nanoseconds the check spent on execs answered from the hash cache, and on those that
    /// hashed the file (the verdict's cost in the daemon, not the fanotify round trip).
    pub cached_ns: u64,
    pub hashed_ns: u64,
}

/// The loaded object, shared by both actuators; programs are loaded and attached on first use.
struct Loaded {
    ebpf: Ebpf,
    exec_attached: bool,
    netq_loaded: bool,
    /// The identity offsets are known (and `inode_match` is on).
    inode_blocking: bool,
}

/// The running sha256 exec check of this process.
struct ExecGuard {
    denier: OpenDenier,
    check: Arc<HashCheck>,
}

/// The enforcement object of one process: loaded lazily, so the operator's CLI, which only
/// releases, never loads or attaches anything.
pub struct Enforcer {
    settings: EnforceSettings,
    loaded: Mutex<Option<Loaded>>,
    /// `O_PATH` descriptors of the files blocked by identity (keeps their inode numbers from
    /// being reused while blocked).
    pins: Mutex<HashMap<abi::InodeKey, OwnedFd>>,
    exec_guard: Mutex<Option<ExecGuard>>,
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
            pins: Mutex::new(HashMap::new()),
            exec_guard: Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &EnforceSettings {
        &self.settings
    }

    fn map_pin(&self, name: &str) -> PathBuf {
        self.settings.pin_dir.join(name)
    }

    /// A pinned map of this directory (any process).
    fn pinned<K: Pod>(
        &self,
        name: &str,
    ) -> Result<BpfHashMap<MapData, K, abi::BlockRefs>, EnforceError> {
        let pin = self.map_pin(name);
        let data = MapData::from_pin(&pin).map_err(|e| map_err(&pin.display().to_string(), e))?;
        BpfHashMap::try_from(Map::HashMap(data)).map_err(|e| map_err(name, e))
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
        let on_bpffs = is_bpffs(dir).map_err(|source| EnforceError::PinDir {
            path: dir.clone(),
            source,
        })?;
        if !on_bpffs {
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
            let offsets = self.identity_offsets();
            let inode_blocking = kabi::IDENTITY_SLOTS
                .iter()
                .all(|&slot| offsets[slot] != kabi::OFFSET_UNKNOWN);
            if !inode_blocking {
                tracing::error!(
                    "block-exec: INODE BLOCKING UNAVAILABLE (kernel struct offsets unknown): \
                     blocks match the exec'd path string only, so an exec by a relative name, \
                     a symlink, a hard link, /proc/self/fd or a bind mount is NOT blocked"
                );
            }
            let ebpf = EbpfLoader::new()
                .default_map_pin_directory(&self.settings.pin_dir)
                .override_global(abi::GLOBAL_NETQ_ALLOW_LOOPBACK, &allow, true)
                .override_global(kabi::GLOBAL_KERNEL_OFFSETS, &offsets, true)
                .load(ENFORCE_OBJECT)
                .map_err(|source| EnforceError::Load {
                    source: Box::new(source),
                })?;
            *guard = Some(Loaded {
                ebpf,
                exec_attached: false,
                netq_loaded: false,
                inode_blocking,
            });
        }
        Ok(guard)
    }

    /// The offsets the exec program gets: from the running kernel's BTF, all unknown when
    /// `inode_match` is off or BTF is unreadable.
    fn identity_offsets(&self) -> KernelOffsets {
        if !self.settings.inode_match {
            return kabi::UNKNOWN_OFFSETS;
        }
        crate::ebpf::btf::running_kernel_offsets()
    }

    /// Whether execs are matched by file identity; `None` until the object is loaded here.
    pub fn inode_blocking(&self) -> Option<bool> {
        lock(&self.loaded).as_ref().map(|l| l.inode_blocking)
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
            let ebpf = &mut loaded.ebpf;
            let stale = clear_map::<[u8; abi::BLOCK_PATH_LEN]>(ebpf, abi::MAP_BLOCK_EXEC)?
                + clear_map::<abi::InodeKey>(ebpf, abi::MAP_BLOCK_EXEC_INODE)?
                + clear_map::<[u8; 32]>(ebpf, abi::MAP_BLOCK_EXEC_SHA256)?;
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
            tracing::info!(pin = %self.map_pin(abi::MAP_BLOCK_EXEC).display(), "block-exec: exec program attached");
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

    /// Puts `resolved` in place (attaching the program first if needed): one holder more on
    /// each key, the files pinned, the exec check started for a sha256. Returns the keys
    /// actually held (file keys only when identity matching is available), for release.
    fn block(&self, resolved: Resolved) -> Result<BlockKeys, EnforceError> {
        let guard = self.ensure_exec()?;
        let inode_blocking = guard.as_ref().is_some_and(|l| l.inode_blocking);
        let mut held = BlockKeys::default();
        if let Some(hash) = &resolved.keys.sha256 {
            match self.ensure_exec_check() {
                Ok(()) => held.sha256 = Some(hash.clone()),
                Err(error) => {
                    tracing::error!(%error, sha256 = %hash, "block-exec: the sha256 exec check is unavailable; copies of the file made after this rule are NOT blocked");
                    if resolved.keys.files.is_empty() && resolved.keys.paths.is_empty() {
                        return Err(error);
                    }
                }
            }
        }
        let result = (|| {
            if let Some(hash) = &held.sha256 {
                let mut map = self.pinned::<[u8; 32]>(abi::MAP_BLOCK_EXEC_SHA256)?;
                add_ref(&mut map, hash_bytes(hash)?, abi::MAP_BLOCK_EXEC_SHA256)?;
            }
            let mut paths = self.pinned::<[u8; abi::BLOCK_PATH_LEN]>(abi::MAP_BLOCK_EXEC)?;
            for path in &resolved.keys.paths {
                let k =
                    path_key(path).ok_or_else(|| map_err(abi::MAP_BLOCK_EXEC, "key too long"))?;
                add_ref(&mut paths, k, abi::MAP_BLOCK_EXEC)?;
                held.paths.push(path.clone());
            }
            if inode_blocking {
                let mut files = self.pinned::<abi::InodeKey>(abi::MAP_BLOCK_EXEC_INODE)?;
                let mut pins = lock(&self.pins);
                for (file, fd) in resolved.keys.files.iter().zip(resolved.pins) {
                    add_ref(&mut files, file.key(), abi::MAP_BLOCK_EXEC_INODE)?;
                    pins.insert(file.key(), fd);
                    held.files.push(file.clone());
                }
            }
            Ok::<(), EnforceError>(())
        })();
        drop(guard);
        if let Err(e) = result {
            // Never leave half a rule behind.
            let _ = self.unblock(&held);
            return Err(e);
        }
        Ok(held)
    }

    /// Removes one holder from each key through the pinned maps (works from any process; a
    /// missing pin or key means there is nothing left to undo).
    pub fn unblock(&self, keys: &BlockKeys) -> Result<(), EnforceError> {
        let pin = self.map_pin(abi::MAP_BLOCK_EXEC);
        if !pin.exists() {
            tracing::info!(pin = %pin.display(), "block-exec: no pinned map; nothing to release");
            return Ok(());
        }
        let mut paths = self.pinned::<[u8; abi::BLOCK_PATH_LEN]>(abi::MAP_BLOCK_EXEC)?;
        for key in &keys.paths {
            if let Some(k) = path_key(key) {
                drop_ref(&mut paths, k, abi::MAP_BLOCK_EXEC)?;
            }
        }
        // Maps a daemon older than identity matching did not pin are simply absent.
        if !keys.files.is_empty() && self.map_pin(abi::MAP_BLOCK_EXEC_INODE).exists() {
            let mut files = self.pinned::<abi::InodeKey>(abi::MAP_BLOCK_EXEC_INODE)?;
            for file in &keys.files {
                if drop_ref(&mut files, file.key(), abi::MAP_BLOCK_EXEC_INODE)? {
                    lock(&self.pins).remove(&file.key());
                }
            }
        }
        if let Some(hash) = &keys.sha256 {
            if self.map_pin(abi::MAP_BLOCK_EXEC_SHA256).exists() {
                let mut hashes = self.pinned::<[u8; 32]>(abi::MAP_BLOCK_EXEC_SHA256)?;
                drop_ref(&mut hashes, hash_bytes(hash)?, abi::MAP_BLOCK_EXEC_SHA256)?;
                if hashes.keys().next().is_none() {
                    self.stop_exec_check();
                }
            }
        }
        self.sweep_pins();
        Ok(())
    }

    /// Drops the descriptors of files no longer in the identity map (released by
    /// `palisade actions release` in another process).
    fn sweep_pins(&self) {
        let mut pins = lock(&self.pins);
        if pins.is_empty() {
            return;
        }
        let Ok(files) = self.pinned::<abi::InodeKey>(abi::MAP_BLOCK_EXEC_INODE) else {
            return;
        };
        pins.retain(|k, _| files.get(k, 0).is_ok());
    }

    /// Starts the sha256 exec check of this process, or re-arms it (marking only filesystems
    /// mounted since: a rule re-applied at start costs a mount table read, no mark calls).
    fn ensure_exec_check(&self) -> Result<(), EnforceError> {
        let mut guard = lock(&self.exec_guard);
        if guard.is_none() {
            let denier = OpenDenier::start(self.settings.exec_check).map_err(|e| {
                EnforceError::ExecCheck {
                    reason: e.to_string(),
                }
            })?;
            let check = Arc::new(HashCheck::new(self.map_pin(abi::MAP_BLOCK_EXEC_SHA256)));
            *guard = Some(ExecGuard { denier, check });
        }
        let Some(g) = guard.as_ref() else {
            return Err(EnforceError::ExecCheck {
                reason: "not started".into(),
            });
        };
        g.denier
            .check_execs(Arc::clone(&g.check) as Arc<dyn ExecCheck>)
            .map_err(|e| EnforceError::ExecCheck {
                reason: e.to_string(),
            })?;
        Ok(())
    }

    /// Removes the exec check's filesystem marks (the last sha256 rule went).
    fn stop_exec_check(&self) {
        if let Some(g) = lock(&self.exec_guard).as_ref() {
            if let Err(error) = g.denier.stop_exec_checks() {
                tracing::warn!(%error, "block-exec: cannot remove the exec check's marks");
            }
        }
    }

    /// What the sha256 exec check of this process did; `None` when it never started here.
    pub fn exec_check_counters(&self) -> Option<ExecCheckCounters> {
        lock(&self.exec_guard).as_ref().map(|g| g.check.counters())
    }

    /// Path keys currently in the pinned block map (for tests and diagnostics).
    pub fn blocked_keys(&self) -> Vec<String> {
        let Ok(map) = self.pinned::<[u8; abi::BLOCK_PATH_LEN]>(abi::MAP_BLOCK_EXEC) else {
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

    /// File-identity keys (`[s_dev, inode]`) currently in the pinned map.
    pub fn blocked_files(&self) -> Vec<abi::InodeKey> {
        self.pinned::<abi::InodeKey>(abi::MAP_BLOCK_EXEC_INODE)
            .map(|m| m.keys().filter_map(Result::ok).collect())
            .unwrap_or_default()
    }

    /// sha256 keys (lower-case hex) currently recorded for the exec check.
    pub fn blocked_hashes(&self) -> Vec<String> {
        self.pinned::<[u8; 32]>(abi::MAP_BLOCK_EXEC_SHA256)
            .map(|m| m.keys().filter_map(Result::ok).map(hex::encode).collect())
            .unwrap_or_default()
    }

    /// The kernel's run statistics of the exec program (total run time, runs; zero unless
    /// `kernel.bpf_stats_enabled` is 1), once it is attached in this process.
    pub fn exec_program_stats(&self) -> Option<(std::time::Duration, u64)> {
        let guard = lock(&self.loaded);
        let loaded = guard.as_ref().filter(|l| l.exec_attached)?;
        let tp: &TracePoint = loaded.ebpf.program(abi::PROG_BLOCK_EXEC)?.try_into().ok()?;
        let info = tp.info().ok()?;
        Some((info.run_time(), info.run_count()))
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
            killed_by_inode: sum(abi::BLOCK_COUNTER_KILLED_BY_INODE),
            inode_unavailable: sum(abi::BLOCK_COUNTER_INODE_UNAVAILABLE),
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

/// Removes every entry of block-exec map `name` (keys of type `K`); returns how many there
/// were. The key type is checked against the map's key size when the map is opened.
fn clear_map<K: Pod>(ebpf: &mut Ebpf, name: &str) -> Result<usize, EnforceError> {
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| map_err(name, "not in the object"))?;
    let mut map: BpfHashMap<&mut MapData, K, abi::BlockRefs> =
        BpfHashMap::try_from(map).map_err(|e| map_err(name, e))?;
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for k in &keys {
        let _ = map.remove(k);
    }
    Ok(keys.len())
}

/// One holder more on `k`.
fn add_ref<K: Pod>(
    map: &mut BpfHashMap<MapData, K, abi::BlockRefs>,
    k: K,
    name: &str,
) -> Result<(), EnforceError> {
    let refs = map.get(&k, 0).unwrap_or(0);
    map.insert(k, refs.saturating_add(1), 0)
        .map_err(|e| map_err(name, e))
}

/// One holder less on `k`; `true` when that removed the key (a missing key is already gone).
fn drop_ref<K: Pod>(
    map: &mut BpfHashMap<MapData, K, abi::BlockRefs>,
    k: K,
    name: &str,
) -> Result<bool, EnforceError> {
    match map.get(&k, 0) {
        Ok(refs) if refs > 1 => {
            map.insert(k, refs - 1, 0).map_err(|e| map_err(name, e))?;
            Ok(false)
        }
        Ok(_) => {
            map.remove(&k).map_err(|e| map_err(name, e))?;
            Ok(true)
        }
        Err(_) => Ok(true),
    }
}

fn hash_bytes(hex_hash: &str) -> Result<[u8; 32], EnforceError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut out).map_err(|e| {
        map_err(
            abi::MAP_BLOCK_EXEC_SHA256,
            format!("sha256 {hex_hash:?}: {e}"),
        )
    })?;
    Ok(out)
}

/// A rule resolved to keys (`keys.sha256` set for a sha256 rule), with an `O_PATH` descriptor
/// per file key (same order).
#[derive(Debug, Default)]
struct Resolved {
    keys: BlockKeys,
    pins: Vec<OwnedFd>,
    /// The mount table's devices, read once per resolution when the first file is added.
    mounts: Option<MountDevs>,
}

impl Resolved {
    /// Adds the path keys of `path` (refused when it is relative, has `..` or is too long).
    fn add_path_keys(&mut self, path: &str) -> Result<(), ActionError> {
        for k in exec_keys(path)? {
            if !self.keys.paths.contains(&k) {
                self.keys.paths.push(k);
            }
        }
        Ok(())
    }

    /// A path rule's keys: the path, its canonical forms and the file's identity; but only
    /// the path itself when it goes through a symlink not owned by root. Following such a
    /// link would block what it points at: a responder answering an alert about
    /// `/tmp/d/x -> /usr/bin/bash` would stop every shell on the host. The file is opened
    /// once and the canonical path and identity both come from that walk, so a link swapped
    /// in after the check cannot choose them.
    fn add_path_rule(&mut self, path: &str) -> Result<(), ActionError> {
        check_exec_path(path)?;
        match safe_path::open(Path::new(path)) {
            Ok(opened) => {
                for k in keys_with(path, Some(&opened.path)) {
                    if !self.keys.paths.contains(&k) {
                        self.keys.paths.push(k);
                    }
                }
                self.add_opened(path, opened.fd);
            }
            Err(e @ SafePathError::UntrustedSymlink { .. }) => {
                e.warn_if_untrusted(
                    "block-exec",
                    "only this exact path string is blocked, not the file it leads to",
                );
                self.keys.paths.push(path.to_owned());
            }
            // No file there (yet): the path string still matches a later exec of that name.
            Err(error) => {
                tracing::debug!(path, %error, "block-exec path not resolved; blocking the string");
                self.keys.paths.push(path.to_owned());
            }
        }
        Ok(())
    }

    /// Adds the identity of the file at `path`, when it is an existing regular file reached
    /// without following a symlink not owned by root.
    fn add_identity(&mut self, path: &Path) {
        if let Ok(opened) = safe_path::open(path) {
            self.add_opened(&path.display().to_string(), opened.fd);
        }
    }

    /// Adds the identity of `fd` (named `path` for people), when it is a regular file.
    fn add_opened(&mut self, path: &str, fd: OwnedFd) {
        let mounts = self.mounts.get_or_insert_with(mount_devs);
        if let Some(file) = fd_key(&fd, path, mounts) {
            if !self.keys.files.iter().any(|f| f.key() == file.key()) {
                self.keys.files.push(file);
                self.pins.push(fd);
            }
        }
    }
}

/// The identity of the regular file at `path` (root-owned symlinks followed, no others);
/// `None` when there is no such file.
pub fn file_identity(path: &Path) -> Option<FileKey> {
    let opened = safe_path::open(path).ok()?;
    fd_key(&opened.fd, &path.display().to_string(), &mount_devs())
}

fn fd_key(fd: &OwnedFd, path: &str, mounts: &MountDevs) -> Option<FileKey> {
    let (dev, ino, regular) = statx_identity(fd, mounts).ok()?;
    regular.then(|| FileKey {
        dev,
        ino,
        path: path.to_owned(),
    })
}

/// (kernel `s_dev`, inode, is a regular file) of `fd`. The device comes from the file's mount
/// in `mounts` (mountinfo prints the superblock's `s_dev`) when `statx` gives a mount id
/// found there, else from `stx_dev_*` (equal to `s_dev` except on filesystems such as btrfs).
fn statx_identity(fd: &OwnedFd, mounts: &MountDevs) -> io::Result<(u32, u64, bool)> {
    let stx = mountinfo::statx(
        fd.as_raw_fd(),
        c"",
        libc::AT_EMPTY_PATH,
        libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
    )?;
    let regular = u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFREG;
    let from_mount = (stx.stx_mask & libc::STATX_MNT_ID != 0)
        .then(|| mounts.get(&stx.stx_mnt_id).copied())
        .flatten();
    let dev = from_mount.unwrap_or(kabi::kernel_dev(stx.stx_dev_major, stx.stx_dev_minor));
    Ok((dev, stx.stx_ino, regular))
}

/// Mount id -> the kernel `s_dev` of its superblock.
type MountDevs = HashMap<u64, u32>;

/// The devices of this process's mounts; empty (identities then use `stx_dev`) when the mount
/// table is unreadable, which is logged.
fn mount_devs() -> MountDevs {
    match mountinfo::read_self() {
        Ok(mounts) => mounts.iter().map(|m| (m.id, m.kernel_dev())).collect(),
        Err(error) => {
            tracing::warn!(%error, "block-exec: file devices taken from stat (the mount table is unreadable)");
            MountDevs::new()
        }
    }
}

/// Largest number of cached file hashes; the cache is emptied when full.
const HASH_CACHE_MAX: usize = 8192;

/// Cache key of a file's hash: (device, inode, size, mtime, ctime), so a file changed in place
/// is hashed again.
type HashCacheKey = (u64, u64, u64, i64, i64, i64, i64);

fn cache_key(meta: &fs::Metadata) -> HashCacheKey {
    (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// block-exec's sha256 [`ExecCheck`]: hashes the executed file (through the fanotify event's
/// descriptor) and denies when the pinned `BLOCK_EXEC_SHA256` map holds the hash.
struct HashCheck {
    pin: PathBuf,
    map: Mutex<Option<Sha256Map>>,
    cache: Mutex<HashMap<HashCacheKey, [u8; 32]>>,
    checked: AtomicU64,
    hashed: AtomicU64,
    denied: AtomicU64,
    too_large: AtomicU64,
    cached_ns: AtomicU64,
    hashed_ns: AtomicU64,
}

impl HashCheck {
    fn new(pin: PathBuf) -> HashCheck {
        HashCheck {
            pin,
            map: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            checked: AtomicU64::new(0),
            hashed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
            cached_ns: AtomicU64::new(0),
            hashed_ns: AtomicU64::new(0),
        }
    }

    fn counters(&self) -> ExecCheckCounters {
        ExecCheckCounters {
            checked: self.checked.load(Ordering::Relaxed),
            hashed: self.hashed.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            too_large: self.too_large.load(Ordering::Relaxed),
            cached_ns: self.cached_ns.load(Ordering::Relaxed),
            hashed_ns: self.hashed_ns.load(Ordering::Relaxed),
        }
    }

    /// sha256 of `file`, remembered under `key`.
    fn hash_file(&self, file: &fs::File, key: HashCacheKey) -> Option<[u8; 32]> {
        // The event's descriptor is fresh (offset 0) and closed after the verdict.
        use std::io::Read as _;
        // Capped: a file grown since its size was checked is not read without end.
        let h = super::quarantine::sha256_of(file.take(HASH_MAX_BYTES)).ok()?;
        self.hashed.fetch_add(1, Ordering::Relaxed);
        let mut cache = lock(&self.cache);
        if cache.len() >= HASH_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, h);
        Some(h)
    }
}

impl ExecCheck for HashCheck {
    /// On the fanotify reader: a cached hash, no sha256 rule left, or a file too large to hash.
    fn known_verdict(&self, pid: i32, meta: &fs::Metadata) -> Option<bool> {
        let started = std::time::Instant::now();
        let verdict = self
            .with_map(|hashes| {
                let cached = lock(&self.cache).get(&cache_key(meta)).copied();
                match cached {
                    Some(hash) => Some(self.judge(pid, hashes, hash)),
                    // No sha256 rule left (released from the CLI): nothing to hash. One
                    // BPF_MAP_GET_NEXT_KEY call for the first key, whatever the map's size.
                    None if hashes.keys().next().is_none() => Some(true),
                    None if meta.len() > HASH_MAX_BYTES => {
                        self.too_large.fetch_add(1, Ordering::Relaxed);
                        Some(true)
                    }
                    None => None,
                }
            })
            .unwrap_or(Some(true));
        if verdict.is_some() {
            let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.cached_ns.fetch_add(ns, Ordering::Relaxed);
        }
        verdict
    }

    /// On an exec-check thread: hashes the file (the map is not locked meanwhile, so the other
    /// checker and the reader's cached answers go on).
    fn allow_exec(&self, pid: i32, file: &fs::File, meta: &fs::Metadata) -> bool {
        if let Some(allow) = self.known_verdict(pid, meta) {
            return allow;
        }
        let started = std::time::Instant::now();
        let Some(hash) = self.hash_file(file, cache_key(meta)) else {
            return true;
        };
        let allow = self
            .with_map(|hashes| self.judge(pid, hashes, hash))
            .unwrap_or(true);
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.hashed_ns.fetch_add(ns, Ordering::Relaxed);
        allow
    }
}

type Sha256Map = BpfHashMap<MapData, [u8; 32], abi::BlockRefs>;

impl HashCheck {
    /// `f` on the pinned sha256 map (opened on first use); `None` when it cannot be opened
    /// (logged: execs are then allowed).
    fn with_map<R>(&self, f: impl FnOnce(&Sha256Map) -> R) -> Option<R> {
        let mut map = lock(&self.map);
        if map.is_none() {
            match MapData::from_pin(&self.pin)
                .map_err(|e| e.to_string())
                .and_then(|d| BpfHashMap::try_from(Map::HashMap(d)).map_err(|e| e.to_string()))
            {
                Ok(m) => *map = Some(m),
                Err(error) => {
                    tracing::error!(pin = %self.pin.display(), %error, "block-exec: sha256 map unreadable; exec allowed");
                    return None;
                }
            }
        }
        map.as_ref().map(f)
    }

    /// Whether the exec of a file with this `hash` may go on.
    fn judge(&self, pid: i32, hashes: &Sha256Map, hash: [u8; 32]) -> bool {
        self.checked.fetch_add(1, Ordering::Relaxed);
        if hashes.get(&hash, 0).is_ok() {
            self.denied.fetch_add(1, Ordering::Relaxed);
            // Debug, not warn: a denied process retrying in a loop must not flood the log.
            tracing::debug!(pid, sha256 = %hex::encode(hash), "block-exec: exec of a blocked sha256 denied");
            return false;
        }
        true
    }
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

/// Whether `dir` is on a bpf filesystem, by the filesystem's magic number (what bpftool checks).
fn is_bpffs(dir: &Path) -> io::Result<bool> {
    Ok(mountinfo::filesystem_magic(dir)? == libc::BPF_FS_MAGIC as u32 as u64)
}

/// The keys that block `path`: itself, its canonical form, and its aliases through symlinked
/// bin directories. `path` must be absolute and short enough for a key. The canonical form is
/// only taken when no symlink not owned by root leads there.
pub fn exec_keys(path: &str) -> Result<Vec<String>, ActionError> {
    check_exec_path(path)?;
    let canonical = safe_path::open(Path::new(path)).ok().map(|o| o.path);
    Ok(keys_with(path, canonical.as_deref()))
}

/// `path`, and `canonical` (its resolved form) with its aliases, where they fit a key.
fn keys_with(path: &str, canonical: Option<&Path>) -> Vec<String> {
    let mut keys = BTreeSet::from([path.to_owned()]);
    if let Some(canonical) = canonical {
        for alias in aliases(canonical) {
            if let Some(s) = alias.to_str().filter(|s| path_key(s).is_some()) {
                keys.insert(s.to_owned());
            }
        }
        if let Some(s) = canonical.to_str().filter(|s| path_key(s).is_some()) {
            keys.insert(s.to_owned());
        }
    }
    keys.into_iter().collect()
}

/// A block-exec path must be absolute, without `..`, and fit a path key.
fn check_exec_path(path: &str) -> Result<(), ActionError> {
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
    Ok(())
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
    let file = fs::File::open(path).ok()?;
    Some(hex::encode(super::quarantine::sha256_of(file).ok()?))
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

    /// The keys a rule blocks right now: path keys and file identities (a sha256 is resolved
    /// to the files carrying it here, and kept for the exec check).
    pub fn resolve(&self, rule: &ExecMatch) -> Result<BlockKeys, ActionError> {
        Ok(self.resolve_pinned(rule)?.keys)
    }

    fn resolve_pinned(&self, rule: &ExecMatch) -> Result<Resolved, ActionError> {
        let mut r = Resolved::default();
        match rule {
            ExecMatch::Path(path) => r.add_path_rule(path)?,
            ExecMatch::Sha256(hash) => {
                let hash = hash.to_ascii_lowercase();
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ActionError::InvalidTarget(format!(
                        "sha256 {hash:?}: 64 hex digits expected"
                    )));
                }
                for file in files_with_sha256(&self.enforcer.settings.hash_roots, &hash) {
                    r.add_identity(&file);
                    // A path too long (or not UTF-8) for a key is still blocked by identity.
                    if let Some(s) = file.to_str() {
                        let _ = r.add_path_keys(s);
                    }
                }
                r.keys.sha256 = Some(hash);
            }
        }
        Ok(r)
    }
}

/// Handles are the JSON [`BlockKeys`] the action holds; a daemon before identity matching
/// wrote a plain list of path keys, still accepted.
fn keys_from_handle(handle: &str) -> Result<BlockKeys, ActionError> {
    serde_json::from_str::<BlockKeys>(handle)
        .or_else(|_| {
            serde_json::from_str::<Vec<String>>(handle).map(|paths| BlockKeys {
                paths,
                ..BlockKeys::default()
            })
        })
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
        let resolved = self.resolve_pinned(rule)?;
        let held = self.enforcer.block(resolved)?;
        if held.paths.is_empty() && held.files.is_empty() && held.sha256.is_none() {
            return Err(ActionError::InvalidTarget(format!(
                "no executable file with sha256 under {} and no exec check to catch one later",
                self.enforcer
                    .settings
                    .hash_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        tracing::info!(
            paths = %held.paths.join(","),
            files = held.files.len(),
            sha256 = held.sha256.as_deref().unwrap_or(""),
            "block-exec: rule installed"
        );
        let handle = serde_json::to_string(&held)
            .map_err(|e| ActionError::Failed(format!("block-exec handle: {e}")))?;
        Ok(Outcome::Held { handle })
    }

    fn release(&self, action: &ActiveAction) -> Result<(), ActionError> {
        let keys = keys_from_handle(&action.handle)?;
        self.enforcer.unblock(&keys)?;
        tracing::info!(paths = %keys.paths.join(","), files = keys.files.len(), sha256 = keys.sha256.as_deref().unwrap_or(""), "block-exec: rule removed");
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
    /// The cgroup id (inode of `cgroup`) the links were attached to; absent in handles written
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
}

/// The cgroup v2 id of the directory `dir` (its inode number), if it exists.
fn cgroup_id(dir: &Path) -> Option<u64> {
    CgroupIdentity::of(Freezer::V2, dir).map(|id| id.ino)
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

    /// Whether `link` is a pin this actuator makes: `netq-*` directly under the pin directory.
    fn is_our_pin(&self, link: &Path) -> bool {
        link.parent() == Some(self.enforcer.settings.pin_dir.as_path())
            && link
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("netq-"))
    }

    /// Attaches the quarantine to the resolved, allowed `target` and returns its handle. Pins
    /// left at the action's pin paths are replaced (each one once its new link is attached).
    fn attach(&self, ctx: &ExecContext<'_>, target: FreezeTarget) -> Result<Outcome, ActionError> {
        let links = self.pins(ctx.action_id)?;
        // Read before attaching: an id read after could belong to a cgroup recreated meanwhile,
        // which the check would then wrongly take for the quarantined one.
        let id = cgroup_id(&target.dir);
        self.enforcer.quarantine(&target.dir, &links)?;
        tracing::info!(cgroup = %target.dir.display(), cgroup_id = id, allow_loopback = self.enforcer.settings.allow_loopback, "network quarantine attached");
        let handle = QuarantineHandle {
            cgroup: target.dir,
            links,
            cgroup_id: id,
        };
        let handle = serde_json::to_string(&handle)
            .map_err(|e| ActionError::Failed(format!("network-quarantine handle: {e}")))?;
        Ok(Outcome::Held { handle })
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
        self.attach(ctx, target)
    }

    fn release(&self, action: &ActiveAction) -> Result<(), ActionError> {
        let handle = Self::handle_of(action)?;
        // Only pins this actuator makes (a hand-edited state file naming another file).
        if let Some(link) = handle.links.iter().find(|l| !self.is_our_pin(l)) {
            return Err(ActionError::InvalidTarget(format!(
                "{} is not a quarantine pin under {}",
                link.display(),
                self.enforcer.settings.pin_dir.display()
            )));
        }
        for link in &handle.links {
            unpin_link(link)?;
        }
        tracing::info!(cgroup = %handle.cgroup.display(), "network quarantine released");
        Ok(())
    }

    /// The pinned links outlive the daemon: when both are still there, on the cgroup the
    /// handle names, the quarantine never stopped. Otherwise (a pin is missing, the cgroup was
    /// recreated under the same path, or an old handle without a cgroup id cannot tell) the
    /// quarantine is attached again to the cgroup now at the recorded path, replacing the
    /// pins; a path that is gone is resolved from the request as at first, which fails with
    /// `InvalidTarget` when the workload is gone too.
    fn reapply(
        &self,
        ctx: &ExecContext<'_>,
        action: &ActiveAction,
    ) -> Result<Outcome, ActionError> {
        let Ok(handle) = Self::handle_of(action) else {
            return self.execute(ctx, &action.request);
        };
        let now = cgroup_id(&handle.cgroup);
        if now.is_some() && now == handle.cgroup_id && Self::is_held(&handle) {
            return Ok(Outcome::Held {
                handle: action.handle.clone(),
            });
        }
        let pins = self.pins(ctx.action_id)?;
        if now.is_none() || handle.links != pins {
            for link in handle.links.iter().filter(|l| self.is_our_pin(l)) {
                let _ = unpin_link(link);
            }
        }
        if now.is_none() {
            return self.execute(ctx, &action.request);
        }
        let target = FreezeTarget::at(Freezer::V2, handle.cgroup.clone());
        self.resolver.check_under_hierarchy(&target)?;
        self.resolver.check_allowed(&target)?;
        if let (Some(old), Some(new)) = (handle.cgroup_id, now) {
            if old != new {
                tracing::warn!(
                    action_id = ctx.action_id,
                    cgroup = %handle.cgroup.display(),
                    old_id = old,
                    new_id = new,
                    "quarantined cgroup was recreated; attaching the quarantine to the new one"
                );
            }
        }
        self.attach(ctx, target)
    }

    /// The cgroup at the recorded path is the one the links were attached to, and both pins
    /// are there. An old handle without a cgroup id cannot be checked beyond the pins.
    fn holds(&self, action: &ActiveAction) -> Hold {
        let Ok(handle) = Self::handle_of(action) else {
            return Hold::Holds;
        };
        let Some(now) = cgroup_id(&handle.cgroup) else {
            return Hold::Gone;
        };
        if let Some(old) = handle.cgroup_id.filter(|old| *old != now) {
            return Hold::Recreated {
                old: old.to_string(),
                new: now.to_string(),
            };
        }
        if !Self::is_held(&handle) {
            return Hold::Undone {
                reason: "a quarantine pin is missing".into(),
            };
        }
        Hold::Holds
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
    use sha2::{Digest, Sha256};

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
    fn a_path_through_a_symlink_not_owned_by_root_blocks_only_that_string() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real");
        fs::write(&target, b"#!/bin/sh\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let link_str = link.to_str().unwrap();
        let root = crate::pack::permissions::effective_uid() == 0;
        if root {
            // A root-owned link is followed: the target's identity and canonical path too.
            let mut r = Resolved::default();
            r.add_path_rule(link_str).unwrap();
            assert_eq!(r.keys.files.len(), 1, "{:?}", r.keys);
            assert!(r.keys.paths.len() >= 2, "{:?}", r.keys);
            std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
        }
        assert!(matches!(
            safe_path::open(&link),
            Err(SafePathError::UntrustedSymlink { link: l, .. }) if l == link
        ));
        let mut r = Resolved::default();
        r.add_path_rule(link_str).unwrap();
        assert_eq!(r.keys.paths, vec![link_str.to_owned()]);
        assert!(
            r.keys.files.is_empty(),
            "identity of the target taken: {:?}",
            r.keys
        );
        assert!(safe_path::open(&target).is_ok());
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
        // The canonical form only through a root-owned link (the test's own link when root).
        let root = crate::pack::permissions::effective_uid() == 0;
        assert_eq!(
            keys.contains(&canonical.display().to_string()),
            root,
            "{keys:?}"
        );
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
        let mut h = QuarantineHandle {
            cgroup: PathBuf::from("/sys/fs/cgroup/unified/x"),
            links: [
                PathBuf::from("/p/netq-a-ingress"),
                PathBuf::from("/p/netq-a-egress"),
            ],
            cgroup_id: Some(4242),
        };
        let s = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<QuarantineHandle>(&s).unwrap(), h);
        // A handle written before the cgroup id was recorded.
        let old = r#"{"cgroup":"/sys/fs/cgroup/unified/x","links":["/p/netq-a-ingress","/p/netq-a-egress"]}"#;
        h.cgroup_id = None;
        assert_eq!(serde_json::from_str::<QuarantineHandle>(old).unwrap(), h);
        assert_eq!(serde_json::to_string(&h).unwrap(), old);
        let keys = BlockKeys {
            paths: vec!["/a".to_owned(), "/b".to_owned()],
            files: vec![FileKey {
                dev: kabi::kernel_dev(259, 1),
                ino: 42,
                path: "/a".into(),
            }],
            sha256: Some("ab".repeat(32)),
        };
        assert_eq!(
            keys_from_handle(&serde_json::to_string(&keys).unwrap()).unwrap(),
            keys
        );
        // A handle written before identity matching: a plain list of path keys.
        assert_eq!(
            keys_from_handle(r#"["/a","/b"]"#).unwrap(),
            BlockKeys {
                paths: keys.paths.clone(),
                ..BlockKeys::default()
            }
        );
        assert!(keys_from_handle("{\"paths\":[],\"bogus\":1}").is_err());
    }

    #[test]
    fn pin_directories_must_be_on_bpffs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_bpffs(dir.path()).unwrap());
        let missing = dir.path().join("missing");
        assert_eq!(
            is_bpffs(&missing).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        // Where a bpffs is mounted (CI mounts one), its root is one.
        let bpffs = mountinfo::read_self()
            .unwrap()
            .into_iter()
            .find(|m| m.fstype == "bpf");
        match bpffs {
            Some(m) => assert!(is_bpffs(&m.mount_point).unwrap(), "{m:?}"),
            None => eprintln!(
                "SKIPPED (no bpffs mounted): the positive case of pin_directories_must_be_on_bpffs"
            ),
        }
    }

    #[test]
    fn file_identity_uses_the_kernel_device_encoding_and_follows_root_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let meta = fs::metadata(&real).unwrap();
        let id = file_identity(&real).unwrap();
        assert_eq!(id.ino, meta.ino());
        let root = crate::pack::permissions::effective_uid() == 0;
        if root {
            assert_eq!(file_identity(&link).map(|k| k.ino), Some(meta.ino()));
            std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
        }
        assert!(
            file_identity(&link).is_none(),
            "identity taken through a user's symlink"
        );
        // On ext4, xfs and tmpfs s_dev and st_dev name the same device, in different
        // encodings (on btrfs and overlayfs st_dev may be another device number).
        let fs_magic = mountinfo::filesystem_magic(dir.path()).unwrap();
        if [0xEF53, 0x5846_5342, 0x0102_1994].contains(&fs_magic) {
            let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
            assert_eq!(id.dev, kabi::kernel_dev(major, minor));
        }
        assert!(
            file_identity(dir.path()).is_none(),
            "a directory has no exec identity"
        );
        assert!(file_identity(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn hash_strings_become_map_keys() {
        let h = "0f".repeat(32);
        assert_eq!(hash_bytes(&h).unwrap(), [0x0f; 32]);
        assert!(hash_bytes("0f").is_err());
    }
}
