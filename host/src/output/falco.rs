//! Falco-compatible alert lines, so falcosidekick (and anything else that reads Falco's
//! `json_output`) can consume Palisade. Owns the mapping from an alert and its triggering event to
//! Falco's top-level keys and `output_fields` names; framing and buffering live in `output`.
//!
//! Top-level keys are exactly Falco's: `time`, `rule`, `priority` (capitalised), `output`,
//! `output_fields`, `source` (`"syscall"`), `tags`, `hostname`. `output_fields` uses Falco's field
//! names where one exists (`evt.time`, `evt.type`, `proc.*`, `user.uid`, `container.id`,
//! `fd.name`, ...), skips what Palisade does not know (no `user.name`, no `user.loginuid`), adds
//! the plugin's own fields under their keys (a key already derived from the event keeps the
//! derived, typed value), and names the Palisade origin under `palisade.*`.
//! Keys are sorted, as Falco prints them.

use std::borrow::Cow;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::{dedup_fields, Rfc3339Ns, TimeOfDayNs};
use crate::alert::Alert;
use crate::event::{AddressFamily, ConnectionData, Event, EventData, FdTargetKind, Protocol};

/// Falco's `source` for kernel (syscall) events.
const SOURCE: &str = "syscall";

/// Falco shows the 12-character short id in `container.id`.
const SHORT_CONTAINER_ID: usize = 12;

#[derive(Serialize)]
struct FalcoLine<'a> {
    time: Rfc3339Ns,
    rule: &'a str,
    priority: &'static str,
    output: String,
    output_fields: OutputFields<'a>,
    source: &'static str,
    tags: &'a [String],
    hostname: &'a str,
}

/// A value in `output_fields`: Falco prints numbers as JSON numbers and text as strings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
enum FieldValue<'a> {
    Text(Cow<'a, str>),
    Unsigned(u64),
    Signed(i64),
    Flag(bool),
}

impl<'a> From<&'a str> for FieldValue<'a> {
    fn from(s: &'a str) -> Self {
        FieldValue::Text(Cow::Borrowed(s))
    }
}

impl From<String> for FieldValue<'_> {
    fn from(s: String) -> Self {
        FieldValue::Text(Cow::Owned(s))
    }
}

impl From<u64> for FieldValue<'_> {
    fn from(n: u64) -> Self {
        FieldValue::Unsigned(n)
    }
}

impl From<u32> for FieldValue<'_> {
    fn from(n: u32) -> Self {
        FieldValue::Unsigned(u64::from(n))
    }
}

impl From<u16> for FieldValue<'_> {
    fn from(n: u16) -> Self {
        FieldValue::Unsigned(u64::from(n))
    }
}

impl From<i32> for FieldValue<'_> {
    fn from(n: i32) -> Self {
        FieldValue::Signed(i64::from(n))
    }
}

impl From<bool> for FieldValue<'_> {
    fn from(b: bool) -> Self {
        FieldValue::Flag(b)
    }
}

/// `output_fields`, built once per alert then sorted by key.
struct OutputFields<'a>(Vec<(&'a str, FieldValue<'a>)>);

impl<'a> OutputFields<'a> {
    /// Sets `key`, replacing an earlier value (later sources of a field win).
    fn set(&mut self, key: &'a str, value: impl Into<FieldValue<'a>>) {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| *k == key)
    }

    /// Sets `key` only when `value` is not empty: Falco leaves unknown fields out.
    fn set_text(&mut self, key: &'a str, value: &'a str) {
        if !value.is_empty() {
            self.set(key, value);
        }
    }
}

impl Serialize for OutputFields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Appends `alert` as one Falco JSON object (no newline) to `buf`.
pub fn write_alert(buf: &mut Vec<u8>, alert: &Alert) -> Result<(), serde_json::Error> {
    // Falco's `time` is the time of the event; a host alert without one uses the alert's time.
    let ts_ns = alert
        .event
        .as_ref()
        .map_or(alert.ts_ns, |event| event.ts_ns);
    let line = FalcoLine {
        time: Rfc3339Ns(ts_ns),
        rule: &alert.rule,
        priority: alert.priority.falco_name(),
        output: format!(
            "{}: {} {}",
            TimeOfDayNs(ts_ns),
            alert.priority.falco_name(),
            alert.message
        ),
        output_fields: output_fields(alert, ts_ns),
        source: SOURCE,
        tags: &alert.tags,
        hostname: &alert.hostname,
    };
    serde_json::to_writer(buf, &line)
}

fn output_fields(alert: &Alert, ts_ns: u64) -> OutputFields<'_> {
    let mut fields = OutputFields(Vec::with_capacity(32));
    fields.set("evt.time", ts_ns);
    if let Some(event) = &alert.event {
        event_fields(event, &mut fields);
    }
    // The plugin's fields go in under their own keys. Where a plugin reuses a key derived from
    // the event (plugins often send `proc.pid` as text), the derived value stays: it comes from
    // the event itself and has the type Falco consumers expect (`proc.pid` is a number).
    for (key, value) in dedup_fields(&alert.fields) {
        if !fields.contains(key) {
            fields.set(key, value);
        }
    }
    // The origin is the host's statement and cannot be overridden by a plugin.
    fields.set("palisade.alert_id", alert.id.as_str());
    fields.set("palisade.plugin", alert.plugin.name.as_str());
    fields.set("palisade.plugin_version", alert.plugin.version.as_str());
    fields.0.sort_by(|a, b| a.0.cmp(b.0));
    fields
}

fn event_fields<'a>(event: &'a Event, fields: &mut OutputFields<'a>) {
    let p = &*event.process;
    fields.set("evt.type", syscall_name(&event.data));
    fields.set("proc.pid", p.pid);
    fields.set("thread.tid", p.tid);
    fields.set("proc.ppid", p.ppid);
    fields.set_text("proc.name", &p.comm);
    fields.set_text("proc.exepath", &p.exe);
    if let Some(argv0) = p.args.first() {
        fields.set_text("proc.exe", argv0);
    }
    // Falco's proc.cmdline is the command name followed by the arguments after argv[0].
    let rest = p.args.get(1..).unwrap_or_default().join(" ");
    fields.set("proc.args", rest.clone());
    fields.set(
        "proc.cmdline",
        if rest.is_empty() {
            p.comm.clone()
        } else {
            format!("{} {rest}", p.comm)
        },
    );
    if !p.cwd.is_empty() {
        // Falco reports directories with a trailing slash.
        let cwd = if p.cwd.ends_with('/') {
            p.cwd.clone()
        } else {
            format!("{}/", p.cwd)
        };
        fields.set("proc.cwd", cwd);
    }
    if let Some(parent) = p.ancestors.first() {
        fields.set_text("proc.pname", &parent.comm);
        fields.set_text("proc.pexepath", &parent.exe);
    }
    // Falco's user.uid is the effective uid (what the kernel checks permissions against).
    fields.set("user.uid", p.euid);
    fields.set("group.gid", p.gid);
    match p.container_id.as_deref() {
        Some(id) if !id.is_empty() => {
            let short = id.get(..SHORT_CONTAINER_ID).unwrap_or(id);
            fields.set("container.id", short);
            fields.set("container.full_id", id);
        }
        _ => fields.set("container.id", "host"),
    }

    match &event.data {
        EventData::Exec(exec) => {
            fields.set_text("evt.arg.filename", &exec.filename);
        }
        EventData::Exit { code } => fields.set("evt.arg.status", *code),
        EventData::Fork { child_pid } => fields.set("evt.arg.res", *child_pid),
        EventData::FileOpen(open) => {
            fields.set("fd.name", open.path.as_str());
            fields.set("evt.arg.flags", open.flags);
            let access = open.flags & 0o3;
            fields.set("evt.is_open_read", access == 0 || access == 2);
            fields.set("evt.is_open_write", access == 1 || access == 2);
            if let Some(result) = open.result {
                fields.set("evt.rawres", result);
            }
        }
        EventData::FileRename { from, to } => {
            fields.set("fs.path.source", from.as_str());
            fields.set("fs.path.target", to.as_str());
        }
        EventData::FileUnlink { path } => fields.set("fs.path.name", path.as_str()),
        EventData::FileChmod { path, mode } => {
            fields.set("fs.path.name", path.as_str());
            fields.set("evt.arg.mode", format!("0{mode:o}"));
        }
        EventData::FileChown { path, uid, gid } => {
            fields.set("fs.path.name", path.as_str());
            fields.set("evt.arg.uid", *uid);
            fields.set("evt.arg.gid", *gid);
        }
        EventData::FileLink {
            target,
            link,
            symbolic: _,
        } => {
            fields.set("fs.path.source", target.as_str());
            fields.set("fs.path.target", link.as_str());
        }
        EventData::NetConnect(conn) | EventData::NetAccept(conn) => {
            connection_fields(conn, fields);
        }
        EventData::NetListen(listen) => {
            fields.set(
                "fd.name",
                endpoint(listen.family, &listen.addr, listen.port),
            );
            fields.set("fd.l4proto", l4proto(listen.protocol));
            fields.set_text("fd.lip", &listen.addr);
            fields.set("fd.lport", listen.port);
        }
        EventData::Setuid { uid } => fields.set("evt.arg.uid", *uid),
        EventData::Setgid { gid } => fields.set("evt.arg.gid", *gid),
        EventData::Ptrace {
            request,
            target_pid,
        } => {
            fields.set("evt.arg.request", *request);
            fields.set("evt.arg.pid", *target_pid);
        }
        EventData::ModuleLoad { name } => fields.set_text("evt.arg.name", name),
        EventData::Mount {
            source,
            target,
            fstype,
        } => {
            fields.set_text("evt.arg.dev", source);
            fields.set_text("evt.arg.dir", target);
            fields.set_text("evt.arg.type", fstype);
        }
        EventData::MemfdCreate { name, flags } => {
            fields.set("evt.arg.name", name.as_str());
            fields.set("evt.arg.flags", *flags);
        }
        EventData::Bpf { cmd } => fields.set("evt.arg.cmd", *cmd),
        EventData::Socket {
            family,
            socket_type,
            protocol,
        } => {
            fields.set("evt.arg.domain", *family);
            fields.set("evt.arg.type", *socket_type);
            fields.set("evt.arg.proto", *protocol);
        }
        EventData::FdDup {
            oldfd,
            newfd,
            target_kind,
        } => {
            fields.set("evt.arg.oldfd", *oldfd);
            fields.set("evt.arg.newfd", *newfd);
            fields.set("fd.type", fd_type(*target_kind));
        }
    }
}

fn connection_fields<'a>(conn: &'a ConnectionData, fields: &mut OutputFields<'a>) {
    let name = if conn.family == AddressFamily::Unix {
        conn.daddr.clone()
    } else {
        format!(
            "{}->{}",
            endpoint(conn.family, &conn.saddr, conn.sport),
            endpoint(conn.family, &conn.daddr, conn.dport)
        )
    };
    fields.set("fd.name", name);
    if conn.family != AddressFamily::Unix {
        fields.set("fd.l4proto", l4proto(conn.protocol));
        fields.set_text("fd.lip", &conn.saddr);
        fields.set("fd.lport", conn.sport);
        fields.set_text("fd.rip", &conn.daddr);
        fields.set("fd.rport", conn.dport);
    }
}

/// `addr:port` as Falco prints endpoints (no brackets around IPv6); unix sockets are a path.
fn endpoint(family: AddressFamily, addr: &str, port: u16) -> String {
    match family {
        AddressFamily::Unix => addr.to_owned(),
        _ => format!("{addr}:{port}"),
    }
}

fn l4proto(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Unknown => "unknown",
    }
}

fn fd_type(kind: FdTargetKind) -> &'static str {
    match kind {
        FdTargetKind::Unknown => "unknown",
        FdTargetKind::File => "file",
        FdTargetKind::Socket => "socket",
        FdTargetKind::Pipe => "pipe",
        FdTargetKind::Tty => "tty",
    }
}

/// The system call Falco would name for this kind of event (`evt.type`).
pub fn syscall_name(data: &EventData) -> &'static str {
    match data {
        EventData::Exec(_) => "execve",
        EventData::Exit { .. } => "procexit",
        EventData::Fork { .. } => "clone",
        EventData::FileOpen(_) => "openat",
        EventData::FileRename { .. } => "renameat2",
        EventData::FileUnlink { .. } => "unlinkat",
        EventData::FileChmod { .. } => "fchmodat",
        EventData::FileChown { .. } => "fchownat",
        EventData::FileLink { symbolic: true, .. } => "symlinkat",
        EventData::FileLink { .. } => "linkat",
        EventData::NetConnect(_) => "connect",
        EventData::NetAccept(_) => "accept4",
        EventData::NetListen(_) => "listen",
        EventData::Setuid { .. } => "setuid",
        EventData::Setgid { .. } => "setgid",
        EventData::Ptrace { .. } => "ptrace",
        EventData::ModuleLoad { .. } => "init_module",
        EventData::Mount { .. } => "mount",
        EventData::MemfdCreate { .. } => "memfd_create",
        EventData::Bpf { .. } => "bpf",
        EventData::Socket { .. } => "socket",
        EventData::FdDup { .. } => "dup2",
    }
}
