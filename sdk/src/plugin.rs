//! The traits a plugin implements ([`Detector`], [`Responder`]) and the glue the export macros
//! call. Plugin state lives in a `thread_local!` declared by the export macro: a wasm instance
//! is single-threaded, and an instance may be recycled at any time, so anything that must
//! outlive it belongs in [`crate::state`].

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::bindings::palisade::plugin::types::{Alert, EventBatch, PluginInfo, RoutedAlert};
use crate::bindings::RawConfig;
use crate::config::Config;
use crate::event::{Alerts, EventRef};

/// A detector: receives the events it subscribed to, raises alerts.
pub trait Detector: Sized + 'static {
    /// Describes the plugin (name, version, subscriptions, default config). Called once per
    /// load, before `init`; must not depend on configuration.
    fn describe() -> PluginInfo;

    /// Builds the detector from its configuration (defaults overridden by the sidecar). An
    /// error rejects the load and is shown to the operator: name the key that is wrong.
    fn init(config: Config) -> Result<Self, String>;

    /// Handles one event; push alerts into `alerts`. Called in batch order.
    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts);
}

/// A responder: receives the alerts its filter selects, asks the broker for actions.
pub trait Responder: Sized + 'static {
    /// Describes the plugin (name, version, alert filter, capabilities, default config).
    fn describe() -> PluginInfo;

    /// Builds the responder from its configuration. An error rejects the load.
    fn init(config: Config) -> Result<Self, String>;

    /// Handles one alert.
    fn on_alert(&mut self, alert: &RoutedAlert);
}

/// Runs `detector` over every event of `batch` and returns the alerts, each carrying the index
/// of its event. This is what `on-events` does; tests call it directly.
pub fn run_batch<D: Detector>(detector: &mut D, batch: &EventBatch) -> Vec<Alert> {
    let mut alerts = Alerts::new();
    let mut bad_index = 0u32;
    for (i, event) in batch.events.iter().enumerate() {
        let Some(process) = batch.processes.get(event.process as usize) else {
            bad_index += 1;
            continue;
        };
        let index = i as u32;
        alerts.set_event(index);
        detector.on_event(
            EventRef {
                index,
                ts_ns: event.ts_ns,
                process,
                data: &event.data,
            },
            &mut alerts,
        );
    }
    if bad_index > 0 {
        crate::warn!("skipped {bad_index} event(s) whose process index is out of range");
    }
    alerts.into_vec()
}

/// Runs `responder` over every alert of a batch.
pub fn run_alerts<R: Responder>(responder: &mut R, alerts: &[RoutedAlert]) {
    for alert in alerts {
        responder.on_alert(alert);
    }
}

/// Glue called by the export macros. Not a stable API.
#[doc(hidden)]
pub mod glue {
    use super::*;

    pub fn detector_describe<D: Detector>() -> PluginInfo {
        D::describe()
    }

    pub fn detector_init<D: Detector>(
        slot: &'static LocalKey<RefCell<Option<D>>>,
        config: RawConfig,
    ) -> Result<(), String> {
        // Drop any previous instance first, so a failing re-init leaves nothing half-configured.
        slot.with(|s| *s.borrow_mut() = None);
        let detector = D::init(Config::new(config))?;
        slot.with(|s| *s.borrow_mut() = Some(detector));
        Ok(())
    }

    pub fn detector_on_events<D: Detector>(
        slot: &'static LocalKey<RefCell<Option<D>>>,
        batch: EventBatch,
    ) -> Vec<Alert> {
        slot.with(|s| match s.borrow_mut().as_mut() {
            Some(detector) => run_batch(detector, &batch),
            None => {
                crate::error!("on-events called before a successful init; batch ignored");
                Vec::new()
            }
        })
    }

    pub fn responder_describe<R: Responder>() -> PluginInfo {
        R::describe()
    }

    pub fn responder_init<R: Responder>(
        slot: &'static LocalKey<RefCell<Option<R>>>,
        config: RawConfig,
    ) -> Result<(), String> {
        slot.with(|s| *s.borrow_mut() = None);
        let responder = R::init(Config::new(config))?;
        slot.with(|s| *s.borrow_mut() = Some(responder));
        Ok(())
    }

    pub fn responder_on_alerts<R: Responder>(
        slot: &'static LocalKey<RefCell<Option<R>>>,
        alerts: Vec<RoutedAlert>,
    ) {
        slot.with(|s| match s.borrow_mut().as_mut() {
            Some(responder) => run_alerts(responder, &alerts),
            None => crate::error!("on-alerts called before a successful init; batch ignored"),
        })
    }
}
