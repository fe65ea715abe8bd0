//! Command line: clap definitions and the command implementations. `main.rs` only parses and
//! calls [`run`]. Everything a command does is built from library pieces (daemon, registry,
//! sources, outputs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, Overrides, SourceKind};
use crate::daemon::Daemon;
use crate::event::replay::ReplaySource;
use crate::event::source::{EventSource, StopFlag};
use crate::plugin::registry::LoadRequest;
use crate::plugin::PluginKind;

#[derive(Debug, Parser)]
#[command(
    name = "palisade",
    version,
    about = "Runtime security: kernel events to sandboxed WebAssembly detectors and responders"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Log filter (tracing EnvFilter syntax, e.g. "info,plugin=warn"); RUST_LOG wins.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Json,
    Falco,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Enforce,
    Monitor,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: a source (kernel by default) through the plugins to outputs and responders.
    Run(RunArgs),
    /// Replay JSON Lines event files through the plugins once and exit (non-zero after bad lines).
    Replay(ReplayArgs),
    /// Write live kernel events to a JSON Lines file in the replay schema (root).
    Record(RecordArgs),
    /// Plugin tooling.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Active actions (freezes, quarantines, blocks) persisted in actions.state_dir.
    #[command(subcommand)]
    Actions(ActionsCommand),
    /// Signed plugin packs: build, verify, install, list, remove.
    #[command(subcommand)]
    Pack(crate::pack::commands::PackCommand),
}

#[derive(Debug, Subcommand)]
pub enum ActionsCommand {
    /// List active actions: id, responder, action, target, mode, since, alert id.
    List {
        /// Daemon configuration file (palisade.toml); embedded defaults otherwise.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Undo one active action (thaw, restore, unblock) and audit it; works without the daemon.
    Release {
        /// The action id, as `actions list` shows it.
        id: String,
        /// Daemon configuration file (palisade.toml); embedded defaults otherwise.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
}

/// Flags shared by `run` and `replay`.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Daemon configuration file (palisade.toml); embedded defaults otherwise.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Plugin directory (overrides plugins.dir).
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// Compiled-component cache directory (overrides plugins.cache_dir).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Alert output: a file path, or "-" for stdout (replaces configured outputs).
    #[arg(long, short = 'o')]
    pub output: Option<String>,
    /// Alert format.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Actions mode. `monitor` holds for every responder, whatever its own setting; `enforce`
    /// sets the default (a responder configured as monitor stays so).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Audit log path (overrides actions.audit_log).
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Worker threads (0 = number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Host name put in alerts.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9477).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Event source: "ebpf" (kernel, default) or "replay:FILE" ("replay:-" for stdin).
    #[arg(long)]
    pub source: Option<String>,
    /// With a replay source: keep reading as the file grows.
    #[arg(long)]
    pub follow: bool,
    /// Do not watch the plugin directory for changes.
    #[arg(long)]
    pub no_watch: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Event files (JSON Lines); "-" reads stdin.
    #[arg(required = true)]
    pub files: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Output file (JSON Lines, replayable with `palisade replay FILE`).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Stop after this many seconds (default: until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Only these kinds, comma-separated (e.g. exec,file_open); default all. Only their kernel
    /// programs (and the process-lifecycle ones) are attached.
    #[arg(long)]
    pub kinds: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Validate a plugin component (and its sidecar) and print its description.
    Check {
        /// The plugin's .wasm file; a sidecar <stem>.toml beside it is checked too.
        file: PathBuf,
    },
    /// Replay an event file through one detector and compare its alerts with a golden file.
    Test {
        /// The detector's .wasm file (its sidecar beside it applies).
        plugin: PathBuf,
        /// Events, JSON Lines (docs/events.md).
        #[arg(long)]
        events: PathBuf,
        /// Golden alerts file (JSON); compared, or written with --bless.
        #[arg(long)]
        expect: PathBuf,
        /// Write the golden file from this run instead of comparing.
        #[arg(long)]
        bless: bool,
    },
    /// Create a plugin project: a working example detector or responder with its tests.
    New(crate::pack::commands::NewArgs),
    /// Build a plugin project into DIR/dist/ (<name>.wasm and its sidecar).
    Build(crate::pack::commands::BuildArgs),
}

fn overrides(common: &CommonArgs, cli: &Cli) -> Overrides {
    Overrides {
        hostname: common.hostname.clone(),
        plugins_dir: common.plugins.clone(),
        cache_dir: common.cache_dir.clone(),
        workers: common.workers,
        output: common.output.as_ref().map(|o| {
            if o == "-" {
                config::OutputKind::Stdout
            } else {
                config::OutputKind::File {
                    path: PathBuf::from(o),
                }
            }
        }),
        format: common.format.map(|f| match f {
            FormatArg::Json => config::OutputFormat::Json,
            FormatArg::Falco => config::OutputFormat::Falco,
        }),
        mode: common.mode.map(|m| match m {
            ModeArg::Enforce => config::Mode::Enforce,
            ModeArg::Monitor => config::Mode::Monitor,
        }),
        audit_log: common.audit_log.clone(),
        metrics_addr: common.metrics_addr,
        log_format: cli.log_format.map(|f| match f {
            LogFormatArg::Text => config::LogFormat::Text,
            LogFormatArg::Json => config::LogFormat::Json,
        }),
        log_level: cli.log_level.clone(),
        ..Overrides::default()
    }
}

fn init_telemetry(config: &Config) -> Result<()> {
    let format = match config.log.format {
        config::LogFormat::Text => crate::telemetry::LogFormat::Text,
        config::LogFormat::Json => crate::telemetry::LogFormat::Json,
    };
    crate::telemetry::init(format, &config.log.level).context("cannot initialise logging")
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Run(args) => cmd_run(&cli, args),
        Command::Replay(args) => cmd_replay(&cli, args),
        Command::Record(args) => cmd_record(&cli, args),
        Command::Plugin(PluginCommand::Check { file }) => cmd_plugin_check(&cli, file),
        Command::Actions(ActionsCommand::List { config }) => {
            cmd_actions_list(&cli, config.as_deref())
        }
        Command::Actions(ActionsCommand::Release { id, config }) => {
            cmd_actions_release(&cli, id, config.as_deref())
        }
        Command::Plugin(PluginCommand::New(args)) => crate::pack::commands::cmd_plugin_new(args),
        Command::Plugin(PluginCommand::Build(args)) => {
            crate::pack::commands::cmd_plugin_build(args)
        }
        Command::Pack(command) => {
            crate::pack::commands::cmd_pack(cli.log_level.as_deref(), command)
        }
        Command::Plugin(PluginCommand::Test {
            plugin,
            events,
            expect,
            bless,
        }) => Ok(crate::plugin::testing::cmd_plugin_test(
            cli.log_level.as_deref(),
            plugin,
            events,
            expect,
            *bless,
        )?),
    }
}

fn serve_metrics(daemon: &Daemon) -> Result<Option<crate::metrics::ServerHandle>> {
    match daemon.config.metrics.addr {
        Some(addr) => {
            let handle = crate::metrics::serve(addr, Arc::clone(&daemon.metrics))
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            tracing::info!(addr = %handle.local_addr(), "serving Prometheus metrics on /metrics");
            Ok(Some(handle))
        }
        None => Ok(None),
    }
}

fn cmd_run(cli: &Cli, args: &RunArgs) -> Result<ExitCode> {
    let mut ov = overrides(&args.common, cli);
    if let Some(source) = &args.source {
        ov.source = Some(parse_source(source)?);
    }
    if args.follow {
        ov.follow = Some(true);
    }
    if args.no_watch {
        ov.watch = Some(false);
    }
    let config = Config::load(args.common.config.as_deref(), &ov)?;
    init_telemetry(&config)?;
    // Before any thread starts, so every thread inherits the blocked signal mask.
    let stop = StopFlag::default();
    let _signals = crate::daemon::stop_on_signals(stop.clone());
    let replay = matches!(config.source.kind, SourceKind::Replay { .. });
    let mut source: Box<dyn EventSource> = match &config.source.kind {
        SourceKind::Replay { path, follow } => {
            Box::new(ReplaySource::from_args([path.display().to_string()]).with_follow(*follow))
        }
        SourceKind::Ebpf => kernel_source(&config)?,
    };
    // Whoever can write the plugin directory chooses what runs as root: refuse it.
    crate::pack::permissions::check_plugin_dir(&config.plugins.dir)?;
    let daemon = Daemon::build(config, replay)?;
    source.attach(&daemon);
    daemon
        .restore_actions()
        .context("cannot restore persisted actions")?;
    let _metrics = serve_metrics(&daemon)?;
    let dir = daemon.config.plugins.dir.clone();
    let _reload = if daemon.config.plugins.watch {
        Some(
            daemon
                .watch_dir(dir.clone())
                .with_context(|| format!("cannot watch plugin directory {}", dir.display()))?,
        )
    } else {
        daemon
            .load_dir(&dir)
            .with_context(|| format!("cannot load plugin directory {}", dir.display()))?;
        None
    };
    let set = daemon.registry.snapshot();
    tracing::info!(
        detectors = set.detectors.len(),
        responders = set.responders.len(),
        dir = %dir.display(),
        source = source.name(),
        "palisade running"
    );
    let outputs = daemon.open_outputs()?;
    let pipeline = daemon.start_pipeline(source.name(), outputs)?;
    let summary = crate::daemon::run_source(source.as_mut(), &pipeline, &stop)?;
    let alerts = pipeline.finish();
    tracing::info!(
        events = summary.events,
        bad_records = summary.bad_records,
        alerts,
        "source finished"
    );
    Ok(if summary.bad_records > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(feature = "ebpf")]
fn kernel_source(config: &Config) -> Result<Box<dyn EventSource>> {
    Ok(crate::ebpf::kernel_source(config)?)
}

#[cfg(not(feature = "ebpf"))]
fn kernel_source(_config: &Config) -> Result<Box<dyn EventSource>> {
    bail!(
        "this palisade binary was built without the kernel (eBPF) source; rebuild with \
         `cargo build --release -p palisade-host --features ebpf` (scripts/setup.sh installs the \
         toolchain), or use `--source replay:FILE`"
    )
}

fn parse_source(text: &str) -> Result<SourceKind> {
    if text == "ebpf" {
        return Ok(SourceKind::Ebpf);
    }
    if let Some(path) = text.strip_prefix("replay:") {
        if path.is_empty() {
            bail!(
                "--source replay: needs a file (or - for stdin), e.g. --source replay:events.jsonl"
            );
        }
        return Ok(SourceKind::Replay {
            path: PathBuf::from(path),
            follow: false,
        });
    }
    bail!("--source {text:?}: expected \"ebpf\" or \"replay:FILE\"")
}

fn cmd_replay(cli: &Cli, args: &ReplayArgs) -> Result<ExitCode> {
    let mut ov = overrides(&args.common, cli);
    ov.watch = Some(false);

    if ov.output.is_none() {
        ov.output = Some(config::OutputKind::Stdout);
    }
    let config = Config::load(args.common.config.as_deref(), &ov)?;
    init_telemetry(&config)?;
    crate::pack::commands::warn_permissions(&config.plugins.dir);
    // Replayed events are the past: carrying out their responses would kill, freeze or cut
    // the network of whatever runs now (and reset the block maps the live daemon pins). Only
    // notifications go out; every other request is audited as monitor.
    let daemon = Daemon::build_offline(config)?;
    let dir = daemon.config.plugins.dir.clone();
    let (loaded, failed) = daemon
        .load_dir(&dir)
        .with_context(|| format!("cannot load plugin directory {}", dir.display()))?;
    if loaded == 0 {
        bail!(
            "no plugin could be loaded from {} ({failed} failed); nothing would be detected",
            dir.display()
        );
    }
    let outputs = daemon.open_outputs()?;
    let pipeline = daemon.start_pipeline("replay", outputs)?;
    let mut source = ReplaySource::from_args(args.files.iter());
    let stats = source.stats();
    let stop = StopFlag::default();
    let summary = crate::daemon::run_source(&mut source, &pipeline, &stop)?;
    let alerts = pipeline.finish();
    tracing::info!(
        events = summary.events,
        bad_lines = summary.bad_records,
        alerts,
        "replay finished"
    );
    if summary.bad_records > 0 {
        let lines: Vec<String> = stats
            .bad_lines()
            .iter()
            .map(|b| format!("{}:{}", b.file, b.line))
            .collect();
        tracing::error!(count = summary.bad_records, lines = %lines.join(", "), "replay input had bad lines (reported above and skipped)");
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_record(cli: &Cli, args: &RecordArgs) -> Result<ExitCode> {
    let ov = Overrides {
        log_level: cli.log_level.clone(),
        log_format: cli.log_format.map(|f| match f {
            LogFormatArg::Text => config::LogFormat::Text,
            LogFormatArg::Json => config::LogFormat::Json,
        }),
        ..Overrides::default()
    };
    init_telemetry(&Config::load(None, &ov)?)?;
    let duration = match args.duration {
        Some(s) if !(s.is_finite() && s > 0.0) => bail!("--duration {s}: expected seconds > 0"),
        Some(s) => Some(std::time::Duration::from_secs_f64(s)),
        None => None,
    };
    let kinds = args
        .kinds
        .as_deref()
        .map(crate::record::parse_kinds)
        .transpose()?;
    let stop = StopFlag::default();
    let _signals = crate::daemon::stop_on_signals(stop.clone());
    let options = crate::record::RecordOptions {
        output: args.output.clone(),
        duration,
        kinds,
    };
    let summary = crate::record::record(&options, &stop, || {})?;
    Ok(if summary.dropped > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn cmd_plugin_check(cli: &Cli, file: &Path) -> Result<ExitCode> {
    let ov = Overrides {
        log_level: cli.log_level.clone().or_else(|| Some("warn".into())),
        ..Overrides::default()
    };
    let mut config = Config::load(None, &ov)?;
    init_telemetry(&config)?;
    // A check never touches the system's cache or audit log.
    let scratch = std::env::temp_dir().join(format!("palisade-check-{}", std::process::id()));
    config.plugins.cache_dir = scratch.join("cache");
    config.actions.audit_log = scratch.join("audit.jsonl");
    if let Some(dir) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::pack::commands::warn_permissions(dir);
    }
    let daemon = Daemon::build(config, true)?;
    let result = LoadRequest::from_file(file)
        .map_err(anyhow::Error::from)
        .and_then(|req| daemon.registry.load(&req).map_err(anyhow::Error::from));
    let _ = std::fs::remove_dir_all(&scratch);
    let loaded = result?;
    let set = daemon.registry.snapshot();
    let Some(plugin) = set.all().find(|p| p.name() == loaded.name) else {
        bail!("{}: loaded but not found in the registry", file.display());
    };
    let info = &plugin.info;
    let mut out = String::new();
    out.push_str(&format!("{}: ok\n", file.display()));
    out.push_str(&format!(
        "name:         {}\nversion:      {}\nkind:         {}\n",
        info.name,
        info.version,
        info.kind.as_str()
    ));
    out.push_str(&format!("description:  {}\n", info.description));
    match info.kind {
        PluginKind::Detector => {
            for (i, sub) in info.subscriptions.iter().enumerate() {
                let kinds: Vec<&str> = sub.kinds.iter().map(|k| k.as_str()).collect();
                out.push_str(&format!("subscription {i}: kinds={}", kinds.join(",")));
                for (label, list) in [
                    ("paths", &sub.paths),
                    ("prefixes", &sub.path_prefixes),
                    ("comms", &sub.comms),
                    ("exes", &sub.exes),
                ] {
                    if !list.is_empty() {
                        out.push_str(&format!(" {label}={}", list.join(",")));
                    }
                }
                if !sub.ports.is_empty() {
                    let ports: Vec<String> = sub.ports.iter().map(|p| p.to_string()).collect();
                    out.push_str(&format!(" ports={}", ports.join(",")));
                }
                out.push('\n');
            }
        }
        PluginKind::Responder => {
            if let Some(f) = &plugin.alert_filter {
                out.push_str(&format!(
                    "alert filter: min_priority={} rules={} tags={}\n",
                    f.min_priority.as_str(),
                    if f.rules.is_empty() {
                        "*".into()
                    } else {
                        f.rules.join(",")
                    },
                    f.tags.join(",")
                ));
            }
        }
    }
    let caps: Vec<&str> = info.capabilities.iter().map(|c| c.as_str()).collect();
    out.push_str(&format!(
        "capabilities: {}\n",
        if caps.is_empty() {
            "none".into()
        } else {
            caps.join(", ")
        }
    ));
    out.push_str(&format!(
        "limits:       memory {} MiB, deadline {} ms per batch\n",
        plugin.limits.memory_bytes >> 20,
        plugin.limits.deadline.as_millis()
    ));
    let config: Vec<String> = plugin
        .config
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    if !config.is_empty() {
        out.push_str(&format!("config:       {}\n", config.join(", ")));
    }
    use std::io::Write;
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn actions_config(cli: &Cli, file: Option<&Path>) -> Result<Config> {
    let ov = Overrides {
        log_level: cli.log_level.clone().or_else(|| Some("warn".into())),
        ..Overrides::default()
    };
    let config = Config::load(file, &ov)?;
    init_telemetry(&config)?;
    Ok(config)
}

/// The table `palisade actions list` prints.
pub fn format_actions(actions: &[crate::actions::StoredAction]) -> String {
    let header = [
        "ID",
        "RESPONDER",
        "ACTION",
        "TARGET",
        "MODE",
        "SINCE",
        "ALERT",
    ];
    let rows: Vec<[String; 7]> = actions
        .iter()
        .map(|a| {
            [
                a.id.clone(),
                a.responder.clone(),
                a.action.clone(),
                a.target.to_string(),
                a.mode.clone(),
                format!("{} ({})", a.since, crate::actions::store::age(a.since_ns)),
                a.alert_id.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn cmd_actions_list(cli: &Cli, file: Option<&Path>) -> Result<ExitCode> {
    let config = actions_config(cli, file)?;
    let store = crate::actions::ActionStore::at(&config.actions.state_dir);
    let actions = store.load()?;
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if actions.is_empty() {
        writeln!(
            stdout,
            "no active actions (state file {})",
            store.path().display()
        )?;
    } else {
        stdout.write_all(format_actions(&actions).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_actions_release(cli: &Cli, id: &str, file: Option<&Path>) -> Result<ExitCode> {
    let config = actions_config(cli, file)?;
    let broker = crate::actions::Broker::new(
        crate::actions::BrokerSettings::from_config(&config.actions),
        Box::new(crate::actions::LogNotifySink),
    )?;
    let broker = crate::actions::with_host_actuators(broker, &config.actions).with_actuator(
        crate::capability::Capability::DenyOpen,
        Box::new(crate::actions::LiftedByTheDaemon),
    );
    let store = crate::actions::ActionStore::open(&config.actions.state_dir)?;
    let path = store.path();
    let stored = store.get(id)?;
    broker.attach_store(store)?;
    // Through the broker even when the id is unknown: every request, failed or not, is audited.
    broker
        .release_as_operator(id)
        .with_context(|| format!("cannot release {id} (state file {})", path.display()))?;
    let lifted_by_daemon = stored
        .as_ref()
        .and_then(|s| s.to_active())
        .is_some_and(|a| {
            a.mode == crate::actions::Mode::Enforce
                && crate::actions::lifted_only_here(a.capability)
        });
    let what = stored
        .map(|s| format!("{} {}", s.action, s.target))
        .unwrap_or_default();
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "released {id}: {what}")?;
    if lifted_by_daemon {
        writeln!(
            stdout,
            "the running daemon lifts it within {} s (a stopped daemon's marks went with it)",
            crate::daemon::OPERATOR_RELEASE_POLL.as_secs()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
