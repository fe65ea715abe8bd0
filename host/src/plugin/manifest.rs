//! The plugin sidecar manifest: an optional `<stem>.toml` beside `<stem>.wasm` in which the
//! operator sets a plugin's configuration, limits, failure policy and rule overrides. Parsed
//! strictly (`version = 1`, unknown keys and bad values are errors naming file, key and reason)
//! into [`Sidecar`]. Also owns [`ConfigValue`]/[`PluginConfig`], the host's form of the WIT
//! `config` type, and how sidecar values override a plugin's defaults.
//!
//! Must not load components or talk to the registry: it turns text into values only.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::alert::Priority;
use crate::config::toml_doc::{key_segment, Document, Problem};
use crate::config::{check_version, expected_suffix, EngineConfig, Location};

/// A typed configuration value, as in the WIT `config-value` variant.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    TextList(Vec<String>),
    IntegerList(Vec<i64>),
}

/// Plugin configuration: key/value pairs in a stable order (the WIT `config` type).
pub type PluginConfig = Vec<(String, ConfigValue)>;

impl ConfigValue {
    /// The type's name as the docs and messages spell it.
    pub fn type_name(&self) -> &'static str {
        match self {
            ConfigValue::Text(_) => "string",
            ConfigValue::Integer(_) => "integer",
            ConfigValue::Float(_) => "float",
            ConfigValue::Boolean(_) => "boolean",
            ConfigValue::TextList(_) => "list of strings",
            ConfigValue::IntegerList(_) => "list of integers",
        }
    }

    fn is_empty_list(&self) -> bool {
        match self {
            ConfigValue::TextList(v) => v.is_empty(),
            ConfigValue::IntegerList(v) => v.is_empty(),
            _ => false,
        }
    }

    fn is_list(&self) -> bool {
        matches!(self, ConfigValue::TextList(_) | ConfigValue::IntegerList(_))
    }
}

/// Overlays `overrides` (the sidecar's `[config]`) on `defaults` (the plugin's `describe()`):
/// keys keep the defaults' order, replaced values in place, new keys appended in their own
/// order. An empty list `[]` takes the list type of the default it replaces, since TOML cannot
/// say which kind of empty list it means.
pub fn merge_config(defaults: &PluginConfig, overrides: &PluginConfig) -> PluginConfig {
    let mut merged = defaults.clone();
    for (key, value) in overrides {
        match merged.iter_mut().find(|(k, _)| k == key) {
            Some((_, slot)) => {
                *slot = if value.is_empty_list() && slot.is_list() {
                    match slot {
                        ConfigValue::IntegerList(_) => ConfigValue::IntegerList(Vec::new()),
                        _ => ConfigValue::TextList(Vec::new()),
                    }
                } else {
                    value.clone()
                };
            }
            None => merged.push((key.clone(), value.clone())),
        }
    }
    merged
}

/// A sidecar `[config]` entry that does not fit the plugin's defaults: likely a typo or a
/// misunderstanding. The registry decides whether to warn or refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigMismatch {
    /// The plugin declares no such key.
    UnknownKey { key: String },
    /// The plugin's default has another type.
    WrongType {
        key: String,
        expected: &'static str,
        got: &'static str,
    },
}

impl fmt::Display for ConfigMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigMismatch::UnknownKey { key } => write!(
                f,
                "config.{}: the plugin has no such setting",
                key_segment(key)
            ),
            ConfigMismatch::WrongType { key, expected, got } => write!(
                f,
                "config.{}: the plugin expects a value of type {expected}, got {got}",
                key_segment(key)
            ),
        }
    }
}

/// Compares sidecar values with the plugin's defaults (key present, same type; an empty list
/// fits any list).
pub fn config_mismatches(defaults: &PluginConfig, overrides: &PluginConfig) -> Vec<ConfigMismatch> {
    overrides
        .iter()
        .filter_map(
            |(key, value)| match defaults.iter().find(|(k, _)| k == key) {
                None => Some(ConfigMismatch::UnknownKey { key: key.clone() }),
                Some((_, default)) => {
                    let fits = std::mem::discriminant(default) == std::mem::discriminant(value)
                        || (value.is_empty_list() && default.is_list());
                    (!fits).then(|| ConfigMismatch::WrongType {
                        key: key.clone(),
                        expected: default.type_name(),
                        got: value.type_name(),
                    })
                }
            },
        )
        .collect()
}

/// What happens when a plugin keeps failing (`[failure] policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    /// Stop routing to it and retry with backoff (the default).
    Quarantine,
    /// Stop routing to it until it is reloaded.
    Disable,
}

/// The `[limits]` table. `None` = the engine's default from `palisade.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub memory_mib: Option<u64>,
    /// Per batch call.
    pub deadline_ms: Option<u64>,
    /// Alerts beyond this from one batch are dropped and counted.
    pub max_alerts_per_batch: u32,
    /// Guest log lines beyond this per second are dropped and counted (0 = silence the guest).
    pub max_log_lines_per_sec: u32,
}

/// The `[failure]` table. `None` = the engine's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureSettings {
    pub max_consecutive: Option<u32>,
    pub backoff_initial_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub policy: FailureAction,
}

/// The `[overrides]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleOverrides {
    /// Detectors: alerts with these rule ids are dropped (sorted, no duplicates).
    pub disabled_rules: Vec<String>,
    /// Detectors: alerts with these rule ids get this priority instead of their own.
    pub priorities: BTreeMap<String, Priority>,
    /// Responders: replaces the minimum priority of the plugin's own alert filter.
    pub min_priority: Option<Priority>,
    /// Responders: replaces the rule-id globs (`*`, `?`) of the plugin's alert filter.
    pub rules: Option<Vec<String>>,
    /// Responders: replaces the tags of the plugin's alert filter.
    pub tags: Option<Vec<String>>,
}

impl RuleOverrides {
    /// Applies the detector overrides to one alert: `None` when its rule is disabled, else the
    /// priority it should carry.
    pub fn apply(&self, rule: &str, priority: Priority) -> Option<Priority> {
        if self
            .disabled_rules
            .binary_search_by(|r| r.as_str().cmp(rule))
            .is_ok()
        {
            return None;
        }
        Some(self.priorities.get(rule).copied().unwrap_or(priority))
    }

    /// True when something applies to detectors' alerts.
    pub fn has_detector_overrides(&self) -> bool {
        !self.disabled_rules.is_empty() || !self.priorities.is_empty()
    }

    /// True when something replaces part of a responder's alert filter.
    pub fn has_alert_filter_overrides(&self) -> bool {
        self.min_priority.is_some() || self.rules.is_some() || self.tags.is_some()
    }
}

/// A parsed and validated sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct Sidecar {
    /// `false` keeps the plugin unloaded (it is still validated).
    pub enabled: bool,
    pub limits: Limits,
    pub failure: FailureSettings,
    /// Overrides of the plugin's default configuration, in file order.
    pub config: PluginConfig,
    pub overrides: RuleOverrides,
}

impl Default for Sidecar {
    /// What a plugin without a sidecar gets.
    fn default() -> Self {
        Sidecar {
            enabled: true,
            limits: Limits {
                memory_mib: None,
                deadline_ms: None,
                max_alerts_per_batch: DEFAULT_MAX_ALERTS_PER_BATCH,
                max_log_lines_per_sec: DEFAULT_MAX_LOG_LINES_PER_SEC,
            },
            failure: FailureSettings {
                max_consecutive: None,
                backoff_initial_ms: None,
                backoff_max_ms: None,
                policy: FailureAction::Quarantine,
            },
            config: Vec::new(),
            overrides: RuleOverrides::default(),
        }
    }
}

pub const DEFAULT_MAX_ALERTS_PER_BATCH: u32 = 1000;
pub const DEFAULT_MAX_LOG_LINES_PER_SEC: u32 = 50;

/// Limits and failure settings with the engine's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub memory_mib: u64,
    pub deadline_ms: u64,
    pub max_alerts_per_batch: u32,
    pub max_log_lines_per_sec: u32,
    pub max_consecutive_failures: u32,
    pub backoff_initial_ms: u64,
    /// Never below `backoff_initial_ms`.
    pub backoff_max_ms: u64,
    pub policy: FailureAction,
}

/// Why a sidecar was rejected. All variants but `Read` name the key.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read sidecar {path}: {source}")]
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
        key: String,
        table: String,
        expected: String,
    },
    #[error("{at}: {key}: {reason}")]
    Invalid {
        at: Location,
        key: String,
        reason: String,
    },
}

impl From<Problem> for ManifestError {
    fn from(p: Problem) -> Self {
        match p {
            Problem::Syntax { at, reason } => ManifestError::Syntax { at, reason },
            Problem::UnknownKey {
                at,
                key,
                table,
                expected,
            } => ManifestError::UnknownKey {
                at,
                key,
                table,
                expected,
            },
            Problem::Invalid { at, key, reason } => ManifestError::Invalid { at, key, reason },
        }
    }
}

/// The sidecar path for a component: `dir/name.wasm` -> `dir/name.toml`.
pub fn sidecar_path(wasm: &Path) -> PathBuf {
    wasm.with_extension("toml")
}

impl Sidecar {
    /// Reads and parses `path`; errors name it as given.
    pub fn load(path: &Path) -> Result<Sidecar, ManifestError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: origin.clone(),
            source,
        })?;
        Sidecar::from_toml_str(&text, &origin)
    }

    /// Like [`Sidecar::load`], but a missing file is `Ok(None)` (sidecars are optional).
    pub fn load_optional(path: &Path) -> Result<Option<Sidecar>, ManifestError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Sidecar::from_toml_str(&text, &path.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ManifestError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Parses sidecar text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Sidecar, ManifestError> {
        let doc = Document::parse(text, origin)?;
        let raw: RawSidecar = doc.deserialize()?;
        check_version(&doc, raw.version)?;
        Ok(resolve(raw, &doc)?)
    }

    /// Limits and failure settings with `engine`'s defaults for what the sidecar leaves unset.
    pub fn effective_limits(&self, engine: &EngineConfig) -> EffectiveLimits {
        let backoff_initial_ms = self
            .failure
            .backoff_initial_ms
            .unwrap_or(engine.quarantine_backoff_initial_ms);
        EffectiveLimits {
            memory_mib: self.limits.memory_mib.unwrap_or(engine.default_memory_mib),
            deadline_ms: self
                .limits
                .deadline_ms
                .unwrap_or(engine.default_deadline_ms),
            max_alerts_per_batch: self.limits.max_alerts_per_batch,
            max_log_lines_per_sec: self.limits.max_log_lines_per_sec,
            max_consecutive_failures: self
                .failure
                .max_consecutive
                .unwrap_or(engine.max_consecutive_failures),
            backoff_initial_ms,
            backoff_max_ms: self
                .failure
                .backoff_max_ms
                .unwrap_or(engine.quarantine_backoff_max_ms)
                .max(backoff_initial_ms),
            policy: self.failure.policy,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw form and validation
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawSidecar {
    version: Option<i64>,
    enabled: Option<bool>,
    limits: Option<RawLimits>,
    failure: Option<RawFailure>,
    config: Option<RawPluginConfig>,
    overrides: Option<RawOverrides>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawLimits {
    memory_mib: Option<i64>,
    deadline_ms: Option<i64>,
    max_alerts_per_batch: Option<i64>,
    max_log_lines_per_sec: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawFailure {
    max_consecutive: Option<i64>,
    backoff_initial_ms: Option<i64>,
    backoff_max_ms: Option<i64>,
    policy: Option<FailureAction>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawOverrides {
    disabled_rules: Option<Vec<String>>,
    priorities: Option<BTreeMap<String, Priority>>,
    min_priority: Option<Priority>,
    rules: Option<Vec<String>>,
    tags: Option<Vec<String>>,
}

/// `[config]`: string keys to [`ConfigValue`]s.
#[derive(Debug)]
struct RawPluginConfig(Vec<(String, ConfigValue)>);

impl<'de> Deserialize<'de> for RawPluginConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ConfigTable;
        impl<'de> Visitor<'de> for ConfigTable {
            type Value = RawPluginConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, ConfigValue>()? {
                    entries.push((key, value));
                }
                Ok(RawPluginConfig(entries))
            }
        }
        d.deserialize_map(ConfigTable)
    }
}

/// The key toml uses to smuggle a datetime through serde as a one-entry map.
const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

/// One element of a `[config]` list, before the list's type is decided.
enum ListItem {
    Text(String),
    Integer(i64),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for ListItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match ConfigValue::deserialize(d) {
            Ok(ConfigValue::Text(s)) => Ok(ListItem::Text(s)),
            Ok(ConfigValue::Integer(i)) => Ok(ListItem::Integer(i)),
            Ok(other) => Ok(ListItem::Other(match other {
                ConfigValue::TextList(_) | ConfigValue::IntegerList(_) => "list",
                v => v.type_name(),
            })),
            Err(e) => Err(e),
        }
    }
}

const LIST_RULE: &str = "lists may hold only strings or only integers";

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = ConfigValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, integer, float, boolean, or a list of strings or integers")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Boolean(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Integer(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConfigValue, E> {
                i64::try_from(v)
                    .map(ConfigValue::Integer)
                    .map_err(|_| E::custom(format!("integer {v} does not fit in 64 bits")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ConfigValue, A::Error> {
                let mut texts = Vec::new();
                let mut ints = Vec::new();
                while let Some(item) = seq.next_element::<ListItem>()? {
                    match item {
                        ListItem::Text(s) => texts.push(s),
                        ListItem::Integer(i) => ints.push(i),
                        ListItem::Other(kind) => {
                            return Err(de::Error::custom(format!(
                                "a list holds a {kind}: {LIST_RULE}"
                            )))
                        }
                    }
                    if !texts.is_empty() && !ints.is_empty() {
                        return Err(de::Error::custom(format!(
                            "mixed list of strings and integers: {LIST_RULE}"
                        )));
                    }
                }
                Ok(if ints.is_empty() {
                    ConfigValue::TextList(texts)
                } else {
                    ConfigValue::IntegerList(ints)
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ConfigValue, A::Error> {
                let first = map.next_key::<String>()?;
                if first.as_deref() == Some(TOML_DATETIME_KEY) {
                    return Err(de::Error::custom(
                        "dates and times are not supported as config values; use a string",
                    ));
                }
                Err(de::Error::custom(
                    "nested tables are not supported in [config]: values are strings, \
                     integers, floats, booleans, or lists of strings or integers",
                ))
            }
        }
        d.deserialize_any(ValueVisitor)
    }
}

fn int_in<T: TryFrom<i64>>(
    doc: &Document<'_>,
    path: &str,
    value: Option<i64>,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Option<T>, Problem> {
    let Some(v) = value else { return Ok(None) };
    if !range.contains(&v) {
        return Err(doc.invalid(
            path,
            format!("{}..={} expected, got {v}", range.start(), range.end()),
        ));
    }
    T::try_from(v)
        .map(Some)
        .map_err(|_| doc.invalid(path, format!("out of range: {v}")))
}

/// Rule ids and tags: non-empty, no whitespace or control characters.
fn check_word(doc: &Document<'_>, path: &str, word: &str) -> Result<(), Problem> {
    if word.is_empty() {
        Err(doc.invalid(path, "an empty string is not allowed"))
    } else if word.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(doc.invalid(path, format!("no spaces allowed, got {word:?}")))
    } else {
        Ok(())
    }
}

fn check_words(doc: &Document<'_>, path: &str, words: &[String]) -> Result<(), Problem> {
    for (i, word) in words.iter().enumerate() {
        check_word(doc, &format!("{path}[{i}]"), word)?;
    }
    Ok(())
}

fn resolve(raw: RawSidecar, doc: &Document<'_>) -> Result<Sidecar, Problem> {
    let defaults = Sidecar::default();

    let limits = match raw.limits {
        None => defaults.limits,
        Some(l) => Limits {
            memory_mib: int_in(doc, "limits.memory_mib", l.memory_mib, 1..=4_096)?,
            deadline_ms: int_in(doc, "limits.deadline_ms", l.deadline_ms, 1..=60_000)?,
            max_alerts_per_batch: int_in(
                doc,
                "limits.max_alerts_per_batch",
                l.max_alerts_per_batch,
                1..=100_000,
            )?
            .unwrap_or(DEFAULT_MAX_ALERTS_PER_BATCH),
            max_log_lines_per_sec: int_in(
                doc,
                "limits.max_log_lines_per_sec",
                l.max_log_lines_per_sec,
                0..=100_000,
            )?
            .unwrap_or(DEFAULT_MAX_LOG_LINES_PER_SEC),
        },
    };

    let failure = match raw.failure {
        None => defaults.failure,
        Some(f) => {
            let backoff_initial_ms: Option<u64> = int_in(
                doc,
                "failure.backoff_initial_ms",
                f.backoff_initial_ms,
                1..=3_600_000,
            )?;
            let backoff_max_ms: Option<u64> = int_in(
                doc,
                "failure.backoff_max_ms",
                f.backoff_max_ms,
                1..=86_400_000,
            )?;
            if let (Some(initial), Some(max)) = (backoff_initial_ms, backoff_max_ms) {
                if max < initial {
                    return Err(doc.invalid(
                        "failure.backoff_max_ms",
                        format!(
                            "must be at least failure.backoff_initial_ms ({initial}), got {max}"
                        ),
                    ));
                }
            }
            FailureSettings {
                max_consecutive: int_in(
                    doc,
                    "failure.max_consecutive",
                    f.max_consecutive,
                    1..=1_000,
                )?,
                backoff_initial_ms,
                backoff_max_ms,
                policy: f.policy.unwrap_or(FailureAction::Quarantine),
            }
        }
    };

    let mut config = raw.config.map(|c| c.0).unwrap_or_default();
    for (key, _) in &config {
        if key.is_empty() {
            return Err(doc.invalid("config.\"\"", "an empty key is not allowed"));
        }
    }
    // toml hands tables over sorted by key; the plugin and the docs expect file order.
    config.sort_by_key(|(key, _)| {
        doc.position(&format!("config.{}", key_segment(key)))
            .unwrap_or(usize::MAX)
    });

    let overrides = match raw.overrides {
        None => RuleOverrides::default(),
        Some(o) => {
            let mut disabled_rules = o.disabled_rules.unwrap_or_default();
            check_words(doc, "overrides.disabled_rules", &disabled_rules)?;
            disabled_rules.sort();
            disabled_rules.dedup();
            let priorities = o.priorities.unwrap_or_default();
            for rule in priorities.keys() {
                let path = format!("overrides.priorities.{}", key_segment(rule));
                check_word(doc, &path, rule)?;
                if disabled_rules.binary_search(rule).is_ok() {
                    return Err(doc.invalid(
                        &path,
                        "this rule is also in overrides.disabled_rules; keep one",
                    ));
                }
            }
            if let Some(rules) = &o.rules {
                check_words(doc, "overrides.rules", rules)?;
            }
            if let Some(tags) = &o.tags {
                check_words(doc, "overrides.tags", tags)?;
            }
            RuleOverrides {
                disabled_rules,
                priorities,
                min_priority: o.min_priority,
                rules: o.rules,
                tags: o.tags,
            }
        }
    };

    Ok(Sidecar {
        enabled: raw.enabled.unwrap_or(true),
        limits,
        failure,
        config,
        overrides,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Sidecar, ManifestError> {
        Sidecar::from_toml_str(text, "p.toml")
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(s) => panic!("expected an error, got {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_sidecar_is_default() {
        assert_eq!(parse("version = 1\n").unwrap(), Sidecar::default());
    }

    #[test]
    fn version_required() {
        assert_eq!(
            err("enabled = false\n"),
            "p.toml: version: missing: the file must start with `version = 1`"
        );
        assert_eq!(
            err("version = 3\n"),
            "p.toml:1: version: unsupported version 3: this Palisade reads version 1"
        );
    }

    #[test]
    fn config_values_keep_file_order_and_types() {
        let s = parse(
            "version = 1\n[config]\nzeta = \"z\"\nalpha = 3\nmid = 1.5\nflag = true\n\
             names = [\"a\", \"b\"]\nports = [22, 80]\nnone = []\n\"odd key\" = 1\n",
        )
        .unwrap();
        assert_eq!(
            s.config,
            vec![
                ("zeta".to_owned(), ConfigValue::Text("z".to_owned())),
                ("alpha".to_owned(), ConfigValue::Integer(3)),
                ("mid".to_owned(), ConfigValue::Float(1.5)),
                ("flag".to_owned(), ConfigValue::Boolean(true)),
                (
                    "names".to_owned(),
                    ConfigValue::TextList(vec!["a".to_owned(), "b".to_owned()])
                ),
                ("ports".to_owned(), ConfigValue::IntegerList(vec![22, 80])),
                ("none".to_owned(), ConfigValue::TextList(vec![])),
                ("odd key".to_owned(), ConfigValue::Integer(1)),
            ]
        );
    }

    #[test]
    fn bad_config_values_name_the_key() {
        assert_eq!(
            err("version = 1\n[config]\nok = 1\nmixed = [1, \"a\"]\n"),
            "p.toml:4: config.mixed: mixed list of strings and integers: lists may hold only \
             strings or only integers"
        );
        let e = err("version = 1\n[config.nested]\nx = 1\n");
        assert!(
            e.starts_with("p.toml:2: config.nested: nested tables are not supported"),
            "{e}"
        );
        let e = err("version = 1\n[config]\ninline = { x = 1 }\n");
        assert!(
            e.starts_with("p.toml:3: config.inline: nested tables are not supported"),
            "{e}"
        );
        let e = err("version = 1\n[config]\nwhen = 1979-05-27\n");
        assert!(
            e.starts_with("p.toml:3: config.when: dates and times"),
            "{e}"
        );
        let e = err("version = 1\n[config]\nfloats = [1.5]\n");
        assert!(
            e.starts_with("p.toml:3: config.floats: a list holds a float"),
            "{e}"
        );
    }

    #[test]
    fn limits_and_failure() {
        let s = parse(
            "version = 1\n[limits]\nmemory_mib = 32\ndeadline_ms = 50\n\
             [failure]\nmax_consecutive = 2\npolicy = \"disable\"\n",
        )
        .unwrap();
        assert_eq!(s.limits.memory_mib, Some(32));
        assert_eq!(s.limits.max_alerts_per_batch, 1000);
        assert_eq!(s.limits.max_log_lines_per_sec, 50);
        assert_eq!(s.failure.policy, FailureAction::Disable);
        assert_eq!(
            err("version = 1\n[limits]\nmemory_mib = 0\n"),
            "p.toml:3: limits.memory_mib: 1..=4096 expected, got 0"
        );
        let e = err("version = 1\n[failure]\npolicy = \"retry\"\n");
        assert!(
            e.starts_with("p.toml:3: failure.policy: unknown variant `retry`"),
            "{e}"
        );
        let e = err("version = 1\n[limits]\nmemroy_mib = 1\n");
        assert!(
            e.starts_with("p.toml:3: unknown key `memroy_mib` in [limits] (expected one of"),
            "{e}"
        );
    }

    #[test]
    fn effective_limits_fill_from_engine() {
        let engine = EngineConfig {
            workers: 1,
            queue_capacity: 1,
            batch_max: 1,
            default_memory_mib: 64,
            default_deadline_ms: 100,
            init_deadline_ms: 5000,
            max_consecutive_failures: 5,
            quarantine_backoff_initial_ms: 1000,
            quarantine_backoff_max_ms: 60_000,
            alert_queue_capacity: 1,
        };
        let s = parse(
            "version = 1\n[limits]\ndeadline_ms = 20\n[failure]\nbackoff_initial_ms = 120000\n",
        )
        .unwrap();
        let eff = s.effective_limits(&engine);
        assert_eq!(eff.memory_mib, 64);
        assert_eq!(eff.deadline_ms, 20);
        assert_eq!(eff.max_consecutive_failures, 5);
        assert_eq!(eff.backoff_initial_ms, 120_000);
        assert_eq!(eff.backoff_max_ms, 120_000, "max never below initial");
    }

    #[test]
    fn rule_overrides() {
        let s = parse(
            "version = 1\n[overrides]\ndisabled_rules = [\"noisy\", \"noisy\"]\n\
             priorities = { \"shadow-read\" = \"warning\" }\nmin_priority = \"critical\"\n\
             rules = [\"sensitive-*\"]\n",
        )
        .unwrap();
        let o = &s.overrides;
        assert_eq!(o.disabled_rules, vec!["noisy".to_owned()]);
        assert_eq!(o.apply("noisy", Priority::Critical), None);
        assert_eq!(
            o.apply("shadow-read", Priority::Critical),
            Some(Priority::Warning)
        );
        assert_eq!(o.apply("other", Priority::Notice), Some(Priority::Notice));
        assert_eq!(o.min_priority, Some(Priority::Critical));
        assert_eq!(o.rules, Some(vec!["sensitive-*".to_owned()]));
        assert_eq!(o.tags, None);
        assert!(o.has_detector_overrides());
        assert!(o.has_alert_filter_overrides());
        let e = err("version = 1\n[overrides]\npriorities = { x = \"urgent\" }\n");
        assert!(
            e.starts_with("p.toml:3: overrides.priorities.x: unknown variant `urgent`"),
            "{e}"
        );
        assert_eq!(
            err("version = 1\n[overrides]\ndisabled_rules = [\"a\"]\npriorities = { a = \"debug\" }\n"),
            "p.toml:4: overrides.priorities.a: this rule is also in overrides.disabled_rules; keep one"
        );
    }

    #[test]
    fn merge_keeps_default_order_and_appends() {
        let defaults: PluginConfig = vec![
            ("a".to_owned(), ConfigValue::Integer(1)),
            ("b".to_owned(), ConfigValue::IntegerList(vec![1, 2])),
            ("c".to_owned(), ConfigValue::Boolean(false)),
        ];
        let overrides: PluginConfig = vec![
            ("new".to_owned(), ConfigValue::Text("x".to_owned())),
            ("c".to_owned(), ConfigValue::Boolean(true)),
            ("b".to_owned(), ConfigValue::TextList(vec![])),
        ];
        let merged = merge_config(&defaults, &overrides);
        assert_eq!(
            merged,
            vec![
                ("a".to_owned(), ConfigValue::Integer(1)),
                ("b".to_owned(), ConfigValue::IntegerList(vec![])),
                ("c".to_owned(), ConfigValue::Boolean(true)),
                ("new".to_owned(), ConfigValue::Text("x".to_owned())),
            ]
        );
        let mismatches = config_mismatches(
            &defaults,
            &vec![
                ("a".to_owned(), ConfigValue::Text("1".to_owned())),
                ("b".to_owned(), ConfigValue::TextList(vec![])),
                ("zz".to_owned(), ConfigValue::Integer(0)),
            ],
        );
        assert_eq!(
            mismatches
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec![
                "config.a: the plugin expects a value of type integer, got string".to_owned(),
                "config.zz: the plugin has no such setting".to_owned(),
            ]
        );
    }

    #[test]
    fn load_optional_and_sidecar_path() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("shell-spawn.wasm");
        let side = sidecar_path(&wasm);
        assert_eq!(side.file_name().unwrap(), "shell-spawn.toml");
        assert_eq!(Sidecar::load_optional(&side).unwrap(), None);
        std::fs::write(&side, "version = 1\nenabled = false\n").unwrap();
        assert!(!Sidecar::load_optional(&side).unwrap().unwrap().enabled);
        std::fs::write(&side, "version = 1\nenabled = 1\n").unwrap();
        let e = Sidecar::load(&side).unwrap_err().to_string();
        assert!(
            e.contains("shell-spawn.toml:2: enabled: invalid type"),
            "{e}"
        );
    }
}
