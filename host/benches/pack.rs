//! Whole-pack benchmark: the detector pack's cost per event on a recorded capture of a normal
//! workload (kernel source, JSON Lines). Each pack plugin gets the events its subscriptions
//! route to it, in batches of up to 256, converted and called as a worker does; the sum over
//! plugins is the pack's cost per captured event. Then the same capture goes end to end through
//! the daemon's pipeline (router, workers, every plugin, alert bus) for events/s. Prints a
//! markdown table and a JSON line. Run:
//! `cargo bench -p palisade-host --bench pack` (env BENCH_CAPTURE=FILE for another capture,
//! BENCH_EVENTS=N for the number of events timed; the capture is repeated to reach it).
#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use palisade::config::Config;
use palisade::daemon::Daemon;
use palisade::event::source::Delivery;
use palisade::event::Event;
use palisade::plugin::convert::wit_batch;
use palisade::plugin::instance::Instance;
use palisade::plugin::registry::LoadRequest;

/// The pack's detectors (notify-high is a responder: it sees alerts, not events).
const PACK: &[&str] = &[
    "falco-files",
    "falco-process",
    "falco-container",
    "falco-network",
    "falco-system",
    "sequences",
    "sensitive-files",
    "shell-spawn",
];
const BATCH: usize = 256;

struct Row {
    plugin: String,
    routed: usize,
    alerts: usize,
    ns_per_routed: f64,
    ns_per_event: f64,
}

fn load_capture(path: &PathBuf) -> anyhow::Result<Vec<Event>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read capture {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not an event", path.display(), i + 1))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let root = xtask::workspace_root();
    let capture = std::env::var_os("BENCH_CAPTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("examples/events/normal-workload.jsonl"));
    let target: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let recorded = load_capture(&capture)?;
    anyhow::ensure!(
        !recorded.is_empty(),
        "{} holds no events",
        capture.display()
    );
    // Repeat the capture to `target` events, shifting time so windows keep moving forward.
    let span = recorded.last().map_or(0, |e| e.ts_ns) - recorded[0].ts_ns + 1;
    let events: Vec<Arc<Event>> = (0..)
        .flat_map(|round: u64| {
            recorded.iter().map(move |e| {
                let mut e = e.clone();
                e.ts_ns += round * span;
                Arc::new(e)
            })
        })
        .take(target.max(recorded.len()))
        .collect();
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in &recorded {
        *kinds.entry(e.kind().as_str()).or_default() += 1;
    }

    let built = xtask::build_plugins_once()?;
    let dir = tempfile::tempdir()?;
    let text = format!(
        "version = 1\n[plugins]\ndir = {:?}\ncache_dir = {:?}\nwatch = false\n[actions]\naudit_log = {:?}\n",
        built.plugins_dir.display().to_string(),
        root.join("target/test-cache").display().to_string(),
        dir.path().join("audit.jsonl").display().to_string()
    );
    let daemon = Daemon::build(Config::from_toml_str(&text, "bench.toml")?, false)?;
    for name in PACK {
        let plugin = built
            .plugin(name)
            .ok_or_else(|| anyhow::anyhow!("plugin {name} not built"))?;
        // from_file picks up the shipped sidecar beside the component.
        daemon
            .registry
            .load(&LoadRequest::from_file(&plugin.wasm)?)?;
    }
    let set = daemon.registry.snapshot();
    let engine = Arc::clone(daemon.registry.engine());
    let deadline = Duration::from_secs(10);

    // Per plugin: route, convert, call, in worker-sized batches.
    let mut rows = Vec::new();
    let mut route_ns = 0u128;
    for plugin in &set.detectors {
        let t = Instant::now();
        let routed: Vec<Arc<Event>> = events
            .iter()
            .filter(|e| plugin.interest.matches(e))
            .cloned()
            .collect();
        route_ns += t.elapsed().as_nanos();
        let mut inst = Instance::start(&engine, plugin)
            .map_err(|e| anyhow::anyhow!("{}: {e}", plugin.name()))?;
        if let Some(warm) = routed.get(..BATCH.min(routed.len())) {
            inst.on_events(&wit_batch(warm.iter()), deadline, None)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        // A fresh instance, so warm-up state does not shape the timed run.
        let mut inst = Instance::start(&engine, plugin)
            .map_err(|e| anyhow::anyhow!("{}: {e}", plugin.name()))?;
        let mut alerts = 0;
        let started = Instant::now();
        for chunk in routed.chunks(BATCH) {
            let out = inst
                .on_events(&wit_batch(chunk.iter()), deadline, None)
                .map_err(|e| anyhow::anyhow!("{}: {e}", plugin.name()))?;
            alerts += out.len();
            black_box(out);
        }
        let ns = started.elapsed().as_nanos() as f64;
        rows.push(Row {
            plugin: plugin.name().to_string(),
            routed: routed.len(),
            alerts,
            ns_per_routed: if routed.is_empty() {
                0.0
            } else {
                ns / routed.len() as f64
            },
            ns_per_event: ns / events.len() as f64,
        });
    }
    rows.sort_by(|a, b| a.plugin.cmp(&b.plugin));
    let route_per_event = route_ns as f64 / events.len() as f64;
    let pack_per_event: f64 = rows.iter().map(|r| r.ns_per_event).sum::<f64>() + route_per_event;

    // End to end: router -> workers -> every plugin -> alert bus (no output).
    let pipeline = daemon.start_pipeline("bench", Vec::new())?;
    let sink = pipeline.sink();
    let owned: Vec<Event> = events.iter().map(|e| (**e).clone()).collect();
    let started = Instant::now();
    for event in owned {
        sink.submit(event, Delivery::Backpressure);
    }
    drop(sink);
    let e2e_alerts = pipeline.finish();
    let e2e_secs = started.elapsed().as_secs_f64();
    let e2e = events.len() as f64 / e2e_secs;

    println!(
        "capture: {} ({} events: {}); timed over {} events\n",
        capture.display(),
        recorded.len(),
        kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        events.len()
    );
    println!(
        "| plugin | routed events | routed % | alerts | ns per routed event | ns per captured event |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {} | {:.0} | {:.1} |",
            r.plugin,
            r.routed,
            100.0 * r.routed as f64 / events.len() as f64,
            r.alerts,
            r.ns_per_routed,
            r.ns_per_event
        );
    }
    println!(
        "| (routing: subscription match, all plugins) | - | - | - | - | {route_per_event:.1} |"
    );
    println!(
        "| **whole pack, one core** | - | - | - | - | **{pack_per_event:.0}** ({:.0} events/s) |",
        1e9 / pack_per_event
    );
    println!(
        "\nend to end (router + {} worker(s) + {} plugins + alert bus, batches up to {}): {e2e:.0} events/s, {:.0} ns per event wall, {e2e_alerts} alerts\n",
        daemon.config.engine.workers,
        rows.len(),
        daemon.config.engine.batch_max,
        1e9 / e2e
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "pack",
            "capture": capture.display().to_string(),
            "capture_events": recorded.len(),
            "events": events.len(),
            "kinds": kinds,
            "plugins": rows.iter().map(|r| serde_json::json!({
                "plugin": r.plugin, "routed": r.routed, "alerts": r.alerts,
                "ns_per_routed_event": r.ns_per_routed, "ns_per_captured_event": r.ns_per_event,
            })).collect::<Vec<_>>(),
            "routing_ns_per_event": route_per_event,
            "pack_ns_per_event": pack_per_event,
            "pack_events_per_s_one_core": 1e9 / pack_per_event,
            "end_to_end_events_per_s": e2e,
            "end_to_end_workers": daemon.config.engine.workers,
            "end_to_end_alerts": e2e_alerts,
        })
    );
    Ok(())
}
