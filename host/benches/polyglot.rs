//! Per-language cost of the same detector: the `plugin new` scaffold (`exec-from-scratch-dir`)
//! in Rust, C, Python and JavaScript, each built by `palisade plugin build`'s code. For each:
//! component size, compile time (cache miss), cached-load time, instance memory (PSS and
//! private bytes per live instance, from /proc/self/smaps_rollup), and ns per event through
//! `on-events` in batches of 1 and 64 (realistic exec events, one in 64 alerting). Prints a
//! markdown table and a JSON line. Run: `cargo bench -p palisade-host --bench polyglot`
//! (needs the guest toolchains of `scripts/setup.sh`; env BENCH_EVENTS changes the event count).
#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use palisade::config::Config;
use palisade::daemon::Daemon;
use palisade::event::{Event, EventData, ExecData, Process};
use palisade::pack::polyglot::{self, BuildOptions};
use palisade::pack::scaffold::{build_project_with, new_project, Lang, NewOptions};
use palisade::plugin::convert::wit_batch;
use palisade::plugin::engine::PluginEngine;
use palisade::plugin::instance::Instance;
use palisade::plugin::registry::LoadRequest;
use palisade::plugin::PluginKind;

fn process(pid: u32, exe: &str) -> Arc<Process> {
    Arc::new(Process {
        pid,
        tid: pid,
        ppid: 1,
        uid: 1000,
        gid: 1000,
        euid: 1000,
        comm: exe
            .rsplit('/')
            .next()
            .unwrap_or(exe)
            .chars()
            .take(15)
            .collect(),
        exe: exe.into(),
        args: vec![exe.into(), "--serve".into(), "--port=8080".into()],
        cwd: "/srv/app".into(),
        start_ns: 123_456_789,
        ..Process::default()
    })
}

/// Exec events of a build-server-like workload; every 64th runs from /tmp (one alert).
fn events(n: usize) -> Vec<Arc<Event>> {
    let procs: Vec<_> = (0..8).map(|i| process(1000 + i, "/usr/bin/make")).collect();
    (0..n)
        .map(|i| {
            let filename = if i % 64 == 63 {
                format!("/tmp/build-{i}/payload")
            } else {
                format!("/usr/lib/gcc/x86_64-linux-gnu/12/cc1-{:03}", i % 100)
            };
            Arc::new(Event {
                ts_ns: i as u64,
                process: Arc::clone(&procs[(i / 16) % procs.len()]),
                data: EventData::Exec(ExecData {
                    args: vec![filename.clone(), "-quiet".into(), "main.c".into()],
                    filename,
                    args_truncated: false,
                }),
            })
        })
        .collect()
}

/// Pss and Private_* bytes of this process.
fn memory() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup")?;
    let kb = |key: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(key))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    };
    Ok((
        kb("Pss:") * 1024,
        (kb("Private_Clean:") + kb("Private_Dirty:")) * 1024,
    ))
}

/// Scaffolds and builds the detector in `lang` under `root`; returns its component.
fn build(root: &Path, lang: Lang) -> Result<(PathBuf, Duration)> {
    let name = format!("bench-{}", lang.as_str());
    let dir = root.join(&name);
    if !dir.exists() {
        new_project(&NewOptions {
            name: name.clone(),
            lang,
            kind: PluginKind::Detector,
            dir: dir.clone(),
            sdk_path: palisade::pack::scaffold::default_sdk_path(),
        })?;
    }
    let ws = xtask::workspace_root();
    let started = Instant::now();
    let wasm = match lang {
        Lang::Rust => {
            build_project_with(&dir, Some(&ws.join("target/scaffold")))
                .map_err(|e| anyhow!("{e}"))?
                .wasm
        }
        _ => {
            polyglot::build(
                &dir,
                &BuildOptions {
                    build_dir: Some(ws.join("target/bench-polyglot/build").join(&name)),
                    out_dir: None,
                    wit_dir: None,
                },
            )
            .map_err(|e| anyhow!("{e}"))?
            .wasm
        }
    };
    Ok((wasm, started.elapsed()))
}

struct Row {
    lang: &'static str,
    bytes: usize,
    build_s: f64,
    compile_ms: f64,
    cached_load_ms: f64,
    pss_per_instance: f64,
    private_per_instance: f64,
    ns_batch1: f64,
    ns_batch64: f64,
    alerts: usize,
}

fn main() -> Result<()> {
    let n_events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64_000);
    let ws = xtask::workspace_root();
    // Projects live in target/ so reruns reuse the build stamps.
    let projects = ws.join("target/bench-polyglot/projects");
    std::fs::create_dir_all(&projects)?;
    let evs = events(n_events);
    let deadline = Duration::from_secs(30);
    let mut rows = Vec::new();
    for lang in [Lang::Rust, Lang::C, Lang::Python, Lang::Js] {
        let (wasm, build_time) =
            build(&projects, lang).with_context(|| format!("building {}", lang.as_str()))?;
        let bytes = std::fs::read(&wasm)?;

        // Compile (cache miss) then cached load, with a fresh cache.
        let cache = tempfile::tempdir()?;
        let engine = PluginEngine::new(Some(cache.path()))?;
        let t = Instant::now();
        let (_, hit) = engine.compile("bench", &bytes)?;
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(!hit, "fresh cache hit");
        let t = Instant::now();
        let (_, hit) = engine.compile("bench", &bytes)?;
        let cached_load_ms = t.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(hit, "second compile missed the cache");

        let dir = tempfile::tempdir()?;
        let text = format!(
            "version = 1\n[plugins]\ndir = {:?}\ncache_dir = {:?}\nwatch = false\n[engine]\nworkers = 1\n[actions]\naudit_log = {:?}\n",
            dir.path().display().to_string(),
            ws.join("target/test-cache").display().to_string(),
            dir.path().join("audit.jsonl").display().to_string()
        );
        let daemon = Daemon::build(Config::from_toml_str(&text, "bench.toml")?, false)?;
        let loaded = daemon.registry.load(&LoadRequest::from_file(&wasm)?)?;
        let set = daemon.registry.snapshot();
        let plugin = set
            .detectors
            .iter()
            .find(|p| p.name() == loaded.name)
            .cloned()
            .ok_or_else(|| anyhow!("{} not loaded", loaded.name))?;
        let engine = Arc::clone(daemon.registry.engine());

        // Memory: 20 live instances that have each run a batch.
        let warm = wit_batch(evs[..64].iter());
        let (pss0, priv0) = memory()?;
        let mut instances = Vec::new();
        for _ in 0..20 {
            let mut inst = Instance::start(&engine, &plugin).map_err(|e| anyhow!("{e}"))?;
            inst.on_events(&warm, deadline, None)
                .map_err(|e| anyhow!("{e}"))?;
            instances.push(inst);
        }
        let (pss1, priv1) = memory()?;
        let mut inst = instances.pop().ok_or_else(|| anyhow!("no instance"))?;
        drop(instances);

        let mut per_batch = Vec::new();
        let mut alerts = 0;
        for batch in [1usize, 64] {
            // Batch 1 on an eighth of the events: Python/JS take µs per call.
            let evs_here = if batch == 1 {
                &evs[..evs.len() / 8]
            } else {
                &evs[..]
            };
            let started = Instant::now();
            let mut n_alerts = 0;
            for chunk in evs_here.chunks(batch) {
                let b = wit_batch(chunk.iter());
                let out = inst
                    .on_events(&b, deadline, None)
                    .map_err(|e| anyhow!("{e}"))?;
                n_alerts += out.len();
                black_box(out);
            }
            per_batch.push(started.elapsed().as_nanos() as f64 / evs_here.len() as f64);
            if batch == 64 {
                alerts = n_alerts;
            }
        }
        rows.push(Row {
            lang: lang.as_str(),
            bytes: bytes.len(),
            build_s: build_time.as_secs_f64(),
            compile_ms,
            cached_load_ms,
            pss_per_instance: pss1.saturating_sub(pss0) as f64 / 20.0,
            private_per_instance: priv1.saturating_sub(priv0) as f64 / 20.0,
            ns_batch1: per_batch[0],
            ns_batch64: per_batch[1],
            alerts,
        });
    }

    println!("| language | .wasm bytes | compile (cache miss) ms | cached load ms | PSS / instance KiB | private / instance KiB | ns/event, batch 1 | ns/event, batch 64 | alerts |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            r.lang,
            r.bytes,
            r.compile_ms,
            r.cached_load_ms,
            r.pss_per_instance / 1024.0,
            r.private_per_instance / 1024.0,
            r.ns_batch1,
            r.ns_batch64,
            r.alerts
        );
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "lang": r.lang, "bytes": r.bytes, "build_s": r.build_s, "compile_ms": r.compile_ms,
                "cached_load_ms": r.cached_load_ms, "pss_per_instance": r.pss_per_instance,
                "private_per_instance": r.private_per_instance, "ns_per_event_batch1": r.ns_batch1,
                "ns_per_event_batch64": r.ns_batch64, "alerts": r.alerts,
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({"bench": "polyglot", "events": n_events, "rows": json})
    );
    Ok(())
}
