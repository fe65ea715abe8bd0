//! Dispatch benchmark: ns per event per plugin through 1, 10 and 50 instances of the trivial
//! `bench-trivial` detector (one Store each, as in production), batched and one event per call,
//! next to the same logic compiled natively; plus end-to-end events/s through router, worker
//! and one plugin. Prints a markdown table and a JSON line. Run:
//! `cargo bench -p palisade-host --bench dispatch` (env BENCH_EVENTS: event count; BENCH_RUNS:
//! interleaved runs per row, median and range reported; BENCH_ONLY=file_open_batched: only
//! file_open, 10 plugins, 256 per call, for `perf record`; BENCH_PLUGIN: path of another build
//! of bench-trivial, e.g. unstripped; PALISADE_WASM_PERFMAP=1 lets perf name JIT code).
#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::config::Config;
use palisade::daemon::Daemon;
use palisade::event::source::Delivery;
use palisade::event::{Event, EventData, ExecData, FileOpenData, Process};
use palisade::plugin::convert::{wit_batch, wit_event_batch};
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

/// Exec events: a filename and three arguments, the one record with a nested list (`args`),
/// which costs a guest allocation per event and plugin.
fn exec_events(n: usize) -> Vec<Arc<Event>> {
    let p = process(3000);
    (0..n)
        .map(|i| {
            Arc::new(Event {
                ts_ns: i as u64,
                process: Arc::clone(&p),
                data: EventData::Exec(ExecData {
                    filename: "/usr/bin/python3".into(),
                    args: vec!["python3".into(), "-c".into(), format!("print({i})")],
                    args_truncated: false,
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

/// Median and range of one row's runs, in ns per event per plugin.
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Stats {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        }
    }
}

struct Row {
    kind: &'static str,
    lowering: &'static str,
    plugins: usize,
    batch: usize,
    stats: Stats,
    events_per_s: f64,
}

/// The events one row sends: unbatched calls are slow, so they get an eighth of the events.
fn events_for(evs: &[Arc<Event>], batch: usize) -> &[Arc<Event>] {
    if batch == 1 {
        &evs[..evs.len() / 8]
    } else {
        evs
    }
}

/// How a row's batches reach the plugins.
#[derive(Clone, Copy, PartialEq)]
enum Lowering {
    /// The daemon's path: a canonical-ABI image built once per batch, copied into each plugin.
    Image,
    /// wasmtime's generated lowering of the WIT values, field by field per plugin (the path
    /// before the image; kept as the baseline).
    Wasmtime,
}

/// Sends `evs` in batches of `batch` to every instance, as the worker does: each batch is
/// converted once and shared by every plugin, the conversion inside the timed region.
fn time_dispatch(
    instances: &mut [Instance],
    evs: &[Arc<Event>],
    batch: usize,
    lowering: Lowering,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let evs = events_for(evs, batch);
    let call = |inst: &mut Instance, chunk: &[Arc<Event>]| -> anyhow::Result<()> {
        let alerts = match lowering {
            Lowering::Image => inst.on_events(&wit_batch(chunk.iter()), deadline, None),
            Lowering::Wasmtime => {
                inst.on_events_typed(&wit_event_batch(chunk.iter()), deadline, None)
            }
        };
        black_box(alerts.map_err(|e| anyhow::anyhow!("{e}"))?);
        Ok(())
    };
    // Warm up.
    for inst in instances.iter_mut() {
        call(inst, &evs[..batch])?;
    }
    let started = Instant::now();
    for chunk in evs.chunks(batch) {
        match lowering {
            Lowering::Image => {
                let b = wit_batch(chunk.iter());
                for inst in instances.iter_mut() {
                    black_box(
                        inst.on_events(&b, deadline, None)
                            .map_err(|e| anyhow::anyhow!("{e}"))?,
                    );
                }
            }
            Lowering::Wasmtime => {
                let b = wit_event_batch(chunk.iter());
                for inst in instances.iter_mut() {
                    black_box(
                        inst.on_events_typed(&b, deadline, None)
                            .map_err(|e| anyhow::anyhow!("{e}"))?,
                    );
                }
            }
        }
    }
    Ok(started.elapsed())
}

fn main() -> anyhow::Result<()> {
    let n_events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let built = xtask::build_plugins_once()?;
    // BENCH_PLUGIN: another build of bench-trivial (e.g. unstripped, for perf to name guest code).
    let wasm = match std::env::var_os("BENCH_PLUGIN") {
        Some(path) => std::path::PathBuf::from(path),
        None => built
            .test_plugin("bench-trivial")
            .ok_or_else(|| anyhow::anyhow!("bench-trivial not built"))?
            .wasm
            .clone(),
    };
    let wasm = &wasm;
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
    let execs = exec_events(n_events);
    let deadline = Duration::from_secs(10);

    // Every row is measured `runs` times, the runs interleaved (run 1 of every row, then run 2,
    // ...) so a slow phase of the machine spreads over all rows; the table gives the median and
    // the range. BENCH_ONLY=file_open_batched measures just that row (for perf record).
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let only = std::env::var("BENCH_ONLY").ok();
    if only.as_deref() == Some("build") {
        // The host's batch build alone, on one cache-hot batch and streaming over all events.
        for _ in 0..5 {
            let hot = &evs[..256];
            let started = Instant::now();
            for _ in 0..2000 {
                black_box(wit_batch(hot.iter()));
            }
            let hot_ns = started.elapsed().as_nanos() as f64 / (256.0 * 2000.0);
            let started = Instant::now();
            for chunk in evs.chunks(256) {
                black_box(wit_batch(chunk.iter()));
            }
            let cold_ns = started.elapsed().as_nanos() as f64 / evs.len() as f64;
            println!("build: hot {hot_ns:.1} ns/event, streaming {cold_ns:.1} ns/event");
        }
        return Ok(());
    }
    let plugin_counts: &[usize] = match only.as_deref() {
        Some("file_open_batched") => &[10],
        _ => &[1, 10, 50],
    };
    let mut pools = Vec::new();
    for &plugins in plugin_counts {
        let instances: Vec<Instance> = (0..plugins)
            .map(|_| Instance::start(&engine, &plugin))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        pools.push((plugins, instances));
    }
    let cases: &[(&str, usize, Lowering)] = match only.as_deref() {
        Some("file_open_batched") => &[("file_open", 256, Lowering::Image)],
        _ => &[
            ("file_open", 1, Lowering::Image),
            ("file_open", 256, Lowering::Image),
            ("file_open", 256, Lowering::Wasmtime),
            ("fork", 256, Lowering::Image),
            ("exec", 256, Lowering::Image),
        ],
    };
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); pools.len() * cases.len()];
    let mut build_samples = Vec::new();
    let mut native_samples = Vec::new();
    let load_before = loadavg();
    for _ in 0..runs {
        for (p, (plugins, instances)) in pools.iter_mut().enumerate() {
            for (c, &(kind, batch, lowering)) in cases.iter().enumerate() {
                let evs = match kind {
                    "fork" => &forks,
                    "exec" => &execs,
                    _ => &evs,
                };
                let elapsed = time_dispatch(instances, evs, batch, lowering, deadline)?;
                let events_here = events_for(evs, batch).len();
                samples[p * cases.len() + c]
                    .push(elapsed.as_nanos() as f64 / (events_here * *plugins) as f64);
            }
        }
        // The host's share alone: building the shared WIT batches, no plugin called.
        let started = Instant::now();
        for chunk in evs.chunks(256) {
            black_box(wit_batch(chunk.iter()));
        }
        build_samples.push(started.elapsed().as_nanos() as f64 / evs.len() as f64);
        // Native floor: the same logic compiled into the host.
        let started = Instant::now();
        let mut hits = 0;
        for _ in 0..10 {
            hits += native(black_box(&evs), "/nonexistent/");
        }
        native_samples.push(started.elapsed().as_nanos() as f64 / (evs.len() * 10) as f64);
        black_box(hits);
    }
    let mut rows = Vec::new();
    for (p, (plugins, _)) in pools.iter().enumerate() {
        for (c, &(kind, batch, lowering)) in cases.iter().enumerate() {
            let stats = Stats::of(&samples[p * cases.len() + c]);
            rows.push(Row {
                kind,
                lowering: match lowering {
                    Lowering::Image => "image",
                    Lowering::Wasmtime => "wasmtime",
                },
                plugins: *plugins,
                batch,
                // Each event goes through every plugin.
                events_per_s: 1e9 / (stats.median * *plugins as f64),
                stats,
            });
        }
    }
    let build = Stats::of(&build_samples);
    let native_stats = Stats::of(&native_samples);
    drop(pools);

    // End to end: router -> worker -> one plugin -> (no alerts), events/s.
    let e2e = if only.is_some() {
        None
    } else {
        let pipeline = daemon.start_pipeline("bench", Vec::new())?;
        let sink = pipeline.sink();
        let owned: Vec<Event> = evs.iter().map(|e| (**e).clone()).collect();
        let started = Instant::now();
        for event in owned {
            sink.submit(event, Delivery::Backpressure);
        }
        drop(sink);
        pipeline.finish();
        Some(evs.len() as f64 / started.elapsed().as_secs_f64())
    };

    // Compile vs cached load, per first-party plugin.
    let mut load_rows = Vec::new();
    for p in built.plugins.iter().filter(|_| only.is_none()) {
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
    if !load_rows.is_empty() {
        println!("| plugin | .wasm bytes | compile (cache miss) ms | cached load ms |");
        println!("|---|---:|---:|---:|");
        for (name, size, miss, hit) in &load_rows {
            println!("| {name} | {size} | {miss:.1} | {hit:.2} |");
        }
        println!();
    }

    let load_after = loadavg();
    println!(
        "{n_events} events, {runs} interleaved runs per row; load average before {load_before}, after {load_after}; lowering: image = the daemon's prebuilt batch, wasmtime = generated field-by-field lowering (the old path)\n"
    );
    println!(
        "| event | lowering | plugins | events per call | ns per event per plugin (median) | range | events/s (all plugins) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0}–{:.0} | {:.0} |",
            r.kind,
            r.lowering,
            r.plugins,
            r.batch,
            r.stats.median,
            r.stats.min,
            r.stats.max,
            r.events_per_s
        );
    }
    println!(
        "| file_open | native | native | - | {:.1} | {:.1}–{:.1} | - |",
        native_stats.median, native_stats.min, native_stats.max
    );
    println!(
        "\nhost batch build alone (wit_batch, 256 events per batch): {:.0} ns per event (range {:.0}–{:.0})",
        build.median, build.min, build.max
    );
    if let Some(e2e) = e2e {
        println!("end to end (router + worker + 1 plugin, batches up to 256): {e2e:.0} events/s");
    }
    println!();
    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::json!({"event": r.kind, "lowering": r.lowering, "plugins": r.plugins, "batch": r.batch, "ns_per_event_per_plugin": r.stats.median, "min": r.stats.min, "max": r.stats.max, "events_per_s": r.events_per_s}))
        .collect();
    println!(
        "{}",
        serde_json::json!({"bench": "dispatch", "events": n_events, "runs": runs, "loadavg_before": load_before, "loadavg_after": load_after, "rows": json_rows, "native_ns_per_event": native_stats.median, "host_batch_build_ns_per_event": build.median, "end_to_end_events_per_s": e2e, "load": load_rows.iter().map(|(n, s, m, h)| serde_json::json!({"plugin": n, "bytes": s, "compile_ms": m, "cached_load_ms": h})).collect::<Vec<_>>()})
    );
    Ok(())
}

/// The 1/5/15-minute load averages, as the docs report them beside wall-clock figures.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
