//! Rust SDK for Palisade plugins: write a detector or a responder as a plain Rust type, export
//! it with one macro, build it for `wasm32-wasip2`, and drop the `.wasm` into the plugin
//! directory.
//!
//! The contract is `wit/plugin.wit` (`palisade:plugin@0.2.0`). This crate owns the generated
//! guest bindings ([`bindings`]) and wraps them: the [`Detector`] and [`Responder`] traits, the
//! [`export_detector!`] / [`export_responder!`] macros, builders for descriptions and alerts,
//! typed [`Config`] getters, [path and name matching](matching), durable [`state`], [`log`]
//! macros, the host [`clock`] and responder [`actions`].
//!
//! On the wire, the strings of a batch travel as one byte buffer plus `span`s into it (one guest
//! allocation per batch instead of one per string). The SDK hides that: [`Process`],
//! [`EventData`], [`RoutedAlert`] and the payload records are the SDK's own types with `String`
//! fields, decoded from each batch by [`wire`]; the raw wire types stay in [`bindings`].
//!
//! Natively (`cargo test` on the build machine) the host imports are replaced by in-memory
//! stand-ins ([`testing`]), so a plugin's logic can be unit-tested without a host.
//!
//! # A complete detector
//!
//! `Cargo.toml`: `[lib] crate-type = ["cdylib"]`, `palisade-sdk` as a dependency; build with
//! `cargo build --release --target wasm32-wasip2`.
//!
//! ```
//! use palisade_sdk::{
//!     Alert, Alerts, Config, Detector, EventKind, EventRef, NameSet, PathSet, PluginInfo,
//!     Priority, Subscription,
//! };
//!
//! const DEFAULT_PATHS: [&str; 2] = ["/etc/shadow", "/etc/sudoers.d/*"];
//!
//! /// Alerts when a program not on the allow-list opens a shadow or sudoers file.
//! struct ShadowWatch {
//!     paths: PathSet,
//!     allowed: NameSet,
//! }
//!
//! impl Detector for ShadowWatch {
//!     fn describe() -> PluginInfo {
//!         PluginInfo::detector("shadow-watch", "0.1.0", "Shadow/sudoers opened by an unexpected program")
//!             // Only file_open events for these paths are routed to this plugin.
//!             .subscribe(Subscription::to([EventKind::FileOpen]).path_set(&PathSet::new(DEFAULT_PATHS)))
//!             .config("paths", DEFAULT_PATHS)
//!             .config("allowed", ["sshd", "sudo", "passwd"])
//!     }
//!
//!     fn init(config: Config) -> Result<Self, String> {
//!         config.deny_unknown(&["paths", "allowed"])?;
//!         Ok(ShadowWatch {
//!             paths: PathSet::new(config.text_list("paths")?),
//!             allowed: NameSet::new(config.text_list("allowed")?),
//!         })
//!     }
//!
//!     fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
//!         let Some(open) = event.file_open() else { return };
//!         if !self.paths.matches(&open.path) || self.allowed.matches_process(event.process) {
//!             return;
//!         }
//!         palisade_sdk::debug!("{} opened {}", event.process.comm, open.path);
//!         alerts.push(
//!             Alert::new(
//!                 "shadow-opened",
//!                 Priority::Warning,
//!                 format!("{} opened {} (pid {})", event.process.exe, open.path, event.process.pid),
//!             )
//!             .tag("T1003.008")
//!             .field("path", &open.path)
//!             .process_fields(event.process),
//!         );
//!     }
//! }
//!
//! palisade_sdk::export_detector!(ShadowWatch);
//! # fn main() {
//! #     use palisade_sdk::{EventBatch, EventData, FileOpenData, Process};
//! #     let mut det = ShadowWatch::init(Config::new(ShadowWatch::describe().default_config)).unwrap();
//! #     let mut batch = EventBatch::new();
//! #     let open = |path: &str| EventData::FileOpen(FileOpenData { path: path.into(), open_flags: 0, mode: 0, result: Some(3) });
//! #     batch.push(&Process::new(7, "cat", "/usr/bin/cat"), 1, open("/etc/shadow"));
//! #     batch.push(&Process::new(8, "sshd", "/usr/sbin/sshd"), 2, open("/etc/shadow"));
//! #     batch.push(&Process::new(7, "cat", "/usr/bin/cat"), 3, open("/etc/hosts"));
//! #     let alerts = palisade_sdk::run_batch(&mut det, &batch);
//! #     assert_eq!(alerts.len(), 1);
//! #     assert_eq!(alerts[0].event_index, 0);
//! #     assert_eq!(alerts[0].get_field("path"), Some("/etc/shadow"));
//! # }
//! ```
//!
//! A responder is the same shape: implement [`Responder`] (`on_alert` instead of `on_event`),
//! describe it with [`PluginInfo::responder`], an [`AlertFilter`] and the [`Capability`] values
//! it needs, call [`actions`], and export it with [`export_responder!`].
//!
//! # Rules of the sandbox
//!
//! - The instance may be dropped and recreated at any time (idle release, trap, hot reload):
//!   keep what must last in [`state`], not in fields.
//! - Each call has a time and memory budget; a panic traps the instance (build guests with
//!   `panic = "abort"`), the host logs it, counts it and recreates the instance.
//! - There is no filesystem, environment or network; use the imports.

#![warn(missing_docs)]

pub mod actions;
pub mod bindings;
pub mod clock;
mod config;
mod event;
pub mod log;
pub mod matching;
mod model;
mod plugin;
pub mod state;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod types;
pub mod wire;

pub use bindings::palisade::plugin::types::{
    Alert, AlertFilter, Capability, ConfigValue, EventKind, FdDupData, FdTargetKind, PluginInfo,
    PluginKind, Priority, PtraceData, SocketData, Subscription,
};
pub use config::{capability_name, Config, ConfigError};
pub use event::{open_flags, Alerts, EventRef};
pub use matching::{glob_match, NameSet, PathPattern, PathSet};
pub use model::{
    Ancestor, ConnectionData, Event, EventBatch, EventData, ExecData, FileChmodData, FileChownData,
    FileLinkData, FileOpenData, FileRenameData, ListenData, MemfdData, MountData, Process,
    RoutedAlert,
};
pub use plugin::{run_alerts, run_batch, Detector, Responder};
pub use types::ALL_CAPABILITIES;

include!(concat!(env!("OUT_DIR"), "/export_macros.rs"));

/// Re-exports the export macros need; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::plugin::glue::*;
    pub use wit_bindgen;
}
