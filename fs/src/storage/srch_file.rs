//! srch files on the metadata device: a dense radix of parent blocks over
//! leaves of packed entries (`format::srch`). Mounts append their
//! transactions' entries to their log tree's file; the server compacts
//! rotated log files into sorted files; searches and fsck read them.
//!
//! Appends copy-on-write the path to the last leaf like any dirty block
//! (the file belongs to one writer: a mount's open log tree or the
//! server's transaction). Reads check every block ref, magic and count.

use crate::format::key::{ty, zone, Key};
use crate::format::log::{SrchEntry, SrchFile};
use crate::format::srch::{self, LeafHead, HEIGHT_MAX};
use crate::format::{BlockRef, BtreeRoot, MAGIC_SRCH_BLOCK, MAGIC_SRCH_PARENT};
use crate::storage::block::{BlockCache, MetaAlloc};
use crate::storage::btree;
use crate::storage::store_error::{StoreError, StoreResult};
use alloc::collections::BTreeSet;
use alloc::vec::Vec;

fn corrupt(blkno: u64, what: &'static str) -> StoreError {
    StoreError::Corrupt { blkno, what }
}

fn magic(level: u8) -> u32 {
    if level == 0 {
        MAGIC_SRCH_BLOCK
    } else {
        MAGIC_SRCH_PARENT
    }
}

/// Check the descriptor's shape before following it.
pub fn check_file(f: &SrchFile) -> StoreResult<()> {
    let blk = f.bref.blkno;
    if f.is_empty() {
        if f.blocks != 0 || f.height != 0 {
            return Err(corrupt(blk, "empty srch file with blocks or height"));
        }
        return Ok(());
    }
    if f.height == 0 || f.height > HEIGHT_MAX || f.blocks == 0 {
        return Err(corrupt(blk, "srch file height or blocks out of range"));
    }
    if srch::height_for_blk(f.blocks - 1) > f.height {
        return Err(corrupt(
            blk,
            "srch file has more blocks than its height holds",
        ));
    }
    Ok(())
}

/// Dirty (copy-on-write) the path to leaf `blk`, growing the radix when
/// `blk` is past what its height covers; returns the leaf's ref.
fn dirty_leaf(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    f: &mut SrchFile,
    blk: u64,
) -> StoreResult<BlockRef> {
    let want = srch::height_for_blk(blk);
    if want > HEIGHT_MAX {
        return Err(StoreError::Invalid("srch file too large"));
    }
    while f.height < want {
        let mut root = BlockRef::default();
        let buf = cache.dirty_ref(&mut root, magic(f.height), alloc)?;
        if f.height > 0 {
            srch::set_parent_ref(&mut buf.borrow_mut(), 0, &f.bref);
        }
        f.bref = root;
        f.height += 1;
    }
    let mut level = f.height - 1;
    let mut r = f.bref;
    cache.dirty_ref(&mut r, magic(level), alloc)?;
    f.bref = r;
    while level > 0 {
        let parent = cache.dirty_ref(&mut r, magic(level), alloc)?;
        let i = srch::ref_index(blk, level);
        let mut child = srch::parent_ref(&parent.borrow(), i).map_err(|e| corrupt(r.blkno, e.0))?;
        level -= 1;
        cache.dirty_ref(&mut child, magic(level), alloc)?;
        srch::set_parent_ref(&mut parent.borrow_mut(), i, &child);
        r = child;
    }
    if blk >= f.blocks {
        f.blocks = blk + 1;
    }
    Ok(r)
}

/// Append entries to the file in the given order (a log file's append
/// order, or a sorted file built in order). The last leaf is continued
/// until it passes the safe size; `first`/`last` track the min/max.
pub fn append(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    f: &mut SrchFile,
    entries: &[SrchEntry],
) -> StoreResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    check_file(f)?;
    let mut blk = f.blocks.saturating_sub(1);
    let mut leaf = dirty_leaf(cache, alloc, f, blk)?;
    for e in entries {
        let buf = cache.dirty_ref(&mut leaf, MAGIC_SRCH_BLOCK, alloc)?;
        let added =
            srch::leaf_append(&mut buf.borrow_mut(), e).map_err(|x| corrupt(leaf.blkno, x.0))?;
        if !added {
            blk += 1;
            leaf = dirty_leaf(cache, alloc, f, blk)?;
            let buf = cache.dirty_ref(&mut leaf, MAGIC_SRCH_BLOCK, alloc)?;
            if !srch::leaf_append(&mut buf.borrow_mut(), e).map_err(|x| corrupt(leaf.blkno, x.0))? {
                return Err(corrupt(leaf.blkno, "new srch block is full"));
            }
        }
        if f.entries == 0 {
            f.first = *e;
            f.last = *e;
        } else {
            f.first = f.first.min(*e);
            f.last = f.last.max(*e);
        }
        f.entries += 1;
    }
    Ok(())
}

/// The ref of leaf `blk` (reading the parents on the way).
pub fn leaf_ref(cache: &mut BlockCache, f: &SrchFile, blk: u64) -> StoreResult<BlockRef> {
    check_file(f)?;
    if f.is_empty() || blk >= f.blocks {
        return Err(corrupt(f.bref.blkno, "srch leaf past the file's blocks"));
    }
    let mut r = f.bref;
    let mut level = f.height - 1;
    while level > 0 {
        let b = cache.read_ref(&r, MAGIC_SRCH_PARENT)?;
        let c = srch::parent_ref(&b.borrow(), srch::ref_index(blk, level))
            .map_err(|e| corrupt(r.blkno, e.0))?;
        if c.is_null() {
            return Err(corrupt(r.blkno, "srch parent misses a leaf of the file"));
        }
        r = c;
        level -= 1;
    }
    Ok(r)
}

/// Leaf `blk`'s header and entries (checked; `sorted` also checks order).
pub fn read_leaf(
    cache: &mut BlockCache,
    f: &SrchFile,
    blk: u64,
    sorted: bool,
) -> StoreResult<(LeafHead, Vec<SrchEntry>)> {
    let r = leaf_ref(cache, f, blk)?;
    let b = cache.read_ref(&r, MAGIC_SRCH_BLOCK)?;
    let out = srch::decode_leaf(&b.borrow(), sorted).map_err(|e| corrupt(r.blkno, e.0));
    out
}

/// Leaf `blk`'s header only.
pub fn read_leaf_head(cache: &mut BlockCache, f: &SrchFile, blk: u64) -> StoreResult<LeafHead> {
    let r = leaf_ref(cache, f, blk)?;
    let b = cache.read_ref(&r, MAGIC_SRCH_BLOCK)?;
    let h = LeafHead::decode(&b.borrow()).map_err(|e| corrupt(r.blkno, e.0));
    h
}

/// Every block of the file (parents and leaves), for freeing and fsck.
pub fn blocks(cache: &mut BlockCache, f: &SrchFile) -> StoreResult<Vec<BlockRef>> {
    check_file(f)?;
    let mut out = Vec::new();
    if f.is_empty() {
        return Ok(out);
    }
    let mut stack = alloc::vec![(f.bref, f.height - 1)];
    while let Some((r, level)) = stack.pop() {
        out.push(r);
        if level == 0 {
            continue;
        }
        let b = cache.read_ref(&r, MAGIC_SRCH_PARENT)?;
        let b = b.borrow();
        for i in 0..srch::PARENT_REFS {
            let c = srch::parent_ref(&b, i).map_err(|e| corrupt(r.blkno, e.0))?;
            if !c.is_null() {
                stack.push((c, level - 1));
            }
        }
    }
    Ok(out)
}

/// Free every block of the file (after its entries moved elsewhere).
pub fn free(cache: &mut BlockCache, alloc: &mut dyn MetaAlloc, f: &SrchFile) -> StoreResult<u64> {
    let all = blocks(cache, f)?;
    for r in &all {
        alloc.free_meta(cache, r.blkno)?;
    }
    Ok(all.len() as u64)
}

/// Sort entries and drop those that occur an even number of times
/// (a creation and its deletion cancel); one of each odd run remains.
pub fn sort_cancel(mut v: Vec<SrchEntry>) -> Vec<SrchEntry> {
    v.sort_unstable();
    let mut out: Vec<SrchEntry> = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let mut j = i + 1;
        while j < v.len() && v[j] == v[i] {
            j += 1;
        }
        if (j - i) % 2 == 1 {
            out.push(v[i]);
        }
        i = j;
    }
    out
}

/// A file registered in `srch_root`: a rotated log file (LOG item) or a
/// sorted file (BLOCKS item), with the key it is filed under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootFile {
    pub key: Key,
    pub file: SrchFile,
    pub sorted: bool,
}

/// The key of a LOG item for a file.
pub fn log_key(f: &SrchFile) -> Key {
    Key::new(zone::SRCH, 0, ty::SRCH_LOG, f.bref.blkno, 0, 0)
}

/// The key of a BLOCKS (sorted file) item for a file.
pub fn blocks_key(f: &SrchFile) -> Key {
    Key::new(zone::SRCH, 0, ty::SRCH_BLOCKS, f.blocks, f.bref.blkno, 0)
}

/// Every LOG and BLOCKS file of a `srch_root`.
pub fn root_files(cache: &mut BlockCache, root: &BtreeRoot) -> StoreResult<Vec<RootFile>> {
    let mut out = Vec::new();
    let mut bad = None;
    let s = Key::new(zone::SRCH, 0, ty::SRCH_LOG, 0, 0, 0);
    let e = Key::new(zone::SRCH, 0, ty::SRCH_BLOCKS, u64::MAX, u64::MAX, u8::MAX);
    btree::for_each_range(cache, root, &s, &e, |it| {
        if it.val.len() != SrchFile::BYTES {
            bad = Some("srch_root file item is not 88 bytes");
            return false;
        }
        out.push(RootFile {
            key: it.key,
            file: SrchFile::decode(&it.val),
            sorted: it.key.ty == ty::SRCH_BLOCKS,
        });
        true
    })?;
    if let Some(what) = bad {
        return Err(corrupt(root.bref.blkno, what));
    }
    Ok(out)
}

/// Toggles `(ino, id)` of the entries of one hash in an ino range; the
/// entries left set after every file are the candidates. Holds at most
/// `cap` entries: past it the range's end shrinks to drop the highest
/// inodes (the caller asks again from there).
#[derive(Debug)]
pub struct SearchSet {
    pub hash: u64,
    pub first_ino: u64,
    pub last_ino: u64,
    cap: usize,
    set: BTreeSet<(u64, u64)>,
}

impl SearchSet {
    pub fn new(hash: u64, first_ino: u64, last_ino: u64, cap: usize) -> SearchSet {
        SearchSet {
            hash,
            first_ino,
            last_ino,
            cap: cap.max(1),
            set: BTreeSet::new(),
        }
    }

    fn lo(&self) -> SrchEntry {
        SrchEntry {
            hash: self.hash,
            ino: self.first_ino,
            id: 0,
        }
    }

    fn hi(&self) -> SrchEntry {
        SrchEntry {
            hash: self.hash,
            ino: self.last_ino,
            id: u64::MAX,
        }
    }

    /// Count one entry (outside the hash and range: ignored).
    pub fn toggle(&mut self, e: &SrchEntry) {
        if e.hash != self.hash || e.ino < self.first_ino || e.ino > self.last_ino {
            return;
        }
        if !self.set.remove(&(e.ino, e.id)) {
            self.set.insert((e.ino, e.id));
            while self.set.len() > self.cap {
                // drop every entry of the highest inode and stop before it
                let Some(&(top, _)) = self.set.last() else {
                    break;
                };
                if top <= self.first_ino {
                    break;
                }
                self.last_ino = top - 1;
                while self.set.last().is_some_and(|&(i, _)| i == top) {
                    self.set.pop_last();
                }
            }
        }
    }

    /// Toggle the matching entries of every leaf of a file: a sorted
    /// file by binary search on its leaves' bounds, a log file by
    /// scanning the leaves whose min/max cover the range.
    pub fn add_file(
        &mut self,
        cache: &mut BlockCache,
        f: &SrchFile,
        sorted: bool,
    ) -> StoreResult<()> {
        check_file(f)?;
        if f.is_empty() || f.entries == 0 || f.last < self.lo() || f.first > self.hi() {
            return Ok(());
        }
        let mut blk = 0;
        if sorted {
            // the first leaf whose last entry reaches the range
            let (mut lo, mut hi) = (0u64, f.blocks);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if read_leaf_head(cache, f, mid)?.last < self.lo() {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            blk = lo;
        }
        while blk < f.blocks {
            let h = read_leaf_head(cache, f, blk)?;
            if sorted && h.entry_nr > 0 && h.first > self.hi() {
                break;
            }
            if h.entry_nr > 0 && h.last >= self.lo() && h.first <= self.hi() {
                let (_, ents) = read_leaf(cache, f, blk, sorted)?;
                for e in &ents {
                    self.toggle(e);
                }
            }
            blk += 1;
        }
        Ok(())
    }

    /// The candidate inodes, ascending and unique.
    pub fn inos(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.set.iter().map(|&(i, _)| i).collect();
        v.dedup();
        v
    }
}

/// Search a volume's srch files from a consistent set of roots: every
/// file of `srch_root` and the log trees' srch files `logs` (open ones
/// included).
pub fn search_roots(
    cache: &mut BlockCache,
    srch_root: &BtreeRoot,
    logs: &[SrchFile],
    set: &mut SearchSet,
) -> StoreResult<()> {
    for f in root_files(cache, srch_root)? {
        set.add_file(cache, &f.file, f.sorted)?;
    }
    for f in logs {
        set.add_file(cache, f, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::env::{Entropy, SeededEntropy};
    use crate::storage::dev::MemDev;
    use alloc::boxed::Box;
    use alloc::collections::BTreeMap;
    use alloc::rc::Rc;

    struct Bump(u64, Vec<u64>);
    impl MetaAlloc for Bump {
        fn alloc_meta(&mut self, _: &mut BlockCache) -> StoreResult<u64> {
            self.0 += 1;
            Ok(self.0)
        }
        fn free_meta(&mut self, _: &mut BlockCache, b: u64) -> StoreResult<()> {
            self.1.push(b);
            Ok(())
        }
    }

    fn cache() -> BlockCache {
        let dev = Rc::new(MemDev::new(64 << 20));
        BlockCache::new(Box::new(dev), Box::new(SeededEntropy::new(3)), 77, 4 << 20)
    }

    fn entries(n: usize, seed: u64) -> Vec<SrchEntry> {
        let e = SeededEntropy::new(seed);
        (0..n)
            .map(|_| {
                let r = e.next_u64();
                SrchEntry {
                    hash: r % 5,
                    ino: 100 + (r >> 8) % 3000,
                    id: (r >> 40) % 4,
                }
            })
            .collect()
    }

    fn read_file(c: &mut BlockCache, f: &SrchFile, sorted: bool) -> Vec<SrchEntry> {
        (0..f.blocks)
            .flat_map(|b| read_leaf(c, f, b, sorted).unwrap().1)
            .collect()
    }

    /// The inodes a parity count of `all` leaves for `hash`.
    fn brute(all: &[SrchEntry], hash: u64, lo: u64, hi: u64) -> Vec<u64> {
        let mut n: BTreeMap<(u64, u64), u32> = BTreeMap::new();
        for e in all
            .iter()
            .filter(|e| e.hash == hash && e.ino >= lo && e.ino <= hi)
        {
            *n.entry((e.ino, e.id)).or_default() += 1;
        }
        let mut v: Vec<u64> = n
            .iter()
            .filter(|(_, c)| *c % 2 == 1)
            .map(|(k, _)| k.0)
            .collect();
        v.dedup();
        v
    }

    #[test]
    fn log_file_grows_a_radix_across_commits_and_searches_by_parity() {
        let mut c = cache();
        let mut a = Bump(10, Vec::new());
        let mut f = SrchFile::default();
        let all = entries(30_000, 5);
        for chunk in all.chunks(10_000) {
            append(&mut c, &mut a, &mut f, chunk).unwrap();
            c.write_dirty().unwrap();
        }
        assert!(f.blocks > 1 && f.height == 2, "{f:?}");
        assert_eq!(f.entries, 30_000);
        assert!(
            !a.1.is_empty(),
            "later commits copied the last leaf and root"
        );
        assert_eq!(read_file(&mut c, &f, false), all);
        assert_eq!(f.first, *all.iter().min().unwrap());
        assert_eq!(f.last, *all.iter().max().unwrap());
        assert_eq!(blocks(&mut c, &f).unwrap().len() as u64, f.blocks + 1);

        // the same entries as a sorted file answer the same searches
        let sorted = sort_cancel(all.clone());
        let mut s = SrchFile::default();
        append(&mut c, &mut a, &mut s, &sorted).unwrap();
        c.write_dirty().unwrap();
        assert_eq!(read_file(&mut c, &s, true), sorted);
        for (hash, lo, hi) in [(0, 0, u64::MAX), (3, 500, 900), (4, 3099, 3099), (9, 0, 10)] {
            let want = brute(&all, hash, lo, hi);
            for (file, is_sorted) in [(&f, false), (&s, true)] {
                let mut set = SearchSet::new(hash, lo, hi, usize::MAX);
                set.add_file(&mut c, file, is_sorted).unwrap();
                assert_eq!(set.inos(), want, "hash {hash} sorted {is_sorted}");
            }
        }
        // a capped search covers a prefix of the range, exactly
        let mut set = SearchSet::new(1, 0, u64::MAX, 50);
        set.add_file(&mut c, &s, true).unwrap();
        assert!(set.last_ino < u64::MAX);
        assert_eq!(set.inos(), brute(&all, 1, 0, set.last_ino));

        // freeing hands back every block
        let before = a.1.len();
        assert_eq!(free(&mut c, &mut a, &s).unwrap(), s.blocks + 1);
        assert_eq!(a.1.len() - before, s.blocks as usize + 1);
    }

    #[test]
    fn damaged_files_are_errors() {
        let mut c = cache();
        let mut a = Bump(10, Vec::new());
        let mut f = SrchFile::default();
        append(&mut c, &mut a, &mut f, &entries(20_000, 9)).unwrap();
        c.write_dirty().unwrap();
        let bad = [
            SrchFile { height: 0, ..f },
            SrchFile { height: 9, ..f },
            SrchFile { blocks: 0, ..f },
            SrchFile {
                blocks: 5000,
                height: 2,
                ..f
            },
            SrchFile {
                height: 1,
                blocks: 1,
                ..f
            },
        ];
        for b in bad {
            let mut set = SearchSet::new(1, 0, u64::MAX, usize::MAX);
            // the last: a height-1 view reads the parent as a leaf
            assert!(set.add_file(&mut c, &b, false).is_err(), "{b:?}");
        }
        assert!(leaf_ref(&mut c, &f, f.blocks).is_err());
        // a sorted read of a log file's leaves finds them out of order
        assert!(read_leaf(&mut c, &f, 0, true).is_err());
    }

    #[test]
    fn sort_cancel_keeps_odd_counts() {
        let e = |i| SrchEntry {
            hash: 1,
            ino: i,
            id: 0,
        };
        let v = alloc::vec![e(3), e(1), e(3), e(2), e(2), e(2), e(5)];
        assert_eq!(sort_cancel(v), alloc::vec![e(1), e(2), e(5)]);
    }
}
