//! Typed access to the configuration a plugin receives in `init`: the defaults it declared in
//! `describe`, overridden by the operator's sidecar `[config]` table.
//!
//! Getters return a [`ConfigError`] naming the key when a value is missing or has the wrong type,
//! so `init` can use `?` and the host's load error says which key is wrong.

use core::fmt;

use crate::bindings::palisade::plugin::types::ConfigValue;
use crate::types::ALL_CAPABILITIES;
use crate::{Capability, Priority};

/// Why a configuration value could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    /// The key is absent (and the getter has no default).
    Missing {
        /// The key asked for.
        key: String,
    },
    /// The value has another type than the getter reads.
    WrongType {
        /// The key asked for.
        key: String,
        /// The type the getter reads.
        expected: &'static str,
        /// The type found.
        found: &'static str,
    },
    /// The value has the right type but is not acceptable.
    Invalid {
        /// The key asked for.
        key: String,
        /// Why the value was refused.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Missing { key } => write!(f, "config key `{key}` is missing"),
            ConfigError::WrongType {
                key,
                expected,
                found,
            } => {
                write!(f, "config key `{key}` must be {expected}, found {found}")
            }
            ConfigError::Invalid { key, reason } => write!(f, "config key `{key}`: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for String {
    fn from(e: ConfigError) -> String {
        e.to_string()
    }
}

/// A plugin's configuration: key/value pairs, later entries overriding earlier ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    entries: Vec<(String, ConfigValue)>,
}

impl From<Vec<(String, ConfigValue)>> for Config {
    fn from(entries: Vec<(String, ConfigValue)>) -> Self {
        Config { entries }
    }
}

macro_rules! getter {
    ($(#[$doc:meta])* $name:ident, $name_or:ident, $variant:ident, $expected:literal, $t:ty, $default_t:ty, |$d:ident| $conv:expr) => {
        $(#[$doc])*
        pub fn $name(&self, key: &str) -> Result<$t, ConfigError> {
            match self.get(key) {
                Some(ConfigValue::$variant(v)) => Ok(v.clone()),
                Some(other) => Err(ConfigError::WrongType {
                    key: key.to_string(),
                    expected: $expected,
                    found: other.type_name(),
                }),
                None => Err(ConfigError::Missing { key: key.to_string() }),
            }
        }

        /// Like the getter without `_or`, but an absent key gives `default` (a wrong type is
        /// still an error).
        pub fn $name_or(&self, key: &str, $d: $default_t) -> Result<$t, ConfigError> {
            match self.$name(key) {
                Err(ConfigError::Missing { .. }) => Ok($conv),
                other => other,
            }
        }
    };
}

impl Config {
    /// A configuration from key/value pairs.
    pub fn new(entries: Vec<(String, ConfigValue)>) -> Self {
        Config { entries }
    }

    /// Adds or replaces a value (builder style; handy in tests).
    pub fn with(mut self, key: &str, value: impl Into<ConfigValue>) -> Self {
        self.entries.push((key.to_string(), value.into()));
        self
    }

    /// The raw value of `key` (the last one when a key repeats).
    pub fn get(&self, key: &str) -> Option<&ConfigValue> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// True when `key` is set.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Every key, in order of first appearance.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        let mut seen: Vec<&str> = Vec::new();
        for (k, _) in &self.entries {
            if !seen.contains(&k.as_str()) {
                seen.push(k);
            }
        }
        seen.into_iter()
    }

    /// Fails on any key not in `known`, so a typo in the sidecar is an error, not a silent default.
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self.keys().find(|k| !known.contains(k)) {
            Some(key) => Err(ConfigError::Invalid {
                key: key.to_string(),
                reason: format!("unknown key (known: {})", known.join(", ")),
            }),
            None => Ok(()),
        }
    }

    getter!(
        /// A text value.
        text, text_or, Text, "text", String, &str, |d| d.to_string()
    );
    getter!(
        /// An integer value.
        integer, integer_or, Integer, "integer", i64, i64, |d| d
    );
    getter!(
        /// A boolean value.
        boolean, boolean_or, Boolean, "boolean", bool, bool, |d| d
    );
    getter!(
        /// A list of integers.
        integer_list, integer_list_or, IntegerList, "integer-list", Vec<i64>, &[i64], |d| d.to_vec()
    );

    /// A list of texts. A single text is accepted as a one-element list.
    pub fn text_list(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        match self.get(key) {
            Some(ConfigValue::TextList(v)) => Ok(v.clone()),
            Some(ConfigValue::Text(v)) => Ok(vec![v.clone()]),
            Some(other) => Err(ConfigError::WrongType {
                key: key.to_string(),
                expected: "text-list",
                found: other.type_name(),
            }),
            None => Err(ConfigError::Missing {
                key: key.to_string(),
            }),
        }
    }

    /// Like [`Config::text_list`], with a default for an absent key.
    pub fn text_list_or(&self, key: &str, default: &[&str]) -> Result<Vec<String>, ConfigError> {
        match self.text_list(key) {
            Err(ConfigError::Missing { .. }) => Ok(default.iter().map(|s| s.to_string()).collect()),
            other => other,
        }
    }

    /// A float value; an integer is widened.
    pub fn float(&self, key: &str) -> Result<f64, ConfigError> {
        match self.get(key) {
            Some(ConfigValue::Float(v)) => Ok(*v),
            Some(ConfigValue::Integer(v)) => Ok(*v as f64),
            Some(other) => Err(ConfigError::WrongType {
                key: key.to_string(),
                expected: "float",
                found: other.type_name(),
            }),
            None => Err(ConfigError::Missing {
                key: key.to_string(),
            }),
        }
    }

    /// Like [`Config::float`], with a default for an absent key.
    pub fn float_or(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.float(key) {
            Err(ConfigError::Missing { .. }) => Ok(default),
            other => other,
        }
    }

    /// A non-negative integer that fits `u64`.
    pub fn unsigned_or(&self, key: &str, default: u64) -> Result<u64, ConfigError> {
        let raw = self.integer_or(key, i64::try_from(default).unwrap_or(i64::MAX))?;
        u64::try_from(raw).map_err(|_| ConfigError::Invalid {
            key: key.to_string(),
            reason: format!("must not be negative, found {raw}"),
        })
    }

    /// A priority written as its name (`"error"`, `"critical"`, Falco's `"info"`).
    pub fn priority_or(&self, key: &str, default: Priority) -> Result<Priority, ConfigError> {
        let name = self.text_or(key, default.as_str())?;
        Priority::parse(&name).ok_or_else(|| ConfigError::Invalid {
            key: key.to_string(),
            reason: format!(
                "unknown priority `{name}` (one of: {})",
                Priority::ALL.map(Priority::as_str).join(", ")
            ),
        })
    }

    /// A capability written as its WIT name (`"kill-process"`; `_` is accepted for `-`).
    pub fn capability(&self, key: &str) -> Result<Capability, ConfigError> {
        let name = self.text(key)?.replace('_', "-");
        ALL_CAPABILITIES
            .into_iter()
            .find(|c| capability_name(*c) == name)
            .ok_or_else(|| ConfigError::Invalid {
                key: key.to_string(),
                reason: format!("unknown capability `{name}`"),
            })
    }
}

/// The WIT name of a capability (`"kill-process"`).
pub fn capability_name(capability: Capability) -> &'static str {
    match capability {
        Capability::KillProcess => "kill-process",
        Capability::BlockExec => "block-exec",
        Capability::DenyOpen => "deny-open",
        Capability::NetworkQuarantine => "network-quarantine",
        Capability::Freeze => "freeze",
        Capability::QuarantineFile => "quarantine-file",
        Capability::Notify => "notify",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::default()
            .with("name", "x")
            .with("n", 5)
            .with("on", true)
            .with("list", ["a", "b"])
            .with("prio", "Error")
            .with("name", "y")
    }

    #[test]
    fn typed_getters_read_values_and_last_write_wins() {
        let c = cfg();
        assert_eq!(c.text("name").unwrap(), "y");
        assert_eq!(c.integer("n").unwrap(), 5);
        assert!(c.boolean("on").unwrap());
        assert_eq!(c.text_list("list").unwrap(), vec!["a", "b"]);
        assert_eq!(c.text_list("name").unwrap(), vec!["y"]);
        assert_eq!(c.float("n").unwrap(), 5.0);
        assert_eq!(
            c.priority_or("prio", Priority::Debug).unwrap(),
            Priority::Error
        );
    }

    #[test]
    fn defaults_apply_only_to_missing_keys() {
        let c = cfg();
        assert_eq!(c.text_or("absent", "d").unwrap(), "d");
        assert_eq!(c.integer_or("absent", 7).unwrap(), 7);
        assert!(!c.boolean_or("absent", false).unwrap());
        assert_eq!(c.text_list_or("absent", &["z"]).unwrap(), vec!["z"]);
        assert_eq!(c.unsigned_or("absent", 3).unwrap(), 3);
        // Wrong type is not papered over by the default.
        let err = c.integer_or("name", 1).unwrap_err();
        assert_eq!(
            err,
            ConfigError::WrongType {
                key: "name".into(),
                expected: "integer",
                found: "text"
            }
        );
        assert_eq!(
            err.to_string(),
            "config key `name` must be integer, found text"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let c = cfg();
        assert_eq!(
            c.text("nope").unwrap_err().to_string(),
            "config key `nope` is missing"
        );
        let e = Config::default()
            .with("p", "loud")
            .priority_or("p", Priority::Error)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config key `p`: unknown priority `loud`"),
            "{e}"
        );
        let e = Config::default()
            .with("n", -1)
            .unsigned_or("n", 1)
            .unwrap_err();
        assert!(e.to_string().contains("must not be negative"), "{e}");
        let s: String = Config::default().text("k").unwrap_err().into();
        assert!(s.contains("`k`"));
    }

    #[test]
    fn deny_unknown_reports_the_first_unknown_key() {
        let c = cfg();
        assert!(c.deny_unknown(&["name", "n", "on", "list", "prio"]).is_ok());
        let e = c.deny_unknown(&["name", "n"]).unwrap_err();
        assert!(
            e.to_string().starts_with("config key `on`: unknown key"),
            "{e}"
        );
    }

    #[test]
    fn capability_names_parse() {
        let c = Config::default().with("cap", "kill_process");
        assert_eq!(c.capability("cap").unwrap(), Capability::KillProcess);
        assert!(Config::default()
            .with("cap", "fly")
            .capability("cap")
            .is_err());
    }
}
