//! The host's domain event: what every source produces and every consumer reads. Serialises to
//! and from the replay JSON Lines schema (docs/events.md). Kernel bytes and WIT values are
//! converted to and from this type at exactly one place each (`event::decode`, `plugin::convert`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod container;
pub mod replay;
pub mod source;

/// One ancestor of a process, nearest first in [`Process::ancestors`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
}

/// The process context every event carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub comm: String,
    pub exe: String,
    pub args: Vec<String>,
    pub cwd: String,
    pub cgroup_id: u64,
    pub container_id: Option<String>,
    /// Start time in ns since boot; `(pid, start_ns)` names a process uniquely.
    pub start_ns: u64,
    pub ancestors: Vec<Ancestor>,
}

/// Kinds of event, in the order of the WIT `event-kind` enum (the index is used in bitsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Exec,
    Exit,
    Fork,
    FileOpen,
    FileRename,
    FileUnlink,
    FileChmod,
    FileChown,
    FileLink,
    NetConnect,
    NetAccept,
    NetListen,
    Setuid,
    Setgid,
    Ptrace,
    ModuleLoad,
    Mount,
    MemfdCreate,
    Bpf,
    Socket,
    FdDup,
}

impl EventKind {
    pub const ALL: [EventKind; 21] = [
        EventKind::Exec,
        EventKind::Exit,
        EventKind::Fork,
        EventKind::FileOpen,
        EventKind::FileRename,
        EventKind::FileUnlink,
        EventKind::FileChmod,
        EventKind::FileChown,
        EventKind::FileLink,
        EventKind::NetConnect,
        EventKind::NetAccept,
        EventKind::NetListen,
        EventKind::Setuid,
        EventKind::Setgid,
        EventKind::Ptrace,
        EventKind::ModuleLoad,
        EventKind::Mount,
        EventKind::MemfdCreate,
        EventKind::Bpf,
        EventKind::Socket,
        EventKind::FdDup,
    ];

    /// The snake_case name used in JSON and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Exec => "exec",
            EventKind::Exit => "exit",
            EventKind::Fork => "fork",
            EventKind::FileOpen => "file_open",
            EventKind::FileRename => "file_rename",
            EventKind::FileUnlink => "file_unlink",
            EventKind::FileChmod => "file_chmod",
            EventKind::FileChown => "file_chown",
            EventKind::FileLink => "file_link",
            EventKind::NetConnect => "net_connect",
            EventKind::NetAccept => "net_accept",
            EventKind::NetListen => "net_listen",
            EventKind::Setuid => "setuid",
            EventKind::Setgid => "setgid",
            EventKind::Ptrace => "ptrace",
            EventKind::ModuleLoad => "module_load",
            EventKind::Mount => "mount",
            EventKind::MemfdCreate => "memfd_create",
            EventKind::Bpf => "bpf",
            EventKind::Socket => "socket",
            EventKind::FdDup => "fd_dup",
        }
    }

    /// Bit of this kind in a [`KindSet`].
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of event kinds as a bitmask (21 kinds fit in a u32).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindSet(pub u32);

impl KindSet {
    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & kind.bit() != 0
    }
    pub fn insert(&mut self, kind: EventKind) {
        self.0 |= kind.bit();
    }
    pub fn union(self, other: KindSet) -> KindSet {
        KindSet(self.0 | other.0)
    }
    pub fn iter(self) -> impl Iterator<Item = EventKind> {
        EventKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

impl FromIterator<EventKind> for KindSet {
    fn from_iter<I: IntoIterator<Item = EventKind>>(iter: I) -> Self {
        let mut set = KindSet::default();
        for kind in iter {
            set.insert(kind);
        }
        set
    }
}

/// What a duplicated descriptor refers to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdTargetKind {
    #[default]
    Unknown,
    File,
    Socket,
    Pipe,
    Tty,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecData {
    pub filename: String,
    pub args: Vec<String>,
    pub args_truncated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileOpenData {
    pub path: String,
    pub flags: u32,
    pub mode: u32,
    /// File descriptor or negative errno, when the source saw the syscall return.
    pub result: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionData {
    /// "inet", "inet6" or "unix" in JSON; numeric family in WIT.
    pub family: AddressFamily,
    /// "tcp", "udp" or "" in JSON.
    pub protocol: Protocol,
    pub saddr: String,
    pub sport: u16,
    pub daddr: String,
    pub dport: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenData {
    pub family: AddressFamily,
    pub protocol: Protocol,
    pub addr: String,
    pub port: u16,
}

/// Address family, named in JSON, numeric (AF_*) in WIT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressFamily {
    #[default]
    Inet,
    Inet6,
    Unix,
    Other(u16),
}

impl AddressFamily {
    pub fn to_af(self) -> u16 {
        match self {
            AddressFamily::Unix => 1,
            AddressFamily::Inet => 2,
            AddressFamily::Inet6 => 10,
            AddressFamily::Other(n) => n,
        }
    }
    pub fn from_af(af: u16) -> Self {
        match af {
            1 => AddressFamily::Unix,
            2 => AddressFamily::Inet,
            10 => AddressFamily::Inet6,
            n => AddressFamily::Other(n),
        }
    }
}

/// Transport protocol, named in JSON, IP protocol number in WIT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Unknown,
}

impl Protocol {
    pub fn to_ipproto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Unknown => 0,
        }
    }
    pub fn from_ipproto(p: u8) -> Self {
        match p {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            _ => Protocol::Unknown,
        }
    }
}

/// Per-kind payload. Serialised adjacently tagged: `"kind": "...", "data": {...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum EventData {
    Exec(ExecData),
    Exit {
        #[serde(default)]
        code: i32,
    },
    Fork {
        #[serde(default)]
        child_pid: u32,
    },
    FileOpen(FileOpenData),
    FileRename {
        #[serde(default)]
        from: String,
        #[serde(default)]
        to: String,
    },
    FileUnlink {
        #[serde(default)]
        path: String,
    },
    FileChmod {
        #[serde(default)]
        path: String,
        #[serde(default)]
        mode: u32,
    },
    FileChown {
        #[serde(default)]
        path: String,
        #[serde(default = "unchanged_id")]
        uid: u32,
        #[serde(default = "unchanged_id")]
        gid: u32,
    },
    FileLink {
        #[serde(default)]
        target: String,
        #[serde(default)]
        link: String,
        #[serde(default)]
        symbolic: bool,
    },
    NetConnect(ConnectionData),
    NetAccept(ConnectionData),
    NetListen(ListenData),
    Setuid {
        #[serde(default)]
        uid: u32,
    },
    Setgid {
        #[serde(default)]
        gid: u32,
    },
    Ptrace {
        #[serde(default)]
        request: u32,
        #[serde(default)]
        target_pid: u32,
    },
    ModuleLoad {
        #[serde(default)]
        name: String,
    },
    Mount {
        #[serde(default)]
        source: String,
        #[serde(default)]
        target: String,
        #[serde(default)]
        fstype: String,
    },
    MemfdCreate {
        #[serde(default)]
        name: String,
        #[serde(default)]
        flags: u32,
    },
    Bpf {
        #[serde(default)]
        cmd: u32,
    },
    Socket {
        #[serde(default)]
        family: u16,
        #[serde(default, rename = "type")]
        socket_type: u32,
        #[serde(default)]
        protocol: u32,
    },
    FdDup {
        #[serde(default)]
        oldfd: u32,
        #[serde(default)]
        newfd: u32,
        #[serde(default)]
        target_kind: FdTargetKind,
    },
}

fn unchanged_id() -> u32 {
    u32::MAX
}

impl EventData {
    pub fn kind(&self) -> EventKind {
        match self {
            EventData::Exec(_) => EventKind::Exec,
            EventData::Exit { .. } => EventKind::Exit,
            EventData::Fork { .. } => EventKind::Fork,
            EventData::FileOpen(_) => EventKind::FileOpen,
            EventData::FileRename { .. } => EventKind::FileRename,
            EventData::FileUnlink { .. } => EventKind::FileUnlink,
            EventData::FileChmod { .. } => EventKind::FileChmod,
            EventData::FileChown { .. } => EventKind::FileChown,
            EventData::FileLink { .. } => EventKind::FileLink,
            EventData::NetConnect(_) => EventKind::NetConnect,
            EventData::NetAccept(_) => EventKind::NetAccept,
            EventData::NetListen(_) => EventKind::NetListen,
            EventData::Setuid { .. } => EventKind::Setuid,
            EventData::Setgid { .. } => EventKind::Setgid,
            EventData::Ptrace { .. } => EventKind::Ptrace,
            EventData::ModuleLoad { .. } => EventKind::ModuleLoad,
            EventData::Mount { .. } => EventKind::Mount,
            EventData::MemfdCreate { .. } => EventKind::MemfdCreate,
            EventData::Bpf { .. } => EventKind::Bpf,
            EventData::Socket { .. } => EventKind::Socket,
            EventData::FdDup { .. } => EventKind::FdDup,
        }
    }

    /// Paths the event names, for subscription path predicates.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        let (a, b): (Option<&str>, Option<&str>) = match self {
            EventData::Exec(e) => (Some(&e.filename), None),
            EventData::FileOpen(f) => (Some(&f.path), None),
            EventData::FileRename { from, to } => (Some(from), Some(to)),
            EventData::FileUnlink { path }
            | EventData::FileChmod { path, .. }
            | EventData::FileChown { path, .. } => (Some(path), None),
            EventData::FileLink { target, link, .. } => (Some(target), Some(link)),
            EventData::Mount { target, .. } => (Some(target), None),
            EventData::ModuleLoad { name } if name.starts_with('/') => (Some(name), None),
            _ => (None, None),
        };
        a.into_iter().chain(b)
    }

    /// The port a subscription's port predicate is checked against.
    pub fn port(&self) -> Option<u16> {
        match self {
            EventData::NetConnect(c) => Some(c.dport),
            EventData::NetAccept(c) => Some(c.sport),
            EventData::NetListen(l) => Some(l.port),
            _ => None,
        }
    }
}

/// One event: when, in which process, what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub ts_ns: u64,
    #[serde(default)]
    pub process: Arc<Process>,
    #[serde(flatten)]
    pub data: EventData,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        self.data.kind()
    }
}
