//! `sensitive-files`: alerts when a program that is not on an allow-list opens a credential or
//! privilege file: reading (`sensitive-file-read`) or writing (`sensitive-file-write`).
//!
//! Reads of shadow/sudoers/ssh keys by anything but the login machinery hint at credential
//! dumping (T1003.008, T1552.004); writes to them, or to /etc/passwd and /etc/group, hint at
//! persistence or privilege escalation (T1098, T1098.004, T1548.003). The subscription asks
//! the host for file_open events of the default paths only; the `paths` / `write-paths` config
//! can narrow the set, and paths outside the defaults also need a subscription override in the
//! sidecar (describe() must not depend on config).

use palisade_sdk::{
    open_flags, Alert, Alerts, Config, Detector, EventKind, EventRef, FileOpenData, NameSet,
    PathSet, PluginInfo, Priority, Process, Subscription,
};

/// Files whose mere reading by an unexpected program is suspicious (writing them is too).
const DEFAULT_PATHS: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/sudoers",
    "/etc/sudoers.d/*",
    "/root/.ssh/*",
    "/etc/ssh/ssh_host_*_key",
];

/// Files that are world-readable by design but must only be written by account tools.
const DEFAULT_WRITE_PATHS: &[&str] = &["/etc/passwd", "/etc/group"];

/// Programs that read the files above as part of authentication and account management.
const DEFAULT_ALLOWED_READERS: &[&str] = &[
    "sshd",
    "sshd-session",
    "sshd-auth",
    "login",
    "su",
    "sudo",
    "passwd",
    "unix_chkpwd",
    "chpasswd",
    "chage",
    "gpasswd",
    "newgrp",
    "useradd",
    "usermod",
    "userdel",
    "groupadd",
    "groupmod",
    "groupdel",
    "vipw",
    "vigr",
    "visudo",
    "pwck",
    "grpck",
    "pwconv",
    "grpconv",
    "cron",
    "crond",
    "systemd-logind",
    "polkitd",
    "accounts-daemon",
    "nscd",
    "sssd",
    // debconf's pre-configuration step of every apt-get install reads the shadow files (its
    // comm is cut to 15 characters).
    "dpkg-preconfigure",
    "dpkg-preconfigu",
];

/// Programs that legitimately rewrite account and sudo files.
const DEFAULT_ALLOWED_WRITERS: &[&str] = &[
    "passwd",
    "chpasswd",
    "chage",
    "chfn",
    "chsh",
    "gpasswd",
    "useradd",
    "usermod",
    "userdel",
    "groupadd",
    "groupmod",
    "groupdel",
    "vipw",
    "vigr",
    "visudo",
    "pwconv",
    "grpconv",
    "pwunconv",
    "grpunconv",
];

const KNOWN_KEYS: &[&str] = &[
    "paths",
    "write-paths",
    "allowed-readers",
    "allowed-writers",
    "read-priority",
    "write-priority",
    "include-failed",
];

/// The detector; see the crate docs.
pub struct SensitiveFiles {
    paths: PathSet,
    write_paths: PathSet,
    readers: NameSet,
    writers: NameSet,
    read_priority: Priority,
    write_priority: Priority,
    include_failed: bool,
}

/// MITRE ATT&CK technique for a read of `path`.
fn read_technique(path: &str) -> &'static str {
    if path.contains("/.ssh/") || path.starts_with("/etc/ssh/") {
        "T1552.004" // Unsecured Credentials: Private Keys
    } else if path.starts_with("/etc/sudoers") {
        "T1548.003" // Abuse Elevation Control: Sudo and Sudo Caching
    } else {
        "T1003.008" // OS Credential Dumping: /etc/passwd and /etc/shadow
    }
}

/// MITRE ATT&CK technique for a write to `path`.
fn write_technique(path: &str) -> &'static str {
    if path.contains("/.ssh/") {
        "T1098.004" // Account Manipulation: SSH Authorized Keys
    } else if path.starts_with("/etc/sudoers") {
        "T1548.003"
    } else {
        "T1098" // Account Manipulation (passwd, group, shadow)
    }
}

fn describe_process(p: &Process) -> String {
    let exe = if p.exe.is_empty() {
        p.comm.as_str()
    } else {
        p.exe.as_str()
    };
    format!(
        "{exe} (pid {}, uid {}, cmdline \"{}\", container {})",
        p.pid,
        p.uid,
        p.cmdline(),
        p.container_id.as_deref().unwrap_or("host")
    )
}

impl SensitiveFiles {
    fn alert(&self, open: &FileOpenData, process: &Process, write: bool) -> Alert {
        let (rule, priority, verb, technique, tactic) = if write {
            (
                "sensitive-file-write",
                self.write_priority,
                "opened for writing",
                write_technique(&open.path),
                "mitre_persistence",
            )
        } else {
            (
                "sensitive-file-read",
                self.read_priority,
                "read",
                read_technique(&open.path),
                "mitre_credential_access",
            )
        };
        let mut alert = Alert::new(
            rule,
            priority,
            format!(
                "Sensitive file {} {verb} by {}",
                open.path,
                describe_process(process)
            ),
        )
        .tag(technique)
        .tag(tactic)
        .tag("filesystem")
        .field("path", &open.path)
        .field("flags", open_flags::describe(open.open_flags));
        if let Some(result) = open.result {
            alert = alert.field("result", result);
        }
        alert.process_fields(process)
    }
}

impl Detector for SensitiveFiles {
    fn describe() -> PluginInfo {
        let all = PathSet::new(DEFAULT_PATHS.iter().chain(DEFAULT_WRITE_PATHS));
        PluginInfo::detector(
            "sensitive-files",
            env!("CARGO_PKG_VERSION"),
            "Credential and privilege files (shadow, sudoers, ssh keys, passwd) opened by a program not on the allow-list",
        )
        .subscribe(Subscription::to([EventKind::FileOpen]).path_set(&all))
        .config("paths", DEFAULT_PATHS)
        .config("write-paths", DEFAULT_WRITE_PATHS)
        .config("allowed-readers", DEFAULT_ALLOWED_READERS)
        .config("allowed-writers", DEFAULT_ALLOWED_WRITERS)
        .config("read-priority", "warning")
        .config("write-priority", "critical")
        .config("include-failed", true)
    }

    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(KNOWN_KEYS)?;
        Ok(SensitiveFiles {
            paths: PathSet::new(config.text_list_or("paths", DEFAULT_PATHS)?),
            write_paths: PathSet::new(config.text_list_or("write-paths", DEFAULT_WRITE_PATHS)?),
            readers: NameSet::new(config.text_list_or("allowed-readers", DEFAULT_ALLOWED_READERS)?),
            writers: NameSet::new(config.text_list_or("allowed-writers", DEFAULT_ALLOWED_WRITERS)?),
            read_priority: config.priority_or("read-priority", Priority::Warning)?,
            write_priority: config.priority_or("write-priority", Priority::Critical)?,
            include_failed: config.boolean_or("include-failed", true)?,
        })
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        let Some(open) = event.file_open() else {
            return;
        };
        if !self.include_failed && open.result.is_some_and(|r| r < 0) {
            return;
        }
        let write = open.is_write();
        let sensitive = self.paths.matches(&open.path);
        if write {
            if (sensitive || self.write_paths.matches(&open.path))
                && !self.writers.matches_process(event.process)
            {
                alerts.push(self.alert(open, event.process, true));
            }
        } else if sensitive && !self.readers.matches_process(event.process) {
            alerts.push(self.alert(open, event.process, false));
        }
    }
}

palisade_sdk::export_detector!(SensitiveFiles);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_sdk::{run_batch, EventBatch, EventData};

    fn open(path: &str, flags: u32) -> EventData {
        EventData::FileOpen(FileOpenData {
            path: path.into(),
            open_flags: flags,
            mode: 0,
            result: Some(3),
        })
    }

    fn detector(config: Config) -> SensitiveFiles {
        let mut merged = Config::new(SensitiveFiles::describe().default_config);
        for key in config.keys() {
            if let Some(v) = config.get(key) {
                merged = merged.with(key, v.clone());
            }
        }
        SensitiveFiles::init(merged).unwrap()
    }

    fn run(det: &mut SensitiveFiles, events: &[(&Process, EventData)]) -> Vec<Alert> {
        let mut batch = EventBatch::new();
        for (i, (p, d)) in events.iter().enumerate() {
            batch.push(p, i as u64, d.clone());
        }
        run_batch(det, &batch)
    }

    #[test]
    fn reads_by_unexpected_programs_alert_as_warning() {
        let cat = Process::new(10, "cat", "/usr/bin/cat")
            .with_args(["cat", "/etc/shadow"])
            .with_uid(0);
        let sshd = Process::new(11, "sshd", "/usr/sbin/sshd");
        let mut det = detector(Config::default());
        let alerts = run(
            &mut det,
            &[
                (&cat, open("/etc/shadow", 0)),
                (&sshd, open("/etc/shadow", 0)),
                (&cat, open("/etc/hostname", 0)),
                (&cat, open("/etc/sudoers.d/90-cloud-init-users", 0)),
                (&cat, open("/root/.ssh/id_ed25519", 0)),
                (&cat, open("/etc/passwd", 0)),
            ],
        );
        let got: Vec<(&str, u32, &str)> = alerts
            .iter()
            .map(|a| (a.rule.as_str(), a.event_index, a.tags[0].as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("sensitive-file-read", 0, "T1003.008"),
                ("sensitive-file-read", 3, "T1548.003"),
                ("sensitive-file-read", 4, "T1552.004"),
            ]
        );
        let a = &alerts[0];
        assert_eq!(a.priority, Priority::Warning);
        assert_eq!(a.get_field("path"), Some("/etc/shadow"));
        assert_eq!(a.get_field("flags"), Some("O_RDONLY"));
        assert_eq!(a.get_field("proc.exe"), Some("/usr/bin/cat"));
        assert_eq!(a.get_field("proc.cmdline"), Some("cat /etc/shadow"));
        assert_eq!(a.get_field("user.uid"), Some("0"));
        assert_eq!(a.get_field("container.id"), Some("host"));
        assert_eq!(
            a.message,
            "Sensitive file /etc/shadow read by /usr/bin/cat (pid 10, uid 0, cmdline \"cat /etc/shadow\", container host)"
        );
    }

    #[test]
    fn writes_alert_as_critical_including_passwd() {
        let sh = Process::new(20, "sh", "/bin/sh").with_container("abc123");
        let passwd = Process::new(21, "passwd", "/usr/bin/passwd");
        let sshd = Process::new(22, "sshd", "/usr/sbin/sshd");
        let mut det = detector(Config::default());
        let w = open_flags::O_WRONLY | open_flags::O_CREAT | open_flags::O_TRUNC;
        let alerts = run(
            &mut det,
            &[
                (
                    &sh,
                    open("/etc/passwd", open_flags::O_WRONLY | open_flags::O_APPEND),
                ),
                (&passwd, open("/etc/shadow", w)),
                (&sshd, open("/etc/shadow", open_flags::O_RDWR)),
                (&sh, open("/root/.ssh/authorized_keys", w)),
                (&sh, open("/etc/group", open_flags::O_CREAT)),
            ],
        );
        let got: Vec<(&str, u32, Priority, &str)> = alerts
            .iter()
            .map(|a| {
                (
                    a.rule.as_str(),
                    a.event_index,
                    a.priority,
                    a.tags[0].as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("sensitive-file-write", 0, Priority::Critical, "T1098"),
                ("sensitive-file-write", 2, Priority::Critical, "T1098"),
                ("sensitive-file-write", 3, Priority::Critical, "T1098.004"),
                ("sensitive-file-write", 4, Priority::Critical, "T1098"),
            ]
        );
        assert_eq!(alerts[0].get_field("flags"), Some("O_WRONLY|O_APPEND"));
        assert_eq!(alerts[0].get_field("container.id"), Some("abc123"));
    }

    #[test]
    fn config_changes_lists_priorities_and_failed_opens() {
        let cat = Process::new(10, "cat", "/usr/bin/cat");
        let mut det = detector(
            Config::default()
                .with("allowed-readers", ["cat"])
                .with("read-priority", "notice")
                .with("include-failed", false),
        );
        assert!(run(&mut det, &[(&cat, open("/etc/shadow", 0))]).is_empty());
        let vim = Process::new(11, "vim", "/usr/bin/vim");
        let alerts = run(&mut det, &[(&vim, open("/etc/gshadow", 0))]);
        assert_eq!(alerts[0].priority, Priority::Notice);
        let failed = EventData::FileOpen(FileOpenData {
            path: "/etc/gshadow".into(),
            open_flags: 0,
            mode: 0,
            result: Some(-13),
        });
        assert!(run(&mut det, &[(&vim, failed)]).is_empty());
    }

    #[test]
    fn bad_config_is_rejected_with_the_key() {
        let err = SensitiveFiles::init(Config::default().with("read-priority", "loud"))
            .err()
            .unwrap();
        assert!(err.contains("`read-priority`"), "{err}");
        let err = SensitiveFiles::init(Config::default().with("pathz", ["/x"]))
            .err()
            .unwrap();
        assert!(err.contains("`pathz`"), "{err}");
    }

    #[test]
    fn subscription_covers_every_default_path() {
        let info = SensitiveFiles::describe();
        let sub = &info.subscriptions[0];
        assert_eq!(sub.kinds, vec![EventKind::FileOpen]);
        assert!(sub.paths.contains(&"/etc/shadow".to_string()));
        assert!(sub.paths.contains(&"/etc/passwd".to_string()));
        assert!(sub.path_prefixes.contains(&"/etc/sudoers.d/".to_string()));
        assert!(sub.path_prefixes.contains(&"/root/.ssh/".to_string()));
        assert!(sub
            .path_prefixes
            .contains(&"/etc/ssh/ssh_host_".to_string()));
    }
}
