//! Golden tests for `palisade.toml` and plugin sidecars: every fixture under
//! tests/fixtures/config/{daemon,sidecar}/{valid,invalid}/*.toml is parsed; a valid file's
//! normalised value (`{:#?}`) and an invalid file's error message must equal `<name>.golden`.
//! `BLESS=1 cargo test -p palisade-host --test config_golden` rewrites the golden files.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use palisade::config::{Config, LoadEnv, Overrides, DEFAULT_CONFIG, ENV_VARS};
use palisade::plugin::manifest::Sidecar;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/config")
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn bless() -> bool {
    std::env::var_os("BLESS").is_some_and(|v| v != "0" && !v.is_empty())
}

/// Golden output is machine-independent: `workers = 0` resolves to a fixed 4 cores.
fn parse_daemon(text: &str, origin: &str) -> Result<String, String> {
    let env = LoadEnv {
        var: &|_| None,
        available_cores: 4,
    };
    Config::from_toml_str_in(text, origin, &Overrides::default(), &env)
        .map(|c| format!("{c:#?}\n"))
        .map_err(|e| format!("{e}\n"))
}

fn parse_sidecar(text: &str, origin: &str) -> Result<String, String> {
    Sidecar::from_toml_str(text, origin)
        .map(|s| format!("{s:#?}\n"))
        .map_err(|e| format!("{e}\n"))
}

/// A short line diff: enough to see what changed without a diff crate.
fn diff(expected: &str, actual: &str) -> String {
    let exp: Vec<&str> = expected.lines().collect();
    let act: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    for i in 0..exp.len().max(act.len()) {
        match (exp.get(i), act.get(i)) {
            (Some(e), Some(a)) if e == a => {}
            (e, a) => {
                if let Some(e) = e {
                    let _ = writeln!(out, "  line {:>3} - {e}", i + 1);
                }
                if let Some(a) = a {
                    let _ = writeln!(out, "  line {:>3} + {a}", i + 1);
                }
            }
        }
    }
    out
}

/// Runs one kind's fixtures; returns the failures (empty = all good).
fn run_kind(kind: &str, parse: fn(&str, &str) -> Result<String, String>) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    for validity in ["valid", "invalid"] {
        let dir = fixtures().join(kind).join(validity);
        let mut tomls = BTreeSet::new();
        let mut goldens = BTreeSet::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("toml") => tomls.insert(path),
                Some("golden") => goldens.insert(path),
                _ => false,
            };
        }
        let minimum = if validity == "invalid" { 8 } else { 3 };
        if tomls.len() < minimum {
            failures.push(format!(
                "{kind}/{validity}: {} fixtures, at least {minimum} expected",
                tomls.len()
            ));
        }
        for toml_path in &tomls {
            let name = toml_path
                .file_name()
                .and_then(|n| n.to_str())
                .context("fixture name")?
                .to_owned();
            let text = std::fs::read_to_string(toml_path)?;
            let golden_path = toml_path.with_extension("golden");
            goldens.remove(&golden_path);
            let actual = match (parse(&text, &name), validity) {
                (Ok(value), "valid") => value,
                (Err(error), "invalid") => {
                    // Every error names the fixture file, so a user knows which file to fix.
                    if !error.starts_with(&name) {
                        failures.push(format!(
                            "{kind}/{validity}/{name}: error does not start with the file name: {error}"
                        ));
                    }
                    error
                }
                (Ok(value), _) => {
                    failures.push(format!(
                        "{kind}/{validity}/{name}: parsed but should be rejected:\n{value}"
                    ));
                    continue;
                }
                (Err(error), _) => {
                    failures.push(format!(
                        "{kind}/{validity}/{name}: rejected but should parse: {error}"
                    ));
                    continue;
                }
            };
            if bless() {
                std::fs::write(&golden_path, &actual)?;
                continue;
            }
            match std::fs::read_to_string(&golden_path) {
                Ok(expected) if expected == actual => {}
                Ok(expected) => failures.push(format!(
                    "{kind}/{validity}/{name}: output differs from {} (BLESS=1 to accept):\n{}",
                    golden_path.display(),
                    diff(&expected, &actual)
                )),
                Err(_) => failures.push(format!(
                    "{kind}/{validity}/{name}: no golden file {} (BLESS=1 to create); got:\n{actual}",
                    golden_path.display()
                )),
            }
        }
        for orphan in goldens {
            if bless() {
                std::fs::remove_file(&orphan)?;
            } else {
                failures.push(format!(
                    "{}: golden file without a .toml fixture",
                    orphan.display()
                ));
            }
        }
    }
    Ok(failures)
}

fn check(kind: &str, parse: fn(&str, &str) -> Result<String, String>) -> Result<()> {
    let failures = run_kind(kind, parse)?;
    if !failures.is_empty() {
        bail!(
            "{} failure(s):\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
    Ok(())
}

#[test]
fn daemon_config_golden() -> Result<()> {
    check("daemon", parse_daemon)
}

#[test]
fn sidecar_golden() -> Result<()> {
    check("sidecar", parse_sidecar)
}

#[test]
fn example_config_parses() -> Result<()> {
    let path = repo_file("examples/palisade.toml");
    let config = Config::load_in(
        Some(&path),
        &Overrides::default(),
        &LoadEnv {
            var: &|_| None,
            available_cores: 2,
        },
    )?;
    assert!(!config.outputs.is_empty());
    Ok(())
}

/// Every key path in a TOML table, e.g. `engine.workers`, `outputs.format`.
fn leaf_keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(t) => leaf_keys(t, &path, out),
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                for item in items {
                    if let toml::Value::Table(t) = item {
                        leaf_keys(t, &path, out);
                    }
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

/// The docs and the annotated example must not fall behind the defaults: every key that has a
/// default, plus the optional ones, is named in docs/configuration.md and examples/palisade.toml,
/// and every environment variable is documented.
#[test]
fn docs_and_example_cover_every_key() -> Result<()> {
    let defaults: toml::Table = toml::from_str(DEFAULT_CONFIG)?;
    let mut keys = BTreeSet::new();
    leaf_keys(&defaults, "", &mut keys);
    for optional in [
        "hostname",
        "source.path",
        "source.follow",
        "outputs.path",
        "metrics.addr",
        "grants",
        "actions.responders",
    ] {
        keys.insert(optional.to_owned());
    }
    let docs = std::fs::read_to_string(repo_file("docs/configuration.md"))?;
    let example = std::fs::read_to_string(repo_file("examples/palisade.toml"))?;
    let mut missing = Vec::new();
    for key in &keys {
        let last = key.rsplit('.').next().unwrap_or(key);
        if !docs.contains(&format!("`{key}`")) {
            missing.push(format!("docs/configuration.md lacks `{key}`"));
        }
        if !example.contains(last) {
            missing.push(format!("examples/palisade.toml lacks {last} ({key})"));
        }
    }
    for (var, _) in ENV_VARS {
        if !docs.contains(var) {
            missing.push(format!("docs/configuration.md lacks {var}"));
        }
    }
    let manifest_docs = std::fs::read_to_string(repo_file("docs/manifest.md"))?;
    for key in [
        "version",
        "enabled",
        "memory_mib",
        "deadline_ms",
        "max_alerts_per_batch",
        "max_log_lines_per_sec",
        "max_consecutive",
        "backoff_initial_ms",
        "backoff_max_ms",
        "policy",
        "disabled_rules",
        "priorities",
        "min_priority",
        "rules",
        "tags",
    ] {
        if !manifest_docs.contains(&format!("`{key}`")) {
            missing.push(format!("docs/manifest.md lacks `{key}`"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    Ok(())
}

/// The docs' sidecar example parses.
#[test]
fn manifest_doc_example_parses() -> Result<()> {
    let docs = std::fs::read_to_string(repo_file("docs/manifest.md"))?;
    let start = docs
        .find("```toml\n")
        .context("docs/manifest.md has no ```toml block")?
        + "```toml\n".len();
    let len = docs[start..].find("```").context("unterminated block")?;
    let sidecar = Sidecar::from_toml_str(&docs[start..start + len], "docs/manifest.md")?;
    assert!(!sidecar.config.is_empty());
    Ok(())
}
