//! The server's storage core: owns the dirty super, the metadata
//! allocators, the server seq counter and the commit that makes a
//! transaction durable with a new super.
//!
//! Called by the server role (`leader.rs`, which batches request handlers
//! into commits) and by storage tests/tools that modify trees directly
//! through [`CommitCore::tx`]. Commit protocol (docs/commit.md): return freed
//! data extents, refill the idle avail list from the meta_avail extent
//! tree, empty the idle freed list (freed one commit ago, now durable)
//! into the meta_freed tree, flush the data device, write dirty metadata
//! blocks, flush, write the super, flush, swap the active and idle lists.
//! A block freed in commit N is not reusable before commit N+1 starts.
//!
//! A commit runs in bounded steps ([`CommitCore::begin_commit`],
//! [`CommitCore::commit_step`]) so the server role can yield between them
//! and the node keeps answering: the data frees [`COMMIT_STEP_EXTENTS`] at
//! a time, the list refill and drain, the data flush, the block write-out
//! [`WRITE_STEP_BLOCKS`] at a time (same order, one flush), the super.
//! While a commit is under way the open transaction must not change
//! ([`CommitCore::tx`] refuses); [`CommitCore::commit`] does every step at
//! once.

use crate::format::alloc::ALLOC_LIST_MAX_BLOCKS;
use crate::format::block::AllocListHead;
use crate::format::block::AllocRoot;
use crate::format::super_block::{SuperBlock, FLAG_IS_META_BDEV};
use crate::format::{
    DATA_DEV_START_BLKNO, FORMAT_VERSION_MAX, FORMAT_VERSION_MIN, LG_BLOCK_SHIFT,
    META_DEV_START_BLKNO, SM_BLOCK_SHIFT, SUPER_BLKNO,
};
use crate::runtime::env::Entropy;
use crate::runtime::trace::Tracepoint;
use crate::storage::allocator::{
    empty_list, empty_list_some, ext_alloc, ext_insert, fill_list, ListAlloc,
};
use crate::storage::block::{read_super_from, BlockCache, WriteOut, WRITE_STEP_BLOCKS};
use crate::storage::dev::BlockDev;
use crate::storage::store_error::{StaleReason, StoreError, StoreResult};
use alloc::boxed::Box;
use alloc::vec::Vec;

/// `SCOUTFS_SERVER_META_FILL_TARGET` / `_LO`.
pub const SERVER_META_FILL_TARGET: u64 = ALLOC_LIST_MAX_BLOCKS as u64;
pub const SERVER_META_FILL_LO: u64 = ALLOC_LIST_MAX_BLOCKS as u64 / 2;

/// Metadata blocks kept out of normal allocation for one mount:
/// `2*8185 + (8185 + 8185 + 1028 + 913)`.
pub const RESERVED_META_BLOCKS: u64 = 2 * 8185 + 8185 + 8185 + 1028 + 913;

/// The metadata reserve on a device of `total_meta_blocks`: the configured
/// reserve (the reference's, about 2.1 GiB), but at most an eighth of the
/// device, so that small metadata devices (1 or 2 GiB) are not all
/// reserve. From about 17 GiB on the configured reserve applies as is
/// (docs/commit.md).
pub fn reserve_for_device(configured: u64, total_meta_blocks: u64) -> u64 {
    configured.min(total_meta_blocks.saturating_sub(crate::format::META_DEV_START_BLKNO) / 8)
}

/// The fill target of one metadata allocator list (the server's two and
/// each mount's) on a device of `total_meta_blocks`: the configured target
/// (one list block, about 8185), but at most a sixth of the device. The
/// reference's targets assume a large device: on a 1 GiB metadata device
/// (16384 blocks) the server's two lists and one mount's list take it all,
/// and the next refill finds the extent trees empty. From about 3 GiB on
/// the configured target applies as is (docs/commit.md). A sixth under
/// [`MIN_FILL_TARGET`] (a device under about 960 MiB) is too small for a
/// list (half of it must cover a hold's `2 * COMMIT_HOLD_ALLOC_BUDGET`
/// and a client's early-commit mark): such a device keeps the configured
/// target and serves one mount.
pub fn fill_target_for_device(configured: u64, total_meta_blocks: u64) -> u64 {
    let sixth = total_meta_blocks.saturating_sub(crate::format::META_DEV_START_BLKNO) / 6;
    if sixth < MIN_FILL_TARGET {
        configured
    } else {
        configured.min(sixth)
    }
}

/// The smallest fill target [`fill_target_for_device`] scales to.
pub const MIN_FILL_TARGET: u64 = 2560;

static TP_COMMIT: Tracepoint = Tracepoint::new("server_commit", &["seq", "blocks_written"]);

/// Returned data extents inserted per step of a commit.
pub const COMMIT_STEP_EXTENTS: usize = 64;

/// Where a commit in steps is.
#[derive(Debug)]
enum Phase {
    /// Returning freed data extents to the data allocator.
    DataFrees,
    /// Refilling the idle avail list and draining the idle freed list.
    Lists,
    /// Flushing the data device (data before metadata).
    DataFlush,
    /// Writing the dirty metadata blocks; once written, flushing them,
    /// writing the super between flushes and swapping the lists.
    Write(WriteOut),
    Done,
}

/// A commit under way (see [`CommitCore::begin_commit`]).
#[derive(Debug)]
#[must_use = "a commit must be stepped to its end"]
pub struct Committing {
    phase: Phase,
}

/// Tunables of the commit (tests shrink the fill targets).
#[derive(Clone, Copy, Debug)]
pub struct CommitConfig {
    pub fill_lo: u64,
    pub fill_target: u64,
    pub cache_budget_bytes: usize,
    /// Metadata blocks kept out of reach of normal allocation.
    pub reserved_meta_blocks: u64,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            fill_lo: SERVER_META_FILL_LO,
            fill_target: SERVER_META_FILL_TARGET,
            cache_budget_bytes: crate::storage::block::DEFAULT_CACHE_BUDGET_BYTES,
            reserved_meta_blocks: RESERVED_META_BLOCKS,
        }
    }
}

/// Blocks of the server allocator one hold (a request handler or one step
/// of merge work) may use before it commits: scoutfs's
/// `COMMIT_HOLD_ALLOC_BUDGET`.
pub const COMMIT_HOLD_ALLOC_BUDGET: u64 = 500;

/// Blocks the commit itself needs from the active allocator (refilling
/// and draining the idle lists): work always stops before the room falls
/// under this.
pub const COMMIT_RESERVE_BLOCKS: u64 = 8;

/// How much of the server transaction's allocator one holder's job may
/// use before it commits and continues (seed commit 8a64b46a): a quarter
/// of the smaller of the avail and freed room at entry stays for the
/// commit, and a holder uses at most its hold budget. Checked before each
/// unit of work; the first unit always runs (admission guaranteed it room).
#[derive(Debug)]
pub struct Budget {
    threshold: u64,
    start_used: u64,
    max_used: u64,
    started: core::cell::Cell<bool>,
}

impl Budget {
    pub fn new(tx: &ServerTxn<'_>, max_used: u64) -> Budget {
        Budget {
            threshold: tx.alloc_room() / 4,
            start_used: tx.alloc.allocated + tx.alloc.freed_count,
            max_used,
            started: core::cell::Cell::new(false),
        }
    }

    /// May the next unit of work start, given the allocator's state?
    pub fn allows(&self, alloc: &ListAlloc) -> bool {
        let room = alloc.avail_remaining().min(alloc.freed_room());
        if room < COMMIT_RESERVE_BLOCKS {
            return false;
        }
        if !self.started.replace(true) {
            return true;
        }
        let used = (alloc.allocated + alloc.freed_count).saturating_sub(self.start_used);
        room >= self.threshold && used < self.max_used
    }

    /// [`Self::allows`] for a transaction, counting refusals.
    pub fn ok(&self, tx: &ServerTxn<'_>) -> bool {
        let ok = self.allows(tx.alloc);
        if !ok {
            crate::counter!("server.budget_stops").inc();
        }
        ok
    }
}

/// Counters of the server commit.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerCounters {
    pub commits: u64,
    pub commit_errors: u64,
    pub blocks_written: u64,
    pub list_filled: u64,
    pub list_emptied: u64,
    pub meta_root_swaps: u64,
}

/// What a transaction may touch: the block cache, the active metadata
/// allocator, the dirty super (its roots) and the transaction's seq.
pub struct ServerTxn<'a> {
    pub cache: &'a mut BlockCache,
    pub alloc: &'a mut ListAlloc,
    pub sb: &'a mut SuperBlock,
    pub seq: u64,
    /// Which of `sb.meta_alloc` is the meta_avail tree (list refills come
    /// from it); the other is meta_freed (drained lists go there).
    pub meta_avail_ind: usize,
    counter: &'a mut u64,
}

impl ServerTxn<'_> {
    /// A fresh seq from the server counter (see [`CommitCore::next_seq`]).
    pub fn next_seq(&mut self) -> u64 {
        let s = *self.counter;
        *self.counter += 1;
        s
    }

    /// The next seq [`Self::next_seq`] would hand out: every seq the server
    /// handed out so far (transactions, lock grants' write_seq) is below.
    pub fn peek_seq(&self) -> u64 {
        *self.counter
    }

    /// Blocks the transaction's allocator can still hand out and record
    /// as freed: the headroom multi-commit jobs budget against.
    pub fn alloc_room(&self) -> u64 {
        self.alloc.avail_remaining().min(self.alloc.freed_room())
    }

    /// Return metadata blocks that are free in the durable super (a
    /// client's committed freed list, unused allocator lists) to the
    /// meta_freed extent tree; the list blocks themselves are freed in
    /// this transaction. Nothing returned here is allocatable before the
    /// commit after next.
    pub fn return_meta_list(&mut self, head: &mut AllocListHead) -> StoreResult<u64> {
        let fi = self.meta_avail_ind ^ 1;
        empty_list(self.cache, self.alloc, &mut self.sb.meta_alloc[fi], head)
    }

    /// [`Self::return_meta_list`] in steps, one run of blknos at a time
    /// while `budget` allows. Progress is in `head`; true once the list is
    /// empty.
    pub fn return_meta_list_some(
        &mut self,
        head: &mut AllocListHead,
        budget: &Budget,
    ) -> StoreResult<bool> {
        let fi = self.meta_avail_ind ^ 1;
        empty_list_some(
            self.cache,
            self.alloc,
            &mut self.sb.meta_alloc[fi],
            head,
            &|a| budget.allows(a),
        )
    }

    /// Fill the first block of `head` from the meta_avail extent tree up to
    /// `target` entries when it holds fewer than `lo`.
    pub fn fill_meta_list(
        &mut self,
        head: &mut AllocListHead,
        lo: u64,
        target: u64,
    ) -> StoreResult<u64> {
        let ai = self.meta_avail_ind;
        fill_list(
            self.cache,
            self.alloc,
            head,
            &mut self.sb.meta_alloc[ai],
            lo,
            target,
        )
    }
}

pub struct CommitCore {
    cache: BlockCache,
    sb: SuperBlock,
    alloc: ListAlloc,
    data_dev: Box<dyn BlockDev>,
    other_ind: usize,
    meta_avail_ind: usize,
    pending_data_frees: Vec<(u64, u64)>,
    seq: u64,
    cfg: CommitConfig,
    failed: bool,
    /// A commit in steps is under way: the transaction is frozen.
    committing: bool,
    /// Pending data frees taken by the commit under way.
    committing_frees: Vec<(u64, u64)>,
    /// The super as last written (what readers may use).
    stable: SuperBlock,
    pub counters: ServerCounters,
}

fn invalid(what: &'static str) -> StoreError {
    StoreError::Corrupt {
        blkno: SUPER_BLKNO,
        what,
    }
}

/// Check a meta super and its data-device copy against the devices.
pub fn check_supers(
    meta_sb: &SuperBlock,
    data_sb: &SuperBlock,
    meta_bytes: u64,
    data_bytes: u64,
) -> Result<(), &'static str> {
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION_MAX).contains(&meta_sb.fmt_vers) {
        return Err("unsupported format version");
    }
    if meta_sb.flags & FLAG_IS_META_BDEV == 0 {
        return Err("meta device super lacks the meta flag (devices swapped?)");
    }
    if data_sb.flags & FLAG_IS_META_BDEV != 0 {
        return Err("data device super has the meta flag (devices swapped?)");
    }
    if data_sb.uuid != meta_sb.uuid || data_sb.hdr.fsid != meta_sb.hdr.fsid {
        return Err("data device belongs to another volume");
    }
    if data_sb.fmt_vers != meta_sb.fmt_vers {
        return Err("data and meta device format versions differ");
    }
    if meta_sb.total_meta_blocks <= META_DEV_START_BLKNO
        || meta_sb
            .total_meta_blocks
            .checked_mul(1u64 << LG_BLOCK_SHIFT)
            .is_none()
        || meta_sb.total_meta_blocks << LG_BLOCK_SHIFT > meta_bytes
    {
        return Err("total_meta_blocks does not fit the meta device");
    }
    if meta_sb.total_data_blocks <= DATA_DEV_START_BLKNO
        || meta_sb
            .total_data_blocks
            .checked_mul(1u64 << SM_BLOCK_SHIFT)
            .is_none()
        || meta_sb.total_data_blocks << SM_BLOCK_SHIFT > data_bytes
    {
        return Err("total_data_blocks does not fit the data device");
    }
    Ok(())
}

impl CommitCore {
    /// Open a volume for direct tree access (storage tools and tests): read
    /// and cross-check both supers, pick the active server list (the larger
    /// avail) and the meta_avail tree (larger). Volumes with client log
    /// trees, a log merge or mounted clients are refused: only the server
    /// role ([`CommitCore::open_leader`]) may resolve those.
    pub fn open(
        meta: Box<dyn BlockDev>,
        data: Box<dyn BlockDev>,
        entropy: Box<dyn Entropy>,
        cfg: CommitConfig,
    ) -> StoreResult<CommitCore> {
        Self::open_inner(meta, data, entropy, cfg, false)
    }

    /// Open a volume for the server role, whatever forest state a crash or
    /// a previous mount left (the role resumes it).
    pub fn open_leader(
        meta: Box<dyn BlockDev>,
        data: Box<dyn BlockDev>,
        entropy: Box<dyn Entropy>,
        cfg: CommitConfig,
    ) -> StoreResult<CommitCore> {
        Self::open_inner(meta, data, entropy, cfg, true)
    }

    fn open_inner(
        meta: Box<dyn BlockDev>,
        data: Box<dyn BlockDev>,
        entropy: Box<dyn Entropy>,
        cfg: CommitConfig,
        forest: bool,
    ) -> StoreResult<CommitCore> {
        let sb = read_super_from(&*meta)?;
        let dsb = read_super_from(&*data)?;
        check_supers(&sb, &dsb, meta.size_bytes(), data.size_bytes()).map_err(invalid)?;
        let mut cfg = cfg;
        cfg.fill_target = fill_target_for_device(cfg.fill_target, sb.total_meta_blocks);
        cfg.fill_lo = cfg.fill_lo.min(cfg.fill_target / 2);
        if !forest
            && (!sb.logs_root.is_empty()
                || !sb.log_merge.is_empty()
                || !sb.mounted_clients.is_empty())
        {
            return Err(invalid(
                "volume has client log trees or mounts: open it through a mount",
            ));
        }
        let cache = BlockCache::new(meta, entropy, sb.hdr.fsid, cfg.cache_budget_bytes);
        let other_ind = if sb.server_meta_avail[0].total_nr < sb.server_meta_avail[1].total_nr {
            0
        } else {
            1
        };
        let active = other_ind ^ 1;
        let meta_avail_ind = if sb.meta_alloc[1].total_len > sb.meta_alloc[0].total_len {
            1
        } else {
            0
        };
        Ok(CommitCore {
            cache,
            alloc: ListAlloc::new(sb.server_meta_avail[active], sb.server_meta_freed[active]),
            sb,
            data_dev: data,
            other_ind,
            meta_avail_ind,
            pending_data_frees: Vec::new(),
            seq: sb.seq + 1,
            cfg,
            failed: false,
            committing: false,
            committing_frees: Vec::new(),
            stable: sb,
            counters: ServerCounters::default(),
        })
    }

    /// The super as last written: the only one readers may use.
    pub fn stable_super(&self) -> &SuperBlock {
        &self.stable
    }

    /// Hand out a fresh seq from the server's counter: greater than every
    /// seq handed out before and than every durable item seq. The next
    /// super records at least it.
    pub fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq += 1;
        s
    }

    /// The next seq [`Self::next_seq`] would hand out.
    pub fn peek_seq(&self) -> u64 {
        self.seq
    }

    /// Make sure future seqs are above `floor` (startup: item seqs found in
    /// log trees).
    pub fn raise_seq(&mut self, floor: u64) {
        if self.seq <= floor {
            self.seq = floor + 1;
        }
    }

    /// Frees the active freed list can still record in this transaction.
    pub fn meta_freed_room(&self) -> u64 {
        self.alloc.freed_room()
    }

    /// Has a commit failed (the server must stop; the volume reopens at
    /// the last durable commit)?
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// The commit tunables.
    pub fn config(&self) -> &CommitConfig {
        &self.cfg
    }

    /// The super as it will be written by the next commit.
    pub fn super_block(&self) -> &SuperBlock {
        &self.sb
    }

    /// The seq of the open transaction (items written now carry it).
    pub fn trans_seq(&self) -> u64 {
        self.seq
    }

    pub fn cache(&mut self) -> &mut BlockCache {
        &mut self.cache
    }

    pub fn data_dev(&self) -> &dyn BlockDev {
        &*self.data_dev
    }

    /// Metadata blocks the open transaction may still allocate.
    pub fn meta_avail_remaining(&self) -> u64 {
        self.alloc.avail_remaining()
    }

    /// Free blocks in the extent trees and lists (statfs-style).
    pub fn meta_free_blocks(&self) -> u64 {
        self.sb.meta_alloc[0].total_len
            + self.sb.meta_alloc[1].total_len
            + self.sb.server_meta_avail[self.other_ind].total_nr
            + self.alloc.avail.total_nr
    }

    /// The open transaction.
    ///
    /// # Panics
    /// While a commit is under way (the transaction is frozen).
    pub fn tx(&mut self) -> ServerTxn<'_> {
        assert!(!self.committing, "transaction changed during its commit");
        ServerTxn {
            cache: &mut self.cache,
            alloc: &mut self.alloc,
            sb: &mut self.sb,
            seq: self.seq,
            meta_avail_ind: self.meta_avail_ind,
            counter: &mut self.seq,
        }
    }

    /// Allocate up to `max_len` data blocks (largest free extent first).
    pub fn alloc_data(&mut self, max_len: u64) -> StoreResult<(u64, u64)> {
        self.check_ok()?;
        assert!(!self.committing, "data allocated during a commit");
        ext_alloc(
            &mut self.cache,
            &mut self.alloc,
            &mut self.sb.data_alloc,
            max_len,
        )?
        .ok_or(StoreError::NoSpace)
    }

    /// Free data blocks; they become allocatable after the next commit.
    pub fn free_data(&mut self, start: u64, len: u64) -> StoreResult<()> {
        let end = start
            .checked_add(len)
            .ok_or(StoreError::Invalid("data extent overflows"))?;
        if len == 0 || start < DATA_DEV_START_BLKNO || end > self.sb.total_data_blocks {
            return Err(StoreError::Invalid("data extent outside the data device"));
        }
        self.pending_data_frees.push((start, len));
        Ok(())
    }

    fn check_ok(&self) -> StoreResult<()> {
        if self.failed {
            return Err(StoreError::Io(crate::storage::dev::IoError::Gone));
        }
        Ok(())
    }

    /// Make the open transaction durable. On error the server is failed:
    /// reopen the volume (the previous commit is intact on disk).
    pub fn commit(&mut self) -> StoreResult<()> {
        let mut c = self.begin_commit()?;
        while !self.commit_step(&mut c)? {}
        Ok(())
    }

    /// Is a commit in steps under way?
    pub fn is_committing(&self) -> bool {
        self.committing
    }

    /// Start making the open transaction durable in steps: call
    /// [`Self::commit_step`] until it returns true. From here until then
    /// the transaction must not change.
    pub fn begin_commit(&mut self) -> StoreResult<Committing> {
        self.check_ok()?;
        assert!(!self.committing, "two commits at once");
        self.committing = true;
        self.committing_frees = core::mem::take(&mut self.pending_data_frees);
        Ok(Committing {
            phase: Phase::DataFrees,
        })
    }

    /// Do the next bounded step of `c`. True once the commit is durable
    /// (the next transaction is open). On error the server is failed.
    pub fn commit_step(&mut self, c: &mut Committing) -> StoreResult<bool> {
        assert!(self.committing, "commit step without a commit");
        match self.commit_step_inner(c) {
            Ok(done) => {
                if done {
                    self.committing = false;
                    self.counters.commits += 1;
                }
                Ok(done)
            }
            Err(e) => {
                self.fail_commit();
                Err(e)
            }
        }
    }

    fn fail_commit(&mut self) {
        self.committing = false;
        self.counters.commit_errors += 1;
        self.failed = true;
    }

    /// The caller gives up a commit half way (its task was dropped): the
    /// server is failed, as after a commit error, and the volume reopens
    /// at the last durable commit. Nothing if no commit is under way.
    pub fn abandon_commit(&mut self) {
        if self.committing {
            self.fail_commit();
            if self.cache.is_writing() {
                self.cache.discard_dirty();
            }
        }
    }

    fn commit_step_inner(&mut self, c: &mut Committing) -> StoreResult<bool> {
        let CommitCore {
            cache,
            sb,
            alloc,
            data_dev,
            other_ind,
            meta_avail_ind,
            committing_frees,
            ..
        } = self;
        let other = *other_ind;
        let active = other ^ 1;
        match &mut c.phase {
            Phase::DataFrees => {
                let n = committing_frees.len().min(COMMIT_STEP_EXTENTS);
                for (s, l) in committing_frees.drain(..n) {
                    ext_insert(cache, alloc, &mut sb.data_alloc, s, l)?;
                }
                if committing_frees.is_empty() {
                    c.phase = Phase::Lists;
                }
            }
            Phase::Lists => {
                let (a0, a1) = sb.meta_alloc.split_at_mut(1);
                let (meta_avail, meta_freed): (&mut AllocRoot, &mut AllocRoot) =
                    if *meta_avail_ind == 0 {
                        (&mut a0[0], &mut a1[0])
                    } else {
                        (&mut a1[0], &mut a0[0])
                    };
                let mut oa = sb.server_meta_avail[other];
                let mut of = sb.server_meta_freed[other];
                self.counters.list_filled += fill_list(
                    cache,
                    alloc,
                    &mut oa,
                    meta_avail,
                    self.cfg.fill_lo,
                    self.cfg.fill_target,
                )?;
                self.counters.list_emptied += empty_list(cache, alloc, meta_freed, &mut of)?;
                sb.server_meta_avail[other] = oa;
                sb.server_meta_freed[other] = of;
                c.phase = Phase::DataFlush;
            }
            Phase::DataFlush => {
                // data before metadata, metadata before the super
                data_dev.flush()?;
                c.phase = Phase::Write(cache.begin_write_dirty()?);
            }
            Phase::Write(w) if !w.is_written() => {
                cache.write_dirty_step(w, WRITE_STEP_BLOCKS)?;
            }
            Phase::Write(_) => {
                let Phase::Write(w) = core::mem::replace(&mut c.phase, Phase::Done) else {
                    unreachable!("matched the write phase")
                };
                self.counters.blocks_written += cache.finish_write_dirty(w)? as u64;

                sb.seq = self.seq;
                sb.server_meta_avail[active] = alloc.avail;
                sb.server_meta_freed[active] = alloc.freed;
                sb.hdr.seq += 1;
                cache.write_super(sb)?;
                self.stable = *sb;
                TP_COMMIT.emit(&[sb.seq, self.counters.blocks_written]);

                // swap the active and idle lists
                *other_ind = active;
                *alloc = ListAlloc::new(sb.server_meta_avail[other], sb.server_meta_freed[other]);
                let (ai, fi) = (*meta_avail_ind, *meta_avail_ind ^ 1);
                if sb.meta_alloc[ai].total_len < self.cfg.reserved_meta_blocks * 2
                    && sb.meta_alloc[fi].total_len > sb.meta_alloc[ai].total_len
                {
                    *meta_avail_ind = fi;
                    self.counters.meta_root_swaps += 1;
                }
                self.seq += 1;
                return Ok(true);
            }
            Phase::Done => return Ok(true),
        }
        Ok(false)
    }
}

/// Read only the meta super of a device and check its fsid is `fsid`.
pub fn read_meta_super(dev: &dyn BlockDev, fsid: u64) -> StoreResult<SuperBlock> {
    let sb = read_super_from(dev)?;
    if sb.hdr.fsid != fsid {
        return Err(StoreError::Stale {
            blkno: SUPER_BLKNO,
            reason: StaleReason::Fsid,
        });
    }
    Ok(sb)
}
