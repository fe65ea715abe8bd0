//! The kernel event source: loads the embedded aya eBPF programs (`host-ebpf`), reads their
//! ring buffer and turns records into the same [`Event`](crate::event::Event) the replay source
//! produces. Owns loading/attaching (`loader`), the reader loop (`reader`), the one
//! bytes-to-event function (`decode`) and the process cache (`procs`). It must never block on
//! the sink (delivery is [`Delivery::NeverBlock`]) and never crash on a missing hook.
//!
//! Usage: [`EbpfSource::load`] (needs root: CAP_BPF + CAP_PERFMON, tracefs) attaches everything
//! before returning, so events caused after it returns are seen; then [`EventSource::run`]
//! reads until stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
pub use filter::{FilterPlan, KernelFilter};
pub use loader::{Probe, PROBES};
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
    let source = EbpfSource::load(EbpfConfig {
        ring_bytes,
        ..EbpfConfig::default()
    })?;
    Ok(Box::new(source))
}

/// The live kernel event source.
pub struct EbpfSource {
    /// Keeps programs and links alive; dropping the source detaches everything.
    _ebpf: aya::Ebpf,
    ring: aya::maps::RingBuf<MapData>,
    attached: Vec<&'static str>,
    failed: Vec<(&'static str, String)>,
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
        let loader::Loaded {
            ebpf,
            ring,
            counters,
            filter,
            attached,
            failed,
        } = loader::load(loader::LoadOptions {
            ring_bytes: config.ring_bytes,
            // A threshold above a quarter of the ring would let it fill between timer drains.
            wakeup_bytes: config.wakeup_bytes.min(u64::from(config.ring_bytes / 4)),
            daemon_tgid: std::process::id(),
            open_results: config.open_results,
            skip_probes: config.skip_probes,
        })?;
        let clock = Clock::now();
        let mut procs = ProcessCache::seeded(config.process_capacity);
        procs.set_clock(clock);
        Ok(EbpfSource {
            _ebpf: ebpf,
            ring,
            attached,
            failed,
            counters: CountersHandle(Arc::new(counters)),
            filter: KernelFilter::new(filter),
            watch: None,
            procs,
            clock,
            config,
            stats: Arc::new(EbpfStats::default()),
        })
    }

    /// Probes that attached, by program name.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
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

    /// Hooks the source to a daemon: the kernel filter follows `registry`'s subscriptions
    /// (now, and live on every load, swap and unload), and losses are mirrored into `metrics`
    /// and reported as `palisade.events_dropped` alerts on `alerts`.
    pub fn follow(
        &mut self,
        registry: &crate::plugin::registry::Registry,
        alerts: crossbeam_channel::Sender<crate::alert::Alert>,
        hostname: String,
        settings: DropWatchSettings,
    ) {
        let filter = self.filter.clone();
        registry.on_publish(Box::new(move |set| filter.follow(set)));
        self.watch = Some(DropWatch::new(
            self.counters.clone(),
            Arc::clone(&self.stats),
            Arc::clone(registry.metrics()),
            alerts,
            hostname,
            settings,
        ));
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
