//! Plugin projects: `palisade plugin new` writes a standalone plugin project from the templates
//! in host/templates/ (embedded at compile time), and `palisade plugin build` builds one into a
//! component plus sidecar in `DIR/dist/`. Rust projects are cargo crates; C, Python and
//! JavaScript projects (a `palisade-plugin.toml` project file) are written and built by
//! [`super::polyglot`].

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::plugin::PluginKind;

/// Languages `plugin new` knows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    C,
    Python,
    Js,
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::C => "c",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }
}

/// The guest target plugins are built for.
pub const GUEST_TARGET: &str = "wasm32-wasip2";

/// The SDK this palisade was built from (its checkout's `sdk/`).
pub fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("sdk")
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("--lang {lang} --kind {kind}: not supported yet by `palisade plugin new` (only rust scaffolds responders); see docs/plugin-authoring.md")]
    UnsupportedLang {
        lang: &'static str,
        kind: &'static str,
    },
    #[error(transparent)]
    Polyglot(#[from] super::polyglot::PolyglotError),
    #[error("plugin name {name:?}: use lower-case letters, digits and '-' (starting with a letter, at most 64)")]
    BadName { name: String },
    #[error("{dir}: already exists and is not empty; choose another -o DIR")]
    NotEmpty { dir: PathBuf },
    #[error("{path}: cannot write: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{path}: cannot read: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{dir}: not a plugin project (no Cargo.toml with a [package] name, nor a palisade-plugin.toml)")]
    NotAProject { dir: PathBuf },
    #[error("{dir}: `{command}` failed ({status}):\n{stderr}")]
    Build {
        dir: PathBuf,
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{dir}: cargo produced no .wasm for package {package}")]
    NoArtifact { dir: PathBuf, package: String },
}

/// What `plugin new` needs to know.
#[derive(Debug, Clone)]
pub struct NewOptions {
    pub name: String,
    pub lang: Lang,
    pub kind: PluginKind,
    /// Project directory (created; must not exist or be empty).
    pub dir: PathBuf,
    /// Path of the palisade-sdk crate the project depends on.
    pub sdk_path: PathBuf,
}

const CARGO_TOML: &str = include_str!("../../templates/rust/Cargo.toml.in");
const GITIGNORE: &str = include_str!("../../templates/rust/gitignore.in");
const DETECTOR_LIB: &str = include_str!("../../templates/rust/detector/lib.rs.in");
const DETECTOR_SIDECAR: &str = include_str!("../../templates/rust/detector/sidecar.toml.in");
const DETECTOR_POSITIVE: &str =
    include_str!("../../templates/rust/detector/fixtures/positive.jsonl");
const DETECTOR_NEGATIVE: &str =
    include_str!("../../templates/rust/detector/fixtures/negative.jsonl");
const DETECTOR_EXPECTED_POSITIVE: &str =
    include_str!("../../templates/rust/detector/fixtures/expected-positive.jsonl");
const DETECTOR_EXPECTED_NEGATIVE: &str =
    include_str!("../../templates/rust/detector/fixtures/expected-negative.jsonl");
const RESPONDER_LIB: &str = include_str!("../../templates/rust/responder/lib.rs.in");
const RESPONDER_SIDECAR: &str = include_str!("../../templates/rust/responder/sidecar.toml.in");

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-')
}

fn render(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter()
        .fold(template.to_string(), |text, (key, value)| {
            text.replace(&format!("{{{{{key}}}}}"), value)
        })
}

/// Writes a new plugin project; returns the files written (relative to the project dir).
pub fn new_project(opts: &NewOptions) -> Result<Vec<PathBuf>, ScaffoldError> {
    if opts.lang != Lang::Rust && opts.kind != PluginKind::Detector {
        return Err(ScaffoldError::UnsupportedLang {
            lang: opts.lang.as_str(),
            kind: opts.kind.as_str(),
        });
    }
    if !is_valid_name(&opts.name) {
        return Err(ScaffoldError::BadName {
            name: opts.name.clone(),
        });
    }
    let dir = &opts.dir;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(ScaffoldError::NotEmpty { dir: dir.clone() });
    }
    let sdk = opts
        .sdk_path
        .canonicalize()
        .unwrap_or_else(|_| opts.sdk_path.clone());
    let sdk = sdk.display().to_string();
    let kind = opts.kind.as_str();
    let vars = [
        ("name", opts.name.as_str()),
        ("kind", kind),
        ("sdk_path", sdk.as_str()),
    ];
    let sidecar = format!("{}.toml", opts.name);
    let mut files: Vec<(PathBuf, &str)> = match opts.lang {
        Lang::Rust => vec![
            ("Cargo.toml".into(), CARGO_TOML),
            (".gitignore".into(), GITIGNORE),
        ],
        Lang::C | Lang::Python | Lang::Js => {
            super::polyglot::detector_templates(opts.lang, &opts.name)
        }
    };
    match opts.kind {
        _ if opts.lang != Lang::Rust => {}
        PluginKind::Detector => files.extend([
            (PathBuf::from("src/lib.rs"), DETECTOR_LIB),
            (PathBuf::from(&sidecar), DETECTOR_SIDECAR),
            (PathBuf::from("fixtures/positive.jsonl"), DETECTOR_POSITIVE),
            (PathBuf::from("fixtures/negative.jsonl"), DETECTOR_NEGATIVE),
            (
                PathBuf::from("fixtures/expected-positive.jsonl"),
                DETECTOR_EXPECTED_POSITIVE,
            ),
            (
                PathBuf::from("fixtures/expected-negative.jsonl"),
                DETECTOR_EXPECTED_NEGATIVE,
            ),
        ]),
        PluginKind::Responder => files.extend([
            (PathBuf::from("src/lib.rs"), RESPONDER_LIB),
            (PathBuf::from(&sidecar), RESPONDER_SIDECAR),
        ]),
    }
    let mut written = Vec::new();
    for (rel, template) in files {
        let path = dir.join(&rel);
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, render(template, &vars))
        };
        write(&path).map_err(|e| ScaffoldError::Write {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        written.push(rel);
    }
    Ok(written)
}

/// The `[package] name` of a Cargo.toml.
fn package_name(manifest: &Path) -> Result<String, ScaffoldError> {
    let text = std::fs::read_to_string(manifest).map_err(|e| ScaffoldError::Read {
        path: manifest.to_path_buf(),
        reason: e.to_string(),
    })?;
    let value: toml::Table = toml::from_str(&text).map_err(|e| ScaffoldError::Read {
        path: manifest.to_path_buf(),
        reason: e.message().to_string(),
    })?;
    value
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .ok_or_else(|| ScaffoldError::NotAProject {
            dir: manifest.parent().map(Path::to_path_buf).unwrap_or_default(),
        })
}

/// What `plugin build` produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub wasm: PathBuf,
    pub sidecar: Option<PathBuf>,
}

/// Builds the Rust plugin project in `dir` (`cargo build --release --target wasm32-wasip2`,
/// honouring `CARGO_TARGET_DIR`) and writes `dist/<name>.wasm` and, when the project has one,
/// `dist/<name>.toml`.
pub fn build_project(dir: &Path) -> Result<Built, ScaffoldError> {
    build_project_with(dir, None)
}

/// [`build_project`] with an explicit cargo target dir (tests share one across projects).
pub fn build_project_with(dir: &Path, target_dir: Option<&Path>) -> Result<Built, ScaffoldError> {
    if dir.join(super::polyglot::PROJECT_FILE).is_file() {
        let built = super::polyglot::build(dir, &super::polyglot::BuildOptions::default())?;
        return Ok(Built {
            wasm: built.wasm,
            sidecar: built.sidecar,
        });
    }
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(ScaffoldError::NotAProject {
            dir: dir.to_path_buf(),
        });
    }
    let package = package_name(&manifest)?;
    let args = [
        "build",
        "--release",
        "--target",
        GUEST_TARGET,
        "--message-format=json-render-diagnostics",
    ];
    let mut cmd = Command::new("cargo");
    // Flags meant for the host target (a parent cargo's) must not reach the guest build.
    for var in [
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(dir)
        .args(args)
        .arg("--manifest-path")
        .arg(&manifest);
    if let Some(target_dir) = target_dir {
        cmd.env("CARGO_TARGET_DIR", target_dir);
    }
    let command = format!("cargo {}", args.join(" "));
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ScaffoldError::Build {
            dir: dir.to_path_buf(),
            command: command.clone(),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ScaffoldError::Build {
            dir: dir.to_path_buf(),
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    // cargo's own record of the artifact, wherever the target dir is.
    let crate_name = package.replace('-', "_");
    let mut artifact = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["target"]["name"] != crate_name.as_str() {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            artifact = files
                .iter()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from)
                .or(artifact);
        }
    }
    let Some(artifact) = artifact else {
        return Err(ScaffoldError::NoArtifact {
            dir: dir.to_path_buf(),
            package,
        });
    };
    let dist = dir.join("dist");
    let write_err = |path: &Path, e: std::io::Error| ScaffoldError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(&dist).map_err(|e| write_err(&dist, e))?;
    let wasm = dist.join(format!("{package}.wasm"));
    std::fs::copy(&artifact, &wasm).map_err(|e| write_err(&wasm, e))?;
    let source_sidecar = dir.join(format!("{package}.toml"));
    let sidecar = if source_sidecar.is_file() {
        let to = dist.join(format!("{package}.toml"));
        std::fs::copy(&source_sidecar, &to).map_err(|e| write_err(&to, e))?;
        Some(to)
    } else {
        None
    };
    Ok(Built { wasm, sidecar })
}
