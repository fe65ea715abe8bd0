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

pub fn wit_process(p: &Process) -> wit::Process {
    wit::Process {
        pid: p.pid,
        tid: p.tid,
        ppid: p.ppid,
        uid: p.uid,
        gid: p.gid,
        euid: p.euid,
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        args: p.args.clone(),
        cwd: p.cwd.clone(),
        cgroup_id: p.cgroup_id,
        container_id: p.container_id.clone(),
        start_ns: p.start_ns,
        ancestors: p
            .ancestors
            .iter()
            .map(|a| wit::Ancestor {
                pid: a.pid,
                comm: a.comm.clone(),
                exe: a.exe.clone(),
            })
            .collect(),
    }
}

fn connection(c: &crate::event::ConnectionData) -> wit::ConnectionData {
    wit::ConnectionData {
        family: c.family.to_af(),
        protocol: c.protocol.to_ipproto(),
        saddr: c.saddr.clone(),
        sport: c.sport,
        daddr: c.daddr.clone(),
        dport: c.dport,
    }
}

pub fn wit_event_data(data: &EventData) -> wit::EventData {
    use wit::EventData as W;
    match data {
        EventData::Exec(e) => W::Exec(wit::ExecData {
            filename: e.filename.clone(),
            args: e.args.clone(),
            args_truncated: e.args_truncated,
        }),
        EventData::Exit { code } => W::Exit(*code),
        EventData::Fork { child_pid } => W::Fork(*child_pid),
        EventData::FileOpen(f) => W::FileOpen(wit::FileOpenData {
            path: f.path.clone(),
            open_flags: f.flags,
            mode: f.mode,
            result: f.result,
        }),
        EventData::FileRename { from, to } => W::FileRename(wit::FileRenameData {
            from: from.clone(),
            to: to.clone(),
        }),
        EventData::FileUnlink { path } => W::FileUnlink(path.clone()),
        EventData::FileChmod { path, mode } => W::FileChmod(wit::FileChmodData {
            path: path.clone(),
            mode: *mode,
        }),
        EventData::FileChown { path, uid, gid } => W::FileChown(wit::FileChownData {
            path: path.clone(),
            uid: *uid,
            gid: *gid,
        }),
        EventData::FileLink {
            target,
            link,
            symbolic,
        } => W::FileLink(wit::FileLinkData {
            target: target.clone(),
            link: link.clone(),
            symbolic: *symbolic,
        }),
        EventData::NetConnect(c) => W::NetConnect(connection(c)),
        EventData::NetAccept(c) => W::NetAccept(connection(c)),
        EventData::NetListen(l) => W::NetListen(wit::ListenData {
            family: l.family.to_af(),
            protocol: l.protocol.to_ipproto(),
            addr: l.addr.clone(),
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
        EventData::ModuleLoad { name } => W::ModuleLoad(name.clone()),
        EventData::Mount {
            source,
            target,
            fstype,
        } => W::Mount(wit::MountData {
            source: source.clone(),
            target: target.clone(),
            fstype: fstype.clone(),
        }),
        EventData::MemfdCreate { name, flags } => W::MemfdCreate(wit::MemfdData {
            name: name.clone(),
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

/// Builds a WIT batch from events, listing each distinct process (by `Arc` identity) once.
pub fn wit_batch<'a>(events: impl IntoIterator<Item = &'a Arc<Event>>) -> wit::EventBatch {
    let mut processes = Vec::new();
    let mut index: HashMap<*const Process, u32> = HashMap::new();
    let mut out = Vec::new();
    for event in events {
        let key = Arc::as_ptr(&event.process);
        let process = *index.entry(key).or_insert_with(|| {
            processes.push(wit_process(&event.process));
            (processes.len() - 1) as u32
        });
        out.push(wit::Event {
            ts_ns: event.ts_ns,
            process,
            data: wit_event_data(&event.data),
        });
    }
    wit::EventBatch {
        processes,
        events: out,
    }
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

/// The WIT form of an alert for responders.
pub fn wit_routed_alert(alert: &Alert) -> wit::RoutedAlert {
    wit::RoutedAlert {
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
        process: alert.event.as_ref().map(|e| wit_process(&e.process)),
        event: alert.event.as_ref().map(|e| wit_event_data(&e.data)),
    }
}
