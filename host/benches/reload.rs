//! Reload handover benchmark: how long a dispatch worker stalls when a plugin it is running is
//! swapped for a new generation. For each plugin, one worker runs a batch of the bundled example
//! events (`examples/events/{demo-attack,benign}.jsonl`) until warm, then the reload path loads
//! the plugin again (a new generation) `BENCH_SWAPS` times; after each load the worker's next
//! batch is timed against the median of the batches that follow it. The difference is the
//! stall the swap cost the worker (instantiate + `init` when the worker builds the instance
//! itself; taking over a prepared instance when the reload path hands one over).
//!
//! Prints a markdown table and a JSON line. Run:
//! `cargo bench -p palisade-host --bench reload`
//! Env: `BENCH_SWAPS` (default 40); `BENCH_RELOAD_WASM=a.wasm,b.wasm` adds components (e.g.
//! Python or JS guests; a sidecar `<stem>.toml` beside each is used); `BENCH_RELOAD_COLD=1`
//! also measures with the handover switched off (the worker instantiates, as before it existed).
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its figures"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::config::Config;
use palisade::daemon::Daemon;
use palisade::dispatch::worker::{Worker, WorkerSettings};
use palisade::event::replay::parse_event_line;
use palisade::event::Event;
use palisade::plugin::registry::LoadRequest;

struct Row {
    plugin: String,
    mode: &'static str,
    swaps: usize,
    reload_ms_median: f64,
    batch_us_median: f64,
    stall_us: Vec<f64>,
    /// Mean of the worker's own `plugin_swap_stall_seconds` (the swap step alone, without the
    /// fresh instance's first batch), µs.
    in_worker_us: f64,
}

/// Mean of `palisade_plugin_swap_stall_seconds{plugin, via}` from the exposition, µs.
fn in_worker_mean_us(daemon: &Daemon, plugin: &str, via: &str) -> f64 {
    let text = daemon.metrics.encode();
    let labels = format!("{{plugin=\"{plugin}\",via=\"{via}\"}}");
    let value = |suffix: &str| {
        let prefix = format!("palisade_plugin_swap_stall_seconds_{suffix}{labels} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    value("sum") / value("count") * 1e6
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn example_events() -> anyhow::Result<Vec<Arc<Event>>> {
    let root = xtask::workspace_root().join("examples/events");
    let mut events = Vec::new();
    for file in ["demo-attack.jsonl", "benign.jsonl"] {
        let text = std::fs::read_to_string(root.join(file))?;
        // Blank lines and `#` comments are skipped, as the replay source does.
        for line in text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            events.push(Arc::new(parse_event_line(line)?));
        }
    }
    Ok(events)
}

fn daemon(dir: &std::path::Path) -> anyhow::Result<Daemon> {
    let text = format!(
        "version = 1\n[plugins]\ndir = {:?}\ncache_dir = {:?}\nwatch = false\n[engine]\nworkers = 1\n[actions]\naudit_log = {:?}\n",
        dir.display().to_string(),
        xtask::workspace_root()
            .join("target/test-cache")
            .display()
            .to_string(),
        dir.join("audit.jsonl").display().to_string()
    );
    Ok(Daemon::build(
        Config::from_toml_str(&text, "bench.toml")?,
        false,
    )?)
}

/// Swaps `wasm` under one worker `swaps` times; None when no bench event reaches the plugin.
fn measure(
    wasm: &std::path::Path,
    swaps: usize,
    cold: bool,
    events: &[Arc<Event>],
) -> anyhow::Result<Option<Row>> {
    let dir = tempfile::tempdir()?;
    let daemon = daemon(dir.path())?;
    let registry = Arc::clone(&daemon.registry);
    set_handover(&daemon, !cold);
    let req = LoadRequest::from_file(wasm)?;
    let name = registry.load(&req)?.name;
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut worker = Worker::new(
        0,
        Arc::clone(&registry),
        tx,
        WorkerSettings {
            batch_max: events.len(),
            idle_release: Duration::from_secs(3600),
            hostname: "bench".into(),
        },
    );
    for _ in 0..20 {
        worker.process(events);
    }
    if daemon.metrics.calls(&name) == 0 {
        return Ok(None);
    }
    let mut reload_ms = Vec::new();
    let mut steady_us = Vec::new();
    let mut stall_us = Vec::new();
    for _ in 0..swaps {
        let t = Instant::now();
        registry.load(&req)?;
        reload_ms.push(t.elapsed().as_secs_f64() * 1e3);
        // Let the old instance's teardown (if handed off) finish before timing the worker.
        std::thread::sleep(Duration::from_millis(2));
        let t = Instant::now();
        worker.process(events);
        let first = t.elapsed().as_secs_f64() * 1e6;
        let mut after = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            worker.process(events);
            after.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let steady = median(after);
        steady_us.push(steady);
        stall_us.push((first - steady).max(0.0));
        rx.try_iter().for_each(drop);
    }
    stall_us.sort_by(f64::total_cmp);
    let in_worker_us = in_worker_mean_us(&daemon, &name, if cold { "worker" } else { "handover" });
    Ok(Some(Row {
        plugin: name,
        mode: if cold {
            "worker instantiates"
        } else {
            "handover"
        },
        swaps,
        reload_ms_median: median(reload_ms),
        batch_us_median: median(steady_us),
        stall_us,
        in_worker_us,
    }))
}

/// Switches the reload path's handover on or off.
fn set_handover(daemon: &Daemon, on: bool) {
    daemon.registry.handover().set_prewarm(on);
}

fn main() -> anyhow::Result<()> {
    let swaps: usize = std::env::var("BENCH_SWAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let cold_too = std::env::var("BENCH_RELOAD_COLD").is_ok_and(|v| v == "1");
    let built = xtask::build_plugins_once()?;
    let mut wasms: Vec<PathBuf> = Vec::new();
    for name in ["bench-trivial", "counter"] {
        if let Some(p) = built.test_plugin(name) {
            wasms.push(p.wasm.clone());
        }
    }
    for name in ["sensitive-files", "falco-process"] {
        if let Some(p) = built.plugin(name) {
            wasms.push(p.wasm.clone());
        }
    }
    if let Ok(extra) = std::env::var("BENCH_RELOAD_WASM") {
        wasms.extend(
            extra
                .split(',')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        );
    }
    let events = example_events()?;
    let mut rows = Vec::new();
    for wasm in &wasms {
        let modes: &[bool] = if cold_too { &[true, false] } else { &[false] };
        for &cold in modes {
            match measure(wasm, swaps, cold, &events)? {
                Some(row) => rows.push(row),
                None => eprintln!(
                    "{}: no bench event reaches this plugin; skipped",
                    wasm.display()
                ),
            }
        }
    }
    println!(
        "| plugin | swap | swaps | reload path ms (median) | batch µs (median, {} events) | stall µs median | p90 | max | swap step in worker µs (mean) |",
        events.len()
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |",
            r.plugin,
            r.mode,
            r.swaps,
            r.reload_ms_median,
            r.batch_us_median,
            percentile(&r.stall_us, 0.5),
            percentile(&r.stall_us, 0.9),
            percentile(&r.stall_us, 1.0),
            r.in_worker_us,
        );
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "plugin": r.plugin,
                "mode": r.mode,
                "swaps": r.swaps,
                "reload_ms_median": r.reload_ms_median,
                "batch_us_median": r.batch_us_median,
                "stall_us_median": percentile(&r.stall_us, 0.5),
                "stall_us_p90": percentile(&r.stall_us, 0.9),
                "stall_us_max": percentile(&r.stall_us, 1.0),
                "swap_step_in_worker_us_mean": r.in_worker_us,
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({"bench": "reload", "events_per_batch": events.len(), "rows": json})
    );
    Ok(())
}
