//! Privilege and system-level events from syscall entry: setuid/setgid families, ptrace, bpf(),
//! mount, memfd_create, and dup2/dup3 onto fd 0, 1 or 2 (the reverse-shell pattern; other
//! targets are dropped here because shells redirect constantly). Module loading has no syscall
//! tracepoint on this kernel (CONFIG_MODULES is off), so it is not probed here.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use palisade_common::{
    ID_CALL_SET, ID_CALL_SETFS, ID_CALL_SETRE, ID_CALL_SETRES, KIND_BPF, KIND_FD_DUP,
    KIND_MEMFD_CREATE, KIND_MOUNT, KIND_PTRACE, KIND_SETGID, KIND_SETUID,
};

use crate::{
    file::{arg, emit_path, emit_path2},
    process::emit_small,
};

/// `(uid_t)-1`: "leave unchanged" in the setre*/setres* calls.
const UNCHANGED: u64 = 0xffff_ffff;

/// The id a set*id call makes effective: the euid argument when given, else the real one.
#[inline(always)]
fn effective(real: u64, eff: u64) -> u64 {
    let eff = eff & UNCHANGED;
    if eff != UNCHANGED {
        eff
    } else {
        real & UNCHANGED
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_setuid")]
pub fn sys_enter_setuid(ctx: TracePointContext) -> u32 {
    emit_small(KIND_SETUID, [arg(&ctx, 0) & UNCHANGED, ID_CALL_SET, 0, 0]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_setreuid")]
pub fn sys_enter_setreuid(ctx: TracePointContext) -> u32 {
    let (r, e) = (arg(&ctx, 0), arg(&ctx, 1));
    emit_small(
        KIND_SETUID,
        [effective(r, e), ID_CALL_SETRE, r & UNCHANGED, 0],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_setresuid")]
pub fn sys_enter_setresuid(ctx: TracePointContext) -> u32 {
    let (r, e, s) = (arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2));
    emit_small(
        KIND_SETUID,
        [
            effective(r, e),
            ID_CALL_SETRES,
            r & UNCHANGED,
            s & UNCHANGED,
        ],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_setfsuid")]
pub fn sys_enter_setfsuid(ctx: TracePointContext) -> u32 {
    emit_small(KIND_SETUID, [arg(&ctx, 0) & UNCHANGED, ID_CALL_SETFS, 0, 0]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_setgid")]
pub fn sys_enter_setgid(ctx: TracePointContext) -> u32 {
    emit_small(KIND_SETGID, [arg(&ctx, 0) & UNCHANGED, ID_CALL_SET, 0, 0]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_setregid")]
pub fn sys_enter_setregid(ctx: TracePointContext) -> u32 {
    let (r, e) = (arg(&ctx, 0), arg(&ctx, 1));
    emit_small(
        KIND_SETGID,
        [effective(r, e), ID_CALL_SETRE, r & UNCHANGED, 0],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_setresgid")]
pub fn sys_enter_setresgid(ctx: TracePointContext) -> u32 {
    let (r, e, s) = (arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2));
    emit_small(
        KIND_SETGID,
        [
            effective(r, e),
            ID_CALL_SETRES,
            r & UNCHANGED,
            s & UNCHANGED,
        ],
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_setfsgid")]
pub fn sys_enter_setfsgid(ctx: TracePointContext) -> u32 {
    emit_small(KIND_SETGID, [arg(&ctx, 0) & UNCHANGED, ID_CALL_SETFS, 0, 0]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_ptrace")]
pub fn sys_enter_ptrace(ctx: TracePointContext) -> u32 {
    emit_small(KIND_PTRACE, [arg(&ctx, 0), arg(&ctx, 1), 0, 0]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_bpf")]
pub fn sys_enter_bpf(ctx: TracePointContext) -> u32 {
    emit_small(KIND_BPF, [arg(&ctx, 0), 0, 0, 0]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_mount")]
pub fn sys_enter_mount(ctx: TracePointContext) -> u32 {
    emit_path2(
        KIND_MOUNT,
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        [arg(&ctx, 3), 0, 0, 0],
        // Only the target is a subscription path (`EventData::paths`).
        2,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_memfd_create")]
pub fn sys_enter_memfd_create(ctx: TracePointContext) -> u32 {
    emit_path(KIND_MEMFD_CREATE, arg(&ctx, 0), [arg(&ctx, 1), 0, 0, 0]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_dup2")]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    let (old, new) = (arg(&ctx, 0), arg(&ctx, 1));
    if new <= 2 && old != new {
        emit_small(KIND_FD_DUP, [old, new, 0, 0]);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_dup3")]
pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
    let (old, new) = (arg(&ctx, 0), arg(&ctx, 1));
    if new <= 2 {
        emit_small(KIND_FD_DUP, [old, new, arg(&ctx, 2), 0]);
    }
    0
}
