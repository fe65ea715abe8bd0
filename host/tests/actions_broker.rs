//! The actions broker through the library API, as the responder host calls it: grants, monitor
//! mode, rate limits, unsupported actuators, the notify sink, metrics and the audit file.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use palisade::actions::{
    ActionError, ActionRequest, AuditRecord, AuditResult, Broker, BrokerSettings, ExecMatch, Mode,
    NotifySink, RequestContext, ResponderSettings, Workload,
};
use palisade::capability::{Capability, CapabilitySet};
use palisade::metrics::Metrics;

/// Notifications the sink received: (responder, channel, message, alert id).
type Notes = Arc<Mutex<Vec<(String, String, String, String)>>>;

struct RecordingSink {
    notes: Notes,
    fail: bool,
}

impl NotifySink for RecordingSink {
    fn notify(
        &self,
        responder: &str,
        channel: &str,
        message: &str,
        alert_id: &str,
    ) -> Result<(), String> {
        if self.fail {
            return Err(format!("channel {channel} is down"));
        }
        self.notes.lock().unwrap().push((
            responder.to_owned(),
            channel.to_owned(),
            message.to_owned(),
            alert_id.to_owned(),
        ));
        Ok(())
    }
}

struct Setup {
    broker: Broker,
    notes: Notes,
    metrics: Arc<Metrics>,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn setup_with(
    mode: Mode,
    per_responder: BTreeMap<String, ResponderSettings>,
    rate: u32,
    fail: bool,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit/actions.jsonl");
    let notes = Notes::default();
    let metrics = Arc::new(Metrics::new());
    let broker = Broker::new(
        BrokerSettings {
            mode,
            per_responder,
            rate_limit_per_minute: rate,
            audit_log: Some(audit.clone()),
        },
        Box::new(RecordingSink {
            notes: Arc::clone(&notes),
            fail,
        }),
    )
    .unwrap()
    .with_metrics(Arc::clone(&metrics));
    Setup {
        broker,
        notes,
        metrics,
        audit,
        _dir: dir,
    }
}

fn setup(mode: Mode) -> Setup {
    setup_with(mode, BTreeMap::new(), 0, false)
}

fn grant(caps: &[Capability]) -> CapabilitySet {
    caps.iter().copied().collect()
}

fn ctx<'a>(responder: &'a str, granted: CapabilitySet, alert_id: &'a str) -> RequestContext<'a> {
    RequestContext {
        responder,
        granted,
        alert_id,
    }
}

fn notify(message: &str) -> ActionRequest {
    ActionRequest::Notify {
        channel: "default".into(),
        message: message.into(),
    }
}

fn kill() -> ActionRequest {
    ActionRequest::KillProcess {
        pid: 4242,
        start_ns: Some(99),
        signal: 9,
    }
}

/// Every line parses as a record, and has exactly the documented fields.
fn audit_records(path: &Path) -> Vec<AuditRecord> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "last record not terminated"
    );
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let mut keys: Vec<&str> = value
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                [
                    "action",
                    "action_id",
                    "alert_id",
                    "error",
                    "mode",
                    "responder",
                    "result",
                    "target",
                    "time",
                    "ts_ns"
                ],
                "{line}"
            );
            serde_json::from_str(line).unwrap()
        })
        .collect()
}

#[test]
fn denied_without_grant_is_audited_and_counted() {
    let s = setup(Mode::Enforce);
    let c = ctx("resp", grant(&[Capability::Notify]), "alert-1");
    assert_eq!(
        s.broker.request(&c, kill()),
        Err(ActionError::Denied(Capability::KillProcess))
    );
    let records = audit_records(&s.audit);
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.responder, "resp");
    assert_eq!(r.action, "kill-process");
    assert_eq!(r.result, AuditResult::Denied);
    assert_eq!(r.mode, Mode::Enforce);
    assert_eq!(r.alert_id, "alert-1");
    assert_eq!(r.action_id, None);
    assert_eq!(
        r.target,
        serde_json::json!({"pid": 4242, "start_ns": 99, "signal": 9})
    );
    assert!(r.error.as_deref().unwrap().contains("kill-process"));
    assert_eq!(s.metrics.denied("resp", "kill-process"), 1);
    assert_eq!(s.metrics.actions("resp", "kill-process", "denied"), 1);
    assert!(s.notes.lock().unwrap().is_empty());
}

#[test]
fn granted_notify_reaches_the_sink_and_is_audited() {
    let s = setup(Mode::Enforce);
    let c = ctx("notifier", grant(&[Capability::Notify]), "alert-7");
    let receipt = s.broker.request(&c, notify("shell in nginx")).unwrap();
    assert_eq!(receipt.mode, Mode::Enforce);
    assert_eq!(
        *s.notes.lock().unwrap(),
        vec![(
            "notifier".to_owned(),
            "default".to_owned(),
            "shell in nginx".to_owned(),
            "alert-7".to_owned()
        )]
    );
    let records = audit_records(&s.audit);
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.action, "notify");
    assert_eq!(r.result, AuditResult::Ok);
    assert_eq!(r.error, None);
    assert_eq!(r.action_id.as_deref(), Some(receipt.id.as_str()));
    assert_eq!(
        r.target,
        serde_json::json!({"channel": "default", "message": "shell in nginx"})
    );
    assert_eq!(s.metrics.actions("notifier", "notify", "ok"), 1);
    // Notifications hold nothing.
    assert!(s.broker.active().is_empty());
}

#[test]
fn failing_sink_is_failed_and_audited() {
    let s = setup_with(Mode::Enforce, BTreeMap::new(), 0, true);
    let c = ctx("notifier", grant(&[Capability::Notify]), "a");
    assert_eq!(
        s.broker.request(&c, notify("m")),
        Err(ActionError::Failed("channel default is down".into()))
    );
    let records = audit_records(&s.audit);
    assert_eq!(records[0].result, AuditResult::Failed);
    assert_eq!(
        records[0].error.as_deref(),
        Some("failed: channel default is down")
    );
}

#[test]
fn monitor_mode_executes_nothing_and_records() {
    let s = setup(Mode::Monitor);
    let c = ctx("resp", grant(&Capability::ALL), "a-1");
    let receipt = s.broker.request(&c, notify("would notify")).unwrap();
    assert_eq!(receipt.mode, Mode::Monitor);
    let receipt = s.broker.request(&c, kill()).unwrap();
    assert_eq!(receipt.mode, Mode::Monitor);
    assert!(
        s.notes.lock().unwrap().is_empty(),
        "monitor mode must not notify"
    );
    let records = audit_records(&s.audit);
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.mode, Mode::Monitor);
        assert_eq!(r.result, AuditResult::Recorded);
        assert!(r.action_id.is_some());
    }
    assert_eq!(s.metrics.actions("resp", "kill-process", "recorded"), 1);
    // Grants are still checked in monitor mode.
    let c = ctx("resp", grant(&[]), "a-2");
    assert_eq!(
        s.broker.request(&c, notify("x")),
        Err(ActionError::Denied(Capability::Notify))
    );
    assert_eq!(audit_records(&s.audit)[2].result, AuditResult::Denied);
}

#[test]
fn per_responder_mode_overrides_the_global_mode() {
    let mut per = BTreeMap::new();
    per.insert(
        "careful".to_owned(),
        ResponderSettings {
            mode: Some(Mode::Monitor),
            rate_limit_per_minute: None,
        },
    );
    let s = setup_with(Mode::Enforce, per, 0, false);
    let granted = grant(&[Capability::Notify]);
    assert_eq!(s.broker.mode_for("careful"), Mode::Monitor);
    assert_eq!(s.broker.mode_for("other"), Mode::Enforce);

    let r = s
        .broker
        .request(&ctx("careful", granted, "a"), notify("one"))
        .unwrap();
    assert_eq!(r.mode, Mode::Monitor);
    let r = s
        .broker
        .request(&ctx("other", granted, "b"), notify("two"))
        .unwrap();
    assert_eq!(r.mode, Mode::Enforce);

    let notes = s.notes.lock().unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].0, "other");
    let records = audit_records(&s.audit);
    assert_eq!(
        records
            .iter()
            .map(|r| (r.responder.as_str(), r.result))
            .collect::<Vec<_>>(),
        [
            ("careful", AuditResult::Recorded),
            ("other", AuditResult::Ok)
        ]
    );
}

#[test]
fn rate_limit_per_responder() {
    let mut per = BTreeMap::new();
    per.insert(
        "chatty".to_owned(),
        ResponderSettings {
            mode: None,
            rate_limit_per_minute: Some(2),
        },
    );
    per.insert(
        "unlimited".to_owned(),
        ResponderSettings {
            mode: None,
            rate_limit_per_minute: Some(0),
        },
    );
    let s = setup_with(Mode::Enforce, per, 3, false);
    let granted = grant(&[Capability::Notify]);
    let results = |name: &str, n: usize| -> Vec<bool> {
        (0..n)
            .map(|i| {
                match s
                    .broker
                    .request(&ctx(name, granted, "a"), notify(&format!("{name} {i}")))
                {
                    Ok(_) => true,
                    Err(ActionError::RateLimited) => false,
                    Err(e) => panic!("unexpected {e}"),
                }
            })
            .collect()
    };
    // Burst = the per-minute limit; the refill (one per 20-30 s) cannot kick in during a test.
    assert_eq!(results("chatty", 4), [true, true, false, false]);
    assert_eq!(results("global", 4), [true, true, true, false]);
    assert_eq!(results("unlimited", 50), vec![true; 50]);
    // One responder's limit does not touch another's.
    assert_eq!(results("fresh", 1), [true]);

    let records = audit_records(&s.audit);
    let limited: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| r.result == AuditResult::RateLimited)
        .collect();
    assert_eq!(limited.len(), 3);
    assert!(limited
        .iter()
        .all(|r| r.action_id.is_none() && r.error.is_some()));
    assert_eq!(s.metrics.actions("chatty", "notify", "rate_limited"), 2);
    assert_eq!(s.notes.lock().unwrap().len(), 2 + 3 + 50 + 1);
}

#[test]
fn denied_requests_do_not_use_up_the_rate_limit() {
    let s = setup_with(Mode::Enforce, BTreeMap::new(), 1, false);
    let c = ctx("r", grant(&[Capability::Notify]), "a");
    for _ in 0..5 {
        assert_eq!(
            s.broker.request(&c, kill()),
            Err(ActionError::Denied(Capability::KillProcess))
        );
    }
    assert!(s.broker.request(&c, notify("still allowed")).is_ok());
}

#[test]
fn unsupported_actuators_answer_unsupported_and_are_audited() {
    let s = setup(Mode::Enforce);
    let c = ctx("resp", grant(&Capability::ALL), "a");
    let requests = [
        (kill(), "kill-process"),
        (
            ActionRequest::BlockExec(ExecMatch::Sha256("ab".repeat(32))),
            "block-exec",
        ),
        (
            ActionRequest::DenyOpen {
                path: "/etc/shadow".into(),
            },
            "deny-open",
        ),
        (
            ActionRequest::NetworkQuarantine(Workload::ContainerId("0123456789ab".into())),
            "network-quarantine",
        ),
        (
            ActionRequest::Freeze(Workload::CgroupPath("system.slice/x".into())),
            "freeze",
        ),
        (
            ActionRequest::QuarantineFile {
                path: "/tmp/dropper".into(),
            },
            "quarantine-file",
        ),
    ];
    for (req, name) in &requests {
        let err = s.broker.request(&c, req.clone()).unwrap_err();
        assert_eq!(
            err,
            ActionError::Unsupported(format!("{name} actuator not implemented yet"))
        );
    }
    assert!(
        s.broker.active().is_empty(),
        "a failed action holds nothing"
    );
    let records = audit_records(&s.audit);
    assert_eq!(records.len(), requests.len());
    for (r, (req, name)) in records.iter().zip(&requests) {
        assert_eq!(r.action, *name);
        assert_eq!(r.result, AuditResult::Unsupported);
        assert_eq!(r.mode, Mode::Enforce);
        assert_eq!(r.target, req.target());
        assert!(r.error.as_deref().unwrap().contains("not implemented yet"));
        assert_eq!(s.metrics.actions("resp", name, "unsupported"), 1);
    }
}

#[test]
fn release_of_unknown_action_is_invalid_target_with_its_own_record() {
    let s = setup(Mode::Enforce);
    let c = ctx("resp", grant(&Capability::ALL), "");
    let err = s
        .broker
        .request(
            &c,
            ActionRequest::Release {
                action_id: "act-nope-1".into(),
            },
        )
        .unwrap_err();
    assert!(matches!(err, ActionError::InvalidTarget(_)), "{err:?}");
    let records = audit_records(&s.audit);
    assert_eq!(records[0].action, "release");
    assert_eq!(records[0].result, AuditResult::InvalidTarget);
    assert_eq!(
        records[0].target,
        serde_json::json!({"action_id": "act-nope-1"})
    );
}

#[test]
fn monitor_release_is_audited_under_the_original_alert() {
    let s = setup(Mode::Monitor);
    let c = ctx("resp", grant(&[Capability::Freeze]), "alert-9");
    let receipt = s
        .broker
        .request(&c, ActionRequest::Freeze(Workload::CgroupId(77)))
        .unwrap();
    assert_eq!(s.broker.active().len(), 1);
    // The WIT `release` has no alert id; the host passes "".
    let c = ctx("resp", grant(&[Capability::Freeze]), "");
    s.broker
        .request(
            &c,
            ActionRequest::Release {
                action_id: receipt.id.clone(),
            },
        )
        .unwrap();
    let records = audit_records(&s.audit);
    assert_eq!(records[1].action, "release");
    assert_eq!(records[1].result, AuditResult::Recorded);
    assert_eq!(records[1].alert_id, "alert-9");
    assert_eq!(records[1].action_id.as_deref(), Some(receipt.id.as_str()));
    assert!(s.broker.active().is_empty());
}

#[test]
fn audit_time_fields_agree() {
    let s = setup(Mode::Enforce);
    let c = ctx("r", grant(&[Capability::Notify]), "a");
    s.broker.request(&c, notify("m")).unwrap();
    let r = &audit_records(&s.audit)[0];
    // RFC 3339 UTC with nanoseconds, the same instant as ts_ns.
    assert_eq!(
        r.time.len(),
        "2026-11-28T16:55:21.123456789Z".len(),
        "{}",
        r.time
    );
    assert!(
        r.time.ends_with('Z') && r.time.as_bytes()[10] == b'T',
        "{}",
        r.time
    );
    assert_eq!(r.time, palisade::actions::audit::rfc3339(r.ts_ns));
    let now = palisade::actions::audit::now_ns();
    assert!(r.ts_ns <= now && now - r.ts_ns < 60_000_000_000);
}

#[test]
fn audit_write_failures_are_counted_not_fatal() {
    // /dev/full accepts the open and fails every write with ENOSPC.
    if !Path::new("/dev/full").exists() {
        eprintln!("SKIPPED: no /dev/full on this machine");
        return;
    }
    let metrics = Arc::new(Metrics::new());
    let notes = Notes::default();
    let broker = Broker::new(
        BrokerSettings {
            mode: Mode::Enforce,
            per_responder: BTreeMap::new(),
            rate_limit_per_minute: 0,
            audit_log: Some("/dev/full".into()),
        },
        Box::new(RecordingSink {
            notes: Arc::clone(&notes),
            fail: false,
        }),
    )
    .unwrap()
    .with_metrics(Arc::clone(&metrics));
    let c = ctx("r", grant(&[Capability::Notify]), "a");
    assert!(broker.request(&c, notify("m")).is_ok());
    assert!(broker.request(&c, kill()).is_err());
    assert_eq!(metrics.audit_errors_total.get(), 2);
    assert_eq!(notes.lock().unwrap().len(), 1);
}

#[test]
fn concurrent_requests_each_get_one_record() {
    let s = setup(Mode::Enforce);
    let broker = Arc::new(s.broker);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let broker = Arc::clone(&broker);
            std::thread::spawn(move || {
                let name = format!("r{t}");
                let c = ctx(&name, grant(&[Capability::Notify]), "a");
                for i in 0..50 {
                    broker.request(&c, notify(&format!("{t}-{i}"))).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let records = audit_records(&s.audit);
    assert_eq!(records.len(), 200);
    let ids: std::collections::BTreeSet<_> = records
        .iter()
        .map(|r| r.action_id.clone().unwrap())
        .collect();
    assert_eq!(ids.len(), 200);
    assert_eq!(s.notes.lock().unwrap().len(), 200);
}
