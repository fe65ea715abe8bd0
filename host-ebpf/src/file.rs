//! File events from syscall entry tracepoints: open (open, creat, openat, openat2), rename,
//! unlink (unlink, unlinkat, rmdir), chmod, chown, link and symlink. Paths are copied as the
//! caller passed them (relative paths are not resolved in the kernel). Offsets come from
//! `/sys/kernel/tracing/events/syscalls/sys_enter_*/format`: argument n is at 16 + 8n.

use aya_ebpf::{
    helpers::generated as h,
    macros::{map, tracepoint},
    maps::{Array, HashMap},
    programs::TracePointContext,
};
use palisade_common::{
    OpenStash, Path2Record, PathRecord, CONFIG_OPEN_AT_EXIT, CONFIG_SLOTS, FLAG_HAS_RESULT,
    FLAG_PATH2_TRUNCATED, FLAG_PATH_TRUNCATED, KIND_FILE_CHMOD, KIND_FILE_CHOWN, KIND_FILE_LINK,
    KIND_FILE_OPEN, KIND_FILE_RENAME, KIND_FILE_UNLINK,
};

use crate::{begin, fill_header, read_user_str, reserve, submit};

/// Runtime switches written by the loader (`CONFIG_*` indices).
#[map]
static CONFIG: Array<u64> = Array::with_max_entries(CONFIG_SLOTS, 0);

/// Open arguments by thread id, between `sys_enter_open*` and `sys_exit_open*`. A plain
/// preallocated hash (an LRU hash measured far slower here); a thread killed inside open leaves
/// a stale entry that its tid's next open overwrites, and when the map is full the entry hook
/// reports the open itself (without a result) instead of losing it.
#[map]
static OPEN_STASH: HashMap<u32, OpenStash> = HashMap::with_max_entries(16384, 0);

/// AT_FDCWD as the u64 the tracepoint carries.
const AT_FDCWD: u64 = -100i64 as u64;
const AT_REMOVEDIR: u64 = 0x200;
const O_CREAT_WRONLY_TRUNC: u64 = 0o1101;

/// Syscall argument `n` (0-based) of a `sys_enter_*` tracepoint.
#[inline(always)]
pub(crate) fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: every sys_enter_* record holds 6 u64 arguments from offset 16.
    unsafe { ctx.read_at::<u64>(16 + 8 * n).unwrap_or(0) }
}

/// Emits a `PathRecord` with the user string at `path` and integers `a`.
#[inline(always)]
pub(crate) fn emit_path(kind: u32, path: u64, a: [u64; 4]) {
    emit_path_flags(kind, path, a, 0);
}

/// [`emit_path`] with extra header flags.
#[inline(always)]
fn emit_path_flags(kind: u32, path: u64, a: [u64; 4], flags: u32) {
    let Some(pid_tgid) = begin(kind) else {
        return;
    };
    let Some(mut entry) = reserve::<PathRecord>(kind) else {
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` is the live reservation.
    unsafe {
        fill_header(&raw mut (*r).hdr, kind, pid_tgid);
        (*r).arg = a;
        (*r).hdr.flags |= flags | read_user_str(&raw mut (*r).path, path, FLAG_PATH_TRUNCATED);
    }
    submit(entry, kind);
}

/// Emits a `Path2Record` with user strings `p1`, `p2` and (if non-zero) `short`.
#[inline(always)]
pub(crate) fn emit_path2(kind: u32, p1: u64, p2: u64, short: u64, a: [u64; 4]) {
    let Some(pid_tgid) = begin(kind) else {
        return;
    };
    let Some(mut entry) = reserve::<Path2Record>(kind) else {
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` is the live reservation.
    unsafe {
        fill_header(&raw mut (*r).hdr, kind, pid_tgid);
        (*r).arg = a;
        (*r).hdr.flags |= read_user_str(&raw mut (*r).path, p1, FLAG_PATH_TRUNCATED);
        (*r).hdr.flags |= read_user_str(&raw mut (*r).path2, p2, FLAG_PATH2_TRUNCATED);
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

/// Open entry: stash for the exit hook, or emit now when exit reporting is off.
#[inline(always)]
fn open_enter(path: u64, flags: u64, mode: u64, dirfd: u64) {
    let at_exit = CONFIG.get(CONFIG_OPEN_AT_EXIT).copied().unwrap_or(0) != 0;
    if !at_exit {
        emit_path(KIND_FILE_OPEN, path, [flags, mode, dirfd, 0]);
        return;
    }
    let Some(pid_tgid) = begin(KIND_FILE_OPEN) else {
        return;
    };
    let stash = OpenStash {
        path_ptr: path,
        flags,
        mode,
        dirfd,
    };
    if OPEN_STASH.insert(&(pid_tgid as u32), &stash, 0).is_err() {
        emit_path(KIND_FILE_OPEN, path, [flags, mode, dirfd, 0]);
    }
}

/// Open exit: emit the stashed open with its result. The path is read from user memory now;
/// the caller's buffer is still live (the syscall has not returned to user space yet).
#[inline(always)]
fn open_exit(ctx: &TracePointContext) {
    // SAFETY: helper without arguments.
    let tid = unsafe { h::bpf_get_current_pid_tgid() } as u32;
    let Some(stash) = OPEN_STASH.get_ptr(&tid) else {
        return;
    };
    // SAFETY: pointer from a successful lookup; copied before the entry is removed.
    let stash = unsafe { *stash };
    let _ = OPEN_STASH.remove(&tid);
    // SAFETY: sys_exit_* records carry `long ret` at offset 16.
    let ret = unsafe { ctx.read_at::<i64>(16).unwrap_or(0) };
    emit_path_flags(
        KIND_FILE_OPEN,
        stash.path_ptr,
        [stash.flags, stash.mode, stash.dirfd, ret as u64],
        FLAG_HAS_RESULT,
    );
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    open_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    open_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn sys_exit_creat(ctx: TracePointContext) -> u32 {
    open_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    open_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_rename")]
pub fn sys_enter_rename(ctx: TracePointContext) -> u32 {
    emit_path2(KIND_FILE_RENAME, arg(&ctx, 0), arg(&ctx, 1), 0, [0; 4]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_renameat")]
pub fn sys_enter_renameat(ctx: TracePointContext) -> u32 {
    emit_path2(KIND_FILE_RENAME, arg(&ctx, 1), arg(&ctx, 3), 0, [0; 4]);
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
    emit_path2(KIND_FILE_LINK, arg(&ctx, 0), arg(&ctx, 1), 0, [0; 4]);
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
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_symlink")]
pub fn sys_enter_symlink(ctx: TracePointContext) -> u32 {
    emit_path2(KIND_FILE_LINK, arg(&ctx, 0), arg(&ctx, 1), 0, [1, 0, 0, 0]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_symlinkat")]
pub fn sys_enter_symlinkat(ctx: TracePointContext) -> u32 {
    emit_path2(KIND_FILE_LINK, arg(&ctx, 0), arg(&ctx, 2), 0, [1, 0, 0, 0]);
    0
}
