//! Test plugin `log-flood`: writes 10,000 info log lines ("log-flood line N of event I") for
//! every exec/file_open event it receives, then returns one `log-flood-ok` alert for it.

use palisade_sdk::{
    Alert, Alerts, Config, Detector, EventKind, EventRef, PluginInfo, Priority, Subscription,
};

/// Log lines written per event.
pub const LINES: usize = 10_000;

struct LogFlood;

impl Detector for LogFlood {
    fn describe() -> PluginInfo {
        PluginInfo::detector(
            "log-flood",
            "0.1.0",
            "Test plugin: 10,000 log lines per event",
        )
        .subscribe(Subscription::to([EventKind::Exec, EventKind::FileOpen]))
    }

    fn init(_: Config) -> Result<Self, String> {
        Ok(LogFlood)
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        for n in 0..LINES {
            palisade_sdk::info!("log-flood line {n} of event {}", event.index);
        }
        alerts.push(
            Alert::new("log-flood-ok", Priority::Informational, "logged").field("lines", LINES),
        );
    }
}

palisade_sdk::export_detector!(LogFlood);
