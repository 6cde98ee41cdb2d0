//! The small structures shared by every block: the 32-byte block header,
//! block references, btree roots, allocator list heads and allocator roots.
//!
//! Pure encode/decode at fixed offsets (little endian); sizes are asserted
//! by tests against Appendix A of the storage reference.

use super::le::*;

/// `scoutfs_block_header`: crc, magic, fsid, seq, blkno.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockHeader {
    pub crc: u32,
    pub magic: u32,
    pub fsid: u64,
    pub seq: u64,
    pub blkno: u64,
}

impl BlockHeader {
    pub const BYTES: usize = 32;

    pub fn decode(b: &[u8]) -> Self {
        BlockHeader {
            crc: get_u32(b, 0),
            magic: get_u32(b, 4),
            fsid: get_u64(b, 8),
            seq: get_u64(b, 16),
            blkno: get_u64(b, 24),
        }
    }

    pub fn encode(&self, b: &mut [u8]) {
        put_u32(b, 0, self.crc);
        put_u32(b, 4, self.magic);
        put_u64(b, 8, self.fsid);
        put_u64(b, 16, self.seq);
        put_u64(b, 24, self.blkno);
    }
}

/// `scoutfs_block_ref`: where a block is and which incarnation is meant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockRef {
    pub blkno: u64,
    pub seq: u64,
}

impl BlockRef {
    pub const BYTES: usize = 16;

    pub fn decode(b: &[u8]) -> Self {
        BlockRef {
            blkno: get_u64(b, 0),
            seq: get_u64(b, 8),
        }
    }

    pub fn encode(&self, b: &mut [u8]) {
        put_u64(b, 0, self.blkno);
        put_u64(b, 8, self.seq);
    }

    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        self.encode(&mut b);
        b
    }

    pub fn is_null(&self) -> bool {
        self.blkno == 0
    }
}

/// `scoutfs_btree_root`: a ref and a height (0 = empty tree).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BtreeRoot {
    pub bref: BlockRef,
    pub height: u8,
}

impl BtreeRoot {
    pub const BYTES: usize = 24;
    /// `SCOUTFS_BTREE_MAX_HEIGHT`.
    pub const MAX_HEIGHT: u8 = 20;

    pub fn decode(b: &[u8]) -> Self {
        BtreeRoot {
            bref: BlockRef::decode(&b[0..16]),
            height: b[16],
        }
    }

    pub fn encode(&self, b: &mut [u8]) {
        self.bref.encode(&mut b[0..16]);
        b[16] = self.height;
        b[17..24].fill(0);
    }

    pub fn is_empty(&self) -> bool {
        self.height == 0
    }
}

/// `scoutfs_alloc_list_head`: the head of a chain of alloc list blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocListHead {
    pub bref: BlockRef,
    /// Entries in the whole chain.
    pub total_nr: u64,
    /// Entries in the first block.
    pub first_nr: u32,
    pub flags: u32,
}

impl AllocListHead {
    pub const BYTES: usize = 32;

    pub fn decode(b: &[u8]) -> Self {
        AllocListHead {
            bref: BlockRef::decode(&b[0..16]),
            total_nr: get_u64(b, 16),
            first_nr: get_u32(b, 24),
            flags: get_u32(b, 28),
        }
    }

    pub fn encode(&self, b: &mut [u8]) {
        self.bref.encode(&mut b[0..16]);
        put_u64(b, 16, self.total_nr);
        put_u32(b, 24, self.first_nr);
        put_u32(b, 28, self.flags);
    }
}

/// `SCOUTFS_ALLOC_FLAG_LOW`: the allocator is near the reserve.
pub const ALLOC_FLAG_LOW: u32 = 1;

/// `SCOUTFS_ALLOC_DATA_REFILL_THRESH`: a mount asks for a commit (and a
/// refill) when its data allocator holds fewer 4 KiB blocks than this and
/// is not `LOW`; the server, which sets `LOW`, needs the same number.
pub const ALLOC_DATA_REFILL_THRESH: u64 = 65536;

/// `scoutfs_alloc_root`: a free-extent btree and the sum of its lengths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocRoot {
    pub total_len: u64,
    pub flags: u32,
    pub root: BtreeRoot,
}

impl AllocRoot {
    pub const BYTES: usize = 40;

    pub fn decode(b: &[u8]) -> Self {
        AllocRoot {
            total_len: get_u64(b, 0),
            flags: get_u32(b, 8),
            root: BtreeRoot::decode(&b[16..40]),
        }
    }

    pub fn encode(&self, b: &mut [u8]) {
        put_u64(b, 0, self.total_len);
        put_u32(b, 8, self.flags);
        put_u32(b, 12, 0);
        self.root.encode(&mut b[16..40]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let h = BlockHeader {
            crc: 1,
            magic: 2,
            fsid: 3,
            seq: 4,
            blkno: 5,
        };
        let mut b = [0u8; BlockHeader::BYTES];
        h.encode(&mut b);
        assert_eq!(BlockHeader::decode(&b), h);
        assert_eq!(&b[24..32], &5u64.to_le_bytes());

        let r = AllocRoot {
            total_len: 7,
            flags: 1,
            root: BtreeRoot {
                bref: BlockRef { blkno: 9, seq: 10 },
                height: 3,
            },
        };
        let mut b = [0xffu8; AllocRoot::BYTES];
        r.encode(&mut b);
        assert_eq!(AllocRoot::decode(&b), r);
        assert_eq!(&b[12..16], &[0; 4]);
        assert_eq!(&b[33..40], &[0; 7]);

        let l = AllocListHead {
            bref: BlockRef { blkno: 3, seq: 1 },
            total_nr: 1024,
            first_nr: 1024,
            flags: 0,
        };
        let mut b = [0u8; AllocListHead::BYTES];
        l.encode(&mut b);
        assert_eq!(AllocListHead::decode(&b), l);
    }
}
