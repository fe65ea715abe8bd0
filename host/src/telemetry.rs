//! Logging set-up: one `tracing` subscriber on stderr, text or JSON lines, filtered by
//! `RUST_LOG` when set and by the caller's default otherwise. Guest log lines are emitted under
//! the target [`GUEST_LOG_TARGET`] with a `plugin` field, so `plugin=warn` silences every
//! plugin. `[{plugin=name}]=debug` opens one plugin up, but EnvFilter matches field values on
//! *spans* only: it works for lines emitted inside a span carrying `plugin = name` (the
//! dispatcher's per-call span). Called once, from `main`; the library never installs a global
//! subscriber by itself.

use std::io::IsTerminal;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Text or JSON lines; parsed with the rest of `[log]` in the config.
pub use crate::config::LogFormat;

/// Target of log lines written by guests through the WIT `log` interface.
pub const GUEST_LOG_TARGET: &str = "plugin";

/// Environment variable holding the log filter.
pub const FILTER_ENV: &str = "RUST_LOG";

/// Default filter when neither `RUST_LOG` nor the CLI says otherwise.
pub const DEFAULT_FILTER: &str = "info";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("bad log filter {filter:?} from {origin}: {reason}")]
    Filter {
        /// `RUST_LOG` or `the default`.
        origin: &'static str,
        filter: String,
        reason: String,
    },
    #[error("a global log subscriber is already installed: {reason}")]
    AlreadyInstalled { reason: String },
}

/// The filter in force: `env` (the value of `RUST_LOG`) when set and non-blank, else `default`.
/// A bad `RUST_LOG` is an error rather than silently ignored, so a typo does not hide logs.
pub fn filter_from(env: Option<&str>, default: &str) -> Result<EnvFilter, TelemetryError> {
    let (origin, filter) = match env.map(str::trim).filter(|s| !s.is_empty()) {
        Some(value) => (FILTER_ENV, value),
        None => ("the default", default),
    };
    EnvFilter::builder()
        .parse(filter)
        .map_err(|e| TelemetryError::Filter {
            origin,
            filter: filter.to_owned(),
            reason: e.to_string(),
        })
}

/// Builds the subscriber writing to `writer`; `init` installs it for stderr.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// Installs the global subscriber on stderr. `filter` is the default used when `RUST_LOG` is
/// unset (pass [`DEFAULT_FILTER`] unless the config or CLI says otherwise).
pub fn init(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    let env = std::env::var(FILTER_ENV).ok();
    let filter = filter_from(env.as_deref(), filter)?;
    let ansi = std::io::stderr().is_terminal();
    // `try_init` also installs the `log` -> tracing bridge (tracing-subscriber's default
    // `tracing-log` feature), so aya's and dependencies' `log` records arrive here too.
    subscriber(format, filter, std::io::stderr, ansi)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled {
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Capture {
        type Writer = Capture;
        fn make_writer(&'w self) -> Capture {
            self.clone()
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Guest lines as the plugin host writes them: target `plugin`, a `plugin` field, inside
    /// the call's span that also carries `plugin` (field filters match span fields only).
    fn emit() {
        tracing::info_span!("call", plugin = "chatty").in_scope(|| {
            tracing::info!(target: GUEST_LOG_TARGET, plugin = "chatty", "guest info");
            tracing::warn!(target: GUEST_LOG_TARGET, plugin = "chatty", "guest warn");
        });
        tracing::info_span!("call", plugin = "quiet").in_scope(|| {
            tracing::info!(target: GUEST_LOG_TARGET, plugin = "quiet", "other guest info");
        });
        tracing::info!(component = "host", "host info");
        tracing::debug!("host debug");
    }

    fn run(format: LogFormat, filter: &str) -> String {
        let capture = Capture::default();
        let sub = subscriber(
            format,
            filter_from(None, filter).unwrap(),
            capture.clone(),
            false,
        );
        tracing::subscriber::with_default(sub, emit);
        capture.text()
    }

    #[test]
    fn default_filter_shows_info_not_debug() {
        let out = run(LogFormat::Text, "info");
        assert!(out.contains("guest info"));
        assert!(out.contains("host info"));
        assert!(!out.contains("host debug"));
    }

    #[test]
    fn plugin_warn_silences_guest_info_only() {
        let out = run(LogFormat::Text, "info,plugin=warn");
        assert!(!out.contains("guest info"), "{out}");
        assert!(!out.contains("other guest info"), "{out}");
        assert!(out.contains("guest warn"), "{out}");
        assert!(out.contains("host info"), "{out}");
    }

    #[test]
    fn one_plugin_can_be_opened_up() {
        let out = run(LogFormat::Text, "info,plugin=warn,[{plugin=quiet}]=info");
        assert!(out.contains("other guest info"), "{out}");
        assert!(
            !out.lines()
                .any(|l| l.contains("chatty") && l.contains("guest info")),
            "{out}"
        );
        assert!(out.contains("guest warn"), "{out}");
    }

    #[test]
    fn json_lines_parse() {
        let out = run(LogFormat::Json, "info");
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4, "{out}");
        let guest = &lines[0];
        assert_eq!(guest["target"], GUEST_LOG_TARGET);
        assert_eq!(guest["plugin"], "chatty");
        assert_eq!(guest["message"], "guest info");
        assert_eq!(guest["level"], "INFO");
    }

    #[test]
    fn env_wins_over_default_and_bad_filters_are_errors() {
        assert!(filter_from(Some("  "), "info").is_ok());
        let err = filter_from(Some("info,plugin=loud"), "info").unwrap_err();
        assert!(err.to_string().contains("RUST_LOG"), "{err}");
        let err = filter_from(None, "=nope=").unwrap_err();
        assert!(err.to_string().contains("the default"), "{err}");
        let f = filter_from(Some("debug"), "warn").unwrap();
        assert_eq!(f.to_string(), "debug");
    }
}
