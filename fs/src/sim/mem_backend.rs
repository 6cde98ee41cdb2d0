//! An in-memory [`Backend`]: the persistent state of a volume kept in a
//! `BTreeMap` ([`MemStore`], which outlives mounts) and the per-mount
//! transaction state ([`MemBackend`]: data blocks allocated and freed in
//! the open transaction). Used by the POSIX tests, the benches and early
//! front-end work; the forest/log-btree backend replaces it on real
//! volumes.
//!
//! "Commit" merges the dirty items into the store, the version with the
//! highest seq winning as in a forest read (ties: the later commit). Items
//! may carry a seq above their transaction's (a cluster lock's
//! `write_seq`); the next transaction's seq then starts above it, as the
//! server's seq counter does. Dropping a
//! `MemBackend` without committing is a crash: its uncommitted data
//! allocations go back to the free pool, its frees are forgotten (the
//! blocks are still mapped by the committed items).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::future::ready;

use crate::errno::{Errno, FsResult};
use crate::format::items::{inode_index_key, inode_key, InodeItem, TotlVal, DIRENT_FIRST_POS};
use crate::format::key::{ty, zone, Key};
use crate::format::{DATA_DEV_START_BLKNO, ROOT_INO};
use crate::posix::backend::{
    Backend, BackendStatfs, BoxFut, CommitSet, DataRun, InoRange, ReadBatch, SrchCandidates,
    SrchEntry, Value,
};
use crate::posix::types::S_IFDIR;
use crate::runtime::env::Timespec;

/// What a fresh in-memory volume looks like.
#[derive(Clone, Debug)]
pub struct MemMkfs {
    pub fmt_vers: u64,
    /// Blocks of the data device (4 KiB); allocation starts at block 64.
    pub data_blocks: u64,
    /// Reported metadata size (64 KiB blocks).
    pub meta_blocks: u64,
    pub now: Timespec,
    pub uuid: [u8; 16],
}

impl Default for MemMkfs {
    fn default() -> Self {
        MemMkfs {
            fmt_vers: 2,
            data_blocks: 1 << 20,
            meta_blocks: 1 << 16,
            now: Timespec::default(),
            uuid: *b"scoutvm-memstore",
        }
    }
}

struct StoreInner {
    fmt_vers: u64,
    uuid: [u8; 16],
    items: BTreeMap<Key, Value>,
    /// Seqs of the keys whose last version (deletions too) carries a seq
    /// above its commit's; every other key's last version is older than
    /// any transaction still to commit.
    ahead_seqs: BTreeMap<Key, u64>,
    /// Seq of the last commit (`super.seq`), or the highest item seq when
    /// that is higher.
    seq: u64,
    next_ino: u64,
    inode_count: u64,
    /// Free data extents: start -> len.
    data_free: BTreeMap<u64, u64>,
    data_blocks: u64,
    meta_blocks: u64,
    srch: Vec<SrchEntry>,
    commits: u64,
    item_bytes: u64,
    stale_versions: u64,
}

impl StoreInner {
    /// Apply one version of `key` from a commit at `commit_seq`: the
    /// highest seq wins, ties go to the later commit.
    fn apply(&mut self, key: Key, seq: u64, val: Option<Value>, commit_seq: u64) {
        if self.ahead_seqs.get(&key).is_some_and(|s| *s > seq) {
            self.stale_versions += 1;
            return;
        }
        if seq > commit_seq {
            self.ahead_seqs.insert(key, seq);
        } else {
            self.ahead_seqs.remove(&key);
        }
        let old = match val {
            Some(v) => {
                self.item_bytes += 56 + v.len() as u64;
                self.items.insert(key, v)
            }
            None => self.items.remove(&key),
        };
        if let Some(o) = old {
            self.item_bytes -= 56 + o.len() as u64;
        }
    }
}

/// The durable state of an in-memory volume. Shared by every mount of it.
pub struct MemStore {
    inner: RefCell<StoreInner>,
    /// Items per read answer (like a leaf's worth).
    read_window: Cell<usize>,
}

/// Items the answer to one read carries at most.
pub const DEFAULT_READ_WINDOW: usize = 256;

impl MemStore {
    /// A new volume: root directory (ino 1, 0755, nlink 2) and its
    /// META_SEQ index item, as the reference mkfs writes them.
    pub fn mkfs(p: MemMkfs) -> Rc<MemStore> {
        assert!(p.fmt_vers == 1 || p.fmt_vers == 2);
        assert!(p.data_blocks > DATA_DEV_START_BLKNO);
        let root = InodeItem {
            nlink: 2,
            mode: S_IFDIR | 0o755,
            next_readdir_pos: DIRENT_FIRST_POS,
            atime: p.now,
            ctime: p.now,
            mtime: p.now,
            crtime: p.now,
            ..InodeItem::default()
        };
        let mut items = BTreeMap::new();
        items.insert(
            inode_index_key(ty::INODE_INDEX_META_SEQ, 0, ROOT_INO),
            Value::from(&[][..]),
        );
        let root_val = root.encode(p.fmt_vers);
        items.insert(inode_key(ROOT_INO), Value::from(&root_val[..]));
        let mut data_free = BTreeMap::new();
        data_free.insert(DATA_DEV_START_BLKNO, p.data_blocks - DATA_DEV_START_BLKNO);
        let item_bytes = items.values().map(|v: &Value| 56 + v.len() as u64).sum();
        Rc::new(MemStore {
            inner: RefCell::new(StoreInner {
                fmt_vers: p.fmt_vers,
                uuid: p.uuid,
                items,
                ahead_seqs: BTreeMap::new(),
                seq: 1,
                next_ino: 1024,
                inode_count: 1,
                data_free,
                data_blocks: p.data_blocks,
                meta_blocks: p.meta_blocks,
                srch: Vec::new(),
                commits: 0,
                item_bytes,
                stale_versions: 0,
            }),
            read_window: Cell::new(DEFAULT_READ_WINDOW),
        })
    }

    pub fn set_read_window(&self, n: usize) {
        self.read_window.set(n.max(1));
    }

    /// A copy of every committed item.
    pub fn items(&self) -> BTreeMap<Key, Vec<u8>> {
        self.inner
            .borrow()
            .items
            .iter()
            .map(|(k, v)| (*k, v.to_vec()))
            .collect()
    }

    /// Overwrite (or with `None` remove) a committed item: corruption and
    /// recovery tests.
    pub fn put_raw(&self, key: Key, val: Option<&[u8]>) {
        let mut st = self.inner.borrow_mut();
        match val {
            Some(v) => {
                st.items.insert(key, Value::from(v));
            }
            None => {
                st.items.remove(&key);
            }
        }
    }

    /// Store a version of `key` at `seq` as another mount's commit would
    /// (`None`: a deletion), if no newer version is there.
    pub fn put_at_seq(&self, key: Key, val: Option<&[u8]>, seq: u64) {
        let mut st = self.inner.borrow_mut();
        let commit_seq = st.seq;
        st.apply(key, seq, val.map(Value::from), commit_seq);
        st.seq = st.seq.max(seq);
    }

    /// The seq of `key`'s last version when it is above its commit's.
    pub fn ahead_seq(&self, key: &Key) -> Option<u64> {
        self.inner.borrow().ahead_seqs.get(key).copied()
    }

    /// Versions a commit brought that an existing newer one hid.
    pub fn stale_versions(&self) -> u64 {
        self.inner.borrow().stale_versions
    }

    pub fn item(&self, key: &Key) -> Option<Vec<u8>> {
        self.inner.borrow().items.get(key).map(|v| v.to_vec())
    }

    pub fn item_count(&self) -> usize {
        self.inner.borrow().items.len()
    }

    pub fn seq(&self) -> u64 {
        self.inner.borrow().seq
    }

    pub fn commits(&self) -> u64 {
        self.inner.borrow().commits
    }

    pub fn inode_count(&self) -> u64 {
        self.inner.borrow().inode_count
    }

    pub fn free_data_blocks(&self) -> u64 {
        self.inner.borrow().data_free.values().sum()
    }

    /// Committed srch entries, in append order.
    pub fn srch_entries(&self) -> Vec<SrchEntry> {
        self.inner.borrow().srch.clone()
    }

    /// Is any block of `run` free?
    fn overlaps_free(free: &BTreeMap<u64, u64>, run: DataRun) -> bool {
        let end = run.blkno + run.len;
        if let Some((s, l)) = free.range(..end).next_back() {
            return s + l > run.blkno;
        }
        false
    }

    fn insert_free(free: &mut BTreeMap<u64, u64>, run: DataRun) {
        let (mut start, mut len) = (run.blkno, run.len);
        if let Some((&ps, &pl)) = free.range(..start).next_back() {
            if ps + pl == start {
                free.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        if let Some(&nl) = free.get(&(start + len)) {
            free.remove(&(start + len));
            len += nl;
        }
        free.insert(start, len);
    }
}

/// One mount's view of a [`MemStore`]: the open transaction.
pub struct MemBackend {
    store: Rc<MemStore>,
    trans_seq: Cell<u64>,
    allocated: RefCell<Vec<DataRun>>,
    freed: RefCell<Vec<DataRun>>,
    alloc_cursor: Cell<u64>,
    /// Test knobs.
    txn_data_limit: Cell<Option<u64>>,
    txn_data_allocated: Cell<u64>,
    fail_commits: Cell<u32>,
    meta_low: Cell<bool>,
    reads: Cell<u64>,
}

impl MemBackend {
    pub fn new(store: Rc<MemStore>) -> Rc<MemBackend> {
        let seq = store.seq() + 1;
        Rc::new(MemBackend {
            store,
            trans_seq: Cell::new(seq),
            allocated: RefCell::new(Vec::new()),
            freed: RefCell::new(Vec::new()),
            alloc_cursor: Cell::new(0),
            txn_data_limit: Cell::new(None),
            txn_data_allocated: Cell::new(0),
            fail_commits: Cell::new(0),
            meta_low: Cell::new(false),
            reads: Cell::new(0),
        })
    }

    pub fn store(&self) -> &Rc<MemStore> {
        &self.store
    }

    /// Refuse (`ENOBUFS`) data allocations beyond `blocks` per transaction.
    pub fn set_txn_data_limit(&self, blocks: Option<u64>) {
        self.txn_data_limit.set(blocks);
    }

    /// Make the next `n` commits fail with `EIO`.
    pub fn fail_next_commits(&self, n: u32) {
        self.fail_commits.set(n);
    }

    pub fn set_meta_low(&self, low: bool) {
        self.meta_low.set(low);
    }

    pub fn reads(&self) -> u64 {
        self.reads.get()
    }

    fn read_now(&self, key: Key, lo: Key, hi: Key) -> ReadBatch {
        self.reads.set(self.reads.get() + 1);
        let window = self.store.read_window.get();
        let st = self.store.inner.borrow();
        let start = match st.items.range(lo..key).next_back() {
            Some((k, _)) => k.inc(),
            None => lo,
        };
        let items: Vec<(Key, Value)> = st
            .items
            .range(key..=hi)
            .take(window)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let end = if items.len() == window {
            items.last().expect("window > 0").0
        } else {
            hi
        };
        ReadBatch { items, start, end }
    }

    fn alloc_now(&self, want: u64) -> FsResult<DataRun> {
        if want == 0 {
            return Err(Errno::EINVAL);
        }
        let mut want = want;
        if let Some(limit) = self.txn_data_limit.get() {
            let used = self.txn_data_allocated.get();
            if used >= limit {
                return Err(Errno::ENOBUFS);
            }
            want = want.min(limit - used);
        }
        let mut st = self.store.inner.borrow_mut();
        let cursor = self.alloc_cursor.get();
        let pick = st
            .data_free
            .range(..=cursor)
            .next_back()
            .filter(|(s, l)| **s + **l > cursor)
            .map(|(s, l)| (*s, *l))
            .or_else(|| st.data_free.range(cursor..).next().map(|(s, l)| (*s, *l)))
            .or_else(|| st.data_free.iter().next().map(|(s, l)| (*s, *l)));
        let Some((s, l)) = pick else {
            return Err(Errno::ENOSPC);
        };
        st.data_free.remove(&s);
        let at = if s <= cursor && cursor < s + l {
            cursor
        } else {
            s
        };
        if at > s {
            st.data_free.insert(s, at - s);
        }
        let got = want.min(s + l - at);
        if at + got < s + l {
            st.data_free.insert(at + got, s + l - at - got);
        }
        let run = DataRun {
            blkno: at,
            len: got,
        };
        self.alloc_cursor.set(at + got);
        self.txn_data_allocated
            .set(self.txn_data_allocated.get() + got);
        self.allocated.borrow_mut().push(run);
        Ok(run)
    }

    fn free_now(&self, run: DataRun) -> FsResult<()> {
        let st = self.store.inner.borrow();
        let end = run.blkno.checked_add(run.len).ok_or(Errno::EIO)?;
        if run.len == 0 || run.blkno < DATA_DEV_START_BLKNO || end > st.data_blocks {
            return Err(Errno::EIO);
        }
        if MemStore::overlaps_free(&st.data_free, run) {
            return Err(Errno::EIO);
        }
        self.freed.borrow_mut().push(run);
        Ok(())
    }

    fn commit_now(&self, set: CommitSet) -> FsResult<()> {
        if self.fail_commits.get() > 0 {
            self.fail_commits.set(self.fail_commits.get() - 1);
            return Err(Errno::EIO);
        }
        assert_eq!(set.seq, self.trans_seq.get());
        let mut st = self.store.inner.borrow_mut();
        let mut max_seq = set.seq;
        for d in set.items {
            assert!(
                d.seq >= set.seq,
                "a dirty item carries at least the transaction seq"
            );
            max_seq = max_seq.max(d.seq);
            st.apply(d.key, d.seq, d.val, set.seq);
        }
        for t in set.totl {
            debug_assert_eq!(t.key.zone, zone::XATTR_TOTL);
            max_seq = max_seq.max(t.seq);
            let mut cur = match st.items.get(&t.key) {
                Some(v) => TotlVal::decode(v).map_err(|_| Errno::EIO)?,
                None => TotlVal::default(),
            };
            cur.total = cur.total.wrapping_add(t.delta.total);
            cur.count = cur.count.wrapping_add(t.delta.count);
            if cur.total == 0 && cur.count == 0 {
                st.items.remove(&t.key);
            } else {
                st.items.insert(t.key, Value::from(&cur.encode()[..]));
            }
        }
        st.srch.extend(set.srch);
        st.inode_count = st.inode_count.wrapping_add(set.inode_count_delta as u64);
        for run in self.freed.borrow_mut().drain(..) {
            MemStore::insert_free(&mut st.data_free, run);
        }
        self.allocated.borrow_mut().clear();
        // the next transaction's seq is above every seq written
        st.seq = st.seq.max(max_seq);
        st.commits += 1;
        self.trans_seq.set(st.seq + 1);
        self.txn_data_allocated.set(0);
        Ok(())
    }
}

impl Drop for MemBackend {
    fn drop(&mut self) {
        // A crash: what this transaction allocated was never mapped by a
        // committed item.
        let mut st = self.store.inner.borrow_mut();
        for run in self.allocated.borrow_mut().drain(..) {
            MemStore::insert_free(&mut st.data_free, run);
        }
    }
}

impl Backend for MemBackend {
    fn format_version(&self) -> u64 {
        self.store.inner.borrow().fmt_vers
    }

    fn trans_seq(&self) -> u64 {
        self.trans_seq.get()
    }

    fn read_items<'a>(&'a self, key: Key, lo: Key, hi: Key) -> BoxFut<'a, FsResult<ReadBatch>> {
        Box::pin(ready(Ok(self.read_now(key, lo, hi))))
    }

    fn alloc_inodes<'a>(&'a self, want: u64) -> BoxFut<'a, FsResult<InoRange>> {
        let mut st = self.store.inner.borrow_mut();
        let first = st.next_ino;
        let count = want.max(1);
        let r = match first.checked_add(count) {
            Some(next) => {
                st.next_ino = next;
                Ok(InoRange { first, count })
            }
            None => Err(Errno::ENOSPC),
        };
        Box::pin(ready(r))
    }

    fn alloc_data<'a>(&'a self, want: u64) -> BoxFut<'a, FsResult<DataRun>> {
        Box::pin(ready(self.alloc_now(want)))
    }

    fn free_data<'a>(&'a self, run: DataRun) -> BoxFut<'a, FsResult<()>> {
        Box::pin(ready(self.free_now(run)))
    }

    fn needs_commit(&self) -> bool {
        false
    }

    fn meta_low(&self) -> bool {
        self.meta_low.get()
    }

    fn statfs<'a>(&'a self) -> BoxFut<'a, FsResult<BackendStatfs>> {
        let st = self.store.inner.borrow();
        let used_meta = st.item_bytes.div_ceil(1 << 16) + 1;
        let r = BackendStatfs {
            uuid: st.uuid,
            total_meta_blocks: st.meta_blocks,
            free_meta_blocks: st.meta_blocks.saturating_sub(used_meta),
            total_data_blocks: st.data_blocks,
            free_data_blocks: st.data_free.values().sum(),
            inode_count: st.inode_count,
        };
        Box::pin(ready(Ok(r)))
    }

    fn commit<'a>(&'a self, set: CommitSet) -> BoxFut<'a, FsResult<()>> {
        Box::pin(ready(self.commit_now(set)))
    }
    fn srch_candidates<'a>(
        &'a self,
        hash: u64,
        first_ino: u64,
        last_ino: u64,
        cap: usize,
    ) -> BoxFut<'a, FsResult<SrchCandidates>> {
        // the committed entries, toggled in append order
        let mut set = crate::storage::srch_file::SearchSet::new(hash, first_ino, last_ino, cap);
        for e in self.store.inner.borrow().srch.iter() {
            set.toggle(&crate::format::log::SrchEntry {
                hash: e.hash,
                ino: e.ino,
                id: e.id,
            });
        }
        let r = SrchCandidates {
            inos: set.inos(),
            last_ino: set.last_ino,
        };
        Box::pin(ready(Ok(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_revert_on_crash_and_frees_wait_for_commit() {
        let store = MemStore::mkfs(MemMkfs {
            data_blocks: 1000,
            ..MemMkfs::default()
        });
        let free0 = store.free_data_blocks();
        assert_eq!(free0, 1000 - 64);
        {
            let be = MemBackend::new(store.clone());
            let r = be.alloc_now(100).unwrap();
            assert_eq!(
                r,
                DataRun {
                    blkno: 64,
                    len: 100
                }
            );
            assert_eq!(store.free_data_blocks(), free0 - 100);
        }
        assert_eq!(store.free_data_blocks(), free0, "crash returns allocations");

        let be = MemBackend::new(store.clone());
        let r = be.alloc_now(10).unwrap();
        be.commit_now(CommitSet {
            seq: be.trans_seq(),
            ..CommitSet::default()
        })
        .unwrap();
        be.free_now(r).unwrap();
        // freed but not committed: not reusable
        let r2 = be.alloc_now(2000).unwrap();
        assert!(r2.blkno >= r.blkno + r.len);
        assert_eq!(be.free_now(DataRun { blkno: 5, len: 1 }), Err(Errno::EIO));
        be.free_now(r2).unwrap();
        be.commit_now(CommitSet {
            seq: be.trans_seq(),
            ..CommitSet::default()
        })
        .unwrap();
        assert_eq!(store.free_data_blocks(), free0);
        assert_eq!(store.inner.borrow().data_free.len(), 1, "frees coalesce");
        assert_eq!(be.free_now(r), Err(Errno::EIO), "double free is caught");
    }

    #[test]
    fn mkfs_matches_reference_layout() {
        let store = MemStore::mkfs(MemMkfs::default());
        let items = store.items();
        let keys: Vec<String> = items.keys().map(|k| alloc::format!("{k}")).collect();
        assert_eq!(keys, ["4.0.4.0.1.0", "16.1.4.0.0.0"]);
        let root = InodeItem::decode(&items[&inode_key(1)]).unwrap();
        assert_eq!(
            (root.nlink, root.mode, root.next_readdir_pos),
            (2, 0o40755, 2)
        );
        assert_eq!(items[&inode_key(1)].len(), 168);
    }
}
