//! The canonical-ABI image of a detector batch ([`LoweredBatch`]): the bytes a guest's memory
//! must hold for `on-events(batch: event-batch)`, laid out once per batch on the host and then
//! copied into each plugin with one `memcpy` per list.
//!
//! Why: wasmtime's generic lowering of `list<event>` writes every field of every record through
//! its own bounds-checked store that looks the guest memory up again (wasmtime 48,
//! `LowerContext::get`), and it does so once per plugin. Profiled on `file_open` batches that
//! was about half of a plugin's cost per event. The image is identical for every plugin, so only
//! the placement (one `realloc` per list) and the pointers of nested lists differ per guest.
//!
//! Owns: the byte layout of `event-batch` and everything inside it. It must match the canonical
//! ABI of `wit/plugin.wit` exactly: `LoweredBatch`'s type check is the generated
//! `wit::EventBatch`'s, so a contract change that this file does not follow fails at
//! instantiation, and the tests compare every size with wasmtime's own and every event kind
//! through a real guest against wasmtime's lowering.

use std::mem::MaybeUninit;

use wasmtime::component::__internal::{
    CanonicalAbiInfo, InstanceType, InterfaceType, LowerContext,
};
use wasmtime::component::{ComponentType, Lower};
use wasmtime::ValRaw;

use super::wit;

// Canonical ABI layout of the records in `event-batch` (sizes and field offsets in bytes). Every
// record's alignment is 4 except `process` and `event` (8, for their u64 fields).
const SPAN: usize = 8;
const ANCESTOR: usize = 20;
const PROCESS: usize = 96;
/// `event-data`: a u8 case index, then the payload at 4 (the largest payload alignment).
const EVENT_DATA_PAYLOAD: usize = 4;
const EVENT: usize = 48;
/// Where `event.data` starts.
const EVENT_DATA: usize = 12;
/// Offsets inside `process`.
const PROCESS_ARGS: usize = 40;
const PROCESS_ANCESTORS: usize = 88;
/// Offset of `exec-data.args` inside an event record.
const EVENT_EXEC_ARGS: usize = EVENT_DATA + EVENT_DATA_PAYLOAD + 8;

/// A nested list (`process.args`, `process.ancestors`, `exec-data.args`): its elements'
/// bytes in [`ListImage::nested_bytes`] and where its (pointer, length) pair goes.
struct Nested {
    /// Offset of the pair inside the parent list's bytes.
    at: u32,
    /// Element count.
    len: u32,
    align: u32,
    /// Byte range in `nested_bytes`.
    start: u32,
    end: u32,
}

/// One top-level list of the batch: its elements back to back, and the lists inside them.
struct ListImage {
    bytes: Vec<u8>,
    len: u32,
    align: u32,
    nested: Vec<Nested>,
    nested_bytes: Vec<u8>,
}

impl ListImage {
    fn new(align: u32, capacity: usize) -> Self {
        ListImage {
            bytes: spare_buffer(capacity),
            len: 0,
            align,
            nested: Vec::new(),
            nested_bytes: spare_buffer(0),
        }
    }

    /// Appends one element (written on the stack first: a fixed-size copy is far cheaper than
    /// growing the vector by a zeroed range and writing through bounds checks); returns its
    /// offset.
    fn push<const N: usize>(&mut self, element: &[u8; N]) -> usize {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(element);
        self.len += 1;
        at
    }

    /// Records the list `elems` (each `size` bytes, written by `write`) nested at `at`.
    fn nest<T>(
        &mut self,
        at: usize,
        size: usize,
        align: u32,
        elems: &[T],
        write: impl Fn(&mut Rec<'_>, &T),
    ) {
        let start = self.nested_bytes.len();
        for elem in elems {
            let off = self.nested_bytes.len();
            self.nested_bytes.resize(off + size, 0);
            write(
                &mut Rec {
                    buf: &mut self.nested_bytes[off..],
                },
                elem,
            );
        }
        self.nested.push(Nested {
            at: at as u32,
            len: elems.len() as u32,
            align,
            start: start as u32,
            end: self.nested_bytes.len() as u32,
        });
    }

    /// Copies the list into guest memory; returns its (pointer, length).
    fn lower<T>(&self, cx: &mut LowerContext<'_, T>) -> wasmtime::Result<(u32, u32)> {
        let ptr = cx.realloc(0, 0, self.align, self.bytes.len())?;
        write(cx, ptr, &self.bytes)?;
        for n in &self.nested {
            let bytes = &self.nested_bytes[n.start as usize..n.end as usize];
            let nested = cx.realloc(0, 0, n.align, bytes.len())?;
            write(cx, nested, bytes)?;
            let mut pair = [0u8; 8];
            pair[..4].copy_from_slice(&guest_u32(nested)?.to_le_bytes());
            pair[4..].copy_from_slice(&n.len.to_le_bytes());
            write(cx, ptr + n.at as usize, &pair)?;
        }
        Ok((guest_u32(ptr)?, self.len))
    }
}

fn guest_u32(ptr: usize) -> wasmtime::Result<u32> {
    u32::try_from(ptr).map_err(|_| wasmtime::Error::msg("guest pointer beyond 4 GiB"))
}

/// Copies `bytes` to guest address `ptr` (checked: a guest's `realloc` chose it).
fn write<T>(cx: &mut LowerContext<'_, T>, ptr: usize, bytes: &[u8]) -> wasmtime::Result<()> {
    cx.as_slice_mut()
        .get_mut(ptr..)
        .and_then(|m| m.get_mut(..bytes.len()))
        .ok_or_else(|| wasmtime::Error::msg("lowered list out of bounds of guest memory"))?
        .copy_from_slice(bytes);
    Ok(())
}

/// Little-endian field writer over one zeroed record.
struct Rec<'b> {
    buf: &'b mut [u8],
}

impl Rec<'_> {
    fn u8(&mut self, at: usize, v: u8) {
        self.buf[at] = v;
    }
    fn u16(&mut self, at: usize, v: u16) {
        self.buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn span(&mut self, at: usize, s: wit::Span) {
        self.u32(at, s.offset);
        self.u32(at + 4, s.len);
    }
    fn bool(&mut self, at: usize, v: bool) {
        self.u8(at, u8::from(v));
    }
}

thread_local! {
    /// Byte buffers of dropped batches, reused by the next ones built on this thread (a worker
    /// builds and drops its batches on its own thread). Without it, allocating and freeing a
    /// few 10 KiB buffers per batch made glibc consolidate and trim its heap and the kernel
    /// fault pages back in: more than half of the host's batch build time in perf.
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// At most this many spare buffers per thread, each at most this large (a rare huge batch's
/// buffers are freed, not kept): at most 4 MiB held per worker thread, typically ~100 KiB.
const SPARE_BUFFERS: usize = 16;
const SPARE_MAX_BYTES: usize = 256 << 10;

/// An empty buffer with room for `capacity` bytes, reusing a spare one when there is one.
pub(super) fn spare_buffer(capacity: usize) -> Vec<u8> {
    match SPARE.with(|s| s.borrow_mut().pop()) {
        Some(mut buf) => {
            buf.reserve(capacity);
            buf
        }
        None => Vec::with_capacity(capacity),
    }
}

fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > SPARE_MAX_BYTES {
        return;
    }
    buf.clear();
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    });
}

impl Drop for LoweredBatch {
    fn drop(&mut self) {
        for buf in [
            std::mem::take(&mut self.strings),
            std::mem::take(&mut self.processes.bytes),
            std::mem::take(&mut self.processes.nested_bytes),
            std::mem::take(&mut self.events.bytes),
            std::mem::take(&mut self.events.nested_bytes),
        ] {
            give_back(buf);
        }
    }
}

/// A detector batch in canonical-ABI form, ready to be copied into any detector's memory. Built
/// by [`super::wit_batch`]; passed to `Instance::on_events`.
pub struct LoweredBatch {
    strings: Vec<u8>,
    processes: ListImage,
    events: ListImage,
}

impl LoweredBatch {
    pub(super) fn with_capacity(events: usize) -> Self {
        LoweredBatch {
            strings: Vec::new(),
            processes: ListImage::new(8, PROCESS * 4),
            events: ListImage::new(8, EVENT * events),
        }
    }

    pub(super) fn set_strings(&mut self, strings: Vec<u8>) {
        self.strings = strings;
    }

    pub(super) fn push_process(&mut self, p: &wit::Process) {
        let mut buf = [0u8; PROCESS];
        let mut r = Rec { buf: &mut buf };
        r.u32(0, p.pid);
        r.u32(4, p.tid);
        r.u32(8, p.ppid);
        r.u32(12, p.uid);
        r.u32(16, p.gid);
        r.u32(20, p.euid);
        r.span(24, p.comm);
        r.span(32, p.exe);
        // args (40): nested below.
        r.span(48, p.cwd);
        r.u64(56, p.cgroup_id);
        if let Some(c) = p.container_id {
            r.u8(64, 1);
            r.span(68, c);
        }
        r.u64(80, p.start_ns);
        // ancestors (88): nested below.
        let at = self.processes.push(&buf);
        self.processes
            .nest(at + PROCESS_ARGS, SPAN, 4, &p.args, |r, &s| r.span(0, s));
        self.processes
            .nest(at + PROCESS_ANCESTORS, ANCESTOR, 4, &p.ancestors, |r, a| {
                r.u32(0, a.pid);
                r.span(4, a.comm);
                r.span(12, a.exe);
            });
    }

    pub(super) fn push_event(&mut self, e: &wit::Event) {
        use wit::EventData as W;
        let mut buf = [0u8; EVENT];
        let mut r = Rec { buf: &mut buf };
        r.u64(0, e.ts_ns);
        r.u32(8, e.process);
        // The payload's own offsets are relative to `p`.
        let p = EVENT_DATA + EVENT_DATA_PAYLOAD;
        let case: u8 = match &e.data {
            W::Exec(x) => {
                r.span(p, x.filename);
                // args (p + 8): nested below.
                r.bool(p + 16, x.args_truncated);
                0
            }
            W::Exit(code) => {
                r.u32(p, *code as u32);
                1
            }
            W::Fork(pid) => {
                r.u32(p, *pid);
                2
            }
            W::FileOpen(f) => {
                r.span(p, f.path);
                r.u32(p + 8, f.open_flags);
                r.u32(p + 12, f.mode);
                if let Some(v) = f.result {
                    r.u8(p + 16, 1);
                    r.u32(p + 20, v as u32);
                }
                3
            }
            W::FileRename(x) => {
                r.span(p, x.from);
                r.span(p + 8, x.to);
                4
            }
            W::FileUnlink(path) => {
                r.span(p, *path);
                5
            }
            W::FileChmod(x) => {
                r.span(p, x.path);
                r.u32(p + 8, x.mode);
                6
            }
            W::FileChown(x) => {
                r.span(p, x.path);
                r.u32(p + 8, x.uid);
                r.u32(p + 12, x.gid);
                7
            }
            W::FileLink(x) => {
                r.span(p, x.target);
                r.span(p + 8, x.link);
                r.bool(p + 16, x.symbolic);
                8
            }
            W::NetConnect(c) => {
                connection(&mut r, p, c);
                9
            }
            W::NetAccept(c) => {
                connection(&mut r, p, c);
                10
            }
            W::NetListen(l) => {
                r.u16(p, l.family);
                r.u8(p + 2, l.protocol);
                r.span(p + 4, l.addr);
                r.u16(p + 12, l.port);
                11
            }
            W::Setuid(uid) => {
                r.u32(p, *uid);
                12
            }
            W::Setgid(gid) => {
                r.u32(p, *gid);
                13
            }
            W::Ptrace(x) => {
                r.u32(p, x.request);
                r.u32(p + 4, x.target_pid);
                14
            }
            W::ModuleLoad(name) => {
                r.span(p, *name);
                15
            }
            W::Mount(m) => {
                r.span(p, m.source);
                r.span(p + 8, m.target);
                r.span(p + 16, m.fstype);
                16
            }
            W::MemfdCreate(m) => {
                r.span(p, m.name);
                r.u32(p + 8, m.memfd_flags);
                17
            }
            W::Bpf(cmd) => {
                r.u32(p, *cmd);
                18
            }
            W::Socket(s) => {
                r.u16(p, s.family);
                r.u32(p + 4, s.socket_type);
                r.u32(p + 8, s.protocol);
                19
            }
            W::FdDup(d) => {
                r.u32(p, d.oldfd);
                r.u32(p + 4, d.newfd);
                r.u8(p + 8, fd_target_kind(d.target_kind));
                20
            }
        };
        r.u8(EVENT_DATA, case);
        let at = self.events.push(&buf);
        if let W::Exec(x) = &e.data {
            self.events
                .nest(at + EVENT_EXEC_ARGS, SPAN, 4, &x.args, |r, &s| r.span(0, s));
        }
    }

    /// Copies the batch into the guest; returns the six flat values of `event-batch`
    /// (strings, processes, events: pointer and length each).
    fn lower<T>(&self, cx: &mut LowerContext<'_, T>) -> wasmtime::Result<[u32; 6]> {
        let strings = cx.realloc(0, 0, 1, self.strings.len())?;
        write(cx, strings, &self.strings)?;
        let (pp, pl) = self.processes.lower(cx)?;
        let (ep, el) = self.events.lower(cx)?;
        Ok([
            guest_u32(strings)?,
            self.strings.len() as u32,
            pp,
            pl,
            ep,
            el,
        ])
    }
}

fn connection(r: &mut Rec<'_>, p: usize, c: &wit::ConnectionData) {
    r.u16(p, c.family);
    r.u8(p + 2, c.protocol);
    r.span(p + 4, c.saddr);
    r.u16(p + 12, c.sport);
    r.span(p + 16, c.daddr);
    r.u16(p + 24, c.dport);
}

fn fd_target_kind(k: wit::FdTargetKind) -> u8 {
    match k {
        wit::FdTargetKind::Unknown => 0,
        wit::FdTargetKind::File => 1,
        wit::FdTargetKind::Socket => 2,
        wit::FdTargetKind::Pipe => 3,
        wit::FdTargetKind::Tty => 4,
    }
}

// SAFETY: `LoweredBatch` claims the ABI and the type of the generated `wit::EventBatch` and
// delegates the type check to it, so wasmtime only ever uses it where an `event-batch` is
// expected. Its flat form is six `ValRaw`s, the flattening of a record of three lists, which is
// what `Lower` requires of `Self::Lower`; `linear_lower_to_flat` initialises all six and
// `linear_lower_to_memory` writes the record's 24 bytes. Guest memory is only written through
// `LowerContext`'s bounds-checked slice, at addresses the guest's `realloc` returned (checked
// by wasmtime for alignment and bounds).
#[expect(
    unsafe_code,
    reason = "hand-written canonical-ABI lowering of one known WIT type"
)]
unsafe impl ComponentType for LoweredBatch {
    type Lower = [ValRaw; 6];

    const ABI: CanonicalAbiInfo = <wit::EventBatch as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <wit::EventBatch as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: see the `ComponentType` impl above.
#[expect(
    unsafe_code,
    reason = "hand-written canonical-ABI lowering of one known WIT type"
)]
unsafe impl Lower for LoweredBatch {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        dst: &mut MaybeUninit<[ValRaw; 6]>,
    ) -> wasmtime::Result<()> {
        // Pointers and lengths go out as 64-bit values, as wasmtime's own lowering writes them.
        let flat = self.lower(cx)?.map(|v| ValRaw::i64(i64::from(v)));
        dst.write(flat);
        Ok(())
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        let flat = self.lower(cx)?;
        let mut record = [0u8; 24];
        for (chunk, v) in record.chunks_exact_mut(4).zip(flat) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        write(cx, offset, &record)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::event::{
        AddressFamily, Ancestor, ConnectionData, Event, EventData, ExecData, FdTargetKind,
        FileOpenData, ListenData, Process, Protocol,
    };
    use crate::plugin::convert::{wit_batch, wit_event_batch};
    use crate::plugin::instance::Instance;
    use crate::plugin::manifest::ConfigValue;
    use wasmtime::component::__internal::ComponentVariant;

    fn process(pid: u32, container: Option<&str>, ancestors: usize) -> Arc<Process> {
        Arc::new(Process {
            pid,
            tid: pid + 1,
            ppid: pid + 2,
            uid: 1001,
            gid: 1002,
            euid: 1003,
            comm: format!("cömm{pid}"),
            exe: format!("/usr/bin/exe{pid}"),
            args: (0..pid % 4).map(|i| format!("arg{i}☃")).collect(),
            cwd: if pid.is_multiple_of(2) {
                String::new()
            } else {
                "/srv/ẍ".into()
            },
            cgroup_id: 0x1122_3344_5566_7788 + u64::from(pid),
            container_id: container.map(str::to_string),
            start_ns: 0x0102_0304_0506_0708 * u64::from(pid),
            ancestors: (0..ancestors as u32)
                .map(|i| Ancestor {
                    pid: 100 + i,
                    comm: format!("anc{i}"),
                    exe: if i == 0 {
                        String::new()
                    } else {
                        format!("/sbin/a{i}")
                    },
                })
                .collect(),
        })
    }

    fn every_kind() -> Vec<EventData> {
        let conn = ConnectionData {
            family: AddressFamily::Inet6,
            protocol: Protocol::Udp,
            saddr: "::1".into(),
            sport: 65535,
            daddr: "2001:db8::1".into(),
            dport: 53,
        };
        vec![
            EventData::Exec(ExecData {
                filename: "/tmp/ẍ".into(),
                args: vec!["ẍ".into(), String::new(), "-c".into()],
                args_truncated: true,
            }),
            EventData::Exec(ExecData::default()),
            EventData::Exit { code: -9 },
            EventData::Fork {
                child_pid: u32::MAX,
            },
            EventData::FileOpen(FileOpenData {
                path: "/etc/shadow".into(),
                flags: 0o2101,
                mode: 0o600,
                result: Some(-13),
            }),
            EventData::FileOpen(FileOpenData {
                path: String::new(),
                flags: 0,
                mode: 0,
                result: None,
            }),
            EventData::FileRename {
                from: "/a".into(),
                to: "/b/ünï".into(),
            },
            EventData::FileUnlink {
                path: "/var/log/wtmp".into(),
            },
            EventData::FileChmod {
                path: "/c".into(),
                mode: 0o4755,
            },
            EventData::FileChown {
                path: "/d".into(),
                uid: 0,
                gid: u32::MAX,
            },
            EventData::FileLink {
                target: "/e".into(),
                link: "/f".into(),
                symbolic: true,
            },
            EventData::NetConnect(conn.clone()),
            EventData::NetAccept(ConnectionData {
                family: AddressFamily::Other(17),
                protocol: Protocol::Unknown,
                ..conn
            }),
            EventData::NetListen(ListenData {
                family: AddressFamily::Inet,
                protocol: Protocol::Tcp,
                addr: "0.0.0.0".into(),
                port: 22,
            }),
            EventData::Setuid { uid: 0 },
            EventData::Setgid { gid: 7 },
            EventData::Ptrace {
                request: 0x4206,
                target_pid: 1,
            },
            EventData::ModuleLoad {
                name: "nf_tables".into(),
            },
            EventData::Mount {
                source: "/dev/sda1".into(),
                target: "/mnt".into(),
                fstype: "ext4".into(),
            },
            EventData::MemfdCreate {
                name: "payload".into(),
                flags: 3,
            },
            EventData::Bpf { cmd: 5 },
            EventData::Socket {
                family: 17,
                socket_type: 3,
                protocol: 768,
            },
            EventData::FdDup {
                oldfd: 3,
                newfd: 0,
                target_kind: FdTargetKind::Socket,
            },
            EventData::FdDup {
                oldfd: 4,
                newfd: 2,
                target_kind: FdTargetKind::Tty,
            },
        ]
    }

    /// Every event kind (and every optional/empty shape) through a real guest: the prebuilt
    /// image must decode in the guest exactly as wasmtime's own lowering of the generated WIT
    /// values does. `bench-trivial` with `echo = true` returns each event as the SDK saw it.
    #[test]
    fn a_real_guest_decodes_the_image_exactly_as_wasmtimes_own_lowering() -> anyhow::Result<()> {
        let built = xtask::build_plugins_once()?;
        let wasm = &built
            .test_plugin("bench-trivial")
            .ok_or_else(|| anyhow::anyhow!("bench-trivial not built"))?
            .wasm;
        let dir = tempfile::tempdir()?;
        let text = format!(
            "version = 1\n[plugins]\ndir = {:?}\ncache_dir = {:?}\nwatch = false\n[engine]\nworkers = 1\n[actions]\naudit_log = {:?}\n",
            dir.path().display().to_string(),
            xtask::workspace_root().join("target/test-cache").display().to_string(),
            dir.path().join("audit.jsonl").display().to_string()
        );
        let daemon = crate::daemon::Daemon::build(
            crate::config::Config::from_toml_str(&text, "t.toml")?,
            false,
        )?;
        daemon
            .registry
            .load(&crate::plugin::registry::LoadRequest::from_file(wasm)?)?;
        let plugin = Arc::clone(&daemon.registry.snapshot().detectors[0]);
        let engine = daemon.registry.engine();
        let deadline = Duration::from_secs(60);
        let mut instance = Instance::instantiate(engine, &plugin.pre, &plugin.ctx, &plugin.limits)?;
        instance.init(&vec![("echo".into(), ConfigValue::Boolean(true))], deadline)?;

        let procs = [
            process(7, Some("c0ffee"), 2),
            process(8, None, 0),
            process(9, Some(""), 1),
        ];
        let mut batches: Vec<Vec<Arc<Event>>> = vec![Vec::new()];
        let kinds = every_kind();
        batches.push(
            kinds
                .iter()
                .enumerate()
                .map(|(i, data)| {
                    Arc::new(Event {
                        ts_ns: 1_000 + i as u64,
                        process: Arc::clone(&procs[i % procs.len()]),
                        data: data.clone(),
                    })
                })
                .collect(),
        );
        // A large batch in runs of one process, as the kernel source delivers them.
        batches.push(
            (0..600)
                .map(|i| {
                    Arc::new(Event {
                        ts_ns: u64::MAX - i as u64,
                        process: Arc::clone(&procs[(i / 50) % procs.len()]),
                        data: kinds[i % kinds.len()].clone(),
                    })
                })
                .collect(),
        );
        for events in &batches {
            let echo = |alerts: Vec<wit::Alert>| -> Vec<(u32, String)> {
                alerts
                    .into_iter()
                    .map(|a| (a.event_index, a.message))
                    .collect()
            };
            let image = echo(instance.on_events(&wit_batch(events.iter()), deadline, None)?);
            let reference =
                echo(instance.on_events_typed(&wit_event_batch(events.iter()), deadline, None)?);
            assert_eq!(image.len(), events.len());
            for (got, want) in image.iter().zip(&reference) {
                assert_eq!(got, want);
            }
            assert_eq!(image, reference);
        }
        // The echo is a real decode, not a constant: spot-check fields of the second batch.
        let seen = instance.on_events(&wit_batch(batches[1].iter()), deadline, None)?;
        let text: String = seen.iter().map(|a| a.message.as_str()).collect();
        for needle in [
            "/etc/shadow",
            "c0ffee",
            "2001:db8::1",
            "anc1",
            "arg2☃",
            "/srv/ẍ",
            "1002",
            "-9",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        Ok(())
    }

    #[test]
    fn spare_buffers_come_back_empty_and_huge_ones_are_not_kept() {
        // Test threads are fresh: the pool starts empty.
        give_back(vec![7u8; 100]);
        give_back(Vec::with_capacity(SPARE_MAX_BYTES + 1));
        let reused = spare_buffer(10);
        assert!(reused.is_empty() && reused.capacity() >= 100);
        // The huge one was dropped, so the pool is empty again.
        assert_eq!(SPARE.with(|s| s.borrow().len()), 0);
        for _ in 0..SPARE_BUFFERS + 5 {
            give_back(vec![0u8; 8]);
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), SPARE_BUFFERS);
    }

    #[test]
    fn layout_constants_match_wasmtimes_canonical_abi() {
        assert_eq!(<wit::Span as ComponentType>::SIZE32, SPAN);
        assert_eq!(<wit::Ancestor as ComponentType>::SIZE32, ANCESTOR);
        assert_eq!(<wit::Process as ComponentType>::SIZE32, PROCESS);
        assert_eq!(<wit::Process as ComponentType>::ALIGN32, 8);
        assert_eq!(<wit::Event as ComponentType>::SIZE32, EVENT);
        assert_eq!(<wit::Event as ComponentType>::ALIGN32, 8);
        assert_eq!(
            <wit::EventData as ComponentVariant>::PAYLOAD_OFFSET32,
            EVENT_DATA_PAYLOAD
        );
        assert_eq!(
            <wit::EventData as ComponentType>::SIZE32 + EVENT_DATA,
            EVENT - 4,
            "event-data follows ts-ns and process, then 4 bytes of tail padding"
        );
        // Payload sizes: each must fit the variant's payload area.
        let payload = <wit::EventData as ComponentType>::SIZE32 - EVENT_DATA_PAYLOAD;
        for (name, size) in [
            ("exec", <wit::ExecData as ComponentType>::SIZE32),
            ("file-open", <wit::FileOpenData as ComponentType>::SIZE32),
            ("connection", <wit::ConnectionData as ComponentType>::SIZE32),
            ("listen", <wit::ListenData as ComponentType>::SIZE32),
            ("mount", <wit::MountData as ComponentType>::SIZE32),
            ("fd-dup", <wit::FdDupData as ComponentType>::SIZE32),
            ("socket", <wit::SocketData as ComponentType>::SIZE32),
        ] {
            assert!(size <= payload, "{name}: {size} > {payload}");
        }
        assert_eq!(<wit::ExecData as ComponentType>::SIZE32, 20);
        assert_eq!(<wit::FileOpenData as ComponentType>::SIZE32, 24);
        assert_eq!(<wit::ConnectionData as ComponentType>::SIZE32, 28);
        assert_eq!(<wit::EventBatch as ComponentType>::SIZE32, 24);
        assert_eq!(<wit::EventBatch as ComponentType>::ALIGN32, 4);
    }
}
