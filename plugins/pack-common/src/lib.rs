//! Helpers shared by the detector pack (`falco-*`, `sequences`): process descriptions for alert
//! messages, lineage, name lists from Falco's macros, address classification, argument matching.
//!
//! Pure functions only (no host calls), so every plugin can unit-test natively with them.

use palisade_sdk::{Alert, Process};

/// Falco's `shell_binaries` plus the shells Debian and Alpine ship.
pub const SHELLS: &[&str] = &[
    "ash", "bash", "csh", "ksh", "sh", "tcsh", "zsh", "dash", "mksh", "yash", "fish",
];

/// The file name of a path.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// True when `name` is a shell in `SHELLS`.
pub fn is_shell_name(name: &str) -> bool {
    SHELLS.contains(&name)
}

/// `exe (pid N, uid N, cmdline "...", container X)` for alert messages.
pub fn describe_process(p: &Process) -> String {
    let exe = if p.exe.is_empty() {
        p.comm.as_str()
    } else {
        p.exe.as_str()
    };
    format!(
        "{exe} (pid {}, uid {}, cmdline \"{}\", container {})",
        p.pid,
        p.uid,
        p.cmdline(),
        p.container_id.as_deref().unwrap_or("host")
    )
}

/// Ancestor names nearest first, joined by `<`: `sh<php-fpm8.2<systemd`.
pub fn lineage(p: &Process) -> String {
    let mut names: Vec<&str> = Vec::with_capacity(p.ancestors.len());
    for a in p.ancestors.iter().take(6) {
        names.push(if a.comm.is_empty() {
            basename(&a.exe)
        } else {
            a.comm.as_str()
        });
    }
    names.join("<")
}

/// Adds the process fields plus the lineage.
pub fn with_context(alert: Alert, p: &Process) -> Alert {
    alert.process_fields(p).field("proc.lineage", lineage(p))
}

/// True when the arguments (after argv[0]) contain `needle`, ASCII case-insensitively.
pub fn args_icontain(args: &[String], needle: &str) -> bool {
    let needle = needle.to_ascii_lowercase();
    args.iter()
        .skip(1)
        .any(|a| a.to_ascii_lowercase().contains(&needle))
}

/// True when an address is loopback, unspecified, link-local or private (RFC 1918, ULA), i.e.
/// not "outbound" in Falco's sense.
pub fn is_local_or_private(addr: &str) -> bool {
    let addr = addr.trim();
    if addr.is_empty() {
        return true;
    }
    if let Some(v4) = parse_v4(addr) {
        let [a, b, _, _] = v4;
        return a == 0
            || a == 127
            || a == 10
            || (a == 172 && (16..=31).contains(&b))
            || (a == 192 && b == 168)
            || (a == 169 && b == 254);
    }
    let lower = addr.to_ascii_lowercase();
    if let Some(v4) = lower.strip_prefix("::ffff:") {
        return is_local_or_private(v4);
    }
    lower == "::1"
        || lower == "::"
        || lower.starts_with("fe80:")
        || lower.starts_with("fc")
        || lower.starts_with("fd")
}

fn parse_v4(addr: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = addr.split('.');
    for slot in &mut out {
        *slot = parts.next()?.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// Lower-cased config strings, for case-insensitive argument patterns.
pub fn lower_all(list: Vec<String>) -> Vec<String> {
    list.into_iter().map(|s| s.to_ascii_lowercase()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "::1",
            "fd00::1",
            "0.0.0.0",
            "::ffff:10.0.0.1",
            "",
        ] {
            assert!(is_local_or_private(a), "{a}");
        }
        for a in [
            "203.0.113.66",
            "172.32.0.1",
            "8.8.8.8",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_local_or_private(a), "{a}");
        }
    }

    #[test]
    fn lineage_and_args() {
        let p = Process::new(3, "sh", "/bin/sh")
            .with_ancestor(2, "php-fpm8.2", "/usr/sbin/php-fpm8.2")
            .with_ancestor(1, "", "/usr/lib/systemd/systemd")
            .with_args(["grep", "-r", "BEGIN RSA PRIVATE", "/"]);
        assert_eq!(lineage(&p), "php-fpm8.2<systemd");
        assert!(args_icontain(&p.args, "begin rsa private"));
        assert!(!args_icontain(&p.args, "grep"));
        assert!(describe_process(&p).starts_with(
            "/bin/sh (pid 3, uid 0, cmdline \"grep -r BEGIN RSA PRIVATE /\", container host)"
        ));
    }
}
