//! End-to-end throughput benchmark of issue 3 (figures, not a timed test; root; ignored by
//! default):
//!
//! ```sh
//! sudo cargo test --release -p palisade-host --test kernel_throughput -- --ignored --nocapture
//! ```
//!
//! The real `palisade run` (kernel source) with ONE plugin subscribed to every event of the
//! workload's kind, so every event goes the whole way: ring buffer, decode, process
//! enrichment, router, worker queue, one WebAssembly call per batch. Workloads: a tight
//! open/close loop (`bench-trivial`: every file_open, alerts only under a prefix the loop never
//! touches) and a fork+exec loop of `/bin/true` (`shell-spawn`: every exec). Figures come from
//! the daemon's own Prometheus counters, scraped before and after: events emitted by the
//! kernel, lost in the kernel, dropped in userspace (router and plugin queues), routed to the
//! plugin; and the daemon's CPU. Prints a markdown table and a JSON line.
//! `PALISADE_BENCH_SECS` (default 5) sets the length of each workload.
#![cfg(feature = "ebpf")]
#![expect(
    unsafe_code,
    reason = "the open loop calls open/close directly; signals to the daemon"
)]
#![expect(
    clippy::unwrap_used,
    clippy::print_stderr,
    clippy::print_stdout,
    reason = "a benchmark panics on failure and reports on stdout/stderr"
)]

mod support;

use std::ffi::CString;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/root.rs"]
mod root;
use daemon::{sum, DaemonProcess};
use root::is_root;

/// Runs `op` in a tight loop for `secs`; returns the iterations done.
fn tight_loop(secs: f64, mut op: impl FnMut()) -> u64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while !n.is_multiple_of(256) || Instant::now() < deadline {
        op();
        n += 1;
    }
    n
}

struct Row {
    workload: &'static str,
    plugin: &'static str,
    ops_per_s: f64,
    emitted_per_s: f64,
    routed_per_s: f64,
    lost: f64,
    dropped: f64,
    daemon_cpu_pct: f64,
    /// Batch calls into the plugin and their total wall time.
    calls: f64,
    call_secs: f64,
    /// Dropped events by metric sample (router causes, plugin queue).
    drops: Vec<(String, f64)>,
}

#[test]
#[ignore = "benchmark; run explicitly as root"]
fn bench_kernel_to_plugin() {
    if !is_root() {
        let _ = std::io::stderr()
            .write_all(b"SKIPPED (needs root): kernel_throughput::bench_kernel_to_plugin\n");
        return;
    }
    let secs: f64 = std::env::var("PALISADE_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("opened");
    std::fs::write(&file, b"x").unwrap();
    let cfile = CString::new(file.to_str().unwrap()).unwrap();

    let mut rows = Vec::new();
    for (workload, kind, plugin, wasm) in [
        (
            "open/close loop",
            "file_open",
            "bench-trivial",
            test_plugin("bench-trivial"),
        ),
        (
            "exec loop",
            "exec",
            "shell-spawn",
            support::plugin("shell-spawn"),
        ),
    ] {
        let dir = scratch.path().join(format!("plugins-{plugin}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&wasm, dir.join(format!("{plugin}.wasm"))).unwrap();
        let sidecar = wasm.with_extension("toml");
        if sidecar.exists() {
            std::fs::copy(&sidecar, dir.join(format!("{plugin}.toml"))).unwrap();
        }
        // PALISADE_BENCH_QUEUE overrides engine.queue_capacity (to see what buffer a burst
        // needs).
        let queue = std::env::var("PALISADE_BENCH_QUEUE").unwrap_or_else(|_| "8192".to_owned());
        let daemon = DaemonProcess::start(
            &dir,
            scratch.path(),
            &format!("[engine]\nqueue_capacity = {queue}"),
            &["--no-watch"],
        );
        // Let start-up work (instance creation on the first batch) settle.
        std::thread::sleep(Duration::from_millis(500));
        let before = daemon.scrape();
        let cpu0 = daemon.cpu_secs();
        let t0 = Instant::now();
        let ops = match kind {
            "file_open" => tight_loop(secs, || {
                // SAFETY: a valid C string; the fd is closed at once.
                unsafe {
                    let fd = libc::open(cfile.as_ptr(), libc::O_RDONLY);
                    assert!(fd >= 0);
                    libc::close(fd);
                }
            }),
            _ => tight_loop(secs, || {
                assert!(Command::new("/bin/true").status().unwrap().success());
            }),
        };
        let elapsed = t0.elapsed().as_secs_f64();
        // Let the queues drain before the final scrape.
        std::thread::sleep(Duration::from_millis(1500));
        let cpu = daemon.cpu_secs() - cpu0;
        let after = daemon.scrape();
        daemon.stop();
        let delta = |prefix: &str, labels: &[&str]| {
            sum(&after, prefix, labels) - sum(&before, prefix, labels)
        };
        let kind_label = format!("kind=\"{kind}\"");
        let emitted = delta(
            "palisade_kernel_events_total",
            &[&kind_label, "outcome=\"emitted\""],
        );
        let lost = delta("palisade_kernel_events_total", &["outcome=\"lost\""]);
        // Every queue drop is counted by cause here (and again per plugin below).
        let dropped = delta("palisade_events_dropped_total", &[]);
        let routed = delta("palisade_events_routed_total", &[]);
        let calls = delta("palisade_plugin_calls_total", &[]);
        let call_secs = delta("palisade_plugin_call_duration_seconds_sum", &[]);
        let drops: Vec<(String, f64)> = after
            .keys()
            .filter(|k| {
                k.starts_with("palisade_events_dropped_total")
                    || k.starts_with("palisade_plugin_queue_dropped_total")
            })
            .map(|k| (k.clone(), delta(k, &[])))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        assert!(
            emitted >= ops as f64,
            "{workload}: the kernel emitted {emitted} {kind} events for {ops} operations"
        );
        rows.push(Row {
            workload,
            plugin,
            ops_per_s: ops as f64 / elapsed,
            emitted_per_s: emitted / elapsed,
            routed_per_s: routed / elapsed,
            lost,
            dropped,
            daemon_cpu_pct: cpu / elapsed * 100.0,
            calls,
            call_secs,
            drops,
        });
    }

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nKernel -> one subscribed plugin, {secs} s per workload; load average {}\n",
        load.trim()
    );
    println!("| workload | plugin | operations/s | events emitted/s | events routed to the plugin/s | lost in kernel | dropped in userspace | daemon CPU (% of one core) |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0}% |",
            r.workload,
            r.plugin,
            r.ops_per_s,
            r.emitted_per_s,
            r.routed_per_s,
            r.lost,
            r.dropped,
            r.daemon_cpu_pct
        );
    }
    for r in &rows {
        println!(
            "{}: {:.0} batch calls, {:.1} events per call, {:.1} us per call; drops: {:?}",
            r.workload,
            r.calls,
            r.routed_per_s * secs / r.calls.max(1.0),
            r.call_secs / r.calls.max(1.0) * 1e6,
            r.drops
        );
    }
    let json: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"workload\":\"{}\",\"plugin\":\"{}\",\"ops_per_s\":{:.0},\"emitted_per_s\":{:.0},\"routed_per_s\":{:.0},\"lost\":{:.0},\"dropped\":{:.0},\"daemon_cpu_pct\":{:.1}}}",
                r.workload, r.plugin, r.ops_per_s, r.emitted_per_s, r.routed_per_s, r.lost, r.dropped, r.daemon_cpu_pct
            )
        })
        .collect();
    println!(
        "{{\"bench\":\"kernel_to_plugin\",\"secs\":{secs},\"loadavg\":\"{}\",\"rows\":[{}]}}",
        load.trim(),
        json.join(",")
    );
}
