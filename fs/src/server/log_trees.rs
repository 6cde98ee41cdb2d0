//! The server's operations on client log trees (`logs_root` items): find
//! and create a client's tree, open its next transaction (splice back what
//! the last one freed, refill its allocators, set LOW), accept a committed
//! transaction, and finalize or reclaim a tree (return every allocator it
//! holds to the server).
//!
//! Called by the server role (`leader.rs`) inside a held server
//! transaction ([`ServerTxn`]). Invariants: a block or extent is in exactly one
//! allocator at every commit (moves are remove-then-insert in the same
//! transaction); what a client freed is returned only after the commit
//! that recorded the free is durable (the transaction that freed it was
//! committed before the client asked for its next one); long work is cut
//! into units checked against a [`Budget`] and reports [`Step::More`] so
//! the caller commits and calls again, progress living in the stored item.

use crate::format::block::{AllocRoot, ALLOC_DATA_REFILL_THRESH, ALLOC_FLAG_LOW};
use crate::format::key::{zone, Key};
use crate::format::log::{log_trees_key, LogTrees, LOG_TREES_FINALIZED};
pub use crate::server::commit::Budget;
use crate::server::commit::ServerTxn;
use crate::storage::allocator::{ext_alloc, ext_insert};
use crate::storage::btree::{self, Item};
use crate::storage::store_error::{StoreError, StoreResult};
use alloc::vec::Vec;

/// Allocator targets of client log trees.
#[derive(Clone, Copy, Debug)]
pub struct LogTreesConfig {
    /// Refill a client's meta_avail when under this many blocks...
    pub meta_fill_lo: u64,
    /// ...up to this many (one list block at most).
    pub meta_fill_target: u64,
    /// Refill a client's data_avail when under this many 4 KiB blocks...
    pub data_fill_lo: u64,
    /// ...up to about this many, for a mount that allocates a lot (a
    /// mount gets four times what its last transaction allocated, at
    /// least `data_fill_min`, at most this).
    pub data_fill_target: u64,
    /// The data space a mount that allocates little or nothing keeps; an
    /// idle mount gives back what it holds beyond this, so space freed on
    /// one mount reaches the mounts that allocate (cross-mount-data-free).
    pub data_fill_min: u64,
    /// CommitCore metadata free space under which clients get `LOW`.
    pub reserved_meta_blocks: u64,
}

impl Default for LogTreesConfig {
    fn default() -> Self {
        LogTreesConfig {
            meta_fill_lo: crate::server::commit::SERVER_META_FILL_LO,
            meta_fill_target: crate::server::commit::SERVER_META_FILL_TARGET,
            data_fill_lo: (1u64 << 30) >> 12,
            data_fill_target: (4u64 << 30) >> 12,
            // twice the client's commit trigger (ALLOC_DATA_REFILL_THRESH)
            data_fill_min: (512u64 << 20) >> 12,
            reserved_meta_blocks: crate::server::commit::RESERVED_META_BLOCKS,
        }
    }
}

impl LogTreesConfig {
    /// The data targets scaled to a data device of `total_data_blocks`:
    /// one mount holds at most an eighth of the device (so that on a small
    /// device the first mount to ask does not take all of it and leave the
    /// others an ENOSPC, and an idle mount's floor is never the whole
    /// device). Devices of 32 GiB and more keep the configured targets.
    pub fn scaled_to(&self, total_data_blocks: u64) -> LogTreesConfig {
        let target = self.data_fill_target.min(total_data_blocks / 8).max(1);
        LogTreesConfig {
            data_fill_target: target,
            data_fill_lo: self.data_fill_lo.min(target / 4),
            data_fill_min: self.data_fill_min.min(target / 2),
            ..*self
        }
    }
}

/// Progress of work that may need several commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<T> {
    Done(T),
    /// Commit what was done and call again.
    More,
}

fn bad(blkno: u64, what: &'static str) -> StoreError {
    StoreError::Corrupt { blkno, what }
}

/// Decode a `logs_root` item.
pub fn decode_item(it: &Item) -> StoreResult<LogTrees> {
    let lt = LogTrees::decode(&it.val).map_err(|e| bad(0, e.0))?;
    if it.key != lt.key() {
        return Err(bad(0, "log_trees item key disagrees with its value"));
    }
    Ok(lt)
}

/// Every log tree in `logs_root`, in (rid, nr) order.
pub fn all(
    cache: &mut crate::storage::block::BlockCache,
    logs_root: &crate::format::BtreeRoot,
) -> StoreResult<Vec<LogTrees>> {
    let start = Key::new(zone::LOG_TREES, 0, 0, 0, 0, 0);
    let end = Key::new(
        zone::LOG_TREES,
        u64::MAX,
        u8::MAX,
        u64::MAX,
        u64::MAX,
        u8::MAX,
    );
    let mut items = Vec::new();
    btree::for_each_range(cache, logs_root, &start, &end, |it| {
        items.push(it.clone());
        true
    })?;
    items.iter().map(decode_item).collect()
}

/// The newest (highest nr) tree of `rid`.
pub fn last_for_rid(tx: &mut ServerTxn<'_>, rid: u64) -> StoreResult<Option<LogTrees>> {
    let k = log_trees_key(rid, u64::MAX);
    match btree::prev(
        tx.cache,
        &tx.sb.logs_root,
        &Key {
            third: u64::MAX,
            fourth: u8::MAX,
            ty: u8::MAX,
            ..k
        },
    )? {
        Some(it) if it.key.zone == zone::LOG_TREES && it.key.first == rid => {
            Ok(Some(decode_item(&it)?))
        }
        _ => Ok(None),
    }
}

/// The tree `(rid, nr)`.
pub fn lookup(tx: &mut ServerTxn<'_>, rid: u64, nr: u64) -> StoreResult<Option<LogTrees>> {
    match btree::lookup(tx.cache, &tx.sb.logs_root, &log_trees_key(rid, nr))? {
        Some(it) => Ok(Some(decode_item(&it)?)),
        None => Ok(None),
    }
}

pub fn store(tx: &mut ServerTxn<'_>, lt: &LogTrees) -> StoreResult<()> {
    let item = Item::new(lt.key(), 0, &lt.encode());
    btree::force(tx.cache, tx.alloc, &mut tx.sb.logs_root, item)
}

pub fn delete(tx: &mut ServerTxn<'_>, lt: &LogTrees) -> StoreResult<()> {
    btree::delete(tx.cache, tx.alloc, &mut tx.sb.logs_root, &lt.key()).map(|_| ())
}

/// A new, empty tree for `rid`.
pub fn new_tree(rid: u64, nr: u64) -> LogTrees {
    LogTrees {
        rid,
        nr,
        ..LogTrees::default()
    }
}

/// Move extents from `src` to `dst` (whole extents, at most `max_blocks`
/// in all) while the budget allows. Returns the blocks moved and whether
/// `src` still holds blocks that were wanted.
fn move_extents(
    tx: &mut ServerTxn<'_>,
    src: &mut AllocRoot,
    dst: &mut AllocRoot,
    max_blocks: u64,
    budget: &Budget,
) -> StoreResult<(u64, bool)> {
    let mut moved = 0;
    while moved < max_blocks && src.total_len > 0 {
        if !budget.ok(tx) {
            return Ok((moved, true));
        }
        let Some((s, l)) = ext_alloc(tx.cache, tx.alloc, src, max_blocks - moved)? else {
            break;
        };
        ext_insert(tx.cache, tx.alloc, dst, s, l)?;
        moved += l;
    }
    Ok((moved, false))
}

/// Give the server back everything `lt`'s allocators hold: unused and
/// freed metadata blocks and data extents. Progress is in `lt`.
pub fn return_allocators(
    tx: &mut ServerTxn<'_>,
    lt: &mut LogTrees,
    budget: &Budget,
) -> StoreResult<Step<()>> {
    for head in [&mut lt.meta_avail, &mut lt.meta_freed] {
        if !tx.return_meta_list_some(head, budget)? {
            return Ok(Step::More);
        }
    }
    for which in 0..2 {
        let mut src = if which == 0 {
            lt.data_avail
        } else {
            lt.data_freed
        };
        let mut dst = tx.sb.data_alloc;
        let r = move_extents(tx, &mut src, &mut dst, u64::MAX, budget);
        tx.sb.data_alloc = dst;
        if which == 0 {
            lt.data_avail = src;
        } else {
            lt.data_freed = src;
        }
        if r?.1 {
            return Ok(Step::More);
        }
    }
    Ok(Step::Done(()))
}

/// Splice back what the tree's last committed transaction freed (its
/// meta_freed list and data_freed extents).
pub fn drain_freed(
    tx: &mut ServerTxn<'_>,
    lt: &mut LogTrees,
    budget: &Budget,
) -> StoreResult<Step<()>> {
    if !tx.return_meta_list_some(&mut lt.meta_freed, budget)? {
        return Ok(Step::More);
    }
    let mut src = lt.data_freed;
    let mut dst = tx.sb.data_alloc;
    let r = move_extents(tx, &mut src, &mut dst, u64::MAX, budget);
    tx.sb.data_alloc = dst;
    lt.data_freed = src;
    if r?.1 {
        return Ok(Step::More);
    }
    Ok(Step::Done(()))
}

/// Free metadata blocks the server holds: its extent trees and its own
/// avail lists (outside every client allocator).
pub fn server_meta_free(tx: &ServerTxn<'_>) -> u64 {
    // totals from the super block: saturate rather than overflow
    tx.sb.meta_alloc[0]
        .total_len
        .saturating_add(tx.sb.meta_alloc[1].total_len)
        .saturating_add(tx.alloc.avail.total_nr)
        .saturating_add(
            tx.sb.server_meta_avail[0]
                .total_nr
                .min(tx.sb.server_meta_avail[1].total_nr),
        )
}

/// How much data space a mount gets for its next transaction: four times
/// what its last one allocated (`used`; unknown: the full target), within
/// `[data_fill_min, data_fill_target]`.
pub fn data_want(cfg: &LogTreesConfig, used: Option<u64>) -> u64 {
    match used {
        None => cfg.data_fill_target,
        Some(u) => u.saturating_mul(4).clamp(
            cfg.data_fill_min.min(cfg.data_fill_target),
            cfg.data_fill_target,
        ),
    }
}

/// Refill the tree's allocators for its next transaction and set or
/// clear `LOW` (best effort within the budget: a partial refill is fine).
///
/// Data: under `data_fill_lo` the tree is topped up to
/// [`data_want`]; a mount whose last transaction allocated nothing gives
/// back what it holds beyond that (its committed avail extents are free
/// and stable), so space it freed (drained into `data_alloc` just before)
/// does not stay with it while another mount runs dry. `LOW` when the
/// tree stays under `data_fill_lo`, or under the mount's own commit
/// trigger when the target is smaller (the mount then commits for a refill
/// only when it runs out), or the server has no data space left. The
/// targets are scaled to the device ([`LogTreesConfig::scaled_to`]).
pub fn refill(
    tx: &mut ServerTxn<'_>,
    lt: &mut LogTrees,
    cfg: &LogTreesConfig,
    used: Option<u64>,
    budget: &Budget,
) -> StoreResult<()> {
    let cfg = &cfg.scaled_to(tx.sb.total_data_blocks);
    if lt.meta_avail.total_nr < cfg.meta_fill_lo && budget.ok(tx) {
        tx.fill_meta_list(&mut lt.meta_avail, cfg.meta_fill_lo, cfg.meta_fill_target)?;
    }
    if server_meta_free(tx) < cfg.reserved_meta_blocks {
        lt.meta_avail.flags |= ALLOC_FLAG_LOW;
    } else {
        lt.meta_avail.flags &= !ALLOC_FLAG_LOW;
    }
    let want = data_want(cfg, used);
    if used == Some(0) && lt.data_avail.total_len > want {
        let give = lt.data_avail.total_len - want;
        let mut src = lt.data_avail;
        let mut dst = tx.sb.data_alloc;
        let r = move_extents(tx, &mut src, &mut dst, give, budget);
        tx.sb.data_alloc = dst;
        lt.data_avail = src;
        if r?.0 > 0 {
            crate::counter!("server.data_avail_given_back").inc();
        }
    } else if lt.data_avail.total_len < cfg.data_fill_lo {
        let more = want.saturating_sub(lt.data_avail.total_len);
        let mut src = tx.sb.data_alloc;
        let mut dst = lt.data_avail;
        let r = move_extents(tx, &mut src, &mut dst, more, budget);
        tx.sb.data_alloc = src;
        lt.data_avail = dst;
        r?;
    }
    // LOW also below the mount's own commit trigger when the target is
    // under it (a small device): the mount then commits for a refill only
    // when it runs out, not after every allocation
    let low_mark = cfg
        .data_fill_lo
        .max(ALLOC_DATA_REFILL_THRESH.min(cfg.data_fill_target));
    if tx.sb.data_alloc.total_len == 0 || lt.data_avail.total_len < low_mark {
        lt.data_avail.flags |= ALLOC_FLAG_LOW;
    } else {
        lt.data_avail.flags &= !ALLOC_FLAG_LOW;
    }
    Ok(())
}

/// Move a tree's srch log file into `srch_root` as a LOG file, where
/// searches and compaction find it; the tree no longer owns its blocks.
pub fn rotate_srch(tx: &mut ServerTxn<'_>, lt: &mut LogTrees) -> StoreResult<()> {
    if lt.srch_file.is_empty() {
        return Ok(());
    }
    let key = Key::new(
        zone::SRCH,
        0,
        crate::format::key::ty::SRCH_LOG,
        lt.srch_file.bref.blkno,
        0,
        0,
    );
    let mut val = [0u8; crate::format::log::SrchFile::BYTES];
    lt.srch_file.encode(&mut val);
    btree::force(
        tx.cache,
        tx.alloc,
        &mut tx.sb.srch_root,
        Item::new(key, 0, &val),
    )?;
    lt.srch_file = Default::default();
    crate::counter!("server.srch_files_rotated").inc();
    Ok(())
}

/// Is there nothing in the tree a merge would need to read?
pub fn is_empty(lt: &LogTrees) -> bool {
    lt.item_root.is_empty() && lt.bloom_ref.is_null() && lt.srch_file.is_empty()
}

/// Finalize `lt`: return its allocators, mark it FINALIZED with a fresh
/// `finalize_seq`. An empty tree is deleted instead (nothing to merge);
/// its inode count delta folds into the super. Stores its progress.
pub fn finalize(
    tx: &mut ServerTxn<'_>,
    lt: &mut LogTrees,
    budget: &Budget,
) -> StoreResult<Step<()>> {
    if lt.is_finalized() {
        return Ok(Step::Done(()));
    }
    let r = return_allocators(tx, lt, budget)?;
    if r == Step::More {
        store(tx, lt)?;
        return Ok(Step::More);
    }
    if is_empty(lt) {
        tx.sb.inode_count = tx.sb.inode_count.wrapping_add(lt.inode_count_delta);
        delete(tx, lt)?;
        crate::counter!("server.log_trees_empty_deleted").inc();
        return Ok(Step::Done(()));
    }
    rotate_srch(tx, lt)?;
    lt.flags |= LOG_TREES_FINALIZED;
    lt.finalize_seq = tx.next_seq();
    store(tx, lt)?;
    crate::counter!("server.log_trees_finalized").inc();
    Ok(Step::Done(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_want_follows_what_the_mount_allocated_within_the_bounds() {
        let cfg = LogTreesConfig {
            data_fill_min: 100,
            data_fill_target: 10_000,
            ..Default::default()
        };
        // unknown: the full target (a new mount, or after a failover)
        assert_eq!(data_want(&cfg, None), 10_000);
        // idle or little: the floor; a writer: four times its last use
        assert_eq!(data_want(&cfg, Some(0)), 100);
        assert_eq!(data_want(&cfg, Some(10)), 100);
        assert_eq!(data_want(&cfg, Some(1_000)), 4_000);
        assert_eq!(data_want(&cfg, Some(u64::MAX)), 10_000);
        // a floor above the target is the target
        let odd = LogTreesConfig {
            data_fill_min: 20_000,
            ..cfg
        };
        assert_eq!(data_want(&odd, Some(0)), 10_000);
    }

    #[test]
    fn a_mount_holds_at_most_an_eighth_of_a_small_data_device() {
        let cfg = LogTreesConfig::default();
        // 96 MiB of 4 KiB blocks: 12 MiB per mount at most
        let small = cfg.scaled_to((96 << 20) >> 12);
        assert_eq!(small.data_fill_target, (12 << 20) >> 12);
        assert_eq!(small.data_fill_lo, (3 << 20) >> 12);
        assert_eq!(small.data_fill_min, (6 << 20) >> 12);
        assert!(data_want(&small, None) <= small.data_fill_target);
        // a large device keeps the configured targets
        let large = cfg.scaled_to((64u64 << 30) >> 12);
        assert_eq!(large.data_fill_target, cfg.data_fill_target);
        assert_eq!(large.data_fill_lo, cfg.data_fill_lo);
        assert_eq!(large.data_fill_min, cfg.data_fill_min);
        // a device of a few blocks still gets a target
        assert_eq!(cfg.scaled_to(3).data_fill_target, 1);
    }
}
