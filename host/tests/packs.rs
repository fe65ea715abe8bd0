//! Signed plugin packs end to end, signed with the real `minisign` CLI: build from two built
//! plugins, verify, install into a plugin dir the daemon then loads, list, upgrade, remove;
//! tampered, truncated, wrongly signed and unsigned packs are refused and install nothing.
//! Also the plugin directory permission check, in the library and through `palisade run`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic on failure, like the tests"
)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use palisade::pack::install::{install, list, remove};
use palisade::pack::permissions::{check_plugin_dir_as, effective_uid};
use palisade::pack::{
    build, signature_path, Pack, PackError, SignatureStatus, TrustPolicy, TrustedKey,
};
use support::Harness;

const PACK_TOML: &str = r#"
version = 1

[pack]
name = "demo-pack"
version = "1.0.0"
description = "shell spawns and notifications"
min_host_version = "0.1.0"

[[plugins]]
file = "shell-spawn.wasm"

[[plugins]]
file = "notify-high.wasm"
capabilities = ["notify"]
"#;

struct Keys {
    public: PathBuf,
    secret: PathBuf,
}

fn keygen(dir: &Path, name: &str) -> Keys {
    let keys = Keys {
        public: dir.join(format!("{name}.pub")),
        secret: dir.join(format!("{name}.key")),
    };
    let out = Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&keys.public)
        .arg("-s")
        .arg(&keys.secret)
        .stdin(Stdio::null())
        .output()
        .expect("minisign CLI installed (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "minisign -G: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    keys
}

fn sign(keys: &Keys, file: &Path) {
    let out = Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(&keys.secret)
        .arg("-m")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "minisign -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(signature_path(file).is_file());
}

/// A pack source dir with shell-spawn and notify-high (and their sidecars) and `manifest`.
fn source_dir(root: &Path, manifest: &str) -> PathBuf {
    let dir = root.join("src");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["shell-spawn", "notify-high"] {
        let built = support::built().plugin(name).unwrap();
        std::fs::copy(&built.wasm, dir.join(format!("{name}.wasm"))).unwrap();
        let sidecar = built.sidecar.as_ref().expect("sidecar");
        std::fs::copy(sidecar, dir.join(format!("{name}.toml"))).unwrap();
    }
    std::fs::write(dir.join("pack.toml"), manifest).unwrap();
    dir
}

fn policy(key: &TrustedKey) -> TrustPolicy<'_> {
    TrustPolicy {
        key: Some(key),
        allow_unsigned: false,
    }
}

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A copy of `pack` and its signature under a new name, with `edit` applied to the pack bytes.
fn altered(pack: &Path, name: &str, edit: impl Fn(&mut Vec<u8>)) -> PathBuf {
    let out = pack.with_file_name(name);
    let mut bytes = std::fs::read(pack).unwrap();
    edit(&mut bytes);
    std::fs::write(&out, bytes).unwrap();
    std::fs::copy(signature_path(pack), signature_path(&out)).unwrap();
    out
}

#[test]
fn signed_pack_lifecycle_and_refusals() {
    let h = Harness::new("");
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "publisher");
    let src = source_dir(tmp.path(), PACK_TOML);
    let pack_file = tmp.path().join("demo-pack.tar.gz");

    // Build: both plugins validated, capabilities checked against the declaration.
    let (manifest, plugins) = build(&src, &pack_file, &h.daemon.registry).unwrap();
    assert_eq!(manifest.pack.name, "demo-pack");
    let names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["shell-spawn", "notify-high"]);
    assert!(plugins.iter().all(|p| p.has_sidecar));
    assert_eq!(
        plugins[1].requested,
        vec![palisade::capability::Capability::Notify]
    );
    // Reproducible archive.
    let again = tmp.path().join("again.tar.gz");
    build(&src, &again, &h.daemon.registry).unwrap();
    assert_eq!(
        std::fs::read(&pack_file).unwrap(),
        std::fs::read(&again).unwrap()
    );

    let key = TrustedKey::parse(keys.public.to_str().unwrap()).unwrap();

    // Unsigned: refused unless allowed.
    let err = Pack::open(&pack_file, policy(&key)).unwrap_err();
    assert!(matches!(err, PackError::Unsigned { .. }), "{err}");
    assert!(err.to_string().contains("--allow-unsigned"), "{err}");
    let unsigned = Pack::open(
        &pack_file,
        TrustPolicy {
            key: Some(&key),
            allow_unsigned: true,
        },
    )
    .unwrap();
    assert_eq!(unsigned.signature, SignatureStatus::Unverified);

    sign(&keys, &pack_file);
    // Signed but no key: refused.
    let err = Pack::open(
        &pack_file,
        TrustPolicy {
            key: None,
            allow_unsigned: false,
        },
    )
    .unwrap_err();
    assert!(matches!(err, PackError::NoTrustKey { .. }), "{err}");

    // Verified with the key file, and with the bare base64 key.
    let pack = Pack::open(&pack_file, policy(&key)).unwrap();
    assert!(
        matches!(&pack.signature, SignatureStatus::Verified { trusted_comment } if trusted_comment.contains("timestamp"))
    );
    let b64 = std::fs::read_to_string(&keys.public)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    let key_b64 = TrustedKey::parse(&b64).unwrap();
    Pack::open(&pack_file, policy(&key_b64)).unwrap();
    let mut entries: Vec<&str> = pack.files.keys().map(String::as_str).collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            "notify-high.toml",
            "notify-high.wasm",
            "pack.toml",
            "shell-spawn.toml",
            "shell-spawn.wasm"
        ]
    );

    // Refusals: nothing is installed by any of them.
    let target = h.plugins_dir();
    let tampered = altered(&pack_file, "tampered.tar.gz", |b| {
        let i = b.len() / 2;
        b[i] ^= 0x01;
    });
    let truncated = altered(&pack_file, "truncated.tar.gz", |b| b.truncate(b.len() / 2));
    let other = keygen(tmp.path(), "stranger");
    let wrong_key = TrustedKey::parse(other.public.to_str().unwrap()).unwrap();
    for (file, key) in [
        (&tampered, &key),
        (&truncated, &key),
        (&pack_file, &wrong_key),
    ] {
        let err = Pack::open(file, policy(key)).unwrap_err();
        assert!(
            matches!(err, PackError::SignatureMismatch { .. }),
            "{}: {err}",
            file.display()
        );
        assert!(err.to_string().contains("Nothing was installed"), "{err}");
    }
    // A truncated pack without a signature, allowed unsigned: the archive itself is refused.
    let cut = tmp.path().join("cut.tar.gz");
    let bytes = std::fs::read(&pack_file).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let err = Pack::open(
        &cut,
        TrustPolicy {
            key: None,
            allow_unsigned: true,
        },
    )
    .unwrap_err();
    assert!(matches!(err, PackError::Archive { .. }), "{err}");
    assert!(
        dir_listing(&target).is_empty(),
        "{:?}",
        dir_listing(&target)
    );

    // Install: files renamed in, record written (hidden), the temp dir gone.
    let report = install(&pack, &target, &h.daemon.registry).unwrap();
    assert_eq!(report.plugins.len(), 2);
    assert!(report.replaced.is_none());
    assert_eq!(
        dir_listing(&target),
        [
            ".packs",
            "notify-high.toml",
            "notify-high.wasm",
            "shell-spawn.toml",
            "shell-spawn.wasm"
        ]
    );
    assert!(
        !dir_listing(h.dir.path())
            .iter()
            .any(|n| n.starts_with(".palisade-pack-")),
        "{:?}",
        dir_listing(h.dir.path())
    );
    let mode = std::fs::metadata(target.join("shell-spawn.wasm"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);
    check_plugin_dir_as(&target, effective_uid()).unwrap();
    // The daemon loads what was installed.
    h.load(2);

    let installed = list(&target).unwrap();
    assert_eq!(installed.len(), 1);
    assert_eq!(installed[0].name, "demo-pack");
    assert_eq!(installed[0].pack_version, "1.0.0");
    assert!(installed[0].signature.contains("timestamp"));
    assert_eq!(installed[0].files.len(), 4);

    // A second pack may not overwrite files it does not own.
    let src2 = tmp.path().join("second");
    std::fs::create_dir_all(&src2).unwrap();
    std::fs::copy(src.join("shell-spawn.wasm"), src2.join("shell-spawn.wasm")).unwrap();
    std::fs::write(
        src2.join("pack.toml"),
        PACK_TOML.replace("demo-pack", "squatter").replace(
            "[[plugins]]\nfile = \"notify-high.wasm\"\ncapabilities = [\"notify\"]\n",
            "",
        ),
    )
    .unwrap();
    let squatter_file = tmp.path().join("squatter.tar.gz");
    build(&src2, &squatter_file, &h.daemon.registry).unwrap();
    sign(&keys, &squatter_file);
    let squatter = Pack::open(&squatter_file, policy(&key)).unwrap();
    let err = install(&squatter, &target, &h.daemon.registry).unwrap_err();
    assert!(
        matches!(&err, PackError::Conflict { owner, .. } if owner.contains("demo-pack")),
        "{err}"
    );

    // Upgrade: version 1.1.0 without notify-high replaces 1.0.0 and removes what it dropped.
    let src3 = tmp.path().join("v2");
    std::fs::create_dir_all(&src3).unwrap();
    std::fs::copy(src.join("shell-spawn.wasm"), src3.join("shell-spawn.wasm")).unwrap();
    std::fs::write(
        src3.join("pack.toml"),
        PACK_TOML.replace("1.0.0", "1.1.0").replace(
            "[[plugins]]\nfile = \"notify-high.wasm\"\ncapabilities = [\"notify\"]\n",
            "",
        ),
    )
    .unwrap();
    let v2_file = tmp.path().join("demo-pack-1.1.0.tar.gz");
    build(&src3, &v2_file, &h.daemon.registry).unwrap();
    sign(&keys, &v2_file);
    let v2 = Pack::open(&v2_file, policy(&key)).unwrap();
    let report = install(&v2, &target, &h.daemon.registry).unwrap();
    assert_eq!(
        report.replaced.as_ref().map(|r| r.pack_version.as_str()),
        Some("1.0.0")
    );
    let mut removed = report.removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        ["notify-high.toml", "notify-high.wasm", "shell-spawn.toml"]
    );
    assert_eq!(dir_listing(&target), [".packs", "shell-spawn.wasm"]);

    // Remove.
    let record = remove(&target, "demo-pack").unwrap();
    assert_eq!(record.pack_version, "1.1.0");
    assert_eq!(dir_listing(&target), [".packs"]);
    assert!(list(&target).unwrap().is_empty());
    let err = remove(&target, "demo-pack").unwrap_err();
    assert!(matches!(err, PackError::NotInstalled { .. }), "{err}");
}

#[test]
fn undeclared_capabilities_and_bad_manifests_are_refused_at_build() {
    let h = Harness::new("");
    let tmp = tempfile::tempdir().unwrap();
    let src = source_dir(
        tmp.path(),
        &PACK_TOML.replace("capabilities = [\"notify\"]\n", ""),
    );
    let err = build(&src, &tmp.path().join("x.tar.gz"), &h.daemon.registry).unwrap_err();
    assert!(
        matches!(&err, PackError::Undeclared { file, capability, .. } if file == "notify-high.wasm" && capability.as_str() == "notify"),
        "{err}"
    );
    assert!(!tmp.path().join("x.tar.gz").exists());

    std::fs::write(
        src.join("pack.toml"),
        PACK_TOML.replace("\"0.1.0\"", "\"99.0.0\""),
    )
    .unwrap();
    // Building for a future host is allowed; opening it here is not.
    let file = tmp.path().join("future.tar.gz");
    build(&src, &file, &h.daemon.registry).unwrap();
    let err = Pack::open(
        &file,
        TrustPolicy {
            key: None,
            allow_unsigned: true,
        },
    )
    .unwrap_err();
    assert!(matches!(err, PackError::HostTooOld { .. }), "{err}");

    std::fs::write(
        src.join("pack.toml"),
        PACK_TOML.replace("shell-spawn.wasm", "missing.wasm"),
    )
    .unwrap();
    let err = build(&src, &tmp.path().join("y.tar.gz"), &h.daemon.registry).unwrap_err();
    assert!(matches!(err, PackError::Missing { .. }), "{err}");
}

/// A pack whose archive carries a file pack.toml does not list is refused.
#[test]
fn unlisted_entries_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("extra.tar.gz");
    let manifest = PACK_TOML.replace(
        "[[plugins]]\nfile = \"notify-high.wasm\"\ncapabilities = [\"notify\"]\n",
        "",
    );
    let bytes = palisade::pack::write_archive(&[
        ("pack.toml".into(), manifest.into_bytes()),
        ("shell-spawn.wasm".into(), b"\0asm".to_vec()),
        ("evil.wasm".into(), b"\0asm".to_vec()),
    ])
    .unwrap();
    std::fs::write(&file, bytes).unwrap();
    let err = Pack::open(
        &file,
        TrustPolicy {
            key: None,
            allow_unsigned: true,
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, PackError::BadEntry { entry, .. } if entry == "evil.wasm"),
        "{err}"
    );
}

fn palisade() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.stdin(Stdio::null());
    cmd
}

#[test]
fn cli_build_verify_install_list_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "cli");
    let src = source_dir(tmp.path(), PACK_TOML);
    let pack = tmp.path().join("demo.tar.gz");
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let run = |args: &[&str]| {
        let out = palisade().args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let p = |path: &Path| path.to_str().unwrap().to_string();

    let (ok, text) = run(&["pack", "build", &p(&src), "-o", &p(&pack)]);
    assert!(ok, "{text}");
    let (ok, text) = run(&[
        "pack",
        "install",
        &p(&pack),
        "--trust",
        &p(&keys.public),
        "--plugins",
        &p(&plugins),
    ]);
    assert!(!ok && text.contains("unsigned pack"), "{text}");
    sign(&keys, &pack);
    let (ok, text) = run(&["pack", "verify", &p(&pack), "--trust", &p(&keys.public)]);
    assert!(ok && text.contains("signature: verified"), "{text}");
    assert!(
        text.contains("notify-high.wasm: responder notify-high"),
        "{text}"
    );
    let (ok, text) = run(&[
        "pack",
        "install",
        &p(&pack),
        "--trust",
        &p(&keys.public),
        "--plugins",
        &p(&plugins),
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("notify-high.wasm: notify"),
        "capabilities shown before install: {text}"
    );
    let (ok, text) = run(&["pack", "list", "--plugins", &p(&plugins)]);
    assert!(ok && text.starts_with("demo-pack 1.0.0"), "{text}");
    let (ok, text) = run(&["pack", "remove", "demo-pack", "--plugins", &p(&plugins)]);
    assert!(ok, "{text}");
    assert_eq!(dir_listing(&plugins), [".packs"]);
}

#[test]
fn permission_check_refuses_writable_or_foreign_plugin_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let me = effective_uid();
    check_plugin_dir_as(&dir, me).unwrap();

    // Group or world writable directory.
    for mode in [0o775, 0o757, 0o777] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = check_plugin_dir_as(&dir, me).unwrap_err().to_string();
        assert!(
            err.contains("writable by") && err.contains("chmod 755"),
            "{err}"
        );
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    // A world-writable plugin file.
    let file = dir.join("x.wasm");
    std::fs::write(&file, b"\0asm").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = check_plugin_dir_as(&dir, me).unwrap_err().to_string();
    assert!(
        err.contains("x.wasm") && err.contains("a plugin file") && err.contains("chmod 644"),
        "{err}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Hidden files (install records, editor temp files) are not plugin files.
    std::fs::write(dir.join(".scratch"), b"").unwrap();
    std::fs::set_permissions(dir.join(".scratch"), std::fs::Permissions::from_mode(0o666)).unwrap();
    check_plugin_dir_as(&dir, me).unwrap();

    // Owned by someone else while running as root.
    if me == 0 {
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
    }
    let err = check_plugin_dir_as(&dir, 0).unwrap_err().to_string();
    assert!(
        err.contains("owned by uid") && err.contains("chown root:root"),
        "{err}"
    );
    if me == 0 {
        std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
    }

    // A writable parent (without the sticky bit) lets others swap the whole directory.
    let parent = tmp.path().join("shared");
    let nested = parent.join("plugins");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::set_permissions(&nested, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = check_plugin_dir_as(&nested, me).unwrap_err().to_string();
    assert!(
        err.contains("a parent of the plugin directory") && err.contains("shared"),
        "{err}"
    );
    // A missing plugin dir is the loader's to report, but its parents still count.
    let err = check_plugin_dir_as(&parent.join("not-yet"), me)
        .unwrap_err()
        .to_string();
    assert!(err.contains("a parent of the plugin directory"), "{err}");
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
    check_plugin_dir_as(&nested, me).unwrap();
    check_plugin_dir_as(&parent.join("not-yet/deeper"), me).unwrap();
}

#[test]
fn run_refuses_a_world_writable_plugin_dir_and_replay_only_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(support::plugin("shell-spawn"), dir.join("shell-spawn.wasm")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let events = tmp.path().join("events.jsonl");
    std::fs::write(&events, "").unwrap();
    let common = |cmd: &mut Command| {
        cmd.arg("--plugins")
            .arg(&dir)
            .arg("--cache-dir")
            .arg(support::cache_dir())
            .arg("--audit-log")
            .arg(tmp.path().join("audit.jsonl"))
            .arg("-o")
            .arg(tmp.path().join("alerts.jsonl"));
    };
    let mut run = palisade();
    run.arg("run")
        .arg("--no-watch")
        .arg(format!("--source=replay:{}", events.display()));
    common(&mut run);
    let out = run.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "run accepted a world-writable plugin dir: {stderr}"
    );
    assert!(
        stderr.contains("chmod 755") && stderr.contains("writable by"),
        "{stderr}"
    );

    let mut replay = palisade();
    replay.arg("replay").arg(&events);
    common(&mut replay);
    let out = replay.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay: {stderr}");
    assert!(stderr.contains("would refuse this directory"), "{stderr}");
}

/// Waits until the registry's plugin names are `want` (sorted), or panics.
fn wait_plugins(h: &Harness, want: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let set = h.daemon.registry.snapshot();
        let mut names: Vec<String> = set.all().map(|p| p.name().to_string()).collect();
        names.sort();
        if names == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "plugins {names:?}, want {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn hot_reload_picks_up_an_installed_pack_and_its_removal() {
    let h = Harness::new("");
    let scratch = Harness::new("");
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(tmp.path(), "reload");
    let src = source_dir(tmp.path(), PACK_TOML);
    let file = tmp.path().join("demo.tar.gz");
    build(&src, &file, &scratch.daemon.registry).unwrap();
    sign(&keys, &file);
    let key = TrustedKey::parse(keys.public.to_str().unwrap()).unwrap();
    let pack = Pack::open(&file, policy(&key)).unwrap();

    let _watch = h.daemon.watch_dir(h.plugins_dir()).unwrap();
    install(&pack, &h.plugins_dir(), &scratch.daemon.registry).unwrap();
    wait_plugins(&h, &["notify-high", "shell-spawn"]);
    remove(&h.plugins_dir(), "demo-pack").unwrap();
    wait_plugins(&h, &[]);
}
