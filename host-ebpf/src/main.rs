//! Palisade's kernel programs (bpfel-unknown-none): classic tracepoints that copy syscall and
//! scheduler arguments into one ring buffer (`EVENTS`) as `palisade_common` records. Shared
//! plumbing lives here: the maps, load-time globals, self-exclusion, counters, and the batched
//! wake-up submit. One module per probe family. Kernel structs are read only at the member
//! offsets the host resolved from BTF (`KERNEL_OFFSETS`; aya-ebpf has no CO-RE relocations),
//! through [`read_kernel_at`] (src/lib.rs, shared with the enforcement object), which refuses
//! an unresolved offset.
#![no_std]
#![no_main]
// The bpf target has no CAS, so core's atomics lack fetch_add: file.rs adds to a shared
// counter with the intrinsic (BPF atomic add).
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![expect(
    unsafe_code,
    reason = "kernel programs call BPF helpers and write ring-buffer memory through raw pointers"
)]

mod file;
mod filter;
mod net;
mod process;
mod system;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated as h,
    macros::map,
    maps::{ring_buf::RingBufEntry, PerCpuArray, RingBuf},
    Global,
};
use palisade_common::{
    Header, COMM_LEN, COUNTER_EMITTED, COUNTER_FILTERED, COUNTER_LOST, COUNTER_SLOTS,
    DEFAULT_RING_BYTES, DEFAULT_WAKEUP_BYTES,
};
// The offset readers and the `KERNEL_OFFSETS` global they read are shared with the enforcement
// object (`palisade_ebpf`, src/lib.rs); the modules use them through the crate root.
pub(crate) use palisade_ebpf::{kernel_offset, read_kernel_at};

/// The event ring; the loader resizes it (`map_max_entries`) before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Per-CPU counters, indexed by `COUNTER_*` base + kind.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// The daemon's own tgid: its syscalls are never reported (set at load).
#[unsafe(no_mangle)]
static DAEMON_TGID: Global<u32> = Global::new(0);

/// Pending bytes in the ring above which a submit forces a reader wake-up (set at load).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(DEFAULT_WAKEUP_BYTES);

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; tracepoint programs do not nest on one CPU.
        unsafe { *slot += 1 };
    }
}

/// Starts an event of an ungated kind (exec, exit) for the current task: `None` (counted as
/// filtered) for the daemon itself, else the `pid_tgid` word. Gated kinds use
/// `filter::start`.
#[inline(always)]
fn begin(kind: u32) -> Option<u64> {
    // SAFETY: helper without arguments.
    let pid_tgid = unsafe { h::bpf_get_current_pid_tgid() };
    if (pid_tgid >> 32) as u32 == DAEMON_TGID.load() {
        count(COUNTER_FILTERED + kind);
        return None;
    }
    Some(pid_tgid)
}

/// Reserves a record of type `T`; a full ring is counted as lost for `kind`.
#[inline(always)]
fn reserve<T: 'static>(kind: u32) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count(COUNTER_LOST + kind);
    }
    entry
}

/// Submits without a wake-up unless enough is pending: per-event wake-ups cost more than the
/// program itself on this VM (see the eBPF measurements); the reader also polls every 10 ms.
#[inline(always)]
fn submit<T>(entry: RingBufEntry<T>, kind: u32) {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let flags = if pending >= WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
    count(COUNTER_EMITTED + kind);
}

/// Fills the common header of a reserved record.
///
/// # Safety
/// `hdr` points into a live ring reservation.
#[inline(always)]
unsafe fn fill_header(hdr: *mut Header, kind: u32, pid_tgid: u64) {
    unsafe {
        let uid_gid = h::bpf_get_current_uid_gid();
        (*hdr).kind = kind;
        (*hdr).flags = 0;
        // Boot time, suspend included: what /proc's start times count, so a fork's time is
        // a process start time the kill check can compare after the host was suspended.
        (*hdr).ktime_ns = h::bpf_ktime_get_boot_ns();
        (*hdr).tgid = (pid_tgid >> 32) as u32;
        (*hdr).tid = pid_tgid as u32;
        (*hdr).uid = uid_gid as u32;
        (*hdr).gid = (uid_gid >> 32) as u32;
        (*hdr).cgroup_id = h::bpf_get_current_cgroup_id();
        if h::bpf_get_current_comm((*hdr).comm.as_mut_ptr().cast(), COMM_LEN as u32) < 0 {
            (*hdr).comm[0] = 0;
        }
    }
}

/// Copies a NUL-terminated user string into `dst` (`N` bytes, always NUL-terminated) and
/// returns header flag bits: `cut_flag` when it filled the buffer, `FLAG_READ_FAILED` when it
/// could not be read (the buffer is then empty).
///
/// # Safety
/// `dst` points into a live ring reservation.
#[inline(always)]
unsafe fn read_user_str<const N: usize>(dst: *mut [u8; N], src: u64, cut_flag: u32) -> u32 {
    unsafe {
        let dst = dst.cast::<u8>();
        if src == 0 {
            *dst = 0;
            return 0;
        }
        let n = h::bpf_probe_read_user_str(dst.cast(), N as u32, src as *const _);
        if n < 0 {
            *dst = 0;
            palisade_common::FLAG_READ_FAILED
        } else if n as usize >= N {
            cut_flag
        } else {
            0
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Needed for `bpf_probe_read_*`, `bpf_get_current_*` and `bpf_send_signal`.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
