//! The seam between the POSIX half of a mount (item cache, inodes, dirs,
//! data) and the persistent half (forest reads, log btrees, transactions to
//! the server). The item cache and `vfs::Mount` call a [`Backend`]; the
//! in-memory backend (`sim::mem_backend`) implements it for tests, the forest +
//! log btree + server client implements it for real volumes.
//!
//! Contract, in one place (docs/posix.md repeats it):
//! * [`Backend::read_items`] answers with the **persistent** items (merged
//!   and resolved: no deletion items, highest seq wins, `.totl.` deltas
//!   summed) in a key range around the asked key, and the range it is
//!   authoritative for: every persistent item in `[start, end]` is in the
//!   answer. The range must contain the key and lie inside the caller's
//!   bounds. It never includes items dirtied in the open transaction: those
//!   live in the item cache until [`Backend::commit`] returns.
//! * [`Backend::trans_seq`] is the seq of the open transaction; every item
//!   dirtied in it carries that seq. It changes only when a commit returns.
//! * [`Backend::commit`] makes a [`CommitSet`] durable (log btree written,
//!   server committed, data device flushed by the caller beforehand) and
//!   opens the next transaction. The caller guarantees no item changes while
//!   it runs. On error nothing was committed and the caller keeps the items
//!   dirty to retry.
//! * Data blocks come from [`Backend::alloc_data`] and go back through
//!   [`Backend::free_data`]; freed blocks are not handed out again before the
//!   commit that frees them is durable. `ENOBUFS` from `alloc_data` means
//!   "this transaction's allocator is empty: commit and retry".

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;

use crate::cluster::lock::LockRange;
use crate::errno::{Errno, FsResult};
use crate::format::items::TotlVal;
use crate::format::key::Key;

/// A boxed, non-`Send` future: what the dyn-compatible async methods return.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// An item value, shared between the cache, commit sets and backends.
pub type Value = Rc<[u8]>;

/// The answer of [`Backend::read_items`].
#[derive(Clone, Debug, Default)]
pub struct ReadBatch {
    /// Persistent items in `[start, end]`, sorted by key, no duplicates.
    pub items: Vec<(Key, Value)>,
    /// The key range the answer is authoritative for.
    pub start: Key,
    pub end: Key,
}

/// One dirty item of a transaction: a new value or a deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyItem {
    pub key: Key,
    /// The transaction seq when it was dirtied.
    pub seq: u64,
    /// `None` is a deletion: written as a deletion item in a log btree.
    pub val: Option<Value>,
}

/// A `.totl.` delta: added to the (total, count) of `key`. Written to log
/// btrees as a delta item (zone XATTR_TOTL) that readers sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TotlDelta {
    pub key: Key,
    pub seq: u64,
    /// Two's complement deltas.
    pub delta: TotlVal,
}

/// A srch entry appended to the transaction's srch log file: `hash` is
/// FNV-1a-64 of the full xattr name, `id` the xattr id. An entry seen an
/// even number of times means "absent" (create + delete).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SrchEntry {
    pub hash: u64,
    pub ino: u64,
    pub id: u64,
}

/// Everything one transaction changed.
#[derive(Clone, Debug, Default)]
pub struct CommitSet {
    /// The seq of the transaction being committed.
    pub seq: u64,
    /// Sorted by key, unique.
    pub items: Vec<DirtyItem>,
    /// Sorted by key, unique (deltas of one key are combined).
    pub totl: Vec<TotlDelta>,
    /// In append order.
    pub srch: Vec<SrchEntry>,
    /// Inodes created minus inodes deleted (the log tree's
    /// `inode_count_delta`).
    pub inode_count_delta: i64,
}

/// A run of inode numbers handed out by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InoRange {
    pub first: u64,
    pub count: u64,
}

/// A run of data device blocks (4 KiB units).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRun {
    pub blkno: u64,
    pub len: u64,
}

/// The figures of `scoutfs_net_statfs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStatfs {
    pub uuid: [u8; 16],
    /// 64 KiB metadata blocks.
    pub total_meta_blocks: u64,
    pub free_meta_blocks: u64,
    /// 4 KiB data blocks.
    pub total_data_blocks: u64,
    pub free_data_blocks: u64,
    pub inode_count: u64,
}

/// The persistent half of a mount. Single-threaded; `&self` methods use
/// interior mutability. Futures may be pending (RPCs) and must be woken.
pub trait Backend {
    /// Format version of the volume (1 or 2): the inode item size written.
    fn format_version(&self) -> u64;

    /// Seq of the open transaction (>= 1); dirty items carry it.
    fn trans_seq(&self) -> u64;

    /// Persistent items around `key`, bounded by `[lo, hi]` (the caller's
    /// lock range; `lo <= key <= hi`). See the module contract.
    fn read_items<'a>(&'a self, key: Key, lo: Key, hi: Key) -> BoxFut<'a, FsResult<ReadBatch>>;

    /// Up to `want` fresh inode numbers (never reused, never 0 or 1).
    fn alloc_inodes<'a>(&'a self, want: u64) -> BoxFut<'a, FsResult<InoRange>>;

    /// Between 1 and `want` contiguous free data blocks. `ENOBUFS`: commit
    /// and retry; `ENOSPC`: the volume is full.
    fn alloc_data<'a>(&'a self, want: u64) -> BoxFut<'a, FsResult<DataRun>>;

    /// Return blocks; reusable only after the next commit is durable.
    fn free_data<'a>(&'a self, run: DataRun) -> BoxFut<'a, FsResult<()>>;

    /// The backend's own reasons to commit soon (allocators near empty,
    /// log btree large); checked before each operation.
    fn needs_commit(&self) -> bool;

    /// Metadata space is at the reserve: operations that add items fail
    /// with `ENOSPC`, deletions proceed.
    fn meta_low(&self) -> bool;

    fn statfs<'a>(&'a self) -> BoxFut<'a, FsResult<BackendStatfs>>;

    /// Make the set durable and open the next transaction (new
    /// [`Self::trans_seq`]).
    fn commit<'a>(&'a self, set: CommitSet) -> BoxFut<'a, FsResult<()>>;

    /// The highest seq no open transaction can still add items at
    /// (scoutfs: the server's stable or `committed_seq`): inode index
    /// walks stop there, so an agent that processed everything up to it
    /// never misses a change committed later. Alone on a volume that is
    /// the seq before the open transaction's; a backend sharing the
    /// volume answers the server's figure (one less than the oldest open
    /// transaction of any mount).
    fn stable_seq<'a>(&'a self) -> BoxFut<'a, FsResult<u64>> {
        let s = self.trans_seq().saturating_sub(1);
        Box::pin(async move { Ok(s) })
    }

    /// Make the next [`Self::read_items`] see every commit made so far,
    /// by any mount, without a lock (a backend sharing the volume fetches
    /// fresh roots; alone on a volume there is nothing to do). For reads
    /// that take no cluster lock, like `.totl.` totals.
    fn refresh_reads(&self) {}
    /// The inodes in `[first_ino, last_ino]` whose committed srch entries
    /// of `hash` leave an entry set (an odd count of some `(ino, id)`):
    /// the candidates of a search, which may include inodes that no
    /// longer have the xattr (or a colliding name). At most `cap` entries
    /// are kept: the answer's `last_ino` tells how far it covers. A
    /// backend that keeps no srch files answers `EOPNOTSUPP`.
    fn srch_candidates<'a>(
        &'a self,
        hash: u64,
        first_ino: u64,
        last_ino: u64,
        cap: usize,
    ) -> BoxFut<'a, FsResult<SrchCandidates>> {
        let _ = (hash, first_ino, last_ino, cap);
        Box::pin(async { Err(Errno::EOPNOTSUPP) })
    }
}

/// The answer of [`Backend::srch_candidates`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SrchCandidates {
    /// Ascending, unique.
    pub inos: Vec<u64>,
    /// The candidates are complete up to this inode (the request's last
    /// unless the entry set was capped).
    pub last_ino: u64,
}

pub use crate::cluster::lock::{LOCK_INODE_GROUP_NR, LOCK_SEQ_GROUP_NR};

/// The key range of the cluster lock that covers `key` (the geometry lives
/// in [`LockRange::covering`]). Item reads are bounded by it, and log-tree
/// bloom filters are keyed by its start.
pub fn lock_range(key: &Key) -> (Key, Key) {
    let r = LockRange::covering(key);
    (r.start, r.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::key::ty;

    #[test]
    fn lock_ranges_follow_scoutfs_groups() {
        let (s, e) = lock_range(&Key::fs(5000, ty::DIRENT, 7, 8));
        assert_eq!(s, Key::new(16, 4096, 0, 0, 0, 0));
        assert_eq!(e.first, 5119);
        assert!(s <= Key::fs(5000, 0, 0, 0) && Key::fs(5119, 255, 1, 1) <= e);
        let (s, e) = lock_range(&Key::new(4, 0, 8, 2050, 77, 0));
        assert_eq!((s.ty, s.second, e.second), (8, 2048, 3071));
        let (s, e) = lock_range(&Key::new(8, 0, 4, 99, 0, 0));
        assert_eq!((s.zone, s.ty, s.second), (8, 4, 0));
        assert_eq!((e.zone, e.ty, e.first, e.second), (8, 4, 0, u64::MAX));
    }
}
