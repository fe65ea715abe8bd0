//! Test plugin `alert-flood`: returns 10,000 alerts (rule `flood`, field `n` = 0..9999) for any
//! exec/file_open event whose path contains "alert-flood"; every other event gets one
//! `alert-flood-ok` alert.

use palisade_sdk::{
    Alert, Alerts, Config, Detector, EventKind, EventRef, PluginInfo, Priority, Subscription,
};

/// Alerts returned for one marker event.
pub const FLOOD: usize = 10_000;

struct AlertFlood;

impl Detector for AlertFlood {
    fn describe() -> PluginInfo {
        PluginInfo::detector(
            "alert-flood",
            "0.1.0",
            "Test plugin: 10,000 alerts for an event whose path contains \"alert-flood\"",
        )
        .subscribe(Subscription::to([EventKind::Exec, EventKind::FileOpen]))
    }

    fn init(_: Config) -> Result<Self, String> {
        Ok(AlertFlood)
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        let path = event.path().unwrap_or("");
        if path.contains("alert-flood") {
            for n in 0..FLOOD {
                alerts.push(Alert::new("flood", Priority::Warning, "flood").field("n", n));
            }
        } else {
            alerts.push(
                Alert::new(
                    "alert-flood-ok",
                    Priority::Informational,
                    format!("no flood for {path}"),
                )
                .field("path", path),
            );
        }
    }
}

palisade_sdk::export_detector!(AlertFlood);
