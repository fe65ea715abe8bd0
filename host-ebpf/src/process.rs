//! Process lifecycle: exec (filename from `sched_process_exec`), fork (`task_newtask`, threads
//! skipped), exit (`sched_process_exit` for the last thread).
//!
//! argv and the exit code come one of two ways, chosen by the host at load from what the
//! kernel's BTF resolved (`KERNEL_OFFSETS`):
//! - *struct route* (no syscall tracepoint): argv is read at `sched_process_exec` from the new
//!   image's own memory (`current->mm->arg_start..arg_end`, exactly what the program sees as
//!   its argv), and the exit code at `sched_process_exit` from `current->exit_code`;
//! - *syscall route* (offsets unknown): argv captured at `sys_enter_execve(at)` and joined by
//!   thread id, the code stashed at `exit_group` or by a fatal default-action signal. These
//!   hooks put every syscall of every task on the tracing slow path, which is why the struct
//!   route exists.

use aya_ebpf::{
    helpers::generated as h,
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
    EbpfContext as _,
};
use palisade_common::{
    kernel::{OFF_MM_ARG_END, OFF_MM_ARG_START, OFF_TASK_EXIT_CODE, OFF_TASK_MM},
    ArgsScratch, ExecRecord, SmallRecord, ARGC_IN_ARGS, ARGS_LEN, ARG_READ_MAX,
    FLAG_ARGS_TRUNCATED, FLAG_PATH_TRUNCATED, FLAG_READ_FAILED, KIND_EXEC, KIND_EXIT, KIND_FORK,
    MAX_ARGS, PATH_LEN,
};

use crate::{
    begin, fill_header, filter, kernel_offset, read_kernel_at, reserve, submit, DAEMON_TGID,
};

/// argv captured at execve entry, keyed by the calling thread id; LRU so failed execs that never
/// reach `sched_process_exec` age out instead of filling the map.
#[map]
static EXEC_ARGS: LruHashMap<u32, ArgsScratch> = LruHashMap::with_max_entries(1024, 0);

/// Per-CPU build space for one `ArgsScratch` (too big for the 512-byte stack).
#[map]
static ARGS_SCRATCH: PerCpuArray<ArgsScratch> = PerCpuArray::with_max_entries(1, 0);

/// Exit code per tgid, stashed before the process dies (`exit_group` or a fatal signal).
#[map]
static EXIT_CODES: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

const CLONE_THREAD: u64 = 0x0001_0000;
/// Signals whose default action terminates the process (bit n = signal n).
const FATAL_DEFAULT: u64 = (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 14)
    | (1 << 15)
    | (1 << 16)
    | (1 << 24)
    | (1 << 25)
    | (1 << 26)
    | (1 << 27)
    | (1 << 29)
    | (1 << 30)
    | (1 << 31);

#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    capture_argv(&ctx, 24)
}

#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    capture_argv(&ctx, 32)
}

#[inline(always)]
fn capture_argv(ctx: &TracePointContext, argv_offset: usize) -> u32 {
    // SAFETY: helper without arguments.
    let pid_tgid = unsafe { h::bpf_get_current_pid_tgid() };
    if (pid_tgid >> 32) as u32 == DAEMON_TGID.load() {
        return 0;
    }
    let Some(s) = ARGS_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: tracepoint field offsets from syscalls/sys_enter_execve(at)/format; `s` is this
    // CPU's scratch slot; every write is at a masked offset below ARGS_LEN with at most
    // ARG_READ_MAX bytes, inside the ARGS_LEN + ARG_READ_MAX buffer.
    unsafe {
        let Ok(argv) = ctx.read_at::<u64>(argv_offset) else {
            return 0;
        };
        let mut len: u32 = 0;
        let mut argc: u32 = 0;
        let mut flags: u32 = 0;
        let mut ended = false;
        for i in 0..MAX_ARGS {
            let mut arg: u64 = 0;
            if argv == 0
                || h::bpf_probe_read_user(
                    (&raw mut arg).cast(),
                    8,
                    (argv + (i as u64) * 8) as *const _,
                ) < 0
            {
                flags |= FLAG_READ_FAILED;
                ended = true;
                break;
            }
            if arg == 0 {
                ended = true;
                break;
            }
            if len as usize >= ARGS_LEN {
                break;
            }
            let off = (len as usize) & (ARGS_LEN - 1);
            let dst = (*s).args.as_mut_ptr().add(off);
            let n = h::bpf_probe_read_user_str(dst.cast(), ARG_READ_MAX as u32, arg as *const _);
            if n <= 0 {
                flags |= FLAG_READ_FAILED;
                ended = true;
                break;
            }
            if n as usize >= ARG_READ_MAX {
                flags |= FLAG_ARGS_TRUNCATED;
            }
            len += n as u32;
            argc += 1;
        }
        if !ended {
            // Stopped on MAX_ARGS or a full buffer with arguments left over.
            flags |= FLAG_ARGS_TRUNCATED;
        }
        if len as usize > ARGS_LEN {
            len = ARGS_LEN as u32;
            flags |= FLAG_ARGS_TRUNCATED;
        }
        (*s).argc = argc;
        (*s).args_len = len;
        (*s).flags = flags;
        (*s)._pad = 0;
        let tid = pid_tgid as u32;
        let _ = EXEC_ARGS.insert(&tid, &*s, 0);
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let Some(pid_tgid) = begin(KIND_EXEC) else {
        return 0;
    };
    let Some(mut entry) = reserve::<ExecRecord>(KIND_EXEC) else {
        return 0;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` is the live reservation; offsets from sched/sched_process_exec/format
    // (filename __data_loc @8, old_pid @16); the kernel copy is bounded by the record fields.
    unsafe {
        fill_header(&raw mut (*r).hdr, KIND_EXEC, pid_tgid);
        let loc = ctx.read_at::<u32>(8).unwrap_or(0);
        let src = (ctx.as_ptr() as usize + (loc & 0xffff) as usize) as *const u8;
        let n = h::bpf_probe_read_kernel_str(
            (*r).filename.as_mut_ptr().cast(),
            PATH_LEN as u32,
            src.cast(),
        );
        if n < 0 {
            (*r).filename[0] = 0;
            (*r).hdr.flags |= FLAG_READ_FAILED;
        } else if n as usize >= PATH_LEN {
            (*r).hdr.flags |= FLAG_PATH_TRUNCATED;
        }
        let old_tid = ctx.read_at::<i32>(16).unwrap_or(0) as u32;
        (*r).old_tid = old_tid;
        (*r)._pad = 0;
        if argv_struct_route() {
            argv_from_mm(r);
        } else {
            argv_from_stash(r, old_tid);
        }
    }
    submit(entry, KIND_EXEC);
    0
}

/// Whether argv is read from the new image's memory (the offsets it needs are resolved).
#[inline(always)]
fn argv_struct_route() -> bool {
    kernel_offset(OFF_TASK_MM).is_some()
        && kernel_offset(OFF_MM_ARG_START).is_some()
        && kernel_offset(OFF_MM_ARG_END).is_some()
}

/// Copies the new image's argv block (`mm->arg_start..arg_end`: NUL-terminated strings, set up
/// by the kernel on the new stack a moment ago, so resident) into the record, cut at
/// `ARGS_LEN` with the truncation flag. `argc` is `ARGC_IN_ARGS`: userspace counts.
///
/// # Safety
/// `r` is a live ring reservation.
#[inline(always)]
unsafe fn argv_from_mm(r: *mut ExecRecord) {
    unsafe {
        (*r).argc = ARGC_IN_ARGS;
        (*r).args_len = 0;
        // SAFETY (helper): no arguments.
        let task = h::bpf_get_current_task();
        let mm = read_kernel_at::<u64>(task, OFF_TASK_MM).unwrap_or(0);
        let (Some(start), Some(end)) = (
            read_kernel_at::<u64>(mm, OFF_MM_ARG_START),
            read_kernel_at::<u64>(mm, OFF_MM_ARG_END),
        ) else {
            (*r).hdr.flags |= FLAG_ARGS_TRUNCATED | FLAG_READ_FAILED;
            return;
        };
        if end < start {
            (*r).hdr.flags |= FLAG_ARGS_TRUNCATED | FLAG_READ_FAILED;
            return;
        }
        let mut len = end - start;
        if len > ARGS_LEN as u64 {
            len = ARGS_LEN as u64;
            (*r).hdr.flags |= FLAG_ARGS_TRUNCATED;
        }
        // The mask restates `len <= ARGS_LEN` in a form the verifier tracks through LLVM's
        // rewrites (ARGS_LEN is a power of two; ARGS_LEN itself keeps its bit).
        let len = (len as u32) & ((ARGS_LEN as u32) * 2 - 1);
        if len == 0 {
            return;
        }
        if len as usize > ARGS_LEN
            || h::bpf_probe_read_user((*r).args.as_mut_ptr().cast(), len, start as *const _) < 0
        {
            (*r).hdr.flags |= FLAG_ARGS_TRUNCATED | FLAG_READ_FAILED;
            return;
        }
        (*r).args_len = len;
    }
}

/// Moves the argv captured at `sys_enter_execve(at)` by `old_tid` into the record.
///
/// # Safety
/// `r` is a live ring reservation.
#[inline(always)]
unsafe fn argv_from_stash(r: *mut ExecRecord, old_tid: u32) {
    unsafe {
        match EXEC_ARGS.get_ptr(&old_tid) {
            Some(s) => {
                let ok = h::bpf_probe_read_kernel(
                    (*r).args.as_mut_ptr().cast(),
                    ARGS_LEN as u32,
                    (*s).args.as_ptr().cast(),
                );
                if ok < 0 {
                    (*r).argc = 0;
                    (*r).args_len = 0;
                    (*r).hdr.flags |= FLAG_ARGS_TRUNCATED | FLAG_READ_FAILED;
                } else {
                    (*r).argc = (*s).argc;
                    (*r).args_len = (*s).args_len;
                    (*r).hdr.flags |= (*s).flags;
                }
                let _ = EXEC_ARGS.remove(&old_tid);
            }
            None => {
                (*r).argc = 0;
                (*r).args_len = 0;
                (*r).hdr.flags |= FLAG_ARGS_TRUNCATED;
            }
        }
    }
}

#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from task/task_newtask/format (pid @8, clone_flags @32).
    let (child, clone_flags) = unsafe {
        (
            ctx.read_at::<i32>(8).unwrap_or(0),
            ctx.read_at::<u64>(32).unwrap_or(0),
        )
    };
    if clone_flags & CLONE_THREAD != 0 {
        // A new thread is not a new process; parentage is per process.
        return 0;
    }
    // Not filtered for the daemon: userspace needs the daemon's forks to know its children's
    // parent, and drops the event itself after updating the process cache.
    // SAFETY: helper without arguments.
    let pid_tgid = unsafe { h::bpf_get_current_pid_tgid() };
    let Some(mut entry) = reserve::<SmallRecord>(KIND_FORK) else {
        return 0;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` is the live reservation.
    unsafe {
        fill_header(&raw mut (*r).hdr, KIND_FORK, pid_tgid);
        (*r).arg = [child as u32 as u64, clone_flags, 0, 0];
    }
    submit(entry, KIND_FORK);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_exit_group")]
pub fn sys_enter_exit_group(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from syscalls/sys_enter_exit_group/format (error_code @16).
    let code = unsafe { ctx.read_at::<u64>(16).unwrap_or(0) } as u32 & 0xff;
    stash_exit_code(code);
    0
}

#[tracepoint(category = "signal", name = "signal_deliver")]
pub fn signal_deliver(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from signal/signal_deliver/format (sig @8, sa_handler @24).
    let (sig, handler) = unsafe {
        (
            ctx.read_at::<i32>(8).unwrap_or(0),
            ctx.read_at::<u64>(24).unwrap_or(1),
        )
    };
    // SIG_DFL (0) on a signal whose default action terminates: this delivery kills the process.
    if handler == 0 && (1..64).contains(&sig) && FATAL_DEFAULT & (1u64 << sig) != 0 {
        stash_exit_code(128 + sig as u32);
    }
    0
}

#[inline(always)]
fn stash_exit_code(code: u32) {
    // SAFETY: helper without arguments.
    let tgid = (unsafe { h::bpf_get_current_pid_tgid() } >> 32) as u32;
    let _ = EXIT_CODES.insert(&tgid, &code, 0);
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from sched/sched_process_exit/format (group_dead @32, one byte).
    let group_dead = unsafe { ctx.read_at::<u8>(32).unwrap_or(0) };
    if group_dead == 0 {
        return 0;
    }
    let (code, known) = if kernel_offset(OFF_TASK_EXIT_CODE).is_some() {
        // Struct route: the wait status do_exit stored just before this tracepoint (exit_group's
        // code << 8, or the killing signal in the low 7 bits, 0x80 = core dumped).
        // SAFETY: helper without arguments.
        let task = unsafe { h::bpf_get_current_task() };
        match read_kernel_at::<i32>(task, OFF_TASK_EXIT_CODE) {
            Some(status) if status & 0x7f == 0 => (((status >> 8) & 0xff) as u32, 1),
            Some(status) => (128 + (status & 0x7f) as u32, 1),
            None => (0, 0),
        }
    } else {
        // SAFETY: helper without arguments.
        let tgid = (unsafe { h::bpf_get_current_pid_tgid() } >> 32) as u32;
        let found = match EXIT_CODES.get_ptr(&tgid) {
            // SAFETY: pointer from a successful lookup.
            Some(c) => (unsafe { *c }, 1),
            None => (0, 0),
        };
        let _ = EXIT_CODES.remove(&tgid);
        found
    };
    emit_small(KIND_EXIT, [code as u64, known, 0, 0]);
    0
}

/// Emits a `SmallRecord` for the current task, unless the filter drops it (exit is never
/// filtered: the process cache needs it).
#[inline(always)]
pub(crate) fn emit_small(kind: u32, arg: [u64; 4]) {
    let pid_tgid = if kind == KIND_EXIT {
        let Some(pid_tgid) = begin(kind) else {
            return;
        };
        pid_tgid
    } else {
        let Some(gate) = filter::start(kind) else {
            return;
        };
        if !gate.pass {
            filter::reject(kind);
            return;
        }
        gate.pid_tgid
    };
    let Some(mut entry) = reserve::<SmallRecord>(kind) else {
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` is the live reservation.
    unsafe {
        fill_header(&raw mut (*r).hdr, kind, pid_tgid);
        (*r).arg = arg;
    }
    submit(entry, kind);
}
