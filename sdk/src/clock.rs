//! The host's clock. In replay it follows the events' timestamps, so prefer it (or the event's
//! `ts_ns`) over any clock of the guest's own.

/// Now, in ns since the Unix epoch, as the host sees it.
pub fn now_ns() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::palisade::plugin::clock::now_ns();
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::now_ns();
}
