//! Routing data a plugin declares: detector subscriptions (event kinds + predicates) and
//! responder alert filters, and the matching the router does with them. The same data is what
//! the kernel source turns into in-kernel filter maps.

use crate::alert::{Alert, Priority};
use crate::event::{Event, KindSet};

/// An event matches when its kind is in `kinds` and every non-empty predicate has a match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub kinds: KindSet,
    pub paths: Vec<String>,
    pub path_prefixes: Vec<String>,
    pub comms: Vec<String>,
    pub exes: Vec<String>,
    pub ports: Vec<u16>,
    pub uid_min: Option<u32>,
    pub uid_max: Option<u32>,
}

impl Subscription {
    pub fn matches(&self, event: &Event) -> bool {
        if !self.kinds.contains(event.kind()) {
            return false;
        }
        let process = &event.process;
        if !self.comms.is_empty() && !self.comms.iter().any(|c| *c == process.comm) {
            return false;
        }
        if !self.exes.is_empty() && !self.exes.iter().any(|e| *e == process.exe) {
            return false;
        }
        if self.uid_min.is_some_and(|min| process.uid < min)
            || self.uid_max.is_some_and(|max| process.uid > max)
        {
            return false;
        }
        if !self.paths.is_empty() || !self.path_prefixes.is_empty() {
            // Kinds without a path are not constrained by path predicates.
            let mut paths = event.data.paths().peekable();
            if paths.peek().is_some() && !paths.any(|p| self.path_matches(p)) {
                return false;
            }
        }
        if !self.ports.is_empty() {
            if let Some(port) = event.data.port() {
                if !self.ports.contains(&port) {
                    return false;
                }
            }
        }
        true
    }

    fn path_matches(&self, path: &str) -> bool {
        self.paths.iter().any(|p| p == path)
            || self
                .path_prefixes
                .iter()
                .any(|p| path.starts_with(p.as_str()))
    }
}

/// A plugin's full interest: the union of its subscriptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    pub subscriptions: Vec<Subscription>,
    /// Union of the kinds, for a quick first check and for the kernel's kind gate.
    pub kinds: KindSet,
}

impl Interest {
    pub fn new(subscriptions: Vec<Subscription>) -> Self {
        let kinds = subscriptions
            .iter()
            .fold(KindSet::default(), |acc, s| acc.union(s.kinds));
        Self {
            subscriptions,
            kinds,
        }
    }

    pub fn matches(&self, event: &Event) -> bool {
        self.kinds.contains(event.kind()) && self.subscriptions.iter().any(|s| s.matches(event))
    }
}

/// Which alerts a responder takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertFilter {
    pub min_priority: Priority,
    /// Rule-id globs (`*`, `?`); empty = all.
    pub rules: Vec<String>,
    /// At least one of these tags; empty = no tag needed.
    pub tags: Vec<String>,
}

impl AlertFilter {
    pub fn matches(&self, alert: &Alert) -> bool {
        alert.priority.at_least(self.min_priority)
            && (self.rules.is_empty() || self.rules.iter().any(|g| glob_match(g, &alert.rule)))
            && (self.tags.is_empty() || alert.tags.iter().any(|t| self.tags.contains(t)))
    }
}

/// Matches `*` (any run) and `?` (one char) globs, iteratively (no recursion on guest data).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{EventData, EventKind, FileOpenData, Process};

    fn open(path: &str, comm: &str) -> Event {
        Event {
            ts_ns: 1,
            process: Arc::new(Process {
                comm: comm.into(),
                uid: 1000,
                ..Process::default()
            }),
            data: EventData::FileOpen(FileOpenData {
                path: path.into(),
                ..FileOpenData::default()
            }),
        }
    }

    #[test]
    fn predicates_combine_with_and() {
        let sub = Subscription {
            kinds: [EventKind::FileOpen].into_iter().collect(),
            paths: vec!["/etc/shadow".into()],
            path_prefixes: vec!["/root/.ssh/".into()],
            comms: vec!["cat".into()],
            ..Subscription::default()
        };
        assert!(sub.matches(&open("/etc/shadow", "cat")));
        assert!(sub.matches(&open("/root/.ssh/id_rsa", "cat")));
        assert!(!sub.matches(&open("/etc/shadow", "sshd")));
        assert!(!sub.matches(&open("/etc/passwd", "cat")));
        let by_uid = Subscription {
            kinds: [EventKind::FileOpen].into_iter().collect(),
            uid_min: Some(0),
            uid_max: Some(999),
            ..Subscription::default()
        };
        assert!(!by_uid.matches(&open("/x", "cat")));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("sensitive-*", "sensitive-file-read"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "abbc"));
        assert!(glob_match("*read*", "sensitive-file-read"));
        assert!(!glob_match("shell-*", "sensitive-file-read"));
    }
}
