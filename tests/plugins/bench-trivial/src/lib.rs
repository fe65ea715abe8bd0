//! Test plugin `bench-trivial`: the dispatch benchmark's detector. Subscribes to file_open and
//! alerts (rule `bench-trivial`) only when the path starts with config `prefix` (default
//! "/nonexistent/"), so with ordinary events it measures pure call and dispatch cost.
//! With config `echo = true` it instead raises one alert per event whose message is the event
//! as the SDK decoded it (`Debug`), so host tests can compare two encodings of one batch.

use palisade_sdk::{
    Alert, Alerts, Config, Detector, EventKind, EventRef, PluginInfo, Priority, Subscription,
};

/// Default `prefix`.
pub const DEFAULT_PREFIX: &str = "/nonexistent/";

struct BenchTrivial {
    prefix: String,
    echo: bool,
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
        .config("echo", false)
    }

    fn init(config: Config) -> Result<Self, String> {
        Ok(BenchTrivial {
            prefix: config.text_or("prefix", DEFAULT_PREFIX)?,
            echo: config.boolean_or("echo", false)?,
        })
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        if self.echo {
            alerts.push(Alert::new(
                "echo",
                Priority::Debug,
                format!("{} {:?} {:?}", event.ts_ns, event.process, event.data),
            ));
            return;
        }
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
