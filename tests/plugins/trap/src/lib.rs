//! Test plugin `trap`: traps (wasm `unreachable`) on any exec/file_open event whose path
//! contains "trap"; every other event gets one `trap-ok` alert, so a test can see the instance
//! was recreated and works again.

use palisade_sdk::{
    Alert, Alerts, Config, Detector, EventKind, EventRef, PluginInfo, Priority, Subscription,
};

struct Trap;

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    panic!("trap marker");
}

impl Detector for Trap {
    fn describe() -> PluginInfo {
        PluginInfo::detector(
            "trap",
            "0.1.0",
            "Test plugin: traps on events whose path contains \"trap\"",
        )
        .subscribe(Subscription::to([EventKind::Exec, EventKind::FileOpen]))
    }

    fn init(_: Config) -> Result<Self, String> {
        Ok(Trap)
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        let path = event.path().unwrap_or("");
        if path.contains("trap") {
            trap();
        }
        alerts.push(
            Alert::new(
                "trap-ok",
                Priority::Informational,
                format!("no trap for {path}"),
            )
            .field("path", path),
        );
    }
}

palisade_sdk::export_detector!(Trap);
