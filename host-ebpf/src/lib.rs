//! Palisade's kernel programs. Filled by the kernel event source issue; empty until then.
#![no_std]
