//! `palisade plugin new` + `palisade plugin build` for Rust: a scaffolded detector and
//! responder build into components the registry accepts, the detector's fixtures give the
//! expected alerts through the real pipeline, and the projects' own native tests pass out of
//! the box. The C scaffold builds and passes its own fixtures too (Python and JavaScript:
//! `cargo xtask test-polyglot`); responders in those languages are refused with a clear message.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic on failure, like the tests"
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use palisade::event::replay::ReplaySource;
use palisade::event::source::StopFlag;
use palisade::pack::scaffold::{
    build_project_with, default_sdk_path, new_project, Lang, NewOptions, ScaffoldError,
};
use palisade::plugin::registry::LoadRequest;
use palisade::plugin::PluginKind;
use serde_json::Value;
use support::Harness;

/// One target dir for every scaffold build, so reruns are incremental.
fn target_dir() -> PathBuf {
    xtask::workspace_root().join("target/scaffold")
}

/// Variables a parent `cargo test` sets that must not leak into a child cargo.
const SCRUBBED_ENV: &[&str] = &[
    "CARGO_BUILD_TARGET",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTC_WRAPPER",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
    "LLVM_PROFILE_FILE",
];

fn scaffold(root: &Path, name: &str, kind: PluginKind) -> PathBuf {
    let dir = root.join(name);
    let files = new_project(&NewOptions {
        name: name.into(),
        lang: Lang::Rust,
        kind,
        dir: dir.clone(),
        sdk_path: default_sdk_path(),
    })
    .unwrap();
    assert!(
        files.iter().any(|f| f == Path::new("src/lib.rs")),
        "{files:?}"
    );
    assert!(dir.join(format!("{name}.toml")).is_file());
    dir
}

/// Builds through the library with the shared target dir (as `palisade plugin build` does).
fn build(dir: &Path) -> palisade::pack::scaffold::Built {
    build_project_with(dir, Some(&target_dir())).unwrap_or_else(|e| panic!("{e}"))
}

fn native_test(dir: &Path) {
    let mut cmd = Command::new("cargo");
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    let out = cmd
        .arg("test")
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo test in {}:\n{text}",
        dir.display()
    );
    assert!(text.contains("test result: ok"), "{text}");
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Replays `events` through the harness's loaded plugins; returns (rule, priority) per alert.
fn replay(h: &Harness, events: &Path) -> Vec<(String, String)> {
    let before = h.captured.alerts().len();
    let pipeline = h.start();
    let mut source = ReplaySource::from_args([events.display().to_string()]);
    palisade::daemon::run_source(&mut source, &pipeline, &StopFlag::default()).unwrap();
    pipeline.finish();
    h.captured.alerts()[before..]
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["priority"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn rust_detector_scaffold_builds_checks_detects_and_tests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scaffold(tmp.path(), "my-detector", PluginKind::Detector);
    // A second scaffold into a non-empty dir is refused.
    let err = new_project(&NewOptions {
        name: "my-detector".into(),
        lang: Lang::Rust,
        kind: PluginKind::Detector,
        dir: dir.clone(),
        sdk_path: default_sdk_path(),
    })
    .unwrap_err();
    assert!(matches!(err, ScaffoldError::NotEmpty { .. }), "{err}");

    let built = build(&dir);
    assert_eq!(built.wasm, dir.join("dist/my-detector.wasm"));
    assert_eq!(
        built.sidecar.as_deref(),
        Some(dir.join("dist/my-detector.toml").as_path())
    );

    // `plugin check`, through the library: the registry loads it with its sidecar.
    let h = Harness::new("");
    let loaded = h
        .daemon
        .registry
        .load(&LoadRequest::from_file(&built.wasm).unwrap())
        .unwrap();
    assert_eq!(loaded.name, "my-detector");
    assert_eq!(loaded.kind, PluginKind::Detector);
    h.daemon.registry.remove("my-detector");

    // The fixtures hold: positive events give the expected alerts, negative ones none.
    std::fs::copy(&built.wasm, h.plugins_dir().join("my-detector.wasm")).unwrap();
    std::fs::copy(
        built.sidecar.as_ref().unwrap(),
        h.plugins_dir().join("my-detector.toml"),
    )
    .unwrap();
    h.load(1);
    for (events, expected) in [
        ("positive.jsonl", "expected-positive.jsonl"),
        ("negative.jsonl", "expected-negative.jsonl"),
    ] {
        let got = replay(&h, &dir.join("fixtures").join(events));
        let want: Vec<(String, String)> = read_jsonl(&dir.join("fixtures").join(expected))
            .iter()
            .map(|a| {
                (
                    a["rule"].as_str().unwrap().to_string(),
                    a["priority"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(got, want, "{events}");
    }
    assert!(!read_jsonl(&dir.join("fixtures/expected-positive.jsonl")).is_empty());

    native_test(&dir);
}

#[test]
fn rust_responder_scaffold_builds_and_tests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scaffold(tmp.path(), "my-responder", PluginKind::Responder);
    let built = build(&dir);
    let h = Harness::new("");
    let loaded = h
        .daemon
        .registry
        .load(&LoadRequest::from_file(&built.wasm).unwrap())
        .unwrap();
    assert_eq!(loaded.kind, PluginKind::Responder);
    native_test(&dir);
}

#[test]
fn c_detector_scaffold_builds_and_its_fixtures_pass() {
    // Python and JavaScript scaffolds are checked the same way by `cargo xtask test-polyglot`
    // (release binary): a debug wasmtime takes minutes to compile their 12-18 MB interpreters.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my-c-detector");
    let files = new_project(&NewOptions {
        name: "my-c-detector".into(),
        lang: Lang::C,
        kind: PluginKind::Detector,
        dir: dir.clone(),
        sdk_path: default_sdk_path(),
    })
    .unwrap();
    for f in [
        "palisade-plugin.toml",
        "src/plugin.c",
        "src/palisade.h",
        "my-c-detector.toml",
    ] {
        assert!(files.iter().any(|p| p == Path::new(f)), "{f} in {files:?}");
    }
    let built = build(&dir);
    assert_eq!(built.wasm, dir.join("dist/my-c-detector.wasm"));
    assert!(built.sidecar.is_some());
    let options = palisade::plugin::testing::ReplayOptions {
        cache_dir: Some(support::cache_dir()),
    };
    for kind in ["positive", "negative"] {
        let outcome = palisade::plugin::testing::run_test(
            &built.wasm,
            &dir.join(format!("fixtures/{kind}.jsonl")),
            &dir.join(format!("fixtures/{kind}.expected.json")),
            false,
            &options,
        )
        .unwrap();
        match outcome {
            palisade::plugin::testing::Outcome::Passed { alerts } => {
                assert_eq!(alerts, if kind == "positive" { 2 } else { 0 }, "{kind}")
            }
            other => panic!("{kind}: {other:?}"),
        }
    }
}

#[test]
fn unsupported_kinds_and_bad_names_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    for lang in [Lang::C, Lang::Python, Lang::Js] {
        let err = new_project(&NewOptions {
            name: "x".into(),
            lang,
            kind: PluginKind::Responder,
            dir: tmp.path().join("x"),
            sdk_path: default_sdk_path(),
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("not supported yet") && err.contains(lang.as_str()),
            "{err}"
        );
    }
    assert!(!tmp.path().join("x").exists());
    let err = new_project(&NewOptions {
        name: "Bad_Name".into(),
        lang: Lang::Rust,
        kind: PluginKind::Detector,
        dir: tmp.path().join("y"),
        sdk_path: default_sdk_path(),
    })
    .unwrap_err();
    assert!(matches!(err, ScaffoldError::BadName { .. }), "{err}");
    // Through the binary: the exit status and message a user sees.
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "plugin",
            "new",
            "z",
            "--lang",
            "python",
            "--kind",
            "responder",
            "-o",
        ])
        .arg(tmp.path().join("z"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported yet"));
}
