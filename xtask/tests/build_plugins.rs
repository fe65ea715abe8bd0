//! Builds every guest plugin for real and checks what lands in target/plugins and
//! target/test-plugins: components only, sidecars beside them, and no rewrite when nothing
//! changed (a hot-reload watcher on those dirs must not see spurious changes).

use std::fs;

use xtask::{build_plugins, is_component, workspace_root, Profile};

/// The crates of a guest workspace that build a component (cdylib), by directory name: what the
/// build must collect, derived from the tree so a new plugin cannot be silently skipped.
fn component_crates(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            fs::read_to_string(e.path().join("Cargo.toml"))
                .map(|t| t.contains("cdylib"))
                .unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn builds_and_collects_every_plugin_as_a_component() {
    let root = workspace_root();
    let built = build_plugins(&root, Profile::Release).unwrap();

    let names: Vec<String> = built.plugins.iter().map(|p| p.name.clone()).collect();
    assert_eq!(names, component_crates(&root.join("plugins")));
    assert!(names.iter().any(|n| n == "sensitive-files"), "{names:?}");
    let names: Vec<String> = built.test_plugins.iter().map(|p| p.name.clone()).collect();
    assert_eq!(names, component_crates(&root.join("tests/plugins")));
    assert!(names.iter().any(|n| n == "counter"), "{names:?}");

    for p in built.plugins.iter().chain(&built.test_plugins) {
        let bytes = fs::read(&p.wasm).unwrap();
        assert!(
            is_component(&bytes),
            "{} is not a component",
            p.wasm.display()
        );
        assert_eq!(
            p.wasm.file_name().unwrap().to_str().unwrap(),
            format!("{}.wasm", p.name)
        );
    }
    for p in &built.plugins {
        let sidecar = p
            .sidecar
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no sidecar", p.name));
        let text = fs::read_to_string(sidecar).unwrap();
        assert!(
            text.lines().any(|l| l.trim() == "version = 1"),
            "{}",
            sidecar.display()
        );
        assert_eq!(sidecar.parent(), Some(built.plugins_dir.as_path()));
    }
    assert_eq!(built.plugins_dir, root.join("target/plugins"));
    assert_eq!(built.test_plugins_dir, root.join("target/test-plugins"));

    // A second build changes nothing on disk.
    let again = build_plugins(&root, Profile::Release).unwrap();
    assert!(
        again
            .plugins
            .iter()
            .chain(&again.test_plugins)
            .all(|p| !p.changed),
        "{again:#?}"
    );
}
