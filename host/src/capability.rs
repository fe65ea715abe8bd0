//! Capabilities: what a responder may ask the actions broker to do. A plugin requests them in
//! `describe()`, the operator grants them in `palisade.toml`; the effective set is the
//! intersection, and anything else is answered `denied`.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    KillProcess,
    BlockExec,
    DenyOpen,
    NetworkQuarantine,
    Freeze,
    QuarantineFile,
    Notify,
}

impl Capability {
    pub const ALL: [Capability; 7] = [
        Capability::KillProcess,
        Capability::BlockExec,
        Capability::DenyOpen,
        Capability::NetworkQuarantine,
        Capability::Freeze,
        Capability::QuarantineFile,
        Capability::Notify,
    ];

    /// The kebab-case name used in configuration, WIT and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::KillProcess => "kill-process",
            Capability::BlockExec => "block-exec",
            Capability::DenyOpen => "deny-open",
            Capability::NetworkQuarantine => "network-quarantine",
            Capability::Freeze => "freeze",
            Capability::QuarantineFile => "quarantine-file",
            Capability::Notify => "notify",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of capabilities as a bitmask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapabilitySet(u8);

impl CapabilitySet {
    pub fn contains(self, cap: Capability) -> bool {
        self.0 & (1 << cap as u8) != 0
    }
    pub fn insert(&mut self, cap: Capability) {
        self.0 |= 1 << cap as u8;
    }
    pub fn intersection(self, other: CapabilitySet) -> CapabilitySet {
        CapabilitySet(self.0 & other.0)
    }
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Capability> for CapabilitySet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        let mut set = CapabilitySet::default();
        for cap in iter {
            set.insert(cap);
        }
        set
    }
}
