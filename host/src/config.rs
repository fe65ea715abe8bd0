//! The daemon configuration, `palisade.toml`: embedded defaults ([`DEFAULT_CONFIG`]), then an
//! optional file, then `PALISADE_*` environment variables, then command-line [`Overrides`]; each
//! layer is parsed strictly (unknown keys and wrong types are errors), the merged result is
//! validated and normalised into [`Config`]. Also owns the TOML diagnostics (file, line, key
//! path) that the plugin sidecar parser (`plugin::manifest`) reuses.
//!
//! This module only reads text and builds values: it must not create directories, open sockets
//! or start anything; the daemon does that with the values it returns.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use toml::Value;

use crate::capability::{Capability, CapabilitySet};
use toml_doc::{key_segment, Document, Problem};

/// The only `version` this build reads, for `palisade.toml` and plugin sidecars alike.
pub const CONFIG_VERSION: i64 = 1;

/// The built-in defaults, parsed like any other layer: the single place where a default lives.
/// Keys that have no default (`hostname`, `metrics.addr`, `source.path`, grants, per-responder
/// settings) are absent here and documented in docs/configuration.md.
pub const DEFAULT_CONFIG: &str = r#"
version = 1

[plugins]
# Directory watched for `<name>.wasm` components and their `<name>.toml` sidecars.
dir = "/etc/palisade/plugins"
# Compiled components, cached by content hash so a restart or reload costs no recompilation.
cache_dir = "/var/cache/palisade"
# Hot reload: watch `dir` and apply additions, replacements and deletions without a restart.
watch = true
# Quiet period after the last change to a file before it is (re)loaded.
debounce_ms = 200
# An instance that has received nothing for this long is released (0 = never).
idle_release_secs = 300

[engine]
# Worker threads that run detectors, events sharded by process; 0 = CPU cores minus one
# (the kernel reader's), at least one.
workers = 0
# Events buffered per worker queue; a full queue drops (and counts) instead of blocking.
# 65536 covers ~160 ms of a 400k events/s burst (a worker descheduled on a busy node, a
# plugin instantiated on its first batch); slots are preallocated (16 bytes each, 1 MiB per worker).
queue_capacity = 65536
# Most events handed to a plugin in one call.
batch_max = 256
# Memory cap per plugin instance unless its sidecar says otherwise.
default_memory_mib = 64
# Time budget per batch call unless the sidecar says otherwise.
default_deadline_ms = 100
# Time budget for `describe` and `init`.
init_deadline_ms = 5000
# Consecutive failures (trap, deadline, memory) after which a plugin is quarantined.
max_consecutive_failures = 5
# First retry of a quarantined plugin; doubled on each further failure up to the maximum.
quarantine_backoff_initial_ms = 1000
quarantine_backoff_max_ms = 60000
# Alerts buffered between detectors and the outputs/responders.
alert_queue_capacity = 4096

[source]
# "ebpf" (kernel events) or "replay" (JSON Lines events from `path`).
kind = "ebpf"
# Kernel ring buffer size; a power of two.
ring_buffer_kib = 4096
# How often the reader drains the ring when it is below the wake-up threshold: the most a
# lone event waits before plugins see it, and the reader's (and workers') wake-ups a second.
drain_interval_ms = 10

[[outputs]]
kind = "stdout"
format = "json"

[actions]
# "monitor" records what responders ask for without doing it; "enforce" acts.
mode = "monitor"
audit_log = "/var/log/palisade/audit.jsonl"
# Action requests allowed per responder per minute; more are answered rate-limited.
rate_limit_per_minute = 60
# Active actions (freezes, quarantines, blocks) persisted here so they survive a restart.
state_dir = "/var/lib/palisade"
# Root-only (0700) directory that quarantined files are moved into, with a metadata record each.
quarantine_dir = "/var/lib/palisade/quarantine"
# bpffs directory where block-exec pins its map and network-quarantine its links, so they
# outlive a daemon restart and `palisade actions release` can undo them from another process.
bpf_pin_dir = "/sys/fs/bpf/palisade"

[actions.network_quarantine]
# A quarantined workload drops every packet; true keeps its loopback traffic (127/8, ::1).
allow_loopback = false

[actions.deny]
# deny-open answers fanotify permission events; an open of a denied file waits at most this long
# for the daemon's answer before `default_on_timeout` applies (a stalled daemon never hangs it).
response_timeout_ms = 500
# "allow" or "deny": the answer when the deadline passes.
default_on_timeout = "allow"

[notify]
# No `webhook_url`: notifications only go to the log and the alert outputs. Plain http:// only.
# "generic" (JSON object with an idempotency key) or "slack" ({"text": ...}).
format = "generic"
# One file per pending notification, kept until the endpoint answers 2xx (survives restarts).
spool_dir = "/var/lib/palisade/notify-spool"
# Backoff between delivery attempts: doubled after each failure, up to the maximum.
retry_initial_ms = 1000
retry_max_ms = 300000
# Connect/write/read timeout of one attempt.
timeout_ms = 5000

[metrics]
# No `addr`: the Prometheus endpoint is off.

[log]
# "text" or "json", on stderr.
format = "text"
# A level (error, warn, info, debug, trace, off) or directives like "info,palisade::plugin=debug".
level = "info"
"#;

// ---------------------------------------------------------------------------------------------
// Domain types
// ---------------------------------------------------------------------------------------------

/// The validated daemon configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Reported in alerts; `None` means the kernel's hostname.
    pub hostname: Option<String>,
    pub plugins: PluginsConfig,
    pub engine: EngineConfig,
    pub source: SourceConfig,
    /// Where alerts go; never empty.
    pub outputs: Vec<OutputConfig>,
    pub actions: ActionsConfig,
    /// Where `notify` goes besides the log and the alert outputs.
    pub notify: NotifyConfig,
    /// Capabilities the operator grants, per plugin name (sorted, no duplicates). A plugin gets
    /// the intersection with what it requests; see [`Config::granted`].
    pub grants: BTreeMap<String, Vec<Capability>>,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginsConfig {
    pub dir: PathBuf,
    pub cache_dir: PathBuf,
    pub watch: bool,
    pub debounce_ms: u64,
    /// 0 = never release idle instances.
    pub idle_release_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Worker threads, resolved: a configured 0 becomes one less than the available cores (the
    /// kernel reader has a thread of its own), at least one.
    pub workers: usize,
    pub queue_capacity: usize,
    pub batch_max: usize,
    pub default_memory_mib: u64,
    pub default_deadline_ms: u64,
    pub init_deadline_ms: u64,
    pub max_consecutive_failures: u32,
    pub quarantine_backoff_initial_ms: u64,
    pub quarantine_backoff_max_ms: u64,
    pub alert_queue_capacity: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// Kernel ring buffer size in KiB (a power of two); used by the eBPF source only.
    pub ring_buffer_kib: u32,
    /// The eBPF reader's drain timer in milliseconds (1..=1000).
    pub drain_interval_ms: u32,
}

/// Where events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Ebpf,
    /// JSON Lines events; `path` "-" is stdin. `follow` tails a growing file.
    Replay {
        path: PathBuf,
        follow: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputConfig {
    pub kind: OutputKind,
    pub format: OutputFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    Stdout,
    /// Appended to, one alert per line.
    File {
        path: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Palisade's own alert JSON, one object per line.
    Json,
    /// Falco-compatible JSON (for falcosidekick and friends).
    Falco,
}

/// Whether the actions broker carries out responders' requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Enforce,
    /// Requests are checked and audited but not carried out.
    Monitor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionsConfig {
    /// deny-open (fanotify) deadline and default.
    pub deny: DenyConfig,
    pub mode: Mode,
    pub audit_log: PathBuf,
    pub rate_limit_per_minute: u32,
    /// Per-responder settings, by plugin name; unset fields fall back to the global ones.
    pub responders: BTreeMap<String, ResponderActionsConfig>,
    /// Where active actions are persisted (`actions.json`) so a restart re-applies them.
    pub state_dir: PathBuf,
    /// Root-only directory quarantined files are moved into.
    pub quarantine_dir: PathBuf,
    /// bpffs directory of the block-exec map and the network-quarantine links.
    pub bpf_pin_dir: PathBuf,
    pub network_quarantine: NetworkQuarantineConfig,
}

/// `[actions.network_quarantine]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkQuarantineConfig {
    /// Quarantined workloads keep loopback traffic.
    pub allow_loopback: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponderActionsConfig {
    pub mode: Option<Mode>,
    pub rate_limit_per_minute: Option<u32>,
}

/// `[actions.deny]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyConfig {
    pub response_timeout_ms: u64,
    pub default_on_timeout: TimeoutDefault,
}

/// What a denied open gets when the daemon does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutDefault {
    Allow,
    Deny,
}

/// `[notify]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    /// `None`: no webhook.
    pub webhook_url: Option<String>,
    pub format: WebhookFormat,
    pub spool_dir: PathBuf,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub timeout_ms: u64,
}

/// Body shape of webhook notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{id, idempotency_key, time, responder, channel, message, alert_id}`.
    Generic,
    /// `{"text": ...}`, as Slack-compatible incoming webhooks take it.
    Slack,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint; `None` = off.
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter`-style directive string, checked for shape.
    pub level: String,
}

/// What the command line may override; every `Some` wins over file and environment. The CLI
/// fills this; the flag names in [`Overrides::FLAGS`] are the ones error messages cite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub hostname: Option<String>,
    pub plugins_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub watch: Option<bool>,
    pub workers: Option<usize>,
    /// Replaces the whole `[source]` except `ring_buffer_kib` and `drain_interval_ms`.
    pub source: Option<SourceKind>,
    /// Tail the replay file (with `source`, or on top of a configured replay source).
    pub follow: Option<bool>,
    /// Replaces every configured output with this one.
    pub output: Option<OutputKind>,
    /// The format of `output`, or, without `output`, of every configured output.
    pub format: Option<OutputFormat>,
    pub mode: Option<Mode>,
    pub audit_log: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
}

impl Overrides {
    /// (field, flag) pairs: the flag an error message names when an override is rejected.
    pub const FLAGS: [(&'static str, &'static str); 14] = [
        ("hostname", "--hostname"),
        ("plugins_dir", "--plugins"),
        ("cache_dir", "--cache-dir"),
        ("watch", "--watch"),
        ("workers", "--workers"),
        ("source", "--source"),
        ("follow", "--follow"),
        ("output", "--output"),
        ("format", "--format"),
        ("mode", "--mode"),
        ("audit_log", "--audit-log"),
        ("metrics_addr", "--metrics-addr"),
        ("log_format", "--log-format"),
        ("log_level", "--log-level"),
    ];
}

/// Environment variables read by [`Config::load`]: (variable, key it sets). An empty value
/// counts as unset.
pub const ENV_VARS: [(&str, &str); 9] = [
    ("PALISADE_HOSTNAME", "hostname"),
    ("PALISADE_PLUGINS_DIR", "plugins.dir"),
    ("PALISADE_CACHE_DIR", "plugins.cache_dir"),
    ("PALISADE_WORKERS", "engine.workers"),
    ("PALISADE_ACTIONS_MODE", "actions.mode"),
    ("PALISADE_AUDIT_LOG", "actions.audit_log"),
    ("PALISADE_METRICS_ADDR", "metrics.addr"),
    ("PALISADE_LOG_FORMAT", "log.format"),
    ("PALISADE_LOG_LEVEL", "log.level"),
];

/// What the loader reads from the process: injectable so tests need not touch the real
/// environment (which is process-global and shared by parallel tests).
pub struct LoadEnv<'a> {
    /// Looks up an environment variable.
    pub var: &'a dyn Fn(&str) -> Option<String>,
    /// Available cores (`engine.workers = 0` resolves to one less).
    pub available_cores: usize,
}

impl LoadEnv<'static> {
    /// The real process environment and core count.
    pub fn process() -> Self {
        LoadEnv {
            var: &|name| std::env::var(name).ok(),
            available_cores: available_cores(),
        }
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Where a problem is: `palisade.toml:12`, `palisade.toml`, `environment variable
/// PALISADE_WORKERS`, `command line --workers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub origin: String,
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.origin),
            None => f.write_str(&self.origin),
        }
    }
}

/// Why a configuration was rejected. Every variant names where (file and line, environment
/// variable or flag), and all but `Read` name the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: invalid TOML: {reason}")]
    Syntax { at: Location, reason: String },
    #[error("{at}: unknown key `{key}` in {table}{}", expected_suffix(expected))]
    UnknownKey {
        at: Location,
        /// The unknown key itself (last segment).
        key: String,
        /// The table holding it, e.g. `[engine]`.
        table: String,
        /// serde's list of accepted keys ("expected one of ..."), may be empty.
        expected: String,
    },
    #[error("{at}: {key}: {reason}")]
    Invalid {
        at: Location,
        /// Dotted key path, e.g. `engine.workers` or `outputs[1].path`.
        key: String,
        reason: String,
    },
}

pub(crate) fn expected_suffix(expected: &str) -> String {
    if expected.is_empty() {
        String::new()
    } else {
        format!(" ({expected})")
    }
}

impl From<Problem> for ConfigError {
    fn from(p: Problem) -> Self {
        match p {
            Problem::Syntax { at, reason } => ConfigError::Syntax { at, reason },
            Problem::UnknownKey {
                at,
                key,
                table,
                expected,
            } => ConfigError::UnknownKey {
                at,
                key,
                table,
                expected,
            },
            Problem::Invalid { at, key, reason } => ConfigError::Invalid { at, key, reason },
        }
    }
}

/// A command-line or environment string that is not one of the accepted values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{value}`: expected {expected}")]
pub struct ParseValueError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

// ---------------------------------------------------------------------------------------------
// String forms (for the CLI's value parsers, environment variables and messages)
// ---------------------------------------------------------------------------------------------

impl OutputFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Json => "json",
            OutputFormat::Falco => "falco",
        }
    }
}

impl FromStr for OutputFormat {
    type Err = ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(OutputFormat::Json),
            "falco" => Ok(OutputFormat::Falco),
            _ => Err(ParseValueError {
                what: "output format",
                value: s.to_owned(),
                expected: "json or falco",
            }),
        }
    }
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

impl FromStr for Mode {
    type Err = ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "monitor" => Ok(Mode::Monitor),
            _ => Err(ParseValueError {
                what: "actions mode",
                value: s.to_owned(),
                expected: "enforce or monitor",
            }),
        }
    }
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(ParseValueError {
                what: "log format",
                value: s.to_owned(),
                expected: "text or json",
            }),
        }
    }
}

/// `-` is stdout; anything else is a file path.
impl FromStr for OutputKind {
    type Err = ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err(ParseValueError {
                what: "output",
                value: String::new(),
                expected: "a file path or - for stdout",
            }),
            "-" => Ok(OutputKind::Stdout),
            path => Ok(OutputKind::File {
                path: PathBuf::from(path),
            }),
        }
    }
}

/// `ebpf` or `replay:PATH` (`replay:-` is stdin).
impl FromStr for SourceKind {
    type Err = ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "ebpf" => Ok(SourceKind::Ebpf),
            Some(("replay", path)) if !path.is_empty() => Ok(SourceKind::Replay {
                path: PathBuf::from(path),
                follow: false,
            }),
            _ => Err(ParseValueError {
                what: "source",
                value: s.to_owned(),
                expected: "ebpf or replay:FILE (replay:- for stdin)",
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw layer: what a file may contain. Every field optional so a file can set just one key;
// integers are i64 so range errors get our message, not serde's.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawConfig {
    version: Option<i64>,
    hostname: Option<String>,
    plugins: Option<RawPlugins>,
    engine: Option<RawEngine>,
    source: Option<RawSource>,
    outputs: Option<Vec<RawOutput>>,
    actions: Option<RawActions>,
    notify: Option<RawNotify>,
    grants: Option<BTreeMap<String, Vec<Capability>>>,
    metrics: Option<RawMetrics>,
    log: Option<RawLog>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawPlugins {
    dir: Option<String>,
    cache_dir: Option<String>,
    watch: Option<bool>,
    debounce_ms: Option<i64>,
    idle_release_secs: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawEngine {
    workers: Option<i64>,
    queue_capacity: Option<i64>,
    batch_max: Option<i64>,
    default_memory_mib: Option<i64>,
    default_deadline_ms: Option<i64>,
    init_deadline_ms: Option<i64>,
    max_consecutive_failures: Option<i64>,
    quarantine_backoff_initial_ms: Option<i64>,
    quarantine_backoff_max_ms: Option<i64>,
    alert_queue_capacity: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawSourceKind {
    Ebpf,
    Replay,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawSource {
    kind: Option<RawSourceKind>,
    path: Option<String>,
    follow: Option<bool>,
    ring_buffer_kib: Option<i64>,
    drain_interval_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawOutputKind {
    Stdout,
    File,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawOutput {
    kind: Option<RawOutputKind>,
    path: Option<String>,
    format: Option<OutputFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawActions {
    deny: Option<RawDeny>,
    mode: Option<Mode>,
    audit_log: Option<String>,
    rate_limit_per_minute: Option<i64>,
    responders: Option<BTreeMap<String, RawResponderActions>>,
    state_dir: Option<String>,
    quarantine_dir: Option<String>,
    bpf_pin_dir: Option<String>,
    network_quarantine: Option<RawNetworkQuarantine>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawNetworkQuarantine {
    allow_loopback: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawResponderActions {
    mode: Option<Mode>,
    rate_limit_per_minute: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawDeny {
    response_timeout_ms: Option<i64>,
    default_on_timeout: Option<TimeoutDefault>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawNotify {
    webhook_url: Option<String>,
    format: Option<WebhookFormat>,
    spool_dir: Option<String>,
    retry_initial_ms: Option<i64>,
    retry_max_ms: Option<i64>,
    timeout_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawMetrics {
    addr: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Defaults, then `file` (if any), then the process environment, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load_in(file, overrides, &LoadEnv::process())
    }

    /// [`Config::load`] with an explicit environment (tests, embedding).
    pub fn load_in(
        file: Option<&Path>,
        overrides: &Overrides,
        env: &LoadEnv<'_>,
    ) -> Result<Config, ConfigError> {
        match file {
            None => build(None, overrides, env),
            Some(path) => {
                let origin = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: origin.clone(),
                    source,
                })?;
                build(Some((&text, &origin)), overrides, env)
            }
        }
    }

    /// Defaults overlaid with `text` only (no environment, no overrides). `origin` names the
    /// text in errors: pass the file name as the user wrote it.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let env = LoadEnv {
            var: &|_| None,
            available_cores: available_cores(),
        };
        build(Some((text, origin)), &Overrides::default(), &env)
    }

    /// Every layer explicit: defaults, `text`, `env`, `overrides`. Deterministic, for tests.
    pub fn from_toml_str_in(
        text: &str,
        origin: &str,
        overrides: &Overrides,
        env: &LoadEnv<'_>,
    ) -> Result<Config, ConfigError> {
        build(Some((text, origin)), overrides, env)
    }

    /// The capabilities the operator grants `plugin` (empty when it has no `[grants]` entry).
    pub fn granted(&self, plugin: &str) -> CapabilitySet {
        self.grants
            .get(plugin)
            .map(|caps| caps.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl ActionsConfig {
    /// The mode that applies to `responder`'s requests.
    pub fn mode_for(&self, responder: &str) -> Mode {
        self.responders
            .get(responder)
            .and_then(|r| r.mode)
            .unwrap_or(self.mode)
    }

    /// The per-minute request budget of `responder`.
    pub fn rate_limit_for(&self, responder: &str) -> u32 {
        self.responders
            .get(responder)
            .and_then(|r| r.rate_limit_per_minute)
            .unwrap_or(self.rate_limit_per_minute)
    }
}

/// Which layer set a key last: decides how a validation error is located.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Defaults,
    File,
    Env(&'static str),
    Cli(&'static str),
}

/// Key path -> layer that last set it (or an enclosing table). Longest matching prefix wins.
#[derive(Debug, Default)]
struct Provenance(Vec<(String, Layer)>);

impl Provenance {
    fn set(&mut self, path: &str, layer: Layer) {
        self.0.retain(|(p, _)| !is_path_prefix(path, p));
        self.0.push((path.to_owned(), layer));
    }

    fn of(&self, path: &str) -> Layer {
        self.0
            .iter()
            .filter(|(p, _)| is_path_prefix(p, path))
            .max_by_key(|(p, _)| p.len())
            .map_or(Layer::Defaults, |(_, layer)| *layer)
    }
}

/// True when `prefix` is `path` or an ancestor of it (`engine` of `engine.workers`).
fn is_path_prefix(prefix: &str, path: &str) -> bool {
    path == prefix
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), Some(b'.') | Some(b'[')))
}

/// Locates errors: a key set by the file gets file:line, one set by the environment or the
/// command line names the variable or flag.
struct Locator<'d, 't> {
    doc: Option<&'d Document<'t>>,
    provenance: Provenance,
}

impl Locator<'_, '_> {
    fn at(&self, path: &str) -> Location {
        match (self.provenance.of(path), self.doc) {
            (Layer::File, Some(doc)) => doc.location(path),
            (Layer::Env(var), _) => Location {
                origin: format!("environment variable {var}"),
                line: None,
            },
            (Layer::Cli(flag), _) => Location {
                origin: format!("command line {flag}"),
                line: None,
            },
            // A default that fails validation was made invalid by a key the file did set
            // nearby (a replay `kind` without its `path`): point at that table.
            (Layer::Defaults, Some(doc)) if doc.mentions(path) => doc.location(path),
            (Layer::Defaults, _) | (Layer::File, None) => Location {
                origin: "built-in defaults".to_owned(),
                line: None,
            },
        }
    }

    fn invalid(&self, path: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            at: self.at(path),
            key: path.to_owned(),
            reason: reason.into(),
        }
    }
}

fn build(
    file: Option<(&str, &str)>,
    overrides: &Overrides,
    env: &LoadEnv<'_>,
) -> Result<Config, ConfigError> {
    let defaults_doc = Document::parse(DEFAULT_CONFIG, "built-in defaults")?;
    let mut merged = defaults_doc.table()?;
    let mut provenance = Provenance::default();

    let doc = match file {
        Some((text, origin)) => {
            let doc = Document::parse(text, origin)?;
            // Strict pass over the file alone, so unknown keys and wrong types are reported
            // with the file's line numbers before anything is merged.
            let raw: RawConfig = doc.deserialize()?;
            check_version(&doc, raw.version)?;
            merge_tables(&mut merged, doc.table()?, "", &mut provenance, Layer::File);
            Some(doc)
        }
        None => None,
    };

    apply_env(&mut merged, &mut provenance, env)?;
    apply_overrides(&mut merged, &mut provenance, overrides)?;

    let locator = Locator {
        doc: doc.as_ref(),
        provenance,
    };
    let raw = RawConfig::deserialize(Value::Table(merged)).map_err(|e| ConfigError::Invalid {
        at: Location {
            origin: "merged configuration".to_owned(),
            line: None,
        },
        key: String::new(),
        reason: e.message().to_owned(),
    })?;
    let mut config = resolve(raw, &locator, env.available_cores)?;
    // `--mode monitor` is the operator's "act on nothing": it must win over a responder's own
    // `mode = "enforce"`. `--mode enforce` only sets the default, so a responder the file keeps
    // in monitor stays there.
    if overrides.mode == Some(Mode::Monitor) {
        for responder in config.actions.responders.values_mut() {
            responder.mode = None;
        }
    }
    Ok(config)
}

/// `version = 1` is required in every file, so a future format change cannot be misread.
pub(crate) fn check_version(doc: &Document<'_>, version: Option<i64>) -> Result<(), Problem> {
    match version {
        Some(CONFIG_VERSION) => Ok(()),
        None => Err(doc.invalid(
            "version",
            format!("missing: the file must start with `version = {CONFIG_VERSION}`"),
        )),
        Some(other) => Err(doc.invalid(
            "version",
            format!("unsupported version {other}: this Palisade reads version {CONFIG_VERSION}"),
        )),
    }
}

/// Overlays `over` onto `base`: tables merge key by key, anything else (arrays included, so
/// `[[outputs]]` replaces the default outputs) replaces.
fn merge_tables(
    base: &mut toml::Table,
    over: toml::Table,
    prefix: &str,
    provenance: &mut Provenance,
    layer: Layer,
) {
    for (key, value) in over {
        let path = join_key(prefix, &key);
        match (base.get_mut(&key), value) {
            (Some(Value::Table(base_table)), Value::Table(over_table)) => {
                merge_tables(base_table, over_table, &path, provenance, layer);
            }
            (_, value) => {
                provenance.set(&path, layer);
                base.insert(key, value);
            }
        }
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key_segment(key)
    } else {
        format!("{prefix}.{}", key_segment(key))
    }
}

/// Sets `path` (dotted, bare keys only) in `table`, creating intermediate tables.
fn set_path(table: &mut toml::Table, path: &str, value: Value) {
    let mut current = table;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_owned(), value);
            return;
        }
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(toml::Table::new());
        }
        match entry {
            Value::Table(next) => current = next,
            _ => return,
        }
    }
}

fn apply_env(
    merged: &mut toml::Table,
    provenance: &mut Provenance,
    env: &LoadEnv<'_>,
) -> Result<(), ConfigError> {
    for (var, path) in ENV_VARS {
        let Some(raw) = (env.var)(var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let invalid = |reason: String| ConfigError::Invalid {
            at: Location {
                origin: format!("environment variable {var}"),
                line: None,
            },
            key: path.to_owned(),
            reason,
        };
        let value = match path {
            "engine.workers" => Value::Integer(
                raw.trim()
                    .parse::<i64>()
                    .map_err(|_| invalid(format!("expected an integer, got `{raw}`")))?,
            ),
            "actions.mode" => Value::String(
                raw.parse::<Mode>()
                    .map_err(|e| invalid(e.to_string()))?
                    .as_str()
                    .to_owned(),
            ),
            "log.format" => Value::String(
                raw.parse::<LogFormat>()
                    .map_err(|e| invalid(e.to_string()))?
                    .as_str()
                    .to_owned(),
            ),
            // Strings and paths: checked with the rest in `resolve`, located by provenance.
            _ => Value::String(raw),
        };
        provenance.set(path, Layer::Env(var));
        set_path(merged, path, value);
    }
    Ok(())
}

fn flag(field: &str) -> &'static str {
    Overrides::FLAGS
        .iter()
        .find(|(f, _)| *f == field)
        .map_or("(command line)", |(_, flag)| flag)
}

fn path_value(path: &Path, field: &str) -> Result<Value, ConfigError> {
    path.to_str()
        .map(|s| Value::String(s.to_owned()))
        .ok_or_else(|| ConfigError::Invalid {
            at: Location {
                origin: format!("command line {}", flag(field)),
                line: None,
            },
            key: field.to_owned(),
            reason: format!("path is not valid UTF-8: {}", path.display()),
        })
}

fn apply_overrides(
    merged: &mut toml::Table,
    provenance: &mut Provenance,
    o: &Overrides,
) -> Result<(), ConfigError> {
    let mut set = |merged: &mut toml::Table, field: &str, path: &str, value: Value| {
        provenance.set(path, Layer::Cli(flag(field)));
        set_path(merged, path, value);
    };
    // `--format` alone touches every output; record its provenance once the closure is done.
    let mut format_paths = Vec::new();
    if let Some(hostname) = &o.hostname {
        set(
            merged,
            "hostname",
            "hostname",
            Value::String(hostname.clone()),
        );
    }
    if let Some(dir) = &o.plugins_dir {
        let v = path_value(dir, "plugins_dir")?;
        set(merged, "plugins_dir", "plugins.dir", v);
    }
    if let Some(dir) = &o.cache_dir {
        let v = path_value(dir, "cache_dir")?;
        set(merged, "cache_dir", "plugins.cache_dir", v);
    }
    if let Some(watch) = o.watch {
        set(merged, "watch", "plugins.watch", Value::Boolean(watch));
    }
    if let Some(workers) = o.workers {
        let n = i64::try_from(workers).unwrap_or(i64::MAX);
        set(merged, "workers", "engine.workers", Value::Integer(n));
    }
    if let Some(source) = &o.source {
        // A new source kind replaces path and follow from earlier layers; the ring buffer
        // size is a tuning knob independent of the choice.
        let mut table = toml::Table::new();
        if let Some(Value::Table(old)) = merged.get("source") {
            for key in ["ring_buffer_kib", "drain_interval_ms"] {
                if let Some(value) = old.get(key) {
                    table.insert(key.to_owned(), value.clone());
                }
            }
        }
        match source {
            SourceKind::Ebpf => {
                table.insert("kind".to_owned(), Value::String("ebpf".to_owned()));
            }
            SourceKind::Replay { path, follow } => {
                table.insert("kind".to_owned(), Value::String("replay".to_owned()));
                table.insert("path".to_owned(), path_value(path, "source")?);
                table.insert("follow".to_owned(), Value::Boolean(*follow));
            }
        }
        set(merged, "source", "source", Value::Table(table));
    }
    if let Some(follow) = o.follow {
        set(merged, "follow", "source.follow", Value::Boolean(follow));
    }
    if let Some(output) = &o.output {
        let mut table = toml::Table::new();
        match output {
            OutputKind::Stdout => {
                table.insert("kind".to_owned(), Value::String("stdout".to_owned()));
            }
            OutputKind::File { path } => {
                table.insert("kind".to_owned(), Value::String("file".to_owned()));
                table.insert("path".to_owned(), path_value(path, "output")?);
            }
        }
        let format = o.format.unwrap_or(OutputFormat::Json);
        table.insert(
            "format".to_owned(),
            Value::String(format.as_str().to_owned()),
        );
        set(
            merged,
            "output",
            "outputs",
            Value::Array(vec![Value::Table(table)]),
        );
    } else if let Some(format) = o.format {
        if let Some(Value::Array(outputs)) = merged.get_mut("outputs") {
            for (i, output) in outputs.iter_mut().enumerate() {
                if let Value::Table(t) = output {
                    t.insert(
                        "format".to_owned(),
                        Value::String(format.as_str().to_owned()),
                    );
                    format_paths.push(format!("outputs[{i}].format"));
                }
            }
        }
    }
    if let Some(mode) = o.mode {
        set(
            merged,
            "mode",
            "actions.mode",
            Value::String(mode.as_str().to_owned()),
        );
    }
    if let Some(path) = &o.audit_log {
        let v = path_value(path, "audit_log")?;
        set(merged, "audit_log", "actions.audit_log", v);
    }
    if let Some(addr) = o.metrics_addr {
        set(
            merged,
            "metrics_addr",
            "metrics.addr",
            Value::String(addr.to_string()),
        );
    }
    if let Some(format) = o.log_format {
        set(
            merged,
            "log_format",
            "log.format",
            Value::String(format.as_str().to_owned()),
        );
    }
    if let Some(level) = &o.log_level {
        set(
            merged,
            "log_level",
            "log.level",
            Value::String(level.clone()),
        );
    }
    for path in format_paths {
        provenance.set(&path, Layer::Cli(flag("format")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

fn required<T>(loc: &Locator<'_, '_>, path: &str, value: Option<T>) -> Result<T, ConfigError> {
    value.ok_or_else(|| loc.invalid(path, "missing"))
}

/// An integer in `range`, converted to the field's type.
fn int_in<T: TryFrom<i64>>(
    loc: &Locator<'_, '_>,
    path: &str,
    value: Option<i64>,
    range: RangeInclusive<i64>,
) -> Result<T, ConfigError> {
    let v = required(loc, path, value)?;
    if !range.contains(&v) {
        return Err(loc.invalid(
            path,
            format!("{}..={} expected, got {v}", range.start(), range.end()),
        ));
    }
    T::try_from(v).map_err(|_| loc.invalid(path, format!("out of range: {v}")))
}

fn non_empty_path(
    loc: &Locator<'_, '_>,
    path: &str,
    value: Option<String>,
) -> Result<PathBuf, ConfigError> {
    let v = required(loc, path, value)?;
    check_path_text(&v).map_err(|reason| loc.invalid(path, reason))?;
    Ok(PathBuf::from(v))
}

/// Paths must be non-empty and free of NUL (which no syscall accepts).
pub(crate) fn check_path_text(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        Err("a non-empty path expected".to_owned())
    } else if text.contains('\0') {
        Err("path contains a NUL character".to_owned())
    } else {
        Ok(())
    }
}

/// Webhook URLs: `http://host[:port][/path]`; checked here for shape, parsed again by the sink.
fn check_webhook_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Err("https is not supported by this build (no TLS); use an http:// relay".into());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("an http:// URL expected, got {url:?}"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("a host expected in {url:?}"));
    }
    if url.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err("spaces and control characters are not allowed".into());
    }
    Ok(())
}

/// Plugin names as the WIT contract defines them: `[a-z0-9-]+`, at most 64 characters.
pub fn is_valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

const PLUGIN_NAME_RULE: &str = "plugin names are [a-z0-9-]+ (at most 64 characters)";

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks an `EnvFilter`-style string: comma-separated `level` or `target=level` directives.
/// Stricter than `EnvFilter` itself, which takes a lone typo ("inof") as a target name.
fn check_log_level(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("a level expected ({})", LOG_LEVELS.join(", ")));
    }
    for directive in text.split(',') {
        let directive = directive.trim();
        let level = match directive.rsplit_once('=') {
            Some((target, level)) => {
                let target_ok = !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_:-.".contains(c));
                if !target_ok {
                    return Err(format!(
                        "invalid target `{target}` in directive `{directive}`"
                    ));
                }
                level
            }
            None => directive,
        };
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "unknown level `{level}`: expected one of {}",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        Err("1 to 253 characters expected".to_owned())
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!(
            "no spaces or control characters allowed, got {name:?}"
        ))
    } else {
        Ok(())
    }
}

fn resolve(raw: RawConfig, loc: &Locator<'_, '_>, cores: usize) -> Result<Config, ConfigError> {
    let hostname = match raw.hostname {
        Some(name) => {
            check_hostname(&name).map_err(|reason| loc.invalid("hostname", reason))?;
            Some(name)
        }
        None => None,
    };

    let p = required(loc, "plugins", raw.plugins)?;
    let plugins = PluginsConfig {
        dir: non_empty_path(loc, "plugins.dir", p.dir)?,
        cache_dir: non_empty_path(loc, "plugins.cache_dir", p.cache_dir)?,
        watch: required(loc, "plugins.watch", p.watch)?,
        debounce_ms: int_in(loc, "plugins.debounce_ms", p.debounce_ms, 0..=10_000)?,
        idle_release_secs: int_in(
            loc,
            "plugins.idle_release_secs",
            p.idle_release_secs,
            0..=86_400,
        )?,
    };

    let e = required(loc, "engine", raw.engine)?;
    let configured_workers: usize = int_in(loc, "engine.workers", e.workers, 0..=256)?;
    let quarantine_backoff_initial_ms: u64 = int_in(
        loc,
        "engine.quarantine_backoff_initial_ms",
        e.quarantine_backoff_initial_ms,
        1..=3_600_000,
    )?;
    let quarantine_backoff_max_ms: u64 = int_in(
        loc,
        "engine.quarantine_backoff_max_ms",
        e.quarantine_backoff_max_ms,
        1..=86_400_000,
    )?;
    if quarantine_backoff_max_ms < quarantine_backoff_initial_ms {
        return Err(loc.invalid(
            "engine.quarantine_backoff_max_ms",
            format!(
                "must be at least engine.quarantine_backoff_initial_ms \
                 ({quarantine_backoff_initial_ms}), got {quarantine_backoff_max_ms}"
            ),
        ));
    }
    let engine = EngineConfig {
        workers: if configured_workers == 0 {
            // Every worker with events wakes once per reader drain; on a small machine each
            // extra one is taken from the workload (docs/performance.md, exec loop).
            cores.saturating_sub(1).clamp(1, 256)
        } else {
            configured_workers
        },
        queue_capacity: int_in(loc, "engine.queue_capacity", e.queue_capacity, 1..=1 << 20)?,
        batch_max: int_in(loc, "engine.batch_max", e.batch_max, 1..=65_536)?,
        default_memory_mib: int_in(
            loc,
            "engine.default_memory_mib",
            e.default_memory_mib,
            1..=4_096,
        )?,
        default_deadline_ms: int_in(
            loc,
            "engine.default_deadline_ms",
            e.default_deadline_ms,
            1..=60_000,
        )?,
        init_deadline_ms: int_in(
            loc,
            "engine.init_deadline_ms",
            e.init_deadline_ms,
            1..=600_000,
        )?,
        max_consecutive_failures: int_in(
            loc,
            "engine.max_consecutive_failures",
            e.max_consecutive_failures,
            1..=1_000,
        )?,
        quarantine_backoff_initial_ms,
        quarantine_backoff_max_ms,
        alert_queue_capacity: int_in(
            loc,
            "engine.alert_queue_capacity",
            e.alert_queue_capacity,
            1..=1 << 20,
        )?,
    };

    let s = required(loc, "source", raw.source)?;
    let ring_buffer_kib: u32 = int_in(
        loc,
        "source.ring_buffer_kib",
        s.ring_buffer_kib,
        4..=1 << 20,
    )?;
    if !ring_buffer_kib.is_power_of_two() {
        return Err(loc.invalid(
            "source.ring_buffer_kib",
            format!("a power of two expected (the kernel requires it), got {ring_buffer_kib}"),
        ));
    }
    let drain_interval_ms: u32 = int_in(
        loc,
        "source.drain_interval_ms",
        s.drain_interval_ms,
        1..=1000,
    )?;
    let kind = match required(loc, "source.kind", s.kind)? {
        RawSourceKind::Ebpf => {
            for (key, set) in [("path", s.path.is_some()), ("follow", s.follow.is_some())] {
                if set {
                    return Err(loc.invalid(
                        &format!("source.{key}"),
                        "only valid with kind = \"replay\"",
                    ));
                }
            }
            SourceKind::Ebpf
        }
        RawSourceKind::Replay => {
            if s.path.is_none() {
                return Err(loc.invalid(
                    "source.path",
                    "required with kind = \"replay\" (a JSON Lines file, or \"-\" for stdin)",
                ));
            }
            SourceKind::Replay {
                path: non_empty_path(loc, "source.path", s.path)?,
                follow: s.follow.unwrap_or(false),
            }
        }
    };
    let source = SourceConfig {
        kind,
        ring_buffer_kib,
        drain_interval_ms,
    };

    let raw_outputs = required(loc, "outputs", raw.outputs)?;
    if raw_outputs.is_empty() {
        return Err(loc.invalid(
            "outputs",
            "at least one output expected (e.g. [[outputs]] kind = \"stdout\")",
        ));
    }
    let mut outputs = Vec::with_capacity(raw_outputs.len());
    for (i, o) in raw_outputs.into_iter().enumerate() {
        let base = format!("outputs[{i}]");
        let kind = match required(loc, &format!("{base}.kind"), o.kind)? {
            RawOutputKind::Stdout => {
                if o.path.is_some() {
                    return Err(
                        loc.invalid(&format!("{base}.path"), "only valid with kind = \"file\"")
                    );
                }
                OutputKind::Stdout
            }
            RawOutputKind::File => {
                let path_key = format!("{base}.path");
                if o.path.is_none() {
                    return Err(loc.invalid(&path_key, "required with kind = \"file\""));
                }
                OutputKind::File {
                    path: non_empty_path(loc, &path_key, o.path)?,
                }
            }
        };
        outputs.push(OutputConfig {
            kind,
            format: o.format.unwrap_or(OutputFormat::Json),
        });
    }

    let a = required(loc, "actions", raw.actions)?;
    let mut responders = BTreeMap::new();
    for (name, r) in a.responders.unwrap_or_default() {
        let base = format!("actions.responders.{}", key_segment(&name));
        if !is_valid_plugin_name(&name) {
            return Err(loc.invalid(&base, PLUGIN_NAME_RULE));
        }
        let rate_limit_per_minute = match r.rate_limit_per_minute {
            Some(v) => Some(int_in(
                loc,
                &format!("{base}.rate_limit_per_minute"),
                Some(v),
                1..=1_000_000,
            )?),
            None => None,
        };
        responders.insert(
            name,
            ResponderActionsConfig {
                mode: r.mode,
                rate_limit_per_minute,
            },
        );
    }
    let d = required(loc, "actions.deny", a.deny)?;
    let deny = DenyConfig {
        response_timeout_ms: int_in(
            loc,
            "actions.deny.response_timeout_ms",
            d.response_timeout_ms,
            1..=60_000,
        )?,
        default_on_timeout: required(loc, "actions.deny.default_on_timeout", d.default_on_timeout)?,
    };
    let actions = ActionsConfig {
        deny,
        mode: required(loc, "actions.mode", a.mode)?,
        audit_log: non_empty_path(loc, "actions.audit_log", a.audit_log)?,
        rate_limit_per_minute: int_in(
            loc,
            "actions.rate_limit_per_minute",
            a.rate_limit_per_minute,
            1..=1_000_000,
        )?,
        responders,
        state_dir: non_empty_path(loc, "actions.state_dir", a.state_dir)?,
        quarantine_dir: non_empty_path(loc, "actions.quarantine_dir", a.quarantine_dir)?,
        bpf_pin_dir: non_empty_path(loc, "actions.bpf_pin_dir", a.bpf_pin_dir)?,
        network_quarantine: NetworkQuarantineConfig {
            allow_loopback: required(
                loc,
                "actions.network_quarantine.allow_loopback",
                required(loc, "actions.network_quarantine", a.network_quarantine)?.allow_loopback,
            )?,
        },
    };

    let mut grants = BTreeMap::new();
    for (name, mut caps) in raw.grants.unwrap_or_default() {
        if !is_valid_plugin_name(&name) {
            return Err(loc.invalid(&format!("grants.{}", key_segment(&name)), PLUGIN_NAME_RULE));
        }
        caps.sort();
        caps.dedup();
        grants.insert(name, caps);
    }

    let n = required(loc, "notify", raw.notify)?;
    let webhook_url = match n.webhook_url {
        Some(url) => {
            check_webhook_url(&url).map_err(|reason| loc.invalid("notify.webhook_url", reason))?;
            Some(url)
        }
        None => None,
    };
    let retry_initial_ms: u64 = int_in(
        loc,
        "notify.retry_initial_ms",
        n.retry_initial_ms,
        1..=3_600_000,
    )?;
    let retry_max_ms: u64 = int_in(loc, "notify.retry_max_ms", n.retry_max_ms, 1..=86_400_000)?;
    if retry_max_ms < retry_initial_ms {
        return Err(loc.invalid(
            "notify.retry_max_ms",
            format!(
                "must be at least notify.retry_initial_ms ({retry_initial_ms}), got {retry_max_ms}"
            ),
        ));
    }
    let notify = NotifyConfig {
        webhook_url,
        format: required(loc, "notify.format", n.format)?,
        spool_dir: non_empty_path(loc, "notify.spool_dir", n.spool_dir)?,
        retry_initial_ms,
        retry_max_ms,
        timeout_ms: int_in(loc, "notify.timeout_ms", n.timeout_ms, 1..=600_000)?,
    };

    let metrics = MetricsConfig {
        addr: match raw.metrics.and_then(|m| m.addr) {
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                loc.invalid(
                    "metrics.addr",
                    format!("an address like \"127.0.0.1:9090\" expected, got {text:?}"),
                )
            })?),
            None => None,
        },
    };

    let l = required(loc, "log", raw.log)?;
    let level = required(loc, "log.level", l.level)?;
    check_log_level(&level).map_err(|reason| loc.invalid("log.level", reason))?;
    let log = LogConfig {
        format: required(loc, "log.format", l.format)?,
        level,
    };

    Ok(Config {
        hostname,
        plugins,
        engine,
        source,
        outputs,
        actions,
        notify,
        grants,
        metrics,
        log,
    })
}

// ---------------------------------------------------------------------------------------------
// TOML diagnostics shared with the plugin sidecar parser
// ---------------------------------------------------------------------------------------------

/// A parsed TOML document that can say where any key is: turns toml/serde errors (which carry
/// a byte span but no public key path) into `file:line: key.path: reason`.
pub(crate) mod toml_doc {
    use std::ops::Range;

    use serde::de::DeserializeOwned;
    use toml::de::{DeTable, DeValue};

    use super::Location;

    /// A located problem; each module converts it into its own error enum.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Problem {
        Syntax {
            at: Location,
            reason: String,
        },
        UnknownKey {
            at: Location,
            key: String,
            table: String,
            expected: String,
        },
        Invalid {
            at: Location,
            key: String,
            reason: String,
        },
    }

    #[derive(Debug)]
    struct Entry {
        /// Rendered key path, e.g. `outputs[1].path`, `config."odd key"`.
        path: String,
        key_span: Range<usize>,
        value_span: Range<usize>,
    }

    pub(crate) struct Document<'t> {
        origin: String,
        text: &'t str,
        entries: Vec<Entry>,
    }

    /// A key as it appears in a path: bare when TOML allows it bare, quoted otherwise.
    pub(crate) fn key_segment(key: &str) -> String {
        let bare = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare {
            key.to_owned()
        } else {
            format!("\"{}\"", key.escape_default())
        }
    }

    impl<'t> Document<'t> {
        pub(crate) fn parse(text: &'t str, origin: &str) -> Result<Self, Problem> {
            let mut doc = Document {
                origin: origin.to_owned(),
                text,
                entries: Vec::new(),
            };
            match DeTable::parse(text) {
                Ok(table) => {
                    walk_table(table.get_ref(), "", &mut doc.entries);
                    Ok(doc)
                }
                Err(e) => {
                    // The parser's message lacks the offending text ("duplicate key"): quote
                    // it when it is a short piece of one line.
                    let mut reason = e.message().trim().to_owned();
                    if let Some(piece) = e.span().and_then(|s| text.get(s)) {
                        if !piece.is_empty() && piece.len() <= 40 && !piece.contains('\n') {
                            reason.push_str(&format!(" (at `{piece}`)"));
                        }
                    }
                    Err(Problem::Syntax {
                        at: doc.location_of_span(e.span()),
                        reason,
                    })
                }
            }
        }

        /// Deserializes the whole document into `T`, locating any error.
        pub(crate) fn deserialize<T: DeserializeOwned>(&self) -> Result<T, Problem> {
            toml::from_str(self.text).map_err(|e| self.problem(&e))
        }

        /// The document as a plain table (for layering).
        pub(crate) fn table(&self) -> Result<toml::Table, Problem> {
            self.deserialize()
        }

        /// 1-based line of byte offset `pos`.
        fn line_at(&self, pos: usize) -> usize {
            let end = pos.min(self.text.len());
            self.text.as_bytes()[..end]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        }

        fn location_of_span(&self, span: Option<Range<usize>>) -> Location {
            Location {
                origin: self.origin.clone(),
                line: span.map(|s| self.line_at(s.start)),
            }
        }

        /// Where `path` is written; for a key the file does not contain, where its nearest
        /// enclosing table is (or no line at all).
        pub(crate) fn location(&self, path: &str) -> Location {
            let mut candidate = path;
            loop {
                if let Some(entry) = self.entries.iter().find(|e| e.path == candidate) {
                    return self.location_of_span(Some(entry.key_span.clone()));
                }
                match parent_path(candidate) {
                    Some(parent) => candidate = parent,
                    None => return self.location_of_span(None),
                }
            }
        }

        /// True when the document contains `path` or one of its enclosing tables.
        pub(crate) fn mentions(&self, path: &str) -> bool {
            let mut candidate = Some(path);
            while let Some(p) = candidate {
                if self.entries.iter().any(|e| e.path == p) {
                    return true;
                }
                candidate = parent_path(p);
            }
            false
        }

        /// Byte offset where `path`'s key starts (document order for ordered outputs).
        pub(crate) fn position(&self, path: &str) -> Option<usize> {
            self.entries
                .iter()
                .find(|e| e.path == path)
                .map(|e| e.key_span.start)
        }

        pub(crate) fn invalid(&self, path: &str, reason: impl Into<String>) -> Problem {
            Problem::Invalid {
                at: self.location(path),
                key: path.to_owned(),
                reason: reason.into(),
            }
        }

        /// The entry an error span points at: the key itself (unknown keys) or else the
        /// innermost value containing the span.
        fn entry_at(&self, span: &Range<usize>) -> Option<&Entry> {
            if let Some(e) = self.entries.iter().find(|e| e.key_span == *span) {
                return Some(e);
            }
            self.entries
                .iter()
                .filter(|e| e.value_span.start <= span.start && span.end <= e.value_span.end)
                .min_by_key(|e| (e.value_span.len(), usize::MAX - e.path.len()))
        }

        fn problem(&self, err: &toml::de::Error) -> Problem {
            let span = err.span();
            let at = self.location_of_span(span.clone());
            let path = span
                .as_ref()
                .and_then(|s| self.entry_at(s))
                .map(|e| e.path.clone());
            let message = err.message().trim();
            if let Some(rest) = message.strip_prefix("unknown field `") {
                if let Some((key, tail)) = rest.split_once('`') {
                    let table = path
                        .as_deref()
                        .and_then(parent_path)
                        .map_or_else(|| "the top-level table".to_owned(), |p| format!("[{p}]"));
                    let expected = tail.trim_start_matches(',').trim();
                    return Problem::UnknownKey {
                        at,
                        key: key.to_owned(),
                        table,
                        expected: polish(expected),
                    };
                }
            }
            Problem::Invalid {
                at,
                key: path.unwrap_or_else(|| "(document)".to_owned()),
                reason: polish(message),
            }
        }
    }

    /// `engine` for `engine.workers`, `outputs` for `outputs[1]`; `None` at the top level.
    pub(crate) fn parent_path(path: &str) -> Option<&str> {
        // Quoted segments may hold '.', '[': scan outside quotes only.
        let mut cut = None;
        let mut in_quotes = false;
        let mut escaped = false;
        for (i, c) in path.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                '.' | '[' if !in_quotes => cut = Some(i),
                _ => {}
            }
        }
        cut.map(|i| &path[..i])
    }

    /// serde speaks Rust ("i64", "a sequence", "a map"); users read TOML.
    fn polish(message: &str) -> String {
        message
            .replace("expected i64", "expected an integer")
            .replace("a sequence", "an array")
            .replace("a map", "a table")
            .replace("unknown field", "unknown key")
    }

    fn walk_table(table: &DeTable<'_>, prefix: &str, out: &mut Vec<Entry>) {
        for (key, value) in table.iter() {
            let segment = key_segment(key.get_ref());
            let path = if prefix.is_empty() {
                segment
            } else {
                format!("{prefix}.{segment}")
            };
            out.push(Entry {
                path: path.clone(),
                key_span: key.span(),
                value_span: value.span(),
            });
            walk_value(value.get_ref(), &path, out);
        }
    }

    fn walk_value(value: &DeValue<'_>, path: &str, out: &mut Vec<Entry>) {
        match value {
            DeValue::Table(table) => walk_table(table, path, out),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    out.push(Entry {
                        path: item_path.clone(),
                        key_span: item.span(),
                        value_span: item.span(),
                    });
                    walk_value(item.get_ref(), &item_path, out);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env4() -> LoadEnv<'static> {
        LoadEnv {
            var: &no_env,
            available_cores: 4,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str_in(text, "t.toml", &Overrides::default(), &env4())
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_parse_and_match_documented_values() {
        let c = Config::load_in(None, &Overrides::default(), &env4()).unwrap();
        assert_eq!(c.plugins.dir, PathBuf::from("/etc/palisade/plugins"));
        assert_eq!(c.plugins.cache_dir, PathBuf::from("/var/cache/palisade"));
        assert_eq!(
            c.actions.audit_log,
            PathBuf::from("/var/log/palisade/audit.jsonl")
        );
        assert_eq!(
            c.engine.workers, 3,
            "0 resolves to the core count minus the reader's"
        );
        assert_eq!(c.engine.batch_max, 256);
        assert_eq!(c.engine.default_memory_mib, 64);
        assert_eq!(c.engine.default_deadline_ms, 100);
        assert_eq!(c.engine.init_deadline_ms, 5000);
        assert_eq!(c.engine.max_consecutive_failures, 5);
        assert_eq!(c.source.kind, SourceKind::Ebpf);
        assert_eq!(c.source.ring_buffer_kib, 4096);
        assert_eq!(c.source.drain_interval_ms, 10);
        assert_eq!(
            c.outputs,
            vec![OutputConfig {
                kind: OutputKind::Stdout,
                format: OutputFormat::Json
            }]
        );
        assert_eq!(c.actions.mode, Mode::Monitor);
        assert_eq!(c.metrics.addr, None);
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(c.grants.is_empty());
    }

    #[test]
    fn minimal_file_is_defaults() {
        let from_file = parse("version = 1\n").unwrap();
        let defaults = Config::load_in(None, &Overrides::default(), &env4()).unwrap();
        assert_eq!(from_file, defaults);
    }

    #[test]
    fn version_is_required_and_checked() {
        assert_eq!(
            err("[engine]\nworkers = 2\n"),
            "t.toml: version: missing: the file must start with `version = 1`"
        );
        assert_eq!(
            err("version = 2\n"),
            "t.toml:1: version: unsupported version 2: this Palisade reads version 1"
        );
    }

    #[test]
    fn unknown_key_names_file_line_key_and_table() {
        let e = err("version = 1\n\n[engine]\nwrokers = 3\n");
        assert!(
            e.starts_with("t.toml:4: unknown key `wrokers` in [engine] (expected one of `workers`"),
            "{e}"
        );
        let e = err("version = 1\nbogus = true\n");
        assert!(
            e.starts_with("t.toml:2: unknown key `bogus` in the top-level table"),
            "{e}"
        );
    }

    #[test]
    fn range_errors_name_key_and_bounds() {
        assert_eq!(
            err("version = 1\n[engine]\nworkers = 1000\n"),
            "t.toml:3: engine.workers: 0..=256 expected, got 1000"
        );
        assert_eq!(
            err("version = 1\n[engine]\nquarantine_backoff_max_ms = 10\n"),
            "t.toml:3: engine.quarantine_backoff_max_ms: must be at least \
             engine.quarantine_backoff_initial_ms (1000), got 10"
        );
    }

    #[test]
    fn wrong_type_is_located() {
        assert_eq!(
            err("version = 1\n[plugins]\nwatch = \"yes\"\n"),
            "t.toml:3: plugins.watch: invalid type: string \"yes\", expected a boolean"
        );
        assert_eq!(
            err("version = 1\nengine = 5\n"),
            "t.toml:2: engine: invalid type: integer `5`, expected a table"
        );
    }

    #[test]
    fn grants_check_capability_names_and_dedupe() {
        let c = parse(
            "version = 1\n[grants]\nnotify-high = [\"notify\", \"kill-process\", \"notify\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.grants["notify-high"],
            vec![Capability::KillProcess, Capability::Notify]
        );
        let granted = c.granted("notify-high");
        assert!(granted.contains(Capability::Notify));
        assert!(granted.contains(Capability::KillProcess));
        assert!(!granted.contains(Capability::Freeze));
        assert!(c.granted("someone-else").is_empty());
        let e = err("version = 1\n[grants]\nx = [\"notify\", \"kill\"]\n");
        assert!(
            e.starts_with("t.toml:3: grants.x[1]: unknown variant `kill`, expected one of"),
            "{e}"
        );
        assert_eq!(
            err("version = 1\n[grants]\nBad_Name = []\n"),
            "t.toml:3: grants.Bad_Name: plugin names are [a-z0-9-]+ (at most 64 characters)"
        );
    }

    #[test]
    fn replay_source_and_outputs() {
        let c = parse(
            "version = 1\n[source]\nkind = \"replay\"\npath = \"ev.jsonl\"\nfollow = true\n\
             [[outputs]]\nkind = \"file\"\npath = \"/tmp/a.jsonl\"\nformat = \"falco\"\n\
             [[outputs]]\nkind = \"stdout\"\n",
        )
        .unwrap();
        assert_eq!(
            c.source.kind,
            SourceKind::Replay {
                path: "ev.jsonl".into(),
                follow: true
            }
        );
        assert_eq!(c.outputs.len(), 2);
        assert_eq!(c.outputs[1].format, OutputFormat::Json);
        assert_eq!(
            err("version = 1\n[source]\nkind = \"replay\"\n"),
            "t.toml:2: source.path: required with kind = \"replay\" (a JSON Lines file, or \"-\" for stdin)"
        );
        assert_eq!(
            err("version = 1\n[source]\nfollow = true\n"),
            "t.toml:3: source.follow: only valid with kind = \"replay\""
        );
        assert_eq!(
            err("version = 1\n[[outputs]]\nkind = \"stdout\"\n[[outputs]]\nkind = \"file\"\n"),
            "t.toml:4: outputs[1].path: required with kind = \"file\""
        );
        assert_eq!(
            err("version = 1\noutputs = []\n"),
            "t.toml:2: outputs: at least one output expected (e.g. [[outputs]] kind = \"stdout\")"
        );
    }

    #[test]
    fn env_overrides_file_and_cli_overrides_env() {
        let vars = |name: &str| match name {
            "PALISADE_WORKERS" => Some("3".to_owned()),
            "PALISADE_PLUGINS_DIR" => Some("/env/plugins".to_owned()),
            "PALISADE_LOG_FORMAT" => Some("json".to_owned()),
            "PALISADE_HOSTNAME" => Some(String::new()),
            _ => None,
        };
        let env = LoadEnv {
            var: &vars,
            available_cores: 4,
        };
        let text =
            "version = 1\nhostname = \"box\"\n[engine]\nworkers = 8\n[plugins]\ndir = \"/file\"\n";
        let c = Config::from_toml_str_in(text, "t.toml", &Overrides::default(), &env).unwrap();
        assert_eq!(c.engine.workers, 3);
        assert_eq!(c.plugins.dir, PathBuf::from("/env/plugins"));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(
            c.hostname.as_deref(),
            Some("box"),
            "empty env value = unset"
        );

        let cli = Overrides {
            workers: Some(2),
            plugins_dir: Some("target/plugins".into()),
            source: Some("replay:-".parse().unwrap()),
            follow: Some(true),
            output: Some("-".parse().unwrap()),
            format: Some(OutputFormat::Falco),
            mode: Some(Mode::Enforce),
            metrics_addr: Some("127.0.0.1:9100".parse().unwrap()),
            ..Overrides::default()
        };
        let c = Config::from_toml_str_in(text, "t.toml", &cli, &env).unwrap();
        assert_eq!(c.engine.workers, 2);
        assert_eq!(c.plugins.dir, PathBuf::from("target/plugins"));
        assert_eq!(
            c.source.kind,
            SourceKind::Replay {
                path: "-".into(),
                follow: true
            }
        );
        assert_eq!(
            c.outputs,
            vec![OutputConfig {
                kind: OutputKind::Stdout,
                format: OutputFormat::Falco
            }]
        );
        assert_eq!(c.actions.mode, Mode::Enforce);
        assert_eq!(c.metrics.addr, Some("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn cli_source_replaces_file_source() {
        let text = "version = 1\n[source]\nkind = \"replay\"\npath = \"a.jsonl\"\nfollow = true\nring_buffer_kib = 8\n";
        let cli = Overrides {
            source: Some(SourceKind::Ebpf),
            ..Overrides::default()
        };
        let c = Config::from_toml_str_in(text, "t.toml", &cli, &env4()).unwrap();
        assert_eq!(c.source.kind, SourceKind::Ebpf);
        assert_eq!(c.source.ring_buffer_kib, 8);
    }

    #[test]
    fn format_alone_applies_to_every_output() {
        let text = "version = 1\n[[outputs]]\nkind = \"stdout\"\n[[outputs]]\nkind = \"file\"\npath = \"x\"\n";
        let cli = Overrides {
            format: Some(OutputFormat::Falco),
            ..Overrides::default()
        };
        let c = Config::from_toml_str_in(text, "t.toml", &cli, &env4()).unwrap();
        assert!(c.outputs.iter().all(|o| o.format == OutputFormat::Falco));
    }

    #[test]
    fn env_and_cli_errors_name_their_origin() {
        let vars = |name: &str| (name == "PALISADE_WORKERS").then(|| "many".to_owned());
        let env = LoadEnv {
            var: &vars,
            available_cores: 4,
        };
        let e = Config::load_in(None, &Overrides::default(), &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable PALISADE_WORKERS: engine.workers: expected an integer, got `many`"
        );
        let vars = |name: &str| (name == "PALISADE_WORKERS").then(|| "1000".to_owned());
        let env = LoadEnv {
            var: &vars,
            available_cores: 4,
        };
        let e = Config::load_in(None, &Overrides::default(), &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable PALISADE_WORKERS: engine.workers: 0..=256 expected, got 1000"
        );
        let cli = Overrides {
            workers: Some(999),
            ..Overrides::default()
        };
        let e = Config::load_in(None, &cli, &env4()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "command line --workers: engine.workers: 0..=256 expected, got 999"
        );
        let cli = Overrides {
            follow: Some(true),
            ..Overrides::default()
        };
        let e = Config::load_in(None, &cli, &env4()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "command line --follow: source.follow: only valid with kind = \"replay\""
        );
    }

    #[test]
    fn load_reads_a_file_and_reports_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palisade.toml");
        std::fs::write(&path, "version = 1\n[engine]\nworkers = 7\n").unwrap();
        let c = Config::load_in(Some(&path), &Overrides::default(), &env4()).unwrap();
        assert_eq!(c.engine.workers, 7);
        let missing = dir.path().join("nope.toml");
        let e = Config::load_in(Some(&missing), &Overrides::default(), &env4()).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.to_string().contains("nope.toml"), "{e}");
    }

    #[test]
    fn per_responder_action_settings_fall_back_to_global() {
        let c = parse(
            "version = 1\n[actions]\nmode = \"enforce\"\n[actions.responders.notify-high]\nmode = \"monitor\"\nrate_limit_per_minute = 5\n",
        )
        .unwrap();
        assert_eq!(c.actions.mode_for("notify-high"), Mode::Monitor);
        assert_eq!(c.actions.rate_limit_for("notify-high"), 5);
        assert_eq!(c.actions.mode_for("other"), Mode::Enforce);
        assert_eq!(c.actions.rate_limit_for("other"), 60);
    }

    #[test]
    fn mode_monitor_flag_wins_over_a_responder_in_enforce_but_enforce_does_not() {
        let text = "version = 1\n[actions]\nmode = \"enforce\"\n\
                    [actions.responders.kill-critical]\nmode = \"enforce\"\n\
                    [actions.responders.notify-high]\nmode = \"monitor\"\n";
        let monitor = Overrides {
            mode: Some(Mode::Monitor),
            ..Overrides::default()
        };
        let c = Config::from_toml_str_in(text, "t.toml", &monitor, &env4()).unwrap();
        assert_eq!(c.actions.mode_for("kill-critical"), Mode::Monitor);
        assert_eq!(c.actions.mode_for("notify-high"), Mode::Monitor);
        let enforce = Overrides {
            mode: Some(Mode::Enforce),
            ..Overrides::default()
        };
        let c = Config::from_toml_str_in(text, "t.toml", &enforce, &env4()).unwrap();
        assert_eq!(c.actions.mode_for("kill-critical"), Mode::Enforce);
        assert_eq!(c.actions.mode_for("notify-high"), Mode::Monitor);
    }

    #[test]
    fn log_level_directives() {
        for ok in ["info", "debug", "warn,palisade::plugin=trace", "OFF"] {
            assert!(check_log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["", "inof", "palisade=loud", "=info"] {
            assert!(check_log_level(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = err("version = 1\n[engine\nworkers = 1\n");
        assert!(e.starts_with("t.toml:2: invalid TOML: "), "{e}");
    }

    #[test]
    fn cli_value_parsers() {
        assert_eq!("ebpf".parse::<SourceKind>().unwrap(), SourceKind::Ebpf);
        assert_eq!(
            "replay:a/b.jsonl".parse::<SourceKind>().unwrap(),
            SourceKind::Replay {
                path: "a/b.jsonl".into(),
                follow: false
            }
        );
        assert!("replay:".parse::<SourceKind>().is_err());
        assert!("kafka".parse::<SourceKind>().is_err());
        assert_eq!("-".parse::<OutputKind>().unwrap(), OutputKind::Stdout);
        assert_eq!(
            "out.jsonl".parse::<OutputKind>().unwrap(),
            OutputKind::File {
                path: "out.jsonl".into()
            }
        );
        assert_eq!(
            "xml".parse::<OutputFormat>().unwrap_err().to_string(),
            "invalid output format `xml`: expected json or falco"
        );
        assert_eq!("monitor".parse::<Mode>().unwrap(), Mode::Monitor);
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
    }

    #[test]
    fn path_helpers() {
        assert_eq!(toml_doc::parent_path("engine.workers"), Some("engine"));
        assert_eq!(toml_doc::parent_path("outputs[1]"), Some("outputs"));
        assert_eq!(toml_doc::parent_path("outputs[1].path"), Some("outputs[1]"));
        assert_eq!(toml_doc::parent_path("config.\"a.b\""), Some("config"));
        assert_eq!(toml_doc::parent_path("version"), None);
        assert!(is_path_prefix("engine", "engine.workers"));
        assert!(is_path_prefix("outputs", "outputs[0].format"));
        assert!(!is_path_prefix("engine", "engines.x"));
        assert_eq!(key_segment("a-b_c"), "a-b_c");
        assert_eq!(key_segment("a.b"), "\"a.b\"");
    }
}
