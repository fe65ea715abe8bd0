//! Test plugin `spin`: loops forever on any exec/file_open event whose path contains "spin"
//! (only the host's deadline stops it); every other event gets one `spin-ok` alert.

use palisade_sdk::{
    Alert, Alerts, Config, Detector, EventKind, EventRef, PluginInfo, Priority, Subscription,
};

struct Spin;

impl Detector for Spin {
    fn describe() -> PluginInfo {
        PluginInfo::detector(
            "spin",
            "0.1.0",
            "Test plugin: loops forever on events whose path contains \"spin\"",
        )
        .subscribe(Subscription::to([EventKind::Exec, EventKind::FileOpen]))
    }

    fn init(_: Config) -> Result<Self, String> {
        Ok(Spin)
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        let path = event.path().unwrap_or("");
        if path.contains("spin") {
            let mut n: u64 = 0;
            loop {
                // black_box keeps the optimiser from reasoning about the loop.
                n = core::hint::black_box(n.wrapping_add(1));
            }
        }
        alerts.push(
            Alert::new(
                "spin-ok",
                Priority::Informational,
                format!("no spin for {path}"),
            )
            .field("path", path),
        );
    }
}

palisade_sdk::export_detector!(Spin);
