//! Conversions between host types and the WIT types generated in `bindings`. The only place
//! either representation is turned into the other.

use std::collections::HashMap;
use std::sync::Arc;

use super::bindings::types as wit;
use super::manifest::{ConfigValue, PluginConfig};
use super::subscription::{AlertFilter, Subscription};
use super::{PluginInfo, PluginKind};
use crate::alert::{Alert, Priority};
use crate::capability::{Capability, CapabilitySet};
use crate::event::{Event, EventData, EventKind, FdTargetKind, KindSet, Process};

mod lowered;
pub use lowered::LoweredBatch;

/// The `strings` buffer of one WIT batch (or routed alert) under construction: every string is
/// appended once and referred to by a [`wit::Span`]. Spans are only made from `&str`s appended
/// here, so each one is in bounds and valid UTF-8, as the contract promises guests.
struct Arena {
    bytes: Vec<u8>,
}

impl Arena {
    fn with_capacity(capacity: usize) -> Self {
        Arena {
            bytes: Vec::with_capacity(capacity),
        }
    }

    fn span(&mut self, s: &str) -> wit::Span {
        let offset = self.bytes.len();
        // Offsets are u32: a buffer past 4 GiB cannot be addressed. No real batch gets near
        // (strings are bounded by the kernel source and batches by the worker), but should one,
        // the string is sent empty rather than as a span that points elsewhere.
        match (u32::try_from(offset), u32::try_from(offset + s.len())) {
            (Ok(off), Ok(_)) => {
                self.bytes.extend_from_slice(s.as_bytes());
                wit::Span {
                    offset: off,
                    len: s.len() as u32,
                }
            }
            _ => wit::Span { offset: 0, len: 0 },
        }
    }

    fn spans(&mut self, list: &[String]) -> Vec<wit::Span> {
        list.iter().map(|s| self.span(s)).collect()
    }

    fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

fn wit_process(p: &Process, arena: &mut Arena) -> wit::Process {
    wit::Process {
        pid: p.pid,
        tid: p.tid,
        ppid: p.ppid,
        uid: p.uid,
        gid: p.gid,
        euid: p.euid,
        comm: arena.span(&p.comm),
        exe: arena.span(&p.exe),
        args: arena.spans(&p.args),
        cwd: arena.span(&p.cwd),
        cgroup_id: p.cgroup_id,
        container_id: p.container_id.as_deref().map(|c| arena.span(c)),
        start_ns: p.start_ns,
        ancestors: p
            .ancestors
            .iter()
            .map(|a| wit::Ancestor {
                pid: a.pid,
                comm: arena.span(&a.comm),
                exe: arena.span(&a.exe),
            })
            .collect(),
    }
}

fn connection(c: &crate::event::ConnectionData, arena: &mut Arena) -> wit::ConnectionData {
    wit::ConnectionData {
        family: c.family.to_af(),
        protocol: c.protocol.to_ipproto(),
        saddr: arena.span(&c.saddr),
        sport: c.sport,
        daddr: arena.span(&c.daddr),
        dport: c.dport,
    }
}

fn wit_event_data(data: &EventData, arena: &mut Arena) -> wit::EventData {
    use wit::EventData as W;
    match data {
        EventData::Exec(e) => W::Exec(wit::ExecData {
            filename: arena.span(&e.filename),
            args: arena.spans(&e.args),
            args_truncated: e.args_truncated,
        }),
        EventData::Exit { code } => W::Exit(*code),
        EventData::Fork { child_pid } => W::Fork(*child_pid),
        EventData::FileOpen(f) => W::FileOpen(wit::FileOpenData {
            path: arena.span(&f.path),
            open_flags: f.flags,
            mode: f.mode,
            result: f.result,
        }),
        EventData::FileRename { from, to } => W::FileRename(wit::FileRenameData {
            from: arena.span(from),
            to: arena.span(to),
        }),
        EventData::FileUnlink { path } => W::FileUnlink(arena.span(path)),
        EventData::FileChmod { path, mode } => W::FileChmod(wit::FileChmodData {
            path: arena.span(path),
            mode: *mode,
        }),
        EventData::FileChown { path, uid, gid } => W::FileChown(wit::FileChownData {
            path: arena.span(path),
            uid: *uid,
            gid: *gid,
        }),
        EventData::FileLink {
            target,
            link,
            symbolic,
        } => W::FileLink(wit::FileLinkData {
            target: arena.span(target),
            link: arena.span(link),
            symbolic: *symbolic,
        }),
        EventData::NetConnect(c) => W::NetConnect(connection(c, arena)),
        EventData::NetAccept(c) => W::NetAccept(connection(c, arena)),
        EventData::NetListen(l) => W::NetListen(wit::ListenData {
            family: l.family.to_af(),
            protocol: l.protocol.to_ipproto(),
            addr: arena.span(&l.addr),
            port: l.port,
        }),
        EventData::Setuid { uid } => W::Setuid(*uid),
        EventData::Setgid { gid } => W::Setgid(*gid),
        EventData::Ptrace {
            request,
            target_pid,
        } => W::Ptrace(wit::PtraceData {
            request: *request,
            target_pid: *target_pid,
        }),
        EventData::ModuleLoad { name } => W::ModuleLoad(arena.span(name)),
        EventData::Mount {
            source,
            target,
            fstype,
        } => W::Mount(wit::MountData {
            source: arena.span(source),
            target: arena.span(target),
            fstype: arena.span(fstype),
        }),
        EventData::MemfdCreate { name, flags } => W::MemfdCreate(wit::MemfdData {
            name: arena.span(name),
            memfd_flags: *flags,
        }),
        EventData::Bpf { cmd } => W::Bpf(*cmd),
        EventData::Socket {
            family,
            socket_type,
            protocol,
        } => W::Socket(wit::SocketData {
            family: *family,
            socket_type: *socket_type,
            protocol: *protocol,
        }),
        EventData::FdDup {
            oldfd,
            newfd,
            target_kind,
        } => W::FdDup(wit::FdDupData {
            oldfd: *oldfd,
            newfd: *newfd,
            target_kind: match target_kind {
                FdTargetKind::Unknown => wit::FdTargetKind::Unknown,
                FdTargetKind::File => wit::FdTargetKind::File,
                FdTargetKind::Socket => wit::FdTargetKind::Socket,
                FdTargetKind::Pipe => wit::FdTargetKind::Pipe,
                FdTargetKind::Tty => wit::FdTargetKind::Tty,
            },
        }),
    }
}

/// Where [`each_wit_event`] puts a batch's processes and events.
trait BatchSink {
    fn process(&mut self, p: wit::Process);
    fn event(&mut self, e: wit::Event);
}

impl BatchSink for LoweredBatch {
    fn process(&mut self, p: wit::Process) {
        self.push_process(&p);
    }
    fn event(&mut self, e: wit::Event) {
        self.push_event(&e);
    }
}

impl BatchSink for wit::EventBatch {
    fn process(&mut self, p: wit::Process) {
        self.processes.push(p);
    }
    fn event(&mut self, e: wit::Event) {
        self.events.push(e);
    }
}

/// Walks `events` in WIT form: each distinct process (by `Arc` identity) goes to `sink` once,
/// before the first event that refers to it by index, and every string into `arena`.
fn each_wit_event<'a>(
    events: impl Iterator<Item = &'a Arc<Event>>,
    arena: &mut Arena,
    sink: &mut impl BatchSink,
) {
    let mut index: HashMap<*const Process, u32> = HashMap::new();
    // Events come in runs of one process: checking the previous one first skips most lookups.
    let mut last: Option<(*const Process, u32)> = None;
    for e in events {
        let key = Arc::as_ptr(&e.process);
        let i = match last {
            Some((k, i)) if k == key => i,
            _ => {
                let next = index.len() as u32;
                let i = *index.entry(key).or_insert_with(|| {
                    sink.process(wit_process(&e.process, arena));
                    next
                });
                last = Some((key, i));
                i
            }
        };
        sink.event(wit::Event {
            ts_ns: e.ts_ns,
            process: i,
            data: wit_event_data(&e.data, arena),
        });
    }
}

/// Builds a detector batch: each distinct process listed once, every string of the processes
/// and events in the batch's one `strings` buffer, all of it laid out in canonical-ABI form so
/// each plugin's call copies it instead of lowering it field by field (see [`LoweredBatch`]).
/// The only encoder of detector batches; build once per batch and share it across plugins.
pub fn wit_batch<'a>(events: impl IntoIterator<Item = &'a Arc<Event>>) -> LoweredBatch {
    let events = events.into_iter();
    let n = events.size_hint().0;
    // A file event carries one ~30-byte path; sizing for that avoids most regrowth.
    let mut arena = Arena {
        bytes: lowered::spare_buffer(n * 48 + 256),
    };
    let mut batch = LoweredBatch::with_capacity(n);
    each_wit_event(events, &mut arena, &mut batch);
    batch.set_strings(arena.into_bytes());
    batch
}

/// The same batch as generated WIT values, for wasmtime's own (field-by-field) lowering:
/// the reference [`LoweredBatch`] is tested against, and what benchmarks compare it with.
pub fn wit_event_batch<'a>(events: impl IntoIterator<Item = &'a Arc<Event>>) -> wit::EventBatch {
    let events = events.into_iter();
    let n = events.size_hint().0;
    let mut arena = Arena::with_capacity(n * 48 + 256);
    let mut batch = wit::EventBatch {
        strings: Vec::new(),
        processes: Vec::new(),
        events: Vec::with_capacity(n),
    };
    each_wit_event(events, &mut arena, &mut batch);
    batch.strings = arena.into_bytes();
    batch
}

pub fn priority(p: wit::Priority) -> Priority {
    match p {
        wit::Priority::Emergency => Priority::Emergency,
        wit::Priority::Alert => Priority::Alert,
        wit::Priority::Critical => Priority::Critical,
        wit::Priority::Error => Priority::Error,
        wit::Priority::Warning => Priority::Warning,
        wit::Priority::Notice => Priority::Notice,
        wit::Priority::Informational => Priority::Informational,
        wit::Priority::Debug => Priority::Debug,
    }
}

pub fn wit_priority(p: Priority) -> wit::Priority {
    match p {
        Priority::Emergency => wit::Priority::Emergency,
        Priority::Alert => wit::Priority::Alert,
        Priority::Critical => wit::Priority::Critical,
        Priority::Error => wit::Priority::Error,
        Priority::Warning => wit::Priority::Warning,
        Priority::Notice => wit::Priority::Notice,
        Priority::Informational => wit::Priority::Informational,
        Priority::Debug => wit::Priority::Debug,
    }
}

pub fn event_kind(k: wit::EventKind) -> EventKind {
    use wit::EventKind as W;
    match k {
        W::Exec => EventKind::Exec,
        W::Exit => EventKind::Exit,
        W::Fork => EventKind::Fork,
        W::FileOpen => EventKind::FileOpen,
        W::FileRename => EventKind::FileRename,
        W::FileUnlink => EventKind::FileUnlink,
        W::FileChmod => EventKind::FileChmod,
        W::FileChown => EventKind::FileChown,
        W::FileLink => EventKind::FileLink,
        W::NetConnect => EventKind::NetConnect,
        W::NetAccept => EventKind::NetAccept,
        W::NetListen => EventKind::NetListen,
        W::Setuid => EventKind::Setuid,
        W::Setgid => EventKind::Setgid,
        W::Ptrace => EventKind::Ptrace,
        W::ModuleLoad => EventKind::ModuleLoad,
        W::Mount => EventKind::Mount,
        W::MemfdCreate => EventKind::MemfdCreate,
        W::Bpf => EventKind::Bpf,
        W::Socket => EventKind::Socket,
        W::FdDup => EventKind::FdDup,
    }
}

pub fn capability(c: wit::Capability) -> Capability {
    match c {
        wit::Capability::KillProcess => Capability::KillProcess,
        wit::Capability::BlockExec => Capability::BlockExec,
        wit::Capability::DenyOpen => Capability::DenyOpen,
        wit::Capability::NetworkQuarantine => Capability::NetworkQuarantine,
        wit::Capability::Freeze => Capability::Freeze,
        wit::Capability::QuarantineFile => Capability::QuarantineFile,
        wit::Capability::Notify => Capability::Notify,
    }
}

pub fn config_value(v: wit::ConfigValue) -> ConfigValue {
    match v {
        wit::ConfigValue::Text(s) => ConfigValue::Text(s),
        wit::ConfigValue::Integer(i) => ConfigValue::Integer(i),
        wit::ConfigValue::Float(f) => ConfigValue::Float(f),
        wit::ConfigValue::Boolean(b) => ConfigValue::Boolean(b),
        wit::ConfigValue::TextList(l) => ConfigValue::TextList(l),
        wit::ConfigValue::IntegerList(l) => ConfigValue::IntegerList(l),
    }
}

pub fn wit_config(config: &PluginConfig) -> wit::Config {
    config
        .iter()
        .map(|(k, v)| {
            let value = match v {
                ConfigValue::Text(s) => wit::ConfigValue::Text(s.clone()),
                ConfigValue::Integer(i) => wit::ConfigValue::Integer(*i),
                ConfigValue::Float(f) => wit::ConfigValue::Float(*f),
                ConfigValue::Boolean(b) => wit::ConfigValue::Boolean(*b),
                ConfigValue::TextList(l) => wit::ConfigValue::TextList(l.clone()),
                ConfigValue::IntegerList(l) => wit::ConfigValue::IntegerList(l.clone()),
            };
            (k.clone(), value)
        })
        .collect()
}

pub fn plugin_info(info: wit::PluginInfo) -> PluginInfo {
    PluginInfo {
        name: info.name,
        version: info.version,
        kind: match info.kind {
            wit::PluginKind::Detector => PluginKind::Detector,
            wit::PluginKind::Responder => PluginKind::Responder,
        },
        description: info.description,
        subscriptions: info
            .subscriptions
            .into_iter()
            .map(|s| Subscription {
                kinds: s.kinds.into_iter().map(event_kind).collect::<KindSet>(),
                paths: s.paths,
                path_prefixes: s.path_prefixes,
                comms: s.comms,
                exes: s.exes,
                ports: s.ports,
                uid_min: s.uid_min,
                uid_max: s.uid_max,
            })
            .collect(),
        alert_filter: info.alert_filter.map(|f| AlertFilter {
            min_priority: priority(f.min_priority),
            rules: f.rules,
            tags: f.tags,
        }),
        capabilities: info
            .capabilities
            .into_iter()
            .map(capability)
            .collect::<CapabilitySet>(),
        default_config: info
            .default_config
            .into_iter()
            .map(|(k, v)| (k, config_value(v)))
            .collect(),
    }
}

/// The WIT form of an alert for responders, with its own `strings` buffer for the spans of its
/// process and event. The only encoder of routed alerts.
pub fn wit_routed_alert(alert: &Alert) -> wit::RoutedAlert {
    let mut arena = Arena::with_capacity(256);
    let process = alert
        .event
        .as_ref()
        .map(|e| wit_process(&e.process, &mut arena));
    let event = alert
        .event
        .as_ref()
        .map(|e| wit_event_data(&e.data, &mut arena));
    wit::RoutedAlert {
        strings: arena.into_bytes(),
        id: alert.id.clone(),
        plugin: alert.plugin.name.clone(),
        plugin_version: alert.plugin.version.clone(),
        ts_ns: alert.ts_ns,
        alert: wit::Alert {
            rule: alert.rule.clone(),
            priority: wit_priority(alert.priority),
            message: alert.message.clone(),
            tags: alert.tags.clone(),
            fields: alert.fields.clone(),
            event_index: 0,
        },
        process,
        event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Origin;
    use crate::event::{Ancestor, ConnectionData, ExecData, FileOpenData};

    fn text(strings: &[u8], span: wit::Span) -> &str {
        let range = span.offset as usize..(span.offset + span.len) as usize;
        std::str::from_utf8(strings.get(range).expect("span in bounds")).expect("span is UTF-8")
    }

    fn process(pid: u32) -> Arc<Process> {
        Arc::new(Process {
            pid,
            comm: "bäsh".into(),
            exe: "/usr/bin/bäsh".into(),
            args: vec!["bäsh".into(), "-c".into(), "échö ☃".into()],
            cwd: String::new(),
            container_id: Some("c0ffee".into()),
            ancestors: vec![Ancestor {
                pid: 1,
                comm: "systemd".into(),
                exe: "/lib/systemd/systemd".into(),
            }],
            ..Process::default()
        })
    }

    #[test]
    fn batch_strings_share_one_buffer_and_every_span_reads_back() {
        let p = process(7);
        let q = process(8);
        let event = |process: &Arc<Process>, data| {
            Arc::new(Event {
                ts_ns: 1,
                process: Arc::clone(process),
                data,
            })
        };
        let events = [
            event(
                &p,
                EventData::FileOpen(FileOpenData {
                    path: "/etc/shadow".into(),
                    flags: 1,
                    mode: 0,
                    result: Some(3),
                }),
            ),
            event(
                &q,
                EventData::Exec(ExecData {
                    filename: "/tmp/ẍ".into(),
                    args: vec!["ẍ".into(), String::new()],
                    args_truncated: true,
                }),
            ),
            event(
                &p,
                EventData::FileRename {
                    from: "/a".into(),
                    to: "/b".into(),
                },
            ),
            event(
                &p,
                EventData::NetConnect(ConnectionData {
                    saddr: "10.0.0.1".into(),
                    daddr: "::1".into(),
                    ..ConnectionData::default()
                }),
            ),
            event(&q, EventData::Fork { child_pid: 9 }),
        ];
        let batch = wit_event_batch(events.iter());
        assert_eq!(batch.processes.len(), 2, "processes listed once each");
        assert_eq!(
            batch.events.iter().map(|e| e.process).collect::<Vec<_>>(),
            vec![0, 1, 0, 0, 1]
        );
        let s = &batch.strings;
        let wp = &batch.processes[0];
        assert_eq!(
            (text(s, wp.comm), text(s, wp.exe), text(s, wp.cwd)),
            ("bäsh", "/usr/bin/bäsh", "")
        );
        let args: Vec<&str> = wp.args.iter().map(|&a| text(s, a)).collect();
        assert_eq!(args, ["bäsh", "-c", "échö ☃"]);
        assert_eq!(wp.container_id.map(|c| text(s, c)), Some("c0ffee"));
        assert_eq!(text(s, wp.ancestors[0].exe), "/lib/systemd/systemd");
        match &batch.events[0].data {
            wit::EventData::FileOpen(f) => assert_eq!(text(s, f.path), "/etc/shadow"),
            other => panic!("{other:?}"),
        }
        match &batch.events[1].data {
            wit::EventData::Exec(e) => {
                assert_eq!(text(s, e.filename), "/tmp/ẍ");
                assert_eq!(
                    e.args.iter().map(|&a| text(s, a)).collect::<Vec<_>>(),
                    ["ẍ", ""]
                );
            }
            other => panic!("{other:?}"),
        }
        match &batch.events[2].data {
            wit::EventData::FileRename(r) => {
                assert_eq!((text(s, r.from), text(s, r.to)), ("/a", "/b"))
            }
            other => panic!("{other:?}"),
        }
        match &batch.events[3].data {
            wit::EventData::NetConnect(c) => {
                assert_eq!((text(s, c.saddr), text(s, c.daddr)), ("10.0.0.1", "::1"))
            }
            other => panic!("{other:?}"),
        }
        // Strings are appended back to back: the buffer is exactly their sum, no gaps.
        let expected: usize = [
            "bäsh",
            "/usr/bin/bäsh",
            "bäsh",
            "-c",
            "échö ☃",
            "",
            "c0ffee",
        ]
        .iter()
        .chain(&["systemd", "/lib/systemd/systemd"])
        .map(|t| t.len())
        .sum::<usize>()
            * 2
            + [
                "/etc/shadow",
                "/tmp/ẍ",
                "ẍ",
                "",
                "/a",
                "/b",
                "10.0.0.1",
                "::1",
            ]
            .iter()
            .map(|t| t.len())
            .sum::<usize>();
        assert_eq!(s.len(), expected);
        assert!(wit_event_batch(std::iter::empty()).strings.is_empty());
    }

    #[test]
    fn routed_alert_carries_its_own_strings() {
        let event = Arc::new(Event {
            ts_ns: 5,
            process: process(7),
            data: EventData::FileUnlink {
                path: "/var/log/wtmp".into(),
            },
        });
        let alert = Alert {
            id: "a-1".into(),
            ts_ns: 5,
            rule: "r".into(),
            priority: Priority::Critical,
            message: "m".into(),
            tags: vec!["T1070".into()],
            fields: vec![("k".into(), "v".into())],
            plugin: Origin {
                name: "p".into(),
                version: "1.0.0".into(),
            },
            hostname: "h".into(),
            event: Some(event),
        };
        let routed = wit_routed_alert(&alert);
        let s = &routed.strings;
        let p = routed.process.expect("process");
        assert_eq!((p.pid, text(s, p.comm)), (7, "bäsh"));
        match routed.event.expect("event") {
            wit::EventData::FileUnlink(path) => assert_eq!(text(s, path), "/var/log/wtmp"),
            other => panic!("{other:?}"),
        }
        let bare = wit_routed_alert(&Alert {
            event: None,
            ..alert
        });
        assert!(bare.strings.is_empty() && bare.process.is_none() && bare.event.is_none());
    }
}
