//! Assembles the pipeline from configuration: engine, metrics, broker, registry, alert bus,
//! workers and router; loads the plugin directory (once, or watched for hot reload); runs a
//! source to its end or until stopped; then drains every queue so nothing in flight is lost.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Sender};

use crate::actions::{Broker, BrokerSettings, NotifySink, ResponderSettings};
use crate::alert::{Alert, Origin, Priority, HOST_ORIGIN};
use crate::config::{self, Config};
use crate::dispatch::alerts::{AlertBus, NOTIFICATION_RULE};
use crate::dispatch::next_alert_id;
use crate::dispatch::router::Router;
use crate::dispatch::worker::{Worker, WorkerSettings};
use crate::event::source::{EventSink, EventSource, SourceSummary, StopFlag};
use crate::metrics::Metrics;
use crate::output::{AlertOutput, Format, OutputTarget};
use crate::plugin::engine::PluginEngine;
use crate::plugin::registry::{LoadRequest, PluginDefaults, Registry, RegistrySettings};
use crate::plugin::state::{wall_now_ns, PipelineClock, StateLimits};
use crate::reload::{PluginChange, UnitSnapshot};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Engine(#[from] crate::plugin::engine::EngineError),
    #[error(transparent)]
    Actions(#[from] crate::actions::ActionsError),
    #[error(transparent)]
    ActionStore(#[from] crate::actions::StoreError),
    #[error(transparent)]
    Webhook(#[from] crate::actions::webhook::WebhookError),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error(transparent)]
    Reload(#[from] crate::reload::ReloadError),
    #[error(transparent)]
    Source(#[from] crate::event::source::SourceError),
    #[error("cannot start thread {name}: {source}")]
    Thread {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Host name for alerts: configured, else the kernel's.
pub fn hostname(configured: Option<&str>) -> String {
    if let Some(name) = configured {
        return name.to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Notifications from responders become alerts on the outputs and a log line.
/// With `[notify] webhook_url`, they are also spooled for the webhook.
struct BusNotifier {
    tx: Sender<Alert>,
    hostname: String,
    webhook: Option<crate::actions::webhook::WebhookSink>,
}

impl NotifySink for BusNotifier {
    fn notify(
        &self,
        responder: &str,
        channel: &str,
        message: &str,
        alert_id: &str,
    ) -> Result<(), String> {
        tracing::warn!(responder, channel, alert_id, "notification: {message}");
        let alert = Alert {
            id: next_alert_id(),
            ts_ns: wall_now_ns(),
            rule: NOTIFICATION_RULE.into(),
            priority: Priority::Notice,
            message: message.to_string(),
            tags: vec!["palisade".into(), "notification".into()],
            fields: vec![
                ("responder".into(), responder.to_string()),
                ("channel".into(), channel.to_string()),
                ("alert_id".into(), alert_id.to_string()),
            ],
            plugin: Origin {
                name: HOST_ORIGIN.into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            hostname: self.hostname.clone(),
            event: None,
        };
        let sent = self
            .tx
            .send(alert)
            .map_err(|_| "alert bus is shut down".to_string());
        if let Some(webhook) = &self.webhook {
            webhook.notify(responder, channel, message, alert_id)?;
        }
        sent
    }
}

/// The webhook sink of `[notify]`, when a URL is configured.
fn start_webhook(
    notify: &config::NotifyConfig,
) -> Result<Option<crate::actions::webhook::WebhookSink>, DaemonError> {
    use crate::actions::webhook::{WebhookSettings, WebhookSink};
    let Some(settings) = WebhookSettings::from_config(notify) else {
        return Ok(None);
    };
    tracing::info!(
        url = %settings.url,
        spool = %settings.spool_dir.display(),
        "notify: webhook enabled"
    );
    Ok(Some(WebhookSink::start(settings)?))
}

/// Registers the fanotify deny-open actuator when some plugin is granted deny-open. Without
/// the privilege (or kernel support) the capability stays unsupported and a warning says why.
fn with_deny_open(broker: Broker, config: &Config) -> Broker {
    use crate::actions::fanotify::{DenyOpenActuator, DenySettings, OpenDenier};
    use crate::capability::Capability;
    if !config
        .grants
        .values()
        .any(|caps| caps.contains(&Capability::DenyOpen))
    {
        return broker;
    }
    match OpenDenier::start(DenySettings::from_config(&config.actions.deny)) {
        Ok(denier) => broker.with_actuator(
            Capability::DenyOpen,
            Box::new(DenyOpenActuator::new(Arc::new(denier))),
        ),
        Err(error) => {
            tracing::warn!(
                %error,
                "deny-open is granted but unavailable: such requests will fail as unsupported"
            );
            broker
        }
    }
}

/// How often the daemon looks for actions the operator released with `palisade actions
/// release` ([`Broker::reconcile_released`]) and for held actions that lapsed because their
/// workload was recreated ([`Broker::reassert_held`]).
pub const OPERATOR_RELEASE_POLL: Duration = Duration::from_secs(2);

/// Polls the state file for operator releases, and the held actions for lapses, until the
/// broker is gone.
fn follow_operator_releases(broker: std::sync::Weak<Broker>) -> Result<(), DaemonError> {
    let name = "palisade-releases".to_owned();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || loop {
            std::thread::sleep(OPERATOR_RELEASE_POLL);
            let Some(broker) = broker.upgrade() else {
                return;
            };
            broker.reconcile_released();
            // After the releases: an action the operator just released is not re-applied.
            broker.reassert_held();
        })
        .map(drop)
        .map_err(|source| DaemonError::Thread { name, source })
}

/// Pipeline parameters (from `Config`, or set directly by tests and benchmarks).
pub struct PipelineOptions {
    pub workers: usize,
    pub queue_capacity: usize,
    pub alert_queue_capacity: usize,
    pub batch_max: usize,
    pub idle_release: Duration,
    pub hostname: String,
    pub outputs: Vec<Box<dyn AlertOutput>>,
}

/// The running pipeline: workers, alert bus, and the router sources write into.
pub struct Pipeline {
    router: Option<Arc<Router>>,
    workers: Vec<JoinHandle<()>>,
    bus: Option<JoinHandle<u64>>,
    registry: Arc<Registry>,
}

impl Pipeline {
    /// Starts workers and the alert bus. `internal` is the bus's unbounded channel (also
    /// used by the broker's notifier).
    pub fn start(
        registry: Arc<Registry>,
        clock: Arc<PipelineClock>,
        source_name: &str,
        opts: PipelineOptions,
        internal: (Sender<Alert>, crossbeam_channel::Receiver<Alert>),
    ) -> Result<Self, DaemonError> {
        let (alert_tx, alert_rx) = bounded::<Alert>(opts.alert_queue_capacity.max(1));
        let (internal_tx, internal_rx) = internal;
        let bus = AlertBus::new(
            Arc::clone(&registry),
            opts.outputs,
            opts.hostname.clone(),
            internal_tx,
        );
        let bus = std::thread::Builder::new()
            .name("palisade-alerts".into())
            .spawn(move || bus.run(alert_rx, internal_rx))
            .map_err(|source| DaemonError::Thread {
                name: "palisade-alerts".into(),
                source,
            })?;
        let mut shards = Vec::new();
        let mut workers = Vec::new();
        for id in 0..opts.workers.max(1) {
            let (tx, rx) = crate::dispatch::queue::shard_queue(opts.queue_capacity.max(1));
            shards.push(tx);
            let worker = Worker::new(
                id,
                Arc::clone(&registry),
                alert_tx.clone(),
                WorkerSettings {
                    batch_max: opts.batch_max.max(1),
                    idle_release: opts.idle_release,
                    hostname: opts.hostname.clone(),
                },
            );
            let name = format!("palisade-worker-{id}");
            workers.push(
                std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || worker.run(rx))
                    .map_err(|source| DaemonError::Thread { name, source })?,
            );
        }
        drop(alert_tx);
        let metrics = Arc::clone(registry.metrics());
        let router = Router::new(shards, Arc::clone(&registry), metrics, clock, source_name);
        Ok(Self {
            router: Some(Arc::new(router)),
            workers,
            bus: Some(bus),
            registry,
        })
    }

    /// Where sources deliver events.
    pub fn sink(&self) -> Arc<dyn EventSink> {
        match &self.router {
            Some(router) => Arc::clone(router) as Arc<dyn EventSink>,
            None => Arc::new(ClosedSink),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Closes the queues, lets workers and the bus drain them, and returns the alerts written.
    pub fn finish(mut self) -> u64 {
        self.shutdown()
    }

    fn shutdown(&mut self) -> u64 {
        if let Some(router) = self.router.take() {
            router.close();
        }
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                tracing::error!("a dispatch worker panicked");
            }
        }
        self.bus
            .take()
            .map(|bus| bus.join().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if self.bus.is_some() {
            self.shutdown();
        }
    }
}

struct ClosedSink;
impl EventSink for ClosedSink {
    fn submit(&self, _event: crate::event::Event, _delivery: crate::event::source::Delivery) {}
}

/// Everything built from a `Config`, before a source runs.
pub struct Daemon {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    /// The actions broker the registry's responders use.
    pub broker: Arc<Broker>,
    pub clock: Arc<PipelineClock>,
    pub hostname: String,
    internal: (Sender<Alert>, crossbeam_channel::Receiver<Alert>),
}

fn broker_mode(mode: config::Mode) -> crate::actions::Mode {
    match mode {
        config::Mode::Enforce => crate::actions::Mode::Enforce,
        config::Mode::Monitor => crate::actions::Mode::Monitor,
    }
}

impl Daemon {
    /// Builds the engine, broker and registry. `event_time_clock`: replay sources make "now"
    /// follow event timestamps.
    pub fn build(config: Config, event_time_clock: bool) -> Result<Self, DaemonError> {
        Self::build_with(config, event_time_clock, false)
    }

    /// [`Daemon::build`] for `palisade replay`: event time, and responders' actions other than
    /// `notify` only recorded ([`Broker::offline`]); no actuator is set up, so nothing touches
    /// the kernel (no fanotify group, no pinned map).
    pub fn build_offline(config: Config) -> Result<Self, DaemonError> {
        Self::build_with(config, true, true)
    }

    fn build_with(
        config: Config,
        event_time_clock: bool,
        offline: bool,
    ) -> Result<Self, DaemonError> {
        let metrics = Arc::new(Metrics::new());
        let hostname = hostname(config.hostname.as_deref());
        let clock = Arc::new(if event_time_clock {
            PipelineClock::event_time()
        } else {
            PipelineClock::wall()
        });
        let engine = Arc::new(PluginEngine::new(Some(&config.plugins.cache_dir))?);
        let internal = unbounded::<Alert>();
        let broker_settings = BrokerSettings {
            mode: broker_mode(config.actions.mode),
            per_responder: config
                .actions
                .responders
                .iter()
                .map(|(name, r)| {
                    (
                        name.clone(),
                        ResponderSettings {
                            mode: r.mode.map(broker_mode),
                            rate_limit_per_minute: r.rate_limit_per_minute,
                        },
                    )
                })
                .collect(),
            rate_limit_per_minute: config.actions.rate_limit_per_minute,
            audit_log: Some(config.actions.audit_log.clone()),
        };
        if let Some(parent) = config.actions.audit_log.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let notifier = BusNotifier {
            tx: internal.0.clone(),
            hostname: hostname.clone(),
            webhook: start_webhook(&config.notify)?,
        };
        let broker =
            Broker::new(broker_settings, Box::new(notifier))?.with_metrics(Arc::clone(&metrics));
        let broker = Arc::new(if offline {
            broker.offline()
        } else {
            crate::actions::with_host_actuators(with_deny_open(broker, &config), &config.actions)
        });
        #[cfg(feature = "ebpf")]
        crate::actions::enforce_ebpf::log_kernel_support();
        let grants_config = config.clone();
        let engine_cfg = &config.engine;
        let registry = Arc::new(Registry::new(
            engine,
            RegistrySettings {
                defaults: PluginDefaults {
                    memory_mib: engine_cfg.default_memory_mib,
                    deadline: Duration::from_millis(engine_cfg.default_deadline_ms),
                    init_deadline: Duration::from_millis(engine_cfg.init_deadline_ms),
                    max_consecutive_failures: engine_cfg.max_consecutive_failures,
                    backoff_initial: Duration::from_millis(
                        engine_cfg.quarantine_backoff_initial_ms,
                    ),
                    backoff_max: Duration::from_millis(engine_cfg.quarantine_backoff_max_ms),
                },
                grants: Box::new(move |name| grants_config.granted(name)),
                broker: Arc::clone(&broker),
                metrics: Arc::clone(&metrics),
                clock: Arc::clone(&clock),
                state_limits: StateLimits::default(),
            },
        ));
        Ok(Self {
            config,
            metrics,
            registry,
            broker,
            clock,
            hostname,
            internal,
        })
    }

    /// A sender for host alerts (written to the outputs like detector alerts).
    pub fn host_alerts(&self) -> Sender<Alert> {
        self.internal.0.clone()
    }

    /// Attaches the state file in `actions.state_dir` to the broker and re-applies the held
    /// actions it lists (freezes, blocks; quarantined files are checked). Only `palisade run`
    /// does this: replays, checks and tests must not touch the host's persisted actions.
    pub fn restore_actions(&self) -> Result<crate::actions::ReapplySummary, DaemonError> {
        let store = crate::actions::ActionStore::open(&self.config.actions.state_dir)?;
        let loaded = self.broker.attach_store(store)?;
        let summary = self.broker.reapply_held();
        follow_operator_releases(Arc::downgrade(&self.broker))?;
        if loaded > 0 {
            tracing::info!(
                loaded,
                reapplied = summary.reapplied,
                dropped = summary.dropped,
                failed = summary.failed,
                state_dir = %self.config.actions.state_dir.display(),
                "persisted actions restored"
            );
        }
        Ok(summary)
    }

    /// Opens the configured outputs.
    pub fn open_outputs(&self) -> Result<Vec<Box<dyn AlertOutput>>, DaemonError> {
        let mut outputs = Vec::new();
        for out in &self.config.outputs {
            let format = match out.format {
                config::OutputFormat::Json => Format::Json,
                config::OutputFormat::Falco => Format::Falco,
            };
            let target = match &out.kind {
                config::OutputKind::Stdout => OutputTarget::Stdout,
                config::OutputKind::File { path } => OutputTarget::File(path.clone()),
            };
            outputs.push(crate::output::open_output(target, format)?);
        }
        Ok(outputs)
    }

    /// Starts the pipeline with `outputs` (tests pass in-memory outputs).
    pub fn start_pipeline(
        &self,
        source_name: &str,
        outputs: Vec<Box<dyn AlertOutput>>,
    ) -> Result<Pipeline, DaemonError> {
        let engine = &self.config.engine;
        Pipeline::start(
            Arc::clone(&self.registry),
            Arc::clone(&self.clock),
            source_name,
            PipelineOptions {
                // Replay runs on one worker: the event-time clock and the plugins' shared state
                // then see events in file order, so a cross-process sequence (connect in one
                // process, shell in another) gives the same alerts on every run. With several
                // workers their interleaving, and so the alerts, varied from run to run.
                workers: if self.clock.follows_events() {
                    1
                } else {
                    engine.workers
                },
                queue_capacity: engine.queue_capacity,
                alert_queue_capacity: engine.alert_queue_capacity,
                // Replay runs one event per call so every call sees its own event's time
                // (state TTLs and windows then match the recording exactly).
                batch_max: if self.clock.follows_events() {
                    1
                } else {
                    engine.batch_max
                },
                idle_release: Duration::from_secs(self.config.plugins.idle_release_secs),
                hostname: self.hostname.clone(),
                outputs,
            },
            self.internal.clone(),
        )
    }

    /// Loads every plugin in `dir` once. Returns (loaded, failed); failures are logged.
    pub fn load_dir(&self, dir: &Path) -> Result<(usize, usize), DaemonError> {
        let units = crate::reload::initial_units(dir)?;
        let mut ok = 0;
        let mut failed = 0;
        for unit in units {
            if apply_change(&self.registry, PluginChange::Upsert(unit)) {
                ok += 1;
            } else {
                failed += 1;
            }
        }
        Ok((ok, failed))
    }

    /// Watches `dir` and applies every change to the registry on a reload thread. The first
    /// scan loads what is there; returns once it has been applied.
    pub fn watch_dir(&self, dir: PathBuf) -> Result<ReloadHandle, DaemonError> {
        let (tx, rx) = unbounded::<PluginChange>();
        let settings = crate::reload::WatchSettings {
            debounce: Duration::from_millis(self.config.plugins.debounce_ms),
            ..Default::default()
        };
        // Count (stat only) the units the watcher's first pass will send, to wait for them.
        let expected = crate::reload::scan(&dir)?
            .values()
            .filter(|unit| unit.wasm.is_some())
            .count();
        let watcher = crate::reload::Watcher::spawn(dir, settings, tx)?;
        let registry = Arc::clone(&self.registry);
        let (ready_tx, ready_rx) = bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("palisade-reload".into())
            .spawn(move || {
                let mut seen = 0usize;
                let mut ready = Some(ready_tx);
                for change in rx {
                    apply_change(&registry, change);
                    seen += 1;
                    if seen >= expected {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                }
            })
            .map_err(|source| DaemonError::Thread {
                name: "palisade-reload".into(),
                source,
            })?;
        if expected > 0 {
            let _ = ready_rx.recv_timeout(Duration::from_secs(120));
        }
        Ok(ReloadHandle {
            watcher: Some(watcher),
            thread: Some(thread),
        })
    }
}

/// Stops the watcher and the reload thread on drop.
pub struct ReloadHandle {
    watcher: Option<crate::reload::Watcher>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ReloadHandle {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.stop();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn request_from(unit: UnitSnapshot) -> LoadRequest {
    LoadRequest {
        stem: unit.stem,
        wasm_path: unit.wasm,
        wasm_bytes: unit.wasm_bytes,
        sidecar: match (unit.sidecar, unit.sidecar_text) {
            (Some((path, _)), Some(text)) => Some((path, text)),
            _ => None,
        },
    }
}

/// Applies one change; logs the outcome. True on success.
pub fn apply_change(registry: &Registry, change: PluginChange) -> bool {
    match change {
        PluginChange::Upsert(unit) => {
            let req = request_from(unit);
            let started = std::time::Instant::now();
            match registry.load(&req) {
                Ok(loaded) => {
                    tracing::info!(
                        plugin = %loaded.name,
                        version = %loaded.version,
                        kind = loaded.kind.as_str(),
                        file = %req.wasm_path.display(),
                        replaced = loaded.replaced,
                        cached = loaded.cache_hit,
                        ms = started.elapsed().as_millis() as u64,
                        "plugin loaded"
                    );
                    true
                }
                Err(err) => {
                    tracing::error!(file = %req.wasm_path.display(), "plugin not loaded (the previous version, if any, keeps running): {err}");
                    false
                }
            }
        }
        PluginChange::Remove { stem } => {
            if let Some(name) = registry.remove(&stem) {
                tracing::info!(plugin = %name, stem = %stem, "plugin unloaded");
            }
            true
        }
    }
}

/// Runs `source` into `pipeline` until it ends or `stop` is set.
pub fn run_source(
    source: &mut dyn EventSource,
    pipeline: &Pipeline,
    stop: &StopFlag,
) -> Result<SourceSummary, DaemonError> {
    let sink = pipeline.sink();
    Ok(source.run(sink.as_ref(), stop)?)
}

/// Sets `stop` on SIGINT or SIGTERM. Signals are blocked in every thread started after this
/// call and taken synchronously by one thread with `sigwait`, so no handler runs in an
/// arbitrary thread.
pub fn stop_on_signals(stop: StopFlag) -> Option<JoinHandle<()>> {
    // SAFETY: plain libc signal-set manipulation on a zeroed sigset_t we own.
    #[expect(unsafe_code, reason = "signal mask setup through libc")]
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return None;
        }
        set
    };
    std::thread::Builder::new()
        .name("palisade-signals".into())
        .spawn(move || {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is a valid, initialised signal set; `signal` is a valid out pointer.
            #[expect(unsafe_code, reason = "sigwait through libc")]
            let rc = unsafe { libc::sigwait(&set, &mut signal) };
            if rc == 0 {
                tracing::info!(signal, "stopping on signal");
                stop.stop();
            }
        })
        .ok()
}
