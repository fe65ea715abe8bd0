//! Build tasks shared by the `xtask` binary and the host integration tests.
//!
//! [`build_plugins`] compiles the guest workspaces (`plugins/`, `tests/plugins/`) for
//! `wasm32-wasip2` in their own target dir (`target/wasm`, so it can run from inside a
//! `cargo test` of the host without fighting over the host's build lock) and collects each
//! component with its sidecar into `target/plugins/` and `target/test-plugins/`. Files there are
//! replaced atomically (temp file + rename) and only when their content changed, so a hot-reload
//! watcher on those directories never sees a half-written plugin or a spurious change.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// The wasm target guests are built for.
pub const GUEST_TARGET: &str = "wasm32-wasip2";

/// Guest build profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `--release`: optimised, LTO, stripped, `panic = "abort"` (what the host runs).
    Release,
    /// The dev profile: faster to build, much slower to run.
    Debug,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// A guest cargo workspace and where its components are collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestWorkspace {
    /// Directory holding the workspace `Cargo.toml`.
    pub dir: PathBuf,
    /// Directory the components and sidecars are copied to.
    pub out_dir: PathBuf,
}

/// The guest workspaces of the repository at `root`: first-party plugins, then test plugins.
pub fn guest_workspaces(root: &Path) -> [GuestWorkspace; 2] {
    [
        GuestWorkspace {
            dir: root.join("plugins"),
            out_dir: root.join("target/plugins"),
        },
        GuestWorkspace {
            dir: root.join("tests/plugins"),
            out_dir: root.join("target/test-plugins"),
        },
    ]
}

/// One collected plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPlugin {
    /// Plugin (crate) name, e.g. `sensitive-files`; also the file stem.
    pub name: String,
    /// `<out_dir>/<name>.wasm`.
    pub wasm: PathBuf,
    /// `<out_dir>/<name>.toml` when the crate has a sidecar.
    pub sidecar: Option<PathBuf>,
    /// True when this build changed the collected `.wasm` or sidecar.
    pub changed: bool,
}

/// Everything [`build_plugins`] collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPlugins {
    /// `<root>/target/plugins`.
    pub plugins_dir: PathBuf,
    /// `<root>/target/test-plugins`.
    pub test_plugins_dir: PathBuf,
    /// First-party plugins, sorted by name.
    pub plugins: Vec<BuiltPlugin>,
    /// Test plugins, sorted by name.
    pub test_plugins: Vec<BuiltPlugin>,
}

impl BuiltPlugins {
    /// A first-party plugin by name.
    pub fn plugin(&self, name: &str) -> Option<&BuiltPlugin> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// A test plugin by name.
    pub fn test_plugin(&self, name: &str) -> Option<&BuiltPlugin> {
        self.test_plugins.iter().find(|p| p.name == name)
    }
}

/// How to run the build.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// Guest profile.
    pub profile: Profile,
    /// Let cargo write its progress to this process's stderr (the CLI does; tests capture it and
    /// put it in the error only when the build fails).
    pub show_cargo_output: bool,
}

/// The repository root, as seen by this crate at compile time (`xtask/..`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// Builds every guest plugin and collects the components; see the crate docs.
pub fn build_plugins(root: &Path, profile: Profile) -> Result<BuiltPlugins> {
    build_plugins_with(
        root,
        BuildOptions {
            profile,
            show_cargo_output: false,
        },
    )
}

/// [`build_plugins`] (release) for the repository this crate belongs to, at most once per
/// process: the integration tests of one test binary share the result.
pub fn build_plugins_once() -> Result<&'static BuiltPlugins> {
    static BUILT: OnceLock<std::result::Result<BuiltPlugins, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            build_plugins(&workspace_root(), Profile::Release).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("building guest plugins failed: {e}"))
}

/// [`build_plugins`] with options.
pub fn build_plugins_with(root: &Path, options: BuildOptions) -> Result<BuiltPlugins> {
    let target_dir = root.join("target/wasm");
    let [first_party, tests] = guest_workspaces(root);
    let artifacts = target_dir.join(GUEST_TARGET).join(options.profile.dir());
    cargo_build(&first_party.dir, &target_dir, options)?;
    let plugins = collect(&first_party, &artifacts)?;
    cargo_build(&tests.dir, &target_dir, options)?;
    let test_plugins = collect(&tests, &artifacts)?;
    Ok(BuiltPlugins {
        plugins_dir: first_party.out_dir,
        test_plugins_dir: tests.out_dir,
        plugins,
        test_plugins,
    })
}

/// Runs the guests' native unit tests (`cargo test` in each guest workspace, host target).
pub fn test_plugins(root: &Path) -> Result<()> {
    let target_dir = root.join("target/wasm");
    for ws in guest_workspaces(root) {
        let mut cmd = guest_cargo(&ws.dir, &target_dir);
        cmd.arg("test");
        let status = cmd
            .status()
            .with_context(|| format!("running cargo test in {}", ws.dir.display()))?;
        if !status.success() {
            bail!("cargo test failed in {} ({status})", ws.dir.display());
        }
    }
    Ok(())
}

/// Environment variables a parent cargo (e.g. `cargo test` of the host) sets that must not leak
/// into the guest build: flags for the host target, a jobserver the child cannot use, the
/// parent's package identity, a toolchain pin other than rust-toolchain.toml's.
const SCRUBBED_ENV: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTUP_TOOLCHAIN",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "LLVM_PROFILE_FILE",
];

fn guest_cargo(dir: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.current_dir(dir).env("CARGO_TARGET_DIR", target_dir);
    cmd
}

fn cargo_build(dir: &Path, target_dir: &Path, options: BuildOptions) -> Result<()> {
    if !dir.join("Cargo.toml").is_file() {
        bail!("no guest workspace at {}", dir.display());
    }
    let mut cmd = guest_cargo(dir, target_dir);
    cmd.args(["build", "--target", GUEST_TARGET]);
    if options.profile == Profile::Release {
        cmd.arg("--release");
    }
    let what = format!("cargo build --target {GUEST_TARGET} in {}", dir.display());
    if options.show_cargo_output {
        let status = cmd.status().with_context(|| format!("running {what}"))?;
        if !status.success() {
            bail!("{what} failed ({status})");
        }
    } else {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// A guest crate found in a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GuestCrate {
    name: String,
    dir: PathBuf,
}

/// The `cdylib` crates directly under a guest workspace dir, sorted by name.
fn guest_crates(ws_dir: &Path) -> Result<Vec<GuestCrate>> {
    let mut crates = Vec::new();
    let entries = fs::read_dir(ws_dir).with_context(|| format!("listing {}", ws_dir.display()))?;
    for entry in entries {
        let dir = entry
            .with_context(|| format!("listing {}", ws_dir.display()))?
            .path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        if !text.contains("cdylib") {
            continue;
        }
        let name = package_name(&text)
            .with_context(|| format!("no [package] name in {}", manifest.display()))?;
        crates.push(GuestCrate { name, dir });
    }
    crates.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(crates)
}

/// The `name` of the `[package]` table of a manifest (a line-based read: the guest manifests
/// are ours and simple, and the xtask stays free of a TOML parser).
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if !in_package {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() == "name" {
            return Some(value.trim().trim_matches('"').to_string());
        }
    }
    None
}

fn collect(ws: &GuestWorkspace, artifacts: &Path) -> Result<Vec<BuiltPlugin>> {
    fs::create_dir_all(&ws.out_dir)
        .with_context(|| format!("creating {}", ws.out_dir.display()))?;
    let mut built = Vec::new();
    for krate in guest_crates(&ws.dir)? {
        let artifact = artifacts.join(format!("{}.wasm", krate.name.replace('-', "_")));
        let bytes =
            fs::read(&artifact).with_context(|| format!("reading {}", artifact.display()))?;
        if !is_component(&bytes) {
            bail!(
                "{} is not a WebAssembly component (header {:02x?})",
                artifact.display(),
                &bytes[..bytes.len().min(8)]
            );
        }
        let wasm = ws.out_dir.join(format!("{}.wasm", krate.name));
        let mut changed = write_if_changed(&wasm, &bytes)?;

        let source_sidecar = krate.dir.join(format!("{}.toml", krate.name));
        let sidecar_dest = ws.out_dir.join(format!("{}.toml", krate.name));
        let sidecar = if source_sidecar.is_file() {
            let text = fs::read(&source_sidecar)
                .with_context(|| format!("reading {}", source_sidecar.display()))?;
            changed |= write_if_changed(&sidecar_dest, &text)?;
            Some(sidecar_dest)
        } else {
            // A sidecar deleted from the source must not linger and keep configuring the plugin.
            if sidecar_dest.exists() {
                fs::remove_file(&sidecar_dest)
                    .with_context(|| format!("removing {}", sidecar_dest.display()))?;
                changed = true;
            }
            None
        };
        built.push(BuiltPlugin {
            name: krate.name,
            wasm,
            sidecar,
            changed,
        });
    }
    Ok(built)
}

/// True when `bytes` start like a WebAssembly component (magic `\0asm`, version 0x0d, layer 1),
/// as opposed to a core module (version 1, layer 0).
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm\x0d\x00\x01\x00")
}

/// Writes `bytes` to `dest` through a temp file and a rename, unless `dest` already holds
/// exactly these bytes. Returns whether it wrote.
pub fn write_if_changed(dest: &Path, bytes: &[u8]) -> Result<bool> {
    if fs::read(dest).is_ok_and(|existing| existing == bytes) {
        return Ok(false);
    }
    let dir = dest
        .parent()
        .context("destination has no parent directory")?;
    let file_name = dest
        .file_name()
        .context("destination has no file name")?
        .to_string_lossy();
    // A dot-prefixed name with a foreign extension, so a watcher of `*.wasm` / `*.toml` ignores it.
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, dest)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
    })();
    if result.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// The C, Python and JavaScript plugin projects under `plugins/polyglot/`, sorted.
pub fn polyglot_projects(root: &Path) -> Result<Vec<PathBuf>> {
    let parent = root.join("plugins/polyglot");
    let mut dirs = Vec::new();
    for entry in fs::read_dir(&parent).with_context(|| format!("listing {}", parent.display()))? {
        let dir = entry
            .with_context(|| format!("listing {}", parent.display()))?
            .path();
        if dir.join("palisade-plugin.toml").is_file() {
            dirs.push(dir);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// The release `palisade` binary the polyglot tasks drive (`$PALISADE_BIN` overrides).
fn palisade_bin(root: &Path) -> Result<PathBuf> {
    let bin = std::env::var_os("PALISADE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/palisade"));
    if !bin.is_file() {
        bail!(
            "{} not found: run `cargo build --release -p palisade-host` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// `target/compile-cache` beside the `target/release/palisade` binary.
fn bin_cache_dir(bin: &Path) -> PathBuf {
    bin.parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("compile-cache")
}

fn run_palisade(bin: &Path, args: &[&std::ffi::OsStr]) -> Result<()> {
    let line = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    // One compile cache for every run: each fixture of a Python or JavaScript plugin would
    // otherwise compile its interpreter again.
    let status = Command::new(bin)
        .args(args)
        .env("PALISADE_CACHE_DIR", bin_cache_dir(bin))
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running palisade {line}"))?;
    if !status.success() {
        bail!("`palisade {line}` failed ({status})");
    }
    Ok(())
}

/// Builds one polyglot project with `palisade plugin build` into `out_dir`, intermediates in
/// `build_dir` (whose stamp makes an unchanged rebuild instant). Returns the component.
fn build_polyglot_project(
    bin: &Path,
    dir: &Path,
    out_dir: &Path,
    build_dir: &Path,
) -> Result<PathBuf> {
    run_palisade(
        bin,
        &[
            "plugin".as_ref(),
            "build".as_ref(),
            dir.as_os_str(),
            "--out-dir".as_ref(),
            out_dir.as_os_str(),
            "--build-dir".as_ref(),
            build_dir.as_os_str(),
        ],
    )?;
    let name = dir
        .file_name()
        .context("project dir has no name")?
        .to_string_lossy()
        .into_owned();
    Ok(out_dir.join(format!("{name}.wasm")))
}

/// `cargo xtask build-polyglot`: builds every `plugins/polyglot/` project into
/// `target/polyglot-plugins/` (kept apart from `target/plugins/`: 12-18 MB interpreters the
/// demo and the Rust pack's tests should not load). Returns the components.
pub fn build_polyglot(root: &Path) -> Result<Vec<PathBuf>> {
    let bin = palisade_bin(root)?;
    let out_dir = root.join("target/polyglot-plugins");
    polyglot_projects(root)?
        .iter()
        .map(|dir| {
            let name = dir.file_name().unwrap_or_default();
            build_polyglot_project(
                &bin,
                dir,
                &out_dir,
                &root.join("target/polyglot").join(name),
            )
        })
        .collect()
}

/// `cargo xtask test-polyglot`: builds the polyglot plugins and replays each one's positive and
/// negative fixtures against its golden file with `palisade plugin test` (`--bless` with
/// `BLESS=1`); then scaffolds a detector in C, Python and JavaScript with `palisade plugin
/// new`, builds it and runs the scaffold's own fixtures, which must pass out of the box.
pub fn test_polyglot(root: &Path) -> Result<()> {
    let bin = palisade_bin(root)?;
    let bless = std::env::var_os("BLESS").is_some();
    let test = |wasm: &Path, fixtures: &Path, bless: bool| -> Result<()> {
        for kind in ["positive", "negative"] {
            let events = fixtures.join(format!("{kind}.jsonl"));
            let expect = fixtures.join(format!("{kind}.expected.json"));
            let mut args: Vec<&std::ffi::OsStr> = vec![
                "plugin".as_ref(),
                "test".as_ref(),
                wasm.as_os_str(),
                "--events".as_ref(),
                events.as_os_str(),
                "--expect".as_ref(),
                expect.as_os_str(),
            ];
            if bless {
                args.push("--bless".as_ref());
            }
            run_palisade(&bin, &args)?;
        }
        Ok(())
    };
    let mut failures = Vec::new();
    for (dir, wasm) in polyglot_projects(root)?.iter().zip(build_polyglot(root)?) {
        if let Err(e) = test(&wasm, &dir.join("fixtures"), bless) {
            failures.push(format!("{}: {e:#}", dir.display()));
        }
    }
    let scratch = root.join("target/polyglot-scaffold");
    for lang in ["c", "python", "js"] {
        let name = format!("scaffold-{lang}");
        let dir = scratch.join("projects").join(&name);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let result = run_palisade(
            &bin,
            &[
                "plugin".as_ref(),
                "new".as_ref(),
                name.as_ref(),
                "--lang".as_ref(),
                lang.as_ref(),
                "-o".as_ref(),
                dir.as_os_str(),
            ],
        )
        .and_then(|()| {
            build_polyglot_project(
                &bin,
                &dir,
                &dir.join("dist"),
                &scratch.join("build").join(&name),
            )
        })
        .and_then(|wasm| test(&wasm, &dir.join("fixtures"), false));
        if let Err(e) = result {
            failures.push(format!("scaffold --lang {lang}: {e:#}"));
        }
    }
    if !failures.is_empty() {
        bail!("polyglot plugin tests failed:\n{}", failures.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("palisade-xtask-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn component_header_is_recognised() {
        assert!(is_component(b"\0asm\x0d\x00\x01\x00rest"));
        assert!(!is_component(b"\0asm\x01\x00\x00\x00"), "core module");
        assert!(!is_component(b"\0asm"));
        assert!(!is_component(b"garbage!"));
    }

    #[test]
    fn package_name_reads_only_the_package_table() {
        let m = "[workspace]\nname = \"nope\"\n[package]\nname = \"alert-flood\"\nversion = \"1\"\n[lib]\nname = \"x\"\n";
        assert_eq!(package_name(m).as_deref(), Some("alert-flood"));
        assert_eq!(package_name("[lib]\nname = \"x\"\n"), None);
    }

    #[test]
    fn write_if_changed_writes_atomically_and_only_on_change() {
        let dir = scratch("write");
        let dest = dir.join("a.wasm");
        assert!(write_if_changed(&dest, b"one").unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"one");
        let before = fs::metadata(&dest).unwrap().modified().unwrap();
        assert!(!write_if_changed(&dest, b"one").unwrap());
        assert_eq!(fs::metadata(&dest).unwrap().modified().unwrap(), before);
        assert!(write_if_changed(&dest, b"two").unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("a.wasm")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guest_crates_lists_cdylibs_sorted() {
        let dir = scratch("crates");
        for (name, kind) in [
            ("b-plugin", "cdylib"),
            ("a-plugin", "cdylib"),
            ("helper", "rlib"),
        ] {
            fs::create_dir_all(dir.join(name)).unwrap();
            fs::write(
                dir.join(name).join("Cargo.toml"),
                format!("[package]\nname = \"{name}\"\n[lib]\ncrate-type = [\"{kind}\"]\n"),
            )
            .unwrap();
        }
        let names: Vec<String> = guest_crates(&dir)
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, vec!["a-plugin", "b-plugin"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn workspaces_are_under_the_root() {
        let root = workspace_root();
        assert!(root.join("Cargo.toml").is_file());
        let [a, b] = guest_workspaces(&root);
        assert!(a.dir.join("Cargo.toml").is_file());
        assert!(b.dir.join("Cargo.toml").is_file());
        assert!(a.out_dir.ends_with("target/plugins"));
        assert!(b.out_dir.ends_with("target/test-plugins"));
    }
}
