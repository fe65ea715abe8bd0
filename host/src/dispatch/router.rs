//! The router: the `EventSink` every source writes into. It shards by tgid (so one process's
//! events stay in order on one worker) into bounded queues. A live source is never blocked: a
//! full queue drops the event and counts it per plugin that would have received it.

use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam_channel::{Sender, TrySendError};

use crate::event::source::{Delivery, EventSink};
use crate::event::Event;
use crate::metrics::{DropCause, Metrics};
use crate::plugin::registry::Registry;
use crate::plugin::state::PipelineClock;

pub struct Router {
    /// Emptied by `close`, so workers see their queues disconnect even while sources still
    /// hold the sink.
    shards: ArcSwap<Vec<Sender<Arc<Event>>>>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    clock: Arc<PipelineClock>,
    /// This source's `events_received_total` series, looked up once: the per-event label
    /// lookup allocated and hashed the source name on the hot path.
    received: prometheus_client::metrics::counter::Counter,
}

impl Router {
    pub fn new(
        shards: Vec<Sender<Arc<Event>>>,
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

impl EventSink for Router {
    fn submit(&self, event: Event, delivery: Delivery) {
        self.received.inc();
        self.clock.observe(event.ts_ns);
        let set = self.registry.snapshot();
        // Cheap first filter on the union of subscribed kinds; workers do the exact match.
        if !set.kinds.contains(event.kind()) {
            self.metrics.events_unrouted_total.inc();
            return;
        }
        let shards = self.shards.load();
        if shards.is_empty() {
            self.metrics.event_dropped(DropCause::QueueFull);
            return;
        }
        let shard = &shards[event.process.pid as usize % shards.len()];
        let event = Arc::new(event);
        self.metrics.events_routed_total.inc();
        match delivery {
            Delivery::Backpressure => {
                if shard.send(event).is_err() {
                    self.metrics.event_dropped(DropCause::QueueFull);
                }
            }
            Delivery::NeverBlock => match shard.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) | Err(TrySendError::Disconnected(event)) => {
                    self.metrics.event_dropped(DropCause::QueueFull);
                    for plugin in set.detectors.iter().filter(|p| p.interest.matches(&event)) {
                        self.metrics.plugin_queue_dropped(plugin.name());
                    }
                }
            },
        }
    }
}
