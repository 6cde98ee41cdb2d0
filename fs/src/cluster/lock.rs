//! Cluster locks, the mount's side: modes and their compatibility rule,
//! the key ranges locks are named by (the one place that knows the
//! geometry: inode groups, index seq groups, whole zones, the rename key),
//! the global acquisition order, and the [`LockProvider`] seam a mount
//! acquires its locks through ([`LocalLocks`] on a single node; the lock
//! client joins it when the lock server exists).
//!
//! Called by `posix::mount` (each operation acquires its [`LockSet`]
//! before it takes the transaction hold), `posix::item` (dirtied items
//! are stamped with their lock's `write_seq`) and `posix::backend`
//! (item reads are bounded by [`LockRange::covering`], log-tree bloom
//! keys are its start). Pure: no I/O, no time.
//!
//! Invariants: a [`LockSet`] is sorted in the global order (the rename
//! lock, then inode groups by inode, then every other range by start key)
//! and holds each range once; every task acquires in that order (each
//! acquisition sorts after every lock it holds) and never waits for a
//! lock while it holds the transaction, which is what keeps a cluster of
//! mounts free of deadlocks (a grant may need the holder's commit). Only
//! [`LockProvider::try_acquire`], which never waits, may be asked under
//! the transaction.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::Cell;
use core::cmp::Ordering;
use core::future::Future;
use core::pin::Pin;

use crate::errno::FsResult;
use crate::format::key::{ty, zone, Key};

/// A boxed, non-`Send` future (what the dyn-compatible acquire returns).
pub type LockFut<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Inodes per inode-group lock (`SCOUTFS_LOCK_INODE_GROUP_NR`).
pub const LOCK_INODE_GROUP_NR: u64 = 1024;
/// Index seqs per inode-index lock (`SCOUTFS_LOCK_SEQ_GROUP_MASK + 1`).
pub const LOCK_SEQ_GROUP_NR: u64 = 1024;

/// What a mount may do under a lock (`SCOUTFS_LOCK_*`, wire values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockMode {
    /// No access; asking for it drops a grant.
    Null = 0,
    /// Read and cache items; shared.
    Read = 1,
    /// Read, cache and change items; exclusive.
    Write = 2,
    /// Blind writes and deltas only (orphans, index items, totl/indx
    /// deltas), never reads; shared with other write-only holders.
    WriteOnly = 3,
}

impl LockMode {
    /// Decode a wire value; 4 and up are invalid.
    pub fn from_wire(v: u8) -> Option<LockMode> {
        match v {
            0 => Some(LockMode::Null),
            1 => Some(LockMode::Read),
            2 => Some(LockMode::Write),
            3 => Some(LockMode::WriteOnly),
            _ => None,
        }
    }

    pub fn to_wire(self) -> u8 {
        self as u8
    }

    /// May items under it be read (and cached)?
    pub fn can_read(self) -> bool {
        matches!(self, LockMode::Read | LockMode::Write)
    }

    /// May items under it be created, changed or deleted?
    pub fn can_write(self) -> bool {
        matches!(self, LockMode::Write | LockMode::WriteOnly)
    }

    /// The client's "granted satisfies wanted": equal modes, or a WRITE
    /// grant serving a READ user.
    pub fn serves(self, wanted: LockMode) -> bool {
        self == wanted || (self == LockMode::Write && wanted == LockMode::Read)
    }

    /// The one mode a mount asks for when an operation needs a range for
    /// both uses: a mount holds one mode per range, and only WRITE both
    /// reads and writes.
    pub fn union(self, other: LockMode) -> LockMode {
        match (self, other) {
            (LockMode::Null, m) | (m, LockMode::Null) => m,
            (a, b) if a == b => a,
            _ => LockMode::Write,
        }
    }
}

/// The lock server's compatibility rule (reference §3.2): may `requested`
/// be granted while `granted` is held? `same_mount`: both belong to one
/// mount (an upgrade or downgrade of its own grant).
pub fn compatible(granted: LockMode, requested: LockMode, same_mount: bool) -> bool {
    use LockMode::*;
    let shared = granted == requested && matches!(granted, Read | WriteOnly);
    let upgrade = same_mount && granted == Read && requested == Write;
    let other_null = !same_mount && (granted == Null || requested == Null);
    shared || upgrade || other_null
}

/// The keys one lock covers, `[start, end]` inclusive. Build them with the
/// constructors: those ranges never overlap, which the ordering and the
/// item cache's lookups rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LockRange {
    pub start: Key,
    pub end: Key,
}

impl LockRange {
    /// FS-zone items of the 1024 inodes around `ino`: inode, xattr,
    /// dirent, readdir, backref, symlink and extent items.
    pub fn inode_group(ino: u64) -> LockRange {
        let first = ino & !(LOCK_INODE_GROUP_NR - 1);
        LockRange {
            start: Key::new(zone::FS, first, 0, 0, 0, 0),
            end: Key::new(
                zone::FS,
                first | (LOCK_INODE_GROUP_NR - 1),
                u8::MAX,
                u64::MAX,
                u64::MAX,
                u8::MAX,
            ),
        }
    }

    /// Inode index items of one type (`INODE_INDEX_META_SEQ` or
    /// `INODE_INDEX_DATA_SEQ`) for the 1024 seqs around `seq`.
    pub fn inode_index(index_type: u8, seq: u64) -> LockRange {
        let major = seq & !(LOCK_SEQ_GROUP_NR - 1);
        LockRange {
            start: Key::new(zone::INODE_INDEX, 0, index_type, major, 0, 0),
            end: Key::new(
                zone::INODE_INDEX,
                0,
                index_type,
                major | (LOCK_SEQ_GROUP_NR - 1),
                u64::MAX,
                u8::MAX,
            ),
        }
    }

    /// Every orphan item (scoutfs locks the orphan type with one range).
    pub fn orphan() -> LockRange {
        LockRange {
            start: Key::new(zone::ORPHAN, 0, ty::ORPHAN, 0, 0, 0),
            end: Key::new(zone::ORPHAN, 0, ty::ORPHAN, u64::MAX, u64::MAX, u8::MAX),
        }
    }

    /// The global rename lock: one key, taken for cross-directory renames.
    pub fn rename() -> LockRange {
        let k = Key::new(zone::LOCK, 0, ty::RENAME, 0, 0, 0);
        LockRange { start: k, end: k }
    }

    pub fn xattr_totl() -> LockRange {
        LockRange::whole_zone(zone::XATTR_TOTL)
    }

    pub fn xattr_indx() -> LockRange {
        LockRange::whole_zone(zone::XATTR_INDX)
    }

    pub fn quota() -> LockRange {
        LockRange::whole_zone(zone::QUOTA)
    }

    fn whole_zone(z: u8) -> LockRange {
        LockRange {
            start: Key::new(z, 0, 0, 0, 0, 0),
            end: Key::new(z, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX),
        }
    }

    /// The lock that covers an item key. Item reads are bounded by it and
    /// log-tree bloom filters are keyed by its start, so it must stay
    /// exactly what scoutfs draws (on-disk bloom bits depend on it).
    pub fn covering(key: &Key) -> LockRange {
        match key.zone {
            zone::FS => LockRange::inode_group(key.first),
            zone::INODE_INDEX => LockRange::inode_index(key.ty, key.second),
            zone::ORPHAN => LockRange::orphan(),
            // each key of the lock zone is its own lock (the rename lock)
            zone::LOCK => LockRange {
                start: *key,
                end: *key,
            },
            z => LockRange::whole_zone(z),
        }
    }

    /// The lock whose range starts at `start`, if there is one: how a lock
    /// named on the wire (by its start key) is checked. Of the lock zone
    /// only the rename lock exists.
    pub fn from_start(start: &Key) -> Option<LockRange> {
        let r = LockRange::covering(start);
        let valid = r.start == *start && (start.zone != zone::LOCK || r == LockRange::rename());
        valid.then_some(r)
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.start <= *key && *key <= self.end
    }

    /// The class a range sorts in: the rename lock first, then inode
    /// groups, then everything else (reference §3.3, invariant §3.7.10).
    #[inline]
    fn order_class(&self) -> u8 {
        match self.start.zone {
            zone::FS => 1,
            zone::LOCK if *self == LockRange::rename() => 0,
            _ => 2,
        }
    }

    /// Rename lock or inode group: held for a whole operation. The rest
    /// (index, orphan and xattr zones) may be dropped and taken again
    /// between the steps of a long one.
    pub fn is_inode_class(&self) -> bool {
        self.order_class() < 2
    }
}

/// How the shell and logs name a lock: `inode group 4096-5119`,
/// `meta_seq index 2048-3071`, `orphans`, `rename`, `zone 12`.
impl core::fmt::Display for LockRange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = &self.start;
        match s.zone {
            zone::FS => write!(f, "inode group {}-{}", s.first, self.end.first),
            zone::INODE_INDEX => {
                let which = match s.ty {
                    ty::INODE_INDEX_META_SEQ => "meta_seq",
                    ty::INODE_INDEX_DATA_SEQ => "data_seq",
                    _ => "unknown",
                };
                write!(f, "{which} index {}-{}", s.second, self.end.second)
            }
            zone::ORPHAN => f.write_str("orphans"),
            zone::LOCK if *self == LockRange::rename() => f.write_str("rename"),
            zone::XATTR_TOTL => f.write_str(".totl. xattrs"),
            zone::XATTR_INDX => f.write_str(".indx. xattrs"),
            zone::QUOTA => f.write_str("quota"),
            z => write!(f, "zone {z} from {s:?}"),
        }
    }
}

/// The one global acquisition order: class, then start key (inode groups
/// therefore in ascending inode order).
#[inline]
pub fn lock_order(a: &LockRange, b: &LockRange) -> Ordering {
    match a.order_class().cmp(&b.order_class()) {
        Ordering::Equal => a.start.cmp(&b.start),
        o => o,
    }
}

/// Where `range` is (`Ok`) or would go (`Err`) in `items`, sorted in
/// [`lock_order`] by `range_of` (ranges never overlap: one start, one
/// range). An operation's sets are a handful of ranges, mostly asked for
/// again or in order: a short list is scanned for the start first, then
/// the end is tried.
#[inline]
fn find<T>(
    items: &[T],
    range: &LockRange,
    range_of: impl Fn(&T) -> &LockRange,
) -> Result<usize, usize> {
    if items.len() > FIND_LINEAR {
        return items.binary_search_by(|x| lock_order(range_of(x), range));
    }
    if let Some(i) = items.iter().position(|x| range_of(x).start == range.start) {
        return Ok(i);
    }
    match items.last() {
        Some(last) if lock_order(range_of(last), range) == Ordering::Greater => {
            Err(items.partition_point(|x| lock_order(range_of(x), range) == Ordering::Less))
        }
        _ => Err(items.len()),
    }
}

/// Up to this many entries [`find`] compares ranges for equality first.
const FIND_LINEAR: usize = 8;

/// One lock an operation asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRequest {
    pub range: LockRange,
    pub mode: LockMode,
}

/// Room for this many requests or grants is made at once: what an
/// operation usually needs (a few inode groups, index groups and zones).
const LOCKS_USUAL: usize = 8;

/// What an operation needs locked: sorted in [`lock_order`], one entry
/// per range (modes of repeated ranges are combined with
/// [`LockMode::union`]), never a NULL request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockSet {
    reqs: Vec<LockRequest>,
}

impl LockSet {
    pub const fn new() -> LockSet {
        LockSet { reqs: Vec::new() }
    }

    /// Ask for `range` in `mode` too; returns the mode the set now asks
    /// for it (the union with an earlier request; NULL adds nothing).
    pub fn add(&mut self, range: LockRange, mode: LockMode) -> LockMode {
        if mode == LockMode::Null {
            return self.get(&range).map_or(LockMode::Null, |r| r.mode);
        }
        let reqs = &mut self.reqs;
        if reqs.capacity() == 0 {
            // room for what an operation usually needs, grown once
            reqs.reserve_exact(LOCKS_USUAL);
        }
        match find(reqs, &range, |r| &r.range) {
            Ok(i) => {
                reqs[i].mode = reqs[i].mode.union(mode);
                reqs[i].mode
            }
            Err(i) => {
                reqs.insert(i, LockRequest { range, mode });
                mode
            }
        }
    }

    pub fn add_set(&mut self, other: &LockSet) {
        for r in other.requests() {
            self.add(r.range, r.mode);
        }
    }

    pub fn with(mut self, range: LockRange, mode: LockMode) -> LockSet {
        self.add(range, mode);
        self
    }

    pub fn requests(&self) -> &[LockRequest] {
        &self.reqs
    }

    pub fn len(&self) -> usize {
        self.requests().len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests().is_empty()
    }

    /// The request for exactly `range`, if any.
    pub fn get(&self, range: &LockRange) -> Option<LockRequest> {
        let reqs = self.requests();
        find(reqs, range, |r| &r.range).ok().map(|i| reqs[i])
    }

    /// Does a request of this set serve `want`?
    pub fn serves(&self, want: &LockRequest) -> bool {
        self.get(&want.range)
            .is_some_and(|r| r.mode.serves(want.mode))
    }

    /// Split into (rename lock and inode groups, everything else); each
    /// part stays in order and the first sorts before the second.
    pub fn split_classes(&self) -> (LockSet, LockSet) {
        (self.inode_class(), self.zone_class())
    }

    /// The rename lock and inode groups of the set.
    pub fn inode_class(&self) -> LockSet {
        let reqs = self.requests();
        let n = reqs.partition_point(|r| r.range.is_inode_class());
        LockSet {
            reqs: reqs[..n].to_vec(),
        }
    }

    /// Move everything but the rename lock and inode groups (index,
    /// orphan and xattr zones) into a set of its own.
    pub fn split_off_zones(&mut self) -> LockSet {
        let n = self.reqs.partition_point(|r| r.range.is_inode_class());
        if n == 0 {
            return core::mem::take(self);
        }
        let mut zones = LockSet::new();
        if n < self.reqs.len() {
            zones
                .reqs
                .reserve_exact(LOCKS_USUAL.max(self.reqs.len() - n));
            zones.reqs.extend_from_slice(&self.reqs[n..]);
            self.reqs.truncate(n);
        }
        zones
    }

    /// Everything else: index, orphan and xattr zones.
    pub fn zone_class(&self) -> LockSet {
        let reqs = self.requests();
        let n = reqs.partition_point(|r| r.range.is_inode_class());
        LockSet {
            reqs: reqs[n..].to_vec(),
        }
    }

    /// Does every request of the set have a grant of the same range whose
    /// mode serves it? (`grants` in [`lock_order`].)
    pub fn granted_by(&self, grants: &[GrantedLock]) -> bool {
        let reqs = self.requests();
        // the usual answer: one grant per request, in the same order
        if grants.len() == reqs.len()
            && reqs
                .iter()
                .zip(grants)
                .all(|(r, g)| g.range == r.range && g.mode.serves(r.mode))
        {
            return true;
        }
        reqs.iter().all(|r| {
            grants
                .binary_search_by(|g| lock_order(&g.range, &r.range))
                .is_ok_and(|i| grants[i].mode.serves(r.mode))
        })
    }
}

/// Where the lock-set builders (`posix::inode`'s `*_locks`) put what they
/// need: a [`LockSet`], or an operation that also notes what it lacks.
pub trait LockSink {
    fn add_lock(&mut self, range: LockRange, mode: LockMode);
}

impl LockSink for LockSet {
    fn add_lock(&mut self, range: LockRange, mode: LockMode) {
        self.add(range, mode);
    }
}

/// A lock as granted to the mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantedLock {
    pub range: LockRange,
    pub mode: LockMode,
    /// Items written under the lock carry at least this seq (invariant
    /// §3.7.6): a fresh server seq for every WRITE/WRITE_ONLY grant, so
    /// the newest writer of a key wins however old its transaction is.
    pub write_seq: u64,
}

/// Releases a provider's locks when the guard goes.
pub type ReleaseFn = Box<dyn FnOnce(&[GrantedLock])>;

/// The locks of one acquisition, held until dropped.
pub struct HeldLocks {
    grants: Vec<GrantedLock>,
    release: Option<ReleaseFn>,
}

impl HeldLocks {
    /// `grants` in [`lock_order`] (the mount refuses others: see
    /// [`LockSet::granted_by`]); `release` runs once, at drop.
    pub fn new(
        grants: impl IntoIterator<Item = GrantedLock>,
        release: Option<ReleaseFn>,
    ) -> HeldLocks {
        HeldLocks {
            grants: grants.into_iter().collect(),
            release,
        }
    }

    /// Nothing held.
    pub const fn empty() -> HeldLocks {
        HeldLocks {
            grants: Vec::new(),
            release: None,
        }
    }

    pub fn grants(&self) -> &[GrantedLock] {
        &self.grants
    }

    /// Is `want` granted here, in a mode that serves it?
    pub fn serves(&self, want: &LockRequest) -> bool {
        let grants = self.grants();
        find(grants, &want.range, |g| &g.range).is_ok_and(|i| grants[i].mode.serves(want.mode))
    }
}

impl Drop for HeldLocks {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release(&self.grants);
        }
    }
}

impl core::fmt::Debug for HeldLocks {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.grants()).finish()
    }
}

/// Where a mount gets its cluster locks.
pub trait LockProvider {
    /// Acquire every lock of `set`, in the set's order, waiting as long as
    /// it takes (a grant may first need this mount to commit: callers never
    /// hold the transaction while they wait). The returned guard grants
    /// every range of the set in a mode that serves the request.
    fn acquire<'a>(&'a self, set: &'a LockSet) -> LockFut<'a, FsResult<HeldLocks>>;

    /// Grant every lock of `set` now, without waiting for anything (no
    /// message, no commit, no other task), or grant nothing and answer
    /// `None`: what a lock client can serve from the grants it caches.
    /// Because it never waits it can close no wait cycle, so a mount may
    /// call it while it holds the transaction (to take an operation's
    /// larger set again in place rather than start over); callers still
    /// ask in the global order. The default serves nothing.
    fn try_acquire(&self, set: &LockSet) -> Option<HeldLocks> {
        let _ = set;
        None
    }
}

/// The provider of a mount that is alone on its volume: every lock is
/// granted at once. `write_seq` is 0: with no other node writing, the
/// transaction seq alone orders this mount's items, so
/// `max(trans seq, 0)` stamps exactly what a lock-less mount did and
/// single-node volumes stay byte-identical. (A provider-owned counter
/// would stamp seqs the server never handed out, and the server refuses
/// log trees whose items are newer than their transaction.)
#[derive(Debug, Default)]
pub struct LocalLocks {
    acquisitions: Cell<u64>,
}

impl LocalLocks {
    pub fn new() -> LocalLocks {
        LocalLocks::default()
    }

    /// Sets acquired so far.
    pub fn acquisitions(&self) -> u64 {
        self.acquisitions.get()
    }

    fn grant(&self, set: &LockSet) -> HeldLocks {
        self.acquisitions.set(self.acquisitions.get() + 1);
        HeldLocks::new(
            set.requests().iter().map(|r| GrantedLock {
                range: r.range,
                mode: r.mode,
                write_seq: 0,
            }),
            None,
        )
    }
}

impl LockProvider for LocalLocks {
    fn acquire<'a>(&'a self, set: &'a LockSet) -> LockFut<'a, FsResult<HeldLocks>> {
        Box::pin(core::future::ready(Ok(self.grant(set))))
    }

    /// Always: nothing else holds a lock of this volume.
    fn try_acquire(&self, set: &LockSet) -> Option<HeldLocks> {
        Some(self.grant(set))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::items::{inode_index_key, inode_key, orphan_key, totl_key};
    use LockMode::*;

    const MODES: [LockMode; 4] = [Null, Read, Write, WriteOnly];

    #[test]
    fn compatibility_follows_the_reference_matrix() {
        // different mounts: rows granted, columns requested
        let other = [
            [true, true, true, true],
            [true, true, false, false],
            [true, false, false, false],
            [true, false, false, true],
        ];
        for (g, row) in MODES.iter().zip(other) {
            for (r, ok) in MODES.iter().zip(row) {
                assert_eq!(compatible(*g, *r, false), ok, "{g:?} vs {r:?}, other mount");
            }
        }
        // same mount: in-place READ->WRITE upgrade and shared modes only;
        // anything with NULL conflicts (the grant is invalidated first)
        let same_ok = [(Read, Read), (WriteOnly, WriteOnly), (Read, Write)];
        for g in MODES {
            for r in MODES {
                assert_eq!(
                    compatible(g, r, true),
                    same_ok.contains(&(g, r)),
                    "{g:?} vs {r:?}, same mount"
                );
            }
        }
    }

    #[test]
    fn modes_decode_serve_and_combine() {
        for m in MODES {
            assert_eq!(LockMode::from_wire(m.to_wire()), Some(m));
            assert_eq!(m.union(m), m);
            assert_eq!(m.union(Null), m);
        }
        assert_eq!(LockMode::from_wire(4), None);
        assert_eq!(LockMode::from_wire(255), None);
        assert!(Write.serves(Read) && !Read.serves(Write) && !Write.serves(WriteOnly));
        assert!(!WriteOnly.can_read() && WriteOnly.can_write() && !Read.can_write());
        assert_eq!(Read.union(WriteOnly), Write);
        assert_eq!(WriteOnly.union(Write), Write);
    }

    #[test]
    fn ranges_follow_scoutfs_geometry() {
        let g = LockRange::inode_group(5000);
        assert_eq!((g.start.first, g.end.first), (4096, 5119));
        assert!(g.contains(&inode_key(4096)) && g.contains(&inode_key(5119)));
        assert!(!g.contains(&inode_key(5120)) && !g.contains(&inode_key(4095)));
        assert_eq!(
            LockRange::covering(&Key::fs(5119, ty::DATA_EXTENT, 9, 9)),
            g
        );

        let m = LockRange::inode_index(ty::INODE_INDEX_META_SEQ, 2050);
        assert_eq!((m.start.second, m.end.second), (2048, 3071));
        let k = inode_index_key(ty::INODE_INDEX_META_SEQ, 3071, u64::MAX);
        assert!(m.contains(&k));
        assert_eq!(LockRange::covering(&k), m);
        let d = LockRange::inode_index(ty::INODE_INDEX_DATA_SEQ, 2050);
        assert!(!d.contains(&k), "the two index types are separate locks");

        assert!(LockRange::orphan().contains(&orphan_key(u64::MAX)));
        assert_eq!(LockRange::covering(&orphan_key(7)), LockRange::orphan());
        assert!(LockRange::xattr_totl().contains(&totl_key(u64::MAX, 1, 2)));
        assert_eq!(
            LockRange::covering(&totl_key(1, 2, 3)),
            LockRange::xattr_totl()
        );
        let r = LockRange::rename();
        assert_eq!(r.start, r.end);
        assert_eq!(LockRange::covering(&r.start), r);
    }

    #[test]
    fn ranges_print_what_they_cover() {
        use alloc::string::ToString;
        assert_eq!(
            LockRange::inode_group(5000).to_string(),
            "inode group 4096-5119"
        );
        assert_eq!(
            LockRange::inode_index(ty::INODE_INDEX_DATA_SEQ, 2050).to_string(),
            "data_seq index 2048-3071"
        );
        assert_eq!(LockRange::orphan().to_string(), "orphans");
        assert_eq!(LockRange::rename().to_string(), "rename");
        assert_eq!(LockRange::xattr_totl().to_string(), ".totl. xattrs");
    }

    #[test]
    fn sets_sort_rename_then_inodes_then_the_rest() {
        let mut s = LockSet::new();
        s.add(LockRange::xattr_totl(), WriteOnly);
        s.add(LockRange::inode_group(9000), Write);
        s.add(
            LockRange::inode_index(ty::INODE_INDEX_META_SEQ, 5),
            WriteOnly,
        );
        s.add(LockRange::orphan(), WriteOnly);
        s.add(LockRange::inode_group(3), Read);
        s.add(LockRange::rename(), Write);
        s.add(LockRange::inode_group(1000), Write); // same group as 3
        s.add(LockRange::quota(), Null);
        let got: Vec<(LockRange, LockMode)> =
            s.requests().iter().map(|r| (r.range, r.mode)).collect();
        assert_eq!(
            got,
            [
                (LockRange::rename(), Write),
                (LockRange::inode_group(0), Write),
                (LockRange::inode_group(9000), Write),
                (
                    LockRange::inode_index(ty::INODE_INDEX_META_SEQ, 0),
                    WriteOnly
                ),
                (LockRange::orphan(), WriteOnly),
                (LockRange::xattr_totl(), WriteOnly),
            ]
        );
        let (inodes, rest) = s.split_classes();
        assert_eq!((inodes.len(), rest.len()), (3, 3));
        assert!(inodes.requests().iter().all(|r| r.range.is_inode_class()));

        let held = crate::runtime::exec::block_on(LocalLocks::new().acquire(&s)).unwrap();
        assert!(s.granted_by(held.grants()));
        assert!(held.grants().iter().all(|g| g.write_seq == 0));
        let more = s.clone().with(LockRange::xattr_indx(), WriteOnly);
        assert!(!more.granted_by(held.grants()));
        let stronger = s.clone().with(LockRange::inode_group(9000), Read);
        assert!(stronger.granted_by(held.grants()), "WRITE serves READ");
        let upgrade = s.clone().with(LockRange::orphan(), Read);
        assert_eq!(upgrade.get(&LockRange::orphan()).unwrap().mode, Write);
        assert!(!upgrade.granted_by(held.grants()));
    }

    #[test]
    fn guards_release_once_on_drop() {
        use alloc::rc::Rc;
        let released = Rc::new(Cell::new(0));
        let r = released.clone();
        let g = GrantedLock {
            range: LockRange::orphan(),
            mode: WriteOnly,
            write_seq: 9,
        };
        let held = HeldLocks::new(
            alloc::vec![g],
            Some(Box::new(move |gs: &[GrantedLock]| {
                r.set(r.get() + gs.len())
            })),
        );
        assert_eq!(released.get(), 0);
        drop(held);
        assert_eq!(released.get(), 1);
    }
}
