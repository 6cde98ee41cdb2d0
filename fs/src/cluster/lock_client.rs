//! The lock client: a mount's cluster locks, granted by the lock server
//! and cached here per range (reference §3, protocol in the lock
//! contract of issue 11).
//!
//! Per range it records the mode the server granted, its `write_seq`, the
//! users holding it now, whether a request is in flight (at most one) and
//! whether an invalidation or give-back is lowering it (which admits no
//! new user). [`LockProvider::acquire`] serves a request from the cached
//! grant or asks the server (through [`LockRequester`]) for the union of
//! what the range is held for and what is wanted, so modes only go up by
//! request (NULL to anything, READ or WRITE_ONLY to WRITE) and only come
//! down by the server's invalidation or the client's own give-back
//! ([`LockClient::invalidate`], [`LockClient::shrink`], the LRU bound):
//! those wait for the users to finish, commit first when the mode allowed
//! writes (another mount must read what we wrote), and drop the range's
//! cached items when the mode goes to NULL. A grant that makes a range
//! readable marks the forest roots stale, so a read after a grant sees
//! every commit that preceded it.
//!
//! The mount's side is reached only through hooks (commit, cache drop,
//! roots stale) set once the mount exists: this file knows no mount.
//!
//! Server lives: a session that reconnects to the same server keeps every
//! grant. A new server term (or a closed session) leaves the grants
//! unknown to the server, and lock recovery (issue 13) does not exist
//! yet: from then on every acquisition fails with `ESTALE` (`ENOLINK`
//! when closed) instead of waiting for a grant that would never come or
//! trusting one the new server never made.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::rc::{Rc, Weak};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::cluster::lock::{
    GrantedLock, HeldLocks, LockFut, LockMode, LockProvider, LockRange, LockSet,
};
use crate::cluster::msg::{cmd, NetLock};
use crate::cluster::session::ClientSession;
use crate::counter;
use crate::errno::{Errno, FsResult};
use crate::format::key::Key;
use crate::runtime::exec::{Handle, Notify};

/// Idle held locks past which the least recently used are given back.
pub const DEFAULT_MAX_IDLE_LOCKS: usize = 4096;

/// Tunables of a [`LockClient`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockClientConfig {
    /// Held locks without users kept at most (the LRU bound); at least 1.
    pub max_idle: usize,
}

impl Default for LockClientConfig {
    fn default() -> Self {
        LockClientConfig {
            max_idle: DEFAULT_MAX_IDLE_LOCKS,
        }
    }
}

/// How lock requests reach the server: a [`ClientSession`] for real
/// ([`SessionRequester`]), fakes in tests.
pub trait LockRequester {
    /// Send a LOCK request; the server's response (a grant) when it comes.
    fn request(&self, nl: NetLock) -> LockFut<'static, FsResult<NetLock>>;
    /// Term of the server life the requests go to (0: none yet).
    fn server_term(&self) -> u64;
    /// Closed for good: no request will ever be answered.
    fn is_closed(&self) -> bool;
}

/// [`LockRequester`] over the mount's session.
pub struct SessionRequester(pub Rc<ClientSession>);

impl LockRequester for SessionRequester {
    fn request(&self, nl: NetLock) -> LockFut<'static, FsResult<NetLock>> {
        let s = self.0.clone();
        Box::pin(async move {
            let r = s.call(cmd::LOCK, &nl.encode()).await?;
            NetLock::decode(&r)
        })
    }
    fn server_term(&self) -> u64 {
        self.0.server_term()
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// Makes the mount's transaction durable (before a write-capable mode is
/// lowered).
pub type CommitHook = Rc<dyn Fn() -> LockFut<'static, FsResult<()>>>;
/// Drops the clean cached items and ranges inside a lock's range; returns
/// how many dirty items it found there (there must be none).
pub type DropHook = Rc<dyn Fn(&LockRange) -> usize>;
/// The forest roots are stale: the next read must fetch them again.
pub type RootsStaleHook = Rc<dyn Fn()>;

#[derive(Default, Clone)]
struct Hooks {
    commit: Option<CommitHook>,
    drop_cache: Option<DropHook>,
    roots_stale: Option<RootsStaleHook>,
}

/// Figures of one lock client (the same as the `lock_client.*` counters,
/// per instance).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockClientStats {
    /// LOCK requests sent (give-backs included).
    pub requests: u64,
    pub grants: u64,
    /// Requests served by a cached grant.
    pub cached: u64,
    pub invalidations: u64,
    pub cache_drops: u64,
    pub commits_for_invalidation: u64,
    pub lru_give_backs: u64,
    /// Dirty items found in a range dropped after its commit (a bug).
    pub dirty_after_commit: u64,
    /// Grants that made a range readable (roots marked stale).
    pub roots_stale: u64,
}

struct Entry {
    range: LockRange,
    mode: LockMode,
    write_seq: u64,
    users: u32,
    /// A request (or give-back) for the range is in flight.
    requesting: bool,
    /// The mode is being lowered (invalidation or give-back): no new user.
    lowering: bool,
    last_use: u64,
}

impl Entry {
    fn new(range: LockRange) -> Entry {
        Entry {
            range,
            mode: LockMode::Null,
            write_seq: 0,
            users: 0,
            requesting: false,
            lowering: false,
            last_use: 0,
        }
    }

    fn idle(&self) -> bool {
        self.users == 0 && !self.requesting && !self.lowering && self.mode != LockMode::Null
    }
}

/// May a grant of `held` serve a user wanting `want`? WRITE is a superset
/// of the other modes of one mount.
fn covers(held: LockMode, want: LockMode) -> bool {
    held.serves(want) || (held == LockMode::Write && want == LockMode::WriteOnly)
}

/// What a user is handed: the held mode when it serves the want
/// ([`LockMode::serves`], what the mount checks), else the want itself
/// (WRITE_ONLY under a WRITE grant).
fn handed(held: LockMode, want: LockMode) -> LockMode {
    if held.serves(want) {
        held
    } else {
        want
    }
}

struct Inner {
    /// By range start (ranges never overlap).
    entries: BTreeMap<Key, Entry>,
    use_clock: u64,
    /// Term of the server life the grants come from (0: none yet).
    term: u64,
    /// Set once the grants cannot be trusted (new server life, closed).
    failed: Option<Errno>,
    lru_running: bool,
}

pub struct LockClient {
    me: Weak<LockClient>,
    requester: Rc<dyn LockRequester>,
    handle: Handle,
    cfg: LockClientConfig,
    inner: RefCell<Inner>,
    /// Any change of an entry (grant recorded, user gone, lowering done).
    changed: Notify,
    hooks: RefCell<Hooks>,
    stats: Cell<LockClientStats>,
}

impl LockClient {
    pub fn new(
        requester: Rc<dyn LockRequester>,
        handle: Handle,
        cfg: LockClientConfig,
    ) -> Rc<LockClient> {
        let term = requester.server_term();
        Rc::new_cyclic(|me| LockClient {
            me: me.clone(),
            requester,
            handle,
            cfg: LockClientConfig {
                max_idle: cfg.max_idle.max(1),
            },
            inner: RefCell::new(Inner {
                entries: BTreeMap::new(),
                use_clock: 0,
                term,
                failed: None,
                lru_running: false,
            }),
            changed: Notify::new(),
            hooks: RefCell::new(Hooks::default()),
            stats: Cell::new(LockClientStats::default()),
        })
    }

    /// Commit the mount's transaction before a write-capable mode goes.
    pub fn set_commit_hook(&self, h: CommitHook) {
        self.hooks.borrow_mut().commit = Some(h);
    }

    /// Drop a range's cached items when its mode goes to NULL.
    pub fn set_drop_hook(&self, h: DropHook) {
        self.hooks.borrow_mut().drop_cache = Some(h);
    }

    /// Mark the forest roots stale when a range becomes readable.
    pub fn set_roots_stale_hook(&self, h: RootsStaleHook) {
        self.hooks.borrow_mut().roots_stale = Some(h);
    }

    pub fn stats(&self) -> LockClientStats {
        self.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut LockClientStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Every range held in a mode above NULL: (range, mode, users).
    pub fn held(&self) -> Vec<(LockRange, LockMode, u32)> {
        self.inner
            .borrow()
            .entries
            .values()
            .filter(|e| e.mode != LockMode::Null)
            .map(|e| (e.range, e.mode, e.users))
            .collect()
    }

    fn update_held_counter(inner: &Inner) {
        let n = inner
            .entries
            .values()
            .filter(|e| e.mode != LockMode::Null)
            .count();
        counter!("lock_client.held").set(n as u64);
    }

    /// The errno acquisitions fail with from now on, if any: the session
    /// closed, or a new server life that knows none of our grants.
    fn check_server(&self) -> FsResult<()> {
        let mut inner = self.inner.borrow_mut();
        if let Some(e) = inner.failed {
            return Err(e);
        }
        let failed = if self.requester.is_closed() {
            Some(Errno::ENOLINK)
        } else {
            let term = self.requester.server_term();
            if inner.term == 0 || (term != 0 && inner.entries.is_empty()) {
                // nothing held yet: the new life knows all there is
                inner.term = term;
                None
            } else if term != inner.term && term != 0 {
                log::warn!(
                    "lock client: new server life (term {} -> {term}); cluster locks \
                     fail with ESTALE until lock recovery exists",
                    inner.term
                );
                Some(Errno::ESTALE)
            } else {
                None
            }
        };
        if let Some(e) = failed {
            inner.failed = Some(e);
            drop(inner);
            counter!("lock_client.failed").inc();
            self.changed.notify();
            return Err(e);
        }
        Ok(())
    }

    /// Take a user of `range` if its cached grant serves `want` now.
    fn try_use(&self, range: &LockRange, want: LockMode) -> Option<GrantedLock> {
        let mut inner = self.inner.borrow_mut();
        inner.use_clock += 1;
        let now = inner.use_clock;
        let e = inner.entries.get_mut(&range.start)?;
        if e.lowering || e.requesting || !covers(e.mode, want) {
            return None;
        }
        e.users += 1;
        e.last_use = now;
        Some(GrantedLock {
            range: *range,
            mode: handed(e.mode, want),
            write_seq: e.write_seq,
        })
    }

    fn release(&self, granted: &[GrantedLock]) {
        {
            let mut inner = self.inner.borrow_mut();
            for g in granted {
                let e = inner
                    .entries
                    .get_mut(&g.range.start)
                    .expect("a used range keeps its entry");
                assert!(e.users > 0, "lock released more often than used");
                e.users -= 1;
            }
        }
        self.changed.notify();
    }

    fn guard(&self, granted: Vec<GrantedLock>) -> HeldLocks {
        let me = self.me.clone();
        HeldLocks::new(
            granted,
            Some(Box::new(move |gs: &[GrantedLock]| {
                if let Some(me) = me.upgrade() {
                    me.release(gs);
                }
            })),
        )
    }

    /// Get `range` granted in a mode that covers `want` and take a user.
    async fn acquire_one(&self, range: LockRange, want: LockMode) -> FsResult<GrantedLock> {
        loop {
            self.check_server()?;
            let changed = self.changed.notified();
            if let Some(g) = self.try_use(&range, want) {
                self.count(|s| s.cached += 1);
                return Ok(g);
            }
            let ask = {
                let mut inner = self.inner.borrow_mut();
                let e = inner
                    .entries
                    .entry(range.start)
                    .or_insert_with(|| Entry::new(range));
                if e.lowering || e.requesting {
                    None
                } else {
                    // modes go up by request only: the union with what is
                    // held (users of the held mode keep it)
                    e.requesting = true;
                    Some((e.mode, e.mode.union(want)))
                }
            };
            let Some((old, new)) = ask else {
                changed.await;
                continue;
            };
            self.request(range, old, new).await?;
        }
    }

    /// Send one request for `range` (marked `requesting`) and record its
    /// grant.
    async fn request(&self, range: LockRange, old: LockMode, new: LockMode) -> FsResult<()> {
        self.count(|s| s.requests += 1);
        counter!("lock_client.requests").inc();
        let r = self
            .requester
            .request(NetLock {
                range,
                write_seq: 0,
                old_mode: old,
                new_mode: new,
            })
            .await;
        let r = r.and_then(|g| {
            if g.range != range || g.new_mode != new {
                log::warn!("lock client: asked {range:?} {old:?}->{new:?}, got {g:?}");
                return Err(Errno::EPROTO);
            }
            Ok(g)
        });
        let newly_readable = {
            let mut inner = self.inner.borrow_mut();
            let e = inner
                .entries
                .get_mut(&range.start)
                .expect("a requested range keeps its entry");
            e.requesting = false;
            match &r {
                Ok(g) => {
                    // the mode now (an invalidation may have lowered the
                    // old one meanwhile: it told us what we hold)
                    let was_readable = e.mode.can_read();
                    e.mode = g.new_mode;
                    e.write_seq = if g.new_mode.can_write() {
                        g.write_seq
                    } else {
                        0
                    };
                    Self::update_held_counter(&inner);
                    !was_readable && g.new_mode.can_read()
                }
                Err(_) => {
                    if e.mode == LockMode::Null && e.users == 0 {
                        inner.entries.remove(&range.start);
                    }
                    false
                }
            }
        };
        self.changed.notify();
        let r = r.map(|_| ());
        if let Err(e) = r {
            // a lost answer from another server life: say why
            let _ = self.check_server();
            return Err(e);
        }
        self.count(|s| s.grants += 1);
        counter!("lock_client.grants").inc();
        if newly_readable {
            self.count(|s| s.roots_stale += 1);
            let h = self.hooks.borrow().roots_stale.clone();
            if let Some(h) = h {
                h();
            }
        }
        self.maybe_start_lru();
        Ok(())
    }

    // -- lowering: invalidations and give-backs -----------------------------

    /// Wait until no user holds `range` (marked `lowering`, so none comes).
    async fn drain(&self, range: &LockRange) {
        loop {
            let changed = self.changed.notified();
            let users = self
                .inner
                .borrow()
                .entries
                .get(&range.start)
                .map_or(0, |e| e.users);
            if users == 0 {
                return;
            }
            changed.await;
        }
    }

    /// Make a range held in `mode` (users drained) ready to hold `to`:
    /// commit if `mode` wrote, drop its cache if `to` is NULL.
    async fn lower(&self, range: &LockRange, mode: LockMode, to: LockMode) -> FsResult<()> {
        if mode.can_write() && !to.can_write() {
            let commit = self.hooks.borrow().commit.clone();
            if let Some(commit) = commit {
                commit().await?;
            }
            self.count(|s| s.commits_for_invalidation += 1);
            counter!("lock_client.commits_for_invalidation").inc();
        }
        if to == LockMode::Null {
            let drop_cache = self.hooks.borrow().drop_cache.clone();
            let dirty = drop_cache.map_or(0, |d| d(range));
            self.count(|s| {
                s.cache_drops += 1;
                s.dirty_after_commit += dirty as u64;
            });
            counter!("lock_client.cache_drops").inc();
            if dirty > 0 {
                counter!("lock_client.dirty_after_commit").add(dirty as u64);
                log::error!("lock client: {dirty} dirty items in {range:?} after its commit");
                debug_assert!(false, "dirty items in a range being dropped");
            }
        }
        Ok(())
    }

    /// Record `range` at `mode` (lowered) and clear `lowering`.
    fn lowered(&self, range: &LockRange, mode: Option<LockMode>) {
        let mut inner = self.inner.borrow_mut();
        if let Some(e) = inner.entries.get_mut(&range.start) {
            e.lowering = false;
            if let Some(m) = mode {
                e.mode = m;
                if !m.can_write() {
                    e.write_seq = 0;
                }
            }
            if e.mode == LockMode::Null && e.users == 0 && !e.requesting {
                inner.entries.remove(&range.start);
            }
        }
        Self::update_held_counter(&inner);
        drop(inner);
        self.changed.notify();
    }

    /// The server's invalidation: answer once this mount holds at most
    /// `nl.new_mode` of the range (the answer echoes `nl`).
    pub async fn invalidate(&self, nl: NetLock) -> FsResult<NetLock> {
        if !matches!(nl.new_mode, LockMode::Read | LockMode::Null) {
            return Err(Errno::EINVAL);
        }
        self.count(|s| s.invalidations += 1);
        counter!("lock_client.invalidations").inc();
        let range = nl.range;
        let mode = loop {
            let changed = self.changed.notified();
            {
                let mut inner = self.inner.borrow_mut();
                let Some(e) = inner.entries.get_mut(&range.start) else {
                    // nothing held, nothing asked: answered at once
                    return Ok(nl);
                };
                // a grant of `old_mode` is on its way ahead of us: wait
                // for it; and for another lowering of the range
                let grant_ahead = e.requesting && e.mode != nl.old_mode;
                if !grant_ahead && !e.lowering {
                    let at_most =
                        e.mode == LockMode::Null || (e.mode == LockMode::Read && nl.new_mode == LockMode::Read);
                    if at_most {
                        return Ok(nl);
                    }
                    e.lowering = true;
                    break e.mode;
                }
            }
            changed.await;
        };
        // WRITE -> READ keeps the (then clean) cache; anything else that
        // cannot stay goes to NULL (a WRITE_ONLY never becomes READ)
        let to = if nl.new_mode == LockMode::Read && mode == LockMode::Write {
            LockMode::Read
        } else {
            LockMode::Null
        };
        self.drain(&range).await;
        if let Err(e) = self.lower(&range, mode, to).await {
            log::warn!("lock client: commit for the invalidation of {range:?} failed: {e}");
            self.lowered(&range, None);
            return Err(e);
        }
        self.lowered(&range, Some(to));
        Ok(nl)
    }

    /// Give back up to `n` idle locks, least recently used first (memory
    /// pressure, the LRU bound); returns how many went.
    pub async fn shrink(&self, n: usize) -> FsResult<usize> {
        let mut done = 0;
        while done < n {
            let pick = {
                let mut inner = self.inner.borrow_mut();
                let oldest = inner
                    .entries
                    .values()
                    .filter(|e| e.idle())
                    .min_by_key(|e| e.last_use)
                    .map(|e| e.range.start);
                oldest.map(|k| {
                    let e = inner.entries.get_mut(&k).expect("just found");
                    e.lowering = true;
                    e.requesting = true;
                    (e.range, e.mode)
                })
            };
            let Some((range, mode)) = pick else { break };
            self.give_back(range, mode).await?;
            done += 1;
        }
        Ok(done)
    }

    /// Lower an idle range (marked lowering and requesting) to NULL and
    /// tell the server.
    async fn give_back(&self, range: LockRange, mode: LockMode) -> FsResult<()> {
        if let Err(e) = self.lower(&range, mode, LockMode::Null).await {
            if let Some(e) = self.inner.borrow_mut().entries.get_mut(&range.start) {
                e.requesting = false;
            }
            self.lowered(&range, None);
            return Err(e);
        }
        self.count(|s| {
            s.requests += 1;
            s.lru_give_backs += 1;
        });
        counter!("lock_client.requests").inc();
        counter!("lock_client.lru_give_backs").inc();
        let r = self
            .requester
            .request(NetLock {
                range,
                write_seq: 0,
                old_mode: mode,
                new_mode: LockMode::Null,
            })
            .await;
        // committed and dropped: we hold nothing whatever the answer (a
        // server that still counts the grant just invalidates it, which
        // is answered at once)
        if let Some(e) = self.inner.borrow_mut().entries.get_mut(&range.start) {
            e.requesting = false;
        }
        self.lowered(&range, Some(LockMode::Null));
        r.map(|_| ())
    }

    /// Idle held locks over the bound.
    pub fn idle_excess(&self) -> usize {
        let idle = self
            .inner
            .borrow()
            .entries
            .values()
            .filter(|e| e.idle())
            .count();
        idle.saturating_sub(self.cfg.max_idle)
    }

    /// Start the task that gives back idle locks over the bound.
    fn maybe_start_lru(&self) {
        if self.idle_excess() == 0 || self.inner.borrow().lru_running {
            return;
        }
        self.inner.borrow_mut().lru_running = true;
        let weak = self.me.clone();
        let spawned = self.handle.spawn_named("lock_client.lru", async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                let n = me.idle_excess();
                if n == 0 || me.shrink(n).await.is_err() {
                    me.inner.borrow_mut().lru_running = false;
                    return;
                }
            }
        });
        if spawned.is_err() {
            self.inner.borrow_mut().lru_running = false;
        }
    }
}

impl LockProvider for LockClient {
    fn acquire<'a>(&'a self, set: &'a LockSet) -> LockFut<'a, FsResult<HeldLocks>> {
        Box::pin(async move {
            let mut granted: Vec<GrantedLock> = Vec::with_capacity(set.len());
            // in the set's order, each one held before the next is asked
            for r in set.requests() {
                match self.acquire_one(r.range, r.mode).await {
                    Ok(g) => granted.push(g),
                    Err(e) => {
                        drop(self.guard(granted));
                        return Err(e);
                    }
                }
            }
            // an idle lock used again may have been over the bound
            self.maybe_start_lru();
            Ok(self.guard(granted))
        })
    }

    /// From cached grants only: nothing while a range is being lowered or
    /// asked for, nothing once the server life changed.
    fn try_acquire(&self, set: &LockSet) -> Option<HeldLocks> {
        if self.check_server().is_err() {
            return None;
        }
        {
            let inner = self.inner.borrow();
            let all = set.requests().iter().all(|r| {
                inner.entries.get(&r.range.start).is_some_and(|e| {
                    !e.lowering && !e.requesting && covers(e.mode, r.mode)
                })
            });
            if !all {
                return None;
            }
        }
        let granted: Vec<GrantedLock> = set
            .requests()
            .iter()
            .map(|r| self.try_use(&r.range, r.mode).expect("checked"))
            .collect();
        self.count(|s| s.cached += granted.len() as u64);
        Some(self.guard(granted))
    }
}
