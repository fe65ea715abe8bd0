//! The event source abstraction: the kernel (eBPF) source and the replay source both implement
//! [`EventSource`] and push into an [`EventSink`] (the dispatch router).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::Event;

/// Where sources deliver events. Implemented by the dispatch router.
pub trait EventSink: Send + Sync {
    /// Delivers one event. A live source must never wait: the sink counts and drops on overflow.
    /// A non-live source (replay) asks for backpressure so an offline run loses nothing.
    fn submit(&self, event: Event, delivery: Delivery);

    /// Delivers a burst of events in order, leaving `events` empty. Sinks that queue events
    /// for consumer threads wake each consumer once, after the burst, not once per event.
    fn submit_all(&self, events: &mut Vec<Event>, delivery: Delivery) {
        for event in events.drain(..) {
            self.submit(event, delivery);
        }
    }
}

/// How the sink treats a full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Live sources: never block; overflow is counted per plugin and dropped.
    NeverBlock,
    /// Offline sources: wait for room; nothing is dropped.
    Backpressure,
}

/// Cooperative stop signal shared by the daemon and its sources.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a source reports when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceSummary {
    /// Events handed to the sink.
    pub events: u64,
    /// Input records that could not be decoded (reported and skipped).
    pub bad_records: u64,
}

/// A producer of events. `run` blocks until the input ends or `stop` is set.
pub trait EventSource: Send {
    /// Short name for logs and metrics ("ebpf", "replay").
    fn name(&self) -> &str;
    /// How this source wants a full queue handled.
    fn delivery(&self) -> Delivery;
    /// Hooks the source to the daemon once it is built, before plugins load: the kernel source
    /// makes its in-kernel filter follow the plugins' subscriptions and reports its drops.
    /// Nothing to do for other sources.
    fn attach(&mut self, _daemon: &crate::daemon::Daemon) {}
    /// Produces events into `sink` until the end of input or `stop`.
    fn run(&mut self, sink: &dyn EventSink, stop: &StopFlag) -> Result<SourceSummary, SourceError>;
}

/// Why a source could not run. Per-record problems are not errors: they are logged and counted.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not available: {reason}. {fix}")]
    Unavailable {
        what: String,
        reason: String,
        fix: String,
    },
}
