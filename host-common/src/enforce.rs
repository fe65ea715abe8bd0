//! Kernel/user ABI of the enforcement object (`palisade-enforce`, a second binary of
//! `palisade-ebpf`, loaded by `palisade::actions::enforce_ebpf`): the block-exec map key and
//! value, the counter slots, the load-time globals and the object's map and program names.
//! Separate from the event object so the actuators load, pin and attach their programs
//! without touching the event source's object.

/// Length of a block-exec key: the exec'd filename, NUL-terminated and zero-padded, exactly
/// as `sched_process_exec` reports it (the path the exec call named).
pub const BLOCK_PATH_LEN: usize = 256;
/// Most distinct blocked paths (the map is not preallocated: an empty map costs nothing).
pub const BLOCK_MAX_ENTRIES: u32 = 16_384;

/// Pinned hash map `[u8; BLOCK_PATH_LEN]` -> [`BlockRefs`] (pinned by name under the
/// configured bpffs directory, so it outlives the daemon and `palisade actions release` can
/// edit it from another process).
pub const MAP_BLOCK_EXEC: &str = "BLOCK_EXEC";
/// Per-CPU `u64` counters of the exec program, indexed by `BLOCK_COUNTER_*`.
pub const MAP_BLOCK_COUNTERS: &str = "BLOCK_COUNTERS";
/// Execs looked up in the block map.
pub const BLOCK_COUNTER_CHECKED: u32 = 0;
/// Execs that matched a rule and were sent SIGKILL.
pub const BLOCK_COUNTER_KILLED: u32 = 1;
/// Matches whose `bpf_send_signal` failed (the process was not stopped).
pub const BLOCK_COUNTER_SIGNAL_FAILED: u32 = 2;
/// Execs whose filename could not be read (never matched).
pub const BLOCK_COUNTER_READ_FAILED: u32 = 3;
pub const BLOCK_COUNTER_SLOTS: u32 = 4;

/// Program names (the functions in the object).
pub const PROG_BLOCK_EXEC: &str = "enforce_exec";
pub const PROG_NETQ_INGRESS: &str = "netq_ingress";
pub const PROG_NETQ_EGRESS: &str = "netq_egress";

/// Load-time global (`u32`): non-zero lets a quarantined cgroup keep loopback traffic
/// (IPv4 127.0.0.0/8 to 127.0.0.0/8, IPv6 ::1 to ::1).
pub const GLOBAL_NETQ_ALLOW_LOOPBACK: &str = "NETQ_ALLOW_LOOPBACK";

/// Value of a block-exec entry: how many held actions block this key, so releasing one of two
/// blocks of the same path keeps the other. The kernel only tests for presence.
pub type BlockRefs = u64;

const _: () = assert!(BLOCK_PATH_LEN.is_multiple_of(8));
