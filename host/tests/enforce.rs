//! The kernel-backed actuators block-exec and network-quarantine against real processes,
//! cgroups and sockets (root only; each test prints a loud SKIPPED line and returns when not
//! root): a blocked binary dies of SIGKILL before its side effect while another runs, by path
//! and by sha256, through the broker with audit and monitor mode, whatever name runs it (an
//! absolute or relative path, a symlink, a hard link, /proc/self/fd, execveat, a bind mount),
//! path-only when identity matching is off; a copy of a sha256-blocked file made after the
//! rule is refused (fanotify exec check); a quarantined cgroup cannot
//! connect to a loopback listener while the test's own cgroup can (and can with
//! `allow_loopback`); both survive a broker restart and are released by the real
//! `palisade actions release`. Every test pins under its own bpffs directory, removed by a
//! guard, so parallel runs never share a map.
#![cfg(feature = "ebpf")]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic on failure, like the tests"
)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::actions::enforce_ebpf::{
    BlockExecActuator, EnforceSettings, Enforcer, NetQuarantineActuator,
};
use palisade::actions::freeze::CgroupLayout;
use palisade::actions::{
    with_host_actuators, ActionRequest, ActionStore, Actuator, Broker, BrokerSettings, ExecContext,
    ExecMatch, LogNotifySink, Mode, Outcome, RequestContext, Workload,
};
use palisade::capability::Capability;
use palisade::config::Config;

#[path = "support/root.rs"]
mod root;

/// True (and a loud line on stderr) when the test cannot run here.
fn skip(test: &str) -> bool {
    root::skip_unless_root(
        &format!("enforce::{test}"),
        "loads eBPF enforcement programs",
    )
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A bpffs directory of this test; its pins (map, links) are removed on drop, which also
/// detaches any quarantine a failed test left behind.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> PinDir {
        PinDir(Path::new("/sys/fs/bpf").join(unique("palisade-test")))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir(&self.0);
    }
}

/// A cgroup v2 directory for the test; its processes are killed and it is removed on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new() -> Cgroup {
        let root = CgroupLayout::detect().v2_root.expect("cgroup2 mounted");
        let dir = root.join(unique("palisade-test-netq"));
        fs::create_dir(&dir).unwrap();
        Cgroup(dir)
    }

    fn name(&self) -> String {
        self.0.file_name().unwrap().to_str().unwrap().to_owned()
    }

    /// Runs a bash connect to 127.0.0.1:`port` inside this cgroup; true when it connected.
    /// A dropped SYN makes connect hang in retransmits, so a connect expected to fail gets a
    /// short deadline and one expected to succeed a long one (it returns at once when it does).
    fn connects_expecting(&self, port: u16, expect: bool) -> bool {
        let secs = if expect { 20 } else { 2 };
        let script = format!(
            "echo $$ > {procs} && exec timeout {secs} bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'",
            procs = self.0.join("cgroup.procs").display()
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    fn connects(&self, port: u16) -> bool {
        self.connects_expecting(port, true)
    }

    fn blocked(&self, port: u16) -> bool {
        !self.connects_expecting(port, false)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Ok(procs) = fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A copy of `touch` at `dir/name`: running it with a path creates that file.
fn touch_copy(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    fs::copy("/usr/bin/touch", &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Runs `bin marker` from a shell (another parent than the test) and returns its status.
fn run_via_shell(bin: &Path, marker: &Path) -> ExitStatus {
    Command::new("sh")
        .arg("-c")
        .arg(format!("exec {} {}", bin.display(), marker.display()))
        .status()
        .unwrap()
}

fn run(bin: &Path, marker: &Path) -> ExitStatus {
    Command::new(bin).arg(marker).status().unwrap()
}

fn settings(pins: &PinDir, allow_loopback: bool) -> EnforceSettings {
    EnforceSettings {
        pin_dir: pins.0.clone(),
        allow_loopback,
        hash_roots: Vec::new(),
        inode_match: true,
        exec_check: Default::default(),
    }
}

/// A copy of `touch` whose contents no other file has (bytes appended after the ELF image),
/// so a sha256 rule on it blocks nothing else on the machine.
fn unique_touch(dir: &Path, name: &str) -> PathBuf {
    let path = touch_copy(dir, name);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(format!("palisade-test {}", unique(name)).as_bytes());
    fs::write(&path, bytes).unwrap();
    path
}

fn held(id: &str, request: &ActionRequest, handle: &str) -> palisade::actions::ActiveAction {
    palisade::actions::ActiveAction {
        id: id.into(),
        responder: "r".into(),
        capability: Capability::BlockExec,
        request: request.clone(),
        alert_id: "a".into(),
        mode: Mode::Enforce,
        since: std::time::SystemTime::now(),
        handle: handle.into(),
    }
}

/// Runs the file open as `fd` with `execveat(fd, "", argv, envp, AT_EMPTY_PATH)` (what
/// `fexecve` does), passing `marker` as its argument.
fn run_execveat(bin: &Path, marker: &Path) -> ExitStatus {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let file = fs::File::open(bin).unwrap();
    let fd = file.as_raw_fd();
    let arg0 = std::ffi::CString::new("execveat-child").unwrap();
    let arg1 = std::ffi::CString::new(marker.as_os_str().as_bytes()).unwrap();
    let mut cmd = Command::new("/bin/true");
    // SAFETY: only an async-signal-safe syscall runs in the child (the pointer arrays live on
    // its stack; the strings were allocated before the fork).
    #[expect(unsafe_code, reason = "pre_exec and execveat")]
    unsafe {
        cmd.pre_exec(move || {
            let argv = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            Err(std::io::Error::last_os_error())
        });
    }
    let status = cmd.status().unwrap();
    drop(file);
    status
}

/// Unmounts (lazily) on drop, so a failing test leaves no bind mount behind.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs `script` with `sh -c`.
fn sh(script: &str) -> ExitStatus {
    Command::new("sh").arg("-c").arg(script).status().unwrap()
}

/// The ways a test runs `bin`, each with its own marker under `dir`, so a side effect is
/// attributed to the form that caused it: (form, status, marker).
fn run_every_way(bin: &Path, dir: &Path, round: &str) -> Vec<(&'static str, ExitStatus, PathBuf)> {
    let m = |form: &str| dir.join(format!("marker-{round}-{form}"));
    let name = bin.file_name().unwrap().to_str().unwrap();
    let bin_dir = bin.parent().unwrap();
    let links = dir.join(format!("links-{round}"));
    fs::create_dir_all(&links).unwrap();
    let symlink = links.join("via-symlink");
    std::os::unix::fs::symlink(bin, &symlink).unwrap();
    let hardlink = links.join("via-hardlink");
    fs::hard_link(bin, &hardlink).unwrap();
    let mut out = Vec::new();
    let (marker, status) = (m("absolute"), run(bin, &m("absolute")));
    out.push(("absolute", status, marker));
    let marker = m("relative");
    let status = sh(&format!(
        "cd {} && exec ./{name} {}",
        bin_dir.display(),
        marker.display()
    ));
    out.push(("relative", status, marker));
    let marker = m("symlink");
    out.push(("symlink", run_via_shell(&symlink, &marker), marker));
    let marker = m("hardlink");
    out.push(("hardlink", run_via_shell(&hardlink, &marker), marker));
    let marker = m("proc-fd");
    let status = sh(&format!(
        "exec 3< {} && exec /proc/self/fd/3 {}",
        bin.display(),
        marker.display()
    ));
    out.push(("proc-fd", status, marker));
    let marker = m("execveat");
    out.push(("execveat", run_execveat(bin, &marker), marker));
    // A bind mount of the binary's directory: same file, another path and mount.
    let mnt = dir.join(format!("bind-{round}"));
    fs::create_dir_all(&mnt).unwrap();
    let bound = Command::new("mount")
        .arg("--bind")
        .arg(bin_dir)
        .arg(&mnt)
        .status()
        .unwrap()
        .success();
    assert!(bound, "bind mount for the test");
    let unmount = Unmount(mnt.clone());
    let marker = m("bind-mount");
    let status = run_via_shell(&mnt.join(name), &marker);
    drop(unmount);
    out.push(("bind-mount", status, marker));
    fs::remove_dir_all(&links).unwrap();
    out
}

fn exec_ctx(action_id: &str) -> ExecContext<'_> {
    ExecContext {
        responder: "r",
        alert_id: "a",
        action_id,
    }
}

fn write_config(dir: &Path, pins: &PinDir, mode: &str) -> PathBuf {
    let path = dir.join("palisade.toml");
    fs::write(
        &path,
        format!(
            "version = 1\n[actions]\nmode = {mode:?}\naudit_log = {:?}\nstate_dir = {:?}\nquarantine_dir = {:?}\nbpf_pin_dir = {:?}\n",
            dir.join("audit.jsonl").display().to_string(),
            dir.join("state").display().to_string(),
            dir.join("quarantine").display().to_string(),
            pins.0.display().to_string(),
        ),
    )
    .unwrap();
    path
}

fn ctx<'a>(caps: &[Capability]) -> RequestContext<'a> {
    RequestContext {
        responder: "contain",
        granted: caps.iter().copied().collect(),
        alert_id: "alert-9",
    }
}

fn palisade(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn blocked_binary_dies_before_running_while_others_run() {
    if skip("blocked_binary_dies_before_running_while_others_run") {
        return;
    }
    let pins = PinDir::new();
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), &pins, "enforce");
    let config = Config::load(Some(&config_path), &Default::default()).unwrap();
    let broker = with_host_actuators(
        Broker::new(
            BrokerSettings::from_config(&config.actions),
            Box::new(LogNotifySink),
        )
        .unwrap(),
        &config.actions,
    );
    let blocked = touch_copy(dir.path(), "blocked-touch");
    let other = touch_copy(dir.path(), "other-touch");
    let marker = dir.path().join("marker");
    let c = ctx(&[Capability::BlockExec]);

    let receipt = broker
        .request(
            &c,
            ActionRequest::BlockExec(ExecMatch::Path(blocked.display().to_string())),
        )
        .unwrap();
    assert_eq!(receipt.mode, Mode::Enforce);

    for status in [run(&blocked, &marker), run_via_shell(&blocked, &marker)] {
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }
    assert!(!marker.exists(), "the blocked binary ran user code");
    let other_marker = dir.path().join("other-marker");
    assert!(run(&other, &other_marker).success());
    assert!(other_marker.exists());

    broker
        .request(
            &c,
            ActionRequest::Release {
                action_id: receipt.id.clone(),
            },
        )
        .unwrap();
    assert!(run(&blocked, &marker).success());
    assert!(marker.exists(), "released: the binary runs again");

    let audit = audit_lines(&dir.path().join("audit.jsonl"));
    let summary: Vec<String> = audit
        .iter()
        .map(|r| format!("{} {}", r["action"], r["result"]))
        .collect();
    assert_eq!(summary, ["\"block-exec\" \"ok\"", "\"release\" \"ok\""]);
    assert_eq!(audit[0]["target"]["path"], blocked.display().to_string());
}

#[test]
fn blocked_binary_dies_whatever_name_runs_it() {
    if skip("blocked_binary_dies_whatever_name_runs_it") {
        return;
    }
    let pins = PinDir::new();
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("bin");
    fs::create_dir(&bin_dir).unwrap();
    let blocked = touch_copy(&bin_dir, "blocked-touch");
    let other = touch_copy(&bin_dir, "other-touch");
    let enforcer = Arc::new(Enforcer::new(settings(&pins, false)));
    let act = BlockExecActuator::new(Arc::clone(&enforcer));
    let req = ActionRequest::BlockExec(ExecMatch::Path(blocked.display().to_string()));
    let Outcome::Held { handle } = act.execute(&exec_ctx("act-any-1"), &req).unwrap() else {
        panic!("block-exec holds state");
    };
    assert_eq!(
        enforcer.inode_blocking(),
        Some(true),
        "BTF offsets resolved on this kernel"
    );
    assert_eq!(enforcer.blocked_files().len(), 1, "{handle}");

    for (form, status, marker) in run_every_way(&blocked, dir.path(), "blocked") {
        assert_eq!(status.signal(), Some(9), "{form}: {status:?}");
        assert!(!marker.exists(), "{form}: the blocked binary ran user code");
    }
    let other_marker = dir.path().join("other-marker");
    assert!(run(&other, &other_marker).success());
    assert!(other_marker.exists(), "an unrelated binary runs");
    let counters = enforcer.block_counters().unwrap();
    // Every form but the absolute path (which the path key may catch first) needs identity.
    assert!(counters.killed_by_inode >= 6, "{counters:?}");
    assert_eq!(counters.signal_failed, 0);

    // A second rule naming the same file through a symlink shares its identity key: releasing
    // the first keeps the file blocked under every name.
    let alias = dir.path().join("alias");
    std::os::unix::fs::symlink(&blocked, &alias).unwrap();
    let req2 = ActionRequest::BlockExec(ExecMatch::Path(alias.display().to_string()));
    let Outcome::Held { handle: handle2 } = act.execute(&exec_ctx("act-any-2"), &req2).unwrap()
    else {
        panic!("held");
    };
    assert_eq!(enforcer.blocked_files().len(), 1);
    act.release(&held("act-any-1", &req, &handle)).unwrap();
    let marker = dir.path().join("marker-still");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && exec ./blocked-touch {}",
            bin_dir.display(),
            marker.display()
        ))
        .status()
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "held by the second rule: {status:?}"
    );
    assert!(!marker.exists());
    act.release(&held("act-any-2", &req2, &handle2)).unwrap();
    assert!(enforcer.blocked_files().is_empty() && enforcer.blocked_keys().is_empty());
    for (form, status, marker) in run_every_way(&blocked, dir.path(), "released") {
        assert!(status.success(), "{form} after release: {status:?}");
        assert!(marker.exists(), "{form} after release: ran");
    }
}

#[test]
fn without_identity_matching_blocks_fall_back_to_the_path() {
    if skip("without_identity_matching_blocks_fall_back_to_the_path") {
        return;
    }
    let pins = PinDir::new();
    let dir = tempfile::tempdir().unwrap();
    let blocked = touch_copy(dir.path(), "blocked-touch");
    let enforcer = Arc::new(Enforcer::new(EnforceSettings {
        inode_match: false,
        ..settings(&pins, false)
    }));
    let act = BlockExecActuator::new(Arc::clone(&enforcer));
    let req = ActionRequest::BlockExec(ExecMatch::Path(blocked.display().to_string()));
    let Outcome::Held { handle } = act.execute(&exec_ctx("act-path-1"), &req).unwrap() else {
        panic!("held");
    };
    assert_eq!(enforcer.inode_blocking(), Some(false));
    assert!(
        enforcer.blocked_files().is_empty(),
        "no identity keys: {handle}"
    );
    let marker = dir.path().join("marker");
    assert_eq!(
        run(&blocked, &marker).signal(),
        Some(9),
        "the path still matches"
    );
    assert!(!marker.exists());
    // What identity matching adds: a relative name is not caught without it.
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && exec ./blocked-touch {}",
            dir.path().display(),
            marker.display()
        ))
        .status()
        .unwrap();
    assert!(status.success() && marker.exists(), "{status:?}");
    assert!(enforcer.block_counters().unwrap().inode_unavailable >= 2);
    act.release(&held("act-path-1", &req, &handle)).unwrap();
}

#[test]
fn sha256_rule_refuses_a_copy_made_after_the_rule() {
    if skip("sha256_rule_refuses_a_copy_made_after_the_rule") {
        return;
    }
    let pins = PinDir::new();
    let dir = tempfile::tempdir().unwrap();
    // The payload exists only in memory when the rule is made: no file carries the hash yet.
    let payload = {
        let p = unique_touch(dir.path(), "payload");
        let bytes = fs::read(&p).unwrap();
        fs::remove_file(&p).unwrap();
        bytes
    };
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&payload))
    };
    let enforcer = Arc::new(Enforcer::new(EnforceSettings {
        hash_roots: vec![dir.path().to_path_buf()],
        ..settings(&pins, false)
    }));
    let act = BlockExecActuator::new(Arc::clone(&enforcer));
    let req = ActionRequest::BlockExec(ExecMatch::Sha256(hash.clone()));
    let Outcome::Held { handle } = act.execute(&exec_ctx("act-copy-1"), &req).unwrap() else {
        panic!("a hash no file carries yet is held for the exec check");
    };
    assert_eq!(enforcer.blocked_hashes(), std::slice::from_ref(&hash));

    // A copy written after the rule, in another directory, under another name.
    let later = dir.path().join("later");
    fs::create_dir(&later).unwrap();
    let copy = later.join("renamed-copy");
    fs::write(&copy, &payload).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    let marker = dir.path().join("marker");
    let err = Command::new(&copy).arg(&marker).status().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    // From a shell, another parent: refused too (sh reports 126, cannot execute).
    let status = run_via_shell(&copy, &marker);
    assert_eq!(status.code(), Some(126), "{status:?}");
    assert!(!marker.exists(), "the copy ran user code");
    // An unrelated binary runs, and the daemon (this process) may read the copy.
    let other = touch_copy(dir.path(), "other-touch");
    let other_marker = dir.path().join("other-marker");
    assert!(run(&other, &other_marker).success() && other_marker.exists());
    assert_eq!(fs::read(&copy).unwrap(), payload);
    let counters = enforcer.exec_check_counters().unwrap();
    assert!(counters.denied >= 2 && counters.hashed >= 1, "{counters:?}");

    // Released from another process (as `palisade actions release` does: a new enforcer on
    // the same pins): this process's exec check lets the copy run at once.
    let cli = BlockExecActuator::new(Arc::new(Enforcer::new(settings(&pins, false))));
    cli.release(&held("act-copy-1", &req, &handle)).unwrap();
    assert!(enforcer.blocked_hashes().is_empty());
    assert!(run(&copy, &marker).success() && marker.exists(), "released");
}

#[test]
fn monitor_mode_blocks_nothing() {
    if skip("monitor_mode_blocks_nothing") {
        return;
    }
    let pins = PinDir::new();
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), &pins, "monitor");
    let config = Config::load(Some(&config_path), &Default::default()).unwrap();
    let broker = with_host_actuators(
        Broker::new(
            BrokerSettings::from_config(&config.actions),
            Box::new(LogNotifySink),
        )
        .unwrap(),
        &config.actions,
    );
    let bin = touch_copy(dir.path(), "watched-touch");
    let marker = dir.path().join("marker");
    let receipt = broker
        .request(
            &ctx(&[Capability::BlockExec, Capability::NetworkQuarantine]),
            ActionRequest::BlockExec(ExecMatch::Path(bin.display().to_string())),
        )
        .unwrap();
    assert_eq!(receipt.mode, Mode::Monitor);
    assert!(run(&bin, &marker).success() && marker.exists());
    assert!(!pins.0.exists(), "monitor mode loaded nothing");
    let audit = audit_lines(&dir.path().join("audit.jsonl"));
    assert_eq!(audit[0]["result"], "recorded");
}

#[test]
fn sha256_rule_blocks_the_files_carrying_the_hash() {
    if skip("sha256_rule_blocks_the_files_carrying_the_hash") {
        return;
    }
    let pins = PinDir::new();
    let dir = tempfile::tempdir().unwrap();
    // Unique contents: the rule's exec check sees every exec on the machine.
    let a = unique_touch(dir.path(), "a");
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    let b = sub.join("b");
    fs::copy(&a, &b).unwrap();
    let other = dir.path().join("other");
    fs::copy("/usr/bin/true", &other).unwrap();
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(fs::read(&a).unwrap()))
    };
    let enforcer = Arc::new(Enforcer::new(EnforceSettings {
        hash_roots: vec![dir.path().to_path_buf()],
        ..settings(&pins, false)
    }));
    let act = BlockExecActuator::new(Arc::clone(&enforcer));
    let req = ActionRequest::BlockExec(ExecMatch::Sha256(hash.to_uppercase()));
    let Outcome::Held { handle } = act.execute(&exec_ctx("act-sha-1"), &req).unwrap() else {
        panic!("block-exec holds state");
    };
    let mut keys = enforcer.blocked_keys();
    keys.sort();
    let mut want: Vec<String> = [&a, &b]
        .iter()
        .map(|p| fs::canonicalize(p).unwrap().display().to_string())
        .collect();
    want.sort();
    assert_eq!(keys, want);
    let marker = dir.path().join("marker");
    // The exec check answers at open, before the exec program would kill: EPERM.
    for bin in [&a, &b] {
        let err = Command::new(bin).arg(&marker).status().unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EPERM),
            "{}: {err}",
            bin.display()
        );
    }
    assert!(!marker.exists());
    assert!(Command::new(&other).status().unwrap().success());
    assert!(enforcer.exec_check_counters().unwrap().denied >= 2);

    // A second rule on the same file: releasing the first keeps the second.
    let path_req = ActionRequest::BlockExec(ExecMatch::Path(a.display().to_string()));
    let Outcome::Held {
        handle: path_handle,
    } = act.execute(&exec_ctx("act-path-2"), &path_req).unwrap()
    else {
        panic!("held");
    };
    act.release(&held("act-sha-1", &req, &handle)).unwrap();
    assert_eq!(run(&a, &marker).signal(), Some(9), "still blocked by path");
    assert!(run(&b, &marker).success());
    act.release(&held("act-path-2", &path_req, &path_handle))
        .unwrap();
    assert!(run(&a, &marker).success());
    assert!(enforcer.blocked_keys().is_empty());
    assert!(enforcer.blocked_files().is_empty() && enforcer.blocked_hashes().is_empty());

    // A malformed hash is refused, not held.
    let bad = ActionRequest::BlockExec(ExecMatch::Sha256("00".repeat(31)));
    assert!(matches!(
        act.execute(&exec_ctx("act-bad-3"), &bad),
        Err(palisade::actions::ActionError::InvalidTarget(_))
    ));
}

#[test]
fn quarantined_cgroup_cannot_connect_while_others_can() {
    if skip("quarantined_cgroup_cannot_connect_while_others_can") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cg = Cgroup::new();
    assert!(cg.connects(port), "connects before the quarantine");

    for allow_loopback in [false, true] {
        let pins = PinDir::new();
        let act =
            NetQuarantineActuator::new(Arc::new(Enforcer::new(settings(&pins, allow_loopback))));
        let req = ActionRequest::NetworkQuarantine(Workload::CgroupPath(cg.name()));
        let Outcome::Held { handle } = act.execute(&exec_ctx("act-netq-1"), &req).unwrap() else {
            panic!("held");
        };
        assert_eq!(
            cg.connects_expecting(port, allow_loopback),
            allow_loopback,
            "quarantined connect with allow_loopback = {allow_loopback}"
        );
        // The test's own cgroup is untouched.
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        drop(act); // the links are pinned: the quarantine outlives the object that made it
        assert_eq!(cg.connects_expecting(port, allow_loopback), allow_loopback);

        let act =
            NetQuarantineActuator::new(Arc::new(Enforcer::new(settings(&pins, allow_loopback))));
        act.release(&palisade::actions::ActiveAction {
            id: "act-netq-1".into(),
            responder: "r".into(),
            capability: Capability::NetworkQuarantine,
            request: req,
            alert_id: "a".into(),
            mode: Mode::Enforce,
            since: std::time::SystemTime::now(),
            handle,
        })
        .unwrap();
        assert!(cg.connects(port), "released");
    }

    // The root cgroup and the test's own are refused.
    let pins = PinDir::new();
    let act = NetQuarantineActuator::new(Arc::new(Enforcer::new(settings(&pins, false))));
    for workload in [
        Workload::CgroupPath("/".into()),
        Workload::CgroupPath("".into()),
    ] {
        assert!(act
            .execute(
                &exec_ctx("act-bad-1"),
                &ActionRequest::NetworkQuarantine(workload)
            )
            .is_err());
    }
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    if own != "/" {
        assert!(act
            .execute(
                &exec_ctx("act-bad-2"),
                &ActionRequest::NetworkQuarantine(Workload::CgroupPath(own.into()))
            )
            .is_err());
    }
}

/// Removes the (empty) cgroup directory, as the end of a container does; retried while the
/// kernel still counts an exiting task in it.
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = fs::remove_dir(dir) {
        assert!(Instant::now() < deadline, "rmdir {}: {e}", dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A quarantined workload restarted under the same name (`docker restart`: its cgroup removed
/// and made again at the same path) escapes the old links, which stay pinned on the removed
/// cgroup; the broker's check sees the new cgroup id and attaches the quarantine again, under
/// the same action id, with the new id in the handle in memory and in the state file. A cgroup
/// that is gone stays listed and is quarantined when it comes back.
#[test]
fn a_recreated_cgroup_is_quarantined_again() {
    if skip("a_recreated_cgroup_is_quarantined_again") {
        return;
    }
    let pins = PinDir::new();
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), &pins, "enforce");
    let config = Config::load(Some(&config_path), &Default::default()).unwrap();
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
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cg = Cgroup::new();
    let c = ctx(&[Capability::NetworkQuarantine]);
    let id = broker
        .request(
            &c,
            ActionRequest::NetworkQuarantine(Workload::CgroupPath(cg.name())),
        )
        .unwrap()
        .id;
    assert!(cg.blocked(port));
    let cgroup_id = |handle: &str| {
        serde_json::from_str::<serde_json::Value>(handle).unwrap()["cgroup_id"].as_u64()
    };
    let old_ino = fs::metadata(&cg.0).unwrap().ino();
    assert_eq!(cgroup_id(&broker.active()[0].handle), Some(old_ino));
    assert_eq!(broker.reassert_held(), 0, "nothing lapsed yet");

    // The restart.
    remove_cgroup(&cg.0);
    fs::create_dir(&cg.0).unwrap();
    let new_ino = fs::metadata(&cg.0).unwrap().ino();
    assert_ne!(new_ino, old_ino);
    assert!(
        cg.connects(port),
        "the old links hold the new cgroup: nothing to test"
    );
    let links: Vec<PathBuf> = fs::read_dir(&pins.0)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("netq-"))
        .collect();
    assert_eq!(links.len(), 2, "the dead links stay pinned: {links:?}");

    assert_eq!(broker.reassert_held(), 1);
    assert!(cg.blocked(port), "quarantined again");
    let active = broker.active();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].id, id);
    assert_eq!(cgroup_id(&active[0].handle), Some(new_ino));
    let stored = ActionStore::at(&config.actions.state_dir)
        .get(&id)
        .unwrap()
        .unwrap();
    assert_eq!(stored.handle, active[0].handle, "state file updated");
    assert_eq!(broker.reassert_held(), 0, "holds again");
    let audit = audit_lines(&dir.path().join("audit.jsonl"));
    assert_eq!(
        audit
            .iter()
            .filter(|r| r["action"] == "network-quarantine" && r["result"] == "ok")
            .count(),
        2,
        "the re-application is audited"
    );

    // Stopped: kept listed, not re-applied (nothing to attach to), and no spin.
    remove_cgroup(&cg.0);
    assert_eq!(broker.reassert_held(), 0);
    assert_eq!(broker.reassert_held(), 0);
    assert_eq!(broker.active().len(), 1);
    // Started again: quarantined at the next check.
    fs::create_dir(&cg.0).unwrap();
    assert!(cg.connects(port));
    assert_eq!(broker.reassert_held(), 1);
    assert!(cg.blocked(port), "quarantined when it came back");

    // Restarted while the daemon is down: the daemon's start finds the new cgroup id.
    drop(broker);
    remove_cgroup(&cg.0);
    fs::create_dir(&cg.0).unwrap();
    let newest = fs::metadata(&cg.0).unwrap().ino();
    assert!(cg.connects(port));
    let broker = new_broker();
    let summary = broker.reapply_held();
    assert_eq!(
        (summary.reapplied, summary.dropped, summary.failed),
        (1, 0, 0),
        "{summary:?}"
    );
    assert!(cg.blocked(port), "quarantined again at start");
    assert_eq!(cgroup_id(&broker.active()[0].handle), Some(newest));

    broker
        .request(&c, ActionRequest::Release { action_id: id })
        .unwrap();
    assert!(cg.connects(port), "released");
    assert!(broker.active().is_empty());
}

#[test]
fn blocks_and_quarantines_survive_a_restart_and_the_cli_releases_them() {
    if skip("blocks_and_quarantines_survive_a_restart_and_the_cli_releases_them") {
        return;
    }
    let pins = PinDir::new();
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let config_path = write_config(dir.path(), &pins, "enforce");
    let config = Config::load(Some(&config_path), &Default::default()).unwrap();
    let new_broker = || {
        let broker = with_host_actuators(
            Broker::new(
                BrokerSettings::from_config(&config.actions),
                Box::new(LogNotifySink),
            )
            .unwrap(),
            &config.actions,
        );
        let loaded = broker
            .attach_store(ActionStore::open(&config.actions.state_dir).unwrap())
            .unwrap();
        (broker, loaded)
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cg = Cgroup::new();
    let bin = touch_copy(dir.path(), "blocked-touch");
    let marker = dir.path().join("marker");
    let c = ctx(&[Capability::BlockExec, Capability::NetworkQuarantine]);

    let (block_id, netq_id) = {
        let (broker, loaded) = new_broker();
        assert_eq!(loaded, 0);
        let b = broker
            .request(
                &c,
                ActionRequest::BlockExec(ExecMatch::Path(bin.display().to_string())),
            )
            .unwrap();
        let q = broker
            .request(
                &c,
                ActionRequest::NetworkQuarantine(Workload::CgroupPath(cg.name())),
            )
            .unwrap();
        assert_eq!(run(&bin, &marker).signal(), Some(9));
        assert!(cg.blocked(port));
        (b.id, q.id)
    }; // the "daemon" stops here

    // Down: the exec program went with the daemon; the pinned quarantine did not.
    assert!(run(&bin, &marker).success());
    fs::remove_file(&marker).unwrap();
    assert!(
        cg.blocked(port),
        "the quarantine holds while the daemon is down"
    );

    let (broker, loaded) = new_broker();
    assert_eq!(loaded, 2);
    let summary = broker.reapply_held();
    assert_eq!(
        (summary.reapplied, summary.dropped, summary.failed),
        (2, 0, 0),
        "{summary:?}"
    );
    assert_eq!(run(&bin, &marker).signal(), Some(9), "block re-applied");
    // Re-applied by identity too: a relative name is caught.
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && exec ./blocked-touch {}",
            dir.path().display(),
            marker.display()
        ))
        .status()
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "relative name after restart: {status:?}"
    );
    assert!(!marker.exists());
    assert!(cg.blocked(port));

    // The operator releases both with the CLI while this "daemon" runs.
    let cfg = config_path.to_str().unwrap();
    let (ok, out) = palisade(&["actions", "list", "--config", cfg]);
    assert!(
        ok && out.contains("block-exec") && out.contains("network-quarantine"),
        "{out}"
    );
    for id in [&block_id, &netq_id] {
        let (ok, out) = palisade(&["actions", "release", id, "--config", cfg]);
        assert!(ok, "{out}");
    }
    assert!(run(&bin, &marker).success() && marker.exists());
    assert!(cg.connects(port));
    drop(broker);
    let leftover: Vec<String> = fs::read_dir(&pins.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut leftover = leftover;
    leftover.sort();
    assert_eq!(
        leftover,
        ["BLOCK_EXEC", "BLOCK_EXEC_INODE", "BLOCK_EXEC_SHA256"],
        "no link pins left"
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// (p50, p99) in microseconds.
fn summarise(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    (
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.99)),
    )
}

fn spawn_wait(bin: &Path) -> (Duration, ExitStatus) {
    let t = Instant::now();
    let status = Command::new(bin).status().unwrap();
    (t.elapsed(), status)
}

/// Block-exec figures for docs/performance.md (root; not run by CI):
/// `cargo test -p palisade-host --release --test enforce -- --ignored --nocapture bench_block_exec`
#[test]
#[ignore = "benchmark: prints a markdown table and a JSON line"]
fn bench_block_exec() {
    if skip("bench_block_exec") {
        return;
    }
    const N: usize = 300;
    let pins = PinDir::new();
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), &pins, "enforce");
    // Still inside [actions]: no rate limit in the way of 1,300 requests.
    let mut text = fs::read_to_string(&config_path).unwrap();
    text.push_str("rate_limit_per_minute = 1000000\n");
    fs::write(&config_path, text).unwrap();
    let config = Config::load(Some(&config_path), &Default::default()).unwrap();
    let broker = with_host_actuators(
        Broker::new(
            BrokerSettings::from_config(&config.actions),
            Box::new(LogNotifySink),
        )
        .unwrap(),
        &config.actions,
    );
    let c = ctx(&[Capability::BlockExec]);
    let free = dir.path().join("free-true");
    fs::copy("/usr/bin/true", &free).unwrap();
    let blocked = dir.path().join("blocked-true");
    fs::copy("/usr/bin/true", &blocked).unwrap();

    // Exec cost with no enforcement program attached at all.
    let base: Vec<Duration> = (0..N).map(|_| spawn_wait(&free).0).collect();

    // First request: loads the object and attaches the exec program.
    let t = Instant::now();
    let first = broker
        .request(
            &c,
            ActionRequest::BlockExec(ExecMatch::Path(blocked.display().to_string())),
        )
        .unwrap();
    let first_request = t.elapsed();

    // Request -> map entry, steady state (through the broker: grant, audit, persist-free).
    let mut request = Vec::with_capacity(N);
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        let path = format!("/nonexistent/palisade-bench/{i}");
        let t = Instant::now();
        let r = broker
            .request(&c, ActionRequest::BlockExec(ExecMatch::Path(path)))
            .unwrap();
        request.push(t.elapsed());
        ids.push(r.id);
    }
    // Exec -> SIGKILL: spawn of a blocked binary until it is reaped dead.
    let kill: Vec<Duration> = (0..N)
        .map(|_| {
            let (d, status) = spawn_wait(&blocked);
            assert_eq!(status.signal(), Some(9));
            d
        })
        .collect();
    for id in ids {
        broker
            .request(&c, ActionRequest::Release { action_id: id })
            .unwrap();
    }
    // Exec cost of an unblocked binary: program attached with 1 rule, then with 1,000.
    let one_rule: Vec<Duration> = (0..N).map(|_| spawn_wait(&free).0).collect();
    let mut ids = Vec::new();
    for i in 0..1000 {
        let path = format!("/nonexistent/palisade-bench/rule-{i}");
        ids.push(
            broker
                .request(&c, ActionRequest::BlockExec(ExecMatch::Path(path)))
                .unwrap()
                .id,
        );
    }
    let thousand: Vec<Duration> = (0..N).map(|_| spawn_wait(&free).0).collect();
    // And once more without the program, interleaving-free noise check.
    for id in ids.into_iter().chain([first.id]) {
        broker
            .request(&c, ActionRequest::Release { action_id: id })
            .unwrap();
    }
    drop(broker);
    let base2: Vec<Duration> = (0..N).map(|_| spawn_wait(&free).0).collect();

    let rows = [
        (
            "exec of an unblocked binary, no exec program",
            summarise(base),
        ),
        ("same, program attached, 1 rule", summarise(one_rule)),
        ("same, program attached, 1,000 rules", summarise(thousand)),
        ("same, program detached again", summarise(base2)),
        (
            "block-exec request -> map entry (broker)",
            summarise(request),
        ),
        (
            "exec of a blocked binary -> reaped by SIGKILL",
            summarise(kill),
        ),
    ];
    let mut out = String::from("| measurement | p50 (µs) | p99 (µs) |\n| --- | ---: | ---: |\n");
    for (name, (p50, p99)) in &rows {
        out.push_str(&format!("| {name} | {p50:.0} | {p99:.0} |\n"));
    }
    out.push_str(&format!(
        "| first request (load + attach + entry) | {:.0} | |\n",
        us(first_request)
    ));
    let json = serde_json::json!({
        "bench": "block_exec",
        "samples": N,
        "first_request_us": us(first_request),
        "rows": rows.iter().map(|(n, (p50, p99))| serde_json::json!({"name": n, "p50_us": p50, "p99_us": p99})).collect::<Vec<_>>(),
    });
    use std::io::Write;
    let _ = std::io::stdout().write_all(format!("{out}\n{json}\n").as_bytes());
}

/// A fresh copy of `true` whose contents no other file has.
fn fresh_true(dir: &Path, i: usize) -> PathBuf {
    let path = dir.join(format!("fresh-{i}"));
    let mut bytes = fs::read("/usr/bin/true").unwrap();
    bytes.extend_from_slice(unique("fresh").as_bytes());
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Cost of identity matching and of the sha256 exec check, for docs/performance.md (root; not
/// run by CI):
/// `cargo test -p palisade-host --release --test enforce -- --ignored --nocapture bench_block_exec_identity`
#[test]
#[ignore = "benchmark: prints a markdown table and a JSON line"]
fn bench_block_exec_identity() {
    if skip("bench_block_exec_identity") {
        return;
    }
    const N: usize = 300;
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    let pins = PinDir::new();
    let dir = tempfile::tempdir().unwrap();
    let free = dir.path().join("free-true");
    fs::copy("/usr/bin/true", &free).unwrap();
    let fresh_dir = dir.path().join("fresh");
    fs::create_dir(&fresh_dir).unwrap();
    let enforcer = Arc::new(Enforcer::new(settings(&pins, false)));
    let act = BlockExecActuator::new(Arc::clone(&enforcer));

    // eBPF program cost per exec (kernel run-time stats), identity on, 1 path + 1 file rule.
    let blocked = touch_copy(dir.path(), "blocked");
    let req = ActionRequest::BlockExec(ExecMatch::Path(blocked.display().to_string()));
    let Outcome::Held { handle } = act.execute(&exec_ctx("b-1"), &req).unwrap() else {
        panic!("held");
    };
    let prog_ns = |enforcer: &Enforcer, phase: &dyn Fn()| {
        let (t0, c0) = enforcer.exec_program_stats().unwrap();
        phase();
        let (t1, c1) = enforcer.exec_program_stats().unwrap();
        (t1 - t0).as_nanos() as f64 / (c1 - c0).max(1) as f64
    };
    let run_free = || {
        for _ in 0..N {
            spawn_wait(&free);
        }
    };
    let identity_ns = prog_ns(&enforcer, &run_free);
    act.release(&held("b-1", &req, &handle)).unwrap();
    drop(act);
    drop(enforcer);
    let path_only = Arc::new(Enforcer::new(EnforceSettings {
        inode_match: false,
        ..settings(&pins, false)
    }));
    let act = BlockExecActuator::new(Arc::clone(&path_only));
    let Outcome::Held { handle } = act.execute(&exec_ctx("b-2"), &req).unwrap() else {
        panic!("held");
    };
    let path_only_ns = prog_ns(&path_only, &run_free);
    act.release(&held("b-2", &req, &handle)).unwrap();
    drop(act);
    drop(path_only);

    // The sha256 exec check: every exec waits for this process's verdict.
    let no_check_cached: Vec<Duration> = (0..N).map(|_| spawn_wait(&free).0).collect();
    let no_check_fresh: Vec<Duration> = (0..N)
        .map(|i| spawn_wait(&fresh_true(&fresh_dir, i)).0)
        .collect();
    let enforcer = Arc::new(Enforcer::new(settings(&pins, false)));
    let act = BlockExecActuator::new(Arc::clone(&enforcer));
    let req = ActionRequest::BlockExec(ExecMatch::Sha256("ab".repeat(32)));
    let Outcome::Held { handle } = act.execute(&exec_ctx("s-1"), &req).unwrap() else {
        panic!("held");
    };
    spawn_wait(&free); // hashed once
    let c0 = enforcer.exec_check_counters().unwrap();
    let check_cached: Vec<Duration> = (0..N).map(|_| spawn_wait(&free).0).collect();
    let c1 = enforcer.exec_check_counters().unwrap();
    let check_fresh: Vec<Duration> = (0..N)
        .map(|i| spawn_wait(&fresh_true(&fresh_dir, N + i)).0)
        .collect();
    let c2 = enforcer.exec_check_counters().unwrap();
    act.release(&held("s-1", &req, &handle)).unwrap();
    let cached_verdict_us =
        (c1.cached_ns - c0.cached_ns) as f64 / 1e3 / (c1.checked - c0.checked).max(1) as f64;
    let hashed_verdict_us =
        (c2.hashed_ns - c1.hashed_ns) as f64 / 1e3 / (c2.hashed - c1.hashed).max(1) as f64;
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let rows = [
        ("exec, no check (same binary)", summarise(no_check_cached)),
        (
            "exec, sha256 check on, hash cached",
            summarise(check_cached),
        ),
        ("exec of a new file, no check", summarise(no_check_fresh)),
        (
            "exec of a new file, sha256 check on (hashed)",
            summarise(check_fresh),
        ),
    ];
    let mut out = String::from("| measurement | p50 (µs) | p99 (µs) |\n| --- | ---: | ---: |\n");
    for (name, (p50, p99)) in &rows {
        out.push_str(&format!("| {name} | {p50:.0} | {p99:.0} |\n"));
    }
    out.push_str(&format!(
        "\n| in-kernel / in-daemon cost per exec | mean |\n| --- | ---: |\n\
         | exec program, identity + path lookup | {identity_ns:.0} ns |\n\
         | exec program, path lookup only | {path_only_ns:.0} ns |\n\
         | daemon verdict, hash cached | {cached_verdict_us:.1} µs |\n\
         | daemon verdict, file hashed ({} bytes) | {hashed_verdict_us:.1} µs |\n\nload average: {}",
        fs::metadata("/usr/bin/true").unwrap().len(),
        load.trim()
    ));
    let json = serde_json::json!({
        "bench": "block_exec_identity",
        "samples": N,
        "exec_program_ns": {"identity_and_path": identity_ns, "path_only": path_only_ns},
        "verdict_us": {"cached": cached_verdict_us, "hashed": hashed_verdict_us},
        "loadavg": load.trim(),
        "rows": rows.iter().map(|(n, (p50, p99))| serde_json::json!({"name": n, "p50_us": p50, "p99_us": p99})).collect::<Vec<_>>(),
    });
    use std::io::Write;
    let _ = std::io::stdout().write_all(format!("{out}\n{json}\n").as_bytes());
}
