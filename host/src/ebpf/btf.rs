//! Struct member offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`), for the
//! programs that read kernel structs: aya-ebpf has no CO-RE relocations, so the host resolves
//! the few offsets they need and hands them over as the `KERNEL_OFFSETS` load-time global
//! (`palisade_common::kernel`). Only what that needs is parsed: the type section's layout and
//! struct/union members (anonymous members are searched through, as C field access does).
//!
//! Usage: [`running_kernel_offsets`] for every object load (parsed once per process, logged
//! once); a member this kernel lacks stays `OFFSET_UNKNOWN`, and the programs fall back for it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use palisade_common::kernel::{self as abi, KernelOffsets, OFFSET_UNKNOWN};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Every `KERNEL_OFFSETS` slot and the member that fills it: (slot, struct, member).
pub const OFFSET_TABLE: &[(usize, &str, &str)] = &[
    (abi::OFF_TASK_MM, "task_struct", "mm"),
    (abi::OFF_TASK_EXIT_CODE, "task_struct", "exit_code"),
    (abi::OFF_MM_ARG_START, "mm_struct", "arg_start"),
    (abi::OFF_MM_ARG_END, "mm_struct", "arg_end"),
    (abi::OFF_MM_EXE_FILE, "mm_struct", "exe_file"),
    (abi::OFF_FILE_INODE, "file", "f_inode"),
    (abi::OFF_INODE_INO, "inode", "i_ino"),
    (abi::OFF_INODE_SB, "inode", "i_sb"),
    (abi::OFF_SB_DEV, "super_block", "s_dev"),
];

/// Why BTF could not be read or a member not resolved.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading BTF {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("BTF {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("BTF has no struct {name}")]
    NoStruct { name: String },
    #[error("struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("member {strukt}.{member} is a bitfield (bit offset {bits}), not addressable")]
    Bitfield {
        strukt: String,
        member: String,
        bits: u32,
    },
}

// BTF kinds (include/uapi/linux/btf.h) whose records this parser must step over or read.
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
const KIND_MAX: u32 = 19;

const BTF_MAGIC: u16 = 0xeb9f;

/// One struct/union member.
#[derive(Debug, Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset from the start of the enclosing type.
    bit_offset: u32,
    bitfield: bool,
}

/// The parts of one BTF type this module uses.
#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name_off: u32,
    /// `size_or_type`: the referenced type for modifiers and typedefs.
    next: u32,
    members: Vec<Member>,
}

/// A parsed BTF blob: types by id (id 0 is `void`) and the string section.
#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&data).map_err(|reason| BtfError::Malformed {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses a little- or big-endian BTF blob (header, type section, string section).
    pub fn parse(data: &[u8]) -> Result<Self, String> {
        let magic_le = u16::from_le_bytes(bytes2(data, 0)?);
        let big_endian = match magic_le {
            BTF_MAGIC => false,
            m if m.swap_bytes() == BTF_MAGIC => true,
            m => return Err(format!("bad magic {m:#06x}")),
        };
        let u32_at = |off: usize| -> Result<u32, String> {
            let b = data
                .get(off..off + 4)
                .ok_or_else(|| format!("truncated at byte {off}"))?;
            let b = [b[0], b[1], b[2], b[3]];
            Ok(if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            })
        };
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or("string section out of bounds")?
            .to_vec();
        if types_end > data.len() {
            return Err("type section out of bounds".to_owned());
        }

        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            next: 0,
            members: Vec::new(),
        }];
        let mut at = types_start;
        while at < types_end {
            let name_off = u32_at(at)?;
            let info = u32_at(at + 4)?;
            let next = u32_at(at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 != 0;
            if kind == 0 || kind > KIND_MAX {
                return Err(format!("unknown type kind {kind} at byte {}", at - 12));
            }
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + 12 * i;
                        let raw = u32_at(m + 8)?;
                        members.push(Member {
                            name_off: u32_at(m)?,
                            type_id: u32_at(m + 4)?,
                            // With kind_flag the top 8 bits are the bitfield size.
                            bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                            bitfield: kind_flag && raw >> 24 != 0,
                        });
                    }
                    12 * vlen
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                _ => 0,
            };
            at += extra;
            types.push(Type {
                kind,
                name_off,
                next,
                members,
            });
        }
        if at != types_end {
            return Err("type section ends inside a record".to_owned());
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize).map(|t| t.kind) {
                Some(KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) => {
                    id = self.types[id as usize].next
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `member` in `struct strukt`, looking inside anonymous structs/unions.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = self
            .types
            .iter()
            .position(|t| {
                t.kind == KIND_STRUCT
                    && !t.members.is_empty()
                    && self.name(t.name_off) == strukt.as_bytes()
            })
            .ok_or_else(|| BtfError::NoStruct {
                name: strukt.to_owned(),
            })?;
        let (bits, bitfield) = self
            .find_member(id as u32, member.as_bytes(), 0)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            })?;
        if bitfield || bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
                bits,
            });
        }
        Ok(bits / 8)
    }

    /// Bit offset of `member` in type `id` and whether it is a bitfield, searching anonymous
    /// members depth-first.
    fn find_member(&self, id: u32, member: &[u8], depth: u32) -> Option<(u32, bool)> {
        let ty = self.types.get(self.resolve(id) as usize)?;
        if depth > 8 || !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for m in &ty.members {
            if m.name_off != 0 && self.name(m.name_off) == member {
                return Some((m.bit_offset, m.bitfield));
            }
        }
        ty.members.iter().filter(|m| m.name_off == 0).find_map(|m| {
            let (bits, bitfield) = self.find_member(m.type_id, member, depth + 1)?;
            Some((m.bit_offset + bits, bitfield))
        })
    }
}

/// The `KERNEL_OFFSETS` array for the running kernel. Members this kernel lacks stay
/// `OFFSET_UNKNOWN` and are returned by name so the caller can log what falls back; an error
/// means there is no usable BTF at all (every slot unknown).
pub fn kernel_offsets() -> Result<(KernelOffsets, Vec<String>), BtfError> {
    let btf = Btf::from_kernel()?;
    Ok(offsets_from(&btf))
}

/// The running kernel's offsets, parsed from BTF on first use and shared by every object the
/// process loads (the event source and the enforcement object): the BTF cannot change while
/// the kernel runs, and parsing it costs milliseconds. Unresolved members and missing BTF are
/// logged once; then every affected slot is unknown and the programs take their fallbacks.
pub fn running_kernel_offsets() -> KernelOffsets {
    static OFFSETS: OnceLock<KernelOffsets> = OnceLock::new();
    *OFFSETS.get_or_init(|| match kernel_offsets() {
        Ok((offsets, missing)) => {
            if !missing.is_empty() {
                tracing::warn!(missing = %missing.join("; "), "kernel BTF lacks struct members; the programs that need them fall back (argv/exit code from syscall hooks, block-exec by path only)");
            }
            offsets
        }
        Err(error) => {
            tracing::error!(%error, "no usable kernel BTF: lifecycle events use syscall tracepoints and block-exec matches paths only");
            abi::UNKNOWN_OFFSETS
        }
    })
}

/// Resolves every [`OFFSET_TABLE`] entry against `btf`.
pub fn offsets_from(btf: &Btf) -> (KernelOffsets, Vec<String>) {
    let mut offsets = abi::UNKNOWN_OFFSETS;
    let mut missing = Vec::new();
    for &(slot, strukt, member) in OFFSET_TABLE {
        match btf.member_offset(strukt, member) {
            Ok(off) => offsets[slot] = off,
            Err(err) => {
                offsets[slot] = OFFSET_UNKNOWN;
                missing.push(format!("{strukt}.{member} ({err})"));
            }
        }
    }
    (offsets, missing)
}

fn bytes2(data: &[u8], off: usize) -> Result<[u8; 2], String> {
    data.get(off..off + 2)
        .map(|b| [b[0], b[1]])
        .ok_or_else(|| "truncated header".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian BTF blob: `int`, and
    /// `struct outer { int a; union { int pad; struct { int x; int y; }; }; int z; }`.
    fn synthetic() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0pad\0x\0y\0z\0";
        let s = |name: &str| -> u32 {
            let needle = [b"\0", name.as_bytes(), b"\0"].concat();
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_slice())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut put = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes, 32 bits)
        put(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: anonymous struct { int x; int y; }
        put(&[0, (KIND_STRUCT << 24) | 2, 8, s("x"), 1, 0, s("y"), 1, 32]);
        // 3: anonymous union { int pad; struct#2; }
        put(&[0, (KIND_UNION << 24) | 2, 8, s("pad"), 1, 0, 0, 2, 0]);
        // 4: struct outer { int a; union#3 (at 4 bytes); int z (at 12 bytes); }
        put(&[
            s("outer"),
            (KIND_STRUCT << 24) | 3,
            16,
            s("a"),
            1,
            0,
            0,
            3,
            32,
            s("z"),
            1,
            96,
        ]);
        let mut blob = Vec::new();
        blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]); // version, flags
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(strings);
        blob
    }

    #[test]
    fn members_resolve_through_anonymous_structs_and_unions() {
        let btf = Btf::parse(&synthetic()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "pad").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "y").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "z").unwrap(), 12);
        assert!(matches!(
            btf.member_offset("outer", "w"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("inner", "x"),
            Err(BtfError::NoStruct { .. })
        ));
    }

    #[test]
    fn malformed_blobs_are_errors_not_panics() {
        let good = synthetic();
        assert!(Btf::parse(&good[..10]).is_err());
        assert!(Btf::parse(&[0u8; 32]).unwrap_err().contains("magic"));
        for cut in [30, 40, 60, good.len() - 30] {
            let mut bad = good.clone();
            bad.truncate(cut);
            assert!(Btf::parse(&bad).is_err(), "cut at {cut} parsed");
        }
    }

    /// The running kernel's BTF resolves every slot the programs use, at plausible offsets.
    #[test]
    fn running_kernel_resolves_every_offset() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("SKIPPED: {VMLINUX_BTF} is missing (kernel without BTF)");
            return;
        }
        let (offsets, missing) = kernel_offsets().unwrap();
        assert!(missing.is_empty(), "unresolved: {missing:?}");
        for &(slot, strukt, member) in OFFSET_TABLE {
            let off = offsets[slot];
            assert!(off < 16 * 1024, "{strukt}.{member} at {off}");
            assert_eq!(off % 4, 0, "{strukt}.{member} at {off} is misaligned");
        }
        // Distinct members of one struct cannot share an offset.
        assert_ne!(offsets[abi::OFF_MM_ARG_START], offsets[abi::OFF_MM_ARG_END]);
        assert_ne!(offsets[abi::OFF_INODE_INO], offsets[abi::OFF_INODE_SB]);
    }
}
