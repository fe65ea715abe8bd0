//! Builds the kernel programs (`host-ebpf`, crate `palisade-ebpf`) for bpfel-unknown-none with
//! aya-build, nightly `-Z build-std=core` and bpf-linker, into `$OUT_DIR/palisade-ebpf`, which
//! `src/ebpf/` embeds. Only with the `ebpf` feature: without it this script does nothing, so a
//! default build needs neither nightly nor bpf-linker.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "ebpf")]
    if std::env::var_os("CARGO_FEATURE_EBPF").is_some() {
        ebpf::build();
    }
}

#[cfg(feature = "ebpf")]
mod ebpf {
    use std::path::PathBuf;

    /// Toolchain override: the eBPF build's LLVM must match bpf-linker's (22 here), so a pinned
    /// nightly name can be given instead of the floating `nightly`.
    const TOOLCHAIN_ENV: &str = "PALISADE_EBPF_TOOLCHAIN";

    #[expect(clippy::print_stderr, reason = "a build script reports through stderr")]
    pub fn build() {
        println!("cargo:rerun-if-env-changed={TOOLCHAIN_ENV}");
        let manifest_dir =
            PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
        let root = manifest_dir.join("..").join("host-ebpf");
        let root_dir = root.to_string_lossy().into_owned();
        let toolchain_name = std::env::var(TOOLCHAIN_ENV).ok();
        let toolchain = match toolchain_name.as_deref() {
            Some(name) if !name.is_empty() => aya_build::Toolchain::Custom(name),
            _ => aya_build::Toolchain::Nightly,
        };
        let package = aya_build::Package {
            name: "palisade-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        };
        if let Err(err) = aya_build::build_ebpf([package], toolchain) {
            // A build script reports failure by exiting non-zero; say what is needed to fix it.
            eprintln!(
                "error: building the eBPF programs failed: {err:#}\n\
                 needs: rustup nightly with rust-src, bpf-linker 0.13 (LLVM matching the nightly's) \
                 in PATH; see scripts/setup.sh. Build without `--features ebpf` to skip."
            );
            std::process::exit(1);
        }
    }
}
