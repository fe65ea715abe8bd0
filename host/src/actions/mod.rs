//! Actions: what responders may ask the host to do, and the broker that decides. The domain
//! types here are what `plugin::host_impl` converts the WIT `actions` calls into; the
//! [`Broker`] checks grants, rate limits and monitor mode, writes one audit record per request
//! and hands enforced requests to an [`Actuator`]. Responders never act directly, and this
//! module never talks WIT.
//!
//! Actuators are looked up by capability, so the kernel-backed ones (kill, exec block, open
//! deny, network quarantine, freeze, file quarantine) plug in with [`Broker::with_actuator`]
//! without touching the broker. Kill, freeze, file quarantine, block-exec and network
//! quarantine are registered by [`with_host_actuators`]; `notify` goes through a
//! [`NotifySink`]; a capability without an actuator answers [`ActionError::Unsupported`].
//! Held actions are persisted by [`store`].

use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::capability::{Capability, CapabilitySet};
/// Monitor or enforce; defined with the rest of `[actions]` in the config.
pub use crate::config::Mode;

pub mod audit;
pub mod broker;
#[cfg(feature = "ebpf")]
pub mod enforce_ebpf;
pub mod fanotify;
pub mod freeze;
pub mod kill;
pub mod quarantine;
pub mod safe_path;
pub mod store;
pub mod webhook;

pub use audit::{AuditLog, AuditRecord, AuditResult};
pub use broker::{
    lifted_only_here, Broker, BrokerSettings, ReapplySummary, ResponderSettings, OPERATOR,
};
pub use freeze::FreezeActuator;
pub use kill::KillActuator;
pub use quarantine::QuarantineActuator;
pub use store::{ActionStore, StoreError, StoredAction};

/// Creates `dir` and any missing parents as 0700: the daemon's state, spool and quarantine
/// directories hold what users must not read (pending notifications name their processes).
/// An existing directory is left as the operator made it.
pub(crate) fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The operator CLI's actuator for actions whose state lives in the daemon process
/// ([`broker::lifted_only_here`]: a deny-open mark belongs to the daemon's fanotify group).
/// Releasing only takes the action out of the state file; the running daemon sees that and
/// lifts it ([`Broker::reconcile_released`]), and a stopped daemon's marks died with it.
pub struct LiftedByTheDaemon;

impl Actuator for LiftedByTheDaemon {
    fn execute(
        &self,
        _ctx: &ExecContext<'_>,
        _req: &ActionRequest,
    ) -> Result<Outcome, ActionError> {
        Err(ActionError::Unsupported(
            "only the daemon carries this action out".into(),
        ))
    }

    fn release(&self, _action: &ActiveAction) -> Result<(), ActionError> {
        Ok(())
    }
}

/// Registers this host's real actuators on `broker`: kill-process, freeze, quarantine-file
/// (into `actions.quarantine_dir`) and, with the `ebpf` feature, block-exec and
/// network-quarantine (pinned under `actions.bpf_pin_dir`; nothing is loaded until the first
/// request). Used by the daemon and by `palisade actions release`.
pub fn with_host_actuators(broker: Broker, actions: &crate::config::ActionsConfig) -> Broker {
    #[cfg(feature = "ebpf")]
    let broker = {
        use enforce_ebpf::{BlockExecActuator, EnforceSettings, Enforcer, NetQuarantineActuator};
        let enforcer = std::sync::Arc::new(Enforcer::new(EnforceSettings::from_config(actions)));
        broker
            .with_actuator(
                Capability::BlockExec,
                Box::new(BlockExecActuator::new(std::sync::Arc::clone(&enforcer))),
            )
            .with_actuator(
                Capability::NetworkQuarantine,
                Box::new(NetQuarantineActuator::new(enforcer)),
            )
    };
    broker
        .with_actuator(Capability::KillProcess, Box::new(KillActuator::new()))
        .with_actuator(Capability::Freeze, Box::new(FreezeActuator::new()))
        .with_actuator(
            Capability::QuarantineFile,
            Box::new(QuarantineActuator::new(actions.quarantine_dir.clone())),
        )
}

/// What to block from executing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecMatch {
    /// Absolute path of the binary.
    Path(String),
    /// Lower-case hex sha256 of the file contents.
    Sha256(String),
}

/// A workload: a cgroup or a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Kernel cgroup v2 id.
    CgroupId(u64),
    /// Container id (full or a unique prefix of at least 12 characters).
    ContainerId(String),
    /// cgroup v2 path relative to the cgroup root.
    CgroupPath(String),
}

/// One request from a responder, as the WIT `actions` interface defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionRequest {
    KillProcess {
        pid: u32,
        start_ns: Option<u64>,
        signal: u32,
    },
    BlockExec(ExecMatch),
    DenyOpen {
        path: String,
    },
    NetworkQuarantine(Workload),
    Freeze(Workload),
    QuarantineFile {
        path: String,
    },
    Notify {
        channel: String,
        message: String,
    },
    Release {
        action_id: String,
    },
}

impl ActionRequest {
    /// The capability this request needs. `Release` needs none of its own: the broker checks
    /// it against the capability of the action being released.
    pub fn capability(&self) -> Option<Capability> {
        match self {
            ActionRequest::KillProcess { .. } => Some(Capability::KillProcess),
            ActionRequest::BlockExec(_) => Some(Capability::BlockExec),
            ActionRequest::DenyOpen { .. } => Some(Capability::DenyOpen),
            ActionRequest::NetworkQuarantine(_) => Some(Capability::NetworkQuarantine),
            ActionRequest::Freeze(_) => Some(Capability::Freeze),
            ActionRequest::QuarantineFile { .. } => Some(Capability::QuarantineFile),
            ActionRequest::Notify { .. } => Some(Capability::Notify),
            ActionRequest::Release { .. } => None,
        }
    }

    /// The kebab-case name used in the audit log and metrics (the WIT function name).
    pub fn name(&self) -> &'static str {
        match self.capability() {
            Some(cap) => cap.as_str(),
            None => "release",
        }
    }

    /// Whether carrying the action out leaves state behind that `release` can undo. Kills and
    /// notifications are one-shot.
    pub fn holds_state(&self) -> bool {
        matches!(
            self,
            ActionRequest::BlockExec(_)
                | ActionRequest::DenyOpen { .. }
                | ActionRequest::NetworkQuarantine(_)
                | ActionRequest::Freeze(_)
                | ActionRequest::QuarantineFile { .. }
        )
    }

    /// The target as written in the audit log: a small JSON object naming what was acted on.
    pub fn target(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            ActionRequest::KillProcess {
                pid,
                start_ns,
                signal,
            } => json!({ "pid": pid, "start_ns": start_ns, "signal": signal }),
            ActionRequest::BlockExec(m) => json!(m),
            ActionRequest::DenyOpen { path } | ActionRequest::QuarantineFile { path } => {
                json!({ "path": path })
            }
            ActionRequest::NetworkQuarantine(w) | ActionRequest::Freeze(w) => json!(w),
            ActionRequest::Notify { channel, message } => {
                json!({ "channel": channel, "message": message })
            }
            ActionRequest::Release { action_id } => json!({ "action_id": action_id }),
        }
    }
}

/// The answer to a granted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Action id, for `release`.
    pub id: String,
    /// Whether the action was enforced or only recorded.
    pub mode: Mode,
}

/// Why a request was not carried out; mirrors the WIT `action-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("capability {0} not granted")]
    Denied(Capability),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("rate limited")]
    RateLimited,
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    #[error("failed: {0}")]
    Failed(String),
}

impl ActionError {
    /// The audit `result` this error is recorded as.
    pub fn audit_result(&self) -> AuditResult {
        match self {
            ActionError::Denied(_) => AuditResult::Denied,
            ActionError::Unsupported(_) => AuditResult::Unsupported,
            ActionError::RateLimited => AuditResult::RateLimited,
            ActionError::InvalidTarget(_) => AuditResult::InvalidTarget,
            ActionError::Failed(_) => AuditResult::Failed,
        }
    }
}

/// Errors setting the broker up or writing its audit log (not errors of a request: those are
/// [`ActionError`]).
#[derive(Debug, thiserror::Error)]
pub enum ActionsError {
    #[error("cannot open audit log {path}: {source}")]
    AuditOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the directory of audit log {path}: {source}")]
    AuditDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to audit log {path}: {source}")]
    AuditWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who is asking, and what they may do.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// The responder plugin's name.
    pub responder: &'a str,
    /// Capabilities in effect: what the plugin requested intersected with the operator's grant.
    pub granted: CapabilitySet,
    /// The alert that prompted the request (the guest's `alert-id` argument; empty for
    /// `release`, which the broker then audits under the released action's alert).
    pub alert_id: &'a str,
}

/// What an actuator is told besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct ExecContext<'a> {
    pub responder: &'a str,
    pub alert_id: &'a str,
    /// The id the receipt will carry.
    pub action_id: &'a str,
}

/// What an actuator did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done, nothing left to undo (a kill, a notification).
    Done,
    /// State was put in place and stays until released. `handle` is whatever the actuator needs
    /// to undo it (a map key, the quarantined file's new path); it is shown in `active()`.
    Held { handle: String },
}

/// An action that holds state and can be released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveAction {
    pub id: String,
    pub responder: String,
    pub capability: Capability,
    pub request: ActionRequest,
    pub alert_id: String,
    pub mode: Mode,
    pub since: SystemTime,
    /// The actuator's undo handle; empty for monitor-mode records, which hold nothing.
    pub handle: String,
}

/// Whether a held action is still in effect ([`Actuator::holds`]), checked while the daemon
/// runs so that a workload recreated under the same name does not silently escape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// In place (or nothing this actuator can check).
    Holds,
    /// The target was removed and created again at the same place (a restarted container's
    /// new cgroup): what was held went with the old one. `old` and `new` name the identities.
    Recreated { old: String, new: String },
    /// Same target, but the held state was undone outside the broker (a manual thaw, a removed
    /// pin) or is being released right now by the operator's CLI.
    Undone { reason: String },
    /// The target does not exist (a stopped container that may come back).
    Gone,
}

/// Carries out one family of actions. Registered per capability; shared by all workers.
pub trait Actuator: Send + Sync {
    /// Carries the request out. Called only in enforce mode, after the grant and rate checks.
    fn execute(&self, ctx: &ExecContext<'_>, req: &ActionRequest) -> Result<Outcome, ActionError>;

    /// Undoes an action this actuator answered `Outcome::Held` for.
    fn release(&self, action: &ActiveAction) -> Result<(), ActionError>;

    /// Puts a persisted action back in place when the daemon starts (its state died with the
    /// previous daemon, e.g. a kernel map entry). The default carries the original request out
    /// again; actuators whose state outlives the daemon (a quarantined file on disk) override
    /// it to check that state instead. An `InvalidTarget` answer (the workload is gone) drops
    /// the action; other errors keep it listed so it can be released.
    fn reapply(
        &self,
        ctx: &ExecContext<'_>,
        action: &ActiveAction,
    ) -> Result<Outcome, ActionError> {
        self.execute(ctx, &action.request)
    }

    /// Whether `a` and `b` (both held by this actuator) hold one piece of state, so that
    /// undoing either would undo both: the broker then undoes only the last of them. The
    /// default is no: an actuator that counts its holders itself (block-exec's map, deny-open's
    /// marks) or holds nothing shared.
    fn shares_state(&self, _a: &ActiveAction, _b: &ActiveAction) -> bool {
        false
    }

    /// Whether `action` (held by this actuator, enforced) is still in effect. Called every
    /// few seconds per held action, so it must stay cheap (a stat, a small read). The default
    /// cannot tell and says it holds; actuators whose state is tied to a workload that can be
    /// recreated (freeze, network quarantine) check it, and the broker calls [`reapply`] on
    /// anything but [`Hold::Holds`] and [`Hold::Gone`].
    ///
    /// [`reapply`]: Actuator::reapply
    fn holds(&self, _action: &ActiveAction) -> Hold {
        Hold::Holds
    }
}

/// Where `notify` goes. The daemon's sink writes a host log line and emits the notification as
/// an alert to the alert outputs.
pub trait NotifySink: Send + Sync {
    fn notify(
        &self,
        responder: &str,
        channel: &str,
        message: &str,
        alert_id: &str,
    ) -> Result<(), String>;
}

/// The `notify` actuator: forwards to the [`NotifySink`].
pub struct NotifyActuator {
    sink: Box<dyn NotifySink>,
}

impl NotifyActuator {
    pub fn new(sink: Box<dyn NotifySink>) -> NotifyActuator {
        NotifyActuator { sink }
    }
}

impl Actuator for NotifyActuator {
    fn execute(&self, ctx: &ExecContext<'_>, req: &ActionRequest) -> Result<Outcome, ActionError> {
        match req {
            ActionRequest::Notify { channel, message } => self
                .sink
                .notify(ctx.responder, channel, message, ctx.alert_id)
                .map(|()| Outcome::Done)
                .map_err(ActionError::Failed),
            other => Err(ActionError::Failed(format!(
                "notify actuator got a {} request",
                other.name()
            ))),
        }
    }

    fn release(&self, _action: &ActiveAction) -> Result<(), ActionError> {
        Err(ActionError::InvalidTarget(
            "a notification cannot be released".into(),
        ))
    }
}

/// Stand-in for an actuator that does not exist yet: answers `Unsupported` and says which.
pub struct Unimplemented {
    capability: Capability,
}

impl Unimplemented {
    pub fn new(capability: Capability) -> Unimplemented {
        Unimplemented { capability }
    }
}

impl Actuator for Unimplemented {
    fn execute(
        &self,
        _ctx: &ExecContext<'_>,
        _req: &ActionRequest,
    ) -> Result<Outcome, ActionError> {
        Err(ActionError::Unsupported(format!(
            "{} actuator not implemented yet",
            self.capability
        )))
    }

    fn release(&self, _action: &ActiveAction) -> Result<(), ActionError> {
        Err(ActionError::Unsupported(format!(
            "{} actuator not implemented yet",
            self.capability
        )))
    }
}

/// A sink that only logs; for `palisade replay` and tests that do not care where notes go.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogNotifySink;

impl NotifySink for LogNotifySink {
    fn notify(
        &self,
        responder: &str,
        channel: &str,
        message: &str,
        alert_id: &str,
    ) -> Result<(), String> {
        tracing::info!(responder, channel, alert_id, message, "notification");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_capabilities_match_the_wit() {
        let reqs = [
            (
                ActionRequest::KillProcess {
                    pid: 1,
                    start_ns: None,
                    signal: 9,
                },
                "kill-process",
            ),
            (
                ActionRequest::BlockExec(ExecMatch::Path("/x".into())),
                "block-exec",
            ),
            (ActionRequest::DenyOpen { path: "/x".into() }, "deny-open"),
            (
                ActionRequest::NetworkQuarantine(Workload::CgroupId(1)),
                "network-quarantine",
            ),
            (ActionRequest::Freeze(Workload::CgroupId(1)), "freeze"),
            (
                ActionRequest::QuarantineFile { path: "/x".into() },
                "quarantine-file",
            ),
            (
                ActionRequest::Notify {
                    channel: "default".into(),
                    message: "m".into(),
                },
                "notify",
            ),
            (
                ActionRequest::Release {
                    action_id: "a".into(),
                },
                "release",
            ),
        ];
        for (req, name) in reqs {
            assert_eq!(req.name(), name);
            assert_eq!(
                req.capability().map(|c| c.as_str()),
                (name != "release").then_some(name)
            );
        }
    }

    #[test]
    fn targets_are_readable_objects() {
        let t = ActionRequest::KillProcess {
            pid: 42,
            start_ns: Some(7),
            signal: 9,
        }
        .target();
        assert_eq!(
            t,
            serde_json::json!({"pid": 42, "start_ns": 7, "signal": 9})
        );
        let t = ActionRequest::Freeze(Workload::ContainerId("abc".into())).target();
        assert_eq!(t, serde_json::json!({"container_id": "abc"}));
        let t = ActionRequest::BlockExec(ExecMatch::Sha256("ff".into())).target();
        assert_eq!(t, serde_json::json!({"sha256": "ff"}));
    }
}
