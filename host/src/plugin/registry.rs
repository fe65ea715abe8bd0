//! The set of loaded plugins. Loads, swaps and unloads all go through `Registry` (serialised
//! by one lock, so it behaves as a single actor); readers take a lock-free snapshot. A new
//! version is compiled, linked, described, initialised and given a canary batch before it is
//! published; if any step fails the previous version keeps running. Before publishing a
//! detector, the registry prepares an initialised instance for every worker running it and
//! hands them over (see `handover`), so a swap does not stall the workers on instantiation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::bindings::{detector, responder};
use super::convert;
use super::engine::{EngineError, PluginEngine};
use super::handover::{Handover, Inbox, Prepared};
use super::host_impl::{ActionsAccess, LogLimiter, PluginContext};
use super::instance::{FailurePolicy, Health, Instance, Limits, LoadedPlugin, Pre, RuleOverrides};
use super::manifest::{merge_config, ManifestError, Sidecar};
use super::state::{PipelineClock, StateLimits, StateStore};
use super::subscription::{AlertFilter, Interest};
use super::PluginKind;
use crate::actions::Broker;
use crate::capability::CapabilitySet;
use crate::event::KindSet;
use crate::metrics::{Metrics, ReloadResult};

/// The published plugin set; immutable, replaced as a whole on every change.
#[derive(Default)]
pub struct PluginSet {
    pub generation: u64,
    pub detectors: Vec<Arc<LoadedPlugin>>,
    pub responders: Vec<Arc<LoadedPlugin>>,
    /// Union of every detector's kinds: the router's (and the kernel's) first filter.
    pub kinds: KindSet,
}

impl PluginSet {
    pub fn all(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.detectors.iter().chain(self.responders.iter())
    }
}

/// Engine-wide defaults a sidecar may override.
#[derive(Debug, Clone)]
pub struct PluginDefaults {
    pub memory_mib: u64,
    pub deadline: Duration,
    pub init_deadline: Duration,
    pub max_consecutive_failures: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for PluginDefaults {
    fn default() -> Self {
        Self {
            memory_mib: 64,
            deadline: Duration::from_millis(100),
            init_deadline: Duration::from_secs(5),
            max_consecutive_failures: 5,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// Everything the registry needs from the daemon.
pub struct RegistrySettings {
    pub defaults: PluginDefaults,
    /// Operator grants per plugin name.
    pub grants: Box<dyn Fn(&str) -> CapabilitySet + Send + Sync>,
    pub broker: Arc<Broker>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<PipelineClock>,
    pub state_limits: StateLimits,
}

/// One unit to load: a component and its optional sidecar, already read from disk.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub stem: String,
    pub wasm_path: PathBuf,
    pub wasm_bytes: Arc<[u8]>,
    pub sidecar: Option<(PathBuf, String)>,
}

impl LoadRequest {
    /// Reads `<stem>.wasm` and its sidecar `<stem>.toml` if present.
    pub fn from_file(wasm_path: &Path) -> Result<Self, LoadError> {
        let file = wasm_path.display().to_string();
        let bytes = std::fs::read(wasm_path).map_err(|e| LoadError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        let stem = wasm_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let sidecar_path = wasm_path.with_extension("toml");
        let sidecar = match std::fs::read_to_string(&sidecar_path) {
            Ok(text) => Some((sidecar_path, text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(LoadError::Read {
                    file: sidecar_path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        Ok(Self {
            stem,
            wasm_path: wasm_path.to_path_buf(),
            wasm_bytes: bytes.into(),
            sidecar,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error(transparent)]
    Sidecar(#[from] ManifestError),
    #[error(transparent)]
    Compile(#[from] EngineError),
    #[error("{file}: exports neither the palisade:plugin@0.2.0 detector nor responder world (detector: {detector}; responder: {responder})")]
    WrongWorld {
        file: String,
        detector: String,
        responder: String,
    },
    #[error("{file}: {stage} failed: {reason}")]
    Call {
        file: String,
        stage: &'static str,
        reason: String,
    },
    #[error("{file}: describe() is invalid: {reason}")]
    BadInfo { file: String, reason: String },
    #[error("{file}: plugin name `{name}` is already used by {other}")]
    NameConflict {
        file: String,
        name: String,
        other: String,
    },
    #[error("{file}: disabled by its sidecar (enabled = false)")]
    Disabled { file: String },
}

/// What a successful load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub name: String,
    pub version: String,
    pub kind: PluginKind,
    pub replaced: bool,
    pub cache_hit: bool,
}

struct Inner {
    by_stem: HashMap<String, Arc<LoadedPlugin>>,
    states: HashMap<String, Arc<StateStore>>,
    next_generation: u64,
}

pub struct Registry {
    engine: Arc<PluginEngine>,
    settings: RegistrySettings,
    current: ArcSwap<PluginSet>,
    inner: Mutex<Inner>,
    handover: Handover,
    /// Called with every published set, in publish order (see `on_publish`).
    listeners: Mutex<Vec<PublishListener>>,
    /// Called with every set about to be published (see `before_publish`).
    preparers: Mutex<Vec<PublishListener>>,
}

/// Observer of published plugin sets (the kernel source's filter follows them).
pub type PublishListener = Box<dyn Fn(&PluginSet) + Send + Sync>;

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
}

impl Registry {
    pub fn new(engine: Arc<PluginEngine>, settings: RegistrySettings) -> Self {
        Self {
            engine,
            settings,
            current: ArcSwap::from_pointee(PluginSet::default()),
            inner: Mutex::new(Inner {
                by_stem: HashMap::new(),
                states: HashMap::new(),
                next_generation: 1,
            }),
            handover: Handover::new(),
            listeners: Mutex::new(Vec::new()),
            preparers: Mutex::new(Vec::new()),
        }
    }

    /// Calls `listener` with every set about to be published, before any worker can see it
    /// (under the registry lock, in order): what must be in place before new plugins receive
    /// events (the kernel programs their subscriptions need) is set up here.
    pub fn before_publish(&self, listener: PublishListener) {
        let _inner = self.lock();
        self.preparers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }

    /// Calls `listener` with the current set now and with every set published later, in
    /// order (under the registry lock, so it never sees an older set after a newer one).
    pub fn on_publish(&self, listener: PublishListener) {
        let _inner = self.lock();
        listener(&self.current.load());
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }

    /// Where workers register for prepared instances and retire old ones.
    pub fn handover(&self) -> &Handover {
        &self.handover
    }

    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    /// The pipeline clock (wall time live, event time in replay).
    pub fn clock(&self) -> &Arc<PipelineClock> {
        &self.settings.clock
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.settings.metrics
    }

    /// The current plugin set (one atomic load).
    pub fn snapshot(&self) -> Arc<PluginSet> {
        self.current.load_full()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads or replaces the plugin of `req.stem`. On error nothing changes.
    pub fn load(&self, req: &LoadRequest) -> Result<Loaded, LoadError> {
        let result = self.prepare(req);
        let metrics = &self.settings.metrics;
        match result {
            Ok((plugin, cache_hit, canary)) => {
                // Built before taking the lock: instantiating may take milliseconds per worker.
                let prepared = self.prepare_handover(&plugin, canary);
                let mut inner = self.lock();
                if let Some(other) = inner
                    .by_stem
                    .values()
                    .find(|p| p.name() == plugin.name() && p.stem != req.stem)
                {
                    metrics.plugin_reload(ReloadResult::Error);
                    return Err(LoadError::NameConflict {
                        file: req.wasm_path.display().to_string(),
                        name: plugin.name().to_string(),
                        other: other.file.display().to_string(),
                    });
                }
                let loaded = Loaded {
                    name: plugin.name().to_string(),
                    version: plugin.info.version.clone(),
                    kind: plugin.kind(),
                    replaced: inner.by_stem.contains_key(&req.stem),
                    cache_hit,
                };
                // Delivered before the set that publishes them, under the same lock: a worker
                // that sees the new set always finds its prepared instance already there.
                let set_generation = inner.next_generation;
                for (inbox, instance) in prepared {
                    inbox.deliver(Prepared {
                        plugin: plugin.name().to_string(),
                        instance,
                        set_generation,
                    });
                }
                inner.by_stem.insert(req.stem.clone(), Arc::new(plugin));
                self.publish(&mut inner);
                metrics.plugin_reload(ReloadResult::Ok);
                Ok(loaded)
            }
            Err(err) => {
                metrics.plugin_reload(ReloadResult::Error);
                Err(err)
            }
        }
    }

    /// Unloads the plugin of `stem`; true when there was one.
    pub fn remove(&self, stem: &str) -> Option<String> {
        let mut inner = self.lock();
        let removed = inner.by_stem.remove(stem)?;
        self.publish(&mut inner);
        Some(removed.name().to_string())
    }

    /// One initialised instance of `plugin` for every worker running a plugin of that name,
    /// the first being the canary (initialised and already called once). Empty for responders
    /// (the alert bus builds its own) and when prewarming is off. An instance that cannot be
    /// built is left to the worker to build, as without a handover.
    fn prepare_handover(
        &self,
        plugin: &LoadedPlugin,
        canary: Instance,
    ) -> Vec<(Arc<Inbox>, Instance)> {
        if plugin.kind() != PluginKind::Detector || !self.handover.prewarm() {
            return Vec::new();
        }
        let targets = self.handover.running(plugin.name());
        let mut canary = Some(canary);
        let mut prepared = Vec::with_capacity(targets.len());
        for inbox in targets {
            let instance = match canary.take() {
                Some(canary) => Ok(canary),
                None => Instance::start(&self.engine, plugin),
            };
            match instance {
                Ok(instance) => prepared.push((inbox, instance)),
                Err(error) => tracing::warn!(
                    plugin = plugin.name(),
                    worker = inbox.worker(),
                    %error,
                    "cannot prepare an instance for the handover; the worker will build its own"
                ),
            }
        }
        prepared
    }

    fn publish(&self, inner: &mut Inner) {
        let mut set = PluginSet {
            generation: inner.next_generation,
            ..PluginSet::default()
        };
        inner.next_generation += 1;
        let mut plugins: Vec<_> = inner.by_stem.values().cloned().collect();
        plugins.sort_by(|a, b| a.name().cmp(b.name()));
        for plugin in plugins {
            match plugin.kind() {
                PluginKind::Detector => {
                    set.kinds = set.kinds.union(plugin.interest.kinds);
                    set.detectors.push(plugin);
                }
                PluginKind::Responder => set.responders.push(plugin),
            }
        }
        let set = Arc::new(set);
        call_each(&self.preparers, &set);
        self.current.store(Arc::clone(&set));
        call_each(&self.listeners, &set);
    }

    fn state_for(&self, name: &str) -> Arc<StateStore> {
        let mut inner = self.lock();
        let limits = self.settings.state_limits;
        Arc::clone(
            inner
                .states
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(StateStore::new(limits))),
        )
    }

    /// Compiles, links, describes, initialises and smoke-tests a new generation. Returns the
    /// plugin, whether the compile cache was hit, and the initialised canary instance.
    fn prepare(&self, req: &LoadRequest) -> Result<(LoadedPlugin, bool, Instance), LoadError> {
        let file = req.wasm_path.display().to_string();
        let sidecar = match &req.sidecar {
            Some((path, text)) => Sidecar::from_toml_str(text, &path.display().to_string())?,
            None => Sidecar::default(),
        };
        if !sidecar.enabled {
            return Err(LoadError::Disabled { file });
        }
        let (component, cache_hit) = self.engine.compile(&file, &req.wasm_bytes)?;
        let pre = match self
            .engine
            .detector_linker()
            .instantiate_pre(&component)
            .and_then(detector::DetectorPre::new)
        {
            Ok(pre) => Pre::Detector(pre),
            Err(det_err) => match self
                .engine
                .responder_linker()
                .instantiate_pre(&component)
                .and_then(responder::ResponderPre::new)
            {
                Ok(pre) => Pre::Responder(pre),
                Err(resp_err) => {
                    return Err(LoadError::WrongWorld {
                        file,
                        detector: first_line(&det_err),
                        responder: first_line(&resp_err),
                    })
                }
            },
        };
        let defaults = &self.settings.defaults;
        let limits = Limits {
            memory_bytes: (sidecar.limits.memory_mib.unwrap_or(defaults.memory_mib) as usize)
                .saturating_mul(1 << 20)
                .min(super::engine::MAX_PLUGIN_MEMORY_BYTES),
            deadline: sidecar
                .limits
                .deadline_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.deadline),
            init_deadline: defaults.init_deadline,
            max_alerts_per_batch: sidecar.limits.max_alerts_per_batch as usize,
        };
        let failure = FailurePolicy {
            max_consecutive: sidecar
                .failure
                .max_consecutive
                .unwrap_or(defaults.max_consecutive_failures)
                .max(1),
            backoff_initial: sidecar
                .failure
                .backoff_initial_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.backoff_initial),
            backoff_max: sidecar
                .failure
                .backoff_max_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.backoff_max),
            disable: sidecar.failure.policy == super::manifest::FailureAction::Disable,
        };

        // Describe on a throwaway instance whose context has no state yet (name unknown).
        let probe_ctx = Arc::new(PluginContext {
            name: req.stem.clone(),
            state: Arc::new(StateStore::new(StateLimits::default())),
            clock: Arc::clone(&self.settings.clock),
            log_limiter: LogLimiter::new(sidecar.limits.max_log_lines_per_sec),
            metrics: Arc::clone(&self.settings.metrics),
            actions: None,
        });
        let call_err = |stage: &'static str| {
            let file = file.clone();
            move |e: super::instance::CallError| LoadError::Call {
                file,
                stage,
                reason: e.to_string(),
            }
        };
        let mut probe = Instance::instantiate(&self.engine, &pre, &probe_ctx, &limits)
            .map_err(call_err("instantiate"))?;
        let info = convert::plugin_info(
            probe
                .describe(limits.init_deadline)
                .map_err(call_err("describe"))?,
        );
        drop(probe);
        self.validate_info(&file, &info, &pre)?;

        let granted = (self.settings.grants)(&info.name);
        let effective = info.capabilities.intersection(granted);
        for cap in info.capabilities.iter().filter(|c| !granted.contains(*c)) {
            tracing::warn!(plugin = %info.name, capability = %cap, "capability requested but not granted by the operator; requests will be denied");
        }
        let ctx = Arc::new(PluginContext {
            name: info.name.clone(),
            state: self.state_for(&info.name),
            clock: Arc::clone(&self.settings.clock),
            log_limiter: LogLimiter::new(sidecar.limits.max_log_lines_per_sec),
            metrics: Arc::clone(&self.settings.metrics),
            actions: (info.kind == PluginKind::Responder).then(|| ActionsAccess {
                broker: Arc::clone(&self.settings.broker),
                granted: effective,
            }),
        });
        let config = merge_config(&info.default_config, &sidecar.config);
        let alert_filter = info.alert_filter.clone().map(|f| AlertFilter {
            min_priority: sidecar.overrides.min_priority.unwrap_or(f.min_priority),
            rules: sidecar.overrides.rules.clone().unwrap_or(f.rules),
            tags: sidecar.overrides.tags.clone().unwrap_or(f.tags),
        });
        let overrides = RuleOverrides {
            disabled_rules: sidecar.overrides.disabled_rules.clone(),
            priorities: sidecar
                .overrides
                .priorities
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        };
        let generation = {
            let mut inner = self.lock();
            inner.next_generation += 1;
            inner.next_generation
        };
        let plugin = LoadedPlugin {
            generation,
            stem: req.stem.clone(),
            file: req.wasm_path.clone(),
            interest: Interest::new(info.subscriptions.clone()),
            alert_filter,
            info,
            config,
            limits,
            failure,
            overrides,
            ctx,
            pre,
            health: Health::default(),
        };
        // Init and a canary call on a real instance: a version that cannot start never
        // replaces a working one.
        let mut canary = Instance::start(&self.engine, &plugin).map_err(call_err("init"))?;
        match plugin.kind() {
            PluginKind::Detector => {
                let empty = convert::wit_batch(std::iter::empty());
                canary
                    .on_events(&empty, plugin.limits.init_deadline, None)
                    .map_err(call_err("canary on-events"))?;
            }
            PluginKind::Responder => {
                canary
                    .on_alerts(&[], plugin.limits.init_deadline, None)
                    .map_err(call_err("canary on-alerts"))?;
            }
        }
        Ok((plugin, cache_hit, canary))
    }

    fn validate_info(
        &self,
        file: &str,
        info: &super::PluginInfo,
        pre: &Pre,
    ) -> Result<(), LoadError> {
        let bad = |reason: String| LoadError::BadInfo {
            file: file.to_string(),
            reason,
        };
        if !is_valid_name(&info.name) {
            return Err(bad(format!(
                "name `{}` must be 1-64 characters of [a-z0-9._-]",
                info.name
            )));
        }
        let world = match pre {
            Pre::Detector(_) => PluginKind::Detector,
            Pre::Responder(_) => PluginKind::Responder,
        };
        if info.kind != world {
            return Err(bad(format!(
                "kind is `{}` but the component exports the {} world",
                info.kind.as_str(),
                world.as_str()
            )));
        }
        if world == PluginKind::Detector && info.subscriptions.iter().all(|s| s.kinds.0 == 0) {
            return Err(bad(
                "a detector must subscribe to at least one event kind".into()
            ));
        }
        if world == PluginKind::Responder && info.alert_filter.is_none() {
            return Err(bad("a responder must declare an alert-filter".into()));
        }
        Ok(())
    }
}

fn first_line(err: &wasmtime::Error) -> String {
    format!("{err:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Calls every listener of `list` with `set`, in registration order.
fn call_each(list: &Mutex<Vec<PublishListener>>, set: &Arc<PluginSet>) {
    for listener in list.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        listener(set);
    }
}
