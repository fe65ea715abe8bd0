//! Hot reload while events flow: adding, replacing, replacing with a broken build and deleting
//! a plugin in the watched directory. The `counter` plugin raises one alert per event carrying
//! the event's sequence number and its own version, so the test can prove that nothing was lost
//! and nothing was handled twice across each swap.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::event::source::Delivery;
use support::*;

fn atomic_write(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn sidecar(version: u32) -> String {
    format!("version = 1\n[config]\nversion = \"{version}\"\n")
}

/// (seq -> versions that counted it)
fn counted(h: &Harness) -> BTreeMap<u64, Vec<String>> {
    let mut seen: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for alert in h.captured.with_rule("count") {
        let seq = alert["event"]["ts_ns"].as_u64().unwrap();
        let version = alert["fields"]["version"].as_str().unwrap().to_string();
        seen.entry(seq).or_default().push(version);
    }
    seen
}

/// Waits until the registry's counter plugin has `version` in its config (or is absent).
fn wait_version(h: &Harness, want: Option<&str>, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let set = h.daemon.registry.snapshot();
        let current = set
            .detectors
            .iter()
            .find(|p| p.name() == "counter")
            .map(|p| {
                p.config
                    .iter()
                    .find(|(k, _)| k == "version")
                    .map(|(_, v)| format!("{v:?}"))
                    .unwrap_or_default()
            });
        let ok = match (want, &current) {
            (None, None) => true,
            (Some(v), Some(c)) => c.contains(&format!("\"{v}\"")),
            _ => false,
        };
        if ok {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "reload to {want:?} not applied within {timeout:?} (current {current:?})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn add_replace_broken_replace_and_delete_while_events_flow() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    let h = Harness::new("[engine]\nworkers = 2\nbatch_max = 16\n");
    let dir = h.plugins_dir();
    let _watch = h.daemon.watch_dir(dir.clone()).unwrap();
    let pipeline = h.start();
    let sink = pipeline.sink();

    // Feeder: one process, so every event lands on one worker in order; seq = ts_ns.
    let seq = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let feeder = {
        let seq = Arc::clone(&seq);
        let running = Arc::clone(&running);
        let sink = Arc::clone(&sink);
        std::thread::spawn(move || {
            let p = process(777, "feeder", "/usr/bin/feeder");
            while running.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::SeqCst) + 1;
                sink.submit(open_event(n, &p, "/tmp/feed"), Delivery::Backpressure);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };

    // Stops the feeder even when an assertion below panics, so the pipeline can drain.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Relaxed);
        }
    }
    let _stop_feeder = StopOnDrop(Arc::clone(&running));

    std::thread::sleep(Duration::from_millis(200));
    // Add.
    let counter = std::fs::read(test_plugin("counter")).unwrap();
    std::fs::write(dir.join("counter.toml"), sidecar(1)).unwrap();
    atomic_write(&dir, "counter.wasm", &counter);
    let took = wait_version(&h, Some("1"), Duration::from_secs(30));
    eprintln!("add applied after {took:?}");
    std::thread::sleep(Duration::from_millis(300));

    // Replace (new sidecar config = new version), atomic rename.
    atomic_write(&dir, "counter.toml", sidecar(2).as_bytes());
    let took = wait_version(&h, Some("2"), Duration::from_secs(5));
    assert!(
        took < Duration::from_secs(1),
        "replace took {took:?}, more than 1 s"
    );
    std::thread::sleep(Duration::from_millis(300));

    // Replace with a broken build: version 2 must keep running.
    atomic_write(
        &dir,
        "counter.wasm",
        b"\0asm\x0d\x00\x01\x00 truncated component",
    );
    std::thread::sleep(Duration::from_millis(800));
    wait_version(&h, Some("2"), Duration::from_millis(10));

    // Slow in-place write of the good component with a new sidecar: never half-loaded.
    std::fs::write(dir.join("counter.toml"), sidecar(3)).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.join("counter.wasm")).unwrap();
        let half = counter.len() / 2;
        f.write_all(&counter[..half]).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        f.write_all(&counter[half..]).unwrap();
    }
    wait_version(&h, Some("3"), Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));

    // Delete.
    std::fs::remove_file(dir.join("counter.wasm")).unwrap();
    let took = wait_version(&h, None, Duration::from_secs(5));
    assert!(took < Duration::from_secs(1), "delete took {took:?}");
    std::thread::sleep(Duration::from_millis(200));
    running.store(false, Ordering::Relaxed);
    feeder.join().unwrap();
    let total = seq.load(Ordering::SeqCst);
    pipeline.finish();

    let seen = counted(&h);
    // Nothing twice.
    let dup: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(dup.is_empty(), "events handled twice: {dup:?}");
    // Nothing lost while the plugin was loaded: the counted events form one contiguous range.
    let first = *seen.keys().next().expect("counter saw events");
    let last = *seen.keys().last().unwrap();
    assert_eq!(
        seen.len() as u64,
        last - first + 1,
        "gap in counted events (lost across a swap)"
    );
    assert!(last < total, "events after the delete were still counted");
    // Versions only move forward, each over one contiguous stretch: 1, then 2, then 3.
    let versions: Vec<&str> = seen.values().map(|v| v[0].as_str()).collect();
    let mut order: Vec<&str> = versions.clone();
    order.dedup();
    assert_eq!(order, vec!["1", "2", "3"], "versions in event order");
    // Both replaces reached the worker running `counter` as instances the reload path had
    // already built and initialised: the worker never instantiated on a swap.
    let metrics = &h.daemon.metrics;
    assert_eq!(
        metrics.swaps("counter", "handover"),
        2,
        "swaps via handover"
    );
    assert_eq!(
        metrics.swaps("counter", "worker"),
        0,
        "swaps the worker paid for"
    );
    eprintln!(
        "{total} events fed, {} counted ({first}..={last})",
        seen.len()
    );
}
