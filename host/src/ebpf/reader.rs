//! The ring-buffer reader loop: waits on the ring fd (woken by the kernel only above the fill
//! threshold) with a short timeout, drains every record, decodes it, enriches it from the
//! process cache, and hands it to the sink without ever blocking, in bursts, so each worker is
//! woken once per drain rather than once per event. Per-record problems are counted and logged
//! (rate-limited), never fatal.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use aya::maps::{MapData, RingBuf};

use super::decode::{decode, Clock};
use super::procs::ProcessCache;
use super::EbpfStats;
use crate::event::source::{Delivery, EventSink, StopFlag};

/// Decode errors logged before going quiet (the counter keeps counting).
const MAX_LOGGED_DECODE_ERRORS: u64 = 20;

/// Events handed to the sink at once; a drain longer than this wakes the workers every
/// `BURST` events so they start on a long drain before it ends.
pub(super) const BURST: usize = 256;

pub(super) struct Reader<'a> {
    pub ring: &'a mut RingBuf<MapData>,
    pub procs: &'a mut ProcessCache,
    pub clock: Clock,
    pub poll_ms: i32,
    pub stats: &'a EbpfStats,
    /// The daemon's tgid (its forks reach userspace, see `drain`).
    pub own_pid: u32,
    /// Loss accounting, checked between drains.
    pub watch: Option<&'a mut super::DropWatch>,
    /// Decoded events not yet handed over (kept to reuse its allocation).
    pub burst: Vec<crate::event::Event>,
}

impl Reader<'_> {
    /// Runs until `stop`; returns the number of events handed to the sink.
    pub fn run(&mut self, sink: &dyn EventSink, stop: &StopFlag) -> u64 {
        let mut delivered = 0;
        while !stop.is_stopped() {
            wait_readable(self.ring.as_raw_fd(), self.poll_ms);
            delivered += self.drain(sink);
            if let Some(watch) = self.watch.as_deref_mut() {
                watch.tick();
            }
        }
        // Whatever arrived before stop was set.
        delivered += self.drain(sink);
        if let Some(watch) = self.watch.as_deref_mut() {
            watch.finish();
        }
        delivered
    }

    fn drain(&mut self, sink: &dyn EventSink) -> u64 {
        let mut delivered = 0;
        while let Some(item) = self.ring.next() {
            self.stats.records.fetch_add(1, Ordering::Relaxed);
            match decode(&item, self.clock) {
                Ok(mut event) => {
                    drop(item);
                    self.procs.enrich(&mut event);
                    // The kernel passes the daemon's own forks through so its children get a
                    // parent in the cache; they are not delivered.
                    if event.process.pid == self.own_pid {
                        self.stats.own_dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if let Some(n) = self.stats.delivered_by_kind.get(event.kind() as usize) {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    self.burst.push(event);
                    delivered += 1;
                    if self.burst.len() >= BURST {
                        sink.submit_all(&mut self.burst, Delivery::NeverBlock);
                    }
                }
                Err(err) => {
                    let n = self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                    if n < MAX_LOGGED_DECODE_ERRORS {
                        tracing::warn!(error = %err, len = item.len(), "undecodable eBPF record skipped");
                    }
                }
            }
        }
        if !self.burst.is_empty() {
            sink.submit_all(&mut self.burst, Delivery::NeverBlock);
        }
        self.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
        delivered
    }
}

/// Blocks until the ring fd is readable or `timeout_ms` passes. Errors (EINTR) just return:
/// the caller drains and checks `stop` either way.
fn wait_readable(fd: i32, timeout_ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    #[expect(unsafe_code, reason = "poll(2) on one valid pollfd we own")]
    // SAFETY: `pfd` is a valid pollfd array of length 1 for the duration of the call.
    let _ = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}
