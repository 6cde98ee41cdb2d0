//! Btree block layout (64 KiB): header, dense item array, free gap, values
//! packed from the end, and for leaves the item hash table.
//!
//! ```text
//! 0   block header (32)      32 item_root.node le16   34 nr_items le16
//! 36  total_item_bytes le16  38 mid_free_len le16      40 level u8, pad[7]
//! 48  items[nr_items] (56 bytes each)   ...gap...   values (8-aligned)
//! 65536-3024  leaves only: 1512 x le16 item offsets (FNV-1a-32 of key)
//! ```
//! AVL node offsets are relative to byte 32 (the item_root field); value
//! offsets and hash entries are relative to the block start.

use super::LG_BLOCK_SIZE;

pub const BTREE_BLOCK_HDR_BYTES: usize = 48;
pub const BTREE_ITEM_BYTES: usize = 56;
pub const BTREE_LEAF_ITEM_HASH_NR: usize = 1512;
pub const BTREE_LEAF_ITEM_HASH_BYTES: usize = BTREE_LEAF_ITEM_HASH_NR * 2;
/// `SCOUTFS_ITEM_FLAG_DELETION`.
pub const ITEM_FLAG_DELETION: u8 = 1;
/// Byte offset that AVL node offsets are relative to.
pub const AVL_BASE: usize = 32;

/// Header field offsets.
pub mod off {
    pub const ITEM_ROOT: usize = 32;
    pub const NR_ITEMS: usize = 34;
    pub const TOTAL_ITEM_BYTES: usize = 36;
    pub const MID_FREE_LEN: usize = 38;
    pub const LEVEL: usize = 40;
    pub const ITEMS: usize = 48;
}

/// Item field offsets, relative to the item.
pub mod item_off {
    pub const NODE_PARENT: usize = 0;
    pub const NODE_LEFT: usize = 2;
    pub const NODE_RIGHT: usize = 4;
    pub const NODE_HEIGHT: usize = 6;
    pub const NODE_PAD: usize = 7;
    pub const KEY: usize = 8;
    pub const SEQ: usize = 40;
    pub const VAL_OFF: usize = 48;
    pub const VAL_LEN: usize = 50;
    pub const FLAGS: usize = 52;
    pub const PAD: usize = 53;
}

/// End of the region items and values may use.
pub const fn btree_end_off(level: u8) -> usize {
    if level == 0 {
        LG_BLOCK_SIZE - BTREE_LEAF_ITEM_HASH_BYTES
    } else {
        LG_BLOCK_SIZE
    }
}

/// Bytes available for items plus values in an empty block.
pub const fn btree_usable(level: u8) -> usize {
    btree_end_off(level) - BTREE_BLOCK_HDR_BYTES
}

/// Bytes an item with a `val_len` value consumes.
pub const fn btree_item_bytes(val_len: usize) -> usize {
    BTREE_ITEM_BYTES + super::le::round8(val_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_constants() {
        assert_eq!(BTREE_LEAF_ITEM_HASH_BYTES, 3024);
        assert_eq!(btree_usable(0), 62464);
        assert_eq!(btree_usable(1), 65488);
        assert_eq!(btree_item_bytes(168), 224);
    }
}
