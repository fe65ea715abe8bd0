//! Sandbox limits: every misbehaving test plugin is stopped by the limit meant for it, the
//! failure is logged, counted and isolated, and a well-behaved plugin loaded beside it keeps
//! receiving every event. Plugins are built from source (tests/plugins) by the xtask.

mod support;

use std::time::{Duration, Instant};

use palisade::event::source::Delivery;
use palisade::metrics::FailureCause;
use palisade::plugin::registry::{LoadError, LoadRequest};
use support::*;

/// One event per batch, so a marker event fails only its own call.
const ONE_PER_BATCH: &str = "[engine]\nworkers = 1\nbatch_max = 1\n";

fn submit_all(h: &Harness, pipeline: &palisade::daemon::Pipeline, paths: &[&str]) {
    let p = process(4242, "victim", "/usr/bin/victim");
    let sink = pipeline.sink();
    for (i, path) in paths.iter().enumerate() {
        sink.submit(open_event(i as u64 + 1, &p, path), Delivery::Backpressure);
    }
    let _ = h;
}

/// Runs `paths` through `bad` (a test plugin with `sidecar`) and the `counter` plugin, and
/// returns the captured alerts once the pipeline has drained.
fn run_with_counter(
    bad: &str,
    sidecar: Option<&str>,
    paths: &[&str],
) -> (Harness, Vec<serde_json::Value>) {
    let h = Harness::new(ONE_PER_BATCH);
    h.install(&test_plugin(bad), bad, sidecar);
    h.install(&test_plugin("counter"), "counter", None);
    h.load(2);
    let pipeline = h.start();
    submit_all(&h, &pipeline, paths);
    pipeline.finish();
    let alerts = h.captured.alerts();
    // The well-behaved neighbour saw every event, whatever the bad plugin did.
    let counted = alerts.iter().filter(|a| a["rule"] == "count").count();
    assert_eq!(counted, paths.len(), "counter must see every event");
    (h, alerts)
}

fn rule_count(alerts: &[serde_json::Value], rule: &str) -> usize {
    alerts.iter().filter(|a| a["rule"] == rule).count()
}

#[test]
fn trap_is_isolated_and_the_instance_is_recreated() {
    let (h, alerts) = run_with_counter("trap", None, &["/a", "/x/trap", "/b", "/c"]);
    // Events before and after the trap were handled: the instance was recreated.
    assert_eq!(rule_count(&alerts, "trap-ok"), 3);
    assert_eq!(h.daemon.metrics.failures("trap", FailureCause::Trap), 1);
    assert_eq!(h.daemon.metrics.failures("counter", FailureCause::Trap), 0);
}

#[test]
fn infinite_loop_is_stopped_by_the_deadline() {
    let sidecar = "version = 1\n[limits]\ndeadline_ms = 50\n";
    let started = Instant::now();
    let (h, alerts) = run_with_counter("spin", Some(sidecar), &["/a", "/x/spin", "/b"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "deadline did not stop the loop"
    );
    assert_eq!(rule_count(&alerts, "spin-ok"), 2);
    assert_eq!(h.daemon.metrics.failures("spin", FailureCause::Deadline), 1);
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let sidecar = "version = 1\n[limits]\nmemory_mib = 16\n";
    let (h, alerts) = run_with_counter("membomb", Some(sidecar), &["/a", "/x/membomb", "/b"]);
    assert_eq!(rule_count(&alerts, "membomb-ok"), 2);
    assert_eq!(
        h.daemon.metrics.failures("membomb", FailureCause::Memory),
        1
    );
}

#[test]
fn alert_flood_is_capped_per_batch() {
    let sidecar = "version = 1\n[limits]\nmax_alerts_per_batch = 100\n";
    let (_h, alerts) = run_with_counter(
        "alert-flood",
        Some(sidecar),
        &["/a", "/x/alert-flood", "/b"],
    );
    assert_eq!(
        rule_count(&alerts, "flood"),
        100,
        "extra alerts beyond the cap must be dropped"
    );
    assert_eq!(rule_count(&alerts, "alert-flood-ok"), 2);
}

#[test]
fn log_flood_is_rate_limited_and_counted() {
    // A generous deadline: this test is about the log budget, not the time budget.
    let sidecar = "version = 1\n[limits]\nmax_log_lines_per_sec = 20\ndeadline_ms = 5000\n";
    let (h, alerts) = run_with_counter("log-flood", Some(sidecar), &["/a", "/b"]);
    assert_eq!(rule_count(&alerts, "log-flood-ok"), 2);
    // 20,000 lines were logged; at most a few seconds' budget went through.
    let dropped = h.daemon.metrics.log_dropped("log-flood");
    assert!(dropped >= 19_000, "dropped only {dropped} log lines");
}

#[test]
fn repeated_failures_quarantine_the_plugin_and_raise_a_host_alert() {
    let sidecar = "version = 1\n[failure]\nmax_consecutive = 2\nbackoff_initial_ms = 60000\nbackoff_max_ms = 60000\n";
    let (h, alerts) = run_with_counter(
        "trap",
        Some(sidecar),
        &["/x/trap", "/y/trap", "/after-1", "/after-2"],
    );
    let host: Vec<_> = alerts
        .iter()
        .filter(|a| a["rule"] == "palisade.plugin_failure")
        .collect();
    assert_eq!(host.len(), 1, "one quarantine alert");
    assert_eq!(host[0]["plugin"]["name"], "palisade");
    assert_eq!(host[0]["fields"]["plugin"], "trap");
    // Quarantined: the events after it never reached the plugin, and were counted.
    assert_eq!(rule_count(&alerts, "trap-ok"), 0);
    assert_eq!(h.daemon.metrics.quarantines("trap"), 1);
    assert_eq!(h.daemon.metrics.queue_dropped("trap"), 2);
}

#[test]
fn ungranted_capabilities_are_denied_and_audited() {
    let h = Harness::new("[grants]\ngreedy-responder = [\"notify\"]\n");
    h.install(&test_plugin("greedy-responder"), "greedy-responder", None);
    h.install(&test_plugin("counter"), "counter", None);
    h.load(2);
    let pipeline = h.start();
    submit_all(&h, &pipeline, &["/a"]);
    pipeline.finish();
    let audit = h.audit();
    let result_of = |action: &str| -> Vec<String> {
        audit
            .iter()
            .filter(|r| r["responder"] == "greedy-responder" && r["action"] == action)
            .map(|r| r["result"].as_str().unwrap().to_string())
            .collect()
    };
    // counter alerts once per event; the responder tries three actions per alert.
    assert_eq!(result_of("kill-process"), vec!["denied"]);
    assert_eq!(result_of("block-exec"), vec!["denied"]);
    // Granted, and in the default monitor mode only recorded.
    assert_eq!(result_of("notify"), vec!["recorded"]);
    assert_eq!(
        h.daemon.metrics.denied("greedy-responder", "kill-process"),
        1
    );
}

#[test]
fn wrong_world_bad_init_and_garbage_are_refused_with_the_file_named() {
    let h = Harness::new("");
    let registry = &h.daemon.registry;
    let err = registry
        .load(&LoadRequest::from_file(&test_plugin("wrong-world")).unwrap())
        .unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    assert!(err.to_string().contains("wrong-world.wasm"), "{err}");

    let err = registry
        .load(&LoadRequest::from_file(&test_plugin("bad-init")).unwrap())
        .unwrap_err();
    assert!(
        matches!(err, LoadError::Call { stage: "init", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bad-init.wasm"), "{err}");

    let garbage = h.plugins_dir().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\x00\x00\x00 not really").unwrap();
    let err = registry
        .load(&LoadRequest::from_file(&garbage).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("garbage.wasm"), "{err}");

    let text = h.plugins_dir().join("text.wasm");
    std::fs::write(&text, b"hello").unwrap();
    let err = registry
        .load(&LoadRequest::from_file(&text).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("text.wasm"), "{err}");
    assert!(registry.snapshot().detectors.is_empty());
}

#[test]
fn a_guest_reaches_no_file_env_argument_or_network() {
    // A listener the guest is told about: a connection would succeed if WASI granted sockets.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = Harness::new("");
    h.install(
        &test_plugin("escape"),
        "escape",
        Some(&format!("version = 1\n[config]\nport = {port}\n")),
    );
    h.load(1);
    let pipeline = h.start();
    let secret = h.dir.path().join("secret.txt");
    std::fs::write(&secret, "host secret").unwrap();
    submit_all(&h, &pipeline, &[secret.to_str().unwrap()]);
    pipeline.finish();
    let reports = h.captured.with_rule("escape-report");
    assert_eq!(reports.len(), 1);
    let fields = &reports[0]["fields"];
    for probe in ["read", "list", "create", "env", "args", "connect"] {
        assert_eq!(fields[probe], "denied", "probe {probe}: {}", fields[probe]);
    }
    assert!(!std::path::Path::new("/tmp/palisade-escape-probe").exists());
}
