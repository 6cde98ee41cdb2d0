//! The server role (what the elected leader runs): accepts client
//! connections on a [`Transport`], answers their requests, batches the
//! changes of concurrent requests into server commits through the commit
//! gate, and runs the background jobs (freeing merged trees). On startup
//! it resumes whatever a crash left: it reclaims the log trees of dead
//! mounts and orphaned trees, cancels their merge requests, and continues
//! an interrupted merge or freeing job from the persistent items.
//!
//! Called by the node composition (`node.rs`); its only callers at run time
//! are clients, through messages. Calls the storage core (`server.rs`),
//! `log_trees.rs` and `log_merge.rs`. Invariants: a handler holds the
//! commit, changes the dirty super, applies, and replies only once the
//! commit holding its change is durable; readers (GET_ROOTS, STATFS) only
//! see the stable super; a holder is admitted only while the server
//! allocator has `(holders + 2) * hold_budget` blocks of room; every
//! multi-commit job commits between its steps; a failed commit stops the
//! server (the volume reopens at the last durable commit).
//!
//! Cluster locks: each LOCK request runs in its own request task, feeds
//! the lock server machine (`cluster::lock_server`) and answers when its
//! grant comes out; invalidations are calls to the holding mount, each
//! from a task of its own, resent while the mount is known; a mount's
//! farewell or reclaim releases its locks. WRITE grants take their
//! `write_seq` from the transaction seq counter.
//!
//! A commit runs in bounded steps with a yield between them, so the node
//! keeps answering (heartbeats, reads of the stable super) while it
//! writes; no holder is admitted while one is under way, so the
//! transaction it writes never changes, and shutdown waits for it.

use crate::cluster::fence::{
    FenceAgent, FenceReason, FenceRegistry, FenceRequest, FenceState, FENCE_TIMEOUT_NS,
};
use crate::cluster::lock::{LockMode, LockRange};
use crate::cluster::lock_server::{LockOutput, LockServer, LockServerConfig};
use crate::cluster::msg::{
    self, Greeting, InodeAlloc, LockRecover, NetLock, NetRoots, NetStatfs, OmapBits, OpenInoMap,
    OpenInoMapArgs, Request, GREETING_FLAG_FAREWELL, GREETING_FLAG_QUORUM,
};
use crate::cluster::recovery::{
    RecoveryStatus, RecoveryTracker, RECOVERY_WINDOW_NS, RECOV_ALL, RECOV_GREETING, RECOV_LOCKS,
    TP_LOCK_SERVER_GREETING, TP_RECOV_FENCE_RID,
};
use crate::cluster::rpc::{Endpoint, Role};
use crate::cluster::session::{Begin, ServerPeer, SessionConfig};
use crate::cluster::transport::{Listener, Transport};
use crate::counter;
use crate::errno::{Errno, FsResult};
use crate::format::key::{zone, Key};
use crate::format::log::*;
use crate::format::super_block::SuperBlock;
use crate::runtime::env::Entropy;
use crate::runtime::exec::{yield_now, Handle, JoinHandle, Notify};
use crate::runtime::trace::Tracepoint;
use crate::server::commit::{CommitConfig, CommitCore, ServerTxn};
use crate::server::log_merge::{self, MergeConfig, Work};
use crate::server::log_trees::{self, Budget, LogTreesConfig, Step};
use crate::server::omap::{self, OmapOut, OmapServer, OMAP_MAX_PENDING};
use crate::server::srch_compact;
use crate::storage::btree::{self, Item};
use crate::storage::dev::BlockDev;
use crate::storage::store_error::{StoreError, StoreResult};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

static TP_GREETING: Tracepoint = Tracepoint::new("server_greeting", &["rid", "term", "new"]);
static TP_FAREWELL: Tracepoint = Tracepoint::new("server_farewell", &["rid"]);
static TP_RECLAIM: Tracepoint = Tracepoint::new("server_reclaim_rid", &["rid", "trees"]);
static TP_RECONNECT_FENCE: Tracepoint = Tracepoint::new("server_reconnect_fence", &["rid"]);
static TP_STOP: Tracepoint = Tracepoint::new("server_stop", &["failed"]);

pub use crate::server::commit::COMMIT_HOLD_ALLOC_BUDGET;
/// Inode numbers one ALLOC_INODES may take at most.
pub const ALLOC_INODES_MAX: u64 = 1 << 20;
/// Requests of one connection handled at once.
pub const MAX_HANDLERS_PER_CONN: u32 = 32;
/// LOCK requests of one connection handled (mostly: waiting for their
/// grant) at once. Apart from the other requests: a mount whose lock
/// requests wait must still reach the server to commit, or it could not
/// answer the invalidations they wait for.
pub const MAX_LOCK_HANDLERS_PER_CONN: u32 = 1024;
/// How often the freeing job looks for work when not kicked.
pub const FREEING_POLL_NS: u64 = 1_000_000_000;
/// First pause before an invalidation that failed is sent again (doubled
/// up to [`LOCK_INVALIDATE_RETRY_MAX_NS`]) while its mount is still known.
pub const LOCK_INVALIDATE_RETRY_NS: u64 = 100_000_000;
pub const LOCK_INVALIDATE_RETRY_MAX_NS: u64 = 5_000_000_000;
/// `log_merge_wait_timeout_ms` (500 ms): how long a GET_LOG_TREES that
/// finalized its tree waits for every other mount to finalize theirs.
pub const FINALIZE_WAIT_NS: u64 = 500_000_000;
/// The waiting GET_LOG_TREES looks again after this pause, growing by
/// half each time up to [`FINALIZE_POLL_MAX_NS`] (5 ms, 150 %, 100 ms as
/// the reference).
pub const FINALIZE_POLL_MIN_NS: u64 = 5_000_000;
pub const FINALIZE_POLL_MAX_NS: u64 = 100_000_000;

/// Tunables of the server role.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    pub commit: CommitConfig,
    pub log_trees: LogTreesConfig,
    pub merge: MergeConfig,
    /// Blocks of server allocator each holder may use.
    pub hold_budget_blocks: u64,
    /// Finalize (and merge) a client tree whose item btree is higher than
    /// this.
    pub finalize_height: u8,
    /// At startup, treat every mount listed in `mounted_clients` as dead
    /// and reclaim it (single node: a crash killed them all).
    pub reclaim_mounted_at_start: bool,
    /// This server's term (greeting replies carry it). Must differ for
    /// every server life: clients tell a new server by it.
    pub term: u64,
    /// Idle timeout, reconnect window, replay window of client sessions.
    pub session: SessionConfig,
    /// Bounds of the lock server's table.
    pub locks: LockServerConfig,
    /// How long the mounts of the last server life have to greet and
    /// report their locks before they are fenced (reference §5.2).
    pub recovery_window_ns: u64,
    /// Rotate a mount's srch log file into `srch_root` once it holds this
    /// many blocks (scoutfs: 16; tests lower it to force rotations).
    pub srch_rotate_blocks: u64,
    /// Coordinated finalization: how long a GET_LOG_TREES that finalized
    /// its tree waits for the other mounts' trees (after that it opens
    /// its next tree and the merge starts at a later GET_LOG_TREES that
    /// finds every tree finalized).
    pub finalize_wait_ns: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            commit: CommitConfig::default(),
            log_trees: LogTreesConfig::default(),
            merge: MergeConfig::default(),
            hold_budget_blocks: COMMIT_HOLD_ALLOC_BUDGET,
            finalize_height: 2,
            reclaim_mounted_at_start: true,
            term: 1,
            session: SessionConfig::default(),
            locks: LockServerConfig::default(),
            recovery_window_ns: RECOVERY_WINDOW_NS,
            srch_rotate_blocks: crate::format::srch::LOG_BLOCK_LIMIT,
            finalize_wait_ns: FINALIZE_WAIT_NS,
        }
    }
}

/// Counters of the server role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerRoleCounters {
    pub requests: u64,
    pub request_errors: u64,
    pub commits: u64,
    pub hold_waits: u64,
    pub multi_commit_steps: u64,
    pub reclaimed_rids: u64,
}

struct Gate {
    holders: Cell<u64>,
    applying: Cell<u64>,
    /// A commit is under way (in steps): no holder is admitted.
    committing: Cell<bool>,
    kick: Cell<bool>,
    /// Commits done.
    generation: Cell<u64>,
    changed: Notify,
}

struct Inner {
    core: RefCell<CommitCore>,
    cfg: ServerConfig,
    handle: Handle,
    gate: Gate,
    fsid: u64,
    fmt_vers: u64,
    stopping: Cell<bool>,
    stopped: Cell<bool>,
    force_merge: Cell<bool>,
    /// Data blocks each mount allocated in its last committed transaction
    /// (what GET_LOG_TREES handed it minus what it committed back): how
    /// much data space its next transaction gets (`log_trees::refill`).
    /// In memory; a mount without an entry gets the full target.
    data_used: RefCell<BTreeMap<u64, u64>>,
    /// Seq when SYNC_LOG_TREES last went out: trees opened since get one
    /// (the reference's `finalize_sent_seq`).
    finalize_sent_seq: Cell<u64>,
    freeing_kick: Notify,
    listener: RefCell<Option<Rc<dyn Listener>>>,
    conns: RefCell<Vec<Rc<Endpoint>>>,
    /// Session state of each greeted client (rid), for this server life.
    peers: RefCell<BTreeMap<u64, Rc<ServerPeer>>>,
    exec_observer: RefCell<Option<ExecObserver>>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    counters: Cell<ServerRoleCounters>,
    /// The cluster lock table (in memory only, per server life).
    locks: RefCell<LockServer>,
    /// Answers of lock requests by token, until their task takes them.
    lock_answers: RefCell<BTreeMap<u64, FsResult<NetLock>>>,
    /// Lock answers arrived, or the server stops.
    lock_changed: Notify,
    /// What the mounts of the last life still owe this one.
    recov: RefCell<RecoveryTracker>,
    /// A rid finished some of its recovery.
    recov_changed: Notify,
    /// Fences the mounts that do not recover in time (the node's agent).
    fence_agent: RefCell<Option<Rc<dyn FenceAgent>>>,
    fences: RefCell<Option<Rc<FenceRegistry>>>,
    /// Rids whose connection ended, waited on to come back.
    reconnect_waits: RefCell<alloc::collections::BTreeSet<u64>>,
    /// The open-inode map fan-out (in memory, per server life).
    omap: RefCell<OmapServer>,
    /// Answers of omap questions by token, until their task takes them.
    omap_answers: RefCell<BTreeMap<u64, OmapBits>>,
    /// Tokens whose request task still waits for an answer.
    omap_waiting: RefCell<alloc::collections::BTreeSet<u64>>,
    omap_next_token: Cell<u64>,
    /// Omap answers arrived, or the server stops.
    omap_changed: Notify,
}

/// Sees every request the server executes: `(rid, request id, cmd)`
/// (the simulator counts executions per server life).
pub type ExecObserver = Rc<dyn Fn(u64, u64, u8)>;

/// A hold on the open server transaction.
#[must_use]
struct Hold;

/// The server role of one node.
#[derive(Clone)]
pub struct ServerRole {
    inner: Rc<Inner>,
}

fn store_errno(e: StoreError) -> Errno {
    log::warn!("server: {e}");
    e.errno()
}

impl ServerRole {
    /// Open the volume for the server role (not yet serving).
    pub fn open(
        meta: Rc<dyn BlockDev>,
        data: Rc<dyn BlockDev>,
        entropy: Box<dyn Entropy>,
        mut cfg: ServerConfig,
        handle: Handle,
    ) -> FsResult<ServerRole> {
        let core = CommitCore::open_leader(Box::new(meta), Box::new(data), entropy, cfg.commit)
            .map_err(store_errno)?;
        let sb = *core.super_block();
        cfg.log_trees.reserved_meta_blocks = crate::server::commit::reserve_for_device(
            cfg.log_trees.reserved_meta_blocks,
            sb.total_meta_blocks,
        );
        (cfg.log_trees.meta_fill_lo, cfg.log_trees.meta_fill_target) =
            crate::server::commit::fill_for_device(
                cfg.log_trees.meta_fill_lo,
                cfg.log_trees.meta_fill_target,
                sb.total_meta_blocks,
                crate::server::commit::CLIENT_LIST_SHARE_SHIFT,
                0,
            );
        Ok(ServerRole {
            inner: Rc::new(Inner {
                core: RefCell::new(core),
                cfg,
                handle,
                gate: Gate {
                    holders: Cell::new(0),
                    applying: Cell::new(0),
                    committing: Cell::new(false),
                    kick: Cell::new(false),
                    generation: Cell::new(0),
                    changed: Notify::new(),
                },
                fsid: sb.hdr.fsid,
                fmt_vers: sb.fmt_vers,
                stopping: Cell::new(false),
                stopped: Cell::new(false),
                force_merge: Cell::new(false),
                data_used: RefCell::new(BTreeMap::new()),
                finalize_sent_seq: Cell::new(0),
                freeing_kick: Notify::new(),
                listener: RefCell::new(None),
                conns: RefCell::new(Vec::new()),
                peers: RefCell::new(BTreeMap::new()),
                exec_observer: RefCell::new(None),
                tasks: RefCell::new(Vec::new()),
                counters: Cell::new(ServerRoleCounters::default()),
                locks: RefCell::new(LockServer::new(cfg.locks)),
                lock_answers: RefCell::new(BTreeMap::new()),
                lock_changed: Notify::new(),
                recov: RefCell::new(RecoveryTracker::new()),
                recov_changed: Notify::new(),
                fence_agent: RefCell::new(None),
                fences: RefCell::new(None),
                reconnect_waits: RefCell::new(alloc::collections::BTreeSet::new()),
                omap: RefCell::new(OmapServer::new(OMAP_MAX_PENDING)),
                omap_answers: RefCell::new(BTreeMap::new()),
                omap_waiting: RefCell::new(alloc::collections::BTreeSet::new()),
                omap_next_token: Cell::new(1),
                omap_changed: Notify::new(),
            }),
        })
    }

    /// Fence mounts that do not recover within the window through
    /// `agent` (set before [`Self::start`]). Without one, such a mount
    /// stops this server (nothing else may take its work over).
    pub fn set_fence_agent(&self, agent: Rc<dyn FenceAgent>) {
        *self.inner.fence_agent.borrow_mut() = Some(agent);
    }

    /// Rids of the last server life still owing recovery (with the
    /// [`RECOV_GREETING`]/[`RECOV_LOCKS`] bits), and whether the window
    /// closed on them.
    pub fn recovery_pending(&self) -> (Vec<(u64, u8)>, bool) {
        let r = self.inner.recov.borrow();
        (r.pending(), r.timed_out())
    }

    /// Fence requests of this server life: (request, state, started at
    /// ns).
    pub fn fence_requests(&self) -> Vec<(FenceRequest, FenceState, u64)> {
        self.inner
            .fences
            .borrow()
            .as_ref()
            .map(|f| f.list())
            .unwrap_or_default()
    }

    /// Recover what a previous server or mount left, then listen on
    /// `addr` and serve.
    pub async fn start(&self, transport: &dyn Transport, addr: &str) -> FsResult<()> {
        let inner = &self.inner;
        let commit_task = {
            let i = inner.clone();
            inner
                .handle
                .spawn_named("server.commit", async move { i.commit_worker().await })
                .map_err(|_| Errno::ENOMEM)?
        };
        inner.tasks.borrow_mut().push(commit_task);
        inner.recover().await?;
        let listener = transport.listen(addr).map_err(Errno::from)?;
        *inner.listener.borrow_mut() = Some(listener.clone());
        let i = inner.clone();
        let accept = inner
            .handle
            .spawn_named(
                "server.accept",
                async move { i.accept_loop(listener).await },
            )
            .map_err(|_| Errno::ENOMEM)?;
        let i = inner.clone();
        let freeing = inner
            .handle
            .spawn_named("server.freeing", async move { i.freeing_worker().await })
            .map_err(|_| Errno::ENOMEM)?;
        inner.tasks.borrow_mut().extend([accept, freeing]);
        Ok(())
    }

    /// Stop serving: close the listener and every connection, let a
    /// commit in progress finish, discard uncommitted changes.
    pub async fn shutdown(&self) {
        self.inner.stop();
        let g = &self.inner.gate;
        // bounded: the worker commits pending applies and then sees no one
        for _ in 0..1000 {
            let changed = g.changed.notified();
            let idle = g.applying.get() == 0 && !g.committing.get();
            if idle || self.inner.core.borrow().is_failed() {
                break;
            }
            changed.await;
        }
        for t in self.inner.tasks.borrow_mut().drain(..) {
            t.abort();
        }
        self.inner.stopped.set(true);
    }

    /// Make the next GET_LOG_TREES finalize the caller's tree and start a
    /// merge (tests, admin).
    pub fn request_merge(&self) {
        self.inner.force_merge.set(true);
    }

    /// The super as last written.
    pub fn stable_super(&self) -> SuperBlock {
        *self.inner.core.borrow().stable_super()
    }

    /// Has a commit failed (the server stopped)?
    pub fn is_failed(&self) -> bool {
        self.inner.core.borrow().is_failed()
    }

    pub fn counters(&self) -> ServerRoleCounters {
        let mut c = self.inner.counters.get();
        c.commits = self.inner.core.borrow().counters.commits;
        c
    }

    /// Call the mount `rid` (SYNC_LOG_TREES; lock invalidation next):
    /// resent on its next connection if this one breaks, `ENOLINK` if it
    /// is not connected within the reconnect window or has left.
    pub async fn call_client(&self, rid: u64, c: u8, payload: &[u8]) -> FsResult<Vec<u8>> {
        let peer = self.inner.peers.borrow().get(&rid).cloned();
        match peer {
            Some(p) => p.call(c, payload).await,
            None => Err(Errno::ENOLINK),
        }
    }

    /// Reclaim the mount `rid`, which can no longer write (fenced): its
    /// open trees are finalized, its merge requests cancelled, and it is
    /// removed from `mounted_clients` (what a farewell does for it).
    pub async fn reclaim_fenced(&self, rid: u64) -> FsResult<()> {
        log::info!("server: reclaiming fenced rid {rid:016x}");
        self.inner.reclaim_rid(rid).await
    }

    /// Every cluster lock grant recorded: (rid, range, mode), by range
    /// then rid.
    pub fn lock_grants(&self) -> Vec<(u64, LockRange, LockMode)> {
        self.inner.locks.borrow().granted()
    }

    /// The rids that greeted this server life and have not left.
    pub fn client_rids(&self) -> Vec<u64> {
        self.inner.peers.borrow().keys().copied().collect()
    }

    /// Report every request executed to `o` (simulator checkers).
    pub fn set_exec_observer(&self, o: Option<ExecObserver>) {
        *self.inner.exec_observer.borrow_mut() = o;
    }

    /// Wait until the server stops (shutdown or a failed commit).
    pub async fn stopped(&self) {
        loop {
            let n = self.inner.gate.changed.notified();
            if self.inner.stopping.get() {
                return;
            }
            n.await;
        }
    }

    /// The log trees of the open transaction: (open, finalized) counts.
    pub fn log_tree_counts(&self) -> FsResult<(usize, usize)> {
        let mut core = self.inner.core.borrow_mut();
        let root = core.super_block().logs_root;
        let all = log_trees::all(core.cache(), &root).map_err(store_errno)?;
        let fin = all.iter().filter(|lt| lt.is_finalized()).count();
        Ok((all.len() - fin, fin))
    }

    /// The ordering merges rely on, over the open transaction's trees
    /// ([`log_merge::check_order`]): `Ok(Err(what))` when a tree that is
    /// not an input of the merge in progress holds an item no newer than
    /// an input's.
    pub fn check_log_order(&self) -> FsResult<Result<(), alloc::string::String>> {
        let mut core = self.inner.core.borrow_mut();
        let sb = *core.super_block();
        log_merge::check_order(core.cache(), &sb).map_err(store_errno)
    }

    /// Is a log merge (or freeing of merged trees) in progress?
    pub fn merge_pending(&self) -> bool {
        !self.stable_super().log_merge.is_empty()
    }
}

/// What a step of GET_LOG_TREES came to.
enum GotLogTrees {
    /// The transaction is open in this tree.
    Opened(Box<LogTrees>),
    /// The caller's tree is finalized; wait for the other mounts (these
    /// rids are asked to commit).
    WaitFor(Vec<u64>),
}
use GotLogTrees::{Opened, WaitFor};

/// The newest tree of each rid (`trees` in (rid, nr) order).
fn last_trees(trees: &[LogTrees]) -> impl Iterator<Item = &LogTrees> {
    trees
        .iter()
        .enumerate()
        .filter(move |(i, t)| trees.get(i + 1).is_none_or(|n| n.rid != t.rid))
        .map(|(_, t)| t)
}

impl Inner {
    fn count(&self, f: impl FnOnce(&mut ServerRoleCounters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    fn stop(&self) {
        if self.stopping.replace(true) {
            return;
        }
        TP_STOP.emit(&[self.core.borrow().is_failed() as u64]);
        if let Some(l) = self.listener.borrow_mut().take() {
            l.close();
        }
        for ep in self.conns.borrow_mut().drain(..) {
            ep.close();
        }
        let peers = core::mem::take(&mut *self.peers.borrow_mut());
        for p in peers.into_values() {
            p.forget(true);
        }
        self.gate.changed.notify();
        self.freeing_kick.notify();
        // waiting lock requests fail
        self.lock_changed.notify();
        self.recov_changed.notify();
        self.omap_changed.notify();
    }

    // ---- the commit gate ----

    fn room(&self) -> u64 {
        let core = self.core.borrow();
        core.meta_avail_remaining().min(core.meta_freed_room())
    }

    /// Hold the open transaction; waits (and kicks a commit, which
    /// refills the server lists) while the allocator lacks room.
    async fn hold(&self) -> FsResult<Hold> {
        let g = &self.gate;
        let mut committed_for_room = 0;
        loop {
            let changed = g.changed.notified();
            if self.core.borrow().is_failed() || self.stopping.get() {
                return Err(Errno::EIO);
            }
            if g.committing.get() {
                // the transaction is frozen until its commit is durable
                changed.await;
                continue;
            }
            let need = (g.holders.get() + 2) * self.cfg.hold_budget_blocks;
            if self.room() >= need {
                g.holders.set(g.holders.get() + 1);
                return Ok(Hold);
            }
            self.count(|c| c.hold_waits += 1);
            counter!("server.hold_waits").inc();
            if g.holders.get() == 0 && g.applying.get() == 0 {
                if committed_for_room >= 2 {
                    // commits no longer make room: the volume is full
                    counter!("server.hold_enospc").inc();
                    return Err(Errno::ENOSPC);
                }
                committed_for_room += 1;
            }
            g.kick.set(true);
            g.changed.notify();
            changed.await;
        }
    }

    /// Give the hold back and wait until a commit including its changes
    /// is durable.
    async fn apply(&self, _h: Hold) -> FsResult<()> {
        let g = &self.gate;
        g.holders.set(g.holders.get() - 1);
        g.applying.set(g.applying.get() + 1);
        let want = g.generation.get() + 1;
        g.changed.notify();
        loop {
            let changed = g.changed.notified();
            if self.core.borrow().is_failed() {
                return Err(Errno::EIO);
            }
            if g.generation.get() >= want {
                return Ok(());
            }
            if self.stopped.get() {
                return Err(Errno::EIO);
            }
            changed.await;
        }
    }

    async fn commit_worker(self: Rc<Self>) {
        let g = &self.gate;
        loop {
            let changed = g.changed.notified();
            if g.holders.get() == 0 && (g.applying.get() > 0 || g.kick.get()) {
                g.kick.set(false);
                g.applying.set(0);
                g.committing.set(true);
                let r = self.commit_paced().await;
                g.committing.set(false);
                g.generation.set(g.generation.get() + 1);
                if let Err(e) = r {
                    log::error!("server: commit failed, stopping: {e}");
                    g.changed.notify();
                    self.stop();
                    return;
                }
                g.changed.notify();
                continue;
            }
            if self.stopping.get() && g.applying.get() == 0 {
                return;
            }
            changed.await;
        }
    }

    /// Make the open transaction durable, one bounded step per poll. If
    /// this future is dropped half way the server fails (as after a commit
    /// error): the volume reopens at the last durable commit.
    async fn commit_paced(&self) -> StoreResult<()> {
        struct Abandon<'a>(&'a RefCell<CommitCore>, bool);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    if let Ok(mut core) = self.0.try_borrow_mut() {
                        core.abandon_commit();
                    }
                }
            }
        }
        let begun = self.core.borrow_mut().begin_commit();
        let mut c = begun?;
        let mut guard = Abandon(&self.core, false);
        loop {
            let stepped = self.core.borrow_mut().commit_step(&mut c);
            if stepped? {
                guard.1 = true;
                return Ok(());
            }
            yield_now().await;
        }
    }

    /// Run `step` in held transactions until it is done, committing
    /// between steps. The result is durable when this returns.
    async fn run_steps<T>(
        &self,
        mut step: impl FnMut(&mut ServerTxn<'_>, &Inner) -> StoreResult<Step<T>>,
    ) -> FsResult<T> {
        // bounded: each step makes progress or the server fails
        for _ in 0..1_000_000u64 {
            let hold = self.hold().await?;
            let r = {
                let mut core = self.core.borrow_mut();
                let mut tx = core.tx();
                step(&mut tx, self)
            };
            let applied = self.apply(hold).await;
            match r {
                Ok(Step::Done(v)) => {
                    applied?;
                    return Ok(v);
                }
                Ok(Step::More) => {
                    applied?;
                    self.count(|c| c.multi_commit_steps += 1);
                    counter!("server.multi_commit_steps").inc();
                }
                Err(e) => return Err(store_errno(e)),
            }
        }
        Err(Errno::EIO)
    }

    // ---- startup ----

    async fn recover(self: &Rc<Self>) -> FsResult<()> {
        // future seqs above every item seq a client ever wrote
        let (mounted, trees) = {
            let mut core = self.core.borrow_mut();
            let sb = *core.super_block();
            let trees = log_trees::all(core.cache(), &sb.logs_root).map_err(store_errno)?;
            let mut mounted = Vec::new();
            let s = mounted_client_key(0);
            let e = mounted_client_key(u64::MAX);
            btree::for_each_range(core.cache(), &sb.mounted_clients, &s, &e, |it| {
                mounted.push(it.key.first);
                true
            })
            .map_err(store_errno)?;
            let floor = trees.iter().map(|lt| lt.max_item_seq).max().unwrap_or(0);
            core.raise_seq(floor);
            (mounted, trees)
        };
        let mut dead: Vec<u64> = Vec::new();
        if self.cfg.reclaim_mounted_at_start {
            dead.extend(mounted.iter().copied());
        }
        // orphaned trees: open, and their mount is not listed
        for lt in &trees {
            if !lt.is_finalized() && !mounted.contains(&lt.rid) && !dead.contains(&lt.rid) {
                dead.push(lt.rid);
            }
        }
        for &rid in &dead {
            log::info!("server: reclaiming resources of rid {rid:016x}");
            self.reclaim_rid(rid).await?;
        }
        // the live mounts of the last life owe their greeting and locks
        let mut recov = self.recov.borrow_mut();
        for &rid in mounted.iter().filter(|r| !dead.contains(r)) {
            recov.prepare(rid, RECOV_ALL);
        }
        let now = self.handle.now_ns();
        if recov.begin(now, self.cfg.recovery_window_ns) == RecoveryStatus::Pending {
            log::info!(
                "server: waiting for {} clients to recover",
                recov.pending().len()
            );
            self.locks.borrow_mut().begin_recovery();
            drop(recov);
            let out = self.omap.borrow_mut().set_recovering(true);
            self.omap_apply(out);
            let me = self.clone();
            let t = self
                .handle
                .spawn_named("server.recovery_timeout", async move {
                    me.recovery_timeout().await
                })
                .map_err(|_| Errno::ENOMEM)?;
            self.tasks.borrow_mut().push(t);
        }
        Ok(())
    }

    /// Finalize `rid`'s trees, cancel its merge requests, forget it.
    async fn reclaim_rid(self: &Rc<Self>, rid: u64) -> FsResult<()> {
        self.data_used.borrow_mut().remove(&rid);
        let trees = self
            .run_steps(|tx, me| {
                let root = tx.sb.logs_root;
                let mine: Vec<LogTrees> = log_trees::all(tx.cache, &root)?
                    .into_iter()
                    .filter(|lt| lt.rid == rid && !lt.is_finalized())
                    .collect();
                let budget = Budget::new(tx, me.cfg.hold_budget_blocks);
                for mut lt in mine {
                    if log_trees::finalize(tx, &mut lt, &budget)? == Step::More {
                        return Ok(Step::More);
                    }
                }
                if log_merge::cancel_requests(tx, rid, &budget)? == Step::More {
                    return Ok(Step::More);
                }
                let k = mounted_client_key(rid);
                if btree::lookup(tx.cache, &tx.sb.mounted_clients, &k)?.is_some() {
                    btree::delete(tx.cache, tx.alloc, &mut tx.sb.mounted_clients, &k)?;
                }
                let n = log_trees::all(tx.cache, &tx.sb.logs_root.clone())?
                    .iter()
                    .filter(|lt| lt.rid == rid)
                    .count();
                Ok(Step::Done(n as u64))
            })
            .await?;
        self.count(|c| c.reclaimed_rids += 1);
        TP_RECLAIM.emit(&[rid, trees]);
        // its open map is gone with it: questions stop waiting for it
        let out = self.omap.borrow_mut().remove_rid(rid);
        self.omap_apply(out);
        self.lock_rid_gone(rid);
        // its finalized tree must not wait for a busy mount's tree to grow
        self.kick_finalization(None).await
    }

    // ---- connections ----

    async fn accept_loop(self: Rc<Self>, listener: Rc<dyn Listener>) {
        while let Ok(conn) = listener.accept().await {
            if self.stopping.get() {
                conn.close();
                return;
            }
            let Ok(ep) = Endpoint::start(conn.clone(), Role::Server, 0, &self.handle) else {
                conn.close();
                continue;
            };
            self.conns.borrow_mut().retain(|e| !e.is_closed());
            self.conns.borrow_mut().push(ep.clone());
            let me = self.clone();
            if self
                .handle
                .spawn_named("server.conn", async move { me.serve_conn(ep).await })
                .is_err()
            {
                counter!("server.conn_spawn_failed").inc();
            }
        }
    }

    async fn serve_conn(self: Rc<Self>, ep: Rc<Endpoint>) {
        // the first request is the greeting (the endpoint enforces it)
        let Some(first) = ep.next_request().await else {
            return;
        };
        let rid = match Request::decode(first.header.cmd, &first.payload) {
            Ok(Request::Greeting(g)) => {
                let r = self.greeting(&g).await;
                let ok = r.is_ok();
                let _ = ep.reply(&first.header, r).await;
                if !ok || self.stopping.get() {
                    ep.close();
                    return;
                }
                g.rid
            }
            _ => {
                ep.close();
                return;
            }
        };
        let first_contact = !self.peers.borrow().contains_key(&rid);
        let peer = self
            .peers
            .borrow_mut()
            .entry(rid)
            .or_insert_with(|| Rc::new(ServerPeer::new(rid, self.cfg.session, &self.handle)))
            .clone();
        peer.attach(&ep);
        if first_contact {
            self.omap.borrow_mut().add_rid(rid);
            self.recovery_greeting(rid);
        }
        let watchdog = {
            let (p, e) = (peer.clone(), ep.clone());
            self.handle
                .spawn_named("server.idle", async move { p.watch_idle(&e).await })
                .ok()
        };
        let inflight = Rc::new(Cell::new(0u32));
        let locks_inflight = Rc::new(Cell::new(0u32));
        let done = Notify::new();
        while let Some(f) = ep.next_request().await {
            if f.header.cmd == msg::cmd::PING {
                // liveness only: not numbered with the session's requests
                let _ = ep.reply(&f.header, Ok(Vec::new())).await;
                continue;
            }
            let (slots, max) = if f.header.cmd == msg::cmd::LOCK {
                (locks_inflight.clone(), MAX_LOCK_HANDLERS_PER_CONN)
            } else {
                (inflight.clone(), MAX_HANDLERS_PER_CONN)
            };
            loop {
                let d = done.notified();
                if slots.get() < max {
                    break;
                }
                counter!("server.handlers_full").inc();
                d.await;
            }
            slots.set(slots.get() + 1);
            let me = self.clone();
            let ep2 = ep.clone();
            let p2 = peer.clone();
            let (inf, dn) = (slots.clone(), done.clone());
            let spawned = self.handle.spawn_named("server.request", async move {
                let id = f.header.id;
                let r = match p2.begin(id) {
                    Begin::Run(slot) => {
                        let obs = me.exec_observer.borrow().clone();
                        if let Some(o) = obs {
                            o(rid, id, f.header.cmd);
                        }
                        let r = match Request::decode(f.header.cmd, &f.payload) {
                            Ok(req) => me.handle_request(rid, req).await,
                            Err(e) => Err(e),
                        };
                        me.count(|c| {
                            c.requests += 1;
                            if r.is_err() {
                                c.request_errors += 1;
                            }
                        });
                        p2.finish(id, &slot, r.clone());
                        Some(r)
                    }
                    Begin::Wait(slot) => Some(slot.wait().await),
                    Begin::Answer(r) => Some(r),
                    Begin::Stale => None,
                };
                if let Some(r) = r {
                    let left = f.header.cmd == msg::cmd::FAREWELL && r.is_ok();
                    if left {
                        // the mount is gone: forget its session (a resent
                        // farewell starts a new one and reclaims nothing)
                        let mut peers = me.peers.borrow_mut();
                        if peers.get(&rid).is_some_and(|p| Rc::ptr_eq(p, &p2)) {
                            peers.remove(&rid);
                        }
                        drop(peers);
                        // a lock request that slipped in after the
                        // reclaim: no one will give it back
                        me.lock_rid_gone(rid);
                    }
                    let _ = ep2.reply(&f.header, r).await;
                    if left {
                        p2.forget(false);
                    }
                }
                inf.set(inf.get() - 1);
                dn.notify();
            });
            if spawned.is_err() {
                slots.set(slots.get() - 1);
                let _ = ep.reply(&f.header, Err(Errno::ENOMEM)).await;
            }
        }
        peer.detach(&ep);
        if let Some(w) = watchdog {
            w.abort();
        }
        let wait = !self.stopping.get()
            && !peer.is_gone()
            && !peer.is_connected()
            && self.reconnect_waits.borrow_mut().insert(rid);
        if wait {
            let me = self.clone();
            if self
                .handle
                .spawn_named("server.reconnect_wait", async move {
                    me.reconnect_wait(rid, peer).await
                })
                .is_err()
            {
                self.reconnect_waits.borrow_mut().remove(&rid);
            }
        }
    }

    async fn greeting(&self, g: &Greeting) -> FsResult<Vec<u8>> {
        if g.fsid != self.fsid || g.fmt_vers != self.fmt_vers {
            counter!("server.greeting_mismatch").inc();
            return Err(Errno::EINVAL);
        }
        if g.rid == 0 || g.rid == u64::MAX {
            return Err(Errno::EINVAL);
        }
        let new = g.server_term == 0 && g.flags & GREETING_FLAG_FAREWELL == 0;
        if !new && g.flags & GREETING_FLAG_FAREWELL == 0 && !self.is_mounted(g.rid)? {
            // it greeted a server before, and its mount is gone: fenced
            // and reclaimed while it was away (a paused VM that woke).
            // Welcoming it back would hand locks and log trees to a rid
            // nobody will ever reclaim again.
            counter!("server.greeting_reclaimed").inc();
            log::warn!(
                "server: rid {:016x} reconnects but its mount was reclaimed: refused",
                g.rid
            );
            // ENOENT on the wire: no mounted_clients item for it
            return Err(Errno::ENOENT);
        }
        if new {
            let rid = g.rid;
            let flags = if g.flags & GREETING_FLAG_QUORUM != 0 {
                MOUNTED_CLIENT_QUORUM
            } else {
                0
            };
            self.run_steps(move |tx, _| {
                let v = MountedClient {
                    addr: [0; 32],
                    flags,
                };
                btree::force(
                    tx.cache,
                    tx.alloc,
                    &mut tx.sb.mounted_clients,
                    Item::new(mounted_client_key(rid), 0, &v.encode()),
                )?;
                Ok(Step::Done(()))
            })
            .await?;
        }
        TP_GREETING.emit(&[g.rid, self.cfg.term, new as u64]);
        Ok(Greeting {
            fsid: self.fsid,
            fmt_vers: self.fmt_vers,
            server_term: self.cfg.term,
            rid: g.rid,
            flags: 0,
        }
        .encode())
    }

    /// Is `rid` in `mounted_clients` (the server's current view)?
    fn is_mounted(&self, rid: u64) -> FsResult<bool> {
        let mut core = self.core.borrow_mut();
        let root = core.super_block().mounted_clients;
        let found =
            btree::lookup(core.cache(), &root, &mounted_client_key(rid)).map_err(store_errno)?;
        Ok(found.is_some())
    }

    async fn handle_request(self: &Rc<Self>, rid: u64, req: Request) -> FsResult<Vec<u8>> {
        match req {
            Request::Greeting(_) => Err(Errno::EINVAL),
            Request::AllocInodes(count) => self.alloc_inodes(count).await,
            Request::GetLogTrees => {
                self.wait_locks_recovered(rid).await?;
                self.get_log_trees(rid).await
            }
            Request::CommitLogTrees(lt) => {
                self.wait_locks_recovered(rid).await?;
                self.commit_log_trees(rid, &lt).await
            }
            Request::GetRoots => {
                let sb = *self.core.borrow().stable_super();
                Ok(NetRoots {
                    fs_root: sb.fs_root,
                    logs_root: sb.logs_root,
                    srch_root: sb.srch_root,
                }
                .encode())
            }
            Request::GetLastSeq => self.last_seq().map(msg::encode_u64),
            Request::GetLogMerge => self.get_log_merge(rid).await,
            Request::CommitLogMerge(c) => self.commit_log_merge(rid, &c).await,
            Request::Statfs => self.statfs(),
            Request::Farewell => self.farewell(rid).await,
            Request::Ping => Ok(Vec::new()),
            Request::Lock(nl) => self.lock_request(rid, nl).await,
            Request::OpenInoMap(a) => self.open_ino_map(rid, a).await,
            // server to mount only
            Request::SyncLogTrees | Request::LockRecover(_) | Request::Unsupported(_) => {
                Err(Errno::EINVAL)
            }
        }
    }

    async fn alloc_inodes(&self, count: u64) -> FsResult<Vec<u8>> {
        let want = count.clamp(1, ALLOC_INODES_MAX);
        let a = self
            .run_steps(|tx, _| {
                let ino = tx.sb.next_ino;
                let nr = want.min(u64::MAX - ino);
                tx.sb.next_ino = ino + nr;
                Ok(Step::Done(InodeAlloc { ino, nr }))
            })
            .await?;
        Ok(a.encode())
    }

    fn merge_cfg(&self) -> MergeConfig {
        MergeConfig {
            hold_budget_blocks: self.cfg.hold_budget_blocks,
            ..self.cfg.merge
        }
    }

    fn should_finalize(&self, lt: &LogTrees) -> bool {
        !log_trees::is_empty(lt)
            && (lt.item_root.height > self.cfg.finalize_height
                || lt.meta_avail.flags & crate::format::block::ALLOC_FLAG_LOW != 0
                || self.force_merge.get())
    }

    /// GET_LOG_TREES: open the mount's next transaction, finalizing its
    /// tree first when a merge is due (coordinated finalization,
    /// reference §1.9 / storage §3.1-3.2).
    ///
    /// Items must never go back in time when log trees are merged into
    /// fs_root: every tree that is not an input of a merge must hold only
    /// items newer than every input's. A lone tree cannot be finalized
    /// while others stay open (an open tree may hold an older version of
    /// a key that a newer lock let another mount overwrite), so once any
    /// tree is finalized (it grew, its allocator ran LOW, a merge was
    /// requested, or its mount left or was reclaimed) every mount's next
    /// GET_LOG_TREES finalizes its tree too, and the merge starts only at
    /// an instant when no tree is open: the trees opened afterwards get
    /// transaction seqs (and their locks write_seqs) above the merge's
    /// status seq, above every input item.
    ///
    /// The caller that finalized asks the mounts with open trees to commit
    /// (SYNC_LOG_TREES) and waits for them without holding the
    /// transaction, looking again after 5 ms growing 150 % up to 100 ms,
    /// for at most `ServerConfig::finalize_wait_ns` (500 ms). Past that it
    /// opens its next tree anyway; its finalized tree waits, and the merge
    /// starts at a later GET_LOG_TREES that finds every tree finalized
    /// (`server.merge_start_deferred` counts these timeouts).
    async fn get_log_trees(self: &Rc<Self>, rid: u64) -> FsResult<Vec<u8>> {
        let start = self.handle.now_ns();
        let mut delay = FINALIZE_POLL_MIN_NS;
        let mut give_up = false;
        // bounded: after finalize_wait_ns the step always opens the tree
        loop {
            let got = self
                .run_steps(|tx, me| me.get_log_trees_step(tx, rid, give_up))
                .await?;
            let sync = match got {
                Opened(lt) => return Ok(lt.encode().to_vec()),
                WaitFor(sync) => sync,
            };
            self.send_syncs(sync);
            counter!("server.finalize_waits").inc();
            loop {
                self.handle.sleep_ns(delay).await;
                delay = (delay * 3 / 2).min(FINALIZE_POLL_MAX_NS);
                if self.stopping.get() {
                    return Err(Errno::EIO);
                }
                if self.handle.now_ns().saturating_sub(start) >= self.cfg.finalize_wait_ns {
                    give_up = true;
                    break;
                }
                if self.finalize_wait_over(rid)? {
                    break;
                }
            }
        }
    }

    /// Has what a finalizing GET_LOG_TREES waits for happened: a merge
    /// started, or no other mount's tree is open? (Read only, no hold.)
    fn finalize_wait_over(&self, rid: u64) -> FsResult<bool> {
        let mut core = self.core.borrow_mut();
        let sb = *core.super_block();
        let merging = btree::lookup(core.cache(), &sb.log_merge, &merge_status_key())
            .map_err(store_errno)?
            .is_some();
        if merging {
            return Ok(true);
        }
        let trees = log_trees::all(core.cache(), &sb.logs_root).map_err(store_errno)?;
        let open = last_trees(&trees).any(|lt| lt.rid != rid && !lt.is_finalized());
        Ok(!open)
    }

    /// Finalized trees wait for a merge, which starts only while no tree
    /// is open: start it if none is, else ask the mounts with open trees
    /// (but `except`) to commit: their next GET_LOG_TREES finalizes them.
    /// Called after a mount left or was reclaimed (its tree would wait for
    /// a busy mount's tree to grow), and on GET_LOG_MERGE polls that found
    /// no work, unless the caller is the only mount with an open tree: a
    /// commit a lone mount did not ask for would change what a crash
    /// leaves behind (the crash workload's state model); its next commit
    /// merges them.
    async fn kick_finalization(&self, except: Option<u64>) -> FsResult<()> {
        let (pending, open, seq) = {
            let mut core = self.core.borrow_mut();
            let sb = *core.super_block();
            let merging = btree::lookup(core.cache(), &sb.log_merge, &merge_status_key())
                .map_err(store_errno)?
                .is_some();
            let trees = log_trees::all(core.cache(), &sb.logs_root).map_err(store_errno)?;
            let finalized = trees.iter().any(|t| t.is_finalized());
            let open: Vec<(u64, u64)> = last_trees(&trees)
                .filter(|t| !t.is_finalized())
                .map(|t| (t.rid, t.get_trans_seq))
                .collect();
            (!merging && finalized, open, core.peek_seq())
        };
        if !pending {
            return Ok(());
        }
        if !open.is_empty() {
            let sent = self.finalize_sent_seq.get();
            // a lone mount (the caller) is not asked: see above
            let lone = open.len() == 1 && except.is_some_and(|e| open[0].0 == e);
            let rids: Vec<u64> = open
                .iter()
                .filter(|(_, s)| *s > sent && !lone)
                .map(|(r, _)| *r)
                .collect();
            if !rids.is_empty() {
                self.finalize_sent_seq.set(seq);
                self.send_syncs(rids);
            }
            return Ok(());
        }
        let started = self
            .run_steps(|tx, me| {
                let started = log_merge::start(tx)?;
                if started {
                    me.force_merge.set(false);
                }
                Ok(Step::Done(started))
            })
            .await?;
        if started {
            counter!("server.merge_kicked").inc();
        }
        Ok(())
    }

    /// Ask `rids` to commit (SYNC_LOG_TREES), each from a task of its own:
    /// the answer only says the mount heard it; a mount that is away gets
    /// it when it reconnects, or is reclaimed.
    fn send_syncs(&self, rids: Vec<u64>) {
        for rid in rids {
            let peer = self.peers.borrow().get(&rid).cloned();
            let Some(peer) = peer else {
                continue;
            };
            counter!("server.sync_log_trees_sent").inc();
            let spawned = self
                .handle
                .spawn_named("server.sync_log_trees", async move {
                    if let Err(e) = peer.call(msg::cmd::SYNC_LOG_TREES, &[]).await {
                        log::debug!("server: SYNC_LOG_TREES to a mount: {e:?}");
                    }
                });
            if spawned.is_err() {
                counter!("server.sync_spawn_failed").inc();
            }
        }
    }

    /// One held step of GET_LOG_TREES (see [`Self::get_log_trees`]).
    fn get_log_trees_step(
        &self,
        tx: &mut ServerTxn<'_>,
        rid: u64,
        give_up: bool,
    ) -> StoreResult<Step<GotLogTrees>> {
        let budget = Budget::new(tx, self.cfg.hold_budget_blocks);
        let (mut lt, stored) = match log_trees::last_for_rid(tx, rid)? {
            Some(lt) if !lt.is_finalized() => (lt, true),
            Some(lt) => (log_trees::new_tree(rid, lt.nr + 1), false),
            None => (log_trees::new_tree(rid, 1), false),
        };
        if lt.is_open() {
            // a resend: the transaction is already open
            return Ok(Step::Done(Opened(Box::new(lt))));
        }
        let root = tx.sb.logs_root;
        let trees = log_trees::all(tx.cache, &root)?;
        // how many log trees the volume holds (open, finalized, merging):
        // bounded under steady writes, which the cluster tests check
        let count = u64::try_from(trees.len()).unwrap_or(u64::MAX);
        counter!("server.log_trees").set(count);
        counter!("server.log_trees_max").set_max(count);
        if log_merge::status(tx)?.is_none() {
            let saw_finalized = trees.iter().any(|t| t.is_finalized());
            let others: Vec<LogTrees> = last_trees(&trees)
                .filter(|t| t.rid != rid && !t.is_finalized())
                .copied()
                .collect();
            // a tree of a mount that is not connected (it died and is
            // not reclaimed yet, or has not reconnected to this server
            // life) cannot be finalized before it comes back or is
            // reclaimed: finalizing ours meanwhile would only pile up
            // finalized trees (one per commit) and make every commit wait
            let absent = {
                let peers = self.peers.borrow();
                others
                    .iter()
                    .any(|t| !peers.get(&t.rid).is_some_and(|p| p.is_connected()))
            };
            if absent && (self.should_finalize(&lt) || saw_finalized) {
                counter!("server.finalize_blocked_by_absent").inc();
            } else if self.should_finalize(&lt) || saw_finalized {
                if stored {
                    if log_trees::finalize(tx, &mut lt, &budget)? == Step::More {
                        return Ok(Step::More);
                    }
                    lt = log_trees::new_tree(rid, lt.nr + 1);
                }
                if others.is_empty() {
                    // no tree is open: everything finalized is older than
                    // every tree opened from now on
                    self.force_merge.set(false);
                    log_merge::start(tx)?;
                } else if give_up {
                    counter!("server.merge_start_deferred").inc();
                } else {
                    let sent = self.finalize_sent_seq.get();
                    let sync = others
                        .iter()
                        .filter(|t| t.get_trans_seq > sent)
                        .map(|t| t.rid)
                        .collect();
                    self.finalize_sent_seq.set(tx.peek_seq());
                    return Ok(Step::Done(WaitFor(sync)));
                }
            }
        }
        if log_trees::drain_freed(tx, &mut lt, &budget)? == Step::More {
            log_trees::store(tx, &lt)?;
            return Ok(Step::More);
        }
        let used = self.data_used.borrow().get(&rid).copied();
        log_trees::refill(tx, &mut lt, &self.cfg.log_trees, used, &budget)?;
        srch_compact::maybe_rotate(tx, &mut lt, self.cfg.srch_rotate_blocks)?;
        if budget.ok(tx) {
            srch_compact::compact_one(tx)?;
        }
        lt.get_trans_seq = tx.next_seq();
        log_trees::store(tx, &lt)?;
        Ok(Step::Done(Opened(Box::new(lt))))
    }

    async fn commit_log_trees(&self, rid: u64, lt: &LogTrees) -> FsResult<Vec<u8>> {
        if lt.rid != rid {
            return Err(Errno::EINVAL);
        }
        let lt = *lt;
        let r = self
            .run_steps(move |tx, me| {
                let Some(stored) = log_trees::lookup(tx, rid, lt.nr)? else {
                    return Ok(Step::Done(Err(Errno::ENOENT)));
                };
                if stored.is_finalized() || stored.get_trans_seq != lt.get_trans_seq {
                    return Ok(Step::Done(Err(Errno::EINVAL)));
                }
                if stored.commit_trans_seq == stored.get_trans_seq {
                    counter!("server.commit_log_trees_resent").inc();
                    return Ok(Step::Done(Ok(())));
                }
                // Items carry the transaction's seq or, newer, the write_seq
                // of the WRITE lock covering them (handed out by a grant
                // after this transaction began): never a seq not handed out.
                if lt.max_item_seq >= tx.peek_seq().max(stored.max_item_seq.saturating_add(1)) {
                    return Ok(Step::Done(Err(Errno::EINVAL)));
                }
                let new = LogTrees {
                    meta_avail: lt.meta_avail,
                    meta_freed: lt.meta_freed,
                    item_root: lt.item_root,
                    bloom_ref: lt.bloom_ref,
                    data_avail: lt.data_avail,
                    data_freed: lt.data_freed,
                    srch_file: lt.srch_file,
                    inode_count_delta: lt.inode_count_delta,
                    max_item_seq: lt.max_item_seq,
                    commit_trans_seq: stored.get_trans_seq,
                    ..stored
                };
                log_trees::store(tx, &new)?;
                // avail only shrinks in a transaction (frees go to freed)
                let used = stored
                    .data_avail
                    .total_len
                    .saturating_sub(lt.data_avail.total_len);
                me.data_used.borrow_mut().insert(rid, used);
                Ok(Step::Done(Ok(())))
            })
            .await?;
        r.map(|()| Vec::new())
    }

    fn last_seq(&self) -> FsResult<u64> {
        let mut core = self.core.borrow_mut();
        let mut last = core.peek_seq().saturating_sub(1);
        let root = core.super_block().logs_root;
        for lt in log_trees::all(core.cache(), &root).map_err(store_errno)? {
            if lt.is_open() {
                last = last.min(lt.get_trans_seq.saturating_sub(1));
            }
        }
        Ok(last)
    }

    fn statfs(&self) -> FsResult<Vec<u8>> {
        let mut core = self.core.borrow_mut();
        let sb = *core.stable_super();
        let trees = log_trees::all(core.cache(), &sb.logs_root).map_err(store_errno)?;
        let mut free_meta = sb.meta_alloc[0].total_len
            + sb.meta_alloc[1].total_len
            + sb.server_meta_avail[0].total_nr
            + sb.server_meta_avail[1].total_nr;
        let mut free_data = sb.data_alloc.total_len;
        let mut inodes = sb.inode_count;
        for lt in &trees {
            free_meta += lt.meta_avail.total_nr;
            free_data += lt.data_avail.total_len + lt.data_freed.total_len;
            inodes = inodes.wrapping_add(lt.inode_count_delta);
        }
        Ok(NetStatfs {
            uuid: sb.uuid,
            free_meta_blocks: free_meta,
            total_meta_blocks: sb.total_meta_blocks,
            free_data_blocks: free_data,
            total_data_blocks: sb.total_data_blocks,
            inode_count: inodes,
        }
        .encode())
    }

    async fn get_log_merge(&self, rid: u64) -> FsResult<Vec<u8>> {
        let cfg = self.merge_cfg();
        let work = self
            .run_steps(move |tx, _| match log_merge::get_request(tx, rid, &cfg)? {
                Work::More => Ok(Step::More),
                w => Ok(Step::Done(w)),
            })
            .await?;
        self.freeing_kick.notify();
        match work {
            Work::Request(req) => Ok(req.encode().to_vec()),
            _ => {
                // finalized trees waiting: the other mounts commit
                self.kick_finalization(Some(rid)).await?;
                Err(Errno::ENOENT)
            }
        }
    }

    async fn commit_log_merge(&self, rid: u64, comp: &MergeComplete) -> FsResult<Vec<u8>> {
        let comp = *comp;
        self.run_steps(move |tx, _| {
            log_merge::commit_completion(tx, rid, &comp)?;
            Ok(Step::Done(()))
        })
        .await?;
        Ok(Vec::new())
    }

    async fn farewell(self: &Rc<Self>, rid: u64) -> FsResult<Vec<u8>> {
        self.reclaim_rid(rid).await?;
        TP_FAREWELL.emit(&[rid]);
        Ok(Vec::new())
    }

    // ---- cluster locks ----

    /// A fresh seq for a WRITE grant, from the counter transactions use:
    /// above every seq handed out, below every later transaction's.
    fn lock_seq(&self) -> u64 {
        self.core.borrow_mut().next_seq()
    }

    /// A LOCK request of `rid`: answered when granted (a give-back at
    /// once), with an error if refused or if the server stops first.
    async fn lock_request(self: &Rc<Self>, rid: u64, nl: NetLock) -> FsResult<Vec<u8>> {
        counter!("lock_server.requests").inc();
        if nl.new_mode == LockMode::Null {
            counter!("lock_server.give_backs").inc();
        }
        if self.stopping.get() {
            return Err(Errno::EIO);
        }
        if !self.peers.borrow().contains_key(&rid) {
            // it said farewell: it must not hold locks again
            return Err(Errno::ENOLINK);
        }
        let token = self
            .locks
            .borrow_mut()
            .request(rid, &nl, &mut || self.lock_seq());
        self.drain_locks();
        // a cancelled wait leaves no answer behind
        struct Forget<'a>(&'a Inner, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.lock_answers.borrow_mut().remove(&self.1);
            }
        }
        let _forget = Forget(self, token);
        loop {
            let changed = self.lock_changed.notified();
            let answer = self.lock_answers.borrow_mut().remove(&token);
            if let Some(r) = answer {
                return r.map(|l| l.encode());
            }
            if self.stopping.get() {
                return Err(Errno::EIO);
            }
            changed.await;
        }
    }

    // ---- open-inode map (reference §1.10) ----

    /// A mount asks which other mounts have inodes of a group open: the
    /// union of their maps, once each answered or was reclaimed.
    async fn open_ino_map(self: &Rc<Self>, rid: u64, a: OpenInoMapArgs) -> FsResult<Vec<u8>> {
        counter!("omap.requests").inc();
        if a.req_id != 0 {
            // request ids are the server's; a mount asks with 0
            counter!("omap.bad_requests").inc();
            return Err(Errno::EINVAL);
        }
        if self.stopping.get() {
            return Err(Errno::EIO);
        }
        let token = self.omap_next_token.get();
        self.omap_next_token.set(token.wrapping_add(1));
        let out = match self.omap.borrow_mut().request(rid, token, a.group_nr) {
            Ok(out) => out,
            Err(e) => {
                counter!("omap.refused_full").inc();
                log::warn!("server: too many open-inode map questions: refused");
                return Err(e);
            }
        };
        // a cancelled wait leaves no answer behind
        struct Forget<'a>(&'a Inner, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.omap_waiting.borrow_mut().remove(&self.1);
                self.0.omap_answers.borrow_mut().remove(&self.1);
            }
        }
        self.omap_waiting.borrow_mut().insert(token);
        let _forget = Forget(self, token);
        self.omap_apply(out);
        loop {
            let changed = self.omap_changed.notified();
            let answer = self.omap_answers.borrow_mut().remove(&token);
            if let Some(bits) = answer {
                return Ok(OpenInoMap { args: a, bits }.encode());
            }
            if self.stopping.get() {
                return Err(Errno::EIO);
            }
            changed.await;
        }
    }

    /// Do what the omap fan-out decided: answers to the waiting request
    /// tasks, questions to mounts from tasks of their own.
    fn omap_apply(self: &Rc<Self>, out: Vec<OmapOut>) {
        let mut answered = false;
        for o in out {
            match o {
                OmapOut::Reply { token, bits } => {
                    if self.omap_waiting.borrow().contains(&token) {
                        self.omap_answers.borrow_mut().insert(token, bits);
                        answered = true;
                    }
                }
                OmapOut::Ask {
                    rid,
                    group_nr,
                    req_id,
                } => {
                    counter!("omap.asks").inc();
                    let me = self.clone();
                    let spawned = self.handle.spawn_named("server.omap_ask", async move {
                        me.omap_ask(rid, group_nr, req_id).await
                    });
                    if spawned.is_err() {
                        // the question waits for the rid's reclaim
                        counter!("omap.ask_spawn_failed").inc();
                    }
                }
            }
        }
        if answered {
            self.omap_changed.notify();
        }
    }

    /// Ask `rid` for its map until it answers, it is reclaimed (which
    /// ends the wait for it) or the server stops.
    async fn omap_ask(self: Rc<Self>, rid: u64, group_nr: u64, req_id: u64) {
        let args = OpenInoMapArgs { group_nr, req_id };
        let mut pause = LOCK_INVALIDATE_RETRY_NS;
        loop {
            if self.stopping.get() || !self.omap.borrow().owes(rid, req_id) {
                return;
            }
            let peer = self.peers.borrow().get(&rid).cloned();
            if let Some(peer) = peer {
                match peer.call(msg::cmd::OPEN_INO_MAP, &args.encode()).await {
                    Ok(reply) => match omap::decode_answer(group_nr, req_id, &reply) {
                        Ok(bits) => {
                            let r = self.omap.borrow_mut().answer(rid, req_id, group_nr, &bits);
                            match r {
                                Ok(out) => self.omap_apply(out),
                                // it was reclaimed meanwhile
                                Err(_) => counter!("omap.stale_answers").inc(),
                            }
                            return;
                        }
                        Err(_) => {
                            counter!("omap.bad_answers").inc();
                            log::warn!("server: bad open-inode map answer from rid {rid:016x}");
                        }
                    },
                    Err(e) => {
                        counter!("omap.ask_errors").inc();
                        log::debug!("server: open-inode map ask of rid {rid:016x}: {e:?}");
                    }
                }
            }
            self.handle.sleep_ns(pause).await;
            pause = (pause * 2).min(LOCK_INVALIDATE_RETRY_MAX_NS);
        }
    }

    /// Send what the lock machine decided: answers to the waiting request
    /// tasks, invalidations from tasks of their own.
    fn drain_locks(self: &Rc<Self>) {
        let mut answered = false;
        loop {
            let out = self.locks.borrow_mut().poll_output();
            match out {
                None => break,
                Some(LockOutput::Grant { token, lock, .. }) => {
                    if lock.new_mode != LockMode::Null {
                        counter!("lock_server.grants").inc();
                    }
                    self.lock_answers.borrow_mut().insert(token, Ok(lock));
                    answered = true;
                }
                Some(LockOutput::Refuse { token, errno, .. }) => {
                    counter!("lock_server.refused").inc();
                    self.lock_answers.borrow_mut().insert(token, Err(errno));
                    answered = true;
                }
                Some(LockOutput::Invalidate { rid, lock }) => {
                    counter!("lock_server.invalidations_sent").inc();
                    let me = self.clone();
                    let spawned = self
                        .handle
                        .spawn_named("server.lock_invalidate", async move {
                            me.invalidate(rid, lock).await
                        });
                    if spawned.is_err() {
                        // the range waits until the rid is reclaimed
                        counter!("lock_server.invalidate_spawn_failed").inc();
                        log::error!("server: no task for a lock invalidation of rid {rid:016x}");
                    }
                }
            }
        }
        if answered {
            self.lock_changed.notify();
        }
    }

    /// Call `rid` with the invalidation `lock` until it answers, it is
    /// gone (its reclaim releases the range) or the server stops.
    async fn invalidate(self: Rc<Self>, rid: u64, lock: NetLock) {
        let mut pause = LOCK_INVALIDATE_RETRY_NS;
        // bounded by the mount's departure or fencing, which ends it
        loop {
            if self.stopping.get() || !self.locks.borrow().is_invalidating(rid, &lock.range) {
                return;
            }
            let peer = self.peers.borrow().get(&rid).cloned();
            let Some(peer) = peer else {
                return;
            };
            match peer.call(msg::cmd::LOCK, &lock.encode()).await {
                Ok(reply) => match NetLock::decode(&reply) {
                    Ok(r) if r.range == lock.range && r.new_mode == lock.new_mode => {
                        let done = self.locks.borrow_mut().invalidation_done(
                            rid,
                            &lock.range,
                            lock.new_mode,
                            &mut || self.lock_seq(),
                        );
                        if done.is_err() {
                            // the rid left meanwhile
                            counter!("lock_server.stale_invalidation_answers").inc();
                        }
                        self.drain_locks();
                        return;
                    }
                    _ => {
                        counter!("lock_server.bad_invalidation_answers").inc();
                        log::warn!("server: bad lock invalidation answer from rid {rid:016x}");
                    }
                },
                Err(e) => {
                    counter!("lock_server.invalidation_call_errors").inc();
                    log::debug!("server: lock invalidation of rid {rid:016x}: {e:?}");
                }
            }
            self.handle.sleep_ns(pause).await;
            pause = (pause * 2).min(LOCK_INVALIDATE_RETRY_MAX_NS);
        }
    }

    /// `rid` left or was reclaimed: release its locks; it owes no
    /// recovery any more.
    fn lock_rid_gone(self: &Rc<Self>, rid: u64) {
        self.locks
            .borrow_mut()
            .rid_gone(rid, &mut || self.lock_seq());
        self.drain_locks();
        self.recovery_finish(rid, RECOV_ALL);
    }

    // ---- recovery of the last life's mounts (reference §3.6, §5) ----

    /// `rid` paid `which`: when it was the last, the lock server serves
    /// the requests that waited.
    fn recovery_finish(self: &Rc<Self>, rid: u64, which: u8) {
        let st = self.recov.borrow_mut().finish(rid, which);
        self.recov_changed.notify();
        if st == RecoveryStatus::AllDone {
            log::info!("server: all clients recovered");
        }
        let greetings_owed = self
            .recov
            .borrow()
            .pending()
            .iter()
            .any(|(_, w)| w & RECOV_GREETING != 0);
        if !greetings_owed {
            let out = self.omap.borrow_mut().set_recovering(false);
            self.omap_apply(out);
        }
        let locks_done = !self.recov.borrow().locks_pending();
        if locks_done && self.locks.borrow().is_recovering() {
            self.locks
                .borrow_mut()
                .end_recovery(&mut || self.lock_seq());
            self.drain_locks();
        }
    }

    /// A mount's transaction requests wait until it reported its locks:
    /// the items it wrote under a WRITE lock of the last life carry that
    /// grant's write_seq, which the server's seq must be raised above
    /// before the transaction is committed or a new one is opened.
    async fn wait_locks_recovered(&self, rid: u64) -> FsResult<()> {
        loop {
            let changed = self.recov_changed.notified();
            if !self.recov.borrow().is_pending(rid, RECOV_LOCKS) {
                return Ok(());
            }
            if self.stopping.get() {
                return Err(Errno::EIO);
            }
            counter!("server.requests_held_for_recovery").inc();
            changed.await;
        }
    }

    /// First contact of `rid` in this life: its greeting is paid; if it
    /// owes its locks, ask for them.
    fn recovery_greeting(self: &Rc<Self>, rid: u64) {
        self.recovery_finish(rid, RECOV_GREETING);
        let owes_locks = self.recov.borrow().is_pending(rid, RECOV_LOCKS);
        TP_LOCK_SERVER_GREETING.emit(&[rid, owes_locks as u64]);
        log::info!(
            "lock_server_greeting rid {rid:016x} recov_pending {}",
            owes_locks as u8
        );
        if !owes_locks {
            return;
        }
        let me = self.clone();
        let spawned =
            self.handle.spawn_named(
                "server.lock_recover",
                async move { me.lock_recover(rid).await },
            );
        if spawned.is_err() {
            // the window's end fences it
            counter!("server.lock_recover_spawn_failed").inc();
        }
    }

    /// Pull `rid`'s locks with LOCK_RECOVER, a batch at a time, until an
    /// empty answer; every reported write_seq raises the server's seq.
    async fn lock_recover(self: Rc<Self>, rid: u64) {
        let mut from = Key::MIN;
        let mut pause = LOCK_INVALIDATE_RETRY_NS;
        // bounded by the window: a rid still owing then is fenced
        loop {
            if self.stopping.get() || !self.recov.borrow().is_pending(rid, RECOV_LOCKS) {
                return;
            }
            let peer = self.peers.borrow().get(&rid).cloned();
            let Some(peer) = peer else {
                return;
            };
            let reply = match peer.call(msg::cmd::LOCK_RECOVER, &from.to_bytes()).await {
                Ok(r) => LockRecover::decode(&r),
                Err(e) => Err(e),
            };
            let batch = match reply {
                Ok(b) => b,
                Err(e) => {
                    counter!("server.lock_recover_errors").inc();
                    log::debug!("server: lock recovery of rid {rid:016x}: {e:?}");
                    self.handle.sleep_ns(pause).await;
                    pause = (pause * 2).min(LOCK_INVALIDATE_RETRY_MAX_NS);
                    continue;
                }
            };
            let Some(last) = batch.locks.last().copied() else {
                log::info!("server: rid {rid:016x} recovered its locks");
                self.recovery_finish(rid, RECOV_LOCKS);
                return;
            };
            for l in &batch.locks {
                if l.range.start < from {
                    counter!("server.lock_recover_refused").inc();
                    continue;
                }
                let r = self.locks.borrow_mut().recover(rid, l);
                match r {
                    Ok(()) => {
                        counter!("lock_server.recovered").inc();
                        self.core.borrow_mut().raise_seq(l.write_seq);
                    }
                    Err(e) => {
                        counter!("server.lock_recover_refused").inc();
                        log::warn!(
                            "server: rid {rid:016x} reported a lock it cannot hold: {l:?} ({e:?})"
                        );
                    }
                }
            }
            from = last.range.start.inc();
            if from == Key::MAX {
                self.recovery_finish(rid, RECOV_LOCKS);
                return;
            }
        }
    }

    /// At the end of the window, fence every rid still owing recovery;
    /// a fenced rid is reclaimed (which finishes it), a failed fence
    /// stops this server so that another leader tries.
    async fn recovery_timeout(self: Rc<Self>) {
        let Some(deadline) = self.recov.borrow().deadline_ns() else {
            return;
        };
        self.handle.sleep_until(deadline).await;
        if self.stopping.get() {
            return;
        }
        let rids = self.recov.borrow_mut().timer(self.handle.now_ns());
        if rids.is_empty() {
            return;
        }
        for &rid in &rids {
            log::error!("server: recovery timeout expired for client rid {rid:016x}, fencing");
            TP_RECOV_FENCE_RID.emit(&[rid]);
            log::info!("recov_fence_rid rid {rid:016x}");
        }
        self.fence_and_reclaim(&rids, FenceReason::ClientRecovery)
            .await;
    }

    /// Fence `rids` through the node's fence agent and reclaim each once
    /// it is fenced. No agent, or a fence that fails, stops this server
    /// (another leader tries). A rid fenced twice keeps its first request.
    async fn fence_and_reclaim(self: &Rc<Self>, rids: &[u64], reason: FenceReason) {
        let reg = {
            let mut fences = self.fences.borrow_mut();
            match (fences.as_ref(), self.fence_agent.borrow().clone()) {
                (Some(reg), _) => reg.clone(),
                (None, Some(agent)) => {
                    let reg = FenceRegistry::new(agent, self.handle.clone());
                    *fences = Some(reg.clone());
                    reg
                }
                (None, None) => {
                    log::error!(
                        "server: {} clients must be fenced ({}) and no fence agent is set: \
                         stopping",
                        rids.len(),
                        reason.name()
                    );
                    drop(fences);
                    self.stop();
                    return;
                }
            }
        };
        for &rid in rids {
            reg.start(
                FenceRequest {
                    rid,
                    addr: alloc::string::String::new(),
                    reason,
                    term: self.cfg.term,
                },
                FENCE_TIMEOUT_NS,
            );
        }
        for &rid in rids {
            match reg.wait_all(&[rid]).await {
                Ok(()) => {
                    if self.stopping.get() {
                        return;
                    }
                    if let Err(e) = self.reclaim_rid(rid).await {
                        log::error!("server: reclaiming fenced rid {rid:016x}: {e:?}");
                        self.stop();
                        return;
                    }
                    // calls to it fail now; a reconnect is refused
                    let peer = self.peers.borrow_mut().remove(&rid);
                    if let Some(p) = peer {
                        p.forget(true);
                    }
                    log::info!("server: reclaimed the resources of fenced rid {rid:016x}");
                }
                Err((_, e)) => {
                    log::error!("server: fencing rid {rid:016x} failed ({e:?}): stopping");
                    self.stop();
                    return;
                }
            }
        }
    }

    /// A mount's connection ended without a farewell: if it has not
    /// connected again within the session's reconnect window (counted
    /// from its last disconnect), fence it (`client_reconnect`) and
    /// reclaim it, so the locks it held go to the others (reference
    /// §2.3's reconnect wait). Rids still owing recovery are the
    /// recovery window's to fence.
    async fn reconnect_wait(self: Rc<Self>, rid: u64, peer: Rc<ServerPeer>) {
        let window = self.cfg.session.reconnect_window_ns;
        loop {
            let Some(since) = peer.away_since() else {
                // back: a later disconnect waits afresh
                self.reconnect_waits.borrow_mut().remove(&rid);
                return;
            };
            let deadline = since.saturating_add(window);
            if self.handle.now_ns() >= deadline {
                break;
            }
            self.handle.sleep_until(deadline).await;
        }
        self.reconnect_waits.borrow_mut().remove(&rid);
        let ours = self
            .peers
            .borrow()
            .get(&rid)
            .is_some_and(|p| Rc::ptr_eq(p, &peer));
        if self.stopping.get() || peer.is_gone() || !ours {
            return;
        }
        if self.recov.borrow().is_pending(rid, RECOV_ALL) || !self.is_mounted(rid).unwrap_or(false)
        {
            return;
        }
        if self.fence_agent.borrow().is_none() {
            // a server without any agent (tests, tools) keeps the rid:
            // its locks wait for it or for the next server life; every
            // node of a cluster has one (the shell's `fence` at least)
            counter!("server.reconnect_unfenced").inc();
            log::warn!(
                "server: client rid {rid:016x} did not reconnect and no fence agent is set: \
                 its locks stay held"
            );
            return;
        }
        log::error!(
            "server: client rid {rid:016x} did not reconnect within {} ms, fencing",
            window / 1_000_000
        );
        TP_RECONNECT_FENCE.emit(&[rid]);
        counter!("server.reconnect_fences").inc();
        self.fence_and_reclaim(&[rid], FenceReason::ClientReconnect)
            .await;
    }

    async fn freeing_worker(self: Rc<Self>) {
        loop {
            let kicked = self.freeing_kick.notified();
            if self.stopping.get() {
                return;
            }
            let pending = {
                let mut core = self.core.borrow_mut();
                let root = core.super_block().log_merge;
                let s = Key::new(zone::LOG_MERGE_FREEING, 0, 0, 0, 0, 0);
                let e = Key::new(
                    zone::LOG_MERGE_FREEING,
                    u64::MAX,
                    255,
                    u64::MAX,
                    u64::MAX,
                    255,
                );
                let mut any = false;
                let r = btree::for_each_range(core.cache(), &root, &s, &e, |_| {
                    any = true;
                    false
                });
                r.map(|_| any).unwrap_or(false)
            };
            if pending {
                let cfg = self.merge_cfg();
                let r = self
                    .run_steps(move |tx, _| match log_merge::free_some(tx, &cfg)? {
                        Step::More => Ok(Step::More),
                        Step::Done(_) => Ok(Step::Done(())),
                    })
                    .await;
                if r.is_err() {
                    return;
                }
                continue;
            }
            let timeout = self.handle.timeout_ns(FREEING_POLL_NS, kicked);
            let _ = timeout.await;
        }
    }
}
