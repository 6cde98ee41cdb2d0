//! `Mount`: a mounted filesystem and its POSIX operations.
//!
//! Owns the glue between callers (9P server, FUSE mount, admin shell) and
//! the items: permission checks in Linux's order, the transaction holds
//! around each operation, open counts and the deletion of unlinked inodes
//! at last close (or at the next mount, through their orphan items), and
//! the commit policy (size, time, sync). Calls `dir`, `inode`, `xattr`,
//! `symlink`, `data`, `orphan` over the `item` cache and the `Backend`.
//!
//! Every operation first takes the cluster locks it needs, through the
//! mount's [`LockProvider`], and only then the transaction hold: a lock
//! grant may need this mount to commit, which a task holding the
//! transaction would block (scoutfs: `EDEADLK`). Locks an operation can
//! only name after reading (the inode behind a name, an inode's index
//! seqs, ancestors) are found under the hold, *before the operation
//! changes anything* (`Op::ready`): the operation lets go of its locks
//! and takes the larger set again, in the order, keeping the hold, when
//! the provider grants it without waiting (`Op::extend`); else it lets go
//! of everything, waits for the larger set and starts over. docs/posix.md
//! lists the locks of each operation.
//!
//! Invariants: every operation that changes items runs under one
//! exclusive [`WriteHold`] and leaves the items consistent before any await
//! that could commit (`checkpoint`); every item it changes lies in a lock
//! it holds in a writable mode; no `RefCell` borrow is held across an
//! await; errors are Linux errno values.

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::cluster::lock::{
    HeldLocks, LocalLocks, LockMode, LockProvider, LockRange, LockRequest, LockSet, LockSink,
};
use crate::cluster::msg::{omap_set, omap_test, OmapBits, OMAP_GROUP_INODES, OMAP_WORDS};
use crate::counter;
use crate::errno::{Errno, FsResult};
use crate::format::hash::fnv1a64;
use crate::format::items::{
    indx_key, indx_key_fields, inode_index_key, totl_key, DataExtent, TotlVal, DIRENT_LAST_POS,
    INO_FLAG_TRUNCATE, SEF_OFFLINE,
};
use crate::format::key::{ty, zone, Key};
use crate::format::{
    NAME_LEN_MAX, ROOT_INO, SM_BLOCK_SIZE, SYMLINK_MAX_SIZE, XATTR_NAME_MAX, XATTR_SIZE_MAX,
};
use crate::posix::archive::{
    self, Blocked, DataWaiters, InoPath, MoveBlocks, ReferringEntry, SetAttrMore, StatMore,
    WaitingEntry, WalkEntry, WalkIndex, DWO_CHANGE_SIZE, DWO_READ, DWO_WRITE, MB_STAGE,
};
use crate::posix::backend::{Backend, DataRun, InoRange, SrchCandidates};
use crate::posix::data::{self, DataCtx, LAST_BLOCK, MAX_FILE_SIZE};
use crate::posix::dir;
use crate::posix::hold::{CommitPolicy, HoldLock, ReadHold, WriteHold};
use crate::posix::inode::{self, Inode};
use crate::posix::item::{CacheUsage, ItemCache, ItemCounters, DEFAULT_CACHE_BUDGET_BYTES};
use crate::posix::orphan::{self, OthersOpen};
use crate::posix::perm;
use crate::posix::symlink;
use crate::posix::types::*;
use crate::posix::xattr::{self, Namespace};
use crate::runtime::env::{Clock, Timespec};
use crate::storage::dev::BlockDev;

const BS: u64 = SM_BLOCK_SIZE as u64;
/// Most links an inode may have (scoutfs: S32_MAX).
pub const LINK_MAX: u32 = i32::MAX as u32;
/// Inode numbers asked of the backend at a time (scoutfs: 10 lock groups).
pub const INO_BATCH: u64 = 10 * 1024;
/// Items deleted, extents punched or preallocated per step of a long
/// operation; a commit may happen between steps.
pub const STEP_ITEMS: usize = 512;
/// Deepest directory nesting an ancestor walk follows before calling the
/// tree corrupt.
pub const MAX_DEPTH: usize = 1 << 20;
/// Times an operation may start over with a larger lock set (each start
/// adds at least one lock; an ancestor walk adds one per lock group it
/// passes) before it gives up with `EIO`.
pub const MAX_RELOCKS: usize = 1 << 16;

/// Tunables of a mount.
#[derive(Clone, Copy, Debug)]
pub struct MountOptions {
    /// Memory for clean cached items.
    pub cache_budget_bytes: usize,
    pub commit: CommitPolicy,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            cache_budget_bytes: DEFAULT_CACHE_BUDGET_BYTES,
            commit: CommitPolicy::default(),
        }
    }
}

/// Counters of a mount (monotonic), with the item cache's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountCounters {
    pub commits: u64,
    pub commit_errors: u64,
    pub commits_on_size: u64,
    pub commits_on_time: u64,
    pub commits_for_backend: u64,
    /// search-xattrs candidates that did not have the xattr.
    pub srch_false_candidates: u64,
    pub inodes_deleted: u64,
    /// Orphans a scan tried to delete.
    pub orphans_found: u64,
    /// Orphans deleted by a scan (at mount or by the orphan scanner).
    pub orphans_deleted: u64,
    /// Unlinked inodes left alone because another mount has them open.
    pub orphans_kept: u64,
    /// Orphan scans run.
    pub orphan_scans: u64,
    /// Open maps asked of the server; the ones that failed (the inode
    /// is then kept: the scanner tries again).
    pub omap_queries: u64,
    pub omap_errors: u64,
    pub enobufs_commits: u64,
    /// Lock sets acquired through the provider.
    pub lock_acquisitions: u64,
    /// Operations that started over with a larger lock set.
    pub relocks: u64,
    /// Operations that took the locks they found under the hold in place,
    /// granted without waiting, instead of starting over.
    pub lock_extends: u64,
    /// Locks taken part way through an operation (its hold parked).
    pub park_relocks: u64,
    /// Acquisitions refused because the task held the transaction
    /// (`EDEADLK`; a bug).
    pub locks_in_hold: u64,
    /// Provider answers that did not grant what was asked (`EIO`).
    pub bad_grants: u64,
    pub items: ItemCounters,
}

/// A mounted filesystem.
pub struct Mount {
    backend: Rc<dyn Backend>,
    data_dev: Rc<dyn BlockDev>,
    clock: Rc<dyn Clock>,
    items: ItemCache,
    txn: HoldLock,
    locks: Rc<dyn LockProvider>,
    policy: CommitPolicy,
    /// Open counts by inode.
    open: RefCell<BTreeMap<Ino, u32>>,
    /// On a cluster: the other mounts' open maps (the server's union).
    /// `None` alone on a volume: the local open counts are the truth.
    omap: Option<Rc<dyn OthersOpen>>,
    inos: Cell<InoRange>,
    /// Changed in place (`count`): no copy of the whole set per event.
    counters: RefCell<MountCounters>,
    /// Operations waiting for offline data to be staged.
    waiters: DataWaiters,
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() {
        return Err(Errno::ENOENT);
    }
    if name.len() > NAME_LEN_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// Clear setuid, and setgid when group-exec is set (what Linux does when a
/// file changes owner, or is written or truncated by a non-root caller).
fn kill_suid(mode: u32) -> u32 {
    let mut m = mode & !S_ISUID;
    if m & (S_ISGID | 0o010) == (S_ISGID | 0o010) {
        m &= !S_ISGID;
    }
    m
}

/// The locks of one inode's group.
fn inode_lock(ino: Ino, mode: LockMode) -> LockSet {
    LockSet::new().with(LockRange::inode_group(ino), mode)
}

/// In debug builds a panic, in release builds the caller's errno: for
/// states only a bug reaches.
fn bug(what: &str) {
    if cfg!(debug_assertions) {
        panic!("{what}");
    }
}

/// Which transaction hold an operation takes once its locks are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HoldKind {
    /// Shared: reads only.
    Read,
    /// Exclusive: the operation changes items.
    Write,
    /// Exclusive, but may run inside a parked operation: a commit.
    Commit,
}

/// Why an operation's body stopped early.
enum Stop {
    Errno(Errno),
    /// It needs locks it does not hold (`Op::want`); nothing changed yet.
    Relock,
}

impl From<Errno> for Stop {
    fn from(e: Errno) -> Stop {
        Stop::Errno(e)
    }
}

type OpResult<T> = Result<T, Stop>;

/// What an operation found it needs, by class: each class is acquired as
/// one set, the rename lock and inode groups first.
#[derive(Default)]
struct Want {
    inodes: LockSet,
    /// Index, orphan and xattr zones.
    zones: LockSet,
}

impl Want {
    fn new(mut set: LockSet) -> Want {
        let zones = set.split_off_zones();
        Want { inodes: set, zones }
    }

    fn class(&mut self, inode_class: bool) -> &mut LockSet {
        if inode_class {
            &mut self.inodes
        } else {
            &mut self.zones
        }
    }
}

impl LockSink for Want {
    fn add_lock(&mut self, range: LockRange, mode: LockMode) {
        self.class(range.is_inode_class()).add(range, mode);
    }
}

/// One operation: its cluster locks and, once they are all held, its
/// transaction hold. Dropping it releases the hold, then the locks.
struct Op<'m> {
    m: &'m Mount,
    // the holds come first: fields drop in order, the hold before the locks
    write: Option<WriteHold<'m>>,
    read: Option<ReadHold<'m>>,
    /// Rename lock and inode groups: held from start to end.
    inode_locks: HeldLocks,
    /// Index, orphan and xattr zones: let go and taken again when a commit
    /// part way moves the transaction seq into another index group.
    zone_locks: HeldLocks,
    /// Everything the operation found it needs (more than it holds when
    /// it must extend its locks or start over).
    want: Want,
    /// `want` has requests the held locks may not serve (each `need`
    /// checks its own; `ready` then looks at all of them).
    lacking: bool,
    /// It stores inodes: after a commit part way, their next index items
    /// go to the new transaction seq.
    stores_inodes: bool,
    /// The item cache knows this op's locks (an exclusive, changing op).
    installed: bool,
    /// The item cache's `dirtied` count when the hold was taken: starting
    /// over is only sound before any change.
    dirtied_at_hold: u64,
}

impl LockSink for Op<'_> {
    fn add_lock(&mut self, range: LockRange, mode: LockMode) {
        self.need(range, mode);
    }
}

impl<'m> Op<'m> {
    fn new(m: &'m Mount, want: Want) -> Op<'m> {
        Op {
            m,
            write: None,
            read: None,
            inode_locks: HeldLocks::empty(),
            zone_locks: HeldLocks::empty(),
            want,
            lacking: false,
            stores_inodes: false,
            installed: false,
            dirtied_at_hold: 0,
        }
    }

    /// Take the wanted locks (rename and inode groups, then the rest),
    /// then the hold; an exclusive hold commits first when one is due.
    async fn begin(&mut self, kind: HoldKind) -> FsResult<()> {
        for inode_class in [true, false] {
            // at once when the provider can (no future to build and poll)
            if !self.want.class(inode_class).is_empty() && !self.try_lock_wanted(inode_class) {
                self.lock_wanted(inode_class).await?;
            }
        }
        let m = self.m;
        match kind {
            HoldKind::Read => self.read = Some(m.txn.read().await),
            HoldKind::Commit => self.write = Some(m.txn.commit().await),
            HoldKind::Write => {
                self.write = Some(m.txn.write().await);
                self.install();
                m.commit_if_due(self.hold()).await?;
            }
        }
        self.dirtied_at_hold = m.items.counters().dirtied;
        Ok(())
    }

    fn need(&mut self, range: LockRange, mode: LockMode) {
        if mode == LockMode::Null {
            return;
        }
        let inode_class = range.is_inode_class();
        let mode = self.want.class(inode_class).add(range, mode);
        if !self.lacking && !self.held(inode_class).serves(&LockRequest { range, mode }) {
            self.lacking = true;
        }
    }

    fn need_inode(&mut self, ino: Ino, mode: LockMode) {
        self.need(LockRange::inode_group(ino), mode);
    }

    /// `store` of `i` will run (at the current transaction seq).
    fn need_store(&mut self, i: &Inode) {
        inode::store_locks(i, self.m.backend.trans_seq(), self);
        self.stores_inodes = true;
    }

    /// A new inode of `mode` will be created.
    fn need_create(&mut self, mode: u32) {
        inode::create_locks(mode, self.m.backend.trans_seq(), self);
    }

    /// `delete_inode` may run: its orphan item, the `.totl.` deltas and
    /// `.indx.` items of its xattrs, and its index items (as `i` has them).
    fn need_deletion(&mut self, i: Option<&Inode>) {
        self.need(LockRange::orphan(), LockMode::WriteOnly);
        self.need(LockRange::xattr_totl(), LockMode::WriteOnly);
        self.need(LockRange::xattr_indx(), LockMode::WriteOnly);
        if let Some(i) = i {
            inode::delete_locks(i, self);
        }
    }

    /// The guard of one class.
    fn held(&self, inode_class: bool) -> &HeldLocks {
        if inode_class {
            &self.inode_locks
        } else {
            &self.zone_locks
        }
    }

    fn covered(&self) -> bool {
        self.want.inodes.granted_by(self.inode_locks.grants())
            && self.want.zones.granted_by(self.zone_locks.grants())
    }

    /// Are all the locks found so far held? If not, the larger set is
    /// taken in place when the provider grants it at once
    /// ([`Self::extend`]), else the operation starts over with it: call it
    /// before the first change.
    fn ready(&mut self) -> OpResult<()> {
        // `lacking` is exact: `need` checked each request against the held
        // locks, and only `extend` and `follow_trans_seq` add held locks
        if !self.lacking || self.extend() {
            self.lacking = false;
            Ok(())
        } else {
            Err(Stop::Relock)
        }
    }

    /// Take the missing locks under the hold, without waiting, or report
    /// that the operation must start over.
    ///
    /// It makes the acquisitions a restart would make, in the same order,
    /// but keeps the hold and asks only [`LockProvider::try_acquire`]: it
    /// lets go of its locks (just the zone locks when only those lack)
    /// and takes the wanted sets again, the rename lock and inode groups,
    /// then the zones, each only if granted at once. A try never waits,
    /// so holding the transaction meanwhile can block no grant (a wait
    /// under the hold could: the grant may need this mount's commit), and
    /// every acquisition sorts after every lock still held. Nothing has
    /// changed yet (checked), and nothing runs between the letting go and
    /// the taking again: a grant taken again from the provider's cache is
    /// the one the operation read under. A refusal part way leaves the
    /// operation to start over, as without the try.
    fn extend(&mut self) -> bool {
        if self.m.items.counters().dirtied != self.dirtied_at_hold {
            return false;
        }
        let inodes_held = self.want.inodes.granted_by(self.inode_locks.grants());
        // the zones sort after every inode group: let go of them first
        self.zone_locks = HeldLocks::empty();
        if !inodes_held {
            self.inode_locks = HeldLocks::empty();
        }
        for inode_class in [true, false] {
            let held = inode_class && inodes_held;
            if !held
                && !self.want.class(inode_class).is_empty()
                && !self.try_lock_wanted(inode_class)
            {
                return false;
            }
        }
        if self.installed {
            self.install();
        }
        self.m.count(|c| c.lock_extends += 1);
        true
    }

    fn hold(&self) -> &WriteHold<'m> {
        self.write.as_ref().expect("an exclusive operation")
    }

    fn install(&mut self) {
        // nearly in key order (the cache sorts by start key): the zones
        // sort before the FS zone, the rename lock after it
        self.m.items.set_op_locks(
            self.zone_locks
                .grants()
                .iter()
                .chain(self.inode_locks.grants()),
        );
        self.installed = true;
    }

    /// Acquire one class of locks. Never while holding the transaction: a
    /// grant may need this mount's commit, and that waits for the hold.
    async fn lock(&mut self, set: &LockSet) -> FsResult<()> {
        if self.write.is_some() || self.read.is_some() {
            self.m.count(|c| c.locks_in_hold += 1);
            bug("a lock acquired while holding the transaction");
            return Err(Errno::EDEADLK);
        }
        let Some(first) = set.requests().first() else {
            return Ok(());
        };
        let inode_class = first.range.is_inode_class();
        // granted at once (no boxed future) when the provider can
        let held = match self.m.try_acquire(set) {
            Some(held) => held,
            None => self.m.acquire(set).await?,
        };
        if inode_class {
            self.inode_locks = held;
        } else {
            self.zone_locks = held;
        }
        Ok(())
    }

    /// Acquire the wanted locks of one class if the provider grants them
    /// at once; none of that class is held, nor any that sorts after it.
    fn try_lock_wanted(&mut self, inode_class: bool) -> bool {
        let Some(held) = self.m.try_acquire(self.want.class(inode_class)) else {
            return false;
        };
        if inode_class {
            self.inode_locks = held;
        } else {
            self.zone_locks = held;
        }
        true
    }

    /// Acquire the wanted locks of one class.
    async fn lock_wanted(&mut self, inode_class: bool) -> FsResult<()> {
        let set = core::mem::take(self.want.class(inode_class));
        let locked = self.lock(&set).await;
        *self.want.class(inode_class) = set;
        locked
    }

    /// Between steps of a long operation (the items are consistent):
    /// commit if due.
    async fn checkpoint(&mut self) -> FsResult<()> {
        if self.m.commit_if_due(self.hold()).await? {
            self.follow_trans_seq().await?;
        }
        Ok(())
    }

    /// Commit part way (the items are consistent).
    async fn commit(&mut self, force: bool) -> FsResult<()> {
        self.m.commit_locked(self.hold(), force).await?;
        self.follow_trans_seq().await
    }

    /// After a commit inside the operation the inodes it stores next get
    /// index items at the new transaction seq: take their locks if the
    /// held ones miss them. The hold is parked meanwhile (commits may run,
    /// nothing else), and the zone locks are let go and taken again so
    /// that they are still acquired after the inode locks.
    async fn follow_trans_seq(&mut self) -> FsResult<()> {
        if !self.stores_inodes {
            return Ok(());
        }
        for _ in 0..MAX_RELOCKS {
            let seq = self.m.backend.trans_seq();
            inode::create_locks(S_IFREG, seq, &mut self.want);
            if self.covered() {
                self.lacking = false;
                return Ok(());
            }
            self.m.count(|c| c.park_relocks += 1);
            self.m.items.clear_op_locks();
            let parked = self.write.take().expect("an exclusive operation").park();
            self.zone_locks = HeldLocks::empty();
            let locked = self.lock_wanted(false).await;
            self.write = Some(parked.resume().await);
            self.install();
            locked?;
        }
        Err(Errno::EIO)
    }
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        if self.installed {
            self.m.items.clear_op_locks();
        }
    }
}

impl Mount {
    /// Mount over `backend`, with file data on `data_dev`, alone on the
    /// volume (every cluster lock is granted at once). Checks the root
    /// directory and deletes orphaned inodes left by a previous mount.
    pub async fn mount(
        backend: Rc<dyn Backend>,
        data_dev: Rc<dyn BlockDev>,
        clock: Rc<dyn Clock>,
        opts: MountOptions,
    ) -> FsResult<Mount> {
        Self::mount_with_locks(backend, data_dev, clock, opts, Rc::new(LocalLocks::new())).await
    }

    /// [`Self::mount`], taking cluster locks from `locks`.
    pub async fn mount_with_locks(
        backend: Rc<dyn Backend>,
        data_dev: Rc<dyn BlockDev>,
        clock: Rc<dyn Clock>,
        opts: MountOptions,
        locks: Rc<dyn LockProvider>,
    ) -> FsResult<Mount> {
        Self::mount_inner(backend, data_dev, clock, opts, locks, None).await
    }

    /// [`Self::mount_with_locks`] for a mount among others: an unlinked
    /// inode is deleted only when no other mount has it open (`omap`,
    /// the server's union of their open maps), orphans included.
    pub async fn mount_on_cluster(
        backend: Rc<dyn Backend>,
        data_dev: Rc<dyn BlockDev>,
        clock: Rc<dyn Clock>,
        opts: MountOptions,
        locks: Rc<dyn LockProvider>,
        omap: Rc<dyn OthersOpen>,
    ) -> FsResult<Mount> {
        Self::mount_inner(backend, data_dev, clock, opts, locks, Some(omap)).await
    }

    async fn mount_inner(
        backend: Rc<dyn Backend>,
        data_dev: Rc<dyn BlockDev>,
        clock: Rc<dyn Clock>,
        opts: MountOptions,
        locks: Rc<dyn LockProvider>,
        omap: Option<Rc<dyn OthersOpen>>,
    ) -> FsResult<Mount> {
        let items = ItemCache::new(backend.clone(), clock.clone(), opts.cache_budget_bytes);
        let m = Mount {
            backend,
            data_dev,
            clock,
            items,
            txn: HoldLock::new(),
            locks,
            policy: opts.commit,
            open: RefCell::new(BTreeMap::new()),
            omap,
            inos: Cell::new(InoRange { first: 0, count: 0 }),
            counters: RefCell::new(MountCounters::default()),
            waiters: DataWaiters::new(),
        };
        let root = m
            .run(
                HoldKind::Read,
                inode_lock(ROOT_INO, LockMode::Read),
                async |_| Ok(inode::load(&m.items, ROOT_INO).await?),
            )
            .await
            .map_err(|e| if e == Errno::ENOENT { Errno::EIO } else { e })?;
        if !root.is_dir() {
            return Err(Errno::EIO);
        }
        m.delete_orphans().await?;
        Ok(m)
    }

    /// Commit everything and unmount.
    pub async fn unmount(self) -> FsResult<()> {
        self.sync().await
    }

    fn count(&self, f: impl FnOnce(&mut MountCounters)) {
        f(&mut self.counters.borrow_mut());
    }

    pub fn counters(&self) -> MountCounters {
        let mut c = *self.counters.borrow();
        c.items = self.items.counters();
        c
    }

    pub fn cache_usage(&self) -> CacheUsage {
        self.items.usage()
    }

    /// Drop every clean cached item (they are read again on demand).
    pub fn evict_clean_cache(&self) {
        self.items.evict_clean();
    }

    /// Forget the cached items of `range` (its cluster lock went to NULL:
    /// another mount may change them now). Dirty items stay; returns how
    /// many there were (after the lock's commit: none).
    pub fn drop_cached_range(&self, range: &LockRange) -> usize {
        let dropped = self.items.drop_range(range.start, range.end);
        // another node wants an inode group: it may stage into offline
        // extents that readers here wait on, so they look again (once the
        // lock comes back) rather than wait for a local stage
        if range.start.zone == crate::format::key::zone::FS {
            self.waiters.wake_inodes(range.start.first, range.end.first);
        }
        dropped
    }

    /// Is anything waiting to be committed?
    pub fn is_dirty(&self) -> bool {
        self.items.is_dirty()
    }

    /// Monotonic time (ns) by which [`Self::tick`] should run to commit the
    /// open transaction on time, if it has changes.
    pub fn next_commit_deadline_ns(&self) -> Option<u64> {
        self.items
            .first_dirty_ns()
            .map(|t| t.saturating_add(self.policy.interval_ns))
    }

    fn now(&self) -> Timespec {
        self.clock.wall()
    }

    fn dctx(&self) -> DataCtx<'_> {
        DataCtx {
            items: &self.items,
            backend: &*self.backend,
            dev: &*self.data_dev,
        }
    }

    fn store(&self, i: &mut Inode) {
        inode::store(&self.items, &*self.backend, i);
    }

    fn is_open(&self, ino: Ino) -> bool {
        self.open.borrow().get(&ino).is_some_and(|n| *n > 0)
    }

    /// Which inodes of group `group_nr` (`ino >> 10`) this mount has open:
    /// its answer to the server's OPEN_INO_MAP.
    pub fn open_map(&self, group_nr: u64) -> OmapBits {
        let mut bits = [0; OMAP_WORDS];
        let Some(first) = group_nr.checked_mul(OMAP_GROUP_INODES) else {
            return bits;
        };
        let last = first | (OMAP_GROUP_INODES - 1);
        for (&ino, &n) in self.open.borrow().range(first..=last) {
            if n > 0 {
                omap_set(&mut bits, ino);
            }
        }
        bits
    }

    /// Does another mount have `ino` open? Alone on a volume: no. When
    /// the server cannot tell (an error), yes: the inode stays an orphan
    /// and the orphan scanner tries again.
    async fn open_elsewhere(&self, ino: Ino) -> bool {
        let Some(omap) = &self.omap else {
            return false;
        };
        self.count(|c| c.omap_queries += 1);
        match omap.others_open(ino / OMAP_GROUP_INODES).await {
            Ok(bits) => omap_test(&bits, ino),
            Err(e) => {
                self.count(|c| c.omap_errors += 1);
                log::warn!("mount: open map of inode {ino} unknown ({e:?}): kept");
                true
            }
        }
    }

    /// May an unlinked inode go (its inode group WRITE lock held, its
    /// nlink 0)? Only when no mount has it open (reference invariant 11).
    async fn unlinked_deletable(&self, ino: Ino) -> bool {
        if self.is_open(ino) {
            return false;
        }
        if self.open_elsewhere(ino).await {
            self.count(|c| c.orphans_kept += 1);
            counter!("orphan.kept_open_elsewhere").inc();
            return false;
        }
        true
    }

    // -- transactions --------------------------------------------------------

    fn commit_due(&self) -> bool {
        self.policy.due(
            self.clock.monotonic_ns(),
            self.items.first_dirty_ns(),
            self.items.dirty_bytes(),
            self.backend.needs_commit(),
        )
    }

    // -- locks and holds ------------------------------------------------------

    /// Acquire `set` from the provider without waiting, if it can grant
    /// it so, and check the answer.
    fn try_acquire(&self, set: &LockSet) -> Option<HeldLocks> {
        let held = self.locks.try_acquire(set)?;
        if !set.granted_by(held.grants()) {
            self.count(|c| c.bad_grants += 1);
            return None;
        }
        self.count(|c| c.lock_acquisitions += 1);
        Some(held)
    }

    /// Acquire `set` from the provider and check the answer.
    async fn acquire(&self, set: &LockSet) -> FsResult<HeldLocks> {
        self.count(|c| c.lock_acquisitions += 1);
        let held = self.locks.acquire(set).await?;
        if !set.granted_by(held.grants()) {
            self.count(|c| c.bad_grants += 1);
            return Err(Errno::EIO);
        }
        Ok(held)
    }

    /// `set` and the index groups of the open transaction: the first guess
    /// of an operation that stores inodes (their new index items go
    /// there; only older seqs need more).
    fn storing(&self, mut set: LockSet) -> LockSet {
        inode::create_locks(S_IFREG, self.backend.trans_seq(), &mut set);
        set
    }

    /// Run an operation: take `first`'s locks and the hold, run `body`;
    /// when it finds it needs more locks, let go of everything and start
    /// over with the larger set.
    async fn run<'m, T>(
        &'m self,
        kind: HoldKind,
        first: LockSet,
        mut body: impl AsyncFnMut(&mut Op<'m>) -> OpResult<T>,
    ) -> FsResult<T> {
        let mut want = Want::new(first);
        for _ in 0..MAX_RELOCKS {
            let mut op = Op::new(self, want);
            op.begin(kind).await?;
            match body(&mut op).await {
                Ok(v) => return Ok(v),
                Err(Stop::Errno(e)) => return Err(e),
                Err(Stop::Relock) => {
                    if self.items.counters().dirtied != op.dirtied_at_hold {
                        bug("an operation started over after changing items");
                        return Err(Errno::EIO);
                    }
                    self.count(|c| c.relocks += 1);
                    want = core::mem::take(&mut op.want);
                }
            }
        }
        Err(Errno::EIO)
    }

    /// Commit if due: the items are consistent. Returns whether it did.
    async fn commit_if_due(&self, h: &WriteHold<'_>) -> FsResult<bool> {
        if self.commit_due() {
            let backend_wants = self.backend.needs_commit();
            if backend_wants {
                self.count(|c| c.commits_for_backend += 1);
            } else if self.items.dirty_bytes() >= self.policy.dirty_limit_bytes {
                self.count(|c| c.commits_on_size += 1);
            } else {
                self.count(|c| c.commits_on_time += 1);
            }
            self.commit_locked(h, backend_wants).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Flush the data device, then make the dirty items durable. `force`
    /// commits even with nothing dirty (the backend needs a new
    /// transaction, e.g. to refill its allocators).
    async fn commit_locked(&self, _h: &WriteHold<'_>, force: bool) -> FsResult<()> {
        self.data_dev.flush().map_err(|_| Errno::EIO)?;
        if !force && !self.items.is_dirty() {
            return Ok(());
        }
        let set = self.items.commit_set_stepped().await;
        let nr_items = set.items.len();
        match self.backend.commit(set).await {
            Ok(()) => {
                self.items.commit_done_stepped(nr_items).await;
                self.count(|c| c.commits += 1);
                Ok(())
            }
            Err(e) => {
                self.count(|c| c.commit_errors += 1);
                Err(e)
            }
        }
    }

    /// Commit the open transaction if it is due (time or backend). Callers
    /// run it periodically (see [`Self::next_commit_deadline_ns`]).
    pub async fn tick(&self) -> FsResult<()> {
        if !self.commit_due() {
            return Ok(());
        }
        let h = self.txn.commit().await;
        self.commit_if_due(&h).await.map(|_| ())
    }

    /// Make everything durable. Takes no locks: it may run while an
    /// operation waits for locks part way (a lock grant may ask for it).
    pub async fn sync(&self) -> FsResult<()> {
        let h = self.txn.commit().await;
        self.commit_locked(&h, false).await
    }

    /// Make the inode's changes (with everything else) durable.
    pub async fn fsync(&self, ino: Ino) -> FsResult<()> {
        self.run(
            HoldKind::Commit,
            inode_lock(ino, LockMode::Read),
            async |op| {
                inode::load(&self.items, ino).await?;
                Ok(self.commit_locked(op.hold(), false).await?)
            },
        )
        .await
    }

    /// Is the transaction held (by an operation, a reader or a commit)?
    pub fn transaction_held(&self) -> bool {
        self.txn.is_held()
    }

    /// The inode number the next create gets, if one is at hand without
    /// asking the backend.
    fn next_ino_cached(&self) -> Option<u64> {
        let r = self.inos.get();
        (r.count > 0).then_some(r.first)
    }

    /// The inode number the next create gets (asks the backend for more
    /// when the batch is used up); [`Self::take_ino`] uses it.
    async fn peek_ino(&self) -> FsResult<u64> {
        let mut r = self.inos.get();
        if r.count == 0 {
            r = self.backend.alloc_inodes(INO_BATCH).await?;
            if r.count == 0 || r.first <= ROOT_INO || r.first.checked_add(r.count).is_none() {
                return Err(Errno::EIO);
            }
            self.inos.set(r);
        }
        Ok(r.first)
    }

    fn take_ino(&self, ino: u64) {
        let r = self.inos.get();
        assert!(r.count > 0 && r.first == ino, "take the peeked inode");
        self.inos.set(InoRange {
            first: r.first + 1,
            count: r.count - 1,
        });
    }

    // -- loading -------------------------------------------------------------

    async fn load(&self, ino: Ino) -> FsResult<Inode> {
        inode::load(&self.items, ino).await
    }

    async fn load_dir(&self, ino: Ino) -> FsResult<Inode> {
        let d = self.load(ino).await?;
        if !d.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(d)
    }

    /// The inode a dirent names; a dangling entry is corruption.
    async fn load_target(&self, ino: Ino) -> FsResult<Inode> {
        self.load(ino)
            .await
            .map_err(|e| if e == Errno::ENOENT { Errno::EIO } else { e })
    }

    async fn parent_of(&self, d: &Inode) -> FsResult<Ino> {
        if d.ino == ROOT_INO {
            return Ok(ROOT_INO);
        }
        dir::parent_of(&self.items, d.ino)
            .await?
            .ok_or(Errno::ENOENT)
    }

    /// Is `anc` `ino` or one of its ancestors? Reads each directory's
    /// backref under a READ lock of its group (the rename lock keeps the
    /// tree's shape still meanwhile).
    async fn is_ancestor(&self, op: &mut Op<'_>, anc: Ino, mut ino: Ino) -> OpResult<bool> {
        for _ in 0..MAX_DEPTH {
            if ino == anc {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            op.need_inode(ino, LockMode::Read);
            op.ready()?;
            match dir::parent_of(&self.items, ino).await? {
                Some(p) => ino = p,
                None => return Ok(false),
            }
        }
        Err(Errno::EIO.into())
    }

    /// `may_delete`: can `cred` remove `victim`'s entry from `d`?
    fn may_delete(&self, cred: &Cred, d: &Inode, victim: &Inode, want_dir: bool) -> FsResult<()> {
        perm::check(cred, d.owner(), MAY_WRITE | MAY_EXEC)?;
        if perm::sticky_denies(cred, d.owner(), victim.owner()) {
            return Err(Errno::EPERM);
        }
        match (want_dir, victim.is_dir()) {
            (true, false) => Err(Errno::ENOTDIR),
            (false, true) => Err(Errno::EISDIR),
            _ => Ok(()),
        }
    }

    /// `may_create`: can `cred` add an entry to `d`?
    fn may_create(&self, cred: &Cred, d: &Inode) -> FsResult<()> {
        if d.item.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        perm::check(cred, d.owner(), MAY_WRITE | MAY_EXEC)
    }

    // -- lookup and attributes ------------------------------------------------

    pub async fn lookup(&self, cred: &Cred, dir: Ino, name: &[u8]) -> FsResult<Attr> {
        check_name(name)?;
        self.run(
            HoldKind::Read,
            inode_lock(dir, LockMode::Read),
            async |op| {
                let d = self.load_dir(dir).await?;
                perm::check(cred, d.owner(), MAY_EXEC)?;
                if d.item.nlink == 0 {
                    return Err(Errno::ENOENT.into());
                }
                if name == b"." {
                    return Ok(d.attr());
                }
                let ino = if name == b".." {
                    self.parent_of(&d).await?
                } else {
                    dir::lookup(&self.items, dir, name)
                        .await?
                        .ok_or(Errno::ENOENT)?
                        .ino
                };
                op.need_inode(ino, LockMode::Read);
                op.ready()?;
                Ok(self.load_target(ino).await?.attr())
            },
        )
        .await
    }

    pub async fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        self.run(
            HoldKind::Read,
            inode_lock(ino, LockMode::Read),
            async |_| Ok(self.load(ino).await?.attr()),
        )
        .await
    }

    pub async fn access(&self, cred: &Cred, ino: Ino, mask: u32) -> FsResult<()> {
        if mask & !(MAY_READ | MAY_WRITE | MAY_EXEC) != 0 {
            return Err(Errno::EINVAL);
        }
        self.run(
            HoldKind::Read,
            inode_lock(ino, LockMode::Read),
            async |_| {
                let i = self.load(ino).await?;
                Ok(perm::check(cred, i.owner(), mask)?)
            },
        )
        .await
    }

    pub async fn setattr(&self, cred: &Cred, ino: Ino, sa: &SetAttr) -> FsResult<Attr> {
        self.setattr_checked(cred, ino, sa, false).await
    }

    /// `setattr` through a file the caller opened for writing (an
    /// `ftruncate`): like Linux, a size change is checked against how the
    /// file was opened, not against its mode bits again (a file created
    /// with mode 0 can be truncated through the descriptor that created
    /// it). Every other attribute is checked as in [`Self::setattr`].
    pub async fn setattr_open_for_write(
        &self,
        cred: &Cred,
        ino: Ino,
        sa: &SetAttr,
    ) -> FsResult<Attr> {
        self.setattr_checked(cred, ino, sa, true).await
    }

    async fn setattr_checked(
        &self,
        cred: &Cred,
        ino: Ino,
        sa: &SetAttr,
        open_for_write: bool,
    ) -> FsResult<Attr> {
        let r = self
            .until_online(ino, DWO_CHANGE_SIZE, async |blocked| {
                self.run(
                    HoldKind::Write,
                    self.storing(inode_lock(ino, LockMode::Write)),
                    async |op| {
                        self.setattr_locked(op, cred, ino, sa, open_for_write, blocked)
                            .await
                    },
                )
                .await
            })
            .await;
        if r.is_ok() && sa.size.is_some() {
            self.waiters.wake_inode(ino);
        }
        r
    }

    async fn setattr_locked(
        &self,
        op: &mut Op<'_>,
        cred: &Cred,
        ino: Ino,
        sa: &SetAttr,
        open_for_write: bool,
        blocked: &Cell<Option<Blocked>>,
    ) -> OpResult<Attr> {
        let mut i = self.load(ino).await?;
        i.check_retention()?;
        let o = i.owner();
        if let Some(size) = sa.size {
            if i.is_dir() {
                return Err(Errno::EISDIR.into());
            }
            if !i.is_reg() {
                return Err(Errno::EINVAL.into());
            }
            if !open_for_write {
                perm::check(cred, o, MAY_WRITE)?;
            }
            if size > MAX_FILE_SIZE {
                return Err(Errno::EFBIG.into());
            }
        }
        let times_now =
            matches!(sa.atime, Some(SetTime::Now)) || matches!(sa.mtime, Some(SetTime::Now));
        let times_set = matches!(sa.atime, Some(SetTime::At(_)))
            || matches!(sa.mtime, Some(SetTime::At(_)))
            || sa.ctime.is_some();
        if times_now && !times_set && !perm::owner_or_capable(cred, o) {
            perm::check(cred, o, MAY_WRITE)?;
        }
        if let Some(uid) = sa.uid {
            if !perm::may_chown_uid(cred, o, uid) {
                return Err(Errno::EPERM.into());
            }
        }
        if let Some(gid) = sa.gid {
            if !perm::may_chown_gid(cred, o, gid) {
                return Err(Errno::EPERM.into());
            }
        }
        if sa.mode.is_some() && !perm::owner_or_capable(cred, o) {
            return Err(Errno::EPERM.into());
        }
        if times_set && !perm::owner_or_capable(cred, o) {
            return Err(Errno::EPERM.into());
        }
        // a size change waits for the file's offline data (scoutfs checks
        // from block 0 up to the larger size)
        if let Some(size) = sa.size.filter(|s| *s != i.item.size) {
            let top = size.max(i.item.size);
            self.check_offline(ino, 0, (top - 1) / BS, blocked).await?;
        }
        op.need_store(&i);
        op.ready()?;

        let now = self.now();
        if sa.uid.is_some() || sa.gid.is_some() {
            if let Some(uid) = sa.uid {
                i.item.uid = uid;
            }
            if let Some(gid) = sa.gid {
                i.item.gid = gid;
            }
            if !i.is_dir() {
                i.item.mode = kill_suid(i.item.mode);
            }
        }
        if let Some(mode) = sa.mode {
            let mut m = (i.item.mode & S_IFMT) | (mode & 0o7777);
            if !perm::is_root(cred) && !cred.in_group(i.item.gid) {
                m &= !S_ISGID;
            }
            i.item.mode = m;
        }
        if let Some(size) = sa.size {
            if !perm::is_root(cred) {
                i.item.mode = kill_suid(i.item.mode);
            }
            self.finish_truncate(op, &mut i).await?;
            self.set_size(op, &mut i, size).await?;
            i.item.mtime = now;
        }
        match sa.atime {
            Some(SetTime::Now) => i.item.atime = now,
            Some(SetTime::At(t)) => i.item.atime = t,
            None => {}
        }
        match sa.mtime {
            Some(SetTime::Now) => i.item.mtime = now,
            Some(SetTime::At(t)) => i.item.mtime = t,
            None => {}
        }
        i.item.ctime = sa.ctime.unwrap_or(now);
        self.store(&mut i);
        Ok(i.attr())
    }

    /// Change a regular file's size: shrinking zeroes the tail of the new
    /// last block and frees the blocks past it, over as many commits as it
    /// takes (the TRUNCATE flag marks an unfinished one).
    async fn set_size(&self, op: &mut Op<'_>, i: &mut Inode, size: u64) -> FsResult<()> {
        let old = i.item.size;
        self.zero_past_eof(i, size).await?;
        let seq = self.backend.trans_seq();
        i.item.data_seq = seq;
        if size != old {
            i.item.data_version = i.item.data_version.wrapping_add(1);
        }
        i.item.size = size;
        if size < old {
            let in_block = (size % BS) as usize;
            if in_block != 0 {
                data::zero_in_block(&self.dctx(), i, size / BS, in_block, BS as usize).await?;
            }
            self.punch_blocks(op, i, size.div_ceil(BS), LAST_BLOCK, true)
                .await?;
        }
        Ok(())
    }

    /// Before the size grows past `old_size`: zero the bytes of the old
    /// last block from the old end up to `upto`. A crash can leave bytes
    /// past the end of a file on the device (an in-place write of a lost
    /// transaction); growing the file must not expose them.
    async fn zero_past_eof(&self, i: &Inode, upto: u64) -> FsResult<()> {
        let old = i.item.size;
        if old.is_multiple_of(BS) || upto <= old {
            return Ok(());
        }
        let block = old / BS;
        let to = (upto - block * BS).min(BS) as usize;
        data::zero_in_block(&self.dctx(), i, block, (old % BS) as usize, to).await
    }

    /// Free blocks `[first, last]` in steps; `mark` sets the TRUNCATE flag
    /// while steps span commits.
    async fn punch_blocks(
        &self,
        op: &mut Op<'_>,
        i: &mut Inode,
        first: u64,
        last: u64,
        mark: bool,
    ) -> FsResult<()> {
        if first > last {
            return Ok(());
        }
        let mut cur = first;
        loop {
            match data::punch(&self.dctx(), i, cur, last, STEP_ITEMS).await? {
                None => break,
                Some(next) => {
                    cur = next;
                    if mark {
                        i.item.flags |= INO_FLAG_TRUNCATE;
                    }
                    self.store(i);
                    op.checkpoint().await?;
                }
            }
        }
        i.item.flags &= !INO_FLAG_TRUNCATE;
        Ok(())
    }

    /// Finish a truncate a crash interrupted.
    async fn finish_truncate(&self, op: &mut Op<'_>, i: &mut Inode) -> FsResult<()> {
        if i.item.flags & INO_FLAG_TRUNCATE == 0 || !i.is_reg() {
            return Ok(());
        }
        let first = i.item.size.div_ceil(BS);
        self.punch_blocks(op, i, first, LAST_BLOCK, true).await?;
        self.store(i);
        Ok(())
    }

    // -- creating ------------------------------------------------------------

    async fn make_node(
        &self,
        cred: &Cred,
        dir: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> FsResult<Attr> {
        check_name(name)?;
        // the group of the inode number at hand; a refill may bring another
        let mut first = self.storing(inode_lock(dir, LockMode::Write));
        if let Some(ino) = self.next_ino_cached() {
            first.add(LockRange::inode_group(ino), LockMode::Write);
        }
        self.run(HoldKind::Write, first, async |op| {
            self.make_node_locked(op, cred, dir, name, mode, rdev, target)
                .await
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn make_node_locked(
        &self,
        op: &mut Op<'_>,
        cred: &Cred,
        dir: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> OpResult<Attr> {
        let mut d = self.load_dir(dir).await?;
        perm::check(cred, d.owner(), MAY_EXEC)?;
        if is_dot(name) || dir::lookup(&self.items, dir, name).await?.is_some() {
            return Err(Errno::EEXIST.into());
        }
        self.may_create(cred, &d)?;
        let kind = mode & S_IFMT;
        if (kind == S_IFCHR || kind == S_IFBLK) && !perm::is_root(cred) {
            return Err(Errno::EPERM.into());
        }
        if self.backend.meta_low() {
            return Err(Errno::ENOSPC.into());
        }
        let is_dir = kind == S_IFDIR;
        if is_dir && d.item.nlink >= LINK_MAX {
            return Err(Errno::EMLINK.into());
        }
        let pos = d.take_readdir_pos()?;
        let ino = self.peek_ino().await?;
        op.need_inode(ino, LockMode::Write);
        op.need_store(&d);
        op.need_create(mode);
        op.ready()?;
        self.take_ino(ino);
        let now = self.now();

        // inode_init_owner: setgid directories hand down their group.
        let mut mode = mode;
        let gid = if d.item.mode & S_ISGID != 0 {
            if is_dir {
                mode |= S_ISGID;
            } else if mode & (S_ISGID | 0o010) == (S_ISGID | 0o010)
                && !cred.in_group(d.item.gid)
                && !perm::is_root(cred)
            {
                mode &= !S_ISGID;
            }
            d.item.gid
        } else {
            cred.gid
        };
        let mut item = crate::format::items::InodeItem {
            nlink: if is_dir { 2 } else { 1 },
            uid: cred.uid,
            gid,
            mode,
            rdev: if kind == S_IFCHR || kind == S_IFBLK {
                rdev
            } else {
                0
            },
            next_readdir_pos: crate::format::items::DIRENT_FIRST_POS,
            atime: now,
            ctime: now,
            mtime: now,
            crtime: now,
            proj: d.item.proj,
            version: 1,
            ..Default::default()
        };
        if let Some(t) = target {
            item.size = symlink::create(&self.items, ino, t);
        }
        let child = inode::create(&self.items, &*self.backend, ino, item);
        dir::add(&self.items, dir, name, pos, ino, mode);
        d.item.size = d.item.size.saturating_add(name.len() as u64);
        d.item.mtime = now;
        d.item.ctime = now;
        if is_dir {
            d.item.nlink = d.item.nlink.saturating_add(1);
        }
        self.store(&mut d);
        self.items.inode_count_add(1);
        Ok(child.attr())
    }

    /// Create a regular file (`mode`'s permission bits; the caller applied
    /// its umask).
    pub async fn create(&self, cred: &Cred, dir: Ino, name: &[u8], mode: u32) -> FsResult<Attr> {
        self.make_node(cred, dir, name, S_IFREG | (mode & 0o7777), 0, None)
            .await
    }

    pub async fn mkdir(&self, cred: &Cred, dir: Ino, name: &[u8], mode: u32) -> FsResult<Attr> {
        self.make_node(cred, dir, name, S_IFDIR | (mode & 0o1777), 0, None)
            .await
    }

    /// Create a regular file, device, FIFO or socket (`mode` carries the
    /// type; 0 means regular). Directories: `EPERM`, use `mkdir`.
    pub async fn mknod(
        &self,
        cred: &Cred,
        dir: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<Attr> {
        let kind = match mode & S_IFMT {
            0 => S_IFREG,
            S_IFDIR => return Err(Errno::EPERM),
            k @ (S_IFREG | S_IFCHR | S_IFBLK | S_IFIFO | S_IFSOCK) => k,
            _ => return Err(Errno::EINVAL),
        };
        self.make_node(cred, dir, name, kind | (mode & 0o7777), rdev, None)
            .await
    }

    pub async fn symlink(
        &self,
        cred: &Cred,
        dir: Ino,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<Attr> {
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.len() + 1 > SYMLINK_MAX_SIZE {
            return Err(Errno::ENAMETOOLONG);
        }
        if target.contains(&0) {
            return Err(Errno::EINVAL);
        }
        self.make_node(cred, dir, name, S_IFLNK | 0o777, 0, Some(target))
            .await
    }

    pub async fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        self.run(
            HoldKind::Read,
            inode_lock(ino, LockMode::Read),
            async |_| {
                let i = self.load(ino).await?;
                if !i.is_symlink() {
                    return Err(Errno::EINVAL.into());
                }
                Ok(symlink::read(&self.items, ino, i.item.size).await?)
            },
        )
        .await
    }

    pub async fn link(&self, cred: &Cred, ino: Ino, newdir: Ino, newname: &[u8]) -> FsResult<Attr> {
        check_name(newname)?;
        let first = self.storing(
            inode_lock(newdir, LockMode::Write).with(LockRange::inode_group(ino), LockMode::Write),
        );
        self.run(HoldKind::Write, first, async |op| {
            self.link_locked(op, cred, ino, newdir, newname).await
        })
        .await
    }

    async fn link_locked(
        &self,
        op: &mut Op<'_>,
        cred: &Cred,
        ino: Ino,
        newdir: Ino,
        newname: &[u8],
    ) -> OpResult<Attr> {
        let mut d = self.load_dir(newdir).await?;
        perm::check(cred, d.owner(), MAY_EXEC)?;
        if is_dot(newname) || dir::lookup(&self.items, newdir, newname).await?.is_some() {
            return Err(Errno::EEXIST.into());
        }
        let mut i = self.load(ino).await?;
        // protected_hardlinks: only owners may link to what they could not
        // read and write, or to special or set-id files.
        if !perm::is_root(cred) && cred.uid != i.item.uid {
            let safe = i.is_reg()
                && i.item.mode & S_ISUID == 0
                && i.item.mode & (S_ISGID | 0o010) != (S_ISGID | 0o010)
                && perm::check(cred, i.owner(), MAY_READ | MAY_WRITE).is_ok();
            if !safe {
                return Err(Errno::EPERM.into());
            }
        }
        self.may_create(cred, &d)?;
        if i.is_dir() {
            return Err(Errno::EPERM.into());
        }
        if i.item.nlink == 0 {
            return Err(Errno::ENOENT.into());
        }
        if i.item.nlink >= LINK_MAX {
            return Err(Errno::EMLINK.into());
        }
        if self.backend.meta_low() {
            return Err(Errno::ENOSPC.into());
        }
        op.need_store(&i);
        op.need_store(&d);
        op.ready()?;
        let pos = d.take_readdir_pos()?;
        let now = self.now();
        dir::add(&self.items, newdir, newname, pos, ino, i.item.mode);
        d.item.size = d.item.size.saturating_add(newname.len() as u64);
        d.item.mtime = now;
        d.item.ctime = now;
        i.item.ctime = now;
        i.item.nlink = i.item.nlink.saturating_add(1);
        self.store(&mut i);
        self.store(&mut d);
        Ok(i.attr())
    }

    // -- removing ------------------------------------------------------------

    /// Remove `dent` from `d` and drop a link of `victim`; an inode whose
    /// last link goes gets its orphan item.
    fn remove_link(
        &self,
        d: &mut Inode,
        dent: &crate::format::items::Dirent,
        victim: &mut Inode,
        now: Timespec,
    ) {
        dir::remove(&self.items, d.ino, dent);
        d.item.size = d.item.size.saturating_sub(dent.name.len() as u64);
        d.item.mtime = now;
        d.item.ctime = now;
        victim.item.ctime = now;
        victim.item.nlink = victim.item.nlink.saturating_sub(1);
        if victim.is_dir() {
            d.item.nlink = d.item.nlink.saturating_sub(1);
            victim.item.nlink = 0;
        }
        if victim.item.nlink == 0 {
            orphan::create(&self.items, victim.ino);
        }
    }

    async fn unlink_common(&self, cred: &Cred, dir: Ino, name: &[u8], rmdir: bool) -> FsResult<()> {
        check_name(name)?;
        // usually the last link: the deletion's write-only zones up front
        let first = self
            .storing(inode_lock(dir, LockMode::Write))
            .with(LockRange::orphan(), LockMode::WriteOnly)
            .with(LockRange::xattr_totl(), LockMode::WriteOnly)
            .with(LockRange::xattr_indx(), LockMode::WriteOnly);
        self.run(HoldKind::Write, first, async |op| {
            self.unlink_locked(op, cred, dir, name, rmdir).await
        })
        .await
    }

    async fn unlink_locked(
        &self,
        op: &mut Op<'_>,
        cred: &Cred,
        dir: Ino,
        name: &[u8],
        rmdir: bool,
    ) -> OpResult<()> {
        let mut d = self.load_dir(dir).await?;
        perm::check(cred, d.owner(), MAY_EXEC)?;
        if rmdir && name == b"." {
            return Err(Errno::EINVAL.into());
        }
        if rmdir && name == b".." {
            return Err(Errno::ENOTEMPTY.into());
        }
        if is_dot(name) {
            return Err(Errno::EISDIR.into());
        }
        let dent = dir::lookup(&self.items, dir, name)
            .await?
            .ok_or(Errno::ENOENT)?;
        op.need_inode(dent.ino, LockMode::Write);
        op.ready()?;
        let mut victim = self.load_target(dent.ino).await?;
        self.may_delete(cred, &d, &victim, rmdir)?;
        if rmdir && victim.item.size != 0 {
            return Err(Errno::ENOTEMPTY.into());
        }
        victim.check_retention()?;
        op.need_store(&victim);
        op.need_store(&d);
        if victim.is_dir() || victim.item.nlink <= 1 {
            // its last link: an orphan item, and the deletion unless open
            op.need(LockRange::orphan(), LockMode::WriteOnly);
            if !self.is_open(victim.ino) {
                op.need_deletion(None);
            }
        }
        op.ready()?;
        let now = self.now();
        self.remove_link(&mut d, &dent, &mut victim, now);
        self.store(&mut victim);
        self.store(&mut d);
        if victim.item.nlink == 0 && self.unlinked_deletable(victim.ino).await {
            self.delete_inode(op, victim.ino).await?;
        }
        Ok(())
    }

    pub async fn unlink(&self, cred: &Cred, dir: Ino, name: &[u8]) -> FsResult<()> {
        self.unlink_common(cred, dir, name, false).await
    }

    pub async fn rmdir(&self, cred: &Cred, dir: Ino, name: &[u8]) -> FsResult<()> {
        self.unlink_common(cred, dir, name, true).await
    }

    /// Delete every item of an inode that has no links and is not open,
    /// freeing its data, over as many commits as it takes; the orphan item
    /// goes last. The caller holds its locks (`Op::need_deletion`, and the
    /// index groups of the inode as it is now).
    async fn delete_inode(&self, op: &mut Op<'_>, ino: Ino) -> FsResult<()> {
        let found = match self.load(ino).await {
            Ok(i) => Some(i),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(e),
        };
        if let Some(i) = &found {
            if i.item.nlink != 0 {
                // a stale orphan: the inode was linked again
                orphan::delete(&self.items, ino);
                return Ok(());
            }
        }
        let first = Key::fs(ino, ty::INODE + 1, 0, 0);
        let last = Key::new(first.zone, ino, u8::MAX, u64::MAX, u64::MAX, u8::MAX);
        let mut cur = first;
        let mut done = false;
        while !done {
            for _ in 0..STEP_ITEMS {
                let Some((key, val)) = self.items.next(cur, last).await? else {
                    done = true;
                    break;
                };
                match key.ty {
                    ty::DATA_EXTENT => {
                        let e = DataExtent::decode(&key, &val)?;
                        if e.blkno != 0 {
                            self.backend
                                .free_data(DataRun {
                                    blkno: e.blkno,
                                    len: e.len,
                                })
                                .await?;
                        }
                    }
                    ty::XATTR if key.fourth == 0 => {
                        xattr::forget_tags(&self.items, ino, &key, &val)?
                    }
                    _ => {}
                }
                self.items.delete(key);
                if key == last {
                    done = true;
                    break;
                }
                cur = key.inc();
            }
            if !done {
                op.checkpoint().await?;
            }
        }
        if let Some(i) = &found {
            inode::delete(&self.items, i);
            self.items.inode_count_add(-1);
        }
        orphan::delete(&self.items, ino);
        self.count(|c| c.inodes_deleted += 1);
        Ok(())
    }

    /// Delete what orphan items name (at mount: nothing is open here
    /// yet; on a cluster other mounts may have them open).
    async fn delete_orphans(&self) -> FsResult<()> {
        self.scan_orphans().await.map(|_| ())
    }

    /// The orphan scan: try to delete every inode an orphan item names
    /// that no mount has open (on a cluster: also the orphans of mounts
    /// that died, once the server reclaimed them). The scan reads the
    /// orphan zone under READ; each deletion is its own operation (the
    /// inode group WRITE, the orphan zone WRITE_ONLY). Returns how many
    /// it deleted.
    pub async fn scan_orphans(&self) -> FsResult<u64> {
        self.count(|c| c.orphan_scans += 1);
        counter!("orphan.scans").inc();
        let mut deleted = 0;
        let mut from = 0;
        loop {
            let scan = LockSet::new().with(LockRange::orphan(), LockMode::Read);
            let batch = self
                .run(HoldKind::Read, scan, async |_| {
                    Ok(orphan::scan(&self.items, from, 64).await?)
                })
                .await?;
            let Some(&last) = batch.last() else { break };
            for ino in batch {
                // a hint before the lock: taking another mount's inode
                // group WRITE lock only to find it open there would make
                // it give up its cache every scan
                if self.is_open(ino) || self.open_elsewhere(ino).await {
                    continue;
                }
                self.count(|c| c.orphans_found += 1);
                if self.delete_orphan(ino).await? {
                    deleted += 1;
                    self.count(|c| c.orphans_deleted += 1);
                    counter!("orphan.deleted").inc();
                }
            }
            if last == u64::MAX {
                break;
            }
            from = last + 1;
        }
        Ok(deleted)
    }

    /// Delete the orphan `ino` unless some mount has it open (then
    /// `false`: its orphan item stays).
    async fn delete_orphan(&self, ino: Ino) -> FsResult<bool> {
        let first = inode_lock(ino, LockMode::Write).with(LockRange::orphan(), LockMode::WriteOnly);
        self.run(HoldKind::Write, first, async |op| {
            let found = match self.load(ino).await {
                Ok(i) => Some(i),
                Err(Errno::ENOENT) => None,
                Err(e) => return Err(e.into()),
            };
            op.need_deletion(found.as_ref());
            op.ready()?;
            // linked again: delete_inode only drops the stale orphan item
            let linked = found.as_ref().is_some_and(|i| i.item.nlink != 0);
            if !linked && !self.unlinked_deletable(ino).await {
                return Ok(false);
            }
            self.delete_inode(op, ino).await?;
            op.checkpoint().await?;
            Ok(!linked)
        })
        .await
    }

    // -- rename --------------------------------------------------------------

    pub async fn rename(
        &self,
        cred: &Cred,
        olddir: Ino,
        oldname: &[u8],
        newdir: Ino,
        newname: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags & (RENAME_NOREPLACE | RENAME_EXCHANGE) == (RENAME_NOREPLACE | RENAME_EXCHANGE)
        {
            return Err(Errno::EINVAL);
        }
        check_name(oldname)?;
        check_name(newname)?;
        let mut first = self.storing(
            inode_lock(olddir, LockMode::Write)
                .with(LockRange::inode_group(newdir), LockMode::Write),
        );
        if olddir != newdir {
            // serializes the ancestor checks of every cross-directory rename
            first.add(LockRange::rename(), LockMode::Write);
        }
        self.run(HoldKind::Write, first, async |op| {
            self.rename_locked(op, cred, olddir, oldname, newdir, newname, flags)
                .await
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn rename_locked(
        &self,
        op: &mut Op<'_>,
        cred: &Cred,
        olddir: Ino,
        oldname: &[u8],
        newdir: Ino,
        newname: &[u8],
        flags: u32,
    ) -> OpResult<()> {
        let exchange = flags & RENAME_EXCHANGE != 0;
        let noreplace = flags & RENAME_NOREPLACE != 0;
        let same = olddir == newdir;
        let mut od = self.load_dir(olddir).await?;
        let mut nd_sep = if same {
            None
        } else {
            Some(self.load_dir(newdir).await?)
        };
        perm::check(cred, od.owner(), MAY_EXEC)?;
        if let Some(nd) = &nd_sep {
            perm::check(cred, nd.owner(), MAY_EXEC)?;
        }
        if is_dot(oldname) {
            return Err(Errno::EBUSY.into());
        }
        if is_dot(newname) {
            return Err(if noreplace {
                Errno::EEXIST
            } else {
                Errno::EBUSY
            }
            .into());
        }
        let old = dir::lookup(&self.items, olddir, oldname)
            .await?
            .ok_or(Errno::ENOENT)?;
        let new = dir::lookup(&self.items, newdir, newname).await?;
        if exchange && new.is_none() {
            return Err(Errno::ENOENT.into());
        }
        if noreplace && new.is_some() {
            return Err(Errno::EEXIST.into());
        }
        op.need_inode(old.ino, LockMode::Write);
        if let Some(n) = &new {
            op.need_inode(n.ino, LockMode::Write);
        }
        op.ready()?;
        let mut src = self.load_target(old.ino).await?;
        // within one directory neither can be an ancestor of the other
        if !same && src.is_dir() && self.is_ancestor(op, src.ino, newdir).await? {
            return Err(Errno::EINVAL.into());
        }
        let mut target = match &new {
            Some(n) => Some(self.load_target(n.ino).await?),
            None => None,
        };
        if let Some(t) = &target {
            if !same && t.is_dir() && self.is_ancestor(op, t.ino, olddir).await? {
                return Err(if exchange {
                    Errno::EINVAL
                } else {
                    Errno::ENOTEMPTY
                }
                .into());
            }
            if t.ino == src.ino {
                return Ok(());
            }
        }
        self.may_delete(cred, &od, &src, src.is_dir())?;
        {
            let nd = nd_sep.as_ref().unwrap_or(&od);
            match &target {
                Some(t) => self.may_delete(
                    cred,
                    nd,
                    t,
                    if exchange { t.is_dir() } else { src.is_dir() },
                )?,
                None => self.may_create(cred, nd)?,
            }
        }
        if !same {
            if src.is_dir() {
                perm::check(cred, src.owner(), MAY_WRITE)?;
            }
            if let Some(t) = &target {
                if exchange && t.is_dir() {
                    perm::check(cred, t.owner(), MAY_WRITE)?;
                }
            }
        }
        if let Some(t) = &target {
            if !exchange && t.is_dir() && t.item.size != 0 {
                return Err(Errno::ENOTEMPTY.into());
            }
            t.check_retention()?;
        }
        src.check_retention()?;
        if !same && src.is_dir() && !target.as_ref().is_some_and(|t| t.is_dir()) {
            let nd = nd_sep.as_ref().expect("different dirs");
            if nd.item.nlink >= LINK_MAX {
                return Err(Errno::EMLINK.into());
            }
        }

        op.need_store(&od);
        if let Some(nd) = &nd_sep {
            op.need_store(nd);
        }
        op.need_store(&src);
        if let Some(t) = &target {
            op.need_store(t);
            if !exchange && (t.is_dir() || t.item.nlink <= 1) {
                // the target's last link goes
                op.need(LockRange::orphan(), LockMode::WriteOnly);
                if !self.is_open(t.ino) {
                    op.need_deletion(None);
                }
            }
        }
        op.ready()?;

        let now = self.now();
        macro_rules! nd {
            () => {
                match nd_sep.as_mut() {
                    Some(n) => n,
                    None => &mut od,
                }
            };
        }
        let new_pos = nd!().take_readdir_pos()?;
        let old_pos = if exchange {
            Some(od.take_readdir_pos()?)
        } else {
            None
        };
        dir::remove(&self.items, olddir, &old);
        if let Some(n) = &new {
            dir::remove(&self.items, newdir, n);
        }
        dir::add(
            &self.items,
            newdir,
            newname,
            new_pos,
            src.ino,
            src.item.mode,
        );
        if exchange {
            let t = target.as_mut().expect("exchange has a target");
            let pos = old_pos.expect("exchange takes a position in the old dir");
            dir::add(&self.items, olddir, oldname, pos, t.ino, t.item.mode);
            if !same && src.is_dir() != t.is_dir() {
                if src.is_dir() {
                    od.item.nlink = od.item.nlink.saturating_sub(1);
                    nd!().item.nlink = nd!().item.nlink.saturating_add(1);
                } else {
                    nd!().item.nlink = nd!().item.nlink.saturating_sub(1);
                    od.item.nlink = od.item.nlink.saturating_add(1);
                }
            }
            t.item.ctime = now;
        } else {
            od.item.size = od.item.size.saturating_sub(oldname.len() as u64);
            if new.is_none() {
                nd!().item.size = nd!().item.size.saturating_add(newname.len() as u64);
            }
            if let Some(t) = target.as_mut() {
                t.item.nlink = t.item.nlink.saturating_sub(1);
                if t.is_dir() {
                    t.item.nlink = 0;
                    nd!().item.nlink = nd!().item.nlink.saturating_sub(1);
                }
                t.item.ctime = now;
                if t.item.nlink == 0 {
                    orphan::create(&self.items, t.ino);
                }
            }
            if src.is_dir() && !same {
                od.item.nlink = od.item.nlink.saturating_sub(1);
                nd!().item.nlink = nd!().item.nlink.saturating_add(1);
            }
        }
        od.item.mtime = now;
        od.item.ctime = now;
        if let Some(nd) = nd_sep.as_mut() {
            nd.item.mtime = now;
            nd.item.ctime = now;
            self.store(nd);
        }
        self.store(&mut od);
        src.item.ctime = now;
        self.store(&mut src);
        if let Some(t) = target.as_mut() {
            self.store(t);
            if t.item.nlink == 0 && self.unlinked_deletable(t.ino).await {
                self.delete_inode(op, t.ino).await?;
            }
        }
        Ok(())
    }

    // -- directories ---------------------------------------------------------

    /// Entries from `pos` on: "." at 0, ".." at 1, then the entries in
    /// creation order; continue with the last entry's `next_pos`.
    pub async fn readdir(
        &self,
        cred: &Cred,
        dir: Ino,
        pos: u64,
        max_entries: usize,
    ) -> FsResult<Vec<DirEntry>> {
        self.run(
            HoldKind::Read,
            inode_lock(dir, LockMode::Read),
            async |_| Ok(self.readdir_locked(cred, dir, pos, max_entries).await?),
        )
        .await
    }

    async fn readdir_locked(
        &self,
        cred: &Cred,
        dir: Ino,
        pos: u64,
        max_entries: usize,
    ) -> FsResult<Vec<DirEntry>> {
        let d = self.load_dir(dir).await?;
        perm::check(cred, d.owner(), MAY_READ)?;
        if d.item.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        let mut out = Vec::new();
        if pos == 0 && out.len() < max_entries {
            out.push(DirEntry {
                ino: dir,
                next_pos: 1,
                dtype: DT_DIR,
                name: b".".to_vec(),
            });
        }
        if pos <= 1 && out.len() < max_entries {
            out.push(DirEntry {
                ino: self.parent_of(&d).await?,
                next_pos: 2,
                dtype: DT_DIR,
                name: b"..".to_vec(),
            });
        }
        let start = pos.max(2);
        if start > DIRENT_LAST_POS || out.len() >= max_entries {
            return Ok(out);
        }
        for e in dir::read_from(&self.items, dir, start, max_entries - out.len()).await? {
            out.push(DirEntry {
                ino: e.ino,
                next_pos: e.pos + 1,
                dtype: dtype_from_scoutfs(e.dtype),
                name: e.name,
            });
        }
        Ok(out)
    }

    // -- open files and data -------------------------------------------------

    /// Check access for `flags` (`O_ACCMODE`, `O_TRUNC`, `O_DIRECTORY`),
    /// truncate on `O_TRUNC` and count the open; pair with [`Self::release`].
    pub async fn open(&self, cred: &Cred, ino: Ino, flags: u32) -> FsResult<Attr> {
        let may_write = flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0;
        let mode = if may_write {
            LockMode::Write
        } else {
            LockMode::Read
        };
        let mut first = inode_lock(ino, mode);
        if may_write {
            first = self.storing(first);
        }
        self.run(HoldKind::Write, first, async |op| {
            self.open_locked(op, cred, ino, flags).await
        })
        .await
    }

    async fn open_locked(
        &self,
        op: &mut Op<'_>,
        cred: &Cred,
        ino: Ino,
        flags: u32,
    ) -> OpResult<Attr> {
        let mut i = self.load(ino).await?;
        if i.is_symlink() {
            return Err(Errno::ELOOP.into());
        }
        if flags & O_DIRECTORY != 0 && !i.is_dir() {
            return Err(Errno::ENOTDIR.into());
        }
        let mut mask = match flags & O_ACCMODE {
            O_RDONLY => MAY_READ,
            O_WRONLY => MAY_WRITE,
            _ => MAY_READ | MAY_WRITE,
        };
        if flags & O_TRUNC != 0 {
            mask |= MAY_WRITE;
        }
        if i.is_dir() && mask & MAY_WRITE != 0 {
            return Err(Errno::EISDIR.into());
        }
        perm::check(cred, i.owner(), mask)?;
        if i.is_reg() && mask & MAY_WRITE != 0 {
            op.need_store(&i);
            op.ready()?;
            self.finish_truncate(op, &mut i).await?;
        }
        if flags & O_TRUNC != 0 && i.is_reg() {
            i.check_retention()?;
            if !perm::is_root(cred) {
                i.item.mode = kill_suid(i.item.mode);
            }
            self.set_size(op, &mut i, 0).await?;
            let now = self.now();
            i.item.mtime = now;
            i.item.ctime = now;
            self.store(&mut i);
        }
        *self.open.borrow_mut().entry(ino).or_insert(0) += 1;
        Ok(i.attr())
    }

    /// The last release of an unlinked inode deletes it.
    pub async fn release(&self, ino: Ino) -> FsResult<()> {
        // only the last release touches items
        let first = match self.open.borrow().get(&ino) {
            Some(1) => inode_lock(ino, LockMode::Write),
            _ => LockSet::new(),
        };
        self.run(HoldKind::Write, first, async |op| {
            let n = *self.open.borrow().get(&ino).ok_or(Errno::EBADF)?;
            let loaded = if n <= 1 {
                op.need_inode(ino, LockMode::Write);
                op.ready()?;
                Some(self.load(ino).await)
            } else {
                None
            };
            let delete = match &loaded {
                Some(Ok(i)) if i.item.nlink == 0 => {
                    op.need_deletion(Some(i));
                    op.ready()?;
                    true
                }
                _ => false,
            };
            // no starting over from here: count the release
            {
                let mut open = self.open.borrow_mut();
                match open.get_mut(&ino) {
                    Some(n) if *n > 1 => *n -= 1,
                    _ => {
                        open.remove(&ino);
                    }
                }
            }
            // the last close here; another mount's last close may be later
            if delete && self.unlinked_deletable(ino).await {
                self.delete_inode(op, ino).await?;
            }
            match loaded {
                Some(Err(e)) if e != Errno::ENOENT => Err(e.into()),
                _ => Ok(()),
            }
        })
        .await
    }

    /// How many times `ino` is open.
    pub fn open_count(&self, ino: Ino) -> u32 {
        self.open.borrow().get(&ino).copied().unwrap_or(0)
    }

    async fn load_file(&self, ino: Ino) -> FsResult<Inode> {
        let i = self.load(ino).await?;
        if i.is_dir() {
            return Err(Errno::EISDIR);
        }
        if !i.is_reg() {
            return Err(Errno::EINVAL);
        }
        Ok(i)
    }

    /// Read into `buf` at `off`; returns the bytes read (0 at or past EOF).
    /// Offline data is waited for (see [`Self::stage`]).
    pub async fn read_into(&self, ino: Ino, off: u64, buf: &mut [u8]) -> FsResult<usize> {
        let (len, mut buf) = (buf.len(), buf);
        self.read_to(ino, off, len, &mut buf).await
    }

    /// Read up to `len` bytes at `off` (one operation, like
    /// [`Self::read_into`]).
    pub async fn read(&self, ino: Ino, off: u64, len: usize) -> FsResult<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_to(ino, off, len, &mut buf).await?;
        Ok(buf)
    }

    /// Read up to `len` bytes at `off` into what `buf` hands out once the
    /// count is known; returns the count.
    async fn read_to(
        &self,
        ino: Ino,
        off: u64,
        len: usize,
        buf: &mut impl ReadBuf,
    ) -> FsResult<usize> {
        self.until_online(ino, DWO_READ, async |blocked| {
            self.run(
                HoldKind::Read,
                inode_lock(ino, LockMode::Read),
                async |_| {
                    let i = self.load_file(ino).await?;
                    if off > MAX_FILE_SIZE {
                        return Err(Errno::EINVAL.into());
                    }
                    if off >= i.item.size {
                        return Ok(0);
                    }
                    let n = (len as u64).min(i.item.size - off) as usize;
                    if n == 0 {
                        return Ok(0);
                    }
                    let end = off + n as u64;
                    self.check_offline(ino, off / BS, (end - 1) / BS, blocked)
                        .await?;
                    data::read(&self.dctx(), &i, off, buf.take(n)).await?;
                    Ok(n)
                },
            )
            .await
        })
        .await
    }

    /// Under an operation's locks: if blocks `[first, last]` of `ino`
    /// hold offline data, note where (and the waiters' change count) in
    /// `blocked` and stop the operation (nothing changed yet); its caller
    /// waits for the data and starts over.
    async fn check_offline(
        &self,
        ino: Ino,
        first: u64,
        last: u64,
        blocked: &Cell<Option<Blocked>>,
    ) -> FsResult<()> {
        let seen = self.waiters.changes();
        if let Some(iblock) = data::first_offline(&self.items, ino, first, last).await? {
            blocked.set(Some(Blocked { iblock, seen }));
            // only the caller sees this errno: it waits instead
            return Err(Errno::EAGAIN);
        }
        Ok(())
    }

    /// Write `data` at `off`; returns the bytes written (short only when
    /// the maximum file size or free space runs out part way).
    pub async fn write(&self, ino: Ino, off: u64, data: &[u8]) -> FsResult<usize> {
        self.until_online(ino, DWO_WRITE, async |blocked| {
            self.run(
                HoldKind::Write,
                self.storing(inode_lock(ino, LockMode::Write)),
                async |op| self.write_locked(op, ino, off, data, blocked).await,
            )
            .await
        })
        .await
    }

    /// Run `attempt` until it finds no offline data in its way: when it
    /// notes where it was blocked (see [`Self::check_offline`]), wait for
    /// that data as a `wait_op` waiter and start over (bounded).
    async fn until_online<T>(
        &self,
        ino: Ino,
        wait_op: u8,
        mut attempt: impl AsyncFnMut(&Cell<Option<Blocked>>) -> FsResult<T>,
    ) -> FsResult<T> {
        for _ in 0..archive::MAX_DATA_WAITS {
            let blocked = Cell::new(None);
            let r = attempt(&blocked).await;
            match blocked.get() {
                Some(b) => self.waiters.wait(ino, b, wait_op)?.await?,
                None => return r,
            }
        }
        Err(Errno::EIO)
    }

    async fn write_locked(
        &self,
        op: &mut Op<'_>,
        ino: Ino,
        off: u64,
        data: &[u8],
        blocked: &Cell<Option<Blocked>>,
    ) -> OpResult<usize> {
        let mut i = self.load_file(ino).await?;
        i.check_retention()?;
        if off > MAX_FILE_SIZE {
            return Err(Errno::EINVAL.into());
        }
        if data.is_empty() {
            return Ok(0);
        }
        if off >= MAX_FILE_SIZE {
            return Err(Errno::EFBIG.into());
        }
        let len = (data.len() as u64).min(MAX_FILE_SIZE - off) as usize;
        let data = &data[..len];
        self.check_offline(ino, off / BS, (off + len as u64 - 1) / BS, blocked)
            .await?;
        op.need_store(&i);
        op.ready()?;
        self.finish_truncate(op, &mut i).await?;
        self.zero_past_eof(&i, off).await?;
        let online_before = i.item.online_blocks;
        let mut done = 0usize;
        let mut committed_without_progress = false;
        let result = loop {
            let r = data::write(&self.dctx(), &mut i, off + done as u64, &data[done..]).await;
            let outcome = match r {
                Ok(o) => o,
                Err(e) => break Err(e),
            };
            done += outcome.written;
            if outcome.written > 0 {
                committed_without_progress = false;
            }
            if done == data.len() {
                break Ok(());
            }
            if !outcome.needs_commit {
                // out of space part way
                break if done > 0 { Ok(()) } else { Err(Errno::ENOSPC) };
            }
            if committed_without_progress {
                break if done > 0 { Ok(()) } else { Err(Errno::ENOSPC) };
            }
            self.finish_write(&mut i, off, done, online_before);
            self.count(|c| c.enobufs_commits += 1);
            op.commit(true).await?;
            committed_without_progress = true;
        };
        self.finish_write(&mut i, off, done, online_before);
        match result {
            Ok(()) => Ok(done),
            Err(_) if done > 0 => Ok(done),
            Err(e) => Err(e.into()),
        }
    }

    fn finish_write(&self, i: &mut Inode, off: u64, done: usize, online_before: u64) {
        if done > 0 {
            let end = off + done as u64;
            if end > i.item.size {
                i.item.size = end;
            }
            i.touch_data(self.backend.trans_seq());
            let now = self.now();
            i.item.mtime = now;
            i.item.ctime = now;
            self.store(i);
        } else if i.item.online_blocks != online_before {
            // a failed write that still changed the block map
            self.store(i);
        }
    }

    /// Preallocate (`mode` 0 or `FALLOC_FL_KEEP_SIZE`) or punch a hole
    /// (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`).
    pub async fn fallocate(
        &self,
        cred: &Cred,
        ino: Ino,
        mode: u32,
        off: u64,
        len: u64,
    ) -> FsResult<()> {
        if len == 0 || off > MAX_FILE_SIZE || len > MAX_FILE_SIZE {
            return Err(Errno::EINVAL);
        }
        if mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE) != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let punch = mode & FALLOC_FL_PUNCH_HOLE != 0;
        if punch && mode & FALLOC_FL_KEEP_SIZE == 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let end = match off.checked_add(len) {
            Some(e) if e <= MAX_FILE_SIZE => e,
            _ => return Err(Errno::EFBIG),
        };
        let r = self
            .run(
                HoldKind::Write,
                self.storing(inode_lock(ino, LockMode::Write)),
                async |op| self.fallocate_locked(op, cred, ino, mode, off, end).await,
            )
            .await;
        if r.is_ok() && punch {
            // offline extents may have become holes
            self.waiters.wake_inode(ino);
        }
        r
    }

    async fn fallocate_locked(
        &self,
        op: &mut Op<'_>,
        cred: &Cred,
        ino: Ino,
        mode: u32,
        off: u64,
        end: u64,
    ) -> OpResult<()> {
        let punch = mode & FALLOC_FL_PUNCH_HOLE != 0;
        let mut i = self.load(ino).await?;
        if i.is_dir() {
            return Err(Errno::EISDIR.into());
        }
        if !i.is_reg() {
            return Err(Errno::ENODEV.into());
        }
        i.check_retention()?;
        op.need_store(&i);
        op.ready()?;
        self.finish_truncate(op, &mut i).await?;
        if !perm::is_root(cred) {
            i.item.mode = kill_suid(i.item.mode);
        }
        if punch {
            let first_full = off.div_ceil(BS);
            let end_full = end / BS; // blocks before this one are whole
            let dctx = self.dctx();
            let b = off / BS;
            if first_full >= end_full {
                // no whole block inside: one or two partial blocks
                let to = (end - b * BS).min(BS) as usize;
                data::zero_in_block(&dctx, &i, b, (off % BS) as usize, to).await?;
                if (end - 1) / BS != b {
                    data::zero_in_block(&dctx, &i, end / BS, 0, (end % BS) as usize).await?;
                }
            } else {
                if !off.is_multiple_of(BS) {
                    data::zero_in_block(&dctx, &i, b, (off % BS) as usize, BS as usize).await?;
                }
                if !end.is_multiple_of(BS) {
                    data::zero_in_block(&dctx, &i, end / BS, 0, (end % BS) as usize).await?;
                }
            }
            if first_full < end_full {
                self.punch_blocks(op, &mut i, first_full, end_full - 1, false)
                    .await?;
            }
            i.touch_data(self.backend.trans_seq());
            let now = self.now();
            i.item.mtime = now;
            i.item.ctime = now;
            self.store(&mut i);
            return Ok(());
        }
        let mut cur = Some(off / BS);
        let last = (end - 1) / BS;
        let mut stalled = false;
        while let Some(c) = cur {
            let (next, needs_commit) =
                data::preallocate(&self.dctx(), &mut i, c, last, STEP_ITEMS).await?;
            let progressed = next != Some(c);
            cur = next;
            self.store(&mut i);
            if needs_commit {
                if stalled && !progressed {
                    return Err(Errno::ENOSPC.into());
                }
                stalled = !progressed;
                self.count(|c| c.enobufs_commits += 1);
                op.commit(true).await?;
            } else if cur.is_some() {
                op.checkpoint().await?;
            }
        }
        if mode & FALLOC_FL_KEEP_SIZE == 0 && end > i.item.size {
            self.zero_past_eof(&i, end).await?;
            i.item.size = end;
            i.touch_data(self.backend.trans_seq());
        }
        // like Linux: a preallocation changes the file (its allocation,
        // maybe its size), so both times move
        let now = self.now();
        i.item.mtime = now;
        i.item.ctime = now;
        self.store(&mut i);
        Ok(())
    }

    /// Up to `max` extents of a file's block map from logical block
    /// `from` on (a FIEMAP for tools and tests).
    pub async fn extents(&self, ino: Ino, from: u64, max: usize) -> FsResult<Vec<DataExtent>> {
        self.run(
            HoldKind::Read,
            inode_lock(ino, LockMode::Read),
            async |_| {
                self.load(ino).await?;
                let mut out = Vec::new();
                let mut cur = from;
                while out.len() < max {
                    let Some(e) = data::next_extent(&self.items, ino, cur).await? else {
                        break;
                    };
                    out.push(e);
                    if e.last() == LAST_BLOCK {
                        break;
                    }
                    cur = e.last() + 1;
                }
                Ok(out)
            },
        )
        .await
    }

    // -- xattrs --------------------------------------------------------------

    /// Linux's xattr permission rules by namespace.
    fn xattr_permission(&self, cred: &Cred, i: &Inode, name: &[u8], write: bool) -> FsResult<()> {
        let mask = if write { MAY_WRITE } else { MAY_READ };
        match xattr::namespace_of(name) {
            Some(Namespace::Security) => {
                if write && !perm::is_root(cred) {
                    return Err(Errno::EPERM);
                }
                Ok(())
            }
            Some(Namespace::Trusted) => {
                if !perm::is_root(cred) {
                    return Err(if write { Errno::EPERM } else { Errno::ENODATA });
                }
                Ok(())
            }
            Some(Namespace::User) => {
                if !i.is_reg() && !i.is_dir() {
                    return Err(if write { Errno::EPERM } else { Errno::ENODATA });
                }
                if write
                    && i.is_dir()
                    && i.item.mode & S_ISVTX != 0
                    && !perm::owner_or_capable(cred, i.owner())
                {
                    return Err(Errno::EPERM);
                }
                perm::check(cred, i.owner(), mask)
            }
            Some(Namespace::Scoutfs) | None => perm::check(cred, i.owner(), mask),
        }
    }

    /// The namespace must be known and the name longer than its prefix.
    fn xattr_resolve(name: &[u8]) -> FsResult<Namespace> {
        let ns = xattr::namespace_of(name).ok_or(Errno::EOPNOTSUPP)?;
        let prefix_len = match ns {
            Namespace::User => 5,
            Namespace::Trusted => 8,
            Namespace::Security => 9,
            Namespace::Scoutfs => 8,
        };
        if name.len() == prefix_len {
            return Err(Errno::EINVAL);
        }
        Ok(ns)
    }

    fn xattr_name_ok(name: &[u8]) -> FsResult<()> {
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(Errno::ERANGE);
        }
        if name.contains(&0) {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    pub async fn getxattr(&self, cred: &Cred, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        Self::xattr_name_ok(name)?;
        self.run(
            HoldKind::Read,
            inode_lock(ino, LockMode::Read),
            async |_| {
                let i = self.load(ino).await?;
                self.xattr_permission(cred, &i, name, false)?;
                Self::xattr_resolve(name)?;
                let f = xattr::find(&self.items, ino, name)
                    .await?
                    .ok_or(Errno::ENODATA)?;
                Ok(xattr::read_value(&self.items, ino, name, &f).await?)
            },
        )
        .await
    }

    /// Names of the inode's xattrs (without `.hide.`-tagged ones).
    pub async fn listxattr(&self, _cred: &Cred, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        self.run(
            HoldKind::Read,
            inode_lock(ino, LockMode::Read),
            async |_| {
                self.load(ino).await?;
                Ok(xattr::list(&self.items, ino, false).await?)
            },
        )
        .await
    }

    /// `flags`: 0, `XATTR_CREATE` or `XATTR_REPLACE`.
    pub async fn setxattr(
        &self,
        cred: &Cred,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 || flags == XATTR_CREATE | XATTR_REPLACE {
            return Err(Errno::EINVAL);
        }
        Self::xattr_name_ok(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(Errno::E2BIG);
        }
        self.xattr_change(cred, ino, name, Some(value), flags).await
    }

    pub async fn removexattr(&self, cred: &Cred, ino: Ino, name: &[u8]) -> FsResult<()> {
        Self::xattr_name_ok(name)?;
        self.xattr_change(cred, ino, name, None, XATTR_REPLACE)
            .await
    }

    async fn xattr_change(
        &self,
        cred: &Cred,
        ino: Ino,
        name: &[u8],
        value: Option<&[u8]>,
        flags: u32,
    ) -> FsResult<()> {
        // tagged names also change the .totl. and .indx. zones (blindly)
        let mut first = self.storing(inode_lock(ino, LockMode::Write));
        let tags = xattr::parse_tags(name).unwrap_or_default();
        if tags.totl {
            first.add(LockRange::xattr_totl(), LockMode::WriteOnly);
        }
        if tags.indx {
            first.add(LockRange::xattr_indx(), LockMode::WriteOnly);
        }
        self.run(HoldKind::Write, first, async |op| {
            self.xattr_change_locked(op, cred, ino, name, value, flags)
                .await
        })
        .await
    }

    async fn xattr_change_locked(
        &self,
        op: &mut Op<'_>,
        cred: &Cred,
        ino: Ino,
        name: &[u8],
        value: Option<&[u8]>,
        flags: u32,
    ) -> OpResult<()> {
        let mut i = self.load(ino).await?;
        self.xattr_permission(cred, &i, name, true)?;
        let ns = Self::xattr_resolve(name)?;
        let tags = xattr::parse_tags(name)?;
        if tags.any() && !perm::is_root(cred) {
            return Err(Errno::EPERM.into());
        }
        if tags.totl && tags.indx {
            return Err(Errno::EINVAL.into());
        }
        if ns == Namespace::User {
            i.check_retention()?;
        }
        if value.is_some() && self.backend.meta_low() {
            return Err(Errno::ENOSPC.into());
        }
        op.need_store(&i);
        if tags.totl {
            op.need(LockRange::xattr_totl(), LockMode::WriteOnly);
        }
        if tags.indx {
            op.need(LockRange::xattr_indx(), LockMode::WriteOnly);
        }
        op.ready()?;
        xattr::set(
            &self.items,
            &*self.backend,
            &mut i,
            name,
            tags,
            value,
            flags,
        )
        .await?;
        i.item.ctime = self.now();
        self.store(&mut i);
        Ok(())
    }

    // -- the volume ----------------------------------------------------------

    /// The volume's metadata and data devices counted apart, each in its
    /// own block size (scoutfs' `statfs_more` with its allocator detail:
    /// what `scoutfs df` prints).
    pub async fn statfs_more(&self) -> FsResult<crate::posix::backend::BackendStatfs> {
        self.backend.statfs().await
    }

    pub async fn statfs(&self) -> FsResult<StatFs> {
        let s = self.backend.statfs().await?;
        let lg_per_sm = 16; // 64 KiB metadata blocks in 4 KiB units
        let files = s.total_meta_blocks.saturating_mul(1 << 16) / 2048;
        let u32_at =
            |o: usize| u32::from_le_bytes([s.uuid[o], s.uuid[o + 1], s.uuid[o + 2], s.uuid[o + 3]]);
        let fsid = (u32_at(0) ^ u32_at(4)) as u64 | (((u32_at(8) ^ u32_at(12)) as u64) << 32);
        let bfree = s
            .free_meta_blocks
            .saturating_mul(lg_per_sm)
            .saturating_add(s.free_data_blocks);
        Ok(StatFs {
            bsize: SM_BLOCK_SIZE as u32,
            blocks: s
                .total_meta_blocks
                .saturating_mul(lg_per_sm)
                .saturating_add(s.total_data_blocks),
            bfree,
            bavail: bfree,
            files,
            ffree: files.saturating_sub(s.inode_count),
            fsid,
            namelen: NAME_LEN_MAX as u32,
        })
    }
}

// -- archival: data_version, release, stage, waiting, index walks ----------

impl Mount {
    /// scoutfs `stat_more`: the seqs, data version, block counts and
    /// creation time of an inode.
    pub async fn stat_more(&self, ino: Ino) -> FsResult<StatMore> {
        self.run(
            HoldKind::Read,
            inode_lock(ino, LockMode::Read),
            async |_| {
                let i = self.load(ino).await?.item;
                Ok(StatMore {
                    meta_seq: i.meta_seq,
                    data_seq: i.data_seq,
                    data_version: i.data_version,
                    online_blocks: i.online_blocks,
                    offline_blocks: i.offline_blocks,
                    crtime: i.crtime,
                    size: i.size,
                })
            },
        )
        .await
    }

    /// Load a regular file whose data version is `data_version`
    /// (`ESTALE`: its contents changed since the agent looked).
    async fn load_versioned(&self, ino: Ino, data_version: u64) -> FsResult<Inode> {
        let i = self.load(ino).await?;
        if !i.is_reg() {
            return Err(Errno::EINVAL);
        }
        if i.item.data_version != data_version {
            return Err(Errno::ESTALE);
        }
        Ok(i)
    }

    /// scoutfs `release`: the data of bytes `[off, off + len)` (4 KiB
    /// multiples) now lives in the archive: mapped blocks are freed and
    /// become offline extents. Size, data version and times stay; the
    /// inode's meta_seq moves. When no online block is left, extents past
    /// the end of the file go. `ESTALE` if `data_version` moved.
    pub async fn release_data(
        &self,
        ino: Ino,
        off: u64,
        len: u64,
        data_version: u64,
    ) -> FsResult<()> {
        if !off.is_multiple_of(BS) || !len.is_multiple_of(BS) {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        if off.checked_add(len - 1).is_none() {
            return Err(Errno::EINVAL);
        }
        let (first, last) = (off / BS, (off + (len - 1)) / BS);
        self.run(
            HoldKind::Write,
            self.storing(inode_lock(ino, LockMode::Write)),
            async |op| {
                let mut i = self.load_versioned(ino, data_version).await?;
                i.check_retention()?;
                op.need_store(&i);
                op.ready()?;
                self.finish_truncate(op, &mut i).await?;
                let mut cur = first;
                while let Some(next) =
                    data::release(&self.dctx(), &mut i, cur, last, STEP_ITEMS).await?
                {
                    cur = next;
                    self.store(&mut i);
                    op.checkpoint().await?;
                }
                if i.item.online_blocks == 0 {
                    let past_end = i.item.size.div_ceil(BS);
                    self.punch_blocks(op, &mut i, past_end, LAST_BLOCK, false)
                        .await?;
                }
                self.store(&mut i);
                Ok(())
            },
        )
        .await
    }

    /// scoutfs `stage`: write archived bytes `data` at `off` (block
    /// aligned) into the file's offline extents, and wake the operations
    /// waiting for them. The range must lie inside the file and end on a
    /// block boundary or at the end of the file (`EINVAL`); online blocks
    /// and holes in it are left as they are. Data version, data_seq and
    /// times stay; meta_seq moves. `ESTALE` if `data_version` moved.
    pub async fn stage(&self, ino: Ino, data_version: u64, off: u64, data: &[u8]) -> FsResult<()> {
        let len = data.len() as u64;
        let end = off.checked_add(len).ok_or(Errno::EINVAL)?;
        if !off.is_multiple_of(BS) {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let r = self
            .run(
                HoldKind::Write,
                self.storing(inode_lock(ino, LockMode::Write)),
                async |op| {
                    let mut i = self.load_versioned(ino, data_version).await?;
                    i.check_retention()?;
                    let size = i.item.size;
                    if end > size || (!end.is_multiple_of(BS) && end != size) {
                        return Err(Errno::EINVAL.into());
                    }
                    op.need_store(&i);
                    op.ready()?;
                    self.finish_truncate(op, &mut i).await?;
                    self.stage_locked(op, &mut i, off, data).await
                },
            )
            .await;
        // the extents may have changed even when it failed part way
        self.waiters.wake_inode(ino);
        r
    }

    async fn stage_locked(
        &self,
        op: &mut Op<'_>,
        i: &mut Inode,
        off: u64,
        data: &[u8],
    ) -> OpResult<()> {
        let mut done = 0usize;
        let mut stalled = false;
        while done < data.len() {
            let o = data::stage(&self.dctx(), i, off + done as u64, &data[done..]).await;
            let o = match o {
                Ok(o) => o,
                Err(e) => {
                    self.store(i);
                    return Err(e.into());
                }
            };
            done += o.written;
            if !o.needs_commit {
                break;
            }
            if stalled && o.written == 0 {
                self.store(i);
                return Err(Errno::ENOSPC.into());
            }
            stalled = o.written == 0;
            self.store(i);
            self.count(|c| c.enobufs_commits += 1);
            op.commit(true).await?;
        }
        self.store(i);
        Ok(())
    }

    /// scoutfs `data_waiting`: up to `max` blocks operations wait on,
    /// after `(after_ino, after_iblock)`, in order.
    pub fn data_waiting(&self, after_ino: Ino, after_iblock: u64, max: usize) -> Vec<WaitingEntry> {
        self.waiters.list(after_ino, after_iblock, max)
    }

    /// scoutfs `data_wait_err`: fail the operations waiting on bytes
    /// `[off, off + count)` of `ino` whose op is in `ops` with the
    /// negative errno `err`. Returns how many it failed. `ESTALE` if
    /// `data_version` moved.
    pub async fn data_wait_err(
        &self,
        ino: Ino,
        data_version: u64,
        off: u64,
        count: u64,
        ops: u8,
        err: i64,
    ) -> FsResult<u64> {
        if count == 0 || off.checked_add(count - 1).is_none() {
            return Err(Errno::EINVAL);
        }
        if ops == 0 || ops & !archive::DWO_ALL != 0 {
            return Err(Errno::EINVAL);
        }
        if !(-archive::MAX_ERRNO..=-1).contains(&err) {
            return Err(Errno::EINVAL);
        }
        let errno = Errno(-err as i32);
        let (first, last) = (off / BS, (off + (count - 1)) / BS);
        self.run(
            HoldKind::Read,
            inode_lock(ino, LockMode::Read),
            async |_| {
                self.load_versioned(ino, data_version).await?;
                Ok(self.waiters.fail(ino, first, last, ops, errno))
            },
        )
        .await
    }

    /// scoutfs `setattr_more` / `scoutfs setattr`: what an archive restore
    /// sets on a new, empty regular file: its data_version, its size
    /// (with one OFFLINE extent over it when `offline`), ctime (else now)
    /// and crtime. `EINVAL`: a data_version of 0 or the file's is not 0;
    /// `offline` without a size; size or offline on a file that is not
    /// regular or not empty (size or extents). A size change moves
    /// data_seq (the file's contents changed); meta_seq moves.
    pub async fn setattr_more(&self, ino: Ino, sa: &SetAttrMore) -> FsResult<()> {
        if sa.data_version == Some(0) || (sa.offline && sa.size.unwrap_or(0) == 0) {
            return Err(Errno::EINVAL);
        }
        if sa.size.is_some_and(|s| s > MAX_FILE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let data = sa.data_version.is_some() || sa.size.is_some();
        self.run(
            HoldKind::Write,
            self.storing(inode_lock(ino, LockMode::Write)),
            async |op| {
                let mut i = self.load(ino).await?;
                i.check_retention()?;
                if data && !i.is_reg() {
                    return Err(Errno::EINVAL.into());
                }
                if sa.data_version.is_some() && i.item.data_version != 0 {
                    return Err(Errno::EINVAL.into());
                }
                if sa.size.is_some()
                    && (i.item.size != 0 || i.item.online_blocks != 0 || i.item.offline_blocks != 0)
                {
                    return Err(Errno::EINVAL.into());
                }
                op.need_store(&i);
                op.ready()?;
                self.finish_truncate(op, &mut i).await?;
                if sa.size.is_some() && data::next_extent(&self.items, ino, 0).await?.is_some() {
                    // unwritten (preallocated) blocks count in neither total
                    return Err(Errno::EINVAL.into());
                }
                if let Some(v) = sa.data_version {
                    i.item.data_version = v;
                }
                if let Some(size) = sa.size {
                    i.item.size = size;
                    i.item.data_seq = self.backend.trans_seq();
                    if sa.offline {
                        let blocks = size.div_ceil(BS);
                        data::set_mapping(&self.items, &mut i, 0, blocks, 0, SEF_OFFLINE).await?;
                    }
                }
                i.item.ctime = sa.ctime.unwrap_or(self.now());
                if let Some(t) = sa.crtime {
                    i.item.crtime = t;
                }
                self.store(&mut i);
                Ok(())
            },
        )
        .await
    }

    /// scoutfs `punch_offline`: the OFFLINE extents of bytes
    /// `[off, off + len)` (4 KiB multiples, `len` > 0) become holes (a
    /// restore of a sparse file); online and unwritten blocks stay, as do
    /// data_version, size and times; meta_seq moves. `EINVAL` also when
    /// `data_version` moved (as the reference) or the file is not regular.
    pub async fn punch_offline(
        &self,
        ino: Ino,
        data_version: u64,
        off: u64,
        len: u64,
    ) -> FsResult<()> {
        if len == 0 || !off.is_multiple_of(BS) || !len.is_multiple_of(BS) {
            return Err(Errno::EINVAL);
        }
        let last_byte = off.checked_add(len - 1).ok_or(Errno::EINVAL)?;
        let (first, last) = (off / BS, last_byte / BS);
        let r = self
            .run(
                HoldKind::Write,
                self.storing(inode_lock(ino, LockMode::Write)),
                async |op| {
                    let mut i = self.load_versioned(ino, data_version).await.map_err(|e| {
                        if e == Errno::ESTALE {
                            Errno::EINVAL
                        } else {
                            e
                        }
                    })?;
                    i.check_retention()?;
                    op.need_store(&i);
                    op.ready()?;
                    self.finish_truncate(op, &mut i).await?;
                    let mut cur = first;
                    while let Some(next) =
                        data::punch_offline(&self.dctx(), &mut i, cur, last, STEP_ITEMS).await?
                    {
                        cur = next;
                        self.store(&mut i);
                        op.checkpoint().await?;
                    }
                    self.store(&mut i);
                    Ok(())
                },
            )
            .await;
        // a waiter on a block that is a hole now reads zeros
        self.waiters.wake_inode(ino);
        r
    }

    /// scoutfs `move_blocks`, asked on the target `to`: the extents of
    /// bytes `[from_off, from_off + len)` of `mb.from` move to `to_off` of
    /// `to` without copying data; the source range becomes a hole, both
    /// sizes stay except that the target grows to cover what it got.
    /// Offsets are 4 KiB multiples and so is `len` unless the range ends
    /// at the source's size; only blocks inside the source's size move.
    /// Both inodes are locked for writing in the global lock order.
    ///
    /// Without [`MB_STAGE`] the target range must be holes (`EINVAL`) and
    /// neither file may have offline blocks (`ENODATA`); ctime, mtime,
    /// data_version and data_seq of both move. With it the target range
    /// must lie in OFFLINE extents (`EINVAL`), the target's data_version
    /// must be `mb.data_version` (`ESTALE`) and only the source's fields
    /// move; waiters on the target wake. Errors as the reference:
    /// `EOVERFLOW` for a range that wraps, `EINVAL` for the same inode,
    /// unknown flags, misalignment or a file that is not regular,
    /// `EISDIR` for a directory. A failure part way leaves the pieces
    /// moved before it moved (as in the reference).
    pub async fn move_blocks(&self, cred: &Cred, to: Ino, mb: &MoveBlocks) -> FsResult<()> {
        if mb.len == 0 {
            return Ok(());
        }
        if mb.from_off.checked_add(mb.len - 1).is_none()
            || mb.to_off.checked_add(mb.len - 1).is_none()
        {
            return Err(Errno::EOVERFLOW);
        }
        if mb.from == to || mb.flags & !MB_STAGE != 0 {
            return Err(Errno::EINVAL);
        }
        let stage = mb.flags & MB_STAGE != 0;
        let locks = self.storing(
            inode_lock(mb.from, LockMode::Write).with(LockRange::inode_group(to), LockMode::Write),
        );
        let r = self
            .run(HoldKind::Write, locks, async |op| {
                let mut f = self.load(mb.from).await?;
                let mut t = self.load(to).await?;
                if !stage {
                    t.check_retention()?;
                }
                if !mb.from_off.is_multiple_of(BS)
                    || !mb.to_off.is_multiple_of(BS)
                    || (!mb.len.is_multiple_of(BS) && mb.from_off + mb.len != f.item.size)
                {
                    return Err(Errno::EINVAL.into());
                }
                if stage && t.item.data_version != mb.data_version {
                    return Err(Errno::ESTALE.into());
                }
                let size = f.item.size;
                if mb.from_off >= size {
                    return Ok(());
                }
                if f.is_dir() || t.is_dir() {
                    return Err(Errno::EISDIR.into());
                }
                if !f.is_reg() || !t.is_reg() {
                    return Err(Errno::EINVAL.into());
                }
                perm::check(cred, f.owner(), MAY_WRITE)?;
                perm::check(cred, t.owner(), MAY_WRITE)?;
                if f.item.offline_blocks != 0 || (t.item.offline_blocks != 0 && !stage) {
                    return Err(Errno::ENODATA.into());
                }
                let count = mb.len.min(size - mb.from_off).div_ceil(BS);
                let (first, to_first) = (mb.from_off / BS, mb.to_off / BS);
                // the target's size could not hold the moved blocks
                if mb
                    .to_off
                    .checked_add(count * BS)
                    .is_none_or(|end| end > MAX_FILE_SIZE)
                {
                    return Err(Errno::EFBIG.into());
                }
                op.need_store(&f);
                op.need_store(&t);
                op.ready()?;
                self.finish_truncate(op, &mut f).await?;
                self.finish_truncate(op, &mut t).await?;
                let mut cur = first;
                loop {
                    let r = data::move_blocks(
                        &self.items,
                        &mut f,
                        &mut t,
                        cur,
                        first,
                        count,
                        to_first,
                        stage,
                        STEP_ITEMS,
                    )
                    .await;
                    let (now, seq) = (self.now(), self.backend.trans_seq());
                    for (i, contents) in [(&mut f, true), (&mut t, !stage)] {
                        if contents {
                            i.touch_data(seq);
                            i.item.mtime = now;
                            i.item.ctime = now;
                        }
                        self.store(i);
                    }
                    match r? {
                        Some(next) => cur = next,
                        None => return Ok(()),
                    }
                    op.checkpoint().await?;
                }
            })
            .await;
        // the target's offline extents may have been filled, even part way
        self.waiters.wake_inode(to);
        r
    }

    /// scoutfs `get_referring_entries`: up to `max` entries that link to
    /// `ino`, from the cursor `(dir, pos)` on (inclusive), in (directory,
    /// position) order, read from the inode's LINK_BACKREF items. An
    /// inode without links (the root, an unused number) has none.
    pub async fn referring_entries(
        &self,
        ino: Ino,
        dir: u64,
        pos: u64,
        max: usize,
    ) -> FsResult<Vec<ReferringEntry>> {
        self.run(
            HoldKind::Read,
            inode_lock(ino, LockMode::Read),
            async |_| {
                let found = dir::backrefs(&self.items, ino, dir, pos, max).await?;
                Ok(found
                    .into_iter()
                    .map(|(dir, d)| ReferringEntry {
                        dir,
                        pos: d.pos,
                        ino: d.ino,
                        dtype: dtype_from_scoutfs(d.dtype),
                        name: d.name,
                    })
                    .collect())
            },
        )
        .await
    }

    /// scoutfs `ino_path`: the path from the root of the first link to
    /// `ino` at or after the cursor `(dir, pos)`, or None when there is
    /// none left. Each directory's name comes from its backref, read under
    /// a READ lock of its group and the rename lock (the tree keeps its
    /// shape meanwhile). `ENOENT`: a directory on the way was removed;
    /// `ENAMETOOLONG`: the path exceeds [`archive::PATH_MAX`].
    pub async fn ino_path(&self, ino: Ino, dir: u64, pos: u64) -> FsResult<Option<InoPath>> {
        let first = LockSet::new()
            .with(LockRange::rename(), LockMode::Read)
            .with(LockRange::inode_group(ino), LockMode::Read);
        self.run(HoldKind::Read, first, async |op| {
            let Some((first_dir, d)) = dir::backrefs(&self.items, ino, dir, pos, 1).await?.pop()
            else {
                return Ok(None);
            };
            // names from the inode up, joined in reverse at the end
            let mut names = vec![d.name];
            let mut len = names[0].len();
            let mut cur = first_dir;
            let mut depth = 0usize;
            while cur != ROOT_INO {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Errno::EIO.into());
                }
                op.need_inode(cur, LockMode::Read);
                op.ready()?;
                let Some((parent, pd)) = dir::backrefs(&self.items, cur, 0, 0, 1).await?.pop()
                else {
                    return Err(Errno::ENOENT.into());
                };
                len += 1 + pd.name.len();
                if len >= archive::PATH_MAX {
                    return Err(Errno::ENAMETOOLONG.into());
                }
                names.push(pd.name);
                cur = parent;
            }
            let mut path = Vec::with_capacity(len);
            for (i, n) in names.iter().rev().enumerate() {
                if i > 0 {
                    path.push(b'/');
                }
                path.extend_from_slice(n);
            }
            Ok(Some(InoPath {
                dir: first_dir,
                pos: d.pos,
                path,
            }))
        })
        .await
    }

    /// The highest seq an index walk returns (see
    /// [`Backend::stable_seq`]).
    pub async fn stable_seq(&self) -> FsResult<u64> {
        self.backend.stable_seq().await
    }

    /// search-xattrs: the inodes in `[first_ino, last_ino]` that have the
    /// `.srch.`-tagged xattr `name`. Commits first (searches see committed
    /// srch entries), takes the candidates of the srch files (at most
    /// `max` entries: the answer's `last_ino` says how far it covers) and
    /// keeps those that have the xattr now, read under the inode's lock
    /// (hashes collide and deletions by other mounts may be unsynced).
    pub async fn search_xattrs(
        &self,
        name: &[u8],
        first_ino: u64,
        last_ino: u64,
        max: usize,
    ) -> FsResult<SrchCandidates> {
        Self::xattr_name_ok(name)?;
        if !xattr::parse_tags(name)?.srch || first_ino > last_ino {
            return Err(Errno::EINVAL);
        }
        self.sync().await?;
        let c = self
            .backend
            .srch_candidates(fnv1a64(name), first_ino, last_ino, max)
            .await?;
        let mut inos = Vec::with_capacity(c.inos.len());
        for ino in c.inos {
            let has = self
                .run(
                    HoldKind::Read,
                    inode_lock(ino, LockMode::Read),
                    async |_| match self.load(ino).await {
                        Ok(_) => Ok(xattr::find(&self.items, ino, name).await?.is_some()),
                        Err(Errno::ENOENT) => Ok(false),
                        Err(e) => Err(e.into()),
                    },
                )
                .await?;
            if has {
                inos.push(ino);
            } else {
                self.count(|c| c.srch_false_candidates += 1);
            }
        }
        Ok(SrchCandidates {
            inos,
            last_ino: c.last_ino,
        })
    }

    /// scoutfs `walk_inodes`: up to `max` entries of an inode index from
    /// `first` to `last` (inclusive, in order), `last` clamped to the
    /// stable seq so that a change still in an open transaction is never
    /// skipped by an agent that walks again from where it stopped.
    pub async fn walk_inodes(
        &self,
        index: WalkIndex,
        first: WalkEntry,
        last: WalkEntry,
        max: usize,
    ) -> FsResult<Vec<WalkEntry>> {
        let index_type = match index {
            WalkIndex::MetaSeq => ty::INODE_INDEX_META_SEQ,
            WalkIndex::DataSeq => ty::INODE_INDEX_DATA_SEQ,
        };
        let stable = self.stable_seq().await?;
        let mut last = last;
        if last.major > stable {
            last = WalkEntry {
                major: stable,
                ..WalkEntry::MAX
            };
        }
        // the seq indexes keep minor 0: a minor above it moves past the
        // inodes of that major
        let start_key = match (first.minor, first.major.checked_add(1)) {
            (0, _) => inode_index_key(index_type, first.major, first.ino),
            (_, Some(m)) => inode_index_key(index_type, m, 0),
            (_, None) => return Ok(Vec::new()),
        };
        let last_ino = if last.minor > 0 { u64::MAX } else { last.ino };
        let last_key = inode_index_key(index_type, last.major, last_ino);
        let mut out = Vec::new();
        let mut cur = start_key;
        while out.len() < max && cur <= last_key {
            let group = LockRange::inode_index(index_type, cur.second);
            let hi = group.end.min(last_key);
            let lock = LockSet::new().with(group, LockMode::Read);
            let found = self
                .run(HoldKind::Read, lock, async |_| {
                    let mut found = Vec::new();
                    let mut k = cur;
                    while out.len() + found.len() < max {
                        let Some((key, _)) = self.items.next(k, hi).await? else {
                            break;
                        };
                        found.push(WalkEntry {
                            major: key.second,
                            minor: 0,
                            ino: key.third,
                        });
                        if key >= hi {
                            break;
                        }
                        k = key.inc();
                    }
                    Ok(found)
                })
                .await?;
            if let Some(e) = found.last() {
                cur = inode_index_key(index_type, e.major, e.ino).inc();
            }
            let full = out.len() + found.len() >= max;
            out.extend(found);
            if full || hi >= last_key {
                break;
            }
            if out.len() < max {
                // this group is done
                match (group.end.second).checked_add(1) {
                    Some(m) => cur = inode_index_key(index_type, m, 0),
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// The `.totl.` totals of the volume from `from` on (names `a.b.c`
    /// in order, at most `max`): every mount's committed deltas summed
    /// over fs_root and the log trees (the forest read resolves merges in
    /// progress). Takes no lock, like scoutfs: the totals lag the open
    /// transactions of every mount (`sync` first to see this mount's).
    /// Totals that came back to zero are not listed.
    pub async fn read_xattr_totals(&self, from: [u64; 3], max: usize) -> FsResult<Vec<XattrTotal>> {
        self.backend.refresh_reads();
        let last = Key::new(
            zone::XATTR_TOTL,
            u64::MAX,
            u8::MAX,
            u64::MAX,
            u64::MAX,
            u8::MAX,
        );
        let mut cur = totl_key(from[0], from[1], from[2]);
        let mut out = Vec::new();
        while out.len() < max {
            let batch = self.backend.read_items(cur, cur, last).await?;
            for (k, v) in &batch.items {
                if *k < cur || k.zone != zone::XATTR_TOTL || out.len() >= max {
                    continue;
                }
                let t = TotlVal::decode(v).map_err(|_| Errno::EIO)?;
                if t.total == 0 && t.count == 0 {
                    continue;
                }
                out.push(XattrTotal {
                    name: [k.first, k.second, k.third],
                    total: t.total as i64,
                    count: t.count as i64,
                });
            }
            if batch.end >= last {
                break;
            }
            cur = batch.end.inc();
        }
        Ok(out)
    }

    /// scoutfs `read-xattr-index`: the inodes of the `.indx.` index from
    /// `first` to `last` (inclusive, in (major, minor, ino) order, each
    /// once however many of its xattrs name that position), at most
    /// `max`. Like the totals, committed entries of every mount read from
    /// fresh roots without a lock (`sync` first to see this mount's).
    pub async fn read_xattr_index(
        &self,
        first: IndxEntry,
        last: IndxEntry,
        max: usize,
    ) -> FsResult<Vec<IndxEntry>> {
        if first > last {
            return Err(Errno::EINVAL);
        }
        self.backend.refresh_reads();
        let lo = indx_key(first.major, first.minor, first.ino, 0);
        let hi = indx_key(last.major, last.minor, last.ino, u64::MAX);
        let mut cur = lo;
        let mut out: Vec<IndxEntry> = Vec::new();
        while out.len() < max && cur <= hi {
            let batch = self.backend.read_items(cur, cur, hi).await?;
            for (k, _) in &batch.items {
                if *k < cur || *k > hi || k.zone != zone::XATTR_INDX {
                    continue;
                }
                let (major, minor, ino, _) = indx_key_fields(k);
                let e = IndxEntry { major, minor, ino };
                if out.last() != Some(&e) && out.len() < max {
                    out.push(e);
                }
            }
            if batch.end >= hi {
                break;
            }
            cur = batch.end.inc();
        }
        Ok(out)
    }
}

/// One `.indx.` index entry: an inode with an `scoutfs.indx.*.MAJOR.MINOR`
/// xattr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IndxEntry {
    pub major: u8,
    pub minor: u64,
    pub ino: u64,
}

/// One `.totl.` total: the sum of the values of every `scoutfs.totl.*.a.b.c`
/// xattr of the volume, and how many there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XattrTotal {
    pub name: [u64; 3],
    pub total: i64,
    pub count: i64,
}

/// Where [`Mount::read_to`] puts what it reads: `take(n)` is the `n` bytes
/// to fill (`n` at most the length asked for).
trait ReadBuf {
    fn take(&mut self, n: usize) -> &mut [u8];
}

/// A caller's buffer: its first `n` bytes.
impl ReadBuf for &mut [u8] {
    fn take(&mut self, n: usize) -> &mut [u8] {
        &mut self[..n]
    }
}

/// A fresh buffer of `n` zeros (allocated only once the count is known).
impl ReadBuf for Vec<u8> {
    fn take(&mut self, n: usize) -> &mut [u8] {
        self.clear();
        self.resize(n, 0);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::env::ManualClock;
    use crate::runtime::exec::block_on;
    use crate::sim::mem_backend::{MemBackend, MemMkfs, MemStore};
    use crate::storage::dev::MemDev;

    fn mounted() -> Mount {
        mounted_with(Rc::new(LocalLocks::new()))
    }

    fn mounted_with(locks: Rc<dyn LockProvider>) -> Mount {
        let store = MemStore::mkfs(MemMkfs {
            data_blocks: 1024,
            ..MemMkfs::default()
        });
        let data = Rc::new(MemDev::new(1024 * 4096));
        let clock = Rc::new(ManualClock::new(Timespec::default()));
        block_on(Mount::mount_with_locks(
            MemBackend::new(store),
            data,
            clock,
            MountOptions::default(),
            locks,
        ))
        .unwrap()
    }

    /// `LocalLocks` that only grants through the (waiting) `acquire`.
    struct NoTry(LocalLocks);

    impl LockProvider for NoTry {
        fn acquire<'a>(
            &'a self,
            set: &'a LockSet,
        ) -> crate::cluster::lock::LockFut<'a, FsResult<HeldLocks>> {
            self.0.acquire(set)
        }
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        should_panic(expected = "a lock acquired while holding the transaction")
    )]
    fn locking_while_holding_the_transaction_is_edeadlk() {
        let m = mounted();
        block_on(async {
            let mut op = Op::new(&m, Want::new(inode_lock(ROOT_INO, LockMode::Write)));
            op.begin(HoldKind::Write).await.unwrap();
            assert!(m.transaction_held());
            let r = op.lock(&inode_lock(5000, LockMode::Write)).await;
            assert_eq!(r.err(), Some(Errno::EDEADLK));
        });
        assert_eq!(m.counters().locks_in_hold, 1);
        assert!(!m.transaction_held());
    }

    /// Unlink `f` from the root (group 0); `f` is inode 1024 (group 1024),
    /// which the operation finds under the hold.
    fn unlink_in_another_group(m: &Mount) -> (MountCounters, MountCounters) {
        let c = Cred::root();
        let f = block_on(m.create(&c, ROOT_INO, b"f", 0o644)).unwrap();
        assert_eq!(f.ino, 1024);
        let before = m.counters();
        block_on(m.unlink(&c, ROOT_INO, b"f")).unwrap();
        let after = m.counters();
        assert_eq!(block_on(m.getattr(f.ino)), Err(Errno::ENOENT));
        assert_eq!(after.items.unlocked_writes + after.items.unlocked_reads, 0);
        assert_eq!(after.locks_in_hold + after.bad_grants, 0);
        (before, after)
    }

    #[test]
    fn an_operation_starts_over_with_the_locks_it_found() {
        // a provider that cannot grant without waiting: start over
        let (before, after) =
            unlink_in_another_group(&mounted_with(Rc::new(NoTry(LocalLocks::new()))));
        assert_eq!(after.relocks, before.relocks + 1);
        assert_eq!(after.lock_extends, before.lock_extends);
    }

    #[test]
    fn locks_granted_at_once_extend_the_operation_in_place() {
        // the victim's group is found under the hold: the locks are let go
        // and the larger set taken again at once, in the order
        let (before, after) = unlink_in_another_group(&mounted());
        assert_eq!(after.relocks, before.relocks);
        assert_eq!(after.lock_extends, before.lock_extends + 1);
        // inode group, then zones: two sets up front, two in place
        assert_eq!(after.lock_acquisitions, before.lock_acquisitions + 4);
    }
}
