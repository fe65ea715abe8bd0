//! File events from syscall entry tracepoints: open (open, creat, openat, openat2), rename,
//! unlink (unlink, unlinkat, rmdir), chmod, chown, link and symlink. Paths are copied as the
//! caller passed them (relative paths are not resolved in the kernel). Offsets come from
//! `/sys/kernel/tracing/events/syscalls/sys_enter_*/format`: argument n is at 16 + 8n.

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::generated as h,
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use palisade_common::{
    OpenStash, Path2Record, PathRecord, CONFIG_OPEN_AT_EXIT, CONFIG_SLOTS, FILTER_GATE_PATH,
    FLAG_HAS_RESULT, FLAG_PATH2_TRUNCATED, FLAG_PATH_TRUNCATED, KIND_FILE_CHMOD, KIND_FILE_CHOWN,
    KIND_FILE_LINK, KIND_FILE_OPEN, KIND_FILE_RENAME, KIND_FILE_UNLINK,
};

use crate::{fill_header, filter, read_user_str, reserve, submit};

/// Runtime switches written by the loader (`CONFIG_*` indices).
#[map]
static CONFIG: Array<u64> = Array::with_max_entries(CONFIG_SLOTS, 0);

/// Open arguments by thread id, between `sys_enter_open*` and `sys_exit_open*`. A plain
/// preallocated hash (an LRU hash measured far slower here); a thread killed inside open leaves
/// a stale entry that its tid's next open overwrites, and when the map is full the entry hook
/// reports the open itself (without a result) instead of losing it.
#[map]
static OPEN_STASH: HashMap<u32, OpenStash> = HashMap::with_max_entries(16384, 0);

/// Entries in `OPEN_STASH` (slot 0): inserts of a new tid add one, successful removes take
/// one, so it is exactly the map's size. The exit hooks run on every open of every task; when
/// no open is stashed (every open so far rejected at entry) they stop at this load instead of
/// a hash lookup. A thread killed inside open leaves its entry (and the count) until its tid
/// opens again: the exit hooks then just do the lookup, as they did before this counter.
#[map]
static OPEN_PENDING: Array<i64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn pending() -> i64 {
    match OPEN_PENDING.get_ptr(0) {
        // SAFETY: pointer from a successful lookup; a plain aligned load.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        // Cannot happen (array slot 0); "something may be stashed" is the safe answer.
        None => 1,
    }
}

#[inline(always)]
fn pending_add(delta: i64) {
    if let Some(p) = OPEN_PENDING.get_ptr_mut(0) {
        // SAFETY: the array slot is live for the program's run; an atomic add (BPF XADD)
        // because every CPU updates it.
        unsafe {
            core::intrinsics::atomic_xadd::<i64, i64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p, delta,
            );
        }
    }
}

/// AT_FDCWD as the u64 the tracepoint carries.
const AT_FDCWD: u64 = -100i64 as u64;
const AT_REMOVEDIR: u64 = 0x200;
const O_CREAT_WRONLY_TRUNC: u64 = 0o1101;

/// Syscall argument `n` (0-based) of a `sys_enter_*` tracepoint. A direct load from the
/// context: the verifier allows aligned reads of a tracepoint record, and aya's `read_at` goes
/// through `bpf_probe_read_kernel`, a helper call per argument (measured ~10 ns each, a third
/// of a filtered open's program time; docs/performance.md).
#[inline(always)]
pub(crate) fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: every sys_enter_* record holds 6 u64 arguments from offset 16; `n` is a constant
    // below 6 at every call site, so the load is an aligned constant-offset context read.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u64>().add(2 + n)) }
}

/// The `long ret` of a `sys_exit_*` tracepoint record (offset 16), loaded directly.
#[inline(always)]
pub(crate) fn exit_ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: every sys_exit_* record carries `ret` at offset 16 (8-byte aligned).
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<i64>().add(2)) }
}

/// Emits a `PathRecord` with the user string at `path` and integers `a`, unless the filter
/// drops it.
#[inline(always)]
pub(crate) fn emit_path(kind: u32, path: u64, a: [u64; 4]) {
    let Some(gate) = filter::start(kind) else {
        return;
    };
    let mut scratch = None;
    if !gate.pass {
        if gate.word & FILTER_GATE_PATH == 0 {
            filter::reject(kind);
            return;
        }
        // No scratch slot (never happens) means the path cannot be checked: let it through.
        if let Some(p) = filter::read_path(0, path) {
            if !filter::path_hit(kind, p) {
                filter::reject(kind);
                return;
            }
            scratch = Some(p);
        }
    }
    put_path(kind, gate.pid_tgid, path, scratch, a, 0);
}

/// Reserves and submits a `PathRecord` (no filtering): the path comes from `scratch` when the
/// gate already read it, else from user memory.
#[inline(always)]
fn put_path(
    kind: u32,
    pid_tgid: u64,
    path: u64,
    scratch: Option<filter::ScratchPath>,
    a: [u64; 4],
    flags: u32,
) {
    let Some(mut entry) = reserve::<PathRecord>(kind) else {
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` is the live reservation.
    unsafe {
        fill_header(&raw mut (*r).hdr, kind, pid_tgid);
        (*r).arg = a;
        let read = match scratch {
            Some(p) => filter::copy_path(&raw mut (*r).path, p, FLAG_PATH_TRUNCATED),
            None => read_user_str(&raw mut (*r).path, path, FLAG_PATH_TRUNCATED),
        };
        (*r).hdr.flags |= flags | read;
    }
    submit(entry, kind);
}

/// Emits a `Path2Record` with user strings `p1`, `p2` and (if non-zero) `short`, unless the
/// filter drops it. `gated` says which paths the path gate looks at (bit 0 = `p1`, bit 1 =
/// `p2`): the ones the host's subscription matching sees.
#[inline(always)]
pub(crate) fn emit_path2(kind: u32, p1: u64, p2: u64, short: u64, a: [u64; 4], gated: u32) {
    let Some(gate) = filter::start(kind) else {
        return;
    };
    let (mut s1, mut s2) = (None, None);
    if !gate.pass {
        let mut hit = false;
        if gate.word & FILTER_GATE_PATH != 0 {
            if gated & 1 != 0 {
                if let Some(p) = filter::read_path(0, p1) {
                    hit |= filter::path_hit(kind, p);
                    s1 = Some(p);
                }
            }
            if gated & 2 != 0 {
                if let Some(p) = filter::read_path(1, p2) {
                    hit |= filter::path_hit(kind, p);
                    s2 = Some(p);
                }
            }
        }
        if !hit {
            filter::reject(kind);
            return;
        }
    }
    let Some(mut entry) = reserve::<Path2Record>(kind) else {
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` is the live reservation.
    unsafe {
        fill_header(&raw mut (*r).hdr, kind, gate.pid_tgid);
        (*r).arg = a;
        (*r).hdr.flags |= match s1 {
            Some(p) => filter::copy_path(&raw mut (*r).path, p, FLAG_PATH_TRUNCATED),
            None => read_user_str(&raw mut (*r).path, p1, FLAG_PATH_TRUNCATED),
        };
        (*r).hdr.flags |= match s2 {
            Some(p) => filter::copy_path(&raw mut (*r).path2, p, FLAG_PATH2_TRUNCATED),
            None => read_user_str(&raw mut (*r).path2, p2, FLAG_PATH2_TRUNCATED),
        };
        (*r).hdr.flags |= read_user_str(&raw mut (*r).short, short, 0);
    }
    submit(entry, kind);
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    open_enter(arg(&ctx, 1), arg(&ctx, 2), arg(&ctx, 3), arg(&ctx, 0));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    open_enter(arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2), AT_FDCWD);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    open_enter(arg(&ctx, 0), O_CREAT_WRONLY_TRUNC, arg(&ctx, 1), AT_FDCWD);
    0
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    let how_ptr = arg(&ctx, 2);
    let mut how = OpenHow {
        flags: 0,
        mode: 0,
        resolve: 0,
    };
    if how_ptr != 0 {
        // SAFETY: bounded copy of a user struct onto the stack; failure leaves zeros.
        unsafe {
            let _ = h::bpf_probe_read_user(
                (&raw mut how).cast(),
                core::mem::size_of::<OpenHow>() as u32,
                how_ptr as *const _,
            );
        }
    }
    // resolve flags are not carried (the record's last slot holds the result).
    open_enter(arg(&ctx, 1), how.flags, how.mode, arg(&ctx, 0));
    0
}

/// Open entry: filter, then stash for the exit hook (or emit now when exit reporting is off).
/// A filtered open leaves no stash, so its exit hook ends at one failed lookup.
#[inline(always)]
fn open_enter(path: u64, flags: u64, mode: u64, dirfd: u64) {
    let at_exit = CONFIG.get(CONFIG_OPEN_AT_EXIT).copied().unwrap_or(0) != 0;
    if !at_exit {
        emit_path(KIND_FILE_OPEN, path, [flags, mode, dirfd, 0]);
        return;
    }
    let Some(gate) = filter::start(KIND_FILE_OPEN) else {
        return;
    };
    if !gate.pass {
        let hit = gate.word & FILTER_GATE_PATH != 0
            && filter::read_path(0, path).is_none_or(|p| filter::path_hit(KIND_FILE_OPEN, p));
        if !hit {
            filter::reject(KIND_FILE_OPEN);
            return;
        }
    }
    let stash = OpenStash {
        path_ptr: path,
        flags,
        mode,
        dirfd,
    };
    let tid = gate.pid_tgid as u32;
    if OPEN_STASH
        .insert(&tid, &stash, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        pending_add(1);
    } else if OPEN_STASH
        .insert(&tid, &stash, u64::from(BPF_EXIST))
        .is_err()
    {
        // Full (and no stale entry of this tid to overwrite): report now, without a result.
        put_path(
            KIND_FILE_OPEN,
            gate.pid_tgid,
            path,
            None,
            [flags, mode, dirfd, 0],
            0,
        );
    }
}

/// Open exit: emit the stashed open with its result (it passed the filter at entry). The path
/// is read from user memory now; the caller's buffer is still live (the syscall has not
/// returned to user space yet).
#[inline(always)]
fn open_exit(ret: i64) {
    // Nothing stashed anywhere (the common case when the filter rejects at entry): skip the
    // helper call and the hash lookup (measured ~15-20 ns of the exit program).
    if pending() == 0 {
        return;
    }
    // SAFETY: helper without arguments.
    let pid_tgid = unsafe { h::bpf_get_current_pid_tgid() };
    let tid = pid_tgid as u32;
    let Some(stash) = OPEN_STASH.get_ptr(&tid) else {
        return;
    };
    // SAFETY: pointer from a successful lookup; copied before the entry is removed.
    let stash = unsafe { *stash };
    if OPEN_STASH.remove(&tid).is_ok() {
        pending_add(-1);
    }
    put_path(
        KIND_FILE_OPEN,
        pid_tgid,
        stash.path_ptr,
        None,
        [stash.flags, stash.mode, stash.dirfd, ret as u64],
        FLAG_HAS_RESULT,
    );
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    open_exit(exit_ret(&ctx));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    open_exit(exit_ret(&ctx));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn sys_exit_creat(ctx: TracePointContext) -> u32 {
    open_exit(exit_ret(&ctx));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    open_exit(exit_ret(&ctx));
    0
}

/// x86_64 `openat` syscall number.
const NR_OPENAT: u64 = 257;

/// Prototype, measured only (host/tests/kernel_filter.rs `bench_raw_tracepoint_open`): the
/// open entry hook as a raw `sys_enter` tracepoint, which runs for every syscall of every task
/// and picks `openat` by number. Not in the loader's probe table: the product never attaches
/// it. Arguments come from the x86_64 `struct pt_regs` (uapi layout: di 112, si 104, dx 96,
/// r10 56), one kernel read each.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn raw_sys_enter_open(ctx: RawTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    if id != NR_OPENAT {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    let reg = |off: u64| -> u64 {
        // SAFETY: a bounded kernel read of the syscall's saved registers (0 on failure).
        unsafe { aya_ebpf::helpers::bpf_probe_read_kernel((regs + off) as *const u64) }.unwrap_or(0)
    };
    open_enter(reg(104), reg(96), reg(56), reg(112));
    0
}

/// Prototype exit half of [`raw_sys_enter_open`]: every syscall exit of every task stops at
/// the stash counter unless some open is stashed; a stashed entry of this thread can only be
/// its current syscall's (a thread makes one syscall at a time).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn raw_sys_exit_open(ctx: RawTracePointContext) -> i32 {
    if pending() == 0 {
        return 0;
    }
    let ret: i64 = ctx.arg(1);
    open_exit(ret);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_rename")]
pub fn sys_enter_rename(ctx: TracePointContext) -> u32 {
    emit_path2(KIND_FILE_RENAME, arg(&ctx, 0), arg(&ctx, 1), 0, [0; 4], 3);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_renameat")]
pub fn sys_enter_renameat(ctx: TracePointContext) -> u32 {
    emit_path2(KIND_FILE_RENAME, arg(&ctx, 1), arg(&ctx, 3), 0, [0; 4], 3);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_renameat2")]
pub fn sys_enter_renameat2(ctx: TracePointContext) -> u32 {
    emit_path2(
        KIND_FILE_RENAME,
        arg(&ctx, 1),
        arg(&ctx, 3),
        0,
        [arg(&ctx, 4), 0, 0, 0],
        3,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_unlink")]
pub fn sys_enter_unlink(ctx: TracePointContext) -> u32 {
    emit_path(KIND_FILE_UNLINK, arg(&ctx, 0), [0, 0, AT_FDCWD, 0]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_unlinkat")]
pub fn sys_enter_unlinkat(ctx: TracePointContext) -> u32 {
    emit_path(
        KIND_FILE_UNLINK,
        arg(&ctx, 1),
        [arg(&ctx, 2), 0, arg(&ctx, 0), 0],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_rmdir")]
pub fn sys_enter_rmdir(ctx: TracePointContext) -> u32 {
    emit_path(
        KIND_FILE_UNLINK,
        arg(&ctx, 0),
        [AT_REMOVEDIR, 0, AT_FDCWD, 0],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_chmod")]
pub fn sys_enter_chmod(ctx: TracePointContext) -> u32 {
    emit_path(
        KIND_FILE_CHMOD,
        arg(&ctx, 0),
        [arg(&ctx, 1), 0, AT_FDCWD, 0],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_fchmodat")]
pub fn sys_enter_fchmodat(ctx: TracePointContext) -> u32 {
    emit_path(
        KIND_FILE_CHMOD,
        arg(&ctx, 1),
        [arg(&ctx, 2), 0, arg(&ctx, 0), 0],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_fchmodat2")]
pub fn sys_enter_fchmodat2(ctx: TracePointContext) -> u32 {
    emit_path(
        KIND_FILE_CHMOD,
        arg(&ctx, 1),
        [arg(&ctx, 2), 0, arg(&ctx, 0), 0],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_chown")]
pub fn sys_enter_chown(ctx: TracePointContext) -> u32 {
    emit_path(
        KIND_FILE_CHOWN,
        arg(&ctx, 0),
        [arg(&ctx, 1), arg(&ctx, 2), AT_FDCWD, 0],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_lchown")]
pub fn sys_enter_lchown(ctx: TracePointContext) -> u32 {
    emit_path(
        KIND_FILE_CHOWN,
        arg(&ctx, 0),
        [arg(&ctx, 1), arg(&ctx, 2), AT_FDCWD, 0],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_fchownat")]
pub fn sys_enter_fchownat(ctx: TracePointContext) -> u32 {
    emit_path(
        KIND_FILE_CHOWN,
        arg(&ctx, 1),
        [arg(&ctx, 2), arg(&ctx, 3), arg(&ctx, 0), 0],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_link")]
pub fn sys_enter_link(ctx: TracePointContext) -> u32 {
    emit_path2(KIND_FILE_LINK, arg(&ctx, 0), arg(&ctx, 1), 0, [0; 4], 3);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_linkat")]
pub fn sys_enter_linkat(ctx: TracePointContext) -> u32 {
    emit_path2(
        KIND_FILE_LINK,
        arg(&ctx, 1),
        arg(&ctx, 3),
        0,
        [0, arg(&ctx, 4), 0, 0],
        3,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_symlink")]
pub fn sys_enter_symlink(ctx: TracePointContext) -> u32 {
    emit_path2(
        KIND_FILE_LINK,
        arg(&ctx, 0),
        arg(&ctx, 1),
        0,
        [1, 0, 0, 0],
        3,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_symlinkat")]
pub fn sys_enter_symlinkat(ctx: TracePointContext) -> u32 {
    emit_path2(
        KIND_FILE_LINK,
        arg(&ctx, 0),
        arg(&ctx, 2),
        0,
        [1, 0, 0, 0],
        3,
    );
    0
}
