//! In-kernel subscription filter: the per-kind filter word (`FILTER`) checked first in every
//! gated program, and the predicate maps (path LPM trie, comm hash, port array) checked before a
//! ring-buffer reservation. The host writes these maps from the union of the loaded plugins'
//! subscriptions (`palisade::ebpf::filter`); they may only drop events that no subscription
//! could match, so anything this code cannot decide (relative or unreadable paths, non-inet
//! sockets) passes. Lifecycle programs (exec, fork, exit) are never gated: the userspace process
//! cache needs them whatever the plugins want.

use aya_ebpf::{
    helpers::generated as h,
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray},
};
use palisade_common::{
    head_hash, PathHeads, COMM_LEN, COUNTER_FILTERED, FILTER_COMMS_MAX, FILTER_DROP, FILTER_GATES,
    FILTER_GATE_COMM, FILTER_PATHS_MAX, FILTER_PORTS_LEN, HEADS_VALID, KIND_COUNT, PATH_LEN,
};

use crate::{count, DAEMON_TGID};

/// One word per kind (see `palisade_common::MAP_FILTER`); all zero (pass) at load.
#[map]
static FILTER: Array<u32> = Array::with_max_entries(KIND_COUNT, 0);

/// Path prefixes and exact paths -> kind bitmask.
#[map]
static FILTER_PATHS: LpmTrie<[u8; PATH_LEN], u32> = LpmTrie::with_max_entries(FILTER_PATHS_MAX, 0);

/// Heads of the `FILTER_PATHS` entries (see `palisade_common::PathHeads`); invalid at load.
#[map]
static FILTER_HEADS: Array<PathHeads> = Array::with_max_entries(1, 0);

/// Comm -> kind bitmask.
#[map]
static FILTER_COMMS: HashMap<[u8; COMM_LEN], u32> = HashMap::with_max_entries(FILTER_COMMS_MAX, 0);

/// Port -> kind bitmask.
#[map]
static FILTER_PORTS: Array<u32> = Array::with_max_entries(FILTER_PORTS_LEN, 0);

/// Per-CPU lookup keys for up to two paths (too big for the stack). A path read here for the
/// check is copied into the record afterwards, so user memory is read once.
#[map]
static PATH_SCRATCH: PerCpuArray<Key<[u8; PATH_LEN]>> = PerCpuArray::with_max_entries(2, 0);

/// The start of a gated event: who, the kind's filter word, and whether it already passes
/// (no gate, or the comm gate matched).
pub(crate) struct Gate {
    pub pid_tgid: u64,
    pub word: u32,
    pub pass: bool,
}

/// The filter word of `kind` (0 = pass everything).
#[inline(always)]
fn word(kind: u32) -> u32 {
    FILTER.get(kind).copied().unwrap_or(0)
}

/// Whether any plugin wants events of `kind` at all (the kind is not dropped outright).
#[inline(always)]
pub(crate) fn kind_wanted(kind: u32) -> bool {
    word(kind) & FILTER_DROP == 0
}

/// Counts an event of `kind` dropped in the kernel.
#[inline(always)]
pub(crate) fn reject(kind: u32) {
    count(COUNTER_FILTERED + kind);
}

/// Cheap checks, in cost order: the kind's word (an unsubscribed kind stops here), the
/// daemon's own tgid, then the comm gate. `None` means dropped (and counted).
#[inline(always)]
pub(crate) fn start(kind: u32) -> Option<Gate> {
    let word = word(kind);
    if word & FILTER_DROP != 0 {
        reject(kind);
        return None;
    }
    // SAFETY: helper without arguments.
    let pid_tgid = unsafe { h::bpf_get_current_pid_tgid() };
    if (pid_tgid >> 32) as u32 == DAEMON_TGID.load() {
        reject(kind);
        return None;
    }
    let pass = word & FILTER_GATES == 0 || (word & FILTER_GATE_COMM != 0 && comm_hit(kind));
    Some(Gate {
        pid_tgid,
        word,
        pass,
    })
}

#[inline(always)]
fn comm_hit(kind: u32) -> bool {
    let mut comm = [0u8; COMM_LEN];
    // SAFETY: writes at most COMM_LEN bytes into `comm` (zeroed on failure).
    if unsafe { h::bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32) } < 0 {
        return true;
    }
    match FILTER_COMMS.get_ptr(&comm) {
        // SAFETY: pointer from a successful lookup.
        Some(mask) => (unsafe { *mask } & (1 << kind)) != 0,
        None => false,
    }
}

/// Whether `port` is subscribed for `kind`.
#[inline(always)]
pub(crate) fn port_hit(kind: u32, port: u16) -> bool {
    FILTER_PORTS
        .get(u32::from(port))
        .is_some_and(|mask| *mask & (1 << kind) != 0)
}

/// A user path read into scratch slot `slot` for the path gate.
#[derive(Clone, Copy)]
pub(crate) struct ScratchPath {
    key: *mut Key<[u8; PATH_LEN]>,
    /// `bpf_probe_read_user_str`'s result: bytes with the NUL, or a negative error.
    n: i64,
}

/// Reads the user string at `src` into scratch `slot` (0 or 1).
#[inline(always)]
pub(crate) fn read_path(slot: u32, src: u64) -> Option<ScratchPath> {
    let key = PATH_SCRATCH.get_ptr_mut(slot)?;
    // SAFETY: `key` is this CPU's scratch slot; the read is bounded by the data size.
    let n = unsafe {
        let data = (&raw mut (*key).data).cast::<u8>();
        if src == 0 {
            *data = 0;
            0
        } else {
            let n = h::bpf_probe_read_user_str(data.cast(), PATH_LEN as u32, src as *const _);
            if n < 0 {
                *data = 0;
            }
            n
        }
    };
    Some(ScratchPath { key, n })
}

/// The head of a path whose first 8 bytes are `raw` (little-endian) and that has `chars`
/// bytes before its NUL: bytes from the NUL on cleared.
#[inline(always)]
pub(crate) fn head_of(raw: u64, chars: u64) -> u64 {
    if chars < 8 {
        raw & ((1u64 << (8 * chars)) - 1)
    } else {
        raw
    }
}

#[inline(always)]
fn head_bit(heads: &PathHeads, head: u64, len: u32) -> bool {
    let bit = head_hash(head, len);
    let word = heads
        .bits
        .get((bit >> 6) as usize & (heads.bits.len() - 1))
        .copied()
        .unwrap_or(u64::MAX);
    word & (1u64 << (bit & 63)) != 0
}

/// The prefilter: false only when no `FILTER_PATHS` entry can match an absolute path with
/// this head (then the trie walk is skipped). No valid bitmap means "ask the trie".
#[inline(always)]
pub(crate) fn head_may_hit(head: u64) -> bool {
    let Some(heads) = FILTER_HEADS.get(0) else {
        return true;
    };
    if heads.flags & HEADS_VALID == 0 || head_bit(heads, head, 8) {
        return true;
    }
    let lens = heads.short_lens;
    let mut len = 1u32;
    while len < 8 {
        if lens & (1 << len) != 0 && head_bit(heads, head & ((1u64 << (8 * len)) - 1), len) {
            return true;
        }
        len += 1;
    }
    false
}

/// Whether the path gate lets `path` through for `kind`. Relative, empty and unreadable paths
/// always do: the kernel cannot know what userspace will make of them.
#[inline(always)]
pub(crate) fn path_hit(kind: u32, path: ScratchPath) -> bool {
    if path.n <= 1 {
        return true;
    }
    // SAFETY: `key` is this CPU's scratch slot, filled by `read_path`.
    unsafe {
        let data = (&raw const (*path.key).data).cast::<u8>();
        if *data != b'/' {
            return true;
        }
        // Bytes past the NUL are stale: `head_of` clears them.
        let raw = core::ptr::read_unaligned(data.cast::<u64>());
        if !head_may_hit(head_of(raw, (path.n - 1) as u64)) {
            return false;
        }
    }
    trie_hit(kind, path)
}

/// The trie lookup of an absolute path in scratch.
#[inline(always)]
fn trie_hit(kind: u32, path: ScratchPath) -> bool {
    // SAFETY: `key` is this CPU's scratch slot, filled by `read_path`.
    unsafe {
        // Compare the string and its NUL: exact entries end with the NUL, prefix entries do
        // not, and bytes past the NUL are stale.
        (*path.key).prefix_len = (path.n as u32 & 0x1ff) * 8;
        match FILTER_PATHS.get(&*path.key) {
            Some(mask) => *mask & (1 << kind) != 0,
            None => false,
        }
    }
}

/// Copies a scratch path into a record buffer; returns header flags as `read_user_str` does.
///
/// # Safety
/// `dst` points into a live ring reservation.
#[inline(always)]
pub(crate) unsafe fn copy_path(dst: *mut [u8; PATH_LEN], path: ScratchPath, cut_flag: u32) -> u32 {
    unsafe {
        let dst = dst.cast::<u8>();
        if path.n < 0 {
            *dst = 0;
            return palisade_common::FLAG_READ_FAILED;
        }
        let n = h::bpf_probe_read_kernel_str(
            dst.cast(),
            PATH_LEN as u32,
            (&raw const (*path.key).data).cast(),
        );
        if n < 0 {
            *dst = 0;
            palisade_common::FLAG_READ_FAILED
        } else if n as usize >= PATH_LEN {
            cut_flag
        } else {
            0
        }
    }
}
