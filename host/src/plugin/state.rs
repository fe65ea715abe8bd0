//! Per-plugin durable state behind the WIT `state` interface: a bounded key/value map with TTLs
//! and atomic counters. Owned by the host and keyed by plugin name, so it survives instance
//! recycling, traps and hot reloads. Time comes from the pipeline clock (event time in replay).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Limits of one plugin's state.
#[derive(Debug, Clone, Copy)]
pub struct StateLimits {
    pub max_keys: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self {
            max_keys: 100_000,
            max_key_bytes: 512,
            max_value_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    TooLarge,
    QuotaExceeded,
}

#[derive(Debug, Clone)]
enum Value {
    Bytes(Vec<u8>),
    Counter(i64),
}

#[derive(Debug, Clone)]
struct Entry {
    value: Value,
    expires_ns: Option<u64>,
}

/// The host's notion of "now". Live: the wall clock. Replay: the newest event timestamp seen,
/// so TTLs and windows behave as when the events were recorded.
#[derive(Debug, Default)]
pub struct PipelineClock {
    event_time_ns: AtomicU64,
    follow_events: bool,
}

impl PipelineClock {
    pub fn wall() -> Self {
        Self {
            event_time_ns: AtomicU64::new(0),
            follow_events: false,
        }
    }

    pub fn event_time() -> Self {
        Self {
            event_time_ns: AtomicU64::new(0),
            follow_events: true,
        }
    }

    /// Records that an event with timestamp `ts_ns` entered the pipeline.
    pub fn observe(&self, ts_ns: u64) {
        if self.follow_events {
            self.event_time_ns.fetch_max(ts_ns, Ordering::Relaxed);
        }
    }

    /// True in replay: "now" is event time.
    pub fn follows_events(&self) -> bool {
        self.follow_events
    }

    pub fn now_ns(&self) -> u64 {
        let event_time = self.event_time_ns.load(Ordering::Relaxed);
        if self.follow_events && event_time != 0 {
            return event_time;
        }
        wall_now_ns()
    }
}

pub fn wall_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One plugin's state map. Callers pass "now" (ns since the epoch), so TTLs follow whatever
/// clock the call runs under: the wall clock live, the handled event's time in replay.
#[derive(Debug)]
pub struct StateStore {
    entries: Mutex<HashMap<String, Entry>>,
    limits: StateLimits,
}

impl StateStore {
    pub fn new(limits: StateLimits) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts),
        // so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live<'a>(
        entries: &'a mut HashMap<String, Entry>,
        key: &str,
        now: u64,
    ) -> Option<&'a mut Entry> {
        let expired = entries
            .get(key)
            .is_some_and(|e| e.expires_ns.is_some_and(|t| t <= now));
        if expired {
            entries.remove(key);
            return None;
        }
        entries.get_mut(key)
    }

    fn make_room(&self, entries: &mut HashMap<String, Entry>, now: u64) -> Result<(), StateError> {
        if entries.len() < self.limits.max_keys {
            return Ok(());
        }
        entries.retain(|_, e| e.expires_ns.is_none_or(|t| t > now));
        if entries.len() < self.limits.max_keys {
            Ok(())
        } else {
            Err(StateError::QuotaExceeded)
        }
    }

    fn expiry(now: u64, ttl_ms: Option<u64>) -> Option<u64> {
        ttl_ms.map(|ms| now.saturating_add(ms.saturating_mul(1_000_000)))
    }

    pub fn get(&self, key: &str, now: u64) -> Option<Vec<u8>> {
        let mut entries = self.lock();
        match &Self::live(&mut entries, key, now)?.value {
            Value::Bytes(b) => Some(b.clone()),
            Value::Counter(n) => Some(n.to_string().into_bytes()),
        }
    }

    pub fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        now: u64,
    ) -> Result<(), StateError> {
        if key.len() > self.limits.max_key_bytes || value.len() > self.limits.max_value_bytes {
            return Err(StateError::TooLarge);
        }
        let mut entries = self.lock();
        if Self::live(&mut entries, key, now).is_none() {
            self.make_room(&mut entries, now)?;
        }
        entries.insert(
            key.to_string(),
            Entry {
                value: Value::Bytes(value),
                expires_ns: Self::expiry(now, ttl_ms),
            },
        );
        Ok(())
    }

    pub fn delete(&self, key: &str, now: u64) -> bool {
        let mut entries = self.lock();
        let existed = Self::live(&mut entries, key, now).is_some();
        entries.remove(key);
        existed
    }

    /// Adds `delta` to a counter; a TTL applies from the counter's creation (fixed window).
    pub fn incr(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
        now: u64,
    ) -> Result<i64, StateError> {
        if key.len() > self.limits.max_key_bytes {
            return Err(StateError::TooLarge);
        }
        let mut entries = self.lock();
        if let Some(entry) = Self::live(&mut entries, key, now) {
            let current = match &entry.value {
                Value::Counter(n) => *n,
                Value::Bytes(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0),
            };
            let next = current.saturating_add(delta);
            entry.value = Value::Counter(next);
            return Ok(next);
        }
        self.make_room(&mut entries, now)?;
        entries.insert(
            key.to_string(),
            Entry {
                value: Value::Counter(delta),
                expires_ns: Self::expiry(now, ttl_ms),
            },
        );
        Ok(delta)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn store(max_keys: usize) -> StateStore {
        StateStore::new(StateLimits {
            max_keys,
            ..StateLimits::default()
        })
    }

    #[test]
    fn ttl_follows_the_callers_clock() {
        let s = store(10);
        s.set("k", b"v".to_vec(), Some(5), T0).unwrap();
        assert_eq!(s.get("k", T0), Some(b"v".to_vec()));
        assert!(s.get("k", T0 + 4 * MS).is_some());
        assert_eq!(s.get("k", T0 + 5 * MS), None);
    }

    #[test]
    fn counters_are_fixed_windows() {
        let s = store(10);
        assert_eq!(s.incr("c", 1, Some(10), T0).unwrap(), 1);
        assert_eq!(s.incr("c", 2, Some(10), T0 + MS).unwrap(), 3);
        assert_eq!(s.incr("c", 1, Some(10), T0 + 10 * MS).unwrap(), 1);
        assert_eq!(s.get("c", T0 + 10 * MS), Some(b"1".to_vec()));
    }

    #[test]
    fn quota_and_size_limits() {
        let s = store(2);
        s.set("a", vec![], None, T0).unwrap();
        s.set("b", vec![], Some(1), T0).unwrap();
        assert_eq!(s.set("c", vec![], None, T0), Err(StateError::QuotaExceeded));
        // Overwriting an existing key needs no room.
        s.set("a", vec![1], None, T0).unwrap();
        // Expired keys are reclaimed.
        s.set("c", vec![], None, T0 + 2 * MS).unwrap();
        assert_eq!(
            s.set(&"k".repeat(600), vec![], None, T0),
            Err(StateError::TooLarge)
        );
        assert!(s.delete("c", T0 + 2 * MS));
        assert!(!s.delete("c", T0 + 2 * MS));
    }

    #[test]
    fn the_event_time_clock_follows_the_newest_event() {
        let clock = PipelineClock::event_time();
        clock.observe(T0);
        clock.observe(T0 - MS);
        assert_eq!(clock.now_ns(), T0);
        assert!(clock.follows_events());
        assert!(!PipelineClock::wall().follows_events());
    }
}
