//! Kernel record bytes to the domain [`Event`]: the one place the `palisade_common` ABI becomes
//! host types. Never panics: every read is bounds-checked against the record length, unknown
//! kinds and short records are errors, strings are cut at the first NUL (or the buffer end) and
//! converted lossily. The process context is only what the record carries; the process cache
//! (`procs`) fills in the rest afterwards.

use std::mem::{offset_of, size_of};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use palisade_common as abi;

use crate::event::{
    AddressFamily, ConnectionData, Event, EventData, ExecData, FdTargetKind, FileOpenData,
    ListenData, Process, Protocol,
};

/// Why a ring record is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need}-byte header")]
    ShortHeader { len: usize, need: usize },
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("record of kind {kind} has {len} bytes, expected {need}")]
    ShortRecord { kind: u32, len: usize, need: usize },
}

/// Converts kernel monotonic time (`bpf_ktime_get_ns`) to Unix-epoch nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    /// Unix-epoch ns minus monotonic ns, sampled once at start.
    pub offset_ns: i64,
}

impl Clock {
    pub fn to_unix_ns(self, ktime_ns: u64) -> u64 {
        (ktime_ns as i64).saturating_add(self.offset_ns).max(0) as u64
    }

    /// Inverse of [`Clock::to_unix_ns`]: ns since boot (monotonic; equal to boot time on a
    /// machine that never suspended).
    pub fn to_boot_ns(self, unix_ns: u64) -> u64 {
        (unix_ns as i64).saturating_sub(self.offset_ns).max(0) as u64
    }

    /// Samples the offset between CLOCK_REALTIME and CLOCK_MONOTONIC (what `bpf_ktime_get_ns`
    /// reads).
    pub fn now() -> Clock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real.saturating_sub(mono),
        }
    }
}

/// `clock_gettime` in ns (x86_64/aarch64: `time_t` and `c_long` are i64).
fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[expect(unsafe_code, reason = "clock_gettime writes only the timespec we pass")]
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

/// Decodes one ring-buffer record. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8], clock: Clock) -> Result<Event, DecodeError> {
    let need = size_of::<abi::Header>();
    if bytes.len() < need {
        return Err(DecodeError::ShortHeader {
            len: bytes.len(),
            need,
        });
    }
    let r = Reader(bytes);
    let kind = r.u32(offset_of!(abi::Header, kind));
    let need = abi::record_size(kind).ok_or(DecodeError::UnknownKind { kind })?;
    if bytes.len() < need {
        return Err(DecodeError::ShortRecord {
            kind,
            len: bytes.len(),
            need,
        });
    }
    let flags = r.u32(offset_of!(abi::Header, flags));
    let process = Process {
        pid: r.u32(offset_of!(abi::Header, tgid)),
        tid: r.u32(offset_of!(abi::Header, tid)),
        uid: r.u32(offset_of!(abi::Header, uid)),
        gid: r.u32(offset_of!(abi::Header, gid)),
        euid: r.u32(offset_of!(abi::Header, uid)),
        comm: r.str(offset_of!(abi::Header, comm), abi::COMM_LEN),
        cgroup_id: r.u64(offset_of!(abi::Header, cgroup_id)),
        ..Process::default()
    };
    let ts_ns = clock.to_unix_ns(r.u64(offset_of!(abi::Header, ktime_ns)));

    // Field offsets of the generic shapes.
    let small_arg = |i: usize| r.u64(offset_of!(abi::SmallRecord, arg) + 8 * i);
    let path_arg = |i: usize| r.u64(offset_of!(abi::PathRecord, arg) + 8 * i);
    let path = || r.str(offset_of!(abi::PathRecord, path), abi::PATH_LEN);
    let p2_arg = |i: usize| r.u64(offset_of!(abi::Path2Record, arg) + 8 * i);
    let p2_path = || r.str(offset_of!(abi::Path2Record, path), abi::PATH_LEN);
    let p2_path2 = || r.str(offset_of!(abi::Path2Record, path2), abi::PATH_LEN);

    let data = match kind {
        abi::KIND_EXEC => {
            let args_off = offset_of!(abi::ExecRecord, args);
            let args_len =
                (r.u32(offset_of!(abi::ExecRecord, args_len)) as usize).min(abi::ARGS_LEN);
            let argc = r.u32(offset_of!(abi::ExecRecord, argc)) as usize;
            let blob = r.bytes(args_off, args_len);
            let mut args: Vec<String> = blob
                .split(|b| *b == 0)
                .take(argc.min(abi::MAX_ARGS))
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            // A blob cut mid-argument leaves no final NUL; `split` still yields the piece.
            if args.len() > argc {
                args.truncate(argc);
            }
            EventData::Exec(ExecData {
                filename: r.str(offset_of!(abi::ExecRecord, filename), abi::PATH_LEN),
                args,
                args_truncated: flags & abi::FLAG_ARGS_TRUNCATED != 0,
            })
        }
        abi::KIND_EXIT => EventData::Exit {
            // Unknown when the process died without exit_group and without a fatal signal
            // delivery the kernel program recognised (rare: e.g. the last thread calling exit()).
            code: if small_arg(1) != 0 {
                small_arg(0) as i32
            } else {
                -1
            },
        },
        abi::KIND_FORK => EventData::Fork {
            child_pid: small_arg(0) as u32,
        },
        abi::KIND_FILE_OPEN => EventData::FileOpen(FileOpenData {
            path: path(),
            flags: path_arg(0) as u32,
            mode: path_arg(1) as u32,
            result: (flags & abi::FLAG_HAS_RESULT != 0).then(|| path_arg(3) as i64 as i32),
        }),
        abi::KIND_FILE_RENAME => EventData::FileRename {
            from: p2_path(),
            to: p2_path2(),
        },
        abi::KIND_FILE_UNLINK => EventData::FileUnlink { path: path() },
        abi::KIND_FILE_CHMOD => EventData::FileChmod {
            path: path(),
            mode: path_arg(0) as u32,
        },
        abi::KIND_FILE_CHOWN => EventData::FileChown {
            path: path(),
            uid: path_arg(0) as u32,
            gid: path_arg(1) as u32,
        },
        abi::KIND_FILE_LINK => EventData::FileLink {
            target: p2_path(),
            link: p2_path2(),
            symbolic: p2_arg(0) == 1,
        },
        abi::KIND_NET_CONNECT => EventData::NetConnect(connection(&r, flags)),
        abi::KIND_NET_ACCEPT => EventData::NetAccept(connection(&r, flags)),
        abi::KIND_NET_LISTEN => {
            let family = r.u16(offset_of!(abi::SockRecord, family));
            EventData::NetListen(ListenData {
                family: AddressFamily::from_af(family),
                protocol: Protocol::from_ipproto(r.u16(offset_of!(abi::SockRecord, protocol)) as u8),
                addr: address(family, r.bytes(offset_of!(abi::SockRecord, saddr), 16)),
                port: r.u16(offset_of!(abi::SockRecord, sport)),
            })
        }
        abi::KIND_SETUID => EventData::Setuid {
            uid: small_arg(0) as u32,
        },
        abi::KIND_SETGID => EventData::Setgid {
            gid: small_arg(0) as u32,
        },
        abi::KIND_PTRACE => EventData::Ptrace {
            request: small_arg(0) as u32,
            target_pid: small_arg(1) as u32,
        },
        abi::KIND_MODULE_LOAD => EventData::ModuleLoad { name: path() },
        abi::KIND_MOUNT => EventData::Mount {
            source: p2_path(),
            target: p2_path2(),
            fstype: r.str(offset_of!(abi::Path2Record, short), abi::SHORT_LEN),
        },
        abi::KIND_MEMFD_CREATE => EventData::MemfdCreate {
            name: path(),
            flags: path_arg(0) as u32,
        },
        abi::KIND_BPF => EventData::Bpf {
            cmd: small_arg(0) as u32,
        },
        abi::KIND_SOCKET => EventData::Socket {
            family: small_arg(0) as u16,
            socket_type: small_arg(1) as u32,
            protocol: small_arg(2) as u32,
        },
        abi::KIND_FD_DUP => EventData::FdDup {
            oldfd: small_arg(0) as u32,
            newfd: small_arg(1) as u32,
            // Filled by the process cache from /proc (racy by nature; see `procs`).
            target_kind: FdTargetKind::Unknown,
        },
        _ => return Err(DecodeError::UnknownKind { kind }),
    };
    Ok(Event {
        ts_ns,
        process: Arc::new(process),
        data,
    })
}

/// Connect/accept: the remote end is the `d*` side of the record. For AF_UNIX the socket path
/// is the `daddr` (abstract names as `@name`).
fn connection(r: &Reader<'_>, flags: u32) -> ConnectionData {
    let family = r.u16(offset_of!(abi::SockRecord, family));
    if family == 1 {
        let path = r.str(offset_of!(abi::SockRecord, unix_path), abi::UNIX_PATH_LEN);
        return ConnectionData {
            family: AddressFamily::Unix,
            protocol: Protocol::Unknown,
            daddr: if flags & abi::FLAG_UNIX_ABSTRACT != 0 {
                format!("@{path}")
            } else {
                path
            },
            ..ConnectionData::default()
        };
    }
    ConnectionData {
        family: AddressFamily::from_af(family),
        protocol: Protocol::from_ipproto(r.u16(offset_of!(abi::SockRecord, protocol)) as u8),
        saddr: address(family, r.bytes(offset_of!(abi::SockRecord, saddr), 16)),
        sport: r.u16(offset_of!(abi::SockRecord, sport)),
        daddr: address(family, r.bytes(offset_of!(abi::SockRecord, daddr), 16)),
        dport: r.u16(offset_of!(abi::SockRecord, dport)),
    }
}

/// Text form of an address in network byte order; empty for unset or non-IP families.
fn address(family: u16, raw: &[u8]) -> String {
    match family {
        2 => match <[u8; 4]>::try_from(raw.get(..4).unwrap_or(&[])) {
            Ok(v4) if v4 != [0; 4] => Ipv4Addr::from(v4).to_string(),
            _ => String::new(),
        },
        10 => match <[u8; 16]>::try_from(raw.get(..16).unwrap_or(&[])) {
            Ok(v6) if v6 != [0; 16] => Ipv6Addr::from(v6).to_string(),
            _ => String::new(),
        },
        _ => String::new(),
    }
}

/// Bounds-checked little-endian field reads; out-of-range reads yield zero/empty (the caller
/// has already checked the record size, so this only guards against ABI mistakes).
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&self, off: usize, len: usize) -> &[u8] {
        self.0
            .get(off..off.saturating_add(len))
            .or_else(|| self.0.get(off..))
            .unwrap_or(&[])
    }
    fn array<const N: usize>(&self, off: usize) -> [u8; N] {
        <[u8; N]>::try_from(self.bytes(off, N)).unwrap_or([0; N])
    }
    fn u16(&self, off: usize) -> u16 {
        u16::from_ne_bytes(self.array(off))
    }
    fn u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.array(off))
    }
    fn u64(&self, off: usize) -> u64 {
        u64::from_ne_bytes(self.array(off))
    }
    /// A NUL-terminated string in a fixed buffer.
    fn str(&self, off: usize, len: usize) -> String {
        let raw = self.bytes(off, len);
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(raw.get(..end).unwrap_or(&[])).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn header(kind: u32) -> abi::Header {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"bash");
        abi::Header {
            kind,
            flags: 0,
            ktime_ns: 1_000,
            tgid: 42,
            tid: 43,
            uid: 1000,
            gid: 1001,
            cgroup_id: 7,
            comm,
        }
    }

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        let mut out = vec![0u8; size_of::<T>()];
        // SAFETY-free copy through a byte view would need unsafe; build via ptr copy in tests.
        #[expect(unsafe_code, reason = "test-only view of a repr(C) record as bytes")]
        unsafe {
            std::ptr::copy_nonoverlapping((v as *const T).cast::<u8>(), out.as_mut_ptr(), out.len())
        };
        out
    }

    fn put_str(buf: &mut [u8], s: &str) {
        buf[..s.len()].copy_from_slice(s.as_bytes());
        buf[s.len()] = 0;
    }

    #[test]
    fn kinds_match_event_kind_order() {
        let pairs = [
            (abi::KIND_EXEC, EventKind::Exec),
            (abi::KIND_EXIT, EventKind::Exit),
            (abi::KIND_FORK, EventKind::Fork),
            (abi::KIND_FILE_OPEN, EventKind::FileOpen),
            (abi::KIND_FILE_RENAME, EventKind::FileRename),
            (abi::KIND_FILE_UNLINK, EventKind::FileUnlink),
            (abi::KIND_FILE_CHMOD, EventKind::FileChmod),
            (abi::KIND_FILE_CHOWN, EventKind::FileChown),
            (abi::KIND_FILE_LINK, EventKind::FileLink),
            (abi::KIND_NET_CONNECT, EventKind::NetConnect),
            (abi::KIND_NET_ACCEPT, EventKind::NetAccept),
            (abi::KIND_NET_LISTEN, EventKind::NetListen),
            (abi::KIND_SETUID, EventKind::Setuid),
            (abi::KIND_SETGID, EventKind::Setgid),
            (abi::KIND_PTRACE, EventKind::Ptrace),
            (abi::KIND_MODULE_LOAD, EventKind::ModuleLoad),
            (abi::KIND_MOUNT, EventKind::Mount),
            (abi::KIND_MEMFD_CREATE, EventKind::MemfdCreate),
            (abi::KIND_BPF, EventKind::Bpf),
            (abi::KIND_SOCKET, EventKind::Socket),
            (abi::KIND_FD_DUP, EventKind::FdDup),
        ];
        assert_eq!(pairs.len(), abi::KIND_COUNT as usize);
        assert_eq!(EventKind::ALL.len(), abi::KIND_COUNT as usize);
        for (k, e) in pairs {
            assert_eq!(k, e as u32, "{e:?}");
        }
    }

    #[test]
    fn decodes_exec_with_args() {
        let mut rec = abi::ExecRecord {
            hdr: header(abi::KIND_EXEC),
            old_tid: 43,
            argc: 3,
            args_len: 0,
            _pad: 0,
            filename: [0; abi::PATH_LEN],
            args: [0xAA; abi::ARGS_LEN],
        };
        put_str(&mut rec.filename, "/bin/true");
        let blob = b"/bin/true\0--flag\0value with space\0";
        rec.args[..blob.len()].copy_from_slice(blob);
        rec.args_len = blob.len() as u32;
        let ev = decode(&bytes_of(&rec), Clock { offset_ns: 5 }).unwrap();
        assert_eq!(ev.ts_ns, 1_005);
        assert_eq!(ev.process.pid, 42);
        assert_eq!(ev.process.tid, 43);
        assert_eq!(ev.process.comm, "bash");
        assert_eq!(ev.process.cgroup_id, 7);
        assert_eq!(
            ev.data,
            EventData::Exec(ExecData {
                filename: "/bin/true".into(),
                args: vec![
                    "/bin/true".into(),
                    "--flag".into(),
                    "value with space".into()
                ],
                args_truncated: false,
            })
        );
    }

    #[test]
    fn decodes_connect_v4_and_v6() {
        let mut rec = abi::SockRecord {
            hdr: header(abi::KIND_NET_CONNECT),
            family: 2,
            protocol: 0,
            sport: 0,
            dport: 8080,
            fd: 3,
            _pad: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            unix_path: [0; abi::UNIX_PATH_LEN],
        };
        rec.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let ev = decode(&bytes_of(&rec), Clock::default()).unwrap();
        let EventData::NetConnect(c) = ev.data else {
            panic!("{:?}", ev.data)
        };
        assert_eq!(
            (c.family, c.daddr.as_str(), c.dport),
            (AddressFamily::Inet, "127.0.0.1", 8080)
        );
        assert_eq!(c.saddr, "");
        rec.family = 10;
        rec.daddr = Ipv6Addr::LOCALHOST.octets();
        let ev = decode(&bytes_of(&rec), Clock::default()).unwrap();
        let EventData::NetConnect(c) = ev.data else {
            panic!()
        };
        assert_eq!((c.family, c.daddr.as_str()), (AddressFamily::Inet6, "::1"));
        rec.family = 1;
        put_str(&mut rec.unix_path, "run/docker.sock");
        rec.hdr.flags = abi::FLAG_UNIX_ABSTRACT;
        let ev = decode(&bytes_of(&rec), Clock::default()).unwrap();
        let EventData::NetConnect(c) = ev.data else {
            panic!()
        };
        assert_eq!(
            (c.family, c.daddr.as_str()),
            (AddressFamily::Unix, "@run/docker.sock")
        );
    }

    #[test]
    fn unterminated_strings_stop_at_buffer_end() {
        let rec = abi::PathRecord {
            hdr: header(abi::KIND_FILE_OPEN),
            arg: [2, 0o644, 0, 0],
            path: [b'a'; abi::PATH_LEN],
        };
        let ev = decode(&bytes_of(&rec), Clock::default()).unwrap();
        let EventData::FileOpen(f) = ev.data else {
            panic!()
        };
        assert_eq!(f.path.len(), abi::PATH_LEN);
        assert_eq!((f.flags, f.mode), (2, 0o644));
    }

    #[test]
    fn rejects_short_and_unknown_records_without_panicking() {
        assert!(matches!(
            decode(&[], Clock::default()),
            Err(DecodeError::ShortHeader { .. })
        ));
        let mut bytes = bytes_of(&header(abi::KIND_EXEC));
        assert!(matches!(
            decode(&bytes, Clock::default()),
            Err(DecodeError::ShortRecord { kind: 0, .. })
        ));
        bytes[0] = 99;
        assert_eq!(
            decode(&bytes, Clock::default()),
            Err(DecodeError::UnknownKind { kind: 99 })
        );
        // Every truncation of every shape, and garbage: errors or events, never a panic.
        let full = bytes_of(&abi::Path2Record {
            hdr: header(abi::KIND_MOUNT),
            arg: [0; 4],
            path: [0xff; abi::PATH_LEN],
            path2: [0xfe; abi::PATH_LEN],
            short: [0xfd; abi::SHORT_LEN],
        });
        for kind in 0..abi::KIND_COUNT + 2 {
            let mut b = full.clone();
            b[..4].copy_from_slice(&kind.to_ne_bytes());
            for len in 0..b.len() {
                let _ = decode(&b[..len], Clock::default());
            }
        }
    }
}
