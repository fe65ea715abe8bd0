//! `palisade plugin test`: replays a JSON Lines event file through one detector plugin and
//! compares the alerts with a golden file of selected fields, or writes that file (`--bless`).
//!
//! The replay runs the real pipeline (registry, subscription routing, worker, alert bus) with one
//! worker and the event-time clock, one event at a time, so windows and TTLs in the plugin's
//! `state` follow the events' timestamps and the result is the same on every run and machine. It needs no
//! root and touches neither the system's compile cache nor its audit log.
//!
//! This module owns the golden file format ([`Golden`]) and the diff; it must not grow its own
//! event routing or plugin calling: what is tested is what the daemon runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::alert::{Alert, Priority};
use crate::config::{Config, Overrides};
use crate::daemon::Daemon;
use crate::event::replay::parse_event_line;
use crate::event::source::Delivery;
use crate::event::Event;
use crate::output::{AlertOutput, OutputError};
use crate::plugin::registry::{LoadError, LoadRequest};

/// The golden file's format version.
pub const GOLDEN_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PluginTestError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: cannot write: {source}")]
    Write {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: bad event line: {reason}")]
    BadEvent {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{file}: not a golden alerts file: {reason}")]
    BadGolden { file: String, reason: String },
    #[error(
        "{file}: golden file version {found} is not supported (this build reads {GOLDEN_VERSION})"
    )]
    GoldenVersion { file: String, found: u32 },
    #[error("{file}: is a responder; `plugin test` replays events through detectors only")]
    NotDetector { file: String },
    #[error("cannot set up the replay: {reason}")]
    Setup { reason: String },
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// One alert as the golden file records it: what identifies it and the fields compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenAlert {
    /// 0-based index of the triggering event among the file's events (comment and blank lines
    /// do not count); none for a host alert without an event (a plugin failure).
    pub event: Option<usize>,
    /// The triggering event's timestamp.
    pub ts_ns: Option<u64>,
    pub rule: String,
    pub priority: Priority,
    /// The message; compared unless the golden file sets `compare_message = false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Selected alert fields (all of them when the golden file has no `select`).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// The golden file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    pub version: u32,
    /// Alert field keys compared; absent means every field the plugin sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Vec<String>>,
    /// Whether messages are compared (default true).
    #[serde(default = "default_true")]
    pub compare_message: bool,
    pub alerts: Vec<GoldenAlert>,
}

fn default_true() -> bool {
    true
}

impl Golden {
    /// An empty golden file comparing every field and the message.
    pub fn new() -> Self {
        Golden {
            version: GOLDEN_VERSION,
            select: None,
            compare_message: true,
            alerts: Vec::new(),
        }
    }

    /// Parses a golden file.
    pub fn from_json(text: &str, file: &str) -> Result<Self, PluginTestError> {
        let golden: Golden =
            serde_json::from_str(text).map_err(|e| PluginTestError::BadGolden {
                file: file.to_string(),
                reason: e.to_string(),
            })?;
        if golden.version != GOLDEN_VERSION {
            return Err(PluginTestError::GoldenVersion {
                file: file.to_string(),
                found: golden.version,
            });
        }
        Ok(golden)
    }

    /// Reads a golden file.
    pub fn load(path: &Path) -> Result<Self, PluginTestError> {
        let text = std::fs::read_to_string(path).map_err(|source| PluginTestError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Projects replayed alerts onto this file's selection (fields, message).
    pub fn project(&self, alerts: &[GoldenAlert]) -> Vec<GoldenAlert> {
        alerts
            .iter()
            .map(|a| GoldenAlert {
                message: if self.compare_message {
                    a.message.clone()
                } else {
                    None
                },
                fields: match &self.select {
                    None => a.fields.clone(),
                    Some(keys) => a
                        .fields
                        .iter()
                        .filter(|(k, _)| keys.contains(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                },
                ..a.clone()
            })
            .collect()
    }
}

impl Default for Golden {
    fn default() -> Self {
        Self::new()
    }
}

/// The result of replaying an event file through a plugin.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The plugin's name from `describe()`.
    pub plugin: String,
    /// Events read from the file.
    pub events: usize,
    /// Every alert, complete, ordered by event then rule.
    pub alerts: Vec<GoldenAlert>,
}

/// Where the replay keeps its compiled components (default: a per-user temp directory, so
/// repeated runs do not recompile).
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub cache_dir: Option<PathBuf>,
}

/// Collects alerts in memory.
struct Collect(Arc<Mutex<Vec<Alert>>>);

impl AlertOutput for Collect {
    fn write(&mut self, alert: &Alert) -> Result<(), OutputError> {
        match self.0.lock() {
            Ok(mut list) => list.push(alert.clone()),
            Err(poisoned) => poisoned.into_inner().push(alert.clone()),
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), OutputError> {
        Ok(())
    }
}

/// Reads a JSON Lines event file strictly: a bad line is an error (a fixture must be exact).
pub fn read_events(path: &Path) -> Result<Vec<Event>, PluginTestError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PluginTestError::Read {
        file: file.clone(),
        source,
    })?;
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let event = parse_event_line(trimmed).map_err(|e| PluginTestError::BadEvent {
            file: file.clone(),
            line: n + 1,
            reason: e.to_string(),
        })?;
        events.push(event);
    }
    Ok(events)
}

/// Index of the event an alert belongs to: the first event equal to it (timestamps in a fixture
/// should be distinct; equal events are indistinguishable anyway).
fn event_index(events: &[Event], event: &Event) -> Option<usize> {
    events.iter().position(|e| {
        e.ts_ns == event.ts_ns && e.process.pid == event.process.pid && e.data == event.data
    })
}

/// Replays `events` through the detector `wasm` (its sidecar beside it applies) and returns
/// every alert.
pub fn replay(
    wasm: &Path,
    events_path: &Path,
    options: &ReplayOptions,
) -> Result<Replayed, PluginTestError> {
    let events = read_events(events_path)?;
    let ov = Overrides {
        log_level: Some("warn".into()),
        ..Overrides::default()
    };
    let mut config = Config::load(None, &ov).map_err(|e| PluginTestError::Setup {
        reason: e.to_string(),
    })?;
    let scratch = std::env::temp_dir().join(format!(
        "palisade-plugin-test-{}-{}",
        std::process::id(),
        unique()
    ));
    config.plugins.cache_dir = options
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(&scratch));
    config.plugins.watch = false;
    config.actions.audit_log = scratch.join("audit.jsonl");
    // One worker and event time: the same input gives the same alerts in the same order.
    config.engine.workers = 1;
    config.hostname = Some("plugin-test".into());
    let result = run_replay(config, wasm, events);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// A per-user cache in the temp directory, so repeated runs do not recompile and one user's
/// cache is never another's (nor writable by them); without a user name, the run's scratch.
fn default_cache_dir(scratch: &Path) -> PathBuf {
    match std::env::var("USER") {
        Ok(user) if !user.is_empty() && !user.contains('/') => {
            std::env::temp_dir().join(format!("palisade-plugin-test-cache-{user}"))
        }
        _ => scratch.join("cache"),
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn run_replay(
    config: Config,
    wasm: &Path,
    events: Vec<Event>,
) -> Result<Replayed, PluginTestError> {
    let daemon = Daemon::build(config, true).map_err(|e| PluginTestError::Setup {
        reason: e.to_string(),
    })?;
    let loaded = daemon.registry.load(&LoadRequest::from_file(wasm)?)?;
    if loaded.kind != crate::plugin::PluginKind::Detector {
        return Err(PluginTestError::NotDetector {
            file: wasm.display().to_string(),
        });
    }
    let collected = Arc::new(Mutex::new(Vec::new()));
    // One event per pipeline run, drained before the next enters: the event-time clock is
    // "the newest event that entered the pipeline", so feeding everything at once would let
    // the worker see a later "now" than the event it handles, and windows and TTLs would
    // depend on thread timing. This way every event is handled at its own time, as when it
    // was recorded; durable state lives in the registry and carries across runs.
    for event in &events {
        let pipeline = daemon
            .start_pipeline(
                "plugin-test",
                vec![Box::new(Collect(Arc::clone(&collected)))],
            )
            .map_err(|e| PluginTestError::Setup {
                reason: e.to_string(),
            })?;
        pipeline
            .sink()
            .submit(event.clone(), Delivery::Backpressure);
        pipeline.finish();
    }
    let raw = match Arc::try_unwrap(collected) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(shared) => shared
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone()),
    };
    let mut alerts: Vec<GoldenAlert> = raw
        .iter()
        .map(|a| GoldenAlert {
            event: a.event.as_deref().and_then(|e| event_index(&events, e)),
            ts_ns: a.event.as_deref().map(|e| e.ts_ns),
            rule: a.rule.clone(),
            priority: a.priority,
            message: Some(a.message.clone()),
            fields: a.fields.iter().cloned().collect(),
        })
        .collect();
    // Stable sort: alerts of one event keep the plugin's order.
    alerts.sort_by_key(|a| a.event.unwrap_or(usize::MAX));
    Ok(Replayed {
        plugin: loaded.name,
        events: events.len(),
        alerts,
    })
}

/// A readable diff of expected against got (already projected); empty when they match.
pub fn diff(expected: &[GoldenAlert], got: &[GoldenAlert]) -> String {
    let mut out = String::new();
    let n = expected.len().max(got.len());
    for i in 0..n {
        match (expected.get(i), got.get(i)) {
            (Some(e), Some(g)) if e == g => {}
            (Some(e), Some(g)) => {
                let _ = writeln!(out, "alert #{i}: differs");
                diff_one(&mut out, e, g);
            }
            (Some(e), None) => {
                let _ = writeln!(
                    out,
                    "alert #{i}: expected but not raised:\n  {}",
                    summary(e)
                );
            }
            (None, Some(g)) => {
                let _ = writeln!(
                    out,
                    "alert #{i}: raised but not expected:\n  {}",
                    summary(g)
                );
            }
            (None, None) => {}
        }
    }
    out
}

fn summary(a: &GoldenAlert) -> String {
    format!(
        "event {} (ts_ns {}) {} [{}]{}",
        a.event.map_or("-".to_string(), |e| e.to_string()),
        a.ts_ns.map_or("-".to_string(), |t| t.to_string()),
        a.rule,
        a.priority.as_str(),
        a.message
            .as_ref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    )
}

fn diff_one(out: &mut String, e: &GoldenAlert, g: &GoldenAlert) {
    let mut line = |what: &str, exp: String, got: String| {
        if exp != got {
            let _ = writeln!(out, "  {what}:\n    expected: {exp}\n    got:      {got}");
        }
    };
    line("event", format!("{:?}", e.event), format!("{:?}", g.event));
    line("ts_ns", format!("{:?}", e.ts_ns), format!("{:?}", g.ts_ns));
    line("rule", e.rule.clone(), g.rule.clone());
    line(
        "priority",
        e.priority.as_str().into(),
        g.priority.as_str().into(),
    );
    let message = |m: &Option<String>| {
        m.as_deref()
            .map_or("(not compared)".to_string(), |m| format!("{m:?}"))
    };
    line("message", message(&e.message), message(&g.message));
    let keys: std::collections::BTreeSet<&String> =
        e.fields.keys().chain(g.fields.keys()).collect();
    for k in keys {
        let show = |v: Option<&String>| v.map_or("(absent)".to_string(), |v| format!("{v:?}"));
        line(
            &format!("field {k}"),
            show(e.fields.get(k)),
            show(g.fields.get(k)),
        );
    }
}

/// What a test run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The alerts matched the golden file.
    Passed { alerts: usize },
    /// The golden file was (re)written.
    Blessed { alerts: usize },
    /// They differ; the readable diff.
    Failed { diff: String },
}

/// Replays and compares with (or, with `bless`, writes) the golden file `expect`. Blessing keeps
/// an existing file's `select` and `compare_message` settings.
pub fn run_test(
    wasm: &Path,
    events: &Path,
    expect: &Path,
    bless: bool,
    options: &ReplayOptions,
) -> Result<Outcome, PluginTestError> {
    let replayed = replay(wasm, events, options)?;
    let existing = if expect.exists() {
        Some(Golden::load(expect))
    } else {
        None
    };
    if bless {
        let mut golden = match existing {
            Some(Ok(g)) => g,
            _ => Golden::new(),
        };
        golden.alerts = golden.project(&replayed.alerts);
        std::fs::write(expect, golden.to_json()).map_err(|source| PluginTestError::Write {
            file: expect.display().to_string(),
            source,
        })?;
        return Ok(Outcome::Blessed {
            alerts: golden.alerts.len(),
        });
    }
    let golden = match existing {
        Some(g) => g?,
        None => {
            return Err(PluginTestError::Read {
                file: expect.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no golden file (run with --bless to create it)",
                ),
            })
        }
    };
    let got = golden.project(&replayed.alerts);
    let d = diff(&golden.alerts, &got);
    if d.is_empty() {
        Ok(Outcome::Passed { alerts: got.len() })
    } else {
        Ok(Outcome::Failed {
            diff: format!(
                "{}: {} expected alert(s), {} raised by {} over {} event(s) of {}\n{d}",
                expect.display(),
                golden.alerts.len(),
                got.len(),
                replayed.plugin,
                replayed.events,
                events.display()
            ),
        })
    }
}

/// The `palisade plugin test` command: prints the outcome (the diff on a mismatch) and returns
/// exit code 0 on a match or after blessing, 1 on a mismatch.
pub fn cmd_plugin_test(
    log_level: Option<&str>,
    wasm: &Path,
    events: &Path,
    expect: &Path,
    bless: bool,
) -> Result<std::process::ExitCode, PluginTestError> {
    use std::io::Write;
    // Plugin failures and load problems are logged; alerts are the output.
    let _ = crate::telemetry::init(
        crate::telemetry::LogFormat::Text,
        log_level.unwrap_or("warn"),
    );
    let outcome = run_test(wasm, events, expect, bless, &ReplayOptions::default())?;
    let (text, code) = match outcome {
        Outcome::Passed { alerts } => (
            format!("ok: {} ({alerts} alert(s) as expected)\n", expect.display()),
            0,
        ),
        Outcome::Blessed { alerts } => (
            format!("blessed: {} ({alerts} alert(s))\n", expect.display()),
            0,
        ),
        Outcome::Failed { diff } => (format!("MISMATCH {diff}"), 1),
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(std::process::ExitCode::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(event: usize, rule: &str, fields: &[(&str, &str)]) -> GoldenAlert {
        GoldenAlert {
            event: Some(event),
            ts_ns: Some(event as u64 * 10),
            rule: rule.into(),
            priority: Priority::Warning,
            message: Some(format!("m{event}")),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn diff_names_each_difference() {
        let e = vec![alert(0, "a", &[("path", "/x")]), alert(1, "b", &[])];
        assert_eq!(diff(&e, &e), "");
        let g = vec![alert(0, "a", &[("path", "/y"), ("new", "1")])];
        let d = diff(&e, &g);
        assert!(d.contains("alert #0: differs"), "{d}");
        assert!(
            d.contains("field path:\n    expected: \"/x\"\n    got:      \"/y\""),
            "{d}"
        );
        assert!(d.contains("field new:\n    expected: (absent)"), "{d}");
        assert!(
            d.contains("alert #1: expected but not raised:\n  event 1 (ts_ns 10) b [warning]: m1"),
            "{d}"
        );
        let d = diff(&[], &e[..1]);
        assert!(d.contains("alert #0: raised but not expected"), "{d}");
    }

    #[test]
    fn golden_selection_and_round_trip() {
        let mut g = Golden::new();
        g.select = Some(vec!["path".into()]);
        g.compare_message = false;
        let got = g.project(&[alert(0, "a", &[("path", "/x"), ("proc.pid", "1")])]);
        assert_eq!(got[0].fields.len(), 1);
        assert_eq!(got[0].message, None);
        g.alerts = got;
        let back = Golden::from_json(&g.to_json(), "g.json").unwrap();
        assert_eq!(back, g);
        let err = Golden::from_json(r#"{"version": 2, "alerts": []}"#, "g.json").unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        let err =
            Golden::from_json(r#"{"version": 1, "alerts": [], "extra": 1}"#, "g.json").unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }
}
