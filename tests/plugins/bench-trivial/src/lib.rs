//! Test plugin `bench-trivial`: the dispatch benchmark's detector. Subscribes to file_open and
//! alerts (rule `bench-trivial`) only when the path starts with config `prefix` (default
//! "/nonexistent/"), so with ordinary events it measures pure call and dispatch cost.

use palisade_sdk::{
    Alert, Alerts, Config, Detector, EventKind, EventRef, PluginInfo, Priority, Subscription,
};

/// Default `prefix`.
pub const DEFAULT_PREFIX: &str = "/nonexistent/";

struct BenchTrivial {
    prefix: String,
}

impl Detector for BenchTrivial {
    fn describe() -> PluginInfo {
        PluginInfo::detector(
            "bench-trivial",
            "0.1.0",
            "Benchmark plugin: alerts on file_open under a prefix",
        )
        .subscribe(Subscription::to([EventKind::FileOpen]))
        .config("prefix", DEFAULT_PREFIX)
    }

    fn init(config: Config) -> Result<Self, String> {
        Ok(BenchTrivial {
            prefix: config.text_or("prefix", DEFAULT_PREFIX)?,
        })
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        if let Some(open) = event.file_open() {
            if open.path.starts_with(&self.prefix) {
                alerts.push(
                    Alert::new("bench-trivial", Priority::Notice, "path under prefix")
                        .field("path", &open.path),
                );
            }
        }
    }
}

palisade_sdk::export_detector!(BenchTrivial);
