//! Allocators: metadata list allocators (alloc list blocks) and free-extent
//! btrees indexed twice (by block and by size order), plus the moves
//! between them that the server's commit performs.
//!
//! Called by the btree (through [`MetaAlloc`]) and by the server commit.
//! Invariants: a transaction allocates only from the first block of its
//! avail list and records every freed block in its freed list; neither
//! list block is modified in place (the allocator COWs both into blknos it
//! peeks from avail, once per transaction); every free extent is stored
//! as a BLKNO item and an ORDER item, never overlapping or adjacent to
//! another, and `total_len` is their sum.

use crate::format::alloc::*;
use crate::format::block::{AllocListHead, AllocRoot, BlockRef};
use crate::format::key::{zone, Key};
use crate::format::le::*;
use crate::format::MAGIC_ALLOC_LIST;
use crate::storage::block::{BlockBuf, BlockCache, MetaAlloc};
use crate::storage::btree::{self, Item};
use crate::storage::store_error::{StoreError, StoreResult};
use alloc::vec::Vec;

// ---- alloc list blocks ----

pub fn lb_next(b: &[u8]) -> BlockRef {
    BlockRef::decode(&b[off::NEXT..off::NEXT + 16])
}
pub fn lb_set_next(b: &mut [u8], r: &BlockRef) {
    r.encode(&mut b[off::NEXT..off::NEXT + 16]);
}
pub fn lb_start(b: &[u8]) -> usize {
    get_u32(b, off::START) as usize
}
pub fn lb_nr(b: &[u8]) -> usize {
    get_u32(b, off::NR) as usize
}
pub fn lb_blkno(b: &[u8], i: usize) -> u64 {
    get_u64(b, off::BLKNOS + i * 8)
}
fn lb_set_blkno(b: &mut [u8], i: usize, v: u64) {
    put_u64(b, off::BLKNOS + i * 8, v)
}
/// Is the `start`/`nr` window inside the block?
pub fn lb_window_valid(b: &[u8]) -> bool {
    let (s, n) = (lb_start(b), lb_nr(b));
    s < ALLOC_LIST_MAX_BLOCKS && n <= ALLOC_LIST_MAX_BLOCKS && s + n <= ALLOC_LIST_MAX_BLOCKS
}
/// The live blknos of a list block (empty if the window is invalid).
pub fn lb_entries(b: &[u8]) -> Vec<u64> {
    if !lb_window_valid(b) {
        return Vec::new();
    }
    let s = lb_start(b);
    (s..s + lb_nr(b)).map(|i| lb_blkno(b, i)).collect()
}

fn list_add(head: &mut AllocListHead, b: &mut [u8], blkno: u64) {
    let (start, nr) = (lb_start(b), lb_nr(b));
    assert!(nr < ALLOC_LIST_MAX_BLOCKS, "alloc list block full");
    if start + nr < ALLOC_LIST_MAX_BLOCKS {
        lb_set_blkno(b, start + nr, blkno);
    } else {
        lb_set_blkno(b, start - 1, blkno);
        put_u32(b, off::START, (start - 1) as u32);
    }
    put_u32(b, off::NR, (nr + 1) as u32);
    head.total_nr = head.total_nr.saturating_add(1);
    head.first_nr = head.first_nr.saturating_add(1);
}

fn list_remove(head: &mut AllocListHead, b: &mut [u8], count: usize) {
    let nr = lb_nr(b);
    assert!(count <= nr, "alloc list remove past end");
    let start = lb_start(b);
    for i in start..start + count {
        lb_set_blkno(b, i, 0);
    }
    put_u32(b, off::NR, (nr - count) as u32);
    put_u32(
        b,
        off::START,
        if nr == count {
            0
        } else {
            (start + count) as u32
        },
    );
    // heads read from disk are checked against their blocks, but stay
    // defensive: fsck reports totals that disagree
    head.total_nr = head.total_nr.saturating_sub(count as u64);
    head.first_nr = head.first_nr.saturating_sub(count as u32);
}

fn list_sort(b: &mut [u8]) {
    let mut e = lb_entries(b);
    e.sort_unstable();
    let s = lb_start(b);
    for (i, v) in e.into_iter().enumerate() {
        lb_set_blkno(b, s + i, v);
    }
}

fn read_list(cache: &mut BlockCache, r: &BlockRef) -> StoreResult<BlockBuf> {
    let buf = cache.read_ref(r, MAGIC_ALLOC_LIST)?;
    if !lb_window_valid(&buf.borrow()) {
        return Err(StoreError::Corrupt {
            blkno: r.blkno,
            what: "alloc list start/nr out of range",
        });
    }
    Ok(buf)
}

/// A freed list head with less room than this starts a new block.
const EMPTY_FREED_THRESH: usize = ALLOC_LIST_MAX_BLOCKS / 4;

/// The metadata allocator of one transaction: an avail and a freed list.
pub struct ListAlloc {
    pub avail: AllocListHead,
    pub freed: AllocListHead,
    bufs: Option<(BlockBuf, BlockBuf)>,
    /// Blocks handed out in the current transaction.
    pub allocated: u64,
    /// Blocks freed in the current transaction.
    pub freed_count: u64,
}

impl ListAlloc {
    pub fn new(avail: AllocListHead, freed: AllocListHead) -> Self {
        ListAlloc {
            avail,
            freed,
            bufs: None,
            allocated: 0,
            freed_count: 0,
        }
    }

    /// The transaction's blocks were written: COW the lists afresh next
    /// time.
    pub fn end_transaction(&mut self) {
        self.bufs = None;
        self.allocated = 0;
        self.freed_count = 0;
    }

    /// Blocks still allocatable in this transaction.
    pub fn avail_remaining(&self) -> u64 {
        match &self.bufs {
            Some((av, _)) => lb_nr(&av.borrow()) as u64,
            // preparing consumes two for the list blocks themselves
            None => (self.avail.first_nr as u64).saturating_sub(2),
        }
    }

    /// Frees the current freed block can still record.
    pub fn freed_room(&self) -> u64 {
        match &self.bufs {
            Some((_, fr)) => (ALLOC_LIST_MAX_BLOCKS - lb_nr(&fr.borrow())) as u64,
            None => (ALLOC_LIST_MAX_BLOCKS - 2) as u64,
        }
    }

    fn prepare(&mut self, cache: &mut BlockCache) -> StoreResult<()> {
        if self.bufs.is_some() {
            return Ok(());
        }
        if self.avail.bref.is_null() || self.avail.first_nr < 2 {
            return Err(StoreError::NoSpace);
        }
        let (av_peek, fr_peek) = {
            let b = read_list(cache, &self.avail.bref)?;
            let b = b.borrow();
            if lb_nr(&b) < 2 || lb_nr(&b) as u32 != self.avail.first_nr {
                return Err(StoreError::Corrupt {
                    blkno: self.avail.bref.blkno,
                    what: "alloc list nr differs from its head",
                });
            }
            let s = lb_start(&b);
            (lb_blkno(&b, s), lb_blkno(&b, s + 1))
        };
        let orig_freed = self.freed;
        let mut link_orig = false;
        if !self.freed.bref.is_null()
            && ALLOC_LIST_MAX_BLOCKS - (self.freed.first_nr as usize) < EMPTY_FREED_THRESH
        {
            self.freed.bref = BlockRef::default();
            self.freed.first_nr = 0;
            link_orig = true;
        }
        let (fr, fr_old) = cache.dirty_ref_into(&mut self.freed.bref, MAGIC_ALLOC_LIST, fr_peek)?;
        {
            let f = fr.borrow();
            if !lb_window_valid(&f)
                || lb_nr(&f) != self.freed.first_nr as usize
                || lb_nr(&f) + 2 > ALLOC_LIST_MAX_BLOCKS
            {
                return Err(StoreError::Corrupt {
                    blkno: self.freed.bref.blkno,
                    what: "freed list block disagrees with its head",
                });
            }
        }
        if link_orig {
            lb_set_next(&mut fr.borrow_mut(), &orig_freed.bref);
        }
        let (av, av_old) = cache.dirty_ref_into(&mut self.avail.bref, MAGIC_ALLOC_LIST, av_peek)?;
        {
            let mut a = av.borrow_mut();
            list_remove(&mut self.avail, &mut a, 2);
            list_sort(&mut a);
        }
        {
            let mut f = fr.borrow_mut();
            for old in [av_old, fr_old].into_iter().flatten() {
                list_add(&mut self.freed, &mut f, old);
            }
        }
        self.bufs = Some((av, fr));
        Ok(())
    }
}

impl MetaAlloc for ListAlloc {
    fn alloc_meta(&mut self, cache: &mut BlockCache) -> StoreResult<u64> {
        self.prepare(cache)?;
        let (av, _) = self.bufs.as_ref().unwrap();
        let mut a = av.borrow_mut();
        if lb_nr(&a) == 0 {
            return Err(StoreError::NoSpace);
        }
        let blkno = lb_blkno(&a, lb_start(&a));
        list_remove(&mut self.avail, &mut a, 1);
        self.allocated += 1;
        Ok(blkno)
    }

    fn free_meta(&mut self, cache: &mut BlockCache, blkno: u64) -> StoreResult<()> {
        if blkno == 0 {
            return Err(StoreError::Invalid("free of metadata block 0"));
        }
        self.prepare(cache)?;
        let (_, fr) = self.bufs.as_ref().unwrap();
        let mut f = fr.borrow_mut();
        if lb_nr(&f) >= ALLOC_LIST_MAX_BLOCKS {
            return Err(StoreError::NoSpace);
        }
        list_add(&mut self.freed, &mut f, blkno);
        self.freed_count += 1;
        Ok(())
    }
}

// ---- free extent btrees ----

fn ext_at_or_after(
    cache: &mut BlockCache,
    root: &AllocRoot,
    end_min: u64,
) -> StoreResult<Option<(u64, u64)>> {
    let k = Key::new(zone::FREE_EXTENT_BLKNO, end_min, 0, 0, 0, 0);
    match btree::next(cache, &root.root, &k)? {
        Some(it) if it.key.zone == zone::FREE_EXTENT_BLKNO => match extent_from_key(&it.key) {
            Some(e) => Ok(Some(e)),
            None => Err(StoreError::Corrupt {
                blkno: root.root.bref.blkno,
                what: "malformed free extent key",
            }),
        },
        _ => Ok(None),
    }
}

fn ext_del_keys(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut AllocRoot,
    start: u64,
    len: u64,
) -> StoreResult<()> {
    let blk = root.root.bref.blkno;
    let missing = |e| match e {
        StoreError::NotFound => StoreError::Corrupt {
            blkno: blk,
            what: "free extent indexes disagree",
        },
        e => e,
    };
    btree::delete(cache, alloc, &mut root.root, &extent_blkno_key(start, len)).map_err(missing)?;
    if let Err(e) = btree::delete(cache, alloc, &mut root.root, &extent_order_key(start, len)) {
        // the BLKNO item is already gone: this transaction is inconsistent
        cache.poison("free extent indexes disagree");
        return Err(missing(e));
    }
    Ok(())
}

fn ext_add_keys(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut AllocRoot,
    start: u64,
    len: u64,
) -> StoreResult<()> {
    btree::insert(
        cache,
        alloc,
        &mut root.root,
        Item::new(extent_blkno_key(start, len), 0, &[]),
    )?;
    btree::insert(
        cache,
        alloc,
        &mut root.root,
        Item::new(extent_order_key(start, len), 0, &[]),
    )?;
    Ok(())
}

/// Add `[start, start+len)` as free, merging with neighbours. Overlap
/// with an existing free extent (a double free) is `Invalid`.
pub fn ext_insert(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut AllocRoot,
    start: u64,
    len: u64,
) -> StoreResult<()> {
    if len == 0 || start.checked_add(len).is_none() {
        return Err(StoreError::Invalid("empty or overflowing extent"));
    }
    let last = start + len - 1;
    // look at both neighbours before changing anything, so a refused
    // double free leaves the tree as it was
    let first = ext_at_or_after(cache, root, start.saturating_sub(1))?;
    let (left, right) = match first {
        Some((ps, pl)) if start > 0 && ps + (pl - 1) == start - 1 => {
            (Some((ps, pl)), ext_at_or_after(cache, root, start)?)
        }
        other => (None, other),
    };
    if let Some((ns, _)) = right {
        if ns <= last {
            return Err(StoreError::Invalid("free extent overlaps a free extent"));
        }
    }
    let (mut s, mut l) = (start, len);
    if let Some((ps, pl)) = left {
        ext_del_keys(cache, alloc, root, ps, pl)?;
        s = ps;
        l += pl;
    }
    if let Some((ns, nl)) = right {
        if ns == last + 1 {
            ext_del_keys(cache, alloc, root, ns, nl)?;
            l += nl;
        }
    }
    ext_add_keys(cache, alloc, root, s, l)?;
    root.total_len = root.total_len.saturating_add(len);
    Ok(())
}

/// Remove `[start, start+len)`, which must lie inside one free extent.
pub fn ext_remove(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut AllocRoot,
    start: u64,
    len: u64,
) -> StoreResult<()> {
    if len == 0 || start.checked_add(len).is_none() {
        return Err(StoreError::Invalid("empty or overflowing extent"));
    }
    let last = start + len - 1;
    let Some((es, el)) = ext_at_or_after(cache, root, last)? else {
        return Err(StoreError::NotFound);
    };
    if es > start {
        return Err(StoreError::NotFound);
    }
    ext_del_keys(cache, alloc, root, es, el)?;
    if es < start {
        ext_add_keys(cache, alloc, root, es, start - es)?;
    }
    let eend = es + (el - 1);
    if eend > last {
        ext_add_keys(cache, alloc, root, last + 1, eend - last)?;
    }
    root.total_len = root.total_len.saturating_sub(len);
    Ok(())
}

/// Allocate up to `max_len` blocks from the front of the largest free
/// extent (by order class). None when the tree is empty.
pub fn ext_alloc(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut AllocRoot,
    max_len: u64,
) -> StoreResult<Option<(u64, u64)>> {
    if max_len == 0 {
        return Ok(None);
    }
    let k = Key::new(zone::FREE_EXTENT_ORDER, 0, 0, 0, 0, 0);
    let found = match btree::next(cache, &root.root, &k)? {
        Some(it) if it.key.zone == zone::FREE_EXTENT_ORDER => it,
        _ => return Ok(None),
    };
    let Some((s, l)) = extent_from_key(&found.key) else {
        return Err(StoreError::Corrupt {
            blkno: root.root.bref.blkno,
            what: "malformed free extent key",
        });
    };
    let take = l.min(max_len);
    ext_remove(cache, alloc, root, s, take)?;
    Ok(Some((s, take)))
}

/// The free extents `(start, len)` of a tree in block order, at most
/// `max` of them. A key in the extent zone that does not decode is
/// `Corrupt`, naming the tree's root block.
pub fn ext_list(
    cache: &mut BlockCache,
    root: &AllocRoot,
    max: usize,
) -> StoreResult<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut bad = false;
    let start = Key::new(zone::FREE_EXTENT_BLKNO, 0, 0, 0, 0, 0);
    let end = Key::new(
        zone::FREE_EXTENT_BLKNO,
        u64::MAX,
        u8::MAX,
        u64::MAX,
        u64::MAX,
        u8::MAX,
    );
    btree::for_each_range(cache, &root.root, &start, &end, |it| {
        match extent_from_key(&it.key) {
            Some(e) => out.push(e),
            None => bad = true,
        }
        !bad && out.len() < max
    })?;
    if bad {
        return Err(StoreError::Corrupt {
            blkno: root.root.bref.blkno,
            what: "malformed free extent key",
        });
    }
    Ok(out)
}

// ---- moves between allocators (server commit) ----

/// Refill the first block of `lhead` from the extent tree `src` up to
/// `target` entries when the list holds fewer than `lo`.
pub fn fill_list(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    lhead: &mut AllocListHead,
    src: &mut AllocRoot,
    lo: u64,
    target: u64,
) -> StoreResult<u64> {
    if lhead.total_nr >= lo {
        return Ok(0);
    }
    let target = target.min(ALLOC_LIST_MAX_BLOCKS as u64);
    let buf = cache.dirty_ref(&mut lhead.bref, MAGIC_ALLOC_LIST, alloc)?;
    {
        let b = buf.borrow();
        if !lb_window_valid(&b) || lb_nr(&b) != lhead.first_nr as usize {
            return Err(StoreError::Corrupt {
                blkno: lhead.bref.blkno,
                what: "alloc list block disagrees with its head",
            });
        }
    }
    let mut moved = 0;
    while (lhead.first_nr as u64) < target {
        let want = target - lhead.first_nr as u64;
        let Some((s, l)) = ext_alloc(cache, alloc, src, want)? else {
            break;
        };
        let mut b = buf.borrow_mut();
        for blkno in s..s + l {
            list_add(lhead, &mut b, blkno);
        }
        moved += l;
    }
    Ok(moved)
}

/// Move every blkno of the list `lhead` into the extent tree `dst`
/// (coalescing runs) and free the list blocks themselves.
pub fn empty_list(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    dst: &mut AllocRoot,
    lhead: &mut AllocListHead,
) -> StoreResult<u64> {
    let mut moved = 0;
    while !lhead.bref.is_null() {
        let r = lhead.bref;
        let (mut entries, next) = {
            let b = read_list(cache, &r)?;
            let b = b.borrow();
            (lb_entries(&b), lb_next(&b))
        };
        entries.sort_unstable();
        let mut i = 0;
        while i < entries.len() {
            let mut j = i + 1;
            while j < entries.len() && entries[j] == entries[j - 1] + 1 {
                j += 1;
            }
            ext_insert(cache, alloc, dst, entries[i], (j - i) as u64)?;
            i = j;
        }
        moved += entries.len() as u64;
        cache.forget(r.blkno);
        alloc.free_meta(cache, r.blkno)?;
        lhead.total_nr = lhead.total_nr.saturating_sub(entries.len() as u64);
        lhead.bref = next;
        lhead.first_nr = if next.is_null() {
            0
        } else {
            lb_nr(&read_list(cache, &next)?.borrow()) as u32
        };
    }
    *lhead = AllocListHead::default();
    Ok(moved)
}

/// Move the entries of list `lhead` into the extent tree `dst` one run of
/// consecutive blknos at a time, freeing list blocks as they empty, while
/// `may_continue` allows (checked before each run). Progress is in `lhead`
/// (its first block is copied on write into the transaction). Returns true
/// once the list is empty.
pub fn empty_list_some(
    cache: &mut BlockCache,
    alloc: &mut ListAlloc,
    dst: &mut AllocRoot,
    lhead: &mut AllocListHead,
    may_continue: &dyn Fn(&ListAlloc) -> bool,
) -> StoreResult<bool> {
    loop {
        if lhead.bref.is_null() {
            *lhead = AllocListHead::default();
            return Ok(true);
        }
        if !may_continue(alloc) {
            return Ok(false);
        }
        let buf = cache.dirty_ref(&mut lhead.bref, MAGIC_ALLOC_LIST, alloc)?;
        let mut b = buf.borrow_mut();
        if !lb_window_valid(&b) || lb_nr(&b) != lhead.first_nr as usize {
            return Err(StoreError::Corrupt {
                blkno: lhead.bref.blkno,
                what: "alloc list block disagrees with its head",
            });
        }
        list_sort(&mut b);
        let entries = lb_entries(&b);
        if entries.is_empty() {
            let next = lb_next(&b);
            drop(b);
            let blkno = lhead.bref.blkno;
            cache.forget(blkno);
            alloc.free_meta(cache, blkno)?;
            lhead.bref = next;
            lhead.first_nr = if next.is_null() {
                0
            } else {
                lb_nr(&read_list(cache, &next)?.borrow()) as u32
            };
            continue;
        }
        let mut j = 1;
        while j < entries.len() && entries[j] == entries[j - 1] + 1 {
            j += 1;
        }
        drop(b);
        ext_insert(cache, alloc, dst, entries[0], j as u64)?;
        let buf = cache.dirty_ref(&mut lhead.bref, MAGIC_ALLOC_LIST, alloc)?;
        list_remove(lhead, &mut buf.borrow_mut(), j);
    }
}
