//! The client side of log merging (storage reference 3.4): merge the
//! finalized input log trees of a request into a private copy-on-write
//! copy of the fs_root subtree the request names, using only the
//! request's allocator, and describe the result as a completion.
//!
//! Called by the node's merge worker with a [`BlockCache`] of its own (its
//! dirty blocks never mix with the mount's transaction). Reads items in
//! windows every input agrees on; per key the highest seq wins, `.totl.`
//! deltas are summed into the fs item, deletion items delete; seqs are
//! preserved and an fs item newer than the merged version is kept. Stops
//! early (`REMAIN`) when its dirty blocks or allocator reach their limits
//! or, in subtree mode, before the subtree root would have to split or
//! collapse. Any error yields an `ERROR` completion (the server redoes the
//! range); the worker never panics on what it reads.
//!
//! A request can cover a whole fs_root of items, so the merge runs in
//! bounded steps with [`yield_now`] between them (one window read, at most
//! [`MERGE_STEP_ITEMS`] items applied, [`WRITE_STEP_BLOCKS`] blocks
//! written): the node keeps answering while it merges. The cache is
//! borrowed only within a step; a merge that fails or is dropped before
//! its write-out finished forgets its dirty blocks.

use crate::counter;
use crate::format::block::BtreeRoot;
use crate::format::key::{zone, Key};
use crate::format::le::{get_u64, put_u64};
use crate::format::log::*;
use crate::format::LG_BLOCK_SIZE;
use crate::runtime::exec::yield_now;
use crate::runtime::trace::Tracepoint;
use crate::server::log_trees;
use crate::storage::allocator::ListAlloc;
use crate::storage::block::{BlockCache, WRITE_STEP_BLOCKS};
use crate::storage::btree::{self, Item};
use crate::storage::store_error::{StoreError, StoreResult};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cell::RefCell;

/// Merged items applied to the fs_root copy per step.
pub const MERGE_STEP_ITEMS: usize = 1024;

static TP_WORK: Tracepoint =
    Tracepoint::new("log_merge_work", &["seq", "items", "blocks", "remain"]);

/// When a merge stops and reports what remains.
#[derive(Clone, Copy, Debug)]
pub struct MergeLimits {
    /// Dirty block bytes (the reference uses 64 MiB).
    pub dirty_bytes_max: usize,
    /// Stop when the request allocator gets this close to empty.
    pub alloc_low_blocks: u64,
}

impl Default for MergeLimits {
    fn default() -> Self {
        MergeLimits {
            dirty_bytes_max: 16 << 20,
            alloc_low_blocks: 32,
        }
    }
}

/// What one merge did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    pub inputs: u64,
    pub items_merged: u64,
    pub items_kept_newer: u64,
    pub blocks_written: u64,
}

struct Merged {
    seq: u64,
    deletion: bool,
    val: Vec<u8>,
    totl: Option<(u64, u64)>,
}

fn limits_hit(cache: &BlockCache, alloc: &ListAlloc, limits: &MergeLimits) -> bool {
    cache.dirty_blocks() * LG_BLOCK_SIZE >= limits.dirty_bytes_max
        || alloc.avail_remaining() <= limits.alloc_low_blocks
        || alloc.freed_room() <= limits.alloc_low_blocks
}

fn apply(
    cache: &mut BlockCache,
    alloc: &mut ListAlloc,
    root: &mut BtreeRoot,
    key: Key,
    m: Merged,
    stats: &mut MergeStats,
) -> StoreResult<()> {
    let existing = btree::lookup(cache, root, &key)?;
    if let Some((dt, dc)) = m.totl {
        let (mut t, mut c, mut s) = (dt, dc, m.seq);
        if let Some(e) = &existing {
            if e.val.len() != 16 {
                return Err(StoreError::Corrupt {
                    blkno: root.bref.blkno,
                    what: "fs totl item is not 16 bytes",
                });
            }
            t = t.wrapping_add(get_u64(&e.val, 0));
            c = c.wrapping_add(get_u64(&e.val, 8));
            s = s.max(e.seq);
        }
        if t == 0 && c == 0 {
            if existing.is_some() {
                btree::delete(cache, alloc, root, &key)?;
            }
        } else {
            let mut v = alloc::vec![0u8; 16];
            put_u64(&mut v, 0, t);
            put_u64(&mut v, 8, c);
            btree::force(
                cache,
                alloc,
                root,
                Item {
                    key,
                    seq: s,
                    flags: 0,
                    val: v,
                },
            )?;
        }
        stats.items_merged += 1;
        return Ok(());
    }
    if existing.as_ref().is_some_and(|e| e.seq > m.seq) {
        stats.items_kept_newer += 1;
        return Ok(());
    }
    if m.deletion {
        if existing.is_some() {
            btree::delete(cache, alloc, root, &key)?;
        }
    } else {
        btree::force(
            cache,
            alloc,
            root,
            Item {
                key,
                seq: m.seq,
                flags: 0,
                val: m.val,
            },
        )?;
    }
    stats.items_merged += 1;
    Ok(())
}

/// Forgets the dirty blocks of a merge that does not finish (an error, or
/// its future dropped at a yield): nothing was handed to the server.
struct Unwritten<'a> {
    cache: &'a RefCell<BlockCache>,
    written: bool,
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        if !self.written {
            if let Ok(mut c) = self.cache.try_borrow_mut() {
                c.discard_dirty();
            }
        }
    }
}

/// Read the window of items from `key` that every input agrees on (up to
/// `req.end`) and merge them per key. Returns the merged items and the
/// window's end.
fn read_window(
    cache: &mut BlockCache,
    inputs: &[BtreeRoot],
    key: &Key,
    end: &Key,
) -> StoreResult<(BTreeMap<Key, Merged>, Key)> {
    let mut wend = *end;
    let mut found: Vec<Item> = Vec::new();
    for r in inputs {
        let li = btree::read_items(cache, r, key, key, &wend)?;
        wend = li.end;
        found.extend(li.items);
    }
    let mut merged: BTreeMap<Key, Merged> = BTreeMap::new();
    for it in found {
        if it.key > wend || it.key < *key {
            continue;
        }
        if it.key.zone == zone::XATTR_TOTL {
            if it.val.len() != 16 {
                return Err(StoreError::Corrupt {
                    blkno: 0,
                    what: "log totl item is not 16 bytes",
                });
            }
            let e = merged.entry(it.key).or_insert(Merged {
                seq: 0,
                deletion: false,
                val: Vec::new(),
                totl: Some((0, 0)),
            });
            let (t, c) = e.totl.unwrap_or((0, 0));
            e.totl = Some((
                t.wrapping_add(get_u64(&it.val, 0)),
                c.wrapping_add(get_u64(&it.val, 8)),
            ));
            e.seq = e.seq.max(it.seq);
            continue;
        }
        let newer = merged.get(&it.key).is_none_or(|m| it.seq > m.seq);
        if newer {
            let deletion = it.is_deletion();
            merged.insert(
                it.key,
                Merged {
                    seq: it.seq,
                    deletion,
                    val: it.val,
                    totl: None,
                },
            );
        }
    }
    Ok((merged, wend))
}

async fn run(
    cache_cell: &RefCell<BlockCache>,
    req: &MergeRequest,
    limits: &MergeLimits,
    stats: &mut MergeStats,
) -> StoreResult<MergeComplete> {
    let mut unwritten = Unwritten {
        cache: cache_cell,
        written: false,
    };
    let subtree = req.flags & MERGE_REQUEST_SUBTREE != 0;
    let mut alloc = ListAlloc::new(req.meta_avail, req.meta_freed);
    let mut root = req.root;
    let inputs: Vec<BtreeRoot> = {
        let mut cache = cache_cell.borrow_mut();
        let inputs: Vec<BtreeRoot> = log_trees::all(&mut cache, &req.logs_root)?
            .into_iter()
            .filter(|lt| lt.is_finalized() && lt.finalize_seq < req.input_seq)
            .map(|lt| lt.item_root)
            .filter(|r| !r.is_empty())
            .collect();
        stats.inputs = inputs.len() as u64;
        if subtree && req.root.height != 2 {
            return Err(StoreError::Invalid(
                "subtree merge root is not a level-1 parent",
            ));
        }
        // replace at least one fs block, so the completion always frees some
        btree::touch(&mut cache, &mut alloc, &mut root, &req.start)?;
        inputs
    };
    let mut key = req.start;
    let mut remain: Option<Key> = None;
    'windows: loop {
        yield_now().await;
        let (merged, wend) = {
            let mut cache = cache_cell.borrow_mut();
            if limits_hit(&cache, &alloc, limits) {
                remain = Some(key);
                break;
            }
            read_window(&mut cache, &inputs, &key, &req.end)?
        };
        let mut pending = merged.into_iter().peekable();
        while pending.peek().is_some() {
            yield_now().await;
            let mut cache = cache_cell.borrow_mut();
            for (k, m) in pending.by_ref().take(MERGE_STEP_ITEMS) {
                if subtree {
                    let (_, n, bytes, usable) = btree::root_fill(&mut cache, &root)?;
                    if !btree::subtree_root_has_room(n, bytes, usable) {
                        counter!("log_merge.subtree_root_full").inc();
                        remain = Some(k);
                        break 'windows;
                    }
                }
                if limits_hit(&cache, &alloc, limits) {
                    remain = Some(k);
                    break 'windows;
                }
                apply(&mut cache, &mut alloc, &mut root, k, m, stats)?;
            }
        }
        if wend >= req.end {
            break;
        }
        key = wend.inc();
    }
    if subtree && root.height != 2 {
        return Err(StoreError::Corrupt {
            blkno: root.bref.blkno,
            what: "subtree merge changed the subtree height",
        });
    }
    // the write-out: same blocks, same order, one flush
    let begun = cache_cell.borrow_mut().begin_write_dirty();
    let mut w = begun?;
    loop {
        yield_now().await;
        let stepped = cache_cell
            .borrow_mut()
            .write_dirty_step(&mut w, WRITE_STEP_BLOCKS);
        if stepped? {
            break;
        }
    }
    let finished = cache_cell.borrow_mut().finish_write_dirty(w);
    stats.blocks_written = finished? as u64;
    unwritten.written = true;
    alloc.end_transaction();
    let mut comp = MergeComplete {
        meta_avail: alloc.avail,
        meta_freed: alloc.freed,
        root,
        start: req.start,
        end: req.end,
        remain: Key::MIN,
        rid: req.rid,
        seq: req.seq,
        flags: 0,
    };
    if let Some(r) = remain {
        comp.flags |= MERGE_COMP_REMAIN;
        comp.remain = r;
    }
    Ok(comp)
}

/// Do the work of `req` and describe it, in steps with yields between
/// them. Never fails: problems become an `ERROR` completion and the dirty
/// blocks are dropped. The cache is the caller's alone until this is done.
pub async fn merge_request(
    cache: &RefCell<BlockCache>,
    req: &MergeRequest,
    limits: &MergeLimits,
) -> (MergeComplete, MergeStats) {
    let mut stats = MergeStats::default();
    match run(cache, req, limits, &mut stats).await {
        Ok(comp) => {
            counter!("log_merge.items_merged").add(stats.items_merged);
            TP_WORK.emit(&[
                req.seq,
                stats.items_merged,
                stats.blocks_written,
                (comp.flags & MERGE_COMP_REMAIN != 0) as u64,
            ]);
            (comp, stats)
        }
        Err(e) => {
            log::warn!("log merge of request {} failed: {e}", req.seq);
            counter!("log_merge.worker_errors").inc();
            cache.borrow_mut().discard_dirty();
            (
                MergeComplete {
                    meta_avail: req.meta_avail,
                    meta_freed: req.meta_freed,
                    root: req.root,
                    start: req.start,
                    end: req.end,
                    remain: Key::MIN,
                    rid: req.rid,
                    seq: req.seq,
                    flags: MERGE_COMP_ERROR,
                },
                stats,
            )
        }
    }
}
