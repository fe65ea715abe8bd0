//! Kernel/user ABI shared by `palisade-ebpf` and the host: `#[repr(C)]` records with explicit
//! padding and `const` size asserts. Nothing here may allocate or depend on `std`; bytes become
//! host types only in the host's decode function.
#![no_std]
