//! The webhook notify sink against a real HTTP receiver on 127.0.0.1: outage plus restart loses
//! nothing (every notification arrives, duplicates only under the same idempotency key), the
//! Slack shape, 5xx retried, 4xx set aside, and `notify` never waits on the network.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, like the tests"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade::actions::webhook::{
    idempotency_key, WebhookFormat, WebhookSettings, WebhookSink, REJECTED_DIR,
};
use palisade::actions::NotifySink;

#[derive(Debug, Clone)]
struct Received {
    path: String,
    key: Option<String>,
    body: serde_json::Value,
}

/// A tiny HTTP/1.1 server: answers `fail_first` requests with `fail_status`, and any request
/// whose body contains `poison` with 503, the rest with 200.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(addr: &str, fail_first: usize, fail_status: u16) -> Receiver {
        Receiver::start_with(addr, fail_first, fail_status, None)
    }

    fn start_with(
        addr: &str,
        fail_first: usize,
        fail_status: u16,
        poison: Option<&'static str>,
    ) -> Receiver {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let (g, s) = (Arc::clone(&got), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let (stream, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut headers = BTreeMap::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (k, v) = line.split_once(':').unwrap();
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
                let len: usize = headers["content-length"].parse().unwrap();
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let poisoned = poison.is_some_and(|p| String::from_utf8_lossy(&body).contains(p));
                let status = if poisoned {
                    503
                } else if n < fail_first {
                    fail_status
                } else {
                    200
                };
                let mut stream = stream;
                if status == 200 {
                    g.lock().unwrap().push(Received {
                        path: request_line.split_whitespace().nth(1).unwrap().to_owned(),
                        key: headers.get("idempotency-key").cloned(),
                        body: serde_json::from_slice(&body).unwrap(),
                    });
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
        });
        Receiver {
            addr,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn settings(addr: SocketAddr, spool: &Path, format: WebhookFormat) -> WebhookSettings {
    WebhookSettings {
        url: format!("http://{addr}/hook/x"),
        format,
        spool_dir: spool.to_owned(),
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
    }
}

fn spool_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .count()
}

#[test]
fn outage_and_restart_lose_nothing_and_duplicates_share_a_key() {
    let spool = tempfile::tempdir().unwrap();
    // A port nobody listens on (yet): connections are refused.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sink = WebhookSink::start(settings(addr, spool.path(), WebhookFormat::Generic)).unwrap();
    let mut expected = BTreeSet::new();
    for i in 0..5 {
        let alert = format!("alert-{i}");
        let t0 = Instant::now();
        sink.notify("passwd-guard", "ops", &format!("message {i}"), &alert)
            .unwrap();
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "notify must not wait for the network"
        );
        expected.insert(idempotency_key(&alert, "passwd-guard", "ops"));
    }
    // The sender keeps failing and everything stays spooled.
    let t0 = Instant::now();
    while sink.stats().attempts_failed.load(Ordering::Relaxed) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no retries seen");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sink.pending(), 5);
    assert_eq!(spool_files(spool.path()), 5);
    // Pending notifications name processes and users: only root reads them.
    {
        use std::os::unix::fs::MetadataExt;
        let sub = spool.path().join("sub");
        drop(WebhookSink::start(settings(addr, &sub, WebhookFormat::Generic)).unwrap());
        assert_eq!(std::fs::metadata(&sub).unwrap().mode() & 0o777, 0o700);
        for entry in std::fs::read_dir(spool.path()).unwrap() {
            let meta = entry.unwrap().metadata().unwrap();
            if meta.is_file() {
                assert_eq!(meta.mode() & 0o777, 0o600);
            }
        }
    }
    drop(sink); // the daemon stops with the endpoint still down

    let receiver = Receiver::start(&addr.to_string(), 0, 200);
    let sink = WebhookSink::start(settings(addr, spool.path(), WebhookFormat::Generic)).unwrap();
    sink.notify("passwd-guard", "ops", "after restart", "alert-5")
        .unwrap();
    expected.insert(idempotency_key("alert-5", "passwd-guard", "ops"));
    assert!(sink.flush(Duration::from_secs(10)), "spool not drained");
    assert_eq!(spool_files(spool.path()), 0);

    let got = receiver.received();
    let keys: BTreeSet<String> = got.iter().map(|r| r.key.clone().unwrap()).collect();
    assert_eq!(keys, expected, "every notification delivered");
    let mut ids_per_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &got {
        assert_eq!(r.path, "/hook/x");
        let b = &r.body;
        assert_eq!(b["idempotency_key"], r.key.clone().unwrap().as_str());
        assert_eq!(b["responder"], "passwd-guard");
        assert_eq!(b["channel"], "ops");
        assert_eq!(
            b["idempotency_key"],
            format!("{}:passwd-guard:ops", b["alert_id"].as_str().unwrap()).as_str()
        );
        assert!(b["time"].as_str().unwrap().ends_with('Z'));
        assert!(
            b["message"].as_str().unwrap().starts_with("message ")
                || b["message"] == "after restart"
        );
        ids_per_key
            .entry(r.key.clone().unwrap())
            .or_default()
            .insert(b["id"].as_str().unwrap().to_owned());
    }
    // A resend is the same notification (same id) under the same key.
    for (key, ids) in ids_per_key {
        assert_eq!(ids.len(), 1, "{key}: {ids:?}");
    }
    // Order is kept: the spooled ones before the new one.
    assert_eq!(got.last().unwrap().body["alert_id"], "alert-5");
}

#[test]
fn slack_shape() {
    let spool = tempfile::tempdir().unwrap();
    let receiver = Receiver::start("127.0.0.1:0", 0, 200);
    let sink =
        WebhookSink::start(settings(receiver.addr, spool.path(), WebhookFormat::Slack)).unwrap();
    sink.notify("resp", "security", "root shell on web-1", "a-9")
        .unwrap();
    assert!(sink.flush(Duration::from_secs(10)));
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let body = got[0].body.as_object().unwrap();
    assert_eq!(body.keys().collect::<Vec<_>>(), ["text"]);
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("root shell on web-1"), "{text}");
    assert!(text.contains("a-9"), "{text}");
    assert_eq!(got[0].key.as_deref(), Some("a-9:resp:security"));
}

#[test]
fn server_errors_are_retried_with_the_same_key() {
    let spool = tempfile::tempdir().unwrap();
    let receiver = Receiver::start("127.0.0.1:0", 3, 503);
    let sink = WebhookSink::start(settings(
        receiver.addr,
        spool.path(),
        WebhookFormat::Generic,
    ))
    .unwrap();
    sink.notify("resp", "ops", "m", "a-1").unwrap();
    assert!(sink.flush(Duration::from_secs(10)));
    assert_eq!(sink.stats().attempts_failed.load(Ordering::Relaxed), 3);
    assert_eq!(sink.stats().delivered.load(Ordering::Relaxed), 1);
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key.as_deref(), Some("a-1:resp:ops"));
}

#[test]
fn client_errors_are_set_aside_not_retried_forever() {
    let spool = tempfile::tempdir().unwrap();
    let receiver = Receiver::start("127.0.0.1:0", usize::MAX, 400);
    let sink = WebhookSink::start(settings(
        receiver.addr,
        spool.path(),
        WebhookFormat::Generic,
    ))
    .unwrap();
    sink.notify("resp", "ops", "m", "a-1").unwrap();
    assert!(sink.flush(Duration::from_secs(10)));
    assert_eq!(sink.stats().rejected.load(Ordering::Relaxed), 1);
    assert_eq!(spool_files(&spool.path().join(REJECTED_DIR)), 1);
    assert!(receiver.received().is_empty());
}

#[test]
fn https_and_garbage_urls_are_refused_at_start() {
    let spool = tempfile::tempdir().unwrap();
    for url in ["https://hooks.slack.com/x", "not a url"] {
        let mut s = settings(
            "127.0.0.1:9".parse().unwrap(),
            spool.path(),
            WebhookFormat::Slack,
        );
        s.url = url.into();
        let err = WebhookSink::start(s).err().unwrap().to_string();
        assert!(err.contains(url), "{err}");
    }
}

/// One notification the endpoint keeps failing (503 every time) does not hold back the ones
/// behind it; it stays spooled and is retried.
#[test]
fn a_notification_that_keeps_failing_does_not_block_the_others() {
    let spool = tempfile::tempdir().unwrap();
    let receiver = Receiver::start_with("127.0.0.1:0", 0, 200, Some("poison"));
    let sink = WebhookSink::start(settings(
        receiver.addr,
        spool.path(),
        WebhookFormat::Generic,
    ))
    .unwrap();
    sink.notify("r", "ops", "poison", "a-0").unwrap();
    for i in 1..=3 {
        sink.notify("r", "ops", &format!("fine {i}"), &format!("a-{i}"))
            .unwrap();
    }
    let t0 = Instant::now();
    while receiver.received().len() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "held back behind the failing one: {:?}",
            receiver.received()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let messages: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.body["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(messages, ["fine 1", "fine 2", "fine 3"]);
    assert_eq!(sink.pending(), 1);
    assert_eq!(spool_files(spool.path()), 1);
}

/// While the endpoint is down (connections refused) every notification fails alike: when it
/// comes back they arrive in the order they were made.
#[test]
fn an_outage_keeps_the_order() {
    let spool = tempfile::tempdir().unwrap();
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sink = WebhookSink::start(settings(addr, spool.path(), WebhookFormat::Generic)).unwrap();
    for i in 1..=4 {
        sink.notify("r", "ops", &format!("m{i}"), &format!("a-{i}"))
            .unwrap();
    }
    let t0 = Instant::now();
    // One failure is enough: a queue that rotated on it would now start at m2.
    while sink.stats().attempts_failed.load(Ordering::Relaxed) < 1 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no retries seen");
        std::thread::sleep(Duration::from_millis(10));
    }
    let receiver = Receiver::start(&addr.to_string(), 0, 200);
    assert!(sink.flush(Duration::from_secs(10)), "spool not drained");
    let messages: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.body["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(messages, ["m1", "m2", "m3", "m4"]);
}
