//! `palisade record` as a user runs it. As root: record live kernel events for ~2 s while a
//! child execs `cat /etc/shadow`; the file must parse line by line in the replay schema, carry
//! the exec and the open with the right pid, args and path, and replaying that process's events
//! through the first-party detectors must raise `sensitive-file-read`. `--kinds` attaches only
//! the named kinds' programs and the lifecycle ones (checked in the kernel's list of the
//! recorder's links). Unprivileged (run under `setpriv` as nobody when we are root): the error
//! names what is missing.
//! Kernel parts print a loud `SKIPPED (...)` line when they cannot run.
#![cfg(feature = "ebpf")]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on failure"
)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use palisade::event::replay::parse_event_line;
use palisade::event::{Event, EventData};
use support::*;

fn palisade() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.env_remove("RUST_LOG");
    cmd
}

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/root.rs"]
mod root;
use daemon::linked_programs;
use root::is_root;

fn skip(test: &str, why: &str) {
    let _ = std::io::stderr().write_all(format!("SKIPPED ({why}): record::{test}\n").as_bytes());
}

/// Starts `palisade record --duration SECS --kinds KINDS -o FILE` and waits until it logs
/// "recording" (after every program is attached). Returns the child, its stderr and the log
/// so far.
fn start_recording(
    file: &Path,
    secs: &str,
    kinds: &str,
) -> (Child, BufReader<ChildStderr>, String) {
    let mut recorder = palisade()
        .args(["--log-level", "info", "record", "--duration", secs])
        .args(["--kinds", kinds])
        .arg("-o")
        .arg(file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(recorder.stderr.take().unwrap());
    let mut log = String::new();
    let started = Instant::now();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "recorder exited before recording:\n{log}"
        );
        log.push_str(&line);
        if line.contains("recording") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{log}");
    }
    (recorder, stderr, log)
}

/// Waits for the recorder; returns its whole log after checking it succeeded.
fn finish_recording(mut recorder: Child, stderr: BufReader<ChildStderr>, log: String) -> String {
    let rest: Vec<String> = stderr.lines().map_while(Result::ok).collect();
    let status = recorder.wait().unwrap();
    let log = format!("{log}{}", rest.join("\n"));
    assert!(status.success(), "record failed ({status}):\n{log}");
    assert!(log.contains("recording finished"), "{log}");
    log
}

/// Program names as the kernel reports them (cut at 15 bytes).
fn kernel_name(program: &str) -> String {
    program.chars().take(15).collect()
}

#[test]
fn record_captures_exec_and_open_and_replays_through_detectors() {
    const TEST: &str = "record_captures_exec_and_open_and_replays_through_detectors";
    if !is_root() {
        skip(TEST, "needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("capture.jsonl");
    let (recorder, stderr, log) = start_recording(&file, "5", "exec,file_open,fork,exit");
    // The open programs are attached (in the kernel's list), a kind not asked for is not.
    let linked = linked_programs(recorder.id());
    assert!(
        linked.iter().any(|n| n == "sys_enter_opena")
            && linked.iter().any(|n| n == "sys_exit_openat"),
        "open programs not linked: {linked:?}"
    );
    assert!(
        !linked.iter().any(|n| n.starts_with("sys_enter_conn")),
        "connect was not asked for: {linked:?}"
    );
    let cat = Command::new("/bin/cat")
        .arg("/etc/shadow")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = cat.id();
    assert!(cat.wait_with_output().unwrap().status.success());
    finish_recording(recorder, stderr, log);

    let text = std::fs::read_to_string(&file).unwrap();
    let mut events: Vec<Event> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        let event =
            parse_event_line(line).unwrap_or_else(|e| panic!("line {}: {e}: {line}", n + 1));
        events.push(event);
    }
    assert!(
        events.iter().all(|e| matches!(
            e.data,
            EventData::Exec(_)
                | EventData::FileOpen(_)
                | EventData::Fork { .. }
                | EventData::Exit { .. }
        )),
        "only the kinds asked for"
    );
    let mine: Vec<&Event> = events.iter().filter(|e| e.process.pid == pid).collect();
    assert!(
        mine.iter().any(|e| matches!(&e.data, EventData::Exec(x)
            if x.filename == "/bin/cat" && x.args == ["/bin/cat", "/etc/shadow"])),
        "exec of cat in the capture: {mine:?}"
    );
    let open = mine
        .iter()
        .find(|e| matches!(&e.data, EventData::FileOpen(o) if o.path == "/etc/shadow"))
        .unwrap_or_else(|| panic!("open of /etc/shadow by {pid} in the capture: {mine:?}"));
    assert_eq!(open.process.exe, "/bin/cat");
    assert_eq!(open.process.ppid, std::process::id());

    // Replay cat's lines through the first-party detectors, as an operator would.
    let subset = dir.path().join("cat.jsonl");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| parse_event_line(l).unwrap().process.pid == pid)
        .collect();
    std::fs::write(&subset, lines.join("\n") + "\n").unwrap();
    let out = palisade()
        .arg("replay")
        .arg(&subset)
        .arg("--plugins")
        .arg(&built().plugins_dir)
        .arg("--cache-dir")
        .arg(cache_dir())
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay of the capture failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"rule\":\"sensitive-file-read\""),
        "no sensitive-file-read alert from the replayed capture:\n{stdout}"
    );
}

/// `--kinds exec`: the recorder holds links for the process-lifecycle programs only (exec is
/// one of them; the process cache needs fork and exit too), as the kernel's own list of its
/// links shows and its "kernel programs narrowed" log line says, and the capture holds execs
/// only.
#[test]
fn record_kinds_exec_attaches_only_the_lifecycle_programs() {
    const TEST: &str = "record_kinds_exec_attaches_only_the_lifecycle_programs";
    if !is_root() {
        skip(TEST, "needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exec.jsonl");
    let (recorder, stderr, log) = start_recording(&file, "5", "exec");
    let mut linked = linked_programs(recorder.id());
    linked.sort();
    let lifecycle: Vec<String> = palisade::ebpf::PROBES
        .iter()
        .filter(|p| p.kinds() == 0)
        .map(|p| kernel_name(p.program))
        .collect();
    for always in ["sched_process_exec", "sched_process_exit", "task_newtask"] {
        let name = kernel_name(always);
        assert!(
            linked.contains(&name),
            "{always} not linked: {linked:?}\n{log}"
        );
    }
    assert!(
        linked.iter().all(|n| lifecycle.contains(n)),
        "a program of a kind not asked for is linked: {linked:?}\n{log}"
    );
    // The recorder's own account agrees with the kernel's.
    let narrowed = log
        .lines()
        .find(|l| l.contains("kernel programs narrowed"))
        .unwrap_or_else(|| panic!("no \"kernel programs narrowed\" line:\n{log}"));
    let mut said: Vec<String> = narrowed
        .split_whitespace()
        .find_map(|f| f.strip_prefix("programs="))
        .unwrap_or_else(|| panic!("no programs= field: {narrowed}"))
        .split(',')
        .map(kernel_name)
        .collect();
    said.sort();
    assert_eq!(said, linked, "{narrowed}");

    let echo = Command::new("/bin/echo")
        .arg("palisade-record-kinds")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = echo.id();
    assert!(echo.wait_with_output().unwrap().status.success());
    let log = finish_recording(recorder, stderr, log);
    let text = std::fs::read_to_string(&file).unwrap();
    let events: Vec<Event> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| parse_event_line(l).unwrap())
        .collect();
    assert!(
        events.iter().all(|e| matches!(e.data, EventData::Exec(_))),
        "only execs were asked for: {:?}",
        events.iter().map(|e| e.kind()).collect::<Vec<_>>()
    );
    assert!(
        events.iter().any(|e| e.process.pid == pid
            && matches!(&e.data, EventData::Exec(x) if x.args == ["/bin/echo", "palisade-record-kinds"])),
        "the exec of echo ({pid}) is not in the capture:\n{text}\n{log}"
    );
}

#[test]
fn record_without_privileges_names_what_is_missing() {
    const TEST: &str = "record_without_privileges_names_what_is_missing";
    // As root, drop to nobody with no capabilities; otherwise we already are unprivileged.
    let mut cmd = if is_root() {
        if !std::path::Path::new("/usr/bin/setpriv").exists() {
            skip(TEST, "needs setpriv to drop root");
            return;
        }
        let mut c = Command::new("/usr/bin/setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_palisade"));
        c
    } else {
        palisade()
    };
    let out = cmd
        .env_remove("RUST_LOG")
        .args([
            "record",
            "--duration",
            "1",
            "-o",
            "/nonexistent/never-written.jsonl",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "cannot record kernel events: missing privileges (CAP_BPF and CAP_PERFMON, or root)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("run as root"), "{stderr}");
}
