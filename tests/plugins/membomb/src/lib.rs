//! Test plugin `membomb`: on any exec/file_open event whose path contains "membomb" it
//! allocates (and touches) 1 MiB chunks without bound until the host's memory limit stops it;
//! every other event gets one `membomb-ok` alert.

use palisade_sdk::{
    Alert, Alerts, Config, Detector, EventKind, EventRef, PluginInfo, Priority, Subscription,
};

struct MemBomb;

impl Detector for MemBomb {
    fn describe() -> PluginInfo {
        PluginInfo::detector(
            "membomb",
            "0.1.0",
            "Test plugin: allocates without bound on events whose path contains \"membomb\"",
        )
        .subscribe(Subscription::to([EventKind::Exec, EventKind::FileOpen]))
    }

    fn init(_: Config) -> Result<Self, String> {
        Ok(MemBomb)
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        let path = event.path().unwrap_or("");
        if path.contains("membomb") {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Touching every page makes the growth real, not just reserved.
                hoard.push(core::hint::black_box(vec![0xA5u8; 1 << 20]));
            }
        }
        alerts.push(
            Alert::new(
                "membomb-ok",
                Priority::Informational,
                format!("no bomb for {path}"),
            )
            .field("path", path),
        );
    }
}

palisade_sdk::export_detector!(MemBomb);
