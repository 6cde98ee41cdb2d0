//! One node: the server role and the mount's client, wired together over
//! an in-memory transport, the POSIX mount on top, and the background
//! tasks a mounted volume needs (periodic commits, the log merge worker).
//! Host tools, tests and the appliance mount volumes through here
//! ([`mount_volume`]).
//!
//! Calls `leader.rs` (server), `client.rs` + `trans.rs` (the mount's
//! persistent half) and `btree_merge.rs` (merge work). The client reaches
//! the server only through messages on the transport. Invariants: the
//! server is running before the client greets; an unmount commits, says
//! farewell (the server reclaims the mount and removes it from
//! `mounted_clients`) and then stops the server, leaving the volume at rest.

use crate::client::btree_merge::{self, MergeLimits, MergeStats};
use crate::client::log_txn::{ClientLogTxn, LogTxnConfig};
use crate::client::requests::{Client, ClientIdentity};
use crate::cluster::session::{SessionConfig, StaticLeader};
use crate::cluster::transport::{MemNet, Transport};
use crate::counter;
use crate::errno::{Errno, FsResult};
use crate::posix::mount::{Mount, MountOptions};
use crate::runtime::env::Clock;
use crate::runtime::env::Entropy;
use crate::runtime::exec::{Handle, JoinHandle};
use crate::server::role::{ServerConfig, ServerRole};
use crate::storage::block::BlockCache;
use crate::storage::dev::BlockDev;
use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

/// The in-memory address the server listens on.
pub const LOOPBACK_ADDR: &str = "loopback:server";
/// `log merge client poll`: how often an idle merge worker asks for work.
pub const MERGE_POLL_NS: u64 = 5_000_000_000;

/// How often the commit ticker asks the mount whether a commit is due.
pub const TICK_NS: u64 = 1_000_000_000;

/// Tunables of a node.
#[derive(Clone, Copy, Debug)]
pub struct NodeOptions {
    pub mount: MountOptions,
    /// Period of the commit ticker; 0 = none (tests commit explicitly).
    pub tick_ns: u64,
    pub server: ServerConfig,
    pub trans: LogTxnConfig,
    pub merge_limits: MergeLimits,
    pub merge_cache_budget_bytes: usize,
    /// Idle poll period of the merge worker; 0 = no background worker
    /// (tests drive merges with [`NodeHandle::merge_once`]).
    pub merge_poll_ns: u64,
    /// The mount's session to the server (timeouts, ping, backoff).
    pub session: SessionConfig,
    /// Cluster nodes ([`crate::client::cluster_node::mount_cluster`]):
    /// take locks from the lock server through a lock client with this
    /// configuration (the default); `None`: grant every lock locally
    /// (`LocalLocks`, as a single node does), which is only safe when no
    /// other node can mount the volume (tests). Single-node mounts ignore
    /// it.
    pub cluster_locks: Option<crate::cluster::lock_client::LockClientConfig>,
    /// `orphan_scan_delay_ms`: how often a cluster mount (one with
    /// `cluster_locks`) scans the orphans for inodes no mount has open
    /// any more (±20 % jitter, clamped to 100..=60 000); 0 = no scanner
    /// (tests call [`Mount::scan_orphans`]).
    pub orphan_scan_delay_ms: u64,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            mount: MountOptions::default(),
            tick_ns: TICK_NS,
            server: ServerConfig::default(),
            trans: LogTxnConfig::default(),
            merge_limits: MergeLimits::default(),
            merge_cache_budget_bytes: 24 << 20,
            merge_poll_ns: MERGE_POLL_NS,
            session: SessionConfig::default(),
            cluster_locks: Some(crate::cluster::lock_client::LockClientConfig::default()),
            orphan_scan_delay_ms: crate::posix::orphan::ORPHAN_SCAN_DELAY_MS,
        }
    }
}

/// An [`Entropy`] shared by the node's parts.
pub(crate) struct SharedEntropy(pub(crate) Rc<dyn Entropy>);

impl Entropy for SharedEntropy {
    fn next_u64(&self) -> u64 {
        self.0.next_u64()
    }
}

/// Cumulative figures of the merge worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeWorkerStats {
    pub requests: u64,
    pub errors: u64,
    pub items_merged: u64,
    pub blocks_written: u64,
}

pub(crate) struct MergeWorker {
    pub(crate) client: Rc<Client>,
    pub(crate) cache: RefCell<BlockCache>,
    pub(crate) limits: MergeLimits,
    pub(crate) stats: Cell<MergeWorkerStats>,
    pub(crate) busy: Cell<bool>,
}

impl MergeWorker {
    /// Ask for one piece of work and do it.
    async fn once(&self) -> FsResult<Worked> {
        if self.busy.replace(true) {
            return Ok(Worked::Nothing);
        }
        // not busy any more however this ends (also when dropped at an await)
        struct Idle<'a>(&'a Cell<bool>);
        impl Drop for Idle<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _idle = Idle(&self.busy);
        self.work_once().await
    }

    /// One request: ask, merge, complete.
    async fn work_once(&self) -> FsResult<Worked> {
        let Some(req) = self.client.get_log_merge().await? else {
            return Ok(Worked::Nothing);
        };
        let (comp, st): (_, MergeStats) =
            btree_merge::merge_request(&self.cache, &req, &self.limits).await;
        let mut s = self.stats.get();
        s.requests += 1;
        s.items_merged += st.items_merged;
        s.blocks_written += st.blocks_written;
        let failed = comp.flags & crate::format::log::MERGE_COMP_ERROR != 0;
        if failed {
            s.errors += 1;
        }
        self.stats.set(s);
        self.client.commit_log_merge(&comp).await?;
        // a failed request, or one that stopped where it began, gives its
        // range back and the server hands it out again: asking again at
        // once would spin (commit after commit) for as long as the cause
        // lasts
        let stalled = comp.flags & crate::format::log::MERGE_COMP_REMAIN != 0
            && comp.remain == req.start
            && st.items_merged == 0;
        Ok(if failed || stalled {
            counter!("node.merge_worker_backoffs").inc();
            Worked::Stalled
        } else {
            Worked::Progress
        })
    }
}

impl MergeWorker {
    /// One piece of merge work, if the server had any (admin, tests).
    /// Ok(false): there was none.
    pub(crate) async fn merge_once(&self) -> FsResult<bool> {
        Ok(self.once().await? != Worked::Nothing)
    }
}

/// The mount's persistent half over a connected client: its first log
/// transaction and its merge worker (single node and cluster node alike).
/// On failure the client is disconnected.
pub(crate) async fn open_client_half(
    client: &Rc<Client>,
    meta: &Rc<dyn BlockDev>,
    entropy: &Rc<dyn Entropy>,
    fsid: u64,
    opts: &NodeOptions,
) -> FsResult<(Rc<ClientLogTxn>, Rc<MergeWorker>)> {
    let trans = match ClientLogTxn::open(
        client.clone(),
        meta.clone(),
        Box::new(SharedEntropy(entropy.clone())),
        opts.trans,
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            client.disconnect();
            return Err(e);
        }
    };
    let merge = Rc::new(MergeWorker {
        client: client.clone(),
        cache: RefCell::new(BlockCache::new(
            Box::new(meta.clone()),
            Box::new(SharedEntropy(entropy.clone())),
            fsid,
            opts.merge_cache_budget_bytes,
        )),
        limits: opts.merge_limits,
        stats: Cell::new(MergeWorkerStats::default()),
        busy: Cell::new(false),
    });
    Ok((trans, merge))
}

/// `Mount::tick` in a task of its own, awaited: aborting the caller (an
/// unmount stops the background tasks) must not drop a commit half way
/// (published, its next transaction not yet opened: with coordinated
/// finalization GET_LOG_TREES may wait up to half a second). The
/// unmount's own commit waits for this one (the commit hold).
async fn tick_detached(handle: &Handle, m: Rc<Mount>) -> FsResult<()> {
    match handle.spawn_named("client.commit", async move { m.tick().await }) {
        Ok(t) => t.await,
        Err(_) => Err(Errno::ENOMEM),
    }
}

/// The commit ticker of a mount: every `period_ns` ask it whether a
/// commit is due; ends with the mount.
pub(crate) fn spawn_commit_ticker(
    mount: &Rc<Mount>,
    handle: &Handle,
    period_ns: u64,
) -> FsResult<JoinHandle<()>> {
    let weak = Rc::downgrade(mount);
    let h = handle.clone();
    handle
        .spawn_named("client.tick", async move {
            loop {
                h.sleep_ns(period_ns).await;
                let Some(m) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = tick_detached(&h, m).await {
                    counter!("node.tick_commit_errors").inc();
                    log::warn!("periodic commit failed: {e}");
                }
            }
        })
        .map_err(|_| Errno::ENOMEM)
}

/// The orphan scanner of a cluster mount: every `delay_ms` (±20 %, from
/// `entropy`, on the executor's clock) try to delete the orphans no
/// mount has open. Each scan runs as a task of its own, so stopping the
/// scanner never drops a deletion half way. Ends with the mount.
pub(crate) fn spawn_orphan_scanner(
    mount: &Rc<Mount>,
    handle: &Handle,
    entropy: Rc<dyn Entropy>,
    delay_ms: u64,
) -> FsResult<JoinHandle<()>> {
    let weak = Rc::downgrade(mount);
    let h = handle.clone();
    handle
        .spawn_named("client.orphan_scan", async move {
            loop {
                let pause = crate::posix::orphan::scan_pause_ns(delay_ms, entropy.next_u64());
                h.sleep_ns(pause).await;
                let Some(m) = weak.upgrade() else {
                    return;
                };
                let scan =
                    h.spawn_named(
                        "client.orphan_scan_once",
                        async move { m.scan_orphans().await },
                    );
                let r = match scan {
                    Ok(t) => t.await,
                    Err(_) => Err(Errno::ENOMEM),
                };
                if let Err(e) = r {
                    counter!("orphan.scan_errors").inc();
                    log::warn!("orphan scan failed: {e}");
                }
            }
        })
        .map_err(|_| Errno::ENOMEM)
}

/// The mount's answer to the server's SYNC_LOG_TREES: commit at once
/// (even with nothing dirty: the server finalizes the tree at the next
/// GET_LOG_TREES), not at the next tick, so a coordinated finalization
/// finds every mount within its wait. Ends with the mount.
pub(crate) fn spawn_sync_worker(
    mount: &Rc<Mount>,
    client: &Rc<Client>,
    handle: &Handle,
) -> FsResult<JoinHandle<()>> {
    let (weak, c) = (Rc::downgrade(mount), Rc::downgrade(client));
    let h = handle.clone();
    handle
        .spawn_named("client.sync", async move {
            loop {
                let Some(client) = c.upgrade() else {
                    return;
                };
                let asked = client.sync_notified();
                let pending = client.sync_pending();
                let closed = client.is_closed();
                drop(client);
                if closed {
                    return;
                }
                if pending {
                    let Some(m) = weak.upgrade() else {
                        return;
                    };
                    counter!("node.sync_commits").inc();
                    if let Err(e) = tick_detached(&h, m).await {
                        counter!("node.sync_commit_errors").inc();
                        log::warn!("commit asked by the server failed: {e}");
                        // the mount failed: the next ask would fail too
                        return;
                    }
                    continue;
                }
                asked.await;
            }
        })
        .map_err(|_| Errno::ENOMEM)
}

/// The background merge worker of a mount (single node and cluster node
/// alike): ask for work every `poll_ns`, at once again after progress, and
/// wait a poll after a stall; ends when the client is closed.
pub(crate) fn spawn_merge_worker(
    w: Rc<MergeWorker>,
    handle: &Handle,
    poll_ns: u64,
) -> FsResult<JoinHandle<()>> {
    let h = handle.clone();
    handle
        .spawn_named("client.merge", async move {
            loop {
                match w.once().await {
                    Ok(Worked::Progress) => continue,
                    Ok(Worked::Nothing | Worked::Stalled) => {}
                    Err(e) => {
                        counter!("node.merge_worker_errors").inc();
                        if w.client.is_closed() {
                            log::warn!("merge worker stops: {e}");
                            return;
                        }
                    }
                }
                h.sleep_ns(poll_ns).await;
            }
        })
        .map_err(|_| Errno::ENOMEM)
}

/// What one request of the merge worker came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Worked {
    /// No work was handed out.
    Nothing,
    /// Work was handed out but not done (an error, no progress).
    Stalled,
    /// Items were merged (more may follow at once).
    Progress,
}

/// A running node: the server and the mount's persistent half.
pub struct NodeHandle {
    leader: ServerRole,
    client: Rc<Client>,
    trans: Rc<ClientLogTxn>,
    merge: Rc<MergeWorker>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    /// Fails the client when the node's server stops (kept until the
    /// server is shut down, so a farewell cannot wait forever).
    server_watch: RefCell<Option<JoinHandle<()>>>,
    mount: RefCell<Option<Rc<Mount>>>,
    handle: Handle,
}

/// Mount a volume: start the server role on it, connect the mount's
/// client over the loopback transport, mount the POSIX layer over the
/// client's transactions, and start the commit ticker and the merge
/// worker. Unmount with [`NodeHandle::unmount`].
pub async fn mount_volume(
    meta: Rc<dyn BlockDev>,
    data: Rc<dyn BlockDev>,
    clock: Rc<dyn Clock>,
    entropy: Rc<dyn Entropy>,
    handle: Handle,
    opts: NodeOptions,
) -> FsResult<(Rc<Mount>, NodeHandle)> {
    let net: Rc<dyn Transport> = Rc::new(MemNet::new());
    mount_volume_on(net, LOOPBACK_ADDR, meta, data, clock, entropy, handle, opts).await
}

/// [`mount_volume`] with the server listening at `addr` on `transport`
/// (the simulator's network) instead of a private in-memory loopback.
#[allow(clippy::too_many_arguments)]
pub async fn mount_volume_on(
    transport: Rc<dyn Transport>,
    addr: &str,
    meta: Rc<dyn BlockDev>,
    data: Rc<dyn BlockDev>,
    clock: Rc<dyn Clock>,
    entropy: Rc<dyn Entropy>,
    handle: Handle,
    opts: NodeOptions,
) -> FsResult<(Rc<Mount>, NodeHandle)> {
    let node = start_node_on(
        transport,
        addr,
        meta,
        data.clone(),
        entropy,
        handle.clone(),
        opts,
    )
    .await?;
    let backend: Rc<dyn crate::posix::backend::Backend> = node.trans.clone();
    let mount = match Mount::mount(backend, data, clock, opts.mount).await {
        Ok(m) => Rc::new(m),
        Err(e) => {
            node.abandon().await;
            return Err(e);
        }
    };
    *node.mount.borrow_mut() = Some(mount.clone());
    if opts.tick_ns > 0 {
        let t = spawn_commit_ticker(&mount, &handle, opts.tick_ns)?;
        node.tasks.borrow_mut().push(t);
    }
    let t = spawn_sync_worker(&mount, &node.client, &handle)?;
    node.tasks.borrow_mut().push(t);
    Ok((mount, node))
}

/// Start the server on the volume, connect a client to it over the
/// loopback transport and open the mount's first transaction.
pub async fn start_node(
    meta: Rc<dyn BlockDev>,
    data: Rc<dyn BlockDev>,
    entropy: Rc<dyn Entropy>,
    handle: Handle,
    opts: NodeOptions,
) -> FsResult<NodeHandle> {
    let net: Rc<dyn Transport> = Rc::new(MemNet::new());
    start_node_on(net, LOOPBACK_ADDR, meta, data, entropy, handle, opts).await
}

/// [`start_node`] with the server listening at `addr` on `transport`.
/// The mount's client is an ordinary client of that server: a session to
/// the fixed address `addr` (the quorum names the leader later).
pub async fn start_node_on(
    net: Rc<dyn Transport>,
    addr: &str,
    meta: Rc<dyn BlockDev>,
    data: Rc<dyn BlockDev>,
    entropy: Rc<dyn Entropy>,
    handle: Handle,
    opts: NodeOptions,
) -> FsResult<NodeHandle> {
    let leader = ServerRole::open(
        meta.clone(),
        data,
        Box::new(SharedEntropy(entropy.clone())),
        opts.server,
        handle.clone(),
    )?;
    leader.start(&*net, addr).await?;
    let sb = leader.stable_super();
    let rid = loop {
        let r = entropy.next_u64();
        if r != 0 && r != u64::MAX {
            break r;
        }
    };
    let id = ClientIdentity {
        fsid: sb.hdr.fsid,
        fmt_vers: sb.fmt_vers,
        rid,
        flags: 0,
    };
    let client = match Client::connect_via(
        net,
        Rc::new(StaticLeader::new(addr)),
        id,
        opts.session,
        &handle,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            leader.shutdown().await;
            return Err(e);
        }
    };
    // the node's own server is the only one: when it stops, calls fail
    // (EIO) instead of waiting for a server that never comes
    let watch = {
        let (l, c) = (leader.clone(), Rc::downgrade(&client));
        handle
            .spawn_named("node.server_watch", async move {
                l.stopped().await;
                if let Some(c) = c.upgrade() {
                    c.session().close_with(Errno::EIO);
                }
            })
            .map_err(|_| Errno::ENOMEM)?
    };
    let (trans, merge) = match open_client_half(&client, &meta, &entropy, sb.hdr.fsid, &opts).await
    {
        Ok(parts) => parts,
        Err(e) => {
            leader.shutdown().await;
            return Err(e);
        }
    };
    let node = NodeHandle {
        leader,
        client,
        trans,
        merge,
        tasks: RefCell::new(Vec::new()),
        server_watch: RefCell::new(Some(watch)),
        mount: RefCell::new(None),
        handle: handle.clone(),
    };
    if opts.merge_poll_ns > 0 {
        let t = spawn_merge_worker(node.merge.clone(), &handle, opts.merge_poll_ns)?;
        node.tasks.borrow_mut().push(t);
    }
    Ok(node)
}

impl NodeHandle {
    /// The mount's persistent half (what the POSIX layer's backend wraps).
    pub fn trans(&self) -> &Rc<ClientLogTxn> {
        &self.trans
    }

    pub fn leader(&self) -> &ServerRole {
        &self.leader
    }

    pub fn client(&self) -> &Rc<Client> {
        &self.client
    }

    /// Ask the server for a piece of log merge work and do it (what the
    /// background worker does every poll). Ok(false): there was none.
    pub async fn merge_once(&self) -> FsResult<bool> {
        self.merge.merge_once().await
    }

    /// Finalize the mount's tree at its next transaction and merge
    /// everything finalized (admin, tests).
    pub fn request_merge(&self) {
        self.leader.request_merge();
    }

    /// Start a log merge now: the mount commits (even with nothing dirty)
    /// and its tree is finalized; merge work follows (the worker, or
    /// [`Self::merge_once`]).
    pub async fn start_merge(&self) -> FsResult<()> {
        self.leader.request_merge();
        self.client.request_sync();
        let mount = self.mount.borrow().clone();
        match mount {
            Some(m) => m.tick().await,
            None => Ok(()),
        }
    }

    pub fn merge_stats(&self) -> MergeWorkerStats {
        self.merge.stats.get()
    }

    fn stop_tasks(&self) {
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
    }

    /// The executor handle the node's tasks run on.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Unmount: commit what the mount holds, then [`Self::shutdown`]. The
    /// mount fails every later operation with EIO.
    pub async fn unmount(self) -> FsResult<()> {
        self.stop_tasks();
        let mount = self.mount.borrow_mut().take();
        if let Some(m) = mount {
            if let Err(e) = m.sync().await {
                log::warn!("unmount: final commit failed: {e}");
                self.abandon().await;
                return Err(e);
            }
        }
        self.shutdown().await
    }

    /// Leave cleanly: the caller committed its last transaction; say
    /// farewell (the server finalizes the mount's tree and forgets the
    /// mount) and stop the server. The volume is at rest afterwards.
    pub async fn shutdown(self) -> FsResult<()> {
        self.stop_tasks();
        let r = self.client.farewell().await;
        self.trans.close();
        self.client.disconnect();
        self.leader.shutdown().await;
        self.stop_server_watch();
        r
    }

    /// Stop without committing or saying farewell (what a crash leaves,
    /// minus lost device writes): the next mount recovers.
    pub async fn abandon(self) {
        self.stop_tasks();
        self.trans.discard();
        self.trans.close();
        self.client.disconnect();
        self.leader.shutdown().await;
        self.stop_server_watch();
    }

    fn stop_server_watch(&self) {
        if let Some(t) = self.server_watch.borrow_mut().take() {
            t.abort();
        }
    }
}
