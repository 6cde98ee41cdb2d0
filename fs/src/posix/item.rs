//! The item cache: every item a mount reads or changes goes through here.
//!
//! Owns the cached copies of persistent items (read from the [`Backend`]
//! by key range, so absences are cached too), the dirty items of the open
//! transaction (new values and deletions, each stamped with
//! `max(transaction seq, write_seq of the lock covering it)`), the
//! `.totl.` deltas, srch entries and inode count delta, and the memory
//! budget (clean ranges are evicted, least recently used first). Called
//! by the inode, dir, xattr, symlink, data and orphan code; calls only the
//! backend.
//!
//! The mount hands the cache the cluster locks of the operation that holds
//! the transaction exclusively ([`ItemCache::set_op_locks`]): they give
//! each dirtied item its lock's `write_seq` (invariant §3.7.6), and a
//! change outside a writable lock or a read outside a readable one is a
//! bug in the operation's lock set (counted; a panic in debug builds).
//!
//! Invariants:
//! * an entry in `items` is the truth for its key (a value, or a dirty
//!   deletion); a key without an entry is absent only when it lies inside a
//!   cached range, otherwise unknown;
//! * dirty entries are never evicted; clean entries lie inside a range;
//! * an entry whose key may exist persistently (`persistent`) turns into a
//!   deletion item when deleted; an entry created in this transaction over
//!   nothing just disappears.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::ops::Bound::{self, Included};

use crate::cluster::lock::GrantedLock;
use crate::errno::{Errno, FsResult};
use crate::format::items::TotlVal;
use crate::format::key::Key;
use crate::posix::backend::{
    lock_range, Backend, CommitSet, DirtyItem, ReadBatch, SrchEntry, TotlDelta, Value,
};
use crate::runtime::env::Clock;
use crate::runtime::exec::yield_now;

/// Bookkeeping bytes charged per cached item on top of its value.
pub const ITEM_OVERHEAD_BYTES: usize = 96;
/// Default budget for clean cached items.
pub const DEFAULT_CACHE_BUDGET_BYTES: usize = 64 << 20;
/// Dirty items per step of building or retiring a commit set: bounds one
/// poll (a few milliseconds) however large the transaction.
pub const COMMIT_STEP_ITEMS: usize = 4096;

#[derive(Clone, Debug)]
struct Entry {
    /// `None` only for a dirty deletion.
    val: Option<Value>,
    dirty: bool,
    /// A persistent version of this key may exist.
    persistent: bool,
    seq: u64,
}

fn entry_bytes(val: &Option<Value>) -> usize {
    ITEM_OVERHEAD_BYTES + val.as_ref().map_or(0, |v| v.len())
}

#[derive(Clone, Copy, Debug)]
struct Range {
    end: Key,
    last_use: u64,
}

#[derive(Default)]
struct Inner {
    items: BTreeMap<Key, Entry>,
    /// Cached ranges by start key; never overlapping.
    ranges: BTreeMap<Key, Range>,
    dirty: BTreeSet<Key>,
    totl: BTreeMap<Key, (u64, TotlVal)>,
    srch: Vec<SrchEntry>,
    inode_count_delta: i64,
    bytes_total: usize,
    bytes_dirty: usize,
    use_clock: u64,
    first_dirty_ns: Option<u64>,
    /// The locks of the operation holding the transaction exclusively, by
    /// start key; `None`: no checking, items carry the transaction seq.
    op_locks: Option<Vec<GrantedLock>>,
}

/// Counters of the item cache (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ItemCounters {
    pub lookups: u64,
    pub range_hits: u64,
    pub backend_reads: u64,
    pub backend_read_items: u64,
    pub evicted_ranges: u64,
    pub evicted_items: u64,
    /// Cached ranges removed or trimmed, and clean items dropped, because
    /// their lock went away ([`ItemCache::drop_range`]).
    pub dropped_ranges: u64,
    pub dropped_items: u64,
    pub eviction_runs: u64,
    pub dirtied: u64,
    pub commits: u64,
    pub bad_reads: u64,
    /// Items changed outside the operation's writable locks (a bug).
    pub unlocked_writes: u64,
    /// Items read from the backend outside the operation's readable locks
    /// during a change (a bug).
    pub unlocked_reads: u64,
}

/// Sizes of the cache right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheUsage {
    pub items: usize,
    pub ranges: usize,
    pub dirty_items: usize,
    pub bytes_total: usize,
    pub bytes_dirty: usize,
}

pub struct ItemCache {
    backend: Rc<dyn Backend>,
    clock: Rc<dyn Clock>,
    budget_bytes: usize,
    inner: RefCell<Inner>,
    counters: Cell<ItemCounters>,
    /// Index of the operation lock that covered the last key looked up
    /// (an operation changes runs of keys under one lock).
    op_lock_hint: Cell<usize>,
}

impl ItemCache {
    pub fn new(backend: Rc<dyn Backend>, clock: Rc<dyn Clock>, budget_bytes: usize) -> ItemCache {
        ItemCache {
            backend,
            clock,
            budget_bytes: budget_bytes.max(64 * ITEM_OVERHEAD_BYTES),
            inner: RefCell::new(Inner::default()),
            counters: Cell::new(ItemCounters::default()),
            op_lock_hint: Cell::new(0),
        }
    }

    pub fn counters(&self) -> ItemCounters {
        self.counters.get()
    }

    fn count(&self, f: impl FnOnce(&mut ItemCounters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    pub fn usage(&self) -> CacheUsage {
        let i = self.inner.borrow();
        CacheUsage {
            items: i.items.len(),
            ranges: i.ranges.len(),
            dirty_items: i.dirty.len(),
            bytes_total: i.bytes_total,
            bytes_dirty: i.bytes_dirty,
        }
    }

    pub fn dirty_bytes(&self) -> usize {
        self.inner.borrow().bytes_dirty
    }

    /// Anything to commit: items, deltas, srch entries or inode count.
    pub fn is_dirty(&self) -> bool {
        let i = self.inner.borrow();
        !i.dirty.is_empty() || !i.totl.is_empty() || !i.srch.is_empty() || i.inode_count_delta != 0
    }

    /// Monotonic time at which the open transaction first dirtied something.
    pub fn first_dirty_ns(&self) -> Option<u64> {
        self.inner.borrow().first_dirty_ns
    }

    // -- reading -----------------------------------------------------------

    /// The end of the cached range containing `key`, touching it.
    fn range_end_of(inner: &mut Inner, key: &Key) -> Option<Key> {
        inner.use_clock += 1;
        let now = inner.use_clock;
        let (_, r) = inner.ranges.range_mut(..=*key).next_back()?;
        if r.end >= *key {
            r.last_use = now;
            Some(r.end)
        } else {
            None
        }
    }

    fn in_range(inner: &Inner, key: &Key) -> bool {
        inner
            .ranges
            .range(..=*key)
            .next_back()
            .is_some_and(|(_, r)| r.end >= *key)
    }

    /// Make `key` covered by a cached range; returns that range's end.
    async fn ensure(&self, key: Key) -> FsResult<Key> {
        if let Some(end) = Self::range_end_of(&mut self.inner.borrow_mut(), &key) {
            self.count(|c| c.range_hits += 1);
            return Ok(end);
        }
        self.maybe_evict();
        self.check_read_lock(&key);
        let (lo, hi) = lock_range(&key);
        self.count(|c| c.backend_reads += 1);
        let batch = self.backend.read_items(key, lo, hi).await?;
        if !batch_is_valid(&batch, &key, &lo, &hi) {
            self.count(|c| c.bad_reads += 1);
            return Err(Errno::EIO);
        }
        self.count(|c| c.backend_read_items += batch.items.len() as u64);
        let mut inner = self.inner.borrow_mut();
        Self::insert_batch(&mut inner, batch);
        Ok(Self::range_end_of(&mut inner, &key).expect("inserted range covers the key"))
    }

    /// Add a read answer: only the parts of its range not cached already
    /// become new ranges, and only their items are inserted (entries that
    /// exist, dirty or clean, are the truth).
    fn insert_batch(inner: &mut Inner, batch: ReadBatch) {
        let (s, e) = (batch.start, batch.end);
        let mut overlaps: Vec<(Key, Key)> = Vec::new();
        if let Some((rs, r)) = inner.ranges.range(..s).next_back() {
            if r.end >= s {
                overlaps.push((*rs, r.end));
            }
        }
        overlaps.extend(
            inner
                .ranges
                .range((Included(s), Included(e)))
                .map(|(k, r)| (*k, r.end)),
        );
        let mut gaps: Vec<(Key, Key)> = Vec::new();
        let mut cur = Some(s);
        for (rs, re) in overlaps {
            let Some(c) = cur else { break };
            if rs > c {
                gaps.push((c, rs.dec()));
            }
            cur = if re >= e { None } else { Some(re.inc()) };
        }
        if let Some(c) = cur {
            gaps.push((c, e));
        }
        inner.use_clock += 1;
        let now = inner.use_clock;
        for (gs, ge) in &gaps {
            inner.ranges.insert(
                *gs,
                Range {
                    end: *ge,
                    last_use: now,
                },
            );
        }
        let mut g = 0;
        for (k, v) in batch.items {
            while g < gaps.len() && gaps[g].1 < k {
                g += 1;
            }
            if g == gaps.len() {
                break;
            }
            if k < gaps[g].0 {
                continue;
            }
            if let alloc::collections::btree_map::Entry::Vacant(slot) = inner.items.entry(k) {
                let val = Some(v);
                inner.bytes_total += entry_bytes(&val);
                slot.insert(Entry {
                    val,
                    dirty: false,
                    persistent: true,
                    seq: 0,
                });
            }
        }
    }

    /// The value of `key`, if it exists.
    pub async fn lookup(&self, key: Key) -> FsResult<Option<Value>> {
        self.count(|c| c.lookups += 1);
        {
            let mut inner = self.inner.borrow_mut();
            if let Some(e) = inner.items.get(&key) {
                let v = e.val.clone();
                Self::range_end_of(&mut inner, &key);
                return Ok(v);
            }
        }
        self.ensure(key).await?;
        Ok(self
            .inner
            .borrow()
            .items
            .get(&key)
            .and_then(|e| e.val.clone()))
    }

    /// The first existing item with `key <= k <= last`.
    pub async fn next(&self, key: Key, last: Key) -> FsResult<Option<(Key, Value)>> {
        self.count(|c| c.lookups += 1);
        let mut cur = key;
        loop {
            if cur > last {
                return Ok(None);
            }
            let cached = Self::range_end_of(&mut self.inner.borrow_mut(), &cur);
            let end = match cached {
                Some(end) => end,
                None => self.ensure(cur).await?,
            };
            let stop = end.min(last);
            {
                let inner = self.inner.borrow();
                for (k, e) in inner.items.range(cur..=stop) {
                    if let Some(v) = &e.val {
                        return Ok(Some((*k, v.clone())));
                    }
                }
            }
            if stop == last || end == Key::MAX {
                return Ok(None);
            }
            cur = end.inc();
        }
    }

    // -- the operation's locks -----------------------------------------------

    /// The operation now holding the transaction exclusively holds these
    /// locks (any order); replaces the previous set.
    pub fn set_op_locks<'g>(&self, grants: impl IntoIterator<Item = &'g GrantedLock>) {
        let mut inner = self.inner.borrow_mut();
        let mut v = inner.op_locks.take().unwrap_or_default();
        v.clear();
        v.extend(grants.into_iter().copied());
        v.sort_unstable_by_key(|g| g.range.start);
        inner.op_locks = Some(v);
    }

    /// No operation holds the transaction exclusively any more.
    pub fn clear_op_locks(&self) {
        self.inner.borrow_mut().op_locks = None;
    }

    /// The operation's lock whose range contains `key`.
    fn op_lock_of<'l>(&self, locks: &'l [GrantedLock], key: &Key) -> Option<&'l GrantedLock> {
        if let Some(g) = locks.get(self.op_lock_hint.get()) {
            if g.range.contains(key) {
                return Some(g);
            }
        }
        let i = locks
            .partition_point(|g| g.range.start <= *key)
            .checked_sub(1)?;
        let g = &locks[i];
        self.op_lock_hint.set(i);
        g.range.contains(key).then_some(g)
    }

    /// The seq an item dirtied now carries: the transaction's, or the
    /// covering lock's `write_seq` when that is newer (§3.7.6), so that
    /// after a lock moved between mounts the newest write wins.
    fn stamp_seq(&self, inner: &Inner, key: &Key) -> u64 {
        let seq = self.backend.trans_seq();
        let Some(locks) = &inner.op_locks else {
            return seq;
        };
        match self.op_lock_of(locks, key) {
            Some(g) if g.mode.can_write() => seq.max(g.write_seq),
            _ => {
                self.count(|c| c.unlocked_writes += 1);
                debug_assert!(
                    false,
                    "item {key} changed outside the operation's write locks"
                );
                seq
            }
        }
    }

    fn check_read_lock(&self, key: &Key) {
        let inner = self.inner.borrow();
        let Some(locks) = &inner.op_locks else {
            return;
        };
        if !self
            .op_lock_of(locks, key)
            .is_some_and(|g| g.mode.can_read())
        {
            self.count(|c| c.unlocked_reads += 1);
            debug_assert!(false, "item {key} read outside the operation's read locks");
        }
    }

    // -- changing ----------------------------------------------------------

    fn mark_dirty(&self, inner: &mut Inner, key: Key, val: Option<Value>, persistent: bool) {
        let seq = self.stamp_seq(inner, &key);
        let new = Entry {
            val,
            dirty: true,
            persistent,
            seq,
        };
        let new_bytes = entry_bytes(&new.val);
        if let Some(old) = inner.items.insert(key, new) {
            let old_bytes = entry_bytes(&old.val);
            inner.bytes_total -= old_bytes;
            if old.dirty {
                inner.bytes_dirty -= old_bytes;
            }
        }
        inner.bytes_total += new_bytes;
        inner.bytes_dirty += new_bytes;
        inner.dirty.insert(key);
        if inner.first_dirty_ns.is_none() {
            inner.first_dirty_ns = Some(self.clock.monotonic_ns());
        }
        self.count(|c| c.dirtied += 1);
    }

    /// Create an item the caller knows does not exist anywhere (a fresh
    /// inode number, readdir position, xattr id or index seq).
    pub fn create_new(&self, key: Key, val: &[u8]) {
        let mut inner = self.inner.borrow_mut();
        let persistent = match inner.items.get(&key) {
            Some(e) => {
                assert!(e.val.is_none(), "create_new over an existing item {key}");
                e.persistent
            }
            None => false,
        };
        self.mark_dirty(&mut inner, key, Some(Rc::from(val)), persistent);
    }

    /// Set the value of an item, whether or not it exists.
    pub fn write(&self, key: Key, val: &[u8]) {
        let mut inner = self.inner.borrow_mut();
        let persistent = match inner.items.get(&key) {
            Some(e) => e.persistent,
            None => !Self::in_range(&inner, &key),
        };
        self.mark_dirty(&mut inner, key, Some(Rc::from(val)), persistent);
    }

    /// Delete an item if it exists (a deletion item if it may be persistent).
    pub fn delete(&self, key: Key) {
        let mut inner = self.inner.borrow_mut();
        match inner.items.get(&key) {
            Some(e) if !e.persistent => {
                debug_assert!(e.dirty, "clean entries are persistent");
                let bytes = entry_bytes(&e.val);
                inner.items.remove(&key);
                inner.dirty.remove(&key);
                inner.bytes_total -= bytes;
                inner.bytes_dirty -= bytes;
            }
            Some(e) if e.val.is_none() => {}
            Some(_) => self.mark_dirty(&mut inner, key, None, true),
            None if Self::in_range(&inner, &key) => {}
            None => self.mark_dirty(&mut inner, key, None, true),
        }
    }

    /// Add to a `.totl.` total without reading it.
    pub fn totl_delta(&self, key: Key, total: i64, count: i64) {
        if total == 0 && count == 0 {
            return;
        }
        let mut inner = self.inner.borrow_mut();
        let seq = self.stamp_seq(&inner, &key);
        let slot = inner.totl.entry(key).or_insert((seq, TotlVal::default()));
        slot.0 = slot.0.max(seq);
        slot.1.total = slot.1.total.wrapping_add(total as u64);
        slot.1.count = slot.1.count.wrapping_add(count as u64);
        if slot.1.total == 0 && slot.1.count == 0 {
            inner.totl.remove(&key);
        }
        if inner.first_dirty_ns.is_none() {
            inner.first_dirty_ns = Some(self.clock.monotonic_ns());
        }
    }

    pub fn srch_add(&self, entry: SrchEntry) {
        let mut inner = self.inner.borrow_mut();
        inner.srch.push(entry);
        if inner.first_dirty_ns.is_none() {
            inner.first_dirty_ns = Some(self.clock.monotonic_ns());
        }
    }

    pub fn inode_count_add(&self, delta: i64) {
        let mut inner = self.inner.borrow_mut();
        inner.inode_count_delta += delta;
        if inner.first_dirty_ns.is_none() {
            inner.first_dirty_ns = Some(self.clock.monotonic_ns());
        }
    }

    // -- committing --------------------------------------------------------

    /// The open transaction's changes, for the backend to commit. The
    /// caller holds the transaction exclusively from here to
    /// [`Self::commit_done`], so nothing changes in between.
    pub fn commit_set(&self) -> CommitSet {
        let mut items = Vec::with_capacity(self.inner.borrow().dirty.len());
        let mut after = None;
        while let Some(last) = self.commit_items_step(after, &mut items) {
            after = Some(last);
        }
        self.finish_commit_set(items)
    }

    /// [`Self::commit_set`] in steps of [`COMMIT_STEP_ITEMS`], yielding
    /// between them so a large transaction does not hold the CPU in one
    /// poll.
    pub async fn commit_set_stepped(&self) -> CommitSet {
        let mut items = Vec::with_capacity(self.inner.borrow().dirty.len());
        let mut after = None;
        while let Some(last) = self.commit_items_step(after, &mut items) {
            after = Some(last);
            yield_now().await;
        }
        self.finish_commit_set(items)
    }

    /// Append up to [`COMMIT_STEP_ITEMS`] dirty items after `after`; the
    /// last key appended if more may follow.
    fn commit_items_step(&self, after: Option<Key>, out: &mut Vec<DirtyItem>) -> Option<Key> {
        let inner = self.inner.borrow();
        let range = match after {
            Some(k) => inner.dirty.range((Bound::Excluded(k), Bound::Unbounded)),
            None => inner.dirty.range(..),
        };
        let mut last = None;
        for k in range.take(COMMIT_STEP_ITEMS) {
            let e = &inner.items[k];
            debug_assert!(e.dirty);
            out.push(DirtyItem {
                key: *k,
                seq: e.seq,
                val: e.val.clone(),
            });
            last = Some(*k);
        }
        last.filter(|k| {
            inner
                .dirty
                .range((Bound::Excluded(*k), Bound::Unbounded))
                .next()
                .is_some()
        })
    }

    fn finish_commit_set(&self, items: Vec<DirtyItem>) -> CommitSet {
        let inner = self.inner.borrow();
        let totl = inner
            .totl
            .iter()
            .map(|(k, (seq, d))| TotlDelta {
                key: *k,
                seq: *seq,
                delta: *d,
            })
            .collect();
        CommitSet {
            seq: self.backend.trans_seq(),
            items,
            totl,
            srch: inner.srch.clone(),
            inode_count_delta: inner.inode_count_delta,
        }
    }

    /// The set of `nr_items` items returned by [`Self::commit_set`] is
    /// durable: its items are clean now (deletions become plain absences).
    pub fn commit_done(&self, nr_items: usize) {
        self.start_commit_done(nr_items);
        while self.commit_done_step() {}
        self.finish_commit_done();
    }

    /// [`Self::commit_done`] in steps of [`COMMIT_STEP_ITEMS`], yielding
    /// between them.
    pub async fn commit_done_stepped(&self, nr_items: usize) {
        self.start_commit_done(nr_items);
        while self.commit_done_step() {
            yield_now().await;
        }
        self.finish_commit_done();
    }

    fn start_commit_done(&self, nr_items: usize) {
        assert_eq!(
            self.inner.borrow().dirty.len(),
            nr_items,
            "items changed during commit"
        );
    }

    /// Mark up to [`COMMIT_STEP_ITEMS`] committed items clean; whether any
    /// are left.
    fn commit_done_step(&self) -> bool {
        let mut inner = self.inner.borrow_mut();
        for _ in 0..COMMIT_STEP_ITEMS {
            let Some(key) = inner.dirty.pop_first() else {
                return false;
            };
            let covered = Self::in_range(&inner, &key);
            let e = inner.items.get_mut(&key).expect("dirty key has an entry");
            e.dirty = false;
            e.persistent = true;
            let bytes = entry_bytes(&e.val);
            if e.val.is_none() || !covered {
                inner.items.remove(&key);
                inner.bytes_total -= bytes;
            }
        }
        !inner.dirty.is_empty()
    }

    fn finish_commit_done(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.bytes_dirty = 0;
        inner.totl.clear();
        inner.srch.clear();
        inner.inode_count_delta = 0;
        inner.first_dirty_ns = None;
        drop(inner);
        self.count(|c| c.commits += 1);
        // what was dirty is clean now: it counts against the budget
        self.maybe_evict();
    }

    // -- eviction ----------------------------------------------------------

    /// Evict least recently used clean ranges when clean items exceed the
    /// budget, down to 3/4 of it.
    pub fn maybe_evict(&self) {
        let clean = {
            let i = self.inner.borrow();
            i.bytes_total - i.bytes_dirty
        };
        if clean > self.budget_bytes {
            self.evict_to(self.budget_bytes / 4 * 3);
        }
    }

    /// Drop every clean item and range (tests and memory pressure).
    pub fn evict_clean(&self) {
        self.evict_to(0);
    }

    fn evict_to(&self, target_clean: usize) {
        let mut inner = self.inner.borrow_mut();
        let mut order: Vec<(u64, Key)> =
            inner.ranges.iter().map(|(k, r)| (r.last_use, *k)).collect();
        order.sort_unstable();
        let (mut ranges, mut items) = (0u64, 0u64);
        for (_, start) in order {
            if inner.bytes_total - inner.bytes_dirty <= target_clean {
                break;
            }
            let end = inner.ranges.remove(&start).expect("range listed").end;
            let clean: Vec<Key> = inner
                .items
                .range(start..=end)
                .filter(|(_, e)| !e.dirty)
                .map(|(k, _)| *k)
                .collect();
            for k in clean {
                let e = inner.items.remove(&k).expect("listed");
                inner.bytes_total -= entry_bytes(&e.val);
                items += 1;
            }
            ranges += 1;
        }
        drop(inner);
        self.count(|c| {
            c.eviction_runs += 1;
            c.evicted_ranges += ranges;
            c.evicted_items += items;
        });
    }

    /// Drop what is cached of `[start, end]` (a lock of that range went to
    /// NULL: another mount may change it now): its clean items, and the
    /// cached ranges inside it (ranges that reach outside are trimmed to
    /// the part outside). Dirty items stay (they are this mount's
    /// uncommitted changes, the truth for their keys); returns how many
    /// were found, which after the lock's commit must be none.
    pub fn drop_range(&self, start: Key, end: Key) -> usize {
        if start > end {
            return 0;
        }
        let mut inner = self.inner.borrow_mut();
        // ranges overlapping [start, end]: one starting before it, and
        // every one starting inside it
        let mut overlap: Vec<(Key, Key)> = Vec::new();
        if let Some((rs, r)) = inner.ranges.range(..start).next_back() {
            if r.end >= start {
                overlap.push((*rs, r.end));
            }
        }
        overlap.extend(
            inner
                .ranges
                .range((Included(start), Included(end)))
                .map(|(k, r)| (*k, r.end)),
        );
        let mut ranges = 0u64;
        for (rs, re) in overlap {
            let r = inner.ranges.remove(&rs).expect("listed");
            ranges += 1;
            if rs < start {
                inner.ranges.insert(
                    rs,
                    Range {
                        end: start.dec(),
                        last_use: r.last_use,
                    },
                );
            }
            if re > end {
                inner.ranges.insert(
                    end.inc(),
                    Range {
                        end: re,
                        last_use: r.last_use,
                    },
                );
            }
        }
        let (clean, dirty): (Vec<Key>, Vec<Key>) = inner
            .items
            .range(start..=end)
            .map(|(k, e)| (*k, e.dirty))
            .fold((Vec::new(), Vec::new()), |(mut c, mut d), (k, is_dirty)| {
                if is_dirty {
                    d.push(k);
                } else {
                    c.push(k);
                }
                (c, d)
            });
        for k in &clean {
            let e = inner.items.remove(k).expect("listed");
            inner.bytes_total -= entry_bytes(&e.val);
        }
        drop(inner);
        let items = clean.len() as u64;
        self.count(|c| {
            c.dropped_ranges += ranges;
            c.dropped_items += items;
        });
        dirty.len()
    }

    /// Forget everything, dirty items included (a crash, for tests).
    pub fn discard_all(&self) {
        let mut inner = self.inner.borrow_mut();
        let op_locks = inner.op_locks.take();
        *inner = Inner::default();
        inner.op_locks = op_locks;
    }
}

fn batch_is_valid(b: &ReadBatch, key: &Key, lo: &Key, hi: &Key) -> bool {
    if !(b.start <= *key && *key <= b.end && *lo <= b.start && b.end <= *hi) {
        return false;
    }
    let mut prev: Option<&Key> = None;
    for (k, _) in &b.items {
        if *k < b.start || *k > b.end || prev.is_some_and(|p| p >= k) {
            return false;
        }
        prev = Some(k);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posix::backend::{BackendStatfs, BoxFut, DataRun, InoRange};
    use crate::runtime::env::ManualClock;
    use crate::runtime::exec::block_on;
    use alloc::boxed::Box;

    /// A backend over a BTreeMap that answers reads with at most `window`
    /// items, and counts reads.
    struct MapBackend {
        items: RefCell<BTreeMap<Key, Value>>,
        window: usize,
        reads: Cell<u64>,
        seq: Cell<u64>,
    }

    impl Backend for MapBackend {
        fn format_version(&self) -> u64 {
            2
        }
        fn trans_seq(&self) -> u64 {
            self.seq.get()
        }
        fn read_items<'a>(&'a self, key: Key, lo: Key, hi: Key) -> BoxFut<'a, FsResult<ReadBatch>> {
            self.reads.set(self.reads.get() + 1);
            let m = self.items.borrow();
            let start = match m.range(lo..key).next_back() {
                Some((k, _)) => k.inc(),
                None => lo,
            };
            let items: Vec<(Key, Value)> = m
                .range(key..=hi)
                .take(self.window)
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            let end = if items.len() == self.window {
                items.last().unwrap().0
            } else {
                hi
            };
            Box::pin(core::future::ready(Ok(ReadBatch { items, start, end })))
        }
        fn alloc_inodes<'a>(&'a self, _want: u64) -> BoxFut<'a, FsResult<InoRange>> {
            Box::pin(core::future::ready(Err(Errno::ENOSPC)))
        }
        fn alloc_data<'a>(&'a self, _want: u64) -> BoxFut<'a, FsResult<DataRun>> {
            Box::pin(core::future::ready(Err(Errno::ENOSPC)))
        }
        fn free_data<'a>(&'a self, _run: DataRun) -> BoxFut<'a, FsResult<()>> {
            Box::pin(core::future::ready(Ok(())))
        }
        fn needs_commit(&self) -> bool {
            false
        }
        fn meta_low(&self) -> bool {
            false
        }
        fn statfs<'a>(&'a self) -> BoxFut<'a, FsResult<BackendStatfs>> {
            Box::pin(core::future::ready(Ok(BackendStatfs::default())))
        }
        fn commit<'a>(&'a self, set: CommitSet) -> BoxFut<'a, FsResult<()>> {
            let mut m = self.items.borrow_mut();
            for d in set.items {
                match d.val {
                    Some(v) => {
                        m.insert(d.key, v);
                    }
                    None => {
                        m.remove(&d.key);
                    }
                }
            }
            self.seq.set(self.seq.get() + 1);
            Box::pin(core::future::ready(Ok(())))
        }
    }

    fn k(n: u64) -> Key {
        Key::fs(1, 8, n, 0)
    }

    fn setup(n: u64, window: usize, budget: usize) -> (Rc<MapBackend>, ItemCache) {
        let mut m = BTreeMap::new();
        for i in 0..n {
            m.insert(k(i * 2), Rc::from(&i.to_le_bytes()[..]));
        }
        let be = Rc::new(MapBackend {
            items: RefCell::new(m),
            window,
            reads: Cell::new(0),
            seq: Cell::new(5),
        });
        let clock = Rc::new(ManualClock::default());
        let cache = ItemCache::new(be.clone(), clock, budget);
        (be, cache)
    }

    #[test]
    fn negative_lookups_are_cached() {
        let (be, c) = setup(100, 8, 1 << 20);
        assert_eq!(block_on(c.lookup(k(3))).unwrap(), None);
        let reads = be.reads.get();
        assert_eq!(block_on(c.lookup(k(3))).unwrap(), None);
        assert_eq!(block_on(c.lookup(k(5))).unwrap(), None);
        assert_eq!(
            be.reads.get(),
            reads,
            "absences answered from the cached range"
        );
        assert_eq!(
            &*block_on(c.lookup(k(4))).unwrap().unwrap(),
            &2u64.to_le_bytes()
        );
    }

    #[test]
    fn next_walks_across_many_ranges() {
        let (be, c) = setup(1000, 16, 1 << 20);
        let mut cur = k(0);
        let mut seen = 0u64;
        while let Some((key, v)) = block_on(c.next(cur, k(u64::MAX >> 1))).unwrap() {
            assert_eq!(key, k(seen * 2));
            assert_eq!(&*v, &seen.to_le_bytes());
            seen += 1;
            cur = key.inc();
        }
        assert_eq!(seen, 1000);
        assert!(be.reads.get() >= 1000 / 16);
    }

    #[test]
    fn dirty_items_shadow_and_commit() {
        let (be, c) = setup(10, 4, 1 << 20);
        // delete a persistent item, create a new one, create+delete a third
        assert!(block_on(c.lookup(k(2))).unwrap().is_some());
        c.delete(k(2));
        assert_eq!(block_on(c.lookup(k(2))).unwrap(), None);
        c.create_new(k(3), b"new");
        c.create_new(k(5), b"gone");
        c.delete(k(5));
        let set = c.commit_set();
        assert_eq!(set.seq, 5);
        let keys: Vec<(Key, bool)> = set.items.iter().map(|d| (d.key, d.val.is_some())).collect();
        assert_eq!(keys, [(k(2), false), (k(3), true)]);
        assert!(set.items.iter().all(|d| d.seq == 5));
        block_on(be.commit(set.clone())).unwrap();
        c.commit_done(set.items.len());
        assert!(!c.is_dirty());
        c.evict_clean();
        assert_eq!(c.usage().items, 0);
        assert_eq!(block_on(c.lookup(k(2))).unwrap(), None);
        assert_eq!(&*block_on(c.lookup(k(3))).unwrap().unwrap(), b"new");
        // a deleted-then-recreated persistent key stays a write, not a create
        c.delete(k(3));
        c.write(k(3), b"again");
        let set = c.commit_set();
        assert_eq!(set.items.len(), 1);
        assert_eq!(&**set.items[0].val.as_ref().unwrap(), b"again");
    }

    #[test]
    fn deletes_of_unknown_keys_become_deletion_items() {
        let (_be, c) = setup(10, 4, 1 << 20);
        c.delete(Key::new(4, 0, 4, 9, 9, 0));
        assert_eq!(c.commit_set().items.len(), 1);
        // a key inside a cached range that is absent needs no deletion
        assert_eq!(block_on(c.lookup(k(7))).unwrap(), None);
        c.delete(k(7));
        assert_eq!(c.commit_set().items.len(), 1);
    }

    #[test]
    fn eviction_keeps_dirty_items_and_counts() {
        let budget = 64 * ITEM_OVERHEAD_BYTES + 1000;
        let (_be, c) = setup(5000, 32, budget);
        c.write(k(1), b"dirty");
        let mut cur = k(0);
        while let Some((key, _)) = block_on(c.next(cur, k(u64::MAX >> 1))).unwrap() {
            cur = key.inc();
        }
        let u = c.usage();
        assert!(c.counters().evicted_ranges > 0);
        assert!(u.bytes_total - u.bytes_dirty <= budget + 40 * (ITEM_OVERHEAD_BYTES + 8));
        assert_eq!(&*block_on(c.lookup(k(1))).unwrap().unwrap(), b"dirty");
        // evicted items read back correctly
        assert_eq!(
            &*block_on(c.lookup(k(20))).unwrap().unwrap(),
            &10u64.to_le_bytes()
        );
    }

    #[test]
    fn drop_range_forgets_clean_items_inside_and_keeps_dirty_ones() {
        let (be, c) = setup(100, 1000, 1 << 20);
        // one read caches the whole lock range
        assert!(block_on(c.lookup(k(4))).unwrap().is_some());
        let reads = be.reads.get();
        c.write(k(15), b"dirty");
        // another mount changes items inside and outside the range
        be.items
            .borrow_mut()
            .insert(k(12), Rc::from(&b"theirs"[..]));
        be.items
            .borrow_mut()
            .insert(k(40), Rc::from(&b"theirs"[..]));
        let before = c.usage();
        assert_eq!(c.drop_range(k(10), k(20)), 1, "the dirty item is reported");
        let after = c.usage();
        // k(10) .. k(20): 10, 12, .. 20 clean (6 items) go, the dirty one stays
        assert_eq!(before.items - after.items, 6);
        assert_eq!(after.ranges, 2, "the range is trimmed to both sides");
        assert_eq!(c.counters().dropped_items, 6);
        // outside: still cached (no read, the old value)
        assert_eq!(
            &*block_on(c.lookup(k(40))).unwrap().unwrap(),
            &20u64.to_le_bytes()
        );
        assert_eq!(
            &*block_on(c.lookup(k(8))).unwrap().unwrap(),
            &4u64.to_le_bytes()
        );
        assert_eq!(be.reads.get(), reads);
        // inside: the dirty item is the truth, the rest is read again
        assert_eq!(&*block_on(c.lookup(k(15))).unwrap().unwrap(), b"dirty");
        assert_eq!(&*block_on(c.lookup(k(12))).unwrap().unwrap(), b"theirs");
        assert_eq!(be.reads.get(), reads + 1);
        // a range inside and nothing cached: nothing to do
        let (_be2, c2) = setup(10, 1000, 1 << 20);
        assert_eq!(c2.drop_range(k(0), k(100)), 0);
        assert_eq!(c2.drop_range(k(5), k(1)), 0);
        // dropping all of a range leaves nothing of it
        block_on(c2.lookup(k(2))).unwrap();
        assert_eq!(c2.drop_range(Key::MIN, Key::MAX), 0);
        assert_eq!(c2.usage().ranges, 0);
        assert_eq!(c2.usage().items, 0);
    }

    #[test]
    fn overlapping_reads_do_not_clobber_dirty_items() {
        let (_be, c) = setup(100, 4, 1 << 20);
        assert!(block_on(c.lookup(k(40))).unwrap().is_some());
        c.write(k(42), b"mine");
        c.delete(k(44));
        // reads that overlap cached and uncached ranges
        let mut cur = k(30);
        let mut got = Vec::new();
        while let Some((key, v)) = block_on(c.next(cur, k(60))).unwrap() {
            got.push((key.second, v.to_vec()));
            cur = key.inc();
        }
        assert!(got.contains(&(42, b"mine".to_vec())));
        assert!(!got.iter().any(|(s, _)| *s == 44));
        assert_eq!(got.len(), 16 - 1);
    }

    fn grant(range: crate::cluster::lock::LockRange, write_seq: u64) -> GrantedLock {
        use crate::cluster::lock::LockMode;
        GrantedLock {
            range,
            mode: if range.start.zone == 12 {
                LockMode::WriteOnly
            } else {
                LockMode::Write
            },
            write_seq,
        }
    }

    #[test]
    fn dirty_items_carry_their_locks_write_seq_when_it_is_newer() {
        use crate::cluster::lock::LockRange;
        let (_be, c) = setup(10, 4, 1 << 20);
        let other = Key::fs(5000, 8, 1, 0);
        let t = Key::new(12, 1, 0, 2, 3, 0);
        c.set_op_locks(&[
            grant(LockRange::covering(&k(0)), 9),
            grant(LockRange::covering(&other), 3),
            grant(LockRange::xattr_totl(), 20),
        ]);
        c.write(k(3), b"ahead");
        c.delete(k(2));
        c.write(other, b"behind");
        c.totl_delta(t, 1, 1);
        let set = c.commit_set();
        assert_eq!(set.seq, 5, "the transaction's seq");
        let seqs: Vec<(Key, u64)> = set.items.iter().map(|d| (d.key, d.seq)).collect();
        assert_eq!(seqs, [(k(2), 9), (k(3), 9), (other, 5)]);
        assert_eq!(set.totl[0].seq, 20);
        c.clear_op_locks();
        c.write(k(4), b"unchecked");
        assert_eq!(
            c.commit_set()
                .items
                .iter()
                .find(|d| d.key == k(4))
                .unwrap()
                .seq,
            5,
            "without an operation's locks: the transaction seq"
        );
        assert_eq!(c.counters().unlocked_writes, 0);
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        should_panic(expected = "changed outside the operation's write locks")
    )]
    fn a_change_outside_the_write_locks_is_caught() {
        use crate::cluster::lock::{LockMode, LockRange};
        let (_be, c) = setup(10, 4, 1 << 20);
        let mut read_only = grant(LockRange::covering(&k(0)), 0);
        read_only.mode = LockMode::Read;
        c.set_op_locks(&[read_only]);
        c.write(k(1), b"x");
        assert_eq!(c.counters().unlocked_writes, 1);
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        should_panic(expected = "read outside the operation's read locks")
    )]
    fn a_read_under_a_write_only_lock_is_caught() {
        use crate::cluster::lock::{LockMode, LockRange};
        let (_be, c) = setup(10, 4, 1 << 20);
        let mut write_only = grant(LockRange::covering(&k(0)), 0);
        write_only.mode = LockMode::WriteOnly;
        c.set_op_locks(&[write_only]);
        c.write(k(1), b"blind writes are fine");
        assert_eq!(c.counters().unlocked_writes, 0);
        let _ = block_on(c.lookup(k(2)));
        assert_eq!(c.counters().unlocked_reads, 1);
    }

    #[test]
    fn totl_deltas_combine_and_cancel() {
        let (_be, c) = setup(1, 4, 1 << 20);
        let t = Key::new(12, 1, 0, 2, 3, 0);
        c.totl_delta(t, 10, 1);
        c.totl_delta(t, -4, 0);
        let set = c.commit_set();
        assert_eq!(set.totl.len(), 1);
        assert_eq!(set.totl[0].delta, TotlVal { total: 6, count: 1 });
        c.totl_delta(t, -6, -1);
        assert!(c.commit_set().totl.is_empty());
    }
}
