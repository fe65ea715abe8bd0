//! The `palisade` binary as a user runs it: replay exit codes and error reporting, plugin
//! check on good and bad components, and clear errors for bad configuration.

mod support;

use std::process::Command;

use support::*;

fn palisade() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.env_remove("RUST_LOG");
    cmd
}

fn root() -> std::path::PathBuf {
    xtask::workspace_root()
}

fn replay(file: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    palisade()
        .arg("replay")
        .arg(root().join(file))
        .arg("--plugins")
        .arg(&built().plugins_dir)
        .arg("--cache-dir")
        .arg(cache_dir())
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .output()
        .unwrap()
}

#[test]
fn replay_prints_alerts_and_exits_zero_on_a_clean_file() {
    let out = replay("examples/events/demo-attack.jsonl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let alerts: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        alerts.iter().any(|a| a["rule"] == "reverse-shell"),
        "{stdout}"
    );
}

#[test]
fn replay_reports_bad_lines_with_file_and_line_and_exits_non_zero() {
    let out = replay("examples/events/bad-lines.jsonl");
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad-lines.jsonl:5"), "{stderr}");
    assert!(stderr.contains("bad-lines.jsonl:11"), "{stderr}");
}

#[test]
fn plugin_check_describes_a_good_plugin_and_rejects_a_bad_one() {
    let out = palisade()
        .args(["plugin", "check"])
        .arg(plugin("sensitive-files"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("name:         sensitive-files"), "{stdout}");
    assert!(stdout.contains("kind:         detector"), "{stdout}");

    let out = palisade()
        .args(["plugin", "check"])
        .arg(test_plugin("wrong-world"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("wrong-world.wasm") && stderr.contains("neither"),
        "{stderr}"
    );
}

#[test]
fn a_bad_config_names_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("palisade.toml");
    std::fs::write(&config, "version = 1\n[engine]\nwrokers = 2\n").unwrap();
    let out = palisade()
        .args(["replay", "-"])
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("palisade.toml") && stderr.contains("wrokers"),
        "{stderr}"
    );
}

/// `palisade replay` never carries out a responder's action, even with `mode = "enforce"` and
/// the grant: the replayed pids belong to the past (or to whatever now reuses them). The
/// request is still checked and audited, as monitor.
#[test]
fn replay_records_responder_actions_and_never_carries_them_out() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for name in ["sensitive-files", "kill-critical"] {
        let wasm = format!("{name}.wasm");
        std::fs::copy(built().plugins_dir.join(&wasm), plugins.join(&wasm)).unwrap();
    }
    std::fs::write(
        plugins.join("kill-critical.toml"),
        "version = 1\n[config]\nrules = [\"sensitive-file-write\"]\n",
    )
    .unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config = dir.path().join("palisade.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[plugins]\ndir = {plugins:?}\ncache_dir = {cache:?}\nwatch = false\n\
             [actions]\nmode = \"enforce\"\naudit_log = {audit:?}\n\
             [grants]\nkill-critical = [\"kill-process\"]\n",
            cache = cache_dir(),
        ),
    )
    .unwrap();
    let out = palisade()
        .arg("replay")
        .arg(root().join("examples/events/demo-attack.jsonl"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = std::fs::read_to_string(&audit).unwrap_or_default();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kills: Vec<_> = records
        .iter()
        .filter(|r| r["action"] == "kill-process")
        .collect();
    assert!(!kills.is_empty(), "no kill requested: {text}\n{stderr}");
    for kill in kills {
        assert_eq!(kill["mode"], "monitor", "{kill}");
        assert_eq!(kill["result"], "recorded", "{kill}");
    }
}
