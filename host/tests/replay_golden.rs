//! Replay golden tests: the bundled event files through the first-party plugins give exactly
//! the expected alerts, in Palisade JSON and in Falco-compatible JSON. Volatile values (alert
//! ids, alert times) are normalised; everything else must match. `BLESS=1` rewrites the files.

mod support;

use std::path::PathBuf;

use palisade::config::Config;
use palisade::daemon::Daemon;
use palisade::event::replay::ReplaySource;
use palisade::event::source::{EventSource, StopFlag};
use palisade::output::{writer_output, Format};
use serde_json::Value;
use support::*;

fn root() -> PathBuf {
    xtask::workspace_root()
}

/// Replays `events` through target/plugins; returns the alert lines in `format`.
fn replay(events: &str, format: Format) -> Vec<Value> {
    let built = built();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "version = 1\nhostname = \"golden-host\"\n[engine]\nworkers = 1\n[plugins]\ndir = {:?}\ncache_dir = {:?}\nwatch = false\n[actions]\naudit_log = {:?}\n[grants]\nnotify-high = [\"notify\"]\n",
        built.plugins_dir.display().to_string(),
        cache_dir().display().to_string(),
        dir.path().join("audit.jsonl").display().to_string(),
    );
    let config = Config::from_toml_str(&text, "golden.toml").unwrap();
    let daemon = Daemon::build(config, true).unwrap();
    let (ok, failed) = daemon.load_dir(&built.plugins_dir).unwrap();
    assert_eq!(failed, 0);
    assert!(ok >= 3);
    let captured = Captured::default();
    let pipeline = daemon
        .start_pipeline(
            "replay",
            vec![writer_output(captured.clone(), "golden", format)],
        )
        .unwrap();
    let mut source = ReplaySource::from_args([root().join(events).display().to_string()]);
    let summary = source
        .run(pipeline.sink().as_ref(), &StopFlag::default())
        .unwrap();
    assert_eq!(summary.bad_records, 0);
    pipeline.finish();
    captured.alerts()
}

/// Blanks what differs between runs; sorts so worker interleaving cannot reorder the file.
fn normalise(mut alerts: Vec<Value>) -> Vec<Value> {
    for alert in &mut alerts {
        let obj = alert.as_object_mut().unwrap();
        for key in ["id", "ts_ns"] {
            if obj.contains_key(key) {
                obj.insert(key.into(), Value::String("<volatile>".into()));
            }
        }
        // Palisade JSON: `time` is the alert time; Falco: `time` is the event time (stable).
        if obj.contains_key("plugin") {
            obj.insert("time".into(), Value::String("<volatile>".into()));
        }
        for (section, key) in [
            ("fields", "alert_id"),
            ("output_fields", "palisade.alert_id"),
        ] {
            if let Some(fields) = obj.get_mut(section).and_then(Value::as_object_mut) {
                if fields.contains_key(key) {
                    fields.insert(key.into(), Value::String("<volatile>".into()));
                }
            }
        }
    }
    alerts.sort_by_key(|a| a.to_string());
    alerts
}

fn check(name: &str, alerts: Vec<Value>) {
    let path = root().join("tests/fixtures/golden").join(name);
    let text: String = normalise(alerts).iter().map(|a| format!("{a}\n")).collect();
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with BLESS=1", path.display()));
    if expected != text {
        let exp: Vec<&str> = expected.lines().collect();
        let got: Vec<&str> = text.lines().collect();
        let mut diff = String::new();
        for line in &exp {
            if !got.contains(line) {
                diff.push_str(&format!("- {line}\n"));
            }
        }
        for line in &got {
            if !exp.contains(line) {
                diff.push_str(&format!("+ {line}\n"));
            }
        }
        panic!(
            "{} differs ({} expected, {} got alerts):\n{diff}",
            path.display(),
            exp.len(),
            got.len()
        );
    }
}

#[test]
fn demo_attack_json() {
    let alerts = replay("examples/events/demo-attack.jsonl", Format::Json);
    let rules: Vec<&str> = alerts.iter().filter_map(|a| a["rule"].as_str()).collect();
    for rule in [
        "sensitive-file-read",
        "sensitive-file-write",
        "shell-spawned-by-service",
        "reverse-shell",
    ] {
        assert!(rules.contains(&rule), "{rule} missing from {rules:?}");
    }
    check("demo-attack.json.golden", alerts);
}

#[test]
fn demo_attack_falco() {
    check(
        "demo-attack.falco.golden",
        replay("examples/events/demo-attack.jsonl", Format::Falco),
    );
}

#[test]
fn benign_activity_raises_nothing() {
    let alerts = replay("examples/events/benign.jsonl", Format::Json);
    assert!(alerts.is_empty(), "benign activity raised {alerts:?}");
}
