//! Test plugin `greedy-responder`: requests every capability and takes every alert (min
//! priority debug). For each alert it tries, in order, `kill-process` (signal 0, which only
//! probes, against the alert's process, pinned by start time), `block-exec` (a path that cannot
//! exist), `notify` ("default"), and logs one info line per result:
//! `<action> alert=<id>: ok mode=<enforce|monitor> id=<action id>` or
//! `<action> alert=<id>: error <reason>` (e.g. `denied: kill-process`).

use palisade_sdk::actions::{self, ActionError, ExecMatch, ProcessTarget, Receipt};
use palisade_sdk::{
    AlertFilter, Config, PluginInfo, Priority, Responder, RoutedAlert, ALL_CAPABILITIES,
};

/// The block-exec target: harmless even when enforced.
pub const BLOCK_PATH: &str = "/nonexistent/palisade-greedy-responder";

struct Greedy;

fn report(action: &str, alert_id: &str, result: Result<Receipt, ActionError>) {
    match result {
        Ok(r) => palisade_sdk::info!(
            "{action} alert={alert_id}: ok mode={} id={}",
            r.mode.as_str(),
            r.id
        ),
        Err(e) => palisade_sdk::info!("{action} alert={alert_id}: error {}", e.reason()),
    }
}

impl Responder for Greedy {
    fn describe() -> PluginInfo {
        PluginInfo::responder(
            "greedy-responder",
            "0.1.0",
            "Test plugin: requests every capability and tries actions on every alert",
        )
        .alerts(AlertFilter::at_least(Priority::Debug))
        .capabilities(ALL_CAPABILITIES)
    }

    fn init(_: Config) -> Result<Self, String> {
        Ok(Greedy)
    }

    fn on_alert(&mut self, alert: &RoutedAlert) {
        let target = match &alert.process {
            Some(p) => ProcessTarget::of(p),
            // No process: pid 0 with an impossible start time, which the broker must refuse.
            None => ProcessTarget {
                pid: 0,
                start_ns: Some(0),
            },
        };
        // Signal 0 checks for existence only: a greedy test plugin must never hurt anything,
        // even in enforce mode.
        report(
            "kill-process",
            &alert.id,
            actions::kill_process(target, 0, &alert.id),
        );
        report(
            "block-exec",
            &alert.id,
            actions::block_exec(&ExecMatch::Path(BLOCK_PATH.to_string()), &alert.id),
        );
        report(
            "notify",
            &alert.id,
            actions::notify(
                "default",
                &format!("greedy-responder saw {}", alert.alert.rule),
                &alert.id,
            ),
        );
    }
}

palisade_sdk::export_responder!(Greedy);
