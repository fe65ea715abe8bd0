//! Library face of `palisade-ebpf`: empty on purpose. The kernel programs are the crate's binary
//! (`src/main.rs`, built for bpfel-unknown-none by host/build.rs); this lib only exists so
//! `palisade-host` can list the crate as a build-dependency and be rebuilt when it changes.
#![no_std]
