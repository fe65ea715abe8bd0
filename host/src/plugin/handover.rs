//! Handing prepared plugin instances to the dispatch workers, and retiring old ones off them.
//!
//! On a load or replace, the reload path (`Registry::load`) instantiates and initialises one
//! instance of the new generation for every worker that is running the plugin, and delivers it
//! to that worker's [`Inbox`] *before* it publishes the new plugin set. On its first batch under
//! the new set the worker only moves the prepared instance into place, and the instance it
//! replaces goes to the reaper thread: tearing a Store down (unmapping its memory) would cost
//! the worker another 0.1-0.8 ms. Which generation handles a batch is still decided by the
//! worker's one snapshot of the plugin set per batch, so the handover changes how long a swap
//! stalls a worker, never which events each version sees.
//!
//! Must not: decide what is loaded (the registry does) or call into plugins (`instance` does).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::instance::Instance;

/// An instance prepared off the worker, to be used once its plugin set is live.
pub struct Prepared {
    /// Plugin name (the worker's key for its instances).
    pub plugin: String,
    pub instance: Instance,
    /// Generation of the plugin set that publishes this instance's plugin generation: the
    /// worker holds the instance until it sees that set (it is delivered just before).
    pub set_generation: u64,
}

/// One worker's side of the handover: which plugins it runs (so the reload path knows whom to
/// prepare instances for) and the instances delivered to it.
pub struct Inbox {
    worker: usize,
    running: Mutex<HashSet<String>>,
    /// Set after a delivery; lets the worker check for deliveries with one atomic load.
    pending: AtomicBool,
    delivered: Mutex<Vec<Prepared>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data (sets and vectors) stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inbox {
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Records that this worker holds (or no longer holds) an instance of `plugin`. Called only
    /// when that changes, never per batch.
    pub fn set_running(&self, plugin: &str, running: bool) {
        let mut set = lock(&self.running);
        if running {
            if !set.contains(plugin) {
                set.insert(plugin.to_string());
            }
        } else {
            set.remove(plugin);
        }
    }

    pub fn is_running(&self, plugin: &str) -> bool {
        lock(&self.running).contains(plugin)
    }

    /// True when something was delivered since the last [`Inbox::take`].
    pub fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Takes every delivered instance, oldest first.
    pub fn take(&self) -> Vec<Prepared> {
        // Clear the flag before draining: a delivery racing with this either lands in this
        // drain or sets the flag again for the next one; it is never missed.
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *lock(&self.delivered))
    }

    /// Delivers a prepared instance; the registry calls this before publishing its plugin set.
    pub fn deliver(&self, prepared: Prepared) {
        lock(&self.delivered).push(prepared);
        self.pending.store(true, Ordering::Release);
    }
}

/// Drops retired instances on its own thread.
struct Reaper {
    tx: Option<Sender<Instance>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has dropped what is queued.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The registry's handover hub: the workers' inboxes and the reaper.
pub struct Handover {
    inboxes: Mutex<Vec<Weak<Inbox>>>,
    prewarm: AtomicBool,
    reaper: Option<Reaper>,
}

impl Default for Handover {
    fn default() -> Self {
        Self::new()
    }
}

impl Handover {
    pub fn new() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Instance>();
        let reaper = match std::thread::Builder::new()
            .name("palisade-reaper".into())
            .spawn(move || rx.into_iter().for_each(drop))
        {
            Ok(thread) => Some(Reaper {
                tx: Some(tx),
                thread: Some(thread),
            }),
            Err(error) => {
                tracing::warn!(%error, "cannot start the instance reaper thread; workers drop old instances themselves");
                None
            }
        };
        Self {
            inboxes: Mutex::new(Vec::new()),
            prewarm: AtomicBool::new(true),
            reaper,
        }
    }

    /// A new worker's inbox. The hub keeps only a weak reference: a finished worker drops out.
    pub fn register(&self, worker: usize) -> Arc<Inbox> {
        let inbox = Arc::new(Inbox {
            worker,
            running: Mutex::new(HashSet::new()),
            pending: AtomicBool::new(false),
            delivered: Mutex::new(Vec::new()),
        });
        let mut inboxes = lock(&self.inboxes);
        inboxes.retain(|w| w.strong_count() > 0);
        inboxes.push(Arc::downgrade(&inbox));
        inbox
    }

    /// The inboxes of the live workers that currently run `plugin`.
    pub fn running(&self, plugin: &str) -> Vec<Arc<Inbox>> {
        lock(&self.inboxes)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|inbox| inbox.is_running(plugin))
            .collect()
    }

    /// Whether the reload path prepares instances for the workers (on by default; off makes
    /// every worker instantiate a new generation itself on its next batch).
    pub fn prewarm(&self) -> bool {
        self.prewarm.load(Ordering::Relaxed)
    }

    pub fn set_prewarm(&self, on: bool) {
        self.prewarm.store(on, Ordering::Relaxed);
    }

    /// Drops `instance` on the reaper thread (inline only if that thread could not start).
    pub fn retire(&self, instance: Instance) {
        match self.reaper.as_ref().and_then(|r| r.tx.as_ref()) {
            // A send fails only when the reaper is gone; the error, holding the instance, is
            // dropped right here then.
            Some(tx) => {
                let _ = tx.send(instance);
            }
            None => drop(instance),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_lists_only_live_workers_that_run_the_plugin() {
        let hub = Handover::new();
        let a = hub.register(0);
        let b = hub.register(1);
        a.set_running("p", true);
        b.set_running("q", true);
        let running: Vec<usize> = hub.running("p").iter().map(|i| i.worker()).collect();
        assert_eq!(running, [0]);
        a.set_running("p", false);
        assert!(hub.running("p").is_empty());
        b.set_running("p", true);
        drop(b);
        assert!(
            hub.running("p").is_empty(),
            "a finished worker is not a target"
        );
    }

    #[test]
    fn take_is_empty_until_something_is_delivered() {
        let hub = Handover::new();
        let inbox = hub.register(0);
        assert!(!inbox.has_pending());
        assert!(inbox.take().is_empty());
    }
}
