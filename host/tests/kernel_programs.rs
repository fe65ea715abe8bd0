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

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use palisade::ebpf::{EbpfConfig, EbpfSource};
use palisade::event::source::EventSource;
use palisade::event::EventKind;
use palisade::metrics::ProgramChange;
use support::{test_plugin, Harness};

const WATCHED: &str = "/tmp/palisade-kfilter/watched";

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/root.rs"]
mod root;
use daemon::{alerts_for, file, note, open_n, DaemonProcess, KernelDaemon};

fn skip(test: &str) -> bool {
    root::skip_unless_root(&format!("kernel_programs::{test}"), "loads eBPF programs")
}

/// Programs this process holds a link for, in the kernel's own list.
fn linked_programs() -> Vec<String> {
    daemon::linked_programs(std::process::id())
}

fn open_programs_linked() -> usize {
    open_programs_in(&linked_programs())
}

fn open_programs_in(linked: &[String]) -> usize {
    linked
        .iter()
        .filter(|n| {
            n.starts_with("sys_enter_open")
                || n.starts_with("sys_exit_open")
                || n.starts_with("sys_enter_creat")
                || n.starts_with("sys_exit_creat")
        })
        .count()
}

/// Waits (up to 10 s: releases wait for kernel grace periods) until `n` open programs are
/// linked.
fn wait_open_linked(n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
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
/// without a restart; removing it detaches them again. Each step moves the daemon's program
/// metrics (attach/detach steps and programs, the step's time, the kinds attached). Also
/// prints what attaching and detaching cost.
#[test]
fn kernel_programs_follow_the_subscriptions() {
    if skip("kernel_programs_follow_the_subscriptions") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let h = Harness::new("");
    let source = EbpfSource::load(EbpfConfig {
        on_demand: true,
        ..EbpfConfig::default()
    })
    .unwrap();
    assert!(source.failed().is_empty(), "{:?}", source.failed());
    assert_eq!(open_programs_linked(), 0, "{:?}", linked_programs());
    let routes = source.routes();
    let running = KernelDaemon::start(&h, source);
    let (counters, probes, m) = (&running.counters, &running.probes, &h.daemon.metrics);
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
    if routes.argv_from_mm && routes.exit_code_from_task {
        assert!(
            !linked.iter().any(|n| n.starts_with("sys_")),
            "a syscall tracepoint is linked with no subscriber: {linked:?}"
        );
    }
    assert!(!probes.lock().unwrap().is_attached("sys_enter_openat"));
    // Following the registry reported every subscribable kind, none attached, no step yet.
    for kind in ["file_open", "net_connect", "fd_dup"] {
        assert_eq!(m.kind_attached(kind), Some(false), "{kind}");
    }
    assert_eq!(
        m.kind_attached("exec"),
        None,
        "lifecycle kinds are not listed"
    );
    assert_eq!(m.program_changes(ProgramChange::Attach), 0);
    assert_eq!(m.program_changes(ProgramChange::Detach), 0);
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
    assert_eq!(m.program_changes(ProgramChange::Attach), 1);
    assert_eq!(m.programs_changed(ProgramChange::Attach), 8);
    assert!(m.last_program_change(ProgramChange::Attach).unwrap() > Duration::ZERO);
    assert_eq!(m.program_changes(ProgramChange::Detach), 0);
    assert_eq!(m.kind_attached("file_open"), Some(true));
    assert_eq!(m.kind_attached("net_connect"), Some(false));
    let text = m.encode();
    for line in [
        "palisade_kernel_program_changes_total{change=\"attach\"} 1",
        "palisade_kernel_programs_changed_total{change=\"attach\"} 8",
        "palisade_kernel_kind_attached{kind=\"file_open\"} 1",
    ] {
        assert!(text.contains(line), "no {line:?} in the metrics:\n{text}");
    }
    open_n(&watched, 1);
    h.captured.wait_for(
        Duration::from_secs(5),
        "the first open after the load",
        |_| alerts_for(&h, &watched) >= 1,
    );
    assert_eq!(alerts_for(&h, &watched), 1);

    // Removed: detached again.
    assert!(h.daemon.registry.remove("path-watch").is_some());
    assert_eq!(m.program_changes(ProgramChange::Detach), 1);
    assert_eq!(m.programs_changed(ProgramChange::Detach), 8);
    assert!(m.last_program_change(ProgramChange::Detach).is_some());
    assert_eq!(m.program_changes(ProgramChange::Attach), 1);
    assert_eq!(m.kind_attached("file_open"), Some(false));
    wait_open_linked(0, "after the unload");
    // The release thread reports what the kernel took once the links are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.last_program_release().is_zero() {
        assert!(Instant::now() < deadline, "no release time reported");
        std::thread::sleep(Duration::from_millis(10));
    }
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
    drop(running);
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
    let m = &h.daemon.metrics;
    assert_eq!(m.program_changes(ProgramChange::Detach), 1);
    assert_eq!(m.program_changes(ProgramChange::Attach), 0);
    assert_eq!(m.kind_attached("file_open"), Some(true));
    assert_eq!(m.kind_attached("net_connect"), Some(false));
    assert!(probes.lock().unwrap().settle().is_empty());
    let linked = linked_programs();
    assert_eq!(open_programs_linked(), 8, "{linked:?}");
    assert!(
        !linked.iter().any(|n| n.starts_with("sys_enter_conn")),
        "connect is subscribed by nobody: {linked:?}"
    );
    assert!(h.daemon.registry.remove("path-watch").is_some());
    assert_eq!(m.program_changes(ProgramChange::Detach), 2);
    assert_eq!(m.programs_changed(ProgramChange::Detach) as usize, {
        let all = palisade::ebpf::PROBES.iter().filter(|p| p.kinds() != 0);
        all.filter(|p| source.failed().iter().all(|(f, _)| f != &p.program))
            .count()
    });
    wait_open_linked(0, "after the unload");
    drop(source);
}

/// The same through the real `palisade run` and its `/metrics`: a subscribing plugin dropped
/// into the watched plugin dir attaches the eight open programs (the daemon's own links, read
/// from the kernel), removing the file detaches them, and the exported counters and the
/// attached-kind gauge move with each step.
#[test]
fn the_daemon_exports_its_program_changes() {
    if skip("the_daemon_exports_its_program_changes") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = tempfile::tempdir().unwrap();
    let plugins = scratch.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let d = DaemonProcess::start(&plugins, scratch.path(), "", &[]);
    let open_attached = |m: &BTreeMap<String, f64>| {
        m.get("palisade_kernel_kind_attached{kind=\"file_open\"}")
            .copied()
    };
    // Attach and detach steps so far, each moving the eight open programs.
    let expect_steps = |m: &BTreeMap<String, f64>, attach: f64, detach: f64| {
        for (change, steps) in [("attach", attach), ("detach", detach)] {
            let sample = |family: &str| {
                m.get(&format!("palisade_{family}_total{{change=\"{change}\"}}"))
                    .copied()
                    .unwrap_or(0.0)
            };
            assert_eq!(sample("kernel_program_changes"), steps, "{change}: {m:#?}");
            assert_eq!(
                sample("kernel_programs_changed"),
                8.0 * steps,
                "{change}: {m:#?}"
            );
        }
    };
    let daemon_open_links = || open_programs_in(&daemon::linked_programs(d.pid()));
    let wait = Duration::from_secs(30);
    d.wait_metrics("file_open reported unattached", wait, |m| {
        open_attached(m) == Some(0.0)
    });
    assert_eq!(daemon_open_links(), 0);

    // Dropped in whole (renamed into place), as an operator's deploy would.
    let staged = scratch.path().join("path-watch.wasm");
    std::fs::copy(test_plugin("path-watch"), &staged).unwrap();
    std::fs::rename(&staged, plugins.join("path-watch.wasm")).unwrap();
    let m = d.wait_metrics("the open programs attached", wait, |m| {
        open_attached(m) == Some(1.0)
    });
    expect_steps(&m, 1.0, 0.0);
    assert!(m["palisade_kernel_program_change_seconds{change=\"attach\"}"] > 0.0);
    assert_eq!(
        daemon_open_links(),
        8,
        "{:?}",
        daemon::linked_programs(d.pid())
    );

    std::fs::remove_file(plugins.join("path-watch.wasm")).unwrap();
    let m = d.wait_metrics("the open programs detached", wait, |m| {
        open_attached(m) == Some(0.0)
    });
    expect_steps(&m, 1.0, 1.0);
    d.wait_metrics("the kernel's release time", wait, |m| {
        m.get("palisade_kernel_program_release_seconds")
            .is_some_and(|s| *s > 0.0)
    });
    // The kernel releases detached links on a background thread (grace periods).
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon_open_links() != 0 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            daemon::linked_programs(d.pid())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    d.stop();
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
