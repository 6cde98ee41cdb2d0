//! The server side of log merging (storage reference 3.2-3.6, cluster
//! reference 1.9): starting a merge over the finalized log trees, handing
//! out requests for fs_root subtrees, storing completions, splicing them
//! back into fs_root across as many commits as the allocators allow (seed
//! commit 8a64b46a), and freeing the merged input trees block by block.
//!
//! Called by the server role inside held transactions ([`ServerTxn`]). All
//! progress lives in `log_merge` items (STATUS, RANGE, REQUEST, COMPLETE,
//! FREEING), so every commit in between is a consistent, resumable state
//! and a new server continues where a crashed one stopped. Invariants:
//! fs_root changes only while no request is outstanding; every unit of
//! splicing work is checked against a [`Budget`] first and nothing is ever
//! half applied; phase 1 skips completions already spliced (both list
//! heads zero), phase 2 deletes each completion as it finishes, phase 4
//! deletes each input tree as it finishes; a range given back (a failed,
//! refused or cancelled request) is handed out again by the next pass,
//! which starts once nothing is left at or after the cursor, and a
//! completion whose request is gone is ignored, so nothing is merged
//! twice and nothing is left behind.

use crate::counter;
use crate::format::block::AllocListHead;
use crate::format::key::{zone, Key};
use crate::format::log::*;
use crate::runtime::trace::Tracepoint;
use crate::server::commit::ServerTxn;
use crate::server::log_trees::{self, Budget, Step};
use crate::storage::btree::{self, Item};
use crate::storage::store_error::{StoreError, StoreResult};
use alloc::vec::Vec;

static TP_MERGE_START: Tracepoint = Tracepoint::new("log_merge_start", &["seq", "inputs"]);
static TP_MERGE_REQUEST: Tracepoint = Tracepoint::new(
    "log_merge_request",
    &["seq", "rid", "start_zone", "start_first"],
);
static TP_MERGE_COMPLETE: Tracepoint =
    Tracepoint::new("log_merge_complete", &["seq", "rid", "flags"]);
static TP_SPLICE: Tracepoint = Tracepoint::new("log_merge_splice", &["phase", "units", "more"]);
static TP_MERGE_DONE: Tracepoint = Tracepoint::new("log_merge_done", &["seq", "inputs"]);

/// `LOG_MERGE_SPLICE_BATCH`: completions gathered before splicing.
pub const LOG_MERGE_SPLICE_BATCH: u64 = 8;
/// `SCOUTFS_SERVER_MERGE_FILL_TARGET`: blocks in a request's allocator.
pub const SERVER_MERGE_FILL_TARGET: u64 = 1028;
/// A request allocator smaller than this is not worth handing out.
pub const MERGE_FILL_MIN: u64 = 32;

/// Tunables of merging.
#[derive(Clone, Copy, Debug)]
pub struct MergeConfig {
    pub splice_batch: u64,
    pub request_fill: u64,
    /// Blocks freed per unit of the freeing job.
    pub free_unit_blocks: usize,
    /// Blocks of the server allocator one step of merge work may use
    /// before committing (the server's hold budget).
    pub hold_budget_blocks: u64,
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            splice_batch: LOG_MERGE_SPLICE_BATCH,
            request_fill: SERVER_MERGE_FILL_TARGET,
            free_unit_blocks: 64,
            hold_budget_blocks: crate::server::commit::COMMIT_HOLD_ALLOC_BUDGET,
        }
    }
}

fn bad(what: &'static str) -> StoreError {
    StoreError::Corrupt { blkno: 0, what }
}

fn zone_range(z: u8) -> (Key, Key) {
    (
        Key::new(z, 0, 0, 0, 0, 0),
        Key::new(z, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX),
    )
}

fn zone_items(tx: &mut ServerTxn<'_>, z: u8) -> StoreResult<Vec<Item>> {
    let (s, e) = zone_range(z);
    let mut out = Vec::new();
    btree::for_each_range(tx.cache, &tx.sb.log_merge, &s, &e, |it| {
        out.push(it.clone());
        true
    })?;
    Ok(out)
}

fn put(tx: &mut ServerTxn<'_>, key: Key, val: &[u8]) -> StoreResult<()> {
    btree::force(
        tx.cache,
        tx.alloc,
        &mut tx.sb.log_merge,
        Item::new(key, 0, val),
    )
}

fn del(tx: &mut ServerTxn<'_>, key: &Key) -> StoreResult<()> {
    btree::delete(tx.cache, tx.alloc, &mut tx.sb.log_merge, key).map(|_| ())
}

/// The STATUS item, if a merge is in progress.
pub fn status(tx: &mut ServerTxn<'_>) -> StoreResult<Option<MergeStatus>> {
    match btree::lookup(tx.cache, &tx.sb.log_merge, &merge_status_key())? {
        Some(it) => Ok(Some(MergeStatus::decode(&it.val).map_err(|e| bad(e.0))?)),
        None => Ok(None),
    }
}

fn store_status(tx: &mut ServerTxn<'_>, st: &MergeStatus) -> StoreResult<()> {
    put(tx, merge_status_key(), &st.encode())
}

/// Every RANGE item: (item key, range).
fn ranges(tx: &mut ServerTxn<'_>) -> StoreResult<Vec<(Key, MergeRange)>> {
    zone_items(tx, zone::LOG_MERGE_RANGE)?
        .into_iter()
        .map(|it| Ok((it.key, MergeRange::decode(&it.val).map_err(|e| bad(e.0))?)))
        .collect()
}

/// Insert a RANGE item. Its key is the start key with the zone replaced;
/// starts that differ only in zone would collide, so the key moves on to
/// the next free one (readers use the value, never the key).
fn insert_range(tx: &mut ServerTxn<'_>, r: &MergeRange) -> StoreResult<()> {
    let mut key = r.key();
    loop {
        if btree::lookup(tx.cache, &tx.sb.log_merge, &key)?.is_none() {
            return put(tx, key, &r.encode());
        }
        counter!("log_merge.range_key_collisions").inc();
        let next = key.inc();
        if next.zone != zone::LOG_MERGE_RANGE || next == key {
            return Err(bad("no free merge range key"));
        }
        key = next;
    }
}

/// The input trees of a merge with status seq `seq`.
pub fn inputs(tx: &mut ServerTxn<'_>, seq: u64) -> StoreResult<Vec<LogTrees>> {
    let root = tx.sb.logs_root;
    Ok(log_trees::all(tx.cache, &root)?
        .into_iter()
        .filter(|lt| lt.is_finalized() && lt.finalize_seq < seq)
        .collect())
}

/// Start a merge of every finalized tree if none is in progress, there
/// is one, and no tree is open. Returns whether a merge is (now) in
/// progress.
///
/// Why no open tree: merged items keep their seqs and overwrite fs_root,
/// so every tree left out of a merge must hold only newer items than its
/// inputs. A tree open now may hold older versions of keys an input
/// holds (written before a lock moved to the input's mount); a tree
/// opened after this instant gets seqs above the status seq (and so
/// above every input item). The server's GET_LOG_TREES brings every
/// mount to finalize (coordinated finalization, `role.rs`).
pub fn start(tx: &mut ServerTxn<'_>) -> StoreResult<bool> {
    if status(tx)?.is_some() {
        return Ok(true);
    }
    let root = tx.sb.logs_root;
    let all = log_trees::all(tx.cache, &root)?;
    let finalized = all.iter().filter(|lt| lt.is_finalized()).count();
    if finalized == 0 {
        return Ok(false);
    }
    if finalized < all.len() {
        counter!("log_merge.start_with_open_trees_refused").inc();
        return Ok(false);
    }
    let st = MergeStatus {
        next_range_key: Key::MIN,
        nr_requests: 0,
        nr_complete: 0,
        seq: tx.next_seq(),
    };
    insert_range(
        tx,
        &MergeRange {
            start: Key::MIN,
            end: Key::MAX,
        },
    )?;
    store_status(tx, &st)?;
    counter!("log_merge.started").inc();
    TP_MERGE_START.emit(&[st.seq, finalized as u64]);
    Ok(true)
}

/// What GET_LOG_MERGE found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    Request(alloc::boxed::Box<MergeRequest>),
    /// Nothing to hand out now (no merge, a full batch, or waiting for
    /// outstanding requests).
    NoWork,
    /// Splicing made progress and needs a commit; call again.
    More,
}

/// The least key any input holds in `[start, end]`.
fn least_input_key(
    tx: &mut ServerTxn<'_>,
    inputs: &[LogTrees],
    start: &Key,
    end: &Key,
) -> StoreResult<Option<Key>> {
    let mut least: Option<Key> = None;
    for lt in inputs {
        if let Some(it) = btree::next(tx.cache, &lt.item_root, start)? {
            if it.key <= *end && least.is_none_or(|l| it.key < l) {
                least = Some(it.key);
            }
        }
    }
    Ok(least)
}

/// GET_LOG_MERGE: splice when it is time, else hand `rid` the next piece
/// of work.
///
/// A pass hands out requests in key order from the cursor
/// `next_range_key`, which moves past each request's fs_root parent, so
/// no two outstanding requests (or unspliced completions) share a parent.
/// A request given back (an error or refused completion, a reclaimed
/// client, requests cancelled at server start) puts its range back
/// behind the cursor. So splicing is due when no range is left at or
/// after the cursor, not only when no range is left at all: once no
/// request is outstanding, the completions are spliced and the next pass
/// starts from the least key (splice phase 3), handing out the ranges
/// given back. Otherwise the merge would wait for them forever.
pub fn get_request(tx: &mut ServerTxn<'_>, rid: u64, cfg: &MergeConfig) -> StoreResult<Work> {
    let budget = Budget::new(tx, cfg.hold_budget_blocks);
    // bounded: each round hands out work, stops, drops a range, or
    // splices (which finishes the merge or restarts the pass at the
    // least key, where a range is found)
    for _ in 0..100_000 {
        let Some(mut st) = status(tx)? else {
            return Ok(Work::NoWork);
        };
        let next = ranges(tx)?
            .into_iter()
            .filter(|(_, r)| r.start >= st.next_range_key)
            .min_by_key(|(_, r)| r.start);
        if st.nr_requests == 0 && (next.is_none() || st.nr_complete >= cfg.splice_batch) {
            match splice(tx, &mut st, cfg, &budget)? {
                Step::More => return Ok(Work::More),
                Step::Done(true) => return Ok(Work::NoWork),
                Step::Done(false) => continue,
            }
        }
        // nothing left in this pass: the outstanding requests finish it
        let Some((rkey, r)) = next else {
            return Ok(Work::NoWork);
        };
        // counts come from disk: saturate rather than overflow
        if st.nr_requests.saturating_add(st.nr_complete) >= cfg.splice_batch {
            return Ok(Work::NoWork);
        }
        let ins = inputs(tx, st.seq)?;
        let Some(least) = least_input_key(tx, &ins, &r.start, &r.end)? else {
            // nothing left to merge in this range
            del(tx, &rkey)?;
            counter!("log_merge.empty_ranges").inc();
            continue;
        };
        let fs_root = tx.sb.fs_root;
        let (sub, _pstart, pend) = btree::get_parent(tx.cache, &fs_root, &least)?;
        let end = if pend < r.end { pend } else { r.end };
        let mut meta_avail = AllocListHead::default();
        tx.fill_meta_list(&mut meta_avail, cfg.request_fill, cfg.request_fill)?;
        if meta_avail.total_nr < MERGE_FILL_MIN {
            tx.return_meta_list(&mut meta_avail)?;
            counter!("log_merge.request_no_space").inc();
            return Ok(Work::NoWork);
        }
        del(tx, &rkey)?;
        if end < r.end {
            insert_range(
                tx,
                &MergeRange {
                    start: end.inc(),
                    end: r.end,
                },
            )?;
        }
        let req = MergeRequest {
            meta_avail,
            meta_freed: AllocListHead::default(),
            logs_root: tx.sb.logs_root,
            root: sub,
            start: least,
            end,
            input_seq: st.seq,
            rid,
            seq: tx.next_seq(),
            flags: if fs_root.height > 2 {
                MERGE_REQUEST_SUBTREE
            } else {
                0
            },
        };
        put(tx, merge_request_key(rid, req.seq), &req.encode())?;
        st.nr_requests = st.nr_requests.saturating_add(1);
        st.next_range_key = if pend == Key::MAX {
            Key::MAX
        } else {
            pend.inc()
        };
        store_status(tx, &st)?;
        counter!("log_merge.requests").inc();
        TP_MERGE_REQUEST.emit(&[req.seq, rid, least.zone as u64, least.first]);
        return Ok(Work::Request(alloc::boxed::Box::new(req)));
    }
    Err(bad("merge ranges do not converge"))
}

fn request_of(tx: &mut ServerTxn<'_>, rid: u64, seq: u64) -> StoreResult<Option<MergeRequest>> {
    match btree::lookup(tx.cache, &tx.sb.log_merge, &merge_request_key(rid, seq))? {
        Some(it) => Ok(Some(MergeRequest::decode(&it.val).map_err(|e| bad(e.0))?)),
        None => Ok(None),
    }
}

/// Give a request's work back: its range is merged again later, its
/// allocator returns to the server.
fn reclaim_request(
    tx: &mut ServerTxn<'_>,
    st: &mut MergeStatus,
    req: &MergeRequest,
) -> StoreResult<()> {
    let mut avail = req.meta_avail;
    tx.return_meta_list(&mut avail)?;
    insert_range(
        tx,
        &MergeRange {
            start: req.start,
            end: req.end,
        },
    )?;
    del(tx, &merge_request_key(req.rid, req.seq))?;
    st.nr_requests = st.nr_requests.saturating_sub(1);
    Ok(())
}

/// COMMIT_LOG_MERGE from `rid`. A completion whose request is gone (a
/// resend, or cancelled) is ignored; a bad or failed one reclaims the
/// request.
pub fn commit_completion(
    tx: &mut ServerTxn<'_>,
    rid: u64,
    comp: &MergeComplete,
) -> StoreResult<()> {
    let Some(req) = request_of(tx, rid, comp.seq)? else {
        counter!("log_merge.stale_completions").inc();
        return Ok(());
    };
    let Some(mut st) = status(tx)? else {
        return Err(bad("merge request without merge status"));
    };
    let sane = comp.rid == rid
        && comp.start == req.start
        && comp.end == req.end
        && (!comp.meta_freed.bref.is_null() || comp.root == req.root)
        && (req.flags & MERGE_REQUEST_SUBTREE == 0 || comp.root.height == 2)
        && comp.root.height <= crate::format::BtreeRoot::MAX_HEIGHT;
    TP_MERGE_COMPLETE.emit(&[comp.seq, rid, comp.flags]);
    if comp.flags & MERGE_COMP_ERROR != 0 || !sane {
        if comp.flags & MERGE_COMP_ERROR == 0 {
            counter!("log_merge.bad_completions").inc();
        } else {
            counter!("log_merge.failed_completions").inc();
        }
        reclaim_request(tx, &mut st, &req)?;
        return store_status(tx, &st);
    }
    del(tx, &merge_request_key(rid, comp.seq))?;
    put(tx, merge_complete_key(comp.seq), &comp.encode())?;
    st.nr_requests = st.nr_requests.saturating_sub(1);
    st.nr_complete = st.nr_complete.saturating_add(1);
    counter!("log_merge.completions").inc();
    store_status(tx, &st)
}

/// Cancel `rid`'s outstanding requests (it left or died).
pub fn cancel_requests(tx: &mut ServerTxn<'_>, rid: u64, budget: &Budget) -> StoreResult<Step<()>> {
    let Some(mut st) = status(tx)? else {
        return Ok(Step::Done(()));
    };
    let (s, e) = zone_range(zone::LOG_MERGE_REQUEST);
    let s = Key { first: rid, ..s };
    let e = Key { first: rid, ..e };
    let mut reqs = Vec::new();
    btree::for_each_range(tx.cache, &tx.sb.log_merge, &s, &e, |it| {
        reqs.push(it.clone());
        true
    })?;
    for it in reqs {
        if !budget.ok(tx) {
            store_status(tx, &st)?;
            return Ok(Step::More);
        }
        let req = MergeRequest::decode(&it.val).map_err(|e| bad(e.0))?;
        reclaim_request(tx, &mut st, &req)?;
        counter!("log_merge.cancelled_requests").inc();
    }
    store_status(tx, &st)?;
    Ok(Step::Done(()))
}

fn completions(tx: &mut ServerTxn<'_>) -> StoreResult<Vec<MergeComplete>> {
    zone_items(tx, zone::LOG_MERGE_COMPLETE)?
        .into_iter()
        .map(|it| MergeComplete::decode(&it.val).map_err(|e| bad(e.0)))
        .collect()
}

/// Splice completions back into fs_root (only with no request
/// outstanding; due with a full batch or when the pass has no range left
/// at or after the cursor). `Done(true)`: the merge finished and its
/// inputs are queued for freeing; `Done(false)`: ranges remain, a new
/// pass starts at the least key; `More`: commit and call again.
fn splice(
    tx: &mut ServerTxn<'_>,
    st: &mut MergeStatus,
    cfg: &MergeConfig,
    budget: &Budget,
) -> StoreResult<Step<bool>> {
    assert_eq!(st.nr_requests, 0, "splicing with requests outstanding");
    let comps = completions(tx)?;

    // phase 1: replace the parents with the merged subtrees, then give
    // the completion's allocators back (the blocks it replaced, what it
    // did not use). Re-entry skips what was done: the parent already
    // points at the completion's root; the lists keep their progress.
    let mut units = 0;
    for mut comp in comps.iter().copied().filter(|c| !c.is_spliced()) {
        if !budget.ok(tx) {
            store_status(tx, st)?;
            TP_SPLICE.emit(&[1, units, 1]);
            return Ok(Step::More);
        }
        let fs_root = tx.sb.fs_root;
        let (current, _, _) = btree::get_parent(tx.cache, &fs_root, &comp.start)?;
        if current != comp.root {
            btree::set_parent(
                tx.cache,
                tx.alloc,
                &mut tx.sb.fs_root,
                &comp.start,
                &comp.root,
            )?;
            counter!("log_merge.spliced").inc();
        }
        let done = tx.return_meta_list_some(&mut comp.meta_freed, budget)?
            && tx.return_meta_list_some(&mut comp.meta_avail, budget)?;
        put(tx, merge_complete_key(comp.seq), &comp.encode())?;
        units += 1;
        if !done {
            store_status(tx, st)?;
            TP_SPLICE.emit(&[1, units, 1]);
            return Ok(Step::More);
        }
    }
    if units > 0 {
        TP_SPLICE.emit(&[1, units, 0]);
    }

    // phase 2: rebalance around the spliced parents, requeue remainders.
    // Requests stay off (nr_complete elevated) while parents move.
    if !comps.is_empty() {
        if st.nr_complete < cfg.splice_batch {
            st.nr_complete = cfg.splice_batch;
            store_status(tx, st)?;
        }
        let mut units = 0;
        for comp in &comps {
            if !budget.ok(tx) {
                store_status(tx, st)?;
                TP_SPLICE.emit(&[2, units, 1]);
                return Ok(Step::More);
            }
            btree::rebalance(tx.cache, tx.alloc, &mut tx.sb.fs_root, &comp.start)?;
            if comp.flags & MERGE_COMP_REMAIN != 0 {
                insert_range(
                    tx,
                    &MergeRange {
                        start: comp.remain,
                        end: comp.end,
                    },
                )?;
            }
            del(tx, &merge_complete_key(comp.seq))?;
            units += 1;
        }
        TP_SPLICE.emit(&[2, units, 0]);
    }

    // phase 3: ranges remain (remainders, ranges given back behind the
    // cursor, the rest of a pass cut short by a full batch): let requests
    // flow again from the least key
    if !ranges(tx)?.is_empty() {
        st.next_range_key = Key::MIN;
        st.nr_complete = 0;
        store_status(tx, st)?;
        return Ok(Step::Done(false));
    }

    // phase 4: the inputs are merged: queue them for freeing
    let ins = inputs(tx, st.seq)?;
    for (units, lt) in ins.iter().enumerate() {
        if !budget.ok(tx) {
            store_status(tx, st)?;
            TP_SPLICE.emit(&[4, units as u64, 1]);
            return Ok(Step::More);
        }
        if !lt.item_root.is_empty() {
            let seq = tx.next_seq();
            let f = MergeFreeing {
                root: lt.item_root,
                key: Key::MIN,
                seq,
            };
            put(tx, merge_freeing_key(seq), &f.encode())?;
        }
        if !lt.bloom_ref.is_null() {
            tx.cache.forget(lt.bloom_ref.blkno);
            crate::storage::block::MetaAlloc::free_meta(tx.alloc, tx.cache, lt.bloom_ref.blkno)?;
        }
        tx.sb.inode_count = tx.sb.inode_count.wrapping_add(lt.inode_count_delta);
        log_trees::delete(tx, lt)?;
    }
    del(tx, &merge_status_key())?;
    counter!("log_merge.finished").inc();
    TP_MERGE_DONE.emit(&[st.seq, ins.len() as u64]);
    // trees finalized while this merge ran (a mount left or was
    // reclaimed) are the next one's inputs, once no tree is open
    start(tx)?;
    Ok(Step::Done(true))
}

/// Free blocks of merged input trees (FREEING items), within the budget.
/// `Done(false)` when nothing is left to free.
pub fn free_some(tx: &mut ServerTxn<'_>, cfg: &MergeConfig) -> StoreResult<Step<bool>> {
    let budget = Budget::new(tx, cfg.hold_budget_blocks);
    loop {
        let items = {
            let (s, e) = zone_range(zone::LOG_MERGE_FREEING);
            let mut first = None;
            btree::for_each_range(tx.cache, &tx.sb.log_merge, &s, &e, |it| {
                first = Some(it.clone());
                false
            })?;
            first
        };
        let Some(it) = items else {
            return Ok(Step::Done(false));
        };
        if !budget.ok(tx) {
            return Ok(Step::More);
        }
        let mut f = MergeFreeing::decode(&it.val).map_err(|e| bad(e.0))?;
        // every freed block takes freed-list room; walking the path takes
        // a few allocations
        let room = tx
            .alloc_room()
            .saturating_sub(crate::server::commit::COMMIT_RESERVE_BLOCKS + 8)
            as usize;
        let unit = cfg
            .free_unit_blocks
            .min(room)
            .min(cfg.hold_budget_blocks as usize)
            .max(1);
        let done = btree::free_blocks(tx.cache, tx.alloc, &mut f.root, unit)?;
        counter!("log_merge.freeing_units").inc();
        if done {
            del(tx, &it.key)?;
        } else {
            put(tx, it.key, &f.encode())?;
        }
    }
}

/// The ordering merges rely on (cluster reference §1.9, storage §3.1):
/// while a merge is in progress, every log tree that is not one of its
/// inputs holds only items newer than every item of every input, so no
/// later merge can put an older version over what this one merged.
/// `Ok(Err(what))` names the tree and item that break it (simulator and
/// test checker; reads every non-input tree).
pub fn check_order(
    cache: &mut crate::storage::block::BlockCache,
    sb: &crate::format::super_block::SuperBlock,
) -> StoreResult<Result<(), alloc::string::String>> {
    let Some(it) = btree::lookup(cache, &sb.log_merge, &merge_status_key())? else {
        return Ok(Ok(()));
    };
    let st = MergeStatus::decode(&it.val).map_err(|e| bad(e.0))?;
    let trees = log_trees::all(cache, &sb.logs_root)?;
    let is_input = |lt: &LogTrees| lt.is_finalized() && lt.finalize_seq < st.seq;
    let newest = trees
        .iter()
        .filter(|lt| is_input(lt))
        .map(|lt| lt.max_item_seq)
        .max()
        .unwrap_or(0);
    let (s, e) = (Key::MIN, Key::MAX);
    for lt in trees.iter().filter(|lt| !is_input(lt)) {
        let mut old = None;
        btree::for_each_range(cache, &lt.item_root, &s, &e, |it| {
            if it.seq <= newest {
                old = Some((it.key, it.seq));
                return false;
            }
            true
        })?;
        if let Some((k, seq)) = old {
            let all: Vec<_> = trees
                .iter()
                .map(|t| {
                    (
                        t.rid,
                        t.nr,
                        t.get_trans_seq,
                        t.commit_trans_seq,
                        t.max_item_seq,
                        t.finalize_seq,
                    )
                })
                .collect();
            return Ok(Err(alloc::format!(
                "log tree (rid {:#x}, nr {}, {}) holds {k:?} at seq {seq}, not newer than \
                 the newest item ({newest}) of the inputs of the merge at seq {}; trees \
                 (rid, nr, get, commit, max item, finalize seqs): {all:x?}",
                lt.rid,
                lt.nr,
                if lt.is_finalized() {
                    "finalized"
                } else {
                    "open"
                },
                st.seq
            )));
        }
    }
    Ok(Ok(()))
}
