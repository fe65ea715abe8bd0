//! The first-party plugins written in C, Python and JavaScript (`plugins/polyglot/<name>/`):
//! each is built from source with its language's toolchain (`palisade plugin build`'s code,
//! into target/polyglot-plugins/). The C plugin's positive and negative fixtures are replayed
//! here and must match their golden alerts (`BLESS=1` rewrites them), exactly as the Rust
//! pack's fixtures are checked. The Python and JavaScript components embed an interpreter
//! (12-18 MB) that a debug build of wasmtime takes minutes to compile, so their fixtures are
//! replayed by `cargo xtask test-polyglot` through the release `palisade` binary instead (run by
//! scripts/test.sh). Needs the guest toolchains `scripts/setup.sh` installs; a missing tool
//! fails the test with the setup hint rather than skipping.

#![expect(clippy::unwrap_used, reason = "tests panic on failure")]

mod support;

use std::path::{Path, PathBuf};

use palisade::alert::Priority;
use palisade::pack::polyglot::{build, BuildOptions, GuestLang};
use palisade::plugin::testing::{run_test, Golden, Outcome, ReplayOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every polyglot project, sorted by name.
fn projects() -> Vec<PathBuf> {
    let parent = root().join("plugins/polyglot");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&parent)
        .unwrap_or_else(|e| panic!("{}: {e}", parent.display()))
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("palisade-plugin.toml").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn check(wasm: &Path, fixtures: &Path, kind: &str, bless: bool) -> Result<Golden, String> {
    let events = fixtures.join(format!("{kind}.jsonl"));
    let expect = fixtures.join(format!("{kind}.expected.json"));
    let options = ReplayOptions {
        cache_dir: Some(support::cache_dir()),
    };
    match run_test(wasm, &events, &expect, bless, &options) {
        Ok(Outcome::Passed { .. } | Outcome::Blessed { .. }) => {
            Golden::load(&expect).map_err(|e| e.to_string())
        }
        Ok(Outcome::Failed { diff }) => Err(diff),
        Err(e) => Err(format!("{}: {e}", events.display())),
    }
}

#[test]
fn polyglot_plugins_build_and_match_their_golden_alerts() {
    let bless = std::env::var_os("BLESS").is_some();
    let dirs = projects();
    let mut langs = Vec::new();
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let built = build(
            dir,
            &BuildOptions {
                build_dir: Some(root().join("target/polyglot").join(&name)),
                out_dir: Some(root().join("target/polyglot-plugins")),
                wit_dir: Some(root().join("wit")),
            },
        )
        .unwrap_or_else(|e| panic!("building {name}: {e}"));
        assert_eq!(built.name, name, "project name must match its directory");
        assert!(built.sidecar.is_some(), "{name} ships a sidecar");
        langs.push(built.lang);
        if built.lang != GuestLang::C {
            continue;
        }
        let fixtures = dir.join("fixtures");
        match check(&built.wasm, &fixtures, "positive", bless) {
            Ok(g) if g.alerts.is_empty() => {
                failures.push(format!("{name}: positive raises nothing"))
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("{name} positive:\n{e}")),
        }
        match check(&built.wasm, &fixtures, "negative", bless) {
            Ok(g) => {
                for a in g
                    .alerts
                    .iter()
                    .filter(|a| a.priority.at_least(Priority::Warning))
                {
                    failures.push(format!(
                        "{name}: negative raises {} [{:?}]",
                        a.rule, a.priority
                    ));
                }
            }
            Err(e) => failures.push(format!("{name} negative:\n{e}")),
        }
    }
    for lang in [GuestLang::C, GuestLang::Python, GuestLang::Js] {
        assert!(
            langs.contains(&lang),
            "no {} plugin in {dirs:?}",
            lang.as_str()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
