//! Alert outputs: the Palisade JSON format round-trips, the Falco format has exactly the keys and
//! types falcosidekick reads, files are appended to and flushed, and one alert of each format
//! matches its golden file (`BLESS=1 cargo test -p palisade-host --test outputs` rewrites them).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, like the tests"
)]

use std::path::PathBuf;
use std::sync::Arc;

use palisade::alert::{Alert, Origin, Priority};
use palisade::event::{
    Ancestor, ConnectionData, Event, EventData, FileOpenData, Process, Protocol,
};
use palisade::output::jsonl::parse_alert;
use palisade::output::{open_output, render, Format, OutputTarget};

const CONTAINER: &str = "3f9a1c2b7d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

fn bash_process() -> Arc<Process> {
    Arc::new(Process {
        pid: 4242,
        tid: 4242,
        ppid: 4241,
        uid: 33,
        gid: 33,
        euid: 33,
        comm: "bash".into(),
        exe: "/usr/bin/bash".into(),
        args: vec!["bash".into(), "-i".into()],
        cwd: "/var/www/html".into(),
        cgroup_id: 7731,
        container_id: Some(CONTAINER.into()),
        start_ns: 98_765_000_000,
        ancestors: vec![
            Ancestor {
                pid: 4241,
                comm: "sh".into(),
                exe: "/usr/bin/dash".into(),
            },
            Ancestor {
                pid: 812,
                comm: "php-fpm8.2".into(),
                exe: "/usr/sbin/php-fpm8.2".into(),
            },
        ],
    })
}

fn connect_event() -> Event {
    Event {
        ts_ns: 1_795_885_200_123_456_789,
        process: bash_process(),
        data: EventData::NetConnect(ConnectionData {
            protocol: Protocol::Tcp,
            saddr: "172.17.0.5".into(),
            sport: 51_514,
            daddr: "203.0.113.66".into(),
            dport: 4444,
            ..ConnectionData::default()
        }),
    }
}

fn sample_alert() -> Alert {
    Alert {
        id: "01JDZ7Q8X4-000042".into(),
        ts_ns: 1_795_885_200_200_000_001,
        rule: "reverse-shell".into(),
        priority: Priority::Critical,
        message: "Reverse shell: bash -i with a socket on stdin/stdout (pid 4242, parent sh)"
            .into(),
        tags: vec!["T1059.004".into(), "mitre_execution".into()],
        // Deliberately not sorted: the plugin's order must survive.
        fields: vec![
            ("shell".into(), "/usr/bin/bash".into()),
            ("remote".into(), "203.0.113.66:4444".into()),
            ("dup_fds".into(), "0,1,2".into()),
        ],
        plugin: Origin {
            name: "shell-spawn".into(),
            version: "0.1.0".into(),
        },
        hostname: "web-01".into(),
        event: Some(Arc::new(connect_event())),
    }
}

fn host_alert() -> Alert {
    Alert {
        id: "host-7".into(),
        ts_ns: 1_795_885_260_000_000_000,
        rule: "palisade.plugin_failure".into(),
        priority: Priority::Error,
        message: "plugin sensitive-files quarantined after 5 consecutive failures".into(),
        tags: vec![],
        fields: vec![("plugin".into(), "sensitive-files".into())],
        plugin: Origin {
            name: "palisade".into(),
            version: "0.1.0".into(),
        },
        hostname: "web-01".into(),
        event: None,
    }
}

fn json(alert: &Alert, format: Format) -> serde_json::Value {
    serde_json::from_str(&render(alert, format).unwrap()).unwrap()
}

#[test]
fn json_format_round_trips() {
    for alert in [sample_alert(), host_alert()] {
        let line = render(&alert, Format::Json).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(parse_alert(&line).unwrap(), alert);
    }
}

#[test]
fn json_format_shape() {
    let line = render(&sample_alert(), Format::Json).unwrap();
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "id", "time", "ts_ns", "rule", "priority", "message", "tags", "fields", "plugin",
        "hostname", "event",
    ];
    expected.sort_unstable();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected);
    assert_eq!(value["time"], "2026-11-28T17:00:00.200000001Z");
    assert_eq!(value["ts_ns"], 1_795_885_200_200_000_001u64);
    assert_eq!(value["priority"], "critical");
    assert_eq!(value["plugin"]["name"], "shell-spawn");
    assert_eq!(value["plugin"]["version"], "0.1.0");
    assert_eq!(value["event"]["kind"], "net_connect");
    assert_eq!(value["event"]["data"]["dport"], 4444);
    assert_eq!(value["event"]["process"]["container_id"], CONTAINER);
    // Field order is the plugin's, checked on the raw text (serde_json's map would sort).
    let shell = line.find("\"shell\"").unwrap();
    let remote = line.find("\"remote\"").unwrap();
    let dup = line.find("\"dup_fds\"").unwrap();
    assert!(shell < remote && remote < dup);
    assert_eq!(
        json(&host_alert(), Format::Json)["event"],
        serde_json::Value::Null
    );
}

#[test]
fn json_duplicate_field_keys_keep_the_last_value() {
    let mut alert = sample_alert();
    alert.fields = vec![
        ("k".into(), "first".into()),
        ("j".into(), "x".into()),
        ("k".into(), "second".into()),
    ];
    let line = render(&alert, Format::Json).unwrap();
    assert_eq!(line.matches("\"k\"").count(), 1);
    let back = parse_alert(&line).unwrap();
    assert_eq!(
        back.fields,
        vec![("k".into(), "second".into()), ("j".into(), "x".into())]
    );
}

/// The keys falcosidekick's FalcoPayload reads, and nothing else.
const FALCO_KEYS: [&str; 8] = [
    "hostname",
    "output",
    "output_fields",
    "priority",
    "rule",
    "source",
    "tags",
    "time",
];

fn assert_falco_shape(value: &serde_json::Value) {
    let object = value.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, FALCO_KEYS);
    for key in ["hostname", "output", "priority", "rule", "source", "time"] {
        assert!(object[key].is_string(), "{key} must be a string");
    }
    assert!(object["tags"]
        .as_array()
        .unwrap()
        .iter()
        .all(serde_json::Value::is_string));
    assert!(object["output_fields"].is_object());
    assert_eq!(object["source"], "syscall");
    // Go's time.Time accepts RFC 3339 with nanoseconds.
    let time = object["time"].as_str().unwrap();
    assert_eq!(time.len(), "2026-11-28T17:00:00.123456789Z".len(), "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T');
}

#[test]
fn falco_format_has_exactly_falcosidekicks_keys_and_types() {
    let mut alert = sample_alert();
    alert
        .fields
        .push(("fd.name".into(), "plugin-says-so".into()));
    alert
        .fields
        .push(("palisade.plugin".into(), "impostor".into()));
    let value = json(&alert, Format::Falco);
    assert_falco_shape(&value);
    // Falco's time is the event's.
    assert_eq!(value["time"], "2026-11-28T17:00:00.123456789Z");
    assert_eq!(value["priority"], "Critical");
    assert_eq!(
        value["output"],
        "17:00:00.123456789: Critical Reverse shell: bash -i with a socket on stdin/stdout (pid 4242, parent sh)"
    );
    assert_eq!(value["hostname"], "web-01");
    assert_eq!(
        value["tags"],
        serde_json::json!(["T1059.004", "mitre_execution"])
    );

    let f = &value["output_fields"];
    assert_eq!(f["evt.time"], 1_795_885_200_123_456_789u64);
    assert_eq!(f["evt.type"], "connect");
    assert_eq!(f["proc.pid"], 4242);
    assert_eq!(f["proc.ppid"], 4241);
    assert_eq!(f["proc.name"], "bash");
    assert_eq!(f["proc.exepath"], "/usr/bin/bash");
    assert_eq!(f["proc.cmdline"], "bash -i");
    assert_eq!(f["proc.cwd"], "/var/www/html/");
    assert_eq!(f["proc.pname"], "sh");
    assert_eq!(f["user.uid"], 33);
    assert_eq!(f["container.id"], &CONTAINER[..12]);
    assert_eq!(f["container.full_id"], CONTAINER);
    assert_eq!(f["fd.rip"], "203.0.113.66");
    assert_eq!(f["fd.rport"], 4444);
    assert_eq!(f["fd.l4proto"], "tcp");
    // The plugin's own fields, under their keys; a key derived from the event keeps the derived,
    // typed value (plugins often send numbers as text).
    assert_eq!(f["remote"], "203.0.113.66:4444");
    assert_eq!(f["fd.name"], "172.17.0.5:51514->203.0.113.66:4444");
    assert_eq!(f["proc.pid"], 4242);
    // Origin, which a plugin field cannot override.
    assert_eq!(f["palisade.plugin"], "shell-spawn");
    assert_eq!(f["palisade.plugin_version"], "0.1.0");
    assert_eq!(f["palisade.alert_id"], "01JDZ7Q8X4-000042");
    assert!(
        f.get("user.loginuid").is_none(),
        "unknown fields are left out"
    );
    // Keys sorted, as Falco prints them.
    let line = render(&alert, Format::Falco).unwrap();
    let container = line.find("\"container.id\"").unwrap();
    let evt = line.find("\"evt.time\"").unwrap();
    let user = line.find("\"user.uid\"").unwrap();
    assert!(container < evt && evt < user);
}

#[test]
fn falco_fields_without_a_container_or_an_event() {
    let mut alert = sample_alert();
    let mut event = connect_event();
    let mut process = (*event.process).clone();
    process.container_id = None;
    event.process = Arc::new(process);
    event.data = EventData::FileOpen(FileOpenData {
        path: "/etc/shadow".into(),
        flags: 0,
        ..FileOpenData::default()
    });
    alert.event = Some(Arc::new(event));
    alert.fields.clear();
    let f = json(&alert, Format::Falco)["output_fields"].clone();
    assert_eq!(f["container.id"], "host");
    assert!(f.get("container.full_id").is_none());
    assert_eq!(f["fd.name"], "/etc/shadow");
    assert_eq!(f["evt.type"], "openat");
    assert_eq!(f["evt.is_open_read"], true);
    assert_eq!(f["evt.is_open_write"], false);

    let host = json(&host_alert(), Format::Falco);
    assert_falco_shape(&host);
    assert_eq!(host["time"], "2026-11-28T17:01:00.000000000Z");
    assert_eq!(host["output_fields"]["plugin"], "sensitive-files");
    assert_eq!(
        host["output_fields"]["evt.time"],
        1_795_885_260_000_000_000u64
    );
    assert_eq!(host["priority"], "Error");
}

#[test]
fn falco_priorities_use_falcos_names() {
    let expected = [
        "Emergency",
        "Alert",
        "Critical",
        "Error",
        "Warning",
        "Notice",
        "Informational",
        "Debug",
    ];
    for (priority, name) in Priority::ALL.into_iter().zip(expected) {
        let mut alert = host_alert();
        alert.priority = priority;
        let value = json(&alert, Format::Falco);
        assert_eq!(value["priority"], name);
        assert!(value["output"]
            .as_str()
            .unwrap()
            .contains(&format!(": {name} ")));
    }
}

#[test]
fn file_output_appends_and_flush_makes_alerts_visible() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.jsonl");
    std::fs::write(&path, "previous line\n").unwrap();
    let mut out = open_output(OutputTarget::File(path.clone()), Format::Json).unwrap();
    out.write(&sample_alert()).unwrap();
    out.write(&host_alert()).unwrap();
    out.flush().unwrap();
    // Visible before the output is dropped.
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], "previous line");
    assert_eq!(parse_alert(lines[1]).unwrap(), sample_alert());
    assert_eq!(parse_alert(lines[2]).unwrap(), host_alert());
    drop(out);

    let mut falco = open_output(OutputTarget::File(path.clone()), Format::Falco).unwrap();
    falco.write(&sample_alert()).unwrap();
    falco.flush().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 4);
    assert_falco_shape(&serde_json::from_str(text.lines().last().unwrap()).unwrap());
}

#[test]
fn opening_an_impossible_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("alerts.jsonl");
    let err = open_output(OutputTarget::File(path), Format::Json)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}

#[test]
fn format_and_target_parse_like_the_cli() {
    assert_eq!("json".parse::<Format>().unwrap(), Format::Json);
    assert_eq!("falco".parse::<Format>().unwrap(), Format::Falco);
    assert!("yaml".parse::<Format>().is_err());
    let config: Format = serde_json::from_str("\"falco\"").unwrap();
    assert_eq!(config, Format::Falco);
    assert_eq!(OutputTarget::from_arg("-"), OutputTarget::Stdout);
    assert_eq!(
        OutputTarget::from_arg("/tmp/a.jsonl"),
        OutputTarget::File(PathBuf::from("/tmp/a.jsonl"))
    );
}

// ---- golden files ----

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/output")
}

fn check_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with BLESS=1 to create it", path.display()));
    assert_eq!(
        expected,
        actual,
        "{} differs; run with BLESS=1 to accept the new output",
        path.display()
    );
}

/// Exactly what the output writes for one alert: one line.
fn golden_text(alert: &Alert, format: Format) -> String {
    format!("{}\n", render(alert, format).unwrap())
}

#[test]
fn golden_json_alert() {
    check_golden("alert.jsonl", &golden_text(&sample_alert(), Format::Json));
}

#[test]
fn golden_falco_alert() {
    check_golden(
        "alert.falco.jsonl",
        &golden_text(&sample_alert(), Format::Falco),
    );
}
