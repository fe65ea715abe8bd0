//! Kernel programs follow the plugins' subscriptions (root only; `cargo test -p palisade-host
//! --features ebpf --test kernel_programs`): the programs of kinds no loaded plugin subscribes
//! to are detached (an attached syscall tracepoint slows every syscall of every task even when
//! its filter word drops everything), attached again before a subscribing plugin is published,
//! and detached after it is removed. Attachment is checked in the kernel's own link list (this
//! process's bpf_link fds), not in the loader's bookkeeping. The `path-watch` test plugin
//! subscribes to opens under `/tmp/palisade-kfilter/watched/`. Without root the test prints a
//! loud `SKIPPED (needs root)` line.
#![cfg(feature = "ebpf")]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code panics on failure"
)]

mod support;

use std::io::Write;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use palisade::ebpf::{EbpfConfig, EbpfSource};
use palisade::event::source::{EventSource, StopFlag};
use palisade::event::EventKind;
use support::{test_plugin, Harness};

const WATCHED: &str = "/tmp/palisade-kfilter/watched";

#[path = "support/root.rs"]
mod root;

fn skip(test: &str) -> bool {
    root::skip_unless_root(&format!("kernel_programs::{test}"), "loads eBPF programs")
}

fn note(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Opens `path` `n` times from a `/bin/sh` child (`: < path` is one openat each).
fn open_n(path: &str, n: u32) {
    let status = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("i=0; while [ $i -lt {n} ]; do : < '{path}'; i=$((i+1)); done"),
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

fn file(dir: &str, name: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = format!("{dir}/{name}");
    std::fs::write(&path, b"x").unwrap();
    path
}

fn alerts_for(h: &Harness, path: &str) -> usize {
    h.captured
        .with_rule("path-watch.open")
        .iter()
        .filter(|a| a["fields"]["path"] == path)
        .count()
}

/// Names of the BPF programs this process holds a perf link for, read from the kernel (link
/// fds' fdinfo and the programs' info), not from the loader's own bookkeeping. Program names
/// are cut at 15 bytes by the kernel.
fn linked_programs() -> Vec<String> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
        };
        if field("link_type:").is_some_and(|t| t.starts_with("perf")) {
            if let Some(id) = field("prog_id:").and_then(|v| v.parse::<u32>().ok()) {
                ids.push(id);
            }
        }
    }
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| ids.contains(&p.id()))
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .collect()
}

fn open_programs_linked() -> usize {
    linked_programs()
        .iter()
        .filter(|n| {
            n.starts_with("sys_enter_open")
                || n.starts_with("sys_exit_open")
                || n.starts_with("sys_enter_creat")
                || n.starts_with("sys_exit_creat")
        })
        .count()
}

/// Waits (up to 3 s: releases wait for kernel grace periods) until `n` open programs are
/// linked.
fn wait_open_linked(n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while open_programs_linked() != n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} open programs linked, expected {n}: {:?}",
            open_programs_linked(),
            linked_programs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Both tests count this process's links: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The daemon's way (`on_demand`): with nobody subscribed to file_open its eight programs are
/// not attached (the kernel's link list says so) and opens cost them nothing; loading a plugin
/// that subscribes attaches them before it is published, so its very first open is delivered
/// without a restart; removing it detaches them again. Also prints what attaching and
/// detaching cost.
#[test]
fn kernel_programs_follow_the_subscriptions() {
    if skip("kernel_programs_follow_the_subscriptions") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let h = Harness::new("");
    let mut source = EbpfSource::load(EbpfConfig {
        on_demand: true,
        ..EbpfConfig::default()
    })
    .unwrap();
    assert!(source.failed().is_empty(), "{:?}", source.failed());
    assert_eq!(open_programs_linked(), 0, "{:?}", linked_programs());
    let counters = source.counters();
    source.attach(&h.daemon);
    let linked = linked_programs();
    assert_eq!(
        open_programs_linked(),
        0,
        "open programs linked without a subscriber: {linked:?}"
    );
    for always in ["sched_process_exec", "sched_process_exit", "task_newtask"] {
        assert!(
            linked.iter().any(|n| always.starts_with(n.as_str())),
            "lifecycle program {always} not linked: {linked:?}"
        );
    }
    if source.routes().argv_from_mm && source.routes().exit_code_from_task {
        assert!(
            !linked.iter().any(|n| n.starts_with("sys_")),
            "a syscall tracepoint is linked with no subscriber: {linked:?}"
        );
    }
    let probes = source.probes();
    assert!(!probes.lock().unwrap().is_attached("sys_enter_openat"));
    let pipeline = h.start();
    let stop = StopFlag::default();
    let reader = {
        let (sink, stop) = (pipeline.sink(), stop.clone());
        std::thread::spawn(move || source.run(&*sink, &stop).unwrap())
    };
    let watched = file(WATCHED, "follow");
    let runs = |k: &palisade::ebpf::KernelCounters| {
        k.emitted_of(EventKind::FileOpen) + k.filtered_of(EventKind::FileOpen)
    };
    let k0 = counters.read();
    open_n(&watched, 20);
    assert_eq!(
        runs(&counters.read()),
        runs(&k0),
        "detached open programs ran"
    );

    // Loaded live: attached before the publish, so the very next open is delivered.
    h.install(&test_plugin("path-watch"), "path-watch", None);
    h.load(1);
    assert_eq!(open_programs_linked(), 8, "{:?}", linked_programs());
    open_n(&watched, 1);
    h.captured.wait_for(
        Duration::from_secs(5),
        "the first open after the load",
        |_| alerts_for(&h, &watched) >= 1,
    );
    assert_eq!(alerts_for(&h, &watched), 1);

    // Removed: detached again.
    assert!(h.daemon.registry.remove("path-watch").is_some());
    wait_open_linked(0, "after the unload");
    let k2 = counters.read();
    open_n(&watched, 20);
    assert_eq!(
        runs(&counters.read()),
        runs(&k2),
        "open programs ran after the unload"
    );

    // What attaching and detaching the eight open programs costs (figures, not asserted).
    let bit = 1u32 << EventKind::FileOpen as u32;
    let (mut attach, mut detach) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let mut p = probes.lock().unwrap();
        let a = p.attach_kinds(bit);
        assert_eq!(a.programs.len(), 8, "{a:?}");
        let d = p.retain_kinds(0);
        assert_eq!(d.programs.len(), 8, "{d:?}");
        let released = Instant::now();
        assert!(p.settle().is_empty());
        attach.push(a.took.as_secs_f64() * 1e3);
        detach.push((d.took + released.elapsed()).as_secs_f64() * 1e3);
    }
    attach.sort_by(f64::total_cmp);
    detach.sort_by(f64::total_cmp);
    note(&format!(
        "kernel_programs: attaching the 8 open programs took {:.2} ms (median of 10; max {:.2}), \
         detaching until the kernel released them {:.1} ms (max {:.1}; off the registry's \
         path); load average {}",
        attach[5],
        attach[9],
        detach[5],
        detach[9],
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    ));
    stop.stop();
    reader.join().unwrap();
    drop(pipeline);
}

/// A source loaded with everything attached (what a source nobody narrows needs) detaches
/// the kinds nobody subscribes to once it follows a registry, and keeps the subscribed ones.
#[test]
fn an_attach_all_source_detaches_what_nobody_subscribes_to() {
    if skip("an_attach_all_source_detaches_what_nobody_subscribes_to") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let h = Harness::new("");
    h.install(&test_plugin("path-watch"), "path-watch", None);
    h.load(1);
    let mut source = EbpfSource::load(EbpfConfig::default()).unwrap();
    assert_eq!(open_programs_linked(), 8, "{:?}", linked_programs());
    assert!(source
        .probes()
        .lock()
        .unwrap()
        .is_attached("sys_enter_connect"));
    source.attach(&h.daemon);
    let probes = source.probes();
    assert!(!probes.lock().unwrap().is_attached("sys_enter_connect"));
    assert!(probes.lock().unwrap().settle().is_empty());
    let linked = linked_programs();
    assert_eq!(open_programs_linked(), 8, "{linked:?}");
    assert!(
        !linked.iter().any(|n| n.starts_with("sys_enter_conn")),
        "connect is subscribed by nobody: {linked:?}"
    );
    assert!(h.daemon.registry.remove("path-watch").is_some());
    wait_open_linked(0, "after the unload");
    drop(source);
}

/// The hook the kernel side relies on for "no blind window": a `before_publish` listener sees
/// each new set while the registry still serves the previous one, and an `on_publish` listener
/// sees it once it is served. No root needed.
#[test]
fn before_publish_runs_while_the_old_set_is_still_served() {
    let h = Harness::new("");
    // (listener, generation of the set it got, generation served at that moment)
    type Seen = Vec<(&'static str, u64, u64)>;
    let seen: std::sync::Arc<Mutex<Seen>> = Default::default();
    for (when, before) in [("before", true), ("after", false)] {
        let (registry, seen) = (h.daemon.registry.clone(), seen.clone());
        let listener = Box::new(move |set: &palisade::plugin::registry::PluginSet| {
            let served = registry.snapshot().generation;
            seen.lock().unwrap().push((when, set.generation, served));
        });
        if before {
            h.daemon.registry.before_publish(listener);
        } else {
            h.daemon.registry.on_publish(listener);
        }
    }
    h.install(&test_plugin("path-watch"), "path-watch", None);
    h.load(1);
    assert!(h.daemon.registry.remove("path-watch").is_some());
    let seen = seen.lock().unwrap();
    let befores: Vec<_> = seen.iter().filter(|s| s.0 == "before").collect();
    let afters: Vec<_> = seen.iter().filter(|s| s.0 == "after" && s.1 > 0).collect();
    assert_eq!(befores.len(), 2, "{seen:?}");
    for (_, new, served) in &befores {
        assert!(
            served < new,
            "before_publish saw generation {new} already served: {seen:?}"
        );
    }
    for (_, new, served) in afters {
        assert_eq!(new, served, "{seen:?}");
    }
}
