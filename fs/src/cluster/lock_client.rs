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
//! grant. A new server life rebuilds its table from the mounts: it asks
//! with LOCK_RECOVER and [`LockClient::recover_report`] answers with what
//! this mount holds (the mode before any lowering in progress, so the
//! new server sends a lost invalidation again). A request whose answer
//! was lost with the old life fails in the session with `ESTALE` and is
//! sent again to the new one (which holds it until its recovery ends). A
//! closed session fails every acquisition with `ENOLINK`.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::rc::{Rc, Weak};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::cluster::lock::{
    GrantedLock, HeldLocks, LockFut, LockMode, LockProvider, LockRange, LockSet,
};
use crate::cluster::msg::{cmd, NetLock, LOCK_RECOVER_MAX_NR};
use crate::cluster::session::ClientSession;
use crate::counter;
use crate::errno::{Errno, FsResult};
use crate::format::key::Key;
use crate::runtime::exec::{Handle, Notify};

/// Idle held locks past which the least recently used are given back.
pub const DEFAULT_MAX_IDLE_LOCKS: usize = 4096;
/// Times one acquisition sends its request again after losing the answer
/// to a server failover, before it gives up with `ESTALE`.
pub const MAX_FAILOVER_RETRIES: u32 = 64;

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
    /// New server lives seen while holding locks (each recovered them).
    pub new_server_lives: u64,
    /// Requests sent again after their answer was lost to a failover.
    pub failover_retries: u64,
    /// Locks reported to a new server (LOCK_RECOVER answers).
    pub recovered_reported: u64,
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
    /// Set once no grant can come any more (the session closed).
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
    /// The hooks are set (or never will be): modes may be lowered.
    ready: Cell<bool>,
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
            ready: Cell::new(false),
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

    /// The hooks are set (the mount exists), or the mount failed and they
    /// never will be. Until then invalidations and give-backs wait before
    /// they commit or drop anything: locks are granted while the mount
    /// mounts, but only the mount can commit or drop its cache.
    pub fn hooks_ready(&self) {
        self.ready.set(true);
        self.changed.notify();
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
                // the new life asks for our grants (LOCK_RECOVER) and holds
                // every request until all mounts have told it theirs
                log::info!(
                    "lock client: new server life (term {} -> {term}): {} locks to recover",
                    inner.term,
                    inner
                        .entries
                        .values()
                        .filter(|e| e.mode != LockMode::Null)
                        .count()
                );
                inner.term = term;
                drop(inner);
                self.count(|s| s.new_server_lives += 1);
                counter!("lock_client.new_server_lives").inc();
                return Ok(());
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
        self.maybe_start_lru();
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
        let mut asked = false;
        let mut retries = 0u32;
        loop {
            self.check_server()?;
            let changed = self.changed.notified();
            if let Some(g) = self.try_use(&range, want) {
                if !asked {
                    self.count(|s| s.cached += 1);
                }
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
            asked = true;
            match self.request(range, old, new).await {
                // the answer died with a server life: ask the next one
                Err(Errno::ESTALE)
                    if !self.requester.is_closed() && retries < MAX_FAILOVER_RETRIES =>
                {
                    retries += 1;
                    self.count(|s| s.failover_retries += 1);
                    counter!("lock_client.failover_retries").inc();
                }
                r => r?,
            }
        }
    }

    /// Answer a new server's LOCK_RECOVER: up to [`LOCK_RECOVER_MAX_NR`]
    /// locks held from `start` on, in key order, each reported as
    /// `old_mode == new_mode ==` its recorded mode (while an invalidation
    /// or give-back lowers it, the mode it is lowered from: the server
    /// then invalidates it again and the answer is immediate).
    pub fn recover_report(&self, start: &Key) -> Vec<NetLock> {
        let inner = self.inner.borrow();
        let v: Vec<NetLock> = inner
            .entries
            .range(*start..)
            .map(|(_, e)| e)
            .filter(|e| e.mode != LockMode::Null)
            .take(LOCK_RECOVER_MAX_NR)
            .map(|e| NetLock {
                range: e.range,
                write_seq: e.write_seq,
                old_mode: e.mode,
                new_mode: e.mode,
            })
            .collect();
        drop(inner);
        self.count(|s| s.recovered_reported += v.len() as u64);
        counter!("lock_client.recovered_reported").add(v.len() as u64);
        v
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
            inner.use_clock += 1;
            let now = inner.use_clock;
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
                    // a fresh grant is the most recently used lock
                    e.last_use = now;
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
        while !self.ready.get() {
            self.changed.notified().await;
        }
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
                    let at_most = e.mode == LockMode::Null
                        || (e.mode == LockMode::Read && nl.new_mode == LockMode::Read);
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
        // committed and dropped: nothing usable is held any more, and the
        // server records NULL as soon as the request arrives (it may grant
        // another mount at once), so record it before sending
        {
            let mut inner = self.inner.borrow_mut();
            if let Some(e) = inner.entries.get_mut(&range.start) {
                e.mode = LockMode::Null;
                e.write_seq = 0;
            }
            Self::update_held_counter(&inner);
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
        // whatever the answer (a server that still counts the grant just
        // invalidates it, which is answered at once)
        if let Some(e) = self.inner.borrow_mut().entries.get_mut(&range.start) {
            e.requesting = false;
        }
        self.lowered(&range, Some(LockMode::Null));
        r.map(|_| ())
    }

    /// Idle held locks over the bound.
    pub fn idle_excess(&self) -> usize {
        let inner = self.inner.borrow();
        if inner.entries.len() <= self.cfg.max_idle {
            // the usual answer, without a walk
            return 0;
        }
        let idle = inner.entries.values().filter(|e| e.idle()).count();
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
                inner
                    .entries
                    .get(&r.range.start)
                    .is_some_and(|e| !e.lowering && !e.requesting && covers(e.mode, r.mode))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::exec::Executor;
    use alloc::vec;
    use LockMode::{Null, Read, Write, WriteOnly};

    type Slot = Rc<RefCell<Option<FsResult<NetLock>>>>;

    /// A lock server in a test: answers requests at once (`auto`) or when
    /// the test says, with fresh write seqs, and logs every request.
    #[derive(Default)]
    struct FakeServer {
        auto: Cell<bool>,
        pending: RefCell<Vec<(NetLock, Slot)>>,
        log: RefCell<Vec<NetLock>>,
        seq: Cell<u64>,
        term: Cell<u64>,
        closed: Cell<bool>,
        answered: Notify,
    }

    impl FakeServer {
        fn new(auto: bool) -> Rc<FakeServer> {
            let s = FakeServer::default();
            s.auto.set(auto);
            s.term.set(1);
            Rc::new(s)
        }

        fn grant(&self, nl: NetLock) -> NetLock {
            let write_seq = if nl.new_mode.can_write() {
                self.seq.set(self.seq.get() + 1);
                100 + self.seq.get()
            } else {
                0
            };
            NetLock { write_seq, ..nl }
        }

        /// Answer the oldest pending request.
        fn grant_next(&self) -> NetLock {
            let (nl, slot) = self.pending.borrow_mut().remove(0);
            let g = self.grant(nl);
            *slot.borrow_mut() = Some(Ok(g));
            self.answered.notify();
            g
        }

        fn fail_all(&self, e: Errno) {
            for (_, slot) in self.pending.borrow_mut().drain(..) {
                *slot.borrow_mut() = Some(Err(e));
            }
            self.answered.notify();
        }
    }

    struct FakeRequester(Rc<FakeServer>);

    impl LockRequester for FakeRequester {
        fn request(&self, nl: NetLock) -> LockFut<'static, FsResult<NetLock>> {
            let s = self.0.clone();
            s.log.borrow_mut().push(nl);
            let slot: Slot = Rc::new(RefCell::new(None));
            if s.auto.get() || nl.new_mode == Null {
                *slot.borrow_mut() = Some(Ok(s.grant(nl)));
            } else {
                s.pending.borrow_mut().push((nl, slot.clone()));
            }
            Box::pin(async move {
                loop {
                    let n = s.answered.notified();
                    if let Some(r) = slot.borrow_mut().take() {
                        return r;
                    }
                    n.await;
                }
            })
        }
        fn server_term(&self) -> u64 {
            self.0.term.get()
        }
        fn is_closed(&self) -> bool {
            self.0.closed.get()
        }
    }

    /// What the hooks saw.
    #[derive(Default)]
    struct Seen {
        commits: Cell<u32>,
        drops: RefCell<Vec<LockRange>>,
        stale: Cell<u32>,
    }

    struct World {
        ex: Executor,
        srv: Rc<FakeServer>,
        lc: Rc<LockClient>,
        seen: Rc<Seen>,
    }

    fn world(auto: bool, max_idle: usize) -> World {
        let w = world_unready(auto, max_idle);
        w.lc.hooks_ready();
        w
    }

    fn world_unready(auto: bool, max_idle: usize) -> World {
        let ex = Executor::default();
        let srv = FakeServer::new(auto);
        let lc = LockClient::new(
            Rc::new(FakeRequester(srv.clone())),
            ex.handle(),
            LockClientConfig { max_idle },
        );
        let seen = Rc::new(Seen::default());
        let s = seen.clone();
        lc.set_commit_hook(Rc::new(move || {
            let s = s.clone();
            Box::pin(async move {
                s.commits.set(s.commits.get() + 1);
                Ok(())
            })
        }));
        let s = seen.clone();
        lc.set_drop_hook(Rc::new(move |r: &LockRange| {
            s.drops.borrow_mut().push(*r);
            0
        }));
        let s = seen.clone();
        lc.set_roots_stale_hook(Rc::new(move || s.stale.set(s.stale.get() + 1)));
        World { ex, srv, lc, seen }
    }

    fn g(n: u64) -> LockRange {
        LockRange::inode_group(n * 1024)
    }

    fn set(r: LockRange, m: LockMode) -> LockSet {
        LockSet::new().with(r, m)
    }

    type Out<T> = Rc<RefCell<Option<T>>>;

    impl World {
        fn run(&self) {
            self.ex.run_until_stalled(self.ex.now_ns());
        }

        fn acquire(&self, s: LockSet) -> Out<FsResult<HeldLocks>> {
            let out: Out<FsResult<HeldLocks>> = Rc::new(RefCell::new(None));
            let (lc, o) = (self.lc.clone(), out.clone());
            self.ex
                .spawn(async move {
                    let r = lc.acquire(&s).await;
                    *o.borrow_mut() = Some(r);
                })
                .unwrap();
            self.run();
            out
        }

        fn acquired(&self, s: LockSet) -> HeldLocks {
            let out = self.acquire(s);
            let r = out.borrow_mut().take();
            r.expect("granted at once").unwrap()
        }

        fn invalidate(&self, range: LockRange, old: LockMode, new: LockMode) -> Out<NetLock> {
            let out: Out<NetLock> = Rc::new(RefCell::new(None));
            let (lc, o) = (self.lc.clone(), out.clone());
            let nl = NetLock {
                range,
                write_seq: 0,
                old_mode: old,
                new_mode: new,
            };
            self.ex
                .spawn(async move {
                    let r = lc.invalidate(nl).await.unwrap();
                    assert_eq!(r, nl, "the answer echoes the invalidation");
                    *o.borrow_mut() = Some(r);
                })
                .unwrap();
            self.run();
            out
        }

        fn held(&self) -> Vec<(LockRange, LockMode, u32)> {
            self.lc.held()
        }
    }

    #[test]
    fn grants_are_cached_and_reused() {
        let w = world(true, 16);
        let h = w.acquired(set(g(1), Read).with(g(2), Write));
        assert_eq!(w.lc.stats().requests, 2);
        assert_eq!(w.held(), vec![(g(1), Read, 1), (g(2), Write, 1)]);
        assert_eq!(h.grants()[1].write_seq, 101, "the grant's write_seq");
        drop(h);
        assert_eq!(w.held(), vec![(g(1), Read, 0), (g(2), Write, 0)]);
        // READ and WRITE_ONLY are served by the held WRITE
        let h = w.acquired(set(g(1), Read).with(g(2), Read));
        let h2 = w.acquired(set(g(2), WriteOnly));
        assert!(set(g(2), WriteOnly).granted_by(h2.grants()));
        assert_eq!(w.lc.stats().requests, 2, "no new request");
        assert_eq!(w.lc.stats().cached, 3);
        assert_eq!(w.held()[1], (g(2), Write, 2));
        let h3 = w.lc.try_acquire(&set(g(1), Read)).expect("cached");
        assert!(w.lc.try_acquire(&set(g(3), Read)).is_none(), "not held");
        drop((h, h2, h3));
        assert!(w.held().iter().all(|(_, _, u)| *u == 0));
    }

    #[test]
    fn read_is_upgraded_to_write_and_only_new_reads_mark_roots_stale() {
        let w = world(true, 16);
        drop(w.acquired(set(g(1), Read)));
        assert_eq!(w.seen.stale.get(), 1, "a new readable grant");
        let h = w.acquired(set(g(1), Write));
        let log = w.srv.log.borrow().clone();
        assert_eq!(
            (log[1].old_mode, log[1].new_mode),
            (Read, Write),
            "an upgrade asks from the held mode"
        );
        assert_eq!(h.grants()[0].mode, Write);
        assert_eq!(w.seen.stale.get(), 1, "already readable");
        drop(h);
        // WRITE_ONLY reads nothing; going on to WRITE makes it readable
        drop(w.acquired(set(g(2), WriteOnly)));
        assert_eq!(w.seen.stale.get(), 1);
        drop(w.acquired(set(g(2), Read)));
        let last = *w.srv.log.borrow().last().unwrap();
        assert_eq!(
            (last.old_mode, last.new_mode),
            (WriteOnly, Write),
            "the union"
        );
        assert_eq!(w.seen.stale.get(), 2);
        assert_eq!(w.lc.stats().roots_stale, 2);
    }

    #[test]
    fn invalidation_waits_for_users_and_admits_none_meanwhile() {
        let w = world(true, 16);
        let h = w.acquired(set(g(1), Write));
        let inv = w.invalidate(g(1), Write, Null);
        assert!(inv.borrow().is_none(), "a user holds the lock");
        assert!(
            w.lc.try_acquire(&set(g(1), Read)).is_none(),
            "no try during an invalidation"
        );
        let late = w.acquire(set(g(1), Read));
        assert!(
            late.borrow().is_none(),
            "no new user during an invalidation"
        );
        assert_eq!(w.seen.commits.get(), 0);
        drop(h);
        w.run();
        assert!(inv.borrow().is_some(), "answered once the user left");
        assert_eq!(w.seen.commits.get(), 1, "WRITE committed first");
        assert_eq!(*w.seen.drops.borrow(), vec![g(1)]);
        // the waiting user asked again, from NULL
        let last = *w.srv.log.borrow().last().unwrap();
        assert_eq!((last.old_mode, last.new_mode), (Null, Read));
        assert!(late.borrow().as_ref().unwrap().is_ok());
        assert_eq!(w.held(), vec![(g(1), Read, 1)]);
        assert_eq!(w.lc.stats().invalidations, 1);
    }

    #[test]
    fn commit_only_for_write_modes_and_cache_drop_only_for_null() {
        let w = world(true, 16);
        drop(w.acquired(set(g(1), Write)));
        drop(w.acquired(set(g(2), Read)));
        drop(w.acquired(set(g(3), WriteOnly)));
        // WRITE -> READ: commit, keep the cache
        assert!(w.invalidate(g(1), Write, Read).borrow().is_some());
        assert_eq!(w.seen.commits.get(), 1);
        assert!(w.seen.drops.borrow().is_empty());
        // READ -> NULL: no commit, drop
        assert!(w.invalidate(g(2), Read, Null).borrow().is_some());
        assert_eq!(w.seen.commits.get(), 1);
        assert_eq!(*w.seen.drops.borrow(), vec![g(2)]);
        // WRITE_ONLY -> NULL: commit and drop
        assert!(w.invalidate(g(3), WriteOnly, Null).borrow().is_some());
        assert_eq!(w.seen.commits.get(), 2);
        assert_eq!(*w.seen.drops.borrow(), vec![g(2), g(3)]);
        assert_eq!(w.held(), vec![(g(1), Read, 0)]);
        // READ asked to go to READ, and a lock not held: answered at once
        assert!(w.invalidate(g(1), Read, Read).borrow().is_some());
        assert!(w.invalidate(g(9), Write, Null).borrow().is_some());
        assert_eq!(w.seen.commits.get(), 2);
        assert_eq!(w.seen.drops.borrow().len(), 2);
        assert_eq!(w.lc.stats().commits_for_invalidation, 2);
        assert_eq!(w.lc.stats().cache_drops, 2);
    }

    #[test]
    fn invalidation_ahead_of_its_grant_waits_for_the_grant() {
        let w = world(false, 16);
        let got = w.acquire(set(g(1), Read));
        assert_eq!(w.srv.pending.borrow().len(), 1);
        // the server granted READ and already invalidates it, but the
        // grant has not arrived: the invalidation waits for it
        let inv = w.invalidate(g(1), Read, Null);
        assert!(inv.borrow().is_none());
        assert!(w.seen.drops.borrow().is_empty());
        w.srv.grant_next();
        w.run();
        // the grant is recorded and used first, then the invalidation
        // waits for that user
        let held = got.borrow_mut().take().unwrap().unwrap();
        assert!(inv.borrow().is_none());
        drop(held);
        w.run();
        assert!(inv.borrow().is_some());
        assert_eq!(*w.seen.drops.borrow(), vec![g(1)]);
        assert!(w.held().is_empty());
        // an invalidation of the mode the in-flight upgrade starts from is
        // handled at once (the server waits for it before the upgrade)
        drop(w.acquired_with_grant(set(g(2), Read)));
        let up = w.acquire(set(g(2), Write));
        let inv = w.invalidate(g(2), Read, Null);
        assert!(inv.borrow().is_some(), "not held up by the upgrade");
        w.srv.grant_next();
        w.run();
        assert!(up.borrow().as_ref().unwrap().is_ok());
        assert_eq!(w.held(), vec![(g(2), Write, 1)]);
        assert_eq!(w.seen.stale.get(), 3, "READ, then WRITE after NULL");
    }

    impl World {
        fn acquired_with_grant(&self, s: LockSet) -> HeldLocks {
            let out = self.acquire(s);
            self.srv.grant_next();
            self.run();
            let r = out.borrow_mut().take();
            r.unwrap().unwrap()
        }
    }

    #[test]
    fn idle_locks_over_the_bound_are_given_back_oldest_first() {
        let w = world(true, 2);
        drop(w.acquired(set(g(1), Write)));
        for n in 2..=4 {
            drop(w.acquired(set(g(n), Read)));
        }
        w.run();
        let held: Vec<LockRange> = w.held().iter().map(|h| h.0).collect();
        assert_eq!(held, vec![g(3), g(4)]);
        assert_eq!(w.lc.stats().lru_give_backs, 2);
        let back: Vec<(LockRange, LockMode, LockMode)> = w
            .srv
            .log
            .borrow()
            .iter()
            .filter(|n| n.new_mode == Null)
            .map(|n| (n.range, n.old_mode, n.new_mode))
            .collect();
        assert_eq!(back, vec![(g(1), Write, Null), (g(2), Read, Null)]);
        assert_eq!(w.seen.commits.get(), 1, "the WRITE lock committed first");
        assert_eq!(*w.seen.drops.borrow(), vec![g(1), g(2)]);
        // a lock in use is never given back; shrink takes idle ones only
        let h = w.acquired(set(g(3), Read));
        assert_eq!(block_on_in(&w, w.lc.shrink(10)), Ok(1));
        assert_eq!(w.held(), vec![(g(3), Read, 1)]);
        drop(h);
    }

    #[test]
    fn nothing_is_lowered_before_the_mount_sets_its_hooks() {
        let w = world_unready(true, 16);
        drop(w.acquired(set(g(1), Write)));
        let inv = w.invalidate(g(1), Write, Null);
        assert!(inv.borrow().is_none(), "waits for the mount");
        assert_eq!(w.seen.commits.get(), 0);
        w.lc.hooks_ready();
        w.run();
        assert!(inv.borrow().is_some());
        assert_eq!(w.seen.commits.get(), 1);
    }

    fn block_on_in<F: core::future::Future>(w: &World, f: F) -> F::Output {
        w.ex.block_on(f).expect("finishes")
    }

    #[test]
    fn a_new_server_life_recovers_the_grants_and_resends_requests() {
        let w = world(false, 16);
        let h = w.acquired_with_grant(set(g(1), Read));
        drop(w.acquired_with_grant(set(g(3), Write)));
        let waiting = w.acquire(set(g(2), Read));
        // the server life ends: the session fails the call with ESTALE
        w.srv.term.set(2);
        w.srv.fail_all(Errno::ESTALE);
        w.run();
        assert!(waiting.borrow().is_none(), "sent again, not failed");
        assert_eq!(w.lc.stats().failover_retries, 1);
        let last = *w.srv.log.borrow().last().unwrap();
        assert_eq!(
            (last.range, last.old_mode, last.new_mode),
            (g(2), Null, Read)
        );
        // the new server asks what this mount holds: both grants, in key
        // order, reported as held (from a key on: only the later one)
        let rep = w.lc.recover_report(&Key::MIN);
        let seen: Vec<_> = rep
            .iter()
            .map(|n| (n.range, n.old_mode, n.new_mode))
            .collect();
        assert_eq!(seen, vec![(g(1), Read, Read), (g(3), Write, Write)]);
        assert!(rep[1].write_seq > 0, "a WRITE reports its write_seq");
        let later = w.lc.recover_report(&g(2).start);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].range, g(3));
        // cached grants keep serving; the resent request is granted
        assert!(w.lc.try_acquire(&set(g(1), Read)).is_some());
        w.srv.grant_next();
        w.run();
        assert!(waiting.borrow_mut().take().unwrap().is_ok());
        assert_eq!(w.lc.stats().new_server_lives, 1);
        drop(h);
    }

    #[test]
    fn a_closed_session_fails_instead_of_waiting() {
        let w = world(false, 16);
        let waiting = w.acquire(set(g(2), Read));
        w.srv.closed.set(true);
        w.srv.fail_all(Errno::ENOLINK);
        w.run();
        let r = waiting.borrow_mut().take().unwrap();
        assert_eq!(r.unwrap_err(), Errno::ENOLINK);
        assert!(w.held().is_empty());
    }
}
