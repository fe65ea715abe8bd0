//! Builders and helpers on the contract types: plugin descriptions, subscriptions, alert
//! filters, alerts, processes, events and configuration values.
//!
//! Types without strings in events are generated from `wit/plugin.wit` in [`crate::bindings`],
//! so a description or alert built here is exactly what crosses the component boundary. The
//! string-carrying event types are the SDK's own ([`crate::model`]); [`crate::wire`] converts.

use core::fmt;

use crate::bindings::palisade::plugin::types::{
    Alert, AlertFilter, Capability, ConfigValue, EventKind, PluginInfo, PluginKind, Priority,
    Subscription,
};
use crate::matching::PathSet;
use crate::model::{Ancestor, Event, EventBatch, EventData, Process, RoutedAlert};

impl EventKind {
    /// Every event kind, in WIT order. `Subscription::to(EventKind::ALL)` subscribes to everything.
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

    /// The snake_case name used in the replay JSON (`"file_open"`).
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
}

impl Priority {
    /// Every priority, most severe first.
    pub const ALL: [Priority; 8] = [
        Priority::Emergency,
        Priority::Alert,
        Priority::Critical,
        Priority::Error,
        Priority::Warning,
        Priority::Notice,
        Priority::Informational,
        Priority::Debug,
    ];

    /// Lower-case name (`"critical"`), as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Emergency => "emergency",
            Priority::Alert => "alert",
            Priority::Critical => "critical",
            Priority::Error => "error",
            Priority::Warning => "warning",
            Priority::Notice => "notice",
            Priority::Informational => "informational",
            Priority::Debug => "debug",
        }
    }

    /// Parses a name case-insensitively; also takes Falco's `"info"` for informational.
    pub fn parse(name: &str) -> Option<Priority> {
        let lower = name.trim().to_ascii_lowercase();
        if lower == "info" {
            return Some(Priority::Informational);
        }
        Priority::ALL.into_iter().find(|p| p.as_str() == lower)
    }

    /// True when `self` is as severe as `min` or more (emergency is the most severe).
    pub fn is_at_least(self, min: Priority) -> bool {
        // The generated enum orders by declaration: emergency < alert < ... < debug.
        self <= min
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PluginInfo {
    fn base(kind: PluginKind, name: &str, version: &str, description: &str) -> Self {
        PluginInfo {
            name: name.to_string(),
            version: version.to_string(),
            kind,
            description: description.to_string(),
            subscriptions: Vec::new(),
            alert_filter: None,
            capabilities: Vec::new(),
            default_config: Vec::new(),
        }
    }

    /// A detector's description; add subscriptions with [`PluginInfo::subscribe`].
    pub fn detector(name: &str, version: &str, description: &str) -> Self {
        Self::base(PluginKind::Detector, name, version, description)
    }

    /// A responder's description; set the alerts it takes with [`PluginInfo::alerts`] and the
    /// capabilities it asks for with [`PluginInfo::capability`].
    pub fn responder(name: &str, version: &str, description: &str) -> Self {
        Self::base(PluginKind::Responder, name, version, description)
    }

    /// Adds a subscription (the host routes the union of a detector's subscriptions).
    pub fn subscribe(mut self, subscription: Subscription) -> Self {
        self.subscriptions.push(subscription);
        self
    }

    /// Sets the alert filter of a responder.
    pub fn alerts(mut self, filter: AlertFilter) -> Self {
        self.alert_filter = Some(filter);
        self
    }

    /// Requests a capability (the operator grants a subset).
    pub fn capability(mut self, capability: Capability) -> Self {
        if !self.capabilities.contains(&capability) {
            self.capabilities.push(capability);
        }
        self
    }

    /// Requests several capabilities.
    pub fn capabilities(self, capabilities: impl IntoIterator<Item = Capability>) -> Self {
        capabilities.into_iter().fold(self, PluginInfo::capability)
    }

    /// Declares a configuration key and its default value; the sidecar's `[config]` overrides it.
    pub fn config(mut self, key: &str, default: impl Into<ConfigValue>) -> Self {
        let value = default.into();
        match self.default_config.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.default_config.push((key.to_string(), value)),
        }
        self
    }
}

/// Every capability, in WIT order.
pub const ALL_CAPABILITIES: [Capability; 7] = [
    Capability::KillProcess,
    Capability::BlockExec,
    Capability::DenyOpen,
    Capability::NetworkQuarantine,
    Capability::Freeze,
    Capability::QuarantineFile,
    Capability::Notify,
];

impl Subscription {
    /// A subscription to these kinds, with no predicates yet (every event of those kinds).
    pub fn to(kinds: impl IntoIterator<Item = EventKind>) -> Self {
        Subscription {
            kinds: kinds.into_iter().collect(),
            paths: Vec::new(),
            path_prefixes: Vec::new(),
            comms: Vec::new(),
            exes: Vec::new(),
            ports: Vec::new(),
            uid_min: None,
            uid_max: None,
        }
    }

    /// Every event of every kind.
    pub fn all() -> Self {
        Self::to(EventKind::ALL)
    }

    /// Adds an exact path.
    pub fn path(mut self, path: &str) -> Self {
        self.paths.push(path.to_string());
        self
    }

    /// Adds exact paths.
    pub fn paths<S: AsRef<str>>(mut self, paths: impl IntoIterator<Item = S>) -> Self {
        self.paths
            .extend(paths.into_iter().map(|p| p.as_ref().to_string()));
        self
    }

    /// Adds a path prefix.
    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.path_prefixes.push(prefix.to_string());
        self
    }

    /// Adds path prefixes.
    pub fn path_prefixes<S: AsRef<str>>(mut self, prefixes: impl IntoIterator<Item = S>) -> Self {
        self.path_prefixes
            .extend(prefixes.into_iter().map(|p| p.as_ref().to_string()));
        self
    }

    /// Adds the exact paths and prefixes that cover every pattern of `set` (a glob contributes
    /// the literal part before its first wildcard as a prefix).
    pub fn path_set(mut self, set: &PathSet) -> Self {
        let (exact, prefixes) = set.subscription_predicates();
        self.paths.extend(exact);
        self.path_prefixes.extend(prefixes);
        self
    }

    /// Adds process command names.
    pub fn comms<S: AsRef<str>>(mut self, comms: impl IntoIterator<Item = S>) -> Self {
        self.comms
            .extend(comms.into_iter().map(|c| c.as_ref().to_string()));
        self
    }

    /// Adds executable paths.
    pub fn exes<S: AsRef<str>>(mut self, exes: impl IntoIterator<Item = S>) -> Self {
        self.exes
            .extend(exes.into_iter().map(|e| e.as_ref().to_string()));
        self
    }

    /// Adds ports.
    pub fn ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.ports.extend(ports);
        self
    }

    /// Restricts to real uids in `min..=max`.
    pub fn uid_range(mut self, min: u32, max: u32) -> Self {
        self.uid_min = Some(min);
        self.uid_max = Some(max);
        self
    }
}

impl AlertFilter {
    /// Alerts at `min` or more severe, any rule, any tag.
    pub fn at_least(min: Priority) -> Self {
        AlertFilter {
            min_priority: min,
            rules: Vec::new(),
            tags: Vec::new(),
        }
    }

    /// Adds a rule-id glob (`*`, `?`).
    pub fn rule(mut self, glob: &str) -> Self {
        self.rules.push(glob.to_string());
        self
    }

    /// Adds a tag; the alert must carry at least one of the listed tags.
    pub fn tag(mut self, tag: &str) -> Self {
        self.tags.push(tag.to_string());
        self
    }
}

impl Alert {
    /// A new alert. The event it belongs to is set by [`crate::Alerts::push`].
    pub fn new(rule: impl Into<String>, priority: Priority, message: impl Into<String>) -> Self {
        Alert {
            rule: rule.into(),
            priority,
            message: message.into(),
            tags: Vec::new(),
            fields: Vec::new(),
            event_index: 0,
        }
    }

    /// Adds a tag (MITRE ATT&CK ids welcome: `"T1003.008"`).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds several tags.
    pub fn tags<S: Into<String>>(mut self, tags: impl IntoIterator<Item = S>) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Adds a key/value field; any `Display` value is accepted.
    pub fn field(mut self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        self.fields.push((key.into(), value.to_string()));
        self
    }

    /// Adds the usual process fields (Falco's names): `proc.pid`, `proc.ppid`, `proc.exe`,
    /// `proc.name`, `proc.cmdline`, `proc.pname`, `user.uid`, `container.id`.
    pub fn process_fields(self, process: &Process) -> Self {
        self.field("proc.pid", process.pid)
            .field("proc.ppid", process.ppid)
            .field("proc.exe", &process.exe)
            .field("proc.name", &process.comm)
            .field("proc.cmdline", process.cmdline())
            .field(
                "proc.pname",
                process.parent().map(|a| a.comm.as_str()).unwrap_or(""),
            )
            .field("user.uid", process.uid)
            .field(
                "container.id",
                process.container_id.as_deref().unwrap_or("host"),
            )
    }

    /// The value of field `key`, if set.
    pub fn get_field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// True when the alert carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

impl RoutedAlert {
    /// Shortcut for the alert's rule id.
    pub fn rule(&self) -> &str {
        &self.alert.rule
    }

    /// Shortcut for the alert's priority.
    pub fn priority(&self) -> Priority {
        self.alert.priority
    }

    /// `[PRIORITY] rule: message`, the head of a notification about this alert.
    pub fn headline(&self) -> String {
        format!(
            "[{}] {}: {}",
            self.alert.priority.as_str().to_ascii_uppercase(),
            self.alert.rule,
            self.alert.message
        )
    }
}

impl Process {
    /// A process with the given identity and everything else empty (mostly for tests).
    pub fn new(pid: u32, comm: &str, exe: &str) -> Self {
        Process {
            pid,
            tid: pid,
            comm: comm.to_string(),
            exe: exe.to_string(),
            ..Process::default()
        }
    }

    /// Sets the argument vector (builder style).
    pub fn with_args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args = args.into_iter().map(|a| a.as_ref().to_string()).collect();
        self
    }

    /// Appends an ancestor (call parent first, then grandparent, ...); the first sets `ppid`.
    pub fn with_ancestor(mut self, pid: u32, comm: &str, exe: &str) -> Self {
        if self.ancestors.is_empty() {
            self.ppid = pid;
        }
        self.ancestors.push(Ancestor {
            pid,
            comm: comm.to_string(),
            exe: exe.to_string(),
        });
        self
    }

    /// Sets the real and effective uid.
    pub fn with_uid(mut self, uid: u32) -> Self {
        self.uid = uid;
        self.euid = uid;
        self
    }

    /// Sets the container id.
    pub fn with_container(mut self, id: &str) -> Self {
        self.container_id = Some(id.to_string());
        self
    }

    /// The parent, when the host captured it.
    pub fn parent(&self) -> Option<&Ancestor> {
        self.ancestors.first()
    }

    /// The file name of the executable, or the comm when the exe is unknown.
    pub fn exe_name(&self) -> &str {
        match self.exe.rsplit('/').next() {
            Some(name) if !name.is_empty() => name,
            _ => &self.comm,
        }
    }

    /// The command line: arguments joined by spaces (the comm when no argument was captured).
    pub fn cmdline(&self) -> String {
        if self.args.is_empty() {
            self.comm.clone()
        } else {
            self.args.join(" ")
        }
    }
}

impl Ancestor {
    /// The file name of the executable, or the comm when the exe is unknown.
    pub fn exe_name(&self) -> &str {
        match self.exe.rsplit('/').next() {
            Some(name) if !name.is_empty() => name,
            _ => &self.comm,
        }
    }
}

impl EventData {
    /// The kind of this payload.
    pub fn kind(&self) -> EventKind {
        match self {
            EventData::Exec(_) => EventKind::Exec,
            EventData::Exit(_) => EventKind::Exit,
            EventData::Fork(_) => EventKind::Fork,
            EventData::FileOpen(_) => EventKind::FileOpen,
            EventData::FileRename(_) => EventKind::FileRename,
            EventData::FileUnlink(_) => EventKind::FileUnlink,
            EventData::FileChmod(_) => EventKind::FileChmod,
            EventData::FileChown(_) => EventKind::FileChown,
            EventData::FileLink(_) => EventKind::FileLink,
            EventData::NetConnect(_) => EventKind::NetConnect,
            EventData::NetAccept(_) => EventKind::NetAccept,
            EventData::NetListen(_) => EventKind::NetListen,
            EventData::Setuid(_) => EventKind::Setuid,
            EventData::Setgid(_) => EventKind::Setgid,
            EventData::Ptrace(_) => EventKind::Ptrace,
            EventData::ModuleLoad(_) => EventKind::ModuleLoad,
            EventData::Mount(_) => EventKind::Mount,
            EventData::MemfdCreate(_) => EventKind::MemfdCreate,
            EventData::Bpf(_) => EventKind::Bpf,
            EventData::Socket(_) => EventKind::Socket,
            EventData::FdDup(_) => EventKind::FdDup,
        }
    }

    /// The main path of the event: the opened, unlinked, chmod/chown'd or created path, the new
    /// name of a rename, the exec'd filename, the mount target. None for other kinds.
    pub fn path(&self) -> Option<&str> {
        match self {
            EventData::Exec(d) => Some(&d.filename),
            EventData::FileOpen(d) => Some(&d.path),
            EventData::FileRename(d) => Some(&d.to),
            EventData::FileUnlink(p) => Some(p),
            EventData::FileChmod(d) => Some(&d.path),
            EventData::FileChown(d) => Some(&d.path),
            EventData::FileLink(d) => Some(&d.link),
            EventData::Mount(d) => Some(&d.target),
            EventData::ModuleLoad(name) if name.starts_with('/') => Some(name),
            _ => None,
        }
    }
}

impl EventBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an event of `process`, sharing the process entry with earlier events of the same
    /// process (same pid and start time), as the host does. Returns the event's index.
    pub fn push(&mut self, process: &Process, ts_ns: u64, data: EventData) -> u32 {
        let idx = match self
            .processes
            .iter()
            .position(|p| p.pid == process.pid && p.start_ns == process.start_ns)
        {
            Some(i) => i,
            None => {
                self.processes.push(process.clone());
                self.processes.len() - 1
            }
        };
        self.events.push(Event {
            ts_ns,
            process: idx as u32,
            data,
        });
        (self.events.len() - 1) as u32
    }
}

macro_rules! config_value_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl From<$t> for ConfigValue {
            fn from($v: $t) -> Self { $e }
        })*
    };
}

config_value_from! {
    &str => |v| ConfigValue::Text(v.to_string()),
    String => |v| ConfigValue::Text(v),
    i64 => |v| ConfigValue::Integer(v),
    i32 => |v| ConfigValue::Integer(i64::from(v)),
    u32 => |v| ConfigValue::Integer(i64::from(v)),
    bool => |v| ConfigValue::Boolean(v),
    f64 => |v| ConfigValue::Float(v),
    Vec<String> => |v| ConfigValue::TextList(v),
    Vec<&str> => |v| ConfigValue::TextList(v.into_iter().map(str::to_string).collect()),
    &[&str] => |v| ConfigValue::TextList(v.iter().map(|s| s.to_string()).collect()),
    Vec<i64> => |v| ConfigValue::IntegerList(v),
}

impl<const N: usize> From<[&str; N]> for ConfigValue {
    fn from(v: [&str; N]) -> Self {
        ConfigValue::TextList(v.iter().map(|s| s.to_string()).collect())
    }
}

impl ConfigValue {
    /// The type name used in error messages (`"text"`, `"text-list"`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            ConfigValue::Text(_) => "text",
            ConfigValue::Integer(_) => "integer",
            ConfigValue::Float(_) => "float",
            ConfigValue::Boolean(_) => "boolean",
            ConfigValue::TextList(_) => "text-list",
            ConfigValue::IntegerList(_) => "integer-list",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExecData, FileRenameData, MountData};

    #[test]
    fn priority_order_parse_and_names() {
        assert!(Priority::Critical.is_at_least(Priority::Error));
        assert!(Priority::Error.is_at_least(Priority::Error));
        assert!(!Priority::Warning.is_at_least(Priority::Error));
        assert_eq!(Priority::parse("CRITICAL"), Some(Priority::Critical));
        assert_eq!(Priority::parse("info"), Some(Priority::Informational));
        assert_eq!(Priority::parse("loud"), None);
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
        }
    }

    #[test]
    fn event_kind_names_match_the_replay_schema() {
        assert_eq!(EventKind::ALL.len(), 21);
        assert_eq!(EventKind::FileOpen.as_str(), "file_open");
        assert_eq!(EventKind::FdDup.to_string(), "fd_dup");
        let mut names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 21, "names are distinct");
    }

    #[test]
    fn plugin_info_builders() {
        let info = PluginInfo::detector("x", "1.0.0", "d")
            .subscribe(Subscription::all().uid_range(1000, 2000))
            .config("k", 1)
            .config("k", "two")
            .config("list", ["a"]);
        assert_eq!(info.kind, PluginKind::Detector);
        assert_eq!(info.subscriptions[0].kinds.len(), 21);
        assert_eq!(info.subscriptions[0].uid_min, Some(1000));
        assert_eq!(
            info.default_config,
            vec![
                ("k".to_string(), ConfigValue::Text("two".into())),
                ("list".to_string(), ConfigValue::TextList(vec!["a".into()])),
            ]
        );
        let resp = PluginInfo::responder("r", "1.0.0", "d")
            .alerts(
                AlertFilter::at_least(Priority::Error)
                    .rule("shell-*")
                    .tag("T1059"),
            )
            .capability(Capability::Notify)
            .capabilities(ALL_CAPABILITIES);
        assert_eq!(resp.kind, PluginKind::Responder);
        assert_eq!(resp.capabilities.len(), 7, "no duplicates");
        let filter = resp.alert_filter.unwrap();
        assert_eq!(
            (filter.rules, filter.tags),
            (vec!["shell-*".into()], vec!["T1059".into()])
        );
    }

    #[test]
    fn alert_builder_and_process_fields() {
        let p = Process::new(42, "cat", "/usr/bin/cat")
            .with_args(["cat", "/etc/shadow"])
            .with_ancestor(7, "bash", "/bin/bash")
            .with_ancestor(1, "systemd", "/usr/lib/systemd/systemd")
            .with_uid(1000);
        let a = Alert::new("r", Priority::Warning, "m")
            .tag("T1")
            .tags(["T2"])
            .field("n", 5)
            .process_fields(&p);
        assert!(a.has_tag("T2"));
        assert_eq!(a.get_field("n"), Some("5"));
        assert_eq!(a.get_field("proc.ppid"), Some("7"));
        assert_eq!(a.get_field("proc.pname"), Some("bash"));
        assert_eq!(a.get_field("proc.cmdline"), Some("cat /etc/shadow"));
        assert_eq!(a.get_field("user.uid"), Some("1000"));
        assert_eq!(a.get_field("container.id"), Some("host"));
        assert_eq!(p.exe_name(), "cat");
        assert_eq!(Process::new(1, "kworker", "").exe_name(), "kworker");
        assert_eq!(Process::new(1, "x", "").cmdline(), "x");
    }

    #[test]
    fn event_paths_and_kinds() {
        let exec = EventData::Exec(ExecData {
            filename: "/bin/sh".into(),
            args: vec![],
            args_truncated: false,
        });
        assert_eq!(
            (exec.kind(), exec.path()),
            (EventKind::Exec, Some("/bin/sh"))
        );
        let rename = EventData::FileRename(FileRenameData {
            from: "/a".into(),
            to: "/b".into(),
        });
        assert_eq!(rename.path(), Some("/b"));
        let mount = EventData::Mount(MountData {
            source: "x".into(),
            target: "/mnt".into(),
            fstype: "tmpfs".into(),
        });
        assert_eq!(mount.path(), Some("/mnt"));
        assert_eq!(EventData::ModuleLoad("nf_tables".into()).path(), None);
        assert_eq!(EventData::ModuleLoad("/x.ko".into()).path(), Some("/x.ko"));
        assert_eq!(EventData::Exit(0).path(), None);
    }

    #[test]
    fn batch_push_shares_processes() {
        let mut b = EventBatch::new();
        let p = Process::new(1, "a", "/a");
        let q = Process::new(2, "b", "/b");
        assert_eq!(b.push(&p, 1, EventData::Exit(0)), 0);
        assert_eq!(b.push(&q, 2, EventData::Exit(0)), 1);
        assert_eq!(b.push(&p, 3, EventData::Exit(0)), 2);
        assert_eq!(b.processes.len(), 2);
        assert_eq!(
            b.events.iter().map(|e| e.process).collect::<Vec<_>>(),
            vec![0, 1, 0]
        );
    }
}
