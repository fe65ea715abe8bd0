//! The kernel event source: loads the embedded aya eBPF programs (`host-ebpf`), reads their
//! ring buffer and turns records into the same [`Event`](crate::event::Event) the replay source
//! produces. Owns loading/attaching (`loader`), the reader loop (`reader`), the one
//! bytes-to-event function (`decode`) and the process cache (`procs`). It must never block on
//! the sink (delivery is [`Delivery::NeverBlock`]) and never crash on a missing hook.
//!
//! Usage: [`EbpfSource::load`] (needs root: CAP_BPF + CAP_PERFMON, tracefs) attaches everything
//! before returning, so events caused after it returns are seen; then [`EventSource::run`]
//! reads until stopped. Once it follows a registry ([`EbpfSource::follow`]), only the programs
//! of kinds some plugin subscribes to stay attached (plus the lifecycle ones); a source with no
//! registry (`palisade record --kinds`) is narrowed to a plan with [`EbpfSource::narrow`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use aya::maps::{MapData, PerCpuArray};
use palisade_common as abi;

use crate::event::source::{
    Delivery, EventSink, EventSource, SourceError, SourceSummary, StopFlag,
};
use crate::event::EventKind;

pub mod btf;
pub mod decode;
pub mod drops;
pub mod filter;
pub mod loader;
pub mod procs;
mod reader;

pub use decode::{decode, Clock, DecodeError};
pub use drops::{DropWatch, DropWatchSettings};
pub use filter::{FilterError, FilterPlan, KernelFilter};
pub use loader::{Need, Probe, ProbeChange, ProbeSet, Routes, PROBES};
pub use procs::ProcessCache;

/// Why the eBPF source could not start.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading the eBPF object (ring {ring_bytes} bytes) failed: {source}")]
    Load {
        ring_bytes: u32,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("no eBPF probe could be attached ({tried} tried): {failures}")]
    NoProbes { tried: usize, failures: String },
    #[error("eBPF map {map} is missing from the object")]
    MissingMap { map: &'static str },
    #[error("eBPF map {map} has an unexpected type: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("invalid eBPF source setting {setting}: {reason}")]
    Config {
        setting: &'static str,
        reason: String,
    },
}

impl From<EbpfError> for SourceError {
    fn from(err: EbpfError) -> Self {
        SourceError::Unavailable {
            what: "the eBPF event source".to_owned(),
            reason: format!("{err}"),
            fix: "run as root (CAP_BPF, CAP_PERFMON) on a kernel with tracefs mounted at \
                  /sys/kernel/tracing, or use --source replay:FILE"
                .to_owned(),
        }
    }
}

/// Settings of the eBPF source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EbpfConfig {
    /// Ring buffer size: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Pending bytes that force a reader wake-up.
    pub wakeup_bytes: u64,
    /// Reader poll timer in milliseconds (the drain interval when below the threshold).
    pub poll_ms: u32,
    /// Cached processes at most.
    pub process_capacity: usize,
    /// Report file opens at syscall exit with their result (fd or -errno). Costs a second
    /// tracepoint and a hash stash per open (see docs/performance.md); off reports at entry.
    pub open_results: bool,
    /// Programs not to attach (by name). For measurements: detaching the programs of an
    /// unsubscribed kind versus keeping them attached behind the filter word.
    pub skip_probes: &'static [&'static str],
    /// Read argv and exit codes from kernel structs at the offsets the kernel's BTF gives (no
    /// syscall hook for the lifecycle); false forces the syscall-tracepoint route (tests,
    /// comparisons). Members the BTF lacks fall back to that route anyway.
    pub struct_reads: bool,
    /// Attach only the lifecycle programs at load; the kinds' programs attach when a followed
    /// registry's plugins subscribe to them ([`EbpfSource::follow`]). Off, everything is
    /// attached at load (a source nobody narrows sees every kind) and follow detaches what is
    /// not needed (slower: each detach waits for kernel grace periods).
    pub on_demand: bool,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        EbpfConfig {
            ring_bytes: abi::DEFAULT_RING_BYTES,
            wakeup_bytes: abi::DEFAULT_WAKEUP_BYTES,
            poll_ms: 10,
            process_capacity: procs::DEFAULT_CAPACITY,
            open_results: true,
            skip_probes: &[],
            struct_reads: true,
            on_demand: false,
        }
    }
}

impl EbpfConfig {
    fn validate(&self) -> Result<(), EbpfError> {
        if !self.ring_bytes.is_power_of_two() || self.ring_bytes < 4096 {
            return Err(EbpfError::Config {
                setting: "ring_bytes",
                reason: format!("{} is not a power of two of at least 4096", self.ring_bytes),
            });
        }
        if self.poll_ms == 0 || self.poll_ms > 1000 {
            return Err(EbpfError::Config {
                setting: "poll_ms",
                reason: format!("{} is outside 1..=1000", self.poll_ms),
            });
        }
        Ok(())
    }
}

/// Userspace counters of the source (lock-free; shared with whoever exposes metrics).
#[derive(Debug, Default)]
pub struct EbpfStats {
    /// Records read from the ring.
    pub records: AtomicU64,
    /// Records that did not decode (skipped).
    pub decode_errors: AtomicU64,
    /// Events handed to the sink.
    pub delivered: AtomicU64,
    /// The daemon's own fork records, used for the process cache and not delivered.
    pub own_dropped: AtomicU64,
    /// Events handed to the sink, per kind (index = `EventKind as usize`).
    pub delivered_by_kind: [AtomicU64; abi::KIND_COUNT as usize],
}

/// Kernel-side counters summed over CPUs, per kind (index = `EventKind as usize`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Records submitted to the ring.
    pub emitted: Vec<u64>,
    /// Ring reservation failures: events lost in the kernel.
    pub lost: Vec<u64>,
    /// Events dropped on purpose in the kernel (no subscription could match them, or the
    /// daemon's own activity).
    pub filtered: Vec<u64>,
}

impl KernelCounters {
    pub fn emitted_total(&self) -> u64 {
        self.emitted.iter().sum()
    }
    pub fn lost_total(&self) -> u64 {
        self.lost.iter().sum()
    }
    pub fn filtered_total(&self) -> u64 {
        self.filtered.iter().sum()
    }
    pub fn emitted_of(&self, kind: EventKind) -> u64 {
        self.emitted.get(kind as usize).copied().unwrap_or(0)
    }
    pub fn lost_of(&self, kind: EventKind) -> u64 {
        self.lost.get(kind as usize).copied().unwrap_or(0)
    }
    pub fn filtered_of(&self, kind: EventKind) -> u64 {
        self.filtered.get(kind as usize).copied().unwrap_or(0)
    }
}

/// A cloneable handle that reads the kernel's per-CPU counters.
#[derive(Clone)]
pub struct CountersHandle(Arc<PerCpuArray<MapData, u64>>);

impl CountersHandle {
    /// Sums the per-CPU slots. A slot that cannot be read counts as zero.
    pub fn read(&self) -> KernelCounters {
        let slot = |index: u32| -> u64 {
            self.0
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        let per_kind = |base: u32| (0..abi::KIND_COUNT).map(|k| slot(base + k)).collect();
        KernelCounters {
            emitted: per_kind(abi::COUNTER_EMITTED),
            lost: per_kind(abi::COUNTER_LOST),
            filtered: per_kind(abi::COUNTER_FILTERED),
        }
    }
}

/// The kernel source as the daemon configures it (`[source] ring_buffer_kib`); errors name what
/// is missing and how to fix it.
pub fn kernel_source(config: &crate::config::Config) -> Result<Box<dyn EventSource>, SourceError> {
    let ring_bytes = config
        .source
        .ring_buffer_kib
        .checked_mul(1024)
        .ok_or_else(|| EbpfError::Config {
            setting: "source.ring_buffer_kib",
            reason: format!(
                "{} KiB does not fit in 32 bits",
                config.source.ring_buffer_kib
            ),
        })?;
    // The daemon follows its registry right away: attach kinds' programs only for subscribers.
    let source = EbpfSource::load(EbpfConfig {
        ring_bytes,
        on_demand: true,
        poll_ms: config.source.drain_interval_ms,
        ..EbpfConfig::default()
    })?;
    Ok(Box::new(source))
}

/// The live kernel event source.
pub struct EbpfSource {
    /// Keeps programs and links alive; dropping the source detaches everything (registry
    /// listeners hold only a weak reference).
    probes: Arc<Mutex<ProbeSet>>,
    ring: aya::maps::RingBuf<MapData>,
    failed: Vec<(&'static str, String)>,
    routes: Routes,
    counters: CountersHandle,
    filter: KernelFilter,
    /// Set by [`EbpfSource::follow`]: loss accounting and the drop alert.
    watch: Option<DropWatch>,
    procs: ProcessCache,
    clock: Clock,
    config: EbpfConfig,
    stats: Arc<EbpfStats>,
}

impl EbpfSource {
    /// Loads and attaches the programs (the daemon's own pid excluded in the kernel) and seeds
    /// the process cache from /proc. Events caused after this returns are captured.
    pub fn load(config: EbpfConfig) -> Result<Self, EbpfError> {
        config.validate()?;
        let offsets = if config.struct_reads {
            btf::running_kernel_offsets()
        } else {
            palisade_common::kernel::UNKNOWN_OFFSETS
        };
        let loader::Loaded {
            probes,
            ring,
            counters,
            filter,
            failed,
            routes,
        } = loader::load(loader::LoadOptions {
            ring_bytes: config.ring_bytes,
            // A threshold above a quarter of the ring would let it fill between timer drains.
            wakeup_bytes: config.wakeup_bytes.min(u64::from(config.ring_bytes / 4)),
            daemon_tgid: std::process::id(),
            open_results: config.open_results,
            skip_probes: config.skip_probes,
            offsets,
            on_demand: config.on_demand,
        })?;
        let clock = Clock::now();
        let mut procs = ProcessCache::seeded(config.process_capacity);
        procs.set_clock(clock);
        Ok(EbpfSource {
            probes: Arc::new(Mutex::new(probes)),
            ring,
            failed,
            routes,
            counters: CountersHandle(Arc::new(counters)),
            filter: KernelFilter::new(filter),
            watch: None,
            procs,
            clock,
            config,
            stats: Arc::new(EbpfStats::default()),
        })
    }

    /// Probes attached now, by program name (kinds' programs come and go with subscriptions
    /// once the source follows a registry).
    pub fn attached(&self) -> Vec<&'static str> {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attached()
    }

    /// How argv and exit codes are obtained on this kernel.
    pub fn routes(&self) -> Routes {
        self.routes
    }

    /// The kernel's per-program run statistics (`run_time`, `run_count`; counted only while
    /// `kernel.bpf_stats_enabled` is 1), by program name.
    pub fn program_stats(&self) -> Vec<(&'static str, std::time::Duration, u64)> {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .program_stats()
    }

    /// A handle to the probe set (attach/detach by kind), for tests and tools.
    pub fn probes(&self) -> Arc<Mutex<ProbeSet>> {
        Arc::clone(&self.probes)
    }

    /// Probes that failed, with the reason.
    pub fn failed(&self) -> &[(&'static str, String)] {
        &self.failed
    }

    /// Userspace counters (shared).
    pub fn stats(&self) -> Arc<EbpfStats> {
        self.stats.clone()
    }

    /// Kernel counters handle (usable from another thread while `run` reads).
    pub fn counters(&self) -> CountersHandle {
        self.counters.clone()
    }

    /// Processes in the cache.
    pub fn cached_processes(&self) -> usize {
        self.procs.len()
    }

    /// The in-kernel filter (passes everything until written).
    pub fn filter(&self) -> KernelFilter {
        self.filter.clone()
    }

    /// Hooks the source to a daemon: the kernel filter and the attached programs follow
    /// `registry`'s subscriptions (now, and live on every load, swap and unload), and losses
    /// are mirrored into `metrics` and reported as `palisade.events_dropped` alerts on
    /// `alerts`.
    ///
    /// No blind window: before a set is published, the programs and filter gates of the union
    /// of the old and new subscriptions are put in place; after it is live, the filter narrows
    /// to the new set and programs nobody needs any more are detached.
    pub fn follow(
        &mut self,
        registry: &crate::plugin::registry::Registry,
        alerts: crossbeam_channel::Sender<crate::alert::Alert>,
        hostname: String,
        settings: DropWatchSettings,
    ) {
        let follower = Arc::new(Follower {
            probes: Arc::downgrade(&self.probes),
            filter: self.filter.clone(),
            metrics: Arc::clone(registry.metrics()),
            live: Mutex::new(Vec::new()),
            pending: Mutex::new(ProbeChange::default()),
        });
        let metrics = Arc::clone(&follower.metrics);
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_released(Arc::new(move |took| {
                metrics
                    .kernel_program_release_seconds
                    .set(took.as_secs_f64());
            }));
        let before = Arc::clone(&follower);
        registry.before_publish(Box::new(move |set| before.prepare(set)));
        registry.on_publish(Box::new(move |set| follower.published(set)));
        self.watch = Some(DropWatch::new(
            self.counters.clone(),
            Arc::clone(&self.stats),
            Arc::clone(registry.metrics()),
            alerts,
            hostname,
            settings,
        ));
    }

    /// Narrows the kernel side to `plan` without a registry (`palisade record --kinds`):
    /// attaches the programs of the kinds it needs, writes its filter maps, then detaches the
    /// programs of every other kind. Lifecycle programs stay. Returns (attached, detached).
    pub fn narrow(&self, plan: &FilterPlan) -> Result<(ProbeChange, ProbeChange), FilterError> {
        let needed = needed_kinds(plan);
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        let attached = probes.attach_kinds(needed);
        self.filter.apply(plan)?;
        let detached = probes.retain_kinds(needed);
        let failed = failures(&attached, &detached);
        if !failed.is_empty() {
            tracing::error!(failures = %failed.join("; "), "kernel programs could not be narrowed");
        }
        tracing::info!(
            kinds = %kind_names(needed),
            programs = %probes.attached().join(","),
            programs_attached = attached.programs.len(),
            programs_detached = detached.programs.len(),
            "kernel programs narrowed"
        );
        Ok((attached, detached))
    }
}

/// Kinds (bit `1 << kind`) whose programs `plan` needs: every kind it does not drop outright.
fn needed_kinds(plan: &FilterPlan) -> u32 {
    plan.words
        .iter()
        .enumerate()
        .filter(|(_, w)| **w & abi::FILTER_DROP == 0)
        .fold(0, |acc, (k, _)| acc | 1 << k)
}

/// "program (why)" for every program an attach and a detach step could not move.
fn failures(attached: &ProbeChange, detached: &ProbeChange) -> Vec<String> {
    attached
        .failed
        .iter()
        .chain(&detached.failed)
        .map(|(p, why)| format!("{p} ({why})"))
        .collect()
}

fn kind_names(kinds: u32) -> String {
    EventKind::ALL
        .iter()
        .filter(|k| kinds & (1 << **k as u32) != 0)
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Keeps the kernel side (attached programs, filter maps) in step with a registry.
struct Follower {
    probes: Weak<Mutex<ProbeSet>>,
    filter: KernelFilter,
    /// Where attach/detach steps and the attached kinds are counted.
    metrics: Arc<crate::metrics::Metrics>,
    /// Subscriptions of the set last published.
    live: Mutex<Vec<crate::plugin::subscription::Subscription>>,
    /// What `prepare` attached for the set being published (logged with its detach step).
    pending: Mutex<ProbeChange>,
}

impl Follower {
    /// Before `set` is visible: attach what the union of the live and the new subscriptions
    /// needs and open its filter gates, so the new plugins' first events are caught while the
    /// old ones still get theirs.
    fn prepare(&self, set: &crate::plugin::registry::PluginSet) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let union = FilterPlan::from_subscriptions(
            live.iter().chain(
                set.detectors
                    .iter()
                    .flat_map(|p| p.interest.subscriptions.iter()),
            ),
        );
        drop(live);
        if let Some(probes) = self.probes.upgrade() {
            let change = probes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .attach_kinds(needed_kinds(&union));
            *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = change;
        }
        if let Err(error) = self.filter.apply(&union) {
            tracing::error!(%error, "kernel filter update failed; affected kinds pass every event");
        }
    }

    /// Once `set` is live: narrow the filter to it and detach programs it does not need. Also
    /// attaches what it needs, for the set current when the source starts following (which
    /// had no `prepare`); for later sets that is already done.
    fn published(&self, set: &crate::plugin::registry::PluginSet) {
        let plan = FilterPlan::from_plugin_set(set);
        let needed = needed_kinds(&plan);
        if let Some(probes) = self.probes.upgrade() {
            let late = probes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .attach_kinds(needed);
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.programs.extend(late.programs);
            pending.kinds |= late.kinds;
            pending.failed.extend(late.failed);
            pending.took += late.took;
        }
        if let Err(error) = self.filter.apply(&plan) {
            tracing::error!(%error, "kernel filter update failed; affected kinds pass every event");
        }
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = set
            .detectors
            .iter()
            .flat_map(|p| p.interest.subscriptions.iter().cloned())
            .collect();
        let Some(probes) = self.probes.upgrade() else {
            return;
        };
        let mut probes = probes.lock().unwrap_or_else(|p| p.into_inner());
        let detached = probes.retain_kinds(needed);
        let attached = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let failed = failures(&attached, &detached);
        if !failed.is_empty() {
            tracing::error!(failures = %failed.join("; "), "kernel programs could not follow the subscriptions");
        }
        self.count(&probes, &attached, &detached);
        if attached.programs.is_empty() && detached.programs.is_empty() {
            return;
        }
        tracing::info!(
            generation = set.generation,
            kinds_attached = %kind_names(attached.kinds),
            kinds_detached = %kind_names(detached.kinds),
            programs_attached = attached.programs.len(),
            programs_detached = detached.programs.len(),
            attach_ms = attached.took.as_secs_f64() * 1e3,
            detach_ms = detached.took.as_secs_f64() * 1e3,
            programs_now = probes.attached().len(),
            "kernel programs follow the subscriptions"
        );
    }

    /// Mirrors one publish's steps and the kinds attached after it into the metrics.
    fn count(&self, probes: &ProbeSet, attached: &ProbeChange, detached: &ProbeChange) {
        use crate::metrics::ProgramChange;
        for (change, step) in [
            (ProgramChange::Attach, attached),
            (ProgramChange::Detach, detached),
        ] {
            if !step.programs.is_empty() {
                self.metrics
                    .kernel_program_change(change, step.programs.len(), step.took);
            }
        }
        let now = probes.attached_kinds();
        let gated = PROBES.iter().fold(0, |acc, p| acc | p.kinds());
        self.metrics.kernel_kinds_attached(
            EventKind::ALL
                .iter()
                .filter(|k| gated & (1 << **k as u32) != 0)
                .map(|k| (k.as_str(), now & (1 << *k as u32) != 0)),
        );
    }
}

impl EventSource for EbpfSource {
    fn name(&self) -> &str {
        "ebpf"
    }

    fn delivery(&self) -> Delivery {
        Delivery::NeverBlock
    }

    fn attach(&mut self, daemon: &crate::daemon::Daemon) {
        self.follow(
            &daemon.registry,
            daemon.host_alerts(),
            daemon.hostname.clone(),
            DropWatchSettings::default(),
        );
    }

    fn run(&mut self, sink: &dyn EventSink, stop: &StopFlag) -> Result<SourceSummary, SourceError> {
        let mut reader = reader::Reader {
            ring: &mut self.ring,
            procs: &mut self.procs,
            clock: self.clock,
            poll_ms: self.config.poll_ms as i32,
            stats: &self.stats,
            own_pid: std::process::id(),
            watch: self.watch.as_mut(),
            burst: Vec::with_capacity(reader::BURST),
        };
        let events = reader.run(sink, stop);
        let counters = self.counters.read();
        tracing::info!(
            events,
            decode_errors = self.stats.decode_errors.load(Ordering::Relaxed),
            kernel_emitted = counters.emitted_total(),
            kernel_lost = counters.lost_total(),
            kernel_filtered = counters.filtered_total(),
            "ebpf source stopped"
        );
        Ok(SourceSummary {
            events,
            bad_records: self.stats.decode_errors.load(Ordering::Relaxed),
        })
    }
}
