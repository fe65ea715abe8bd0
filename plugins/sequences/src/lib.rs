//! `sequences`: stateful detectors that go beyond Falco's single-event rules. Each follows a
//! sequence of events across batches, instances and hot reloads through the host's `state`
//! interface (keys with TTLs, windowed counters), in event time when replaying.
//!
//! | rule id | sequence | priority |
//! |---|---|---|
//! | `download-then-execute` | a process connects out, writes a file, the file is executed within `download-window-ms` | critical |
//! | `credential-file-brute-force` | `failed-open-threshold` failed opens of credential files by one uid within `failed-open-window-ms` | warning |
//! | `reverse-shell-by-sequence` | a process connects out, then it or a descendant starts a shell within `reverse-shell-window-ms` | critical |
//! | `crypto-miner-execution` | a miner binary or miner arguments (stratum URLs, donate level, ...) | critical |
//! | `crypto-miner-pool-connection` | connections to stratum ports: at once after a miner exec, else after `pool-connect-threshold` | critical / warning |
//!
//! Every exec is routed here (miner arguments can come from any binary name); file events only
//! under the download directories and credential paths; connects are all routed, since the
//! first step of each sequence is an outbound connection.

use std::time::Duration;

use pack_common::{
    basename, describe_process, is_local_or_private, is_shell_name, lineage, lower_all,
    with_context,
};
use palisade_sdk::{
    state, Alert, Alerts, Config, ConnectionData, Detector, EventData, EventKind, EventRef,
    ExecData, NameSet, PathSet, PluginInfo, Priority, Process, Subscription,
};

const DOWNLOAD_DIRS: &[&str] = &[
    "/tmp/",
    "/var/tmp/",
    "/dev/shm/",
    "/home/",
    "/root/",
    "/usr/local/bin/",
    "/opt/",
    "/run/user/",
];
/// Package managers and build tools download and run code by design.
const DOWNLOAD_ALLOWED: &[&str] = &[
    "apt",
    "apt-get",
    "http",
    "https",
    "dpkg",
    "pip",
    "pip3",
    "npm",
    "yarn",
    "pnpm",
    "cargo",
    "rustup",
    "go",
    "dnf",
    "yum",
    "apk",
    "snapd",
    "gem",
    "bundle",
    "git",
    "git-remote-http",
    "unattended-upgr",
    "packagekitd",
    "uv",
];
const CREDENTIAL_FILES: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/sudoers.d/",
    "/root/.ssh/",
    "/etc/ssh/ssh_host_*_key",
    "/etc/security/opasswd",
];
/// Processes that connect out and then legitimately start shells (hooks, helpers).
const CONNECT_SHELL_ALLOWED: &[&str] = &[
    "apt",
    "apt-get",
    "http",
    "https",
    "pip",
    "pip3",
    "npm",
    "yarn",
    "cargo",
    "rustup",
    "git",
    "git-remote-http",
    "ssh",
    "sshd",
    "sshd-session",
    "systemd",
    "snapd",
    "dnf",
    "yum",
    "unattended-upgr",
    "packagekitd",
    "code",
    "node_exporter",
    "make",
];
const MINER_NAMES: &[&str] = &[
    "xmrig",
    "xmrig-notls",
    "minerd",
    "cpuminer",
    "cpuminer-multi",
    "ccminer",
    "t-rex",
    "nbminer",
    "ethminer",
    "xmr-stak",
    "xmr-stak-rx",
    "lolminer",
    "gminer",
    "phoenixminer",
    "nanominer",
    "cgminer",
    "bfgminer",
];
const MINER_ARGS: &[&str] = &[
    "stratum+tcp://",
    "stratum+ssl://",
    "stratum+tls://",
    "stratum2+tcp://",
    "--donate-level",
    "--cpu-priority",
    "--randomx",
    "-a cryptonight",
    "--algo=rx/0",
    "--coin=monero",
    "--nicehash",
];
/// Common mining-pool (stratum) ports.
const STRATUM_PORTS: &[i64] = &[
    3333, 3334, 3357, 4444, 5555, 5556, 5588, 5730, 6099, 6666, 7777, 7778, 8333, 8888, 8899, 9332,
    9999, 14433, 14444, 45560, 45700,
];

const KNOWN_KEYS: &[&str] = &[
    "download-dirs",
    "download-allowed",
    "download-window-ms",
    "download-include-private",
    "credential-files",
    "failed-open-threshold",
    "failed-open-window-ms",
    "reverse-shell-window-ms",
    "reverse-shell-allowed",
    "reverse-shell-include-private",
    "miner-names",
    "miner-args",
    "stratum-ports",
    "pool-connect-threshold",
    "pool-connect-window-ms",
];

/// The detector; see the crate docs.
pub struct Sequences {
    download_dirs: PathSet,
    download_allowed: NameSet,
    download_window: Duration,
    download_private: bool,
    credential_files: PathSet,
    failed_threshold: i64,
    failed_window: Duration,
    shell_window: Duration,
    shell_allowed: NameSet,
    shell_private: bool,
    miner_names: NameSet,
    miner_args: Vec<String>,
    stratum_ports: Vec<u16>,
    pool_threshold: i64,
    pool_window: Duration,
}

fn ms(config: &Config, key: &str, default: u64) -> Result<Duration, String> {
    Ok(Duration::from_millis(
        config.unsigned_or(key, default)?.max(1),
    ))
}

fn proc_key(p: &Process) -> String {
    format!("{}:{}", p.pid, p.start_ns)
}

fn remember(key: &str, value: &str, ttl: Duration) {
    if let Err(e) = state::set_string(key, value, Some(ttl)) {
        palisade_sdk::warn!("state {key}: {e:?}");
    }
}

impl Sequences {
    fn on_connect(&self, c: &ConnectionData, p: &Process, alerts: &mut Alerts) {
        if c.family == 1 || c.daddr.is_empty() {
            return; // AF_UNIX
        }
        let dest = format!("{}:{}", c.daddr, c.dport);
        let loopback = c.daddr.starts_with("127.") || c.daddr == "::1";
        let private = is_local_or_private(&c.daddr);
        if !loopback
            && (self.download_private || !private)
            && !self.download_allowed.matches_process(p)
        {
            remember(&format!("net:{}", proc_key(p)), &dest, self.download_window);
        }
        if !loopback && (self.shell_private || !private) && !self.shell_allowed.matches_process(p) {
            // Keyed by pid alone: the shell's ancestors are known by pid only.
            remember(&format!("conn:{}", p.pid), &dest, self.shell_window);
        }
        if self.stratum_ports.contains(&c.dport) && !private {
            let miner = state::is_marked(&format!("miner:{}", proc_key(p)));
            let count = state::incr(&format!("pool:{}", proc_key(p)), 1, Some(self.pool_window))
                .unwrap_or(0);
            if miner || count == self.pool_threshold {
                let (priority, why) = if miner {
                    (Priority::Critical, "after a miner start".to_string())
                } else {
                    (
                        Priority::Warning,
                        format!("{count} connections to stratum ports"),
                    )
                };
                alerts.push(
                    with_context(
                        Alert::new(
                            "crypto-miner-pool-connection",
                            priority,
                            format!(
                                "Mining pool connection to {dest} ({why}) by {}",
                                describe_process(p)
                            ),
                        ),
                        p,
                    )
                    .tags(["T1496", "mitre_impact", "network"])
                    .field("connection", &dest),
                );
            }
        }
    }

    fn on_write(&self, path: &str, p: &Process) {
        if !self.download_dirs.matches(path) {
            return;
        }
        if let Some(dest) = state::get_string(&format!("net:{}", proc_key(p))) {
            let who = format!("{} (pid {}) after connecting to {dest}", p.comm, p.pid);
            remember(&format!("dl:{path}"), &who, self.download_window);
        }
    }

    fn on_exec(&self, exec: &ExecData, p: &Process, alerts: &mut Alerts) {
        let key = format!("dl:{}", exec.filename);
        if let Some(writer) = state::get_string(&key) {
            state::delete(&key);
            alerts.push(
                with_context(
                    Alert::new(
                        "download-then-execute",
                        Priority::Critical,
                        format!(
                            "Downloaded file {} executed: written by {writer}; run by {} (lineage {})",
                            exec.filename,
                            describe_process(p),
                            lineage(p)
                        ),
                    ),
                    p,
                )
                .tags(["T1105", "T1204.002", "mitre_command_and_control", "mitre_execution", "process"])
                .field("filename", &exec.filename)
                .field("written_by", writer),
            );
        }
        let name = basename(&exec.filename);
        if is_shell_name(name) || is_shell_name(&p.comm) {
            let hit = std::iter::once(p.pid)
                .chain(p.ancestors.iter().map(|a| a.pid))
                .find_map(|pid| state::get_string(&format!("conn:{pid}")).map(|d| (pid, d)));
            if let Some((pid, dest)) = hit {
                alerts.push(
                    with_context(
                        Alert::new(
                            "reverse-shell-by-sequence",
                            Priority::Critical,
                            format!(
                                "Shell {} started after pid {pid} connected to {dest}: {} (lineage {})",
                                exec.filename,
                                describe_process(p),
                                lineage(p)
                            ),
                        ),
                        p,
                    )
                    .tags(["T1059.004", "T1071", "mitre_execution", "mitre_command_and_control", "process"])
                    .field("connection", dest)
                    .field("connected_pid", pid),
                );
            }
        }
        let lower: Vec<String> = exec.args.iter().map(|a| a.to_ascii_lowercase()).collect();
        let joined = lower.join(" ");
        let arg_hit = self.miner_args.iter().find(|m| joined.contains(m.as_str()));
        let name_hit = self.miner_names.matches(&p.comm, &exec.filename);
        if name_hit || arg_hit.is_some() {
            let _ = state::mark(&format!("miner:{}", proc_key(p)), self.pool_window);
            let why = match arg_hit {
                Some(a) => format!("argument {a}"),
                None => format!("miner binary {name}"),
            };
            alerts.push(
                with_context(
                    Alert::new(
                        "crypto-miner-execution",
                        Priority::Critical,
                        format!("Crypto miner started ({why}): {}", describe_process(p)),
                    ),
                    p,
                )
                .tags(["T1496", "mitre_impact", "process"])
                .field("indicator", why),
            );
        }
    }

    fn on_failed_open(&self, path: &str, result: i32, p: &Process, alerts: &mut Alerts) {
        if !self.credential_files.matches(path) {
            return;
        }
        let key = format!("fail:{}", p.uid);
        match state::incr(&key, 1, Some(self.failed_window)) {
            Ok(n) if n == self.failed_threshold => {
                alerts.push(
                    with_context(
                        Alert::new(
                            "credential-file-brute-force",
                            Priority::Warning,
                            format!(
                                "{n} failed opens of credential files by uid {} within {} s (last {path}, errno {}) by {}",
                                p.uid,
                                self.failed_window.as_secs(),
                                -result,
                                describe_process(p)
                            ),
                        ),
                        p,
                    )
                    .tags(["T1003.008", "T1552.004", "mitre_credential_access", "filesystem"])
                    .field("path", path)
                    .field("failures", n),
                );
            }
            Ok(_) => {}
            Err(e) => palisade_sdk::warn!("state {key}: {e:?}"),
        }
    }
}

impl Detector for Sequences {
    fn describe() -> PluginInfo {
        let creds = PathSet::new(CREDENTIAL_FILES);
        PluginInfo::detector(
            "sequences",
            env!("CARGO_PKG_VERSION"),
            "Stateful sequences: download-then-execute, credential brute force, reverse shell by connect-then-shell, crypto miners",
        )
        .subscribe(Subscription::to([EventKind::NetConnect, EventKind::Exec]))
        .subscribe(Subscription::to([EventKind::FileOpen, EventKind::FileRename, EventKind::FileChmod]).path_prefixes(DOWNLOAD_DIRS))
        .subscribe(Subscription::to([EventKind::FileOpen]).path_set(&creds))
        .config("download-dirs", DOWNLOAD_DIRS)
        .config("download-allowed", DOWNLOAD_ALLOWED)
        .config("download-window-ms", 600_000)
        .config("download-include-private", false)
        .config("credential-files", CREDENTIAL_FILES)
        .config("failed-open-threshold", 5)
        .config("failed-open-window-ms", 60_000)
        .config("reverse-shell-window-ms", 30_000)
        .config("reverse-shell-allowed", CONNECT_SHELL_ALLOWED)
        .config("reverse-shell-include-private", true)
        .config("miner-names", MINER_NAMES)
        .config("miner-args", MINER_ARGS)
        .config("stratum-ports", STRATUM_PORTS.to_vec())
        .config("pool-connect-threshold", 3)
        .config("pool-connect-window-ms", 600_000)
    }

    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(KNOWN_KEYS)?;
        let stratum_ports = config
            .integer_list_or("stratum-ports", STRATUM_PORTS)?
            .into_iter()
            .map(|v| {
                u16::try_from(v).map_err(|_| format!("config `stratum-ports`: {v} is not a port"))
            })
            .collect::<Result<Vec<u16>, String>>()?;
        let threshold = |key: &str, d: u64| -> Result<i64, String> {
            let v = config.unsigned_or(key, d)?;
            i64::try_from(v.max(1)).map_err(|_| format!("config `{key}`: too large"))
        };
        Ok(Sequences {
            download_dirs: PathSet::new(config.text_list_or("download-dirs", DOWNLOAD_DIRS)?),
            download_allowed: NameSet::new(
                config.text_list_or("download-allowed", DOWNLOAD_ALLOWED)?,
            ),
            download_window: ms(&config, "download-window-ms", 600_000)?,
            download_private: config.boolean_or("download-include-private", false)?,
            credential_files: PathSet::new(
                config.text_list_or("credential-files", CREDENTIAL_FILES)?,
            ),
            failed_threshold: threshold("failed-open-threshold", 5)?,
            failed_window: ms(&config, "failed-open-window-ms", 60_000)?,
            shell_window: ms(&config, "reverse-shell-window-ms", 30_000)?,
            shell_allowed: NameSet::new(
                config.text_list_or("reverse-shell-allowed", CONNECT_SHELL_ALLOWED)?,
            ),
            shell_private: config.boolean_or("reverse-shell-include-private", true)?,
            miner_names: NameSet::new(config.text_list_or("miner-names", MINER_NAMES)?),
            miner_args: lower_all(config.text_list_or("miner-args", MINER_ARGS)?),
            stratum_ports,
            pool_threshold: threshold("pool-connect-threshold", 3)?,
            pool_window: ms(&config, "pool-connect-window-ms", 600_000)?,
        })
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        let p = event.process;
        match event.data {
            EventData::NetConnect(c) => self.on_connect(c, p, alerts),
            EventData::FileOpen(open) => {
                if let Some(r) = open.result.filter(|r| *r < 0) {
                    self.on_failed_open(&open.path, r, p, alerts);
                } else if open.is_write() {
                    self.on_write(&open.path, p);
                }
            }
            EventData::FileRename(r) => {
                // A download renamed into place keeps its origin.
                if let Some(who) = state::get_string(&format!("dl:{}", r.from)) {
                    remember(&format!("dl:{}", r.to), &who, self.download_window);
                } else {
                    self.on_write(&r.to, p);
                }
            }
            EventData::FileChmod(c) => self.on_write(&c.path, p),
            EventData::Exec(exec) => self.on_exec(exec, p, alerts),
            _ => {}
        }
    }
}

palisade_sdk::export_detector!(Sequences);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_sdk::{run_batch, testing, EventBatch, FileOpenData};

    const S: u64 = 1_000_000_000;

    fn det() -> Sequences {
        Sequences::init(Config::new(Sequences::describe().default_config)).unwrap()
    }

    fn connect(daddr: &str, dport: u16) -> EventData {
        EventData::NetConnect(ConnectionData {
            family: 2,
            protocol: 6,
            saddr: "10.0.2.15".into(),
            sport: 40000,
            daddr: daddr.into(),
            dport,
        })
    }

    fn open(path: &str, flags: u32, result: i32) -> EventData {
        EventData::FileOpen(FileOpenData {
            path: path.into(),
            open_flags: flags,
            mode: 0o755,
            result: Some(result),
        })
    }

    fn exec(filename: &str, args: &[&str]) -> EventData {
        EventData::Exec(ExecData {
            filename: filename.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            args_truncated: false,
        })
    }

    /// Runs each event in its own batch through a fresh instance, as after a reload: only the
    /// host state carries the sequence.
    fn run(events: &[(&Process, u64, EventData)]) -> Vec<(String, u32, Priority)> {
        testing::reset();
        let mut out = Vec::new();
        for (i, (p, ts, d)) in events.iter().enumerate() {
            testing::set_now_ns(*ts);
            let mut b = EventBatch::new();
            b.push(p, *ts, d.clone());
            for a in run_batch(&mut det(), &b) {
                out.push((a.rule, i as u32, a.priority));
            }
        }
        out
    }

    #[test]
    fn download_then_execute_within_window_only() {
        let curl = Process::new(10, "curl", "/usr/bin/curl");
        let x = Process::new(11, "x", "/tmp/x");
        let got = run(&[
            (&curl, S, connect("203.0.113.7", 80)),
            (&curl, 2 * S, open("/tmp/x", 0o1101, 3)),
            (&x, 3 * S, exec("/tmp/x", &["/tmp/x"])),
            (&x, 4 * S, exec("/tmp/x", &["/tmp/x"])),
            (&curl, 5 * S, open("/tmp/y", 0o1101, 3)),
            (&x, 700 * S, exec("/tmp/y", &["/tmp/y"])),
        ]);
        assert_eq!(
            got,
            [("download-then-execute".to_string(), 2, Priority::Critical)]
        );
    }

    #[test]
    fn brute_force_counts_failures_per_uid_in_a_window() {
        let cat = Process::new(12, "cat", "/usr/bin/cat").with_uid(1000);
        let mut events = Vec::new();
        for i in 0..6 {
            events.push((&cat, (i + 1) * S, open("/etc/shadow", 0, -13)));
        }
        let got = run(&events);
        assert_eq!(
            got,
            [(
                "credential-file-brute-force".to_string(),
                4,
                Priority::Warning
            )]
        );
    }

    #[test]
    fn reverse_shell_and_miner() {
        let py = Process::new(20, "python3", "/usr/bin/python3");
        let sh = Process::new(21, "sh", "/usr/bin/dash").with_ancestor(
            20,
            "python3",
            "/usr/bin/python3",
        );
        let git = Process::new(22, "git", "/usr/bin/git");
        let hook = Process::new(23, "sh", "/usr/bin/dash").with_ancestor(22, "git", "/usr/bin/git");
        let xm = Process::new(30, "kthreadd2", "/tmp/.k/kthreadd2");
        let got = run(&[
            (&py, S, connect("198.51.100.4", 4444)),
            (&sh, 2 * S, exec("/bin/sh", &["sh"])),
            (&git, 3 * S, connect("140.82.112.3", 443)),
            (&hook, 4 * S, exec("/bin/sh", &["sh", "-c", "true"])),
            (
                &xm,
                5 * S,
                exec(
                    "/tmp/.k/kthreadd2",
                    &["kthreadd2", "-o", "stratum+tcp://pool.example:3333"],
                ),
            ),
            (&xm, 6 * S, connect("198.51.100.9", 3333)),
        ]);
        let rules: Vec<(&str, u32)> = got.iter().map(|(r, i, _)| (r.as_str(), *i)).collect();
        assert_eq!(
            rules,
            [
                ("reverse-shell-by-sequence", 1),
                ("crypto-miner-execution", 4),
                ("crypto-miner-pool-connection", 5),
            ]
        );
    }
}
