//! The SDK's own types for everything that carries strings on the wire: processes, event
//! payloads, batches and routed alerts, with plain `String` fields.
//!
//! On the wire (`palisade:plugin@0.2.0`) these strings are `span`s into one per-batch byte
//! buffer, so the host makes one guest allocation per batch instead of one per string. Plugins
//! never see spans: [`crate::wire`] decodes each batch into these types (and encodes them back
//! for native tests). Types without strings (`PtraceData`, `SocketData`, `FdDupData`, `Alert`,
//! ...) are the generated ones, re-exported unchanged. Keep the field names and shapes in step
//! with the WIT records they mirror.

use crate::bindings::palisade::plugin::types::{Alert, FdDupData, PtraceData, SocketData};

/// One ancestor of a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ancestor {
    /// Process id (tgid).
    pub pid: u32,
    /// Command name (at most 15 bytes, as the kernel keeps it).
    pub comm: String,
    /// Absolute path of the executable, empty when unknown.
    pub exe: String,
}

/// The process an event happened in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id that performed the action.
    pub tid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective user id.
    pub euid: u32,
    /// Command name (at most 15 bytes).
    pub comm: String,
    /// Absolute path of the executable, empty when unknown.
    pub exe: String,
    /// Command line arguments, argv[0] first.
    pub args: Vec<String>,
    /// Current working directory, empty when unknown.
    pub cwd: String,
    /// Kernel cgroup v2 id of the process.
    pub cgroup_id: u64,
    /// Container id parsed from the cgroup path, none on the host.
    pub container_id: Option<String>,
    /// Process start time in ns since boot; with `pid` it names a process uniquely.
    pub start_ns: u64,
    /// Ancestors, nearest first (parent, grandparent, ...), bounded by the host.
    pub ancestors: Vec<Ancestor>,
}

/// Payload of an `exec` event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecData {
    /// Path of the executed file as the kernel resolved it.
    pub filename: String,
    /// Argument vector of the new image.
    pub args: Vec<String>,
    /// True when the host could not capture every argument.
    pub args_truncated: bool,
}

/// Payload of a `file_open` event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileOpenData {
    /// Path as passed to open, made absolute against the cwd when the host knows it.
    pub path: String,
    /// open(2) flags (see [`crate::open_flags`]).
    pub open_flags: u32,
    /// Creation mode (only meaningful with O_CREAT).
    pub mode: u32,
    /// Result of the open when known: a file descriptor (>= 0) or a negative errno.
    pub result: Option<i32>,
}

/// Payload of a `file_rename` event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileRenameData {
    /// Old path.
    pub from: String,
    /// New path.
    pub to: String,
}

/// Payload of a `file_chmod` event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileChmodData {
    /// Path of the file.
    pub path: String,
    /// New mode bits.
    pub mode: u32,
}

/// Payload of a `file_chown` event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileChownData {
    /// Path of the file.
    pub path: String,
    /// New owner (u32::MAX = unchanged).
    pub uid: u32,
    /// New group (u32::MAX = unchanged).
    pub gid: u32,
}

/// Payload of a `file_link` event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileLinkData {
    /// What the link points to.
    pub target: String,
    /// The link created.
    pub link: String,
    /// True for a symbolic link, false for a hard link.
    pub symbolic: bool,
}

/// Payload of `net_connect` and `net_accept` events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionData {
    /// Address family: 2 = AF_INET, 10 = AF_INET6, 1 = AF_UNIX.
    pub family: u16,
    /// IP protocol number: 6 = TCP, 17 = UDP, 0 = unknown.
    pub protocol: u8,
    /// Local address in text form ("127.0.0.1", "::1"), empty when unknown.
    pub saddr: String,
    /// Local port.
    pub sport: u16,
    /// Remote address in text form.
    pub daddr: String,
    /// Remote port.
    pub dport: u16,
}

/// Payload of a `net_listen` event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenData {
    /// Address family, as in [`ConnectionData`].
    pub family: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// Bound address in text form, empty when unknown.
    pub addr: String,
    /// Bound port.
    pub port: u16,
}

/// Payload of a `mount` event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountData {
    /// Mount source (device or pseudo name).
    pub source: String,
    /// Mount point.
    pub target: String,
    /// Filesystem type.
    pub fstype: String,
}

/// Payload of a `memfd_create` event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemfdData {
    /// Name given to memfd_create.
    pub name: String,
    /// memfd_create flags.
    pub memfd_flags: u32,
}

/// Per-kind event payload.
#[derive(Clone, Debug, PartialEq)]
pub enum EventData {
    /// See [`ExecData`].
    Exec(ExecData),
    /// Exit code (or signal number + 128 when killed by a signal).
    Exit(i32),
    /// Pid of the new child.
    Fork(u32),
    /// See [`FileOpenData`].
    FileOpen(FileOpenData),
    /// See [`FileRenameData`].
    FileRename(FileRenameData),
    /// Path unlinked.
    FileUnlink(String),
    /// See [`FileChmodData`].
    FileChmod(FileChmodData),
    /// See [`FileChownData`].
    FileChown(FileChownData),
    /// See [`FileLinkData`].
    FileLink(FileLinkData),
    /// See [`ConnectionData`].
    NetConnect(ConnectionData),
    /// See [`ConnectionData`].
    NetAccept(ConnectionData),
    /// See [`ListenData`].
    NetListen(ListenData),
    /// New user id.
    Setuid(u32),
    /// New group id.
    Setgid(u32),
    /// See [`PtraceData`].
    Ptrace(PtraceData),
    /// Module name, or the file path for finit_module when known.
    ModuleLoad(String),
    /// See [`MountData`].
    Mount(MountData),
    /// See [`MemfdData`].
    MemfdCreate(MemfdData),
    /// bpf() command number (BPF_PROG_LOAD = 5, ...).
    Bpf(u32),
    /// See [`SocketData`].
    Socket(SocketData),
    /// See [`FdDupData`].
    FdDup(FdDupData),
}

/// One event of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Time of the event, ns since the Unix epoch.
    pub ts_ns: u64,
    /// Index of the event's process in [`EventBatch::processes`].
    pub process: u32,
    /// What happened.
    pub data: EventData,
}

/// A batch of events with its process table, as a detector's tests build it
/// ([`EventBatch::push`]) and [`crate::run_batch`] runs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventBatch {
    /// Distinct processes referenced by `events`.
    pub processes: Vec<Process>,
    /// Events in the order they happened (per process).
    pub events: Vec<Event>,
}

/// An alert as a responder receives it: the detector's alert with its context.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutedAlert {
    /// Host-assigned unique alert id (used as the idempotency key and in the audit log).
    pub id: String,
    /// Name of the plugin that raised it ("palisade" for host alerts).
    pub plugin: String,
    /// That plugin's version.
    pub plugin_version: String,
    /// Time the alert was raised, ns since the Unix epoch.
    pub ts_ns: u64,
    /// The alert itself (its `event_index` is meaningless here).
    pub alert: Alert,
    /// The process of the triggering event, when there is one.
    pub process: Option<Process>,
    /// The triggering event's payload, when there is one.
    pub event: Option<EventData>,
}
