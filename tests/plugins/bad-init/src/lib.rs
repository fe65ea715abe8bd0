//! Test plugin `bad-init`: a valid detector whose `init` always fails, so its load is rejected.

use palisade_sdk::{Alerts, Config, Detector, EventKind, EventRef, PluginInfo, Subscription};

/// The error `init` returns.
pub const ERROR: &str = "bad-init always refuses to start (test plugin)";

struct BadInit;

impl Detector for BadInit {
    fn describe() -> PluginInfo {
        PluginInfo::detector(
            "bad-init",
            "0.1.0",
            "Test plugin: init always returns an error",
        )
        .subscribe(Subscription::to([EventKind::Exec]))
    }

    fn init(_: Config) -> Result<Self, String> {
        Err(ERROR.to_string())
    }

    fn on_event(&mut self, _: EventRef<'_>, _: &mut Alerts) {}
}

palisade_sdk::export_detector!(BadInit);
