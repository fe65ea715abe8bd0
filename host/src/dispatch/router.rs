//! The router: the `EventSink` every source writes into. It shards by tgid (so one process's
//! events stay in order on one worker) into bounded queues. A live source is never blocked: a
//! full queue drops the event and counts it per plugin that would have received it. Events
//! of a burst (`submit_all`) are queued first and each worker woken once after it.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::queue::{PushError, ShardSender};
use crate::event::source::{Delivery, EventSink};
use crate::event::Event;
use crate::metrics::{DropCause, Metrics};
use crate::plugin::registry::{PluginSet, Registry};
use crate::plugin::state::PipelineClock;

pub struct Router {
    /// Emptied by `close`, so workers see their queues disconnect even while sources still
    /// hold the sink.
    shards: ArcSwap<Vec<ShardSender<Arc<Event>>>>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    clock: Arc<PipelineClock>,
    /// This source's `events_received_total` series, looked up once: the per-event label
    /// lookup allocated and hashed the source name on the hot path.
    received: prometheus_client::metrics::counter::Counter,
}

impl Router {
    pub fn new(
        shards: Vec<ShardSender<Arc<Event>>>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        clock: Arc<PipelineClock>,
        source: &str,
    ) -> Self {
        let received = metrics
            .events_received_total
            .get_or_create(&crate::metrics::SourceLabels {
                source: source.into(),
            })
            .clone();
        Self {
            shards: ArcSwap::from_pointee(shards),
            registry,
            metrics,
            received,
            clock,
        }
    }
}

impl Router {
    /// Disconnects every worker queue; later submissions are counted as dropped.
    pub fn close(&self) {
        self.shards.store(Arc::new(Vec::new()));
    }
}

impl Router {
    /// Queues one event on its worker's shard without waking the worker; returns the shard
    /// it went to, `None` when it was not routed (no subscriber, or dropped and counted).
    fn route(
        &self,
        set: &PluginSet,
        shards: &[ShardSender<Arc<Event>>],
        event: Event,
        delivery: Delivery,
    ) -> Option<usize> {
        self.clock.observe(event.ts_ns);
        // Cheap first filter on the union of subscribed kinds; workers do the exact match.
        if !set.kinds.contains(event.kind()) {
            self.metrics.events_unrouted_total.inc();
            return None;
        }
        if shards.is_empty() {
            self.metrics.event_dropped(DropCause::QueueFull);
            return None;
        }
        let index = event.process.pid as usize % shards.len();
        let shard = &shards[index];
        let event = Arc::new(event);
        self.metrics.events_routed_total.inc();
        match delivery {
            Delivery::Backpressure => {
                if shard.push_blocking(event).is_err() {
                    self.metrics.event_dropped(DropCause::QueueFull);
                    return None;
                }
            }
            Delivery::NeverBlock => match shard.push(event) {
                Ok(()) => {}
                Err(PushError::Full(event)) | Err(PushError::Disconnected(event)) => {
                    self.metrics.event_dropped(DropCause::QueueFull);
                    for plugin in set.detectors.iter().filter(|p| p.interest.matches(&event)) {
                        self.metrics.plugin_queue_dropped(plugin.name());
                    }
                    return None;
                }
            },
        }
        Some(index)
    }
}

impl EventSink for Router {
    fn submit(&self, event: Event, delivery: Delivery) {
        let set = self.registry.snapshot();
        let shards = self.shards.load();
        self.received.inc();
        if let Some(index) = self.route(&set, &shards, event, delivery) {
            shards[index].wake();
        }
    }

    fn submit_all(&self, events: &mut Vec<Event>, delivery: Delivery) {
        let set = self.registry.snapshot();
        let shards = self.shards.load();
        self.received.inc_by(events.len() as u64);
        // Which shards this burst queued on.
        let mut touched = 0u64;
        for event in events.drain(..) {
            if let Some(index) = self.route(&set, &shards, event, delivery) {
                touched |= shard_bit(index);
            }
        }
        for (index, shard) in shards.iter().enumerate() {
            if touched & shard_bit(index) != 0 {
                shard.wake();
            }
        }
    }
}

/// Shard `index`'s bit in a burst's touched mask; past 64 shards every bit, so all of them are
/// woken.
fn shard_bit(index: usize) -> u64 {
    u32::try_from(index)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(u64::MAX)
}
