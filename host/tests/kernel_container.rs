//! Container enrichment on the live kernel source (root only; `cargo test -p palisade-host
//! --test kernel_container`): a child moves itself into a cgroup v2 directory named like a
//! containerd container (`palisade-test.slice/cri-containerd-<64 hex>.scope`) and execs; its exec
//! event must carry that container id, while the same process before the move carries none.
//! Without root the test prints a loud `SKIPPED (needs root)` line.
#![cfg(feature = "ebpf")]
#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, like the tests"
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use palisade::ebpf::{EbpfConfig, EbpfSource};
use palisade::event::source::{Delivery, EventSink, EventSource, StopFlag};
use palisade::event::{Event, EventData};

const WAIT: Duration = Duration::from_secs(2);

#[path = "support/root.rs"]
mod root;
use root::is_root;

/// `true` when the test must be skipped; says so on the stderr handle (libtest captures
/// `eprintln!` of passing tests, and a skip must never be silent).
fn skip(test: &str, why: &str) -> bool {
    let _ = std::io::stderr()
        .write_all(format!("SKIPPED ({why}): kernel_container::{test}\n").as_bytes());
    true
}

#[derive(Default)]
struct Collector {
    events: Mutex<Vec<Event>>,
    arrived: Condvar,
}

impl EventSink for Collector {
    fn submit(&self, event: Event, _delivery: Delivery) {
        // Only what this test looks at: execs (the machine may be busy with builds).
        if matches!(event.data, EventData::Exec(_)) {
            self.events.lock().unwrap().push(event);
            self.arrived.notify_all();
        }
    }
}

impl Collector {
    fn wait_for(&self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + WAIT;
        let mut events = self.events.lock().unwrap();
        loop {
            if let Some(e) = events.iter().find(|e| pred(e)) {
                return e.clone();
            }
            let now = Instant::now();
            assert!(now < deadline, "no {what} event within {WAIT:?}");
            events = self.arrived.wait_timeout(events, deadline - now).unwrap().0;
        }
    }
}

/// Removes the test cgroups (innermost first) even when an assertion fails. A cgroup can only
/// be removed once empty, and the last process leaves it a moment after it is reaped.
struct CgroupGuard(Vec<PathBuf>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for dir in &self.0 {
            for _ in 0..100 {
                if !dir.exists() || std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn exec_in_a_containerd_cgroup_carries_the_container_id() {
    const TEST: &str = "exec_in_a_containerd_cgroup_carries_the_container_id";
    if !is_root() && skip(TEST, "needs root") {
        return;
    }
    let Some(root) = palisade::event::container::cgroup2_root() else {
        skip(TEST, "no cgroup v2 mount");
        return;
    };
    // A fresh id per run: a leftover cgroup from a killed run cannot make this pass.
    let id: String = {
        let seed = format!("{}-{:?}", std::process::id(), Instant::now());
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut out = String::new();
        for round in 0u64..4 {
            for b in seed.bytes().chain(round.to_le_bytes()) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            out.push_str(&format!("{h:016x}"));
        }
        out
    };
    let slice = root.join("palisade-test.slice");
    let scope = slice.join(format!("cri-containerd-{id}.scope"));
    std::fs::create_dir_all(&scope).unwrap();
    let _guard = CgroupGuard(vec![scope.clone(), slice]);

    let mut source = EbpfSource::load(EbpfConfig::default()).expect("load eBPF source as root");
    let events = Arc::new(Collector::default());
    let stop = StopFlag::default();
    let reader = {
        let (sink, stop) = (events.clone(), stop.clone());
        std::thread::spawn(move || source.run(&*sink, &stop).unwrap())
    };

    // The shell starts on the host, moves itself into the container's cgroup, then execs; the
    // exec'd program exits at once, so userspace may have to find the cgroup by its id.
    let procs = scope.join("cgroup.procs");
    let script = format!(
        "echo $$ > {} && exec /bin/true palisade-container-marker",
        procs.display()
    );
    let status = Command::new("/bin/sh")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "moving into {} failed", scope.display());

    let exec = events.wait_for("exec of /bin/true in the container cgroup", |e| {
        matches!(&e.data, EventData::Exec(x) if x.args.iter().any(|a| a == "palisade-container-marker"))
    });
    let sh = events.wait_for("exec of the shell on the host", |e| {
        e.process.pid == exec.process.pid
            && matches!(&e.data, EventData::Exec(x) if x.filename == "/bin/sh")
    });
    stop.stop();
    reader.join().unwrap();

    assert_eq!(
        exec.process.container_id.as_deref(),
        Some(id.as_str()),
        "exec in {} carries its container id: {:?}",
        scope.display(),
        exec.process
    );
    assert_eq!(exec.process.cgroup_id, inode(&scope));
    assert_eq!(exec.process.exe, "/bin/true");
    assert_eq!(
        sh.process.container_id, None,
        "before the move the process is on the host: {:?}",
        sh.process
    );
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}
