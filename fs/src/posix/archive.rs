//! The archival vocabulary of a mount: what `stat-more`, `walk-inodes`
//! and `data-waiting` return, and the per-mount list of operations
//! waiting for offline data to be staged.
//!
//! A read, write or size change that meets an OFFLINE extent does not
//! fail: the operation lets go of its locks and hold, registers a waiter
//! `(ino, iblock, op)` here and sleeps until the inode's extents change
//! (a stage, a truncate, a punch) or an archive agent fails it with
//! `data-wait-err`; then it starts over. Waiters live in memory only, one
//! list per mount (as in scoutfs). A dropped waiter (an interrupted FUSE
//! or 9P request) leaves the list at once.
//!
//! The extent work (release, stage) is in `data`; the operations that
//! take locks and holds are in `mount`.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

use crate::errno::{Errno, FsResult};
use crate::runtime::env::Timespec;

/// Waiter operations (scoutfs `SCOUTFS_IOC_DWO_*`), a bit mask.
pub const DWO_READ: u8 = 1;
pub const DWO_WRITE: u8 = 2;
pub const DWO_CHANGE_SIZE: u8 = 4;
pub const DWO_ALL: u8 = DWO_READ | DWO_WRITE | DWO_CHANGE_SIZE;

/// Most operations waiting at once in one mount; one more gets `EAGAIN`
/// (front ends bound their requests in flight far below this).
pub const MAX_WAITERS: usize = 1 << 16;
/// Largest errno `data-wait-err` may hand to waiters (Linux `MAX_ERRNO`).
pub const MAX_ERRNO: i64 = 4095;
/// Times one operation waits and starts over before it gives up with
/// `EIO` (each start follows a change of the extents it waits for).
pub const MAX_DATA_WAITS: usize = 1 << 20;

/// The name of a waiter operation mask, as the reference CLI prints it.
pub fn dwo_names(ops: u8) -> alloc::string::String {
    let mut s = alloc::string::String::new();
    for (bit, name) in [
        (DWO_READ, "read"),
        (DWO_WRITE, "write"),
        (DWO_CHANGE_SIZE, "change_size"),
    ] {
        if ops & bit != 0 {
            if !s.is_empty() {
                s.push(',');
            }
            s.push_str(name);
        }
    }
    s
}

/// Parse a waiter operation name (`read`, `write`, `change_size`).
pub fn dwo_parse(name: &str) -> Option<u8> {
    match name {
        "read" => Some(DWO_READ),
        "write" => Some(DWO_WRITE),
        "change_size" => Some(DWO_CHANGE_SIZE),
        _ => None,
    }
}

/// `scoutfs_ioctl_stat_more`: what an archive agent reads of an inode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatMore {
    pub meta_seq: u64,
    pub data_seq: u64,
    pub data_version: u64,
    pub online_blocks: u64,
    pub offline_blocks: u64,
    pub crtime: Timespec,
    pub size: u64,
}

/// The two inode indexes `walk-inodes` reads (scoutfs numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkIndex {
    MetaSeq = 0,
    DataSeq = 1,
}

impl WalkIndex {
    pub fn parse(name: &str) -> Option<WalkIndex> {
        match name {
            "meta_seq" => Some(WalkIndex::MetaSeq),
            "data_seq" => Some(WalkIndex::DataSeq),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WalkIndex::MetaSeq => "meta_seq",
            WalkIndex::DataSeq => "data_seq",
        }
    }
}

/// A position in an inode index: `(major, minor, ino)`; the seq indexes
/// keep `minor` 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct WalkEntry {
    pub major: u64,
    pub minor: u32,
    pub ino: u64,
}

impl WalkEntry {
    pub const MAX: WalkEntry = WalkEntry {
        major: u64::MAX,
        minor: u32::MAX,
        ino: u64::MAX,
    };
}

/// What `setattr_more` sets on a new, empty regular file (an archive
/// restore): each `None` leaves the attribute alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttrMore {
    /// Non-zero; only while the file's data_version is 0.
    pub data_version: Option<u64>,
    /// Only on an empty file (size 0, no extents).
    pub size: Option<u64>,
    /// One offline extent over `[0, size)` (needs a non-zero `size`).
    pub offline: bool,
    /// Otherwise the current time.
    pub ctime: Option<Timespec>,
    pub crtime: Option<Timespec>,
}

/// A link to an inode (`get-referring-entries`): the directory, the
/// entry's readdir position, its Linux `DT_*` type and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferringEntry {
    pub dir: u64,
    pub pos: u64,
    pub ino: u64,
    pub dtype: u8,
    pub name: Vec<u8>,
}

/// One path to an inode (`ino-path`): the link `(dir, pos)` it goes
/// through (the next cursor is `pos + 1`) and the path from the root,
/// without a leading `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InoPath {
    pub dir: u64,
    pub pos: u64,
    pub path: Vec<u8>,
}

/// `move_blocks` flag (scoutfs `SCOUTFS_IOC_MB_STAGE`): move into the
/// target's OFFLINE extents, as a stage that copies nothing; the target's
/// data_version must be the caller's and stays.
pub const MB_STAGE: u64 = 1;

/// A `move_blocks` request (scoutfs `scoutfs_ioctl_move_blocks`), made
/// on the target file: move the extents of bytes `[from_off, from_off +
/// len)` of `from` to `to_off` of the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MoveBlocks {
    pub from: u64,
    pub from_off: u64,
    pub len: u64,
    pub to_off: u64,
    /// Checked against the target's with [`MB_STAGE`], ignored otherwise.
    pub data_version: u64,
    /// [`MB_STAGE`] or 0; other bits are `EINVAL`.
    pub flags: u64,
}

/// Longest path `ino_path` returns (Linux `PATH_MAX`, with its NUL).
pub const PATH_MAX: usize = 4096;

/// One line of `data-waiting`: the ops waiting on one block, merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitingEntry {
    pub ino: u64,
    pub iblock: u64,
    pub ops: u8,
}

/// Where an operation stopped for offline data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub iblock: u64,
    /// [`DataWaiters::changes`] when it read the extents.
    pub seen: u64,
}

struct Slot {
    ops: u8,
    waker: Option<Waker>,
    /// Set when the waiter should run again: `Ok` to retry, `Err` to fail.
    woken: Option<FsResult<()>>,
}

#[derive(Default)]
struct State {
    /// By `(ino, iblock, id)`: listing order, and a range per inode.
    slots: BTreeMap<(u64, u64, u64), Slot>,
    next_id: u64,
    /// Bumped on every wake: a waiter whose operation read the extents
    /// before the last change retries at once instead of sleeping.
    changes: u64,
}

/// The operations of one mount waiting for offline data.
#[derive(Default)]
pub struct DataWaiters {
    state: RefCell<State>,
}

impl DataWaiters {
    pub fn new() -> DataWaiters {
        DataWaiters::default()
    }

    /// The change count an operation records with the extents it reads.
    pub fn changes(&self) -> u64 {
        self.state.borrow().changes
    }

    /// How many operations wait.
    pub fn len(&self) -> usize {
        self.state.borrow().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until `ino`'s extents change after `b.seen` (`Ok`: start the
    /// operation over) or a `data-wait-err` fails the wait.
    pub fn wait(&self, ino: u64, b: Blocked, op: u8) -> FsResult<DataWait<'_>> {
        let mut st = self.state.borrow_mut();
        if st.changes != b.seen {
            return Ok(DataWait { w: self, key: None });
        }
        if st.slots.len() >= MAX_WAITERS {
            return Err(Errno::EAGAIN);
        }
        let id = st.next_id;
        st.next_id = st.next_id.wrapping_add(1);
        let key = (ino, b.iblock, id);
        st.slots.insert(
            key,
            Slot {
                ops: op,
                waker: None,
                woken: None,
            },
        );
        Ok(DataWait {
            w: self,
            key: Some(key),
        })
    }

    /// The extents of `ino` changed: every waiter of it retries.
    pub fn wake_inode(&self, ino: u64) {
        self.wake_inodes(ino, ino);
    }

    /// The extents of inodes `lo..=hi` may have changed elsewhere (another
    /// node took their lock): their waiters retry and read them again.
    pub fn wake_inodes(&self, lo: u64, hi: u64) {
        let mut st = self.state.borrow_mut();
        st.changes = st.changes.wrapping_add(1);
        if lo > hi {
            return;
        }
        for (_, slot) in st.slots.range_mut((lo, 0, 0)..=(hi, u64::MAX, u64::MAX)) {
            if slot.woken.is_none() {
                slot.woken = Some(Ok(()));
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Fail the waiters of `ino` on blocks `[first, last]` whose op is in
    /// `ops` with `err`; returns how many.
    pub fn fail(&self, ino: u64, first: u64, last: u64, ops: u8, err: Errno) -> u64 {
        let mut st = self.state.borrow_mut();
        let mut n = 0;
        for (_, slot) in st.slots.range_mut((ino, first, 0)..=(ino, last, u64::MAX)) {
            if slot.ops & ops != 0 && slot.woken.is_none() {
                slot.woken = Some(Err(err));
                n += 1;
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
            }
        }
        n
    }

    /// Up to `max` waiting blocks after `(after_ino, after_iblock)`, in
    /// `(ino, iblock)` order, the ops of waiters on one block merged.
    /// Waiters already woken are not listed.
    pub fn list(&self, after_ino: u64, after_iblock: u64, max: usize) -> Vec<WaitingEntry> {
        let st = self.state.borrow();
        let mut out: Vec<WaitingEntry> = Vec::new();
        let start = match after_iblock.checked_add(1) {
            Some(b) => (after_ino, b, 0),
            None => match after_ino.checked_add(1) {
                Some(i) => (i, 0, 0),
                None => return out,
            },
        };
        for (&(ino, iblock, _), slot) in st.slots.range(start..) {
            if slot.woken.is_some() {
                continue;
            }
            match out.last_mut() {
                Some(l) if l.ino == ino && l.iblock == iblock => l.ops |= slot.ops,
                _ => {
                    if out.len() == max {
                        break;
                    }
                    out.push(WaitingEntry {
                        ino,
                        iblock,
                        ops: slot.ops,
                    })
                }
            }
        }
        out
    }
}

/// A registered wait; dropping it leaves the list.
pub struct DataWait<'w> {
    w: &'w DataWaiters,
    /// `None`: the extents already changed, retry at once.
    key: Option<(u64, u64, u64)>,
}

impl Future for DataWait<'_> {
    type Output = FsResult<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FsResult<()>> {
        let this = self.get_mut();
        let Some(key) = this.key else {
            return Poll::Ready(Ok(()));
        };
        let mut st = this.w.state.borrow_mut();
        let Some(slot) = st.slots.get_mut(&key) else {
            this.key = None;
            return Poll::Ready(Err(Errno::EIO));
        };
        if let Some(r) = slot.woken {
            st.slots.remove(&key);
            this.key = None;
            return Poll::Ready(r);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for DataWait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.w.state.borrow_mut().slots.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(w: &mut DataWait<'_>) -> Poll<FsResult<()>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(w).poll(&mut cx)
    }

    #[test]
    fn waiters_list_merge_wake_and_fail() {
        let ws = DataWaiters::new();
        let seen = ws.changes();
        let b = |iblock| Blocked { iblock, seen };
        let mut r1 = ws.wait(10, b(0), DWO_READ).unwrap();
        let mut r2 = ws.wait(10, b(0), DWO_WRITE).unwrap();
        let mut r3 = ws.wait(10, b(1), DWO_READ).unwrap();
        let mut o = ws.wait(11, b(5), DWO_CHANGE_SIZE).unwrap();
        for w in [&mut r1, &mut r2, &mut r3, &mut o] {
            assert!(poll(w).is_pending());
        }
        let l = ws.list(0, 0, 10);
        assert_eq!(
            l,
            [
                WaitingEntry {
                    ino: 10,
                    iblock: 0,
                    ops: DWO_READ | DWO_WRITE
                },
                WaitingEntry {
                    ino: 10,
                    iblock: 1,
                    ops: DWO_READ
                },
                WaitingEntry {
                    ino: 11,
                    iblock: 5,
                    ops: DWO_CHANGE_SIZE
                },
            ]
        );
        assert_eq!(ws.list(10, 0, 10).len(), 2, "the cursor is exclusive");
        assert_eq!(ws.list(0, 0, 1).len(), 1);
        assert_eq!(ws.fail(10, 0, 5, DWO_READ, Errno::EIO), 2);
        assert_eq!(poll(&mut r1), Poll::Ready(Err(Errno::EIO)));
        assert!(poll(&mut r2).is_pending(), "a write is not a read");
        assert_eq!(poll(&mut r3), Poll::Ready(Err(Errno::EIO)));
        ws.wake_inode(10);
        assert_eq!(poll(&mut r2), Poll::Ready(Ok(())));
        assert!(poll(&mut o).is_pending());
        drop(o);
        assert!(ws.is_empty(), "a dropped waiter leaves the list");
        // read before the last change: no sleeping
        let mut late = ws.wait(12, b(0), DWO_READ).unwrap();
        assert_eq!(poll(&mut late), Poll::Ready(Ok(())));
        assert!(ws.is_empty());
    }

    #[test]
    fn op_names_round_trip() {
        assert_eq!(dwo_names(DWO_READ | DWO_CHANGE_SIZE), "read,change_size");
        for op in [DWO_READ, DWO_WRITE, DWO_CHANGE_SIZE] {
            assert_eq!(dwo_parse(&dwo_names(op)), Some(op));
        }
        assert_eq!(dwo_parse("nope"), None);
    }
}
