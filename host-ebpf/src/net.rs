//! Network events: connect (the sockaddr the caller passed), accept (the peer sockaddr the
//! kernel wrote back, read at syscall exit; the user pointer is stashed per thread at entry),
//! listen (`sock/inet_sock_set_state` to TCP_LISTEN, which runs in the caller's context and
//! carries family, protocol and the bound address) and socket creation. The local end of an
//! accepted connection is not in accept's arguments: the same state tracepoint records it when a
//! passive connection becomes established (SYN_RECV -> ESTABLISHED, before accept can return
//! it), keyed by the peer, and accept's exit looks it up by the peer address it read.

use aya_ebpf::{
    helpers::generated as h,
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use palisade_common::{
    AcceptStash, SockRecord, FILTER_GATE_PORT, FLAG_READ_FAILED, FLAG_UNIX_ABSTRACT,
    KIND_NET_ACCEPT, KIND_NET_CONNECT, KIND_NET_LISTEN, KIND_SOCKET,
};

use crate::{
    file::arg, fill_header, filter, process::emit_small, read_user_str, reserve, submit,
    DAEMON_TGID,
};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_RECV: i32 = 3;
const TCP_LISTEN: i32 = 10;

/// The remote end of a TCP connection as accept reports it (port in host order; an IPv4
/// address in the first four bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct PeerKey {
    family: u16,
    port: u16,
    addr: [u8; 16],
}

/// The local end of an established passive connection.
#[repr(C)]
#[derive(Clone, Copy)]
struct LocalEnd {
    addr: [u8; 16],
    port: u16,
    _pad: u16,
}

/// Local ends of passive connections not yet accepted, by peer. LRU: a connection never
/// accepted (or accepted by a process whose accept is filtered) ages out.
#[map]
static ACCEPT_LOCAL: LruHashMap<PeerKey, LocalEnd> = LruHashMap::with_max_entries(8192, 0);

/// accept(4) entry arguments by thread id, consumed at exit.
#[map]
static ACCEPTS: LruHashMap<u32, AcceptStash> = LruHashMap::with_max_entries(4096, 0);

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    emit_sockaddr(KIND_NET_CONNECT, arg(&ctx, 1), arg(&ctx, 0) as i32);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept")]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    stash_accept(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept4")]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    stash_accept(&ctx);
    0
}

#[inline(always)]
fn stash_accept(ctx: &TracePointContext) {
    // SAFETY: helper without arguments.
    let pid_tgid = unsafe { h::bpf_get_current_pid_tgid() };
    if (pid_tgid >> 32) as u32 == DAEMON_TGID.load() {
        return;
    }
    let stash = AcceptStash {
        addr_ptr: arg(ctx, 1),
        fd: arg(ctx, 0) as i32,
        _pad: 0,
    };
    let _ = ACCEPTS.insert(&(pid_tgid as u32), &stash, 0);
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    finish_accept(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    finish_accept(&ctx);
    0
}

#[inline(always)]
fn finish_accept(ctx: &TracePointContext) {
    // SAFETY: helper without arguments.
    let tid = unsafe { h::bpf_get_current_pid_tgid() } as u32;
    let Some(stash) = ACCEPTS.get_ptr(&tid) else {
        return;
    };
    // SAFETY: pointer from a successful lookup; copied before the entry is removed.
    let stash = unsafe { *stash };
    let _ = ACCEPTS.remove(&tid);
    // SAFETY: sys_exit_* records carry `long ret` at offset 16.
    let ret = unsafe { ctx.read_at::<i64>(16).unwrap_or(-1) };
    if ret < 0 {
        return;
    }
    // The new connection's fd is more useful than the listening one.
    emit_sockaddr(KIND_NET_ACCEPT, stash.addr_ptr, ret as i32);
}

/// Emits a `SockRecord` from a user `struct sockaddr` (family, port, IPv4/IPv6 address), unless
/// the filter drops it. The sockaddr head is read before the reservation so the port gate can
/// decide first; non-inet families pass it.
#[inline(always)]
fn emit_sockaddr(kind: u32, addr: u64, fd: i32) {
    let Some(gate) = filter::start(kind) else {
        return;
    };
    // family (u16) and port (u16, network order) head every inet sockaddr.
    let mut head: [u8; 4] = [0; 4];
    // SAFETY: bounded copy of 4 user bytes onto the stack.
    let read_ok = addr != 0
        && unsafe { h::bpf_probe_read_user((&raw mut head).cast(), 4, addr as *const _) } >= 0;
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let port = u16::from_be_bytes([head[2], head[3]]);
    if !gate.pass {
        let inet = read_ok && (family == AF_INET || family == AF_INET6);
        let hit = gate.word & FILTER_GATE_PORT != 0 && (!inet || filter::port_hit(kind, port));
        if !hit {
            filter::reject(kind);
            return;
        }
    }
    let Some(mut entry) = reserve::<SockRecord>(kind) else {
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` is the live reservation; user reads are bounded copies into its fields.
    unsafe {
        fill_header(&raw mut (*r).hdr, kind, gate.pid_tgid);
        (*r).fd = fd;
        (*r)._pad = 0;
        (*r).protocol = 0;
        (*r).sport = 0;
        (*r).saddr = [0; 16];
        (*r).daddr = [0; 16];
        (*r).family = 0;
        (*r).dport = 0;
        (*r).unix_path[0] = 0;
        if !read_ok {
            if addr != 0 {
                (*r).hdr.flags |= FLAG_READ_FAILED;
            }
        } else {
            (*r).family = family;
            if family == AF_UNIX {
                // sun_path at offset 2; an abstract name starts with NUL and is read from 3.
                let (src, flag) = if head[2] == 0 {
                    (addr + 3, FLAG_UNIX_ABSTRACT)
                } else {
                    (addr + 2, 0)
                };
                (*r).hdr.flags |= flag | read_user_str(&raw mut (*r).unix_path, src, 0);
            } else if family == AF_INET || family == AF_INET6 {
                (*r).dport = port;
                let (off, len) = if family == AF_INET { (4, 4) } else { (8, 16) };
                if h::bpf_probe_read_user(
                    (*r).daddr.as_mut_ptr().cast(),
                    len,
                    (addr + off) as *const _,
                ) < 0
                {
                    (*r).hdr.flags |= FLAG_READ_FAILED;
                } else if kind == KIND_NET_ACCEPT {
                    let peer = PeerKey {
                        family,
                        port,
                        addr: (*r).daddr,
                    };
                    if let Some(local) = ACCEPT_LOCAL.get_ptr(&peer) {
                        (*r).saddr = (*local).addr;
                        (*r).sport = (*local).port;
                        let _ = ACCEPT_LOCAL.remove(&peer);
                    }
                }
            }
        }
    }
    submit(entry, kind);
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from sock/inet_sock_set_state/format.
    let newstate = unsafe { ctx.read_at::<i32>(20).unwrap_or(0) };
    if newstate == TCP_ESTABLISHED {
        remember_local_end(&ctx);
        return 0;
    }
    if newstate != TCP_LISTEN {
        return 0;
    }
    let Some(gate) = filter::start(KIND_NET_LISTEN) else {
        return 0;
    };
    if !gate.pass {
        // SAFETY: sport @24 of sock/inet_sock_set_state/format; the family is always inet.
        let sport = unsafe { ctx.read_at::<u16>(24).unwrap_or(0) };
        if gate.word & FILTER_GATE_PORT == 0 || !filter::port_hit(KIND_NET_LISTEN, sport) {
            filter::reject(KIND_NET_LISTEN);
            return 0;
        }
    }
    let pid_tgid = gate.pid_tgid;
    let Some(mut entry) = reserve::<SockRecord>(KIND_NET_LISTEN) else {
        return 0;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` is the live reservation; fields read at their format offsets (sport @24,
    // family @28, protocol @30, saddr @32, saddr_v6 @40).
    unsafe {
        fill_header(&raw mut (*r).hdr, KIND_NET_LISTEN, pid_tgid);
        let family = ctx.read_at::<u16>(28).unwrap_or(0);
        (*r).family = family;
        (*r).protocol = ctx.read_at::<u16>(30).unwrap_or(0);
        (*r).sport = ctx.read_at::<u16>(24).unwrap_or(0);
        (*r).dport = 0;
        (*r).fd = -1;
        (*r)._pad = 0;
        (*r).daddr = [0; 16];
        (*r).unix_path[0] = 0;
        (*r).saddr = if family == AF_INET6 {
            ctx.read_at::<[u8; 16]>(40).unwrap_or([0; 16])
        } else {
            v4_in_16(ctx.read_at::<[u8; 4]>(32).unwrap_or([0; 4]))
        };
    }
    submit(entry, KIND_NET_LISTEN);
    0
}

/// Records the local end of a passive TCP connection that just became established, for
/// accept's exit to find by peer. Runs in whatever context completed the handshake (often a
/// softirq), so no process is involved; only done while some plugin wants accept events.
#[inline(always)]
fn remember_local_end(ctx: &TracePointContext) {
    // SAFETY: offsets from sock/inet_sock_set_state/format (oldstate @16).
    let oldstate = unsafe { ctx.read_at::<i32>(16).unwrap_or(0) };
    if oldstate != TCP_SYN_RECV || !filter::kind_wanted(KIND_NET_ACCEPT) {
        return;
    }
    // SAFETY: offsets from the format: sport @24, dport @26, family @28, saddr @32, daddr @36,
    // saddr_v6 @40, daddr_v6 @56; ports are in host order there, as accept's key is.
    unsafe {
        let family = ctx.read_at::<u16>(28).unwrap_or(0);
        let (local, peer) = if family == AF_INET6 {
            (
                ctx.read_at::<[u8; 16]>(40).unwrap_or([0; 16]),
                ctx.read_at::<[u8; 16]>(56).unwrap_or([0; 16]),
            )
        } else {
            let s = ctx.read_at::<[u8; 4]>(32).unwrap_or([0; 4]);
            let d = ctx.read_at::<[u8; 4]>(36).unwrap_or([0; 4]);
            (v4_in_16(s), v4_in_16(d))
        };
        let key = PeerKey {
            family,
            port: ctx.read_at::<u16>(26).unwrap_or(0),
            addr: peer,
        };
        let value = LocalEnd {
            addr: local,
            port: ctx.read_at::<u16>(24).unwrap_or(0),
            _pad: 0,
        };
        let _ = ACCEPT_LOCAL.insert(&key, &value, 0);
    }
}

/// An IPv4 address in the first four bytes of a 16-byte field, the rest zero.
#[inline(always)]
fn v4_in_16(v4: [u8; 4]) -> [u8; 16] {
    [
        v4[0], v4[1], v4[2], v4[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]
}

#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    emit_small(KIND_SOCKET, [arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2), 0]);
    0
}
