//! Palisade's enforcement programs (bpfel-unknown-none), a second object beside the event
//! programs so the actuators load, pin and attach them independently of the event source:
//!
//! - `enforce_exec` (tracepoint `sched/sched_process_exec`): looks the executed file's identity
//!   (device, inode of `current->mm->exe_file`) up in the pinned `BLOCK_EXEC_INODE` map and the
//!   exec'd filename in the pinned `BLOCK_EXEC` map and, on a match, sends SIGKILL to the
//!   process. The tracepoint fires after the new image is set up (`mm->exe_file` is already the
//!   new binary) and before the task returns to user space, so the pending SIGKILL is taken
//!   before the blocked binary runs a single instruction.
//! - `netq_ingress` / `netq_egress` (cgroup_skb): attached to a quarantined workload's cgroup;
//!   drop every packet, except loopback traffic when `NETQ_ALLOW_LOOPBACK` is set at load.
//!
//! Kernel structs are read only at the offsets the host resolved from the running kernel's BTF
//! (`KERNEL_OFFSETS` and its readers, shared with the event object in src/lib.rs;
//! `palisade_common::kernel`); with any of them unknown the identity match is skipped (counted)
//! and only the path match applies.
#![no_std]
#![no_main]
#![expect(
    unsafe_code,
    reason = "kernel programs call BPF helpers and write map memory through raw pointers"
)]

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::generated as h,
    macros::{cgroup_skb, map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{SkBuffContext, TracePointContext},
    EbpfContext as _, Global,
};
use palisade_common::enforce::{
    BlockRefs, InodeKey, BLOCK_COUNTER_CHECKED, BLOCK_COUNTER_INODE_UNAVAILABLE,
    BLOCK_COUNTER_KILLED, BLOCK_COUNTER_KILLED_BY_INODE, BLOCK_COUNTER_READ_FAILED,
    BLOCK_COUNTER_SIGNAL_FAILED, BLOCK_COUNTER_SLOTS, BLOCK_MAX_ENTRIES, BLOCK_PATH_LEN,
};
use palisade_common::kernel::IDENTITY_SLOTS;
use palisade_ebpf::read_kernel_at;

/// Blocked exec filenames (pinned by name; see `palisade_common::enforce::MAP_BLOCK_EXEC`).
#[map]
static BLOCK_EXEC: HashMap<[u8; BLOCK_PATH_LEN], BlockRefs> =
    HashMap::pinned(BLOCK_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Blocked files by identity (pinned; see `palisade_common::enforce::MAP_BLOCK_EXEC_INODE`).
#[map]
static BLOCK_EXEC_INODE: HashMap<InodeKey, BlockRefs> =
    HashMap::pinned(BLOCK_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// sha256 rules (pinned; read and written by the host only, which enforces them through
/// fanotify: it lives here so the record is shared across processes like the other keys).
#[map]
static BLOCK_EXEC_SHA256: HashMap<[u8; 32], BlockRefs> =
    HashMap::pinned(BLOCK_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-CPU space for one lookup key (too big for comfort on the 512-byte stack).
#[map]
static BLOCK_KEY: PerCpuArray<[u8; BLOCK_PATH_LEN]> = PerCpuArray::with_max_entries(1, 0);

#[map]
static BLOCK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(BLOCK_COUNTER_SLOTS, 0);

/// Non-zero: quarantined cgroups keep loopback traffic (set at load).
#[unsafe(no_mangle)]
static NETQ_ALLOW_LOOPBACK: Global<u32> = Global::new(0);

const SIGKILL: u32 = 9;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = BLOCK_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; tracepoint programs do not nest on one CPU.
        unsafe { *slot += 1 };
    }
}

/// (device, inode) of the current task's executable: current->mm->exe_file->f_inode, its
/// i_ino and i_sb->s_dev, read through the [`IDENTITY_SLOTS`] offsets in chain order. `None`
/// when an offset is unknown, a pointer is null or a read fails.
#[inline(always)]
fn exe_identity() -> Option<InodeKey> {
    let [task_mm, mm_exe_file, file_inode, inode_ino, inode_sb, sb_dev] = IDENTITY_SLOTS;
    // SAFETY: plain helper call, no arguments.
    let task = unsafe { h::bpf_get_current_task() };
    let mm: u64 = read_kernel_at(task, task_mm)?;
    let file: u64 = read_kernel_at(mm, mm_exe_file)?;
    let inode: u64 = read_kernel_at(file, file_inode)?;
    let ino: u64 = read_kernel_at(inode, inode_ino)?;
    let sb: u64 = read_kernel_at(inode, inode_sb)?;
    let dev: u32 = read_kernel_at(sb, sb_dev)?;
    Some([u64::from(dev), ino])
}

#[inline(always)]
fn kill(by_inode: bool) {
    // SAFETY: plain helper call on the current task.
    if unsafe { h::bpf_send_signal(SIGKILL) } < 0 {
        count(BLOCK_COUNTER_SIGNAL_FAILED);
    } else {
        count(BLOCK_COUNTER_KILLED);
        if by_inode {
            count(BLOCK_COUNTER_KILLED_BY_INODE);
        }
    }
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn enforce_exec(ctx: TracePointContext) -> u32 {
    count(BLOCK_COUNTER_CHECKED);
    // Identity first: a 16-byte key, and it matches whatever name the exec used.
    match exe_identity() {
        Some(id) => {
            // SAFETY: lookup only; the value is not read.
            if unsafe { BLOCK_EXEC_INODE.get(&id) }.is_some() {
                kill(true);
                return 0;
            }
        }
        None => count(BLOCK_COUNTER_INODE_UNAVAILABLE),
    }
    let Some(key) = BLOCK_KEY.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: `key` is this CPU's scratch slot of BLOCK_PATH_LEN bytes; the filename offset is
    // the `__data_loc char[] filename` at 8 of sched/sched_process_exec/format, and the kernel
    // string copy is bounded by the slot size.
    unsafe {
        // Bytes after the NUL are part of the hash key: zero them so a key is the path alone.
        let words = key.cast::<u64>();
        let mut i = 0;
        while i < BLOCK_PATH_LEN / 8 {
            *words.add(i) = 0;
            i += 1;
        }
        let loc = ctx.read_at::<u32>(8).unwrap_or(0);
        let src = (ctx.as_ptr() as usize + (loc & 0xffff) as usize) as *const u8;
        let n = h::bpf_probe_read_kernel_str(key.cast(), BLOCK_PATH_LEN as u32, src.cast());
        // A filename that filled the slot may have been cut; it never matches (the host
        // refuses rules that long).
        if n <= 0 || n as usize >= BLOCK_PATH_LEN {
            count(BLOCK_COUNTER_READ_FAILED);
            return 0;
        }
        if BLOCK_EXEC.get_ptr(&*key).is_some() {
            kill(false);
        }
    }
    0
}

#[cgroup_skb(ingress)]
pub fn netq_ingress(ctx: SkBuffContext) -> i32 {
    verdict(&ctx)
}

#[cgroup_skb(egress)]
pub fn netq_egress(ctx: SkBuffContext) -> i32 {
    verdict(&ctx)
}

/// 1 passes the packet, 0 drops it.
#[inline(always)]
fn verdict(ctx: &SkBuffContext) -> i32 {
    if NETQ_ALLOW_LOOPBACK.load() != 0 && is_loopback(ctx) {
        1
    } else {
        0
    }
}

/// Both ends loopback: IPv4 127/8 to 127/8, or IPv6 ::1 to ::1. cgroup_skb data starts at the
/// network header.
#[inline(always)]
fn is_loopback(ctx: &SkBuffContext) -> bool {
    match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => match ctx.load::<[u8; 20]>(0) {
            Ok(hdr) => hdr[12] == 127 && hdr[16] == 127,
            Err(_) => false,
        },
        ETH_P_IPV6 => match ctx.load::<[u8; 40]>(0) {
            Ok(hdr) => is_v6_loopback(&hdr, 8) && is_v6_loopback(&hdr, 24),
            Err(_) => false,
        },
        _ => false,
    }
}

#[inline(always)]
fn is_v6_loopback(hdr: &[u8; 40], at: usize) -> bool {
    let mut i = 0;
    while i < 15 {
        if hdr[at + i] != 0 {
            return false;
        }
        i += 1;
    }
    hdr[at + 15] == 1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Needed for `bpf_probe_read_kernel_str` and `bpf_send_signal`.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
