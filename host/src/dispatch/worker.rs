//! A dispatch worker: owns one instance per plugin (created on the first batch it routes to
//! that plugin, released when idle, recreated after a failure), drains its queue into batches,
//! and calls each subscribed detector once per batch under the plugin's budget. When a plugin
//! it runs is replaced, it takes over the instance the reload path prepared for it (see
//! `plugin::handover`) instead of instantiating on the hot path, and hands old instances to the
//! reaper instead of tearing them down itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TryRecvError};

use super::queue::{ShardReceiver, Wait};

use super::next_alert_id;
use crate::alert::{Alert, Origin, Priority, HOST_ORIGIN};
use crate::event::Event;
use crate::metrics::SwapVia;
use crate::plugin::bindings::types as wit;
use crate::plugin::convert;
use crate::plugin::handover::{Inbox, Prepared};
use crate::plugin::instance::{CallError, FailureVerdict, Instance, LoadedPlugin};
use crate::plugin::registry::{PluginSet, Registry};

/// Worker tuning.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub batch_max: usize,
    /// Instances unused this long are dropped (an idle plugin costs only its compiled code).
    pub idle_release: Duration,
    pub hostname: String,
}

pub struct Worker {
    id: usize,
    registry: Arc<Registry>,
    alerts: Sender<Alert>,
    settings: WorkerSettings,
    instances: HashMap<String, Instance>,
    last_sweep: Instant,
    /// This worker's side of the handover.
    inbox: Arc<Inbox>,
    /// Prepared instances whose plugin set is not live yet (delivered just before it is).
    staged: HashMap<String, Prepared>,
    /// Generation of the plugin set the instances were last checked against.
    seen_set: u64,
    /// Plugins swapped without a prepared instance: the time spent so far, completed when the
    /// worker instantiates the new generation itself.
    cold_swaps: HashMap<String, Duration>,
}

impl Worker {
    pub fn new(
        id: usize,
        registry: Arc<Registry>,
        alerts: Sender<Alert>,
        settings: WorkerSettings,
    ) -> Self {
        let inbox = registry.handover().register(id);
        Self {
            id,
            registry,
            alerts,
            settings,
            instances: HashMap::new(),
            last_sweep: Instant::now(),
            inbox,
            staged: HashMap::new(),
            seen_set: 0,
            cold_swaps: HashMap::new(),
        }
    }

    /// Runs until every sender of `queue` is gone and the queue is drained.
    pub fn run(mut self, queue: ShardReceiver<Arc<Event>>) {
        let mut batch: Vec<Arc<Event>> = Vec::with_capacity(self.settings.batch_max);
        loop {
            match queue.try_recv() {
                Ok(event) => batch.push(event),
                Err(TryRecvError::Empty) => {
                    // Sleep until the router wakes this worker after a burst; no spinning.
                    if queue.wait(Duration::from_millis(250)) == Wait::TimedOut {
                        self.sweep_idle();
                    }
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
            }
            // Natural batching: take what is already queued, never wait for more.
            while batch.len() < self.settings.batch_max {
                match queue.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
            self.process(&batch);
            batch.clear();
            if self.last_sweep.elapsed() > Duration::from_secs(1) {
                self.sweep_idle();
            }
        }
        tracing::debug!(worker = self.id, "dispatch worker finished");
    }

    fn sweep_idle(&mut self) {
        self.last_sweep = Instant::now();
        // A swap that arrived while the queue was quiet is done now, off the hot path.
        let set = self.registry.snapshot();
        if self.swap_due(&set) {
            self.swap_in(&set);
        }
        let idle = self.settings.idle_release;
        let expired: Vec<String> = self
            .instances
            .iter()
            .filter(|(_, inst)| inst.last_used.elapsed() >= idle)
            .map(|(name, _)| name.clone())
            .collect();
        let handover = self.registry.handover();
        for name in expired {
            if let Some(instance) = self.instances.remove(&name) {
                self.inbox.set_running(&name, false);
                handover.retire(instance);
            }
        }
    }

    /// Whether the plugin set changed or instances were handed over since the last check.
    fn swap_due(&self, set: &PluginSet) -> bool {
        set.generation != self.seen_set || self.inbox.has_pending() || !self.staged.is_empty()
    }

    /// Brings the instances in line with `set`: retires those of generations no longer
    /// published and moves prepared instances of the new ones into place.
    fn swap_in(&mut self, set: &PluginSet) {
        let started = Instant::now();
        let handover = self.registry.handover();
        for prepared in self.inbox.take() {
            if let Some(older) = self.staged.insert(prepared.plugin.clone(), prepared) {
                handover.retire(older.instance);
            }
        }
        let published = |name: &str| {
            set.detectors
                .iter()
                .find(|p| p.name() == name)
                .map(|p| p.generation)
        };
        let stale: Vec<String> = self
            .instances
            .iter()
            .filter(|(name, inst)| published(name) != Some(inst.generation))
            .map(|(name, _)| name.clone())
            .collect();
        let mut swapped = Vec::new();
        for name in stale {
            if let Some(old) = self.instances.remove(&name) {
                handover.retire(old);
            }
            if published(&name).is_some() {
                swapped.push(name);
            } else {
                self.inbox.set_running(&name, false);
            }
        }
        let live: Vec<String> = self
            .staged
            .iter()
            .filter(|(_, p)| p.set_generation <= set.generation)
            .map(|(name, _)| name.clone())
            .collect();
        let mut installed = Vec::new();
        for name in live {
            let Some(prepared) = self.staged.remove(&name) else {
                continue;
            };
            if published(&name) != Some(prepared.instance.generation) {
                // Superseded (or unloaded) before this worker got to it.
                handover.retire(prepared.instance);
                continue;
            }
            let mut instance = prepared.instance;
            instance.last_used = Instant::now();
            if let Some(old) = self.instances.insert(name.clone(), instance) {
                handover.retire(old);
            }
            self.inbox.set_running(&name, true);
            installed.push(name);
        }
        self.cold_swaps.retain(|name, _| published(name).is_some());
        self.seen_set = set.generation;
        let took = started.elapsed();
        let metrics = self.registry.metrics();
        for name in &installed {
            metrics.plugin_swap_stall(name, SwapVia::Handover, took);
        }
        for name in swapped {
            if !installed.contains(&name) {
                self.cold_swaps.insert(name, took);
            }
        }
    }

    /// Calls every subscribed detector once with its share of `batch`.
    pub fn process(&mut self, batch: &[Arc<Event>]) {
        let set = self.registry.snapshot();
        if self.swap_due(&set) {
            self.swap_in(&set);
        }
        let mut full: Option<convert::LoweredBatch> = None;
        let mut subset_cache: Option<(Vec<usize>, convert::LoweredBatch)> = None;
        for plugin in &set.detectors {
            let indices: Vec<usize> = (0..batch.len())
                .filter(|&i| plugin.interest.matches(&batch[i]))
                .collect();
            if indices.is_empty() {
                continue;
            }
            let metrics = Arc::clone(self.registry.metrics());
            if plugin.health.is_quarantined() {
                for _ in &indices {
                    metrics.plugin_queue_dropped(plugin.name());
                }
                continue;
            }
            let wit_batch: &convert::LoweredBatch = if indices.len() == batch.len() {
                full.get_or_insert_with(|| convert::wit_batch(batch.iter()))
            } else {
                if subset_cache.as_ref().is_none_or(|(idx, _)| *idx != indices) {
                    let events = indices.iter().map(|&i| &batch[i]);
                    subset_cache = Some((indices.clone(), convert::wit_batch(events)));
                }
                match &subset_cache {
                    Some((_, b)) => b,
                    None => continue,
                }
            };
            // Replay: the plugin sees the time of the newest event it is handling.
            let event_now = self
                .registry
                .clock()
                .follows_events()
                .then(|| indices.iter().map(|&i| batch[i].ts_ns).max().unwrap_or(0));
            let started = Instant::now();
            let result = self.call(plugin, wit_batch, event_now);
            metrics.plugin_call(plugin.name(), started.elapsed());
            match result {
                Ok(alerts) => {
                    plugin.health.record_success();
                    self.emit(plugin, alerts, batch, &indices);
                }
                Err(err) => self.failed(plugin, &err),
            }
        }
    }

    fn call(
        &mut self,
        plugin: &LoadedPlugin,
        batch: &convert::LoweredBatch,
        event_now: Option<u64>,
    ) -> Result<Vec<wit::Alert>, CallError> {
        let instance = match self.instances.entry(plugin.name().to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let started = Instant::now();
                let started_result = Instance::start(self.registry.engine(), plugin);
                // A swap without a prepared instance: the worker pays for instantiation.
                if let Some(before) = self.cold_swaps.remove(plugin.name()) {
                    if started_result.is_ok() {
                        self.registry.metrics().plugin_swap_stall(
                            plugin.name(),
                            SwapVia::Worker,
                            before + started.elapsed(),
                        );
                    }
                }
                let instance = started_result?;
                self.inbox.set_running(plugin.name(), true);
                e.insert(instance)
            }
        };
        let result = instance.on_events(batch, plugin.limits.deadline, event_now);
        if result.is_err() {
            // The Store is poisoned after a trap: the next batch gets a fresh instance (the
            // worker still counts as running the plugin, so a reload prepares one for it).
            if let Some(poisoned) = self.instances.remove(plugin.name()) {
                self.registry.handover().retire(poisoned);
            }
        }
        result
    }

    fn emit(
        &self,
        plugin: &LoadedPlugin,
        alerts: Vec<wit::Alert>,
        batch: &[Arc<Event>],
        indices: &[usize],
    ) {
        let metrics = self.registry.metrics();
        let max = plugin.limits.max_alerts_per_batch;
        if alerts.len() > max {
            tracing::warn!(
                plugin = plugin.name(),
                returned = alerts.len(),
                max,
                "plugin returned too many alerts; extra alerts dropped"
            );
        }
        for alert in alerts.into_iter().take(max) {
            if plugin.overrides.disabled_rules.contains(&alert.rule) {
                continue;
            }
            let priority = plugin
                .overrides
                .priorities
                .iter()
                .find(|(rule, _)| *rule == alert.rule)
                .map(|(_, p)| *p)
                .unwrap_or_else(|| convert::priority(alert.priority));
            let event = indices
                .get(alert.event_index as usize)
                .map(|&i| Arc::clone(&batch[i]));
            if event.is_none() {
                tracing::warn!(plugin = plugin.name(), rule = %alert.rule, index = alert.event_index, "alert names an event outside its batch");
            }
            let alert = Alert {
                id: next_alert_id(),
                ts_ns: crate::plugin::state::wall_now_ns(),
                rule: alert.rule,
                priority,
                message: alert.message,
                tags: alert.tags,
                fields: alert.fields,
                plugin: Origin {
                    name: plugin.name().to_string(),
                    version: plugin.info.version.clone(),
                },
                hostname: self.settings.hostname.clone(),
                event,
            };
            if self.alerts.send(alert).is_err() {
                metrics.event_dropped(crate::metrics::DropCause::QueueFull);
            }
        }
    }

    fn failed(&self, plugin: &LoadedPlugin, err: &CallError) {
        report_failure(
            &self.registry,
            &self.alerts,
            &self.settings.hostname,
            plugin,
            err,
        );
    }
}

/// Logs, counts and, on quarantine, raises `palisade.plugin_failure`. Shared by the detector
/// workers and the responder bus.
pub fn report_failure(
    registry: &Registry,
    alerts: &Sender<Alert>,
    hostname: &str,
    plugin: &LoadedPlugin,
    err: &CallError,
) {
    let metrics = registry.metrics();
    metrics.plugin_failure(plugin.name(), err.cause.metric());
    tracing::error!(plugin = plugin.name(), version = %plugin.info.version, cause = err.cause.as_str(), detail = %err.detail, "plugin call failed; instance will be recreated");
    if let FailureVerdict::Quarantined(backoff) = plugin.health.record_failure(&plugin.failure) {
        metrics.plugin_quarantined(plugin.name());
        let backoff_desc = if backoff == Duration::MAX {
            "disabled until reloaded".to_string()
        } else {
            format!("retried in {} ms", backoff.as_millis())
        };
        tracing::error!(plugin = plugin.name(), cause = err.cause.as_str(), backoff = %backoff_desc, "plugin quarantined after repeated failures");
        let alert = Alert {
            id: next_alert_id(),
            ts_ns: crate::plugin::state::wall_now_ns(),
            rule: "palisade.plugin_failure".into(),
            priority: Priority::Error,
            message: format!(
                "plugin {} {} quarantined after {} consecutive failures (last: {}); {}",
                plugin.name(),
                plugin.info.version,
                plugin.failure.max_consecutive,
                err,
                backoff_desc
            ),
            tags: vec!["palisade".into(), "plugin_health".into()],
            fields: vec![
                ("plugin".into(), plugin.name().to_string()),
                ("plugin_version".into(), plugin.info.version.clone()),
                ("cause".into(), err.cause.as_str().to_string()),
                ("detail".into(), err.detail.clone()),
            ],
            plugin: Origin {
                name: HOST_ORIGIN.into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            hostname: hostname.to_string(),
            event: None,
        };
        let _ = alerts.send(alert);
    }
}
