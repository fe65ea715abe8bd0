//! Plugins: WIT bindings, conversion between host and WIT types, the wasmtime engine, plugin
//! instances with their budgets, the host side of the imports, and the registry that owns the
//! set of loaded plugins.

pub mod bindings;
pub mod convert;
pub mod engine;
pub mod handover;
pub mod host_impl;
pub mod instance;
pub mod manifest;
pub mod registry;
pub mod state;
pub mod subscription;
pub mod testing;

use crate::capability::CapabilitySet;
use manifest::PluginConfig;
use subscription::{AlertFilter, Subscription};

/// Detector or responder: which world the component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    Detector,
    Responder,
}

impl PluginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Detector => "detector",
            PluginKind::Responder => "responder",
        }
    }
}

/// What a plugin says about itself in `describe()`, in host types.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub kind: PluginKind,
    pub description: String,
    pub subscriptions: Vec<Subscription>,
    pub alert_filter: Option<AlertFilter>,
    pub capabilities: CapabilitySet,
    pub default_config: PluginConfig,
}
