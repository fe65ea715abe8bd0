//! The replay source: events as JSON Lines (docs/events.md) from files or stdin, optionally
//! tailing a growing file. Owns line framing, per-line parsing and the bad-line report; it never
//! drops a good event (delivery is backpressure) and never stops on a bad line (it is logged with
//! `file:line: reason`, counted and skipped).
//!
//! Lines are only parsed once their newline has arrived, so a writer appending in pieces is never
//! seen half-written. At the end of a non-followed input, a last line without a newline is parsed
//! like any other (files often lack the final newline).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;

use super::source::{Delivery, EventSink, EventSource, SourceError, SourceSummary, StopFlag};
use super::{Event, EventKind, Process};

/// How often a followed file is checked for new data, and how often a quiet stdin checks `stop`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Bad lines logged per input before the source goes quiet (the count keeps going); a corrupt
/// multi-gigabyte file must not flood the log.
pub const MAX_LOGGED_BAD_LINES: u64 = 100;

/// Bad lines kept for [`ReplayStats::bad_lines`] (the CLI prints them at exit).
pub const MAX_KEPT_BAD_LINES: usize = 1000;

/// Distinct recent processes remembered per input for sharing one `Arc<Process>`.
const PROCESS_CACHE: usize = 8;

const READ_CHUNK: usize = 64 * 1024;

/// Longest line accepted; a longer one (or a file with no newlines at all) is reported as bad
/// instead of growing the buffer without bound.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Display name of standard input in logs and bad-line reports.
pub const STDIN_NAME: &str = "<stdin>";

/// One replay input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayInput {
    Stdin,
    File(PathBuf),
}

impl ReplayInput {
    /// `-` is stdin, anything else a path.
    pub fn from_arg(arg: &str) -> Self {
        if arg == "-" {
            ReplayInput::Stdin
        } else {
            ReplayInput::File(PathBuf::from(arg))
        }
    }

    /// Name used in `file:line` reports.
    pub fn display_name(&self) -> String {
        match self {
            ReplayInput::Stdin => STDIN_NAME.to_owned(),
            ReplayInput::File(path) => path.display().to_string(),
        }
    }
}

/// Why one line is not an event.
#[derive(Debug, thiserror::Error)]
pub enum ReplayLineError {
    #[error("line longer than {max} bytes")]
    TooLong { max: usize },
    #[error("not valid UTF-8 (first bad byte at column {column})")]
    NotUtf8 { column: usize },
    #[error("not JSON: {source}")]
    NotJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("expected a JSON object, found {found}")]
    NotObject { found: &'static str },
    #[error("missing \"kind\"")]
    MissingKind,
    #[error("\"kind\" must be a string, found {found}")]
    KindNotString { found: &'static str },
    #[error("unknown kind {kind:?}")]
    UnknownKind { kind: String },
    #[error("bad {kind} event: {source}")]
    Invalid {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Parses one replay line (without its newline) into an event.
///
/// Unknown fields are ignored and missing optional fields take their defaults; a missing or null
/// `data` is read as `{}` so that kinds whose fields all have defaults can be written as just
/// `{"ts_ns": ..., "kind": "exit"}`.
pub fn parse_event_line(line: &str) -> Result<Event, ReplayLineError> {
    match serde_json::from_str::<Event>(line) {
        Ok(event) => Ok(event),
        // The fast path failed: work out a precise reason (and apply the `data` default).
        Err(first) => diagnose(line, first),
    }
}

fn diagnose(line: &str, first: serde_json::Error) -> Result<Event, ReplayLineError> {
    if first.is_syntax() || first.is_eof() {
        return Err(ReplayLineError::NotJson { source: first });
    }
    let mut value: serde_json::Value =
        serde_json::from_str(line).map_err(|source| ReplayLineError::NotJson { source })?;
    let Some(object) = value.as_object_mut() else {
        return Err(ReplayLineError::NotObject {
            found: json_type(&value),
        });
    };
    let kind = match object.get("kind") {
        None => return Err(ReplayLineError::MissingKind),
        Some(serde_json::Value::String(kind)) => kind.clone(),
        Some(other) => {
            return Err(ReplayLineError::KindNotString {
                found: json_type(other),
            })
        }
    };
    if !EventKind::ALL.iter().any(|k| k.as_str() == kind) {
        return Err(ReplayLineError::UnknownKind { kind });
    }
    let data_missing = matches!(object.get("data"), None | Some(serde_json::Value::Null));
    if !data_missing {
        return Err(ReplayLineError::Invalid {
            kind,
            source: first,
        });
    }
    object.insert(
        "data".to_owned(),
        serde_json::Value::Object(serde_json::Map::new()),
    );
    serde_json::from_value::<Event>(value)
        .map_err(|source| ReplayLineError::Invalid { kind, source })
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// One skipped line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// Input name (`<stdin>` for stdin).
    pub file: String,
    /// 1-based line number in that input.
    pub line: u64,
    pub reason: String,
}

/// Live counters of a replay source, readable by the caller while it runs and after it ends.
#[derive(Debug, Clone, Default)]
pub struct ReplayStats(Arc<StatsInner>);

#[derive(Debug, Default)]
struct StatsInner {
    events: AtomicU64,
    bad_records: AtomicU64,
    bad_lines: Mutex<Vec<BadLine>>,
}

impl ReplayStats {
    /// Events handed to the sink so far.
    pub fn events(&self) -> u64 {
        self.0.events.load(Ordering::Relaxed)
    }

    /// Lines skipped as bad so far.
    pub fn bad_records(&self) -> u64 {
        self.0.bad_records.load(Ordering::Relaxed)
    }

    /// The first [`MAX_KEPT_BAD_LINES`] bad lines, in input order.
    pub fn bad_lines(&self) -> Vec<BadLine> {
        self.0
            .bad_lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn record_bad(&self, bad: BadLine) {
        self.0.bad_records.fetch_add(1, Ordering::Relaxed);
        let mut kept = self
            .0
            .bad_lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if kept.len() < MAX_KEPT_BAD_LINES {
            kept.push(bad);
        }
    }
}

/// Replays JSON Lines events into an [`EventSink`].
///
/// Inputs are read in order. With `follow`, the last input, when it is a file, is tailed after
/// its end until `stop` is set (the earlier ones are read to their end first); a truncated file is
/// re-read from the start and a replaced one (new inode, e.g. log rotation) is reopened.
/// Stdin is read until end of input with or without `follow` (a pipe already "follows"); `stop`
/// is honoured on a quiet stdin too.
#[derive(Debug)]
pub struct ReplaySource {
    inputs: Vec<ReplayInput>,
    follow: bool,
    poll_interval: Duration,
    stats: ReplayStats,
}

impl ReplaySource {
    pub fn new(inputs: Vec<ReplayInput>) -> Self {
        ReplaySource {
            inputs,
            follow: false,
            poll_interval: DEFAULT_POLL_INTERVAL,
            stats: ReplayStats::default(),
        }
    }

    /// From CLI arguments (`-` = stdin).
    pub fn from_args<S: AsRef<str>>(args: impl IntoIterator<Item = S>) -> Self {
        Self::new(
            args.into_iter()
                .map(|arg| ReplayInput::from_arg(arg.as_ref()))
                .collect(),
        )
    }

    /// Tail the last input (`--follow`).
    pub fn with_follow(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// A handle on the counters and the bad-line list, valid after `run` returns.
    pub fn stats(&self) -> ReplayStats {
        self.stats.clone()
    }

    pub fn inputs(&self) -> &[ReplayInput] {
        &self.inputs
    }
}

impl EventSource for ReplaySource {
    fn name(&self) -> &str {
        "replay"
    }

    fn delivery(&self) -> Delivery {
        Delivery::Backpressure
    }

    fn run(&mut self, sink: &dyn EventSink, stop: &StopFlag) -> Result<SourceSummary, SourceError> {
        // Open every file first: a typo in the third path should fail before any event flows.
        let mut opened = Vec::with_capacity(self.inputs.len());
        for input in &self.inputs {
            opened.push(match input {
                ReplayInput::Stdin => None,
                ReplayInput::File(path) => Some(open_file(path)?),
            });
        }
        let start_events = self.stats.events();
        let start_bad = self.stats.bad_records();
        let last = self.inputs.len().saturating_sub(1);
        for (index, (input, file)) in self.inputs.iter().zip(opened).enumerate() {
            if stop.is_stopped() {
                break;
            }
            let mut reader = LineReader::new(input.display_name(), sink, &self.stats);
            match (input, file) {
                (ReplayInput::File(path), Some(file)) => {
                    let follow = self.follow && index == last;
                    read_file(&mut reader, path, file, follow, self.poll_interval, stop)?;
                }
                _ => read_stdin(&mut reader, self.poll_interval, stop)?,
            }
            reader.finish();
        }
        Ok(SourceSummary {
            events: self.stats.events() - start_events,
            bad_records: self.stats.bad_records() - start_bad,
        })
    }
}

fn open_file(path: &Path) -> Result<File, SourceError> {
    File::open(path).map_err(|source| SourceError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn io_error(name: &str, source: io::Error) -> SourceError {
    SourceError::Io {
        path: name.to_owned(),
        source,
    }
}

/// Reads `file` to its end, then (with `follow`) keeps tailing it until `stop`.
fn read_file(
    reader: &mut LineReader<'_>,
    path: &Path,
    mut file: File,
    follow: bool,
    poll: Duration,
    stop: &StopFlag,
) -> Result<(), SourceError> {
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut position: u64 = 0;
    let mut inode = file
        .metadata()
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| io_error(&reader.name, e))?;
    loop {
        let n = match file.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(&reader.name, e)),
        };
        if n > 0 {
            position += n as u64;
            if !reader.feed(&chunk[..n], stop) {
                return Ok(());
            }
            continue;
        }
        // End of the data written so far.
        if !follow {
            reader.end_of_input();
            return Ok(());
        }
        if stop.is_stopped() {
            return Ok(());
        }
        thread::sleep(poll);
        match std::fs::metadata(path) {
            Ok(meta) if (meta.dev(), meta.ino()) != inode => {
                // Replaced (rotation): drain what the old file still had, then switch.
                drain_to_end(reader, &mut file, &mut chunk, stop)?;
                reader.end_of_input();
                // The new file can vanish between the stat and the open (another rotation):
                // keep the old handle and look again at the next poll.
                let Ok(fresh) = File::open(path) else {
                    continue;
                };
                tracing::info!(file = %reader.name, "followed file was replaced; reopening");
                file = fresh;
                inode = (meta.dev(), meta.ino());
                position = 0;
                reader.restart();
            }
            Ok(meta) if meta.len() < position => {
                tracing::warn!(
                    file = %reader.name,
                    "followed file was truncated; reading it again from the start"
                );
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| io_error(&reader.name, e))?;
                position = 0;
                reader.restart();
            }
            // Unchanged, grown, or briefly missing during a rotation: keep polling.
            _ => {}
        }
    }
}

fn drain_to_end(
    reader: &mut LineReader<'_>,
    file: &mut File,
    chunk: &mut [u8],
    stop: &StopFlag,
) -> Result<(), SourceError> {
    loop {
        match file.read(chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if !reader.feed(&chunk[..n], stop) {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(&reader.name, e)),
        }
    }
}

/// Reads stdin through a helper thread so that a quiet pipe does not keep `stop` from being
/// seen: a blocked read cannot be interrupted, a channel wait can. On stop the thread is left to
/// end at its next read (or with the process).
fn read_stdin(
    reader: &mut LineReader<'_>,
    poll: Duration,
    stop: &StopFlag,
) -> Result<(), SourceError> {
    let (tx, rx) = crossbeam_channel::bounded::<io::Result<Vec<u8>>>(4);
    thread::Builder::new()
        .name("palisade-stdin".to_owned())
        .spawn(move || {
            let mut stdin = io::stdin();
            loop {
                let mut chunk = vec![0u8; READ_CHUNK];
                let message = match stdin.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => {
                        chunk.truncate(n);
                        Ok(chunk)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = message.is_err();
                if tx.send(message).is_err() || failed {
                    return;
                }
            }
        })
        .map_err(|e| io_error(STDIN_NAME, e))?;
    loop {
        match rx.recv_timeout(poll) {
            Ok(Ok(chunk)) => {
                if !reader.feed(&chunk, stop) {
                    return Ok(());
                }
            }
            Ok(Err(e)) => return Err(io_error(STDIN_NAME, e)),
            Err(RecvTimeoutError::Timeout) => {
                if stop.is_stopped() {
                    return Ok(());
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                reader.end_of_input();
                return Ok(());
            }
        }
    }
}

/// Splits bytes into lines, parses complete ones, delivers events and reports bad lines. One per
/// input.
struct LineReader<'a> {
    name: String,
    sink: &'a dyn EventSink,
    stats: &'a ReplayStats,
    /// Bytes after the last newline seen: a line still being written.
    partial: Vec<u8>,
    /// The line being assembled passed [`MAX_LINE_BYTES`]; its bytes are dropped until its newline.
    overlong: bool,
    line_no: u64,
    logged_bad: u64,
    processes: VecDeque<Arc<Process>>,
}

impl<'a> LineReader<'a> {
    fn new(name: String, sink: &'a dyn EventSink, stats: &'a ReplayStats) -> Self {
        LineReader {
            name,
            sink,
            stats,
            partial: Vec::new(),
            overlong: false,
            line_no: 0,
            logged_bad: 0,
            processes: VecDeque::with_capacity(PROCESS_CACHE),
        }
    }

    /// Handles every complete line in `bytes` (after any held partial line). Returns false when
    /// `stop` was seen.
    fn feed(&mut self, bytes: &[u8], stop: &StopFlag) -> bool {
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            if stop.is_stopped() {
                return false;
            }
            let (line, tail) = rest.split_at(newline);
            rest = &tail[1..];
            if self.overlong {
                self.overlong = false;
                self.line_no += 1;
                self.bad(ReplayLineError::TooLong {
                    max: MAX_LINE_BYTES,
                });
            } else if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
                // Keep the allocation for the next partial line.
                whole.clear();
                self.partial = whole;
            }
        }
        if !self.overlong {
            self.partial.extend_from_slice(rest);
            if self.partial.len() > MAX_LINE_BYTES {
                self.overlong = true;
                self.partial = Vec::new();
            }
        }
        !stop.is_stopped()
    }

    /// The input ended: a last line without a newline is still a line.
    fn end_of_input(&mut self) {
        if std::mem::take(&mut self.overlong) {
            self.line_no += 1;
            self.bad(ReplayLineError::TooLong {
                max: MAX_LINE_BYTES,
            });
        } else if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.line(&last);
        }
    }

    /// The followed file starts over (truncated or replaced).
    fn restart(&mut self) {
        self.partial.clear();
        self.overlong = false;
        self.line_no = 0;
        self.processes.clear();
    }

    fn finish(&self) {
        tracing::debug!(
            file = %self.name,
            lines = self.line_no,
            bad_lines = self.logged_bad,
            "replay input finished"
        );
        if self.logged_bad >= MAX_LOGGED_BAD_LINES {
            tracing::warn!(
                file = %self.name,
                not_logged = self.logged_bad - MAX_LOGGED_BAD_LINES,
                "more bad lines were skipped without being logged"
            );
        }
    }

    fn line(&mut self, raw: &[u8]) {
        self.line_no += 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(text) => text,
            Err(e) => {
                self.bad(ReplayLineError::NotUtf8 {
                    column: e.valid_up_to() + 1,
                });
                return;
            }
        };
        let trimmed = text.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return;
        }
        match parse_event_line(text) {
            Ok(mut event) => {
                event.process = self.share_process(event.process);
                self.stats.0.events.fetch_add(1, Ordering::Relaxed);
                self.sink.submit(event, Delivery::Backpressure);
            }
            Err(e) => self.bad(e),
        }
    }

    /// Returns an equal recently seen process record instead of `process`, so consecutive events
    /// of one process share one allocation (dispatch batches them by pointer).
    fn share_process(&mut self, process: Arc<Process>) -> Arc<Process> {
        if let Some(index) = self.processes.iter().position(|p| **p == *process) {
            let shared = if index == 0 {
                self.processes[0].clone()
            } else {
                let found = self.processes.remove(index).unwrap_or(process);
                self.processes.push_front(found.clone());
                found
            };
            return shared;
        }
        if self.processes.len() == PROCESS_CACHE {
            self.processes.pop_back();
        }
        self.processes.push_front(process.clone());
        process
    }

    fn bad(&mut self, error: ReplayLineError) {
        let reason = error.to_string();
        if self.logged_bad < MAX_LOGGED_BAD_LINES {
            tracing::warn!(
                file = %self.name,
                line = self.line_no,
                reason = %reason,
                "{}:{}: {}",
                self.name,
                self.line_no,
                reason
            );
        }
        self.logged_bad += 1;
        self.stats.record_bad(BadLine {
            file: self.name.clone(),
            line: self.line_no,
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventData;

    #[test]
    fn parses_a_full_line() {
        let event = parse_event_line(
            r#"{"ts_ns":5,"kind":"file_open","process":{"pid":7,"comm":"cat","extra":1},"data":{"path":"/etc/shadow","flags":0,"whatever":true},"unknown_top":[1]}"#,
        )
        .unwrap();
        assert_eq!(event.ts_ns, 5);
        assert_eq!(event.process.pid, 7);
        match &event.data {
            EventData::FileOpen(open) => assert_eq!(open.path, "/etc/shadow"),
            other => panic!("wrong data {other:?}"),
        }
    }

    #[test]
    fn missing_data_defaults() {
        let event = parse_event_line(r#"{"ts_ns":1,"kind":"exit"}"#).unwrap();
        assert_eq!(event.data, EventData::Exit { code: 0 });
        let event = parse_event_line(r#"{"ts_ns":1,"kind":"file_chown","data":null}"#).unwrap();
        assert!(matches!(
            event.data,
            EventData::FileChown { uid: u32::MAX, .. }
        ));
    }

    type Check = fn(&ReplayLineError) -> bool;

    #[test]
    fn reasons_are_precise() {
        let cases: &[(&str, Check)] = &[
            ("{not json", |e| {
                matches!(e, ReplayLineError::NotJson { .. })
            }),
            ("[1,2]", |e| {
                matches!(e, ReplayLineError::NotObject { found: "an array" })
            }),
            (r#"{"ts_ns":1}"#, |e| {
                matches!(e, ReplayLineError::MissingKind)
            }),
            (r#"{"ts_ns":1,"kind":3}"#, |e| {
                matches!(e, ReplayLineError::KindNotString { .. })
            }),
            (
                r#"{"ts_ns":1,"kind":"teleport","data":{}}"#,
                |e| matches!(e, ReplayLineError::UnknownKind { kind } if kind == "teleport"),
            ),
            (
                r#"{"ts_ns":1,"kind":"exit","data":{"code":"x"}}"#,
                |e| matches!(e, ReplayLineError::Invalid { kind, .. } if kind == "exit"),
            ),
            (r#"{"ts_ns":"late","kind":"exit","data":{}}"#, |e| {
                matches!(e, ReplayLineError::Invalid { .. })
            }),
            (r#"{"kind":"exit","data":{}}"#, |e| {
                matches!(e, ReplayLineError::Invalid { .. })
            }),
        ];
        for (line, check) in cases {
            let err = parse_event_line(line).unwrap_err();
            assert!(check(&err), "{line}: unexpected {err:?}");
        }
    }
}
