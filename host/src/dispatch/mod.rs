//! Dispatch: the router shards events by process across worker threads (bounded queues, never
//! blocking a live source); workers batch events and call the subscribed detectors; the alert
//! bus writes alerts to the outputs and routes them to responders.

pub mod alerts;
pub mod queue;
pub mod router;
pub mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Process-unique alert ids: a start-time nonce and a counter, so ids from different daemon
/// runs never collide (they are idempotency keys for notifications).
pub fn next_alert_id() -> String {
    static NONCE: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let nonce = *NONCE.get_or_init(|| {
        crate::plugin::state::wall_now_ns() ^ (u64::from(std::process::id()) << 40)
    });
    format!(
        "{:012x}-{:08x}",
        nonce & 0xffff_ffff_ffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
