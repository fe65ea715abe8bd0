//! `notify-high`: a responder that sends a notification for every alert at or above a minimum
//! priority (error by default) from the configured rules (rule id globs, every rule by default)
//! on a configurable channel. It asks only for `notify`; a refusal by the broker (not granted,
//! rate limited) is logged, never retried.

use palisade_sdk::{
    actions, glob_match, AlertFilter, Capability, Config, PluginInfo, Priority, Responder,
    RoutedAlert,
};

const KNOWN_KEYS: &[&str] = &["min-priority", "channel", "rules"];

/// The responder; see the crate docs.
pub struct NotifyHigh {
    min: Priority,
    channel: String,
    rules: Vec<String>,
}

/// The notification text: priority, rule, the detector's message and where it came from.
fn notification(alert: &RoutedAlert) -> String {
    let mut text = format!(
        "{} (plugin {} {}",
        alert.headline(),
        alert.plugin,
        alert.plugin_version
    );
    if let Some(p) = &alert.process {
        text.push_str(&format!(", pid {}", p.pid));
        if let Some(c) = &p.container_id {
            text.push_str(&format!(", container {c}"));
        }
    }
    text.push(')');
    text
}

impl Responder for NotifyHigh {
    fn describe() -> PluginInfo {
        PluginInfo::responder(
            "notify-high",
            env!("CARGO_PKG_VERSION"),
            "Sends a notification for every alert of priority error or higher",
        )
        // The host routes error and above; `min-priority` can only narrow this further.
        .alerts(AlertFilter::at_least(Priority::Error))
        .capability(Capability::Notify)
        .config("min-priority", "error")
        .config("channel", "default")
        .config("rules", ["*"])
    }

    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(KNOWN_KEYS)?;
        let channel = config.text_or("channel", "default")?;
        if channel.trim().is_empty() {
            return Err("config key `channel`: must not be empty".to_string());
        }
        let rules = config.text_list_or("rules", &["*"])?;
        if let Some(bad) = rules.iter().find(|r| r.trim().is_empty()) {
            return Err(format!("config key `rules`: empty rule glob {bad:?}"));
        }
        Ok(NotifyHigh {
            min: config.priority_or("min-priority", Priority::Error)?,
            channel,
            rules,
        })
    }

    fn on_alert(&mut self, alert: &RoutedAlert) {
        if !alert.alert.priority.is_at_least(self.min)
            || !self.rules.iter().any(|g| glob_match(g, &alert.alert.rule))
        {
            return;
        }
        actions::notify_or_log(&self.channel, &notification(alert), &alert.id);
    }
}

palisade_sdk::export_responder!(NotifyHigh);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_sdk::{log::Level, run_alerts, testing, Alert, Process};

    fn routed(id: &str, priority: Priority) -> RoutedAlert {
        RoutedAlert {
            id: id.into(),
            plugin: "sensitive-files".into(),
            plugin_version: "0.1.0".into(),
            ts_ns: 1,
            alert: Alert::new(
                "sensitive-file-write",
                priority,
                "Sensitive file /etc/shadow opened for writing",
            ),
            process: Some(Process::new(42, "sh", "/bin/sh").with_container("abc")),
            event: None,
        }
    }

    fn responder(config: Config) -> NotifyHigh {
        NotifyHigh::init(config).unwrap()
    }

    #[test]
    fn notifies_at_or_above_min_priority() {
        testing::reset();
        let mut r = responder(Config::default());
        run_alerts(
            &mut r,
            &[
                routed("a1", Priority::Critical),
                routed("a2", Priority::Warning),
                routed("a3", Priority::Error),
            ],
        );
        let calls = testing::actions();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].action, "notify");
        assert_eq!(calls[0].target, "default");
        assert_eq!(calls[0].alert_id, "a1");
        assert_eq!(
            calls[0].detail,
            "[CRITICAL] sensitive-file-write: Sensitive file /etc/shadow opened for writing (plugin sensitive-files 0.1.0, pid 42, container abc)"
        );
        assert_eq!(calls[1].alert_id, "a3");
    }

    #[test]
    fn config_narrows_priority_and_picks_channel() {
        testing::reset();
        let mut r = responder(
            Config::default()
                .with("min-priority", "critical")
                .with("channel", "pager"),
        );
        run_alerts(
            &mut r,
            &[
                routed("a1", Priority::Error),
                routed("a2", Priority::Emergency),
            ],
        );
        let calls = testing::actions();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            (calls[0].target.as_str(), calls[0].alert_id.as_str()),
            ("pager", "a2")
        );
    }

    #[test]
    fn rules_config_selects_alerts() {
        testing::reset();
        let mut r = responder(Config::default().with("rules", ["sensitive-file-*"]));
        let mut other = routed("a2", Priority::Critical);
        other.alert.rule = "reverse-shell".into();
        run_alerts(&mut r, &[routed("a1", Priority::Critical), other]);
        let calls = testing::actions();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].alert_id, "a1");
        assert!(NotifyHigh::init(Config::default().with("rules", [""])).is_err());
    }

    #[test]
    fn denials_are_logged() {
        testing::reset();
        testing::deny(Capability::Notify);
        let mut r = responder(Config::default());
        run_alerts(&mut r, &[routed("a1", Priority::Critical)]);
        let logs = testing::take_logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].0, Level::Warn);
        assert_eq!(
            logs[0].1,
            "notify on `default` for alert a1 refused: denied: notify"
        );
    }

    #[test]
    fn describe_and_bad_config() {
        let info = NotifyHigh::describe();
        assert_eq!(info.alert_filter.unwrap().min_priority, Priority::Error);
        assert_eq!(info.capabilities, vec![Capability::Notify]);
        assert!(NotifyHigh::init(Config::default().with("channel", " ")).is_err());
        let err = NotifyHigh::init(Config::default().with("min-priority", 3))
            .err()
            .unwrap();
        assert!(err.contains("`min-priority` must be text"), "{err}");
    }
}
