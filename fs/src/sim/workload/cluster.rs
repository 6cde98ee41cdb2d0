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
//! what the server granted, after every step; at the end every mount
//! synced and unmounted, fsck, then a fresh mount walks the volume
//! against the model, drains the log merge (liveness), walks again and
//! unmounts; fsck.

use super::{model, Engine, Failure, Inject, Stop};
use crate::client::log_txn::ClientLogTxn;
use crate::client::node::{
    open_client_half, spawn_commit_ticker, spawn_merge_worker, MergeWorker, NodeOptions,
};
use crate::client::requests::{Client, ClientIdentity};
use crate::cluster::lock::{compatible, LocalLocks, LockMode, LockProvider, LockRange};
use crate::cluster::session::StaticLeader;
use crate::cluster::transport::LocalFut;
use crate::errno::FsResult;
use crate::posix::mount::Mount;
use crate::posix::types::{Cred, S_IFDIR};
use crate::runtime::exec::JoinHandle;
use crate::runtime::node::NodeId;
use crate::server::role::{ServerConfig, ServerRole};
use crate::sim::fault::Fault;
use crate::sim::fsnode::{mkfs_params, FsNode, Volume};
use crate::sim::workload::session::sim_session_config;
use crate::sim::world::{Software, World};
use crate::storage::dev::BlockDev;
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;
use core::cell::RefCell;

/// The server's node.
pub const SERVER: NodeId = 0;
/// Mounts of a run (nodes 1..=MOUNTS).
pub const MOUNTS: u8 = 3;

/// How the mounts share the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each mount in its own directory, local locks.
    Disjoint,
}

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
}

impl ClusterMount {
    /// What the mount's lock provider holds: (range, mode).
    pub fn held(&self) -> Vec<(LockRange, LockMode)> {
        Vec::new()
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

/// The server role of the run (node 0).
pub struct ServerNode {
    pub role: ServerRole,
}

impl Software for ServerNode {
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
    all.sort_by(|a, b| a.0.start.cmp(&b.0.start));
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
async fn start_server(w: &Rc<World>, opts: &NodeOptions) -> Result<Rc<ServerNode>, Failure> {
    let env = w.boot(SERVER);
    let meta: Rc<dyn BlockDev> = env.disks[0].clone();
    let data: Rc<dyn BlockDev> = env.disks[1].clone();
    let cfg = ServerConfig {
        term: env.life as u64,
        session: sim_session_config(),
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
            role.start(&*net, &FsNode::server_addr(SERVER)).await?;
            FsResult::Ok(role)
        })
        .await;
    match r {
        Ok(Ok(role)) => {
            let s = Rc::new(ServerNode { role });
            w.install(SERVER, s.clone());
            Ok(s)
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
) -> Result<Rc<ClusterMount>, Failure> {
    let env = w.boot(node);
    let meta: Rc<dyn BlockDev> = env.disks[0].clone();
    let data: Rc<dyn BlockDev> = env.disks[1].clone();
    let p = mkfs_params(0, 0);
    // a fresh rid per life: a remount is a new mount
    let rid = 0x100 + ((env.life as u64) << 8) + node as u64;
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
            let locks: Rc<dyn LockProvider> = Rc::new(LocalLocks::new());
            let backend: Rc<dyn crate::posix::backend::Backend> = trans.clone();
            let mount = match Mount::mount_with_locks(backend, data, clock, opts.mount, locks).await
            {
                Ok(m) => Rc::new(m),
                Err(e) => {
                    trans.discard();
                    trans.close();
                    client.disconnect();
                    return Err(e);
                }
            };
            let mut tasks = Vec::new();
            if opts.tick_ns > 0 {
                tasks.push(spawn_commit_ticker(&mount, &handle, opts.tick_ns)?);
            }
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
}

impl Run {
    /// The lock-exclusion checker: across mounts, and across the
    /// server's grants.
    fn check_locks(&self, e: &Engine) -> Result<(), Stop> {
        let mounts: Vec<(String, Vec<(LockRange, LockMode)>)> = self
            .mounts
            .iter()
            .map(|m| (format!("mount n{}", m.node), m.held()))
            .collect();
        exclusion(&mounts).map_err(|s| e.fail(format!("lock exclusion among the mounts: {s}")))
    }

    /// fsck of what the disks hold durably if the server committed since
    /// the last look.
    fn fsck_if_committed(&mut self, e: &Engine) -> Result<(), Stop> {
        let c = self.server.role.counters().commits;
        if c == self.server_commits {
            return Ok(());
        }
        self.server_commits = c;
        self.fscks += 1;
        e.w.log(SERVER, "fsck", &[e.step, c], "after a server commit");
        self.vol
            .fsck()
            .map_err(|t| e.fail(format!("fsck after server commit {c}: {t}")))
    }
}

/// Run the cluster workload: `steps` operations per mount.
pub async fn run(
    w: Rc<World>,
    vol: Volume,
    mode: Mode,
    opts: NodeOptions,
    mut e: Engine,
) -> Result<u64, Failure> {
    match run_inner(&w, vol, mode, opts, &mut e).await {
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
    e: &mut Engine,
) -> Result<(), Stop> {
    if e.inject == Inject::LyingFlush {
        vol.meta.set_lying_flush(true);
        vol.data.set_lying_flush(true);
    }
    let server = start_server(w, &opts).await.map_err(Stop::Fail)?;
    let first = start_mount(w, 1, opts).await.map_err(Stop::Fail)?;
    let mut run = Run {
        vol,
        server,
        mounts: alloc::vec![first.clone()],
        server_commits: 0,
        fscks: 0,
    };
    // each mount's directory, made and committed by the first mount
    let mut dirs = Vec::new();
    on_mount(e, &first);
    for i in 1..=MOUNTS {
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
        let m = start_mount(w, n, opts).await.map_err(Stop::Fail)?;
        run.mounts.push(m);
    }
    let total = e.budget.steps.saturating_mul(MOUNTS as u64);
    while e.step < total && w.now() < e.budget.until_ns {
        e.step += 1;
        let i = e.r(MOUNTS as u64) as usize;
        let m = run.mounts[i].clone();
        on_mount(e, &m);
        e.scope = match mode {
            Mode::Disjoint => Some(dirs[i]),
        };
        e.marks.clear();
        match e.r(100) {
            0..=3 => sync(e, &m).await?,
            _ => e.random_op().await?,
        }
        run.check_locks(e)?;
        run.fsck_if_committed(e)?;
        e.think().await;
    }
    // the end: every mount commits and leaves
    e.scope = None;
    for m in core::mem::take(&mut run.mounts) {
        on_mount(e, &m);
        let node = m.node;
        let got = e.op("unmount".into(), move |_| m.unmount()).await?;
        if let Err(er) = got {
            return Err(e.fail(format!("unmount: {er}")));
        }
        w.fault(Fault::Stop { node }).await;
    }
    run.fsck_if_committed(e)?;
    check_fsck(e, &run.vol, "after every mount left")?;
    // a fresh mount sees every mount's work, merged or not
    let fresh = start_mount(w, 1, opts).await.map_err(Stop::Fail)?;
    on_mount(e, &fresh);
    verify(e).await?;
    drain_merges(e, &fresh, &run.server, 200).await?;
    verify(e).await?;
    let f2 = fresh.clone();
    let got = e.op("unmount".into(), move |_| f2.unmount()).await?;
    if let Err(er) = got {
        return Err(e.fail(format!("unmount of the fresh mount: {er}")));
    }
    w.fault(Fault::Stop { node: fresh.node }).await;
    e.note("server_fscks", &format!("{}", run.fscks));
    check_fsck(e, &run.vol, "at the end")
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
        if !server.role.merge_pending() {
            return Ok(());
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
