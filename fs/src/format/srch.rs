//! srch file blocks: the leaf (`scoutfs_srch_block`) with its packed
//! entries and the radix parent (`scoutfs_srch_parent`).
//!
//! A leaf is the 32-byte header, `first`, `last`, `tail` entries (24
//! each), `entry_nr` and `entry_bytes` (le32), then the entries from byte
//! [`LEAF_HEAD_BYTES`]. Each entry is a le16 of three 4-bit byte counts
//! (hash in the low nibble, then ino, then id) followed by the three
//! deltas against the previous entry of the block (zero at its start),
//! zig-zag mapped, in their fewest low-order little-endian bytes. A block
//! takes no more entries once `entry_bytes` passes [`BLOCK_SAFE_BYTES`],
//! so the last entry always ends inside the block.
//!
//! Pure encode/decode; decoding checks every count and offset against the
//! block so a damaged block is an error, never a panic.

use super::block::BlockRef;
use super::le::*;
use super::log::{BadValue, SrchEntry};
use super::LG_BLOCK_SIZE;
use alloc::vec::Vec;

/// `SCOUTFS_SRCH_PARENT_REFS`: block refs in a parent block.
pub const PARENT_REFS: usize = (LG_BLOCK_SIZE - 32) / BlockRef::BYTES;
/// Byte offset of the entries in a leaf (the size of its header part).
pub const LEAF_HEAD_BYTES: usize = 112;
/// The most bytes one encoded entry takes (length word and 3 x 8).
pub const ENTRY_MAX_BYTES: usize = 2 + 3 * 8;
/// `SCOUTFS_SRCH_BLOCK_SAFE_BYTES`: past this many entry bytes a leaf is
/// full (one more entry of any size still fits).
pub const BLOCK_SAFE_BYTES: usize = LG_BLOCK_SIZE - LEAF_HEAD_BYTES - ENTRY_MAX_BYTES;
/// `SCOUTFS_SRCH_LOG_BLOCK_LIMIT`: a mount's log file is rotated into
/// `srch_root` once it holds this many blocks.
pub const LOG_BLOCK_LIMIT: u64 = 16;
/// `SCOUTFS_SRCH_COMPACT_NR`: files merged by one compaction.
pub const COMPACT_NR: usize = 4;
/// Deepest radix a file may have: 4 levels address 4094^3 leaves, far
/// beyond any metadata device.
pub const HEIGHT_MAX: u8 = 4;

const FIRST: usize = 32;
const LAST: usize = 56;
const TAIL: usize = 80;
const ENTRY_NR: usize = 104;
const ENTRY_BYTES: usize = 108;

/// The header fields of a leaf after the block header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeafHead {
    pub first: SrchEntry,
    pub last: SrchEntry,
    pub tail: SrchEntry,
    pub entry_nr: u32,
    pub entry_bytes: u32,
}

impl LeafHead {
    /// Decode the header of a 64 KiB leaf, checking that its entry bytes
    /// fit the block.
    pub fn decode(b: &[u8]) -> Result<LeafHead, BadValue> {
        if b.len() != LG_BLOCK_SIZE {
            return Err(BadValue("srch block is not 64 KiB"));
        }
        let h = LeafHead {
            first: SrchEntry::decode(&b[FIRST..FIRST + 24]),
            last: SrchEntry::decode(&b[LAST..LAST + 24]),
            tail: SrchEntry::decode(&b[TAIL..TAIL + 24]),
            entry_nr: get_u32(b, ENTRY_NR),
            entry_bytes: get_u32(b, ENTRY_BYTES),
        };
        if h.entry_bytes as usize > LG_BLOCK_SIZE - LEAF_HEAD_BYTES {
            return Err(BadValue("srch block entry_bytes past the block"));
        }
        // every entry takes at least its length word
        if (h.entry_nr as u64) * 2 > h.entry_bytes as u64 {
            return Err(BadValue("srch block entry_nr exceeds its bytes"));
        }
        Ok(h)
    }

    pub fn encode(&self, b: &mut [u8]) {
        self.first.encode(&mut b[FIRST..FIRST + 24]);
        self.last.encode(&mut b[LAST..LAST + 24]);
        self.tail.encode(&mut b[TAIL..TAIL + 24]);
        put_u32(b, ENTRY_NR, self.entry_nr);
        put_u32(b, ENTRY_BYTES, self.entry_bytes);
    }

    /// Does the block take no more entries?
    pub fn is_full(&self) -> bool {
        self.entry_bytes as usize > BLOCK_SAFE_BYTES
    }
}

fn zigzag(d: u64) -> u64 {
    (d << 1) ^ (((d as i64) >> 63) as u64)
}

fn unzigzag(v: u64) -> u64 {
    (v >> 1) ^ (v & 1).wrapping_neg()
}

/// Encode `e` as a delta from `prev` into `out` (at least
/// [`ENTRY_MAX_BYTES`] long); returns the bytes used.
pub fn encode_entry(out: &mut [u8], e: &SrchEntry, prev: &SrchEntry) -> usize {
    let diffs = [
        e.hash.wrapping_sub(prev.hash),
        e.ino.wrapping_sub(prev.ino),
        e.id.wrapping_sub(prev.id),
    ];
    let mut lengths = 0u16;
    let mut pos = 2;
    for (i, d) in diffs.iter().enumerate() {
        let z = zigzag(*d);
        let n = (64 - z.leading_zeros() as usize).div_ceil(8);
        out[pos..pos + n].copy_from_slice(&z.to_le_bytes()[..n]);
        lengths |= (n as u16) << (i * 4);
        pos += n;
    }
    put_u16(out, 0, lengths);
    pos
}

/// Decode the entry at `b[pos..]` following `prev`; returns it and the
/// bytes it took. Counts above 8 or an entry running past `b` are errors.
pub fn decode_entry(
    b: &[u8],
    pos: usize,
    prev: &SrchEntry,
) -> Result<(SrchEntry, usize), BadValue> {
    let end = |n: usize| pos.checked_add(n).filter(|&e| e <= b.len());
    let Some(p2) = end(2) else {
        return Err(BadValue("srch entry past its block"));
    };
    let mut lengths = get_u16(b, pos);
    let mut at = p2;
    let mut d = [0u64; 3];
    for slot in d.iter_mut() {
        let n = (lengths & 15) as usize;
        lengths >>= 4;
        if n > 8 {
            return Err(BadValue("srch entry delta longer than 8 bytes"));
        }
        let Some(e) = at.checked_add(n).filter(|&e| e <= b.len()) else {
            return Err(BadValue("srch entry past its block"));
        };
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(&b[at..e]);
        *slot = unzigzag(u64::from_le_bytes(w));
        at = e;
    }
    if lengths != 0 {
        return Err(BadValue("srch entry length word has stray bits"));
    }
    Ok((
        SrchEntry {
            hash: prev.hash.wrapping_add(d[0]),
            ino: prev.ino.wrapping_add(d[1]),
            id: prev.id.wrapping_add(d[2]),
        },
        at - pos,
    ))
}

/// Every entry of a 64 KiB leaf, in block order. Checks that the entries
/// take exactly `entry_bytes`, that the last decoded is the `tail` and,
/// for a sorted file's block (`sorted`), that they ascend from `first`
/// to `last`.
pub fn decode_leaf(b: &[u8], sorted: bool) -> Result<(LeafHead, Vec<SrchEntry>), BadValue> {
    let h = LeafHead::decode(b)?;
    let area = &b[LEAF_HEAD_BYTES..LEAF_HEAD_BYTES + h.entry_bytes as usize];
    let mut out = Vec::with_capacity(h.entry_nr as usize);
    let mut prev = SrchEntry::default();
    let mut pos = 0;
    for _ in 0..h.entry_nr {
        let (e, n) = decode_entry(area, pos, &prev)?;
        if sorted && !out.is_empty() && e < prev {
            return Err(BadValue("sorted srch block entries out of order"));
        }
        out.push(e);
        prev = e;
        pos += n;
    }
    if pos != area.len() {
        return Err(BadValue("srch block entries do not fill entry_bytes"));
    }
    if let Some(last) = out.last() {
        if *last != h.tail {
            return Err(BadValue("srch block tail is not its last entry"));
        }
        if sorted && (out[0] != h.first || *last != h.last) {
            return Err(BadValue("sorted srch block first/last do not match"));
        }
    }
    Ok((h, out))
}

/// Append `e` to the leaf `b` (64 KiB, its header already written by the
/// block cache). In a log block `first`/`last` become the min/max; in a
/// sorted block the caller appends in order so they are the ends. Returns
/// false (and leaves the block alone) when the block is full.
pub fn leaf_append(b: &mut [u8], e: &SrchEntry) -> Result<bool, BadValue> {
    let mut h = LeafHead::decode(b)?;
    if h.is_full() {
        return Ok(false);
    }
    let at = LEAF_HEAD_BYTES + h.entry_bytes as usize;
    let prev = if h.entry_nr == 0 {
        SrchEntry::default()
    } else {
        h.tail
    };
    let n = encode_entry(&mut b[at..at + ENTRY_MAX_BYTES], e, &prev);
    if h.entry_nr == 0 {
        h.first = *e;
        h.last = *e;
    } else {
        h.first = h.first.min(*e);
        h.last = h.last.max(*e);
    }
    h.tail = *e;
    h.entry_nr = h
        .entry_nr
        .checked_add(1)
        .ok_or(BadValue("srch entry_nr overflow"))?;
    h.entry_bytes += n as u32;
    h.encode(b);
    Ok(true)
}

/// Child `i` of a parent block.
pub fn parent_ref(b: &[u8], i: usize) -> Result<BlockRef, BadValue> {
    if b.len() != LG_BLOCK_SIZE || i >= PARENT_REFS {
        return Err(BadValue("srch parent ref out of range"));
    }
    Ok(BlockRef::decode(&b[32 + i * 16..48 + i * 16]))
}

pub fn set_parent_ref(b: &mut [u8], i: usize, r: &BlockRef) {
    r.encode(&mut b[32 + i * 16..48 + i * 16]);
}

/// The radix height a file needs to hold leaf `blk` (1: one leaf).
pub fn height_for_blk(blk: u64) -> u8 {
    let mut h = 1u8;
    let mut cover = 1u64;
    while blk >= cover {
        h += 1;
        cover = cover.saturating_mul(PARENT_REFS as u64);
    }
    h
}

/// The index into a parent at `level` (>= 1) on the way to leaf `blk`.
pub fn ref_index(blk: u64, level: u8) -> usize {
    let mut b = blk;
    for _ in 1..level {
        b /= PARENT_REFS as u64;
    }
    (b % PARENT_REFS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf() -> Vec<u8> {
        alloc::vec![0u8; LG_BLOCK_SIZE]
    }

    fn e(hash: u64, ino: u64, id: u64) -> SrchEntry {
        SrchEntry { hash, ino, id }
    }

    #[test]
    fn constants_match_the_reference() {
        assert_eq!(PARENT_REFS, 4094);
        assert_eq!(BLOCK_SAFE_BYTES, 65398);
        assert_eq!(height_for_blk(0), 1);
        assert_eq!(height_for_blk(1), 2);
        assert_eq!(height_for_blk(4093), 2);
        assert_eq!(height_for_blk(4094), 3);
        assert_eq!(ref_index(4095, 1), 1);
        assert_eq!(ref_index(4095, 2), 1);
        assert_eq!(ref_index(5, 1), 5);
    }

    #[test]
    fn entry_encoding_is_zigzag_minimal_bytes() {
        let mut b = [0u8; ENTRY_MAX_BYTES];
        // hash +1 -> zigzag 2 (1 byte), ino -1 -> 1 (1 byte), id 0 -> 0 bytes
        let n = encode_entry(&mut b, &e(11, 4, 7), &e(10, 5, 7));
        assert_eq!(n, 4);
        assert_eq!(&b[..4], &[0x11, 0x00, 0x02, 0x01]);
        // a full-width delta takes 8 bytes
        let n = encode_entry(&mut b, &e(u64::MAX / 2 + 7, 0, 0), &e(0, 0, 0));
        assert_eq!(n, 10);
        assert_eq!(get_u16(&b, 0), 8);
        let (d, m) = decode_entry(&b, 0, &e(0, 0, 0)).unwrap();
        assert_eq!((d, m), (e(u64::MAX / 2 + 7, 0, 0), 10));
    }

    #[test]
    fn leaf_round_trip_until_full() {
        let mut b = leaf();
        let mut want = Vec::new();
        let mut x = 0x1234_5678_9abc_def0u64;
        loop {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let en = e(x, x >> 40, x & 0xffff);
            if !leaf_append(&mut b, &en).unwrap() {
                break;
            }
            want.push(en);
        }
        let (h, got) = decode_leaf(&b, false).unwrap();
        assert_eq!(got, want);
        assert!(h.is_full());
        assert!(h.entry_bytes as usize + LEAF_HEAD_BYTES <= LG_BLOCK_SIZE);
        assert_eq!(h.first, *want.iter().min().unwrap());
        assert_eq!(h.last, *want.iter().max().unwrap());
        assert!(
            decode_leaf(&b, true).is_err(),
            "random entries are not sorted"
        );
    }

    #[test]
    fn sorted_leaf_round_trip() {
        let mut b = leaf();
        let want: Vec<_> = (0..1000u64).map(|i| e(77, 1000 + i * 3, i % 5)).collect();
        for en in &want {
            assert!(leaf_append(&mut b, en).unwrap());
        }
        let (h, got) = decode_leaf(&b, true).unwrap();
        assert_eq!(got, want);
        assert_eq!((h.first, h.last, h.entry_nr), (want[0], want[999], 1000));
    }

    #[test]
    fn corrupted_leaves_are_errors() {
        let mut b = leaf();
        for i in 0..50 {
            leaf_append(&mut b, &e(9, i, 1)).unwrap();
        }
        let good = b.clone();
        // entry_bytes past the block
        put_u32(&mut b, ENTRY_BYTES, 70000);
        assert!(decode_leaf(&b, false).is_err());
        // more entries claimed than bytes can hold
        b.copy_from_slice(&good);
        put_u32(&mut b, ENTRY_NR, 1000);
        assert!(decode_leaf(&b, false).is_err());
        // a nibble above 8
        b.copy_from_slice(&good);
        put_u16(&mut b, LEAF_HEAD_BYTES, 0x0009);
        assert!(decode_leaf(&b, false).is_err());
        // a length that runs past entry_bytes
        b.copy_from_slice(&good);
        let nb = get_u32(&b, ENTRY_BYTES);
        put_u32(&mut b, ENTRY_BYTES, nb - 1);
        assert!(decode_leaf(&b, false).is_err());
        // wrong tail
        b.copy_from_slice(&good);
        put_u64(&mut b, TAIL + 8, 12345);
        assert!(decode_leaf(&b, false).is_err());
        // wrong size
        assert!(decode_leaf(&good[..100], false).is_err());
        assert!(parent_ref(&good, PARENT_REFS).is_err());
        // every single-byte corruption of the entry area decodes or errs
        for at in LEAF_HEAD_BYTES..LEAF_HEAD_BYTES + nb as usize {
            b.copy_from_slice(&good);
            b[at] ^= 0xa5;
            let _ = decode_leaf(&b, true);
        }
        assert_eq!(decode_leaf(&good, true).unwrap().1.len(), 50);
    }

    #[test]
    fn parent_refs_round_trip() {
        let mut b = leaf();
        let r = BlockRef { blkno: 99, seq: 7 };
        set_parent_ref(&mut b, 4093, &r);
        assert_eq!(parent_ref(&b, 4093).unwrap(), r);
        assert_eq!(parent_ref(&b, 0).unwrap(), BlockRef::default());
    }
}
