//! The cluster workload: one volume shared by a server node and three
//! mounts, each mount a client node of the server role over its session
//! on the simulated network (the composition of `mount_cluster`: a
//! `posix::Mount` over a `ClientLogTxn` over a `Client` session; the
//! server node has no mount of its own). One harness task drives the
//! mounts with the random operations of the [`Engine`], each step on a
//! mount drawn from the seed, against ONE model of the filesystem. The
//! mounts' commit tickers and merge workers run in the background as in
//! production.
//!
//! - [`Mode::Disjoint`]: each mount keeps to its own directory (made by
//!   the first mount, then committed before the others mount) with
//!   `LocalLocks`: many writers of one volume, their log trees merged.
//!   No mount reads another's directory while running (nothing keeps
//!   their caches coherent); after the run a fresh mount must see the
//!   whole model.
//!
//! Checkers (every one returns a [`Failure`], none panics): every result
//! and errno against the model as the operation returns; fsck of the
//! durable disks after every step in which the server committed; the
//! lock-exclusion checker ([`exclusion`]) over what every mount holds and
//! what the server granted, after every step and every 2 ms of virtual
//! time (shared mode); at the end every mount
//! synced and unmounted, fsck, then a fresh mount walks the volume
//! against the model, drains the log merge (liveness), walks again and
//! unmounts; fsck.

use super::{model, Engine, Failure, Inject, Mark, Stop, XNAMES};
use crate::client::cluster_node::{
    client_omap, set_mount_hooks, set_omap_handler, spawn_lock_shrinker, start_lock_client,
};
use crate::client::log_txn::ClientLogTxn;
use crate::client::node::{
    open_client_half, spawn_commit_ticker, spawn_merge_worker, spawn_orphan_scanner,
    spawn_sync_worker, MergeWorker, NodeOptions,
};
use crate::client::requests::{Client, ClientIdentity};
use crate::cluster::lock::{compatible, LocalLocks, LockMode, LockProvider, LockRange};
use crate::cluster::lock_client::LockClient;
use crate::cluster::session::StaticLeader;
use crate::cluster::transport::LocalFut;
use crate::errno::FsResult;
use crate::format::ROOT_INO;
use crate::posix::mount::Mount;
use crate::posix::types::{Cred, O_RDWR, RENAME_NOREPLACE, S_IFDIR, S_IFREG};
use crate::runtime::exec::JoinHandle;
use crate::runtime::node::NodeId;
use crate::server::role::{ServerConfig, ServerRole};
use crate::sim::fault::{Fault, Loss};
use crate::sim::fsnode::{mkfs_params, FsNode, Volume};
use crate::sim::workload::failover::{
    check_recovery_events, Fences, RecoveryTally, SimFenceAgent, WatchedDev, KEPT_EVENTS,
};
use crate::sim::workload::session::{partition, sim_session_config};
use crate::sim::world::{Software, World};
use crate::storage::dev::BlockDev;
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;
use core::cell::{Cell, RefCell};

/// The server's node.
pub const SERVER: NodeId = 0;
/// Mounts of a run (nodes 1..=MOUNTS).
pub const MOUNTS: u8 = 3;

/// Most log trees (open and finalized) the volume may hold after any
/// step: a tree per mount (and one of a crashed mount until it is
/// reclaimed), the inputs of the merge in flight (at most a tree per
/// mount per finalization round it waited for: rounds the
/// 500 ms wait gave up on), trees finalized while it runs.
pub const MAX_LOG_TREES: usize = 6 * MOUNTS as usize;

/// Knobs of the cluster workload (issue 12's acceptance).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Knobs {
    /// Ask the server for a log merge this often (virtual ns): the next
    /// GET_LOG_TREES finalizes every mount's tree; 0: only when trees
    /// grow (`--merge-every-ms`).
    pub merge_every_ns: u64,
    /// About 2 % of steps crash a mount (after a sync, so the model loses
    /// nothing), reclaim it as a fenced mount on the server, and mount
    /// again on the node as a new rid (`--mount-crashes`).
    pub mount_crashes: bool,
}

/// How the mounts share the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each mount in its own directory, local locks.
    Disjoint,
    /// One directory tree for all, the cluster locks keeping the mounts
    /// coherent: after an operation on one mount another reads back what
    /// it named ([`probe`]); now and then two mounts race the same create
    /// or RENAME_NOREPLACE ([`race`]); walks of the whole tree on any
    /// mount.
    Shared,
    /// [`Mode::Shared`] while the server node crashes now and then and
    /// comes back as a new life, which recovers the mounts' locks
    /// (LOCK_RECOVER) in its window: operations only pause; after every
    /// new life, recovery must end (every mount greeted and reported its
    /// locks) within the window, nothing may be fenced, and every other
    /// checker holds throughout.
    Failover,
}

impl Mode {
    /// Do the mounts share one tree under the cluster locks?
    pub fn shared(self) -> bool {
        self != Mode::Disjoint
    }
}

/// Virtual time a failover run gives a new server life to finish its
/// recovery (its window plus reconnect backoff), before it fails.
const RECOVERY_LIMIT_NS: u64 = 40_000_000_000;

/// One mount of the shared volume on a client node (installed as the
/// node's software: a crash tears it down).
pub struct ClusterMount {
    pub node: NodeId,
    pub rid: u64,
    pub mount: Rc<Mount>,
    client: Rc<Client>,
    trans: Rc<ClientLogTxn>,
    merge: Rc<MergeWorker>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    /// The cluster lock client (shared mode; local locks hold nothing
    /// another mount could see).
    locks: Option<Rc<LockClient>>,
}

impl ClusterMount {
    /// What the mount's lock client holds: (range, mode).
    pub fn held(&self) -> Vec<(LockRange, LockMode)> {
        self.locks.as_ref().map_or_else(Vec::new, |l| {
            l.held().into_iter().map(|(r, m, _)| (r, m)).collect()
        })
    }

    fn stop_tasks(&self) {
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
    }

    /// Commit, farewell, close.
    async fn unmount(self: Rc<Self>) -> FsResult<()> {
        self.stop_tasks();
        self.mount.sync().await?;
        self.client.farewell().await?;
        self.trans.close();
        self.client.disconnect();
        Ok(())
    }

    async fn merge_once(self: Rc<Self>) -> FsResult<bool> {
        self.merge.merge_once().await
    }
}

impl Software for ClusterMount {
    fn teardown(&self) -> LocalFut<'static, ()> {
        self.stop_tasks();
        self.trans.discard();
        self.trans.close();
        self.client.disconnect();
        Box::pin(async {})
    }

    fn into_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }
}

/// The server of the run (node 0): the role of its current life (a
/// failover run crashes the node and starts a new life).
pub struct ServerNode {
    role: RefCell<ServerRole>,
}

impl ServerNode {
    pub fn role(&self) -> ServerRole {
        self.role.borrow().clone()
    }
}

/// One life of the server node, installed as its software (a crash
/// tears it down).
struct ServerLife {
    role: ServerRole,
}

impl Software for ServerLife {
    fn teardown(&self) -> LocalFut<'static, ()> {
        let role = self.role.clone();
        Box::pin(async move { role.shutdown().await })
    }

    fn into_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }
}

/// The lock-exclusion rule over everything held at one instant: for any
/// two holders (mounts, or the rids of the server's grants), every two
/// overlapping ranges are held in modes `compatible(a, b, false)`: never
/// a WRITE beside anything but NULL, never a READ beside a WRITE_ONLY.
/// `holders`: (who, [(range, mode)]).
pub fn exclusion(holders: &[(String, Vec<(LockRange, LockMode)>)]) -> Result<(), String> {
    let mut all: Vec<(&LockRange, LockMode, usize)> = Vec::new();
    for (i, (_, held)) in holders.iter().enumerate() {
        all.extend(held.iter().map(|(r, m)| (r, *m, i)));
    }
    all.sort_by_key(|a| a.0.start);
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            if b.0.start > a.0.end {
                break;
            }
            if a.2 != b.2 && !compatible(a.1, b.1, false) {
                return Err(format!(
                    "{} holds {:?} and {} holds {:?} of overlapping ranges {:?} / {:?}",
                    holders[a.2].0, a.1, holders[b.2].0, b.1, a.0, b.0
                ));
            }
        }
    }
    Ok(())
}

fn fail(w: &World, node: NodeId, step: u64, what: String) -> Failure {
    Failure {
        node,
        step,
        time_ns: w.now(),
        what,
    }
}

/// Boot the server node and start the server role on the volume.
async fn start_server(
    w: &Rc<World>,
    opts: &NodeOptions,
    mode: Mode,
    fence: Option<(&Rc<Fences>, bool)>,
) -> Result<Rc<ServerNode>, Failure> {
    let env = w.boot(SERVER);
    let agent = fence.map(|(fences, lying)| {
        Rc::new(SimFenceAgent {
            handle: env.handle.clone(),
            entropy: env.entropy.clone(),
            fences: fences.clone(),
            lying,
        })
    });
    let meta: Rc<dyn BlockDev> = env.disks[0].clone();
    let data: Rc<dyn BlockDev> = env.disks[1].clone();
    let cfg = ServerConfig {
        term: env.life as u64,
        session: sim_session_config(),
        // a failover run's mounts outlive the server: a new life recovers
        // them instead of reclaiming them
        reclaim_mounted_at_start: mode != Mode::Failover && opts.server.reclaim_mounted_at_start,
        ..opts.server
    };
    let (net, handle, entropy) = (env.net.clone(), env.handle.clone(), env.entropy.clone());
    let r = w
        .on(SERVER, async move {
            let role = ServerRole::open(
                meta,
                data,
                Box::new(crate::runtime::env::SeededEntropy::new(entropy.next_u64())),
                cfg,
                handle,
            )?;
            if let Some(a) = agent {
                role.set_fence_agent(a);
            }
            role.start(&*net, &FsNode::server_addr(SERVER)).await?;
            FsResult::Ok(role)
        })
        .await;
    match r {
        Ok(Ok(role)) => {
            w.install(SERVER, Rc::new(ServerLife { role: role.clone() }));
            Ok(Rc::new(ServerNode {
                role: RefCell::new(role),
            }))
        }
        Ok(Err(e)) => Err(fail(w, SERVER, 0, format!("server start: {e}"))),
        Err(_) => Err(fail(w, SERVER, 0, "server node died starting".into())),
    }
}

/// Boot `node` and mount the volume there as a client of the server.
async fn start_mount(
    w: &Rc<World>,
    node: NodeId,
    opts: NodeOptions,
    fences: Option<&Rc<Fences>>,
) -> Result<Rc<ClusterMount>, Failure> {
    let env = w.boot(node);
    let p = mkfs_params(0, 0);
    // a fresh rid per life: a remount is a new mount
    let rid = 0x100 + ((env.life as u64) << 8) + node as u64;
    let (meta, data): (Rc<dyn BlockDev>, Rc<dyn BlockDev>) = match fences {
        // a failover run watches what a mount writes after its fence
        Some(f) => {
            f.register(rid, env.disks.clone());
            let watch = |d: &Rc<crate::sim::disk::DiskHandle>| -> Rc<dyn BlockDev> {
                let h = env.handle.clone();
                Rc::new(WatchedDev {
                    inner: d.clone(),
                    fences: f.clone(),
                    rid,
                    node,
                    now: Rc::new(move || h.now_ns()),
                })
            };
            (watch(&env.disks[0]), watch(&env.disks[1]))
        }
        None => (env.disks[0].clone(), env.disks[1].clone()),
    };
    let id = ClientIdentity {
        fsid: p.fsid,
        fmt_vers: p.fmt_vers,
        rid,
        flags: 0,
    };
    let (net, handle, entropy, clock) = (
        env.net.clone(),
        env.handle.clone(),
        env.entropy.clone(),
        env.clock.clone(),
    );
    let r = w
        .on(node, async move {
            let client = Client::connect_via(
                net,
                Rc::new(StaticLeader::new(&FsNode::server_addr(SERVER))),
                id,
                opts.session,
                &handle,
            )
            .await?;
            let (trans, merge) = open_client_half(&client, &meta, &entropy, p.fsid, &opts).await?;
            // the composition of mount_cluster: the lock client answers the
            // server's invalidations through the session
            let lc = opts
                .cluster_locks
                .map(|cfg| start_lock_client(&client, &trans, &handle, cfg));
            let locks: Rc<dyn LockProvider> = match &lc {
                Some(lc) => lc.clone(),
                None => Rc::new(LocalLocks::new()),
            };
            let backend: Rc<dyn crate::posix::backend::Backend> = trans.clone();
            let mounted = match &lc {
                // cluster locks: an unlinked inode goes once no mount has it open
                Some(_) => {
                    let omap = client_omap(&client);
                    Mount::mount_on_cluster(backend, data, clock, opts.mount, locks, omap).await
                }
                None => Mount::mount_with_locks(backend, data, clock, opts.mount, locks).await,
            };
            let mount = match mounted {
                Ok(m) => Rc::new(m),
                Err(e) => {
                    if let Some(lc) = &lc {
                        lc.hooks_ready();
                    }
                    trans.discard();
                    trans.close();
                    client.disconnect();
                    return Err(e);
                }
            };
            if let Some(lc) = &lc {
                set_mount_hooks(lc, &mount);
                set_omap_handler(&client, &mount);
            }
            let mut tasks = Vec::new();
            if lc.is_some() && opts.orphan_scan_delay_ms > 0 {
                tasks.push(spawn_orphan_scanner(
                    &mount,
                    &handle,
                    entropy.clone(),
                    opts.orphan_scan_delay_ms,
                )?);
            }
            if opts.tick_ns > 0 {
                tasks.push(spawn_commit_ticker(&mount, &handle, opts.tick_ns)?);
                if let Some(lc) = &lc {
                    tasks.push(spawn_lock_shrinker(lc, &mount, &handle, opts.tick_ns)?);
                }
            }
            tasks.push(spawn_sync_worker(&mount, &client, &handle)?);
            if opts.merge_poll_ns > 0 {
                tasks.push(spawn_merge_worker(
                    merge.clone(),
                    &handle,
                    opts.merge_poll_ns,
                )?);
            }
            FsResult::Ok(ClusterMount {
                node,
                rid,
                mount,
                client,
                trans,
                merge,
                tasks: RefCell::new(tasks),
                locks: lc,
            })
        })
        .await;
    match r {
        Ok(Ok(m)) => {
            let m = Rc::new(m);
            w.install(node, m.clone());
            w.log(node, "cluster_mount", &[rid], "");
            Ok(m)
        }
        Ok(Err(e)) => Err(fail(w, node, 0, format!("mount: {e}"))),
        Err(_) => Err(fail(w, node, 0, "node died mounting".into())),
    }
}

/// Point the engine at mount `m`.
fn on_mount(e: &mut Engine, m: &ClusterMount) {
    e.node = m.node;
    e.mount_override = Some(m.mount.clone());
}

struct Run {
    vol: Volume,
    server: Rc<ServerNode>,
    mounts: Vec<Rc<ClusterMount>>,
    server_commits: u64,
    fscks: u64,
    /// The steps are over: the chaos task stops.
    done: Rc<Cell<bool>>,
    /// What the lock watcher saw between steps.
    watched: Rc<RefCell<Option<String>>>,
    /// The mounts now (the lock watcher's view; a crash replaces one).
    live: Rc<RefCell<Vec<Rc<ClusterMount>>>>,
    knobs: Knobs,
    opts: NodeOptions,
    mode: Mode,
    /// The most log trees seen after a server commit (reported at the end).
    most_trees: Cell<usize>,
    /// Failover runs: the server bounces and what the fence agent did.
    bounce: Option<Rc<Bounce>>,
    fences: Option<Rc<Fences>>,
}

impl Run {
    /// The lock-exclusion checker: across mounts, and across the
    /// server's grants.
    fn check_locks(&self, e: &Engine) -> Result<(), Stop> {
        if let Some(v) = self.watched.borrow_mut().take() {
            return Err(e.fail(v));
        }
        match lock_violation(&self.mounts, &self.server) {
            Some(v) => Err(e.fail(v)),
            None => Ok(()),
        }
    }

    /// fsck of what the disks hold durably if the server committed since
    /// the last look.
    fn fsck_if_committed(&mut self, e: &Engine) -> Result<(), Stop> {
        let c = self.server.role().counters().commits;
        if c == self.server_commits {
            return Ok(());
        }
        self.server_commits = c;
        self.fscks += 1;
        e.w.log(SERVER, "fsck", &[e.step, c], "after a server commit");
        self.vol
            .fsck()
            .map_err(|t| e.fail(format!("fsck after server commit {c}: {t}")))?;
        self.check_log_trees(e)
    }

    /// The log tree checkers (issue 12): the count stays bounded, and
    /// every tree that is not an input of the merge in progress is newer
    /// than all its inputs.
    fn check_log_trees(&self, e: &Engine) -> Result<(), Stop> {
        let role = self.server.role();
        let (open, fin) = role
            .log_tree_counts()
            .map_err(|er| e.fail(format!("log tree counts: {er}")))?;
        self.most_trees.set(self.most_trees.get().max(open + fin));
        if open + fin > MAX_LOG_TREES {
            return Err(e.fail(format!(
                "{open} open and {fin} finalized log trees, over the bound {MAX_LOG_TREES}"
            )));
        }
        match role.check_log_order() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(what)) => Err(e.fail(format!("log merge order: {what}"))),
            Err(er) => Err(e.fail(format!("log merge order: reading the trees: {er}"))),
        }
    }

    /// Mount `i` syncs, crashes, is reclaimed by the server as a fenced
    /// mount would be, and its node mounts again (a new rid; a fresh
    /// cache reads what every mount committed).
    async fn crash_mount(&mut self, w: &Rc<World>, e: &mut Engine, i: usize) -> Result<(), Stop> {
        let m = self.mounts[i].clone();
        on_mount(e, &m);
        sync(e, &m).await?;
        let (node, rid) = (m.node, m.rid);
        drop(m);
        w.log(node, "mount_crash", &[e.step, rid], "after a sync");
        w.fault(Fault::Crash {
            node,
            loss: crate::sim::fault::Loss::Any,
        })
        .await;
        let role = self.server.role().clone();
        match w
            .on(SERVER, async move { role.reclaim_fenced(rid).await })
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(er)) => return Err(e.fail(format!("reclaiming crashed rid {rid:#x}: {er}"))),
            Err(_) => return Err(Stop::Down),
        }
        let nm = start_mount(w, node, self.opts, self.fences.as_ref())
            .await
            .map_err(Stop::Fail)?;
        self.mounts[i] = nm.clone();
        self.live.borrow_mut()[i] = nm.clone();
        on_mount(e, &nm);
        if self.mode.shared() {
            verify(e).await?;
        }
        Ok(())
    }
}

impl Run {
    /// A failover run's mount crash: mount `i` syncs, dirties a file
    /// again with the bytes it holds (so the model is right whether the
    /// change survives or not), and its node freezes (a paused VM) for
    /// longer than the recovery window while the server bounces. The new
    /// life must time out on it alone, fence it and reclaim it; the
    /// zombie then wakes and tries to commit: none of its writes may
    /// succeed. Its node mounts again as a new rid.
    async fn lose_mount(&mut self, w: &Rc<World>, e: &mut Engine, i: usize) -> Result<(), Stop> {
        let Some(b) = self.bounce.clone() else {
            return Ok(());
        };
        // no chaos bounce may start (or be running) until this one ends
        while b.busy.get() {
            w.sleep(10_000_000).await;
        }
        b.busy.set(true);
        let r = self.lose_mount_bounce(w, e, i, &b).await;
        b.busy.set(false);
        r?;
        let node = self.mounts[i].node;
        let nm = start_mount(w, node, self.opts, self.fences.as_ref())
            .await
            .map_err(Stop::Fail)?;
        self.mounts[i] = nm.clone();
        self.live.borrow_mut().push(nm.clone());
        on_mount(e, &nm);
        verify(e).await
    }

    async fn lose_mount_bounce(
        &mut self,
        w: &Rc<World>,
        e: &mut Engine,
        i: usize,
        b: &Bounce,
    ) -> Result<(), Stop> {
        let m = self.mounts[i].clone();
        on_mount(e, &m);
        sync(e, &m).await?;
        rewrite_in_place(e).await?;
        let (node, rid) = (m.node, m.rid);
        drop(m);
        // what the zombie holds stops counting: the new life reclaims it
        self.live.borrow_mut().retain(|x| x.rid != rid);
        // half the time the server bounces while it is frozen (the new
        // life's recovery fences it); else the same life notices it gone
        // (idle timeout, reconnect window) and fences it
        let across_bounce = e.r(2) == 0;
        let sc = sim_session_config();
        let away = sc.idle_timeout_ns + sc.reconnect_window_ns;
        let pause = if across_bounce {
            self.opts.server.recovery_window_ns
        } else {
            away
        } + LOST_PAUSE_EXTRA_NS;
        let how = if across_bounce {
            "frozen across a bounce"
        } else {
            "frozen under the same server life"
        };
        w.log(node, "mount_lost", &[e.step, rid], how);
        w.fault(Fault::Pause { node, ns: pause }).await;
        let wakes = w.now() + pause;
        if across_bounce {
            b.bounce_once(w, Some(rid)).await.map_err(|v| e.fail(v))?;
        } else {
            self.await_reconnect_fence(w, e, rid, away).await?;
        }
        // the zombie wakes after its fence and commits what it dirtied
        let after = wakes + ZOMBIE_AWAKE_NS;
        if w.now() < after {
            w.sleep(after - w.now()).await;
        }
        w.fault(Fault::Crash {
            node,
            loss: Loss::Any,
        })
        .await;
        match b.fences.violation() {
            Some(v) => Err(e.fail(format!("no write after fence: {v}"))),
            None => Ok(()),
        }
    }
}

impl Run {
    /// A frozen mount's connection times out and it does not come back:
    /// the server life that runs must fence it (`client_reconnect`) and
    /// reclaim it within the idle timeout plus the reconnect window
    /// (`away`) plus slack.
    async fn await_reconnect_fence(
        &self,
        w: &Rc<World>,
        e: &Engine,
        rid: u64,
        away: u64,
    ) -> Result<(), Stop> {
        use crate::cluster::fence::FenceReason;
        let role = self.server.role();
        let before = role.counters().reclaimed_rids;
        let limit = w.now() + away + RECONNECT_FENCE_SLACK_NS;
        loop {
            let fenced = self
                .fences
                .as_ref()
                .is_some_and(|f| f.fenced().contains_key(&rid));
            if fenced && role.counters().reclaimed_rids > before {
                break;
            }
            if role.is_failed() {
                return Err(e.fail(format!("the server failed while rid {rid:#x} was away")));
            }
            if w.now() > limit {
                return Err(e.fail(format!(
                    "rid {rid:#x}, away, was not fenced and reclaimed within {} s \
                     (fenced: {fenced})",
                    (away + RECONNECT_FENCE_SLACK_NS) / 1_000_000_000
                )));
            }
            w.sleep(100_000_000).await;
        }
        let reason = role
            .fence_requests()
            .into_iter()
            .find(|(r, _, _)| r.rid == rid)
            .map(|(r, _, _)| r.reason);
        if reason != Some(FenceReason::ClientReconnect) {
            return Err(e.fail(format!(
                "rid {rid:#x} was fenced for {reason:?}, not client_reconnect"
            )));
        }
        Ok(())
    }
}

/// Slack over the idle timeout plus the reconnect window for the fence
/// (5-300 ms) and the reclaim.
const RECONNECT_FENCE_SLACK_NS: u64 = 5_000_000_000;

/// How much longer than the recovery window a lost mount stays frozen.
const LOST_PAUSE_EXTRA_NS: u64 = 15_000_000_000;
/// How long the zombie runs after it wakes: time to commit what it
/// dirtied and to reconnect (the server must refuse its greeting).
const ZOMBIE_AWAKE_NS: u64 = 8_000_000_000;

/// Write the first bytes of a file of the model again, unchanged: dirty
/// items and blocks in the mount's transaction whether or not they ever
/// reach the disk.
async fn rewrite_in_place(e: &mut Engine) -> Result<(), Stop> {
    let Some((ino, bytes)) = e
        .model
        .nodes
        .iter()
        .find(|(_, n)| n.is_reg() && n.size > 0)
        .map(|(&ino, n)| (ino, n.read(0, n.size.min(4096))))
    else {
        return Ok(());
    };
    let got = e
        .op(format!("rewrite {ino} in place"), move |m| async move {
            m.write(ino, 0, &bytes).await
        })
        .await?;
    got.map(|_| ())
        .map_err(|er| e.fail(format!("rewrite {ino} in place: {er}")))
}

/// The lock-exclusion checker over the mounts' lock clients and the
/// server's grants at this instant.
fn lock_violation(mounts: &[Rc<ClusterMount>], server: &ServerNode) -> Option<String> {
    let held: Vec<(String, Vec<(LockRange, LockMode)>)> = mounts
        .iter()
        .map(|m| (format!("mount n{}", m.node), m.held()))
        .collect();
    if let Err(s) = exclusion(&held) {
        // what the server recorded for the ranges named (which side lied)
        let recorded: Vec<(u64, LockMode)> = server
            .role()
            .lock_grants()
            .into_iter()
            .filter(|(_, r, _)| s.contains(&format!("{:?}", r.start)))
            .map(|(rid, _, m)| (rid, m))
            .collect();
        return Some(format!(
            "lock exclusion among the mounts: {s}; the server records (rid, mode) {recorded:x?}"
        ));
    }
    let mut by_rid: alloc::collections::BTreeMap<u64, Vec<(LockRange, LockMode)>> =
        alloc::collections::BTreeMap::new();
    for (rid, r, m) in server.role().lock_grants() {
        by_rid.entry(rid).or_default().push((r, m));
    }
    let grants: Vec<(String, Vec<(LockRange, LockMode)>)> = by_rid
        .into_iter()
        .map(|(rid, v)| (format!("rid {rid:#x}"), v))
        .collect();
    exclusion(&grants)
        .err()
        .map(|s| format!("lock exclusion among the server's grants: {s}"))
}

/// The lock-exclusion checker between the steps too, every 2 ms of
/// virtual time (inside operations, invalidations and commits): the rule
/// holds at every instant, as a mount records its lower mode before it
/// answers and the server grants only after the answers.
async fn watch_locks(
    w: Rc<World>,
    mounts: Rc<RefCell<Vec<Rc<ClusterMount>>>>,
    server: Rc<ServerNode>,
    done: Rc<Cell<bool>>,
    verdict: Rc<RefCell<Option<String>>>,
) {
    while !done.get() {
        w.sleep(2_000_000).await;
        let now = mounts.borrow().clone();
        if let Some(v) = lock_violation(&now, &server) {
            w.log(SERVER, "lock_violation", &[], &v);
            *verdict.borrow_mut() = Some(format!("{v} (between steps)"));
            return;
        }
    }
}

/// Run the cluster workload: `steps` operations per mount.
pub async fn run(
    w: Rc<World>,
    vol: Volume,
    mode: Mode,
    opts: NodeOptions,
    knobs: Knobs,
    mut e: Engine,
) -> Result<u64, Failure> {
    match run_inner(&w, vol, mode, opts, knobs, &mut e).await {
        Ok(()) => Ok(e.step),
        Err(Stop::Fail(f)) => Err(f),
        Err(Stop::Down) => Err(e.failure("a node went down under the workload".into())),
    }
}

async fn run_inner(
    w: &Rc<World>,
    vol: Volume,
    mode: Mode,
    opts: NodeOptions,
    knobs: Knobs,
    e: &mut Engine,
) -> Result<(), Stop> {
    if e.inject == Inject::LyingFlush {
        vol.meta.set_lying_flush(true);
        vol.data.set_lying_flush(true);
    }
    let fences = (mode == Mode::Failover).then(|| {
        w.keep_events(KEPT_EVENTS);
        Fences::new()
    });
    let lying = e.inject == Inject::LyingFence;
    let server = start_server(w, &opts, mode, fences.as_ref().map(|f| (f, lying)))
        .await
        .map_err(Stop::Fail)?;
    let first = start_mount(w, 1, opts, fences.as_ref())
        .await
        .map_err(Stop::Fail)?;
    let mut run = Run {
        vol,
        server,
        mounts: alloc::vec![first.clone()],
        server_commits: 0,
        fscks: 0,
        done: Rc::new(Cell::new(false)),
        watched: Rc::new(RefCell::new(None)),
        live: Rc::new(RefCell::new(Vec::new())),
        knobs,
        opts,
        mode,
        most_trees: Cell::new(0),
        bounce: None,
        fences: fences.clone(),
    };
    // each mount's directory, made and committed by the first mount
    let mut dirs = Vec::new();
    on_mount(e, &first);
    for i in 1..=MOUNTS {
        if mode.shared() {
            break;
        }
        let name = format!("m{i}").into_bytes();
        let n2 = name.clone();
        let got = e
            .op(format!("mkdir 1 m{i}"), move |m| async move {
                m.mkdir(&Cred::root(), model::ROOT, &n2, 0o755).await
            })
            .await?;
        let a = got.map_err(|er| e.fail(format!("mkdir m{i}: {er}")))?;
        let want = e
            .model
            .check_create(model::ROOT, &name, S_IFDIR | 0o755)
            .map_err(|er| e.fail(format!("model mkdir m{i}: {er}")))?;
        e.model
            .add(model::ROOT, &name, a.ino, want)
            .map_err(|s| e.fail(s))?;
        dirs.push(a.ino);
    }
    sync(e, &first).await?;
    for n in 2..=MOUNTS {
        let m = start_mount(w, n, opts, fences.as_ref())
            .await
            .map_err(Stop::Fail)?;
        run.mounts.push(m);
    }
    *run.live.borrow_mut() = run.mounts.clone();
    let bounce = fences.as_ref().map(|f| {
        Rc::new(Bounce {
            server: run.server.clone(),
            opts,
            verdict: run.watched.clone(),
            lives: Rc::new(Cell::new(1)),
            fences: f.clone(),
            lying,
            busy: Cell::new(false),
        })
    });
    run.bounce = bounce.clone();
    let chaos = w.spawn(chaos(w.clone(), run.done.clone(), bounce));
    let forcer = (knobs.merge_every_ns > 0).then(|| {
        w.spawn(force_merges(
            w.clone(),
            run.server.clone(),
            run.done.clone(),
            knobs.merge_every_ns,
        ))
    });
    let watcher = mode.shared().then(|| {
        w.spawn(watch_locks(
            w.clone(),
            run.live.clone(),
            run.server.clone(),
            run.done.clone(),
            run.watched.clone(),
        ))
    });
    let r = steps(w, mode, e, &mut run, &dirs).await;
    run.done.set(true);
    let _ = chaos.await;
    if let Some(t) = forcer {
        let _ = t.await;
    }
    if let Some(t) = watcher {
        let _ = t.await;
    }
    r?;
    run.check_locks(e)?;
    if let Some(b) = &run.bounce {
        e.note("server_lives", &format!("{}", b.lives.get()));
        let t = b.check_events(w).map_err(|v| e.fail(v))?;
        e.note(
            "recovery",
            &format!(
                "{} rids prepared, {} recovered, {} fenced, {} timeouts",
                t.prepared, t.recovered, t.fenced, t.timeouts
            ),
        );
    }
    // the end: every mount commits and leaves
    e.scope = None;
    for m in core::mem::take(&mut run.mounts) {
        on_mount(e, &m);
        if mode.shared() {
            verify(e).await?;
        }
        let node = m.node;
        let got = e.op("unmount".into(), move |_| m.unmount()).await?;
        if let Err(er) = got {
            return Err(e.fail(format!("unmount: {er}")));
        }
        w.fault(Fault::Stop { node }).await;
        run.check_locks(e)?;
    }
    run.fsck_if_committed(e)?;
    check_fsck(e, &run.vol, "after every mount left")?;
    // a fresh mount sees every mount's work, merged or not
    let fresh = start_mount(w, 1, opts, fences.as_ref())
        .await
        .map_err(Stop::Fail)?;
    on_mount(e, &fresh);
    verify(e).await?;
    drain_merges(e, &fresh, &run.server, 200).await?;
    verify(e).await?;
    // nothing finalized is left unmerged
    match run.server.role().log_tree_counts() {
        Ok((_, 0)) => {}
        Ok((open, fin)) => {
            return Err(e.fail(format!(
                "{fin} finalized log trees ({open} open) left after the merge drained"
            )))
        }
        Err(er) => return Err(e.fail(format!("log tree counts: {er}"))),
    }
    let f2 = fresh.clone();
    let got = e.op("unmount".into(), move |_| f2.unmount()).await?;
    if let Err(er) = got {
        return Err(e.fail(format!("unmount of the fresh mount: {er}")));
    }
    w.fault(Fault::Stop { node: fresh.node }).await;
    e.note("server_fscks", &format!("{}", run.fscks));
    e.note(
        "max_log_trees",
        &format!(
            "{} log trees at most after a server commit",
            run.most_trees.get()
        ),
    );
    check_fsck(e, &run.vol, "at the end")
}

/// Link resets about every 0.5-2.5 s (a random mount's or the server's
/// streams) and now and then a short partition of a mount from the
/// server (under the session's idle timeout): the sessions reconnect
/// and resend; no error may surface to a mount.
async fn chaos(w: Rc<World>, done: Rc<Cell<bool>>, bounce: Option<Rc<Bounce>>) {
    let mut next_bounce = w.now() + 3_000_000_000;
    while !done.get() {
        w.sleep(500_000_000 + w.random() % 2_000_000_000).await;
        if done.get() {
            break;
        }
        if let Some(b) = &bounce {
            if w.now() >= next_bounce && !b.busy.get() {
                if !b.bounce(&w, None).await {
                    break;
                }
                next_bounce = w.now() + 3_000_000_000 + w.random() % 6_000_000_000;
                continue;
            }
        }
        let victim = (w.random() % (MOUNTS as u64 + 1)) as NodeId;
        if w.random().is_multiple_of(4) && victim != SERVER {
            partition(&w, SERVER, victim, 2_000_000_000).await;
        } else {
            w.fault(Fault::ResetStreams { node: victim }).await;
        }
    }
    w.fault(Fault::HealAll).await;
}

/// The server bounces of a failover run.
struct Bounce {
    server: Rc<ServerNode>,
    opts: NodeOptions,
    /// Where a failure found between steps is left for the harness.
    verdict: Rc<RefCell<Option<String>>>,
    /// Server lives so far.
    lives: Rc<Cell<u64>>,
    /// What the fence agent of every life did.
    fences: Rc<Fences>,
    /// The fence agent lies (a planted bug).
    lying: bool,
    /// A bounce is under way (the chaos task's or a lost mount's).
    busy: Cell<bool>,
}

impl Bounce {
    /// Crash the server node, start a new life after a short while and
    /// wait for its recovery to end. `lost`: the rid of a mount that
    /// will not come back, which the new life must fence and reclaim;
    /// with none, nothing may be fenced. `false`: the run failed (the
    /// verdict says why).
    async fn bounce(&self, w: &Rc<World>, lost: Option<u64>) -> bool {
        self.busy.set(true);
        let r = self.bounce_once(w, lost).await;
        self.busy.set(false);
        if let Err(v) = r {
            *self.verdict.borrow_mut() = Some(v);
            return false;
        }
        true
    }

    async fn bounce_once(&self, w: &Rc<World>, lost: Option<u64>) -> Result<(), String> {
        w.log(SERVER, "server_crash", &[self.lives.get()], "");
        w.fault(Fault::Crash {
            node: SERVER,
            loss: Loss::Any,
        })
        .await;
        w.sleep(100_000_000 + w.random() % 2_000_000_000).await;
        let life = self.lives.get() + 1;
        w.log(SERVER, "server_life", &[life], "");
        let s = start_server(
            w,
            &self.opts,
            Mode::Failover,
            Some((&self.fences, self.lying)),
        )
        .await
        .map_err(|f| format!("server restart: {}", f.what))?;
        let role = s.role();
        *self.server.role.borrow_mut() = role.clone();
        self.lives.set(life);
        let started = w.now();
        loop {
            let (pending, timed_out) = role.recovery_pending();
            if timed_out && pending.iter().any(|&(rid, _)| Some(rid) != lost) {
                return Err(format!(
                    "server life {life}: the recovery window closed with a live mount \
                     still owing (owing: {pending:x?}, lost: {lost:x?})"
                ));
            }
            if pending.is_empty() {
                if let Some(rid) = lost {
                    if !timed_out || !self.fences.fenced().contains_key(&rid) {
                        return Err(format!(
                            "server life {life}: the lost mount rid {rid:#x} was not fenced \
                             (window timed out: {timed_out})"
                        ));
                    }
                }
                w.log(SERVER, "recovered", &[life, w.now() - started], "");
                self.check_events(w)?;
                return Ok(());
            }
            if w.now() - started > RECOVERY_LIMIT_NS {
                return Err(format!(
                    "server life {life}: recovery not over after {} s (owing: {pending:x?})",
                    RECOVERY_LIMIT_NS / 1_000_000_000
                ));
            }
            w.sleep(100_000_000).await;
        }
    }

    /// The recovery-event checker over every life so far.
    fn check_events(&self, w: &World) -> Result<RecoveryTally, String> {
        let window = self.opts.server.recovery_window_ns;
        let slack = RECOVERY_LIMIT_NS.saturating_sub(window);
        check_recovery_events(&w.kept_events(), window, slack, w.now())
    }
}

/// Ask the server for a merge every `every_ns` (the `--merge-every-ms`
/// knob): the next GET_LOG_TREES finalizes every mount's tree.
async fn force_merges(w: Rc<World>, server: Rc<ServerNode>, done: Rc<Cell<bool>>, every_ns: u64) {
    while !done.get() {
        w.sleep(every_ns).await;
        server.role().request_merge();
    }
}

/// The random steps of every mount.
async fn steps(
    w: &Rc<World>,
    mode: Mode,
    e: &mut Engine,
    run: &mut Run,
    dirs: &[u64],
) -> Result<(), Stop> {
    let total = e.budget.steps.saturating_mul(MOUNTS as u64);
    while e.step < total && w.now() < e.budget.until_ns {
        e.step += 1;
        let i = e.r(MOUNTS as u64) as usize;
        let m = run.mounts[i].clone();
        on_mount(e, &m);
        e.scope = match mode {
            Mode::Disjoint => Some(dirs[i]),
            Mode::Shared | Mode::Failover => None,
        };
        e.marks.clear();
        if run.knobs.mount_crashes && e.r(50) == 0 {
            if mode == Mode::Failover {
                run.lose_mount(w, e, i).await?;
            } else {
                run.crash_mount(w, e, i).await?;
            }
            run.check_locks(e)?;
            run.fsck_if_committed(e)?;
            continue;
        }
        match e.r(100) {
            0..=3 => sync(e, &m).await?,
            4 if mode.shared() => verify(e).await?,
            5..=9 if mode.shared() => {
                let j = (i + 1 + e.r(MOUNTS as u64 - 1) as usize) % MOUNTS as usize;
                let other = run.mounts[j].clone();
                race(w, e, &m, &other).await?;
            }
            10..=12 if mode.shared() => {
                let j = (i + 1 + e.r(MOUNTS as u64 - 1) as usize) % MOUNTS as usize;
                let other = run.mounts[j].clone();
                open_unlink(e, &m, &other).await?;
            }
            _ => {
                e.random_op().await?;
                if mode.shared() && !e.marks.is_empty() {
                    // another mount reads back what the operation named
                    let j = (i + 1 + e.r(MOUNTS as u64 - 1) as usize) % MOUNTS as usize;
                    let other = run.mounts[j].clone();
                    probe(e, &other).await?;
                }
            }
        }
        run.check_locks(e)?;
        run.fsck_if_committed(e)?;
        e.think().await;
    }
    Ok(())
}

/// Mount `m` reads back what the last operation named (on another
/// mount): each (directory, name) by lookup and the directory by readdir,
/// each inode by getattr, its contents (files: the head and the tail;
/// symlinks: the target) and its xattrs. All must equal the model.
async fn probe(e: &mut Engine, m: &ClusterMount) -> Result<(), Stop> {
    on_mount(e, m);
    let mut marks = core::mem::take(&mut e.marks);
    let mut inos = Vec::new();
    let mut dirs = Vec::new();
    for mk in marks.drain(..) {
        match mk {
            Mark::Name(dir, name) => {
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
                let desc = format!("probe lookup {dir} {:?}", String::from_utf8_lossy(&name));
                if let Some(ino) = e.check_lookup(desc, dir, name).await? {
                    inos.push(ino);
                }
            }
            Mark::Ino(ino) => inos.push(ino),
        }
    }
    for dir in dirs {
        e.check_readdir(format!("probe readdir {dir}"), dir, 16)
            .await?;
    }
    inos.sort_unstable();
    inos.dedup();
    for ino in inos {
        probe_ino(e, ino).await?;
    }
    Ok(())
}

async fn probe_ino(e: &mut Engine, ino: u64) -> Result<(), Stop> {
    let desc = format!("probe getattr {ino}");
    let want = e.model.get(ino).cloned();
    let got = e
        .op(desc.clone(), move |m| async move { m.getattr(ino).await })
        .await?;
    e.agree(&desc, &got, &want)?;
    let (Ok(a), Ok(n)) = (got, want) else {
        return Ok(());
    };
    if (a.mode, a.nlink, a.size) != (n.mode, n.nlink, n.attr_size()) {
        return Err(e.fail(format!(
            "{desc}: mode/nlink/size {:o}/{}/{} want {:o}/{}/{}",
            a.mode,
            a.nlink,
            a.size,
            n.mode,
            n.nlink,
            n.attr_size()
        )));
    }
    if n.is_reg() {
        // the head, and the tail (files may be sparse far past their head)
        const SPAN: u64 = 16 << 10;
        let tail = n.size.saturating_sub(SPAN).max(SPAN.min(n.size));
        for off in [0, tail] {
            let desc = format!("probe read {ino} {off} {SPAN}");
            let want = n.read(off, SPAN);
            let got = e
                .op(desc.clone(), move |m| async move {
                    m.read(ino, off, SPAN as usize).await
                })
                .await?;
            match got {
                Ok(d) if d == want => {}
                Ok(d) => {
                    let at = d.iter().zip(&want).position(|(x, y)| x != y);
                    return Err(e.fail(format!(
                        "{desc}: {} bytes read, model {}; first difference at {at:?}",
                        d.len(),
                        want.len()
                    )));
                }
                Err(er) => return Err(e.fail(format!("{desc}: {er}"))),
            }
        }
    } else if !n.target.is_empty() {
        let desc = format!("probe readlink {ino}");
        let got = e
            .op(desc.clone(), move |m| async move { m.readlink(ino).await })
            .await?;
        if got.as_ref() != Ok(&n.target) {
            return Err(e.fail(format!("{desc}: not the model's target")));
        }
    }
    for x in XNAMES {
        let desc = format!("probe getxattr {ino} {}", String::from_utf8_lossy(x));
        let want = n.xattrs.get(x).cloned().ok_or(crate::errno::Errno::ENODATA);
        let got = e
            .op(desc.clone(), move |m| async move {
                m.getxattr(&Cred::root(), ino, x).await
            })
            .await?;
        e.agree(&desc, &got, &want)?;
        if let (Ok(a), Ok(b)) = (&got, &want) {
            if a != b {
                return Err(e.fail(format!("{desc}: value differs")));
            }
        }
    }
    Ok(())
}

/// A file open on mount `a` is unlinked on mount `b` (issue 12's open
/// map): `a` still reads every byte and writes, an orphan scan on `b`
/// leaves it alone, and `a`'s close deletes it (`b` then finds no such
/// inode). The file lives and dies within the step, outside the model
/// (its name is none the model uses).
async fn open_unlink(
    e: &mut Engine,
    a: &Rc<ClusterMount>,
    b: &Rc<ClusterMount>,
) -> Result<(), Stop> {
    let name = format!("omap.{}", e.step).into_bytes();
    let len = 1 + e.r(3 * 4096 + 100) as usize;
    let tag = e.r(256) as u8;
    let mut data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(tag))
        .collect();
    on_mount(e, a);
    let n2 = name.clone();
    let created = e
        .op(
            format!("omap create+open {}", e.step),
            move |m| async move {
                let at = m.create(&Cred::root(), ROOT_INO, &n2, 0o644).await?;
                m.open(&Cred::root(), at.ino, O_RDWR).await?;
                Ok(at.ino)
            },
        )
        .await?;
    let ino = match created {
        Ok(ino) => ino,
        // out of space or inodes: nothing to look at
        Err(_) => return Ok(()),
    };
    let d2 = data.clone();
    let wrote = e
        .op(format!("omap write {ino} {len}"), move |m| async move {
            m.write(ino, 0, &d2).await
        })
        .await?;
    data.truncate(wrote.unwrap_or(0));
    on_mount(e, b);
    let n2 = name.clone();
    let unlinked = e
        .op(format!("omap unlink {ino}"), move |m| async move {
            m.unlink(&Cred::root(), ROOT_INO, &n2).await?;
            // its orphan is open on `a`: a scan here keeps it
            m.scan_orphans().await
        })
        .await?;
    if let Err(er) = unlinked {
        return Err(e.fail(format!("omap unlink {ino} on another mount: {er}")));
    }
    on_mount(e, a);
    let want = data.len();
    let got = e
        .op(format!("omap read {ino} {want}"), move |m| async move {
            let d = m.read(ino, 0, want + 1).await?;
            let extra = [0xa5u8; 100];
            let n = m.write(ino, want as u64, &extra).await.unwrap_or(0);
            let back = m.read(ino, want as u64, n).await?;
            let nlink = m.getattr(ino).await?.nlink;
            Ok((d, extra[..n] == back[..], nlink))
        })
        .await?;
    match got {
        Ok((d, true, 0)) if d == data => {}
        Ok((d, same, nlink)) => {
            let at = d.iter().zip(&data).position(|(x, y)| x != y);
            return Err(e.fail(format!(
                "omap: open unlinked {ino} read {} bytes of {want} (first difference \
                 {at:?}), write read back {same}, nlink {nlink}",
                d.len()
            )));
        }
        Err(er) => return Err(e.fail(format!("omap: open unlinked {ino} unreadable: {er}"))),
    }
    let released = e
        .op(format!("omap release {ino}"), move |m| async move {
            m.release(ino).await
        })
        .await?;
    if let Err(er) = released {
        return Err(e.fail(format!("omap release {ino}: {er}")));
    }
    on_mount(e, b);
    let gone = e
        .op(format!("omap getattr {ino}"), move |m| async move {
            m.getattr(ino).await
        })
        .await?;
    match gone {
        Err(crate::errno::Errno::ENOENT) => Ok(()),
        other => Err(e.fail(format!(
            "omap: {ino} still there after its last close: {}",
            match other {
                Ok(a) => format!("nlink {}", a.nlink),
                Err(er) => format!("{er}"),
            }
        ))),
    }
}

/// Two mounts race the same change at once: both create one name, or
/// both RENAME_NOREPLACE a different entry onto one name. At most one
/// may succeed (exactly one if the name was free), the other sees
/// EEXIST; the model takes the winner's change, then a third read on
/// each mount must agree.
async fn race(
    w: &Rc<World>,
    e: &mut Engine,
    a: &Rc<ClusterMount>,
    b: &Rc<ClusterMount>,
) -> Result<(), Stop> {
    let dirs: Vec<u64> = e
        .model
        .nodes
        .iter()
        .filter(|(_, n)| n.is_dir() && n.nlink > 0)
        .map(|(k, _)| *k)
        .collect();
    let nd = dirs[e.r(dirs.len() as u64) as usize];
    let nn = super::NAMES[e.r(super::NAMES.len() as u64) as usize].to_vec();
    let free = e.model.lookup(nd, &nn).is_err();
    // sources of renames: two different non-directory entries
    let mut ents: Vec<(u64, Vec<u8>)> = Vec::new();
    for (&d, n) in &e.model.nodes {
        for (k, &i) in &n.kids {
            if e.model.nodes.get(&i).is_some_and(|c| !c.is_dir()) {
                ents.push((d, k.clone()));
            }
        }
    }
    let renames = ents.len() >= 2 && e.r(2) == 0;
    let srcs = if renames {
        let x = e.r(ents.len() as u64) as usize;
        let y = (x + 1 + e.r(ents.len() as u64 - 1) as usize) % ents.len();
        Some((ents[x].clone(), ents[y].clone()))
    } else {
        None
    };
    let desc = match &srcs {
        Some(((d1, n1), (d2, n2))) => format!(
            "race rename-noreplace {d1} {:?} / {d2} {:?} -> {nd} {:?}",
            String::from_utf8_lossy(n1),
            String::from_utf8_lossy(n2),
            String::from_utf8_lossy(&nn)
        ),
        None => format!("race create {nd} {:?}", String::from_utf8_lossy(&nn)),
    };
    let start = |m: &Rc<ClusterMount>, src: Option<(u64, Vec<u8>)>| {
        let (mnt, nn) = (m.mount.clone(), nn.clone());
        w.spawn(w.on(m.node, async move {
            match src {
                Some((od, on)) => mnt
                    .rename(&Cred::root(), od, &on, nd, &nn, RENAME_NOREPLACE)
                    .await
                    .map(|_| 0),
                None => mnt
                    .create(&Cred::root(), nd, &nn, 0o644)
                    .await
                    .map(|a| a.ino),
            }
        }))
    };
    let (sa, sb) = match &srcs {
        Some((x, y)) => (Some(x.clone()), Some(y.clone())),
        None => (None, None),
    };
    let ta = start(a, sa.clone());
    let tb = start(b, sb.clone());
    let ra = ta.await;
    let rb = tb.await;
    let (ra, rb) = match (ra, rb) {
        (Ok(Ok(x)), Ok(Ok(y))) => (x, y),
        _ => return Err(Stop::Down),
    };
    let show = |r: &FsResult<u64>| match r {
        Ok(_) => "ok".into(),
        Err(er) => String::from(er.name()),
    };
    e.w.log(
        a.node,
        "op",
        &[e.step],
        &format!(
            "{desc} -> n{} {} n{} {}",
            a.node,
            show(&ra),
            b.node,
            show(&rb)
        ),
    );
    let eexist = |r: &FsResult<u64>| *r == Err(crate::errno::Errno::EEXIST);
    let winner = match (&ra, &rb) {
        (Ok(_), r) if free && eexist(r) => Some((ra, sa)),
        (r, Ok(_)) if free && eexist(r) => Some((rb, sb)),
        (x, y) if !free && eexist(x) && eexist(y) => None,
        _ => {
            return Err(e.fail(format!(
                "{desc}: n{} {} and n{} {} with the name {}",
                a.node,
                show(&ra),
                b.node,
                show(&rb),
                if free { "free" } else { "taken" }
            )))
        }
    };
    if let Some((r, src)) = winner {
        match src {
            Some((od, on)) => {
                if e.model.check_rename(od, &on, nd, &nn, RENAME_NOREPLACE) != Ok(true) {
                    return Err(e.fail(format!("{desc}: the model refuses the winner")));
                }
                e.model.apply_rename(od, &on, nd, &nn, RENAME_NOREPLACE);
                e.mark_name(od, &on);
            }
            None => {
                let want = e
                    .model
                    .check_create(nd, &nn, S_IFREG | 0o644)
                    .map_err(|er| e.fail(format!("{desc}: model: {er}")))?;
                let ino = r.unwrap_or(0);
                e.model.add(nd, &nn, ino, want).map_err(|s| e.fail(s))?;
            }
        }
    }
    e.mark_name(nd, &nn);
    let marks = e.marks.clone();
    probe(e, a).await?;
    e.marks = marks;
    probe(e, b).await
}

fn check_fsck(e: &Engine, vol: &Volume, when: &str) -> Result<(), Stop> {
    e.note("fsck", when);
    vol.fsck().map_err(|t| e.fail(format!("fsck {when}: {t}")))
}

async fn sync(e: &mut Engine, m: &Rc<ClusterMount>) -> Result<(), Stop> {
    let mnt = m.mount.clone();
    let got = e
        .op("sync".into(), move |_| async move { mnt.sync().await })
        .await?;
    got.map_err(|er| e.fail(format!("sync: {er}")))
}

/// Walk the engine's mount and compare it with the whole model.
async fn verify(e: &mut Engine) -> Result<(), Stop> {
    let t = e
        .op("walk".into(), |m| async move { model::walk(&m).await })
        .await?;
    let tree = t.map_err(|er| e.fail(format!("walk failed: {er}")))?;
    if let Some(d) = model::diff(&tree, &model::visible(e.model.tree())) {
        return Err(e.fail(format!("namespace differs from the model: {d}")));
    }
    Ok(())
}

/// Liveness: with no more faults, pending log merge work finishes within
/// `rounds` rounds of merge work.
async fn drain_merges(
    e: &mut Engine,
    m: &Rc<ClusterMount>,
    server: &ServerNode,
    rounds: usize,
) -> Result<(), Stop> {
    for _ in 0..rounds {
        let m2 = m.clone();
        match e.op("merge_once".into(), move |_| m2.merge_once()).await? {
            Ok(true) => continue,
            Ok(false) => {}
            Err(er) => return Err(e.fail(format!("merge_once: {er}"))),
        }
        // the merge finished and nothing finalized waits for the next one
        // (the last farewell started the merge of every finalized tree)
        let finalized = server.role().log_tree_counts().map_or(1, |c| c.1);
        if !server.role().merge_pending() && finalized == 0 {
            return Ok(());
        }
        if !server.role().merge_pending() {
            // finalized trees wait for the lone idle mount's next commit
            // (as SYNC_LOG_TREES or any write would bring it)
            m.client.request_sync();
            let mnt = m.mount.clone();
            if let Err(er) = e
                .op("commit".into(), move |_| async move { mnt.tick().await })
                .await?
            {
                return Err(e.fail(format!("commit of the idle mount: {er}")));
            }
        }
        e.w.sleep(2_000_000_000).await;
    }
    Err(e.fail(format!(
        "log merge still pending after {rounds} rounds of merge work with no faults"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(v: &[(LockRange, LockMode)]) -> Vec<(LockRange, LockMode)> {
        v.to_vec()
    }

    #[test]
    fn exclusion_catches_a_write_beside_a_read_or_a_write() {
        let g = LockRange::inode_group(5);
        let other = LockRange::inode_group(5000);
        let ok = [
            ("a".into(), held(&[(g, LockMode::Read)])),
            (
                "b".into(),
                held(&[(g, LockMode::Read), (other, LockMode::Write)]),
            ),
            ("c".into(), held(&[(g, LockMode::Null)])),
        ];
        assert_eq!(exclusion(&ok), Ok(()));
        let rw = [
            ("a".into(), held(&[(g, LockMode::Read)])),
            ("b".into(), held(&[(g, LockMode::Write)])),
        ];
        let err = exclusion(&rw).unwrap_err();
        assert!(
            err.contains("a holds Read") && err.contains("b holds Write"),
            "{err}"
        );
        let ww = [
            ("a".into(), held(&[(other, LockMode::Write)])),
            (
                "b".into(),
                held(&[(g, LockMode::Read), (other, LockMode::Write)]),
            ),
        ];
        assert!(exclusion(&ww).is_err());
        let ro = [
            (
                "a".into(),
                held(&[(LockRange::orphan(), LockMode::WriteOnly)]),
            ),
            ("b".into(), held(&[(LockRange::orphan(), LockMode::Read)])),
        ];
        assert!(exclusion(&ro).is_err());
        let oo = [
            (
                "a".into(),
                held(&[(LockRange::orphan(), LockMode::WriteOnly)]),
            ),
            (
                "b".into(),
                held(&[(LockRange::orphan(), LockMode::WriteOnly)]),
            ),
        ];
        assert_eq!(exclusion(&oo), Ok(()));
        // one holder never conflicts with itself
        let one = [(
            "a".into(),
            held(&[(g, LockMode::Write), (g, LockMode::Read)]),
        )];
        assert_eq!(exclusion(&one), Ok(()));
    }
}
