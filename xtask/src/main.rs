//! `cargo xtask <task>`: repository build tasks (see `cargo xtask help`).
#![expect(
    clippy::print_stderr,
    reason = "the CLI reports progress and errors to its user on stderr"
)]

use std::process::ExitCode;

use anyhow::{bail, Result};
use xtask::{build_plugins_with, test_plugins, workspace_root, BuildOptions, BuiltPlugin, Profile};

const HELP: &str = "\
usage: cargo xtask <task> [options]

tasks:
  build-plugins [--debug]   build plugins/ and tests/plugins/ for wasm32-wasip2 and collect the
                            components (+ sidecars) into target/plugins/ and target/test-plugins/
  test-plugins              run the guests' native unit tests (cargo test in each guest workspace)
  build-polyglot            build the C/Python/JS plugins of plugins/polyglot/ into
                            target/polyglot-plugins/ (needs target/release/palisade)
  test-polyglot             build-polyglot, replay their fixtures against their golden files
                            (BLESS=1 rewrites them), and check the C/Python/JS scaffolds
  help                      this text
";

fn list(title: &str, dir: &std::path::Path, plugins: &[BuiltPlugin]) {
    eprintln!("{title} -> {}", dir.display());
    for p in plugins {
        let sidecar = if p.sidecar.is_some() {
            " + sidecar"
        } else {
            ""
        };
        let changed = if p.changed { "updated" } else { "unchanged" };
        eprintln!("  {:<20} {changed}{sidecar}", p.name);
    }
}

fn run(args: &[String]) -> Result<()> {
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("build-plugins") => {
            let mut profile = Profile::Release;
            for arg in &args[1..] {
                match arg.as_str() {
                    "--debug" => profile = Profile::Debug,
                    other => bail!("build-plugins: unknown option `{other}`\n\n{HELP}"),
                }
            }
            let built = build_plugins_with(
                &root,
                BuildOptions {
                    profile,
                    show_cargo_output: true,
                },
            )?;
            list("first-party plugins", &built.plugins_dir, &built.plugins);
            list("test plugins", &built.test_plugins_dir, &built.test_plugins);
            Ok(())
        }
        Some("test-plugins") => test_plugins(&root),
        Some("build-polyglot") => {
            for wasm in xtask::build_polyglot(&root)? {
                eprintln!("  {}", wasm.display());
            }
            Ok(())
        }
        Some("test-polyglot") => {
            xtask::test_polyglot(&root)?;
            eprintln!(
                "test-polyglot: every polyglot plugin and scaffold matches its golden alerts"
            );
            Ok(())
        }
        Some("help" | "--help" | "-h") | None => {
            eprint!("{HELP}");
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n\n{HELP}"),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
