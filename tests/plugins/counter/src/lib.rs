//! Test plugin `counter`: subscribes to every event kind and raises exactly one alert per event
//! (rule `count`, priority informational), with fields `version` (config key `version`, text or
//! integer, default "1"), `kind`, `pid` and `ts_ns`, so reload tests can count events exactly
//! and tell which version handled each.

use palisade_sdk::{
    Alert, Alerts, Config, ConfigValue, Detector, EventRef, PluginInfo, Priority, Subscription,
};

struct Counter {
    version: String,
}

impl Detector for Counter {
    fn describe() -> PluginInfo {
        PluginInfo::detector(
            "counter",
            "0.1.0",
            "Test plugin: one alert per event, tagged with the configured version",
        )
        .subscribe(Subscription::all())
        .config("version", "1")
    }

    fn init(config: Config) -> Result<Self, String> {
        let version = match config.get("version") {
            None => "1".to_string(),
            Some(ConfigValue::Text(v)) => v.clone(),
            Some(ConfigValue::Integer(v)) => v.to_string(),
            Some(other) => {
                return Err(format!(
                    "config key `version` must be text or integer, found {}",
                    other.type_name()
                ))
            }
        };
        Ok(Counter { version })
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        alerts.push(
            Alert::new(
                "count",
                Priority::Informational,
                format!("event {} seen by version {}", event.kind(), self.version),
            )
            .field("version", &self.version)
            .field("kind", event.kind())
            .field("pid", event.process.pid)
            .field("ts_ns", event.ts_ns),
        );
    }
}

palisade_sdk::export_detector!(Counter);
