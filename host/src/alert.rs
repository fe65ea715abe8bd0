//! The host's alert: a detector's (or the host's own) finding plus the context outputs and
//! responders need. Created once per alert; outputs serialise it, responders get it as WIT.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// Syslog-style priority, most severe first (Falco's levels). `Ord`: Emergency < Debug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Emergency,
    Alert,
    Critical,
    Error,
    Warning,
    Notice,
    Informational,
    Debug,
}

impl Priority {
    pub const ALL: [Priority; 8] = [
        Priority::Emergency,
        Priority::Alert,
        Priority::Critical,
        Priority::Error,
        Priority::Warning,
        Priority::Notice,
        Priority::Informational,
        Priority::Debug,
    ];

    /// The lower-case name used in Palisade's own JSON and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Emergency => "emergency",
            Priority::Alert => "alert",
            Priority::Critical => "critical",
            Priority::Error => "error",
            Priority::Warning => "warning",
            Priority::Notice => "notice",
            Priority::Informational => "informational",
            Priority::Debug => "debug",
        }
    }

    /// Falco's capitalised name ("Critical", "Warning", ...).
    pub fn falco_name(self) -> &'static str {
        match self {
            Priority::Emergency => "Emergency",
            Priority::Alert => "Alert",
            Priority::Critical => "Critical",
            Priority::Error => "Error",
            Priority::Warning => "Warning",
            Priority::Notice => "Notice",
            Priority::Informational => "Informational",
            Priority::Debug => "Debug",
        }
    }

    /// True when `self` is at least as severe as `min`.
    pub fn at_least(self, min: Priority) -> bool {
        self <= min
    }
}

/// The plugin (or the host itself) that raised an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub name: String,
    pub version: String,
}

/// Name used as the origin of alerts the host raises itself (`palisade.plugin_failure`, ...).
pub const HOST_ORIGIN: &str = "palisade";

/// An alert with its context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Host-assigned unique id: idempotency key for notifications, key in the audit log.
    pub id: String,
    /// Time the alert was raised, ns since the Unix epoch.
    pub ts_ns: u64,
    pub rule: String,
    pub priority: Priority,
    pub message: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Extra fields, in the order the plugin gave them.
    #[serde(default)]
    pub fields: Vec<(String, String)>,
    pub plugin: Origin,
    pub hostname: String,
    /// The triggering event; none for host alerts about the host itself.
    pub event: Option<Arc<Event>>,
}
