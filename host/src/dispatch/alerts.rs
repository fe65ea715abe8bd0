//! The alert bus: one thread that writes every alert (detector, host and notification alerts)
//! to the outputs, then hands batches to the responders whose alert filter matches. Responder
//! calls have the same budgets and isolation as detector calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{select, Receiver, Sender};

use super::worker::report_failure;
use crate::alert::Alert;
use crate::output::AlertOutput;
use crate::plugin::convert;
use crate::plugin::instance::Instance;
use crate::plugin::registry::Registry;

/// Rule id of alerts that carry a responder's `notify` action to the outputs. Never routed
/// back to responders (that would loop).
pub const NOTIFICATION_RULE: &str = "palisade.notification";

pub struct AlertBus {
    registry: Arc<Registry>,
    outputs: Vec<Box<dyn AlertOutput>>,
    instances: HashMap<String, Instance>,
    hostname: String,
    internal_tx: Sender<Alert>,
    written: u64,
}

impl AlertBus {
    /// `internal_tx` feeds the bus's own unbounded channel (host alerts about responders,
    /// notifications raised while a responder runs on this thread).
    pub fn new(
        registry: Arc<Registry>,
        outputs: Vec<Box<dyn AlertOutput>>,
        hostname: String,
        internal_tx: Sender<Alert>,
    ) -> Self {
        Self {
            registry,
            outputs,
            instances: HashMap::new(),
            hostname,
            internal_tx,
            written: 0,
        }
    }

    /// Runs until both channels are closed and drained. Returns the number of alerts written.
    pub fn run(mut self, alerts: Receiver<Alert>, internal: Receiver<Alert>) -> u64 {
        let mut pending: Vec<Alert> = Vec::new();
        let mut alerts_open = true;
        loop {
            // Drain whatever is queued, then write and route it as one batch.
            while pending.len() < 1024 {
                if let Ok(alert) = internal.try_recv() {
                    pending.push(alert);
                    continue;
                }
                if !alerts_open {
                    break;
                }
                match alerts.try_recv() {
                    Ok(alert) => pending.push(alert),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        alerts_open = false;
                        break;
                    }
                }
            }
            if !pending.is_empty() {
                let batch = std::mem::take(&mut pending);
                self.handle(batch);
                continue;
            }
            if !alerts_open {
                // Responders may still have queued notifications; finish them, then stop.
                if internal.is_empty() {
                    break;
                }
                continue;
            }
            select! {
                recv(alerts) -> msg => match msg {
                    Ok(alert) => pending.push(alert),
                    Err(_) => alerts_open = false,
                },
                recv(internal) -> msg => if let Ok(alert) = msg { pending.push(alert) },
            }
        }
        self.flush();
        self.written
    }

    fn flush(&mut self) {
        for output in &mut self.outputs {
            if let Err(err) = output.flush() {
                tracing::error!(error = %err, "cannot flush alert output");
            }
        }
    }

    fn handle(&mut self, batch: Vec<Alert>) {
        let metrics = Arc::clone(self.registry.metrics());
        for alert in &batch {
            metrics.alert(&alert.rule, alert.priority.as_str(), &alert.plugin.name);
            for output in &mut self.outputs {
                if let Err(err) = output.write(alert) {
                    tracing::error!(error = %err, rule = %alert.rule, "cannot write alert to output");
                }
            }
            self.written += 1;
        }
        self.flush();
        self.route(&batch);
    }

    fn route(&mut self, batch: &[Alert]) {
        let set = self.registry.snapshot();
        self.instances.retain(|name, inst| {
            set.responders
                .iter()
                .any(|p| p.name() == name && p.generation == inst.generation)
        });
        for plugin in &set.responders {
            let Some(filter) = &plugin.alert_filter else {
                continue;
            };
            let routed: Vec<_> = batch
                .iter()
                .filter(|a| a.rule != NOTIFICATION_RULE && filter.matches(a))
                .map(convert::wit_routed_alert)
                .collect();
            if routed.is_empty() || plugin.health.is_quarantined() {
                continue;
            }
            // Replay: responders see the time of the newest triggering event.
            let event_now = self.registry.clock().follows_events().then(|| {
                batch
                    .iter()
                    .filter_map(|a| a.event.as_ref().map(|e| e.ts_ns))
                    .max()
                    .unwrap_or_else(|| self.registry.clock().now_ns())
            });
            let started = Instant::now();
            let result = match self.instances.entry(plugin.name().to_string()) {
                std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    Instance::start(self.registry.engine(), plugin).map(|inst| e.insert(inst))
                }
            }
            .and_then(|inst| inst.on_alerts(&routed, plugin.limits.deadline, event_now));
            self.registry
                .metrics()
                .plugin_call(plugin.name(), started.elapsed());
            match result {
                Ok(()) => plugin.health.record_success(),
                Err(err) => {
                    self.instances.remove(plugin.name());
                    report_failure(
                        &self.registry,
                        &self.internal_tx,
                        &self.hostname,
                        plugin,
                        &err,
                    );
                }
            }
        }
    }
}
