//! Palisade: kernel events to sandboxed WebAssembly detectors, their alerts to outputs and
//! responders. This crate is the whole daemon as a library; `main.rs` only parses the CLI.

pub mod actions;
pub mod alert;
pub mod capability;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dispatch;
#[cfg(feature = "ebpf")]
pub mod ebpf;
pub mod event;
pub mod logfile;
pub mod metrics;
pub mod mountinfo;
pub mod output;
pub mod pack;
pub mod plugin;
pub mod record;
pub mod reload;
pub mod telemetry;
