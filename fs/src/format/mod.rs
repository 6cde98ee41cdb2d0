//! The scoutfs on-disk format (versions 1 and 2): constants, keys and every
//! on-disk structure with explicit little-endian encode/decode.
//!
//! Nothing here does I/O. Sizes and offsets are checked against the table in
//! `docs/format.md` (Appendix A of the storage reference) by unit tests.

pub mod alloc;
pub mod block;
pub mod btree;
pub mod hash;
pub mod items;
pub mod key;
pub mod le;
pub mod log;
pub mod quorum;
pub mod srch;
pub mod super_block;

pub use block::{AllocListHead, AllocRoot, BlockHeader, BlockRef, BtreeRoot};
pub use key::Key;
pub use super_block::SuperBlock;

/// Small (4 KiB) block: super, quorum and data blocks.
pub const SM_BLOCK_SHIFT: u32 = 12;
pub const SM_BLOCK_SIZE: usize = 1 << SM_BLOCK_SHIFT;
/// Large (64 KiB) block: every metadata block but the super and quorum.
pub const LG_BLOCK_SHIFT: u32 = 16;
pub const LG_BLOCK_SIZE: usize = 1 << LG_BLOCK_SHIFT;

/// Super block location in 4 KiB units, on both devices.
pub const SUPER_BLKNO: u64 = 16;
/// First quorum block (4 KiB units) and how many there are (one per slot).
pub const QUORUM_BLKNO: u64 = 17;
pub const QUORUM_BLOCKS: u64 = 15;
/// First allocatable metadata block, in 64 KiB units.
pub const META_DEV_START_BLKNO: u64 = 2;
/// First allocatable data block, in 4 KiB units.
pub const DATA_DEV_START_BLKNO: u64 = 64;

/// Format versions this implementation reads and writes.
pub const FORMAT_VERSION_MIN: u64 = 1;
pub const FORMAT_VERSION_MAX: u64 = 2;

/// Block header magics.
pub const MAGIC_SUPER: u32 = 0x103c_428b;
pub const MAGIC_BTREE: u32 = 0xe597_f96d;
pub const MAGIC_BLOOM: u32 = 0x3199_5604;
pub const MAGIC_SRCH_BLOCK: u32 = 0x897e_4a7d;
pub const MAGIC_SRCH_PARENT: u32 = 0xb23a_2a05;
pub const MAGIC_ALLOC_LIST: u32 = 0x8a93_ac83;
pub const MAGIC_QUORUM: u32 = 0xbc31_0868;

/// `statfs` f_type: "SCOU".
pub const STATFS_MAGIC: u64 = 0x554f_4353;

/// Largest value a btree item may carry.
pub const BTREE_MAX_VAL_LEN: usize = 896;
/// Longest name in a directory.
pub const NAME_LEN_MAX: usize = 255;
/// Longest symlink target, including its NUL.
pub const SYMLINK_MAX_SIZE: usize = 4096;
/// xattr name and value limits.
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_SIZE_MAX: usize = 65535;
/// Root directory inode number; others are allocated from `next_ino`.
pub const ROOT_INO: u64 = 1;
