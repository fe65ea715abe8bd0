//! Dispatch behaviour: routing only to subscribers, accounting for every event when queues
//! overflow, and idle instance release.

mod support;

use std::time::Duration;

use palisade::event::source::Delivery;
use support::*;

#[test]
fn a_full_queue_drops_without_blocking_and_every_event_is_accounted_for() {
    let h = Harness::new("[engine]\nworkers = 1\nqueue_capacity = 4\nbatch_max = 4\n");
    h.install(&test_plugin("counter"), "counter", None);
    h.load(1);
    let pipeline = h.start();
    let sink = pipeline.sink();
    let p = process(9, "burst", "/usr/bin/burst");
    const N: u64 = 20_000;
    for i in 0..N {
        sink.submit(open_event(i + 1, &p, "/tmp/burst"), Delivery::NeverBlock);
    }
    drop(sink);
    pipeline.finish();
    let delivered = h.captured.with_rule("count").len() as u64;
    let dropped = h.daemon.metrics.queue_dropped("counter");
    assert!(
        dropped > 0,
        "a 4-slot queue should overflow under a 20k burst"
    );
    assert_eq!(
        delivered + dropped,
        N,
        "delivered {delivered} + dropped {dropped} != {N}"
    );
}

#[test]
fn events_reach_only_subscribed_plugins() {
    let h = Harness::new("[engine]\nworkers = 2\n");
    h.install(
        &test_plugin("bench-trivial"),
        "bench-trivial",
        Some("version = 1\n[config]\nprefix = \"/\"\n"),
    );
    h.install(&test_plugin("counter"), "counter", None);
    h.load(2);
    let pipeline = h.start();
    let sink = pipeline.sink();
    let p = process(10, "mixed", "/usr/bin/mixed");
    sink.submit(open_event(1, &p, "/etc/x"), Delivery::Backpressure);
    sink.submit(
        exec_event(2, &p, "/bin/true", &["true"]),
        Delivery::Backpressure,
    );
    drop(sink);
    pipeline.finish();
    // bench-trivial subscribes to file_open only; counter to everything.
    assert_eq!(h.captured.with_rule("bench-trivial").len(), 1);
    assert_eq!(h.captured.with_rule("count").len(), 2);
    assert_eq!(h.daemon.metrics.calls("bench-trivial"), 1);
}

#[test]
fn idle_instances_are_released_and_recreated_on_demand() {
    let h = Harness::with_idle_release(1);
    h.install(&test_plugin("counter"), "counter", None);
    h.load(1);
    let pipeline = h.start();
    let sink = pipeline.sink();
    let p = process(11, "idle", "/usr/bin/idle");
    sink.submit(open_event(1, &p, "/a"), Delivery::Backpressure);
    h.captured
        .wait_for(Duration::from_secs(10), "first alert", |a| a.len() == 1);
    assert_eq!(h.daemon.metrics.instances("counter"), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.daemon.metrics.instances("counter") != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "idle instance was not released"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sink.submit(open_event(2, &p, "/b"), Delivery::Backpressure);
    h.captured
        .wait_for(Duration::from_secs(10), "second alert", |a| a.len() == 2);
    assert_eq!(h.daemon.metrics.instances("counter"), 1);
    drop(sink);
    pipeline.finish();
}
