//! Dispatch benchmark: ns per event per plugin through 1, 10 and 50 instances of the trivial
//! `bench-trivial` detector (one Store each, as in production), batched and one event per call,
//! next to the same logic compiled natively; plus end-to-end events/s through router, worker
//! and one plugin. Prints a markdown table and a JSON line. Run:
//! `cargo bench -p palisade-host --bench dispatch` (env BENCH_EVENTS to change the event count).
#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::config::Config;
use palisade::daemon::Daemon;
use palisade::event::source::Delivery;
use palisade::event::{Event, EventData, FileOpenData, Process};
use palisade::plugin::convert::wit_batch;
use palisade::plugin::instance::Instance;
use palisade::plugin::registry::LoadRequest;

fn process(pid: u32) -> Arc<Process> {
    Arc::new(Process {
        pid,
        tid: pid,
        ppid: 1,
        uid: 1000,
        gid: 1000,
        euid: 1000,
        comm: "worker".into(),
        exe: "/usr/bin/worker".into(),
        args: vec![
            "/usr/bin/worker".into(),
            "--serve".into(),
            "--port=8080".into(),
        ],
        cwd: "/srv/app".into(),
        start_ns: 123_456_789,
        ..Process::default()
    })
}

/// Realistic file opens: a handful of processes, paths ~30 bytes, none matching the prefix.
fn events(n: usize) -> Vec<Arc<Event>> {
    let procs: Vec<_> = (0..4).map(|i| process(1000 + i)).collect();
    (0..n)
        .map(|i| {
            Arc::new(Event {
                ts_ns: i as u64,
                process: Arc::clone(&procs[(i / 64) % procs.len()]),
                data: EventData::FileOpen(FileOpenData {
                    path: format!("/srv/app/static/asset-{:05}.css", i % 10_000),
                    flags: 0,
                    mode: 0,
                    result: Some(3),
                }),
            })
        })
        .collect()
}

/// String-free events (fork), to separate the per-call and per-event floor from string copies.
fn fork_events(n: usize) -> Vec<Arc<Event>> {
    let p = process(2000);
    (0..n)
        .map(|i| {
            Arc::new(Event {
                ts_ns: i as u64,
                process: Arc::clone(&p),
                data: EventData::Fork {
                    child_pid: 3000 + i as u32,
                },
            })
        })
        .collect()
}

/// The detector's logic, natively: the floor the WASM figures are compared with.
fn native(events: &[Arc<Event>], prefix: &str) -> usize {
    events
        .iter()
        .filter(|e| matches!(&e.data, EventData::FileOpen(f) if f.path.starts_with(prefix)))
        .count()
}

struct Row {
    kind: &'static str,
    plugins: usize,
    batch: usize,
    ns_per_event_per_plugin: f64,
    events_per_s: f64,
}

fn main() -> anyhow::Result<()> {
    let n_events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let built = xtask::build_plugins_once()?;
    let wasm = &built
        .test_plugin("bench-trivial")
        .ok_or_else(|| anyhow::anyhow!("bench-trivial not built"))?
        .wasm;
    let dir = tempfile::tempdir()?;
    let text = format!(
        "version = 1\n[plugins]\ndir = {:?}\ncache_dir = {:?}\nwatch = false\n[engine]\nworkers = 1\n[actions]\naudit_log = {:?}\n",
        built.test_plugins_dir.display().to_string(),
        xtask::workspace_root().join("target/test-cache").display().to_string(),
        dir.path().join("audit.jsonl").display().to_string()
    );
    let daemon = Daemon::build(Config::from_toml_str(&text, "bench.toml")?, false)?;
    daemon.registry.load(&LoadRequest::from_file(wasm)?)?;
    let set = daemon.registry.snapshot();
    let plugin = Arc::clone(&set.detectors[0]);
    let engine = Arc::clone(daemon.registry.engine());
    let evs = events(n_events);
    let forks = fork_events(n_events);
    let deadline = Duration::from_secs(10);

    let mut rows = Vec::new();
    for &plugins in &[1usize, 10, 50] {
        let mut instances: Vec<Instance> = (0..plugins)
            .map(|_| Instance::start(&engine, &plugin))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (kind, batch, evs) in [
            ("file_open", 1usize, &evs),
            ("file_open", 256, &evs),
            ("fork", 256, &forks),
        ] {
            // Batches are converted once per worker batch and shared by every plugin, as in
            // the worker; conversion is inside the timed region.
            let events_here = if batch == 1 {
                &evs[..evs.len() / 8]
            } else {
                &evs[..]
            };
            // Warm up.
            for inst in &mut instances {
                let b = wit_batch(events_here[..batch].iter());
                inst.on_events(&b, deadline, None)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let started = Instant::now();
            for chunk in events_here.chunks(batch) {
                let b = wit_batch(chunk.iter());
                for inst in &mut instances {
                    let alerts = inst
                        .on_events(&b, deadline, None)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    black_box(alerts);
                }
            }
            let elapsed = started.elapsed();
            let calls = (events_here.len() * plugins) as f64;
            rows.push(Row {
                kind,
                plugins,
                batch,
                ns_per_event_per_plugin: elapsed.as_nanos() as f64 / calls,
                events_per_s: events_here.len() as f64 / elapsed.as_secs_f64(),
            });
        }
    }

    // Native floor.
    let started = Instant::now();
    let mut hits = 0;
    for _ in 0..10 {
        hits += native(black_box(&evs), "/nonexistent/");
    }
    let native_ns = started.elapsed().as_nanos() as f64 / (evs.len() * 10) as f64;
    black_box(hits);

    // End to end: router -> worker -> one plugin -> (no alerts), events/s.
    let pipeline = daemon.start_pipeline("bench", Vec::new())?;
    let sink = pipeline.sink();
    let owned: Vec<Event> = evs.iter().map(|e| (**e).clone()).collect();
    let started = Instant::now();
    for event in owned {
        sink.submit(event, Delivery::Backpressure);
    }
    drop(sink);
    pipeline.finish();
    let e2e = evs.len() as f64 / started.elapsed().as_secs_f64();

    // Compile vs cached load, per first-party plugin.
    let mut load_rows = Vec::new();
    for p in &built.plugins {
        let cache = tempfile::tempdir()?;
        let engine = palisade::plugin::engine::PluginEngine::new(Some(cache.path()))?;
        let bytes = std::fs::read(&p.wasm)?;
        let t = Instant::now();
        let (_, hit) = engine.compile(&p.name, &bytes)?;
        let miss_ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(!hit);
        let t = Instant::now();
        let (_, hit) = engine.compile(&p.name, &bytes)?;
        let hit_ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(hit);
        load_rows.push((p.name.clone(), bytes.len(), miss_ms, hit_ms));
    }
    println!("| plugin | .wasm bytes | compile (cache miss) ms | cached load ms |");
    println!("|---|---:|---:|---:|");
    for (name, size, miss, hit) in &load_rows {
        println!("| {name} | {size} | {miss:.1} | {hit:.2} |");
    }
    println!();

    println!(
        "| event | plugins | events per call | ns per event per plugin | events/s (all plugins) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} |",
            r.kind, r.plugins, r.batch, r.ns_per_event_per_plugin, r.events_per_s
        );
    }
    println!("| file_open | native | - | {native_ns:.1} | - |");
    println!("\nend to end (router + worker + 1 plugin, batches up to 256): {e2e:.0} events/s\n");
    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::json!({"event": r.kind, "plugins": r.plugins, "batch": r.batch, "ns_per_event_per_plugin": r.ns_per_event_per_plugin, "events_per_s": r.events_per_s}))
        .collect();
    println!(
        "{}",
        serde_json::json!({"bench": "dispatch", "events": n_events, "rows": json_rows, "native_ns_per_event": native_ns, "end_to_end_events_per_s": e2e, "load": load_rows.iter().map(|(n, s, m, h)| serde_json::json!({"plugin": n, "bytes": s, "compile_ms": m, "cached_load_ms": h})).collect::<Vec<_>>()})
    );
    Ok(())
}
