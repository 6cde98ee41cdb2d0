//! Cluster locks as the mount takes them: which locks each operation asks
//! for and in what order, that none is asked for while the transaction is
//! held, the `write_seq` rule (an item written under a lock carries
//! `max(transaction seq, write_seq)`, so the newest writer wins), and the
//! index locks an operation takes part way when a commit moves the
//! transaction seq into another index group; locks found under the hold
//! taken in place by a try that never waits (and in the order) instead of
//! starting over, under the local provider and the slow one.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use common::{block_on, handle, Vol};
use scoutvm_fs::cluster::lock::{
    lock_order, GrantedLock, HeldLocks, LockFut, LockMode, LockProvider, LockRange, LockSet,
};
use scoutvm_fs::errno::FsResult;
use scoutvm_fs::format::items::{inode_key, InodeItem};
use scoutvm_fs::format::key::{ty, Key};
use scoutvm_fs::posix::backend::Backend;
use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::posix::types::*;
use scoutvm_fs::sim::mem_backend::MemBackend;
use scoutvm_fs::sim::slow_locks::SlowLocks;

use LockMode::{Read, Write, WriteOnly};

/// Grants at once with a fixed `write_seq`, and records every set asked
/// for and whether the mount's transaction was held at the time (in
/// these single-task tests: by the asking operation, parked or not). When
/// asked while it is held, it can first make the mount commit from
/// another task, as an invalidation would. With `grant_tries` it also
/// grants `try_acquire`. Either way it keeps the ranges held and counts
/// acquisitions that do not sort after all of them.
#[derive(Default)]
struct Recorder {
    write_seq: Cell<u64>,
    sets: RefCell<Vec<Vec<(LockRange, LockMode)>>>,
    mount: RefCell<Weak<Mount>>,
    asked_in_hold: Cell<u64>,
    commit_when_held: Cell<bool>,
    commits: Cell<u64>,
    grant_tries: Cell<bool>,
    /// Sets granted by `try_acquire`, and how many with the transaction
    /// held.
    tries: RefCell<Vec<Vec<(LockRange, LockMode)>>>,
    tried_in_hold: Cell<u64>,
    held: Rc<RefCell<Vec<LockRange>>>,
    out_of_order: Cell<u64>,
}

impl Recorder {
    fn take(&self) -> Vec<Vec<(LockRange, LockMode)>> {
        std::mem::take(&mut *self.sets.borrow_mut())
    }

    fn in_hold(&self) -> Option<Rc<Mount>> {
        self.mount
            .borrow()
            .upgrade()
            .filter(|m| m.transaction_held())
    }

    /// Grant `set` as asked: check the order against what is held, hold
    /// it until the guard goes.
    fn grant(&self, set: &LockSet) -> HeldLocks {
        let mut held = self.held.borrow_mut();
        for r in set.requests() {
            if held
                .iter()
                .any(|h| lock_order(h, &r.range) != std::cmp::Ordering::Less)
            {
                self.out_of_order.set(self.out_of_order.get() + 1);
                eprintln!("out of order: {:?} after {:?}", r.range, held);
            }
        }
        held.extend(set.requests().iter().map(|r| r.range));
        let grants: Vec<GrantedLock> = set
            .requests()
            .iter()
            .map(|r| GrantedLock {
                range: r.range,
                mode: r.mode,
                write_seq: self.write_seq.get(),
            })
            .collect();
        let held = self.held.clone();
        HeldLocks::new(
            grants,
            Some(Box::new(move |gs: &[GrantedLock]| {
                let mut held = held.borrow_mut();
                for g in gs {
                    let i = held.iter().position(|h| *h == g.range).expect("held");
                    held.remove(i);
                }
            })),
        )
    }
}

impl LockProvider for Recorder {
    fn try_acquire(&self, set: &LockSet) -> Option<HeldLocks> {
        if !self.grant_tries.get() {
            return None;
        }
        if self.in_hold().is_some() {
            self.tried_in_hold.set(self.tried_in_hold.get() + 1);
        }
        self.tries
            .borrow_mut()
            .push(set.requests().iter().map(|r| (r.range, r.mode)).collect());
        Some(self.grant(set))
    }

    fn acquire<'a>(&'a self, set: &'a LockSet) -> LockFut<'a, FsResult<HeldLocks>> {
        let held_by = self.in_hold();
        if held_by.is_some() {
            self.asked_in_hold.set(self.asked_in_hold.get() + 1);
        }
        let commit = held_by.filter(|_| self.commit_when_held.get());
        self.sets
            .borrow_mut()
            .push(set.requests().iter().map(|r| (r.range, r.mode)).collect());
        let held = self.grant(set);
        Box::pin(async move {
            if let Some(m) = commit {
                // deadlocks (block_on panics) unless the hold admits it
                let task = handle().spawn(async move { m.sync().await }).unwrap();
                task.await?;
                self.commits.set(self.commits.get() + 1);
            }
            Ok(held)
        })
    }
}

fn mount_with(vol: &Vol, locks: Rc<dyn LockProvider>) -> (Rc<Mount>, Rc<MemBackend>) {
    let be = MemBackend::new(vol.store.clone());
    let m = block_on(Mount::mount_with_locks(
        be.clone(),
        vol.data.clone(),
        vol.clock.clone(),
        vol.opts,
        locks,
    ))
    .expect("mount");
    (Rc::new(m), be)
}

fn recorded(vol: &Vol) -> (Rc<Mount>, Rc<MemBackend>, Rc<Recorder>) {
    let rec = Rc::new(Recorder::default());
    let (m, be) = mount_with(vol, rec.clone());
    *rec.mount.borrow_mut() = Rc::downgrade(&m);
    (m, be, rec)
}

fn group(ino: u64) -> LockRange {
    LockRange::inode_group(ino)
}

fn meta(seq: u64) -> LockRange {
    LockRange::inode_index(ty::INODE_INDEX_META_SEQ, seq)
}

fn data(seq: u64) -> LockRange {
    LockRange::inode_index(ty::INODE_INDEX_DATA_SEQ, seq)
}

/// The locks of an operation's last (successful) start: its inode-class
/// set and its zone set, as one list.
fn last_start(sets: &[Vec<(LockRange, LockMode)>]) -> Vec<(LockRange, LockMode)> {
    let n = sets.len();
    assert!(n >= 2, "{sets:?}");
    let (a, b) = (&sets[n - 2], &sets[n - 1]);
    assert!(a.iter().all(|(r, _)| r.is_inode_class()), "{a:?}");
    assert!(b.iter().all(|(r, _)| !r.is_inode_class()), "{b:?}");
    a.iter().chain(b).copied().collect()
}

#[track_caller]
fn assert_in_lock_order(sets: &[Vec<(LockRange, LockMode)>]) {
    for s in sets {
        assert!(
            s.windows(2)
                .all(|w| lock_order(&w[0].0, &w[1].0) == std::cmp::Ordering::Less),
            "out of order: {s:?}"
        );
    }
}

/// Create regular files in `dir` until the next inode number is `ino`.
fn fill_to(m: &Mount, dir: u64, ino: u64) {
    let c = Cred::root();
    loop {
        let name = format!("fill{}", m.counters().lock_acquisitions);
        let a = block_on(m.create(&c, dir, name.as_bytes(), 0o644)).unwrap();
        assert!(a.ino < ino);
        if a.ino == ino - 1 {
            return;
        }
    }
}

#[test]
fn operations_ask_for_their_locks_in_order_and_never_inside_the_hold() {
    let vol = Vol::new();
    let (m, be, rec) = recorded(&vol);
    let c = Cred::root();
    let t = be.trans_seq();
    assert!(t < 1024, "every seq of this test is in index group 0");

    // inodes in four lock groups: root 1 (group 0), src 1024, dir 2048,
    // target 3072
    let src = block_on(m.create(&c, 1, b"src", 0o644)).unwrap().ino;
    assert_eq!(src, 1024);
    fill_to(&m, 1, 2048);
    let dir = block_on(m.mkdir(&c, 1, b"dir", 0o755)).unwrap().ino;
    assert_eq!(dir, 2048);
    fill_to(&m, 1, 3072);
    let target = block_on(m.create(&c, dir, b"target", 0o644)).unwrap().ino;
    assert_eq!(target, 3072);
    assert_in_lock_order(&rec.take());

    // create: the directory's and the new inode's groups, the index
    // groups of the new inode's seqs
    let f = block_on(m.create(&c, dir, b"new", 0o644)).unwrap();
    let sets = rec.take();
    assert_in_lock_order(&sets);
    let got = last_start(&sets);
    assert_eq!(
        got,
        [
            (group(dir), Write),
            (group(f.ino), Write),
            (meta(f.meta_seq), WriteOnly),
            (data(f.data_seq), WriteOnly),
        ]
    );

    // rename across directories, replacing a file: the rename lock, then
    // both directories' and both inodes' groups in inode order, then the
    // index groups, the orphan zone and the xattr zones (the target is
    // deleted)
    block_on(m.rename(&c, 1, b"src", dir, b"target", 0)).unwrap();
    let sets = rec.take();
    assert_in_lock_order(&sets);
    assert_eq!(
        sets[0],
        [
            (LockRange::rename(), Write),
            (group(1), Write),
            (group(dir), Write),
        ],
        "the first guess: what the arguments name"
    );
    let got = last_start(&sets);
    assert_eq!(
        got,
        [
            (LockRange::rename(), Write),
            (group(1), Write),
            (group(src), Write),
            (group(dir), Write),
            (group(target), Write),
            (meta(t), WriteOnly),
            (data(t), WriteOnly),
            (LockRange::orphan(), WriteOnly),
            (LockRange::xattr_totl(), WriteOnly),
            (LockRange::xattr_indx(), WriteOnly),
        ]
    );
    assert_eq!(
        block_on(m.getattr(target)),
        Err(scoutvm_fs::errno::Errno::ENOENT)
    );

    // a rename within one directory takes no rename lock
    block_on(m.rename(&c, dir, b"target", dir, b"back", 0)).unwrap();
    let sets = rec.take();
    assert!(sets
        .iter()
        .flatten()
        .all(|(r, _)| *r != LockRange::rename()));
    assert!(last_start(&sets).contains(&(group(src), Write)));

    // setxattr of a .totl. name: the inode's group, its index groups and
    // the totals zone, write-only; no .indx. zone
    block_on(m.setxattr(&c, src, b"scoutfs.totl.t.1.2.3", b"5", 0)).unwrap();
    let sets = rec.take();
    assert_in_lock_order(&sets);
    assert_eq!(sets.len(), 2, "everything was known up front");
    assert_eq!(
        last_start(&sets),
        [
            (group(src), Write),
            (meta(t), WriteOnly),
            (data(t), WriteOnly),
            (LockRange::xattr_totl(), WriteOnly),
        ]
    );

    // reads: READ on the group, nothing else
    block_on(m.getattr(target + 1)).unwrap();
    block_on(m.read(src, 0, 10)).unwrap();
    let sets = rec.take();
    assert_eq!(
        sets,
        [vec![(group(target + 1), Read)], vec![(group(src), Read)]]
    );
    // a lookup finds the inode behind the name and adds its group
    block_on(m.lookup(&c, dir, b"back")).unwrap();
    let sets = rec.take();
    assert_eq!(
        sets.last().unwrap(),
        &vec![(group(src), Read), (group(dir), Read)]
    );

    // unlink of the last link: orphan and xattr zones for the deletion
    block_on(m.unlink(&c, dir, b"back")).unwrap();
    let got = last_start(&rec.take());
    assert!(got.contains(&(group(src), Write)) && got.contains(&(group(dir), Write)));
    assert!(got.contains(&(LockRange::orphan(), WriteOnly)));
    assert!(got.contains(&(LockRange::xattr_totl(), WriteOnly)));

    // sync takes no locks at all
    block_on(m.sync()).unwrap();
    assert!(rec.take().is_empty());

    assert_eq!(
        rec.asked_in_hold.get(),
        0,
        "no lock asked for inside the hold"
    );
    assert_eq!(rec.out_of_order.get(), 0);
    let mc = m.counters();
    assert_eq!(mc.items.unlocked_writes + mc.items.unlocked_reads, 0);
    assert_eq!(mc.locks_in_hold + mc.bad_grants, 0);
}

/// The inode item of `ino` in the store, decoded.
fn stored_inode(vol: &Vol, ino: u64) -> InodeItem {
    InodeItem::decode(&vol.store.item(&inode_key(ino)).unwrap()).unwrap()
}

/// Our mount's transaction is old (seq `t`); another mount then writes
/// the file's inode item at seq 40, newer than `t`; then our mount
/// changes the file under a lock granted with `write_seq`.
fn write_after_a_newer_mount(write_seq: u64) -> (Vol, u64, u64) {
    let vol = Vol::new();
    let c = Cred::root();
    let ino = {
        let (m, _be) = vol.mount();
        let ino = block_on(m.create(&c, 1, b"f", 0o644)).unwrap().ino;
        block_on(m.unmount()).unwrap();
        ino
    };
    let (m, be, rec) = recorded(&vol);
    rec.write_seq.set(write_seq);
    let t = be.trans_seq();
    assert!(t < 40);
    let mut other = stored_inode(&vol, ino);
    other.uid = 4242;
    vol.store
        .put_at_seq(inode_key(ino), Some(&other.encode(2)), 40);

    let sa = SetAttr {
        uid: Some(7),
        ..SetAttr::default()
    };
    block_on(m.setattr(&c, ino, &sa)).unwrap();
    block_on(m.sync()).unwrap();
    drop(m);
    (vol, ino, t)
}

#[test]
fn items_written_under_a_lock_carry_its_write_seq_and_win() {
    // the lock was granted after the other mount's write: write_seq 100
    let (vol, ino, t) = write_after_a_newer_mount(100);
    assert_eq!(
        vol.store.ahead_seq(&inode_key(ino)),
        Some(100),
        "stamped with the lock's write_seq, not the transaction's {t}"
    );
    assert_eq!(stored_inode(&vol, ino).uid, 7);
    assert_eq!(vol.store.stale_versions(), 0);
    // a later mount reads the newest version
    let (m, _be) = vol.mount();
    assert_eq!(block_on(m.getattr(ino)).unwrap().uid, 7);

    // without the rule (write_seq 0: the transaction seq alone) the later
    // write carries the older seq and loses to the version it replaced
    let (vol, ino, _) = write_after_a_newer_mount(0);
    assert_eq!(vol.store.ahead_seq(&inode_key(ino)), Some(40));
    assert!(vol.store.stale_versions() > 0);
    let (m, _be) = vol.mount();
    assert_eq!(block_on(m.getattr(ino)).unwrap().uid, 4242);
}

#[test]
fn a_commit_part_way_takes_the_next_index_group_with_the_hold_parked() {
    let vol = Vol::new();
    // push the volume's seq to just below an index group boundary
    vol.store
        .put_at_seq(Key::fs(1 << 40, ty::XATTR, 0, 0), None, 1020);
    let (m, be, rec) = recorded(&vol);
    let c = Cred::root();
    let f = block_on(m.create(&c, 1, b"f", 0o644)).unwrap();
    assert_eq!((f.meta_seq, be.trans_seq()), (1021, 1021));
    assert_eq!(rec.asked_in_hold.get(), 0);
    rec.take();
    rec.commit_when_held.set(true);
    // one block per transaction: the write commits part way, past 1024
    be.set_txn_data_limit(Some(1));
    let bytes: Vec<u8> = (0..16 * 4096).map(|i| (i % 251) as u8).collect();
    assert_eq!(block_on(m.write(f.ino, 0, &bytes)).unwrap(), bytes.len());
    let mc = m.counters();
    assert!(mc.enobufs_commits >= 15, "{mc:?}");
    assert_eq!(mc.park_relocks, 1, "{mc:?}");
    // asked with the hold parked; a commit ran inside it meanwhile
    assert_eq!((rec.asked_in_hold.get(), rec.commits.get()), (1, 1));
    let sets = rec.take();
    let parked = &sets[sets.len() - 1];
    assert!(
        parked.contains(&(meta(1024), WriteOnly)) && parked.contains(&(meta(1021), WriteOnly)),
        "the old and the new index groups: {parked:?}"
    );
    assert!(parked.iter().all(|(r, _)| !r.is_inode_class()));
    let a = block_on(m.getattr(f.ino)).unwrap();
    assert!(a.meta_seq >= 1024 && a.data_seq >= 1024, "{a:?}");
    assert_eq!(block_on(m.read(f.ino, 0, bytes.len())).unwrap(), bytes);
    let mc = m.counters();
    assert_eq!(mc.items.unlocked_writes + mc.items.unlocked_reads, 0);
    block_on(m.sync()).unwrap();
    drop((m, be, rec));
    let (m, _be) = vol.mount();
    assert_eq!(block_on(m.read(f.ino, 0, bytes.len())).unwrap(), bytes);
}

/// A directory `d` (group 1024) holding `n` files from inode 2048 on
/// (group 2048): what each lookup below finds under the hold.
fn dir_with_files_in_another_group(m: &Mount, n: usize) -> (u64, Vec<u64>) {
    let c = Cred::root();
    let dir = block_on(m.mkdir(&c, 1, b"d", 0o755)).unwrap().ino;
    assert_eq!(dir, 1024);
    fill_to(m, 1, 2048);
    let files = (0..n)
        .map(|i| {
            let name = format!("f{i}");
            block_on(m.create(&c, dir, name.as_bytes(), 0o644))
                .unwrap()
                .ino
        })
        .collect::<Vec<_>>();
    assert_eq!(files[0], 2048);
    (dir, files)
}

#[test]
fn locks_granted_at_once_are_taken_in_place_instead_of_starting_over() {
    let vol = Vol::new();
    let (m, _be) = vol.mount();
    let c = Cred::root();
    let (dir, files) = dir_with_files_in_another_group(&m, 2);

    // lookup: the named inode's group is found under the hold, the local
    // provider grants the larger set at once: no restart
    let before = m.counters();
    assert_eq!(block_on(m.lookup(&c, dir, b"f0")).unwrap().ino, files[0]);
    let after = m.counters();
    assert_eq!(after.relocks, before.relocks, "{after:?}");
    assert_eq!(after.lock_extends, before.lock_extends + 1);

    // "..": the parent's group sorts before the directory's; its locks
    // are let go and the larger set taken again in the order, in place
    let before = after;
    assert_eq!(block_on(m.lookup(&c, dir, b"..")).unwrap().ino, 1);
    let after = m.counters();
    assert_eq!(after.relocks, before.relocks);
    assert_eq!(after.lock_extends, before.lock_extends + 1);

    // unlink under the exclusive hold: its locks let go and taken again
    // with the victim's group, the zone locks behind them
    let before = after;
    block_on(m.unlink(&c, dir, b"f0")).unwrap();
    let after = m.counters();
    assert_eq!(after.relocks, before.relocks);
    assert_eq!(after.lock_extends, before.lock_extends + 1);
    assert_eq!(
        block_on(m.getattr(files[0])),
        Err(scoutvm_fs::errno::Errno::ENOENT)
    );
    assert_eq!(block_on(m.lookup(&c, dir, b"f1")).unwrap().ino, files[1]);

    let mc = m.counters();
    assert_eq!(mc.items.unlocked_writes + mc.items.unlocked_reads, 0);
    assert_eq!(mc.locks_in_hold + mc.bad_grants, 0);
}

#[test]
fn every_acquisition_keeps_the_order_including_those_in_place() {
    let vol = Vol::new();
    let (m, be, rec) = recorded(&vol);
    rec.grant_tries.set(true);
    let c = Cred::root();
    let (dir, files) = dir_with_files_in_another_group(&m, 3);
    let sub = block_on(m.mkdir(&c, dir, b"sub", 0o755)).unwrap().ino;

    block_on(m.lookup(&c, dir, b"f0")).unwrap();
    block_on(m.lookup(&c, dir, b"..")).unwrap();
    block_on(m.lookup(&c, sub, b"..")).unwrap();
    block_on(m.unlink(&c, dir, b"f0")).unwrap();
    block_on(m.link(&c, files[1], 1, b"l1")).unwrap();
    block_on(m.unlink(&c, dir, b"f1")).unwrap();
    // cross-directory renames walk ancestors (in lower groups)
    block_on(m.rename(&c, dir, b"f2", sub, b"g", 0)).unwrap();
    block_on(m.rename(&c, sub, b"g", 1, b"l1", 0)).unwrap();
    block_on(m.setxattr(&c, files[2], b"scoutfs.totl.t.1.2.3", b"5", 0)).unwrap();
    assert_eq!(block_on(m.readdir(&c, sub, 0, 10)).unwrap().len(), 2);
    let mc = m.counters();
    assert!(mc.lock_extends > 0, "{mc:?}");
    assert_eq!(mc.relocks, 0, "everything granted at once: no restart");

    // a commit part way into the next index group: the zone locks are
    // taken again with the hold parked
    vol.store
        .put_at_seq(Key::fs(1 << 40, ty::XATTR, 0, 0), None, 1020);
    drop((m, be, rec));
    let (m, be, rec) = recorded(&vol);
    rec.grant_tries.set(true);
    let f = block_on(m.create(&c, 1, b"w", 0o644)).unwrap();
    be.set_txn_data_limit(Some(1));
    let bytes = vec![7u8; 8 * 4096];
    assert_eq!(block_on(m.write(f.ino, 0, &bytes)).unwrap(), bytes.len());
    assert!(m.counters().park_relocks > 0);

    assert_eq!(rec.out_of_order.get(), 0, "every acquisition in the order");
    assert_eq!(rec.asked_in_hold.get(), 0, "no waiting inside the hold");
    assert!(rec.tried_in_hold.get() > 0, "locks taken in place");
    assert!(rec.held.borrow().is_empty(), "everything released");
    let mc = m.counters();
    assert_eq!(mc.items.unlocked_writes + mc.items.unlocked_reads, 0);
    assert_eq!(mc.locks_in_hold + mc.bad_grants, 0);
}

/// `vol` mounted over a fresh slow provider.
fn mount_slow(vol: &Vol, seed: u64) -> (Rc<Mount>, Rc<SlowLocks>) {
    let locks = SlowLocks::new(handle(), seed);
    let (m, be) = mount_with(vol, locks.clone());
    locks.attach(&m, be);
    (m, locks)
}

#[test]
fn under_slow_locks_a_lookup_starts_over_unless_its_grant_is_cached() {
    let vol = Vol::new();
    let c = Cred::root();
    let (dir, files) = {
        let (m, _be) = vol.mount();
        let made = dir_with_files_in_another_group(&m, 40);
        block_on(m.unmount()).unwrap();
        made
    };
    let (m, locks) = mount_slow(&vol, 7);

    // nothing of group 2048 is cached yet: the try is refused and the
    // lookup starts over, asking (and waiting) with nothing held
    let before = m.counters();
    assert_eq!(block_on(m.lookup(&c, dir, b"f0")).unwrap().ino, files[0]);
    let after = m.counters();
    assert_eq!(after.relocks, before.relocks + 1);
    assert_eq!(after.lock_extends, before.lock_extends);

    // later lookups find the group cached (or not: grants go idle and
    // tries are refused at random) and take it in place or start over
    for (i, ino) in files.iter().enumerate() {
        let name = format!("f{i}");
        assert_eq!(
            block_on(m.lookup(&c, dir, name.as_bytes())).unwrap().ino,
            *ino
        );
    }
    // and changes under the exclusive hold
    for i in 0..20 {
        let name = format!("f{i}");
        block_on(m.unlink(&c, dir, name.as_bytes())).unwrap();
    }
    let mc = m.counters();
    assert!(mc.lock_extends > 0 && mc.relocks > 1, "{mc:?}");
    assert_eq!(mc.items.unlocked_writes + mc.items.unlocked_reads, 0);
    assert_eq!(mc.locks_in_hold + mc.bad_grants, 0);
    let s = locks.stats();
    assert!(s.tries_granted > 0 && s.tries > s.tries_granted, "{s:?}");

    // what a later mount reads
    block_on(m.sync()).unwrap();
    locks.detach();
    drop(m);
    let (m, _be) = vol.mount();
    let names = common::readdir_all(&m, dir, 7);
    assert_eq!(names.len(), 20);
    for (i, ino) in files.iter().enumerate() {
        let name = format!("f{i}");
        let found = block_on(m.lookup(&c, dir, name.as_bytes()));
        if i < 20 {
            assert_eq!(found, Err(scoutvm_fs::errno::Errno::ENOENT));
        } else {
            assert_eq!(found.unwrap().ino, *ino);
        }
    }
}
