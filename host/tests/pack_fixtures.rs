//! The detector pack's fixtures: every `plugins/<name>/fixtures/{positive,negative}.jsonl` is
//! replayed through the built `<name>.wasm` with `palisade plugin test`'s logic and compared
//! with its `<kind>.expected.json` golden file (`BLESS=1` rewrites them). Negative fixtures must
//! raise nothing at warning or above; positive ones must raise something. No root needed.

mod support;

use std::path::{Path, PathBuf};

use palisade::alert::Priority;
use palisade::plugin::testing::{run_test, Golden, Outcome, ReplayOptions};

fn options() -> ReplayOptions {
    ReplayOptions {
        cache_dir: Some(support::cache_dir()),
    }
}

/// (plugin name, fixtures dir) for every plugin crate that ships fixtures.
fn fixture_dirs() -> Vec<(String, PathBuf)> {
    let root = xtask::workspace_root().join("plugins");
    // An unreadable plugins dir yields no fixtures, which the callers' assertions report.
    let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let name = dir.file_name()?.to_string_lossy().into_owned();
            let fixtures = dir.join("fixtures");
            fixtures.is_dir().then_some((name, fixtures))
        })
        .collect();
    dirs.sort();
    dirs
}

fn check(wasm: &Path, fixtures: &Path, kind: &str, bless: bool) -> Result<Golden, String> {
    let events = fixtures.join(format!("{kind}.jsonl"));
    let expect = fixtures.join(format!("{kind}.expected.json"));
    if !events.is_file() {
        return Err(format!("{} is missing", events.display()));
    }
    match run_test(wasm, &events, &expect, bless, &options()) {
        Ok(Outcome::Passed { .. } | Outcome::Blessed { .. }) => {
            Golden::load(&expect).map_err(|e| e.to_string())
        }
        Ok(Outcome::Failed { diff }) => Err(diff),
        Err(e) => Err(format!("{}: {e}", events.display())),
    }
}

#[test]
fn every_pack_plugin_matches_its_golden_alerts() {
    let bless = std::env::var_os("BLESS").is_some();
    let dirs = fixture_dirs();
    assert!(
        dirs.len() >= 6,
        "expected the pack's fixtures, found {dirs:?}"
    );
    let mut failures = Vec::new();
    for (name, fixtures) in &dirs {
        let wasm = support::plugin(name);
        match check(&wasm, fixtures, "positive", bless) {
            Ok(golden) if golden.alerts.is_empty() => {
                failures.push(format!("{name}: positive fixture raises no alert"))
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("{name} positive:\n{e}")),
        }
        match check(&wasm, fixtures, "negative", bless) {
            Ok(golden) => {
                for a in golden
                    .alerts
                    .iter()
                    .filter(|a| a.priority.at_least(Priority::Warning))
                {
                    failures.push(format!(
                        "{name}: negative fixture raises {} [{}] at event {:?}",
                        a.rule,
                        a.priority.as_str(),
                        a.event
                    ));
                }
            }
            Err(e) => failures.push(format!("{name} negative:\n{e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_mismatch_is_reported_per_alert() {
    let (name, fixtures) = fixture_dirs()
        .into_iter()
        .find(|(n, _)| n == "falco-network")
        .expect("falco-network fixtures");
    let wasm = support::plugin(&name);
    let dir = tempfile::tempdir().unwrap();
    // The negative golden (no alert) against the positive events: every alert is unexpected.
    let expect = dir.path().join("g.json");
    std::fs::copy(fixtures.join("negative.expected.json"), &expect).unwrap();
    let outcome = run_test(
        &wasm,
        &fixtures.join("positive.jsonl"),
        &expect,
        false,
        &options(),
    )
    .unwrap();
    let Outcome::Failed { diff } = outcome else {
        panic!("expected a mismatch, got {outcome:?}")
    };
    assert!(diff.contains("alert #0: raised but not expected"), "{diff}");
    assert!(
        diff.contains("disallowed-ssh-connection-non-standard-port [notice]"),
        "{diff}"
    );
    // Blessing writes the file; the same run then passes.
    assert_eq!(
        run_test(
            &wasm,
            &fixtures.join("positive.jsonl"),
            &expect,
            true,
            &options()
        )
        .unwrap(),
        Outcome::Blessed { alerts: 2 }
    );
    assert_eq!(
        run_test(
            &wasm,
            &fixtures.join("positive.jsonl"),
            &expect,
            false,
            &options()
        )
        .unwrap(),
        Outcome::Passed { alerts: 2 }
    );
}

/// The sequence detectors keep their progress in host state: a download recorded before a hot
/// reload (new instance, new component) still makes the exec after it alert.
#[test]
fn sequence_state_survives_a_reload() {
    use palisade::event::replay::parse_event_line;
    use palisade::event::source::Delivery;
    use palisade::plugin::registry::LoadRequest;

    let fixtures = xtask::workspace_root().join("plugins/sequences/fixtures/positive.jsonl");
    let events: Vec<_> = std::fs::read_to_string(&fixtures)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .take(3)
        .map(|l| parse_event_line(l).unwrap())
        .collect();
    let h = support::Harness::new("");
    h.install(&support::plugin("sequences"), "sequences", None);
    h.load(1);
    // connect + write, then drain the pipeline so the state is written.
    let first = h.start();
    for e in &events[..2] {
        first.sink().submit(e.clone(), Delivery::Backpressure);
    }
    first.finish();
    assert!(h.captured.alerts().is_empty());
    // Hot reload: the same unit is loaded again, replacing the running plugin.
    let loaded = h
        .daemon
        .registry
        .load(&LoadRequest::from_file(&h.plugins_dir().join("sequences.wasm")).unwrap())
        .unwrap();
    assert!(loaded.replaced, "{loaded:?}");
    let second = h.start();
    second
        .sink()
        .submit(events[2].clone(), Delivery::Backpressure);
    second.finish();
    let alerts = h.captured.with_rule("download-then-execute");
    assert_eq!(alerts.len(), 1, "{:?}", h.captured.alerts());
    assert_eq!(
        alerts[0]["fields"]["filename"], "/tmp/.x/dropper",
        "{}",
        alerts[0]
    );
}

/// Every rule docs/rules.md attributes to a pack plugin ("`rule-id` (plugin)") is raised by that
/// plugin's positive fixture, so no documented rule goes untested.
#[test]
fn every_documented_rule_has_a_positive_fixture() {
    let root = xtask::workspace_root();
    let doc = std::fs::read_to_string(root.join("docs/rules.md")).unwrap();
    let plugins: Vec<String> = fixture_dirs().into_iter().map(|(n, _)| n).collect();
    let mut documented: Vec<(String, String)> = Vec::new();
    for piece in doc.split('`').collect::<Vec<_>>().windows(2) {
        let (rule, after) = (piece[0], piece[1]);
        let Some(rest) = after.trim_start().strip_prefix('(') else {
            continue;
        };
        let Some(plugin) = rest.split(')').next() else {
            continue;
        };
        if plugins.iter().any(|p| p == plugin) && !rule.is_empty() && !rule.contains(' ') {
            documented.push((plugin.to_string(), rule.to_string()));
        }
    }
    documented.sort();
    documented.dedup();
    assert!(
        documented.len() >= 30,
        "parsed too few rules from docs/rules.md: {documented:?}"
    );
    let mut missing = Vec::new();
    for (plugin, rule) in &documented {
        let golden =
            Golden::load(&root.join(format!("plugins/{plugin}/fixtures/positive.expected.json")))
                .unwrap();
        if !golden.alerts.iter().any(|a| &a.rule == rule) {
            missing.push(format!("{plugin}/{rule}"));
        }
    }
    assert!(
        missing.is_empty(),
        "documented rules without a positive fixture alert: {missing:?}"
    );
}
