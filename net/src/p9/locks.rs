//! POSIX byte-range locks held by the 9P server (`Tlock`, `Tgetlock`).
//!
//! Owns every lock of every connection, per inode. An owner is one client
//! process: (connection, `client_id`, `proc_id`), so a process's own locks
//! never conflict with each other and are split, merged and converted the
//! way `fcntl(F_SETLK)` does. The server calls [`LockTable::set`],
//! [`LockTable::conflict`] and, when a fid is clunked or a connection
//! closes, [`LockTable::release_fid`] / [`LockTable::release_conn`].
//! Invariants: one owner's ranges on an inode never overlap; the number of
//! ranges held is at most the table's bound (`ENOLCK` past it).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::types::Ino;

/// Who holds a lock: one process of one client connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LockOwner {
    pub conn: u64,
    pub proc_id: u32,
    pub client_id: Vec<u8>,
}

/// Shared (read) or exclusive (write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    Read,
    Write,
}

/// One held range; `end` is inclusive, `u64::MAX` means "to the end".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLock {
    pub owner: LockOwner,
    /// The fid it was taken through (dropped when that fid is clunked).
    pub fid: u32,
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
}

impl HeldLock {
    /// The 9P `length` of this range (0: to the end).
    pub fn length(&self) -> u64 {
        if self.end == u64::MAX {
            0
        } else {
            self.end - self.start + 1
        }
    }
}

/// The inclusive end of a 9P `(start, length)` range.
pub fn range_end(start: u64, length: u64) -> u64 {
    if length == 0 {
        u64::MAX
    } else {
        start.saturating_add(length - 1)
    }
}

/// Why a lock was not set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockError {
    /// Another owner holds a conflicting range.
    Conflict(HeldLock),
    /// The table is full.
    NoLocks,
}

/// Every lock the server holds.
#[derive(Debug)]
pub struct LockTable {
    by_ino: BTreeMap<Ino, Vec<HeldLock>>,
    held: usize,
    max: usize,
}

fn overlaps(l: &HeldLock, start: u64, end: u64) -> bool {
    l.start <= end && start <= l.end
}

impl LockTable {
    pub fn new(max: usize) -> LockTable {
        assert!(max > 0);
        LockTable {
            by_ino: BTreeMap::new(),
            held: 0,
            max,
        }
    }

    /// Ranges held in all.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The locks on `ino`, in no particular order.
    pub fn locks_of(&self, ino: Ino) -> &[HeldLock] {
        self.by_ino.get(&ino).map_or(&[], |v| v.as_slice())
    }

    /// The first lock of another owner that a `kind` lock on
    /// `[start, end]` by `owner` would conflict with (`F_GETLK`).
    pub fn conflict(
        &self,
        ino: Ino,
        owner: &LockOwner,
        kind: LockKind,
        start: u64,
        end: u64,
    ) -> Option<&HeldLock> {
        self.locks_of(ino).iter().find(|l| {
            l.owner != *owner
                && overlaps(l, start, end)
                && (kind == LockKind::Write || l.kind == LockKind::Write)
        })
    }

    /// Set (`Some(kind)`) or clear (`None`) `owner`'s lock on
    /// `[start, end]`, as `fcntl(F_SETLK)`: the owner's own overlapping
    /// ranges are replaced, split or merged.
    pub fn set(
        &mut self,
        ino: Ino,
        owner: &LockOwner,
        fid: u32,
        kind: Option<LockKind>,
        start: u64,
        end: u64,
    ) -> Result<(), LockError> {
        assert!(start <= end, "lock range start {start} > end {end}");
        if let Some(k) = kind {
            if let Some(c) = self.conflict(ino, owner, k, start, end) {
                return Err(LockError::Conflict(c.clone()));
            }
        }
        let old: &[HeldLock] = self.locks_of(ino);
        let before = old.len();
        // Cut the owner's ranges out of [start, end].
        let mut kept: Vec<HeldLock> = Vec::with_capacity(before + 2);
        for l in old {
            if l.owner != *owner || !overlaps(l, start, end) {
                kept.push(l.clone());
                continue;
            }
            if l.start < start {
                kept.push(HeldLock {
                    end: start - 1,
                    ..l.clone()
                });
            }
            if l.end > end {
                kept.push(HeldLock {
                    start: end + 1,
                    ..l.clone()
                });
            }
        }
        if let Some(k) = kind {
            // Merge with the owner's touching ranges of the same kind.
            let (mut s, mut e) = (start, end);
            kept.retain(|l| {
                let touches = l.owner == *owner
                    && l.kind == k
                    && (l.end.checked_add(1) == Some(s)
                        || e.checked_add(1) == Some(l.start)
                        || overlaps(l, s, e));
                if touches {
                    s = s.min(l.start);
                    e = e.max(l.end);
                }
                !touches
            });
            kept.push(HeldLock {
                owner: owner.clone(),
                fid,
                kind: k,
                start: s,
                end: e,
            });
        }
        let after = kept.len();
        if after > before && self.held + (after - before) > self.max {
            return Err(LockError::NoLocks);
        }
        self.held = self.held + after - before;
        if kept.is_empty() {
            self.by_ino.remove(&ino);
        } else {
            self.by_ino.insert(ino, kept);
        }
        debug_assert!(self.owner_ranges_disjoint(ino));
        Ok(())
    }

    /// Drop every lock taken through `fid` of connection `conn`.
    pub fn release_fid(&mut self, conn: u64, fid: u32) -> usize {
        self.release_where(|l| l.owner.conn == conn && l.fid == fid)
    }

    /// Drop every lock of connection `conn`.
    pub fn release_conn(&mut self, conn: u64) -> usize {
        self.release_where(|l| l.owner.conn == conn)
    }

    fn release_where(&mut self, pred: impl Fn(&HeldLock) -> bool) -> usize {
        let mut dropped = 0;
        self.by_ino.retain(|_, list| {
            let before = list.len();
            list.retain(|l| !pred(l));
            dropped += before - list.len();
            !list.is_empty()
        });
        self.held -= dropped;
        dropped
    }

    fn owner_ranges_disjoint(&self, ino: Ino) -> bool {
        let list = self.locks_of(ino);
        list.iter().enumerate().all(|(i, a)| {
            list[i + 1..]
                .iter()
                .all(|b| a.owner != b.owner || !overlaps(a, b.start, b.end))
        })
    }
}

impl From<LockError> for Errno {
    fn from(e: LockError) -> Errno {
        match e {
            LockError::Conflict(_) => Errno::EAGAIN,
            LockError::NoLocks => Errno::ENOLCK,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn owner(conn: u64, pid: u32) -> LockOwner {
        LockOwner {
            conn,
            proc_id: pid,
            client_id: b"guest".to_vec(),
        }
    }

    fn ranges(t: &LockTable, ino: Ino) -> Vec<(u32, LockKind, u64, u64)> {
        let mut v: Vec<_> = t
            .locks_of(ino)
            .iter()
            .map(|l| (l.owner.proc_id, l.kind, l.start, l.end))
            .collect();
        v.sort_by_key(|r| (r.0, r.2));
        v
    }

    #[test]
    fn conflicts_between_owners_only() {
        let mut t = LockTable::new(100);
        let (a, b) = (owner(1, 10), owner(1, 20));
        t.set(5, &a, 1, Some(LockKind::Write), 0, 99).unwrap();
        // Same owner: no conflict with itself (F_GETLK on our own lock).
        assert!(t.conflict(5, &a, LockKind::Write, 0, 99).is_none());
        let c = t.conflict(5, &b, LockKind::Read, 50, 50).unwrap();
        assert_eq!((c.owner.proc_id, c.start, c.end), (10, 0, 99));
        assert!(t.conflict(5, &b, LockKind::Read, 100, 200).is_none());
        assert!(t.conflict(6, &b, LockKind::Write, 0, 99).is_none());
        assert!(matches!(
            t.set(5, &b, 2, Some(LockKind::Read), 99, u64::MAX),
            Err(LockError::Conflict(_))
        ));
        // Same pid on another connection is another owner.
        assert!(t.conflict(5, &owner(2, 10), LockKind::Read, 0, 0).is_some());
        // Readers share.
        t.set(5, &a, 1, Some(LockKind::Read), 0, 99).unwrap();
        t.set(5, &b, 2, Some(LockKind::Read), 0, 9).unwrap();
        assert!(t.conflict(5, &b, LockKind::Write, 50, 60).is_some());
        assert_eq!(t.held(), 2);
    }

    #[test]
    fn split_merge_convert_and_unlock() {
        let mut t = LockTable::new(100);
        let a = owner(1, 10);
        t.set(1, &a, 1, Some(LockKind::Write), 0, 99).unwrap();
        t.set(1, &a, 1, Some(LockKind::Read), 40, 59).unwrap();
        assert_eq!(
            ranges(&t, 1),
            vec![
                (10, LockKind::Write, 0, 39),
                (10, LockKind::Read, 40, 59),
                (10, LockKind::Write, 60, 99)
            ]
        );
        t.set(1, &a, 1, None, 30, 69).unwrap();
        assert_eq!(
            ranges(&t, 1),
            vec![(10, LockKind::Write, 0, 29), (10, LockKind::Write, 70, 99)]
        );
        // Adjacent same-kind ranges merge.
        t.set(1, &a, 1, Some(LockKind::Write), 30, 69).unwrap();
        assert_eq!(ranges(&t, 1), vec![(10, LockKind::Write, 0, 99)]);
        t.set(1, &a, 1, Some(LockKind::Write), 100, u64::MAX)
            .unwrap();
        assert_eq!(ranges(&t, 1), vec![(10, LockKind::Write, 0, u64::MAX)]);
        t.set(1, &a, 1, None, 0, u64::MAX).unwrap();
        assert!(ranges(&t, 1).is_empty());
        assert_eq!(t.held(), 0);
        assert_eq!(range_end(10, 0), u64::MAX);
        assert_eq!(range_end(10, 5), 14);
        assert_eq!(range_end(u64::MAX - 1, 10), u64::MAX);
    }

    #[test]
    fn bound_and_release() {
        let mut t = LockTable::new(3);
        let a = owner(1, 10);
        t.set(1, &a, 7, Some(LockKind::Read), 0, 0).unwrap();
        t.set(1, &a, 7, Some(LockKind::Read), 2, 2).unwrap();
        t.set(2, &owner(2, 1), 3, Some(LockKind::Read), 0, 0)
            .unwrap();
        assert_eq!(
            t.set(1, &a, 7, Some(LockKind::Read), 4, 4),
            Err(LockError::NoLocks)
        );
        assert_eq!(t.held(), 3);
        // Splitting a range would grow the table too.
        assert_eq!(t.set(2, &owner(2, 1), 3, None, 0, 0), Ok(()));
        assert_eq!(t.held(), 2);
        // A merge that shrinks is fine when full.
        t.set(1, &a, 7, Some(LockKind::Read), 1, 1).unwrap();
        assert_eq!(ranges(&t, 1), vec![(10, LockKind::Read, 0, 2)]);
        t.set(3, &owner(9, 1), 1, Some(LockKind::Write), 0, 0)
            .unwrap();
        assert_eq!(t.release_fid(1, 8), 0);
        assert_eq!(t.release_fid(1, 7), 1);
        assert_eq!(t.release_conn(9), 1);
        assert_eq!(t.held(), 0);
        assert_eq!(Errno::from(LockError::NoLocks), Errno::ENOLCK);
    }
}
