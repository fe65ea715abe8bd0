//! Durable per-plugin state kept by the host (key/value with TTL, atomic counters).
//!
//! Guest memory does not survive an instance being recycled (idle release, trap, hot reload);
//! this state does. Keys and values are bounded by the host: a write can fail with
//! [`StateError::TooLarge`] or [`StateError::QuotaExceeded`], and a detector should log and go on.
//!
//! Natively (unit tests of a plugin) an in-memory store with the same semantics is used; see
//! [`crate::testing`].

use core::time::Duration;

pub use crate::bindings::palisade::plugin::state::StateError;

fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
    // A zero TTL would expire at once; one millisecond is the host's smallest unit.
    ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
}

/// The value of `key`, none when absent or expired.
pub fn get(key: &str) -> Option<Vec<u8>> {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::palisade::plugin::state::get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::state_get(key);
}

/// Sets `key`; with a TTL it expires that long after now.
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StateError> {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::palisade::plugin::state::set(key, value, ttl_ms(ttl));
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::state_set(key, value, ttl_ms(ttl));
}

/// Removes `key`; true when it existed.
pub fn delete(key: &str) -> bool {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::palisade::plugin::state::delete(key);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::state_delete(key);
}

/// Atomically adds `delta` to the counter `key` (absent = 0) and returns the new value. With a
/// TTL the counter expires that long after its creation (a fixed window).
pub fn incr(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, StateError> {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::palisade::plugin::state::incr(key, delta, ttl_ms(ttl));
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::state_incr(key, delta, ttl_ms(ttl));
}

/// A UTF-8 string value; none when absent, expired or not UTF-8.
pub fn get_string(key: &str) -> Option<String> {
    get(key).and_then(|v| String::from_utf8(v).ok())
}

/// Sets a string value.
pub fn set_string(key: &str, value: &str, ttl: Option<Duration>) -> Result<(), StateError> {
    set(key, value.as_bytes(), ttl)
}

/// A `u64` value (8 bytes, little-endian); none when absent, expired or of another size.
pub fn get_u64(key: &str) -> Option<u64> {
    let bytes: [u8; 8] = get(key)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Sets a `u64` value (8 bytes, little-endian).
pub fn set_u64(key: &str, value: u64, ttl: Option<Duration>) -> Result<(), StateError> {
    set(key, &value.to_le_bytes(), ttl)
}

/// Records that `key` happened, for `ttl` (a presence flag: an empty value).
pub fn mark(key: &str, ttl: Duration) -> Result<(), StateError> {
    set(key, &[], Some(ttl))
}

/// True when `key` is present and not expired.
pub fn is_marked(key: &str) -> bool {
    get(key).is_some()
}

/// A counter over a fixed window: counts occurrences of something and says when a threshold is
/// crossed, e.g. "5 failed logins by one uid within 60 s".
#[derive(Debug, Clone)]
pub struct WindowCounter {
    prefix: String,
    window: Duration,
}

impl WindowCounter {
    /// Counters named `<prefix>:<key>`, each living `window` from its first increment.
    pub fn new(prefix: &str, window: Duration) -> Self {
        WindowCounter {
            prefix: prefix.to_string(),
            window,
        }
    }

    /// Adds one occurrence for `key` and returns the count in the current window.
    pub fn hit(&self, key: &str) -> Result<i64, StateError> {
        incr(&format!("{}:{key}", self.prefix), 1, Some(self.window))
    }

    /// Adds one occurrence and returns true exactly when the count reaches `threshold`
    /// (so the caller alerts once per window, not on every later hit).
    pub fn hit_reaches(&self, key: &str, threshold: i64) -> Result<bool, StateError> {
        Ok(self.hit(key)? == threshold)
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn values_round_trip_and_expire() {
        testing::reset();
        testing::set_now_ns(1_000_000_000);
        set_string("s", "hello", None).unwrap();
        set_u64("n", 42, Some(Duration::from_millis(10))).unwrap();
        assert_eq!(get_string("s").as_deref(), Some("hello"));
        assert_eq!(get_u64("n"), Some(42));
        assert_eq!(get_u64("s"), None, "wrong size is not a u64");
        testing::advance(Duration::from_millis(10));
        assert_eq!(get_u64("n"), None, "expired at ttl");
        assert!(delete("s"));
        assert!(!delete("s"));
    }

    #[test]
    fn counters_use_a_fixed_window_from_creation() {
        testing::reset();
        testing::set_now_ns(0);
        let c = WindowCounter::new("fail", Duration::from_secs(60));
        assert!(!c.hit_reaches("uid:1000", 3).unwrap());
        testing::advance(Duration::from_secs(30));
        assert!(!c.hit_reaches("uid:1000", 3).unwrap());
        assert!(c.hit_reaches("uid:1000", 3).unwrap());
        assert!(!c.hit_reaches("uid:1000", 3).unwrap());
        // The window started at the first hit, 30 s ago: 30 s more and it is gone.
        testing::advance(Duration::from_secs(30));
        assert_eq!(c.hit("uid:1000").unwrap(), 1);
    }

    #[test]
    fn marks_are_presence_flags() {
        testing::reset();
        mark("seen", Duration::from_secs(1)).unwrap();
        assert!(is_marked("seen"));
        testing::advance(Duration::from_secs(2));
        assert!(!is_marked("seen"));
    }

    #[test]
    fn quota_errors_surface() {
        testing::reset();
        testing::set_state_quota(Some(1));
        set("a", b"1", None).unwrap();
        assert_eq!(set("b", b"1", None), Err(StateError::QuotaExceeded));
        testing::set_state_quota(None);
    }
}
