//! Kernel/user ABI shared by `palisade-ebpf` and the host: `#[repr(C)]` records with explicit
//! padding and `const` size asserts, map names, counter indices and load-time globals. Nothing
//! here may allocate or depend on `std`; bytes become host types only in the host's decode
//! function (`palisade::ebpf::decode`). No `bool`/`enum` field is written by the kernel: every
//! field is a fixed-width integer or a byte array, so any bit pattern is a valid value.
//!
//! Every ring-buffer record starts with a [`Header`]; `Header::kind` (a `KIND_*` constant) says
//! which record shape follows. The shapes are few and generic ([`SmallRecord`], [`PathRecord`],
//! [`Path2Record`], [`SockRecord`], [`ExecRecord`]); what each `arg` slot means per kind is
//! documented on the `KIND_*` constants and decoded in exactly one place.
//!
//! In-kernel filtering: the `FILTER*` maps below hold the union of the loaded plugins'
//! subscriptions (written by the host's `ebpf::filter`); every dropped event is counted in the
//! `COUNTER_FILTERED` slots. Records do not change with filtering.
#![no_std]

pub mod enforce;
pub mod kernel;

/// Length of one path/name buffer, NUL included. Longer strings are cut and flagged.
pub const PATH_LEN: usize = 256;
/// Bytes of NUL-separated argv carried by an exec record.
pub const ARGS_LEN: usize = 2048;
/// Longest single argument read; the scratch buffer has this much slack past `ARGS_LEN` so the
/// verifier can prove every write in bounds with a masked offset.
pub const ARG_READ_MAX: usize = 256;
/// Most arguments read from an execve argv array.
pub const MAX_ARGS: usize = 32;
/// Length of the short string slot (mount fstype).
pub const SHORT_LEN: usize = 32;
/// Bytes of a unix socket path carried by a `SockRecord` (sun_path is 108; rounded to 8).
pub const UNIX_PATH_LEN: usize = 112;
/// Kernel task comm length.
pub const COMM_LEN: usize = 16;

// Event kinds: the index of the host's `EventKind` (and of the WIT `event-kind` enum). A test in
// the host checks that these agree.
/// `ExecRecord`.
pub const KIND_EXEC: u32 = 0;
/// `SmallRecord`: arg[0] = exit code (status, or 128 + signal), arg[1] = 1 if the code is known.
pub const KIND_EXIT: u32 = 1;
/// `SmallRecord`: arg[0] = child pid, arg[1] = clone flags.
pub const KIND_FORK: u32 = 2;
/// `PathRecord`: arg[0] = flags, arg[1] = mode, arg[2] = dirfd (as i64), arg[3] = the
/// syscall's return (fd or -errno, as i64) when `FLAG_HAS_RESULT` is set. Emitted at syscall exit
/// (path pointer stashed at entry) when `CONFIG_OPEN_AT_EXIT` is on, else at entry.
pub const KIND_FILE_OPEN: u32 = 3;
/// `Path2Record`: path = from, path2 = to, arg[0] = flags.
pub const KIND_FILE_RENAME: u32 = 4;
/// `PathRecord`: arg[0] = flags (AT_REMOVEDIR), arg[2] = dirfd.
pub const KIND_FILE_UNLINK: u32 = 5;
/// `PathRecord`: arg[0] = mode, arg[2] = dirfd.
pub const KIND_FILE_CHMOD: u32 = 6;
/// `PathRecord`: arg[0] = uid, arg[1] = gid (u32::MAX = unchanged), arg[2] = dirfd.
pub const KIND_FILE_CHOWN: u32 = 7;
/// `Path2Record`: path = target (old), path2 = link (new), arg[0] = 1 when symbolic,
/// arg[1] = linkat flags.
pub const KIND_FILE_LINK: u32 = 8;
/// `SockRecord`: daddr/dport (or unix_path) from the user sockaddr.
pub const KIND_NET_CONNECT: u32 = 9;
/// `SockRecord`: daddr/dport = peer from the user sockaddr filled by accept.
pub const KIND_NET_ACCEPT: u32 = 10;
/// `SockRecord`: saddr/sport = the listening address (TCP state change to LISTEN).
pub const KIND_NET_LISTEN: u32 = 11;
/// `SmallRecord`: arg[0] = new uid (the effective one the call sets; u32::MAX when unchanged),
/// arg[1] = syscall (`ID_CALL_*`), arg[2] = real uid argument, arg[3] = saved uid argument.
pub const KIND_SETUID: u32 = 12;
/// `SmallRecord`: arg[0] = new gid, arg[1] = syscall (`ID_CALL_*`), arg[2..] as for setuid.
pub const KIND_SETGID: u32 = 13;
/// `SmallRecord`: arg[0] = request, arg[1] = target pid.
pub const KIND_PTRACE: u32 = 14;
/// `PathRecord`: arg[0] = 0 for init_module (path empty), 1 for finit_module with arg[1] = fd.
/// Not emitted on kernels without module support (no syscall tracepoint).
pub const KIND_MODULE_LOAD: u32 = 15;
/// `Path2Record`: path = source, path2 = target, short = fstype, arg[0] = flags.
pub const KIND_MOUNT: u32 = 16;
/// `PathRecord`: path = name, arg[0] = flags.
pub const KIND_MEMFD_CREATE: u32 = 17;
/// `SmallRecord`: arg[0] = bpf command.
pub const KIND_BPF: u32 = 18;
/// `SmallRecord`: arg[0] = family, arg[1] = type, arg[2] = protocol.
pub const KIND_SOCKET: u32 = 19;
/// `SmallRecord`: arg[0] = oldfd, arg[1] = newfd, arg[2] = flags.
pub const KIND_FD_DUP: u32 = 20;
/// Number of kinds; kind values are `0..KIND_COUNT`.
pub const KIND_COUNT: u32 = 21;

/// Which id call produced a setuid/setgid record (`SmallRecord::arg[1]`).
pub const ID_CALL_SET: u64 = 0;
pub const ID_CALL_SETRE: u64 = 1;
pub const ID_CALL_SETRES: u64 = 2;
pub const ID_CALL_SETFS: u64 = 3;

/// `Header::flags`: the first path (or exec filename) filled its buffer and may be cut.
pub const FLAG_PATH_TRUNCATED: u32 = 1 << 0;
/// `Header::flags`: the second path filled its buffer and may be cut.
pub const FLAG_PATH2_TRUNCATED: u32 = 1 << 1;
/// `Header::flags`: exec argv was cut (too many or too long arguments, or unreadable).
pub const FLAG_ARGS_TRUNCATED: u32 = 1 << 2;
/// `Header::flags`: a user-memory read failed; the affected field is empty.
pub const FLAG_READ_FAILED: u32 = 1 << 3;
/// `Header::flags`: `SockRecord::unix_path` names an abstract socket (sun_path began with NUL,
/// which the kernel program skipped).
pub const FLAG_UNIX_ABSTRACT: u32 = 1 << 4;
/// `Header::flags`: the record carries the syscall's return value (file open).
pub const FLAG_HAS_RESULT: u32 = 1 << 5;

/// Per-CPU counter array (`COUNTERS` map), indexed by these bases plus a kind.
pub const COUNTER_EMITTED: u32 = 0;
/// Ring-buffer reservation failures (the event was lost in the kernel).
pub const COUNTER_LOST: u32 = 32;
/// Events dropped in the kernel on purpose (the daemon's own activity; later, subscriptions).
pub const COUNTER_FILTERED: u32 = 64;
/// Entries in the `COUNTERS` map.
pub const COUNTER_SLOTS: u32 = 96;

/// Map names, as the ELF symbols aya looks them up by (kernel truncates to 15 bytes).
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Runtime switches (`Array<u64>`), written by the loader after attaching; indices below.
pub const MAP_CONFIG: &str = "CONFIG";
pub const CONFIG_SLOTS: u32 = 8;
/// Non-zero once every `sys_exit_open*` probe is attached: opens are then reported at exit
/// with their result. Zero (the default) reports them at entry, so a missing exit hook never
/// loses opens.
pub const CONFIG_OPEN_AT_EXIT: u32 = 0;
/// In-kernel subscription filter (`Array<u32>`, index = kind): one word per kind. 0 passes
/// every event (the state at load, so a source nobody configures sees everything);
/// `FILTER_DROP` drops every event of the kind (no plugin subscribes to it); otherwise the
/// `FILTER_GATE_*` bits name the predicate maps to check, and an event passes when ANY named
/// gate matches it. The host only names gates the kind's programs can evaluate.
pub const MAP_FILTER: &str = "FILTER";
pub const FILTER_DROP: u32 = 1 << 0;
/// Path gate: an absolute path hits `FILTER_PATHS`; a relative, empty or unreadable path always
/// passes (userspace may resolve it against the cwd).
pub const FILTER_GATE_PATH: u32 = 1 << 1;
/// Comm gate: the task comm is a key of `FILTER_COMMS`.
pub const FILTER_GATE_COMM: u32 = 1 << 2;
/// Port gate: an inet port hits `FILTER_PORTS`; other address families always pass.
pub const FILTER_GATE_PORT: u32 = 1 << 3;
pub const FILTER_GATES: u32 = FILTER_GATE_PATH | FILTER_GATE_COMM | FILTER_GATE_PORT;
/// LPM trie: [`PathKey`] -> kind bitmask (bit `1 << kind`). A prefix entry holds the prefix
/// bytes, an exact-path entry the path plus its terminating NUL. The trie returns only the
/// longest match, so each value also carries the bits of every shorter entry that is a prefix
/// of it.
pub const MAP_FILTER_PATHS: &str = "FILTER_PATHS";
pub const FILTER_PATHS_MAX: u32 = 4096;
/// Hash: comm (`[u8; COMM_LEN]`, NUL-padded) -> kind bitmask.
pub const MAP_FILTER_COMMS: &str = "FILTER_COMMS";
pub const FILTER_COMMS_MAX: u32 = 1024;
/// Array indexed by port (host order) -> kind bitmask.
pub const MAP_FILTER_PORTS: &str = "FILTER_PORTS";
pub const FILTER_PORTS_LEN: u32 = 65536;

/// One-element array of [`PathHeads`]: a prefilter the path gate checks before the LPM trie, so
/// a path no subscription can match is rejected without a trie walk (measured ~25-50 ns per
/// open on this machine). Kind-agnostic and conservative: a hit only means "ask the trie".
pub const MAP_FILTER_HEADS: &str = "FILTER_HEADS";
/// Bits in [`PathHeads::bits`].
pub const HEAD_BITS: u32 = 4096;
/// [`PathHeads::flags`]: the bitmap describes the current `FILTER_PATHS` (while clear, for
/// instance at load, the gate goes straight to the trie).
pub const HEADS_VALID: u32 = 1;

/// The heads of the `FILTER_PATHS` entries, hashed into a bitmap. A path's *head* is its first
/// 8 bytes as a little-endian u64 with the bytes from its NUL on cleared (a path of 3
/// characters keeps 3 bytes). Entry `e` sets bit [`head_hash`]`(e[..8], 8)` when it is at least
/// 8 bytes long or ends with its NUL (an exact path: its zero-padded bytes are exactly the
/// head of the one path it matches); a shorter prefix entry of length `l` sets
/// `head_hash(e, l)` and bit `l` of `short_lens`, and the program then also checks the path's
/// head cut to `l` bytes. Every path an entry matches hits its bit; other paths hit a bit only
/// by hash collision (and then the trie decides).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PathHeads {
    /// `HEADS_VALID`.
    pub flags: u32,
    /// Bit `l` (1..=7): some prefix entry is `l` bytes long.
    pub short_lens: u32,
    pub bits: [u64; (HEAD_BITS / 64) as usize],
}

/// The bitmap index of a head cut to `len` bytes (`len` 1..=8; 8 for full heads).
#[inline(always)]
pub const fn head_hash(head: u64, len: u32) -> u32 {
    let x = head ^ (len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x.wrapping_mul(0xFF51_AFD7_ED55_8CCD) >> (64 - HEAD_BITS.trailing_zeros())) as u32
}

/// Key of `FILTER_PATHS`, laid out like the kernel's `struct bpf_lpm_trie_key` (and aya's
/// `lpm_trie::Key<[u8; PATH_LEN]>`): a prefix length in bits, then the bytes.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct PathKey {
    pub prefix_len: u32,
    pub data: [u8; PATH_LEN],
}

/// Load-time globals (`.rodata`, set with `EbpfLoader::override_global`).
pub const GLOBAL_DAEMON_TGID: &str = "DAEMON_TGID";
pub const GLOBAL_WAKEUP_BYTES: &str = "WAKEUP_BYTES";
/// Default ring size and forced wake-up threshold (pending bytes).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
pub const DEFAULT_WAKEUP_BYTES: u64 = 1 << 20;

/// Common prefix of every record. 56 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// `KIND_*`.
    pub kind: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns` (ns since boot, suspend included: `CLOCK_BOOTTIME`).
    pub ktime_ns: u64,
    /// Process id (kernel tgid).
    pub tgid: u32,
    /// Thread id (kernel pid).
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// Integers only: exit, fork, setuid, setgid, ptrace, bpf, socket, fd_dup.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SmallRecord {
    pub hdr: Header,
    pub arg: [u64; 4],
}

/// One path or name plus integers: open, unlink, chmod, chown, module_load, memfd_create.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PathRecord {
    pub hdr: Header,
    pub arg: [u64; 4],
    pub path: [u8; PATH_LEN],
}

/// Two paths, a short string and integers: rename, link, mount.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Path2Record {
    pub hdr: Header,
    pub arg: [u64; 4],
    pub path: [u8; PATH_LEN],
    pub path2: [u8; PATH_LEN],
    pub short: [u8; SHORT_LEN],
}

/// A socket address pair: connect, accept, listen. Addresses are network order bytes (IPv4 in
/// the first 4 bytes), ports host order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockRecord {
    pub hdr: Header,
    /// AF_* family (0 when the caller passed no address).
    pub family: u16,
    /// IPPROTO_* when known, else 0.
    pub protocol: u16,
    pub sport: u16,
    pub dport: u16,
    /// The socket fd for syscall-sourced records, else -1.
    pub fd: i32,
    pub _pad: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// AF_UNIX only: the socket path (NUL-terminated; see `FLAG_UNIX_ABSTRACT`).
    pub unix_path: [u8; UNIX_PATH_LEN],
}

/// `ExecRecord::argc` when argv was read whole from the new image's memory (`mm->arg_start..
/// arg_end`): every NUL-terminated string in `args[..args_len]` is an argument, and a final
/// piece without a NUL is an argument cut at `ARGS_LEN` (`FLAG_ARGS_TRUNCATED`).
pub const ARGC_IN_ARGS: u32 = u32::MAX;

/// An exec: the new image's filename and argv (read from the new image's memory, or captured
/// at `sys_enter_execve(at)` when the kernel's struct offsets are unknown).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecRecord {
    pub hdr: Header,
    /// Thread id that called execve (differs from `hdr.tid` when a non-leader thread execs).
    pub old_tid: u32,
    /// Arguments captured, or [`ARGC_IN_ARGS`]: count them in `args`.
    pub argc: u32,
    /// Valid bytes in `args` (NUL-separated, each argument NUL-terminated).
    pub args_len: u32,
    pub _pad: u32,
    pub filename: [u8; PATH_LEN],
    pub args: [u8; ARGS_LEN],
}

/// Per-thread argv scratch, built at `sys_enter_execve` and consumed at `sched_process_exec`
/// (`EXEC_ARGS` LRU hash keyed by tid). The slack past `ARGS_LEN` lets each bounded string read
/// use a masked offset.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ArgsScratch {
    pub argc: u32,
    pub args_len: u32,
    pub flags: u32,
    pub _pad: u32,
    pub args: [u8; ARGS_LEN + ARG_READ_MAX],
}

/// Per-thread open arguments, stashed at `sys_enter_open*` and emitted at `sys_exit_open*`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpenStash {
    /// User pointer to the path.
    pub path_ptr: u64,
    pub flags: u64,
    pub mode: u64,
    pub dirfd: u64,
}

/// Per-thread syscall stash for calls whose data is known only at exit (accept's peer address).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AcceptStash {
    /// User pointer to the peer sockaddr (0 when the caller passed NULL).
    pub addr_ptr: u64,
    pub fd: i32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Header>() == 56);
const _: () = assert!(core::mem::size_of::<SmallRecord>() == 56 + 32);
const _: () = assert!(core::mem::size_of::<PathRecord>() == 56 + 32 + PATH_LEN);
const _: () = assert!(core::mem::size_of::<Path2Record>() == 56 + 32 + 2 * PATH_LEN + SHORT_LEN);
const _: () = assert!(core::mem::size_of::<SockRecord>() == 56 + 16 + 32 + UNIX_PATH_LEN);
const _: () = assert!(core::mem::size_of::<ExecRecord>() == 56 + 16 + PATH_LEN + ARGS_LEN);
const _: () = assert!(core::mem::size_of::<ArgsScratch>() == 16 + ARGS_LEN + ARG_READ_MAX);
const _: () = assert!(core::mem::size_of::<AcceptStash>() == 16);
const _: () = assert!(core::mem::size_of::<OpenStash>() == 32);
const _: () = assert!(core::mem::size_of::<PathKey>() == 4 + PATH_LEN);
const _: () = assert!(KIND_COUNT <= 32);
const _: () = assert!(core::mem::size_of::<PathHeads>() == 8 + HEAD_BITS as usize / 8);
const _: () = assert!(HEAD_BITS.is_power_of_two() && HEAD_BITS >= 64);
// Every record is a multiple of 8 so ring-buffer records stay aligned for the u64 fields.
const _: () = assert!(core::mem::size_of::<ExecRecord>().is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<Path2Record>().is_multiple_of(8));
const _: () = assert!(KIND_COUNT <= COUNTER_LOST - COUNTER_EMITTED);
// Masked-offset trick in the exec program needs power-of-two sizes.
const _: () = assert!(ARGS_LEN.is_power_of_two() && ARG_READ_MAX.is_power_of_two());

/// The record size the decoder expects for `kind`, or `None` for an unknown kind.
pub const fn record_size(kind: u32) -> Option<usize> {
    use core::mem::size_of;
    match kind {
        KIND_EXEC => Some(size_of::<ExecRecord>()),
        KIND_EXIT | KIND_FORK | KIND_SETUID | KIND_SETGID | KIND_PTRACE | KIND_BPF
        | KIND_SOCKET | KIND_FD_DUP => Some(size_of::<SmallRecord>()),
        KIND_FILE_OPEN | KIND_FILE_UNLINK | KIND_FILE_CHMOD | KIND_FILE_CHOWN
        | KIND_MODULE_LOAD | KIND_MEMFD_CREATE => Some(size_of::<PathRecord>()),
        KIND_FILE_RENAME | KIND_FILE_LINK | KIND_MOUNT => Some(size_of::<Path2Record>()),
        KIND_NET_CONNECT | KIND_NET_ACCEPT | KIND_NET_LISTEN => Some(size_of::<SockRecord>()),
        _ => None,
    }
}
