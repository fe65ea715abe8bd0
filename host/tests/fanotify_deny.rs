//! Deny-open / deny-exec through fanotify permission events, against real processes (root
//! only; without root every test prints "SKIPPED (needs root)" and passes). The denier runs in
//! the test process, whose own opens are always allowed, so every probe is a child process.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, like the tests"
)]
#![expect(
    clippy::print_stderr,
    reason = "skips and measured stall latencies are reported on stderr"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::actions::fanotify::{
    DenyOpenActuator, DenySettings, OpenDenier, StallPoint, TimeoutDefault,
};
use palisade::actions::{
    ActionError, ActionRequest, ActiveAction, Actuator, ExecContext, Mode, Outcome,
};
use palisade::capability::Capability;

#[path = "support/root.rs"]
mod root;
use root::is_root;

macro_rules! require_root {
    ($name:expr) => {
        if !is_root() {
            eprintln!("{}: SKIPPED (needs root)", $name);
            return;
        }
    };
}

/// What a child `cat` of `path` got: Ok(contents) or Err(stderr).
fn child_cat(path: &Path) -> Result<String, String> {
    let out = Command::new("cat").arg(path).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn settings(timeout_ms: u64, on_timeout: TimeoutDefault) -> DenySettings {
    DenySettings {
        response_timeout: Duration::from_millis(timeout_ms),
        on_timeout,
    }
}

fn files(dir: &Path) -> (PathBuf, PathBuf) {
    let secret = dir.join("secret");
    let other = dir.join("other");
    std::fs::write(&secret, "secret\n").unwrap();
    std::fs::write(&other, "other\n").unwrap();
    (secret, other)
}

fn active(id: &str, handle: &str, path: &Path) -> ActiveAction {
    ActiveAction {
        id: id.into(),
        responder: "test".into(),
        capability: Capability::DenyOpen,
        request: ActionRequest::DenyOpen {
            path: path.display().to_string(),
        },
        alert_id: "a-1".into(),
        mode: Mode::Enforce,
        since: std::time::SystemTime::now(),
        handle: handle.into(),
    }
}

#[test]
fn denied_open_fails_with_eperm_other_file_opens_and_release_restores() {
    require_root!("denied_open_fails_with_eperm_other_file_opens_and_release_restores");
    let dir = tempfile::tempdir().unwrap();
    let (secret, other) = files(dir.path());
    let actuator = DenyOpenActuator::new(Arc::new(
        OpenDenier::start(settings(2000, TimeoutDefault::Allow)).unwrap(),
    ));
    let ctx = ExecContext {
        responder: "test",
        alert_id: "a-1",
        action_id: "act-1",
    };
    let req = ActionRequest::DenyOpen {
        path: secret.display().to_string(),
    };
    let Outcome::Held { handle } = actuator.execute(&ctx, &req).unwrap() else {
        panic!("deny-open must hold state");
    };

    let err = child_cat(&secret).unwrap_err();
    assert!(
        err.contains("Operation not permitted"),
        "EPERM expected, got {err:?}"
    );
    assert_eq!(child_cat(&other).unwrap(), "other\n");
    // The daemon (this process) is never denied.
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "secret\n");
    assert!(
        actuator
            .denier()
            .stats()
            .denied
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    actuator
        .release(&active("act-1", &handle, &secret))
        .unwrap();
    assert_eq!(child_cat(&secret).unwrap(), "secret\n");
    assert!(actuator.denier().rules().is_empty());
    // Releasing twice is an invalid target, not a crash.
    assert!(actuator
        .release(&active("act-1", &handle, &secret))
        .is_err());
}

#[test]
fn denied_exec_fails_with_eperm_other_binary_runs() {
    require_root!("denied_exec_fails_with_eperm_other_binary_runs");
    let dir = tempfile::tempdir().unwrap();
    let denied = dir.path().join("true-denied");
    let allowed = dir.path().join("true-allowed");
    std::fs::copy("/bin/true", &denied).unwrap();
    std::fs::copy("/bin/true", &allowed).unwrap();
    let denier = OpenDenier::start(settings(2000, TimeoutDefault::Allow)).unwrap();
    let id = denier.deny(&denied).unwrap();

    let err = Command::new(&denied).status().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    assert!(Command::new(&allowed).status().unwrap().success());
    // Denying through another path of the same inode (a hard link) is the same rule target.
    let link = dir.path().join("hardlink");
    std::fs::hard_link(&denied, &link).unwrap();
    let err = Command::new(&link).status().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");

    denier.allow(&id).unwrap();
    assert!(Command::new(&denied).status().unwrap().success());
}

#[test]
fn two_rules_on_one_file_hold_until_both_are_released() {
    require_root!("two_rules_on_one_file_hold_until_both_are_released");
    let dir = tempfile::tempdir().unwrap();
    let (secret, _) = files(dir.path());
    let denier = OpenDenier::start(settings(2000, TimeoutDefault::Allow)).unwrap();
    let a = denier.deny(&secret).unwrap();
    let b = denier.deny(&secret).unwrap();
    assert_ne!(a, b);
    denier.allow(&a).unwrap();
    assert!(
        child_cat(&secret).is_err(),
        "still denied by the second rule"
    );
    denier.allow(&b).unwrap();
    assert_eq!(child_cat(&secret).unwrap(), "secret\n");
}

#[test]
fn bad_targets_are_rejected() {
    require_root!("bad_targets_are_rejected");
    let dir = tempfile::tempdir().unwrap();
    let denier = OpenDenier::start(DenySettings::default()).unwrap();
    assert!(denier.deny(Path::new("relative")).is_err());
    assert!(denier.deny(&dir.path().join("missing")).is_err());
    assert!(
        denier.deny(dir.path()).is_err(),
        "directories are not denied"
    );
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    assert!(denier.deny(&exe).is_err(), "the daemon's own executable");
    assert!(denier.rules().is_empty());
}

#[test]
fn a_path_through_a_user_symlink_is_refused_and_nothing_is_marked() {
    require_root!("a_path_through_a_user_symlink_is_refused_and_nothing_is_marked");
    let dir = tempfile::tempdir().unwrap();
    let (secret, _) = files(dir.path());
    let actuator = DenyOpenActuator::new(Arc::new(
        OpenDenier::start(settings(2000, TimeoutDefault::Allow)).unwrap(),
    ));
    let ctx = ExecContext {
        responder: "test",
        alert_id: "a-1",
        action_id: "act-1",
    };
    // The user's /tmp/x -> a file everyone needs, as the file and as a directory on the way.
    let link = dir.path().join("x");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    let dir_link = dir.path().join("d");
    std::os::unix::fs::symlink(dir.path(), &dir_link).unwrap();
    std::os::unix::fs::lchown(&dir_link, Some(65534), Some(65534)).unwrap();
    for (path, named) in [(link.clone(), &link), (dir_link.join("secret"), &dir_link)] {
        let req = ActionRequest::DenyOpen {
            path: path.display().to_string(),
        };
        let err = actuator.execute(&ctx, &req).unwrap_err();
        let ActionError::InvalidTarget(msg) = &err else {
            panic!("invalid target expected, got {err:?}");
        };
        assert!(
            msg.contains(&named.display().to_string()) && msg.contains("uid 65534"),
            "{msg}"
        );
    }
    assert!(actuator.denier().rules().is_empty());
    assert_eq!(child_cat(&secret).unwrap(), "secret\n");

    // A root-owned link is followed: the rule marks the file it leads to.
    let root_link = dir.path().join("r");
    std::os::unix::fs::symlink(&secret, &root_link).unwrap();
    let id = actuator.denier().deny(&root_link).unwrap();
    assert!(child_cat(&secret).is_err());
    actuator.denier().allow(&id).unwrap();
    assert_eq!(child_cat(&secret).unwrap(), "secret\n");
}

/// A wedged reader: the open returns within about the deadline with the configured default,
/// never hangs.
fn stalled(point: StallPoint, on_timeout: TimeoutDefault) {
    let dir = tempfile::tempdir().unwrap();
    let (secret, _) = files(dir.path());
    let denier = OpenDenier::start(settings(200, on_timeout)).unwrap();
    denier.deny(&secret).unwrap();
    // Sanity: with a live reader the file is denied.
    assert!(child_cat(&secret).is_err());

    denier.stall(point, Duration::from_secs(20));
    let t0 = Instant::now();
    let got = child_cat(&secret);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "{point:?}/{on_timeout:?}: open took {took:?} (reader stalled for 20 s)"
    );
    assert!(
        took >= Duration::from_millis(150),
        "{point:?}/{on_timeout:?}: answered after {took:?}, before the deadline: by the stalled reader?"
    );
    match on_timeout {
        TimeoutDefault::Allow => assert_eq!(got.unwrap(), "secret\n"),
        TimeoutDefault::Deny => {
            let err = got.unwrap_err();
            assert!(err.contains("Operation not permitted"), "{err:?}");
        }
    }
    assert!(
        denier
            .stats()
            .defaulted
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // Dropping a stalled denier returns promptly too.
    let t0 = Instant::now();
    drop(denier);
    assert!(t0.elapsed() < Duration::from_secs(2));
    eprintln!("{point:?}/{on_timeout:?}: open answered by the timeout default after {took:?}");
}

#[test]
fn stalled_reader_before_read_defaults_to_allow() {
    require_root!("stalled_reader_before_read_defaults_to_allow");
    stalled(StallPoint::BeforeRead, TimeoutDefault::Allow);
}

#[test]
fn stalled_reader_before_answer_defaults_to_allow() {
    require_root!("stalled_reader_before_answer_defaults_to_allow");
    stalled(StallPoint::BeforeAnswer, TimeoutDefault::Allow);
}

#[test]
fn stalled_reader_with_deny_default_denies() {
    require_root!("stalled_reader_with_deny_default_denies");
    stalled(StallPoint::BeforeRead, TimeoutDefault::Deny);
    stalled(StallPoint::BeforeAnswer, TimeoutDefault::Deny);
}

/// Through the broker, as a responder's request arrives: granted + enforce denies the file and
/// holds an active action; releasing it through the broker lets the file open again.
#[test]
fn broker_enforces_and_releases_deny_open() {
    require_root!("broker_enforces_and_releases_deny_open");
    use palisade::actions::{Broker, BrokerSettings, LogNotifySink, RequestContext};
    use palisade::capability::CapabilitySet;
    let dir = tempfile::tempdir().unwrap();
    let (secret, other) = files(dir.path());
    let audit = dir.path().join("audit.jsonl");
    let config = palisade::config::Config::from_toml_str(
        &format!(
            "version = 1\n[actions]\nmode = \"enforce\"\naudit_log = {:?}\n",
            audit.display().to_string()
        ),
        "t.toml",
    )
    .unwrap();
    let denier = OpenDenier::start(DenySettings::from_config(&config.actions.deny)).unwrap();
    let broker = Broker::new(
        BrokerSettings::from_config(&config.actions),
        Box::new(LogNotifySink),
    )
    .unwrap()
    .with_actuator(
        Capability::DenyOpen,
        Box::new(DenyOpenActuator::new(Arc::new(denier))),
    );
    let granted: CapabilitySet = [Capability::DenyOpen].into_iter().collect();
    let ctx = RequestContext {
        responder: "guard",
        granted,
        alert_id: "a-7",
    };
    let receipt = broker
        .request(
            &ctx,
            ActionRequest::DenyOpen {
                path: secret.display().to_string(),
            },
        )
        .unwrap();
    assert_eq!(receipt.mode, Mode::Enforce);
    assert!(child_cat(&secret).is_err());
    assert_eq!(child_cat(&other).unwrap(), "other\n");
    assert_eq!(broker.active().len(), 1);

    broker
        .request(
            &RequestContext {
                alert_id: "",
                ..ctx
            },
            ActionRequest::Release {
                action_id: receipt.id.clone(),
            },
        )
        .unwrap();
    assert_eq!(child_cat(&secret).unwrap(), "secret\n");
    assert!(broker.active().is_empty());
    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(
        log.contains("deny-open") && log.contains("release"),
        "{log}"
    );
}

/// `palisade actions release` of a deny-open while the daemon runs: the operator's broker (the
/// CLI's, with [`LiftedByTheDaemon`]) takes the action out of the shared state file, and the
/// daemon's broker, which owns the fanotify mark, lifts it on its next look at the file.
#[test]
fn operator_release_of_a_deny_open_is_lifted_by_the_daemon() {
    require_root!("operator_release_of_a_deny_open_is_lifted_by_the_daemon");
    use palisade::actions::{
        ActionStore, Broker, BrokerSettings, LiftedByTheDaemon, LogNotifySink, RequestContext,
    };
    let dir = tempfile::tempdir().unwrap();
    let (secret, _) = files(dir.path());
    let config = palisade::config::Config::from_toml_str(
        &format!(
            "version = 1\n[actions]\nmode = \"enforce\"\naudit_log = {:?}\nstate_dir = {:?}\n",
            dir.path().join("audit.jsonl").display().to_string(),
            dir.path().join("state").display().to_string(),
        ),
        "t.toml",
    )
    .unwrap();
    let broker = |actuator: Box<dyn Actuator>| {
        let b = Broker::new(
            BrokerSettings::from_config(&config.actions),
            Box::new(LogNotifySink),
        )
        .unwrap()
        .with_actuator(Capability::DenyOpen, actuator);
        b.attach_store(ActionStore::open(&config.actions.state_dir).unwrap())
            .unwrap();
        b
    };
    let denier = OpenDenier::start(DenySettings::from_config(&config.actions.deny)).unwrap();
    let daemon = broker(Box::new(DenyOpenActuator::new(Arc::new(denier))));
    let ctx = RequestContext {
        responder: "guard",
        granted: [Capability::DenyOpen].into_iter().collect(),
        alert_id: "a-8",
    };
    let receipt = daemon
        .request(
            &ctx,
            ActionRequest::DenyOpen {
                path: secret.display().to_string(),
            },
        )
        .unwrap();
    assert!(child_cat(&secret).is_err());
    assert_eq!(daemon.reconcile_released(), 0, "nothing released yet");
    assert!(child_cat(&secret).is_err());

    let operator = broker(Box::new(LiftedByTheDaemon));
    operator.release_as_operator(&receipt.id).unwrap();
    assert!(
        child_cat(&secret).is_err(),
        "the CLI cannot lift another process's mark"
    );
    assert_eq!(daemon.reconcile_released(), 1);
    assert_eq!(child_cat(&secret).unwrap(), "secret\n");
    assert!(daemon.active().is_empty());
    assert_eq!(daemon.reconcile_released(), 0);
}

/// A slow exec check (hashing a large file) runs beside the reader: while one exec waits on
/// it, a denied open is refused and an exec the check answers at once runs, without waiting.
#[test]
fn a_slow_exec_check_does_not_hold_up_other_answers() {
    require_root!("a_slow_exec_check_does_not_hold_up_other_answers");
    use palisade::actions::fanotify::ExecCheck;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    /// Takes `delay` to allow the exec of inode `ino`; knows every other answer at once.
    struct SlowFor {
        ino: u64,
        delay: Duration,
    }
    impl ExecCheck for SlowFor {
        fn allow_exec(&self, _pid: i32, _file: &std::fs::File, meta: &std::fs::Metadata) -> bool {
            if meta.ino() == self.ino {
                std::thread::sleep(self.delay);
            }
            true
        }
        fn known_verdict(&self, _pid: i32, meta: &std::fs::Metadata) -> Option<bool> {
            (meta.ino() != self.ino).then_some(true)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (secret, _) = files(dir.path());
    let slow = dir.path().join("slow");
    std::fs::copy("/bin/true", &slow).unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let delay = Duration::from_secs(3);
    let denier = OpenDenier::start(settings(20_000, TimeoutDefault::Allow)).unwrap();
    denier.deny(&secret).unwrap();
    denier
        .check_execs(Arc::new(SlowFor {
            ino: std::fs::metadata(&slow).unwrap().ino(),
            delay,
        }))
        .unwrap();
    let started = Instant::now();
    let slow_child = std::thread::spawn(move || Command::new(&slow).status().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    assert!(child_cat(&secret).is_err(), "denied open allowed");
    assert!(Command::new("/bin/true").status().unwrap().success());
    let quick = t0.elapsed();
    assert!(
        quick < Duration::from_millis(1500),
        "answers waited on the slow check: {quick:?}"
    );
    assert!(slow_child.join().unwrap().success());
    assert!(
        started.elapsed() >= delay,
        "the slow exec did not wait for its check"
    );
    denier.stop_exec_checks().unwrap();
}

/// Cost of one permission round trip: a child opens a denied file in a loop (every open is an
/// event the reader answers) against the same loop on an unmarked file. Ignored by default:
/// `cargo test -p palisade-host --test fanotify_deny -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_permission_round_trip() {
    require_root!("bench_permission_round_trip");
    let dir = tempfile::tempdir().unwrap();
    let (secret, other) = files(dir.path());
    let denier = OpenDenier::start(DenySettings::default()).unwrap();
    let script = "import os,sys,time\n\
        p=sys.argv[1]; n=int(sys.argv[2]); t=time.perf_counter_ns()\n\
        for _ in range(n):\n\
        \x20   try: os.close(os.open(p, os.O_RDONLY))\n\
        \x20   except PermissionError: pass\n\
        print((time.perf_counter_ns()-t)//n)\n";
    let per_open = |path: &Path| -> u64 {
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(path)
            .arg("20000")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let plain = per_open(&other);
    denier.deny(&secret).unwrap();
    let denied = per_open(&secret);
    let unmarked_with_daemon = per_open(&other);
    eprintln!(
        "open+close: unmarked file {plain} ns; unmarked file with deny rules active \
         {unmarked_with_daemon} ns; denied file (fanotify round trip) {denied} ns; \
         ratio {:.1}x",
        denied as f64 / plain as f64
    );
}
