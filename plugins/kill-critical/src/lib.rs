//! `kill-critical`: a responder that kills the process behind a critical alert from rules the
//! operator chose, optionally blocks its executable from running again, then (optionally)
//! notifies a channel with the outcome.
//!
//! The kill names the process by pid *and* start time (`ProcessTarget::of`), so the host
//! refuses a pid that was recycled since the event. Nothing is killed until the operator lists
//! rule globs in the sidecar's `rules`: killing is too sharp a default. The kill is requested
//! before the notification so the notification's network path never delays it. Requests go
//! through the broker like any other: without the `kill-process` grant they are answered
//! `denied`, in monitor mode they are only recorded; both are logged here, never retried.
//!
//! **Blocking the executable.** When the alert's process `exe` matches one of the sidecar's
//! `block-exec` globs, a `block-exec` by path follows the kill (the host blocks the file's
//! identity and its path, so a relaunch under another name dies too): the same binary cannot
//! simply be started again. The kill goes first: it stops what is running, the block only what
//! would run next. Empty by default, and the globs are the operator's choice of *where* such
//! binaries live (`/tmp/*`, `/dev/shm/*`): blocking the alert's exe blindly would block
//! `/usr/bin/bash` for the whole host the first time a shell misbehaves. Only the path is
//! available to a guest (it cannot read the file to hash it), so no sha256 rule is made.

use palisade_sdk::{
    actions,
    actions::{ExecMatch, ProcessTarget},
    glob_match, AlertFilter, Capability, Config, PluginInfo, Priority, Process, Responder,
    RoutedAlert,
};

const KNOWN_KEYS: &[&str] = &[
    "rules",
    "min-priority",
    "signal",
    "notify-channel",
    "block-exec",
];

/// SIGKILL: the process gets no chance to finish what it started.
const DEFAULT_SIGNAL: u64 = 9;

/// The responder; see the crate docs.
pub struct KillCritical {
    rules: Vec<String>,
    min: Priority,
    signal: u32,
    /// Empty: no notification.
    channel: String,
    /// Globs over the alert process's `exe`; a match is also blocked from executing.
    block_exec: Vec<String>,
}

impl KillCritical {
    fn selects(&self, alert: &RoutedAlert) -> bool {
        alert.alert.priority.is_at_least(self.min)
            && self.rules.iter().any(|g| glob_match(g, &alert.alert.rule))
    }

    /// Asks for the kill; returns the outcome for the notification.
    fn kill(&self, alert: &RoutedAlert, process: &Process) -> String {
        match actions::kill_process(ProcessTarget::of(process), self.signal, &alert.id) {
            Ok(receipt) => {
                palisade_sdk::info!(
                    "signal {} to pid {} ({}) for alert {}: {}",
                    self.signal,
                    process.pid,
                    process.comm,
                    alert.id,
                    receipt.mode.as_str()
                );
                match receipt.mode {
                    actions::Mode::Enforce => format!(
                        "killed pid {} ({}) with signal {}",
                        process.pid, process.comm, self.signal
                    ),
                    actions::Mode::Monitor => format!(
                        "monitor mode: pid {} ({}) would have been killed",
                        process.pid, process.comm
                    ),
                }
            }
            Err(e) => {
                palisade_sdk::warn!(
                    "kill of pid {} for alert {} refused: {}",
                    process.pid,
                    alert.id,
                    e.reason()
                );
                format!("kill of pid {} refused: {}", process.pid, e.reason())
            }
        }
    }

    /// Blocks the process's executable when a `block-exec` glob matches it; returns the
    /// outcome for the notification, `None` when nothing was asked.
    fn block(&self, alert: &RoutedAlert, process: &Process) -> Option<String> {
        let exe = process.exe.as_str();
        // `init` refuses globs that are not absolute, so none matches an empty exe (unknown to
        // the host); kept as a guard should that check ever loosen.
        if exe.is_empty() || !self.block_exec.iter().any(|g| glob_match(g, exe)) {
            return None;
        }
        let outcome = match actions::block_exec(&ExecMatch::Path(exe.to_string()), &alert.id) {
            Ok(receipt) => {
                palisade_sdk::info!(
                    "exec of {exe} blocked for alert {} ({}, action {})",
                    alert.id,
                    receipt.mode.as_str(),
                    receipt.id
                );
                match receipt.mode {
                    actions::Mode::Enforce => format!("blocked exec of {exe}"),
                    actions::Mode::Monitor => {
                        format!("monitor mode: exec of {exe} would have been blocked")
                    }
                }
            }
            Err(e) => {
                palisade_sdk::warn!(
                    "block-exec of {exe} for alert {} refused: {}",
                    alert.id,
                    e.reason()
                );
                format!("block-exec of {exe} refused: {}", e.reason())
            }
        };
        Some(outcome)
    }

    fn notify(&self, alert: &RoutedAlert, outcome: &str) {
        if self.channel.is_empty() {
            return;
        }
        let text = format!("{} (plugin {}); {outcome}", alert.headline(), alert.plugin);
        actions::notify_or_log(&self.channel, &text, &alert.id);
    }
}

impl Responder for KillCritical {
    fn describe() -> PluginInfo {
        PluginInfo::responder(
            "kill-critical",
            env!("CARGO_PKG_VERSION"),
            "Kills the process behind critical alerts of the configured rules, optionally blocks its executable, then notifies",
        )
        // The host routes critical and above; `rules` / `min-priority` narrow this further.
        .alerts(AlertFilter::at_least(Priority::Critical))
        .capability(Capability::KillProcess)
        .capability(Capability::BlockExec)
        .capability(Capability::Notify)
        .config("rules", [] as [&str; 0])
        .config("min-priority", "critical")
        .config("signal", DEFAULT_SIGNAL as i64)
        .config("notify-channel", "")
        .config("block-exec", [] as [&str; 0])
    }

    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(KNOWN_KEYS)?;
        let rules = config.text_list_or("rules", &[])?;
        if let Some(bad) = rules.iter().find(|r| r.trim().is_empty()) {
            return Err(format!("config key `rules`: empty rule glob {bad:?}"));
        }
        let signal = config.unsigned_or("signal", DEFAULT_SIGNAL)?;
        let signal = u32::try_from(signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| format!("config key `signal`: {signal} is not a signal (1..=64)"))?;
        if rules.is_empty() {
            palisade_sdk::info!("no `rules` configured: kill-critical kills nothing");
        }
        let block_exec = config.text_list_or("block-exec", &[])?;
        if let Some(bad) = block_exec.iter().find(|g| !g.starts_with('/')) {
            // Executable paths in alerts are absolute; anything else never matches (or, like
            // "*", matches everything, which is never what an operator means here).
            return Err(format!(
                "config key `block-exec`: {bad:?} is not an absolute path glob"
            ));
        }
        Ok(KillCritical {
            rules,
            min: config.priority_or("min-priority", Priority::Critical)?,
            signal,
            channel: config.text_or("notify-channel", "")?.trim().to_string(),
            block_exec,
        })
    }

    fn on_alert(&mut self, alert: &RoutedAlert) {
        if !self.selects(alert) {
            return;
        }
        let Some(process) = &alert.process else {
            palisade_sdk::warn!(
                "alert {} ({}) has no process: nothing to kill",
                alert.id,
                alert.alert.rule
            );
            self.notify(alert, "no process to kill");
            return;
        };
        let mut outcome = self.kill(alert, process);
        if let Some(blocked) = self.block(alert, process) {
            outcome = format!("{outcome}; {blocked}");
        }
        self.notify(alert, &outcome);
    }
}

palisade_sdk::export_responder!(KillCritical);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_sdk::{log::Level, run_alerts, testing, Alert, Process};

    fn routed(id: &str, rule: &str, priority: Priority) -> RoutedAlert {
        let mut process = Process::new(42, "sh", "/bin/sh");
        process.start_ns = 777;
        RoutedAlert {
            id: id.into(),
            plugin: "sensitive-files".into(),
            plugin_version: "0.1.0".into(),
            ts_ns: 1,
            alert: Alert::new(
                rule,
                priority,
                "Sensitive file /etc/passwd opened for writing",
            ),
            process: Some(process),
            event: None,
        }
    }

    fn responder(config: Config) -> KillCritical {
        KillCritical::init(config).unwrap()
    }

    fn calls() -> Vec<(String, String, String, String)> {
        testing::actions()
            .into_iter()
            .map(|c| (c.action.to_string(), c.target, c.detail, c.alert_id))
            .collect()
    }

    #[test]
    fn kills_nothing_without_rules() {
        testing::reset();
        let mut r = responder(Config::default());
        run_alerts(
            &mut r,
            &[routed("a1", "sensitive-file-write", Priority::Emergency)],
        );
        assert!(testing::actions().is_empty());
        assert!(testing::take_logs()
            .iter()
            .any(|(l, m)| *l == Level::Info && m.contains("kills nothing")));
    }

    #[test]
    fn kills_chosen_rules_at_min_priority_then_notifies() {
        testing::reset();
        let mut r = responder(
            Config::default()
                .with("rules", ["sensitive-file-*", "reverse-shell"])
                .with("notify-channel", "ops"),
        );
        run_alerts(
            &mut r,
            &[
                routed("a1", "sensitive-file-write", Priority::Critical),
                routed("a2", "sensitive-file-write", Priority::Error),
                routed("a3", "run-shell-untrusted", Priority::Emergency),
                routed("a4", "reverse-shell", Priority::Alert),
            ],
        );
        let c = calls();
        assert_eq!(c.len(), 4, "{c:?}");
        assert_eq!(
            c[0],
            ("kill-process".into(), "42".into(), "9".into(), "a1".into())
        );
        assert_eq!(c[1].0, "notify");
        assert_eq!(c[1].1, "ops");
        assert_eq!(
            c[1].2,
            "[CRITICAL] sensitive-file-write: Sensitive file /etc/passwd opened for writing (plugin sensitive-files); killed pid 42 (sh) with signal 9"
        );
        assert_eq!((c[2].0.as_str(), c[2].3.as_str()), ("kill-process", "a4"));
        assert_eq!((c[3].0.as_str(), c[3].3.as_str()), ("notify", "a4"));
    }

    #[test]
    fn target_is_pinned_by_start_time() {
        let mut p = Process::new(42, "sh", "/bin/sh");
        p.start_ns = 777;
        let t = ProcessTarget::of(&p);
        assert_eq!((t.pid, t.start_ns), (42, Some(777)));
    }

    #[test]
    fn no_notification_without_channel_and_custom_signal() {
        testing::reset();
        let mut r = responder(Config::default().with("rules", ["*"]).with("signal", 15));
        run_alerts(&mut r, &[routed("a1", "x", Priority::Critical)]);
        assert_eq!(
            calls(),
            vec![("kill-process".into(), "42".into(), "15".into(), "a1".into())]
        );
    }

    #[test]
    fn denied_and_monitor_are_reported_in_the_notification() {
        testing::reset();
        testing::deny(Capability::KillProcess);
        let mut r = responder(
            Config::default()
                .with("rules", ["*"])
                .with("notify-channel", "ops"),
        );
        run_alerts(&mut r, &[routed("a1", "x", Priority::Critical)]);
        let c = calls();
        assert!(
            c[1].2
                .ends_with("kill of pid 42 refused: denied: kill-process"),
            "{c:?}"
        );
        assert!(testing::take_logs()
            .iter()
            .any(|(l, m)| *l == Level::Warn && m.contains("denied: kill-process")));

        testing::reset();
        testing::set_monitor_mode(true);
        let mut r = responder(
            Config::default()
                .with("rules", ["*"])
                .with("notify-channel", "ops"),
        );
        run_alerts(&mut r, &[routed("a2", "x", Priority::Critical)]);
        let c = calls();
        assert!(
            c[1].2
                .ends_with("monitor mode: pid 42 (sh) would have been killed"),
            "{c:?}"
        );
    }

    #[test]
    fn blocks_the_exe_after_the_kill_only_where_a_glob_matches() {
        testing::reset();
        let mut r = responder(
            Config::default()
                .with("rules", ["*"])
                .with("block-exec", ["/tmp/*", "/dev/shm/*"])
                .with("notify-channel", "ops"),
        );
        let mut dropped = routed("a1", "x", Priority::Critical);
        dropped.process.as_mut().unwrap().exe = "/tmp/.x/miner".into();
        let system = routed("a2", "x", Priority::Critical);
        let mut unknown = routed("a3", "x", Priority::Critical);
        unknown.process.as_mut().unwrap().exe = String::new();
        run_alerts(&mut r, &[dropped, system, unknown]);
        let c = calls();
        let actions: Vec<_> = c.iter().map(|c| (c.0.as_str(), c.3.as_str())).collect();
        assert_eq!(
            actions,
            [
                ("kill-process", "a1"),
                ("block-exec", "a1"),
                ("notify", "a1"),
                ("kill-process", "a2"),
                ("notify", "a2"),
                ("kill-process", "a3"),
                ("notify", "a3"),
            ]
        );
        assert_eq!(c[1].1, "path:/tmp/.x/miner");
        assert!(
            c[2].2
                .ends_with("killed pid 42 (sh) with signal 9; blocked exec of /tmp/.x/miner"),
            "{c:?}"
        );
        assert!(
            c[4].2.ends_with("killed pid 42 (sh) with signal 9"),
            "{c:?}"
        );
    }

    #[test]
    fn refused_and_monitored_blocks_are_reported() {
        testing::reset();
        testing::deny(Capability::BlockExec);
        let config = || {
            Config::default()
                .with("rules", ["*"])
                .with("block-exec", ["/tmp/*"])
                .with("notify-channel", "ops")
        };
        let alert = |id: &str| {
            let mut a = routed(id, "x", Priority::Critical);
            a.process.as_mut().unwrap().exe = "/tmp/m".into();
            a
        };
        run_alerts(&mut responder(config()), &[alert("a1")]);
        let c = calls();
        assert_eq!(
            c[0].0, "kill-process",
            "the kill does not wait on the block"
        );
        assert!(
            c[2].2.ends_with(
                "killed pid 42 (sh) with signal 9; block-exec of /tmp/m refused: denied: block-exec"
            ),
            "{c:?}"
        );

        testing::reset();
        testing::set_monitor_mode(true);
        run_alerts(&mut responder(config()), &[alert("a2")]);
        let c = calls();
        assert!(
            c[2].2
                .ends_with("; monitor mode: exec of /tmp/m would have been blocked"),
            "{c:?}"
        );
    }

    #[test]
    fn alert_without_process_kills_nothing() {
        testing::reset();
        let mut r = responder(Config::default().with("rules", ["*"]));
        let mut a = routed("a1", "x", Priority::Critical);
        a.process = None;
        run_alerts(&mut r, &[a]);
        assert!(testing::actions().is_empty());
    }

    #[test]
    fn describe_and_bad_config() {
        let info = KillCritical::describe();
        assert_eq!(info.alert_filter.unwrap().min_priority, Priority::Critical);
        assert_eq!(
            info.capabilities,
            vec![
                Capability::KillProcess,
                Capability::BlockExec,
                Capability::Notify
            ]
        );
        for (key, value) in [("signal", 0i64), ("signal", 65)] {
            let err = KillCritical::init(Config::default().with(key, value))
                .err()
                .unwrap();
            assert!(err.contains("`signal`"), "{err}");
        }
        assert!(KillCritical::init(Config::default().with("rules", [" "])).is_err());
        assert!(KillCritical::init(Config::default().with("rulez", ["x"])).is_err());
        for glob in ["*", "tmp/*", ""] {
            let err = KillCritical::init(Config::default().with("block-exec", [glob]))
                .err()
                .unwrap();
            assert!(err.contains("`block-exec`"), "{err}");
        }
    }
}
