//! The webhook [`NotifySink`]: responders' notifications are POSTed as JSON to an HTTP
//! endpoint, in a generic shape or a Slack-compatible one. Delivery is at-least-once: each
//! notification is first written atomically to an on-disk spool (one file per notification),
//! then sent by a background thread that retries with exponential backoff on connection errors,
//! timeouts, 408, 429 and 5xx, and deletes the file only after a 2xx. A sink started on a spool
//! that still holds files (endpoint was down, daemon restarted) resends them first. Every POST
//! carries an `Idempotency-Key` header (alert id + channel) so a receiver can drop the duplicates
//! at-least-once delivery may produce.
//!
//! Responders never wait on the network: [`NotifySink::notify`] returns as soon as the
//! notification is spooled. Plain `http://` only (no TLS in this build): point the sink at a
//! local relay for HTTPS endpoints.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};

use super::audit::{now_ns, rfc3339};
use super::NotifySink;

/// Spool files end in this; anything else in the spool directory is ignored.
const SPOOL_SUFFIX: &str = ".json";
/// Prefix of a spool file being written; leftovers from a crash are removed at start.
const TMP_PREFIX: &str = ".tmp-";
/// Notifications the endpoint rejected for good (4xx other than 408/429) are moved here, so
/// they are neither retried forever nor silently lost.
pub const REJECTED_DIR: &str = "rejected";
/// Most bytes of a response read (only the status line matters).
const MAX_RESPONSE: u64 = 64 * 1024;

/// Body shape of the POST; defined with the rest of `[notify]` in the config.
pub use crate::config::WebhookFormat;

/// How the sink behaves; built by the daemon from `[notify]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// `http://host[:port][/path]`.
    pub url: String,
    pub format: WebhookFormat,
    /// One file per pending notification; created if missing.
    pub spool_dir: PathBuf,
    /// Wait before the first retry; doubled after each failure up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Connect, write and read timeout of one attempt.
    pub timeout: Duration,
}

impl WebhookSettings {
    /// The settings `[notify]` describes; `None` when no `webhook_url` is configured.
    pub fn from_config(notify: &crate::config::NotifyConfig) -> Option<WebhookSettings> {
        Some(WebhookSettings {
            url: notify.webhook_url.clone()?,
            format: notify.format,
            spool_dir: notify.spool_dir.clone(),
            retry_initial: Duration::from_millis(notify.retry_initial_ms),
            retry_max: Duration::from_millis(notify.retry_max_ms),
            timeout: Duration::from_millis(notify.timeout_ms),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot create webhook spool directory {path}: {source}")]
    SpoolDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read webhook spool directory {path}: {source}")]
    SpoolRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the webhook thread: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
}

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, WebhookError> {
        let bad = |reason: &str| WebhookError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(bad(
                "https is not supported by this build (no TLS); use an http:// relay",
            ));
        } else {
            return Err(bad("an http:// URL expected"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            // An IPv6 literal without a port ("[::1]") has colons but ends in ']'.
            Some((h, p)) if !p.ends_with(']') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port must be a number 1..=65535"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() || port == 0 {
            return Err(bad("a host and a non-zero port expected"));
        }
        if path.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(bad(
                "the path must not contain spaces or control characters",
            ));
        }
        Ok(HttpUrl {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// The `Host` header value.
    fn authority(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One notification as spooled (and, in the generic format, as sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique per notification (also the spool file's name).
    pub id: String,
    /// Alert id + channel: the same for every resend of a notification.
    pub idempotency_key: String,
    /// RFC 3339, when the responder asked.
    pub time: String,
    pub responder: String,
    pub channel: String,
    pub message: String,
    pub alert_id: String,
}

impl Notification {
    /// The POST body in `format`.
    pub fn body(&self, format: WebhookFormat) -> String {
        let value = match format {
            WebhookFormat::Generic => serde_json::to_value(self).unwrap_or_default(),
            WebhookFormat::Slack => serde_json::json!({
                "text": format!(
                    "[palisade] {} ({} / {}, alert {}): {}",
                    self.channel, self.responder, self.time, self.alert_id, self.message
                ),
            }),
        };
        value.to_string()
    }
}

/// The idempotency key of `responder`'s notification about `alert_id` on `channel`: the same
/// on every resend, and distinct for two responders notifying about one alert (with alert and
/// channel alone, a receiver that drops duplicates dropped the second, say kill-critical's
/// kill outcome after notify-high's alert).
pub fn idempotency_key(alert_id: &str, responder: &str, channel: &str) -> String {
    format!("{alert_id}:{responder}:{channel}")
}

enum Msg {
    New(PathBuf, Notification),
    Stop,
}

/// Counters the sink keeps (for tests and metrics).
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    pub attempts_failed: AtomicU64,
    pub rejected: AtomicU64,
}

/// Spools and POSTs notifications; see the module docs.
pub struct WebhookSink {
    spool_dir: PathBuf,
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    seq: AtomicU64,
    stats: Arc<WebhookStats>,
}

impl WebhookSink {
    /// Creates the spool directory, queues whatever it already holds (oldest first) and starts
    /// the sender thread.
    pub fn start(settings: WebhookSettings) -> Result<WebhookSink, WebhookError> {
        let url = HttpUrl::parse(&settings.url)?;
        let dir = settings.spool_dir.clone();
        super::create_private_dir(&dir).map_err(|source| WebhookError::SpoolDir {
            path: dir.clone(),
            source,
        })?;
        let backlog = read_spool(&dir)?;
        if !backlog.is_empty() {
            tracing::info!(
                spool = %dir.display(),
                pending = backlog.len(),
                "webhook: resending notifications left in the spool"
            );
        }
        let (tx, rx) = unbounded();
        let stats = Arc::new(WebhookStats::default());
        let sender = Courier {
            url,
            settings,
            rx,
            queue: backlog.into(),
            stats: Arc::clone(&stats),
        };
        let thread = std::thread::Builder::new()
            .name("palisade-webhook".into())
            .spawn(move || sender.run())
            .map_err(|source| WebhookError::Thread { source })?;
        Ok(WebhookSink {
            spool_dir: dir,
            tx,
            thread: Some(thread),
            seq: AtomicU64::new(0),
            stats,
        })
    }

    /// Notifications still in the spool (not yet acknowledged with a 2xx).
    pub fn pending(&self) -> usize {
        read_spool(&self.spool_dir).map_or(0, |v| v.len())
    }

    /// Waits until the spool is empty or `timeout` passes; true when empty.
    pub fn flush(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.pending() == 0 {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }

    pub fn spool_dir(&self) -> &Path {
        &self.spool_dir
    }

    /// Writes `n` to the spool atomically (temporary file, fsync, rename) and returns its path.
    fn spool(&self, n: &Notification) -> std::io::Result<PathBuf> {
        let name = format!("{}{SPOOL_SUFFIX}", n.id);
        let tmp = self.spool_dir.join(format!("{TMP_PREFIX}{name}"));
        let dest = self.spool_dir.join(name);
        let bytes = serde_json::to_vec(n).map_err(std::io::Error::other)?;
        {
            // 0600: a pending notification names processes and users.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &dest)?;
        // The rename is durable only once the directory is synced.
        if let Ok(d) = std::fs::File::open(&self.spool_dir) {
            let _ = d.sync_all();
        }
        Ok(dest)
    }
}

impl NotifySink for WebhookSink {
    fn notify(
        &self,
        responder: &str,
        channel: &str,
        message: &str,
        alert_id: &str,
    ) -> Result<(), String> {
        let ts = now_ns();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        // Time first so the spool sorts oldest first; pid and sequence make it unique across
        // threads and daemon restarts.
        let n = Notification {
            id: format!("{ts:020}-{}-{seq:06}", std::process::id()),
            idempotency_key: idempotency_key(alert_id, responder, channel),
            time: rfc3339(ts),
            responder: responder.to_owned(),
            channel: channel.to_owned(),
            message: message.to_owned(),
            alert_id: alert_id.to_owned(),
        };
        let path = self.spool(&n).map_err(|e| {
            tracing::error!(spool = %self.spool_dir.display(), error = %e, "webhook: cannot spool");
            format!("cannot spool notification: {e}")
        })?;
        self.tx
            .send(Msg::New(path, n))
            .map_err(|_| "webhook sender has stopped".to_owned())
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The spool's notifications, oldest first. Removes leftovers of interrupted writes; skips
/// (and logs) unreadable files rather than failing the start.
fn read_spool(dir: &Path) -> Result<Vec<(PathBuf, Notification)>, WebhookError> {
    let entries = std::fs::read_dir(dir).map_err(|source| WebhookError::SpoolRead {
        path: dir.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(TMP_PREFIX) {
            // Never renamed into place: its notify call failed, so nobody relies on it.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if !name.ends_with(SPOOL_SUFFIX) || !path.is_file() {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Notification>(&b).map_err(|e| e.to_string()))
        {
            Ok(n) => out.push((path, n)),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "webhook: unreadable spool file skipped");
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Result of one POST.
enum Attempt {
    Delivered(u16),
    /// Worth retrying: connection error, timeout (`answered` false: the endpoint is down for
    /// every notification), or 408, 429, 5xx (`answered`: the endpoint is up and turned this
    /// one away, maybe for its content).
    Retry {
        reason: String,
        answered: bool,
    },
    /// The endpoint refused this notification for good.
    Rejected(u16),
}

impl Attempt {
    /// The endpoint could not be reached or did not answer: a `Retry` that says nothing about
    /// this notification in particular.
    fn unreachable(reason: String) -> Attempt {
        Attempt::Retry {
            reason,
            answered: false,
        }
    }
}

struct Courier {
    url: HttpUrl,
    settings: WebhookSettings,
    rx: Receiver<Msg>,
    queue: VecDeque<(PathBuf, Notification)>,
    stats: Arc<WebhookStats>,
}

impl Courier {
    fn run(mut self) {
        let mut backoff = self.settings.retry_initial;
        loop {
            // Take whatever arrived without waiting.
            loop {
                match self.rx.try_recv() {
                    Ok(Msg::New(p, n)) => self.queue.push_back((p, n)),
                    Ok(Msg::Stop) => return,
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                }
            }
            let Some((path, n)) = self.queue.front().cloned() else {
                match self.rx.recv() {
                    Ok(Msg::New(p, n)) => self.queue.push_back((p, n)),
                    Ok(Msg::Stop) | Err(_) => return,
                }
                continue;
            };
            match post(&self.url, &self.settings, &n) {
                Attempt::Delivered(status) => {
                    tracing::debug!(id = %n.id, status, "webhook: delivered");
                    // Counted before the file goes: `flush` sees the spool empty only after.
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    let _ = std::fs::remove_file(&path);
                    self.queue.pop_front();
                    backoff = self.settings.retry_initial;
                }
                Attempt::Rejected(status) => {
                    tracing::error!(id = %n.id, status, url = %self.settings.url,
                        "webhook: endpoint rejected the notification; kept in the rejected/ spool");
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    let dir = self.settings.spool_dir.join(REJECTED_DIR);
                    let moved = super::create_private_dir(&dir).and_then(|()| {
                        std::fs::rename(&path, dir.join(path.file_name().unwrap_or_default()))
                    });
                    if moved.is_err() {
                        let _ = std::fs::remove_file(&path);
                    }
                    self.queue.pop_front();
                    backoff = self.settings.retry_initial;
                }
                Attempt::Retry { reason, answered } => {
                    self.stats.attempts_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(id = %n.id, %reason, retry_in_ms = backoff.as_millis() as u64,
                        "webhook: delivery failed, will retry");
                    // Sleep on the channel so new notifications are queued and Stop is prompt.
                    let until = Instant::now() + backoff;
                    loop {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        match self.rx.recv_timeout(left) {
                            Ok(Msg::New(p, n)) => self.queue.push_back((p, n)),
                            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                            Err(RecvTimeoutError::Timeout) => break,
                        }
                    }
                    backoff = (backoff * 2).min(self.settings.retry_max);
                    // Turned away by an endpoint that answers: the failed one goes to the back,
                    // so a notification it keeps refusing does not hold back every one behind
                    // it. An endpoint that is down fails them all alike: the order is kept.
                    if answered {
                        if let Some(failed) = self.queue.pop_front() {
                            self.queue.push_back(failed);
                        }
                    }
                }
            }
        }
    }
}

/// One HTTP/1.1 POST with `Connection: close`; only the status line of the answer is read.
fn post(url: &HttpUrl, settings: &WebhookSettings, n: &Notification) -> Attempt {
    let body = n.body(settings.format);
    let addrs = match (url.host.as_str(), url.port).to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return Attempt::unreachable(format!("cannot resolve {}: {e}", url.host)),
    };
    let mut last = format!("no address for {}", url.host);
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, settings.timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    let Some(mut stream) = stream else {
        return Attempt::unreachable(last);
    };
    let _ = stream.set_read_timeout(Some(settings.timeout));
    let _ = stream.set_write_timeout(Some(settings.timeout));
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: palisade/{}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\
         Idempotency-Key: {}\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority(),
        env!("CARGO_PKG_VERSION"),
        body.len(),
        header_safe(&n.idempotency_key),
    );
    if let Err(e) = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .and_then(|()| stream.flush())
    {
        return Attempt::unreachable(format!("write: {e}"));
    }
    let mut response = Vec::new();
    let mut limited = (&mut stream).take(MAX_RESPONSE);
    let mut buf = [0u8; 1024];
    // Read until the status line is complete (or EOF); the rest is ignored.
    loop {
        match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                response.extend_from_slice(&buf[..k]);
                if response.windows(2).any(|w| w == b"\r\n") {
                    break;
                }
            }
            Err(e) => return Attempt::unreachable(format!("read: {e}")),
        }
    }
    let Some(status) = parse_status(&response) else {
        return Attempt::unreachable("no HTTP status line in the response".into());
    };
    match status {
        200..=299 => Attempt::Delivered(status),
        408 | 429 | 500..=599 => Attempt::Retry {
            reason: format!("HTTP {status}"),
            answered: true,
        },
        _ => Attempt::Rejected(status),
    }
}

/// Header values must not carry CR/LF (an alert id comes from a plugin).
fn header_safe(v: &str) -> String {
    v.chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect()
}

/// `HTTP/1.x NNN ...` → NNN.
fn parse_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/hooks/x?y=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/hooks/x?y=1")
        );
        let u = HttpUrl::parse("http://example.com").unwrap();
        assert_eq!(
            (u.port, u.path.as_str(), u.authority()),
            (80, "/", "example.com".into())
        );
        let u = HttpUrl::parse("http://[::1]:9/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[::1]", 9));
        for bad in [
            "https://x/",
            "ftp://x",
            "http://:80/",
            "http://x:0/",
            "http://x:99999/",
            "http://u@x/",
            "http://x/a b",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[test]
    fn bodies() {
        let n = Notification {
            id: "1".into(),
            idempotency_key: idempotency_key("a-1", "r", "ops"),
            time: "t".into(),
            responder: "r".into(),
            channel: "ops".into(),
            message: "m \"q\"".into(),
            alert_id: "a-1".into(),
        };
        let g: serde_json::Value = serde_json::from_str(&n.body(WebhookFormat::Generic)).unwrap();
        assert_eq!(g["idempotency_key"], "a-1:r:ops");
        assert_eq!(g["message"], "m \"q\"");
        let s: serde_json::Value = serde_json::from_str(&n.body(WebhookFormat::Slack)).unwrap();
        assert_eq!(s.as_object().unwrap().len(), 1);
        assert!(s["text"].as_str().unwrap().contains("m \"q\""));
        assert_eq!(header_safe("a\r\nX: y"), "a__X: y");
    }
}
