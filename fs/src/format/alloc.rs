//! Allocator formats: alloc list blocks and the two free-extent key indexes.
//!
//! List block: header (32), `next` ref (16) @32, `start` le32 @48, `nr` le32
//! @52, then `blknos[8185]` le64 from byte 56; the live window is
//! `blknos[start .. start+nr)`. Extent trees store each free extent twice,
//! as zero-length items: BLKNO zone keyed (end, len) and ORDER zone keyed
//! (U64_MAX - order, end, len), order = floor(log8(len)).

use super::key::{zone, Key};

pub const ALLOC_LIST_HDR_BYTES: usize = 56;
/// `SCOUTFS_ALLOC_LIST_MAX_BLOCKS`.
pub const ALLOC_LIST_MAX_BLOCKS: usize = (super::LG_BLOCK_SIZE - ALLOC_LIST_HDR_BYTES) / 8;

pub mod off {
    pub const NEXT: usize = 32;
    pub const START: usize = 48;
    pub const NR: usize = 52;
    pub const BLKNOS: usize = 56;
}

/// `floor(log8(len))`, as the format defines the ORDER index.
pub fn free_extent_order(len: u64) -> u64 {
    (63 - (len | 1).leading_zeros() as u64) / 3
}

/// The BLKNO-index key of extent `[start, start+len)`.
pub fn extent_blkno_key(start: u64, len: u64) -> Key {
    Key::new(zone::FREE_EXTENT_BLKNO, start + len - 1, 0, len, 0, 0)
}

/// The ORDER-index key of extent `[start, start+len)`.
pub fn extent_order_key(start: u64, len: u64) -> Key {
    Key::new(
        zone::FREE_EXTENT_ORDER,
        u64::MAX - free_extent_order(len),
        0,
        start + len - 1,
        len,
        0,
    )
}

/// `(start, len)` of an extent key of either index, if well formed.
pub fn extent_from_key(k: &Key) -> Option<(u64, u64)> {
    let (end, len) = match k.zone {
        zone::FREE_EXTENT_BLKNO => (k.first, k.second),
        zone::FREE_EXTENT_ORDER => (k.second, k.third),
        _ => return None,
    };
    if len == 0 || len - 1 > end {
        return None;
    }
    Some((end - (len - 1), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_and_orders() {
        assert_eq!(ALLOC_LIST_MAX_BLOCKS, 8185);
        assert_eq!(free_extent_order(1), 0);
        assert_eq!(free_extent_order(7), 0);
        assert_eq!(free_extent_order(8), 1);
        assert_eq!(free_extent_order(7677), 4);
        assert_eq!(free_extent_order(262080), 5);
        assert_eq!(free_extent_order(16777152), 7);
        let k = extent_order_key(1031, 7677);
        assert_eq!(extent_from_key(&k), Some((1031, 7677)));
        assert_eq!(
            extent_from_key(&extent_blkno_key(64, 262080)),
            Some((64, 262080))
        );
        assert_eq!(extent_from_key(&Key::new(36, 3, 0, 5, 0, 0)), None);
    }
}
