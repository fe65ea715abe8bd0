//! Real actuators against real processes, cgroups and files (root only; each test prints a
//! loud SKIPPED line and returns when not root): kill through a pidfd and the recycled-pid
//! check, freeze/thaw through cgroup v2 and the v1 freezer, file quarantine and restore on one
//! filesystem and across two, and persistence of held actions across a broker restart with
//! `palisade actions list` / `release` run as the real binary. Cgroups and processes created
//! here are removed by guards, also when a test fails.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic on failure, like the tests"
)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use palisade::actions::freeze::{is_frozen, CgroupIdentity, CgroupLayout, FreezeTarget, Freezer};
use palisade::actions::kill::process_start_ns;
use palisade::actions::{
    with_host_actuators, ActionError, ActionRequest, ActionStore, Broker, BrokerSettings,
    ExecContext, FreezeActuator, KillActuator, LogNotifySink, Mode, QuarantineActuator,
    RequestContext, Workload,
};
use palisade::capability::Capability;
use palisade::config::Config;

#[path = "support/root.rs"]
mod root;
use root::is_root;

/// True (and a loud line on stderr) when the test cannot run here.
fn skip(test: &str) -> bool {
    if is_root() {
        return false;
    }
    skip_line(&format!("SKIPPED (needs root): actuators::{test}"));
    true
}

/// Written to the stderr handle directly: libtest captures `eprintln!` of passing tests, and
/// a skip must never be silent.
fn skip_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// A child process killed and reaped on drop.
struct ChildGuard(Child);

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sleeper() -> ChildGuard {
    ChildGuard(Command::new("sleep").arg("1000").spawn().unwrap())
}

/// A cgroup directory created for the test, with the processes started in it; thawed,
/// emptied and removed on drop (thawed first: a v1-frozen task cannot die).
struct CgroupGuard {
    dir: PathBuf,
    freezer: Freezer,
    children: Vec<Child>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl CgroupGuard {
    fn new(root: &Path, name: &str, freezer: Freezer) -> CgroupGuard {
        let dir = root.join(format!(
            "{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&dir).unwrap();
        CgroupGuard {
            dir,
            freezer,
            children: Vec::new(),
        }
    }

    fn name(&self) -> String {
        self.dir.file_name().unwrap().to_str().unwrap().to_owned()
    }

    /// A shell in this cgroup that increments a counter in `file` as fast as it can.
    fn start_counter(&mut self, file: &Path) {
        let script = format!(
            "echo $$ > {procs} && i=0 && while :; do i=$((i+1)); echo $i > {file}.tmp && mv {file}.tmp {file}; done",
            procs = self.dir.join("cgroup.procs").display(),
            file = file.display()
        );
        self.children
            .push(Command::new("sh").arg("-c").arg(script).spawn().unwrap());
        wait_until(Duration::from_secs(10), "the counter to start", || {
            read_counter(file) > 10
        });
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let (file, value) = match self.freezer {
            Freezer::V2 => ("cgroup.freeze", "0"),
            Freezer::V1 => ("freezer.state", "THAWED"),
        };
        let _ = fs::write(self.dir.join(file), value);
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn read_counter(file: &Path) -> u64 {
    fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits for the kernel to report `target` frozen (or thawed). The actuator waits 2 s and then
/// reports the freeze done with a warning (the kernel completes it later), so on a loaded
/// machine the state may still be settling when the call returns.
fn assert_frozen_soon(target: &FreezeTarget, frozen: bool, what: &str) {
    wait_until(Duration::from_secs(10), what, || {
        is_frozen(target) == Some(frozen)
    });
}

fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn settings(mode: Mode, audit: &Path) -> BrokerSettings {
    BrokerSettings {
        mode,
        per_responder: Default::default(),
        rate_limit_per_minute: 0,
        audit_log: Some(audit.to_path_buf()),
    }
}

fn ctx<'a>(responder: &'a str, caps: &[Capability]) -> RequestContext<'a> {
    RequestContext {
        responder,
        granted: caps.iter().copied().collect(),
        alert_id: "alert-7",
    }
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn v2_root() -> PathBuf {
    CgroupLayout::detect()
        .v2_root
        .expect("a cgroup2 hierarchy is mounted")
}

#[test]
fn killed_process_is_really_dead() {
    if skip("killed_process_is_really_dead") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let broker = Broker::new(settings(Mode::Enforce, &audit), Box::new(LogNotifySink))
        .unwrap()
        .with_actuator(Capability::KillProcess, Box::new(KillActuator::new()));
    let mut child = sleeper();
    let pid = child.pid();
    let start_ns = process_start_ns(pid).unwrap();
    let receipt = broker
        .request(
            &ctx("killer", &[Capability::KillProcess]),
            ActionRequest::KillProcess {
                pid,
                start_ns: Some(start_ns),
                signal: 9,
            },
        )
        .unwrap();
    assert_eq!(receipt.mode, Mode::Enforce);
    let status = child.0.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    // Gone: a second kill finds no process.
    assert!(matches!(
        KillActuator::new().kill(pid, Some(start_ns), 9),
        Err(ActionError::InvalidTarget(_))
    ));
    let records = audit_lines(&audit);
    assert_eq!(records[0]["action"], "kill-process");
    assert_eq!(records[0]["result"], "ok");
    assert_eq!(records[0]["target"]["pid"], pid);
}

#[test]
fn process_with_other_start_time_is_untouched() {
    if skip("process_with_other_start_time_is_untouched") {
        return;
    }
    let mut child = sleeper();
    let pid = child.pid();
    let actual = process_start_ns(pid).unwrap();
    // The alert described a process that started 5 s earlier under the same pid: a recycled
    // pid. Nothing may be sent.
    for wrong in [actual - 5_000_000_000, actual + 5_000_000_000] {
        match KillActuator::new().kill(pid, Some(wrong), 9) {
            Err(ActionError::InvalidTarget(msg)) => assert!(msg.contains("recycled"), "{msg}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the innocent process died"
    );
    assert_eq!(process_start_ns(pid), Some(actual));
    // SIGTERM with the right start time (one tick off, as an event clock may be) works.
    KillActuator::new()
        .kill(pid, Some(actual + 3_000_000), 15)
        .unwrap();
    assert_eq!(child.0.wait().unwrap().signal(), Some(15));
}

#[test]
fn frozen_cgroup_makes_no_progress_and_resumes_after_thaw() {
    if skip("frozen_cgroup_makes_no_progress_and_resumes_after_thaw") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let root = v2_root();
    let mut cg = CgroupGuard::new(&root, "palisade-test-freeze", Freezer::V2);
    let counter = dir.path().join("counter");
    cg.start_counter(&counter);

    let broker = Broker::new(settings(Mode::Enforce, &audit), Box::new(LogNotifySink))
        .unwrap()
        .with_actuator(Capability::Freeze, Box::new(FreezeActuator::new()));
    let c = ctx("freezer", &[Capability::Freeze]);
    let receipt = broker
        .request(&c, ActionRequest::Freeze(Workload::CgroupPath(cg.name())))
        .unwrap();
    let target = FreezeTarget::at(Freezer::V2, cg.dir.clone());
    assert_frozen_soon(&target, true, "frozen");
    let a = read_counter(&counter);
    std::thread::sleep(Duration::from_millis(300));
    let b = read_counter(&counter);
    assert_eq!(a, b, "a frozen process made progress");
    assert_eq!(broker.active()[0].handle, target.handle());

    broker
        .request(
            &c,
            ActionRequest::Release {
                action_id: receipt.id,
            },
        )
        .unwrap();
    assert_frozen_soon(&target, false, "thawed");
    wait_until(Duration::from_secs(5), "progress after thaw", || {
        read_counter(&counter) > b + 10
    });
    assert!(broker.active().is_empty());
}

#[test]
fn workloads_resolve_by_id_and_container_and_refuse_the_root() {
    if skip("workloads_resolve_by_id_and_container_and_refuse_the_root") {
        return;
    }
    let root = v2_root();
    let freeze = FreezeActuator::new();
    let parent = CgroupGuard::new(&root, "palisade-test-resolve", Freezer::V2);
    let container_id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let scope = parent.dir.join(format!("docker-{container_id}.scope"));
    fs::create_dir(&scope).unwrap();
    let nested = scope.join("init");
    fs::create_dir(&nested).unwrap();

    let id = fs::metadata(&scope).unwrap().ino();
    let by_id = freeze.resolve(&Workload::CgroupId(id)).unwrap();
    assert_eq!(by_id.dir, scope);
    assert_eq!(by_id.freezer, Freezer::V2);
    // The shallowest match is the container's cgroup, not the runtime's nested one.
    let by_container = freeze
        .resolve(&Workload::ContainerId(container_id[..12].into()))
        .unwrap();
    assert_eq!(by_container.dir, scope);
    assert!(matches!(
        freeze.resolve(&Workload::CgroupId(u64::MAX)),
        Err(ActionError::InvalidTarget(_))
    ));
    // The root cgroup (which holds this test, like the daemon) is never frozen.
    for root_workload in [
        Workload::CgroupPath(String::new()),
        Workload::CgroupPath("/".into()),
        Workload::CgroupId(fs::metadata(&root).unwrap().ino()),
    ] {
        match freeze.resolve(&root_workload) {
            Err(ActionError::InvalidTarget(msg)) => assert!(msg.contains("never frozen"), "{msg}"),
            other => panic!("{root_workload:?}: expected a refusal, got {other:?}"),
        }
    }
    fs::remove_dir(&nested).unwrap();
    fs::remove_dir(&scope).unwrap();
}

#[test]
fn v1_freezer_is_the_fallback() {
    if skip("v1_freezer_is_the_fallback") {
        return;
    }
    let layout = CgroupLayout::detect();
    let Some(v1) = layout.v1_freezer_root.clone() else {
        skip_line(
            "SKIPPED (no cgroup v1 freezer hierarchy): actuators::v1_freezer_is_the_fallback",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A container id that exists only in the v1 freezer hierarchy.
    let mut cg = CgroupGuard::new(&v1, "palisade-test-v1-feedc0ffee1234", Freezer::V1);
    let counter = dir.path().join("counter");
    cg.start_counter(&counter);
    let freeze = FreezeActuator::with_layout(layout);
    let target = freeze
        .resolve(&Workload::ContainerId(format!(
            "feedc0ffee1234-{}",
            std::process::id()
        )))
        .unwrap();
    assert_eq!(
        target,
        FreezeTarget {
            freezer: Freezer::V1,
            dir: cg.dir.clone(),
            id: Some(CgroupIdentity {
                dev: fs::metadata(&cg.dir).unwrap().dev(),
                ino: fs::metadata(&cg.dir).unwrap().ino(),
            }),
        }
    );
    freeze.freeze(&target).unwrap();
    assert_frozen_soon(&target, true, "frozen");
    let a = read_counter(&counter);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read_counter(&counter), a, "a frozen process made progress");
    freeze.thaw(&target).unwrap();
    wait_until(Duration::from_secs(5), "progress after thaw", || {
        read_counter(&counter) > a + 10
    });
}

/// Whether `uid` can read `path` (checked by really trying, as that user).
fn readable_as(uid: u32, path: &Path) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &uid.to_string(),
            "--clear-groups",
            "cat",
        ])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn quarantine_round_trip(work: &Path, qdir: &Path, mode: u32) {
    let audit = qdir.parent().unwrap().join("audit.jsonl");
    let broker = Broker::new(settings(Mode::Enforce, &audit), Box::new(LogNotifySink))
        .unwrap()
        .with_actuator(
            Capability::QuarantineFile,
            Box::new(QuarantineActuator::new(qdir)),
        );
    let file = work.join("dropper.bin");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&file, &content).unwrap();
    std::os::unix::fs::chown(&file, Some(1234), Some(2345)).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
    let before = fs::metadata(&file).unwrap();
    assert!(
        readable_as(1234, &file) || mode & 0o400 == 0,
        "the owner could read it before"
    );

    let c = ctx("quarantiner", &[Capability::QuarantineFile]);
    let receipt = broker
        .request(
            &c,
            ActionRequest::QuarantineFile {
                path: file.display().to_string(),
            },
        )
        .unwrap();
    assert!(!file.exists(), "the original is gone");
    let active = broker.active();
    let record_path = PathBuf::from(&active[0].handle);
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&record_path).unwrap()).unwrap();
    assert_eq!(record["original_path"], file.display().to_string());
    assert_eq!(record["uid"], 1234);
    assert_eq!(record["gid"], 2345);
    assert_eq!(record["mode"], format!("{mode:04o}"));
    assert_eq!(record["alert_id"], "alert-7");
    assert_eq!(record["action_id"], receipt.id);
    let sha = {
        use std::process::Command as C;
        let out = C::new("sha256sum")
            .arg(qdir.join(record["stored_as"].as_str().unwrap()))
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(record["sha256"], sha);
    let data = qdir.join(record["stored_as"].as_str().unwrap());
    let meta = fs::metadata(&data).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0, "quarantined copy has mode 0000");
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(fs::metadata(qdir).unwrap().mode() & 0o7777, 0o700);
    assert!(
        !readable_as(1234, &data),
        "the former owner can still read the quarantined copy"
    );

    broker
        .request(
            &c,
            ActionRequest::Release {
                action_id: receipt.id,
            },
        )
        .unwrap();
    let mut back = Vec::new();
    fs::File::open(&file)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == content, "restored bytes differ");
    let after = fs::metadata(&file).unwrap();
    assert_eq!(after.mode() & 0o7777, mode);
    assert_eq!((after.uid(), after.gid()), (1234, 2345));
    assert_eq!(
        (after.mtime(), after.mtime_nsec()),
        (before.mtime(), before.mtime_nsec())
    );
    assert!(
        !data.exists() && !record_path.exists(),
        "quarantine entry left behind"
    );
    let results: Vec<String> = audit_lines(&audit)
        .iter()
        .map(|r| format!("{} {}", r["action"], r["result"]))
        .collect();
    assert_eq!(
        results,
        ["\"quarantine-file\" \"ok\"", "\"release\" \"ok\""]
    );
}

#[test]
fn quarantined_file_is_gone_inaccessible_and_restored_same_filesystem() {
    if skip("quarantined_file_is_gone_inaccessible_and_restored_same_filesystem") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    // The test user must be able to reach the file through its directories.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&work, fs::Permissions::from_mode(0o755)).unwrap();
    quarantine_round_trip(&work, &dir.path().join("state/quarantine"), 0o640);
}

#[test]
fn quarantine_across_filesystems_copies_and_restores_setuid() {
    if skip("quarantine_across_filesystems_copies_and_restores_setuid") {
        return;
    }
    let shm = Path::new("/dev/shm");
    let state = tempfile::tempdir().unwrap();
    if fs::metadata(shm).map(|m| m.dev()).ok() == fs::metadata(state.path()).map(|m| m.dev()).ok() {
        skip_line("SKIPPED (/dev/shm and the temp dir share a filesystem): actuators::quarantine_across_filesystems");
        return;
    }
    let work = tempfile::tempdir_in(shm).unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(state.path(), fs::Permissions::from_mode(0o755)).unwrap();
    quarantine_round_trip(work.path(), &state.path().join("quarantine"), 0o4755);
}

#[test]
fn restore_never_overwrites() {
    if skip("restore_never_overwrites") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let q = QuarantineActuator::new(dir.path().join("q"));
    let file = dir.path().join("f");
    fs::write(&file, b"evil").unwrap();
    let exec = ExecContext {
        responder: "r",
        alert_id: "a",
        action_id: "act-x-1",
    };
    let (_record, handle) = q.quarantine(file.to_str().unwrap(), &exec).unwrap();
    fs::write(&file, b"a new, legitimate file").unwrap();
    assert!(matches!(
        q.restore(&handle),
        Err(ActionError::InvalidTarget(_))
    ));
    assert_eq!(fs::read(&file).unwrap(), b"a new, legitimate file");
    assert!(handle.exists(), "the record stays for a later restore");
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("palisade.toml");
    fs::write(
        &path,
        format!(
            "version = 1\n[actions]\nmode = \"enforce\"\naudit_log = {:?}\nstate_dir = {:?}\nquarantine_dir = {:?}\n",
            dir.join("audit.jsonl").display().to_string(),
            dir.join("state").display().to_string(),
            dir.join("quarantine").display().to_string(),
        ),
    )
    .unwrap();
    path
}

fn palisade(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn held_actions_survive_a_restart_and_the_cli_lists_and_releases_them() {
    if skip("held_actions_survive_a_restart_and_the_cli_lists_and_releases_them") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let config_path = write_config(dir.path());
    let config = Config::load(Some(&config_path), &Default::default()).unwrap();
    let new_broker = || {
        let broker = Broker::new(
            BrokerSettings::from_config(&config.actions),
            Box::new(LogNotifySink),
        )
        .unwrap();
        let broker = with_host_actuators(broker, &config.actions);
        let loaded = broker
            .attach_store(ActionStore::open(&config.actions.state_dir).unwrap())
            .unwrap();
        (broker, loaded)
    };

    let mut cg = CgroupGuard::new(&v2_root(), "palisade-test-persist", Freezer::V2);
    let counter = dir.path().join("counter");
    cg.start_counter(&counter);
    let target = FreezeTarget::at(Freezer::V2, cg.dir.clone());
    let file = dir.path().join("payload.sh");
    fs::write(&file, b"#!/bin/sh\nrm -rf --no-preserve-root /\n").unwrap();

    let c = ctx(
        "contain",
        &[
            Capability::Freeze,
            Capability::QuarantineFile,
            Capability::KillProcess,
        ],
    );
    let (freeze_id, quarantine_id) = {
        let (broker, loaded) = new_broker();
        assert_eq!(loaded, 0);
        let f = broker
            .request(&c, ActionRequest::Freeze(Workload::CgroupPath(cg.name())))
            .unwrap();
        let q = broker
            .request(
                &c,
                ActionRequest::QuarantineFile {
                    path: file.display().to_string(),
                },
            )
            .unwrap();
        // One-shot actions are not persisted.
        let mut sleeper = sleeper();
        let pid = sleeper.pid();
        broker
            .request(
                &c,
                ActionRequest::KillProcess {
                    pid,
                    start_ns: process_start_ns(pid),
                    signal: 9,
                },
            )
            .unwrap();
        assert_eq!(sleeper.0.wait().unwrap().signal(), Some(9));
        (f.id, q.id)
    }; // the "daemon" stops here

    let stored: Vec<String> = ActionStore::at(&config.actions.state_dir)
        .load()
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(stored, [freeze_id.clone(), quarantine_id.clone()]);
    // Lose the kernel state, as a reboot would, to see the restart put it back.
    fs::write(cg.dir.join("cgroup.freeze"), "0").unwrap();
    wait_until(Duration::from_secs(5), "the manual thaw", || {
        is_frozen(&target) == Some(false)
    });

    let (broker, loaded) = new_broker();
    assert_eq!(loaded, 2);
    let summary = broker.reapply_held();
    assert_eq!(
        (summary.reapplied, summary.dropped, summary.failed),
        (2, 0, 0),
        "{summary:?}"
    );
    assert_frozen_soon(&target, true, "freeze re-applied at start");
    let a = read_counter(&counter);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(read_counter(&counter), a);

    let cfg = config_path.to_str().unwrap();
    let (ok, out, err) = palisade(&["actions", "list", "--config", cfg]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("ALERT"),
        "{out}"
    );
    for (line, id, action) in [
        (lines[1], &freeze_id, "freeze"),
        (lines[2], &quarantine_id, "quarantine-file"),
    ] {
        for want in [id.as_str(), "contain", action, "enforce", "alert-7"] {
            assert!(line.contains(want), "{want:?} missing in {line:?}");
        }
    }

    // The operator releases the freeze with the CLI, the "daemon" still running.
    let (ok, out, err) = palisade(&["actions", "release", &freeze_id, "--config", cfg]);
    assert!(ok, "{out}{err}");
    assert_frozen_soon(&target, false, "thawed");
    wait_until(
        Duration::from_secs(5),
        "progress after the CLI thaw",
        || read_counter(&counter) > a + 10,
    );
    let (ok, _, err) = palisade(&["actions", "release", &freeze_id, "--config", cfg]);
    assert!(!ok && err.contains(&freeze_id), "{err}");
    // The responder's own release of the same action is not done twice.
    broker
        .request(
            &c,
            ActionRequest::Release {
                action_id: freeze_id.clone(),
            },
        )
        .unwrap();

    let (ok, out, err) = palisade(&["actions", "release", &quarantine_id, "--config", cfg]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        fs::read(&file).unwrap(),
        b"#!/bin/sh\nrm -rf --no-preserve-root /\n"
    );
    let (ok, out, _) = palisade(&["actions", "list", "--config", cfg]);
    assert!(ok && out.starts_with("no active actions"), "{out}");

    let audit = audit_lines(&dir.path().join("audit.jsonl"));
    let operator: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|r| r["responder"] == "(operator)")
        .collect();
    let summary: Vec<String> = operator
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["action"], r["result"], r["target"]["action_id"]
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            format!("\"release\" \"ok\" \"{freeze_id}\""),
            format!("\"release\" \"invalid_target\" \"{freeze_id}\""),
            format!("\"release\" \"ok\" \"{quarantine_id}\""),
        ]
    );
    assert_eq!(operator[0]["alert_id"], "alert-7");
    // The re-applications at start were audited too.
    assert_eq!(
        audit
            .iter()
            .filter(|r| r["action"] == "freeze" && r["result"] == "ok")
            .count(),
        2
    );
}

/// A frozen workload restarted under the same name (its cgroup removed and made again at the
/// same path, as `docker restart` does) runs unfrozen in the new cgroup; the broker's check
/// sees the new identity and freezes it, under the same action id, with the new identity in
/// the handle in memory and in the state file. A manual thaw is undone at the second check.
#[test]
fn a_recreated_cgroup_is_frozen_again() {
    if skip("a_recreated_cgroup_is_frozen_again") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(Some(&write_config(dir.path())), &Default::default()).unwrap();
    let new_broker = || {
        let broker = with_host_actuators(
            Broker::new(
                BrokerSettings::from_config(&config.actions),
                Box::new(LogNotifySink),
            )
            .unwrap(),
            &config.actions,
        );
        broker
            .attach_store(ActionStore::open(&config.actions.state_dir).unwrap())
            .unwrap();
        broker
    };
    let broker = new_broker();
    let mut cg = CgroupGuard::new(&v2_root(), "palisade-test-recreate", Freezer::V2);
    let counter = dir.path().join("counter");
    cg.start_counter(&counter);
    let c = ctx("contain", &[Capability::Freeze]);
    let id = broker
        .request(&c, ActionRequest::Freeze(Workload::CgroupPath(cg.name())))
        .unwrap()
        .id;
    let old_ino = fs::metadata(&cg.dir).unwrap().ino();
    assert_eq!(
        is_frozen(&FreezeTarget::at(Freezer::V2, cg.dir.clone())),
        Some(true)
    );
    assert_eq!(
        broker.active()[0].handle,
        format!("v2@{old_ino}:{}", cg.dir.display())
    );
    assert_eq!(broker.reassert_held(), 0, "nothing lapsed yet");

    // The restart: the old processes die (a v2-frozen task can be killed), the cgroup goes
    // and comes back at the same path with a new process.
    restart(&mut cg);
    let new_ino = fs::metadata(&cg.dir).unwrap().ino();
    assert_ne!(new_ino, old_ino);
    let counter = dir.path().join("counter2");
    // Makes progress: the freeze lapsed with the old cgroup.
    cg.start_counter(&counter);
    let target = FreezeTarget::at(Freezer::V2, cg.dir.clone());
    assert_eq!(is_frozen(&target), Some(false));

    assert_eq!(broker.reassert_held(), 1);
    assert_frozen_soon(&target, true, "frozen again");
    let a = read_counter(&counter);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read_counter(&counter), a, "a frozen process made progress");
    let active = broker.active();
    assert_eq!((active.len(), active[0].id.as_str()), (1, id.as_str()));
    assert_eq!(active[0].handle, target.handle());
    assert!(target.handle().starts_with(&format!("v2@{new_ino}:")));
    let stored = ActionStore::at(&config.actions.state_dir)
        .get(&id)
        .unwrap()
        .unwrap();
    assert_eq!(stored.handle, target.handle(), "state file updated");
    assert_eq!(broker.reassert_held(), 0, "holds again");
    let audit = audit_lines(&dir.path().join("audit.jsonl"));
    assert_eq!(
        audit
            .iter()
            .filter(|r| r["action"] == "freeze" && r["result"] == "ok")
            .count(),
        2,
        "the re-application is audited"
    );

    // A manual thaw: left alone at the first check (an operator release may be under way),
    // frozen again at the second.
    fs::write(cg.dir.join("cgroup.freeze"), "0").unwrap();
    wait_until(Duration::from_secs(5), "the manual thaw", || {
        is_frozen(&target) == Some(false)
    });
    assert_eq!(broker.reassert_held(), 0);
    assert_eq!(broker.reassert_held(), 1);
    assert_frozen_soon(&target, true, "frozen");

    // Restarted while the daemon is down: the daemon's start freezes the new cgroup.
    drop(broker);
    restart(&mut cg);
    let counter = dir.path().join("counter3");
    cg.start_counter(&counter);
    let target = FreezeTarget::at(Freezer::V2, cg.dir.clone());
    let broker = new_broker();
    let summary = broker.reapply_held();
    assert_eq!(
        (summary.reapplied, summary.dropped, summary.failed),
        (1, 0, 0),
        "{summary:?}"
    );
    assert_frozen_soon(&target, true, "frozen again at start");
    assert_eq!(broker.active()[0].handle, target.handle());

    broker
        .request(&c, ActionRequest::Release { action_id: id })
        .unwrap();
    assert_frozen_soon(&target, false, "thawed");
    assert!(broker.active().is_empty());
}

/// Kills the processes of `cg` (frozen or not: SIGKILL reaches a v2-frozen task), removes the
/// cgroup and makes it again at the same path, as a container restart does.
fn restart(cg: &mut CgroupGuard) {
    for mut child in cg.children.drain(..) {
        let _ = child.kill();
        let _ = child.wait();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = fs::remove_dir(&cg.dir) {
        assert!(Instant::now() < deadline, "rmdir: {e}");
        // The counter's own children (its `mv`), frozen with it.
        let procs = fs::read_to_string(cg.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::create_dir(&cg.dir).unwrap();
}

#[test]
fn reapply_drops_actions_whose_target_is_gone() {
    if skip("reapply_drops_actions_whose_target_is_gone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(Some(&write_config(dir.path())), &Default::default()).unwrap();
    let store_dir = config.actions.state_dir.clone();
    let id = {
        let broker = with_host_actuators(
            Broker::new(
                BrokerSettings::from_config(&config.actions),
                Box::new(LogNotifySink),
            )
            .unwrap(),
            &config.actions,
        );
        broker
            .attach_store(ActionStore::open(&store_dir).unwrap())
            .unwrap();
        let cg = CgroupGuard::new(&v2_root(), "palisade-test-gone", Freezer::V2);
        let c = ctx("contain", &[Capability::Freeze]);
        broker
            .request(&c, ActionRequest::Freeze(Workload::CgroupPath(cg.name())))
            .unwrap()
            .id
        // the cgroup is removed here: the workload ended while the daemon was down
    };
    let broker = with_host_actuators(
        Broker::new(
            BrokerSettings::from_config(&config.actions),
            Box::new(LogNotifySink),
        )
        .unwrap(),
        &config.actions,
    );
    assert_eq!(
        broker
            .attach_store(ActionStore::open(&store_dir).unwrap())
            .unwrap(),
        1
    );
    let summary = broker.reapply_held();
    assert_eq!((summary.reapplied, summary.dropped), (0, 1), "{summary:?}");
    assert!(broker.active().is_empty());
    assert!(ActionStore::at(&store_dir).get(&id).unwrap().is_none());
}
