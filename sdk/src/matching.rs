//! Path and process-name matching for detector rules: exact paths, prefixes, simple globs, and
//! allow-lists of command names / executables.
//!
//! Everything here is pure (no host calls), so it is unit-tested natively.

use crate::model::{Ancestor, Process};

/// One path pattern.
///
/// Parsed from text by [`PathPattern::parse`]: a pattern with `*` or `?` is a glob, one ending in
/// `/` is a prefix (the directory and everything below it), anything else is an exact path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// The path must be equal.
    Exact(String),
    /// The path must start with this text.
    Prefix(String),
    /// `*` matches any run of characters (including `/`), `?` exactly one character.
    Glob(String),
}

impl PathPattern {
    /// Parses a pattern (see the type's docs).
    pub fn parse(text: &str) -> PathPattern {
        if text.contains(['*', '?']) {
            PathPattern::Glob(text.to_string())
        } else if text.ends_with('/') {
            PathPattern::Prefix(text.to_string())
        } else {
            PathPattern::Exact(text.to_string())
        }
    }

    /// True when `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
            PathPattern::Glob(g) => glob_match(g, path),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        match self {
            PathPattern::Exact(s) | PathPattern::Prefix(s) | PathPattern::Glob(s) => s,
        }
    }
}

/// Matches `text` against a glob where `*` is any run of characters (including `/`) and `?` is
/// one character. Linear-time with single-star backtracking; no allocation.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Position after the last `*` seen in the pattern, and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi + 1, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            // `?` matches one byte; paths in practice are ASCII, and a multi-byte character
            // simply needs as many `?`.
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A set of path patterns; a path matches when any pattern matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathSet {
    patterns: Vec<PathPattern>,
}

impl PathSet {
    /// Parses every pattern (see [`PathPattern::parse`]).
    pub fn new<S: AsRef<str>>(patterns: impl IntoIterator<Item = S>) -> Self {
        PathSet {
            patterns: patterns
                .into_iter()
                .map(|p| PathPattern::parse(p.as_ref()))
                .collect(),
        }
    }

    /// The first pattern matching `path`.
    pub fn find(&self, path: &str) -> Option<&PathPattern> {
        self.patterns.iter().find(|p| p.matches(path))
    }

    /// True when some pattern matches `path`.
    pub fn matches(&self, path: &str) -> bool {
        self.find(path).is_some()
    }

    /// The patterns.
    pub fn patterns(&self) -> &[PathPattern] {
        &self.patterns
    }

    /// True when the set has no pattern.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Exact paths and prefixes that together cover every pattern, for a subscription: a glob
    /// contributes the literal text before its first wildcard as a prefix.
    pub fn subscription_predicates(&self) -> (Vec<String>, Vec<String>) {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for p in &self.patterns {
            match p {
                PathPattern::Exact(s) => exact.push(s.clone()),
                PathPattern::Prefix(s) => prefixes.push(s.clone()),
                PathPattern::Glob(g) => {
                    let cut = g.find(['*', '?']).unwrap_or(g.len());
                    prefixes.push(g[..cut].to_string());
                }
            }
        }
        (exact, prefixes)
    }
}

/// The kernel keeps at most 15 bytes of a command name.
pub const COMM_LEN: usize = 15;

/// The comm the kernel would show for a program called `name`.
pub fn comm_of(name: &str) -> &str {
    if name.len() <= COMM_LEN {
        return name;
    }
    let mut end = COMM_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// A set of program names, for allow-lists and "is this a shell" checks.
///
/// An entry containing `/` is an executable path (glob allowed: `/usr/lib/*/sshd`); any other
/// entry is a program name, compared with the executable's file name and with the comm (with
/// the kernel's 15-byte truncation applied to the entry). A name may be a glob too
/// (`php-fpm*`, `python3*`), matched against the file name and the comm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameSet {
    names: Vec<String>,
    exes: PathSet,
}

impl NameSet {
    /// Builds the set from names and/or executable paths.
    pub fn new<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> Self {
        let mut names = Vec::new();
        let mut exes = Vec::new();
        for e in entries {
            let e = e.as_ref();
            if e.contains('/') {
                exes.push(e.to_string());
            } else if !e.is_empty() {
                names.push(e.to_string());
            }
        }
        NameSet {
            names,
            exes: PathSet::new(exes),
        }
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.exes.is_empty()
    }

    /// True when `name` (a program file name) is in the set.
    pub fn contains_name(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// True when a program with this comm and executable path is in the set.
    pub fn matches(&self, comm: &str, exe: &str) -> bool {
        if !exe.is_empty() && self.exes.matches(exe) {
            return true;
        }
        let exe_name = exe.rsplit('/').next().unwrap_or("");
        self.names.iter().any(|n| {
            if n.contains(['*', '?']) {
                (!exe_name.is_empty() && glob_match(n, exe_name))
                    || (!comm.is_empty() && glob_match(n, comm))
            } else {
                (!exe_name.is_empty() && n == exe_name) || (!comm.is_empty() && comm_of(n) == comm)
            }
        })
    }

    /// True when the process is in the set.
    pub fn matches_process(&self, process: &Process) -> bool {
        self.matches(&process.comm, &process.exe)
    }

    /// True when the ancestor is in the set.
    pub fn matches_ancestor(&self, ancestor: &Ancestor) -> bool {
        self.matches(&ancestor.comm, &ancestor.exe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_semantics() {
        assert!(glob_match("/etc/sudoers.d/*", "/etc/sudoers.d/90-cloud"));
        assert!(glob_match("/etc/sudoers.d/*", "/etc/sudoers.d/"));
        assert!(!glob_match("/etc/sudoers.d/*", "/etc/sudoers.d"));
        assert!(glob_match("/home/*/.ssh/id_*", "/home/bob/.ssh/id_ed25519"));
        assert!(!glob_match(
            "/home/*/.ssh/id_*",
            "/home/bob/.ssh/known_hosts"
        ));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*a*b*c", "xxaxxbxxbxc"));
        assert!(!glob_match("*.conf", "a.confx"));
        assert!(glob_match("**", "anything/at/all"));
    }

    #[test]
    fn pattern_kinds_parse_and_match() {
        assert_eq!(
            PathPattern::parse("/etc/shadow"),
            PathPattern::Exact("/etc/shadow".into())
        );
        assert_eq!(
            PathPattern::parse("/root/"),
            PathPattern::Prefix("/root/".into())
        );
        assert!(matches!(PathPattern::parse("/a/*"), PathPattern::Glob(_)));
        let set = PathSet::new(["/etc/shadow", "/root/.ssh/", "/etc/sudoers.d/*"]);
        assert!(set.matches("/etc/shadow"));
        assert!(!set.matches("/etc/shadow-"));
        assert!(set.matches("/root/.ssh/authorized_keys"));
        assert!(set.matches("/etc/sudoers.d/x"));
        assert!(!set.matches("/etc/passwd"));
        assert_eq!(
            set.find("/root/.ssh/x").map(PathPattern::as_str),
            Some("/root/.ssh/")
        );
    }

    #[test]
    fn subscription_predicates_cover_every_pattern() {
        let set = PathSet::new([
            "/etc/shadow",
            "/root/.ssh/",
            "/etc/sudoers.d/*",
            "/home/*/.ssh/*",
        ]);
        let (exact, prefixes) = set.subscription_predicates();
        assert_eq!(exact, vec!["/etc/shadow"]);
        assert_eq!(prefixes, vec!["/root/.ssh/", "/etc/sudoers.d/", "/home/"]);
    }

    #[test]
    fn names_match_exe_basename_comm_and_paths() {
        let set = NameSet::new([
            "sshd",
            "unix_chkpwd",
            "/usr/lib/*/polkitd",
            "systemd-tmpfiles",
        ]);
        assert!(set.matches("sshd", "/usr/sbin/sshd"));
        assert!(set.matches("", "/usr/sbin/sshd"));
        assert!(set.matches("sshd", ""));
        assert!(set.matches("x", "/usr/lib/polkit-1/polkitd"));
        // comm is truncated to 15 bytes by the kernel.
        assert!(set.matches("systemd-tmpfile", ""));
        assert!(!set.matches("cat", "/usr/bin/cat"));
        assert!(!set.matches("", ""));
        assert!(NameSet::new(Vec::<String>::new()).is_empty());
        let globs = NameSet::new(["php-fpm*", "python3*"]);
        assert!(globs.matches("php-fpm8.2", ""));
        assert!(globs.matches("x", "/usr/bin/python3.11"));
        assert!(!globs.matches("python2", "/usr/bin/python2"));
        assert!(set.contains_name("sshd"));
    }

    #[test]
    fn comm_truncation_respects_char_boundaries() {
        assert_eq!(comm_of("short"), "short");
        assert_eq!(comm_of("systemd-tmpfiles"), "systemd-tmpfile");
        assert_eq!(comm_of("ééééééééé"), "ééééééé");
    }
}
