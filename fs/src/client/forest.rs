//! Forest reads: the persistent item set is fs_root plus every log tree
//! in `logs_root` (storage reference 3.1). A read merges the leaf of each
//! tree that covers the key, skipping trees whose bloom block says they
//! hold nothing under the key's lock, keeps the version with the highest
//! seq (a deletion item hides older versions), sums `.totl.` deltas with
//! the fs-root / merge-input / log classification, and reports the key
//! range every tree it read agrees on.
//!
//! Called by the client transaction engine (`trans.rs`) and tests; reads
//! only stable blocks through a [`BlockCache`] and returns `Stale` when a
//! root went stale (the caller fetches fresh roots and retries once).
//! Also owns the bloom key rule (the start key of the cluster lock that
//! covers an item), which writers of log trees share.

use crate::format::block::{BlockRef, BtreeRoot};
use crate::format::key::{zone, Key};
use crate::format::le::get_u64;
use crate::format::log::{bloom_bits, bloom_test, merge_status_key, LogTrees, MergeStatus};
use crate::format::MAGIC_BLOOM;
use crate::posix::backend::lock_range;
use crate::server::log_trees;
use crate::storage::block::BlockCache;
use crate::storage::btree;
use crate::storage::store_error::{StoreError, StoreResult};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// The bloom key of an item: its lock's start key.
pub fn bloom_key(key: &Key) -> Key {
    lock_range(key).0
}

/// One log tree as a reader needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeRef {
    pub rid: u64,
    pub nr: u64,
    pub item_root: BtreeRoot,
    pub bloom_ref: BlockRef,
    /// A finalized tree that is an input of the current merge (its totl
    /// deltas may already be in fs_root).
    pub merge_input: bool,
}

/// The roots of one consistent read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForestRoots {
    pub fs_root: BtreeRoot,
    pub logs_root: BtreeRoot,
    pub trees: Vec<TreeRef>,
    pub merge_input_seq: u64,
}

impl ForestRoots {
    /// Read the log trees of `logs_root`. `merge_input_seq` is the STATUS
    /// seq of the merge in progress (0: none).
    pub fn load(
        cache: &mut BlockCache,
        fs_root: BtreeRoot,
        logs_root: BtreeRoot,
        merge_input_seq: u64,
    ) -> StoreResult<ForestRoots> {
        let trees = log_trees::all(cache, &logs_root)?
            .into_iter()
            .filter(|lt| !lt.item_root.is_empty())
            .map(|lt: LogTrees| TreeRef {
                rid: lt.rid,
                nr: lt.nr,
                item_root: lt.item_root,
                bloom_ref: lt.bloom_ref,
                merge_input: lt.is_finalized()
                    && (merge_input_seq == 0 || lt.finalize_seq < merge_input_seq),
            })
            .collect();
        Ok(ForestRoots {
            fs_root,
            logs_root,
            trees,
            merge_input_seq,
        })
    }
}

/// The STATUS seq of the merge in progress in a `log_merge` root.
pub fn merge_input_seq(cache: &mut BlockCache, log_merge: &BtreeRoot) -> StoreResult<u64> {
    match btree::lookup(cache, log_merge, &merge_status_key())? {
        Some(it) => Ok(MergeStatus::decode(&it.val)
            .map_err(|e| StoreError::Corrupt {
                blkno: log_merge.bref.blkno,
                what: e.0,
            })?
            .seq),
        None => Ok(0),
    }
}

/// Where a version came from (the `.totl.` classification).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    Fs,
    Input,
    Log,
}

#[derive(Default)]
struct TotlMerge {
    fs: Option<(u64, u64, u64)>,
    inp_seq: u64,
    inp_total: u64,
    inp_count: u64,
    log_seq: u64,
    log_total: u64,
    log_count: u64,
}

impl TotlMerge {
    fn add(&mut self, src: Source, seq: u64, val: &[u8]) -> Result<(), &'static str> {
        if val.len() != 16 {
            return Err("totl item value is not 16 bytes");
        }
        let (t, c) = (get_u64(val, 0), get_u64(val, 8));
        match src {
            Source::Fs => self.fs = Some((seq, t, c)),
            Source::Input => {
                self.inp_seq = self.inp_seq.max(seq);
                self.inp_total = self.inp_total.wrapping_add(t);
                self.inp_count = self.inp_count.wrapping_add(c);
            }
            Source::Log => {
                self.log_seq = self.log_seq.max(seq);
                self.log_total = self.log_total.wrapping_add(t);
                self.log_count = self.log_count.wrapping_add(c);
            }
        }
        Ok(())
    }

    /// (total, count), per scoutfs' rule: the fs item if its seq is set;
    /// merge-input deltas only when newer than it (or it is absent and they
    /// create); every other log delta always.
    fn resolve(&self) -> (u64, u64) {
        let (mut t, mut c) = (0u64, 0u64);
        let fs_seq = self.fs.map_or(0, |f| f.0);
        if let Some((s, ft, fc)) = self.fs {
            if s != 0 {
                t = ft;
                c = fc;
            }
        }
        if (fs_seq != 0 && self.inp_seq > fs_seq) || (fs_seq == 0 && (self.inp_count as i64) > 0) {
            t = t.wrapping_add(self.inp_total);
            c = c.wrapping_add(self.inp_count);
        }
        if self.log_seq > 0 {
            t = t.wrapping_add(self.log_total);
            c = c.wrapping_add(self.log_count);
        }
        (t, c)
    }
}

/// What a read returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForestItems {
    /// Resolved items in `[start, end]`, sorted, no deletions.
    pub items: Vec<(Key, Vec<u8>)>,
    pub start: Key,
    pub end: Key,
    /// Log trees skipped by their bloom block / read.
    pub bloom_skipped: u32,
    pub trees_read: u32,
}

struct Version {
    seq: u64,
    deletion: bool,
    val: Vec<u8>,
}

/// The resolved persistent items around `key` within `[lo, hi]` (clamped
/// to `key`'s lock range) and the range the answer covers.
pub fn read_items(
    cache: &mut BlockCache,
    roots: &ForestRoots,
    key: &Key,
    lo: &Key,
    hi: &Key,
) -> StoreResult<ForestItems> {
    let (ls, le) = lock_range(key);
    let lo = if ls > *lo { ls } else { *lo };
    let hi = if le < *hi { le } else { *hi };
    if !(lo <= *key && *key <= hi) {
        return Err(StoreError::Invalid("read key outside its bounds"));
    }
    let bloom = bloom_bits(&ls);
    let mut versions: BTreeMap<Key, Version> = BTreeMap::new();
    let mut totl: BTreeMap<Key, TotlMerge> = BTreeMap::new();
    let mut out = ForestItems::default();

    let mut collect = |items: Vec<btree::Item>, src: Source| -> StoreResult<()> {
        for it in items {
            if it.key.zone == zone::XATTR_TOTL {
                totl.entry(it.key)
                    .or_default()
                    .add(src, it.seq, &it.val)
                    .map_err(|what| StoreError::Corrupt { blkno: 0, what })?;
                continue;
            }
            let newer = match versions.get(&it.key) {
                Some(v) => it.seq > v.seq,
                None => true,
            };
            if newer {
                versions.insert(
                    it.key,
                    Version {
                        seq: it.seq,
                        deletion: it.is_deletion(),
                        val: it.val,
                    },
                );
            }
        }
        Ok(())
    };

    let li = btree::read_items(cache, &roots.fs_root, key, &lo, &hi)?;
    let (mut start, mut end) = (li.start, li.end);
    collect(li.items, Source::Fs)?;
    for t in &roots.trees {
        if !t.bloom_ref.is_null() {
            let b = cache.read_ref(&t.bloom_ref, MAGIC_BLOOM)?;
            let b = b.borrow();
            if !bloom.iter().all(|&n| bloom_test(&b, n)) {
                out.bloom_skipped += 1;
                continue;
            }
        }
        out.trees_read += 1;
        let li = btree::read_items(cache, &t.item_root, key, &start, &end)?;
        start = li.start;
        end = li.end;
        collect(
            li.items,
            if t.merge_input {
                Source::Input
            } else {
                Source::Log
            },
        )?;
    }
    let mut items: Vec<(Key, Vec<u8>)> = versions
        .into_iter()
        .filter(|(k, v)| !v.deletion && *k >= start && *k <= end)
        .map(|(k, v)| (k, v.val))
        .collect();
    let mut any_totl = false;
    for (k, m) in totl {
        if k < start || k > end {
            continue;
        }
        let (t, c) = m.resolve();
        if t == 0 && c == 0 {
            continue;
        }
        any_totl = true;
        let mut v = alloc::vec![0u8; 16];
        v[0..8].copy_from_slice(&t.to_le_bytes());
        v[8..16].copy_from_slice(&c.to_le_bytes());
        items.push((k, v));
    }
    if any_totl {
        items.sort_by_key(|a| a.0);
    }
    out.items = items;
    out.start = start;
    out.end = end;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::key::ty;

    #[test]
    fn bloom_keys_are_lock_starts() {
        assert_eq!(
            bloom_key(&Key::fs(5000, ty::DIRENT, 7, 8)),
            Key::new(16, 4096, 0, 0, 0, 0)
        );
        assert_eq!(
            bloom_key(&Key::new(4, 0, 8, 2050, 77, 0)),
            Key::new(4, 0, 8, 2048, 0, 0)
        );
        assert_eq!(
            bloom_key(&Key::new(8, 0, 4, 99, 0, 0)),
            Key::new(8, 0, 4, 0, 0, 0)
        );
        assert_eq!(
            bloom_key(&Key::new(12, 1, 0, 2, 3, 0)),
            Key::new(12, 0, 0, 0, 0, 0)
        );
        let (s, e) = lock_range(&Key::fs(1, ty::INODE, 0, 0));
        assert!(s <= Key::fs(0, 0, 0, 0) && Key::fs(1023, 255, u64::MAX, u64::MAX) <= e);
    }

    #[test]
    fn totl_classification() {
        let v = |t: i64, c: i64| {
            let mut b = alloc::vec![0u8; 16];
            b[0..8].copy_from_slice(&(t as u64).to_le_bytes());
            b[8..16].copy_from_slice(&(c as u64).to_le_bytes());
            b
        };
        // before a merge: fs (10,2)@5 + input (+3,+1)@7 + log (+1,+1)@9
        let mut m = TotlMerge::default();
        m.add(Source::Fs, 5, &v(10, 2)).unwrap();
        m.add(Source::Input, 7, &v(3, 1)).unwrap();
        m.add(Source::Log, 9, &v(1, 1)).unwrap();
        assert_eq!(m.resolve(), (14, 4));
        // after merging the input into fs: fs (13,3)@7, input not applied
        let mut m = TotlMerge::default();
        m.add(Source::Fs, 7, &v(13, 3)).unwrap();
        m.add(Source::Input, 7, &v(3, 1)).unwrap();
        assert_eq!(m.resolve(), (13, 3));
        // a merge deleted the fs item (sum reached zero): input not applied
        let mut m = TotlMerge::default();
        m.add(Source::Input, 7, &v(-5, -1)).unwrap();
        assert_eq!(m.resolve(), (0, 0));
        // created by an input, not yet merged
        let mut m = TotlMerge::default();
        m.add(Source::Input, 7, &v(5, 1)).unwrap();
        assert_eq!(m.resolve(), (5, 1));
        assert!(m.add(Source::Log, 1, &[0; 8]).is_err());
    }
}
