//! The server btree values of the forest: `scoutfs_log_trees` (one per
//! client log btree, in `logs_root`), the log merge items (`log_merge`
//! root: STATUS, RANGE, REQUEST, COMPLETE, FREEING), `mounted_clients`
//! values, the srch file descriptor and the bloom block geometry.
//!
//! Pure encode/decode at the byte offsets of format.h (little endian).
//! Decoders take exactly the structure's size and refuse anything else, so
//! a damaged item or message is an error, never a panic. Used by the
//! server, the client transaction engine, the merge worker, fsck and the
//! wire messages (which carry the same structures).

use super::block::{AllocListHead, AllocRoot, BlockRef, BtreeRoot};
use super::key::{zone, Key, KEY_BYTES};
use super::le::*;
use super::LG_BLOCK_SIZE;

/// A value of the wrong size or with bad contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadValue(pub &'static str);

fn exact(b: &[u8], n: usize, what: &'static str) -> Result<(), BadValue> {
    if b.len() != n {
        return Err(BadValue(what));
    }
    Ok(())
}

fn key_at(b: &[u8], o: usize) -> Key {
    let mut k = [0u8; KEY_BYTES];
    k.copy_from_slice(&b[o..o + KEY_BYTES]);
    Key::decode(&k)
}

fn put_key(b: &mut [u8], o: usize, k: &Key) {
    b[o..o + KEY_BYTES].copy_from_slice(&k.to_bytes());
}

fn head_at(b: &[u8], o: usize) -> AllocListHead {
    AllocListHead::decode(&b[o..o + AllocListHead::BYTES])
}

fn root_at(b: &[u8], o: usize) -> BtreeRoot {
    BtreeRoot::decode(&b[o..o + BtreeRoot::BYTES])
}

// ---- srch file ----

/// `scoutfs_srch_entry` (24): an xattr name hash, inode and xattr id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SrchEntry {
    pub hash: u64,
    pub ino: u64,
    pub id: u64,
}

impl SrchEntry {
    pub const BYTES: usize = 24;

    pub fn decode(b: &[u8]) -> Self {
        SrchEntry {
            hash: get_u64(b, 0),
            ino: get_u64(b, 8),
            id: get_u64(b, 16),
        }
    }

    pub fn encode(&self, b: &mut [u8]) {
        put_u64(b, 0, self.hash);
        put_u64(b, 8, self.ino);
        put_u64(b, 16, self.id);
    }
}

/// `scoutfs_srch_file` (88): first/last entry, radix ref, blocks,
/// entries, height.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrchFile {
    pub first: SrchEntry,
    pub last: SrchEntry,
    pub bref: BlockRef,
    pub blocks: u64,
    pub entries: u64,
    pub height: u8,
}

impl SrchFile {
    pub const BYTES: usize = 88;

    pub fn decode(b: &[u8]) -> Self {
        SrchFile {
            first: SrchEntry::decode(&b[0..24]),
            last: SrchEntry::decode(&b[24..48]),
            bref: BlockRef::decode(&b[48..64]),
            blocks: get_u64(b, 64),
            entries: get_u64(b, 72),
            height: b[80],
        }
    }

    pub fn encode(&self, b: &mut [u8]) {
        self.first.encode(&mut b[0..24]);
        self.last.encode(&mut b[24..48]);
        self.bref.encode(&mut b[48..64]);
        put_u64(b, 64, self.blocks);
        put_u64(b, 72, self.entries);
        b[80] = self.height;
        b[81..88].fill(0);
    }

    pub fn is_empty(&self) -> bool {
        self.bref.is_null()
    }
}

// ---- log trees ----

/// `SCOUTFS_LOG_TREES_FINALIZED`: no more transactions go into the tree.
pub const LOG_TREES_FINALIZED: u64 = 1;
/// `SCOUTFS_DATA_ALLOC_ZONE_LE64S`.
pub const DATA_ALLOC_ZONE_LE64S: usize = 16;

/// `scoutfs_log_trees` (472): one client log btree with its allocators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogTrees {
    pub meta_avail: AllocListHead,
    pub meta_freed: AllocListHead,
    pub item_root: BtreeRoot,
    pub bloom_ref: BlockRef,
    pub data_avail: AllocRoot,
    pub data_freed: AllocRoot,
    pub srch_file: SrchFile,
    pub data_alloc_zone_blocks: u64,
    pub data_alloc_zones: [u64; DATA_ALLOC_ZONE_LE64S],
    /// Inodes created minus deleted by the tree's transactions (two's
    /// complement).
    pub inode_count_delta: u64,
    pub get_trans_seq: u64,
    pub commit_trans_seq: u64,
    pub max_item_seq: u64,
    pub finalize_seq: u64,
    pub rid: u64,
    pub nr: u64,
    pub flags: u64,
}

pub mod lt_off {
    pub const META_AVAIL: usize = 0;
    pub const META_FREED: usize = 32;
    pub const ITEM_ROOT: usize = 64;
    pub const BLOOM_REF: usize = 88;
    pub const DATA_AVAIL: usize = 104;
    pub const DATA_FREED: usize = 144;
    pub const SRCH_FILE: usize = 184;
    pub const DATA_ALLOC_ZONE_BLOCKS: usize = 272;
    pub const DATA_ALLOC_ZONES: usize = 280;
    pub const INODE_COUNT_DELTA: usize = 408;
    pub const GET_TRANS_SEQ: usize = 416;
    pub const COMMIT_TRANS_SEQ: usize = 424;
    pub const MAX_ITEM_SEQ: usize = 432;
    pub const FINALIZE_SEQ: usize = 440;
    pub const RID: usize = 448;
    pub const NR: usize = 456;
    pub const FLAGS: usize = 464;
}

impl LogTrees {
    pub const BYTES: usize = 472;

    pub fn decode(b: &[u8]) -> Result<Self, BadValue> {
        use lt_off::*;
        exact(b, Self::BYTES, "log_trees value is not 472 bytes")?;
        let mut zones = [0u64; DATA_ALLOC_ZONE_LE64S];
        for (i, z) in zones.iter_mut().enumerate() {
            *z = get_u64(b, DATA_ALLOC_ZONES + i * 8);
        }
        let lt = LogTrees {
            meta_avail: head_at(b, META_AVAIL),
            meta_freed: head_at(b, META_FREED),
            item_root: root_at(b, ITEM_ROOT),
            bloom_ref: BlockRef::decode(&b[BLOOM_REF..BLOOM_REF + 16]),
            data_avail: AllocRoot::decode(&b[DATA_AVAIL..DATA_AVAIL + 40]),
            data_freed: AllocRoot::decode(&b[DATA_FREED..DATA_FREED + 40]),
            srch_file: SrchFile::decode(&b[SRCH_FILE..SRCH_FILE + SrchFile::BYTES]),
            data_alloc_zone_blocks: get_u64(b, DATA_ALLOC_ZONE_BLOCKS),
            data_alloc_zones: zones,
            inode_count_delta: get_u64(b, INODE_COUNT_DELTA),
            get_trans_seq: get_u64(b, GET_TRANS_SEQ),
            commit_trans_seq: get_u64(b, COMMIT_TRANS_SEQ),
            max_item_seq: get_u64(b, MAX_ITEM_SEQ),
            finalize_seq: get_u64(b, FINALIZE_SEQ),
            rid: get_u64(b, RID),
            nr: get_u64(b, NR),
            flags: get_u64(b, FLAGS),
        };
        if lt.flags & !LOG_TREES_FINALIZED != 0 {
            return Err(BadValue("log_trees has unknown flags"));
        }
        Ok(lt)
    }

    pub fn encode(&self) -> [u8; Self::BYTES] {
        use lt_off::*;
        let mut b = [0u8; Self::BYTES];
        self.meta_avail.encode(&mut b[META_AVAIL..META_AVAIL + 32]);
        self.meta_freed.encode(&mut b[META_FREED..META_FREED + 32]);
        self.item_root.encode(&mut b[ITEM_ROOT..ITEM_ROOT + 24]);
        self.bloom_ref.encode(&mut b[BLOOM_REF..BLOOM_REF + 16]);
        self.data_avail.encode(&mut b[DATA_AVAIL..DATA_AVAIL + 40]);
        self.data_freed.encode(&mut b[DATA_FREED..DATA_FREED + 40]);
        self.srch_file
            .encode(&mut b[SRCH_FILE..SRCH_FILE + SrchFile::BYTES]);
        put_u64(&mut b, DATA_ALLOC_ZONE_BLOCKS, self.data_alloc_zone_blocks);
        for (i, z) in self.data_alloc_zones.iter().enumerate() {
            put_u64(&mut b, DATA_ALLOC_ZONES + i * 8, *z);
        }
        put_u64(&mut b, INODE_COUNT_DELTA, self.inode_count_delta);
        put_u64(&mut b, GET_TRANS_SEQ, self.get_trans_seq);
        put_u64(&mut b, COMMIT_TRANS_SEQ, self.commit_trans_seq);
        put_u64(&mut b, MAX_ITEM_SEQ, self.max_item_seq);
        put_u64(&mut b, FINALIZE_SEQ, self.finalize_seq);
        put_u64(&mut b, RID, self.rid);
        put_u64(&mut b, NR, self.nr);
        put_u64(&mut b, FLAGS, self.flags);
        b
    }

    pub fn is_finalized(&self) -> bool {
        self.flags & LOG_TREES_FINALIZED != 0
    }

    /// A transaction was handed out and not yet committed.
    pub fn is_open(&self) -> bool {
        !self.is_finalized() && self.get_trans_seq > self.commit_trans_seq
    }

    /// The `logs_root` key of this tree.
    pub fn key(&self) -> Key {
        log_trees_key(self.rid, self.nr)
    }
}

/// `logs_root` key of a client's log tree: first = rid, second = nr.
pub fn log_trees_key(rid: u64, nr: u64) -> Key {
    Key::new(zone::LOG_TREES, rid, 0, nr, 0, 0)
}

// ---- mounted clients ----

/// `SCOUTFS_MOUNTED_CLIENT_QUORUM`.
pub const MOUNTED_CLIENT_QUORUM: u8 = 1;

/// `scoutfs_mounted_client_btree_val` (40): the peer address (a 32-byte
/// inet address union) and flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountedClient {
    pub addr: [u8; 32],
    pub flags: u8,
}

impl MountedClient {
    pub const BYTES: usize = 40;

    pub fn decode(b: &[u8]) -> Result<Self, BadValue> {
        exact(b, Self::BYTES, "mounted client value is not 40 bytes")?;
        let mut addr = [0u8; 32];
        addr.copy_from_slice(&b[0..32]);
        if b[32] & !MOUNTED_CLIENT_QUORUM != 0 {
            return Err(BadValue("mounted client has unknown flags"));
        }
        Ok(MountedClient { addr, flags: b[32] })
    }

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        b[0..32].copy_from_slice(&self.addr);
        b[32] = self.flags;
        b
    }
}

/// `mounted_clients` key of a rid.
pub fn mounted_client_key(rid: u64) -> Key {
    Key::new(zone::MOUNTED_CLIENT, rid, 0, 0, 0, 0)
}

// ---- log merge ----

/// `scoutfs_log_merge_status` (56).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStatus {
    pub next_range_key: Key,
    pub nr_requests: u64,
    pub nr_complete: u64,
    /// Trees finalized before this seq are the merge's inputs.
    pub seq: u64,
}

impl MergeStatus {
    pub const BYTES: usize = 56;

    pub fn decode(b: &[u8]) -> Result<Self, BadValue> {
        exact(b, Self::BYTES, "merge status is not 56 bytes")?;
        Ok(MergeStatus {
            next_range_key: key_at(b, 0),
            nr_requests: get_u64(b, 32),
            nr_complete: get_u64(b, 40),
            seq: get_u64(b, 48),
        })
    }

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        put_key(&mut b, 0, &self.next_range_key);
        put_u64(&mut b, 32, self.nr_requests);
        put_u64(&mut b, 40, self.nr_complete);
        put_u64(&mut b, 48, self.seq);
        b
    }
}

/// The key of the single STATUS item.
pub fn merge_status_key() -> Key {
    Key::new(zone::LOG_MERGE_STATUS, 0, 0, 0, 0, 0)
}

/// `scoutfs_log_merge_range` (64): a key range still to merge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeRange {
    pub start: Key,
    pub end: Key,
}

impl MergeRange {
    pub const BYTES: usize = 64;

    pub fn decode(b: &[u8]) -> Result<Self, BadValue> {
        exact(b, Self::BYTES, "merge range is not 64 bytes")?;
        let r = MergeRange {
            start: key_at(b, 0),
            end: key_at(b, 32),
        };
        if r.start > r.end {
            return Err(BadValue("merge range start after end"));
        }
        Ok(r)
    }

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        put_key(&mut b, 0, &self.start);
        put_key(&mut b, 32, &self.end);
        b
    }

    /// The RANGE item key: the start key with its zone replaced (so range
    /// items do not sort by range start; readers scan them all).
    pub fn key(&self) -> Key {
        Key {
            zone: zone::LOG_MERGE_RANGE,
            ..self.start
        }
    }
}

/// `SCOUTFS_LOG_MERGE_REQUEST_SUBTREE`: the request root is a level-1
/// parent of fs_root; the merge must not split or join that root.
pub const MERGE_REQUEST_SUBTREE: u64 = 1;

/// `scoutfs_log_merge_request` (208): one piece of merge work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeRequest {
    pub meta_avail: AllocListHead,
    pub meta_freed: AllocListHead,
    /// The `logs_root` the inputs are read from.
    pub logs_root: BtreeRoot,
    /// The fs_root subtree to merge into.
    pub root: BtreeRoot,
    pub start: Key,
    pub end: Key,
    pub input_seq: u64,
    pub rid: u64,
    pub seq: u64,
    pub flags: u64,
}

impl MergeRequest {
    pub const BYTES: usize = 208;

    pub fn decode(b: &[u8]) -> Result<Self, BadValue> {
        exact(b, Self::BYTES, "merge request is not 208 bytes")?;
        let r = MergeRequest {
            meta_avail: head_at(b, 0),
            meta_freed: head_at(b, 32),
            logs_root: root_at(b, 64),
            root: root_at(b, 88),
            start: key_at(b, 112),
            end: key_at(b, 144),
            input_seq: get_u64(b, 176),
            rid: get_u64(b, 184),
            seq: get_u64(b, 192),
            flags: get_u64(b, 200),
        };
        if r.flags & !MERGE_REQUEST_SUBTREE != 0 {
            return Err(BadValue("merge request has unknown flags"));
        }
        if r.start > r.end {
            return Err(BadValue("merge request start after end"));
        }
        Ok(r)
    }

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        self.meta_avail.encode(&mut b[0..32]);
        self.meta_freed.encode(&mut b[32..64]);
        self.logs_root.encode(&mut b[64..88]);
        self.root.encode(&mut b[88..112]);
        put_key(&mut b, 112, &self.start);
        put_key(&mut b, 144, &self.end);
        put_u64(&mut b, 176, self.input_seq);
        put_u64(&mut b, 184, self.rid);
        put_u64(&mut b, 192, self.seq);
        put_u64(&mut b, 200, self.flags);
        b
    }
}

/// REQUEST item key: first = rid, second = request seq.
pub fn merge_request_key(rid: u64, seq: u64) -> Key {
    Key::new(zone::LOG_MERGE_REQUEST, rid, 0, seq, 0, 0)
}

/// `SCOUTFS_LOG_MERGE_COMP_ERROR`: the merge failed; reclaim the request.
pub const MERGE_COMP_ERROR: u64 = 1;
/// `SCOUTFS_LOG_MERGE_COMP_REMAIN`: keys from `remain` to `end` are left.
pub const MERGE_COMP_REMAIN: u64 = 2;

/// `scoutfs_log_merge_complete` (208): the result of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeComplete {
    pub meta_avail: AllocListHead,
    pub meta_freed: AllocListHead,
    pub root: BtreeRoot,
    pub start: Key,
    pub end: Key,
    pub remain: Key,
    pub rid: u64,
    pub seq: u64,
    pub flags: u64,
}

impl MergeComplete {
    pub const BYTES: usize = 208;

    pub fn decode(b: &[u8]) -> Result<Self, BadValue> {
        exact(b, Self::BYTES, "merge completion is not 208 bytes")?;
        let c = MergeComplete {
            meta_avail: head_at(b, 0),
            meta_freed: head_at(b, 32),
            root: root_at(b, 64),
            start: key_at(b, 88),
            end: key_at(b, 120),
            remain: key_at(b, 152),
            rid: get_u64(b, 184),
            seq: get_u64(b, 192),
            flags: get_u64(b, 200),
        };
        if c.flags & !(MERGE_COMP_ERROR | MERGE_COMP_REMAIN) != 0 {
            return Err(BadValue("merge completion has unknown flags"));
        }
        if c.start > c.end {
            return Err(BadValue("merge completion start after end"));
        }
        if c.flags & MERGE_COMP_REMAIN != 0 && (c.remain < c.start || c.remain > c.end) {
            return Err(BadValue("merge completion remain outside its range"));
        }
        Ok(c)
    }

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        self.meta_avail.encode(&mut b[0..32]);
        self.meta_freed.encode(&mut b[32..64]);
        self.root.encode(&mut b[64..88]);
        put_key(&mut b, 88, &self.start);
        put_key(&mut b, 120, &self.end);
        put_key(&mut b, 152, &self.remain);
        put_u64(&mut b, 184, self.rid);
        put_u64(&mut b, 192, self.seq);
        put_u64(&mut b, 200, self.flags);
        b
    }

    /// Its allocators were already spliced into the server's (phase 1 of
    /// splicing is idempotent through this).
    pub fn is_spliced(&self) -> bool {
        self.meta_avail.bref.is_null() && self.meta_freed.bref.is_null()
    }
}

/// COMPLETE item key: first = request seq.
pub fn merge_complete_key(seq: u64) -> Key {
    Key::new(zone::LOG_MERGE_COMPLETE, seq, 0, 0, 0, 0)
}

/// `scoutfs_log_merge_freeing` (64): a merged input tree being freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeFreeing {
    pub root: BtreeRoot,
    pub key: Key,
    pub seq: u64,
}

impl MergeFreeing {
    pub const BYTES: usize = 64;

    pub fn decode(b: &[u8]) -> Result<Self, BadValue> {
        exact(b, Self::BYTES, "merge freeing is not 64 bytes")?;
        Ok(MergeFreeing {
            root: root_at(b, 0),
            key: key_at(b, 24),
            seq: get_u64(b, 56),
        })
    }

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        self.root.encode(&mut b[0..24]);
        put_key(&mut b, 24, &self.key);
        put_u64(&mut b, 56, self.seq);
        b
    }
}

/// FREEING item key: first = seq.
pub fn merge_freeing_key(seq: u64) -> Key {
    Key::new(zone::LOG_MERGE_FREEING, seq, 0, 0, 0, 0)
}

// ---- bloom block ----

/// Bloom block: header (32), `total_set` u64 @32, bit words from @40.
pub const BLOOM_TOTAL_SET_OFF: usize = 32;
pub const BLOOM_BITS_OFF: usize = 40;
/// `SCOUTFS_FOREST_BLOOM_BITS`: 8187 words of 64 bits.
pub const FOREST_BLOOM_BITS: u64 = ((LG_BLOCK_SIZE - BLOOM_BITS_OFF) / 8 * 64) as u64;
/// `SCOUTFS_FOREST_BLOOM_NRS` and `_FUNC_BITS`.
pub const FOREST_BLOOM_NRS: usize = 3;
pub const FOREST_BLOOM_FUNC_BITS: u32 = 19;

/// The three bloom bit numbers of a (lock start) key.
pub fn bloom_bits(key: &Key) -> [u64; FOREST_BLOOM_NRS] {
    let mut h = crate::format::hash::fnv1a64(&key.to_bytes());
    let mut out = [0u64; FOREST_BLOOM_NRS];
    for o in out.iter_mut() {
        *o = (h as u32) as u64 % FOREST_BLOOM_BITS;
        h >>= FOREST_BLOOM_FUNC_BITS;
    }
    out
}

/// Is bit `nr` set in a bloom block? (little-endian bit order)
pub fn bloom_test(b: &[u8], nr: u64) -> bool {
    let byte = BLOOM_BITS_OFF + (nr / 8) as usize;
    b[byte] & (1 << (nr % 8)) != 0
}

/// Set bit `nr`; true if it was clear.
pub fn bloom_set(b: &mut [u8], nr: u64) -> bool {
    let byte = BLOOM_BITS_OFF + (nr / 8) as usize;
    let mask = 1 << (nr % 8);
    if b[byte] & mask != 0 {
        return false;
    }
    b[byte] |= mask;
    true
}

/// Number of set bits in a bloom block (fsck compares with `total_set`).
pub fn bloom_count(b: &[u8]) -> u64 {
    b[BLOOM_BITS_OFF..]
        .iter()
        .map(|x| x.count_ones() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(n: u64) -> AllocListHead {
        AllocListHead {
            bref: BlockRef {
                blkno: n,
                seq: n + 1,
            },
            total_nr: n + 2,
            first_nr: n as u32 + 3,
            flags: 1,
        }
    }

    fn root(n: u64) -> BtreeRoot {
        BtreeRoot {
            bref: BlockRef {
                blkno: n,
                seq: n * 7,
            },
            height: (n % 20) as u8,
        }
    }

    #[test]
    fn log_trees_offsets_and_round_trip() {
        let mut lt = LogTrees {
            meta_avail: head(1),
            meta_freed: head(2),
            item_root: root(3),
            bloom_ref: BlockRef { blkno: 4, seq: 5 },
            data_avail: AllocRoot {
                total_len: 6,
                flags: 1,
                root: root(7),
            },
            data_freed: AllocRoot {
                total_len: 8,
                flags: 0,
                root: root(9),
            },
            data_alloc_zone_blocks: 10,
            inode_count_delta: (-3i64) as u64,
            get_trans_seq: 11,
            commit_trans_seq: 12,
            max_item_seq: 13,
            finalize_seq: 14,
            rid: 15,
            nr: 16,
            flags: LOG_TREES_FINALIZED,
            ..Default::default()
        };
        lt.data_alloc_zones[15] = 99;
        lt.srch_file.entries = 42;
        lt.srch_file.height = 2;
        let b = lt.encode();
        assert_eq!(get_u64(&b, 448), 15);
        assert_eq!(get_u64(&b, 464), 1);
        assert_eq!(get_u64(&b, 408), (-3i64) as u64);
        assert_eq!(get_u64(&b, 280 + 15 * 8), 99);
        assert_eq!(get_u64(&b, 184 + 72), 42);
        assert_eq!(LogTrees::decode(&b), Ok(lt));
        assert!(LogTrees::decode(&b[..471]).is_err());
        let mut bad = b;
        bad[464] = 2;
        assert!(LogTrees::decode(&bad).is_err());
    }

    #[test]
    fn merge_items_round_trip_and_validate() {
        let st = MergeStatus {
            next_range_key: Key::new(16, 5, 4, 0, 0, 0),
            nr_requests: 2,
            nr_complete: 3,
            seq: 77,
        };
        assert_eq!(MergeStatus::decode(&st.encode()), Ok(st));
        let r = MergeRange {
            start: Key::new(16, 1, 0, 0, 0, 0),
            end: Key::MAX,
        };
        assert_eq!(MergeRange::decode(&r.encode()), Ok(r));
        assert_eq!(r.key().zone, zone::LOG_MERGE_RANGE);
        assert_eq!(r.key().first, 1);
        let swapped = MergeRange {
            start: r.end,
            end: r.start,
        };
        assert!(MergeRange::decode(&swapped.encode()).is_err());
        let req = MergeRequest {
            meta_avail: head(1),
            meta_freed: head(2),
            logs_root: root(3),
            root: root(4),
            start: Key::new(4, 0, 0, 0, 0, 0),
            end: Key::new(16, 9, 0, 0, 0, 0),
            input_seq: 5,
            rid: 6,
            seq: 7,
            flags: MERGE_REQUEST_SUBTREE,
        };
        let b = req.encode();
        assert_eq!(get_u64(&b, 176), 5);
        assert_eq!(MergeRequest::decode(&b), Ok(req));
        let comp = MergeComplete {
            meta_avail: head(1),
            meta_freed: head(2),
            root: root(3),
            start: req.start,
            end: req.end,
            remain: Key::new(16, 2, 0, 0, 0, 0),
            rid: 6,
            seq: 7,
            flags: MERGE_COMP_REMAIN,
        };
        let b = comp.encode();
        assert_eq!(get_u64(&b, 200), MERGE_COMP_REMAIN);
        assert_eq!(MergeComplete::decode(&b), Ok(comp));
        let bad = MergeComplete {
            remain: Key::MAX,
            ..comp
        };
        assert!(MergeComplete::decode(&bad.encode()).is_err());
        let f = MergeFreeing {
            root: root(8),
            key: Key::MIN,
            seq: 9,
        };
        assert_eq!(MergeFreeing::decode(&f.encode()), Ok(f));
        let mc = MountedClient {
            addr: [1; 32],
            flags: MOUNTED_CLIENT_QUORUM,
        };
        assert_eq!(MountedClient::decode(&mc.encode()), Ok(mc));
    }

    #[test]
    fn bloom_geometry() {
        assert_eq!(FOREST_BLOOM_BITS, 523_968);
        let bits = bloom_bits(&Key::new(16, 1024, 0, 0, 0, 0));
        for b in bits {
            assert!(b < FOREST_BLOOM_BITS);
        }
        let mut blk = alloc::vec![0u8; LG_BLOCK_SIZE];
        assert!(bloom_set(&mut blk, bits[0]));
        assert!(!bloom_set(&mut blk, bits[0]));
        assert!(bloom_test(&blk, bits[0]));
        assert_eq!(bloom_count(&blk), 1);
        assert!(bloom_set(&mut blk, FOREST_BLOOM_BITS - 1));
        assert_eq!(blk[LG_BLOCK_SIZE - 1], 0x80);
    }
}
