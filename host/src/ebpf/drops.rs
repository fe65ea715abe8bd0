//! Loss accounting for the kernel source: every second (from the reader loop, never from a
//! hot path) it reads the kernel's per-CPU counters and the router's queue-drop counter,
//! mirrors them per kind into the metrics, and raises the host alert `palisade.events_dropped`
//! when kernel reservation failures or userspace queue drops grew: at most one alert per
//! interval, each carrying the totals and what is new since the previous alert, plus one
//! final alert at shutdown for anything not yet reported. Losses are never silent.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::{CountersHandle, EbpfStats, KernelCounters};
use crate::alert::{Alert, Origin, Priority, HOST_ORIGIN};
use crate::dispatch::next_alert_id;
use crate::event::EventKind;
use crate::metrics::{DropCause, Metrics};

/// Rule id of the host alert.
pub const EVENTS_DROPPED_RULE: &str = "palisade.events_dropped";

/// How often counters are read and how often an alert may be raised.
#[derive(Debug, Clone, Copy)]
pub struct DropWatchSettings {
    pub check_every: Duration,
    pub alert_interval: Duration,
}

impl Default for DropWatchSettings {
    fn default() -> Self {
        DropWatchSettings {
            check_every: Duration::from_secs(1),
            alert_interval: Duration::from_secs(10),
        }
    }
}

/// Where drop alerts and per-kind counters go.
pub struct DropWatch {
    counters: CountersHandle,
    stats: Arc<EbpfStats>,
    metrics: Arc<Metrics>,
    alerts: Sender<Alert>,
    hostname: String,
    settings: DropWatchSettings,
    /// Counters as last mirrored into the metrics.
    seen: KernelCounters,
    seen_delivered: Vec<u64>,
    /// Totals as of the last alert.
    reported_lost: u64,
    reported_queue: u64,
    last_alert: Option<Instant>,
    last_check: Instant,
    raised: u64,
}

fn zero() -> KernelCounters {
    let z = vec![0; EventKind::ALL.len()];
    KernelCounters {
        emitted: z.clone(),
        lost: z.clone(),
        filtered: z,
    }
}

impl DropWatch {
    pub fn new(
        counters: CountersHandle,
        stats: Arc<EbpfStats>,
        metrics: Arc<Metrics>,
        alerts: Sender<Alert>,
        hostname: String,
        settings: DropWatchSettings,
    ) -> Self {
        DropWatch {
            counters,
            stats,
            reported_queue: metrics.dropped(DropCause::QueueFull),
            metrics,
            alerts,
            hostname,
            settings,
            seen: zero(),
            seen_delivered: vec![0; EventKind::ALL.len()],
            reported_lost: 0,
            last_alert: None,
            last_check: Instant::now(),
            raised: 0,
        }
    }

    /// Alerts raised so far.
    pub fn raised(&self) -> u64 {
        self.raised
    }

    /// Called on every reader wake-up; checks once per `check_every`.
    pub fn tick(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_check) >= self.settings.check_every {
            self.last_check = now;
            self.check(now, false);
        }
    }

    /// The last check at shutdown: reports anything unreported whatever the interval, and
    /// logs the per-kind counters.
    pub fn finish(&mut self) {
        self.check(Instant::now(), true);
        let k = &self.seen;
        let per_kind: Vec<String> = EventKind::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| k.emitted[*i] + k.filtered[*i] + k.lost[*i] > 0)
            .map(|(i, kind)| {
                format!(
                    "{}: delivered {} filtered {} lost {}",
                    kind.as_str(),
                    self.seen_delivered[i],
                    k.filtered[i],
                    k.lost[i]
                )
            })
            .collect();
        tracing::info!(
            kernel_filtered = k.filtered_total(),
            kernel_emitted = k.emitted_total(),
            kernel_lost = k.lost_total(),
            queue_dropped = self.metrics.dropped(DropCause::QueueFull),
            drop_alerts = self.raised,
            per_kind = %per_kind.join("; "),
            "kernel source counters at shutdown"
        );
    }

    fn check(&mut self, now: Instant, force: bool) {
        let k = self.counters.read();
        for (i, kind) in EventKind::ALL.iter().enumerate() {
            let name = kind.as_str();
            let delivered = self
                .stats
                .delivered_by_kind
                .get(i)
                .map_or(0, |c| c.load(Ordering::Relaxed));
            let pairs = [
                ("emitted", k.emitted[i], self.seen.emitted[i]),
                ("filtered", k.filtered[i], self.seen.filtered[i]),
                ("lost", k.lost[i], self.seen.lost[i]),
                ("delivered", delivered, self.seen_delivered[i]),
            ];
            for (outcome, now_v, was) in pairs {
                if now_v > was {
                    self.metrics.kernel_events(name, outcome, now_v - was);
                }
            }
            self.seen_delivered[i] = delivered;
        }
        let lost_new = k.lost_total().saturating_sub(self.seen.lost_total());
        if lost_new > 0 {
            self.metrics.events_dropped(DropCause::KernelLost, lost_new);
        }
        self.seen = k;

        let lost = self.seen.lost_total();
        let queue = self.metrics.dropped(DropCause::QueueFull);
        let grew = lost > self.reported_lost || queue > self.reported_queue;
        let allowed = force
            || self
                .last_alert
                .is_none_or(|t| now.duration_since(t) >= self.settings.alert_interval);
        if grew && allowed {
            self.raise(lost, queue);
            self.last_alert = Some(now);
        }
    }

    fn raise(&mut self, lost: u64, queue: u64) {
        let (lost_new, queue_new) = (lost - self.reported_lost, queue - self.reported_queue);
        let by_kind: Vec<String> = EventKind::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| self.seen.lost[*i] > 0)
            .map(|(i, kind)| format!("{}={}", kind.as_str(), self.seen.lost[i]))
            .collect();
        tracing::warn!(
            kernel_lost = lost,
            kernel_lost_new = lost_new,
            queue_dropped = queue,
            queue_dropped_new = queue_new,
            "events dropped before reaching plugins"
        );
        let alert = Alert {
            id: next_alert_id(),
            ts_ns: crate::plugin::state::wall_now_ns(),
            rule: EVENTS_DROPPED_RULE.into(),
            priority: Priority::Warning,
            message: format!(
                "{lost_new} event(s) lost in the kernel (ring buffer full) and {queue_new} \
                 dropped at full plugin queues since the last report (totals {lost} and {queue})"
            ),
            tags: vec!["palisade".into(), "event_loss".into()],
            fields: vec![
                ("kernel_lost".into(), lost.to_string()),
                ("kernel_lost_new".into(), lost_new.to_string()),
                ("queue_dropped".into(), queue.to_string()),
                ("queue_dropped_new".into(), queue_new.to_string()),
                ("kernel_lost_by_kind".into(), by_kind.join(",")),
            ],
            plugin: Origin {
                name: HOST_ORIGIN.into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            hostname: self.hostname.clone(),
            event: None,
        };
        if self.alerts.send(alert).is_err() {
            tracing::error!("alert bus is gone; the events_dropped alert is only logged");
        }
        self.reported_lost = lost;
        self.reported_queue = queue;
        self.raised += 1;
    }
}
