//! Prometheus metrics: one [`Metrics`] registry shared (as `Arc<Metrics>`) by the source, the
//! dispatcher, the plugin host, the reload watcher and the actions broker, plus a tiny HTTP
//! server for `GET /metrics`. Updating a counter is an atomic add behind a read-locked map
//! lookup, cheap enough for hot paths. This module only counts; it never decides anything.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Content type of the OpenMetrics text exposition served on `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prefix of every metric name (`palisade_events_received_total`, ...).
pub const PREFIX: &str = "palisade";

/// Longest label value kept; longer ones (guest-chosen rule ids) are cut so a plugin cannot
/// blow up the exposition.
const MAX_LABEL_LEN: usize = 128;

/// Most distinct label sets tracked in `alerts_total`; past this, new rule ids are counted
/// under [`OVERFLOW_RULE`] so a plugin inventing rule ids cannot grow host memory without bound.
pub const MAX_ALERT_SERIES: usize = 10_000;

/// Rule label used once [`MAX_ALERT_SERIES`] is reached.
pub const OVERFLOW_RULE: &str = "_overflow";

/// Call-latency buckets from 1 µs to 1 s in 1-2.5-5 steps: a batch call costs from under a
/// microsecond to the deadline. Written out so the `le` labels are exact decimals.
pub const CALL_DURATION_BUCKETS: [f64; 19] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0,
];

/// Errors from the metrics HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("cannot start the metrics server thread: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
}

/// A label value escaped for the text exposition (`\`, `"` and newlines) and cut to
/// [`MAX_LABEL_LEN`] characters. prometheus-client writes label values verbatim, and plugin
/// names and rule ids come from guests.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelValue(String);

impl LabelValue {
    pub fn new(raw: &str) -> LabelValue {
        let mut out = String::with_capacity(raw.len().min(MAX_LABEL_LEN));
        for c in raw.chars().take(MAX_LABEL_LEN) {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        LabelValue(out)
    }
}

impl From<&str> for LabelValue {
    fn from(raw: &str) -> Self {
        LabelValue::new(raw)
    }
}

impl From<&String> for LabelValue {
    fn from(raw: &String) -> Self {
        LabelValue::new(raw)
    }
}

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// A closed set of label values. Helpers take `impl AsRef<str>`, so callers may pass these or
/// the plain strings.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
    };
}

label_enum!(
    /// Why an event was dropped before reaching any plugin.
    DropCause {
        QueueFull => "queue_full",
        KernelLost => "kernel_lost",
        DecodeError => "decode_error",
        BadRecord => "bad_record",
        Shutdown => "shutdown",
    }
);

label_enum!(
    /// Why a plugin call failed.
    FailureCause {
        Trap => "trap",
        Deadline => "deadline",
        Memory => "memory",
        Init => "init",
        Instantiate => "instantiate",
        Other => "other",
    }
);

label_enum!(
    /// How a worker got the instance of a plugin's new generation at a swap: `handover`,
    /// prepared and initialised by the reload path (the worker only moved it into place), or
    /// `worker`, instantiated and initialised by the worker itself on its next batch.
    SwapVia {
        Handover => "handover",
        Worker => "worker",
    }
);

label_enum!(
    /// Direction of a change to the kernel programs attached by the event source.
    ProgramChange {
        Attach => "attach",
        Detach => "detach",
    }
);

label_enum!(
    /// Outcome of a hot reload of one plugin.
    ReloadResult {
        Ok => "ok",
        Error => "error",
    }
);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: LabelValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    pub cause: LabelValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: LabelValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AlertLabels {
    pub rule: LabelValue,
    pub priority: LabelValue,
    pub plugin: LabelValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    pub plugin: LabelValue,
    pub cause: LabelValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: LabelValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SwapLabels {
    pub plugin: LabelValue,
    pub via: LabelValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ActionLabels {
    pub responder: LabelValue,
    pub action: LabelValue,
    pub result: LabelValue,
}

/// Kernel source counters per event kind: `outcome` is emitted, filtered (in the kernel),
/// lost (ring full) or delivered (to the router).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KernelLabels {
    pub kind: LabelValue,
    pub outcome: LabelValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ChangeLabels {
    pub change: LabelValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: LabelValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CapabilityLabels {
    pub plugin: LabelValue,
    pub capability: LabelValue,
}

/// Constructor of the per-plugin call-latency histograms.
type HistogramCtor = fn() -> Histogram;

fn call_duration_histogram() -> Histogram {
    Histogram::new(CALL_DURATION_BUCKETS)
}

/// Every metric the daemon exports. Share it as `Arc<Metrics>`; fields are public so callers can
/// update any series, and the helper methods cover the common updates.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub events_received_total: Family<SourceLabels, Counter>,
    pub events_routed_total: Counter,
    pub events_unrouted_total: Counter,
    pub events_dropped_total: Family<DropLabels, Counter>,
    pub plugin_queue_dropped_total: Family<PluginLabels, Counter>,
    pub alerts_total: Family<AlertLabels, Counter>,
    pub plugin_calls_total: Family<PluginLabels, Counter>,
    pub plugin_failures_total: Family<FailureLabels, Counter>,
    pub plugin_quarantines_total: Family<PluginLabels, Counter>,
    pub plugin_call_duration_seconds: Family<PluginLabels, Histogram, HistogramCtor>,
    pub plugin_reloads_total: Family<ReloadLabels, Counter>,
    /// Swaps of a worker's instance to a plugin's new generation, and the time each took the
    /// worker.
    pub plugin_swaps_total: Family<SwapLabels, Counter>,
    pub plugin_swap_stall_seconds: Family<SwapLabels, Histogram, HistogramCtor>,
    /// Live plugin instances (Stores) per plugin: 0 for an idle plugin after idle release.
    pub plugin_instances: Family<PluginLabels, prometheus_client::metrics::gauge::Gauge>,
    pub actions_total: Family<ActionLabels, Counter>,
    pub capability_denied_total: Family<CapabilityLabels, Counter>,
    pub plugin_log_dropped_total: Family<PluginLabels, Counter>,
    pub plugin_alerts_truncated_total: Family<PluginLabels, Counter>,
    pub kernel_events_total: Family<KernelLabels, Counter>,
    /// Steps that attached or detached at least one kernel program (subscriptions changed),
    /// the programs they moved, and what the last step of each direction took (a detach step
    /// only hands its links to a release thread; the kernel frees them after that).
    pub kernel_program_changes_total: Family<ChangeLabels, Counter>,
    pub kernel_programs_changed_total: Family<ChangeLabels, Counter>,
    pub kernel_program_change_seconds: Family<ChangeLabels, Gauge<f64, AtomicU64>>,
    /// What the kernel took to release the links of the last detach step (its grace periods).
    pub kernel_program_release_seconds: Gauge<f64, AtomicU64>,
    /// 1 while a subscribable kind has kernel programs attached, else 0 (lifecycle kinds are
    /// always attached and not listed).
    pub kernel_kind_attached: Family<KindLabels, Gauge>,
    pub audit_errors_total: Counter,
    /// Distinct `alerts_total` label sets created so far (for [`MAX_ALERT_SERIES`]).
    alert_series: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let events_received_total = Family::<SourceLabels, Counter>::default();
        let events_routed_total = Counter::default();
        let events_unrouted_total = Counter::default();
        let events_dropped_total = Family::<DropLabels, Counter>::default();
        let plugin_queue_dropped_total = Family::<PluginLabels, Counter>::default();
        let alerts_total = Family::<AlertLabels, Counter>::default();
        let plugin_calls_total = Family::<PluginLabels, Counter>::default();
        let plugin_failures_total = Family::<FailureLabels, Counter>::default();
        let plugin_quarantines_total = Family::<PluginLabels, Counter>::default();
        let plugin_call_duration_seconds =
            Family::<PluginLabels, Histogram, HistogramCtor>::new_with_constructor(
                call_duration_histogram as HistogramCtor,
            );
        let plugin_reloads_total = Family::<ReloadLabels, Counter>::default();
        let plugin_swaps_total = Family::<SwapLabels, Counter>::default();
        let plugin_swap_stall_seconds =
            Family::<SwapLabels, Histogram, HistogramCtor>::new_with_constructor(
                call_duration_histogram as HistogramCtor,
            );
        let actions_total = Family::<ActionLabels, Counter>::default();
        let capability_denied_total = Family::<CapabilityLabels, Counter>::default();
        let plugin_log_dropped_total = Family::<PluginLabels, Counter>::default();
        let plugin_alerts_truncated_total = Family::<PluginLabels, Counter>::default();
        let kernel_events_total = Family::<KernelLabels, Counter>::default();
        let kernel_program_changes_total = Family::<ChangeLabels, Counter>::default();
        let kernel_programs_changed_total = Family::<ChangeLabels, Counter>::default();
        let kernel_program_change_seconds =
            Family::<ChangeLabels, Gauge<f64, AtomicU64>>::default();
        let kernel_kind_attached = Family::<KindLabels, Gauge>::default();
        let kernel_program_release_seconds = Gauge::<f64, AtomicU64>::default();
        let audit_errors_total = Counter::default();

        // Names are given without `_total`: prometheus-client appends it to counters.
        registry.register(
            "events_received",
            "Events read from a source, by source",
            events_received_total.clone(),
        );
        registry.register(
            "events_routed",
            "Events delivered to at least one plugin queue",
            events_routed_total.clone(),
        );
        registry.register(
            "events_unrouted",
            "Events no loaded plugin subscribed to",
            events_unrouted_total.clone(),
        );
        registry.register(
            "events_dropped",
            "Events dropped before any plugin saw them, by cause",
            events_dropped_total.clone(),
        );
        registry.register(
            "plugin_queue_dropped",
            "Events dropped because a plugin's queue was full, by plugin",
            plugin_queue_dropped_total.clone(),
        );
        registry.register(
            "alerts",
            "Alerts raised, by rule, priority and plugin",
            alerts_total.clone(),
        );
        registry.register(
            "plugin_calls",
            "Batch calls into a plugin",
            plugin_calls_total.clone(),
        );
        registry.register(
            "plugin_failures",
            "Failed plugin calls, by plugin and cause",
            plugin_failures_total.clone(),
        );
        registry.register(
            "plugin_quarantines",
            "Times a plugin was quarantined after repeated failures",
            plugin_quarantines_total.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Wall time of one batch call into a plugin",
            plugin_call_duration_seconds.clone(),
        );
        registry.register(
            "plugin_reloads",
            "Plugin loads, swaps and unloads by the reload watcher, by result",
            plugin_reloads_total.clone(),
        );
        registry.register(
            "plugin_swaps",
            "Dispatch-worker swaps to a plugin's new generation, by how the worker got the new instance",
            plugin_swaps_total.clone(),
        );
        registry.register(
            "plugin_swap_stall_seconds",
            "Time a dispatch worker spent swapping to a plugin's new generation, by how it got the new instance (handover: prepared by the reload path; worker: instantiated on the worker)",
            plugin_swap_stall_seconds.clone(),
        );
        registry.register(
            "actions",
            "Action requests from responders, by responder, action and result",
            actions_total.clone(),
        );
        registry.register(
            "capability_denied",
            "Action requests denied because the capability was not granted",
            capability_denied_total.clone(),
        );
        registry.register(
            "plugin_log_dropped",
            "Guest log lines dropped by the per-plugin log rate limit",
            plugin_log_dropped_total.clone(),
        );
        registry.register(
            "plugin_alerts_truncated",
            "Alerts dropped because a plugin returned more than its per-batch limit",
            plugin_alerts_truncated_total.clone(),
        );
        registry.register(
            "kernel_events",
            "Kernel source events per kind: emitted, filtered in the kernel, lost, delivered",
            kernel_events_total.clone(),
        );
        registry.register(
            "kernel_program_changes",
            "Steps that attached or detached kernel programs as subscriptions changed, by change",
            kernel_program_changes_total.clone(),
        );
        registry.register(
            "kernel_programs_changed",
            "Kernel programs attached or detached as subscriptions changed, by change",
            kernel_programs_changed_total.clone(),
        );
        registry.register(
            "kernel_program_change_seconds",
            "Time the last attach or detach step took (a detach's kernel release runs after it, on a background thread)",
            kernel_program_change_seconds.clone(),
        );
        registry.register(
            "kernel_program_release_seconds",
            "Time the kernel took to release the programs of the last detach step (grace periods; after the step, off the registry's path)",
            kernel_program_release_seconds.clone(),
        );
        registry.register(
            "kernel_kind_attached",
            "1 while a subscribable event kind has kernel programs attached, 0 otherwise",
            kernel_kind_attached.clone(),
        );
        let plugin_instances =
            Family::<PluginLabels, prometheus_client::metrics::gauge::Gauge>::default();
        registry.register(
            "plugin_instances",
            "Live plugin instances (one wasmtime Store each)",
            plugin_instances.clone(),
        );
        registry.register(
            "audit_errors",
            "Audit records that could not be written",
            audit_errors_total.clone(),
        );

        Metrics {
            plugin_instances,
            registry,
            events_received_total,
            events_routed_total,
            events_unrouted_total,
            events_dropped_total,
            plugin_queue_dropped_total,
            alerts_total,
            plugin_calls_total,
            plugin_failures_total,
            plugin_quarantines_total,
            plugin_call_duration_seconds,
            plugin_reloads_total,
            plugin_swaps_total,
            plugin_swap_stall_seconds,
            actions_total,
            capability_denied_total,
            plugin_log_dropped_total,
            plugin_alerts_truncated_total,
            kernel_events_total,
            kernel_program_changes_total,
            kernel_programs_changed_total,
            kernel_program_change_seconds,
            kernel_program_release_seconds,
            kernel_kind_attached,
            audit_errors_total,
            alert_series: AtomicUsize::new(0),
        }
    }

    /// The OpenMetrics text exposition of every metric (ends with `# EOF`). Families with no
    /// series yet are left out by prometheus-client.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an Err would only come from a broken Encode impl,
        // and then a partial exposition is still the most useful answer.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }

    // --- helpers for the common updates -------------------------------------------------------

    pub fn event_received(&self, source: &str) {
        self.events_received(source, 1);
    }

    pub fn events_received(&self, source: &str, n: u64) {
        self.events_received_total
            .get_or_create(&SourceLabels {
                source: source.into(),
            })
            .inc_by(n);
    }

    pub fn event_routed(&self) {
        self.events_routed_total.inc();
    }

    pub fn event_unrouted(&self) {
        self.events_unrouted_total.inc();
    }

    pub fn event_dropped(&self, cause: impl AsRef<str>) {
        self.events_dropped(cause, 1);
    }

    pub fn events_dropped(&self, cause: impl AsRef<str>, n: u64) {
        self.events_dropped_total
            .get_or_create(&DropLabels {
                cause: cause.as_ref().into(),
            })
            .inc_by(n);
    }

    pub fn plugin_queue_dropped(&self, plugin: &str) {
        self.plugin_queue_dropped_total
            .get_or_create(&PluginLabels {
                plugin: plugin.into(),
            })
            .inc();
    }

    /// Counts an alert. Past [`MAX_ALERT_SERIES`] distinct label sets, new rule ids are counted
    /// under [`OVERFLOW_RULE`].
    pub fn alert(&self, rule: &str, priority: &str, plugin: &str) {
        let mut labels = AlertLabels {
            rule: rule.into(),
            priority: priority.into(),
            plugin: plugin.into(),
        };
        // A soft cap: two threads racing on the same new series may count it twice.
        if self.alerts_total.get(&labels).is_none()
            && self.alert_series.fetch_add(1, Ordering::Relaxed) >= MAX_ALERT_SERIES
        {
            labels.rule = OVERFLOW_RULE.into();
        }
        self.alerts_total.get_or_create(&labels).inc();
    }

    /// Counts one batch call (successful or not) and records its duration.
    pub fn plugin_call(&self, plugin: &str, duration: Duration) {
        let labels = PluginLabels {
            plugin: plugin.into(),
        };
        self.plugin_calls_total.get_or_create(&labels).inc();
        self.plugin_call_duration_seconds
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    pub fn plugin_failure(&self, plugin: &str, cause: impl AsRef<str>) {
        self.plugin_failures_total
            .get_or_create(&FailureLabels {
                plugin: plugin.into(),
                cause: cause.as_ref().into(),
            })
            .inc();
    }

    pub fn plugin_quarantined(&self, plugin: &str) {
        self.plugin_quarantines_total
            .get_or_create(&PluginLabels {
                plugin: plugin.into(),
            })
            .inc();
    }

    pub fn plugin_reload(&self, result: impl AsRef<str>) {
        self.plugin_reloads_total
            .get_or_create(&ReloadLabels {
                result: result.as_ref().into(),
            })
            .inc();
    }

    /// Records the time a worker spent swapping `plugin` to a new generation.
    pub fn plugin_swap_stall(&self, plugin: &str, via: impl AsRef<str>, duration: Duration) {
        let labels = SwapLabels {
            plugin: plugin.into(),
            via: via.as_ref().into(),
        };
        self.plugin_swaps_total.get_or_create(&labels).inc();
        self.plugin_swap_stall_seconds
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    pub fn action(&self, responder: &str, action: &str, result: &str) {
        self.actions_total
            .get_or_create(&ActionLabels {
                responder: responder.into(),
                action: action.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn capability_denied(&self, plugin: &str, capability: &str) {
        self.capability_denied_total
            .get_or_create(&CapabilityLabels {
                plugin: plugin.into(),
                capability: capability.into(),
            })
            .inc();
    }

    pub fn plugin_alerts_truncated(&self, plugin: &str, n: u64) {
        self.plugin_alerts_truncated_total
            .get_or_create(&PluginLabels {
                plugin: plugin.into(),
            })
            .inc_by(n);
    }

    /// Adjusts the live-instance gauge of `plugin` by `delta` (+1 created, -1 dropped).
    pub fn plugin_instances_add(&self, plugin: &str, delta: i64) {
        self.plugin_instances
            .get_or_create(&PluginLabels {
                plugin: plugin.into(),
            })
            .inc_by(delta);
    }

    /// Live instances of `plugin`.
    pub fn instances(&self, plugin: &str) -> i64 {
        self.plugin_instances
            .get_or_create(&PluginLabels {
                plugin: plugin.into(),
            })
            .get()
    }

    pub fn plugin_log_dropped(&self, plugin: &str) {
        self.plugin_logs_dropped(plugin, 1);
    }

    pub fn plugin_logs_dropped(&self, plugin: &str, n: u64) {
        self.plugin_log_dropped_total
            .get_or_create(&PluginLabels {
                plugin: plugin.into(),
            })
            .inc_by(n);
    }

    // --- read accessors (tests, status output) ------------------------------------------------

    pub fn received(&self, source: &str) -> u64 {
        self.events_received_total
            .get(&SourceLabels {
                source: source.into(),
            })
            .map_or(0, |c| c.get())
    }

    pub fn dropped(&self, cause: impl AsRef<str>) -> u64 {
        self.events_dropped_total
            .get(&DropLabels {
                cause: cause.as_ref().into(),
            })
            .map_or(0, |c| c.get())
    }

    pub fn queue_dropped(&self, plugin: &str) -> u64 {
        self.plugin_queue_dropped_total
            .get(&PluginLabels {
                plugin: plugin.into(),
            })
            .map_or(0, |c| c.get())
    }

    pub fn alerts(&self, rule: &str, priority: &str, plugin: &str) -> u64 {
        self.alerts_total
            .get(&AlertLabels {
                rule: rule.into(),
                priority: priority.into(),
                plugin: plugin.into(),
            })
            .map_or(0, |c| c.get())
    }

    pub fn calls(&self, plugin: &str) -> u64 {
        self.plugin_calls_total
            .get(&PluginLabels {
                plugin: plugin.into(),
            })
            .map_or(0, |c| c.get())
    }

    pub fn failures(&self, plugin: &str, cause: impl AsRef<str>) -> u64 {
        self.plugin_failures_total
            .get(&FailureLabels {
                plugin: plugin.into(),
                cause: cause.as_ref().into(),
            })
            .map_or(0, |c| c.get())
    }

    pub fn quarantines(&self, plugin: &str) -> u64 {
        self.plugin_quarantines_total
            .get(&PluginLabels {
                plugin: plugin.into(),
            })
            .map_or(0, |c| c.get())
    }

    /// Swaps of `plugin` recorded with `via`.
    pub fn swaps(&self, plugin: &str, via: impl AsRef<str>) -> u64 {
        self.plugin_swaps_total
            .get(&SwapLabels {
                plugin: plugin.into(),
                via: via.as_ref().into(),
            })
            .map_or(0, |c| c.get())
    }

    pub fn reloads(&self, result: impl AsRef<str>) -> u64 {
        self.plugin_reloads_total
            .get(&ReloadLabels {
                result: result.as_ref().into(),
            })
            .map_or(0, |c| c.get())
    }

    pub fn actions(&self, responder: &str, action: &str, result: &str) -> u64 {
        self.actions_total
            .get(&ActionLabels {
                responder: responder.into(),
                action: action.into(),
                result: result.into(),
            })
            .map_or(0, |c| c.get())
    }

    pub fn denied(&self, plugin: &str, capability: &str) -> u64 {
        self.capability_denied_total
            .get(&CapabilityLabels {
                plugin: plugin.into(),
                capability: capability.into(),
            })
            .map_or(0, |c| c.get())
    }

    pub fn log_dropped(&self, plugin: &str) -> u64 {
        self.plugin_log_dropped_total
            .get(&PluginLabels {
                plugin: plugin.into(),
            })
            .map_or(0, |c| c.get())
    }

    /// Adds `n` to the kernel source counter of `kind` and `outcome`.
    pub fn kernel_events(&self, kind: &str, outcome: &str, n: u64) {
        self.kernel_events_total
            .get_or_create(&KernelLabels {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc_by(n);
    }

    /// Counts one step that attached or detached `programs` (> 0) kernel programs in `took`.
    pub fn kernel_program_change(&self, change: impl AsRef<str>, programs: usize, took: Duration) {
        let labels = ChangeLabels {
            change: change.as_ref().into(),
        };
        self.kernel_program_changes_total
            .get_or_create(&labels)
            .inc();
        self.kernel_programs_changed_total
            .get_or_create(&labels)
            .inc_by(programs as u64);
        self.kernel_program_change_seconds
            .get_or_create(&labels)
            .set(took.as_secs_f64());
    }

    /// Sets the attached flag of every kind in `kinds` (name, attached now).
    pub fn kernel_kinds_attached<'a>(&self, kinds: impl IntoIterator<Item = (&'a str, bool)>) {
        for (kind, attached) in kinds {
            self.kernel_kind_attached
                .get_or_create(&KindLabels { kind: kind.into() })
                .set(i64::from(attached));
        }
    }

    /// Attach or detach steps counted so far.
    pub fn program_changes(&self, change: impl AsRef<str>) -> u64 {
        self.kernel_program_changes_total
            .get(&ChangeLabels {
                change: change.as_ref().into(),
            })
            .map_or(0, |c| c.get())
    }

    /// Programs attached or detached so far.
    pub fn programs_changed(&self, change: impl AsRef<str>) -> u64 {
        self.kernel_programs_changed_total
            .get(&ChangeLabels {
                change: change.as_ref().into(),
            })
            .map_or(0, |c| c.get())
    }

    /// What the last attach or detach step took (`None` before the first).
    pub fn last_program_change(&self, change: impl AsRef<str>) -> Option<Duration> {
        self.kernel_program_change_seconds
            .get(&ChangeLabels {
                change: change.as_ref().into(),
            })
            .map(|g| Duration::from_secs_f64(g.get().max(0.0)))
    }

    /// What the kernel took to release the last detached programs (zero before the first).
    pub fn last_program_release(&self) -> Duration {
        Duration::from_secs_f64(self.kernel_program_release_seconds.get().max(0.0))
    }

    /// Whether `kind`'s programs are attached, as last reported (`None`: never reported).
    pub fn kind_attached(&self, kind: &str) -> Option<bool> {
        self.kernel_kind_attached
            .get(&KindLabels { kind: kind.into() })
            .map(|g| g.get() != 0)
    }

    pub fn kernel_events_of(&self, kind: &str, outcome: &str) -> u64 {
        self.kernel_events_total
            .get(&KernelLabels {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .map_or(0, |c| c.get())
    }

    pub fn alerts_truncated(&self, plugin: &str) -> u64 {
        self.plugin_alerts_truncated_total
            .get(&PluginLabels {
                plugin: plugin.into(),
            })
            .map_or(0, |c| c.get())
    }
}

/// A running metrics server. Dropping it stops the server and joins its thread.
pub struct ServerHandle {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("metrics server thread panicked");
            }
        }
    }
}

/// Serves `GET /metrics` on `addr` from a background thread; any other path is a 404 and any
/// other method on `/metrics` a 405.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<ServerHandle, MetricsError> {
    let server = tiny_http::Server::http(addr).map_err(|e| MetricsError::Bind {
        addr,
        reason: e.to_string(),
    })?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let server = Arc::clone(&server);
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || serve_loop(&server, &stop, &metrics))
            .map_err(|source| MetricsError::Thread { source })?
    };
    tracing::info!(addr = %bound, "serving metrics on /metrics");
    Ok(ServerHandle {
        addr: bound,
        server,
        stop,
        thread: Some(thread),
    })
}

fn serve_loop(server: &tiny_http::Server, stop: &AtomicBool, metrics: &Metrics) {
    loop {
        match server.recv() {
            Ok(request) => answer(request, metrics),
            Err(error) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                // A broken client connection; keep serving.
                tracing::debug!(%error, "metrics server: bad request");
            }
        }
    }
}

fn answer(request: tiny_http::Request, metrics: &Metrics) {
    let path = request.url().split('?').next().unwrap_or("");
    let response = match (request.method(), path) {
        (tiny_http::Method::Get, "/metrics") => {
            let mut response = tiny_http::Response::from_string(metrics.encode());
            if let Ok(header) =
                tiny_http::Header::from_bytes(&b"Content-Type"[..], CONTENT_TYPE.as_bytes())
            {
                response.add_header(header);
            }
            response
        }
        (_, "/metrics") => {
            tiny_http::Response::from_string("method not allowed\n").with_status_code(405)
        }
        _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
    };
    if let Err(error) = request.respond(response) {
        tracing::debug!(%error, "metrics server: writing the response failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn encode_lists_every_family() {
        let m = Metrics::new();
        m.event_received("replay");
        m.event_routed();
        m.event_unrouted();
        m.event_dropped(DropCause::QueueFull);
        m.plugin_queue_dropped("det");
        m.alert("sensitive_file", "warning", "det");
        m.plugin_call("det", Duration::from_micros(5));
        m.plugin_failure("det", FailureCause::Deadline);
        m.plugin_quarantined("det");
        m.plugin_reload(ReloadResult::Ok);
        m.action("resp", "notify", "ok");
        m.capability_denied("resp", "kill-process");
        m.plugin_logs_dropped("det", 2);
        m.plugin_log_dropped("det");
        m.plugin_alerts_truncated("det", 4);
        m.audit_errors_total.inc();
        let text = m.encode();
        for line in [
            "palisade_events_received_total{source=\"replay\"} 1",
            "palisade_events_routed_total 1",
            "palisade_events_unrouted_total 1",
            "palisade_events_dropped_total{cause=\"queue_full\"} 1",
            "palisade_plugin_queue_dropped_total{plugin=\"det\"} 1",
            "palisade_alerts_total{rule=\"sensitive_file\",priority=\"warning\",plugin=\"det\"} 1",
            "palisade_plugin_calls_total{plugin=\"det\"} 1",
            "palisade_plugin_failures_total{plugin=\"det\",cause=\"deadline\"} 1",
            "palisade_plugin_quarantines_total{plugin=\"det\"} 1",
            "palisade_plugin_call_duration_seconds_count{plugin=\"det\"} 1",
            "palisade_plugin_call_duration_seconds_bucket{le=\"0.0000025\",plugin=\"det\"} 0",
            "palisade_plugin_call_duration_seconds_bucket{le=\"0.000005\",plugin=\"det\"} 1",
            "palisade_plugin_call_duration_seconds_bucket{le=\"1.0\",plugin=\"det\"} 1",
            "palisade_plugin_reloads_total{result=\"ok\"} 1",
            "palisade_actions_total{responder=\"resp\",action=\"notify\",result=\"ok\"} 1",
            "palisade_capability_denied_total{plugin=\"resp\",capability=\"kill-process\"} 1",
            "palisade_plugin_log_dropped_total{plugin=\"det\"} 3",
            "palisade_plugin_alerts_truncated_total{plugin=\"det\"} 4",
            "palisade_audit_errors_total 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn kernel_program_changes_are_counted_and_exposed() {
        let m = Metrics::new();
        assert_eq!(m.program_changes(ProgramChange::Attach), 0);
        assert_eq!(m.last_program_change(ProgramChange::Detach), None);
        assert_eq!(m.kind_attached("file_open"), None);
        m.kernel_program_change(ProgramChange::Attach, 8, Duration::from_micros(1500));
        m.kernel_program_change(ProgramChange::Attach, 1, Duration::from_micros(250));
        m.kernel_program_change(ProgramChange::Detach, 9, Duration::from_millis(2));
        m.kernel_kinds_attached([("file_open", true), ("net_connect", false)]);
        assert_eq!(m.last_program_release(), Duration::ZERO);
        m.kernel_program_release_seconds.set(0.4);
        assert_eq!(m.program_changes(ProgramChange::Attach), 2);
        assert_eq!(m.programs_changed("attach"), 9);
        assert_eq!(m.program_changes(ProgramChange::Detach), 1);
        assert_eq!(
            m.last_program_change(ProgramChange::Attach),
            Some(Duration::from_micros(250))
        );
        assert_eq!(m.kind_attached("file_open"), Some(true));
        assert_eq!(m.kind_attached("net_connect"), Some(false));
        let text = m.encode();
        for line in [
            "palisade_kernel_program_changes_total{change=\"attach\"} 2",
            "palisade_kernel_program_changes_total{change=\"detach\"} 1",
            "palisade_kernel_programs_changed_total{change=\"attach\"} 9",
            "palisade_kernel_program_change_seconds{change=\"detach\"} 0.002",
            "palisade_kernel_kind_attached{kind=\"file_open\"} 1",
            "palisade_kernel_kind_attached{kind=\"net_connect\"} 0",
            "palisade_kernel_program_release_seconds 0.4",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn accessors_read_back_counts() {
        let m = Metrics::new();
        assert_eq!(m.dropped(DropCause::KernelLost), 0);
        m.events_dropped(DropCause::KernelLost, 7);
        m.events_received("replay", 10);
        m.plugin_failure("p", FailureCause::Trap);
        m.plugin_failure("p", "trap");
        m.plugin_reload("ok");
        assert_eq!(m.reloads(ReloadResult::Ok), 1);
        assert_eq!(m.dropped(DropCause::KernelLost), 7);
        assert_eq!(m.dropped("kernel_lost"), 7);
        assert_eq!(m.received("replay"), 10);
        assert_eq!(m.failures("p", FailureCause::Trap), 2);
        assert_eq!(m.failures("p", FailureCause::Memory), 0);
    }

    #[test]
    fn label_values_are_escaped_and_cut() {
        let m = Metrics::new();
        m.alert("evil\"} 1\nfake_metric 9", "warning", "p\\q");
        let long = "x".repeat(500);
        m.alert(&long, "warning", "p");
        let text = m.encode();
        assert!(
            text.contains(r#"rule="evil\"} 1\nfake_metric 9""#),
            "{text}"
        );
        assert!(text.contains(r#"plugin="p\\q""#), "{text}");
        assert!(!text.contains("\nfake_metric"), "{text}");
        assert!(text.contains(&format!("rule=\"{}\"", "x".repeat(MAX_LABEL_LEN))));
        assert!(!text.contains(&"x".repeat(MAX_LABEL_LEN + 1)));
    }

    #[test]
    fn alert_series_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_ALERT_SERIES + 5 {
            m.alert(&format!("r{i}"), "debug", "p");
        }
        assert_eq!(m.alerts("r9999", "debug", "p"), 1);
        assert_eq!(m.alerts(&format!("r{MAX_ALERT_SERIES}"), "debug", "p"), 0);
        assert_eq!(m.alerts(OVERFLOW_RULE, "debug", "p"), 5);
        // Known series keep counting after the cap.
        m.alert("r0", "debug", "p");
        assert_eq!(m.alerts("r0", "debug", "p"), 2);
    }

    #[test]
    fn serves_metrics_and_404() {
        let metrics = Arc::new(Metrics::new());
        metrics.event_received("replay");
        metrics.plugin_call("det", Duration::from_millis(2));
        let handle = serve("127.0.0.1:0".parse().unwrap(), Arc::clone(&metrics)).unwrap();
        let addr = handle.local_addr();
        assert_ne!(addr.port(), 0);

        let response = get(addr, "/metrics");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains(&format!("content-type: {CONTENT_TYPE}")),
            "{response}"
        );
        assert!(response.contains("palisade_events_received_total{source=\"replay\"} 1"));
        assert!(response.contains("# TYPE palisade_plugin_call_duration_seconds histogram"));
        assert!(response.trim_end().ends_with("# EOF"));

        // Updates show up on the next scrape.
        metrics.event_received("replay");
        assert!(
            get(addr, "/metrics").contains("palisade_events_received_total{source=\"replay\"} 2")
        );

        let response = get(addr, "/");
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");

        drop(handle);
        // Nothing answers once the handle is gone.
        assert!(TcpStream::connect(addr)
            .map(|mut s| {
                let _ = write!(s, "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out.is_empty()
            })
            .unwrap_or(true));
    }
}
