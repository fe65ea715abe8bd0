//! `palisade record` as a user runs it. As root: record live kernel events for ~2 s while a
//! child execs `cat /etc/shadow`; the file must parse line by line in the replay schema, carry
//! the exec and the open with the right pid, args and path, and replaying that process's events
//! through the first-party detectors must raise `sensitive-file-read`. Unprivileged (run under
//! `setpriv` as nobody when we are root): the error names what is missing.
//! Kernel parts print a loud `SKIPPED (...)` line when they cannot run.
#![cfg(feature = "ebpf")]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on failure"
)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use palisade::event::replay::parse_event_line;
use palisade::event::{Event, EventData};
use support::*;

fn palisade() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.env_remove("RUST_LOG");
    cmd
}

#[path = "support/root.rs"]
mod root;
use root::is_root;

fn skip(test: &str, why: &str) {
    let _ = std::io::stderr().write_all(format!("SKIPPED ({why}): record::{test}\n").as_bytes());
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
    let mut recorder = palisade()
        .args(["--log-level", "info", "record", "--duration", "2"])
        .args(["--kinds", "exec,file_open,fork,exit"])
        .arg("-o")
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until every probe is attached ("recording" is logged after that).
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
    let cat = Command::new("/bin/cat")
        .arg("/etc/shadow")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = cat.id();
    assert!(cat.wait_with_output().unwrap().status.success());
    // The rest of the log (the summary) and the exit status.
    let rest: Vec<String> = stderr.lines().map_while(Result::ok).collect();
    let status = recorder.wait().unwrap();
    let log = format!("{log}{}", rest.join("\n"));
    assert!(status.success(), "record failed ({status}):\n{log}");
    assert!(log.contains("recording finished"), "{log}");

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
