//! Test plugin `path-watch`: subscribes to file opens under `/tmp/palisade-kfilter/watched/`
//! only (a path-prefix subscription the kernel filter narrows on) and raises one alert per
//! event (rule `path-watch.open`) with fields `path` and `pid`, so the kernel filter tests can
//! count exactly what reached the plugin.

use palisade_sdk::{
    Alert, Alerts, Config, Detector, EventKind, EventRef, PluginInfo, Priority, Subscription,
};

/// The one prefix this plugin watches.
pub const PREFIX: &str = "/tmp/palisade-kfilter/watched/";

struct PathWatch;

impl Detector for PathWatch {
    fn describe() -> PluginInfo {
        PluginInfo::detector(
            "path-watch",
            "0.1.0",
            "Test plugin: one alert per file open under /tmp/palisade-kfilter/watched/",
        )
        .subscribe(Subscription::to([EventKind::FileOpen]).path_prefix(PREFIX))
    }

    fn init(_config: Config) -> Result<Self, String> {
        Ok(PathWatch)
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        alerts.push(
            Alert::new(
                "path-watch.open",
                Priority::Informational,
                format!("open of {}", event.path().unwrap_or_default()),
            )
            .field("path", event.path().unwrap_or_default())
            .field("pid", event.process.pid),
        );
    }
}

palisade_sdk::export_detector!(PathWatch);
