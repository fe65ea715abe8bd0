//! A loaded plugin generation (`LoadedPlugin`: compiled code, description, limits) and its
//! instances (`Instance`: one Store each, since a trap poisons the whole Store). Every call runs
//! under an epoch deadline and a memory cap; failures come back as a classified `CallError`,
//! never as a panic.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Func, TypedFunc};
use wasmtime::Store;

use super::bindings::{detector, responder, types as wit};
use super::convert::LoweredBatch;
use super::engine::{PluginEngine, TickerGate};
use super::host_impl::{HostState, PluginContext};
use super::manifest::PluginConfig;
use super::subscription::{AlertFilter, Interest};
use super::{PluginInfo, PluginKind};
use crate::alert::Priority;

/// Budgets of one plugin, from its sidecar or the engine defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    pub memory_bytes: usize,
    /// Per batch call.
    pub deadline: Duration,
    /// For instantiation plus `init` (guests like Python need far more than a batch).
    pub init_deadline: Duration,
    pub max_alerts_per_batch: usize,
}

/// What to do after repeated failures.
#[derive(Debug, Clone)]
pub struct FailurePolicy {
    pub max_consecutive: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// True: stay disabled after quarantine instead of retrying with backoff.
    pub disable: bool,
}

/// Detector-side sidecar overrides applied to every alert.
#[derive(Debug, Clone, Default)]
pub struct RuleOverrides {
    pub disabled_rules: Vec<String>,
    pub priorities: Vec<(String, Priority)>,
}

#[derive(Clone)]
pub enum Pre {
    Detector(detector::DetectorPre<HostState>),
    Responder(responder::ResponderPre<HostState>),
}

/// One generation of one plugin, immutable once published.
pub struct LoadedPlugin {
    pub generation: u64,
    pub stem: String,
    pub file: PathBuf,
    pub info: PluginInfo,
    pub interest: Interest,
    pub alert_filter: Option<AlertFilter>,
    pub config: PluginConfig,
    pub limits: Limits,
    pub failure: FailurePolicy,
    pub overrides: RuleOverrides,
    pub ctx: Arc<PluginContext>,
    pub pre: Pre,
    pub health: Health,
}

impl LoadedPlugin {
    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn kind(&self) -> PluginKind {
        self.info.kind
    }
}

/// Failure bookkeeping shared by every worker's instance of one generation.
#[derive(Debug, Default)]
pub struct Health {
    consecutive_failures: AtomicU32,
    quarantines: AtomicU32,
    /// Monotonic ns (since `epoch()`) until which the plugin receives nothing; 0 = healthy.
    quarantined_until: AtomicU64,
}

fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// What `Health::record_failure` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureVerdict {
    /// Recreate the instance and keep going.
    Retry,
    /// Quarantined for this long (u64::MAX ns when disabled for good).
    Quarantined(Duration),
}

impl Health {
    pub fn is_quarantined(&self) -> bool {
        let until = self.quarantined_until.load(Ordering::Relaxed);
        until != 0 && monotonic_ns() < until
    }

    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    pub fn record_failure(&self, policy: &FailurePolicy) -> FailureVerdict {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < policy.max_consecutive {
            return FailureVerdict::Retry;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let n = self.quarantines.fetch_add(1, Ordering::Relaxed);
        let backoff = if policy.disable {
            Duration::MAX
        } else {
            policy
                .backoff_initial
                .saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX))
                .min(policy.backoff_max)
        };
        let until = monotonic_ns().saturating_add(backoff.as_nanos().min(u64::MAX as u128) as u64);
        self.quarantined_until.store(until, Ordering::Relaxed);
        FailureVerdict::Quarantined(backoff)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
}

/// Why a call into a plugin failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    Trap,
    Deadline,
    Memory,
    Init,
    Instantiate,
}

impl FailureCause {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::Trap => "trap",
            FailureCause::Deadline => "deadline",
            FailureCause::Memory => "memory",
            FailureCause::Init => "init",
            FailureCause::Instantiate => "instantiate",
        }
    }

    /// The coarser label used in metrics.
    pub fn metric(self) -> crate::metrics::FailureCause {
        match self {
            FailureCause::Trap => crate::metrics::FailureCause::Trap,
            FailureCause::Deadline => crate::metrics::FailureCause::Deadline,
            FailureCause::Memory => crate::metrics::FailureCause::Memory,
            FailureCause::Init | FailureCause::Instantiate => crate::metrics::FailureCause::Other,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", cause.as_str())]
pub struct CallError {
    pub cause: FailureCause,
    pub detail: String,
}

impl CallError {
    fn from_wasmtime(err: &wasmtime::Error) -> Self {
        let cause = if err.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
            FailureCause::Deadline
        } else if format!("{err:#}").contains("growing memory") {
            FailureCause::Memory
        } else {
            FailureCause::Trap
        };
        // The first line of the chain names the trap; the backtrace follows on later lines.
        let detail = format!("{err:#}");
        let detail = detail.lines().next().unwrap_or_default().to_string();
        Self { cause, detail }
    }
}

enum Bindings {
    /// `on_events` is the detector's `on-events` export, type-checked at instantiation against
    /// [`LoweredBatch`] (which lowers a prebuilt batch image instead of the generated types).
    Detector {
        bindings: detector::Detector,
        on_events: Func,
    },
    Responder(responder::Responder),
}

/// `on-events` as called with a prebuilt batch image.
type OnEvents<'a> = TypedFunc<(&'a LoweredBatch,), (Vec<wit::Alert>,)>;

impl Drop for Instance {
    fn drop(&mut self) {
        let ctx = &self.store.data().plugin;
        ctx.metrics.plugin_instances_add(&ctx.name, -1);
    }
}

/// A live instance: its own Store, so a trap here cannot affect any other instance.
pub struct Instance {
    store: Store<HostState>,
    bindings: Bindings,
    /// Held around every guest call so the epoch ticker runs while guest code does.
    gate: Arc<TickerGate>,
    pub generation: u64,
    pub last_used: Instant,
}

impl Instance {
    /// Instantiates and initialises `plugin` under its init deadline.
    pub fn start(engine: &PluginEngine, plugin: &LoadedPlugin) -> Result<Self, CallError> {
        let mut instance = Self::instantiate(engine, &plugin.pre, &plugin.ctx, &plugin.limits)?;
        instance.init(&plugin.config, plugin.limits.init_deadline)?;
        instance.generation = plugin.generation;
        Ok(instance)
    }

    /// Instantiates without calling `init` (used to call `describe` at load time).
    pub fn instantiate(
        engine: &PluginEngine,
        pre: &Pre,
        ctx: &Arc<PluginContext>,
        limits: &Limits,
    ) -> Result<Self, CallError> {
        let mut store = Store::new(
            engine.engine(),
            HostState::new(Arc::clone(ctx), limits.memory_bytes),
        );
        store.limiter(|s| &mut s.limits);
        // A new Store's deadline is 0, which would trap at once: arm it before instantiating.
        store.set_epoch_deadline(PluginEngine::ticks(limits.init_deadline));
        let gate = engine.ticker_gate();
        let running = gate.enter();
        let instantiate_err = |err: wasmtime::Error| {
            let mut e = CallError::from_wasmtime(&err);
            if e.cause == FailureCause::Trap {
                e.cause = FailureCause::Instantiate;
            }
            e
        };
        let bindings = match pre {
            Pre::Detector(pre) => {
                let instance = pre
                    .instance_pre()
                    .instantiate(&mut store)
                    .map_err(instantiate_err)?;
                let bindings =
                    detector::Detector::new(&mut store, &instance).map_err(instantiate_err)?;
                let on_events = instance
                    .get_func(&mut store, "on-events")
                    .ok_or_else(|| wasmtime::Error::msg("no `on-events` export"))
                    .and_then(|f| {
                        f.typed::<(&LoweredBatch,), (Vec<wit::Alert>,)>(&store)
                            .map(|_| f)
                    })
                    .map_err(instantiate_err)?;
                Bindings::Detector {
                    bindings,
                    on_events,
                }
            }
            Pre::Responder(pre) => {
                Bindings::Responder(pre.instantiate(&mut store).map_err(instantiate_err)?)
            }
        };
        drop(running);
        ctx.metrics.plugin_instances_add(&ctx.name, 1);
        Ok(Self {
            store,
            bindings,
            gate,
            generation: 0,
            last_used: Instant::now(),
        })
    }

    pub fn describe(&mut self, deadline: Duration) -> Result<wit::PluginInfo, CallError> {
        self.store.set_epoch_deadline(PluginEngine::ticks(deadline));
        let _running = self.gate.enter();
        let result = match &self.bindings {
            Bindings::Detector { bindings: b, .. } => b.call_describe(&mut self.store),
            Bindings::Responder(b) => b.call_describe(&mut self.store),
        };
        result.map_err(|e| CallError::from_wasmtime(&e))
    }

    pub fn init(&mut self, config: &PluginConfig, deadline: Duration) -> Result<(), CallError> {
        let config = super::convert::wit_config(config);
        self.store.set_epoch_deadline(PluginEngine::ticks(deadline));
        let _running = self.gate.enter();
        let result = match &self.bindings {
            Bindings::Detector { bindings: b, .. } => b.call_init(&mut self.store, &config),
            Bindings::Responder(b) => b.call_init(&mut self.store, &config),
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(CallError {
                cause: FailureCause::Init,
                detail: format!("init rejected the configuration: {reason}"),
            }),
            Err(e) => Err(CallError::from_wasmtime(&e)),
        }
    }

    /// Runs one detector batch under `deadline`. `event_now_ns`: replay's event time for the
    /// call (what `clock` and state TTLs see); None uses the pipeline clock.
    pub fn on_events(
        &mut self,
        batch: &LoweredBatch,
        deadline: Duration,
        event_now_ns: Option<u64>,
    ) -> Result<Vec<wit::Alert>, CallError> {
        let Bindings::Detector { on_events, .. } = &self.bindings else {
            return Ok(Vec::new());
        };
        // SAFETY: `on_events` was type-checked against exactly these parameter and result
        // types when the instance was created (`Func::typed` in `instantiate`).
        #[expect(
            unsafe_code,
            reason = "skips a per-call type check done at instantiation"
        )]
        let func = unsafe { OnEvents::new_unchecked(*on_events) };
        self.last_used = Instant::now();
        self.store.data_mut().event_now_ns = event_now_ns;
        self.store.set_epoch_deadline(PluginEngine::ticks(deadline));
        let _running = self.gate.enter();
        func.call(&mut self.store, (batch,))
            .map(|(alerts,)| alerts)
            .map_err(|e| CallError::from_wasmtime(&e))
    }

    /// [`Self::on_events`] through wasmtime's generated lowering of the WIT types: the
    /// reference the prebuilt image is tested against, and a benchmark baseline.
    pub fn on_events_typed(
        &mut self,
        batch: &wit::EventBatch,
        deadline: Duration,
        event_now_ns: Option<u64>,
    ) -> Result<Vec<wit::Alert>, CallError> {
        let Bindings::Detector { bindings, .. } = &self.bindings else {
            return Ok(Vec::new());
        };
        self.last_used = Instant::now();
        self.store.data_mut().event_now_ns = event_now_ns;
        self.store.set_epoch_deadline(PluginEngine::ticks(deadline));
        let _running = self.gate.enter();
        bindings
            .call_on_events(&mut self.store, batch)
            .map_err(|e| CallError::from_wasmtime(&e))
    }

    /// Runs one responder batch under `deadline` (`event_now_ns` as for `on_events`).
    pub fn on_alerts(
        &mut self,
        alerts: &[wit::RoutedAlert],
        deadline: Duration,
        event_now_ns: Option<u64>,
    ) -> Result<(), CallError> {
        let Bindings::Responder(b) = &self.bindings else {
            return Ok(());
        };
        self.last_used = Instant::now();
        self.store.data_mut().event_now_ns = event_now_ns;
        self.store.set_epoch_deadline(PluginEngine::ticks(deadline));
        let _running = self.gate.enter();
        b.call_on_alerts(&mut self.store, alerts)
            .map_err(|e| CallError::from_wasmtime(&e))
    }

    pub fn is_detector(&self) -> bool {
        matches!(self.bindings, Bindings::Detector { .. })
    }
}
