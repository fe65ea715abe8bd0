//! `falco-files`: the file rules of Falco's stable set, as Palisade detectors.
//!
//! | rule id | Falco rule | priority |
//! |---|---|---|
//! | `read-sensitive-file-untrusted` | Read sensitive file untrusted | warning |
//! | `read-sensitive-file-trusted-after-startup` | Read sensitive file trusted after startup | warning |
//! | `directory-traversal-monitored-file-read` | Directory traversal monitored file read | warning |
//! | `clear-log-activities` | Clear Log Activities | warning |
//! | `create-symlink-over-sensitive-files` | Create Symlink Over Sensitive Files | warning |
//! | `create-hardlink-over-sensitive-files` | Create Hardlink Over Sensitive Files | warning |
//!
//! "After startup" needs the server's start time in event time: the plugin remembers when it saw
//! a server process exec (host `state`, so it survives reloads); a server whose exec it never
//! saw started before the daemon and is past its startup by definition.

use std::time::Duration;

use pack_common::{describe_process, is_shell_name, lineage, with_context};
use palisade_sdk::{
    open_flags, state, Alert, Alerts, Config, Detector, EventKind, EventRef, FileLinkData,
    FileOpenData, NameSet, PathSet, PluginInfo, Priority, Process, Subscription,
};

/// Falco's `sensitive_file_names` and `sensitive_files` directories.
const SENSITIVE_FILES: &[&str] = &[
    "/etc/shadow",
    "/etc/sudoers",
    "/etc/pam.conf",
    "/etc/security/pwquality.conf",
    "/etc/sudoers.d/",
    "/etc/pam.d/",
];
/// Falco's `sensitive_directory_names` (symlink targets).
const SENSITIVE_DIRS: &[&str] = &["/", "/etc", "/etc/", "/root", "/root/"];

/// The union of Falco's exemption lists for `Read sensitive file untrusted` (user management,
/// privilege switching, package managers, cron, HIDS, VPN, mail config, the named daemons).
const TRUSTED_READERS: &[&str] = &[
    "login",
    "systemd-logind",
    "su",
    "sudo",
    "passwd",
    "chpasswd",
    "chage",
    "chfn",
    "chsh",
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
    "pwck",
    "grpck",
    "pwconv",
    "grpconv",
    "unix_chkpwd",
    "sudoedit",
    "suexec",
    "dzdo",
    "runuser",
    "dpkg",
    "dpkg-preconfigu",
    "apt",
    "apt-get",
    "aptitude",
    "rpm",
    "yum",
    "dnf",
    "microdnf",
    "apk",
    "snapd",
    "anacron",
    "cron",
    "crond",
    "crontab",
    "iptables",
    "ps",
    "lsb_release",
    "check-new-relea",
    "dumpe2fs",
    "accounts-daemon",
    "sshd",
    "sshd-session",
    "sshd-auth",
    "vsftpd",
    "systemd",
    "mysql_install_d",
    "psql",
    "screen",
    "debconf-show",
    "sa-update",
    "pam-auth-update",
    "pam-config",
    "spamd",
    "polkit-agent-he",
    "polkitd",
    "lsattr",
    "file",
    "sosreport",
    "cockpit-session",
    "userhelper",
    "ossec-syscheckd",
    "rkhunter",
    "aide",
    "aide.wrapper",
    "update-aide.con",
    "logcheck",
    "syslog-summary",
    "osqueryd",
    "openvpn",
    "postfix",
    "newaliases",
    "postmap",
    "in.proftpd",
    "mandb",
    "salt-call",
    "salt-minion",
    "pg_dumpall",
    "pg_ctl",
    "pg_lsclusters",
    "pg_ctlcluster",
    "google_oslogin_",
    "nscd",
    "sssd",
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "csh",
    "tcsh",
    "ash",
    "(sd-pam)",
    "gdm-session-wor",
    "lightdm",
    "sddm",
    "systemd-userwor",
    "systemd-homed",
];

/// Falco's `server_procs`: servers that may read these files only while starting.
const SERVERS: &[&str] = &[
    "nginx",
    "httpd",
    "httpd-foregroun",
    "lighttpd",
    "apache",
    "apache2",
    "mysqld",
    "postgres",
    "sqlplus",
    "docker",
    "dockerd",
    "containerd-shim",
    "pause",
    "docker-compose",
];

/// Programs that serve untrusted input and may be tricked into `../` reads (the routing
/// predicate of the traversal rule: the raw path does not start with the file it reaches).
const TRAVERSAL_COMMS: &[&str] = &[
    "nginx",
    "httpd",
    "apache2",
    "lighttpd",
    "caddy",
    "php-fpm",
    "php-fpm7.4",
    "php-fpm8.1",
    "php-fpm8.2",
    "php-fpm8.3",
    "php",
    "php-cgi",
    "node",
    "python",
    "python3",
    "java",
    "ruby",
    "perl",
    "uwsgi",
    "gunicorn",
    "puma",
    "tomcat",
];

/// Falco's `log_directories`; `log_files` are matched by name below them.
const LOG_PATHS: &[&str] = &["/var/log/", "/dev/log"];
const LOG_TRUNCATE_ALLOWED: &[&str] = &[
    "logrotate",
    "containerd",
    "apt",
    "apt-get",
    "dpkg",
    "unattended-upgr",
    "systemd-journal",
    "rsyslogd",
    "syslog-ng",
];

/// Shell start-up files (Falco incubating `shell_config_*`); users' own dot files need a
/// subscription override (`/home/*/` cannot be a prefix).
const SHELL_CONFIG_FILES: &[&str] = &[
    "/etc/profile",
    "/etc/profile.d/",
    "/etc/bash.bashrc",
    "/etc/bashrc",
    "/etc/zsh/",
    "/etc/zshrc",
    "/etc/zprofile",
    "/etc/environment",
    "/etc/skel/",
    "/root/.bashrc",
    "/root/.profile",
    "/root/.bash_profile",
    "/root/.bash_login",
    "/root/.zshrc",
    "/root/.zprofile",
    "/root/.zshenv",
];
/// Package managers rewrite these files on upgrades.
const PACKAGE_MANAGERS: &[&str] = &[
    "dpkg",
    "apt",
    "apt-get",
    "rpm",
    "dnf",
    "yum",
    "apk",
    "unattended-upgr",
    "packagekitd",
    "snapd",
];
const CRON_PATHS: &[&str] = &[
    "/etc/crontab",
    "/etc/cron.d/",
    "/etc/cron.daily/",
    "/etc/cron.hourly/",
    "/etc/cron.weekly/",
    "/etc/cron.monthly/",
    "/etc/cron.allow",
    "/etc/cron.deny",
    "/var/spool/cron/",
];
const HISTORY_SUFFIXES: &[&str] = &[
    "ash_history",
    "zsh_history",
    "fish_history",
    "fish_read_history",
    ".python_history",
    ".mysql_history",
    ".psql_history",
];
const HISTORY_DIRS: &[&str] = &["/root/", "/home/"];
const SETUID_ALLOWED: &[&str] = &[
    "dpkg",
    "rpm",
    "dnf",
    "yum",
    "apk",
    "snapd",
    "containerd",
    "dockerd",
    "tar",
    "unattended-upgr",
];

const KNOWN_KEYS: &[&str] = &[
    "shell-config-files",
    "shell-config-allowed",
    "cron-paths",
    "cron-allowed",
    "history-suffixes",
    "setuid-allowed",
    "sensitive-files",
    "sensitive-dirs",
    "trusted-readers",
    "servers",
    "startup-grace-ms",
    "traversal-parent-allowed",
    "log-paths",
    "log-truncate-allowed",
];

/// The detector; see the crate docs.
pub struct FalcoFiles {
    sensitive: PathSet,
    sensitive_exact: Vec<String>,
    sensitive_dirs: Vec<String>,
    trusted: NameSet,
    servers: NameSet,
    grace: Duration,
    traversal_parent_allowed: NameSet,
    log_paths: PathSet,
    log_allowed: NameSet,
    shell_config: PathSet,
    shell_config_allowed: NameSet,
    cron_paths: PathSet,
    cron_allowed: NameSet,
    history_suffixes: Vec<String>,
    setuid_allowed: NameSet,
}

fn start_key(p: &Process) -> String {
    format!("start:{}:{}", p.pid, p.start_ns)
}

/// Resolves `.` and `..` segments of an absolute path (no file system access).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

impl FalcoFiles {
    fn on_open(&self, ts_ns: u64, open: &FileOpenData, p: &Process, alerts: &mut Alerts) {
        let failed = open.result.is_some_and(|r| r < 0);
        let write = open.is_write();
        // Directory traversal: the raw path climbs out with `../` at least twice.
        if (!write || failed) && palisade_sdk::glob_match("*../*../*", &open.path) {
            let real = normalize(&open.path);
            let monitored = real.starts_with("/etc/")
                || real.starts_with("/root/.ssh")
                || palisade_sdk::glob_match("/home/*/.ssh/*", &real)
                || real.contains("id_rsa");
            let parent_shell = p
                .parent()
                .is_some_and(|a| is_shell_name(&a.comm) || is_shell_name(a.exe_name()));
            let allowed = p
                .parent()
                .is_some_and(|a| self.traversal_parent_allowed.matches_ancestor(a));
            if monitored && !parent_shell && !allowed {
                alerts.push(
                    with_context(
                        Alert::new(
                            "directory-traversal-monitored-file-read",
                            Priority::Warning,
                            format!(
                                "Read monitored file via directory traversal: {real} (raw {}, result {}) by {}",
                                open.path,
                                open.result.map_or("unknown".into(), |r| r.to_string()),
                                describe_process(p)
                            ),
                        ),
                        p,
                    )
                    .tags(["T1555", "mitre_credential_access", "filesystem"])
                    .field("path", &real)
                    .field("path.raw", &open.path),
                );
            }
        }
        if !write && !failed && self.sensitive.matches(&open.path) {
            if self.servers.matches_process(p) {
                if p.comm == "sshd" {
                    return;
                }
                let after_startup = match state::get_u64(&start_key(p)) {
                    Some(started) => ts_ns.saturating_sub(started) > self.grace.as_nanos() as u64,
                    None => true,
                };
                if after_startup {
                    alerts.push(
                        with_context(
                            Alert::new(
                                "read-sensitive-file-trusted-after-startup",
                                Priority::Warning,
                                format!(
                                    "Sensitive file {} opened for reading by trusted program after startup: {} (lineage {})",
                                    open.path,
                                    describe_process(p),
                                    lineage(p)
                                ),
                            ),
                            p,
                        )
                        .tags(["T1555", "mitre_credential_access", "filesystem"])
                        .field("path", &open.path),
                    );
                }
            } else if !self.trusted.matches_process(p) && !p.comm.is_empty() {
                alerts.push(
                    with_context(
                        Alert::new(
                            "read-sensitive-file-untrusted",
                            Priority::Warning,
                            format!(
                                "Sensitive file {} opened for reading by non-trusted program {} (lineage {})",
                                open.path,
                                describe_process(p),
                                lineage(p)
                            ),
                        ),
                        p,
                    )
                    .tags(["T1555", "mitre_credential_access", "filesystem"])
                    .field("path", &open.path)
                    .field("flags", open_flags::describe(open.open_flags)),
                );
            }
        }
        if write
            && open.open_flags & open_flags::O_TRUNC != 0
            && self.log_paths.matches(&open.path)
            && !self.log_allowed.matches_process(p)
        {
            alerts.push(
                with_context(
                    Alert::new(
                        "clear-log-activities",
                        Priority::Warning,
                        format!(
                            "Log file {} truncated by {}",
                            open.path,
                            describe_process(p)
                        ),
                    ),
                    p,
                )
                .tags(["T1070", "mitre_defense_evasion", "filesystem"])
                .field("path", &open.path)
                .field("flags", open_flags::describe(open.open_flags)),
            );
        }
    }

    fn persistence_alert(
        &self,
        rule: &str,
        priority: Priority,
        what: &str,
        target: &str,
        p: &Process,
        tags: &[&str],
    ) -> Alert {
        with_context(
            Alert::new(
                rule,
                priority,
                format!(
                    "{what}: {target} by {} (lineage {})",
                    describe_process(p),
                    lineage(p)
                ),
            ),
            p,
        )
        .tags(tags.iter().copied())
        .tag("filesystem")
        .field("target", target)
    }

    fn on_persistence_open(&self, open: &FileOpenData, p: &Process, alerts: &mut Alerts) {
        if !open.is_write() || open.result.is_some_and(|r| r < 0) {
            return;
        }
        if self.shell_config.matches(&open.path)
            && !is_shell_name(&p.comm)
            && !is_shell_name(pack_common::basename(&p.exe))
            && !self.shell_config_allowed.matches_process(p)
        {
            alerts.push(self.persistence_alert(
                "modify-shell-configuration-file",
                Priority::Warning,
                "Shell configuration file modified",
                &open.path,
                p,
                &["T1546.004", "mitre_persistence"],
            ));
        }
        if self.cron_paths.matches(&open.path) && !self.cron_allowed.matches_process(p) {
            alerts.push(self.persistence_alert(
                "schedule-cron-jobs",
                Priority::Notice,
                "Cron job file written",
                &open.path,
                p,
                &["T1053.003", "mitre_execution"],
            ));
        }
        if open.open_flags & open_flags::O_TRUNC != 0 {
            self.on_history(&open.path, "truncated", p, alerts);
        }
    }

    fn on_history(&self, path: &str, verb: &str, p: &Process, alerts: &mut Alerts) {
        if !self
            .history_suffixes
            .iter()
            .any(|s| path.ends_with(s.as_str()))
        {
            return;
        }
        alerts.push(self.persistence_alert(
            "delete-or-rename-shell-history",
            Priority::Warning,
            &format!("Shell history {verb}"),
            path,
            p,
            &["T1070.003", "mitre_defense_evasion"],
        ));
    }

    fn on_link(&self, link: &FileLinkData, p: &Process, alerts: &mut Alerts) {
        let target = link.target.as_str();
        let file_hit = self.sensitive_exact.iter().any(|s| s == target);
        let dir_hit = self.sensitive_dirs.iter().any(|s| s == target);
        let (rule, what) = if link.symbolic && (file_hit || dir_hit) {
            ("create-symlink-over-sensitive-files", "Symlink")
        } else if !link.symbolic && file_hit {
            ("create-hardlink-over-sensitive-files", "Hardlink")
        } else {
            return;
        };
        alerts.push(
            with_context(
                Alert::new(
                    rule,
                    Priority::Warning,
                    format!(
                        "{what} created over sensitive file: {} -> {target} by {}",
                        link.link,
                        describe_process(p)
                    ),
                ),
                p,
            )
            .tags(["T1555", "mitre_credential_access", "filesystem"])
            .field("target", target)
            .field("link", &link.link),
        );
    }
}

impl Detector for FalcoFiles {
    fn describe() -> PluginInfo {
        let sensitive = PathSet::new(SENSITIVE_FILES);
        let exact_files: Vec<&str> = SENSITIVE_FILES
            .iter()
            .copied()
            .filter(|f| !f.ends_with('/'))
            .collect();
        PluginInfo::detector(
            "falco-files",
            env!("CARGO_PKG_VERSION"),
            "Falco-parity file rules: sensitive file reads, directory traversal, log truncation, links over sensitive files",
        )
        .subscribe(Subscription::to([EventKind::FileOpen]).path_set(&sensitive).path("/dev/log").path_prefix("/var/log/"))
        .subscribe(Subscription::to([EventKind::FileOpen]).comms(TRAVERSAL_COMMS))
        .subscribe(Subscription::to([EventKind::Exec]).comms(SERVERS))
        .subscribe(Subscription::to([EventKind::FileLink]).paths(exact_files).paths(SENSITIVE_DIRS))
        .subscribe(
            Subscription::to([EventKind::FileOpen])
                .path_set(&PathSet::new(SHELL_CONFIG_FILES))
                .path_set(&PathSet::new(CRON_PATHS))
                .paths(["/root/.bash_history", "/root/.zsh_history"]),
        )
        .subscribe(Subscription::to([EventKind::Exec]).comms(["crontab"]))
        .subscribe(Subscription::to([EventKind::FileUnlink, EventKind::FileRename]).path_prefixes(HISTORY_DIRS))
        .subscribe(Subscription::to([EventKind::FileChmod]))
        .config("shell-config-files", SHELL_CONFIG_FILES)
        .config("shell-config-allowed", PACKAGE_MANAGERS)
        .config("cron-paths", CRON_PATHS)
        .config("cron-allowed", PACKAGE_MANAGERS)
        .config("history-suffixes", HISTORY_SUFFIXES)
        .config("setuid-allowed", SETUID_ALLOWED)
        .config("sensitive-files", SENSITIVE_FILES)
        .config("sensitive-dirs", SENSITIVE_DIRS)
        .config("trusted-readers", TRUSTED_READERS)
        .config("servers", SERVERS)
        .config("startup-grace-ms", 5000)
        .config("traversal-parent-allowed", Vec::<String>::new())
        .config("log-paths", LOG_PATHS)
        .config("log-truncate-allowed", LOG_TRUNCATE_ALLOWED)
    }

    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(KNOWN_KEYS)?;
        let files = config.text_list_or("sensitive-files", SENSITIVE_FILES)?;
        Ok(FalcoFiles {
            sensitive: PathSet::new(&files),
            sensitive_exact: files
                .iter()
                .filter(|f| !f.ends_with('/'))
                .cloned()
                .collect(),
            sensitive_dirs: config.text_list_or("sensitive-dirs", SENSITIVE_DIRS)?,
            trusted: NameSet::new(config.text_list_or("trusted-readers", TRUSTED_READERS)?),
            servers: NameSet::new(config.text_list_or("servers", SERVERS)?),
            grace: Duration::from_millis(config.unsigned_or("startup-grace-ms", 5000)?),
            traversal_parent_allowed: NameSet::new(
                config.text_list_or("traversal-parent-allowed", &[])?,
            ),
            log_paths: PathSet::new(config.text_list_or("log-paths", LOG_PATHS)?),
            log_allowed: NameSet::new(
                config.text_list_or("log-truncate-allowed", LOG_TRUNCATE_ALLOWED)?,
            ),
            shell_config: PathSet::new(
                config.text_list_or("shell-config-files", SHELL_CONFIG_FILES)?,
            ),
            shell_config_allowed: NameSet::new(
                config.text_list_or("shell-config-allowed", PACKAGE_MANAGERS)?,
            ),
            cron_paths: PathSet::new(config.text_list_or("cron-paths", CRON_PATHS)?),
            cron_allowed: NameSet::new(config.text_list_or("cron-allowed", PACKAGE_MANAGERS)?),
            history_suffixes: config.text_list_or("history-suffixes", HISTORY_SUFFIXES)?,
            setuid_allowed: NameSet::new(config.text_list_or("setuid-allowed", SETUID_ALLOWED)?),
        })
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        let p = event.process;
        match event.data {
            palisade_sdk::EventData::Exec(_) if self.servers.matches_process(p) => {
                // Kept a little longer than the grace period; a failed write only means a
                // later read may alert as "after startup", which is the safe side.
                let ttl = self.grace + Duration::from_secs(60);
                if let Err(e) = state::set_u64(&start_key(p), event.ts_ns, Some(ttl)) {
                    palisade_sdk::warn!("cannot remember start of pid {}: {e:?}", p.pid);
                }
            }
            // crontab: listing (-l) changes nothing; installing, editing (-e) or removing does.
            palisade_sdk::EventData::Exec(exec)
                if (p.comm == "crontab" || exec.filename.ends_with("/crontab"))
                    && !exec.args.iter().any(|a| a == "-l")
                    && !self.cron_allowed.matches_process(p) =>
            {
                alerts.push(self.persistence_alert(
                    "schedule-cron-jobs",
                    Priority::Notice,
                    "Cron job scheduled with crontab",
                    &exec.args.join(" "),
                    p,
                    &["T1053.003", "mitre_execution"],
                ));
            }
            palisade_sdk::EventData::FileOpen(open) => {
                self.on_open(event.ts_ns, open, p, alerts);
                self.on_persistence_open(open, p, alerts);
            }
            palisade_sdk::EventData::FileUnlink(path) => {
                self.on_history(path, "deleted", p, alerts)
            }
            palisade_sdk::EventData::FileRename(r) => {
                self.on_history(&r.from, "renamed", p, alerts)
            }
            palisade_sdk::EventData::FileChmod(c)
                if c.mode & 0o6000 != 0 && !self.setuid_allowed.matches_process(p) =>
            {
                let bits = match (c.mode & 0o4000 != 0, c.mode & 0o2000 != 0) {
                    (true, true) => "setuid+setgid",
                    (true, false) => "setuid",
                    _ => "setgid",
                };
                alerts.push(
                    with_context(
                        Alert::new(
                            "set-setuid-or-setgid-bit",
                            Priority::Notice,
                            format!(
                                "{bits} bit set on {} (mode {:o}) by {}",
                                c.path,
                                c.mode,
                                describe_process(p)
                            ),
                        ),
                        p,
                    )
                    .tags(["T1548.001", "mitre_privilege_escalation", "filesystem"])
                    .field("path", &c.path)
                    .field("mode", format!("{:o}", c.mode)),
                );
            }
            palisade_sdk::EventData::FileLink(link) => self.on_link(link, p, alerts),
            _ => {}
        }
    }
}

palisade_sdk::export_detector!(FalcoFiles);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_sdk::{run_batch, testing, EventBatch, EventData, ExecData};

    fn det() -> FalcoFiles {
        FalcoFiles::init(Config::new(FalcoFiles::describe().default_config)).unwrap()
    }

    fn open(path: &str, flags: u32, result: i32) -> EventData {
        EventData::FileOpen(FileOpenData {
            path: path.into(),
            open_flags: flags,
            mode: 0,
            result: Some(result),
        })
    }

    fn run(events: &[(&Process, u64, EventData)]) -> Vec<(String, u32)> {
        let mut b = EventBatch::new();
        for (p, ts, d) in events {
            b.push(p, *ts, d.clone());
        }
        run_batch(&mut det(), &b)
            .into_iter()
            .map(|a| (a.rule, a.event_index))
            .collect()
    }

    #[test]
    fn normalizes() {
        assert_eq!(
            normalize("/var/www/html/../../../etc/passwd"),
            "/etc/passwd"
        );
        assert_eq!(normalize("/a/./b/../c"), "/a/c");
    }

    #[test]
    fn sensitive_reads_traversal_logs_and_links() {
        testing::reset();
        let cat = Process::new(1, "cat", "/usr/bin/cat").with_args(["cat", "/etc/shadow"]);
        let sudo = Process::new(2, "sudo", "/usr/bin/sudo");
        let php = Process::new(3, "php-fpm8.2", "/usr/sbin/php-fpm8.2").with_ancestor(
            1,
            "php-fpm8.2",
            "/usr/sbin/php-fpm8.2",
        );
        let ln = Process::new(4, "ln", "/usr/bin/ln");
        let got = run(&[
            (&cat, 1, open("/etc/shadow", 0, 3)),
            (&sudo, 2, open("/etc/sudoers.d/90-users", 0, 3)),
            (&php, 3, open("/var/www/html/../../../etc/passwd", 0, 5)),
            (
                &cat,
                4,
                open(
                    "/var/log/auth.log",
                    open_flags::O_WRONLY | open_flags::O_TRUNC,
                    3,
                ),
            ),
            (
                &ln,
                5,
                EventData::FileLink(FileLinkData {
                    target: "/etc/shadow".into(),
                    link: "/tmp/s".into(),
                    symbolic: true,
                }),
            ),
            (
                &ln,
                6,
                EventData::FileLink(FileLinkData {
                    target: "/etc/shadow".into(),
                    link: "/tmp/h".into(),
                    symbolic: false,
                }),
            ),
            (
                &ln,
                7,
                EventData::FileLink(FileLinkData {
                    target: "/etc/hosts".into(),
                    link: "/tmp/x".into(),
                    symbolic: true,
                }),
            ),
        ]);
        let rules: Vec<(&str, u32)> = got.iter().map(|(r, i)| (r.as_str(), *i)).collect();
        assert_eq!(
            rules,
            [
                ("read-sensitive-file-untrusted", 0),
                ("directory-traversal-monitored-file-read", 2),
                ("clear-log-activities", 3),
                ("create-symlink-over-sensitive-files", 4),
                ("create-hardlink-over-sensitive-files", 5),
            ]
        );
    }

    #[test]
    fn persistence_and_evasion_rules() {
        testing::reset();
        let tee = Process::new(30, "tee", "/usr/bin/tee");
        let dpkg = Process::new(31, "dpkg", "/usr/bin/dpkg");
        let bash = Process::new(32, "bash", "/usr/bin/bash");
        let crontab = Process::new(33, "crontab", "/usr/bin/crontab");
        let w = open_flags::O_WRONLY | open_flags::O_CREAT | open_flags::O_TRUNC;
        let got = run(&[
            (&tee, 1, open("/etc/profile.d/x.sh", w, 3)),
            (&dpkg, 2, open("/etc/profile.d/apps-bin-path.sh", w, 3)),
            (
                &bash,
                3,
                open(
                    "/root/.bashrc",
                    open_flags::O_WRONLY | open_flags::O_APPEND,
                    3,
                ),
            ),
            (&tee, 4, open("/etc/cron.d/backdoor", w, 3)),
            (
                &crontab,
                5,
                EventData::Exec(ExecData {
                    filename: "/usr/bin/crontab".into(),
                    args: vec!["crontab".into(), "-l".into()],
                    args_truncated: false,
                }),
            ),
            (
                &crontab,
                6,
                EventData::Exec(ExecData {
                    filename: "/usr/bin/crontab".into(),
                    args: vec!["crontab".into(), "/tmp/c".into()],
                    args_truncated: false,
                }),
            ),
            (
                &bash,
                7,
                EventData::FileUnlink("/root/.bash_history".into()),
            ),
            (&bash, 8, open("/root/.bash_history", w, 3)),
            (
                &tee,
                9,
                EventData::FileChmod(palisade_sdk::FileChmodData {
                    path: "/tmp/sh".into(),
                    mode: 0o4755,
                }),
            ),
            (
                &dpkg,
                10,
                EventData::FileChmod(palisade_sdk::FileChmodData {
                    path: "/usr/bin/su".into(),
                    mode: 0o4755,
                }),
            ),
        ]);
        let rules: Vec<(&str, u32)> = got.iter().map(|(r, i)| (r.as_str(), *i)).collect();
        assert_eq!(
            rules,
            [
                ("modify-shell-configuration-file", 0),
                ("schedule-cron-jobs", 3),
                ("schedule-cron-jobs", 5),
                ("delete-or-rename-shell-history", 6),
                ("delete-or-rename-shell-history", 7),
                ("set-setuid-or-setgid-bit", 8),
            ]
        );
    }

    #[test]
    fn servers_may_read_while_starting_only() {
        testing::reset();
        let nginx = Process::new(9, "nginx", "/usr/sbin/nginx");
        let exec = EventData::Exec(ExecData {
            filename: "/usr/sbin/nginx".into(),
            args: vec![],
            args_truncated: false,
        });
        let s = 1_000_000_000u64;
        let mut d = det();
        let mut b = EventBatch::new();
        b.push(&nginx, s, exec);
        b.push(&nginx, 2 * s, open("/etc/shadow", 0, 3));
        b.push(&nginx, 10 * s, open("/etc/shadow", 0, 3));
        let alerts = run_batch(&mut d, &b);
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].rule.as_str(), alerts[0].event_index),
            ("read-sensitive-file-trusted-after-startup", 2)
        );
    }
}
