//! `quarantine-reverse-shell`: a responder that cuts the network of the container a reverse
//! shell runs in (`network-quarantine` of `process.container_id`), then (optionally) notifies.
//!
//! Rules it reacts to by default are the reverse-shell detections of the first-party plugins:
//! `reverse-shell` (shell-spawn: interactive shell with a socket on its standard streams) and
//! `reverse-shell-by-sequence` (sequences: a shell started after its lineage connected out).
//! falco-container's `redirect-stdio-to-network-in-container` and
//! `netcat-remote-code-execution-in-container` are routed too and can be added to `rules`.
//! A process on the host (no container id) is skipped and logged: quarantining the host's own
//! cgroup would cut the machine off. The quarantine is held by the host until an operator
//! releases it (`palisade actions release ID`); repeats for the same container within a minute
//! are not requested again, so an alert storm makes one quarantine, not dozens.

use std::time::Duration;

use palisade_sdk::{
    actions, actions::Workload, glob_match, state, AlertFilter, Capability, Config, PluginInfo,
    Priority, Responder, RoutedAlert,
};

const KNOWN_KEYS: &[&str] = &["rules", "min-priority", "notify-channel"];

/// Rules acted on by default.
const DEFAULT_RULES: &[&str] = &["reverse-shell", "reverse-shell-by-sequence"];

/// Rules the host routes here (describe() must not depend on config; `rules` narrows them).
const ROUTED_RULES: &[&str] = &[
    "reverse-shell",
    "reverse-shell-by-sequence",
    "redirect-stdio-to-network-in-container",
    "netcat-remote-code-execution-in-container",
];

/// Repeats for one container within this window are not requested again.
const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// The responder; see the crate docs.
pub struct QuarantineReverseShell {
    rules: Vec<String>,
    min: Priority,
    channel: String,
}

impl QuarantineReverseShell {
    fn notify(&self, alert: &RoutedAlert, outcome: &str) {
        if self.channel.is_empty() {
            return;
        }
        let text = format!("{} (plugin {}); {outcome}", alert.headline(), alert.plugin);
        actions::notify_or_log(&self.channel, &text, &alert.id);
    }
}

impl Responder for QuarantineReverseShell {
    fn describe() -> PluginInfo {
        let mut filter = AlertFilter::at_least(Priority::Notice);
        for rule in ROUTED_RULES {
            filter = filter.rule(rule);
        }
        PluginInfo::responder(
            "quarantine-reverse-shell",
            env!("CARGO_PKG_VERSION"),
            "Cuts the network of the container a reverse shell runs in, then notifies",
        )
        .alerts(filter)
        .capability(Capability::NetworkQuarantine)
        .capability(Capability::Notify)
        .config("rules", DEFAULT_RULES.to_vec())
        .config("min-priority", "notice")
        .config("notify-channel", "")
    }

    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(KNOWN_KEYS)?;
        let rules = config.text_list_or("rules", DEFAULT_RULES)?;
        if let Some(bad) = rules.iter().find(|r| r.trim().is_empty()) {
            return Err(format!("config key `rules`: empty rule glob {bad:?}"));
        }
        Ok(QuarantineReverseShell {
            rules,
            min: config.priority_or("min-priority", Priority::Notice)?,
            channel: config.text_or("notify-channel", "")?.trim().to_string(),
        })
    }

    fn on_alert(&mut self, alert: &RoutedAlert) {
        if !alert.alert.priority.is_at_least(self.min)
            || !self.rules.iter().any(|g| glob_match(g, &alert.alert.rule))
        {
            return;
        }
        let Some(container) = alert
            .process
            .as_ref()
            .and_then(|p| p.container_id.as_deref())
            .filter(|c| !c.is_empty())
        else {
            palisade_sdk::info!(
                "alert {} ({}) is not in a container: no network quarantine",
                alert.id,
                alert.alert.rule
            );
            self.notify(alert, "on the host: not quarantined");
            return;
        };
        let key = format!("quarantined:{container}");
        if state::is_marked(&key) {
            palisade_sdk::debug!(
                "container {container} already quarantined for a recent alert; alert {} skipped",
                alert.id
            );
            return;
        }
        let outcome = match actions::network_quarantine(
            &Workload::ContainerId(container.to_string()),
            &alert.id,
        ) {
            Ok(receipt) => {
                if let Err(e) = state::mark(&key, REPEAT_WINDOW) {
                    palisade_sdk::warn!("cannot remember the quarantine of {container}: {e:?}");
                }
                palisade_sdk::info!(
                    "network quarantine of container {container} for alert {}: {} (action {})",
                    alert.id,
                    receipt.mode.as_str(),
                    receipt.id
                );
                match receipt.mode {
                    actions::Mode::Enforce => format!(
                        "network of container {container} quarantined (action {}; `palisade actions release {}` undoes it)",
                        receipt.id, receipt.id
                    ),
                    actions::Mode::Monitor => format!(
                        "monitor mode: container {container} would have been quarantined"
                    ),
                }
            }
            Err(e) => {
                palisade_sdk::warn!(
                    "network quarantine of container {container} for alert {} refused: {}",
                    alert.id,
                    e.reason()
                );
                format!(
                    "quarantine of container {container} refused: {}",
                    e.reason()
                )
            }
        };
        self.notify(alert, &outcome);
    }
}

palisade_sdk::export_responder!(QuarantineReverseShell);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_sdk::{log::Level, run_alerts, testing, Alert, Process};

    fn routed(id: &str, rule: &str, container: Option<&str>) -> RoutedAlert {
        let mut process = Process::new(42, "bash", "/bin/bash");
        if let Some(c) = container {
            process = process.with_container(c);
        }
        RoutedAlert {
            id: id.into(),
            plugin: "shell-spawn".into(),
            plugin_version: "0.1.0".into(),
            ts_ns: 1,
            alert: Alert::new(rule, Priority::Critical, "Interactive shell with a socket"),
            process: Some(process),
            event: None,
        }
    }

    fn responder(config: Config) -> QuarantineReverseShell {
        QuarantineReverseShell::init(config).unwrap()
    }

    #[test]
    fn quarantines_the_container_once_and_notifies() {
        testing::reset();
        let mut r = responder(Config::default().with("notify-channel", "ops"));
        run_alerts(
            &mut r,
            &[
                routed("a1", "reverse-shell", Some("0123456789abcdef")),
                routed("a2", "reverse-shell-by-sequence", Some("0123456789abcdef")),
                routed("a3", "run-shell-untrusted", Some("fedcba9876543210")),
                routed("a4", "reverse-shell-by-sequence", Some("fedcba9876543210")),
            ],
        );
        let calls = testing::actions();
        let got: Vec<(&str, &str, &str)> = calls
            .iter()
            .map(|c| (c.action, c.target.as_str(), c.alert_id.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("network-quarantine", "container-id:0123456789abcdef", "a1"),
                ("notify", "ops", "a1"),
                ("network-quarantine", "container-id:fedcba9876543210", "a4"),
                ("notify", "ops", "a4"),
            ]
        );
        assert!(calls[1]
            .detail
            .contains("network of container 0123456789abcdef quarantined (action mock-1"));
    }

    #[test]
    fn host_processes_are_skipped_and_logged() {
        testing::reset();
        let mut r = responder(Config::default());
        run_alerts(&mut r, &[routed("a1", "reverse-shell", None)]);
        assert!(testing::actions().is_empty());
        assert!(testing::take_logs()
            .iter()
            .any(|(l, m)| *l == Level::Info && m.contains("not in a container")));
    }

    #[test]
    fn rules_config_selects_and_refusals_are_logged() {
        testing::reset();
        testing::deny(Capability::NetworkQuarantine);
        let mut r = responder(Config::default().with("rules", ["redirect-stdio-*"]));
        run_alerts(
            &mut r,
            &[
                routed("a1", "reverse-shell", Some("c1c1c1c1c1c1")),
                routed(
                    "a2",
                    "redirect-stdio-to-network-in-container",
                    Some("c1c1c1c1c1c1"),
                ),
            ],
        );
        let calls = testing::actions();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].alert_id, "a2");
        assert!(testing::take_logs()
            .iter()
            .any(|(l, m)| *l == Level::Warn && m.contains("denied: network-quarantine")));
        // A refused request is not remembered: the next alert asks again.
        run_alerts(
            &mut r,
            &[routed(
                "a3",
                "redirect-stdio-to-network-in-container",
                Some("c1c1c1c1c1c1"),
            )],
        );
        assert_eq!(testing::actions().len(), 2);
    }

    #[test]
    fn describe_and_bad_config() {
        let info = QuarantineReverseShell::describe();
        let filter = info.alert_filter.unwrap();
        assert_eq!(filter.min_priority, Priority::Notice);
        assert_eq!(filter.rules, ROUTED_RULES);
        assert_eq!(
            info.capabilities,
            vec![Capability::NetworkQuarantine, Capability::Notify]
        );
        assert!(QuarantineReverseShell::init(Config::default().with("rules", [""])).is_err());
        assert!(QuarantineReverseShell::init(Config::default().with("x", 1)).is_err());
    }
}
