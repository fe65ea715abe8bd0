//! The traits a plugin implements ([`Detector`], [`Responder`]) and the glue the export macros
//! call. Plugin state lives in a `thread_local!` declared by the export macro: a wasm instance
//! is single-threaded, and an instance may be recycled at any time, so anything that must
//! outlive it belongs in [`crate::state`].

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::bindings::palisade::plugin::types::{self as w, Alert, PluginInfo};
use crate::bindings::RawConfig;
use crate::config::Config;
use crate::event::{Alerts, EventRef};
use crate::model::{EventBatch, RoutedAlert};
use crate::wire;

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
/// of its event. Tests call it directly: the batch goes through the same wire encoding and
/// decoding as the host's batches do in a deployed plugin.
pub fn run_batch<D: Detector>(detector: &mut D, batch: &EventBatch) -> Vec<Alert> {
    run_wire_batch(detector, &wire::encode_batch(batch))
}

/// What `on-events` does: decodes the batch's process table once, then each event in turn
/// (its strings copied out of the batch's buffer), and hands it to the detector.
fn run_wire_batch<D: Detector>(detector: &mut D, batch: &w::EventBatch) -> Vec<Alert> {
    let strings = wire::Strings::new(&batch.strings);
    let processes: Vec<_> = batch.processes.iter().map(|p| strings.process(p)).collect();
    let mut alerts = Alerts::new();
    let mut bad_index = 0u32;
    // One payload slot for the whole batch: its strings are reused from event to event.
    let mut data = crate::model::EventData::Exit(0);
    for (i, event) in batch.events.iter().enumerate() {
        let Some(process) = processes.get(event.process as usize) else {
            bad_index += 1;
            continue;
        };
        strings.event_data_into(&event.data, &mut data);
        let index = i as u32;
        alerts.set_event(index);
        detector.on_event(
            EventRef {
                index,
                ts_ns: event.ts_ns,
                process,
                data: &data,
            },
            &mut alerts,
        );
    }
    if bad_index > 0 {
        crate::warn!("skipped {bad_index} event(s) whose process index is out of range");
    }
    wire::warn_bad_spans(&strings);
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
        batch: w::EventBatch,
    ) -> Vec<Alert> {
        slot.with(|s| match s.borrow_mut().as_mut() {
            Some(detector) => run_wire_batch(detector, &batch),
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
        alerts: Vec<w::RoutedAlert>,
    ) {
        slot.with(|s| match s.borrow_mut().as_mut() {
            Some(responder) => {
                let alerts: Vec<RoutedAlert> =
                    alerts.into_iter().map(wire::decode_routed_alert).collect();
                run_alerts(responder, &alerts)
            }
            None => crate::error!("on-alerts called before a successful init; batch ignored"),
        })
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::bindings::palisade::plugin::types::Priority;
    use crate::model::{Event, EventData, Process};
    use crate::testing;

    /// Alerts on every exit event and remembers how many events it saw.
    struct Probe {
        seen: usize,
    }

    impl Detector for Probe {
        fn describe() -> PluginInfo {
            PluginInfo::detector("probe", "0.0.0", "test")
        }
        fn init(config: Config) -> Result<Self, String> {
            if config.boolean_or("fail", false)? {
                return Err("asked to fail".into());
            }
            Ok(Probe { seen: 0 })
        }
        fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
            self.seen += 1;
            if let EventData::Exit(code) = event.data {
                alerts.push(Alert::new(
                    "exit",
                    Priority::Notice,
                    format!("{} exited {code}", event.process.comm),
                ));
            }
        }
    }

    thread_local! {
        static SLOT: RefCell<Option<Probe>> = const { RefCell::new(None) };
    }

    #[test]
    fn batches_resolve_processes_and_index_alerts() {
        testing::reset();
        let mut batch = EventBatch::new();
        batch.push(&Process::new(1, "a", "/a"), 1, EventData::Fork(9));
        batch.push(&Process::new(2, "b", "/b"), 2, EventData::Exit(3));
        // An event pointing at a process that is not in the batch is skipped, with a warning.
        batch.events.push(Event {
            ts_ns: 3,
            process: 7,
            data: EventData::Exit(1),
        });
        batch.push(&Process::new(1, "a", "/a"), 4, EventData::Exit(0));
        let mut probe = Probe { seen: 0 };
        let alerts = run_batch(&mut probe, &batch);
        assert_eq!(probe.seen, 3);
        let got: Vec<(u32, &str)> = alerts
            .iter()
            .map(|a| (a.event_index, a.message.as_str()))
            .collect();
        assert_eq!(got, vec![(1, "b exited 3"), (3, "a exited 0")]);
        let logs = testing::take_logs();
        assert_eq!(logs.len(), 1);
        assert!(
            logs[0].1.contains("process index is out of range"),
            "{logs:?}"
        );
    }

    #[test]
    fn glue_keeps_the_instance_between_calls_and_drops_it_on_failed_init() {
        testing::reset();
        let mut batch = EventBatch::new();
        batch.push(&Process::new(1, "a", "/a"), 1, EventData::Exit(0));

        // Before init: ignored with an error log.
        assert!(glue::detector_on_events(&SLOT, wire::encode_batch(&batch)).is_empty());
        assert_eq!(testing::take_logs().len(), 1);

        glue::detector_init(&SLOT, Vec::new()).unwrap();
        assert_eq!(
            glue::detector_on_events(&SLOT, wire::encode_batch(&batch)).len(),
            1
        );
        assert_eq!(
            glue::detector_on_events(&SLOT, wire::encode_batch(&batch)).len(),
            1
        );
        assert_eq!(SLOT.with(|s| s.borrow().as_ref().map(|p| p.seen)), Some(2));

        let err = glue::detector_init(&SLOT, vec![("fail".into(), true.into())]).unwrap_err();
        assert_eq!(err, "asked to fail");
        assert!(SLOT.with(|s| s.borrow().is_none()));
        assert!(glue::detector_on_events(&SLOT, wire::encode_batch(&batch)).is_empty());
    }
}
