//! The actions broker: the one place a responder's request becomes (or does not become) an
//! action. Order of checks: capability grant, per-responder rate limit, monitor/enforce mode,
//! then the actuator registered for the capability. Every request, whatever its fate, gets one
//! audit record and one `actions_total` count. Shared by all worker threads through `&self`;
//! the broker never blocks on anything but its own short locks and the actuator it calls.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime};

use super::audit::{now_ns, rfc3339, AuditLog, AuditRecord, AuditResult};
use super::store::{ActionStore, StoreError};
use super::{
    ActionError, ActionRequest, ActionsError, ActiveAction, Actuator, ExecContext, Hold, Mode,
    NotifyActuator, NotifySink, Outcome, Receipt, RequestContext, Unimplemented,
};
use crate::capability::Capability;
use crate::config::ActionsConfig;
use crate::metrics::Metrics;

/// Most actions held at once (enforced ones plus monitor-mode records). A responder that
/// never releases cannot grow the table past this; enforce requests beyond it fail.
pub const MAX_ACTIVE: usize = 65_536;

/// The responder name audit records carry for actions the operator takes through the CLI
/// (`palisade actions release`). Not a valid plugin name, so no plugin can impersonate it.
pub const OPERATOR: &str = "(operator)";

/// What [`Broker::reapply_held`] did at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapplySummary {
    /// Enforced actions put back in place.
    pub reapplied: usize,
    /// Actions dropped because their target is gone (or nothing is held any more).
    pub dropped: usize,
    /// Actions that could not be re-applied; still listed, so they can be released.
    pub failed: usize,
}

/// What [`Broker::reassert_held`] last found about a held action that did not hold: a lasting
/// condition is logged (and audited) once, not at every poll, and an undone action is re-applied
/// only when found so twice.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lapse {
    Gone,
    Undone,
    Failed(String),
}

/// Per-responder overrides of the broker settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponderSettings {
    /// Mode for this responder; the global mode when absent.
    pub mode: Option<Mode>,
    /// Requests per minute for this responder; the global limit when absent. 0 = unlimited.
    pub rate_limit_per_minute: Option<u32>,
}

/// How the broker behaves; built by the daemon from `palisade.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// Global mode.
    pub mode: Mode,
    /// Overrides by responder plugin name.
    pub per_responder: BTreeMap<String, ResponderSettings>,
    /// Requests per minute per responder (token bucket, burst = the limit). 0 = unlimited.
    pub rate_limit_per_minute: u32,
    /// JSON Lines audit file; when absent, records go to the log under target `palisade::audit`.
    pub audit_log: Option<PathBuf>,
}

impl BrokerSettings {
    /// The settings the `[actions]` section of `palisade.toml` describes.
    pub fn from_config(actions: &ActionsConfig) -> BrokerSettings {
        BrokerSettings {
            mode: actions.mode,
            per_responder: actions
                .responders
                .iter()
                .map(|(name, r)| {
                    (
                        name.clone(),
                        ResponderSettings {
                            mode: r.mode,
                            rate_limit_per_minute: r.rate_limit_per_minute,
                        },
                    )
                })
                .collect(),
            rate_limit_per_minute: actions.rate_limit_per_minute,
            audit_log: Some(actions.audit_log.clone()),
        }
    }
}

/// Token bucket refilled continuously at `limit` per minute, holding at most `limit` tokens.
#[derive(Debug, Clone)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn full(limit: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(limit),
            last: now,
        }
    }

    fn take(&mut self, limit: u32, now: Instant) -> bool {
        let capacity = f64::from(limit);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * capacity / 60.0).min(capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// See the module docs.
pub struct Broker {
    settings: BrokerSettings,
    actuators: BTreeMap<Capability, Box<dyn Actuator>>,
    audit: Option<AuditLog>,
    metrics: Option<Arc<Metrics>>,
    buckets: Mutex<HashMap<String, TokenBucket>>,
    active: Mutex<BTreeMap<String, ActiveAction>>,
    /// Where held actions are persisted, once [`Broker::attach_store`] was called.
    store: OnceLock<ActionStore>,
    /// Start time in hex: makes action ids unique across restarts.
    id_prefix: String,
    next_id: AtomicU64,
    /// See [`Broker::offline`].
    offline: bool,
    /// Ids of the active actions the state file is known to hold (written by this broker or
    /// loaded from it). Only their absence from the file means "released by the operator": an
    /// action whose write failed, or is still being written, is not.
    persisted: Mutex<BTreeSet<String>>,
    /// See [`Lapse`]; by action id.
    lapses: Mutex<HashMap<String, Lapse>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("settings", &self.settings)
            .field("actuators", &self.actuators.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Actions whose state lives in the daemon process, so that only the daemon can lift them (the
/// operator's CLI releases them in the state file, and [`Broker::reconcile_released`] does the
/// rest).
pub fn lifted_only_here(capability: Capability) -> bool {
    capability == Capability::DenyOpen
}

/// Locks a mutex, carrying on with the data if another thread panicked while holding it: the
/// broker's tables stay consistent between statements, and the daemon must not die of it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Broker {
    /// Opens the audit log (if any) and registers the `notify` actuator on `notify`; every other
    /// capability answers `Unsupported` until an actuator is registered with [`with_actuator`].
    ///
    /// [`with_actuator`]: Broker::with_actuator
    pub fn new(
        settings: BrokerSettings,
        notify: Box<dyn NotifySink>,
    ) -> Result<Broker, ActionsError> {
        let audit = settings
            .audit_log
            .as_deref()
            .map(AuditLog::open)
            .transpose()?;
        let mut actuators: BTreeMap<Capability, Box<dyn Actuator>> = BTreeMap::new();
        for cap in Capability::ALL {
            actuators.insert(cap, Box::new(Unimplemented::new(cap)));
        }
        actuators.insert(Capability::Notify, Box::new(NotifyActuator::new(notify)));
        Ok(Broker {
            settings,
            actuators,
            audit,
            metrics: None,
            buckets: Mutex::new(HashMap::new()),
            active: Mutex::new(BTreeMap::new()),
            store: OnceLock::new(),
            id_prefix: format!("{:x}", now_ns()),
            next_id: AtomicU64::new(1),
            offline: false,
            persisted: Mutex::new(BTreeSet::new()),
            lapses: Mutex::new(HashMap::new()),
        })
    }

    /// For `palisade replay`: the events are the past, so only `notify` is carried out; every
    /// other request is checked, rate-limited and audited as in monitor mode. Acting would
    /// kill, freeze or cut whatever runs now under a recycled pid or cgroup.
    pub fn offline(mut self) -> Broker {
        self.offline = true;
        self
    }

    /// Counts requests, denials and audit errors in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Broker {
        self.metrics = Some(metrics);
        self
    }

    /// Registers (or replaces) the actuator that carries out `capability`.
    pub fn with_actuator(mut self, capability: Capability, actuator: Box<dyn Actuator>) -> Broker {
        self.actuators.insert(capability, actuator);
        self
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.settings
    }

    pub fn audit_path(&self) -> Option<&Path> {
        self.audit.as_ref().map(AuditLog::path)
    }

    /// The mode `responder`'s requests run in.
    pub fn mode_for(&self, responder: &str) -> Mode {
        self.settings
            .per_responder
            .get(responder)
            .and_then(|s| s.mode)
            .unwrap_or(self.settings.mode)
    }

    fn rate_limit_for(&self, responder: &str) -> u32 {
        self.settings
            .per_responder
            .get(responder)
            .and_then(|s| s.rate_limit_per_minute)
            .unwrap_or(self.settings.rate_limit_per_minute)
    }

    /// Actions that hold state and can be released, oldest id first. Monitor-mode records of
    /// such actions are listed too (with `mode: Monitor` and an empty handle): they show what
    /// enforce mode would be holding, and their receipts can be released like real ones.
    pub fn active(&self) -> Vec<ActiveAction> {
        lock(&self.active).values().cloned().collect()
    }

    /// Handles one request from a responder. See the module docs for the order of checks.
    pub fn request(
        &self,
        ctx: &RequestContext<'_>,
        req: ActionRequest,
    ) -> Result<Receipt, ActionError> {
        let mode = match req.capability() {
            Some(cap) if self.offline && cap != Capability::Notify => Mode::Monitor,
            _ => self.mode_for(ctx.responder),
        };
        let (result, mode, released_alert) = match &req {
            ActionRequest::Release { action_id } => self.release(ctx, action_id),
            _ => (self.act(ctx, &req, mode), mode, None),
        };
        // `release` carries no alert id in the WIT; audit it under the released action's alert.
        let alert_id = match (&released_alert, ctx.alert_id) {
            (Some(original), "") => original.as_str(),
            _ => ctx.alert_id,
        };
        self.finish(ctx.responder, alert_id, &req, mode, &result);
        result
    }

    fn act(
        &self,
        ctx: &RequestContext<'_>,
        req: &ActionRequest,
        mode: Mode,
    ) -> Result<Receipt, ActionError> {
        let Some(cap) = req.capability() else {
            return Err(ActionError::Failed("release has no capability".into()));
        };
        if !ctx.granted.contains(cap) {
            return Err(ActionError::Denied(cap));
        }
        if !self.take_token(ctx.responder) {
            return Err(ActionError::RateLimited);
        }
        let id = self.new_id();
        match mode {
            Mode::Monitor => {
                if req.holds_state() {
                    self.hold(ctx, cap, req, &id, Mode::Monitor, String::new());
                }
            }
            Mode::Enforce => {
                if req.holds_state() && lock(&self.active).len() >= MAX_ACTIVE {
                    return Err(ActionError::Failed(format!(
                        "too many active actions ({MAX_ACTIVE}); release some first"
                    )));
                }
                let actuator = self.actuators.get(&cap).ok_or_else(|| {
                    ActionError::Unsupported(format!("no {cap} actuator registered"))
                })?;
                let exec = ExecContext {
                    responder: ctx.responder,
                    alert_id: ctx.alert_id,
                    action_id: &id,
                };
                match actuator.execute(&exec, req)? {
                    Outcome::Done => {}
                    Outcome::Held { handle } => {
                        self.hold(ctx, cap, req, &id, Mode::Enforce, handle);
                    }
                }
            }
        }
        Ok(Receipt { id, mode })
    }

    fn hold(
        &self,
        ctx: &RequestContext<'_>,
        capability: Capability,
        req: &ActionRequest,
        id: &str,
        mode: Mode,
        handle: String,
    ) {
        let mut active = lock(&self.active);
        // Enforced state is always tracked (the cap was checked before acting, so this can
        // only overshoot by the requests in flight); a monitor record past the cap is dropped.
        if mode == Mode::Monitor && active.len() >= MAX_ACTIVE {
            tracing::debug!(
                responder = ctx.responder,
                action_id = id,
                "active table full; monitor record not kept"
            );
            return;
        }
        let action = ActiveAction {
            id: id.to_owned(),
            responder: ctx.responder.to_owned(),
            capability,
            request: req.clone(),
            alert_id: ctx.alert_id.to_owned(),
            mode,
            since: SystemTime::now(),
            handle,
        };
        active.insert(id.to_owned(), action.clone());
        drop(active);
        self.persist(&action);
    }

    /// Records `action` in the state file, if one is attached. A failure is logged: the
    /// action is in effect either way, and stays listed in memory.
    fn persist(&self, action: &ActiveAction) {
        if let Some(store) = self.store.get() {
            match store.insert(action) {
                Ok(()) => {
                    lock(&self.persisted).insert(action.id.clone());
                }
                Err(error) => {
                    tracing::error!(%error, action_id = %action.id, "active action not persisted; it will not survive a restart");
                }
            }
        }
    }

    /// Drops an action that holds nothing any more, from memory and from the state file.
    fn forget(&self, id: &str) {
        lock(&self.active).remove(id);
        self.unpersist(id);
    }

    fn unpersist(&self, id: &str) {
        if let Some(store) = self.store.get() {
            match store.remove(id) {
                Ok(_) => {
                    lock(&self.persisted).remove(id);
                }
                Err(error) => {
                    tracing::error!(%error, action_id = id, "released action still in the state file");
                }
            }
        }
    }

    /// Undoes an earlier action of the same responder. Not rate limited: undoing is never the
    /// dangerous direction, and a responder can only release its own actions. An enforced
    /// action is released for real even if the responder is now in monitor mode, for the same
    /// reason; a monitor-mode record is just dropped. Returns the result, the mode it ran in
    /// and the released action's alert id.
    fn release(
        &self,
        ctx: &RequestContext<'_>,
        action_id: &str,
    ) -> (Result<Receipt, ActionError>, Mode, Option<String>) {
        let current = self.mode_for(ctx.responder);
        let taken = {
            let mut active = lock(&self.active);
            match active.get(action_id) {
                Some(a) if a.responder == ctx.responder => {
                    if !ctx.granted.contains(a.capability) {
                        let alert = Some(a.alert_id.clone());
                        return (Err(ActionError::Denied(a.capability)), current, alert);
                    }
                    active.remove(action_id)
                }
                Some(a) => {
                    tracing::warn!(
                        responder = ctx.responder,
                        owner = %a.responder,
                        action_id,
                        "responder tried to release another responder's action"
                    );
                    None
                }
                None => None,
            }
        };
        // Same answer for "unknown" and "someone else's": a responder learns nothing about
        // other responders' actions.
        let Some(action) = taken else {
            return (
                Err(ActionError::InvalidTarget(format!(
                    "no active action {action_id} of this responder"
                ))),
                current,
                None,
            );
        };
        self.undo(action)
    }

    /// Undoes `action`, already taken out of the active table; puts it back if the actuator
    /// fails, so it can be retried and stays visible. With a state file attached, an action
    /// that is no longer in it was released by someone else (the operator's CLI) and is not
    /// undone twice.
    fn undo(&self, action: ActiveAction) -> (Result<Receipt, ActionError>, Mode, Option<String>) {
        let mode = action.mode;
        let alert = Some(action.alert_id.clone());
        let done = |id: String| (Ok(Receipt { id, mode }), mode, alert.clone());
        // The release is claimed in the state file, under its lock, before anything is undone:
        // the operator's CLI and this daemon may release one action at once, and only the one
        // that takes it out of the file undoes it (undoing twice would drop another action's
        // holder count of the same block-exec key).
        let mut claimed = false;
        if let Some(store) = self.store.get() {
            let was_persisted = lock(&self.persisted).remove(&action.id);
            match store.remove(&action.id) {
                Ok(Some(_)) => claimed = true,
                Ok(None) if was_persisted => {
                    tracing::info!(action_id = %action.id, "action was already released outside this daemon");
                    return done(action.id);
                }
                // Never written (its write failed): this release is the only one.
                Ok(None) => {}
                Err(error) => {
                    if was_persisted {
                        lock(&self.persisted).insert(action.id.clone());
                    }
                    tracing::error!(%error, action_id = %action.id, "released action still in the state file");
                }
            }
        }
        if mode == Mode::Monitor {
            return done(action.id);
        }
        let result = match (
            self.other_holder(&action),
            self.actuators.get(&action.capability),
        ) {
            (Some(holder), _) => {
                tracing::info!(action_id = %action.id, still_held_by = %holder, "released; the workload stays as the other action holds it");
                Ok(())
            }
            (None, Some(actuator)) => actuator.release(&action),
            (None, None) => Err(ActionError::Unsupported(format!(
                "no {} actuator registered",
                action.capability
            ))),
        };
        match result {
            Ok(()) => done(action.id),
            Err(e) => {
                // Still in effect: listed again, in memory and in the file.
                if claimed {
                    self.persist(&action);
                }
                lock(&self.active).insert(action.id.clone(), action);
                (Err(e), mode, alert)
            }
        }
    }

    /// Attaches the state file: actions already in it join the active table (not re-applied:
    /// see [`Broker::reapply_held`]), and from now on every held action is written to it and
    /// every release removes it. Returns how many actions were loaded; entries this version
    /// cannot read stay in the file untouched. Call once, before requests flow.
    pub fn attach_store(&self, store: ActionStore) -> Result<usize, StoreError> {
        let stored = store.load()?;
        let mut loaded = 0;
        {
            let mut active = lock(&self.active);
            for entry in &stored {
                match entry.to_active() {
                    Some(action) => {
                        lock(&self.persisted).insert(action.id.clone());
                        active.insert(action.id.clone(), action);
                        loaded += 1;
                    }
                    None => {
                        tracing::warn!(action_id = %entry.id, action = %entry.action, "persisted action not understood; left in the state file")
                    }
                }
            }
        }
        if self.store.set(store).is_err() {
            tracing::warn!("a state file was already attached; keeping the first");
        }
        Ok(loaded)
    }

    /// Another enforced active action holding the state `action` holds ([`Actuator::shares_state`]:
    /// two freezes of one cgroup), which undoing `action` must leave in place.
    fn other_holder(&self, action: &ActiveAction) -> Option<String> {
        let actuator = self.actuators.get(&action.capability)?;
        lock(&self.active)
            .values()
            .find(|a| {
                a.id != action.id
                    && a.mode == Mode::Enforce
                    && a.capability == action.capability
                    && actuator.shares_state(a, action)
            })
            .map(|a| a.id.clone())
    }

    /// Catches up with `palisade actions release` run while this daemon runs: an action the
    /// state file held and no longer holds was released by the operator. The CLI undoes what
    /// outlives a process (pinned maps, cgroup files, quarantined files) itself; a deny-open
    /// mark belongs to this daemon's fanotify group, so it is lifted here. Returns how many
    /// actions were let go. The daemon calls this every few seconds.
    pub fn reconcile_released(&self) -> usize {
        let Some(store) = self.store.get() else {
            return 0;
        };
        // Taken before the file is read: an id persisted after the read is not a candidate.
        let candidates = lock(&self.persisted).clone();
        if candidates.is_empty() {
            return 0;
        }
        let stored: BTreeSet<String> = match store.load() {
            Ok(entries) => entries.into_iter().map(|e| e.id).collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read the state file to follow operator releases");
                return 0;
            }
        };
        let gone: Vec<ActiveAction> = {
            let mut active = lock(&self.active);
            let mut persisted = lock(&self.persisted);
            candidates
                .difference(&stored)
                // Still ours: not being released by its responder right now (that release
                // took it out of `active` and decides from `persisted` whether to undo it).
                .filter_map(|id| {
                    if active.contains_key(id) && persisted.remove(id) {
                        active.remove(id)
                    } else {
                        None
                    }
                })
                .collect()
        };
        for action in &gone {
            let lifted = if action.mode == Mode::Enforce && lifted_only_here(action.capability) {
                match self.actuators.get(&action.capability) {
                    Some(actuator) => actuator.release(action).map_err(|e| e.to_string()),
                    None => Err(format!("no {} actuator registered", action.capability)),
                }
            } else {
                Ok(())
            };
            match lifted {
                Ok(()) => {
                    tracing::info!(action_id = %action.id, action = %action.capability, "action released by the operator")
                }
                Err(error) => {
                    tracing::error!(action_id = %action.id, action = %action.capability, %error, "action released by the operator but not lifted here")
                }
            }
        }
        gone.len()
    }

    /// Puts every enforced action of the active table back in place through its actuator's
    /// `reapply` (the daemon calls this at start, after [`Broker::attach_store`]). Each one is
    /// audited like the original request. Monitor-mode records hold nothing and are kept.
    pub fn reapply_held(&self) -> ReapplySummary {
        let mut summary = ReapplySummary::default();
        for action in self.active() {
            if action.mode != Mode::Enforce {
                continue;
            }
            let result = match self.reapply_one(&action) {
                Ok(Outcome::Held { .. }) => {
                    summary.reapplied += 1;
                    Ok(Receipt {
                        id: action.id.clone(),
                        mode: Mode::Enforce,
                    })
                }
                Ok(Outcome::Done) => {
                    summary.dropped += 1;
                    self.forget(&action.id);
                    Ok(Receipt {
                        id: action.id.clone(),
                        mode: Mode::Enforce,
                    })
                }
                Err(e @ ActionError::InvalidTarget(_)) => {
                    summary.dropped += 1;
                    tracing::warn!(action_id = %action.id, error = %e, "persisted action dropped: its target is gone");
                    self.forget(&action.id);
                    Err(e)
                }
                Err(e) => {
                    summary.failed += 1;
                    tracing::error!(action_id = %action.id, error = %e, "persisted action not re-applied; still listed for release");
                    Err(e)
                }
            };
            self.finish(
                &action.responder,
                &action.alert_id,
                &action.request,
                Mode::Enforce,
                &result,
            );
        }
        summary
    }

    /// Calls the actuator's `reapply` for the enforced `action`. A new handle replaces the old
    /// one in the active table and the state file; if the action was released meanwhile, what
    /// was just put back in place is undone again.
    fn reapply_one(&self, action: &ActiveAction) -> Result<Outcome, ActionError> {
        let Some(actuator) = self.actuators.get(&action.capability) else {
            return Err(ActionError::Unsupported(format!(
                "no {} actuator registered",
                action.capability
            )));
        };
        let exec = ExecContext {
            responder: &action.responder,
            alert_id: &action.alert_id,
            action_id: &action.id,
        };
        let outcome = actuator.reapply(&exec, action);
        let Ok(Outcome::Held { handle }) = &outcome else {
            return outcome;
        };
        if *handle == action.handle {
            return outcome;
        }
        let mut active = lock(&self.active);
        if let Some(held) = active.get_mut(&action.id) {
            held.handle = handle.clone();
            let updated = held.clone();
            // Under the table's lock, so that a release taking the action now cannot remove it
            // from the state file before this write puts it back.
            self.persist(&updated);
            return outcome;
        }
        drop(active);
        let updated = ActiveAction {
            handle: handle.clone(),
            ..action.clone()
        };
        if self.other_holder(&updated).is_none() {
            if let Err(error) = actuator.release(&updated) {
                tracing::error!(action_id = %action.id, %error, "action released while it was re-applied, and not undone again");
            }
        }
        outcome
    }

    /// Whether `id` was taken out of the state file by someone else (an operator release in
    /// progress: the CLI undoes an action before removing it from the file).
    fn released_outside(&self, id: &str) -> bool {
        let Some(store) = self.store.get() else {
            return false;
        };
        lock(&self.persisted).contains(id) && matches!(store.get(id), Ok(None))
    }

    /// Puts back, while the daemon runs, held actions their actuator finds no longer in effect
    /// ([`Actuator::holds`]): a frozen or quarantined workload restarted under the same name
    /// (a new cgroup at the same path) is frozen or quarantined again, under the same action
    /// id, and the new handle is kept in memory and in the state file, as at start. A target
    /// that is gone stays listed (the workload may come back) and is logged once; an action
    /// undone outside the broker (a manual thaw) is re-applied when found undone at two
    /// consecutive calls, so that an operator release in progress is not fought. Each
    /// re-application is audited like the original request; a failing one is logged and
    /// audited once, and tried again at every call. Returns how many were re-applied. The
    /// daemon calls this every few seconds; it costs a stat or two per held action.
    pub fn reassert_held(&self) -> usize {
        let held: Vec<ActiveAction> = lock(&self.active)
            .values()
            .filter(|a| a.mode == Mode::Enforce)
            .cloned()
            .collect();
        lock(&self.lapses).retain(|id, _| held.iter().any(|a| &a.id == id));
        let mut reapplied = 0;
        for action in held {
            let Some(actuator) = self.actuators.get(&action.capability) else {
                continue;
            };
            let previous = lock(&self.lapses).get(&action.id).cloned();
            let why = match actuator.holds(&action) {
                Hold::Holds => {
                    lock(&self.lapses).remove(&action.id);
                    continue;
                }
                Hold::Gone => {
                    if previous != Some(Lapse::Gone) {
                        tracing::warn!(action_id = %action.id, action = %action.capability, handle = %action.handle, "the target of a held action is gone; kept listed, and applied again if it comes back");
                        lock(&self.lapses).insert(action.id.clone(), Lapse::Gone);
                    }
                    continue;
                }
                Hold::Undone { reason } => {
                    if !matches!(previous, Some(Lapse::Undone | Lapse::Failed(_))) {
                        tracing::info!(action_id = %action.id, action = %action.capability, %reason, "held action found undone; applied again if still so at the next check");
                        lock(&self.lapses).insert(action.id.clone(), Lapse::Undone);
                        continue;
                    }
                    format!("undone outside the broker: {reason}")
                }
                Hold::Recreated { old, new } => {
                    format!("target recreated (id {old}, now {new})")
                }
            };
            if self.released_outside(&action.id) {
                continue;
            }
            let result = match self.reapply_one(&action) {
                Ok(Outcome::Held { handle }) => {
                    reapplied += 1;
                    lock(&self.lapses).remove(&action.id);
                    tracing::warn!(action_id = %action.id, action = %action.capability, %why, old_handle = %action.handle, %handle, "held action had lapsed; applied again");
                    Ok(Receipt {
                        id: action.id.clone(),
                        mode: Mode::Enforce,
                    })
                }
                // Nothing left to hold (no actuator answers this today): as at start.
                Ok(Outcome::Done) => {
                    lock(&self.lapses).remove(&action.id);
                    self.forget(&action.id);
                    Ok(Receipt {
                        id: action.id.clone(),
                        mode: Mode::Enforce,
                    })
                }
                Err(e) => {
                    let note = Lapse::Failed(e.to_string());
                    if previous.as_ref() == Some(&note) {
                        continue;
                    }
                    tracing::error!(action_id = %action.id, action = %action.capability, %why, handle = %action.handle, error = %e, "held action lapsed and could not be applied again; still listed, retried at every check");
                    lock(&self.lapses).insert(action.id.clone(), note);
                    Err(e)
                }
            };
            self.finish(
                &action.responder,
                &action.alert_id,
                &action.request,
                Mode::Enforce,
                &result,
            );
        }
        reapplied
    }

    /// Undoes action `action_id` whoever it belongs to: the operator's `palisade actions
    /// release`. Audited as a `release` by [`OPERATOR`] under the action's alert id.
    pub fn release_as_operator(&self, action_id: &str) -> Result<Receipt, ActionError> {
        let taken = lock(&self.active).remove(action_id);
        let release = ActionRequest::Release {
            action_id: action_id.to_owned(),
        };
        let Some(action) = taken else {
            let err = Err(ActionError::InvalidTarget(format!(
                "no active action {action_id}"
            )));
            self.finish(OPERATOR, "", &release, self.settings.mode, &err);
            return err;
        };
        let (result, mode, alert) = self.undo(action);
        self.finish(
            OPERATOR,
            alert.as_deref().unwrap_or(""),
            &release,
            mode,
            &result,
        );
        result
    }

    fn take_token(&self, responder: &str) -> bool {
        let limit = self.rate_limit_for(responder);
        if limit == 0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        match buckets.get_mut(responder) {
            Some(bucket) => bucket.take(limit, now),
            None => {
                let mut bucket = TokenBucket::full(limit, now);
                let ok = bucket.take(limit, now);
                buckets.insert(responder.to_owned(), bucket);
                ok
            }
        }
    }

    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("act-{}-{n}", self.id_prefix)
    }

    /// Logs, counts and audits the end of a request.
    fn finish(
        &self,
        responder: &str,
        alert_id: &str,
        req: &ActionRequest,
        mode: Mode,
        result: &Result<Receipt, ActionError>,
    ) {
        let action = req.name();
        let (audit_result, error, action_id) = match result {
            Ok(receipt) => (
                match receipt.mode {
                    Mode::Enforce => AuditResult::Ok,
                    Mode::Monitor => AuditResult::Recorded,
                },
                None,
                Some(receipt.id.clone()),
            ),
            Err(e) => (e.audit_result(), Some(e.to_string()), None),
        };

        match result {
            Ok(receipt) if receipt.mode == Mode::Monitor => {
                tracing::info!(responder, action, alert_id, action_id = %receipt.id, "action recorded (monitor mode)");
            }
            Ok(receipt) => {
                tracing::info!(responder, action, alert_id, action_id = %receipt.id, "action carried out");
            }
            Err(ActionError::Denied(cap)) => {
                tracing::warn!(responder, action, capability = %cap, alert_id, "action denied: capability not granted");
            }
            Err(ActionError::RateLimited) => {
                tracing::warn!(responder, action, alert_id, "action rate limited");
            }
            Err(e) => {
                tracing::warn!(responder, action, alert_id, error = %e, "action not carried out");
            }
        }

        if let Some(metrics) = &self.metrics {
            metrics.action(responder, action, audit_result.as_str());
            if let Err(ActionError::Denied(cap)) = result {
                metrics.capability_denied(responder, cap.as_str());
            }
        }

        let ts_ns = now_ns();
        let record = AuditRecord {
            time: rfc3339(ts_ns),
            ts_ns,
            responder: responder.to_owned(),
            action: action.to_owned(),
            target: req.target(),
            mode,
            result: audit_result,
            error,
            alert_id: alert_id.to_owned(),
            action_id,
        };
        match &self.audit {
            Some(log) => {
                if let Err(error) = log.write(&record) {
                    tracing::error!(%error, responder, action, "audit record not written");
                    if let Some(metrics) = &self.metrics {
                        metrics.audit_errors_total.inc();
                    }
                }
            }
            None => match serde_json::to_string(&record) {
                Ok(line) => tracing::info!(target: "palisade::audit", record = %line, "audit"),
                Err(error) => {
                    tracing::error!(%error, responder, action, "audit record not serialised");
                    if let Some(metrics) = &self.metrics {
                        metrics.audit_errors_total.inc();
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::LogNotifySink;
    use crate::capability::CapabilitySet;
    use std::time::Duration;

    fn settings(mode: Mode) -> BrokerSettings {
        BrokerSettings {
            mode,
            per_responder: BTreeMap::new(),
            rate_limit_per_minute: 0,
            audit_log: None,
        }
    }

    /// Pretends to block execs: holds state and counts releases.
    #[derive(Default)]
    struct FakeBlock {
        released: Mutex<Vec<String>>,
        fail_release: bool,
    }

    impl Actuator for Arc<FakeBlock> {
        fn execute(
            &self,
            ctx: &ExecContext<'_>,
            _req: &ActionRequest,
        ) -> Result<Outcome, ActionError> {
            Ok(Outcome::Held {
                handle: format!("map-key-{}", ctx.action_id),
            })
        }
        fn shares_state(&self, a: &ActiveAction, b: &ActiveAction) -> bool {
            a.handle == b.handle
        }
        fn release(&self, action: &ActiveAction) -> Result<(), ActionError> {
            if self.fail_release {
                return Err(ActionError::Failed("map busy".into()));
            }
            lock(&self.released).push(action.handle.clone());
            Ok(())
        }
    }

    fn block() -> ActionRequest {
        ActionRequest::BlockExec(crate::actions::ExecMatch::Path("/tmp/x".into()))
    }

    fn ctx<'a>(responder: &'a str, caps: &[Capability]) -> RequestContext<'a> {
        RequestContext {
            responder,
            granted: caps.iter().copied().collect(),
            alert_id: "al",
        }
    }

    #[test]
    fn broker_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Broker>();
    }

    #[test]
    fn token_bucket_refills_over_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(2, t0);
        assert!(b.take(2, t0));
        assert!(b.take(2, t0));
        assert!(!b.take(2, t0));
        // 2 per minute = one token every 30 s.
        assert!(!b.take(2, t0 + Duration::from_secs(29)));
        assert!(b.take(2, t0 + Duration::from_secs(31)));
        // Never more than the burst, however long it idles.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.take(2, later));
        assert!(b.take(2, later));
        assert!(!b.take(2, later));
    }

    /// `palisade replay`: an enforce-mode responder's block is only recorded (the actuator is
    /// never called), its notification still goes out, and a denied request stays denied.
    #[test]
    fn offline_broker_records_host_actions_and_still_notifies() {
        let fake = Arc::new(FakeBlock::default());
        let broker = Broker::new(settings(Mode::Enforce), Box::new(LogNotifySink))
            .unwrap()
            .with_actuator(Capability::BlockExec, Box::new(Arc::clone(&fake)))
            .offline();
        let c = ctx("r", &[Capability::BlockExec, Capability::Notify]);
        let receipt = broker.request(&c, block()).unwrap();
        assert_eq!(receipt.mode, Mode::Monitor);
        assert_eq!(broker.active()[0].handle, "", "the actuator ran");
        let notify = ActionRequest::Notify {
            channel: "default".into(),
            message: "m".into(),
        };
        assert_eq!(broker.request(&c, notify).unwrap().mode, Mode::Enforce);
        assert_eq!(
            broker.request(&ctx("r", &[]), block()),
            Err(ActionError::Denied(Capability::BlockExec))
        );
    }

    /// One action released by its responder in the daemon and by the operator's CLI: only the
    /// first undoes it. A release whose undo fails keeps the action in the state file.
    #[test]
    fn a_release_is_undone_once_and_a_failed_one_stays_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let broker_with = |fake: &Arc<FakeBlock>| {
            let b = Broker::new(settings(Mode::Enforce), Box::new(LogNotifySink))
                .unwrap()
                .with_actuator(Capability::BlockExec, Box::new(Arc::clone(fake)));
            b.attach_store(ActionStore::open(dir.path()).unwrap())
                .unwrap();
            b
        };
        let daemon_fake = Arc::new(FakeBlock::default());
        let daemon = broker_with(&daemon_fake);
        let c = ctx("r", &[Capability::BlockExec]);
        let receipt = daemon.request(&c, block()).unwrap();
        let cli_fake = Arc::new(FakeBlock::default());
        let cli = broker_with(&cli_fake);
        let release = ActionRequest::Release {
            action_id: receipt.id.clone(),
        };
        daemon.request(&c, release).unwrap();
        cli.release_as_operator(&receipt.id).unwrap();
        assert_eq!(lock(&daemon_fake.released).len(), 1);
        assert!(lock(&cli_fake.released).is_empty(), "undone twice");

        let failing = Arc::new(FakeBlock {
            fail_release: true,
            ..FakeBlock::default()
        });
        let broker = broker_with(&failing);
        let kept = broker.request(&c, block()).unwrap();
        let release = ActionRequest::Release {
            action_id: kept.id.clone(),
        };
        assert!(broker.request(&c, release).is_err());
        assert!(ActionStore::at(dir.path()).get(&kept.id).unwrap().is_some());
        assert_eq!(broker.active().len(), 1);
    }

    /// Two freezes of one cgroup: releasing the first leaves it frozen, the second thaws it.
    #[test]
    fn a_freeze_is_undone_only_by_its_last_holder() {
        let fake = Arc::new(FakeBlock::default());
        let broker = Broker::new(settings(Mode::Enforce), Box::new(LogNotifySink))
            .unwrap()
            .with_actuator(Capability::Freeze, Box::new(Arc::clone(&fake)));
        let c = ctx("r", &[Capability::Freeze]);
        let freeze = || ActionRequest::Freeze(crate::actions::Workload::CgroupPath("x".into()));
        let first = broker.request(&c, freeze()).unwrap();
        let second = broker.request(&c, freeze()).unwrap();
        // FakeBlock's handles name the action; a real freeze's names the cgroup.
        let handle = broker.active()[0].handle.clone();
        for action in lock(&broker.active).values_mut() {
            action.handle = handle.clone();
        }
        let release = |id: &str| ActionRequest::Release {
            action_id: id.into(),
        };
        broker.request(&c, release(&first.id)).unwrap();
        assert!(
            lock(&fake.released).is_empty(),
            "thawed under the second freeze"
        );
        broker.request(&c, release(&second.id)).unwrap();
        assert_eq!(*lock(&fake.released), [handle]);
    }

    /// An action the operator's CLI released (gone from the state file) is forgotten; a
    /// block-exec is not undone again here (the CLI undid it in the pinned map).
    #[test]
    fn reconcile_forgets_actions_released_in_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBlock::default());
        let broker = Broker::new(settings(Mode::Enforce), Box::new(LogNotifySink))
            .unwrap()
            .with_actuator(Capability::BlockExec, Box::new(Arc::clone(&fake)));
        broker
            .attach_store(ActionStore::open(dir.path()).unwrap())
            .unwrap();
        let c = ctx("r", &[Capability::BlockExec]);
        let kept = broker.request(&c, block()).unwrap();
        let released = broker.request(&c, block()).unwrap();
        assert_eq!(broker.reconcile_released(), 0);
        ActionStore::at(dir.path()).remove(&released.id).unwrap();
        assert_eq!(broker.reconcile_released(), 1);
        let ids: Vec<String> = broker.active().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, [kept.id]);
        assert!(lock(&fake.released).is_empty(), "undone twice");
    }

    /// Holds something whose target can be recreated, gone or undone, as `holds` says.
    struct FakeLapse {
        hold: Mutex<Hold>,
        fail: Mutex<bool>,
        reapplied: AtomicU64,
    }

    impl Actuator for Arc<FakeLapse> {
        fn execute(
            &self,
            _ctx: &ExecContext<'_>,
            _req: &ActionRequest,
        ) -> Result<Outcome, ActionError> {
            Ok(Outcome::Held {
                handle: "h0".into(),
            })
        }
        fn release(&self, _action: &ActiveAction) -> Result<(), ActionError> {
            Ok(())
        }
        fn reapply(
            &self,
            _ctx: &ExecContext<'_>,
            _action: &ActiveAction,
        ) -> Result<Outcome, ActionError> {
            if *lock(&self.fail) {
                return Err(ActionError::Failed("attach failed".into()));
            }
            let n = self.reapplied.fetch_add(1, Ordering::SeqCst) + 1;
            *lock(&self.hold) = Hold::Holds;
            Ok(Outcome::Held {
                handle: format!("h{n}"),
            })
        }
        fn holds(&self, _action: &ActiveAction) -> Hold {
            lock(&self.hold).clone()
        }
    }

    /// What `reassert_held` does for each answer of `holds`: nothing while it holds or the
    /// target is gone; at once when recreated; at the second check when undone, unless the
    /// operator released it meanwhile; a failure keeps the action. A new handle reaches the
    /// active table and the state file.
    #[test]
    fn reassert_reapplies_lapsed_actions_only() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeLapse {
            hold: Mutex::new(Hold::Holds),
            fail: Mutex::new(false),
            reapplied: AtomicU64::new(0),
        });
        let broker = Broker::new(settings(Mode::Enforce), Box::new(LogNotifySink))
            .unwrap()
            .with_actuator(Capability::Freeze, Box::new(Arc::clone(&fake)));
        broker
            .attach_store(ActionStore::open(dir.path()).unwrap())
            .unwrap();
        let store = ActionStore::at(dir.path());
        let c = ctx("r", &[Capability::Freeze]);
        let freeze = || ActionRequest::Freeze(crate::actions::Workload::CgroupPath("x".into()));
        let id = broker.request(&c, freeze()).unwrap().id;
        let set = |h: Hold| *lock(&fake.hold) = h;
        let handle = || {
            let mem = broker.active()[0].handle.clone();
            assert_eq!(store.get(&id).unwrap().unwrap().handle, mem);
            mem
        };
        assert_eq!(broker.reassert_held(), 0);

        set(Hold::Gone);
        assert_eq!(broker.reassert_held(), 0);
        assert_eq!(broker.reassert_held(), 0);
        assert_eq!((broker.active().len(), handle()), (1, "h0".to_owned()));

        set(Hold::Recreated {
            old: "1".into(),
            new: "2".into(),
        });
        assert_eq!(broker.reassert_held(), 1);
        assert_eq!(handle(), "h1");
        assert_eq!(broker.active()[0].id, id);

        set(Hold::Undone {
            reason: "thawed".into(),
        });
        assert_eq!(broker.reassert_held(), 0, "acted on at the second check");
        assert_eq!(broker.reassert_held(), 1);
        assert_eq!(handle(), "h2");

        *lock(&fake.fail) = true;
        set(Hold::Recreated {
            old: "2".into(),
            new: "3".into(),
        });
        assert_eq!(broker.reassert_held(), 0);
        assert_eq!(broker.reassert_held(), 0);
        assert_eq!((broker.active().len(), handle()), (1, "h2".to_owned()));
        *lock(&fake.fail) = false;
        assert_eq!(broker.reassert_held(), 1, "retried");
        assert_eq!(handle(), "h3");

        // The operator's CLI undid it and is taking it out of the state file.
        set(Hold::Undone {
            reason: "thawed".into(),
        });
        assert_eq!(broker.reassert_held(), 0);
        store.remove(&id).unwrap();
        assert_eq!(broker.reassert_held(), 0);
        assert_eq!(fake.reapplied.load(Ordering::SeqCst), 3);
        assert_eq!(broker.reconcile_released(), 1);
        assert!(broker.active().is_empty());
    }

    #[test]
    fn held_actions_are_listed_and_released_by_their_owner_only() {
        let fake = Arc::new(FakeBlock::default());
        let broker = Broker::new(settings(Mode::Enforce), Box::new(LogNotifySink))
            .unwrap()
            .with_actuator(Capability::BlockExec, Box::new(Arc::clone(&fake)));
        let owner = ctx("r1", &[Capability::BlockExec]);
        let receipt = broker.request(&owner, block()).unwrap();
        assert_eq!(receipt.mode, Mode::Enforce);
        let active = broker.active();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].id, receipt.id);
        assert_eq!(active[0].handle, format!("map-key-{}", receipt.id));

        let release = ActionRequest::Release {
            action_id: receipt.id.clone(),
        };
        // Another responder, even with the capability, cannot release it.
        let other = ctx("r2", &[Capability::BlockExec]);
        assert!(matches!(
            broker.request(&other, release.clone()),
            Err(ActionError::InvalidTarget(_))
        ));
        // The owner without the capability any more is denied.
        let ungranted = ctx("r1", &[]);
        assert_eq!(
            broker.request(&ungranted, release.clone()),
            Err(ActionError::Denied(Capability::BlockExec))
        );
        assert_eq!(broker.active().len(), 1);

        broker.request(&owner, release.clone()).unwrap();
        assert!(broker.active().is_empty());
        assert_eq!(
            *lock(&fake.released),
            vec![format!("map-key-{}", receipt.id)]
        );
        // Twice is an invalid target.
        assert!(matches!(
            broker.request(&owner, release),
            Err(ActionError::InvalidTarget(_))
        ));
    }

    #[test]
    fn failed_release_keeps_the_action() {
        let fake = Arc::new(FakeBlock {
            fail_release: true,
            ..FakeBlock::default()
        });
        let broker = Broker::new(settings(Mode::Enforce), Box::new(LogNotifySink))
            .unwrap()
            .with_actuator(Capability::BlockExec, Box::new(Arc::clone(&fake)));
        let c = ctx("r1", &[Capability::BlockExec]);
        let receipt = broker.request(&c, block()).unwrap();
        let err = broker
            .request(
                &c,
                ActionRequest::Release {
                    action_id: receipt.id,
                },
            )
            .unwrap_err();
        assert_eq!(err, ActionError::Failed("map busy".into()));
        assert_eq!(broker.active().len(), 1);
    }

    #[test]
    fn monitor_records_of_stateful_actions_can_be_released() {
        let broker = Broker::new(settings(Mode::Monitor), Box::new(LogNotifySink)).unwrap();
        let c = ctx("r1", &[Capability::DenyOpen, Capability::KillProcess]);
        let receipt = broker
            .request(
                &c,
                ActionRequest::DenyOpen {
                    path: "/etc/x".into(),
                },
            )
            .unwrap();
        assert_eq!(receipt.mode, Mode::Monitor);
        // A kill holds nothing, so it is not listed.
        broker
            .request(
                &c,
                ActionRequest::KillProcess {
                    pid: 1,
                    start_ns: None,
                    signal: 9,
                },
            )
            .unwrap();
        let active = broker.active();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].mode, Mode::Monitor);
        let r = broker
            .request(
                &c,
                ActionRequest::Release {
                    action_id: receipt.id.clone(),
                },
            )
            .unwrap();
        assert_eq!(
            r,
            Receipt {
                id: receipt.id,
                mode: Mode::Monitor
            }
        );
        assert!(broker.active().is_empty());
    }

    #[test]
    fn ids_are_unique() {
        let broker = Broker::new(settings(Mode::Monitor), Box::new(LogNotifySink)).unwrap();
        let c = ctx("r", &[Capability::Notify]);
        let mut ids = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let r = broker
                .request(
                    &c,
                    ActionRequest::Notify {
                        channel: "default".into(),
                        message: "m".into(),
                    },
                )
                .unwrap();
            assert!(ids.insert(r.id));
        }
    }

    #[test]
    fn empty_grant_set_denies_everything() {
        let broker = Broker::new(settings(Mode::Enforce), Box::new(LogNotifySink)).unwrap();
        let c = RequestContext {
            responder: "r",
            granted: CapabilitySet::default(),
            alert_id: "a",
        };
        let reqs = [
            ActionRequest::KillProcess {
                pid: 1,
                start_ns: None,
                signal: 9,
            },
            block(),
            ActionRequest::DenyOpen { path: "/x".into() },
            ActionRequest::NetworkQuarantine(crate::actions::Workload::CgroupId(1)),
            ActionRequest::Freeze(crate::actions::Workload::CgroupPath("a".into())),
            ActionRequest::QuarantineFile { path: "/x".into() },
            ActionRequest::Notify {
                channel: "c".into(),
                message: "m".into(),
            },
        ];
        for req in reqs {
            let cap = req.capability().unwrap();
            assert_eq!(broker.request(&c, req), Err(ActionError::Denied(cap)));
        }
    }
}
