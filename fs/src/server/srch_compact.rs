//! The server's srch work: rotating a mount's srch log file into
//! `srch_root` once it is large, and compacting files there so searches
//! read few sorted files instead of many unsorted ones.
//!
//! scoutfs hands compactions to mounts (SRCH_GET_COMPACT / COMMIT_COMPACT
//! with PENDING and BUSY items and their own allocators). Here the server
//! does one compaction inside the commit of a GET_LOG_TREES, bounded by
//! [`COMPACT_MAX_BLOCKS`] input blocks and the room of its allocator: four
//! LOG files, or four sorted files of one size class, become one sorted
//! file (a BLOCKS item) and their blocks are freed. Entries that occur an
//! even number of times (a creation and its deletion) cancel. Larger
//! merges are left alone: searches read every file, so they stay correct.

use crate::counter;
use crate::format::log::{LogTrees, SrchEntry, SrchFile};
use crate::format::srch::COMPACT_NR;
use crate::server::commit::ServerTxn;
use crate::server::log_trees;
use crate::storage::btree::{self, Item};
use crate::storage::srch_file::{self, RootFile};
use crate::storage::store_error::{StoreError, StoreResult};
use alloc::vec::Vec;

/// The most input blocks (64 KiB each) one compaction reads: its entries
/// are sorted in memory (about 32 MiB at this size).
pub const COMPACT_MAX_BLOCKS: u64 = 256;

/// Rotate the tree's log file into `srch_root` once it holds `limit`
/// blocks (scoutfs: [`crate::format::srch::LOG_BLOCK_LIMIT`], 1 MiB, at
/// GET_LOG_TREES).
pub fn maybe_rotate(tx: &mut ServerTxn<'_>, lt: &mut LogTrees, limit: u64) -> StoreResult<()> {
    if !lt.srch_file.is_empty() && lt.srch_file.blocks >= limit.max(1) {
        log_trees::rotate_srch(tx, lt)?;
    }
    Ok(())
}

/// The size class of a sorted file (scoutfs: `fls64(blocks) / 2`).
fn size_class(blocks: u64) -> u32 {
    (64 - blocks.leading_zeros()) / 2
}

/// Which files to compact next: the first four LOG files, else four
/// sorted files of the smallest class that has four.
fn pick(files: &[RootFile]) -> Option<Vec<RootFile>> {
    let logs: Vec<RootFile> = files.iter().filter(|f| !f.sorted).copied().collect();
    if logs.len() >= COMPACT_NR {
        return Some(logs[..COMPACT_NR].to_vec());
    }
    let mut sorted: Vec<RootFile> = files.iter().filter(|f| f.sorted).copied().collect();
    sorted.sort_by_key(|f| (size_class(f.file.blocks), f.key));
    sorted
        .chunk_by(|a, b| size_class(a.file.blocks) == size_class(b.file.blocks))
        .find(|g| g.len() >= COMPACT_NR)
        .map(|g| g[..COMPACT_NR].to_vec())
}

/// Do one compaction if one is due and fits; returns whether it did.
/// Input files that cannot be read are left in place (counted), so a
/// damaged file never stops the server.
pub fn compact_one(tx: &mut ServerTxn<'_>) -> StoreResult<bool> {
    let files = match srch_file::root_files(tx.cache, &tx.sb.srch_root) {
        Ok(f) => f,
        Err(e @ StoreError::Corrupt { .. }) => {
            log::warn!("srch: not compacting, srch_root is damaged: {e}");
            counter!("server.srch_compact_bad_input").inc();
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    let Some(inputs) = pick(&files) else {
        return Ok(false);
    };
    let mut total = 0u64;
    for f in &inputs {
        total = total.saturating_add(f.file.blocks);
    }
    // the output is at most the input, plus parents and the root's items
    let room = tx.alloc.avail_remaining().min(tx.alloc.freed_room());
    if total > COMPACT_MAX_BLOCKS || room < 2 * total + 64 {
        counter!("server.srch_compact_skipped").inc();
        return Ok(false);
    }
    let mut all: Vec<SrchEntry> = Vec::new();
    for f in &inputs {
        match read_all(tx, &f.file, f.sorted) {
            Ok(mut v) => all.append(&mut v),
            Err(e @ (StoreError::Corrupt { .. } | StoreError::Stale { .. })) => {
                log::warn!("srch: not compacting, an input file is unreadable: {e}");
                counter!("server.srch_compact_bad_input").inc();
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    let before = all.len() as u64;
    let out = srch_file::sort_cancel(all);
    let mut nf = SrchFile::default();
    srch_file::append(tx.cache, tx.alloc, &mut nf, &out)?;
    for f in &inputs {
        srch_file::free(tx.cache, tx.alloc, &f.file)?;
        btree::delete(tx.cache, tx.alloc, &mut tx.sb.srch_root, &f.key)?;
    }
    if !nf.is_empty() {
        let mut val = [0u8; SrchFile::BYTES];
        nf.encode(&mut val);
        btree::force(
            tx.cache,
            tx.alloc,
            &mut tx.sb.srch_root,
            Item::new(srch_file::blocks_key(&nf), 0, &val),
        )?;
    }
    counter!("server.srch_compactions").inc();
    counter!("server.srch_entries_cancelled").add(before - out.len() as u64);
    Ok(true)
}

fn read_all(tx: &mut ServerTxn<'_>, f: &SrchFile, sorted: bool) -> StoreResult<Vec<SrchEntry>> {
    let mut v = Vec::with_capacity(f.entries.min(1 << 22) as usize);
    for blk in 0..f.blocks {
        let (_, mut e) = srch_file::read_leaf(tx.cache, f, blk, sorted)?;
        v.append(&mut e);
    }
    if v.len() as u64 != f.entries {
        return Err(StoreError::Corrupt {
            blkno: f.bref.blkno,
            what: "srch file entries do not match its blocks",
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::key::Key;

    fn rf(blocks: u64, sorted: bool, n: u64) -> RootFile {
        RootFile {
            key: Key::new(32, 0, if sorted { 8 } else { 4 }, blocks, n, 0),
            file: SrchFile {
                blocks,
                ..Default::default()
            },
            sorted,
        }
    }

    #[test]
    fn picks_logs_first_then_a_size_class() {
        assert_eq!(size_class(1), 0);
        assert_eq!(size_class(16), 2);
        assert_eq!(size_class(64), 3);
        let three_logs: Vec<_> = (0..3).map(|i| rf(16, false, i)).collect();
        assert!(pick(&three_logs).is_none());
        let mut files: Vec<_> = (0..4).map(|i| rf(16, false, i)).collect();
        files.push(rf(64, true, 9));
        assert!(pick(&files).unwrap().iter().all(|f| !f.sorted));
        let mut sorted: Vec<_> = (0..3).map(|i| rf(64, true, i)).collect();
        sorted.push(rf(1000, true, 5));
        assert!(pick(&sorted).is_none(), "different classes do not merge");
        sorted.push(rf(70, true, 6));
        let p = pick(&sorted).unwrap();
        assert_eq!(p.len(), 4);
        assert!(p.iter().all(|f| size_class(f.file.blocks) == 3));
    }
}
