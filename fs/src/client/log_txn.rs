//! The client transaction engine: the persistent half of a mount. It
//! writes each committed transaction into the mount's own log btree with
//! the allocators the server handed out, publishes it with
//! COMMIT_LOG_TREES and opens the next one with GET_LOG_TREES; it reads
//! items through the forest; it hands out data blocks from the log tree's
//! `data_avail` and records frees in `data_freed`.
//!
//! Called by the POSIX half (through the `Backend` trait) and the node.
//! Invariants: the open transaction changes no block until `commit`
//! (allocations and frees are kept in memory, so a failed commit can be
//! retried from scratch); a commit writes items with their own seqs,
//! deletions as deletion items, `.totl.` deltas combined with the tree's
//! earlier delta, the bloom bits of every item's lock, then every dirty
//! block (checksummed, flushed) before COMMIT_LOG_TREES; data blocks freed
//! in a transaction are not handed out again before the server reclaims
//! them after that transaction is durable. A failure after blocks were
//! published stops the engine (EIO): the volume recovers at remount.
//!
//! A commit of a large transaction is long synchronous work, so it runs in
//! bounded steps with [`yield_now`] between them (the node keeps answering
//! while it commits): converting the set, the extent changes, the item
//! inserts ([`BUILD_STEP_ITEMS`] at a time), the block write-out
//! ([`WRITE_STEP_BLOCKS`] at a time, same order, one flush). No RefCell
//! borrow is held across a yield; a commit that fails or is dropped before
//! it published forgets its half-built blocks.

use crate::client::forest::{self, ForestItems, ForestRoots};
use crate::client::requests::Client;
use crate::counter;
use crate::errno::{Errno, FsResult};
use crate::format::block::ALLOC_FLAG_LOW;
use crate::format::btree::ITEM_FLAG_DELETION;
use crate::format::key::{zone, Key};
use crate::format::le::{get_u64, put_u64};
use crate::format::log::{bloom_bits, bloom_set, LogTrees, SrchEntry, BLOOM_TOTAL_SET_OFF};
use crate::format::{DATA_DEV_START_BLKNO, MAGIC_BLOOM};
use crate::posix::backend::{
    Backend, BackendStatfs, BoxFut, CommitSet, DataRun, InoRange, ReadBatch, SrchCandidates, Value,
};
use crate::runtime::env::Entropy;
use crate::runtime::exec::yield_now;
use crate::runtime::trace::Tracepoint;
use crate::storage::allocator::{ext_insert, ext_list, ext_remove, ListAlloc};
use crate::storage::block::{BlockCache, WRITE_STEP_BLOCKS};
use crate::storage::btree::{self, Item};
use crate::storage::dev::BlockDev;
use crate::storage::srch_file::{self, SearchSet};
use crate::storage::store_error::StoreError;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

static TP_COMMIT: Tracepoint =
    Tracepoint::new("client_commit", &["seq", "items", "blocks", "next_seq"]);

/// `SCOUTFS_ALLOC_DATA_LG_THRESH`: allocations this large come straight
/// from the allocator; smaller ones are carved from a cached region this
/// large.
pub const ALLOC_DATA_LG_THRESH: u64 = 2048;
pub use crate::format::block::ALLOC_DATA_REFILL_THRESH;

/// A commit is wanted when meta_avail holds fewer than this share
/// (`1 / 2^shift`) of the device's metadata blocks (and fewer than
/// [`LogTxnConfig::meta_commit_thresh`]): a quarter of the most a small
/// device's client list is filled to.
pub const META_COMMIT_SHARE_SHIFT: u32 = 5;

/// Items converted or inserted into the log btree per step of a commit.
pub const BUILD_STEP_ITEMS: usize = 2048;
/// A search that finds a block of its files reused starts again this
/// many times before it fails (the server compacts and frees them).
pub const SRCH_STALE_RETRIES: u32 = 8;

/// Data extent changes per step of a commit.
pub const BUILD_STEP_EXTENTS: usize = 64;

/// Forgets the blocks of a commit build that does not finish (an error,
/// or its future dropped at a yield): nothing was published, so the next
/// commit starts from the same log tree.
struct Unbuilt<'a> {
    cache: &'a RefCell<BlockCache>,
    built: bool,
}

impl Drop for Unbuilt<'_> {
    fn drop(&mut self) {
        if !self.built {
            if let Ok(mut c) = self.cache.try_borrow_mut() {
                c.discard_dirty();
            }
        }
    }
}

/// Tunables of the engine.
#[derive(Clone, Copy, Debug)]
pub struct LogTxnConfig {
    pub cache_budget_bytes: usize,
    pub data_lg_thresh: u64,
    pub data_refill_thresh: u64,
    /// Commit when the metadata allocator holds fewer blocks than this.
    pub meta_commit_thresh: u64,
    /// Free extents of `data_avail` kept in memory per transaction.
    pub avail_extents_max: usize,
}

impl Default for LogTxnConfig {
    fn default() -> Self {
        LogTxnConfig {
            cache_budget_bytes: 32 << 20,
            data_lg_thresh: ALLOC_DATA_LG_THRESH,
            data_refill_thresh: ALLOC_DATA_REFILL_THRESH,
            meta_commit_thresh: 1024,
            avail_extents_max: 4096,
        }
    }
}

/// One transaction's changes, as the engine writes them.
#[derive(Clone, Debug, Default)]
pub struct LogCommit {
    /// The transaction seq.
    pub seq: u64,
    /// Sorted by key, unique; deletions carry `ITEM_FLAG_DELETION` and an
    /// empty value. No `.totl.` keys.
    pub items: Vec<Item>,
    /// `.totl.` deltas: (key, seq, total, count), two's complement, sorted.
    pub totl: Vec<(Key, u64, u64, u64)>,
    pub inode_count_delta: i64,
    /// srch entries, in append order: appended to the log tree's srch file.
    pub srch: Vec<SrchEntry>,
}

/// Counters of the engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogTxnCounters {
    pub commits: u64,
    pub commit_errors: u64,
    pub items_written: u64,
    pub blocks_written: u64,
    pub reads: u64,
    pub stale_retries: u64,
    /// Times the roots were marked stale by a lock grant.
    pub roots_marked_stale: u64,
    pub bloom_skips: u64,
    pub data_allocs: u64,
    pub data_frees: u64,
}

#[derive(Default)]
struct DataState {
    /// Free extents (start -> len) not yet handed out this transaction.
    avail: BTreeMap<u64, u64>,
    /// The same, by (len, start), for largest-first allocation.
    by_len: BTreeSet<(u64, u64)>,
    /// The region small allocations are carved from.
    cursor: Option<(u64, u64)>,
    allocated: Vec<(u64, u64)>,
    freed: Vec<(u64, u64)>,
    low: bool,
}

impl DataState {
    fn remove(&mut self, s: u64) -> Option<u64> {
        let l = self.avail.remove(&s)?;
        self.by_len.remove(&(l, s));
        Some(l)
    }

    fn insert(&mut self, s: u64, l: u64) {
        if l > 0 {
            self.avail.insert(s, l);
            self.by_len.insert((l, s));
        }
    }

    /// Take up to `want` blocks from the front of the largest extent.
    fn take_largest(&mut self, want: u64) -> Option<(u64, u64)> {
        let &(l, s) = self.by_len.iter().next_back()?;
        self.remove(s);
        let take = l.min(want);
        self.insert(s + take, l - take);
        Some((s, take))
    }

    fn total(&self) -> u64 {
        self.avail.values().sum::<u64>() + self.cursor.map_or(0, |c| c.1)
    }

    fn overlaps(&self, s: u64, l: u64) -> bool {
        let e = s + l;
        let hits = |a: u64, b: u64| a < e && s < a + b;
        if let Some((&a, &b)) = self.avail.range(..e).next_back() {
            if hits(a, b) {
                return true;
            }
        }
        if let Some((a, b)) = self.cursor {
            if hits(a, b) {
                return true;
            }
        }
        self.freed.iter().any(|&(a, b)| hits(a, b))
    }
}

/// Sort and merge touching runs.
fn coalesce(runs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = runs.to_vec();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, l) in v {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == s => last.1 += l,
            _ => out.push((s, l)),
        }
    }
    out
}

fn store_errno(e: StoreError) -> Errno {
    log::warn!("client transaction: {e}");
    e.errno()
}

/// The persistent half of one mount.
pub struct ClientLogTxn {
    client: Rc<Client>,
    cache: RefCell<BlockCache>,
    lt: Cell<LogTrees>,
    /// The roots reads use; `None`: fetch them (GET_ROOTS) first.
    roots: RefCell<Option<Rc<ForestRoots>>>,
    /// Bumped whenever the roots go stale: roots fetched across a bump
    /// serve the read that fetched them but are not kept.
    roots_gen: Cell<u64>,
    data: RefCell<DataState>,
    fmt_vers: u64,
    total_data_blocks: u64,
    failed: Cell<bool>,
    cfg: LogTxnConfig,
    counters: Cell<LogTxnCounters>,
}

impl ClientLogTxn {
    /// Open the mount's first transaction over a connected client.
    pub async fn open(
        client: Rc<Client>,
        meta: Rc<dyn BlockDev>,
        entropy: Box<dyn Entropy>,
        cfg: LogTxnConfig,
    ) -> FsResult<Rc<ClientLogTxn>> {
        let sb = crate::storage::block::read_super_from(&*meta).map_err(store_errno)?;
        let mut cfg = cfg;
        // the server scales a client's meta_avail fill to small devices
        // (`commit::fill_for_device`): commit before the list runs dry,
        // not on every operation
        let usable = sb
            .total_meta_blocks
            .saturating_sub(crate::format::META_DEV_START_BLKNO);
        cfg.meta_commit_thresh = cfg
            .meta_commit_thresh
            .min(usable >> META_COMMIT_SHARE_SHIFT);
        let cache = BlockCache::new(Box::new(meta), entropy, sb.hdr.fsid, cfg.cache_budget_bytes);
        let lt = client.get_log_trees().await?;
        let t = Rc::new(ClientLogTxn {
            client,
            cache: RefCell::new(cache),
            lt: Cell::new(lt),
            roots: RefCell::new(None),
            roots_gen: Cell::new(0),
            data: RefCell::new(DataState::default()),
            fmt_vers: sb.fmt_vers,
            total_data_blocks: sb.total_data_blocks,
            failed: Cell::new(false),
            cfg,
            counters: Cell::new(LogTxnCounters::default()),
        });
        t.load_data_state().map_err(store_errno)?;
        t.refresh_roots().await?;
        Ok(t)
    }

    fn count(&self, f: impl FnOnce(&mut LogTxnCounters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    pub fn counters(&self) -> LogTxnCounters {
        self.counters.get()
    }

    pub fn client(&self) -> &Rc<Client> {
        &self.client
    }

    /// The mount's log tree as of the open transaction.
    pub fn log_trees(&self) -> LogTrees {
        self.lt.get()
    }

    pub fn is_failed(&self) -> bool {
        self.failed.get()
    }

    fn check(&self) -> FsResult<()> {
        if self.failed.get() {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn fail(&self, why: &str) -> Errno {
        log::error!("client transaction engine stopped: {why}");
        counter!("client.trans_failed").inc();
        self.failed.set(true);
        Errno::EIO
    }

    /// Read the free extents of `data_avail` into memory (bounded).
    fn load_data_state(&self) -> Result<(), StoreError> {
        let lt = self.lt.get();
        let mut st = DataState {
            low: lt.data_avail.flags & ALLOC_FLAG_LOW != 0,
            ..DataState::default()
        };
        let exts = ext_list(
            &mut self.cache.borrow_mut(),
            &lt.data_avail,
            self.cfg.avail_extents_max,
        )?;
        for (s, l) in exts {
            st.insert(s, l);
        }
        *self.data.borrow_mut() = st;
        Ok(())
    }

    /// Fetch the stable roots (and the merge in progress) for reads.
    pub async fn refresh_roots(&self) -> FsResult<()> {
        self.load_roots().await.map(|_| ())
    }

    /// Forget the roots: the next read fetches them again (GET_ROOTS). The
    /// lock client calls it when a grant makes a range readable, so a
    /// read after a grant sees every commit that preceded the grant.
    pub fn mark_roots_stale(&self) {
        self.roots_gen.set(self.roots_gen.get() + 1);
        *self.roots.borrow_mut() = None;
        self.count(|c| c.roots_marked_stale += 1);
    }

    /// Fetch the roots; they are kept for later reads unless they went
    /// stale while they were fetched (asked before a grant that came
    /// meanwhile: fresh enough for the read that asked, not for others).
    async fn load_roots(&self) -> FsResult<Rc<ForestRoots>> {
        let gen = self.roots_gen.get();
        let nr = self.client.get_roots().await?;
        let mut cache = self.cache.borrow_mut();
        let sb = cache.read_super().map_err(store_errno)?;
        let seq = forest::merge_input_seq(&mut cache, &sb.log_merge).unwrap_or(0);
        let roots = Rc::new(
            ForestRoots::load(&mut cache, nr.fs_root, nr.logs_root, seq).map_err(store_errno)?,
        );
        if self.roots_gen.get() == gen {
            *self.roots.borrow_mut() = Some(roots.clone());
        }
        Ok(roots)
    }

    /// Persistent items around `key` in `[lo, hi]` (see `forest`).
    pub async fn forest_read(&self, key: Key, lo: Key, hi: Key) -> FsResult<ForestItems> {
        self.check()?;
        for attempt in 0..2 {
            let kept = self.roots.borrow().clone();
            let roots = match kept {
                Some(r) => r,
                None => self.load_roots().await?,
            };
            // no await from here to the end of the read
            let r = forest::read_items(&mut self.cache.borrow_mut(), &roots, &key, &lo, &hi);
            match r {
                Ok(fi) => {
                    let skipped = fi.bloom_skipped as u64;
                    self.count(|c| {
                        c.reads += 1;
                        c.bloom_skips += skipped;
                    });
                    return Ok(fi);
                }
                Err(StoreError::Stale { .. }) if attempt == 0 => {
                    self.count(|c| c.stale_retries += 1);
                    counter!("client.read_stale_retries").inc();
                    *self.roots.borrow_mut() = None;
                }
                Err(StoreError::Stale { blkno, .. }) => {
                    log::warn!("client read: block {blkno} stale twice");
                    return Err(Errno::EIO);
                }
                Err(e) => return Err(store_errno(e)),
            }
        }
        Err(Errno::EIO)
    }

    /// Between 1 and `want` contiguous data blocks. `ENOBUFS`: empty,
    /// commit to get a refill (the caller says `ENOSPC` when a commit
    /// brought none: the volume's data device is full).
    pub fn alloc_data_blocks(&self, want: u64) -> FsResult<(u64, u64)> {
        self.check()?;
        if want == 0 {
            return Err(Errno::EINVAL);
        }
        let mut st = self.data.borrow_mut();
        let run = if want >= self.cfg.data_lg_thresh {
            st.take_largest(want)
        } else {
            if st.cursor.is_none_or(|c| c.1 == 0) {
                st.cursor = st.take_largest(self.cfg.data_lg_thresh);
            }
            match st.cursor.as_mut() {
                Some(c) => {
                    let take = c.1.min(want);
                    let run = (c.0, take);
                    c.0 += take;
                    c.1 -= take;
                    Some(run)
                }
                None => None,
            }
        };
        match run {
            Some(r) => {
                st.allocated.push(r);
                drop(st);
                self.count(|c| c.data_allocs += 1);
                Ok(r)
            }
            // Empty. Even under LOW (the server's allocator was empty
            // when this transaction opened) ask for a commit: other mounts
            // may have freed space since (their frees reach the server's
            // allocator at their commits), and the refill hands it to us.
            // The caller reports ENOSPC after a commit that brought
            // nothing (one fruitless commit per failing operation).
            None => {
                if st.low {
                    counter!("client.data_low_refills").inc();
                } else {
                    counter!("client.data_enobufs").inc();
                }
                Err(Errno::ENOBUFS)
            }
        }
    }

    /// Free data blocks; they return to the server after the commit.
    pub fn free_data_blocks(&self, start: u64, len: u64) -> FsResult<()> {
        self.check()?;
        let end = start.checked_add(len).ok_or(Errno::EIO)?;
        if len == 0 || start < DATA_DEV_START_BLKNO || end > self.total_data_blocks {
            return Err(Errno::EIO);
        }
        let mut st = self.data.borrow_mut();
        if st.overlaps(start, len) {
            counter!("client.data_double_free").inc();
            return Err(Errno::EIO);
        }
        st.freed.push((start, len));
        drop(st);
        self.count(|c| c.data_frees += 1);
        Ok(())
    }

    /// Reasons of the engine's own to commit soon.
    fn wants_commit(&self) -> bool {
        let lt = self.lt.get();
        let st = self.data.borrow();
        let meta_low = lt.meta_avail.flags & ALLOC_FLAG_LOW != 0;
        (!st.low && st.total() < self.cfg.data_refill_thresh)
            || (!meta_low && (lt.meta_avail.first_nr as u64) < self.cfg.meta_commit_thresh)
            || self.client.sync_pending()
    }

    /// Write the transaction into the log tree blocks (nothing published
    /// yet), in bounded steps with yields between them. Returns the new log
    /// tree and the blocks written. Discards the dirty blocks when it fails
    /// (or is dropped) before they are written.
    async fn build(&self, lc: LogCommit) -> Result<(LogTrees, usize), StoreError> {
        let mut unbuilt = Unbuilt {
            cache: &self.cache,
            built: false,
        };
        let mut lt = self.lt.get();
        let mut alloc = ListAlloc::new(lt.meta_avail, lt.meta_freed);
        let (allocated, freed) = {
            let st = self.data.borrow();
            (coalesce(&st.allocated), coalesce(&st.freed))
        };
        for chunk in allocated.chunks(BUILD_STEP_EXTENTS) {
            {
                let mut cache = self.cache.borrow_mut();
                for &(s, l) in chunk {
                    ext_remove(&mut cache, &mut alloc, &mut lt.data_avail, s, l)?;
                }
            }
            yield_now().await;
        }
        for chunk in freed.chunks(BUILD_STEP_EXTENTS) {
            {
                let mut cache = self.cache.borrow_mut();
                for &(s, l) in chunk {
                    ext_insert(&mut cache, &mut alloc, &mut lt.data_freed, s, l)?;
                }
            }
            yield_now().await;
        }
        let LogCommit {
            mut items,
            totl,
            inode_count_delta,
            srch,
            ..
        } = lc;
        let mut max_seq = lt.max_item_seq;
        for it in &items {
            if it.key.zone == zone::XATTR_TOTL {
                return Err(StoreError::Invalid("totl key among plain items"));
            }
            max_seq = max_seq.max(it.seq);
        }
        items.reserve(totl.len());
        for chunk in totl.chunks(BUILD_STEP_ITEMS) {
            {
                let mut cache = self.cache.borrow_mut();
                for &(key, seq, total, count) in chunk {
                    if key.zone != zone::XATTR_TOTL {
                        return Err(StoreError::Invalid("totl delta outside the totl zone"));
                    }
                    let (mut t, mut c, mut s) = (total, count, seq);
                    if let Some(old) = btree::lookup(&mut cache, &lt.item_root, &key)? {
                        if old.val.len() != 16 {
                            return Err(StoreError::Corrupt {
                                blkno: lt.item_root.bref.blkno,
                                what: "totl delta item is not 16 bytes",
                            });
                        }
                        t = t.wrapping_add(get_u64(&old.val, 0));
                        c = c.wrapping_add(get_u64(&old.val, 8));
                        s = s.max(old.seq);
                    }
                    let mut v = alloc::vec![0u8; 16];
                    put_u64(&mut v, 0, t);
                    put_u64(&mut v, 8, c);
                    max_seq = max_seq.max(s);
                    items.push(Item {
                        key,
                        seq: s,
                        flags: 0,
                        val: v,
                    });
                }
            }
            yield_now().await;
        }
        items.sort_by_key(|a| a.key);
        if items.windows(2).any(|w| w[0].key == w[1].key) {
            return Err(StoreError::Invalid("commit set has duplicate keys"));
        }
        let n_items = items.len() as u64;
        let mut blooms: BTreeSet<Key> = BTreeSet::new();
        let mut rest = items.into_iter();
        loop {
            let chunk: Vec<Item> = rest.by_ref().take(BUILD_STEP_ITEMS).collect();
            if chunk.is_empty() {
                break;
            }
            blooms.extend(chunk.iter().map(|it| forest::bloom_key(&it.key)));
            {
                let mut cache = self.cache.borrow_mut();
                btree::insert_list(&mut cache, &mut alloc, &mut lt.item_root, chunk)?;
            }
            yield_now().await;
        }
        if !blooms.is_empty() {
            let mut cache = self.cache.borrow_mut();
            let buf = cache.dirty_ref(&mut lt.bloom_ref, MAGIC_BLOOM, &mut alloc)?;
            let mut b = buf.borrow_mut();
            let mut set = get_u64(&b, BLOOM_TOTAL_SET_OFF);
            for k in &blooms {
                for nr in bloom_bits(k) {
                    if bloom_set(&mut b, nr) {
                        set += 1;
                    }
                }
            }
            put_u64(&mut b, BLOOM_TOTAL_SET_OFF, set);
        }
        for chunk in srch.chunks(BUILD_STEP_ITEMS) {
            {
                let mut cache = self.cache.borrow_mut();
                srch_file::append(&mut cache, &mut alloc, &mut lt.srch_file, chunk)?;
            }
            yield_now().await;
        }
        lt.max_item_seq = max_seq;
        lt.inode_count_delta = lt.inode_count_delta.wrapping_add(inode_count_delta as u64);
        lt.meta_avail = alloc.avail;
        lt.meta_freed = alloc.freed;
        // the write-out: same blocks, same order, one flush
        let begun = self.cache.borrow_mut().begin_write_dirty();
        let mut w = begun?;
        loop {
            yield_now().await;
            let stepped = self
                .cache
                .borrow_mut()
                .write_dirty_step(&mut w, WRITE_STEP_BLOCKS);
            if stepped? {
                break;
            }
        }
        let finished = self.cache.borrow_mut().finish_write_dirty(w);
        let blocks = finished?;
        unbuilt.built = true;
        alloc.end_transaction();
        self.count(|c| c.items_written += n_items);
        Ok((lt, blocks))
    }

    /// Make `lc` durable and open the next transaction. On an error before
    /// anything was published nothing changed and the caller may retry;
    /// an error after publishing stops the engine.
    pub async fn commit_log(&self, lc: &LogCommit) -> FsResult<()> {
        self.commit_log_owned(lc.clone()).await
    }

    /// [`Self::commit_log`] of a commit the caller gives up.
    pub async fn commit_log_owned(&self, lc: LogCommit) -> FsResult<()> {
        self.check()?;
        let before = self.lt.get();
        if lc.seq != before.get_trans_seq {
            return Err(Errno::EINVAL);
        }
        let (seq, n_items) = (lc.seq, lc.items.len() as u64);
        let built = self.build(lc).await;
        let (lt, blocks) = match built {
            Ok(v) => v,
            Err(e) => {
                // nothing was published: the half-built blocks are gone
                self.count(|c| c.commit_errors += 1);
                return Err(match e {
                    StoreError::NoSpace => Errno::ENOSPC,
                    StoreError::Invalid(_) => Errno::EINVAL,
                    e => {
                        let _ = store_errno(e);
                        Errno::EIO
                    }
                });
            }
        };
        if let Err(e) = self.client.commit_log_trees(&lt).await {
            self.count(|c| c.commit_errors += 1);
            return Err(self.fail(&alloc::format!("COMMIT_LOG_TREES failed: {e}")));
        }
        self.lt.set(lt);
        let next = match self.client.get_log_trees().await {
            Ok(n) => n,
            Err(e) => return Err(self.fail(&alloc::format!("GET_LOG_TREES failed: {e}"))),
        };
        // the same transaction back with another root: the server lost
        // our commit. (A newer transaction on a tree of the same number
        // is fine: once a merge took every tree of ours away, numbering
        // starts again, e.g. after a failover finished a merge our commit
        // was part of.)
        if next.nr == lt.nr
            && next.get_trans_seq <= lt.get_trans_seq
            && next.item_root != lt.item_root
        {
            return Err(self.fail("server returned a different tree"));
        }
        self.lt.set(next);
        self.client.take_sync_request();
        if let Err(e) = self.load_data_state() {
            return Err(self.fail(&alloc::format!("loading data_avail: {e}")));
        }
        // our committed items must be visible to reads from now on
        self.roots_gen.set(self.roots_gen.get() + 1);
        *self.roots.borrow_mut() = None;
        if let Err(e) = self.refresh_roots().await {
            log::warn!("client: refreshing roots after commit: {e}");
        }
        self.count(|c| {
            c.commits += 1;
            c.blocks_written += blocks as u64;
        });
        TP_COMMIT.emit(&[seq, n_items, blocks as u64, next.get_trans_seq]);
        Ok(())
    }

    /// Up to `want` fresh inode numbers.
    pub async fn alloc_inode_range(&self, want: u64) -> FsResult<(u64, u64)> {
        self.check()?;
        let a = self.client.alloc_inodes(want).await?;
        if a.nr == 0 {
            return Err(Errno::ENOSPC);
        }
        Ok((a.ino, a.nr))
    }

    /// The srch candidates of committed entries (see
    /// [`Backend::srch_candidates`]): the files of the stable roots,
    /// searched again from fresh roots when a block was reused meanwhile.
    pub async fn srch_search(
        &self,
        hash: u64,
        first_ino: u64,
        last_ino: u64,
        cap: usize,
    ) -> FsResult<SrchCandidates> {
        self.check()?;
        let mut tries = 0;
        loop {
            let nr = self.client.get_roots().await?;
            let mut set = SearchSet::new(hash, first_ino, last_ino, cap);
            let r = {
                let mut cache = self.cache.borrow_mut();
                crate::server::log_trees::all(&mut cache, &nr.logs_root).and_then(|trees| {
                    let logs: Vec<_> = trees.iter().map(|lt| lt.srch_file).collect();
                    srch_file::search_roots(&mut cache, &nr.srch_root, &logs, &mut set)
                })
            };
            match r {
                Ok(()) => {
                    counter!("client.srch_searches").inc();
                    return Ok(SrchCandidates {
                        inos: set.inos(),
                        last_ino: set.last_ino,
                    });
                }
                Err(StoreError::Stale { .. }) if tries < SRCH_STALE_RETRIES => {
                    tries += 1;
                    counter!("client.srch_stale_retries").inc();
                    yield_now().await;
                }
                Err(e) => return Err(store_errno(e)),
            }
        }
    }

    /// Stop serving (after unmount): every later call fails with EIO.
    pub fn close(&self) {
        self.failed.set(true);
    }

    /// Forget everything uncommitted (unmount after a failure).
    pub fn discard(&self) {
        self.cache.borrow_mut().discard_dirty();
        let mut st = self.data.borrow_mut();
        st.allocated.clear();
        st.freed.clear();
    }

    /// Blocks written so far by this engine's cache (diagnostics).
    pub fn cache_counters(&self) -> crate::storage::block::BlockCounters {
        self.cache.borrow().counters
    }
}

/// A deletion item for `key` at `seq`.
pub fn deletion_item(key: Key, seq: u64) -> Item {
    Item {
        key,
        seq,
        flags: ITEM_FLAG_DELETION,
        val: Vec::new(),
    }
}

impl LogCommit {
    /// [`Self::from_set`] of a set the caller gives up, converted
    /// [`BUILD_STEP_ITEMS`] at a time with a yield after each step.
    pub async fn from_set_paced(set: CommitSet) -> LogCommit {
        let CommitSet {
            seq,
            items: dirty,
            totl,
            inode_count_delta,
            srch,
        } = set;
        let mut items = Vec::with_capacity(dirty.len());
        let mut rest = dirty.into_iter();
        loop {
            let before = items.len();
            items.extend(rest.by_ref().take(BUILD_STEP_ITEMS).map(|d| match d.val {
                Some(v) => Item::new(d.key, d.seq, &v),
                None => deletion_item(d.key, d.seq),
            }));
            if items.len() == before {
                break;
            }
            yield_now().await;
        }
        LogCommit {
            seq,
            items,
            totl: totl
                .iter()
                .map(|t| (t.key, t.seq, t.delta.total, t.delta.count))
                .collect(),
            inode_count_delta,
            srch: srch.iter().map(srch_entry).collect(),
        }
    }

    /// The log btree form of a mount's commit set (srch entries go to the
    /// log tree's srch file).
    pub fn from_set(set: &CommitSet) -> LogCommit {
        LogCommit {
            seq: set.seq,
            items: set
                .items
                .iter()
                .map(|d| match &d.val {
                    Some(v) => Item::new(d.key, d.seq, v),
                    None => deletion_item(d.key, d.seq),
                })
                .collect(),
            totl: set
                .totl
                .iter()
                .map(|t| (t.key, t.seq, t.delta.total, t.delta.count))
                .collect(),
            inode_count_delta: set.inode_count_delta,
            srch: set.srch.iter().map(srch_entry).collect(),
        }
    }
}

fn srch_entry(e: &crate::posix::backend::SrchEntry) -> SrchEntry {
    SrchEntry {
        hash: e.hash,
        ino: e.ino,
        id: e.id,
    }
}

impl Backend for ClientLogTxn {
    fn format_version(&self) -> u64 {
        self.fmt_vers
    }

    fn refresh_reads(&self) {
        self.mark_roots_stale();
    }

    fn trans_seq(&self) -> u64 {
        self.lt.get().get_trans_seq
    }

    /// The server's figure: other mounts' open transactions count too.
    fn stable_seq<'a>(&'a self) -> BoxFut<'a, FsResult<u64>> {
        Box::pin(self.client.get_last_seq())
    }

    fn read_items<'a>(&'a self, key: Key, lo: Key, hi: Key) -> BoxFut<'a, FsResult<ReadBatch>> {
        Box::pin(async move {
            let fi = self.forest_read(key, lo, hi).await?;
            Ok(ReadBatch {
                items: fi
                    .items
                    .into_iter()
                    .map(|(k, v)| (k, Value::from(v)))
                    .collect(),
                start: fi.start,
                end: fi.end,
            })
        })
    }

    fn alloc_inodes<'a>(&'a self, want: u64) -> BoxFut<'a, FsResult<InoRange>> {
        Box::pin(async move {
            let (first, count) = self.alloc_inode_range(want).await?;
            Ok(InoRange { first, count })
        })
    }

    fn alloc_data<'a>(&'a self, want: u64) -> BoxFut<'a, FsResult<DataRun>> {
        let r = self
            .alloc_data_blocks(want)
            .map(|(blkno, len)| DataRun { blkno, len });
        Box::pin(core::future::ready(r))
    }

    fn free_data<'a>(&'a self, run: DataRun) -> BoxFut<'a, FsResult<()>> {
        Box::pin(core::future::ready(
            self.free_data_blocks(run.blkno, run.len),
        ))
    }

    fn needs_commit(&self) -> bool {
        !self.failed.get() && self.wants_commit()
    }

    fn meta_low(&self) -> bool {
        self.lt.get().meta_avail.flags & ALLOC_FLAG_LOW != 0
    }

    fn statfs<'a>(&'a self) -> BoxFut<'a, FsResult<BackendStatfs>> {
        Box::pin(async move {
            self.check()?;
            let s = self.client.statfs().await?;
            Ok(BackendStatfs {
                uuid: s.uuid,
                total_meta_blocks: s.total_meta_blocks,
                free_meta_blocks: s.free_meta_blocks,
                total_data_blocks: s.total_data_blocks,
                free_data_blocks: s.free_data_blocks,
                inode_count: s.inode_count,
            })
        })
    }

    fn srch_candidates<'a>(
        &'a self,
        hash: u64,
        first_ino: u64,
        last_ino: u64,
        cap: usize,
    ) -> BoxFut<'a, FsResult<SrchCandidates>> {
        Box::pin(self.srch_search(hash, first_ino, last_ino, cap))
    }

    fn commit<'a>(&'a self, set: CommitSet) -> BoxFut<'a, FsResult<()>> {
        Box::pin(async move {
            // the mount gathered the set in this poll: let others run first
            yield_now().await;
            let lc = LogCommit::from_set_paced(set).await;
            let r = self.commit_log_owned(lc).await;
            // the mount marks the set clean next: a poll of its own
            yield_now().await;
            r
        })
    }
}
