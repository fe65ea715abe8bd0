//! A worker's event queue: a bounded channel whose consumer sleeps on its own flag rather than
//! in the channel's blocking receive, so the producer decides when to wake it. The kernel
//! reader hands over a burst of events and wakes each worker once at the end of it; a
//! blocking receive would be woken by the burst's first event, and crossbeam's receive spins
//! and calls `sched_yield` before it sleeps, both taken from the workload on a small machine.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

/// A bounded queue of `capacity` items.
pub fn shard_queue<T>(capacity: usize) -> (ShardSender<T>, ShardReceiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let wake = Arc::new(Wake::default());
    (
        ShardSender {
            tx,
            closer: Closer(Arc::clone(&wake)),
        },
        ShardReceiver { rx, wake },
    )
}

#[derive(Default)]
struct Wake {
    /// Set by the consumer just before it parks, cleared by whoever wakes it.
    sleeping: AtomicBool,
    /// The consumer's thread, registered the first time it sleeps.
    consumer: OnceLock<Thread>,
    /// Set when the sender is gone: an empty channel looks the same open or closed.
    closed: AtomicBool,
}

impl Wake {
    fn wake(&self) {
        // Pairs with the fence in `ShardReceiver::wait`: either the consumer sees the item
        // pushed before this, or this sees it asleep.
        fence(Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            if let Some(thread) = self.consumer.get() {
                thread.unpark();
            }
        }
    }
}

/// Why a push did not enqueue; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    Full(T),
    Disconnected(T),
}

pub struct ShardSender<T> {
    tx: Sender<T>,
    /// Declared after `tx`, so it drops after it: the channel is disconnected before the
    /// consumer is woken, and a sleeping consumer finds it closed at once.
    closer: Closer,
}

/// Marks the queue closed and wakes the consumer when the sender goes.
struct Closer(Arc<Wake>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.wake();
    }
}

impl<T> ShardSender<T> {
    /// Enqueues without waking the consumer; call [`Self::wake`] when the burst is over.
    pub fn push(&self, item: T) -> Result<(), PushError<T>> {
        self.tx.try_send(item).map_err(|err| match err {
            TrySendError::Full(item) => {
                // A full queue must be drained now, whatever the burst still holds.
                self.closer.0.wake();
                PushError::Full(item)
            }
            TrySendError::Disconnected(item) => PushError::Disconnected(item),
        })
    }

    /// Enqueues, waiting for room while the queue is full (offline sources); wakes the
    /// consumer before waiting so it can make that room.
    pub fn push_blocking(&self, item: T) -> Result<(), T> {
        match self.push(item) {
            Ok(()) => Ok(()),
            Err(PushError::Disconnected(item)) => Err(item),
            Err(PushError::Full(item)) => self.tx.send(item).map_err(|err| err.into_inner()),
        }
    }

    /// Wakes the consumer if it sleeps.
    pub fn wake(&self) {
        self.closer.0.wake();
    }
}

/// What [`ShardReceiver::wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Items are queued (or the queue disconnected: the next `try_recv` says which).
    Ready,
    /// `timeout` passed with nothing queued.
    TimedOut,
}

pub struct ShardReceiver<T> {
    rx: Receiver<T>,
    wake: Arc<Wake>,
}

impl<T> ShardReceiver<T> {
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    /// Sleeps until a producer wakes it, or `timeout`. Returns at once when items are queued.
    pub fn wait(&self, timeout: Duration) -> Wait {
        let consumer = self.wake.consumer.get_or_init(std::thread::current);
        debug_assert_eq!(consumer.id(), std::thread::current().id());
        self.wake.sleeping.store(true, Ordering::SeqCst);
        // Pairs with the fence in `Wake::wake` (see there).
        fence(Ordering::SeqCst);
        if self.has_news() {
            self.wake.sleeping.store(false, Ordering::SeqCst);
            return Wait::Ready;
        }
        std::thread::park_timeout(timeout);
        // Woken (flag cleared by the producer), timed out, or a spurious wake-up.
        let woken = !self.wake.sleeping.swap(false, Ordering::SeqCst);
        if woken || self.has_news() {
            Wait::Ready
        } else {
            Wait::TimedOut
        }
    }

    /// Items queued, or the sender gone (the next `try_recv` says which).
    fn has_news(&self) -> bool {
        !self.rx.is_empty() || self.wake.closed.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    fn is_sleeping(&self) -> bool {
        self.wake.sleeping.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Waits (bounded) until the consumer thread is parked in `wait`.
    fn until_asleep(rx: &Arc<ShardReceiver<u32>>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !rx.is_sleeping() {
            assert!(
                Instant::now() < deadline,
                "the consumer never went to sleep"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn push_does_not_wake_until_asked() {
        let (tx, rx) = shard_queue::<u32>(8);
        let rx = Arc::new(rx);
        let consumer_rx = Arc::clone(&rx);
        let consumer = std::thread::spawn(move || {
            // A spurious wake-up with nothing new is not a wake: sleep again.
            while consumer_rx.wait(Duration::from_secs(60)) == Wait::TimedOut {}
            consumer_rx.try_recv()
        });
        until_asleep(&rx);
        tx.push(7).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(!consumer.is_finished(), "a push alone woke the consumer");
        tx.wake();
        // Joins within the test's own time: a lost wake would park it for a minute.
        assert_eq!(consumer.join().unwrap(), Ok(7));
    }

    #[test]
    fn wait_returns_at_once_when_items_are_queued_and_times_out_when_not() {
        let (tx, rx) = shard_queue::<u32>(8);
        tx.push(1).unwrap();
        let started = Instant::now();
        assert_eq!(rx.wait(Duration::from_secs(5)), Wait::Ready);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.wait(Duration::from_millis(20)), Wait::TimedOut);
    }

    #[test]
    fn full_queue_wakes_the_consumer_and_blocking_push_waits_for_room() {
        let (tx, rx) = shard_queue::<u32>(2);
        let consumer = std::thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 5 {
                match rx.try_recv() {
                    Ok(v) => got.push(v),
                    Err(_) => {
                        rx.wait(Duration::from_secs(10));
                    }
                }
            }
            got
        });
        let started = Instant::now();
        // Five items through a queue of two: only a full queue waking the consumer lets the
        // blocking pushes finish; the burst's end then wakes it for the rest.
        for v in 0..5 {
            tx.push_blocking(v).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "blocking pushes waited for the consumer's timeout"
        );
        tx.wake();
        let got = consumer.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn dropping_the_sender_wakes_a_sleeping_consumer_into_disconnected() {
        let (tx, rx) = shard_queue::<u32>(2);
        let rx = Arc::new(rx);
        let consumer_rx = Arc::clone(&rx);
        let consumer = std::thread::spawn(move || {
            let started = Instant::now();
            consumer_rx.wait(Duration::from_secs(60));
            (started.elapsed(), consumer_rx.try_recv())
        });
        until_asleep(&rx);
        drop(tx);
        let (slept, got) = consumer.join().unwrap();
        assert_eq!(got, Err(TryRecvError::Disconnected));
        assert!(
            slept < Duration::from_secs(30),
            "the close was not seen: {slept:?}"
        );
    }

    #[test]
    fn a_sender_dropped_before_the_consumer_sleeps_is_seen_at_once() {
        let (tx, rx) = shard_queue::<u32>(2);
        drop(tx);
        let started = Instant::now();
        assert_eq!(rx.wait(Duration::from_secs(60)), Wait::Ready);
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn push_reports_full_and_disconnected() {
        let (tx, rx) = shard_queue::<u32>(1);
        tx.push(1).unwrap();
        assert_eq!(tx.push(2), Err(PushError::Full(2)));
        drop(rx);
        assert_eq!(tx.push(3), Err(PushError::Disconnected(3)));
    }
}
