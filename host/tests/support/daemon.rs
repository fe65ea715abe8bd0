//! Daemons for the kernel tests, in one place (they were written out in each test file):
//! - [`KernelDaemon`]: the in-process test daemon ([`Harness`]) fed by a real eBPF source whose
//!   kernel side follows the daemon's registry, read on its own thread ([`SourceThread`]);
//! - [`DaemonProcess`]: the real `palisade run` binary, started and waited for until it logs
//!   "palisade running", its log drained into memory (a full pipe would block it), its
//!   `/metrics` scraped;
//! - what the tests look at and do: the kernel's own list of a process's program links
//!   ([`linked_programs`]), opens from a shell child ([`open_n`]).
//!
//! Shared by path (`#[path = "support/daemon.rs"] mod daemon;`) next to `mod support;`, so only
//! the kernel test binaries build it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use palisade::daemon::Pipeline;
use palisade::ebpf::{CountersHandle, EbpfSource, EbpfStats, KernelFilter, ProbeSet};
use palisade::event::source::{EventSink, EventSource, StopFlag};

use crate::support::{cache_dir, Harness};

/// How long a daemon may take to start (plugins may be compiled on a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// An eBPF source read into a sink on its own thread until stopped (stopped on drop).
pub struct SourceThread {
    stop: StopFlag,
    thread: Option<JoinHandle<()>>,
}

impl SourceThread {
    pub fn spawn(mut source: EbpfSource, sink: Arc<dyn EventSink>) -> Self {
        let stop = StopFlag::default();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                source.run(&*sink, &stop).unwrap();
            })
        };
        SourceThread {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the reader and waits for it (it mirrors its last counters at stop); panics if it
    /// failed.
    pub fn stop(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for SourceThread {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            // Never a second panic while unwinding from a failed assertion.
            let _ = thread.join();
        }
    }
}

/// A test daemon fed by a real eBPF source: the kernel side (programs, filter maps) follows the
/// daemon's registry, and the source is read into the daemon's pipeline on its own thread.
/// Dropping it stops the reader, then the pipeline.
pub struct KernelDaemon {
    pub counters: CountersHandle,
    pub stats: Arc<EbpfStats>,
    pub probes: Arc<Mutex<ProbeSet>>,
    pub filter: KernelFilter,
    pub reader: SourceThread,
    pipeline: Option<Pipeline>,
}

impl KernelDaemon {
    /// Attaches `source` to `h`'s daemon and reads it into the daemon's router.
    pub fn start(h: &Harness, source: EbpfSource) -> Self {
        Self::start_into(h, source, |sink| sink)
    }

    /// Like [`KernelDaemon::start`], reading into `wrap(router)` (a tap in front of it).
    pub fn start_into(
        h: &Harness,
        mut source: EbpfSource,
        wrap: impl FnOnce(Arc<dyn EventSink>) -> Arc<dyn EventSink>,
    ) -> Self {
        let (counters, stats, probes, filter) = (
            source.counters(),
            source.stats(),
            source.probes(),
            source.filter(),
        );
        source.attach(&h.daemon);
        let pipeline = h.start();
        let reader = SourceThread::spawn(source, wrap(pipeline.sink()));
        KernelDaemon {
            counters,
            stats,
            probes,
            filter,
            reader,
            pipeline: Some(pipeline),
        }
    }

    /// Stops the reader, then drains the pipeline (every queued event reaches its plugins).
    pub fn finish(mut self) {
        self.reader.stop();
        if let Some(pipeline) = self.pipeline.take() {
            pipeline.finish();
        }
    }
}

/// The real `palisade run`, logging at info. Stopped with SIGTERM by [`DaemonProcess::stop`],
/// killed on drop.
pub struct DaemonProcess {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    metrics: SocketAddr,
}

impl DaemonProcess {
    /// The usual set-up: plugins from `plugins`, the shared compile cache, audit log and alerts
    /// in `scratch`, a config file `scratch/palisade.toml` of `version = 1` plus `config`, and
    /// `extra` arguments (e.g. `--no-watch`).
    pub fn start(plugins: &Path, scratch: &Path, config: &str, extra: &[&str]) -> Self {
        let file = scratch.join("palisade.toml");
        std::fs::write(&file, format!("version = 1\n{config}\n")).unwrap();
        let mut args: Vec<&OsStr> = vec![
            "--config".as_ref(),
            file.as_os_str(),
            "--plugins".as_ref(),
            plugins.as_os_str(),
        ];
        let cache = cache_dir();
        let audit = scratch.join("audit.jsonl");
        let alerts = scratch.join("alerts.jsonl");
        args.extend([
            "--cache-dir".as_ref(),
            cache.as_os_str(),
            "--audit-log".as_ref(),
            audit.as_os_str(),
            "-o".as_ref(),
            alerts.as_os_str(),
        ]);
        args.extend(extra.iter().map(OsStr::new));
        Self::run(args)
    }

    /// `palisade --log-level info run ARGS --metrics-addr <a free port>`; returns once it logs
    /// "palisade running" (panics with its log if it exits first or takes over a minute).
    pub fn run<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Self {
        // A free port: bind, read, release (the daemon binds it a moment later).
        let metrics = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["--log-level", "info", "run"])
            .args(args)
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in stderr.lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let mut daemon = DaemonProcess {
            child: Some(child),
            log,
            metrics,
        };
        daemon.wait_log("palisade running", START_TIMEOUT);
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the log contains `needle`; panics with the log if the daemon exits first or
    /// `timeout` passes.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                // Let the drain thread catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "the daemon exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the daemon's log within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every sample of its metrics, by full name with labels.
    pub fn scrape(&self) -> BTreeMap<String, f64> {
        let mut stream = TcpStream::connect(self.metrics).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.metrics
        )
        .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// Scrapes until `pred` holds for the samples (every 20 ms); panics after `timeout` with
    /// the last scrape and the log.
    pub fn wait_metrics(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&BTreeMap<String, f64>) -> bool,
    ) -> BTreeMap<String, f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let samples = self.scrape();
            if pred(&samples) {
                return samples;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; metrics {samples:#?}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU seconds (user + system) it used so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid())
    }

    /// SIGTERM, and waits for it to exit.
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        #[expect(unsafe_code, reason = "signalling our own child")]
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM)
        };
        child.wait().unwrap();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sum of the samples whose name starts with `prefix` and contains every label in `labels`.
pub fn sum(samples: &BTreeMap<String, f64>, prefix: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

/// CPU seconds (user + system) process `pid` used so far.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    (f[11] + f[12]) as f64 / 100.0
}

/// Names of the BPF programs process `pid` holds a perf link for, read from the kernel (its
/// link fds' fdinfo and the programs' info), not from any loader's bookkeeping. The kernel cuts
/// program names at 15 bytes.
pub fn linked_programs(pid: u32) -> Vec<String> {
    let mut ids = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    for entry in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
        };
        if field("link_type:").is_some_and(|t| t.starts_with("perf")) {
            if let Some(id) = field("prog_id:").and_then(|v| v.parse::<u32>().ok()) {
                ids.push(id);
            }
        }
    }
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| ids.contains(&p.id()))
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .collect()
}

/// Writes a line straight to stderr (libtest captures `eprintln!` of passing tests).
pub fn note(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Opens `path` `n` times from a `/bin/sh` child (`: < path` is one openat each).
pub fn open_n(path: &str, n: u32) {
    let status = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("i=0; while [ $i -lt {n} ]; do : < '{path}'; i=$((i+1)); done"),
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Creates `dir/name` (and `dir`) holding one byte; returns its path.
pub fn file(dir: &str, name: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = format!("{dir}/{name}");
    std::fs::write(&path, b"x").unwrap();
    path
}

/// `path-watch.open` alerts `h` captured for `path`.
pub fn alerts_for(h: &Harness, path: &str) -> usize {
    h.captured
        .with_rule("path-watch.open")
        .iter()
        .filter(|a| a["fields"]["path"] == path)
        .count()
}
