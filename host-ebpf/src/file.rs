//! File events from syscall entry tracepoints: open (open, creat, openat, openat2), rename,
//! unlink (unlink, unlinkat, rmdir), chmod, chown, link and symlink. Paths are copied as the
//! caller passed them (relative paths are not resolved in the kernel). Offsets come from
//! `/sys/kernel/tracing/events/syscalls/sys_enter_*/format`: argument n is at 16 + 8n.

use aya_ebpf::{helpers::generated as h, macros::tracepoint, programs::TracePointContext};
use palisade_common::{
    Path2Record, PathRecord, FLAG_PATH2_TRUNCATED, FLAG_PATH_TRUNCATED, KIND_FILE_CHMOD,
    KIND_FILE_CHOWN, KIND_FILE_LINK, KIND_FILE_OPEN, KIND_FILE_RENAME, KIND_FILE_UNLINK,
};

use crate::{begin, fill_header, read_user_str, reserve, submit};

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
        (*r).hdr.flags |= read_user_str(&raw mut (*r).path, path, FLAG_PATH_TRUNCATED);
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
    emit_path(
        KIND_FILE_OPEN,
        arg(&ctx, 1),
        [arg(&ctx, 2), arg(&ctx, 3), arg(&ctx, 0), 0],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    emit_path(
        KIND_FILE_OPEN,
        arg(&ctx, 0),
        [arg(&ctx, 1), arg(&ctx, 2), AT_FDCWD, 0],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    emit_path(
        KIND_FILE_OPEN,
        arg(&ctx, 0),
        [O_CREAT_WRONLY_TRUNC, arg(&ctx, 1), AT_FDCWD, 0],
    );
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
    emit_path(
        KIND_FILE_OPEN,
        arg(&ctx, 1),
        [how.flags, how.mode, arg(&ctx, 0), how.resolve],
    );
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
