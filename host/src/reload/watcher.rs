//! The plugin directory watcher: one thread that wakes on `notify` events, debounces bursts,
//! waits for each changed unit to settle, then reconciles it against what it last applied and
//! sends [`PluginChange`]s to the registry. It owns the last-applied state; it never loads
//! plugins and never blocks the registry (a full change channel only delays this thread).
//!
//! A unit is read only when all of these hold: no event for it for `debounce`; two observations
//! of its files (size, mtime, ctime, inode) `settle` apart are equal; and no writer is known to
//! hold one of its files open (inotify showed a create/modify and no close-after-write yet). The
//! last rule is what keeps a slow in-place writer that pauses longer than `settle` from being
//! loaded half-written. A writer whose close was never seen (events lost, a hard link) is
//! presumed gone once its file has not changed for `rescan_interval`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

use super::reconcile::{decide, read_unit, AppliedUnit};
use super::{classify, scan, FileRole, PluginChange, ReloadError, UnitState};

/// Room for raw `notify` events between the notify thread and the reload thread. On overflow the
/// reload thread forgets nothing: it re-reads the whole directory.
const EVENT_QUEUE: usize = 4096;
/// How often a missing or replaced plugin directory is looked for again.
const DIR_RETRY: Duration = Duration::from_millis(250);

/// Timing of the watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSettings {
    /// Quiet time after the last event for a unit before it is looked at.
    pub debounce: Duration,
    /// How long a unit's files must be observed unchanged before they are read.
    pub settle: Duration,
    /// Periodic full re-listing of the directory, a safety net for lost events. Also how long a
    /// writer whose close was never seen may leave its file unchanged before it is presumed gone.
    pub rescan_interval: Duration,
}

impl Default for WatchSettings {
    /// 100 ms debounce, 150 ms settle, 5 s rescan: a change takes effect in about 0.3 s.
    fn default() -> Self {
        WatchSettings {
            debounce: Duration::from_millis(100),
            settle: Duration::from_millis(150),
            rescan_interval: Duration::from_secs(5),
        }
    }
}

impl WatchSettings {
    /// How often units that changed but have not settled are looked at again.
    fn poll(&self) -> Duration {
        (self.settle / 3).clamp(Duration::from_millis(10), Duration::from_millis(100))
    }
}

/// A running directory watcher. Dropping it (or [`Watcher::stop`]) ends its thread and waits
/// for it.
#[derive(Debug)]
pub struct Watcher {
    dir: PathBuf,
    /// Dropped to tell the thread to stop.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching `dir` (non-recursively). The first pass sends an `Upsert` for every unit
    /// present once it has settled, so initial load and reload share one path. Fails if `dir`
    /// is missing or cannot be watched; later trouble with the directory is logged and retried.
    pub fn spawn(
        dir: PathBuf,
        settings: WatchSettings,
        changes: Sender<PluginChange>,
    ) -> Result<Watcher, ReloadError> {
        match std::fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(ReloadError::NotADir { dir }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReloadError::MissingDir { dir })
            }
            Err(source) => return Err(ReloadError::ReadDir { dir, source }),
        }
        let (event_tx, events) = crossbeam_channel::bounded(EVENT_QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let overflow_flag = Arc::clone(&overflowed);
        let forward = move |event: notify::Result<notify::Event>| {
            if let Err(TrySendError::Full(_)) = event_tx.try_send(event) {
                overflow_flag.store(true, Ordering::Relaxed);
            }
        };
        let mut notifier =
            notify::recommended_watcher(forward).map_err(|source| ReloadError::Watch {
                dir: dir.clone(),
                source,
            })?;
        notifier
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| ReloadError::Watch {
                dir: dir.clone(),
                source,
            })?;
        let (stop, stop_rx) = crossbeam_channel::bounded(0);
        let now = Instant::now();
        let state = Loop {
            dir_id: dir_identity(&dir),
            dir: dir.clone(),
            settings,
            changes,
            stop: stop_rx,
            events,
            overflowed,
            notifier,
            dir_ok: true,
            rewatch: false,
            applied: BTreeMap::new(),
            units: BTreeMap::new(),
            scan_due: Some(now),
            next_rescan: now + settings.rescan_interval,
            last_tick: now,
        };
        let thread = std::thread::Builder::new()
            .name("palisade-reload".into())
            .spawn(move || state.run())
            .map_err(|source| ReloadError::Thread {
                dir: dir.clone(),
                source,
            })?;
        tracing::info!(dir = %dir.display(), ?settings, "watching plugin directory");
        Ok(Watcher {
            dir,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the thread and waits for it to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(dir = %self.dir.display(), "plugin directory watcher thread panicked");
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the watcher knows about one stem between passes.
#[derive(Debug)]
struct Tracked {
    /// Latest observation (`None`: neither file present).
    observed: Option<UnitState>,
    /// When `observed` last changed.
    stable_since: Instant,
    /// Last notify event for one of the unit's files.
    last_event: Option<Instant>,
    /// Observation at the last reconcile (`None`: never reconciled).
    reconciled: Option<Option<UnitState>>,
    /// An event was seen: re-read even if the observation looks unchanged (coarse timestamps).
    force: bool,
    /// Per role (wasm, sidecar): when a writer was last seen writing a file it has not closed.
    writer: [Option<Instant>; 2],
}

impl Tracked {
    fn new(now: Instant) -> Self {
        Tracked {
            observed: None,
            stable_since: now,
            last_event: None,
            reconciled: None,
            force: false,
            writer: [None, None],
        }
    }

    fn dirty(&self) -> bool {
        self.force || self.reconciled.as_ref() != Some(&self.observed)
    }

    fn ready(&self, now: Instant, settings: &WatchSettings) -> bool {
        let quiet = self
            .last_event
            .is_none_or(|at| now.duration_since(at) >= settings.debounce);
        let settled = now.duration_since(self.stable_since) >= settings.settle;
        let writer_open = self
            .writer
            .iter()
            .flatten()
            .any(|at| now.duration_since(*at) < settings.rescan_interval);
        self.dirty() && quiet && settled && !writer_open
    }
}

fn role_index(role: FileRole) -> usize {
    match role {
        FileRole::Wasm => 0,
        FileRole::Sidecar => 1,
    }
}

/// Device and inode of the directory: a deleted and re-created directory needs a new watch.
fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

struct Loop {
    dir: PathBuf,
    settings: WatchSettings,
    changes: Sender<PluginChange>,
    stop: Receiver<()>,
    events: Receiver<notify::Result<notify::Event>>,
    overflowed: Arc<AtomicBool>,
    notifier: RecommendedWatcher,
    dir_id: Option<(u64, u64)>,
    /// False while the directory is missing or unreadable (the error was logged once).
    dir_ok: bool,
    /// The inotify watch is known dead (directory deleted or moved): add it again.
    rewatch: bool,
    applied: BTreeMap<String, AppliedUnit>,
    units: BTreeMap<String, Tracked>,
    /// A pass is due at this time (debounced after the latest event).
    scan_due: Option<Instant>,
    next_rescan: Instant,
    last_tick: Instant,
}

/// Whether the thread should keep going.
enum Flow {
    Continue,
    Stop,
}

impl Loop {
    fn run(mut self) {
        loop {
            let timeout = self
                .next_deadline()
                .saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(self.stop) -> _ => break,
                recv(self.events) -> event => {
                    if let Ok(event) = event {
                        self.on_event(event);
                    }
                }
                default(timeout) => {}
            }
            while let Ok(event) = self.events.try_recv() {
                self.on_event(event);
            }
            if self.overflowed.swap(false, Ordering::Relaxed) {
                tracing::warn!(dir = %self.dir.display(), "plugin directory events overflowed; re-reading every plugin");
                self.force_all();
            }
            let now = Instant::now();
            if now >= self.next_deadline() {
                if let Flow::Stop = self.tick(now) {
                    break;
                }
            }
        }
        tracing::debug!(dir = %self.dir.display(), "plugin directory watcher stopped");
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_rescan;
        if let Some(due) = self.scan_due {
            deadline = deadline.min(due);
        }
        if !self.dir_ok || self.rewatch {
            deadline = deadline.min(self.last_tick + DIR_RETRY);
        } else if self.units.values().any(Tracked::dirty) {
            deadline = deadline.min(self.last_tick + self.settings.poll());
        }
        deadline
    }

    fn force_all(&mut self) {
        for tracked in self.units.values_mut() {
            tracked.force = true;
        }
        self.scan_due = Some(Instant::now());
    }

    fn on_event(&mut self, event: notify::Result<notify::Event>) {
        let now = Instant::now();
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "plugin directory watch error; re-reading every plugin");
                self.force_all();
                return;
            }
        };
        if event.need_rescan() {
            self.force_all();
            return;
        }
        // Opens and reads change nothing, and the watcher's own reads produce them.
        if matches!(
            event.kind,
            EventKind::Access(
                AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
            )
        ) {
            return;
        }
        // Any other event, even for an ignored name (a symlink swap, a temp file renamed away),
        // asks for a cheap metadata pass; only units whose files changed are read.
        let due = now + self.settings.debounce;
        self.scan_due = Some(self.scan_due.map_or(due, |at| at.max(due)));
        for path in &event.paths {
            if path == &self.dir {
                if matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) {
                    self.rewatch = true;
                }
                continue;
            }
            if path.parent() != Some(self.dir.as_path()) {
                continue;
            }
            let Some((stem, role)) = path.file_name().and_then(classify) else {
                continue;
            };
            let tracked = self.units.entry(stem).or_insert_with(|| Tracked::new(now));
            tracked.last_event = Some(now);
            tracked.force = true;
            let writer = &mut tracked.writer[role_index(role)];
            match event.kind {
                EventKind::Create(_)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other) => {
                    *writer = Some(now);
                }
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Remove(_) => *writer = None,
                _ => {}
            }
        }
    }

    /// One pass: re-list the directory, update observations, reconcile units that settled.
    fn tick(&mut self, now: Instant) -> Flow {
        self.last_tick = now;
        self.scan_due = None;
        if now >= self.next_rescan {
            self.next_rescan = now + self.settings.rescan_interval;
        }
        if self.rewatch || !self.dir_ok {
            self.try_rewatch();
        }
        let listing = match scan(&self.dir) {
            Ok(listing) => listing,
            Err(error) => {
                if self.dir_ok {
                    tracing::error!(dir = %self.dir.display(), %error, "plugin directory unavailable; keeping the loaded plugins and retrying");
                    self.dir_ok = false;
                }
                return Flow::Continue;
            }
        };
        if !self.dir_ok {
            tracing::info!(dir = %self.dir.display(), "plugin directory is back");
            self.dir_ok = true;
            self.force_all();
            self.scan_due = None;
        }
        let identity = dir_identity(&self.dir);
        if identity != self.dir_id {
            // Replaced by a new directory: the old watch sees nothing any more.
            self.try_rewatch();
            self.dir_id = identity;
            self.force_all();
            self.scan_due = None;
        }

        let stems: BTreeSet<String> = listing
            .keys()
            .chain(self.units.keys())
            .chain(self.applied.keys())
            .cloned()
            .collect();
        for stem in stems {
            let observed = listing.get(&stem).cloned();
            let tracked = self
                .units
                .entry(stem.clone())
                .or_insert_with(|| Tracked::new(now));
            if tracked.observed != observed {
                tracked.observed = observed;
                tracked.stable_since = now;
            }
            if !tracked.ready(now, &self.settings) {
                continue;
            }
            if let Flow::Stop = self.reconcile_unit(&stem, now) {
                return Flow::Stop;
            }
        }
        // Forget stems that are gone, were never applied and have nothing pending.
        let applied = &self.applied;
        self.units.retain(|stem, tracked| {
            tracked.observed.is_some() || applied.contains_key(stem) || tracked.dirty()
        });
        Flow::Continue
    }

    fn try_rewatch(&mut self) {
        // The old watch may already be gone with its directory; failing to remove it is fine.
        let _ = self.notifier.unwatch(&self.dir);
        match self.notifier.watch(&self.dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.rewatch = false;
                self.dir_id = dir_identity(&self.dir);
                tracing::debug!(dir = %self.dir.display(), "plugin directory watch (re)established");
            }
            Err(error) => {
                self.rewatch = true;
                tracing::debug!(dir = %self.dir.display(), %error, "cannot watch plugin directory yet");
            }
        }
    }

    /// Reads one settled unit, sends what changed and records it as applied.
    fn reconcile_unit(&mut self, stem: &str, now: Instant) -> Flow {
        let Some(tracked) = self.units.get_mut(stem) else {
            return Flow::Continue;
        };
        let current = match &tracked.observed {
            None => Ok(None),
            Some(state) => read_unit(state),
        };
        let current = match current {
            Ok(current) => current,
            Err(ReloadError::Unstable { path, reason }) => {
                // Caught mid-write: start settling again from now.
                tracing::debug!(plugin = %stem, path = %path.display(), %reason, "plugin file still changing");
                tracked.stable_since = now;
                return Flow::Continue;
            }
            Err(error) => {
                // Unreadable or a non-UTF-8 sidecar: the running version (if any) stays. Tried
                // again when the files change or an event arrives for them.
                tracing::error!(plugin = %stem, %error, "cannot reload plugin; keeping the running version");
                tracked.reconciled = Some(tracked.observed.clone());
                tracked.force = false;
                return Flow::Continue;
            }
        };
        tracked.reconciled = Some(tracked.observed.clone());
        tracked.force = false;
        let Some(change) = decide(stem, self.applied.get(stem), current) else {
            tracing::trace!(plugin = %stem, "plugin files touched without a content change");
            return Flow::Continue;
        };
        // Recorded before the registry answers: a version it rejects is not sent again until
        // its content changes (the registry keeps the old one running and logs why).
        match &change {
            PluginChange::Upsert(snapshot) => {
                tracing::info!(plugin = %stem, path = %snapshot.wasm.display(), hash = %snapshot.wasm_hash_hex(), sidecar = snapshot.sidecar.is_some(), "plugin added or changed");
                self.applied
                    .insert(stem.to_owned(), AppliedUnit::from(snapshot));
            }
            PluginChange::Remove { .. } => {
                tracing::info!(plugin = %stem, "plugin removed");
                self.applied.remove(stem);
            }
        }
        self.send(change)
    }

    fn send(&self, change: PluginChange) -> Flow {
        crossbeam_channel::select! {
            send(self.changes, change) -> sent => match sent {
                Ok(()) => Flow::Continue,
                Err(_) => {
                    tracing::info!(dir = %self.dir.display(), "plugin change receiver gone; stopping the watcher");
                    Flow::Stop
                }
            },
            recv(self.stop) -> _ => Flow::Stop,
        }
    }
}
