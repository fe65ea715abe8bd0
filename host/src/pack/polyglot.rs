//! Plugin projects in C, Python and JavaScript: the project file (`palisade-plugin.toml`), the
//! templates `palisade plugin new --lang c|python|js` writes (host/templates/<lang>/), and how
//! `palisade plugin build` turns such a project into a component plus sidecar in `dist/`.
//!
//! Each language builds with its upstream tool against the host's own contract (the
//! `wit/plugin.wit` this palisade was built with, embedded), unless the project carries its own
//! `wit/` directory:
//!
//! - C: `wit-bindgen c` generates the bindings, clang-19 (wasm32-wasi, Debian's wasi-libc)
//!   compiles `src/*.c` into a core module, `wasm-tools component new` wraps it (with the preview1
//!   adapter only when the module imports WASI, e.g. for stdio).
//! - Python: `componentize-py componentize app --stub-wasi` (CPython inside; ≈18 MB).
//! - JavaScript: `componentize-js app.js` with every WASI feature disabled (SpiderMonkey
//!   inside; ≈12 MB). `jco componentize` is not used: its 1.35 release cannot read files.
//!
//! The tools are found in the toolchain cache `scripts/setup.sh` fills
//! (`$PALISADE_TOOLCHAINS`, default `~/.cache/palisade/toolchains`), then on `PATH`. Python and
//! JavaScript builds take tens of seconds, so a build whose inputs (sources, WIT, tool versions)
//! hash the same as the last one in the same build dir reuses its component.
//!
//! Must not load or run components: it produces files only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::plugin::PluginKind;

/// The project file of a C, Python or JavaScript plugin project.
pub const PROJECT_FILE: &str = "palisade-plugin.toml";

/// The contract this palisade speaks; projects without their own `wit/` build against it.
pub const PLUGIN_WIT: &str = include_str!("../../../wit/plugin.wit");

/// A language built by this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestLang {
    C,
    Python,
    Js,
}

impl GuestLang {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestLang::C => "c",
            GuestLang::Python => "python",
            GuestLang::Js => "js",
        }
    }
}

/// The world a project exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    Detector,
    Responder,
}

impl World {
    pub fn as_str(self) -> &'static str {
        match self {
            World::Detector => "detector",
            World::Responder => "responder",
        }
    }
}

/// `palisade-plugin.toml`: how to build the project.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    /// Format version; 1.
    pub version: u32,
    /// Plugin name: the component is `dist/<name>.wasm`, the sidecar `<name>.toml`.
    pub name: String,
    pub lang: GuestLang,
    pub world: World,
}

#[derive(Debug, thiserror::Error)]
pub enum PolyglotError {
    #[error("{file}: {reason}")]
    BadProject { file: PathBuf, reason: String },
    #[error("{file}: version {found} is not supported (this build reads version 1)")]
    ProjectVersion { file: PathBuf, found: u32 },
    #[error("{tool} not found (looked in {looked}); install the guest toolchains with `bash scripts/setup.sh`, see docs/plugin-authoring.md")]
    ToolMissing { tool: &'static str, looked: String },
    #[error("{dir}: no {what}")]
    NoSource { dir: PathBuf, what: &'static str },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{dir}: `{command}` failed ({status}):\n{output}")]
    Tool {
        dir: PathBuf,
        command: String,
        status: String,
        output: String,
    },
    #[error("{path}: the tool wrote no WebAssembly component")]
    NotComponent { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PolyglotError + '_ {
    move |e| PolyglotError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Reads and checks `DIR/palisade-plugin.toml`.
pub fn read_project(dir: &Path) -> Result<ProjectFile, PolyglotError> {
    let file = dir.join(PROJECT_FILE);
    let text = std::fs::read_to_string(&file).map_err(io_err(&file))?;
    let project: ProjectFile = toml::from_str(&text).map_err(|e| PolyglotError::BadProject {
        file: file.clone(),
        reason: e.message().to_string(),
    })?;
    if project.version != 1 {
        return Err(PolyglotError::ProjectVersion {
            file,
            found: project.version,
        });
    }
    Ok(project)
}

/// Where the guest tools are.
#[derive(Debug, Clone)]
pub struct Toolchains {
    /// The cache `scripts/setup.sh` installs componentize-py / componentize-js / the adapter into.
    pub root: PathBuf,
}

impl Toolchains {
    /// `$PALISADE_TOOLCHAINS`, else `$XDG_CACHE_HOME/palisade/toolchains`, else
    /// `~/.cache/palisade/toolchains` (what scripts/setup.sh uses).
    pub fn locate() -> Self {
        let root = std::env::var_os("PALISADE_TOOLCHAINS")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .map(|c| PathBuf::from(c).join("palisade/toolchains"))
            })
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".cache/palisade/toolchains"))
            })
            .unwrap_or_else(|| PathBuf::from(".cache/palisade/toolchains"));
        Toolchains { root }
    }

    /// The first existing candidate, then `name` on PATH (and in cargo's bin dir, which a
    /// non-login shell may not have on PATH).
    fn find(&self, tool: &'static str, candidates: &[PathBuf]) -> Result<PathBuf, PolyglotError> {
        let mut looked: Vec<String> = Vec::new();
        for c in candidates {
            if c.is_file() {
                return Ok(c.clone());
            }
            looked.push(c.display().to_string());
        }
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
            dirs.push(PathBuf::from(cargo_home).join("bin"));
        }
        if let Some(home) = std::env::var_os("HOME") {
            dirs.push(PathBuf::from(home).join(".cargo/bin"));
        }
        for d in &dirs {
            let p = d.join(tool);
            if p.is_file() {
                return Ok(p);
            }
        }
        looked.push(format!("PATH and ~/.cargo/bin for `{tool}`"));
        Err(PolyglotError::ToolMissing {
            tool,
            looked: looked.join(", "),
        })
    }

    pub fn clang(&self) -> Result<PathBuf, PolyglotError> {
        self.find("clang-19", &[])
    }
    pub fn wit_bindgen(&self) -> Result<PathBuf, PolyglotError> {
        self.find("wit-bindgen", &[])
    }
    pub fn wasm_tools(&self) -> Result<PathBuf, PolyglotError> {
        self.find("wasm-tools", &[])
    }
    pub fn componentize_py(&self) -> Result<PathBuf, PolyglotError> {
        self.find(
            "componentize-py",
            &[self.root.join("py/bin/componentize-py")],
        )
    }
    pub fn componentize_js(&self) -> Result<PathBuf, PolyglotError> {
        self.find(
            "componentize-js",
            &[self.root.join("js/node_modules/.bin/componentize-js")],
        )
    }
    /// The preview1 reactor adapter, when setup.sh fetched it.
    pub fn adapter(&self) -> Option<PathBuf> {
        let p = self.root.join("wasi_snapshot_preview1.reactor.wasm");
        p.is_file().then_some(p)
    }
}

/// How to build a project.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Intermediate files (bindings, core module, build stamp); default `DIR/build`.
    pub build_dir: Option<PathBuf>,
    /// Where `<name>.wasm` and `<name>.toml` go; default `DIR/dist`.
    pub out_dir: Option<PathBuf>,
    /// Contract directory; default `DIR/wit` when it exists, else the embedded contract.
    pub wit_dir: Option<PathBuf>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub name: String,
    pub lang: GuestLang,
    pub wasm: PathBuf,
    pub sidecar: Option<PathBuf>,
    /// False when the inputs were unchanged and the previous component was reused.
    pub compiled: bool,
}

/// Runs a tool; its output goes into the error when it fails.
fn run(dir: &Path, cmd: &mut Command) -> Result<(), PolyglotError> {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| PolyglotError::Tool {
            dir: dir.to_path_buf(),
            command: command.clone(),
            status: "not started".into(),
            output: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(PolyglotError::Tool {
            dir: dir.to_path_buf(),
            command,
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        });
    }
    Ok(())
}

/// Files of `dir` (not recursive) whose name ends with one of `exts`, sorted.
fn files_with(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, PolyglotError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_file() && exts.iter().any(|e| name.ends_with(e)) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The source files that make a project, by language (what the build stamp hashes).
fn sources(dir: &Path, lang: GuestLang) -> Result<Vec<PathBuf>, PolyglotError> {
    let files = match lang {
        GuestLang::C => {
            let src = dir.join("src");
            let files = if src.is_dir() {
                files_with(&src, &[".c", ".h"])?
            } else {
                Vec::new()
            };
            if !files
                .iter()
                .any(|f| f.extension().is_some_and(|e| e == "c"))
            {
                return Err(PolyglotError::NoSource {
                    dir: dir.to_path_buf(),
                    what: "src/*.c",
                });
            }
            files
        }
        GuestLang::Python => {
            if !dir.join("app.py").is_file() {
                return Err(PolyglotError::NoSource {
                    dir: dir.to_path_buf(),
                    what: "app.py",
                });
            }
            files_with(dir, &[".py"])?
        }
        GuestLang::Js => {
            if !dir.join("app.js").is_file() {
                return Err(PolyglotError::NoSource {
                    dir: dir.to_path_buf(),
                    what: "app.js",
                });
            }
            files_with(dir, &[".js", ".mjs"])?
        }
    };
    Ok(files)
}

/// Version line of a tool, for the build stamp (a new tool version means a new build).
fn tool_version(tool: &Path) -> String {
    Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Builds the C, Python or JavaScript project in `dir`; see the module docs.
pub fn build(dir: &Path, opts: &BuildOptions) -> Result<Built, PolyglotError> {
    let project = read_project(dir)?;
    let tools = Toolchains::locate();
    let build_dir = opts.build_dir.clone().unwrap_or_else(|| dir.join("build"));
    let out_dir = opts.out_dir.clone().unwrap_or_else(|| dir.join("dist"));
    std::fs::create_dir_all(&build_dir).map_err(io_err(&build_dir))?;
    std::fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;

    // The contract goes into the build dir: the JS tool only reads files under its cwd.
    let wit_dir = build_dir.join("wit");
    std::fs::create_dir_all(&wit_dir).map_err(io_err(&wit_dir))?;
    let wit_source = opts
        .wit_dir
        .clone()
        .or_else(|| dir.join("wit").is_dir().then(|| dir.join("wit")));
    let wit_text = match &wit_source {
        Some(src) => {
            let f = src.join("plugin.wit");
            std::fs::read_to_string(&f).map_err(io_err(&f))?
        }
        None => PLUGIN_WIT.to_string(),
    };
    let wit_file = wit_dir.join("plugin.wit");
    if std::fs::read_to_string(&wit_file).ok().as_deref() != Some(wit_text.as_str()) {
        std::fs::write(&wit_file, &wit_text).map_err(io_err(&wit_file))?;
    }

    let srcs = sources(dir, project.lang)?;
    let tool_paths: Vec<PathBuf> = match project.lang {
        GuestLang::C => vec![tools.wit_bindgen()?, tools.clang()?, tools.wasm_tools()?],
        GuestLang::Python => vec![tools.componentize_py()?],
        GuestLang::Js => vec![tools.componentize_js()?],
    };

    let mut hasher = Sha256::new();
    hasher.update(project.lang.as_str());
    hasher.update(project.world.as_str());
    hasher.update(&wit_text);
    for t in &tool_paths {
        hasher.update(t.display().to_string());
        hasher.update(tool_version(t));
    }
    for f in &srcs {
        hasher.update(
            f.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
                .as_bytes(),
        );
        hasher.update(std::fs::read(f).map_err(io_err(f))?);
    }
    let stamp = hex::encode(hasher.finalize());
    let stamp_file = build_dir.join("stamp");
    let component = build_dir.join(format!("{}.wasm", project.name));
    let fresh = component.is_file()
        && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s.trim() == stamp);
    if !fresh {
        // A failed build must not leave a stamp that vouches for an old component.
        let _ = std::fs::remove_file(&stamp_file);
        match project.lang {
            GuestLang::C => build_c(dir, &project, &tools, &build_dir, &component)?,
            GuestLang::Python => build_python(dir, &project, &tools, &build_dir, &component)?,
            GuestLang::Js => build_js(dir, &project, &tools, &build_dir, &srcs, &component)?,
        }
        let bytes = std::fs::read(&component).map_err(io_err(&component))?;
        if !bytes.starts_with(b"\0asm\x0d\x00\x01\x00") {
            return Err(PolyglotError::NotComponent { path: component });
        }
        std::fs::write(&stamp_file, &stamp).map_err(io_err(&stamp_file))?;
    }

    let wasm = out_dir.join(format!("{}.wasm", project.name));
    copy_if_changed(&component, &wasm)?;
    let source_sidecar = dir.join(format!("{}.toml", project.name));
    let sidecar = if source_sidecar.is_file() {
        let to = out_dir.join(format!("{}.toml", project.name));
        copy_if_changed(&source_sidecar, &to)?;
        Some(to)
    } else {
        None
    };
    Ok(Built {
        name: project.name,
        lang: project.lang,
        wasm,
        sidecar,
        compiled: !fresh,
    })
}

/// Copies through a temp file and a rename, and only when the content differs, so a plugin
/// directory watched for hot reload never sees a half-written or spuriously touched file.
fn copy_if_changed(from: &Path, to: &Path) -> Result<(), PolyglotError> {
    let bytes = std::fs::read(from).map_err(io_err(from))?;
    if std::fs::read(to).is_ok_and(|b| b == bytes) {
        return Ok(());
    }
    let tmp = to.with_file_name(format!(
        ".{}.{}.tmp",
        to.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, to).map_err(io_err(to))
}

fn build_c(
    dir: &Path,
    project: &ProjectFile,
    tools: &Toolchains,
    build_dir: &Path,
    component: &Path,
) -> Result<(), PolyglotError> {
    let world = project.world.as_str();
    let gen = build_dir.join("gen");
    run(
        dir,
        Command::new(tools.wit_bindgen()?)
            .arg("c")
            .arg(build_dir.join("wit"))
            .args(["--world", world, "--out-dir"])
            .arg(&gen),
    )?;
    let core = build_dir.join(format!("{}.core.wasm", project.name));
    let c_files: Vec<PathBuf> = sources(dir, GuestLang::C)?
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "c"))
        .collect();
    // Debian's wasi-libc lives under /usr/{include,lib}/wasm32-wasi; a reactor has no main.
    run(
        dir,
        Command::new(tools.clang()?)
            .args([
                "--target=wasm32-wasi",
                "--sysroot=/usr",
                "-O2",
                "-mexec-model=reactor",
                "-Wall",
                "-Werror=implicit-function-declaration",
            ])
            .arg("-I")
            .arg(&gen)
            .arg("-o")
            .arg(&core)
            .args(&c_files)
            .arg(gen.join(format!("{world}.c")))
            .arg(gen.join(format!("{world}_component_type.o"))),
    )?;
    let core_bytes = std::fs::read(&core).map_err(io_err(&core))?;
    let mut cmd = Command::new(tools.wasm_tools()?);
    cmd.args(["component", "new"]).arg(&core);
    // Only a module that calls WASI (stdio, clocks through libc) needs the preview1 adapter.
    if core_bytes
        .windows(b"wasi_snapshot_preview1".len())
        .any(|w| w == b"wasi_snapshot_preview1")
    {
        let adapter = tools.adapter().ok_or(PolyglotError::ToolMissing {
            tool: "wasi_snapshot_preview1.reactor.wasm",
            looked: tools.root.display().to_string(),
        })?;
        cmd.arg("--adapt")
            .arg(format!("wasi_snapshot_preview1={}", adapter.display()));
    }
    cmd.arg("-o").arg(component);
    run(dir, &mut cmd)
}

fn build_python(
    dir: &Path,
    project: &ProjectFile,
    tools: &Toolchains,
    build_dir: &Path,
    component: &Path,
) -> Result<(), PolyglotError> {
    // --stub-wasi: the sandbox gives plugins no files, sockets or environment anyway, and the
    // stubbed component instantiates with less memory.
    run(
        dir,
        Command::new(tools.componentize_py()?)
            .current_dir(dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg("-d")
            .arg(build_dir.join("wit"))
            .args([
                "-w",
                project.world.as_str(),
                "componentize",
                "app",
                "--stub-wasi",
            ])
            .arg("-p")
            .arg(dir)
            .arg("-o")
            .arg(component),
    )
}

fn build_js(
    dir: &Path,
    project: &ProjectFile,
    tools: &Toolchains,
    build_dir: &Path,
    srcs: &[PathBuf],
    component: &Path,
) -> Result<(), PolyglotError> {
    // componentize-js reads files under its cwd only: copy the modules beside the WIT.
    let js_dir = build_dir;
    for f in srcs {
        let to = js_dir.join(f.file_name().unwrap_or_default());
        std::fs::copy(f, &to).map_err(io_err(&to))?;
    }
    // Every WASI feature off: the component then imports only the palisade interfaces.
    run(
        dir,
        Command::new(tools.componentize_js()?)
            .current_dir(js_dir)
            .args(["app.js", "--wit", "wit", "-n", project.world.as_str()])
            .args(["-d", "stdio", "random", "clocks", "http", "fetch-event"])
            .arg("-o")
            .arg(component),
    )
}

/// The kind a project's world makes.
pub fn kind_of(world: World) -> PluginKind {
    match world {
        World::Detector => PluginKind::Detector,
        World::Responder => PluginKind::Responder,
    }
}

const C_PROJECT: &str = include_str!("../../templates/c/palisade-plugin.toml.in");
const C_SOURCE: &str = include_str!("../../templates/c/src/plugin.c.in");
const C_HELPERS: &str = include_str!("../../templates/c/src/palisade.h.in");
const C_GITIGNORE: &str = include_str!("../../templates/c/gitignore.in");
const PY_PROJECT: &str = include_str!("../../templates/python/palisade-plugin.toml.in");
const PY_SOURCE: &str = include_str!("../../templates/python/app.py.in");
const PY_GITIGNORE: &str = include_str!("../../templates/python/gitignore.in");
const JS_PROJECT: &str = include_str!("../../templates/js/palisade-plugin.toml.in");
const JS_SOURCE: &str = include_str!("../../templates/js/app.js.in");
const JS_GITIGNORE: &str = include_str!("../../templates/js/gitignore.in");
const SIDECAR: &str = include_str!("../../templates/polyglot/sidecar.toml.in");
const POSITIVE: &str = include_str!("../../templates/polyglot/fixtures/positive.jsonl");
const NEGATIVE: &str = include_str!("../../templates/polyglot/fixtures/negative.jsonl");
const POSITIVE_EXPECTED: &str =
    include_str!("../../templates/polyglot/fixtures/positive.expected.json");
const NEGATIVE_EXPECTED: &str =
    include_str!("../../templates/polyglot/fixtures/negative.expected.json");

/// The files (relative path, template) of a new detector project in `lang`: the same
/// `exec-from-scratch-dir` detector as the Rust scaffold, with fixtures and golden alerts that
/// `palisade plugin test` checks. Rust is not built here and gets none.
pub fn detector_templates(lang: super::scaffold::Lang, name: &str) -> Vec<(PathBuf, &'static str)> {
    use super::scaffold::Lang;
    let (project, source, gitignore) = match lang {
        Lang::C => (C_PROJECT, ("src/plugin.c", C_SOURCE), C_GITIGNORE),
        Lang::Python => (PY_PROJECT, ("app.py", PY_SOURCE), PY_GITIGNORE),
        Lang::Js => (JS_PROJECT, ("app.js", JS_SOURCE), JS_GITIGNORE),
        Lang::Rust => return Vec::new(),
    };
    let mut files = vec![
        (PathBuf::from(PROJECT_FILE), project),
        (PathBuf::from(".gitignore"), gitignore),
        (PathBuf::from(source.0), source.1),
        (PathBuf::from(format!("{name}.toml")), SIDECAR),
        (PathBuf::from("fixtures/positive.jsonl"), POSITIVE),
        (PathBuf::from("fixtures/negative.jsonl"), NEGATIVE),
        (
            PathBuf::from("fixtures/positive.expected.json"),
            POSITIVE_EXPECTED,
        ),
        (
            PathBuf::from("fixtures/negative.expected.json"),
            NEGATIVE_EXPECTED,
        ),
    ];
    if lang == Lang::C {
        files.push((PathBuf::from("src/palisade.h"), C_HELPERS));
    }
    files
}
