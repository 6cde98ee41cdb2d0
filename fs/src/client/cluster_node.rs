//! One node of a cluster: the quorum agent of the node's slot (if it holds
//! one) starts the server role when this node is elected and stops it when
//! it must, and the mount's client reaches whichever node leads through a
//! session whose leader address comes from the quorum blocks. The leader
//! mounts through its own server like every other node.
//!
//! Safety: the server role (the only writer of the shared metadata besides
//! each slot's quorum block and each mount's own log trees) runs only
//! between the agent's `start_server(term)` (elected by a majority, every
//! predecessor fenced) and `stop_server`. A node that cannot reach a
//! majority is never elected, so it never writes; its mount just waits.
//!
//! A single-slot volume (what a lone appliance uses) takes the same path
//! with [`SoloDatagrams`] and [`OwnSlotFence`]: the only predecessor it can
//! find is an earlier life of its own slot, which it acks itself (see
//! [`OwnSlotFence`] for why that is safe enough until host fencing).

use crate::client::log_txn::ClientLogTxn;
use crate::client::node::{
    open_client_half, spawn_commit_ticker, spawn_merge_worker, spawn_orphan_scanner,
    spawn_sync_worker, MergeWorker, MergeWorkerStats, NodeOptions, SharedEntropy,
};
use crate::client::requests::{Client, ClientIdentity};
use crate::cluster::fence::{FenceAgent, FenceError, FenceRequest};
use crate::cluster::lock::LockProvider;
use crate::cluster::lock_client::{LockClient, SessionRequester};
use crate::cluster::msg::{OmapBits, OMAP_WORDS};
use crate::cluster::quorum_agent::{AgentConfig, QuorumAgent, QuorumStatus, ServerControl};
use crate::cluster::quorum_blocks::find_leader;
use crate::cluster::session::LeaderAddr;
use crate::cluster::transport::{Datagrams, LocalFut, NetError, Transport};
use crate::counter;
use crate::errno::{Errno, FsResult};
use crate::format::super_block::SuperBlock;
use crate::posix::backend::BoxFut;
use crate::posix::mount::Mount;
use crate::posix::orphan::OthersOpen;
use crate::runtime::env::{Clock, Entropy};
use crate::runtime::exec::{Handle, JoinHandle};
use crate::server::role::{ServerConfig, ServerRole};
use crate::storage::block::read_super_from;
use crate::storage::dev::BlockDev;
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

/// The quorum slot this node holds.
pub struct ClusterSlot {
    pub slot: u8,
    /// Bound at the slot's address (the super block's quorum config).
    pub sock: Rc<dyn Datagrams>,
    pub hb_timeout_ns: u64,
}

/// The leader's address as the quorum blocks say, read again at every
/// connect attempt of the session.
struct QuorumLeader {
    meta: Rc<dyn BlockDev>,
    sb: SuperBlock,
}

impl LeaderAddr for QuorumLeader {
    fn leader(&self) -> LocalFut<'_, Option<(u64, String)>> {
        let l = find_leader(&*self.meta, &self.sb);
        Box::pin(async move { l.map(|l| (l.term, l.addr)) })
    }
}

/// The datagram socket of a volume with one quorum slot: there is nobody
/// to send to and nothing ever arrives.
pub struct SoloDatagrams;

impl Datagrams for SoloDatagrams {
    fn send_to(&self, _to: &str, _data: &[u8]) -> Result<(), NetError> {
        Ok(())
    }
    fn recv_from(&self) -> LocalFut<'_, Result<(String, Vec<u8>), NetError>> {
        Box::pin(core::future::pending())
    }
}

/// Acks fences of an earlier life of our own slot and passes every other
/// request to `other`. Our agent wrote BEGIN with our rid in the slot
/// before any election, so a mount still running in that slot fails its
/// next quorum-block write (`NotOurs`) and stops its server: an earlier
/// life of the slot is dead or about to stop. The window until it notices
/// (at most one heartbeat) is what the host fence agent (issue 13) closes.
pub struct OwnSlotFence {
    own_addr: String,
    other: Rc<dyn FenceAgent>,
}

impl OwnSlotFence {
    pub fn new(own_addr: &str, other: Rc<dyn FenceAgent>) -> OwnSlotFence {
        OwnSlotFence {
            own_addr: own_addr.into(),
            other,
        }
    }
}

impl FenceAgent for OwnSlotFence {
    fn fence(&self, req: FenceRequest) -> LocalFut<'_, Result<(), FenceError>> {
        if req.addr == self.own_addr {
            counter!("cluster_node.own_slot_fences").inc();
            log::info!(
                "cluster: fencing rid {:016x}, an earlier life of our own slot: acked",
                req.rid
            );
            return Box::pin(async { Ok(()) });
        }
        self.other.fence(req)
    }
}

/// The server role of this node while it leads (the agent's
/// [`ServerControl`]).
struct ServerSlot {
    meta: Rc<dyn BlockDev>,
    data: Rc<dyn BlockDev>,
    entropy: Rc<dyn Entropy>,
    cfg: ServerConfig,
    handle: Handle,
    net: Rc<dyn Transport>,
    addr: String,
    /// Fences mounts that do not recover in a new life's window.
    fencer: Rc<dyn FenceAgent>,
    agent: RefCell<Option<QuorumAgent>>,
    role: RefCell<Option<ServerRole>>,
    /// Opens, starts, then watches the role for a failure of its own.
    task: RefCell<Option<JoinHandle<()>>>,
    starts: Cell<u64>,
}

impl ServerSlot {
    fn report_down(&self) {
        let a = self.agent.borrow().clone();
        if let Some(a) = a {
            a.server_down();
        }
    }

    async fn run(self: Rc<Self>, term: u64) {
        let mut cfg = self.cfg;
        cfg.term = term;
        let role = match ServerRole::open(
            self.meta.clone(),
            self.data.clone(),
            Box::new(SharedEntropy(self.entropy.clone())),
            cfg,
            self.handle.clone(),
        ) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("cluster: server of term {term} cannot open the volume: {e}");
                self.report_down();
                return;
            }
        };
        role.set_fence_agent(self.fencer.clone());
        if let Err(e) = role.start(&*self.net, &self.addr).await {
            log::warn!("cluster: server of term {term} failed to start: {e}");
            role.shutdown().await;
            self.report_down();
            return;
        }
        log::info!("cluster: leading term {term}, server at {}", self.addr);
        counter!("cluster_node.server_starts").inc();
        self.starts.set(self.starts.get() + 1);
        *self.role.borrow_mut() = Some(role.clone());
        let a = self.agent.borrow().clone();
        if let Some(a) = a {
            // the predecessors fenced for this start were mounts too (a
            // node's quorum rid is its mount's rid): reclaim them
            let fenced: Vec<u64> = a
                .status()
                .fences
                .iter()
                .filter(|(_, st)| st.as_str() == "Fenced")
                .map(|(rid, _)| *rid)
                .collect();
            for rid in fenced {
                if let Err(e) = role.reclaim_fenced(rid).await {
                    log::warn!("cluster: reclaiming fenced rid {rid:016x}: {e}");
                }
            }
            a.server_up();
        }
        role.stopped().await;
        // stopped on its own (a failed commit): the agent must know
        log::warn!("cluster: server of term {term} stopped");
        let r = self.role.borrow_mut().take();
        if let Some(r) = r {
            r.shutdown().await;
        }
        self.report_down();
    }

    async fn stop(&self) {
        if let Some(t) = self.task.borrow_mut().take() {
            t.abort();
        }
        let r = self.role.borrow_mut().take();
        if let Some(r) = r {
            r.shutdown().await;
            counter!("cluster_node.server_stops").inc();
        }
    }
}

/// The agent's view of [`ServerSlot`] (a weak link: the slot holds the
/// agent).
struct Control(alloc::rc::Weak<ServerSlot>);

impl ServerControl for Control {
    fn start_server(&self, term: u64) {
        let Some(s) = self.0.upgrade() else { return };
        let s2 = s.clone();
        match s.handle.spawn_named("cluster.server", s2.run(term)) {
            Ok(t) => {
                if let Some(old) = s.task.borrow_mut().replace(t) {
                    old.abort();
                }
            }
            Err(_) => s.report_down(),
        }
    }

    fn stop_server(&self) {
        let Some(s) = self.0.upgrade() else { return };
        let s2 = s.clone();
        let r = s.handle.spawn_named("cluster.server_stop", async move {
            s2.stop().await;
            s2.report_down();
        });
        if r.is_err() {
            // cannot wait for the shutdown: at least stop serving at once
            if let Some(t) = s.task.borrow_mut().take() {
                t.abort();
            }
            s.report_down();
        }
    }
}

/// A mounted cluster node.
pub struct ClusterNode {
    server: Rc<ServerSlot>,
    agent: Option<QuorumAgent>,
    client: Rc<Client>,
    trans: Rc<ClientLogTxn>,
    merge: Rc<MergeWorker>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    mount: RefCell<Option<Rc<Mount>>>,
    /// The mount's cluster locks (`NodeOptions::cluster_locks`).
    locks: Option<Rc<LockClient>>,
    handle: Handle,
}

/// How long an unmount waits for a leader to take its last commit and
/// farewell; past it the node leaves as if it crashed (the next leader
/// reclaims the mount), so a power off never hangs on a lost quorum.
pub const UNMOUNT_TIMEOUT_NS: u64 = 20_000_000_000;

fn store_errno(e: crate::storage::store_error::StoreError) -> Errno {
    log::warn!("cluster: {e}");
    e.errno()
}

/// Memory pressure: when the item cache had to evict since the last look,
/// a quarter of the idle locks goes back to the server (their cached items
/// go with them, and a lock nobody uses is a grant others may want).
pub(crate) fn spawn_lock_shrinker(
    lc: &Rc<LockClient>,
    mount: &Rc<Mount>,
    handle: &Handle,
    period_ns: u64,
) -> FsResult<JoinHandle<()>> {
    let (lc, m) = (Rc::downgrade(lc), Rc::downgrade(mount));
    let h = handle.clone();
    handle
        .spawn_named("lock_client.shrink", async move {
            let mut evictions = 0;
            loop {
                h.sleep_ns(period_ns).await;
                let (Some(lc), Some(m)) = (lc.upgrade(), m.upgrade()) else {
                    return;
                };
                let now = m.counters().items.eviction_runs;
                if now == evictions {
                    continue;
                }
                evictions = now;
                drop(m);
                let idle = lc.held().iter().filter(|(_, _, users)| *users == 0).count();
                if idle > 0 {
                    counter!("lock_client.shrinks").inc();
                    if let Err(e) = lc.shrink(idle.div_ceil(4)).await {
                        log::warn!("lock client: giving back idle locks: {e}");
                    }
                }
            }
        })
        .map_err(|_| Errno::ENOMEM)
}

/// Join the cluster on `meta`/`data`: pick a rid, start the quorum agent of
/// `slot` (its server listens at the slot's address on `net` while this
/// node leads), connect the mount's client to whichever node leads (waits
/// until there is one: a node without quorum waits, it never writes), and
/// mount. `fencer` fences predecessors for this node when it is elected.
#[allow(clippy::too_many_arguments)]
pub async fn mount_cluster(
    meta: Rc<dyn BlockDev>,
    data: Rc<dyn BlockDev>,
    net: Rc<dyn Transport>,
    slot: Option<ClusterSlot>,
    fencer: Rc<dyn FenceAgent>,
    clock: Rc<dyn Clock>,
    entropy: Rc<dyn Entropy>,
    handle: Handle,
    opts: NodeOptions,
) -> FsResult<(Rc<Mount>, ClusterNode)> {
    let sb = read_super_from(&*meta).map_err(store_errno)?;
    let rid = loop {
        let r = entropy.next_u64();
        if r != 0 && r != u64::MAX {
            break r;
        }
    };
    let slots = sb.qconf.configured().count();
    let mut scfg = opts.server;
    // one slot: every listed mount died with the previous life (the single
    // node case); several: live nodes reconnect to the new server, whose
    // session reconnect window keeps them (full recovery: issue 13)
    scfg.reclaim_mounted_at_start = slots <= 1;
    let addr = match &slot {
        Some(s) => match sb.qconf.configured().find(|(i, _)| *i == s.slot as usize) {
            Some((_, a)) => format!("{a}"),
            None => {
                log::warn!(
                    "cluster: quorum slot {} is not configured on this volume",
                    s.slot
                );
                return Err(Errno::EINVAL);
            }
        },
        None => String::new(),
    };
    let server = Rc::new(ServerSlot {
        meta: meta.clone(),
        data: data.clone(),
        entropy: entropy.clone(),
        cfg: scfg,
        handle: handle.clone(),
        net: net.clone(),
        addr,
        fencer: fencer.clone(),
        agent: RefCell::new(None),
        role: RefCell::new(None),
        task: RefCell::new(None),
        starts: Cell::new(0),
    });
    let agent = match slot {
        Some(s) => {
            let control: Rc<dyn ServerControl> = Rc::new(Control(Rc::downgrade(&server)));
            let a = QuorumAgent::start(
                AgentConfig {
                    slot: s.slot,
                    rid,
                    hb_timeout_ns: s.hb_timeout_ns,
                },
                &sb,
                meta.clone(),
                s.sock,
                handle.clone(),
                clock.clone(),
                entropy.clone(),
                control,
                fencer,
            )
            .map_err(|e| {
                log::warn!("cluster: quorum agent: {e}");
                Errno::EIO
            })?;
            *server.agent.borrow_mut() = Some(a.clone());
            Some(a)
        }
        None => None,
    };
    let node = match connect(&meta, &sb, rid, &net, &entropy, &handle, &opts).await {
        Ok((client, trans, merge)) => {
            let locks = opts
                .cluster_locks
                .map(|cfg| start_lock_client(&client, &trans, &handle, cfg));
            ClusterNode {
                server,
                agent,
                client,
                trans,
                merge,
                tasks: RefCell::new(Vec::new()),
                mount: RefCell::new(None),
                locks,
                handle: handle.clone(),
            }
        }
        Err(e) => {
            if let Some(a) = &agent {
                a.shutdown().await;
            }
            server.stop().await;
            server.agent.borrow_mut().take();
            return Err(e);
        }
    };
    let backend: Rc<dyn crate::posix::backend::Backend> = node.trans.clone();
    let mounted = match &node.locks {
        Some(lc) => {
            let provider: Rc<dyn LockProvider> = lc.clone();
            let omap = client_omap(&node.client);
            Mount::mount_on_cluster(backend, data, clock, opts.mount, provider, omap).await
        }
        None => Mount::mount(backend, data, clock, opts.mount).await,
    };
    let mount = match mounted {
        Ok(m) => Rc::new(m),
        Err(e) => {
            if let Some(lc) = &node.locks {
                // nothing of the mount is left to commit or drop
                lc.hooks_ready();
            }
            node.abandon().await;
            return Err(e);
        }
    };
    if let Some(lc) = &node.locks {
        set_mount_hooks(lc, &mount);
        set_omap_handler(&node.client, &mount);
    }
    *node.mount.borrow_mut() = Some(mount.clone());
    node.start_tasks(&mount, &handle, &entropy, &opts)?;
    Ok((mount, node))
}

type Parts = (Rc<Client>, Rc<ClientLogTxn>, Rc<MergeWorker>);

/// The mount's lock client over its session: it answers the server's
/// invalidations, and its new readable grants make the forest roots stale.
pub(crate) fn start_lock_client(
    client: &Rc<Client>,
    trans: &Rc<ClientLogTxn>,
    handle: &Handle,
    cfg: crate::cluster::lock_client::LockClientConfig,
) -> Rc<LockClient> {
    let lc = LockClient::new(
        Rc::new(SessionRequester(client.session().clone())),
        handle.clone(),
        cfg,
    );
    // weak links: the mount holds the lock client, the client the handler
    let weak = Rc::downgrade(&lc);
    client.set_lock_handler(Rc::new(move |nl| {
        let lc = weak.upgrade();
        Box::pin(async move {
            match lc {
                Some(lc) => lc.invalidate(nl).await,
                None => Err(Errno::ENOLINK),
            }
        })
    }));
    let weak = Rc::downgrade(&lc);
    client.set_lock_recover_handler(Rc::new(move |start| {
        weak.upgrade()
            .map(|lc| lc.recover_report(start))
            .unwrap_or_default()
    }));
    let t = Rc::downgrade(trans);
    lc.set_roots_stale_hook(Rc::new(move || {
        if let Some(t) = t.upgrade() {
            t.mark_roots_stale();
        }
    }));
    lc
}

/// Invalidations commit the mount's transaction and drop its cached items.
pub(crate) fn set_mount_hooks(lc: &LockClient, mount: &Rc<Mount>) {
    let m = Rc::downgrade(mount);
    lc.set_commit_hook(Rc::new(move || {
        let m = m.upgrade();
        Box::pin(async move {
            match m {
                Some(m) => m.sync().await,
                // unmounted: its last commit is done or abandoned
                None => Ok(()),
            }
        })
    }));
    let m = Rc::downgrade(mount);
    lc.set_drop_hook(Rc::new(move |r| {
        m.upgrade().map_or(0, |m| m.drop_cached_range(r))
    }));
    lc.hooks_ready();
}

/// The mount's way to the other mounts' open maps: the server, through
/// its client (weak: the client outlives no unmount).
struct ClientOmap(alloc::rc::Weak<Client>);

impl OthersOpen for ClientOmap {
    fn others_open<'a>(&'a self, group_nr: u64) -> BoxFut<'a, FsResult<OmapBits>> {
        let c = self.0.upgrade();
        Box::pin(async move {
            match c {
                Some(c) => c.open_ino_map(group_nr).await,
                None => Err(Errno::ENOLINK),
            }
        })
    }
}

/// The other mounts' open maps, asked of the server through `client`.
pub(crate) fn client_omap(client: &Rc<Client>) -> Rc<dyn OthersOpen> {
    Rc::new(ClientOmap(Rc::downgrade(client)))
}

/// The server's OPEN_INO_MAP questions are answered from the mount's open
/// counts (weak: the client does not keep the mount).
pub(crate) fn set_omap_handler(client: &Client, mount: &Rc<Mount>) {
    let m = Rc::downgrade(mount);
    client.set_omap_handler(Rc::new(move |group_nr| {
        m.upgrade()
            .map(|m| m.open_map(group_nr))
            .unwrap_or([0; OMAP_WORDS])
    }));
}

async fn connect(
    meta: &Rc<dyn BlockDev>,
    sb: &SuperBlock,
    rid: u64,
    net: &Rc<dyn Transport>,
    entropy: &Rc<dyn Entropy>,
    handle: &Handle,
    opts: &NodeOptions,
) -> FsResult<Parts> {
    let id = ClientIdentity {
        fsid: sb.hdr.fsid,
        fmt_vers: sb.fmt_vers,
        rid,
        flags: 0,
    };
    let leader = Rc::new(QuorumLeader {
        meta: meta.clone(),
        sb: *sb,
    });
    let client = Client::connect_via(net.clone(), leader, id, opts.session, handle).await?;
    let (trans, merge) = open_client_half(&client, meta, entropy, sb.hdr.fsid, opts).await?;
    Ok((client, trans, merge))
}

impl ClusterNode {
    fn start_tasks(
        &self,
        mount: &Rc<Mount>,
        handle: &Handle,
        entropy: &Rc<dyn Entropy>,
        opts: &NodeOptions,
    ) -> FsResult<()> {
        let t = spawn_mount_tasks(
            mount,
            &self.client,
            &self.merge,
            self.locks.as_ref(),
            handle,
            entropy,
            opts,
        )?;
        self.tasks.borrow_mut().extend(t);
        Ok(())
    }

    /// The mount's lock client, when it takes cluster locks.
    pub fn lock_client(&self) -> Option<&Rc<LockClient>> {
        self.locks.as_ref()
    }

    pub fn client(&self) -> &Rc<Client> {
        &self.client
    }

    pub fn trans(&self) -> &Rc<ClientLogTxn> {
        &self.trans
    }

    /// The quorum agent, if this node holds a slot.
    pub fn agent(&self) -> Option<&QuorumAgent> {
        self.agent.as_ref()
    }

    pub fn quorum_status(&self) -> Option<QuorumStatus> {
        self.agent.as_ref().map(|a| a.status())
    }

    /// The server role while this node leads.
    pub fn server(&self) -> Option<ServerRole> {
        self.server.role.borrow().clone()
    }

    /// How many server lives this node started.
    pub fn server_starts(&self) -> u64 {
        self.server.starts.get()
    }

    pub fn merge_stats(&self) -> MergeWorkerStats {
        self.merge.stats.get()
    }

    /// Ask the leader for a piece of merge work and do it.
    pub async fn merge_once(&self) -> FsResult<bool> {
        self.merge.merge_once().await
    }

    fn stop_tasks(&self) {
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
    }

    /// Unmount: commit, say farewell to the leader, then leave the quorum
    /// (stopping our server if we lead: the others elect a new leader).
    /// Bounded by [`UNMOUNT_TIMEOUT_NS`] without a leader.
    pub async fn unmount(self) -> FsResult<()> {
        self.stop_tasks();
        let mount = self.mount.borrow_mut().take();
        let last = async {
            if let Some(m) = mount {
                if let Err(e) = m.sync().await {
                    log::warn!("unmount: final commit failed: {e}");
                    return Err(e);
                }
            }
            self.client.farewell().await
        };
        let r = match self.handle.timeout_ns(UNMOUNT_TIMEOUT_NS, last).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.abandon().await;
                return Err(e);
            }
            Err(_) => {
                log::warn!("unmount: no leader took the last commit; leaving without it");
                self.abandon().await;
                return Err(Errno::ETIMEDOUT);
            }
        };
        self.trans.close();
        self.client.disconnect();
        self.leave().await;
        r
    }

    async fn leave(&self) {
        if let Some(a) = &self.agent {
            a.shutdown().await;
        }
        self.server.stop().await;
        self.server.agent.borrow_mut().take();
    }

    /// Stop without committing or saying farewell (a crash, minus lost
    /// device writes): the quorum blocks keep our election, so the next
    /// leader fences this life.
    pub async fn abandon(self) {
        self.stop_tasks();
        self.trans.discard();
        self.trans.close();
        self.client.disconnect();
        if let Some(a) = &self.agent {
            a.abandon();
        }
        self.server.stop().await;
        self.server.agent.borrow_mut().take();
    }
}

/// A mount that is only a client of a server at a fixed address (no
/// quorum, no server of its own): what the tests and benches of several
/// mounts of one in-process server use. Composed as [`mount_cluster`]
/// composes a node's mount.
pub struct ClientMount {
    client: Rc<Client>,
    trans: Rc<ClientLogTxn>,
    merge: Rc<MergeWorker>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    mount: Rc<Mount>,
    locks: Option<Rc<LockClient>>,
}

/// Mount the volume as a client of the server listening at `addr` on
/// `net`, as mount `rid`, with the commit ticker, the merge worker, the
/// answer to SYNC_LOG_TREES and (with `opts.cluster_locks`) a lock client.
#[allow(clippy::too_many_arguments)]
pub async fn mount_client(
    net: Rc<dyn Transport>,
    addr: &str,
    rid: u64,
    meta: Rc<dyn BlockDev>,
    data: Rc<dyn BlockDev>,
    clock: Rc<dyn Clock>,
    entropy: Rc<dyn Entropy>,
    handle: Handle,
    opts: NodeOptions,
) -> FsResult<(Rc<Mount>, ClientMount)> {
    let sb = read_super_from(&*meta).map_err(store_errno)?;
    let id = ClientIdentity {
        fsid: sb.hdr.fsid,
        fmt_vers: sb.fmt_vers,
        rid,
        flags: 0,
    };
    let leader = Rc::new(crate::cluster::session::StaticLeader::new(addr));
    let client = Client::connect_via(net, leader, id, opts.session, &handle).await?;
    let (trans, merge) = open_client_half(&client, &meta, &entropy, sb.hdr.fsid, &opts).await?;
    let locks = opts
        .cluster_locks
        .map(|cfg| start_lock_client(&client, &trans, &handle, cfg));
    let backend: Rc<dyn crate::posix::backend::Backend> = trans.clone();
    let mounted = match &locks {
        Some(lc) => {
            let provider: Rc<dyn LockProvider> = lc.clone();
            let omap = client_omap(&client);
            Mount::mount_on_cluster(backend, data, clock, opts.mount, provider, omap).await
        }
        None => Mount::mount(backend, data, clock, opts.mount).await,
    };
    let mount = match mounted {
        Ok(m) => Rc::new(m),
        Err(e) => {
            if let Some(lc) = &locks {
                lc.hooks_ready();
            }
            trans.discard();
            trans.close();
            client.disconnect();
            return Err(e);
        }
    };
    if let Some(lc) = &locks {
        set_mount_hooks(lc, &mount);
        set_omap_handler(&client, &mount);
    }
    let cm = ClientMount {
        client,
        trans,
        merge,
        tasks: RefCell::new(Vec::new()),
        mount: mount.clone(),
        locks,
    };
    let tasks = spawn_mount_tasks(
        &mount,
        &cm.client,
        &cm.merge,
        cm.locks.as_ref(),
        &handle,
        &entropy,
        &opts,
    )?;
    *cm.tasks.borrow_mut() = tasks;
    Ok((mount, cm))
}

/// The background tasks of a mount on a cluster: the commit ticker and
/// the idle-lock shrinker (when ticking), the merge worker (when polling),
/// the orphan scanner (with cluster locks) and the answer to the server's
/// SYNC_LOG_TREES.
fn spawn_mount_tasks(
    mount: &Rc<Mount>,
    client: &Rc<Client>,
    merge: &Rc<MergeWorker>,
    locks: Option<&Rc<LockClient>>,
    handle: &Handle,
    entropy: &Rc<dyn Entropy>,
    opts: &NodeOptions,
) -> FsResult<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    if locks.is_some() && opts.orphan_scan_delay_ms > 0 {
        tasks.push(spawn_orphan_scanner(
            mount,
            handle,
            entropy.clone(),
            opts.orphan_scan_delay_ms,
        )?);
    }
    if opts.tick_ns > 0 {
        tasks.push(spawn_commit_ticker(mount, handle, opts.tick_ns)?);
        if let Some(lc) = locks {
            tasks.push(spawn_lock_shrinker(lc, mount, handle, opts.tick_ns)?);
        }
    }
    if opts.merge_poll_ns > 0 {
        tasks.push(spawn_merge_worker(
            merge.clone(),
            handle,
            opts.merge_poll_ns,
        )?);
    }
    tasks.push(spawn_sync_worker(mount, client, handle)?);
    Ok(tasks)
}

impl ClientMount {
    pub fn client(&self) -> &Rc<Client> {
        &self.client
    }

    pub fn trans(&self) -> &Rc<ClientLogTxn> {
        &self.trans
    }

    pub fn merge_stats(&self) -> MergeWorkerStats {
        self.merge.stats.get()
    }

    /// One piece of log merge work, if the server had any.
    pub async fn merge_once(&self) -> FsResult<bool> {
        self.merge.merge_once().await
    }

    fn stop_tasks(&self) {
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
    }

    /// Commit, say farewell, close.
    pub async fn unmount(self) -> FsResult<()> {
        self.stop_tasks();
        self.mount.sync().await?;
        let r = self.client.farewell().await;
        self.trans.close();
        self.client.disconnect();
        r
    }

    /// Stop without committing or saying farewell (a crash).
    pub fn abandon(self) {
        self.stop_tasks();
        self.trans.discard();
        self.trans.close();
        self.client.disconnect();
    }
}
