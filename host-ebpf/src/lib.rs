//! What both kernel objects share: the load-time `KERNEL_OFFSETS` global and its readers. The
//! programs are the crate's binaries (`src/main.rs`, the event programs, and
//! `src/bin/palisade-enforce.rs`, the actuators), built for bpfel-unknown-none by
//! host/build.rs; each links this library, so each object carries its own copy of the global
//! (the host sets it per object with `override_global`). `palisade-host` also lists the crate
//! as a build-dependency so it is rebuilt when this changes, which compiles this file for the
//! host target too: nothing here may need the bpf target to compile.
//!
//! Kernel structs are read only at the member offsets the host resolved from the running
//! kernel's BTF (`palisade_common::kernel`; aya-ebpf has no CO-RE relocations), through
//! [`read_kernel_at`], which refuses an unresolved offset.
#![no_std]
#![expect(
    unsafe_code,
    reason = "reads a load-time global and kernel memory through BPF helpers"
)]

use aya_ebpf::{helpers::generated as h, Global};
use palisade_common::kernel::{KernelOffsets, OFFSET_SLOTS, OFFSET_UNKNOWN, UNKNOWN_OFFSETS};

/// Struct member offsets from the running kernel's BTF (`palisade_common::kernel`), set at
/// load; every slot unknown unless the host resolved it.
#[unsafe(no_mangle)]
pub static KERNEL_OFFSETS: Global<KernelOffsets> = Global::new(UNKNOWN_OFFSETS);

/// `KERNEL_OFFSETS[slot]`, or `None` when the host could not resolve it. A read-only global:
/// the verifier sees the constant and prunes the branch a kernel does not take. Reads the one
/// slot (no copy of the array onto the 512-byte stack).
#[inline(always)]
pub fn kernel_offset(slot: usize) -> Option<u64> {
    if slot >= OFFSET_SLOTS {
        return None;
    }
    // SAFETY: `Global` is a transparent wrapper of the array; `slot` is in bounds.
    let off =
        unsafe { core::ptr::read_volatile((&raw const KERNEL_OFFSETS).cast::<u32>().add(slot)) };
    (off != OFFSET_UNKNOWN).then_some(u64::from(off))
}

/// Reads the `T` at `base + KERNEL_OFFSETS[slot]` in kernel memory: `None` when the offset is
/// unknown, `base` is null or the read fails. Chains: the result of one read is the `base` of
/// the next, and the first `None` ends the chain.
#[inline(always)]
pub fn read_kernel_at<T: Copy>(base: u64, slot: usize) -> Option<T> {
    let off = kernel_offset(slot)?;
    if base == 0 {
        return None;
    }
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `value` and fails (without
    // faulting) on a bad kernel address.
    let rc = unsafe {
        h::bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            (base + off) as *const _,
        )
    };
    // SAFETY: a successful read filled every byte.
    (rc == 0).then(|| unsafe { value.assume_init() })
}
