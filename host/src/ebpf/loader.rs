//! Loads the embedded eBPF object (ring size and globals set at load), attaches every probe in
//! the probe table, and reports in ONE log line which attached and which failed. A probe that
//! cannot load or attach (missing tracepoint, verifier refusal) is skipped, never fatal; only
//! "nothing attached at all" is an error.

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use palisade_common as abi;

use super::EbpfError;

/// The kernel programs, built by host/build.rs (aya-build) and embedded 8-byte aligned.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-ebpf"));

/// One probe: the program (function) name in the object and its tracepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub program: &'static str,
    pub category: &'static str,
    pub tracepoint: &'static str,
}

const fn tp(program: &'static str, category: &'static str) -> Probe {
    // Every program is named after its tracepoint.
    Probe {
        program,
        category,
        tracepoint: program,
    }
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
    tp("sys_enter_execve", "syscalls"),
    tp("sys_enter_execveat", "syscalls"),
    tp("sched_process_exec", "sched"),
    tp("task_newtask", "task"),
    tp("sys_enter_exit_group", "syscalls"),
    tp("signal_deliver", "signal"),
    tp("sched_process_exit", "sched"),
    tp("sys_enter_openat", "syscalls"),
    tp("sys_enter_open", "syscalls"),
    tp("sys_enter_creat", "syscalls"),
    tp("sys_enter_openat2", "syscalls"),
    tp("sys_exit_openat", "syscalls"),
    tp("sys_exit_open", "syscalls"),
    tp("sys_exit_creat", "syscalls"),
    tp("sys_exit_openat2", "syscalls"),
    tp("sys_enter_rename", "syscalls"),
    tp("sys_enter_renameat", "syscalls"),
    tp("sys_enter_renameat2", "syscalls"),
    tp("sys_enter_unlink", "syscalls"),
    tp("sys_enter_unlinkat", "syscalls"),
    tp("sys_enter_rmdir", "syscalls"),
    tp("sys_enter_chmod", "syscalls"),
    tp("sys_enter_fchmodat", "syscalls"),
    tp("sys_enter_fchmodat2", "syscalls"),
    tp("sys_enter_chown", "syscalls"),
    tp("sys_enter_lchown", "syscalls"),
    tp("sys_enter_fchownat", "syscalls"),
    tp("sys_enter_link", "syscalls"),
    tp("sys_enter_linkat", "syscalls"),
    tp("sys_enter_symlink", "syscalls"),
    tp("sys_enter_symlinkat", "syscalls"),
    tp("sys_enter_connect", "syscalls"),
    tp("sys_enter_accept", "syscalls"),
    tp("sys_enter_accept4", "syscalls"),
    tp("sys_exit_accept", "syscalls"),
    tp("sys_exit_accept4", "syscalls"),
    tp("inet_sock_set_state", "sock"),
    tp("sys_enter_socket", "syscalls"),
    tp("sys_enter_setuid", "syscalls"),
    tp("sys_enter_setreuid", "syscalls"),
    tp("sys_enter_setresuid", "syscalls"),
    tp("sys_enter_setfsuid", "syscalls"),
    tp("sys_enter_setgid", "syscalls"),
    tp("sys_enter_setregid", "syscalls"),
    tp("sys_enter_setresgid", "syscalls"),
    tp("sys_enter_setfsgid", "syscalls"),
    tp("sys_enter_ptrace", "syscalls"),
    tp("sys_enter_bpf", "syscalls"),
    tp("sys_enter_mount", "syscalls"),
    tp("sys_enter_memfd_create", "syscalls"),
    tp("sys_enter_dup2", "syscalls"),
    tp("sys_enter_dup3", "syscalls"),
];

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
}

/// A loaded, attached object and the maps the reader needs.
pub struct Loaded {
    /// Keeps programs and links alive; dropping it detaches everything.
    pub ebpf: Ebpf,
    pub ring: RingBuf<MapData>,
    pub counters: PerCpuArray<MapData, u64>,
    /// The in-kernel filter maps (all passing at load).
    pub filter: super::filter::FilterMaps,
    pub attached: Vec<&'static str>,
    pub failed: Vec<(&'static str, String)>,
}

/// Loads the object and attaches every probe it can.
pub fn load(opts: LoadOptions) -> Result<Loaded, EbpfError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(abi::MAP_EVENTS, opts.ring_bytes)
        .override_global(abi::GLOBAL_DAEMON_TGID, &opts.daemon_tgid, true)
        .override_global(abi::GLOBAL_WAKEUP_BYTES, &opts.wakeup_bytes, true)
        .load(EBPF_OBJECT)
        .map_err(|source| EbpfError::Load {
            ring_bytes: opts.ring_bytes,
            source: Box::new(source),
        })?;

    let mut attached = Vec::new();
    let mut failed = Vec::new();
    for probe in PROBES {
        if opts.skip_probes.contains(&probe.program) {
            continue;
        }
        match attach(&mut ebpf, probe) {
            Ok(()) => attached.push(probe.program),
            Err(reason) => failed.push((probe.program, reason)),
        }
    }
    // Switch opens to exit reporting only when every exit hook is in place; otherwise the entry
    // hooks keep reporting (without a result) and nothing is lost.
    let open_at_exit = opts.open_results && OPEN_EXIT_PROBES.iter().all(|p| attached.contains(p));
    if open_at_exit {
        set_config(&mut ebpf, abi::CONFIG_OPEN_AT_EXIT, 1)?;
    }
    let failed_list: Vec<String> = failed
        .iter()
        .map(|(p, why)| format!("{p} ({why})"))
        .collect();
    if attached.is_empty() {
        return Err(EbpfError::NoProbes {
            tried: PROBES.len(),
            failures: failed_list.join("; "),
        });
    }
    tracing::info!(
        attached = attached.len(),
        failed = failed.len(),
        hooks = %attached.join(","),
        failures = %failed_list.join("; "),
        open_at_exit,
        "ebpf probes attached"
    );

    let ring = ebpf
        .take_map(abi::MAP_EVENTS)
        .ok_or(EbpfError::MissingMap {
            map: abi::MAP_EVENTS,
        })
        .and_then(|m| {
            RingBuf::try_from(m).map_err(|source| EbpfError::Map {
                map: abi::MAP_EVENTS,
                source: Box::new(source),
            })
        })?;
    let counters = ebpf
        .take_map(abi::MAP_COUNTERS)
        .ok_or(EbpfError::MissingMap {
            map: abi::MAP_COUNTERS,
        })
        .and_then(|m| {
            PerCpuArray::try_from(m).map_err(|source| EbpfError::Map {
                map: abi::MAP_COUNTERS,
                source: Box::new(source),
            })
        })?;
    let filter = super::filter::FilterMaps {
        words: take(&mut ebpf, abi::MAP_FILTER, Array::try_from)?,
        paths: take(&mut ebpf, abi::MAP_FILTER_PATHS, LpmTrie::try_from)?,
        comms: take(&mut ebpf, abi::MAP_FILTER_COMMS, HashMap::try_from)?,
        ports: take(&mut ebpf, abi::MAP_FILTER_PORTS, Array::try_from)?,
    };
    Ok(Loaded {
        ebpf,
        ring,
        counters,
        filter,
        attached,
        failed,
    })
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

fn attach(ebpf: &mut Ebpf, probe: &Probe) -> Result<(), String> {
    let program = ebpf
        .program_mut(probe.program)
        .ok_or_else(|| "not in the object".to_owned())?;
    let tracepoint: &mut TracePoint = program.try_into().map_err(|e| format!("{e}"))?;
    tracepoint.load().map_err(|e| format!("load: {e}"))?;
    tracepoint
        .attach(probe.category, probe.tracepoint)
        .map_err(|e| format!("attach {}/{}: {e}", probe.category, probe.tracepoint))?;
    Ok(())
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
