//! The host side of the plugin imports (`log`, `state`, `clock`, `actions`) and the per-Store
//! data. Everything a plugin can reach goes through here, so this is where budgets (log rate,
//! state quota) and the capability gate for actions are applied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{actions, clock, log, state, types};
use super::state::{PipelineClock, StateError, StateStore};
use crate::actions::{ActionError, ActionRequest, Broker, ExecMatch, RequestContext, Workload};
use crate::capability::{Capability, CapabilitySet};
use crate::metrics::Metrics;

/// Everything about a plugin generation that its host calls need.
pub struct PluginContext {
    pub name: String,
    pub state: Arc<StateStore>,
    pub clock: Arc<PipelineClock>,
    pub log_limiter: LogLimiter,
    pub metrics: Arc<Metrics>,
    /// Responders only: the broker and the effective (requested ∩ granted) capabilities.
    pub actions: Option<ActionsAccess>,
}

pub struct ActionsAccess {
    pub broker: Arc<Broker>,
    pub granted: CapabilitySet,
}

/// Per-Store data: a WASI context that grants nothing, the memory limiter, and the plugin.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) plugin: Arc<PluginContext>,
    /// Replay: the time of the events being handled, set before each call, so `clock` and
    /// state TTLs see event time exactly. None live (wall clock).
    pub(crate) event_now_ns: Option<u64>,
}

impl HostState {
    pub fn new(plugin: Arc<PluginContext>, memory_bytes: usize) -> Self {
        Self {
            // No preopens, env, args, stdio or network: the guest sees an empty machine.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .instances(64)
                .tables(64)
                .memories(8)
                .trap_on_grow_failure(true)
                .build(),
            plugin,
            event_now_ns: None,
        }
    }

    fn now(&self) -> u64 {
        self.event_now_ns
            .unwrap_or_else(|| self.plugin.clock.now_ns())
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A per-second budget for guest log lines; the excess is counted and summarised once.
pub struct LogLimiter {
    per_second: u32,
    window: Mutex<(u64, u32)>,
    dropped: AtomicU64,
}

impl LogLimiter {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window: Mutex::new((0, 0)),
            dropped: AtomicU64::new(0),
        }
    }

    /// True when the line may be written. Reports the lines dropped in the previous window.
    fn admit(&self, plugin: &str, metrics: &Metrics) -> bool {
        let second = super::state::wall_now_ns() / 1_000_000_000;
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if window.0 != second {
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!(target: "plugin", plugin, dropped, "plugin log lines dropped by the rate limit");
            }
            *window = (second, 0);
        }
        if window.1 < self.per_second {
            window.1 += 1;
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics.plugin_log_dropped(plugin);
            false
        }
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let plugin = &self.plugin;
        if !plugin.log_limiter.admit(&plugin.name, &plugin.metrics) {
            return;
        }
        // Guest text is untrusted: bound it and keep it on one line.
        let mut message = message;
        if message.len() > 4096 {
            let mut cut = 4096;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let message = message.replace(['\n', '\r'], " ");
        let name = plugin.name.as_str();
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", plugin = name, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", plugin = name, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", plugin = name, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", plugin = name, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", plugin = name, "{message}"),
        }
    }
}

fn state_error(err: StateError) -> state::StateError {
    match err {
        StateError::TooLarge => state::StateError::TooLarge,
        StateError::QuotaExceeded => state::StateError::QuotaExceeded,
    }
}

impl state::Host for HostState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.plugin.state.get(&key, self.now())
    }

    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), state::StateError> {
        self.plugin
            .state
            .set(&key, value, ttl_ms, self.now())
            .map_err(state_error)
    }

    fn delete(&mut self, key: String) -> bool {
        self.plugin.state.delete(&key, self.now())
    }

    fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, state::StateError> {
        self.plugin
            .state
            .incr(&key, delta, ttl_ms, self.now())
            .map_err(state_error)
    }
}

impl clock::Host for HostState {
    fn now_ns(&mut self) -> u64 {
        self.now()
    }
}

fn wit_capability(cap: Capability) -> types::Capability {
    match cap {
        Capability::KillProcess => types::Capability::KillProcess,
        Capability::BlockExec => types::Capability::BlockExec,
        Capability::DenyOpen => types::Capability::DenyOpen,
        Capability::NetworkQuarantine => types::Capability::NetworkQuarantine,
        Capability::Freeze => types::Capability::Freeze,
        Capability::QuarantineFile => types::Capability::QuarantineFile,
        Capability::Notify => types::Capability::Notify,
    }
}

fn wit_action_error(err: ActionError) -> actions::ActionError {
    match err {
        ActionError::Denied(cap) => actions::ActionError::Denied(wit_capability(cap)),
        ActionError::Unsupported(why) => actions::ActionError::Unsupported(why),
        ActionError::RateLimited => actions::ActionError::RateLimited,
        ActionError::InvalidTarget(why) => actions::ActionError::InvalidTarget(why),
        ActionError::Failed(why) => actions::ActionError::Failed(why),
    }
}

fn workload(target: actions::Workload) -> Workload {
    match target {
        actions::Workload::CgroupId(id) => Workload::CgroupId(id),
        actions::Workload::ContainerId(id) => Workload::ContainerId(id),
        actions::Workload::CgroupPath(path) => Workload::CgroupPath(path),
    }
}

impl HostState {
    fn request(
        &mut self,
        alert_id: &str,
        request: ActionRequest,
    ) -> Result<actions::Receipt, actions::ActionError> {
        let plugin = &self.plugin;
        let Some(access) = &plugin.actions else {
            // Only responders link the actions interface; this is unreachable for detectors.
            return Err(actions::ActionError::Unsupported("not a responder".into()));
        };
        let ctx = RequestContext {
            responder: &plugin.name,
            granted: access.granted,
            alert_id,
        };
        access
            .broker
            .request(&ctx, request)
            .map(|receipt| actions::Receipt {
                id: receipt.id,
                mode: match receipt.mode {
                    crate::actions::Mode::Enforce => actions::Mode::Enforce,
                    crate::actions::Mode::Monitor => actions::Mode::Monitor,
                },
            })
            .map_err(wit_action_error)
    }
}

impl actions::Host for HostState {
    fn kill_process(
        &mut self,
        target: actions::ProcessTarget,
        signal: u32,
        alert_id: String,
    ) -> Result<actions::Receipt, actions::ActionError> {
        self.request(
            &alert_id,
            ActionRequest::KillProcess {
                pid: target.pid,
                start_ns: target.start_ns,
                signal,
            },
        )
    }

    fn block_exec(
        &mut self,
        target: actions::ExecMatch,
        alert_id: String,
    ) -> Result<actions::Receipt, actions::ActionError> {
        let target = match target {
            actions::ExecMatch::Path(p) => ExecMatch::Path(p),
            actions::ExecMatch::Sha256(h) => ExecMatch::Sha256(h),
        };
        self.request(&alert_id, ActionRequest::BlockExec(target))
    }

    fn deny_open(
        &mut self,
        path: String,
        alert_id: String,
    ) -> Result<actions::Receipt, actions::ActionError> {
        self.request(&alert_id, ActionRequest::DenyOpen { path })
    }

    fn network_quarantine(
        &mut self,
        target: actions::Workload,
        alert_id: String,
    ) -> Result<actions::Receipt, actions::ActionError> {
        self.request(
            &alert_id,
            ActionRequest::NetworkQuarantine(workload(target)),
        )
    }

    fn freeze(
        &mut self,
        target: actions::Workload,
        alert_id: String,
    ) -> Result<actions::Receipt, actions::ActionError> {
        self.request(&alert_id, ActionRequest::Freeze(workload(target)))
    }

    fn quarantine_file(
        &mut self,
        path: String,
        alert_id: String,
    ) -> Result<actions::Receipt, actions::ActionError> {
        self.request(&alert_id, ActionRequest::QuarantineFile { path })
    }

    fn notify(
        &mut self,
        channel: String,
        message: String,
        alert_id: String,
    ) -> Result<actions::Receipt, actions::ActionError> {
        self.request(&alert_id, ActionRequest::Notify { channel, message })
    }

    fn release(&mut self, action_id: String) -> Result<(), actions::ActionError> {
        self.request("", ActionRequest::Release { action_id })
            .map(|_| ())
    }
}
