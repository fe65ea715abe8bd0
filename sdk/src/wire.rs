//! The one place the SDK converts between the wire types of [`crate::bindings`] (strings as
//! `span`s into a batch's `strings` buffer) and its own types in [`crate::model`]: decoding what
//! the host sends, and encoding the SDK's types back into wire form for native tests, so a
//! plugin's unit tests run the same decoder as the deployed plugin.
//!
//! The host promises every span is in bounds and valid UTF-8. The decoder still checks, without
//! `unsafe` and at almost no cost: the buffer is validated once per batch, after which a span is
//! two bounds and char-boundary checks. A bad span reads as an empty string and is counted, so a
//! broken host can degrade a batch but never crash a plugin.

use std::cell::Cell;

use crate::bindings::palisade::plugin::types as w;
use crate::model::{
    Ancestor, ConnectionData, Event, EventBatch, EventData, ExecData, FileChmodData, FileChownData,
    FileLinkData, FileOpenData, FileRenameData, ListenData, MemfdData, MountData, Process,
    RoutedAlert,
};

/// Read access to one batch's `strings` buffer.
pub(crate) struct Strings<'a> {
    /// The buffer as text when it is valid UTF-8 (always, from a correct host); else the bytes.
    text: Result<&'a str, &'a [u8]>,
    /// Spans that were out of bounds or not UTF-8.
    bad: Cell<u32>,
}

impl<'a> Strings<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Strings {
            text: std::str::from_utf8(bytes).map_err(|_| bytes),
            bad: Cell::new(0),
        }
    }

    /// The text of `span`; empty (and counted) when the span is out of bounds or not UTF-8.
    pub(crate) fn get(&self, span: w::Span) -> &'a str {
        let start = span.offset as usize;
        let found = start
            .checked_add(span.len as usize)
            .and_then(|end| match self.text {
                Ok(text) => text.get(start..end),
                Err(bytes) => bytes
                    .get(start..end)
                    .and_then(|b| std::str::from_utf8(b).ok()),
            });
        found.unwrap_or_else(|| {
            self.bad.set(self.bad.get().saturating_add(1));
            ""
        })
    }

    /// Number of bad spans read so far.
    pub(crate) fn bad_spans(&self) -> u32 {
        self.bad.get()
    }

    fn string(&self, span: w::Span) -> String {
        self.get(span).to_owned()
    }

    fn list(&self, spans: &[w::Span]) -> Vec<String> {
        spans.iter().map(|&s| self.string(s)).collect()
    }

    pub(crate) fn process(&self, p: &w::Process) -> Process {
        Process {
            pid: p.pid,
            tid: p.tid,
            ppid: p.ppid,
            uid: p.uid,
            gid: p.gid,
            euid: p.euid,
            comm: self.string(p.comm),
            exe: self.string(p.exe),
            args: self.list(&p.args),
            cwd: self.string(p.cwd),
            cgroup_id: p.cgroup_id,
            container_id: p.container_id.map(|c| self.string(c)),
            start_ns: p.start_ns,
            ancestors: p
                .ancestors
                .iter()
                .map(|a| Ancestor {
                    pid: a.pid,
                    comm: self.string(a.comm),
                    exe: self.string(a.exe),
                })
                .collect(),
        }
    }

    fn connection(&self, c: &w::ConnectionData) -> ConnectionData {
        ConnectionData {
            family: c.family,
            protocol: c.protocol,
            saddr: self.string(c.saddr),
            sport: c.sport,
            daddr: self.string(c.daddr),
            dport: c.dport,
        }
    }

    /// Copies `span` into `dst`, reusing its allocation.
    fn fill(&self, dst: &mut String, span: w::Span) {
        dst.clear();
        dst.push_str(self.get(span));
    }

    /// Copies `spans` into `dst`, reusing its strings (and their allocations) in order.
    fn fill_list(&self, dst: &mut Vec<String>, spans: &[w::Span]) {
        dst.truncate(spans.len());
        let have = dst.len();
        for (d, &s) in dst.iter_mut().zip(spans) {
            self.fill(d, s);
        }
        dst.extend(spans[have..].iter().map(|&s| self.string(s)));
    }

    /// Decodes `data` into `slot`, reusing the strings `slot` already owns when it holds the
    /// same kind of payload: a batch is mostly runs of one kind (opens, execs), so after the
    /// first event of a run the guest allocates nothing per event (an exec only when it has
    /// more arguments than any before it in the run). A change of kind decodes afresh.
    pub(crate) fn event_data_into(&self, data: &w::EventData, slot: &mut EventData) {
        use w::EventData as W;
        match (data, &mut *slot) {
            (W::Exec(e), EventData::Exec(d)) => {
                self.fill(&mut d.filename, e.filename);
                self.fill_list(&mut d.args, &e.args);
                d.args_truncated = e.args_truncated;
            }
            (W::FileChown(c), EventData::FileChown(d)) => {
                self.fill(&mut d.path, c.path);
                d.uid = c.uid;
                d.gid = c.gid;
            }
            (W::FileLink(l), EventData::FileLink(d)) => {
                self.fill(&mut d.target, l.target);
                self.fill(&mut d.link, l.link);
                d.symbolic = l.symbolic;
            }
            (W::NetListen(l), EventData::NetListen(d)) => {
                d.family = l.family;
                d.protocol = l.protocol;
                self.fill(&mut d.addr, l.addr);
                d.port = l.port;
            }
            (W::ModuleLoad(name), EventData::ModuleLoad(d)) => self.fill(d, *name),
            (W::Mount(m), EventData::Mount(d)) => {
                self.fill(&mut d.source, m.source);
                self.fill(&mut d.target, m.target);
                self.fill(&mut d.fstype, m.fstype);
            }
            (W::MemfdCreate(m), EventData::MemfdCreate(d)) => {
                self.fill(&mut d.name, m.name);
                d.memfd_flags = m.memfd_flags;
            }
            (W::FileOpen(f), EventData::FileOpen(d)) => {
                self.fill(&mut d.path, f.path);
                d.open_flags = f.open_flags;
                d.mode = f.mode;
                d.result = f.result;
            }
            (W::FileUnlink(path), EventData::FileUnlink(d)) => self.fill(d, *path),
            (W::FileChmod(c), EventData::FileChmod(d)) => {
                self.fill(&mut d.path, c.path);
                d.mode = c.mode;
            }
            (W::FileRename(r), EventData::FileRename(d)) => {
                self.fill(&mut d.from, r.from);
                self.fill(&mut d.to, r.to);
            }
            (W::NetConnect(c), EventData::NetConnect(d))
            | (W::NetAccept(c), EventData::NetAccept(d)) => {
                d.family = c.family;
                d.protocol = c.protocol;
                self.fill(&mut d.saddr, c.saddr);
                d.sport = c.sport;
                self.fill(&mut d.daddr, c.daddr);
                d.dport = c.dport;
            }
            _ => *slot = self.event_data(data),
        }
    }

    pub(crate) fn event_data(&self, data: &w::EventData) -> EventData {
        use w::EventData as W;
        match data {
            W::Exec(e) => EventData::Exec(ExecData {
                filename: self.string(e.filename),
                args: self.list(&e.args),
                args_truncated: e.args_truncated,
            }),
            W::Exit(code) => EventData::Exit(*code),
            W::Fork(pid) => EventData::Fork(*pid),
            W::FileOpen(f) => EventData::FileOpen(FileOpenData {
                path: self.string(f.path),
                open_flags: f.open_flags,
                mode: f.mode,
                result: f.result,
            }),
            W::FileRename(r) => EventData::FileRename(FileRenameData {
                from: self.string(r.from),
                to: self.string(r.to),
            }),
            W::FileUnlink(path) => EventData::FileUnlink(self.string(*path)),
            W::FileChmod(c) => EventData::FileChmod(FileChmodData {
                path: self.string(c.path),
                mode: c.mode,
            }),
            W::FileChown(c) => EventData::FileChown(FileChownData {
                path: self.string(c.path),
                uid: c.uid,
                gid: c.gid,
            }),
            W::FileLink(l) => EventData::FileLink(FileLinkData {
                target: self.string(l.target),
                link: self.string(l.link),
                symbolic: l.symbolic,
            }),
            W::NetConnect(c) => EventData::NetConnect(self.connection(c)),
            W::NetAccept(c) => EventData::NetAccept(self.connection(c)),
            W::NetListen(l) => EventData::NetListen(ListenData {
                family: l.family,
                protocol: l.protocol,
                addr: self.string(l.addr),
                port: l.port,
            }),
            W::Setuid(uid) => EventData::Setuid(*uid),
            W::Setgid(gid) => EventData::Setgid(*gid),
            W::Ptrace(p) => EventData::Ptrace(*p),
            W::ModuleLoad(name) => EventData::ModuleLoad(self.string(*name)),
            W::Mount(m) => EventData::Mount(MountData {
                source: self.string(m.source),
                target: self.string(m.target),
                fstype: self.string(m.fstype),
            }),
            W::MemfdCreate(m) => EventData::MemfdCreate(MemfdData {
                name: self.string(m.name),
                memfd_flags: m.memfd_flags,
            }),
            W::Bpf(cmd) => EventData::Bpf(*cmd),
            W::Socket(s) => EventData::Socket(*s),
            W::FdDup(d) => EventData::FdDup(*d),
        }
    }
}

/// Logs one warning when a batch had bad spans (a host bug, never expected).
pub(crate) fn warn_bad_spans(strings: &Strings<'_>) {
    let bad = strings.bad_spans();
    if bad > 0 {
        crate::warn!("{bad} string span(s) out of bounds or not UTF-8 in a batch; read as empty");
    }
}

/// Decodes one routed alert (its spans point into its own `strings`).
pub(crate) fn decode_routed_alert(alert: w::RoutedAlert) -> RoutedAlert {
    let strings = Strings::new(&alert.strings);
    let process = alert.process.as_ref().map(|p| strings.process(p));
    let event = alert.event.as_ref().map(|e| strings.event_data(e));
    warn_bad_spans(&strings);
    RoutedAlert {
        id: alert.id,
        plugin: alert.plugin,
        plugin_version: alert.plugin_version,
        ts_ns: alert.ts_ns,
        alert: alert.alert,
        process,
        event,
    }
}

/// A `strings` buffer under construction (the encoder's side of [`Strings`]).
#[derive(Default)]
struct Arena {
    bytes: Vec<u8>,
}

impl Arena {
    fn span(&mut self, s: &str) -> w::Span {
        let offset = self.bytes.len();
        self.bytes.extend_from_slice(s.as_bytes());
        // Test batches stay far below 4 GiB; saturating keeps the type honest regardless.
        w::Span {
            offset: u32::try_from(offset).unwrap_or(u32::MAX),
            len: u32::try_from(s.len()).unwrap_or(u32::MAX),
        }
    }

    fn list(&mut self, list: &[String]) -> Vec<w::Span> {
        list.iter().map(|s| self.span(s)).collect()
    }

    fn process(&mut self, p: &Process) -> w::Process {
        w::Process {
            pid: p.pid,
            tid: p.tid,
            ppid: p.ppid,
            uid: p.uid,
            gid: p.gid,
            euid: p.euid,
            comm: self.span(&p.comm),
            exe: self.span(&p.exe),
            args: self.list(&p.args),
            cwd: self.span(&p.cwd),
            cgroup_id: p.cgroup_id,
            container_id: p.container_id.as_deref().map(|c| self.span(c)),
            start_ns: p.start_ns,
            ancestors: p
                .ancestors
                .iter()
                .map(|a| w::Ancestor {
                    pid: a.pid,
                    comm: self.span(&a.comm),
                    exe: self.span(&a.exe),
                })
                .collect(),
        }
    }

    fn connection(&mut self, c: &ConnectionData) -> w::ConnectionData {
        w::ConnectionData {
            family: c.family,
            protocol: c.protocol,
            saddr: self.span(&c.saddr),
            sport: c.sport,
            daddr: self.span(&c.daddr),
            dport: c.dport,
        }
    }

    fn event_data(&mut self, data: &EventData) -> w::EventData {
        use w::EventData as W;
        match data {
            EventData::Exec(e) => W::Exec(w::ExecData {
                filename: self.span(&e.filename),
                args: self.list(&e.args),
                args_truncated: e.args_truncated,
            }),
            EventData::Exit(code) => W::Exit(*code),
            EventData::Fork(pid) => W::Fork(*pid),
            EventData::FileOpen(f) => W::FileOpen(w::FileOpenData {
                path: self.span(&f.path),
                open_flags: f.open_flags,
                mode: f.mode,
                result: f.result,
            }),
            EventData::FileRename(r) => W::FileRename(w::FileRenameData {
                from: self.span(&r.from),
                to: self.span(&r.to),
            }),
            EventData::FileUnlink(path) => W::FileUnlink(self.span(path)),
            EventData::FileChmod(c) => W::FileChmod(w::FileChmodData {
                path: self.span(&c.path),
                mode: c.mode,
            }),
            EventData::FileChown(c) => W::FileChown(w::FileChownData {
                path: self.span(&c.path),
                uid: c.uid,
                gid: c.gid,
            }),
            EventData::FileLink(l) => W::FileLink(w::FileLinkData {
                target: self.span(&l.target),
                link: self.span(&l.link),
                symbolic: l.symbolic,
            }),
            EventData::NetConnect(c) => W::NetConnect(self.connection(c)),
            EventData::NetAccept(c) => W::NetAccept(self.connection(c)),
            EventData::NetListen(l) => W::NetListen(w::ListenData {
                family: l.family,
                protocol: l.protocol,
                addr: self.span(&l.addr),
                port: l.port,
            }),
            EventData::Setuid(uid) => W::Setuid(*uid),
            EventData::Setgid(gid) => W::Setgid(*gid),
            EventData::Ptrace(p) => W::Ptrace(*p),
            EventData::ModuleLoad(name) => W::ModuleLoad(self.span(name)),
            EventData::Mount(m) => W::Mount(w::MountData {
                source: self.span(&m.source),
                target: self.span(&m.target),
                fstype: self.span(&m.fstype),
            }),
            EventData::MemfdCreate(m) => W::MemfdCreate(w::MemfdData {
                name: self.span(&m.name),
                memfd_flags: m.memfd_flags,
            }),
            EventData::Bpf(cmd) => W::Bpf(*cmd),
            EventData::Socket(s) => W::Socket(*s),
            EventData::FdDup(d) => W::FdDup(*d),
        }
    }
}

/// The wire form of `batch`, as the host would send it (process indices are kept as they are,
/// so a test can send an out-of-range one).
pub fn encode_batch(batch: &EventBatch) -> w::EventBatch {
    let mut arena = Arena::default();
    let processes = batch.processes.iter().map(|p| arena.process(p)).collect();
    let events = batch
        .events
        .iter()
        .map(|e: &Event| w::Event {
            ts_ns: e.ts_ns,
            process: e.process,
            data: arena.event_data(&e.data),
        })
        .collect();
    w::EventBatch {
        strings: arena.bytes,
        processes,
        events,
    }
}

/// The wire form of `alert`, as the host would send it.
pub fn encode_routed_alert(alert: &RoutedAlert) -> w::RoutedAlert {
    let mut arena = Arena::default();
    let process = alert.process.as_ref().map(|p| arena.process(p));
    let event = alert.event.as_ref().map(|e| arena.event_data(e));
    w::RoutedAlert {
        strings: arena.bytes,
        id: alert.id.clone(),
        plugin: alert.plugin.clone(),
        plugin_version: alert.plugin_version.clone(),
        ts_ns: alert.ts_ns,
        alert: alert.alert.clone(),
        process,
        event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::palisade::plugin::types::{
        FdDupData, FdTargetKind, Priority, PtraceData, SocketData,
    };

    fn every_kind() -> Vec<EventData> {
        vec![
            EventData::Exec(ExecData {
                filename: "/usr/bin/ünïcode".into(),
                args: vec!["a".into(), String::new(), "☃".into()],
                args_truncated: true,
            }),
            EventData::Exit(-1),
            EventData::Fork(9),
            EventData::FileOpen(FileOpenData {
                path: "/etc/shadow".into(),
                open_flags: 0o1,
                mode: 0o600,
                result: Some(-13),
            }),
            EventData::FileRename(FileRenameData {
                from: "/a".into(),
                to: "/b".into(),
            }),
            EventData::FileUnlink("/c".into()),
            EventData::FileChmod(FileChmodData {
                path: "/d".into(),
                mode: 0o755,
            }),
            EventData::FileChown(FileChownData {
                path: "/e".into(),
                uid: 0,
                gid: u32::MAX,
            }),
            EventData::FileLink(FileLinkData {
                target: "/f".into(),
                link: "/g".into(),
                symbolic: true,
            }),
            EventData::NetConnect(ConnectionData {
                family: 2,
                protocol: 6,
                saddr: "10.0.0.1".into(),
                sport: 5555,
                daddr: "1.2.3.4".into(),
                dport: 443,
            }),
            EventData::NetAccept(ConnectionData::default()),
            EventData::NetListen(ListenData {
                family: 10,
                protocol: 6,
                addr: "::".into(),
                port: 22,
            }),
            EventData::Setuid(0),
            EventData::Setgid(0),
            EventData::Ptrace(PtraceData {
                request: 16,
                target_pid: 1,
            }),
            EventData::ModuleLoad("nf_tables".into()),
            EventData::Mount(MountData {
                source: "/dev/sda1".into(),
                target: "/mnt".into(),
                fstype: "ext4".into(),
            }),
            EventData::MemfdCreate(MemfdData {
                name: "payload".into(),
                memfd_flags: 1,
            }),
            EventData::Bpf(5),
            EventData::Socket(SocketData {
                family: 17,
                socket_type: 3,
                protocol: 0,
            }),
            EventData::FdDup(FdDupData {
                oldfd: 3,
                newfd: 0,
                target_kind: FdTargetKind::Socket,
            }),
        ]
    }

    fn process(pid: u32) -> Process {
        Process::new(pid, "bäsh", "/bin/bäsh")
            .with_args(["bäsh", "-c", "id"])
            .with_ancestor(1, "systemd", "/lib/systemd/systemd")
            .with_container("c0ffee")
    }

    #[test]
    fn every_kind_round_trips_through_the_wire() {
        let mut batch = EventBatch::new();
        for (i, data) in every_kind().into_iter().enumerate() {
            batch.push(&process(1 + (i % 2) as u32), i as u64, data);
        }
        let wire = encode_batch(&batch);
        assert_eq!(wire.processes.len(), 2);
        let strings = Strings::new(&wire.strings);
        let processes: Vec<Process> = wire.processes.iter().map(|p| strings.process(p)).collect();
        assert_eq!(processes, batch.processes);
        let events: Vec<Event> = wire
            .events
            .iter()
            .map(|e| Event {
                ts_ns: e.ts_ns,
                process: e.process,
                data: strings.event_data(&e.data),
            })
            .collect();
        assert_eq!(events, batch.events);
        assert_eq!(strings.bad_spans(), 0);
    }

    #[test]
    fn decoding_into_a_reused_slot_matches_a_fresh_decode() {
        // Runs of one kind (where strings are reused), with longer and shorter strings than the
        // previous event's, and every switch between kinds.
        let mut datas = every_kind();
        datas.extend(every_kind().into_iter().rev());
        for path in ["/a/much/longer/path/than/before", "/x", ""] {
            datas.push(EventData::FileOpen(FileOpenData {
                path: path.into(),
                open_flags: 1,
                mode: 0o600,
                result: Some(-13),
            }));
        }
        // A run of execs with more, fewer, no, and again more arguments than the one before.
        for args in [&["sh", "-c", "id"][..], &["ls"], &[], &["a", "", "c", "dé"]] {
            datas.push(EventData::Exec(ExecData {
                filename: format!("/bin/{}", args.len()),
                args: args.iter().map(|a| a.to_string()).collect(),
                args_truncated: args.len() == 1,
            }));
        }
        // Every kind twice in a row, so each reuse arm runs.
        for data in every_kind() {
            datas.push(data.clone());
            datas.push(data);
        }
        let mut batch = EventBatch::new();
        for (i, data) in datas.into_iter().enumerate() {
            batch.push(&process(1), i as u64, data);
        }
        let wire = encode_batch(&batch);
        let strings = Strings::new(&wire.strings);
        let mut slot = EventData::Exit(0);
        for (event, expected) in wire.events.iter().zip(&batch.events) {
            strings.event_data_into(&event.data, &mut slot);
            assert_eq!(slot, expected.data);
        }
        assert_eq!(strings.bad_spans(), 0);
    }

    #[test]
    fn routed_alerts_round_trip_with_their_own_strings() {
        let alert = RoutedAlert {
            id: "a-1".into(),
            plugin: "p".into(),
            plugin_version: "1.0.0".into(),
            ts_ns: 5,
            alert: crate::Alert::new("r", Priority::Critical, "m"),
            process: Some(process(3)),
            event: Some(EventData::FileUnlink("/var/log/wtmp".into())),
        };
        assert_eq!(decode_routed_alert(encode_routed_alert(&alert)), alert);
        let bare = RoutedAlert {
            process: None,
            event: None,
            ..alert
        };
        let wire = encode_routed_alert(&bare);
        assert!(wire.strings.is_empty());
        assert_eq!(decode_routed_alert(wire), bare);
    }

    #[test]
    fn bad_spans_read_as_empty_and_are_counted() {
        let span = |offset, len| w::Span { offset, len };
        // "é" is two bytes: a span ending inside it is not on a char boundary.
        let good = Strings::new("abé".as_bytes());
        assert_eq!(good.get(span(0, 2)), "ab");
        assert_eq!(good.get(span(2, 2)), "é");
        assert_eq!(good.get(span(4, 0)), "");
        assert_eq!(good.get(span(2, 1)), "");
        assert_eq!(good.get(span(3, 5)), "");
        assert_eq!(good.get(span(u32::MAX, u32::MAX)), "");
        assert_eq!(good.bad_spans(), 3);
        // A buffer that is not UTF-8 as a whole: valid spans still read, invalid ones do not.
        let mixed = Strings::new(b"ok\xffno");
        assert_eq!(mixed.get(span(0, 2)), "ok");
        assert_eq!(mixed.get(span(3, 2)), "no");
        assert_eq!(mixed.get(span(1, 2)), "");
        assert_eq!(mixed.bad_spans(), 1);
    }
}
