//! Bakes the absolute path of the WIT contract into the plugin export macros.
//!
//! `export_detector!` / `export_responder!` expand, inside the *plugin* crate, to a
//! `wit_bindgen::generate!` call for the plugin's world. That proc macro resolves relative paths
//! against the plugin's manifest dir and only accepts a string literal, so the SDK writes the
//! macros here with the contract's absolute path spelled out.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    // A packaged SDK carries its own copy in `sdk/wit`; in the repository the one contract is `../wit`.
    let local = manifest_dir.join("wit");
    let wit = if local.join("plugin.wit").is_file() {
        local
    } else {
        manifest_dir.join("../wit")
    };
    let wit = fs::canonicalize(&wit).unwrap_or(wit);
    println!("cargo:rerun-if-changed={}", wit.display());
    println!("cargo:rerun-if-changed=src/export_macros.rs.in");

    let template = match fs::read_to_string(manifest_dir.join("src/export_macros.rs.in")) {
        Ok(t) => t,
        Err(e) => panic!("palisade-sdk build: cannot read src/export_macros.rs.in: {e}"),
    };
    let wit_str = wit.to_string_lossy();
    // Debug-format gives a valid Rust string literal even for odd characters in the path.
    let expanded = template.replace("@WIT_PATH@", &format!("{wit_str:?}"));
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("export_macros.rs");
    if let Err(e) = fs::write(&out, expanded) {
        panic!("palisade-sdk build: cannot write {}: {e}", out.display());
    }
}
