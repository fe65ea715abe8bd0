//! `falco-process`: the process-execution rules of Falco's stable set, as Palisade detectors.
//!
//! | rule id | Falco rule | priority |
//! |---|---|---|
//! | `run-shell-untrusted` | Run shell untrusted | notice |
//! | `system-user-interactive` | System user interactive | informational |
//! | `search-private-keys-or-passwords` | Search Private Keys or Passwords | warning |
//! | `find-aws-credentials` | Find AWS Credentials | warning |
//! | `execution-from-dev-shm` | Execution from /dev/shm | warning |
//! | `remove-bulk-data-from-disk` | Remove Bulk Data from Disk | warning |
//! | `fileless-execution-memfd` | Fileless execution via memfd_create | critical |
//!
//! Every rule looks at `exec` events only. The subscription is narrowed to the program names
//! the rules are about (shells, grep, find, shred, mkfs), exec paths under /dev/shm and fd
//! paths (fexecve of a memfd), and system uids; see docs/rules.md for the mapping and the
//! allow-lists (sidecar `[config]`).

use pack_common::{
    args_icontain, basename, describe_process, is_shell_name, lineage, with_context, SHELLS,
};
use palisade_sdk::{
    Alert, Alerts, Config, Detector, EventKind, EventRef, ExecData, NameSet, PluginInfo, Priority,
    Process, Subscription,
};

/// Falco's `protected_shell_spawning_binaries` (http, db, nosql, mail servers and friends).
const SHELL_SPAWNERS: &[&str] = &[
    "nginx",
    "httpd",
    "httpd-foregroun",
    "lighttpd",
    "apache",
    "apache2",
    "mysqld",
    "postgres",
    "sqlplus",
    "couchdb",
    "memcached",
    "redis-server",
    "rabbitmq-server",
    "mongod",
    "sendmail",
    "sendmail-msp",
    "postfix",
    "procmail",
    "exim4",
    "pickup",
    "showq",
    "mailq",
    "dovecot",
    "imap-login",
    "imap",
    "mailmng-core",
    "pop3-login",
    "dovecot-lda",
    "pop3",
    "fluentd",
    "flanneld",
    "splunkd",
    "consul",
    "smbd",
    "runsv",
    "PM2",
];

/// Parents Falco exempts in `Run shell untrusted` (beside shells).
const SHELL_ALLOWED_PARENTS: &[&str] = &[
    "gitlab-shell",
    "gitlab-mon",
    "gitlab-runner-b",
    "git",
    "anacron",
    "cron",
    "crond",
    "crontab",
    "needrestart",
    "mesos-docker-ex",
    "mesos-slave",
    "mesos-health-ch",
    "erl_child_setup",
    "exechealthz",
    "PM2",
    "PassengerWatchd",
    "c_rehash",
    "svlogd",
    "logrotate",
    "hhvm",
    "serf",
    "lb-controller",
    "nvidia-installe",
    "runsv",
    "statsite",
    "erlexec",
    "calico-node",
    "puma reactor",
];

/// Falco's `known_shell_spawn_cmdlines` (the common ones) : harmless probes servers run.
const SHELL_ALLOWED_CMDLINES: &[&str] = &[
    "sh -c uname -p 2> /dev/null",
    "sh -c uname -s 2>&1",
    "sh -c uname -r 2>&1",
    "sh -c uname -v 2>&1",
    "sh -c uname -a 2>&1",
    "sh -c ruby -v 2>&1",
    "sh -c getconf CLK_TCK",
    "sh -c getconf PAGESIZE",
    "sh -c /sbin/ldconfig -p 2>/dev/null",
    "sh -c stty -a 2>/dev/null",
    "sh -c whoami",
    "sh -c locale -a",
    "sh -c openssl version",
    "sh -c lsb_release -a",
    "sh -c /bin/hostname -f 2> /dev/null",
];

/// Falco's `system_users` as Debian numbers them: daemon, bin, sync, games, lp, mail, uucp,
/// www-data, nobody.
const SYSTEM_UIDS: &[i64] = &[1, 2, 4, 5, 7, 8, 10, 33, 65534];

/// Programs that make a session "interactive" (Falco's `interactive` macro).
const LOGIN_PROGRAMS: &[&str] = &["sshd", "sshd-session", "systemd-logind", "login"];

const GREP: &[&str] = &["grep", "egrep", "fgrep", "rg", "ripgrep"];
const KEY_PATTERNS: &[&str] = &[
    "BEGIN PRIVATE",
    "BEGIN OPENSSH PRIVATE",
    "BEGIN RSA PRIVATE",
    "BEGIN DSA PRIVATE",
    "BEGIN EC PRIVATE",
];
const KEY_FILE_NAMES: &[&str] = &["id_rsa", "id_dsa", "id_ed25519", "id_ecdsa"];
const AWS_PATTERNS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "accesskeyid",
    "secretaccesskey",
];
const BULK_REMOVE: &[&str] = &["shred", "mkfs", "mkfs.*", "mke2fs", "wipefs"];
const BULK_REMOVE_COMMS: &[&str] = &[
    "shred",
    "mkfs",
    "mke2fs",
    "wipefs",
    "mkfs.ext2",
    "mkfs.ext3",
    "mkfs.ext4",
    "mkfs.xfs",
    "mkfs.btrfs",
    "mkfs.vfat",
    "mkfs.fat",
];
const MEMFD_ALLOWED: &[&str] = &["runc"];

const KNOWN_KEYS: &[&str] = &[
    "shell-spawners",
    "shell-allowed-parents",
    "shell-allowed-cmdlines",
    "system-uids",
    "grep-commands",
    "key-patterns",
    "key-file-names",
    "aws-patterns",
    "bulk-remove-commands",
    "memfd-allowed",
    "dev-shm-allowed",
];

/// The detector; see the crate docs.
pub struct FalcoProcess {
    spawners: NameSet,
    shell_allowed_parents: NameSet,
    shell_allowed_cmdlines: Vec<String>,
    system_uids: Vec<u32>,
    grep: NameSet,
    key_patterns: Vec<String>,
    key_file_names: Vec<String>,
    aws_patterns: Vec<String>,
    bulk_remove: NameSet,
    memfd_allowed: NameSet,
    dev_shm_allowed: NameSet,
}

fn exec_name(exec: &ExecData, process: &Process) -> String {
    let file = basename(&exec.filename);
    if file.is_empty() {
        process.comm.clone()
    } else {
        file.to_string()
    }
}

impl FalcoProcess {
    fn is_shell_exec(exec: &ExecData, process: &Process) -> bool {
        is_shell_name(basename(&exec.filename)) || is_shell_name(&process.comm)
    }

    fn run_shell_untrusted(&self, exec: &ExecData, p: &Process, alerts: &mut Alerts) {
        if !Self::is_shell_exec(exec, p) {
            return;
        }
        let Some(parent) = p.parent() else { return };
        if is_shell_name(parent.exe_name()) || is_shell_name(&parent.comm) {
            return;
        }
        if self.shell_allowed_parents.matches_ancestor(parent) {
            return;
        }
        let Some(spawner) = p
            .ancestors
            .iter()
            .find(|a| self.spawners.matches_ancestor(a))
        else {
            return;
        };
        let cmdline = exec.args.join(" ");
        if self.shell_allowed_cmdlines.contains(&cmdline) {
            return;
        }
        alerts.push(
            with_context(
                Alert::new(
                    "run-shell-untrusted",
                    Priority::Notice,
                    format!(
                        "Shell spawned by untrusted binary: {} under {} (parent {} pid {}, lineage {}) by {}",
                        exec.filename,
                        spawner.comm,
                        parent.comm,
                        parent.pid,
                        lineage(p),
                        describe_process(p)
                    ),
                ),
                p,
            )
            .tags(["T1059.004", "mitre_execution", "process", "shell"])
            .field("shell", basename(&exec.filename))
            .field("spawner", &spawner.comm)
            .field("parent.exe", &parent.exe),
        );
    }

    fn system_user_interactive(&self, p: &Process, alerts: &mut Alerts) {
        if !self.system_uids.contains(&p.uid) {
            return;
        }
        let login = NameSet::new(LOGIN_PROGRAMS);
        let interactive = (p
            .ancestors
            .iter()
            .any(|a| a.comm == "sshd" || a.comm == "sshd-session")
            && p.comm != "sshd"
            && p.comm != "sshd-session")
            || p.comm == "systemd-logind"
            || p.comm == "login";
        if !interactive || (login.matches_process(p) && p.comm != "login") {
            return;
        }
        alerts.push(
            with_context(
                Alert::new(
                    "system-user-interactive",
                    Priority::Informational,
                    format!(
                        "System user ran an interactive command: {} (lineage {})",
                        describe_process(p),
                        lineage(p)
                    ),
                ),
                p,
            )
            .tags(["T1059", "mitre_execution", "users"]),
        );
    }

    fn searches(&self, exec: &ExecData, p: &Process, name: &str, alerts: &mut Alerts) {
        let is_grep = self.grep.matches(name, &exec.filename) || self.grep.matches_process(p);
        let is_find = name == "find" || p.comm == "find";
        let args = &exec.args;
        let key_hit = if is_grep {
            self.key_patterns.iter().find(|k| args_icontain(args, k))
        } else if is_find {
            self.key_file_names
                .iter()
                .find(|k| args.iter().skip(1).any(|a| a.contains(k.as_str())))
        } else {
            None
        };
        if let Some(pattern) = key_hit {
            alerts.push(
                with_context(
                    Alert::new(
                        "search-private-keys-or-passwords",
                        Priority::Warning,
                        format!(
                            "Search for private keys or passwords ({pattern}) by {}",
                            describe_process(p)
                        ),
                    ),
                    p,
                )
                .tags([
                    "T1552.001",
                    "mitre_credential_access",
                    "process",
                    "filesystem",
                ])
                .field("pattern", pattern)
                .field("proc.cwd", &p.cwd),
            );
        }
        let aws_hit = if is_grep {
            self.aws_patterns
                .iter()
                .find(|k| args_icontain(args, k))
                .cloned()
        } else if is_find && args.iter().skip(1).any(|a| a.ends_with(".aws/credentials")) {
            Some(".aws/credentials".to_string())
        } else {
            None
        };
        if let Some(pattern) = aws_hit {
            alerts.push(
                with_context(
                    Alert::new(
                        "find-aws-credentials",
                        Priority::Warning,
                        format!(
                            "Search for AWS credentials ({pattern}) by {}",
                            describe_process(p)
                        ),
                    ),
                    p,
                )
                .tags(["T1552", "mitre_credential_access", "process", "aws"])
                .field("pattern", pattern)
                .field("proc.cwd", &p.cwd),
            );
        }
    }

    fn dev_shm(&self, exec: &ExecData, p: &Process, alerts: &mut Alerts) {
        let in_shm = |s: &str| s.starts_with("/dev/shm/");
        let cwd_shm = in_shm(&p.cwd) || p.cwd == "/dev/shm";
        let shell = Self::is_shell_exec(exec, p);
        let args = &exec.args;
        let hit = in_shm(&exec.filename)
            || in_shm(&p.exe)
            || (cwd_shm
                && (exec.filename.starts_with("./")
                    || args.first().is_some_and(|a| a.starts_with("./"))))
            || (shell
                && args.iter().skip(1).take(2).enumerate().any(|(i, a)| {
                    in_shm(a) && (i == 0 || matches!(args[1].as_str(), "-c" | "-i"))
                }));
        if !hit || self.dev_shm_allowed.matches_process(p) {
            return;
        }
        alerts.push(
            with_context(
                Alert::new(
                    "execution-from-dev-shm",
                    Priority::Warning,
                    format!(
                        "File execution from /dev/shm: {} (cwd {}) by {}",
                        exec.filename,
                        p.cwd,
                        describe_process(p)
                    ),
                ),
                p,
            )
            .tags(["T1059.004", "mitre_execution", "process"])
            .field("filename", &exec.filename)
            .field("proc.cwd", &p.cwd),
        );
    }

    fn bulk_remove(&self, exec: &ExecData, p: &Process, alerts: &mut Alerts) {
        if !self.bulk_remove.matches(&p.comm, &exec.filename) {
            return;
        }
        alerts.push(
            with_context(
                Alert::new(
                    "remove-bulk-data-from-disk",
                    Priority::Warning,
                    format!("Bulk data removal from disk: {}", describe_process(p)),
                ),
                p,
            )
            .tags(["T1485", "mitre_impact", "process", "filesystem"])
            .field("filename", &exec.filename),
        );
    }

    fn fileless(&self, exec: &ExecData, p: &Process, alerts: &mut Alerts) {
        let memfd_exe = p.exe.starts_with("/memfd:") || p.exe.starts_with("memfd:");
        let fd_path = exec.filename.starts_with("/dev/fd/")
            || (exec.filename.starts_with("/proc/") && exec.filename.contains("/fd/"))
            || exec.filename.starts_with("/memfd:");
        if !(memfd_exe || fd_path) {
            return;
        }
        if self.memfd_allowed.matches_process(p)
            || p.parent()
                .is_some_and(|a| self.memfd_allowed.matches_ancestor(a))
            || p.exe.starts_with("/memfd:runc_cloned")
            || p.exe.starts_with("memfd:runc_cloned")
        {
            return;
        }
        alerts.push(
            with_context(
                Alert::new(
                    "fileless-execution-memfd",
                    Priority::Critical,
                    format!(
                        "Fileless execution via memfd_create: {} (filename {}) by {}",
                        p.exe,
                        exec.filename,
                        describe_process(p)
                    ),
                ),
                p,
            )
            .tags(["T1620", "mitre_defense_evasion", "process"])
            .field("filename", &exec.filename),
        );
    }
}

fn int_list(config: &Config, key: &str, default: &[i64]) -> Result<Vec<u32>, String> {
    config
        .integer_list_or(key, default)?
        .into_iter()
        .map(|v| u32::try_from(v).map_err(|_| format!("config `{key}`: {v} is not a uid")))
        .collect()
}

impl Detector for FalcoProcess {
    fn describe() -> PluginInfo {
        let mut comms: Vec<&str> = SHELLS.to_vec();
        comms.extend(GREP);
        comms.push("find");
        comms.extend(BULK_REMOVE_COMMS);
        PluginInfo::detector(
            "falco-process",
            env!("CARGO_PKG_VERSION"),
            "Falco-parity process rules: untrusted shells, system users, key/credential searches, /dev/shm and fileless execution, bulk data removal",
        )
        .subscribe(Subscription::to([EventKind::Exec]).comms(comms))
        .subscribe(Subscription::to([EventKind::Exec]).path_prefixes(["/dev/shm/", "/dev/fd/", "/proc/", "/memfd:"]))
        .subscribe(Subscription::to([EventKind::Exec]).uid_range(1, 999))
        .subscribe(Subscription::to([EventKind::Exec]).uid_range(65534, 65534))
        .config("shell-spawners", SHELL_SPAWNERS)
        .config("shell-allowed-parents", SHELL_ALLOWED_PARENTS)
        .config("shell-allowed-cmdlines", SHELL_ALLOWED_CMDLINES)
        .config("system-uids", SYSTEM_UIDS.to_vec())
        .config("grep-commands", GREP)
        .config("key-patterns", KEY_PATTERNS)
        .config("key-file-names", KEY_FILE_NAMES)
        .config("aws-patterns", AWS_PATTERNS)
        .config("bulk-remove-commands", BULK_REMOVE)
        .config("memfd-allowed", MEMFD_ALLOWED)
        .config("dev-shm-allowed", Vec::<String>::new())
    }

    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(KNOWN_KEYS)?;
        Ok(FalcoProcess {
            spawners: NameSet::new(config.text_list_or("shell-spawners", SHELL_SPAWNERS)?),
            shell_allowed_parents: NameSet::new(
                config.text_list_or("shell-allowed-parents", SHELL_ALLOWED_PARENTS)?,
            ),
            shell_allowed_cmdlines: config
                .text_list_or("shell-allowed-cmdlines", SHELL_ALLOWED_CMDLINES)?,
            system_uids: int_list(&config, "system-uids", SYSTEM_UIDS)?,
            grep: NameSet::new(config.text_list_or("grep-commands", GREP)?),
            key_patterns: config.text_list_or("key-patterns", KEY_PATTERNS)?,
            key_file_names: config.text_list_or("key-file-names", KEY_FILE_NAMES)?,
            aws_patterns: config.text_list_or("aws-patterns", AWS_PATTERNS)?,
            bulk_remove: NameSet::new(config.text_list_or("bulk-remove-commands", BULK_REMOVE)?),
            memfd_allowed: NameSet::new(config.text_list_or("memfd-allowed", MEMFD_ALLOWED)?),
            dev_shm_allowed: NameSet::new(config.text_list_or("dev-shm-allowed", &[])?),
        })
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        let Some(exec) = event.exec() else { return };
        let p = event.process;
        let name = exec_name(exec, p);
        self.run_shell_untrusted(exec, p, alerts);
        self.system_user_interactive(p, alerts);
        self.searches(exec, p, &name, alerts);
        self.dev_shm(exec, p, alerts);
        self.bulk_remove(exec, p, alerts);
        self.fileless(exec, p, alerts);
    }
}

palisade_sdk::export_detector!(FalcoProcess);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_sdk::{run_batch, EventBatch, EventData};

    fn det() -> FalcoProcess {
        FalcoProcess::init(Config::new(FalcoProcess::describe().default_config)).unwrap()
    }

    fn exec(p: &Process, filename: &str) -> Vec<Alert> {
        let mut b = EventBatch::new();
        b.push(
            p,
            1,
            EventData::Exec(ExecData {
                filename: filename.into(),
                args: p.args.clone(),
                args_truncated: false,
            }),
        );
        run_batch(&mut det(), &b)
    }

    fn rules(alerts: &[Alert]) -> Vec<&str> {
        alerts.iter().map(|a| a.rule.as_str()).collect()
    }

    #[test]
    fn shell_under_server_alerts_unless_parent_is_shell_or_cmdline_known() {
        let sh = Process::new(5, "sh", "/usr/bin/dash")
            .with_args(["sh", "-c", "id"])
            .with_ancestor(4, "nginx", "/usr/sbin/nginx");
        assert_eq!(rules(&exec(&sh, "/bin/sh")), ["run-shell-untrusted"]);
        let nested = Process::new(6, "bash", "/usr/bin/bash")
            .with_args(["bash"])
            .with_ancestor(5, "sh", "/usr/bin/dash")
            .with_ancestor(4, "nginx", "/usr/sbin/nginx");
        assert!(exec(&nested, "/usr/bin/bash").is_empty());
        let known = Process::new(5, "sh", "/usr/bin/dash")
            .with_args(["sh", "-c", "whoami"])
            .with_ancestor(4, "nginx", "/usr/sbin/nginx");
        assert!(exec(&known, "/bin/sh").is_empty());
        let user = Process::new(5, "sh", "/usr/bin/dash")
            .with_args(["sh", "-c", "id"])
            .with_ancestor(4, "make", "/usr/bin/make");
        assert!(exec(&user, "/bin/sh").is_empty());
    }

    #[test]
    fn searches_shm_bulk_and_memfd() {
        let g = Process::new(7, "grep", "/usr/bin/grep")
            .with_uid(1000)
            .with_args(["grep", "-rl", "begin rsa private", "/home"]);
        assert_eq!(
            rules(&exec(&g, "/usr/bin/grep")),
            ["search-private-keys-or-passwords"]
        );
        let f = Process::new(7, "find", "/usr/bin/find")
            .with_uid(1000)
            .with_args([
                "find",
                "/",
                "-name",
                "credentials",
                "-path",
                "*/.aws/credentials",
            ]);
        assert_eq!(rules(&exec(&f, "/usr/bin/find")), ["find-aws-credentials"]);
        let shm = Process::new(8, "x", "/dev/shm/x")
            .with_uid(1000)
            .with_args(["/dev/shm/x"]);
        assert_eq!(rules(&exec(&shm, "/dev/shm/x")), ["execution-from-dev-shm"]);
        let sh = Process::new(8, "sh", "/usr/bin/dash")
            .with_uid(1000)
            .with_args(["sh", "/dev/shm/run.sh"]);
        assert_eq!(rules(&exec(&sh, "/bin/sh")), ["execution-from-dev-shm"]);
        let shred = Process::new(9, "shred", "/usr/bin/shred")
            .with_uid(1000)
            .with_args(["shred", "-u", "x"]);
        assert_eq!(
            rules(&exec(&shred, "/usr/bin/shred")),
            ["remove-bulk-data-from-disk"]
        );
        let mkfs = Process::new(9, "mkfs.ext4", "/usr/sbin/mkfs.ext4").with_uid(1000);
        assert_eq!(
            rules(&exec(&mkfs, "/usr/sbin/mkfs.ext4")),
            ["remove-bulk-data-from-disk"]
        );
        let memfd = Process::new(10, "3", "/memfd:payload (deleted)").with_uid(1000);
        assert_eq!(
            rules(&exec(&memfd, "/dev/fd/3")),
            ["fileless-execution-memfd"]
        );
        let runc =
            Process::new(10, "runc", "/memfd:runc_cloned:/proc/self/exe (deleted)").with_uid(1000);
        assert!(exec(&runc, "/proc/self/fd/5").is_empty());
    }

    #[test]
    fn system_user_interactive_needs_login_lineage() {
        let p = Process::new(11, "bash", "/usr/bin/bash")
            .with_uid(33)
            .with_args(["bash"])
            .with_ancestor(10, "sshd", "/usr/sbin/sshd");
        assert_eq!(
            rules(&exec(&p, "/usr/bin/bash")),
            ["system-user-interactive"]
        );
        let daemon = Process::new(12, "sh", "/usr/bin/dash")
            .with_uid(33)
            .with_args(["sh", "-c", "x"])
            .with_ancestor(10, "cron", "/usr/sbin/cron");
        assert!(exec(&daemon, "/bin/sh").is_empty());
    }

    #[test]
    fn bad_config_names_the_key() {
        let err = FalcoProcess::init(Config::default().with("shell-spawnerz", ["x"]))
            .err()
            .unwrap();
        assert!(err.contains("shell-spawnerz"), "{err}");
    }
}
