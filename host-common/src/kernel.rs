//! Byte offsets of the few kernel struct members the programs read (aya-ebpf has no CO-RE
//! relocations). The host resolves them from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`, `palisade::ebpf::btf`) and sets them as the load-time global
//! [`GLOBAL_KERNEL_OFFSETS`] of every object that reads kernel structs. A member the BTF does
//! not have is [`OFFSET_UNKNOWN`]: programs must check before using an offset and fall back
//! (or report the field as unknown), never read at a guessed offset.

/// Name of the load-time global holding a [`KernelOffsets`] array.
pub const GLOBAL_KERNEL_OFFSETS: &str = "KERNEL_OFFSETS";

/// An offset the running kernel's BTF did not resolve.
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// `task_struct.mm` (`struct mm_struct *`).
pub const OFF_TASK_MM: usize = 0;
/// `task_struct.exit_code` (`int`).
pub const OFF_TASK_EXIT_CODE: usize = 1;
/// `mm_struct.arg_start` (`unsigned long`, user address of the argv strings).
pub const OFF_MM_ARG_START: usize = 2;
/// `mm_struct.arg_end` (`unsigned long`).
pub const OFF_MM_ARG_END: usize = 3;
/// `mm_struct.exe_file` (`struct file *`).
pub const OFF_MM_EXE_FILE: usize = 4;
/// `file.f_inode` (`struct inode *`).
pub const OFF_FILE_INODE: usize = 5;
/// `inode.i_ino` (`unsigned long`).
pub const OFF_INODE_INO: usize = 6;
/// `inode.i_sb` (`struct super_block *`).
pub const OFF_INODE_SB: usize = 7;
/// `super_block.s_dev` (`dev_t`, the kernel's internal encoding: major << 20 | minor).
pub const OFF_SB_DEV: usize = 8;
/// The slots the exec'd file's identity read needs, in the order the pointer chain follows
/// them: `task->mm`, `mm->exe_file`, `file->f_inode`, then `inode->i_ino`, `inode->i_sb` and
/// `sb->s_dev`. The enforcement program reads through them; the host matches execs by identity
/// only when every one is known.
pub const IDENTITY_SLOTS: [usize; 6] = [
    OFF_TASK_MM,
    OFF_MM_EXE_FILE,
    OFF_FILE_INODE,
    OFF_INODE_INO,
    OFF_INODE_SB,
    OFF_SB_DEV,
];
/// Slots in [`KernelOffsets`] (room to grow without changing the global's size).
pub const OFFSET_SLOTS: usize = 16;

/// The offsets, indexed by the `OFF_*` constants; unused slots are [`OFFSET_UNKNOWN`].
pub type KernelOffsets = [u32; OFFSET_SLOTS];

/// Every slot unknown: the value programs see when the host set nothing.
pub const UNKNOWN_OFFSETS: KernelOffsets = [OFFSET_UNKNOWN; OFFSET_SLOTS];

/// The kernel's internal `dev_t` (as `super_block.s_dev` holds it) from a major and minor
/// number, so userspace can compare `stat(2)`'s device with what a program read.
pub const fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}
