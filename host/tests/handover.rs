//! The reload handover, driven step by step on real workers: a replace prepares an initialised
//! instance for each worker running the plugin (and only for those), the worker takes it over
//! on its next batch without instantiating, old instances are torn down off the worker, and
//! every event is still handled exactly once by exactly one version.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use palisade::alert::Alert;
use palisade::dispatch::worker::{Worker, WorkerSettings};
use palisade::event::Event;
use palisade::metrics::SwapVia;
use palisade::plugin::registry::LoadRequest;
use support::*;

fn settings() -> WorkerSettings {
    WorkerSettings {
        batch_max: 16,
        idle_release: Duration::from_secs(300),
        hostname: "test-host".into(),
    }
}

/// Writes the counter plugin with config `version` and loads (or replaces) it.
fn load_counter(h: &Harness, version: u32) {
    let dir = h.plugins_dir();
    if !dir.join("counter.wasm").exists() {
        std::fs::copy(test_plugin("counter"), dir.join("counter.wasm")).unwrap();
    }
    std::fs::write(
        dir.join("counter.toml"),
        format!("version = 1\n[config]\nversion = \"{version}\"\n"),
    )
    .unwrap();
    let req = LoadRequest::from_file(&dir.join("counter.wasm")).unwrap();
    h.daemon.registry.load(&req).unwrap();
}

fn events(from: u64, n: u64) -> Vec<Arc<Event>> {
    let p = process(42, "feeder", "/usr/bin/feeder");
    (from..from + n)
        .map(|seq| Arc::new(open_event(seq, &p, "/tmp/x")))
        .collect()
}

/// (ts_ns, version) of every `count` alert received so far.
fn drain(rx: &Receiver<Alert>) -> Vec<(u64, String)> {
    rx.try_iter()
        .filter(|a| a.rule == "count")
        .map(|a| {
            let version = a
                .fields
                .iter()
                .find(|(k, _)| k == "version")
                .map(|(_, v)| v.clone())
                .unwrap();
            (a.event.as_ref().unwrap().ts_ns, version)
        })
        .collect()
}

fn expect_versions(got: &[(u64, String)], from: u64, n: u64, version: &str) {
    let want: Vec<(u64, String)> = (from..from + n).map(|s| (s, version.to_string())).collect();
    assert_eq!(
        got,
        want.as_slice(),
        "each event once, by version {version}"
    );
}

fn wait_instances(h: &Harness, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.daemon.metrics.instances("counter") != want {
        assert!(
            Instant::now() < deadline,
            "counter instances stayed at {}, want {want}",
            h.daemon.metrics.instances("counter")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_replace_hands_prepared_instances_to_the_workers_running_the_plugin() {
    let h = Harness::new("");
    let metrics = Arc::clone(&h.daemon.metrics);
    let registry = Arc::clone(&h.daemon.registry);
    load_counter(&h, 1);
    // The load's canary is not kept: no worker runs the plugin yet.
    assert_eq!(metrics.instances("counter"), 0);
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut busy = Worker::new(0, Arc::clone(&registry), tx.clone(), settings());
    let _quiet = Worker::new(1, Arc::clone(&registry), tx, settings());

    busy.process(&events(1, 4));
    expect_versions(&drain(&rx), 1, 4, "1");
    assert_eq!(metrics.instances("counter"), 1);

    // Replace: one instance is prepared, for the worker running the plugin and not the quiet one.
    load_counter(&h, 2);
    assert_eq!(
        metrics.instances("counter"),
        2,
        "old instance + one prepared instance"
    );
    busy.process(&events(5, 4));
    expect_versions(&drain(&rx), 5, 4, "2");
    assert_eq!(metrics.swaps("counter", SwapVia::Handover), 1);
    assert_eq!(metrics.swaps("counter", SwapVia::Worker), 0);
    // The old instance is torn down by the reaper, not on the worker.
    wait_instances(&h, 1);

    // Two replaces before the worker's next batch: the newer prepared instance wins and the
    // superseded one is retired unused.
    load_counter(&h, 3);
    load_counter(&h, 4);
    busy.process(&events(9, 4));
    expect_versions(&drain(&rx), 9, 4, "4");
    assert_eq!(metrics.swaps("counter", SwapVia::Handover), 2);
    wait_instances(&h, 1);

    // With the handover off, the worker instantiates the new generation itself.
    registry.handover().set_prewarm(false);
    load_counter(&h, 5);
    assert_eq!(metrics.instances("counter"), 1, "nothing prepared");
    busy.process(&events(13, 4));
    expect_versions(&drain(&rx), 13, 4, "5");
    assert_eq!(metrics.swaps("counter", SwapVia::Worker), 1);
    assert_eq!(metrics.swaps("counter", SwapVia::Handover), 2);
    registry.handover().set_prewarm(true);

    // Unload: the worker retires its instance on the next batch and stops counting as a runner.
    registry.remove("counter");
    busy.process(&events(17, 4));
    assert!(
        drain(&rx).is_empty(),
        "no version handles events after unload"
    );
    wait_instances(&h, 0);
    assert!(registry.handover().running("counter").is_empty());
}

#[test]
fn a_prepared_instance_waits_for_its_plugin_set() {
    // A worker that drains its inbox between the delivery and the publish must keep using the
    // old generation for that batch and switch on the next one.
    let h = Harness::new("");
    let metrics = Arc::clone(&h.daemon.metrics);
    let registry = Arc::clone(&h.daemon.registry);
    load_counter(&h, 1);
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut worker = Worker::new(0, Arc::clone(&registry), tx, settings());
    worker.process(&events(1, 2));
    expect_versions(&drain(&rx), 1, 2, "1");

    // Simulate the window: deliver by hand an instance whose plugin set is not live yet. The
    // worker must hold it, not use it, while its snapshot says otherwise.
    let inbox = registry
        .handover()
        .running("counter")
        .pop()
        .expect("worker runs counter");
    let set = registry.snapshot();
    let plugin = Arc::clone(&set.detectors[0]);
    let mut instance =
        palisade::plugin::instance::Instance::start(registry.engine(), &plugin).unwrap();
    instance.generation = plugin.generation + 1_000;
    inbox.deliver(palisade::plugin::handover::Prepared {
        plugin: "counter".into(),
        instance,
        set_generation: set.generation + 1_000,
    });
    worker.process(&events(3, 2));
    expect_versions(&drain(&rx), 3, 2, "1");
    assert_eq!(metrics.instances("counter"), 2, "held, not used");
    // A real replace delivers a newer prepared instance: it replaces the held one (retired
    // unused) and is used from the batch after the publish.
    load_counter(&h, 2);
    worker.process(&events(5, 2));
    expect_versions(&drain(&rx), 5, 2, "2");
    assert_eq!(metrics.swaps("counter", SwapVia::Handover), 1);
    wait_instances(&h, 1);
}
