//! A [`LockProvider`] that behaves like a busy cluster, for tests: grants
//! come late (after executor timers and yields of seeded random length,
//! so the grants of concurrent tasks arrive in random order), and before
//! it grants a write-capable mode on a range the mount does not hold that
//! way, it makes the mount commit from a separate task — what the
//! invalidation of another mount's conflicting lock costs, and exactly
//! what deadlocks if a task waits for a lock while it holds the
//! transaction. That commit must finish within a bound of virtual time;
//! otherwise the provider panics with the reason.
//!
//! Grants are cached per mount like a lock client's: a range stays
//! granted while idle until the provider, at random, lets an idle one go.
//! `try_acquire` answers from that cache alone (no delay, no commit) when
//! a cached grant serves every request, and at random refuses even then
//! (as a client whose grant is being invalidated would): the mount then
//! starts the operation over.
//! A READ grant is upgraded to WRITE in place; any other change of mode
//! (to or from WRITE_ONLY, WRITE to READ) first waits for the range's
//! users to finish, as the invalidation of the old mode would. Every
//! new write-capable grant gets a fresh `write_seq`, at or a little above
//! the mount's transaction seq and above every one before it (the server
//! hands them out of the seq counter that transactions use).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::rc::{Rc, Weak};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::cluster::lock::{
    GrantedLock, HeldLocks, LockFut, LockMode, LockProvider, LockRange, LockSet,
};
use crate::errno::{Errno, FsResult};
use crate::format::key::Key;
use crate::posix::backend::Backend;
use crate::posix::mount::Mount;
use crate::runtime::env::{Entropy, SeededEntropy};
use crate::runtime::exec::{yield_now, Handle};

/// Longest a grant is delayed (virtual time).
pub const MAX_GRANT_DELAY_NS: u64 = 2_000_000;
/// A commit the provider asks for must be done by then, or some task
/// holds the transaction while it waits for a lock.
pub const COMMIT_DEADLINE_NS: u64 = 60_000_000_000;

/// Figures of a [`SlowLocks`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowLockStats {
    pub acquisitions: u64,
    /// Requests served by a grant the mount already had.
    pub cached: u64,
    pub grants: u64,
    /// Commits made before write-capable grants.
    pub commits: u64,
    /// Idle grants let go.
    pub dropped: u64,
    /// Grants whose `write_seq` is above the transaction seq of the time.
    pub write_seq_ahead: u64,
    /// Sets asked for without waiting, and how many of them were granted
    /// (from the cache).
    pub tries: u64,
    pub tries_granted: u64,
}

struct Grant {
    mode: LockMode,
    write_seq: u64,
    users: u32,
}

struct State {
    rng: SeededEntropy,
    /// By range start (ranges never overlap).
    grants: RefCell<BTreeMap<Key, Grant>>,
    last_write_seq: Cell<u64>,
    stats: Cell<SlowLockStats>,
}

impl State {
    fn count(&self, f: impl FnOnce(&mut SlowLockStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    fn release(&self, granted: &[GrantedLock]) {
        let mut grants = self.grants.borrow_mut();
        for g in granted {
            let Some(held) = grants.get_mut(&g.range.start) else {
                continue;
            };
            held.users = held.users.saturating_sub(1);
            // another mount wanted it: an idle grant goes
            if held.users == 0 && self.rng.next_u64().is_multiple_of(3) {
                grants.remove(&g.range.start);
                self.count(|s| s.dropped += 1);
            }
        }
    }
}

/// The mount a provider serves, set once it is mounted.
struct Target {
    mount: Weak<Mount>,
    backend: Rc<dyn Backend>,
}

pub struct SlowLocks {
    handle: Handle,
    state: Rc<State>,
    target: RefCell<Option<Target>>,
}

impl SlowLocks {
    pub fn new(handle: Handle, seed: u64) -> Rc<SlowLocks> {
        Rc::new(SlowLocks {
            handle,
            state: Rc::new(State {
                rng: SeededEntropy::new(seed ^ 0x5105_10c5),
                grants: RefCell::new(BTreeMap::new()),
                last_write_seq: Cell::new(0),
                stats: Cell::new(SlowLockStats::default()),
            }),
            target: RefCell::new(None),
        })
    }

    /// Serve `mount` (over `backend`): its commits and transaction seqs.
    /// Until then (while the mount mounts) nothing is committed first.
    pub fn attach(&self, mount: &Rc<Mount>, backend: Rc<dyn Backend>) {
        *self.target.borrow_mut() = Some(Target {
            mount: Rc::downgrade(mount),
            backend,
        });
    }

    /// Forget the mount (it is going away); grants stay cached.
    pub fn detach(&self) {
        *self.target.borrow_mut() = None;
    }

    pub fn stats(&self) -> SlowLockStats {
        self.state.stats.get()
    }

    fn rand(&self, n: u64) -> u64 {
        self.state.rng.next_u64() % n.max(1)
    }

    /// Make the mount commit from another task, as an invalidation would,
    /// and wait (boundedly) for it.
    async fn commit_first(&self) -> FsResult<()> {
        let Some(mount) = self
            .target
            .borrow()
            .as_ref()
            .and_then(|t| t.mount.upgrade())
        else {
            return Ok(());
        };
        let task = self
            .handle
            .spawn(async move { mount.sync().await })
            .map_err(|_| Errno::ENOMEM)?;
        self.state.count(|s| s.commits += 1);
        match self.handle.timeout_ns(COMMIT_DEADLINE_NS, task).await {
            Ok(r) => r,
            Err(_) => panic!(
                "a lock grant waited {COMMIT_DEADLINE_NS} ns for the mount's commit: \
                 some task holds the transaction while it waits for a lock"
            ),
        }
    }

    fn cached_mode(&self, range: &LockRange) -> Option<LockMode> {
        self.state.grants.borrow().get(&range.start).map(|g| g.mode)
    }

    /// The mode a grant of `range` for `mode` converts the cached one to
    /// (reference §3.2, same mount): READ upgrades to WRITE in place,
    /// every other change replaces the mode once nobody uses it.
    fn converted(cur: Option<LockMode>, mode: LockMode) -> (LockMode, bool) {
        match cur {
            None => (mode, false),
            Some(LockMode::Read) if mode == LockMode::Write => (mode, false),
            Some(_) => (mode, true),
        }
    }

    fn users(&self, range: &LockRange) -> u32 {
        self.state
            .grants
            .borrow()
            .get(&range.start)
            .map_or(0, |g| g.users)
    }

    async fn grant_one(&self, range: LockRange, mode: LockMode) -> FsResult<GrantedLock> {
        if self.cached_mode(&range).is_some_and(|m| m.serves(mode)) {
            self.state.count(|s| s.cached += 1);
            return Ok(self.use_grant(range));
        }
        for _ in 0..self.rand(4) {
            yield_now().await;
        }
        self.handle.sleep_ns(self.rand(MAX_GRANT_DELAY_NS)).await;
        // users of a mode being replaced finish first (bounded), then the
        // mount commits before a write-capable grant
        let deadline = self.handle.now_ns().saturating_add(COMMIT_DEADLINE_NS);
        let mut committed = false;
        let new = loop {
            let cur = self.cached_mode(&range);
            if cur.is_some_and(|m| m.serves(mode)) {
                return Ok(self.use_grant(range));
            }
            let (new, replaces) = Self::converted(cur, mode);
            if replaces && self.users(&range) > 0 {
                assert!(
                    self.handle.now_ns() < deadline,
                    "{range:?} never let go of {cur:?} for {mode:?}"
                );
                self.handle.sleep_ns(MAX_GRANT_DELAY_NS).await;
                continue;
            }
            if new.can_write() && !committed {
                self.commit_first().await?;
                committed = true;
                continue;
            }
            break new;
        };
        // from here on no await
        let write_seq = if new.can_write() {
            let trans_seq = self
                .target
                .borrow()
                .as_ref()
                .map_or(0, |t| t.backend.trans_seq());
            let seq = (self.state.last_write_seq.get() + 1).max(trans_seq) + self.rand(3);
            self.state.last_write_seq.set(seq);
            if seq > trans_seq {
                self.state.count(|s| s.write_seq_ahead += 1);
            }
            seq
        } else {
            0
        };
        {
            // an upgrade in place keeps the users of the old mode
            let mut grants = self.state.grants.borrow_mut();
            let slot = grants.entry(range.start).or_insert(Grant {
                mode: new,
                write_seq,
                users: 0,
            });
            slot.mode = new;
            slot.write_seq = write_seq;
        }
        self.state.count(|s| s.grants += 1);
        Ok(self.use_grant(range))
    }

    fn use_grant(&self, range: LockRange) -> GrantedLock {
        let mut grants = self.state.grants.borrow_mut();
        let g = grants.get_mut(&range.start).expect("granted");
        g.users += 1;
        GrantedLock {
            range,
            mode: g.mode,
            write_seq: g.write_seq,
        }
    }
}
impl SlowLocks {
    /// A guard over `granted` that gives them back to the cache.
    fn held(&self, granted: Vec<GrantedLock>) -> HeldLocks {
        let state = self.state.clone();
        HeldLocks::new(
            granted,
            Some(Box::new(move |gs: &[GrantedLock]| state.release(gs))),
        )
    }
}

impl LockProvider for SlowLocks {
    /// From the cache only, never waiting: a write-capable grant there
    /// already had its commit.
    fn try_acquire(&self, set: &LockSet) -> Option<HeldLocks> {
        self.state.count(|s| s.tries += 1);
        if self.rand(4) == 0 {
            return None;
        }
        let cached = set
            .requests()
            .iter()
            .all(|r| self.cached_mode(&r.range).is_some_and(|m| m.serves(r.mode)));
        if !cached {
            return None;
        }
        self.state.count(|s| {
            s.tries_granted += 1;
            s.acquisitions += 1;
            s.cached += set.len() as u64;
        });
        let granted = set.requests().iter().map(|r| self.use_grant(r.range));
        Some(self.held(granted.collect()))
    }

    fn acquire<'a>(&'a self, set: &'a LockSet) -> LockFut<'a, FsResult<HeldLocks>> {
        Box::pin(async move {
            self.state.count(|s| s.acquisitions += 1);
            let mut granted: Vec<GrantedLock> = Vec::with_capacity(set.len());
            let mut result = Ok(());
            // in the set's order, each one granted before the next is asked
            for r in set.requests() {
                match self.grant_one(r.range, r.mode).await {
                    Ok(g) => granted.push(g),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            let held = self.held(granted);
            result.map(|()| held)
        })
    }
}
