//! The seed scenario end to end, as shipped in examples/passwd-guard/: the real `palisade`
//! binary on the kernel (eBPF) source with the example's palisade.toml and sidecars, the
//! first-party `sensitive-files` detector and `kill-critical` responder built from source, and
//! an HTTP receiver in the test standing in for the webhook. A child opens /etc/passwd for
//! appending (never writing a byte, so the file is untouched) and sleeps; the test asserts the
//! alert, the child's death by SIGKILL within 100 ms of the kernel event, the audit record and
//! the webhook notification. One documented margin: when the 1-minute load average exceeds the
//! CPU count, a death up to 300 ms after the event is accepted with a loud OVER BUDGET line
//! (docs/performance.md has the measured distribution). The same setup with the grant taken
//! away, and in monitor mode, must leave the child alive and audit the request; a daemon killed
//! with -9 while the webhook is down must deliver the notification after its restart.
//!
//! Root only (eBPF, kill); without root every test prints a loud `SKIPPED (needs root)` line.
//! The tests share one lock: each daemon sees every process on the machine, so one test's
//! enforcing daemon would kill another test's child.
//!
//! `bench_kill_latency` (ignored; `sudo cargo test --release -p palisade-host --test
//! passwd_guard -- --ignored --nocapture bench_kill_latency`) measures alert-to-death latency
//! p50/p99 (`PALISADE_BENCH_RUNS`, default 200).
//!
//! With kill-critical's `block-exec` option set (and granted), the offender is a dropped copy
//! of a shell: after the kill its executable is blocked, and its next exec dies of SIGKILL
//! before running while an identical copy elsewhere runs
//! (`offender_is_killed_and_its_binary_blocked_from_running_again`). `bench_block_exec_latency`
//! (ignored, same command with that name) measures alert-to-block-in-force p50/p99.
#![cfg(feature = "ebpf")]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic on failure, like the tests"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_common::enforce::{BLOCK_PATH_LEN, MAP_BLOCK_EXEC};
use serde_json::Value;

/// The scenario's promise: the writer is dead this soon after the kernel event.
const DEATH_BUDGET: Duration = Duration::from_millis(100);
/// Accepted only when the 1-minute load average exceeds the CPU count (see the test).
const LOADED_CEILING: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(15);

/// Daemons on the kernel source see each other's children: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[path = "support/root.rs"]
mod root;

/// True (and a loud line on stderr, past libtest's capture) when the test cannot run here.
fn skip(test: &str) -> bool {
    root::skip_unless_root(
        &format!("passwd_guard::{test}"),
        "runs the daemon on the kernel source and kills",
    )
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// More runnable work than CPUs: latency figures are the scheduler's, not the daemon's.
fn overloaded() -> bool {
    load_average() > cpus() as f64
}

fn now_ns() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example() -> PathBuf {
    repo().join("examples/passwd-guard")
}

/// A first-party plugin built from this checkout (once per test binary). The root is passed
/// explicitly rather than taken from the xtask crate, so the plugins are this tree's.
fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<xtask::BuiltPlugins> = OnceLock::new();
    BUILT
        .get_or_init(|| xtask::build_plugins(&repo(), xtask::Profile::Release).unwrap())
        .plugin(name)
        .unwrap_or_else(|| panic!("no plugin {name}"))
        .wasm
        .clone()
}

/// One notification as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    key: Option<String>,
    body: Value,
}

/// A tiny HTTP/1.1 webhook endpoint on 127.0.0.1 answering 200 to every POST.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(addr: &str) -> Receiver {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (Arc::clone(&got), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut headers = BTreeMap::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                g.lock().unwrap().push(Received {
                    key: headers.get("idempotency-key").cloned(),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                });
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
        });
        Receiver {
            addr,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn wait_for(&self, alert_id: &str) -> Received {
        let t0 = Instant::now();
        loop {
            if let Some(r) = self
                .got
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.body["alert_id"] == alert_id)
            {
                return r.clone();
            }
            assert!(
                t0.elapsed() < WAIT,
                "no notification for alert {alert_id}; got {:?}",
                self.got.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A free 127.0.0.1 port nobody listens on (yet).
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The example installed into a private, root-owned directory the daemon accepts, with its
/// palisade.toml rewritten only where a test must differ: file locations, the webhook URL, and
/// what `tweak` changes (grants, mode). Everything else (detector and responder sidecars,
/// grants, mode, notify format) is the example's own.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(webhook: SocketAddr, tweak: impl FnOnce(&mut toml::Table)) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        for name in ["sensitive-files", "kill-critical"] {
            let wasm = plugins.join(format!("{name}.wasm"));
            std::fs::copy(plugin(name), &wasm).unwrap();
            let sidecar = plugins.join(format!("{name}.toml"));
            std::fs::copy(example().join(format!("plugins/{name}.toml")), &sidecar).unwrap();
            for f in [wasm, sidecar] {
                std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                    .unwrap();
            }
        }
        let text = std::fs::read_to_string(example().join("palisade.toml")).unwrap();
        let mut config: toml::Table = text.parse().unwrap();
        let d = dir.path();
        let set = |t: &mut toml::Table, section: &str, key: &str, value: toml::Value| {
            let table = t[section].as_table_mut().unwrap();
            assert!(
                table.contains_key(key),
                "example palisade.toml lost [{section}] {key}"
            );
            table.insert(key.into(), value);
        };
        let path = |p: PathBuf| toml::Value::String(p.display().to_string());
        set(&mut config, "plugins", "dir", path(plugins));
        set(
            &mut config,
            "plugins",
            "cache_dir",
            path(repo().join("target/test-cache")),
        );
        set(
            &mut config,
            "actions",
            "audit_log",
            path(d.join("audit.jsonl")),
        );
        set(&mut config, "actions", "state_dir", path(d.join("state")));
        set(&mut config, "notify", "spool_dir", path(d.join("spool")));
        set(
            &mut config,
            "notify",
            "webhook_url",
            toml::Value::String(format!("http://{webhook}/palisade")),
        );
        // Alerts to a file the test reads (the example prints them on stdout).
        let mut output = toml::Table::new();
        output.insert("kind".into(), "file".into());
        output.insert("path".into(), path(d.join("alerts.jsonl")));
        output.insert("format".into(), "json".into());
        config.insert(
            "outputs".into(),
            toml::Value::Array(vec![toml::Value::Table(output)]),
        );
        let exactly: toml::Table = "kill-critical = [\"kill-process\", \"notify\"]"
            .parse()
            .unwrap();
        assert_eq!(
            config["grants"].as_table(),
            Some(&exactly),
            "the example grants exactly kill-process and notify to the responder"
        );
        tweak(&mut config);
        let config_path = d.join("palisade.toml");
        std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
        Setup {
            dir,
            config: config_path,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn alerts(&self) -> Vec<Value> {
        jsonl(&self.path("alerts.jsonl"))
    }

    fn audit(&self) -> Vec<Value> {
        jsonl(&self.path("audit.jsonl"))
    }

    /// The `sensitive-file-write` alert about `pid`, waiting for it.
    fn wait_alert(&self, pid: u32) -> Value {
        let needle = format!("(pid {pid},");
        let t0 = Instant::now();
        loop {
            if let Some(a) = self.alerts().into_iter().find(|a| {
                a["rule"] == "sensitive-file-write"
                    && a["message"].as_str().is_some_and(|m| m.contains(&needle))
            }) {
                return a;
            }
            assert!(
                t0.elapsed() < WAIT,
                "no sensitive-file-write alert for pid {pid}; alerts: {:?}",
                self.alerts()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The audit record of `action` for `alert_id`, waiting for it.
    fn wait_audit(&self, action: &str, alert_id: &str) -> Value {
        let t0 = Instant::now();
        loop {
            if let Some(r) = self
                .audit()
                .into_iter()
                .find(|r| r["action"] == action && r["alert_id"] == alert_id)
            {
                return r;
            }
            assert!(
                t0.elapsed() < WAIT,
                "no {action} audit record for {alert_id}: {:?}",
                self.audit()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The real daemon binary; stopped with SIGINT on drop (SIGKILL after 10 s).
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(setup: &Setup, log_name: &str) -> Daemon {
        let log = setup.path(log_name);
        let child = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["run", "--config"])
            .arg(&setup.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon {
            child: Some(child),
            log,
        };
        let t0 = Instant::now();
        while !daemon.log_text().contains("palisade running") {
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited ({status}):\n{}", daemon.log_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "daemon did not start:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = daemon.log_text();
        assert!(
            text.contains("detectors=1") && text.contains("responders=1"),
            "the example loads one detector and one responder:\n{text}"
        );
        daemon
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: a crash, nothing flushed or cleaned up.
    fn crash(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child.
        #[expect(unsafe_code, reason = "kill(2) through libc")]
        unsafe {
            libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGINT);
        }
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A child that opens /etc/passwd for appending (O_WRONLY|O_APPEND|O_CREAT on an existing
/// file: nothing written, nothing truncated) and then sleeps as the same process. A thread
/// reaps it and records when it died.
struct Victim {
    pid: u32,
    died: Arc<Mutex<Option<(u64, std::process::ExitStatus)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Victim {
    fn start() -> Victim {
        Victim::start_with(Path::new("/bin/sh"))
    }

    /// The same child run by `shell` (a copy of a shell, so the alert's `exe` is the copy).
    fn start_with(shell: &Path) -> Victim {
        let mut child = Command::new(shell)
            .args(["-c", "exec 3>>/etc/passwd; exec sleep 30"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let died = Arc::new(Mutex::new(None));
        let d = Arc::clone(&died);
        let thread = std::thread::spawn(move || {
            let status = child.wait().unwrap();
            let at = now_ns();
            *d.lock().unwrap() = Some((at, status));
        });
        Victim {
            pid,
            died,
            thread: Some(thread),
        }
    }

    /// Time of death (ns since the epoch) and exit status, waiting up to `timeout`.
    fn wait_death(&self, timeout: Duration) -> Option<(u64, std::process::ExitStatus)> {
        let t0 = Instant::now();
        loop {
            if let Some(d) = *self.died.lock().unwrap() {
                return Some(d);
            }
            if t0.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        if self.died.lock().unwrap().is_none() {
            // SAFETY: our own child, not reaped yet (the reaper thread records the reap).
            #[expect(unsafe_code, reason = "kill(2) through libc")]
            unsafe {
                libc::kill(i32::try_from(self.pid).unwrap(), libc::SIGKILL);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn passwd_unchanged(before: &[u8]) {
    assert_eq!(
        std::fs::read("/etc/passwd").unwrap(),
        before,
        "/etc/passwd must never change"
    );
}

#[test]
fn writer_is_killed_within_100ms_reported_audited_and_notified() {
    if skip("writer_is_killed_within_100ms_reported_audited_and_notified") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = std::fs::read("/etc/passwd").unwrap();
    let receiver = Receiver::start("127.0.0.1:0");
    let setup = Setup::new(receiver.addr, |_| {});
    let _daemon = Daemon::start(&setup, "daemon.log");

    let victim = Victim::start();
    let (died_ns, status) = victim.wait_death(WAIT).expect("the writer was not killed");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    let alert = setup.wait_alert(victim.pid);
    assert_eq!(alert["priority"], "critical");
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .starts_with("Sensitive file /etc/passwd opened for writing by "),
        "{alert}"
    );
    let event_ns = alert["event"]["ts_ns"].as_u64().unwrap();
    let alert_ns = alert["ts_ns"].as_u64().unwrap();
    let after_event = Duration::from_nanos(died_ns.saturating_sub(event_ns));
    let after_alert = Duration::from_nanos(died_ns.saturating_sub(alert_ns));
    // Recorded on every run (visible with --nocapture) so a slow machine shows its figure.
    eprintln!(
        "passwd-guard: event -> dead {:.1} ms, alert -> dead {:.1} ms",
        after_event.as_secs_f64() * 1e3,
        after_alert.as_secs_f64() * 1e3
    );
    if after_event > DEATH_BUDGET && overloaded() {
        // The documented margin: measured p99 is ~60 ms at a load average of 10 on 2 cores
        // (docs/performance.md), but a single sample can exceed 100 ms when the scheduler is
        // that far behind. Say so loudly instead of failing, within a hard ceiling.
        let line = format!(
            "OVER BUDGET ON AN OVERLOADED MACHINE: writer died {after_event:?} after the event \
             (budget {DEATH_BUDGET:?}, load {:.1} on {} cpus); accepted up to {LOADED_CEILING:?}\n",
            load_average(),
            cpus()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        assert!(after_event <= LOADED_CEILING, "{line}");
    } else {
        assert!(
            after_event <= DEATH_BUDGET,
            "writer died {after_event:?} after the event (budget {DEATH_BUDGET:?}; alert -> dead {after_alert:?})"
        );
    }

    let id = alert["id"].as_str().unwrap();
    let kill = setup.wait_audit("kill-process", id);
    assert_eq!(kill["responder"], "kill-critical");
    assert_eq!(kill["mode"], "enforce");
    assert_eq!(kill["result"], "ok", "{kill}");
    assert_eq!(kill["target"]["pid"], victim.pid);

    let got = receiver.wait_for(id);
    assert_eq!(
        got.key.as_deref(),
        Some(format!("{id}:kill-critical:passwd-guard").as_str())
    );
    assert_eq!(got.body["responder"], "kill-critical");
    assert_eq!(got.body["channel"], "passwd-guard");
    let message = got.body["message"].as_str().unwrap();
    assert!(
        message.starts_with("[CRITICAL] sensitive-file-write: Sensitive file /etc/passwd")
            && message.ends_with(&format!("killed pid {} (sh) with signal 9", victim.pid)),
        "{message}"
    );
    let notify = setup.wait_audit("notify", id);
    assert_eq!(notify["result"], "ok", "{notify}");
    passwd_unchanged(&before);
}

/// The example without the kill grant: the request is answered `denied`, audited, the writer
/// lives, and the notification says so.
#[test]
fn responder_without_the_grant_is_denied_audited_and_kills_nothing() {
    if skip("responder_without_the_grant_is_denied_audited_and_kills_nothing") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let receiver = Receiver::start("127.0.0.1:0");
    let setup = Setup::new(receiver.addr, |c| {
        c["grants"].as_table_mut().unwrap().insert(
            "kill-critical".into(),
            toml::Value::Array(vec!["notify".into()]),
        );
    });
    let _daemon = Daemon::start(&setup, "daemon.log");
    let victim = Victim::start();
    let alert = setup.wait_alert(victim.pid);
    let id = alert["id"].as_str().unwrap();
    let record = setup.wait_audit("kill-process", id);
    assert_eq!(record["result"], "denied", "{record}");
    assert_eq!(record["responder"], "kill-critical");
    assert_eq!(record["target"]["pid"], victim.pid);
    let got = receiver.wait_for(id);
    assert!(
        got.body["message"]
            .as_str()
            .unwrap()
            .ends_with("refused: denied: kill-process"),
        "{}",
        got.body
    );
    assert!(
        victim.wait_death(Duration::from_millis(500)).is_none(),
        "an ungranted kill must change nothing"
    );
}

/// The example in monitor mode: the kill is recorded as `recorded`/monitor, nothing is done,
/// and the notification is only recorded too (nothing reaches the webhook).
#[test]
fn monitor_mode_changes_nothing_and_is_audited() {
    if skip("monitor_mode_changes_nothing_and_is_audited") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let receiver = Receiver::start("127.0.0.1:0");
    let setup = Setup::new(receiver.addr, |c| {
        c["actions"]
            .as_table_mut()
            .unwrap()
            .insert("mode".into(), "monitor".into());
    });
    let _daemon = Daemon::start(&setup, "daemon.log");
    let victim = Victim::start();
    let alert = setup.wait_alert(victim.pid);
    let id = alert["id"].as_str().unwrap();
    let kill = setup.wait_audit("kill-process", id);
    assert_eq!(
        (&kill["mode"], &kill["result"]),
        (&Value::from("monitor"), &Value::from("recorded")),
        "{kill}"
    );
    let notify = setup.wait_audit("notify", id);
    assert_eq!(notify["result"], "recorded", "{notify}");
    assert!(
        victim.wait_death(Duration::from_millis(500)).is_none(),
        "monitor mode must not kill"
    );
    assert!(
        receiver.got.lock().unwrap().is_empty(),
        "monitor mode must not send notifications"
    );
}

/// The webhook is down when the writer is killed, and the daemon is killed with -9 before it
/// comes back: the spooled notification is delivered by the restarted daemon.
#[test]
fn webhook_outage_and_daemon_crash_lose_no_notification() {
    if skip("webhook_outage_and_daemon_crash_lose_no_notification") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let addr = closed_port();
    let setup = Setup::new(addr, |_| {});
    let daemon = Daemon::start(&setup, "daemon-1.log");
    let victim = Victim::start();
    victim.wait_death(WAIT).expect("the writer was not killed");
    let alert = setup.wait_alert(victim.pid);
    let id = alert["id"].as_str().unwrap().to_owned();
    setup.wait_audit("notify", &id);
    let spooled = || {
        std::fs::read_dir(setup.path("spool"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(spooled(), 1, "the notification waits in the spool");
    daemon.crash();

    let receiver = Receiver::start(&addr.to_string());
    let _daemon = Daemon::start(&setup, "daemon-2.log");
    let got = receiver.wait_for(&id);
    assert_eq!(got.key, Some(format!("{id}:kill-critical:passwd-guard")));
    assert_eq!(got.body["responder"], "kill-critical");
    let t0 = Instant::now();
    while spooled() != 0 {
        assert!(t0.elapsed() < WAIT, "spool not drained after delivery");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Alert-to-action latency of kill: N writers one after another against one running daemon
/// (the example's config), each timed from the alert being raised (and from the kernel event)
/// to its death as seen by its parent's waitpid.
#[test]
#[ignore = "benchmark"]
fn bench_kill_latency() {
    if skip("bench_kill_latency") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let runs = bench_runs();
    let receiver = Receiver::start("127.0.0.1:0");
    // The example's rate limit (the default, 60 requests a minute) would refuse most runs.
    let setup = Setup::new(receiver.addr, |c| {
        c["actions"]
            .as_table_mut()
            .unwrap()
            .insert("rate_limit_per_minute".into(), 1_000_000.into());
    });
    let daemon = Daemon::start(&setup, "daemon.log");
    let (mut from_alert, mut from_event) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let victim = Victim::start();
        let Some((died, _)) = victim.wait_death(WAIT) else {
            panic!(
                "run {run}: pid {} not killed; audit: {:?}\n{}",
                victim.pid,
                setup.audit().last(),
                daemon.log_text()
            );
        };
        let alert = setup.wait_alert(victim.pid);
        let ms = |ns: u64| died.saturating_sub(ns) as f64 / 1e6;
        from_alert.push(ms(alert["ts_ns"].as_u64().unwrap()));
        from_event.push(ms(alert["event"]["ts_ns"].as_u64().unwrap()));
    }
    for v in [&mut from_alert, &mut from_event] {
        v.sort_by(f64::total_cmp);
    }
    println!("| kill latency ({runs} runs) | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    for (name, v) in [
        ("alert raised -> process dead", &from_alert),
        ("kernel event -> process dead", &from_event),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            percentile(v, 50.0),
            percentile(v, 99.0),
            v[v.len() - 1]
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "kill_latency",
            "runs": runs,
            "alert_to_dead_ms": {"p50": percentile(&from_alert, 50.0), "p99": percentile(&from_alert, 99.0), "max": from_alert[from_alert.len() - 1]},
            "event_to_dead_ms": {"p50": percentile(&from_event, 50.0), "p99": percentile(&from_event, 99.0), "max": from_event[from_event.len() - 1]},
        })
    );
}

/// A bpffs directory for one daemon's block-exec maps (`actions.bpf_pin_dir`), so a test never
/// shares the host's pins; emptied and removed on drop (after the daemon, which detaches the
/// exec program when it exits: declare this before the daemon).
struct BpfPins(PathBuf);

impl BpfPins {
    fn new() -> BpfPins {
        BpfPins(PathBuf::from(format!(
            "/sys/fs/bpf/palisade-passwd-guard-{}",
            std::process::id()
        )))
    }
}

impl Drop for BpfPins {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The example plus kill-critical's `block-exec` option: the responder may also block exec,
/// and blocks the executable of a selected alert's process when it matches
/// `<setup>/bin/dropped-*` (copies of a shell the test makes there; nothing else on the host).
fn block_setup(webhook: SocketAddr, pins: &BpfPins, rate_limit: u32) -> Setup {
    let setup = Setup::new(webhook, |c| {
        c["grants"].as_table_mut().unwrap().insert(
            "kill-critical".into(),
            toml::Value::Array(vec![
                "kill-process".into(),
                "notify".into(),
                "block-exec".into(),
            ]),
        );
        let actions = c["actions"].as_table_mut().unwrap();
        actions.insert("bpf_pin_dir".into(), pins.0.display().to_string().into());
        actions.insert("rate_limit_per_minute".into(), i64::from(rate_limit).into());
    });
    std::fs::create_dir(setup.path("bin")).unwrap();
    let sidecar = setup.path("plugins/kill-critical.toml");
    let mut table: toml::Table = std::fs::read_to_string(&sidecar).unwrap().parse().unwrap();
    let glob = setup.path("bin/dropped-*").display().to_string();
    table["config"]
        .as_table_mut()
        .unwrap()
        .insert("block-exec".into(), toml::Value::Array(vec![glob.into()]));
    std::fs::write(&sidecar, toml::to_string(&table).unwrap()).unwrap();
    setup
}

/// A copy of the system shell at `<setup>/bin/<name>`: a binary of its own (own inode), so a
/// block on it stops nothing else.
fn shell_copy(setup: &Setup, name: &str) -> PathBuf {
    let path = setup.path("bin").join(name);
    std::fs::copy("/bin/sh", &path).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// Runs `shell -c ': > marker'`. `Ok(())`: it ran (the marker exists, removed again);
/// `Err(status)`: it did not run its script (the marker does not exist).
fn probe(shell: &Path, marker: &Path) -> Result<(), std::process::ExitStatus> {
    let status = Command::new(shell)
        .arg("-c")
        .arg(format!(": > '{}'", marker.display()))
        .stdin(Stdio::null())
        .status()
        .expect("the probe spawns (a blocked exec still forks)");
    if marker.exists() {
        std::fs::remove_file(marker).unwrap();
        assert!(
            status.success(),
            "{} ran but failed: {status}",
            shell.display()
        );
        Ok(())
    } else {
        Err(status)
    }
}

/// Asserts the exec was blocked: killed by SIGKILL before its script ran.
fn assert_blocked(shell: &Path, marker: &Path) {
    let status = probe(shell, marker)
        .map(|()| panic!("{} ran after the block", shell.display()))
        .unwrap_err();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
}

/// The chain alert -> responder -> block-exec -> next exec killed, on the real daemon: a
/// dropped copy of a shell opens /etc/passwd for writing; `kill-critical` (with `block-exec`
/// set) kills it and blocks its executable; the same binary then dies of SIGKILL before running
/// its script, from the test or from another parent, while an identical copy elsewhere and the
/// system shell still run. Audited, and the notification says so.
#[test]
fn offender_is_killed_and_its_binary_blocked_from_running_again() {
    if skip("offender_is_killed_and_its_binary_blocked_from_running_again") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = std::fs::read("/etc/passwd").unwrap();
    let receiver = Receiver::start("127.0.0.1:0");
    let pins = BpfPins::new();
    let setup = block_setup(receiver.addr, &pins, 60);
    let dropped = shell_copy(&setup, "dropped-sh");
    let twin = shell_copy(&setup, "twin-sh");
    let marker = setup.path("marker");
    let _daemon = Daemon::start(&setup, "daemon.log");
    probe(&dropped, &marker).expect("the dropped shell runs before any alert");

    let victim = Victim::start_with(&dropped);
    let (_, status) = victim.wait_death(WAIT).expect("the writer was not killed");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    let alert = setup.wait_alert(victim.pid);
    let id = alert["id"].as_str().unwrap();
    let kill = setup.wait_audit("kill-process", id);
    assert_eq!(kill["result"], "ok", "{kill}");
    let block = setup.wait_audit("block-exec", id);
    assert_eq!(
        (&block["result"], &block["mode"], &block["responder"]),
        (
            &Value::from("ok"),
            &Value::from("enforce"),
            &Value::from("kill-critical")
        ),
        "{block}"
    );
    assert_eq!(block["target"]["path"], dropped.display().to_string());
    assert!(
        kill["ts_ns"].as_u64() <= block["ts_ns"].as_u64(),
        "the kill goes first: {kill} {block}"
    );
    eprintln!(
        "passwd-guard block-exec: alert -> block audited {:.1} ms",
        block["ts_ns"]
            .as_u64()
            .unwrap()
            .saturating_sub(alert["ts_ns"].as_u64().unwrap()) as f64
            / 1e6
    );

    // The block is in force once audited: the next exec of the binary dies before running,
    // whoever starts it.
    assert_blocked(&dropped, &marker);
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "exec '{}' -c \": > '{}'\"",
            dropped.display(),
            marker.display()
        ))
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(
        !marker.exists(),
        "the blocked binary ran from another parent"
    );
    // Same contents, another file; and the system shell: both run.
    probe(&twin, &marker).expect("an identical copy elsewhere is not blocked");
    probe(Path::new("/bin/sh"), &marker).expect("the system shell is not blocked");

    let got = receiver.wait_for(id);
    let message = got.body["message"].as_str().unwrap();
    assert!(
        message.ends_with(&format!(
            "killed pid {} (dropped-sh) with signal 9; blocked exec of {}",
            victim.pid,
            dropped.display()
        )),
        "{message}"
    );
    passwd_unchanged(&before);
}

/// The block-exec path map the daemon pinned under `pins`, once it exists (the first block of
/// the daemon creates it).
fn pinned_block_map(
    pins: &BpfPins,
) -> Option<aya::maps::HashMap<aya::maps::MapData, [u8; BLOCK_PATH_LEN], u64>> {
    let data = aya::maps::MapData::from_pin(pins.0.join(MAP_BLOCK_EXEC)).ok()?;
    aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).ok()
}

/// The map's key for `path`: its bytes, zero-padded (as the daemon writes it).
fn block_key(path: &Path) -> [u8; BLOCK_PATH_LEN] {
    let bytes = path.as_os_str().as_encoded_bytes();
    let mut key = [0u8; BLOCK_PATH_LEN];
    key[..bytes.len()].copy_from_slice(bytes);
    key
}

/// `PALISADE_BENCH_RUNS`, default 200.
fn bench_runs() -> usize {
    std::env::var("PALISADE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Alert-to-block latency of block-exec through the real daemon: each run drops a fresh copy of
/// a shell (which first runs, proving it is not blocked yet), runs it as a writer of
/// /etc/passwd and polls the kernel map the exec program reads (pinned by the daemon, every
/// ~50 µs) for the binary's path key: from that instant the block is in force, which one exec
/// of the binary per run then proves (SIGKILL, its script never ran). Timed from the alert and
/// from the kernel event to the key being in the map, and to the block-exec audit record
/// (written after the state file is persisted). The first run (the daemon's first block loads
/// and attaches the exec program) is reported apart.
#[test]
#[ignore = "benchmark"]
fn bench_block_exec_latency() {
    if skip("bench_block_exec_latency") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let runs = bench_runs();
    let receiver = Receiver::start("127.0.0.1:0");
    let pins = BpfPins::new();
    // The default rate limit (60 requests a minute) would refuse most runs.
    let setup = block_setup(receiver.addr, &pins, 1_000_000);
    let daemon = Daemon::start(&setup, "daemon.log");
    let marker = setup.path("marker");
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap();
    let mut map = None;
    let (mut in_map, mut in_map_event, mut audited, mut dead) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut first = None;
    for run in 0..=runs {
        let dropped = shell_copy(&setup, &format!("dropped-{run}"));
        probe(&dropped, &marker).expect("a fresh copy runs before its alert");
        let key = block_key(&dropped);
        let victim = Victim::start_with(&dropped);
        let t0 = Instant::now();
        let blocked_at = loop {
            if map.is_none() {
                map = pinned_block_map(&pins);
            }
            if map.as_ref().is_some_and(|m| m.get(&key, 0).is_ok()) {
                break now_ns();
            }
            assert!(
                t0.elapsed() < WAIT,
                "run {run}: {} never blocked; audit: {:?}\n{}",
                dropped.display(),
                setup.audit().last(),
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_micros(50));
        };
        assert_blocked(&dropped, &marker);
        let (died, _) = victim.wait_death(WAIT).expect("the writer was not killed");
        let alert = setup.wait_alert(victim.pid);
        let block = setup.wait_audit("block-exec", alert["id"].as_str().unwrap());
        assert_eq!(block["result"], "ok", "{block}");
        let (alert_ns, event_ns) = (
            alert["ts_ns"].as_u64().unwrap(),
            alert["event"]["ts_ns"].as_u64().unwrap(),
        );
        let ms = |to: u64, from: u64| to.saturating_sub(from) as f64 / 1e6;
        let audit_ns = block["ts_ns"].as_u64().unwrap();
        if run == 0 {
            first = Some((ms(blocked_at, alert_ns), ms(audit_ns, alert_ns)));
            continue;
        }
        in_map.push(ms(blocked_at, alert_ns));
        in_map_event.push(ms(blocked_at, event_ns));
        audited.push(ms(audit_ns, alert_ns));
        dead.push(ms(died, alert_ns));
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap();
    let rows = [
        (
            "alert raised -> block in force (key in the kernel map)",
            &mut in_map,
        ),
        ("kernel event -> block in force", &mut in_map_event),
        (
            "alert raised -> block-exec audited (after persisting)",
            &mut audited,
        ),
        (
            "alert raised -> offender dead (the kill before it)",
            &mut dead,
        ),
    ];
    println!("| block-exec latency ({runs} runs) | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    let mut json = serde_json::Map::new();
    for (name, v) in rows {
        v.sort_by(f64::total_cmp);
        let (p50, p99, max) = (percentile(v, 50.0), percentile(v, 99.0), v[v.len() - 1]);
        println!("| {name} | {p50:.2} | {p99:.2} | {max:.2} |");
        json.insert(
            name.into(),
            serde_json::json!({"p50": p50, "p99": p99, "max": max}),
        );
    }
    let (first_in_map, first_audited) = first.unwrap();
    println!(
        "| first block of the daemon (loads + attaches the exec program): alert -> in force / audited | {first_in_map:.2} / {first_audited:.2} | | |"
    );
    println!(
        "load average before: {} after: {}",
        load_before.trim(),
        load_after.trim()
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "block_exec_latency",
            "runs": runs,
            "ms": json,
            "first_block_ms": {"alert_to_in_force": first_in_map, "alert_to_audited": first_audited},
            "loadavg": {"before": load_before.trim(), "after": load_after.trim()},
        })
    );
}
