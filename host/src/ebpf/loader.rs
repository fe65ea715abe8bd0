//! Loads the embedded eBPF object (ring size and globals set at load), attaches the probes in
//! the probe table, and reports in ONE log line which attached, which failed and which
//! lifecycle route (struct reads or syscall tracepoints) is in use. A probe that cannot load or
//! attach (missing tracepoint, verifier refusal) is skipped, never fatal; only "nothing
//! attached at all" is an error.
//!
//! It also owns attaching on demand ([`ProbeSet`]): a program serving only kinds no plugin
//! subscribes to costs every task's syscalls the tracing slow path even when its filter word
//! drops everything, so such programs are detached and attached again when a subscriber
//! appears. Programs stay loaded (verified once); only the perf links come and go. Attaching
//! is cheap (~0.2 ms a program); detaching waits for RCU grace periods in the kernel (~70 ms a
//! program, measured), so detached links are released on a background thread, all at once.

use std::collections::HashMap as StdHashMap;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::trace_point::{TracePointLink, TracePointLinkId};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use palisade_common as abi;
use palisade_common::kernel::{self as koff, KernelOffsets};

use super::EbpfError;

/// The kernel programs, built by host/build.rs (aya-build) and embedded 8-byte aligned.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-ebpf"));

/// When a probe is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Always: the process lifecycle the process cache is built from.
    Always,
    /// Only on the syscall route for argv (`mm->arg_start/arg_end` offsets unknown).
    ArgvFallback,
    /// Only on the syscall route for exit codes (`task->exit_code` offset unknown).
    ExitCodeFallback,
    /// While some plugin subscribes to one of these kinds (bit `1 << KIND_*`).
    Kinds(u32),
}

/// One probe: the program (function) name in the object, its tracepoint and when it is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub program: &'static str,
    pub category: &'static str,
    pub tracepoint: &'static str,
    pub need: Need,
}

impl Probe {
    /// Attach order: syscall-exit halves first, entry halves last, so an entry never stashes
    /// (open, accept) without its exit in place; detaching goes the other way round.
    fn attach_rank(&self) -> u8 {
        if self.program.starts_with("sys_exit_") {
            0
        } else if self.program.starts_with("sys_enter_") {
            2
        } else {
            1
        }
    }

    /// Kinds (bitmask) this probe serves, 0 for lifecycle probes.
    pub fn kinds(&self) -> u32 {
        match self.need {
            Need::Kinds(k) => k,
            _ => 0,
        }
    }
}

const fn tp(program: &'static str, category: &'static str, need: Need) -> Probe {
    // Every program is named after its tracepoint.
    Probe {
        program,
        category,
        tracepoint: program,
        need,
    }
}

const fn kind(k: u32) -> Need {
    Need::Kinds(1 << k)
}

/// Exit hooks that must all be attached before opens are reported at exit (with their result).
const OPEN_EXIT_PROBES: [&str; 4] = [
    "sys_exit_openat",
    "sys_exit_open",
    "sys_exit_creat",
    "sys_exit_openat2",
];

/// Every probe the object defines. Order: argv capture before exec, so an exec is never seen
/// without its capture hook.
pub const PROBES: &[Probe] = &[
    tp("sys_enter_execve", "syscalls", Need::ArgvFallback),
    tp("sys_enter_execveat", "syscalls", Need::ArgvFallback),
    tp("sched_process_exec", "sched", Need::Always),
    tp("task_newtask", "task", Need::Always),
    tp("sys_enter_exit_group", "syscalls", Need::ExitCodeFallback),
    tp("signal_deliver", "signal", Need::ExitCodeFallback),
    tp("sched_process_exit", "sched", Need::Always),
    tp("sys_enter_openat", "syscalls", kind(abi::KIND_FILE_OPEN)),
    tp("sys_enter_open", "syscalls", kind(abi::KIND_FILE_OPEN)),
    tp("sys_enter_creat", "syscalls", kind(abi::KIND_FILE_OPEN)),
    tp("sys_enter_openat2", "syscalls", kind(abi::KIND_FILE_OPEN)),
    tp("sys_exit_openat", "syscalls", kind(abi::KIND_FILE_OPEN)),
    tp("sys_exit_open", "syscalls", kind(abi::KIND_FILE_OPEN)),
    tp("sys_exit_creat", "syscalls", kind(abi::KIND_FILE_OPEN)),
    tp("sys_exit_openat2", "syscalls", kind(abi::KIND_FILE_OPEN)),
    tp("sys_enter_rename", "syscalls", kind(abi::KIND_FILE_RENAME)),
    tp(
        "sys_enter_renameat",
        "syscalls",
        kind(abi::KIND_FILE_RENAME),
    ),
    tp(
        "sys_enter_renameat2",
        "syscalls",
        kind(abi::KIND_FILE_RENAME),
    ),
    tp("sys_enter_unlink", "syscalls", kind(abi::KIND_FILE_UNLINK)),
    tp(
        "sys_enter_unlinkat",
        "syscalls",
        kind(abi::KIND_FILE_UNLINK),
    ),
    tp("sys_enter_rmdir", "syscalls", kind(abi::KIND_FILE_UNLINK)),
    tp("sys_enter_chmod", "syscalls", kind(abi::KIND_FILE_CHMOD)),
    tp("sys_enter_fchmodat", "syscalls", kind(abi::KIND_FILE_CHMOD)),
    tp(
        "sys_enter_fchmodat2",
        "syscalls",
        kind(abi::KIND_FILE_CHMOD),
    ),
    tp("sys_enter_chown", "syscalls", kind(abi::KIND_FILE_CHOWN)),
    tp("sys_enter_lchown", "syscalls", kind(abi::KIND_FILE_CHOWN)),
    tp("sys_enter_fchownat", "syscalls", kind(abi::KIND_FILE_CHOWN)),
    tp("sys_enter_link", "syscalls", kind(abi::KIND_FILE_LINK)),
    tp("sys_enter_linkat", "syscalls", kind(abi::KIND_FILE_LINK)),
    tp("sys_enter_symlink", "syscalls", kind(abi::KIND_FILE_LINK)),
    tp("sys_enter_symlinkat", "syscalls", kind(abi::KIND_FILE_LINK)),
    tp("sys_enter_connect", "syscalls", kind(abi::KIND_NET_CONNECT)),
    tp("sys_enter_accept", "syscalls", kind(abi::KIND_NET_ACCEPT)),
    tp("sys_enter_accept4", "syscalls", kind(abi::KIND_NET_ACCEPT)),
    tp("sys_exit_accept", "syscalls", kind(abi::KIND_NET_ACCEPT)),
    tp("sys_exit_accept4", "syscalls", kind(abi::KIND_NET_ACCEPT)),
    // Listen events, and the local end of passive connections for accept.
    tp(
        "inet_sock_set_state",
        "sock",
        Need::Kinds(1 << abi::KIND_NET_LISTEN | 1 << abi::KIND_NET_ACCEPT),
    ),
    tp("sys_enter_socket", "syscalls", kind(abi::KIND_SOCKET)),
    tp("sys_enter_setuid", "syscalls", kind(abi::KIND_SETUID)),
    tp("sys_enter_setreuid", "syscalls", kind(abi::KIND_SETUID)),
    tp("sys_enter_setresuid", "syscalls", kind(abi::KIND_SETUID)),
    tp("sys_enter_setfsuid", "syscalls", kind(abi::KIND_SETUID)),
    tp("sys_enter_setgid", "syscalls", kind(abi::KIND_SETGID)),
    tp("sys_enter_setregid", "syscalls", kind(abi::KIND_SETGID)),
    tp("sys_enter_setresgid", "syscalls", kind(abi::KIND_SETGID)),
    tp("sys_enter_setfsgid", "syscalls", kind(abi::KIND_SETGID)),
    tp("sys_enter_ptrace", "syscalls", kind(abi::KIND_PTRACE)),
    tp("sys_enter_bpf", "syscalls", kind(abi::KIND_BPF)),
    tp("sys_enter_mount", "syscalls", kind(abi::KIND_MOUNT)),
    tp(
        "sys_enter_memfd_create",
        "syscalls",
        kind(abi::KIND_MEMFD_CREATE),
    ),
    tp("sys_enter_dup2", "syscalls", kind(abi::KIND_FD_DUP)),
    tp("sys_enter_dup3", "syscalls", kind(abi::KIND_FD_DUP)),
];

/// How the lifecycle kinds get what tracepoint arguments do not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routes {
    /// argv read from the new image's memory at `sched_process_exec` (no syscall hook).
    pub argv_from_mm: bool,
    /// Exit code read from `task->exit_code` at `sched_process_exit` (no syscall hook).
    pub exit_code_from_task: bool,
}

impl Routes {
    /// The routes `offsets` make possible (the kernel programs test the same slots).
    pub fn from_offsets(offsets: &KernelOffsets) -> Self {
        let known = |slot: usize| {
            offsets
                .get(slot)
                .is_some_and(|o| *o != koff::OFFSET_UNKNOWN)
        };
        Routes {
            argv_from_mm: known(koff::OFF_TASK_MM)
                && known(koff::OFF_MM_ARG_START)
                && known(koff::OFF_MM_ARG_END),
            exit_code_from_task: known(koff::OFF_TASK_EXIT_CODE),
        }
    }

    /// Whether `probe` is used on these routes at all.
    pub fn uses(&self, probe: &Probe) -> bool {
        match probe.need {
            Need::ArgvFallback => !self.argv_from_mm,
            Need::ExitCodeFallback => !self.exit_code_from_task,
            Need::Always | Need::Kinds(_) => true,
        }
    }

    fn describe(&self) -> &'static str {
        match (self.argv_from_mm, self.exit_code_from_task) {
            (true, true) => "struct reads (argv from mm, exit code from task; no syscall hook)",
            (true, false) => "argv from mm; exit code from syscall/signal hooks",
            (false, true) => "argv from execve hooks; exit code from task",
            (false, false) => "syscall hooks (execve argv, exit_group code; offsets unknown)",
        }
    }
}

/// Load-time settings.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub ring_bytes: u32,
    pub wakeup_bytes: u64,
    pub daemon_tgid: u32,
    /// Report opens at syscall exit with their result (when every exit hook attaches).
    pub open_results: bool,
    /// Programs left unattached on purpose.
    pub skip_probes: &'static [&'static str],
    /// Struct member offsets from the kernel's BTF (`KERNEL_OFFSETS`); unknown slots select the
    /// syscall routes.
    pub offsets: KernelOffsets,
    /// Attach only the lifecycle programs now; kinds' programs are loaded (verified) and their
    /// tracepoints checked, and attached later by [`ProbeSet::attach_kinds`].
    pub on_demand: bool,
}

/// A loaded, attached object and the maps the reader needs.
pub struct Loaded {
    /// Keeps programs and links alive (dropping it detaches everything) and attaches or
    /// detaches kinds' programs on demand.
    pub probes: ProbeSet,
    pub ring: RingBuf<MapData>,
    pub counters: PerCpuArray<MapData, u64>,
    /// The in-kernel filter maps (all passing at load).
    pub filter: super::filter::FilterMaps,
    pub failed: Vec<(&'static str, String)>,
    pub routes: Routes,
}

/// Loads the object and attaches every probe it can (with `on_demand`, only the lifecycle ones;
/// otherwise every kind's programs too: the filter passes everything until someone narrows it,
/// and [`ProbeSet::retain_kinds`] detaches).
pub fn load(opts: LoadOptions) -> Result<Loaded, EbpfError> {
    let routes = Routes::from_offsets(&opts.offsets);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(abi::MAP_EVENTS, opts.ring_bytes)
        .override_global(abi::GLOBAL_DAEMON_TGID, &opts.daemon_tgid, true)
        .override_global(abi::GLOBAL_WAKEUP_BYTES, &opts.wakeup_bytes, true)
        .override_global(koff::GLOBAL_KERNEL_OFFSETS, &opts.offsets, false)
        .load(EBPF_OBJECT)
        .map_err(|source| EbpfError::Load {
            ring_bytes: opts.ring_bytes,
            source: Box::new(source),
        })?;

    let started = Instant::now();
    let mut links = StdHashMap::new();
    let mut usable = Vec::new();
    let mut failed = Vec::new();
    for probe in PROBES {
        if opts.skip_probes.contains(&probe.program) || !routes.uses(probe) {
            continue;
        }
        let later = opts.on_demand && probe.kinds() != 0;
        let outcome = load_program(&mut ebpf, probe).and_then(|()| {
            if later {
                tracepoint_exists(probe).map(|()| None)
            } else {
                attach(&mut ebpf, probe).map(Some)
            }
        });
        match outcome {
            Ok(link) => {
                if let Some(link) = link {
                    links.insert(probe.program, link);
                }
                usable.push(*probe);
            }
            Err(reason) => failed.push((probe.program, reason)),
        }
    }
    let attached: Vec<&'static str> = usable
        .iter()
        .filter(|p| links.contains_key(p.program))
        .map(|p| p.program)
        .collect();
    let ready: Vec<&'static str> = usable
        .iter()
        .filter(|p| !links.contains_key(p.program))
        .map(|p| p.program)
        .collect();
    // Switch opens to exit reporting only when every exit hook is usable (attached, or attached
    // before its entry hooks later); otherwise the entry hooks keep reporting (without a
    // result) and nothing is lost.
    let open_at_exit = opts.open_results
        && OPEN_EXIT_PROBES
            .iter()
            .all(|p| usable.iter().any(|u| u.program == *p));
    if open_at_exit {
        set_config(&mut ebpf, abi::CONFIG_OPEN_AT_EXIT, 1)?;
    }
    let failed_list: Vec<String> = failed
        .iter()
        .map(|(p, why)| format!("{p} ({why})"))
        .collect();
    if usable.is_empty() {
        return Err(EbpfError::NoProbes {
            tried: PROBES.len(),
            failures: failed_list.join("; "),
        });
    }
    tracing::info!(
        attached = attached.len(),
        failed = failed.len(),
        hooks = %attached.join(","),
        on_demand = %ready.join(","),
        failures = %failed_list.join("; "),
        open_at_exit,
        lifecycle = routes.describe(),
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "ebpf probes attached"
    );

    let ring = take(&mut ebpf, abi::MAP_EVENTS, RingBuf::try_from)?;
    let counters = take(&mut ebpf, abi::MAP_COUNTERS, PerCpuArray::try_from)?;
    let filter = super::filter::FilterMaps {
        words: take(&mut ebpf, abi::MAP_FILTER, Array::try_from)?,
        paths: take(&mut ebpf, abi::MAP_FILTER_PATHS, LpmTrie::try_from)?,
        comms: take(&mut ebpf, abi::MAP_FILTER_COMMS, HashMap::try_from)?,
        ports: take(&mut ebpf, abi::MAP_FILTER_PORTS, Array::try_from)?,
        heads: take(&mut ebpf, abi::MAP_FILTER_HEADS, Array::try_from)?,
    };
    Ok(Loaded {
        probes: ProbeSet {
            ebpf,
            usable,
            links,
            open_at_exit,
            releasing: None,
            on_released: None,
        },
        ring,
        counters,
        filter,
        failed,
        routes,
    })
}

/// What one [`ProbeSet`] step changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeChange {
    /// Programs attached (in attach order) or detached (in detach order).
    pub programs: Vec<&'static str>,
    /// Kinds whose programs those were (bit `1 << KIND_*`).
    pub kinds: u32,
    /// Programs that could not be attached or detached, with the reason.
    pub failed: Vec<(&'static str, String)>,
    pub took: Duration,
}

/// The loaded programs and their current links. Lifecycle probes stay attached for its
/// lifetime; kinds' probes are attached and detached on demand. Dropping it detaches all.
pub struct ProbeSet {
    ebpf: Ebpf,
    /// Probes that loaded and attached once (only these are ever attached again).
    usable: Vec<Probe>,
    links: StdHashMap<&'static str, TracePointLinkId>,
    /// Opens are reported at syscall exit (every exit hook attached at load).
    open_at_exit: bool,
    /// The thread releasing the links [`ProbeSet::retain_kinds`] took out; joined before
    /// anything is attached again, so a program never runs twice per event.
    releasing: Option<JoinHandle<Vec<(&'static str, String)>>>,
    /// Told how long each background release took (the kernel's grace periods), from the
    /// release thread.
    on_released: Option<ReleaseListener>,
}

/// Called with the time the kernel took to release one [`ProbeSet::retain_kinds`] step's links.
pub type ReleaseListener = std::sync::Arc<dyn Fn(Duration) + Send + Sync>;

impl Drop for ProbeSet {
    fn drop(&mut self) {
        self.settle();
    }
}

impl ProbeSet {
    /// Sets who is told how long each background release of detached links took.
    pub fn on_released(&mut self, listener: ReleaseListener) {
        self.on_released = Some(listener);
    }

    /// Whether `program` is attached now.
    pub fn is_attached(&self, program: &str) -> bool {
        self.links.contains_key(program)
    }

    /// Programs attached now, in probe-table order.
    pub fn attached(&self) -> Vec<&'static str> {
        self.usable
            .iter()
            .filter(|p| self.links.contains_key(p.program))
            .map(|p| p.program)
            .collect()
    }

    /// Kinds (bitmask) with at least one program attached.
    pub fn attached_kinds(&self) -> u32 {
        self.usable
            .iter()
            .filter(|p| self.links.contains_key(p.program))
            .fold(0, |acc, p| acc | p.kinds())
    }

    /// Waits until links detached earlier are released in the kernel; returns the programs
    /// whose release failed.
    pub fn settle(&mut self) -> Vec<(&'static str, String)> {
        let Some(thread) = self.releasing.take() else {
            return Vec::new();
        };
        thread
            .join()
            .unwrap_or_else(|_| vec![("detach", "the release thread panicked".to_owned())])
    }

    /// Attaches every usable program serving one of `kinds` that is not attached yet, exit
    /// halves before entry halves.
    pub fn attach_kinds(&mut self, kinds: u32) -> ProbeChange {
        let started = Instant::now();
        let mut todo: Vec<Probe> = self
            .usable
            .iter()
            .filter(|p| p.kinds() & kinds != 0 && !self.links.contains_key(p.program))
            .copied()
            .collect();
        if todo.is_empty() {
            return ProbeChange::default();
        }
        todo.sort_by_key(Probe::attach_rank);
        let mut change = ProbeChange {
            failed: self.settle(),
            ..ProbeChange::default()
        };
        for probe in todo {
            match attach(&mut self.ebpf, &probe) {
                Ok(link) => {
                    self.links.insert(probe.program, link);
                    change.programs.push(probe.program);
                    change.kinds |= probe.kinds() & kinds;
                }
                Err(reason) => change.failed.push((probe.program, reason)),
            }
        }
        if self.open_at_exit
            && OPEN_EXIT_PROBES
                .iter()
                .any(|p| change.failed.iter().any(|(f, _)| f == p))
        {
            // An entry hook would stash opens nobody reports: fall back to entry reporting.
            match set_config(&mut self.ebpf, abi::CONFIG_OPEN_AT_EXIT, 0) {
                Ok(()) => self.open_at_exit = false,
                Err(error) => change
                    .failed
                    .push(("CONFIG", format!("open reporting at entry: {error}"))),
            }
        }
        change.took = started.elapsed();
        change
    }

    /// Detaches every attached program none of whose kinds is in `kinds` (lifecycle programs
    /// stay). The programs stop being attached here as far as this set is concerned; the
    /// kernel releases them on a background thread (entry halves before exit halves, each
    /// group at once so the RCU grace periods overlap); failures are reported by the next
    /// [`ProbeSet::settle`] or [`ProbeSet::attach_kinds`].
    pub fn retain_kinds(&mut self, kinds: u32) -> ProbeChange {
        let started = Instant::now();
        let mut todo: Vec<Probe> = self
            .usable
            .iter()
            .filter(|p| {
                p.kinds() != 0 && p.kinds() & kinds == 0 && self.links.contains_key(p.program)
            })
            .copied()
            .collect();
        todo.sort_by_key(|p| std::cmp::Reverse(p.attach_rank()));
        let mut change = ProbeChange::default();
        // Release groups in detach order: entry halves, others, exit halves.
        let mut groups: Vec<Vec<(&'static str, TracePointLink)>> = Vec::new();
        let mut rank = None;
        for probe in todo {
            let Some(link) = self.links.remove(probe.program) else {
                continue;
            };
            match take_link(&mut self.ebpf, &probe, link) {
                Ok(owned) => {
                    if rank != Some(probe.attach_rank()) {
                        rank = Some(probe.attach_rank());
                        groups.push(Vec::new());
                    }
                    if let Some(group) = groups.last_mut() {
                        group.push((probe.program, owned));
                    }
                    change.programs.push(probe.program);
                    change.kinds |= probe.kinds();
                }
                Err(reason) => change.failed.push((probe.program, reason)),
            }
        }
        if !groups.is_empty() {
            change.failed.extend(self.settle());
            let listener = self.on_released.clone();
            let spawned = std::thread::Builder::new()
                .name("ebpf-detach".into())
                .spawn(move || {
                    let started = Instant::now();
                    let failed = release(groups);
                    if let Some(listener) = listener {
                        listener(started.elapsed());
                    }
                    failed
                });
            match spawned {
                Ok(thread) => self.releasing = Some(thread),
                // Without a thread the links were dropped (released) in the failed spawn's
                // closure already.
                Err(error) => change.failed.push(("detach", format!("spawn: {error}"))),
            }
        }
        change.took = started.elapsed();
        change
    }

    /// The kernel's run-time statistics of every loaded program (`run_time_ns`, `run_cnt`;
    /// zero unless `kernel.bpf_stats_enabled` is 1), by program name.
    pub fn program_stats(&self) -> Vec<(&'static str, Duration, u64)> {
        self.usable
            .iter()
            .filter_map(|p| {
                let prog: &TracePoint = self.ebpf.program(p.program)?.try_into().ok()?;
                let info = prog.info().ok()?;
                Some((p.program, info.run_time(), info.run_count()))
            })
            .collect()
    }
}

/// Takes map `name` out of the object as the typed map `convert` makes of it.
fn take<M>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<M, aya::maps::MapError>,
) -> Result<M, EbpfError> {
    let map = ebpf
        .take_map(name)
        .ok_or(EbpfError::MissingMap { map: name })?;
    convert(map).map_err(|source| EbpfError::Map {
        map: name,
        source: Box::new(source),
    })
}

fn set_config(ebpf: &mut Ebpf, index: u32, value: u64) -> Result<(), EbpfError> {
    let map = ebpf.map_mut(abi::MAP_CONFIG).ok_or(EbpfError::MissingMap {
        map: abi::MAP_CONFIG,
    })?;
    let mut config: Array<&mut MapData, u64> =
        Array::try_from(map).map_err(|source| EbpfError::Map {
            map: abi::MAP_CONFIG,
            source: Box::new(source),
        })?;
    config
        .set(index, value, 0)
        .map_err(|source| EbpfError::Map {
            map: abi::MAP_CONFIG,
            source: Box::new(source),
        })
}

fn program<'a>(ebpf: &'a mut Ebpf, probe: &Probe) -> Result<&'a mut TracePoint, String> {
    let program = ebpf
        .program_mut(probe.program)
        .ok_or_else(|| "not in the object".to_owned())?;
    program.try_into().map_err(|e| format!("{e}"))
}

fn load_program(ebpf: &mut Ebpf, probe: &Probe) -> Result<(), String> {
    program(ebpf, probe)?
        .load()
        .map_err(|e| format!("load: {e}"))
}

fn attach(ebpf: &mut Ebpf, probe: &Probe) -> Result<TracePointLinkId, String> {
    program(ebpf, probe)?
        .attach(probe.category, probe.tracepoint)
        .map_err(|e| format!("attach {}/{}: {e}", probe.category, probe.tracepoint))
}

/// Takes the link out of aya's bookkeeping: dropping the returned link detaches it.
fn take_link(
    ebpf: &mut Ebpf,
    probe: &Probe,
    link: TracePointLinkId,
) -> Result<TracePointLink, String> {
    program(ebpf, probe)?
        .take_link(link)
        .map_err(|e| format!("detach {}/{}: {e}", probe.category, probe.tracepoint))
}

/// Drops each group's links concurrently (each close waits for its own grace period), one
/// group after the other.
fn release(groups: Vec<Vec<(&'static str, TracePointLink)>>) -> Vec<(&'static str, String)> {
    let mut failed = Vec::new();
    for group in groups {
        std::thread::scope(|scope| {
            let mut threads = Vec::new();
            for (name, link) in group {
                match std::thread::Builder::new()
                    .name("ebpf-detach".into())
                    .spawn_scoped(scope, move || drop(link))
                {
                    Ok(thread) => threads.push((name, thread)),
                    Err(error) => failed.push((name, format!("release thread: {error}"))),
                }
            }
            for (name, thread) in threads {
                if thread.join().is_err() {
                    failed.push((name, "release panicked".to_owned()));
                }
            }
        });
    }
    failed
}

/// Whether the probe's tracepoint exists (checked without attaching, for on-demand probes).
fn tracepoint_exists(probe: &Probe) -> Result<(), String> {
    let found = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|root| {
            Path::new(root)
                .join("events")
                .join(probe.category)
                .join(probe.tracepoint)
                .join("id")
                .exists()
        });
    if found {
        Ok(())
    } else {
        Err(format!(
            "no tracepoint {}/{} in tracefs",
            probe.category, probe.tracepoint
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_table_names_are_unique_and_in_the_object() {
        let mut names: Vec<&str> = PROBES.iter().map(|p| p.program).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PROBES.len());
        // Parse the object without loading it (no privileges needed).
        let obj = aya_obj_programs();
        for p in PROBES {
            assert!(
                obj.contains(&p.program.to_owned()),
                "{} not in object: {obj:?}",
                p.program
            );
        }
    }

    /// Every kind a plugin can subscribe to has programs (module_load has no hook on this
    /// kernel), lifecycle kinds none: their probes are always attached or route fallbacks.
    #[test]
    fn every_gated_kind_has_programs_and_pairs_attach_exit_first() {
        let served = PROBES.iter().fold(0, |acc, p| acc | p.kinds());
        for k in 0..abi::KIND_COUNT {
            let lifecycle = [abi::KIND_EXEC, abi::KIND_EXIT, abi::KIND_FORK].contains(&k);
            let expected = !lifecycle && k != abi::KIND_MODULE_LOAD;
            assert_eq!(served & (1 << k) != 0, expected, "kind {k}");
        }
        let mut open: Vec<Probe> = PROBES
            .iter()
            .filter(|p| p.kinds() == 1 << abi::KIND_FILE_OPEN)
            .copied()
            .collect();
        open.sort_by_key(Probe::attach_rank);
        let names: Vec<&str> = open.iter().map(|p| p.program).collect();
        assert_eq!(&names[..4], &OPEN_EXIT_PROBES[..]);
        assert!(names[4..].iter().all(|n| n.starts_with("sys_enter_")));
    }

    #[test]
    fn routes_follow_the_offsets() {
        let mut offsets = koff::UNKNOWN_OFFSETS;
        let none = Routes::from_offsets(&offsets);
        assert!(!none.argv_from_mm && !none.exit_code_from_task);
        let uses =
            |r: &Routes, name: &str| r.uses(PROBES.iter().find(|p| p.program == name).unwrap());
        assert!(uses(&none, "sys_enter_execve") && uses(&none, "sys_enter_exit_group"));
        offsets[koff::OFF_TASK_MM] = 0x500;
        offsets[koff::OFF_MM_ARG_START] = 0x100;
        offsets[koff::OFF_MM_ARG_END] = 0x108;
        offsets[koff::OFF_TASK_EXIT_CODE] = 0x600;
        let all = Routes::from_offsets(&offsets);
        assert!(all.argv_from_mm && all.exit_code_from_task);
        for p in PROBES {
            assert_eq!(
                all.uses(p),
                !matches!(p.need, Need::ArgvFallback | Need::ExitCodeFallback),
                "{}",
                p.program
            );
        }
        offsets[koff::OFF_MM_ARG_END] = koff::OFFSET_UNKNOWN;
        let partial = Routes::from_offsets(&offsets);
        assert!(!partial.argv_from_mm && partial.exit_code_from_task);
        assert!(uses(&partial, "sys_enter_execveat") && !uses(&partial, "signal_deliver"));
    }

    /// Program names in the embedded object, from its ELF symbol names.
    fn aya_obj_programs() -> Vec<String> {
        let data = EBPF_OBJECT;
        PROBES
            .iter()
            .filter(|p| {
                data.windows(p.program.len() + 1).any(|w| {
                    w.get(..p.program.len()) == Some(p.program.as_bytes()) && w.last() == Some(&0)
                })
            })
            .map(|p| p.program.to_owned())
            .collect()
    }
}
