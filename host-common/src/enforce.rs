//! Kernel/user ABI of the enforcement object (`palisade-enforce`, a second binary of
//! `palisade-ebpf`, loaded by `palisade::actions::enforce_ebpf`): the block-exec map keys and
//! values, the counter slots, the load-time globals and the object's map and program names.
//!
//! block-exec matches an exec two ways, each with its own pinned map: by the identity of the
//! executed file ([`MAP_BLOCK_EXEC_INODE`], (device, inode) of `mm->exe_file` read through the
//! `KERNEL_OFFSETS` global, so every name of the file matches: relative names, symlinks, hard
//! links, `/proc/self/fd`, `execveat`, bind mounts) and by the path string the exec call named
//! ([`MAP_BLOCK_EXEC`], for a path that does not exist yet or is replaced later, and for
//! scripts, whose `exe_file` is the interpreter). [`MAP_BLOCK_EXEC_SHA256`] is not read by any
//! program: it is the pinned, cross-process record of the sha256 rules the host's fanotify
//! exec check enforces.
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
/// Pinned hash map [`InodeKey`] -> [`BlockRefs`]: blocked files by identity.
pub const MAP_BLOCK_EXEC_INODE: &str = "BLOCK_EXEC_INODE";
/// Pinned hash map `[u8; 32]` (sha256 of the file) -> [`BlockRefs`]; read by the host only.
pub const MAP_BLOCK_EXEC_SHA256: &str = "BLOCK_EXEC_SHA256";
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
/// Kills that matched by (device, inode) (a subset of [`BLOCK_COUNTER_KILLED`]).
pub const BLOCK_COUNTER_KILLED_BY_INODE: u32 = 4;
/// Execs whose file identity could not be read (offsets unknown or a read failed): only the
/// path key was looked up.
pub const BLOCK_COUNTER_INODE_UNAVAILABLE: u32 = 5;
pub const BLOCK_COUNTER_SLOTS: u32 = 6;

/// Program names (the functions in the object).
pub const PROG_BLOCK_EXEC: &str = "enforce_exec";
pub const PROG_NETQ_INGRESS: &str = "netq_ingress";
pub const PROG_NETQ_EGRESS: &str = "netq_egress";

/// Load-time global (`u32`): non-zero lets a quarantined cgroup keep loopback traffic
/// (IPv4 127.0.0.0/8 to 127.0.0.0/8, IPv6 ::1 to ::1).
pub const GLOBAL_NETQ_ALLOW_LOOPBACK: &str = "NETQ_ALLOW_LOOPBACK";

/// Key of [`MAP_BLOCK_EXEC_INODE`]: `[device, inode]`. The device is the kernel's encoding
/// (`super_block.s_dev`, major << 20 | minor, `palisade_common::kernel::kernel_dev`) zero-extended,
/// not `stat(2)`'s `st_dev`; the inode is `inode.i_ino`.
pub type InodeKey = [u64; 2];

/// Value of a block-exec entry: how many held actions block this key, so releasing one of two
/// blocks of the same path (or file, or hash) keeps the other. The kernel only tests for presence.
pub type BlockRefs = u64;

const _: () = assert!(BLOCK_PATH_LEN.is_multiple_of(8));
