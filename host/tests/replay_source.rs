//! Replay source: good lines become events in order, bad lines are reported with file:line and
//! skipped, stdin works through a real pipe, and follow mode sees appended (and half-written)
//! lines.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, like the tests"
)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use palisade::event::replay::{parse_event_line, ReplayInput, ReplaySource};
use palisade::event::source::{Delivery, EventSink, EventSource, SourceError, StopFlag};
use palisade::event::{Event, EventData};

/// A sink that keeps every event and lets a test wait for a count.
#[derive(Default)]
struct CollectingSink {
    events: Mutex<Vec<(Event, Delivery)>>,
    grew: Condvar,
}

impl EventSink for CollectingSink {
    fn submit(&self, event: Event, delivery: Delivery) {
        self.events.lock().unwrap().push((event, delivery));
        self.grew.notify_all();
    }
}

impl CollectingSink {
    fn timestamps(&self) -> Vec<u64> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(e, _)| e.ts_ns)
            .collect()
    }

    fn len(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Waits until at least `n` events arrived; false on timeout.
    fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut events = self.events.lock().unwrap();
        while events.len() < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            events = self.grew.wait_timeout(events, deadline - now).unwrap().0;
        }
        true
    }
}

fn exec_line(ts: u64, pid: u32) -> String {
    format!(
        r#"{{"ts_ns":{ts},"kind":"exec","process":{{"pid":{pid},"tid":{pid},"ppid":1,"comm":"sh","exe":"/bin/sh","args":["sh"]}},"data":{{"filename":"/bin/ls","args":["ls","-l"]}}}}"#
    )
}

fn open_line(ts: u64, pid: u32, path: &str) -> String {
    format!(
        r#"{{"ts_ns":{ts},"kind":"file_open","process":{{"pid":{pid},"tid":{pid},"comm":"cat","exe":"/usr/bin/cat"}},"data":{{"path":"{path}","flags":0}}}}"#
    )
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Lines 1-12; bad ones are 4 (not JSON), 6 (unknown kind), 7 (wrong type), 9 (not an object),
/// 11 (invalid UTF-8); 1 is a comment, 2 and 8 are blank; the last good line has no newline.
fn mixed_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("mixed.jsonl");
    let mut bytes = Vec::new();
    let lines: Vec<Vec<u8>> = vec![
        b"# a comment".to_vec(),
        b"".to_vec(),
        exec_line(100, 10).into_bytes(),
        b"{\"ts_ns\": 101, \"kind\": ".to_vec(),
        open_line(102, 10, "/etc/hosts").into_bytes(),
        br#"{"ts_ns":103,"kind":"teleport","data":{}}"#.to_vec(),
        br#"{"ts_ns":104,"kind":"exit","data":{"code":"zero"}}"#.to_vec(),
        b"   ".to_vec(),
        b"[1,2,3]".to_vec(),
        b"{\"ts_ns\":105,\"kind\":\"exit\",\"data\":{\"code\":3}}\r".to_vec(),
        b"{\"ts_ns\":106,\"kind\":\"exit\",\"process\":{\"comm\":\"\xff\xfe\"}}".to_vec(),
    ];
    for line in lines {
        bytes.extend_from_slice(&line);
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(open_line(107, 11, "/etc/shadow").as_bytes());
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn good_lines_in_order_bad_lines_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = mixed_file(dir.path());
    let mut source = ReplaySource::new(vec![ReplayInput::File(path.clone())]);
    let stats = source.stats();
    let sink = CollectingSink::default();
    let summary = source.run(&sink, &StopFlag::default()).unwrap();

    assert_eq!(sink.timestamps(), vec![100, 102, 105, 107]);
    assert!(sink
        .events
        .lock()
        .unwrap()
        .iter()
        .all(|(_, d)| *d == Delivery::Backpressure));
    assert_eq!(source.delivery(), Delivery::Backpressure);
    assert_eq!(summary.events, 4);
    assert_eq!(summary.bad_records, 5);
    assert_eq!(stats.events(), 4);
    assert_eq!(stats.bad_records(), 5);

    let bad = stats.bad_lines();
    let numbers: Vec<u64> = bad.iter().map(|b| b.line).collect();
    assert_eq!(numbers, vec![4, 6, 7, 9, 11]);
    let name = path.display().to_string();
    assert!(bad.iter().all(|b| b.file == name));
    assert!(bad[0].reason.starts_with("not JSON"), "{:?}", bad[0]);
    assert_eq!(bad[1].reason, "unknown kind \"teleport\"");
    assert!(bad[2].reason.starts_with("bad exit event"), "{:?}", bad[2]);
    assert_eq!(bad[3].reason, "expected a JSON object, found an array");
    assert!(bad[4].reason.starts_with("not valid UTF-8"), "{:?}", bad[4]);

    // The CRLF line was read, not reported.
    let events = sink.events.lock().unwrap();
    assert_eq!(events[2].0.data, EventData::Exit { code: 3 });
}

const LOG_CHILD_INPUT: &str = "PALISADE_REPLAY_LOG_CHILD_INPUT";
const LOG_CHILD_OUTPUT: &str = "PALISADE_REPLAY_LOG_CHILD_OUTPUT";

/// Not a test on its own: replays a file with a global JSON log subscriber writing to a file.
/// A child process because a scoped subscriber (`with_default`) can miss events when other tests
/// touch the same callsites first on other threads.
#[test]
fn log_child() {
    let (Ok(input), Ok(output)) = (
        std::env::var(LOG_CHILD_INPUT),
        std::env::var(LOG_CHILD_OUTPUT),
    ) else {
        return;
    };
    let file = std::fs::File::create(output).unwrap();
    tracing_subscriber::fmt()
        .json()
        .with_writer(Mutex::new(file))
        .with_max_level(tracing::Level::WARN)
        .init();
    ReplaySource::from_args([input])
        .run(&CollectingSink::default(), &StopFlag::default())
        .unwrap();
}

#[test]
fn bad_lines_are_logged_as_warnings_with_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = mixed_file(dir.path());
    let log = dir.path().join("log.json");
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "log_child", "--test-threads=1"])
        .env(LOG_CHILD_INPUT, &path)
        .env(LOG_CHILD_OUTPUT, &log)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 5, "{text}");
    let name = path.display().to_string();
    for (record, line) in records.iter().zip([4u64, 6, 7, 9, 11]) {
        assert_eq!(record["level"], "WARN");
        let fields = &record["fields"];
        assert_eq!(fields["file"], name.as_str());
        assert_eq!(fields["line"], line);
        let reason = fields["reason"].as_str().unwrap();
        assert!(!reason.is_empty());
        assert_eq!(
            fields["message"].as_str().unwrap(),
            format!("{name}:{line}: {reason}")
        );
    }
}

#[test]
fn consecutive_events_of_one_process_share_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("same.jsonl");
    let text = [
        open_line(1, 10, "/a"),
        open_line(2, 10, "/b"),
        open_line(3, 11, "/c"),
        open_line(4, 10, "/d"),
        exec_line(5, 10),
    ]
    .join("\n");
    write_file(&path, &text);
    let sink = CollectingSink::default();
    ReplaySource::new(vec![ReplayInput::File(path)])
        .run(&sink, &StopFlag::default())
        .unwrap();
    let events = sink.events.lock().unwrap();
    let p: Vec<_> = events.iter().map(|(e, _)| e.process.clone()).collect();
    assert!(Arc::ptr_eq(&p[0], &p[1]));
    assert!(!Arc::ptr_eq(&p[1], &p[2]));
    assert_eq!(p[2].pid, 11);
    // Interleaved but equal: still shared.
    assert!(Arc::ptr_eq(&p[0], &p[3]));
    // Same pid, different record (exe, args): not shared.
    assert!(!Arc::ptr_eq(&p[3], &p[4]));
}

#[test]
fn several_files_are_read_in_order_and_a_missing_one_fails_first() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    write_file(&a, &format!("{}\n{}\n", exec_line(1, 1), exec_line(2, 1)));
    write_file(&b, &format!("not json\n{}\n", exec_line(3, 1)));
    let mut source = ReplaySource::from_args([a.to_str().unwrap(), b.to_str().unwrap()]);
    let sink = CollectingSink::default();
    let summary = source.run(&sink, &StopFlag::default()).unwrap();
    assert_eq!(sink.timestamps(), vec![1, 2, 3]);
    assert_eq!(summary.bad_records, 1);
    let bad = source.stats().bad_lines();
    assert_eq!(
        (bad[0].file.as_str(), bad[0].line),
        (b.to_str().unwrap(), 1)
    );

    let missing = dir.path().join("missing.jsonl");
    let mut source = ReplaySource::from_args([a.to_str().unwrap(), missing.to_str().unwrap()]);
    let sink = CollectingSink::default();
    let err = source.run(&sink, &StopFlag::default()).unwrap_err();
    assert!(
        matches!(&err, SourceError::Io { path, .. } if path.ends_with("missing.jsonl")),
        "{err}"
    );
    assert_eq!(sink.len(), 0, "nothing flows before every input is open");
}

#[test]
fn stop_before_run_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    write_file(&a, &exec_line(1, 1));
    let stop = StopFlag::default();
    stop.stop();
    let sink = CollectingSink::default();
    let summary = ReplaySource::from_args([a.to_str().unwrap()])
        .run(&sink, &stop)
        .unwrap();
    assert_eq!(summary.events, 0);
}

#[test]
fn parse_event_line_is_reusable() {
    let event = parse_event_line(&exec_line(42, 7)).unwrap();
    assert_eq!(event.ts_ns, 42);
    assert_eq!(event.process.pid, 7);
    assert!(parse_event_line("nope").is_err());
}

// ---- stdin through a real pipe: the test re-runs this binary as a child reading its stdin ----

const CHILD_ENV: &str = "PALISADE_REPLAY_STDIN_CHILD";

/// Not a test on its own: the body of the child process (does nothing unless the env var is set).
#[test]
fn stdin_child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let sink = CollectingSink::default();
    let stop = StopFlag::default();
    if mode == "stop" {
        let stopper = stop.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            stopper.stop();
        });
    }
    let mut source = ReplaySource::from_args(["-"]).with_poll_interval(Duration::from_millis(20));
    let stats = source.stats();
    let summary = source.run(&sink, &stop).unwrap();
    let mut out = std::io::stdout().lock();
    for ts in sink.timestamps() {
        writeln!(out, "CHILD-EVENT {ts}").unwrap();
    }
    for bad in stats.bad_lines() {
        writeln!(out, "CHILD-BAD {}:{}", bad.file, bad.line).unwrap();
    }
    writeln!(
        out,
        "CHILD-SUMMARY {} {}",
        summary.events, summary.bad_records
    )
    .unwrap();
}

/// libtest prints "test stdin_child ... " without a newline before the child's first line.
fn child_record(line: &str) -> Option<String> {
    line.find("CHILD-").map(|at| line[at..].to_owned())
}

fn spawn_child(mode: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "stdin_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn child_lines(child: std::process::Child) -> Vec<String> {
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(child_record)
        .collect()
}

#[test]
fn stdin_through_a_pipe() {
    let mut child = spawn_child("read");
    {
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}", exec_line(1, 5)).unwrap();
        stdin.flush().unwrap();
        // A line split across two writes with a pause, as a slow producer would write it.
        let line = open_line(2, 5, "/etc/passwd");
        let (first, second) = line.split_at(line.len() / 2);
        write!(stdin, "{first}").unwrap();
        stdin.flush().unwrap();
        thread::sleep(Duration::from_millis(100));
        writeln!(stdin, "{second}").unwrap();
        writeln!(stdin, "garbage").unwrap();
        // The last line has no newline: end of input completes it.
        write!(stdin, "{}", exec_line(3, 5)).unwrap();
    } // closing stdin ends the input
    let lines = child_lines(child);
    assert_eq!(
        lines,
        vec![
            "CHILD-EVENT 1",
            "CHILD-EVENT 2",
            "CHILD-EVENT 3",
            "CHILD-BAD <stdin>:3",
            "CHILD-SUMMARY 3 1",
        ]
    );
}

#[test]
fn stop_is_seen_while_stdin_is_quiet() {
    let mut child = spawn_child("stop");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", exec_line(9, 5)).unwrap();
    stdin.flush().unwrap();
    // Keep the pipe open: only the stop flag can end the child's run.
    let started = Instant::now();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        if let Some(record) = child_record(line.trim_end()) {
            seen.push(record);
        }
        line.clear();
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(seen, vec!["CHILD-EVENT 9", "CHILD-SUMMARY 1 0"]);
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

// ---- follow mode ----

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.flush().unwrap();
}

#[test]
fn follow_sees_appended_lines_including_one_written_in_two_halves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.jsonl");
    write_file(&path, &format!("{}\n", exec_line(1, 20)));

    let sink = Arc::new(CollectingSink::default());
    let stop = StopFlag::default();
    let mut source = ReplaySource::from_args([path.to_str().unwrap()])
        .with_follow(true)
        .with_poll_interval(Duration::from_millis(20));
    let stats = source.stats();
    let runner = {
        let sink = sink.clone();
        let stop = stop.clone();
        thread::spawn(move || source.run(&*sink, &stop))
    };
    let wait = Duration::from_secs(10);
    assert!(sink.wait_for(1, wait), "initial line");

    append(&path, &format!("{}\n", open_line(2, 20, "/etc/shadow")));
    assert!(sink.wait_for(2, wait), "appended line");

    let line = open_line(3, 20, "/etc/sudoers");
    let (first, second) = line.split_at(line.len() / 2);
    append(&path, first);
    // Several poll intervals pass with half a line in the file: it must not be parsed.
    thread::sleep(Duration::from_millis(200));
    assert_eq!(sink.len(), 2);
    assert_eq!(stats.bad_records(), 0, "a half line is not a bad line");
    append(&path, &format!("{second}\n"));
    assert!(sink.wait_for(3, wait), "completed line");

    append(&path, "not json\n");
    append(&path, &format!("{}\n", exec_line(4, 20)));
    assert!(sink.wait_for(4, wait));
    assert_eq!(stats.bad_lines()[0].line, 4);

    // A trailing half line at stop is left alone.
    append(&path, "{\"ts_ns\":5,");
    thread::sleep(Duration::from_millis(100));
    stop.stop();
    let summary = runner.join().unwrap().unwrap();
    assert_eq!(sink.timestamps(), vec![1, 2, 3, 4]);
    assert_eq!((summary.events, summary.bad_records), (4, 1));
}

#[test]
fn follow_starts_over_when_the_file_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rot.jsonl");
    write_file(
        &path,
        &format!("{}\n{}\n", exec_line(1, 30), exec_line(2, 30)),
    );
    let sink = Arc::new(CollectingSink::default());
    let stop = StopFlag::default();
    let mut source = ReplaySource::from_args([path.to_str().unwrap()])
        .with_follow(true)
        .with_poll_interval(Duration::from_millis(20));
    let runner = {
        let sink = sink.clone();
        let stop = stop.clone();
        thread::spawn(move || source.run(&*sink, &stop))
    };
    assert!(sink.wait_for(2, Duration::from_secs(10)));
    // Truncate in place and write a shorter file.
    write_file(&path, &format!("{}\n", exec_line(3, 30)));
    assert!(sink.wait_for(3, Duration::from_secs(10)));
    // Replace by rename (log rotation): the new file is followed from its start.
    let fresh = dir.path().join("fresh.jsonl");
    write_file(&fresh, &format!("{}\n", exec_line(4, 30)));
    std::fs::rename(&fresh, &path).unwrap();
    assert!(sink.wait_for(4, Duration::from_secs(10)));
    stop.stop();
    runner.join().unwrap().unwrap();
    assert_eq!(sink.timestamps(), vec![1, 2, 3, 4]);
}

// ---- bundled example files and the schema document ----

fn repo_path(relative: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn replay_file(relative: &str) -> (Vec<Event>, Vec<palisade::event::replay::BadLine>) {
    let mut source = ReplaySource::new(vec![ReplayInput::File(repo_path(relative))]);
    let stats = source.stats();
    let sink = CollectingSink::default();
    source.run(&sink, &StopFlag::default()).unwrap();
    let events = sink
        .events
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    (events, stats.bad_lines())
}

/// Checks what a reader of the story relies on: time order and coherent process records.
fn assert_consistent(name: &str, events: &[Event]) {
    let mut last_ts = 0;
    for (i, event) in events.iter().enumerate() {
        let p = &event.process;
        assert!(event.ts_ns >= last_ts, "{name} event {i}: time goes back");
        last_ts = event.ts_ns;
        assert!(
            p.pid != 0 && p.tid != 0,
            "{name} event {i}: pid/tid missing"
        );
        assert!(!p.comm.is_empty() && !p.exe.is_empty(), "{name} event {i}");
        if let Some(parent) = p.ancestors.first() {
            assert_eq!(
                parent.pid, p.ppid,
                "{name} event {i}: ancestors[0] is the parent"
            );
        }
        if let EventData::Exec(exec) = &event.data {
            assert_eq!(
                exec.args, p.args,
                "{name} event {i}: exec args are the new image's"
            );
        }
        if let Some(id) = &p.container_id {
            assert!(
                id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{name} event {i}: containerd ids are 64 hex digits"
            );
        }
    }
}

#[test]
fn bundled_demo_and_benign_files_are_clean_and_cover_every_kind() {
    let mut kinds = std::collections::BTreeSet::new();
    for name in [
        "examples/events/demo-attack.jsonl",
        "examples/events/benign.jsonl",
    ] {
        let (events, bad) = replay_file(name);
        assert!(bad.is_empty(), "{name}: {bad:?}");
        assert!(events.len() >= 30, "{name}: {} events", events.len());
        assert_consistent(name, &events);
        // Every event survives a write and re-read in the schema.
        for event in &events {
            let line = serde_json::to_string(event).unwrap();
            assert_eq!(&parse_event_line(&line).unwrap(), event);
        }
        kinds.extend(events.iter().map(Event::kind));
    }
    let all: std::collections::BTreeSet<_> = palisade::event::EventKind::ALL.into_iter().collect();
    assert_eq!(kinds, all, "the samples show every kind");
}

#[test]
fn demo_attack_tells_the_story_the_detectors_look_for() {
    let (events, _) = replay_file("examples/events/demo-attack.jsonl");
    let has = |pred: &dyn Fn(&Event) -> bool| events.iter().any(pred);
    // A shell exec'd under php-fpm.
    assert!(has(
        &|e| matches!(&e.data, EventData::Exec(x) if x.args.first().map(String::as_str) == Some("sh"))
            && e.process
                .ancestors
                .first()
                .is_some_and(|a| a.comm.starts_with("php-fpm"))
    ));
    // A socket dup'd onto 0, 1 and 2, then `bash -i` in the same process.
    for fd in 0..3 {
        assert!(has(&|e| e.process.pid == 4103
            && matches!(e.data, EventData::FdDup { newfd, target_kind: palisade::event::FdTargetKind::Socket, .. } if newfd == fd)));
    }
    assert!(has(&|e| e.process.pid == 4103
        && matches!(&e.data, EventData::Exec(x) if x.args == ["bash", "-i"])));
    // /etc/shadow read by cat (bad) and by sshd (allowlisted).
    for comm in ["cat", "sshd"] {
        assert!(has(&|e| e.process.comm == comm
            && matches!(&e.data, EventData::FileOpen(f) if f.path == "/etc/shadow")));
    }
    for path in ["/etc/passwd", "/etc/sudoers.d/99-backdoor"] {
        assert!(has(
            &|e| matches!(&e.data, EventData::FileOpen(f) if f.path == path && f.flags & 3 != 0)
        ));
    }
}

#[test]
fn bundled_bad_lines_file_reports_the_documented_lines() {
    let (events, bad) = replay_file("examples/events/bad-lines.jsonl");
    assert_eq!(events.len(), 4);
    let lines: Vec<u64> = bad.iter().map(|b| b.line).collect();
    assert_eq!(lines, vec![5, 7, 8, 10, 11]);
}

#[test]
fn every_example_in_docs_events_md_parses() {
    let text = std::fs::read_to_string(repo_path("docs/events.md")).unwrap();
    let mut in_block = false;
    let mut kinds = std::collections::BTreeSet::new();
    let mut count = 0;
    for line in text.lines() {
        if line.starts_with("```") {
            in_block = line.trim() == "```jsonl";
            continue;
        }
        if in_block && line.starts_with('{') {
            let event = parse_event_line(line)
                .unwrap_or_else(|e| panic!("docs/events.md example {line}: {e}"));
            kinds.insert(event.kind());
            count += 1;
        }
    }
    assert!(count > 0);
    let all: std::collections::BTreeSet<_> = palisade::event::EventKind::ALL.into_iter().collect();
    assert_eq!(kinds, all, "docs/events.md shows an example of every kind");
}
