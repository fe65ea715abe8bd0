//! The `palisade pack ...`, `palisade plugin new` and `palisade plugin build` commands: clap
//! arguments and implementations, kept beside the library code they drive so cli.rs only
//! dispatches. Command-line code, so errors are `anyhow` like the rest of cli.rs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use super::scaffold::{self, Lang, NewOptions};
use super::{install, Pack, PluginSummary, SignatureStatus, TrustPolicy, TrustedKey};
use crate::config::{Config, Overrides};
use crate::daemon::Daemon;
use crate::plugin::PluginKind;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LangArg {
    Rust,
    C,
    Python,
    Js,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Detector,
    Responder,
}

/// `palisade plugin new` arguments.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// Plugin name (lower-case letters, digits, '-').
    pub name: String,
    #[arg(long, value_enum)]
    pub lang: LangArg,
    #[arg(long, value_enum, default_value = "detector")]
    pub kind: KindArg,
    /// Project directory (default: ./NAME).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Path of the palisade-sdk crate to depend on (default: the SDK this palisade was built from).
    #[arg(long)]
    pub sdk_path: Option<PathBuf>,
}

/// `palisade plugin build` arguments.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The plugin project directory.
    pub dir: PathBuf,
    /// C/Python/JS projects: where <name>.wasm and its sidecar go (default DIR/dist).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// C/Python/JS projects: intermediate files and the build stamp (default DIR/build).
    #[arg(long)]
    pub build_dir: Option<PathBuf>,
}

/// Where installed packs live: --plugins, else the configuration's plugins.dir.
#[derive(Debug, Args)]
pub struct PackTarget {
    /// Plugin directory (overrides plugins.dir).
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// Daemon configuration file (palisade.toml) to read plugins.dir from.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PackCommand {
    /// Build a pack (.tar.gz) from DIR (pack.toml, plugins, sidecars); then sign it with `minisign -Sm FILE`.
    Build {
        dir: PathBuf,
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
    /// Check a pack's signature, contents and plugins without installing it.
    Verify {
        file: PathBuf,
        /// Trusted minisign public key: a key file (minisign.pub) or the base64 key.
        #[arg(long)]
        trust: Option<String>,
        /// Check an unsigned pack's contents anyway.
        #[arg(long)]
        allow_unsigned: bool,
    },
    /// Verify a pack and install its plugins into the plugin directory (hot reload picks them up).
    Install {
        file: PathBuf,
        /// Trusted minisign public key: a key file (minisign.pub) or the base64 key.
        #[arg(long)]
        trust: Option<String>,
        /// Install a pack whose signature is missing or not checked.
        #[arg(long)]
        allow_unsigned: bool,
        #[command(flatten)]
        target: PackTarget,
    },
    /// List installed packs.
    List {
        #[command(flatten)]
        target: PackTarget,
    },
    /// Remove an installed pack's plugins.
    Remove {
        name: String,
        #[command(flatten)]
        target: PackTarget,
    },
}

fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

fn init_telemetry(log_level: Option<&str>) {
    // Best effort: a second init in one process (tests) is harmless to skip.
    let _ = crate::telemetry::init(
        crate::telemetry::LogFormat::Text,
        log_level.unwrap_or("warn"),
    );
}

/// `palisade plugin new`.
pub fn cmd_plugin_new(args: &NewArgs) -> Result<ExitCode> {
    let dir = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let opts = NewOptions {
        name: args.name.clone(),
        lang: match args.lang {
            LangArg::Rust => Lang::Rust,
            LangArg::C => Lang::C,
            LangArg::Python => Lang::Python,
            LangArg::Js => Lang::Js,
        },
        kind: match args.kind {
            KindArg::Detector => PluginKind::Detector,
            KindArg::Responder => PluginKind::Responder,
        },
        dir: dir.clone(),
        sdk_path: args
            .sdk_path
            .clone()
            .unwrap_or_else(scaffold::default_sdk_path),
    };
    let files = scaffold::new_project(&opts)?;
    let mut out = format!(
        "created {} {} plugin project in {}:\n",
        opts.lang.as_str(),
        opts.kind.as_str(),
        dir.display()
    );
    for f in files {
        out.push_str(&format!("  {}\n", f.display()));
    }
    out.push_str(&if opts.lang == Lang::Rust {
        format!(
            "next: `cd {d} && cargo test` (native unit tests), then `palisade plugin build {d}`\n",
            d = dir.display()
        )
    } else {
        format!(
            "next: `palisade plugin build {d}`, then `palisade plugin test {d}/dist/{n}.wasm --events {d}/fixtures/positive.jsonl --expect {d}/fixtures/positive.expected.json`\n",
            d = dir.display(),
            n = opts.name
        )
    });
    write_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// `palisade plugin build`.
pub fn cmd_plugin_build(args: &BuildArgs) -> Result<ExitCode> {
    let built = if args.dir.join(super::polyglot::PROJECT_FILE).is_file() {
        let b = super::polyglot::build(
            &args.dir,
            &super::polyglot::BuildOptions {
                build_dir: args.build_dir.clone(),
                out_dir: args.out_dir.clone(),
                wit_dir: None,
            },
        )?;
        scaffold::Built {
            wasm: b.wasm,
            sidecar: b.sidecar,
        }
    } else {
        scaffold::build_project(&args.dir)?
    };
    let mut out = format!("built {}\n", built.wasm.display());
    if let Some(sidecar) = &built.sidecar {
        out.push_str(&format!("sidecar {}\n", sidecar.display()));
    }
    write_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// A directory removed (with its content) on drop.
struct ScratchDir(PathBuf);
impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A daemon with a scratch audit log and, unless `PALISADE_CACHE_DIR` names one, a scratch
/// compile cache, to validate plugins without touching the system's. A named cache lets repeated
/// `plugin test` runs skip recompiling (seconds for the Python and JavaScript interpreters).
fn scratch_daemon() -> Result<(Daemon, ScratchDir)> {
    let mut config = Config::load(None, &Overrides::default())?;
    let scratch =
        ScratchDir(std::env::temp_dir().join(format!("palisade-pack-{}", std::process::id())));
    let cache_named = std::env::var_os("PALISADE_CACHE_DIR").is_some_and(|v| !v.is_empty());
    if !cache_named {
        config.plugins.cache_dir = scratch.0.join("cache");
    }
    config.actions.audit_log = scratch.0.join("audit.jsonl");
    Ok((Daemon::build(config, true)?, scratch))
}

fn plugins_dir(target: &PackTarget) -> Result<PathBuf> {
    if let Some(dir) = &target.plugins {
        return Ok(dir.clone());
    }
    Ok(
        Config::load(target.config.as_deref(), &Overrides::default())?
            .plugins
            .dir,
    )
}

fn caps_text<'a>(caps: impl Iterator<Item = &'a str>) -> String {
    let caps: Vec<&str> = caps.collect();
    if caps.is_empty() {
        "none".to_string()
    } else {
        caps.join(", ")
    }
}

fn describe_plugins(plugins: &[PluginSummary]) -> String {
    let mut out = String::new();
    for p in plugins {
        out.push_str(&format!(
            "  {}: {} {} {}{}; requests: {}\n",
            p.file,
            p.kind.as_str(),
            p.name,
            p.version,
            if p.has_sidecar { ", with sidecar" } else { "" },
            caps_text(p.requested.iter().map(|c| c.as_str()))
        ));
    }
    out
}

fn signature_line(pack: &Pack) -> String {
    match &pack.signature {
        SignatureStatus::Verified { trusted_comment } => {
            format!("signature: verified ({trusted_comment})\n")
        }
        SignatureStatus::Unverified => "signature: NOT VERIFIED (--allow-unsigned)\n".to_string(),
    }
}

fn open(file: &Path, trust: Option<&str>, allow_unsigned: bool) -> Result<Pack> {
    let key = trust.map(TrustedKey::parse).transpose()?;
    Ok(Pack::open(
        file,
        TrustPolicy {
            key: key.as_ref(),
            allow_unsigned,
        },
    )?)
}

/// `palisade pack ...`.
pub fn cmd_pack(log_level: Option<&str>, command: &PackCommand) -> Result<ExitCode> {
    init_telemetry(log_level);
    match command {
        PackCommand::Build { dir, output } => {
            let (daemon, _scratch) = scratch_daemon()?;
            let (manifest, plugins) = super::build(dir, output, &daemon.registry)?;
            let mut out = format!(
                "built pack {} {} -> {}\n",
                manifest.pack.name,
                manifest.pack.version,
                output.display()
            );
            out.push_str(&describe_plugins(&plugins));
            out.push_str(&format!(
                "sign it with: minisign -Sm {}\n",
                output.display()
            ));
            write_stdout(&out)?;
        }
        PackCommand::Verify {
            file,
            trust,
            allow_unsigned,
        } => {
            let pack = open(file, trust.as_deref(), *allow_unsigned)?;
            let (daemon, scratch) = scratch_daemon()?;
            let staging = scratch.0.join("verify");
            std::fs::create_dir_all(&staging)
                .with_context(|| format!("creating {}", staging.display()))?;
            for (name, bytes) in &pack.files {
                std::fs::write(staging.join(name), bytes)
                    .with_context(|| format!("writing {name}"))?;
            }
            let plugins = pack.validate_in(&staging, &daemon.registry)?;
            let mut out = format!(
                "{}: ok, pack {} {}\n",
                file.display(),
                pack.name(),
                pack.manifest.pack.version
            );
            out.push_str(&signature_line(&pack));
            out.push_str(&describe_plugins(&plugins));
            write_stdout(&out)?;
        }
        PackCommand::Install {
            file,
            trust,
            allow_unsigned,
            target,
        } => {
            let dir = plugins_dir(target)?;
            warn_permissions(&dir);
            let pack = open(file, trust.as_deref(), *allow_unsigned)?;
            // What the pack asks for, shown before anything is written.
            let mut out = format!(
                "pack {} {}: {}\n",
                pack.name(),
                pack.manifest.pack.version,
                pack.manifest.pack.description
            );
            out.push_str(&signature_line(&pack));
            out.push_str(
                "requested capabilities (effective only where palisade.toml grants them):\n",
            );
            for p in &pack.manifest.plugins {
                out.push_str(&format!(
                    "  {}: {}\n",
                    p.file,
                    caps_text(p.capabilities.iter().map(|c| c.as_str()))
                ));
            }
            write_stdout(&out)?;
            let (daemon, _scratch) = scratch_daemon()?;
            let report = install::install(&pack, &dir, &daemon.registry)?;
            let mut out = format!(
                "installed pack {} {} into {}",
                report.record.name,
                report.record.pack_version,
                dir.display()
            );
            if let Some(prev) = &report.replaced {
                out.push_str(&format!(" (replacing {})", prev.pack_version));
            }
            out.push('\n');
            out.push_str(&describe_plugins(&report.plugins));
            for f in &report.removed {
                out.push_str(&format!("  removed {f} (not in this version)\n"));
            }
            write_stdout(&out)?;
        }
        PackCommand::List { target } => {
            let dir = plugins_dir(target)?;
            let mut out = String::new();
            for record in install::list(&dir)? {
                let plugins: Vec<&str> = record
                    .files
                    .iter()
                    .map(|f| f.name.as_str())
                    .filter(|f| f.ends_with(".wasm"))
                    .collect();
                out.push_str(&format!(
                    "{} {}  plugins: {}  signature: {}\n",
                    record.name,
                    record.pack_version,
                    plugins.join(", "),
                    record.signature
                ));
            }
            if out.is_empty() {
                out = format!("no packs installed in {}\n", dir.display());
            }
            write_stdout(&out)?;
        }
        PackCommand::Remove { name, target } => {
            let dir = plugins_dir(target)?;
            let record = install::remove(&dir, name)?;
            write_stdout(&format!(
                "removed pack {} {} from {}\n",
                record.name,
                record.pack_version,
                dir.display()
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Offline tools (`replay`, `plugin check`) only warn about an unsafe plugin directory;
/// `palisade run` refuses it.
pub fn warn_permissions(dir: &Path) {
    if let Err(err) = super::permissions::check_plugin_dir(dir) {
        tracing::warn!("{err} (`palisade run` would refuse this directory)");
    }
}
