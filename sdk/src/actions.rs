//! Actions a responder asks the host's broker for. Every request is checked against the
//! operator's grants, honours monitor mode and is written to the audit log; a refused request
//! comes back as an [`ActionError`] (log it, do not retry in a loop).
//!
//! Only responders may call these: a detector component that imports `actions` is rejected by
//! the host. Natively (unit tests) calls are recorded; see [`crate::testing`].

pub use crate::bindings::palisade::plugin::actions::{
    ActionError, ExecMatch, Mode, ProcessTarget, Receipt, Workload,
};
use crate::config::capability_name;
use crate::model::Process;

impl ProcessTarget {
    /// The process an alert is about, pinned by its start time so a recycled pid is never hit.
    pub fn of(process: &Process) -> Self {
        ProcessTarget {
            pid: process.pid,
            start_ns: Some(process.start_ns),
        }
    }
}

impl ActionError {
    /// A short human-readable reason (`"denied: kill-process"`, `"rate limited"`, ...).
    pub fn reason(&self) -> String {
        match self {
            ActionError::Denied(c) => format!("denied: {}", capability_name(*c)),
            ActionError::Unsupported(why) => format!("unsupported: {why}"),
            ActionError::RateLimited => "rate limited".to_string(),
            ActionError::InvalidTarget(why) => format!("invalid target: {why}"),
            ActionError::Failed(why) => format!("failed: {why}"),
        }
    }
}

impl Mode {
    /// `"enforce"` or `"monitor"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

#[cfg(target_arch = "wasm32")]
use crate::bindings::palisade::plugin::actions as imp;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::actions as imp;

/// Sends `signal` to the process. `alert_id` ties the request to the alert in the audit log.
pub fn kill_process(
    target: ProcessTarget,
    signal: u32,
    alert_id: &str,
) -> Result<Receipt, ActionError> {
    imp::kill_process(target, signal, alert_id)
}

/// Stops any future exec of the matching binary before it runs user code, whatever name runs
/// it (path rules match the file's identity and its path; sha256 rules also refuse copies made
/// later, with EPERM).
pub fn block_exec(target: &ExecMatch, alert_id: &str) -> Result<Receipt, ActionError> {
    imp::block_exec(target, alert_id)
}

/// Makes opens (and execs) of the path fail with EPERM.
pub fn deny_open(path: &str, alert_id: &str) -> Result<Receipt, ActionError> {
    imp::deny_open(path, alert_id)
}

/// Drops the workload's network traffic except the operator's allow-list.
pub fn network_quarantine(target: &Workload, alert_id: &str) -> Result<Receipt, ActionError> {
    imp::network_quarantine(target, alert_id)
}

/// Freezes every process of the workload.
pub fn freeze(target: &Workload, alert_id: &str) -> Result<Receipt, ActionError> {
    imp::freeze(target, alert_id)
}

/// Moves the file into the host's quarantine directory.
pub fn quarantine_file(path: &str, alert_id: &str) -> Result<Receipt, ActionError> {
    imp::quarantine_file(path, alert_id)
}

/// Sends a notification on a named channel (`"default"` always exists).
pub fn notify(channel: &str, message: &str, alert_id: &str) -> Result<Receipt, ActionError> {
    imp::notify(channel, message, alert_id)
}

/// [`notify`], with the outcome logged: a refusal by the broker (not granted, rate limited) is a
/// warning, never retried, which is what a responder wants from a notification.
pub fn notify_or_log(channel: &str, message: &str, alert_id: &str) {
    match notify(channel, message, alert_id) {
        Ok(receipt) => crate::debug!(
            "notified `{channel}` for alert {alert_id} ({}, action {})",
            receipt.mode.as_str(),
            receipt.id
        ),
        Err(e) => crate::warn!(
            "notify on `{channel}` for alert {alert_id} refused: {}",
            e.reason()
        ),
    }
}

/// Undoes an earlier action of this responder.
pub fn release(action_id: &str) -> Result<(), ActionError> {
    imp::release(action_id)
}
