//! Native stand-ins for the host imports, so a plugin's logic can be unit-tested with
//! `cargo test` on the build machine (only compiled when the target is not wasm32).
//!
//! Everything is per thread (cargo runs each test on its own thread), so tests do not see each
//! other's logs, state or actions. Call [`reset`] at the start of a test that reuses a thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::actions::{ActionError, ExecMatch, Mode, ProcessTarget, Receipt, Workload};
use crate::bindings::palisade::plugin::types::Capability;
use crate::log::Level;
use crate::state::StateError;

/// One action request a responder made, as recorded natively.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionCall {
    /// WIT name of the action (`"notify"`, `"kill-process"`, ...).
    pub action: &'static str,
    /// The target, rendered as text (pid, path, channel, ...).
    pub target: String,
    /// Extra detail: the signal, the notification message.
    pub detail: String,
    /// The alert id passed along.
    pub alert_id: String,
}

#[derive(Default)]
struct Mock {
    logs: Vec<(Level, String)>,
    now_ns: Option<u64>,
    state: HashMap<String, (Vec<u8>, Option<u64>)>,
    state_quota: Option<usize>,
    actions: Vec<ActionCall>,
    denied: Vec<Capability>,
    monitor: bool,
}

thread_local! {
    static MOCK: RefCell<Mock> = RefCell::new(Mock::default());
}

/// Forgets logs, state, recorded actions, denials and the fixed clock of this thread.
pub fn reset() {
    MOCK.with(|m| *m.borrow_mut() = Mock::default());
}

/// Log lines written so far on this thread (level, message).
pub fn logs() -> Vec<(Level, String)> {
    MOCK.with(|m| m.borrow().logs.clone())
}

/// Takes and clears the log lines written so far on this thread.
pub fn take_logs() -> Vec<(Level, String)> {
    MOCK.with(|m| std::mem::take(&mut m.borrow_mut().logs))
}

/// Fixes the clock at `ns` (ns since the Unix epoch). Until then the system clock is used.
pub fn set_now_ns(ns: u64) {
    MOCK.with(|m| m.borrow_mut().now_ns = Some(ns));
}

/// Moves the (fixed) clock forward; fixes it at the system time first if it was not fixed.
pub fn advance(by: Duration) {
    let now = now_ns();
    let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
    set_now_ns(now.saturating_add(by));
}

/// Limits the number of state keys (None: unlimited), to test quota handling.
pub fn set_state_quota(max_keys: Option<usize>) {
    MOCK.with(|m| m.borrow_mut().state_quota = max_keys);
}

/// Action requests made so far on this thread.
pub fn actions() -> Vec<ActionCall> {
    MOCK.with(|m| m.borrow().actions.clone())
}

/// Makes requests needing `capability` fail with `denied`, as when the operator did not grant it.
pub fn deny(capability: Capability) {
    MOCK.with(|m| m.borrow_mut().denied.push(capability));
}

/// Makes granted requests answer in monitor mode instead of enforce.
pub fn set_monitor_mode(monitor: bool) {
    MOCK.with(|m| m.borrow_mut().monitor = monitor);
}

pub(crate) fn record_log(level: Level, message: &str) {
    MOCK.with(|m| m.borrow_mut().logs.push((level, message.to_string())));
}

pub(crate) fn now_ns() -> u64 {
    MOCK.with(|m| m.borrow().now_ns).unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

fn live(entry: &(Vec<u8>, Option<u64>), now: u64) -> bool {
    entry.1.is_none_or(|expiry| now < expiry)
}

pub(crate) fn state_get(key: &str) -> Option<Vec<u8>> {
    let now = now_ns();
    MOCK.with(|m| {
        m.borrow()
            .state
            .get(key)
            .filter(|e| live(e, now))
            .map(|e| e.0.clone())
    })
}

fn check_quota(m: &mut Mock, key: &str, now: u64) -> Result<(), StateError> {
    m.state.retain(|_, e| live(e, now));
    match m.state_quota {
        Some(max) if !m.state.contains_key(key) && m.state.len() >= max => {
            Err(StateError::QuotaExceeded)
        }
        _ => Ok(()),
    }
}

pub(crate) fn state_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), StateError> {
    let now = now_ns();
    MOCK.with(|m| {
        let mut m = m.borrow_mut();
        check_quota(&mut m, key, now)?;
        let expiry = ttl_ms.map(|ms| now.saturating_add(ms.saturating_mul(1_000_000)));
        m.state.insert(key.to_string(), (value.to_vec(), expiry));
        Ok(())
    })
}

pub(crate) fn state_delete(key: &str) -> bool {
    let now = now_ns();
    MOCK.with(|m| {
        m.borrow_mut()
            .state
            .remove(key)
            .is_some_and(|e| live(&e, now))
    })
}

pub(crate) fn state_incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, StateError> {
    let now = now_ns();
    MOCK.with(|m| {
        let mut m = m.borrow_mut();
        check_quota(&mut m, key, now)?;
        let expiry = ttl_ms.map(|ms| now.saturating_add(ms.saturating_mul(1_000_000)));
        let entry = m
            .state
            .entry(key.to_string())
            .or_insert_with(|| (0i64.to_le_bytes().to_vec(), expiry));
        let current = <[u8; 8]>::try_from(entry.0.as_slice())
            .map(i64::from_le_bytes)
            .unwrap_or(0);
        let new = current.saturating_add(delta);
        entry.0 = new.to_le_bytes().to_vec();
        Ok(new)
    })
}

/// Native implementations of the `actions` imports (recorded, answered from the mock's grants).
pub(crate) mod actions {
    use super::*;

    fn request(
        capability: Capability,
        action: &'static str,
        target: String,
        detail: String,
        alert_id: &str,
    ) -> Result<Receipt, ActionError> {
        MOCK.with(|m| {
            let mut m = m.borrow_mut();
            m.actions.push(ActionCall {
                action,
                target,
                detail,
                alert_id: alert_id.to_string(),
            });
            if m.denied.contains(&capability) {
                return Err(ActionError::Denied(capability));
            }
            let mode = if m.monitor {
                Mode::Monitor
            } else {
                Mode::Enforce
            };
            Ok(Receipt {
                id: format!("mock-{}", m.actions.len()),
                mode,
            })
        })
    }

    fn exec_match_text(t: &ExecMatch) -> String {
        match t {
            ExecMatch::Path(p) => format!("path:{p}"),
            ExecMatch::Sha256(h) => format!("sha256:{h}"),
        }
    }

    fn workload_text(w: &Workload) -> String {
        match w {
            Workload::CgroupId(id) => format!("cgroup-id:{id}"),
            Workload::ContainerId(id) => format!("container-id:{id}"),
            Workload::CgroupPath(p) => format!("cgroup-path:{p}"),
        }
    }

    pub fn kill_process(
        t: ProcessTarget,
        signal: u32,
        alert_id: &str,
    ) -> Result<Receipt, ActionError> {
        request(
            Capability::KillProcess,
            "kill-process",
            t.pid.to_string(),
            signal.to_string(),
            alert_id,
        )
    }
    pub fn block_exec(t: &ExecMatch, alert_id: &str) -> Result<Receipt, ActionError> {
        request(
            Capability::BlockExec,
            "block-exec",
            exec_match_text(t),
            String::new(),
            alert_id,
        )
    }
    pub fn deny_open(path: &str, alert_id: &str) -> Result<Receipt, ActionError> {
        request(
            Capability::DenyOpen,
            "deny-open",
            path.to_string(),
            String::new(),
            alert_id,
        )
    }
    pub fn network_quarantine(t: &Workload, alert_id: &str) -> Result<Receipt, ActionError> {
        request(
            Capability::NetworkQuarantine,
            "network-quarantine",
            workload_text(t),
            String::new(),
            alert_id,
        )
    }
    pub fn freeze(t: &Workload, alert_id: &str) -> Result<Receipt, ActionError> {
        request(
            Capability::Freeze,
            "freeze",
            workload_text(t),
            String::new(),
            alert_id,
        )
    }
    pub fn quarantine_file(path: &str, alert_id: &str) -> Result<Receipt, ActionError> {
        request(
            Capability::QuarantineFile,
            "quarantine-file",
            path.to_string(),
            String::new(),
            alert_id,
        )
    }
    pub fn notify(channel: &str, message: &str, alert_id: &str) -> Result<Receipt, ActionError> {
        request(
            Capability::Notify,
            "notify",
            channel.to_string(),
            message.to_string(),
            alert_id,
        )
    }
    pub fn release(action_id: &str) -> Result<(), ActionError> {
        MOCK.with(|m| {
            m.borrow_mut().actions.push(ActionCall {
                action: "release",
                target: action_id.to_string(),
                detail: String::new(),
                alert_id: String::new(),
            })
        });
        Ok(())
    }
}
