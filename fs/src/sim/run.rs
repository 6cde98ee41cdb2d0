//! One seed, end to end: build the world (nodes, one volume per node,
//! background pauses), run a workload on every node, and report the seed,
//! the virtual time, the steps, the hash of the event log and the verdict.
//! The runner binary (`cargo xtask sim`) and the CI test call
//! [`run_seed`]; the same [`RunConfig`] always gives the same report.

use crate::client::node::NodeOptions;
use crate::cluster::lock_client::LockClientConfig;
use crate::posix::hold::CommitPolicy;
use crate::posix::mount::MountOptions;
use crate::runtime::node::NodeId;
use crate::sim::fault::PausePlan;
use crate::sim::faultdev::PageMap;
use crate::sim::fsnode::{sim_node_options, Volume};
use crate::sim::hash::Observer;
use crate::sim::net::NetStats;
use crate::sim::workload::{self, all_nodes, Budget, Engine, Failure, Inject};
use crate::sim::world::{World, WorldConfig, WorldStats, MAX_SIM_NODES};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;

/// Which workload a seed runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Posix,
    Crash,
    /// Quorum election under datagram loss, partitions, pauses and
    /// crashes (`workload/quorum.rs`); `steps` counts fault phases.
    Quorum,
    /// One server node and `nodes` client nodes over the session
    /// (`workload/session.rs`); `steps` requests per client.
    Session,
    /// One server node and three mounts of its volume, each in its own
    /// directory with local locks (`workload/cluster.rs`); `steps`
    /// operations per mount.
    ClusterDisjoint,
    /// One server node and three mounts sharing one directory tree under
    /// the cluster locks (`workload/cluster.rs`); `steps` operations per
    /// mount.
    Cluster,
    /// [`WorkloadKind::Cluster`] while the server node crashes and comes
    /// back as new lives that recover the mounts' locks.
    ClusterFailover,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Posix => "posix",
            WorkloadKind::Crash => "crash",
            WorkloadKind::Quorum => "quorum",
            WorkloadKind::Session => "session",
            WorkloadKind::ClusterDisjoint => "cluster-disjoint",
            WorkloadKind::Cluster => "cluster",
            WorkloadKind::ClusterFailover => "cluster-failover",
        }
    }

    pub fn parse(s: &str) -> Option<WorkloadKind> {
        match s {
            "posix" => Some(WorkloadKind::Posix),
            "crash" => Some(WorkloadKind::Crash),
            "quorum" => Some(WorkloadKind::Quorum),
            "session" => Some(WorkloadKind::Session),
            "cluster-disjoint" => Some(WorkloadKind::ClusterDisjoint),
            "cluster" => Some(WorkloadKind::Cluster),
            "cluster-failover" => Some(WorkloadKind::ClusterFailover),
            _ => None,
        }
    }
}

/// Everything that determines a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunConfig {
    pub seed: u64,
    pub workload: WorkloadKind,
    pub nodes: u8,
    /// Workload steps per node.
    pub steps: u64,
    /// Virtual time after which no new step starts.
    pub until_ns: u64,
    pub inject: Inject,
    /// Background node pauses.
    pub pauses: bool,
    /// Crash runs end with the merge liveness check (see
    /// [`Budget::crash_merge_liveness`]); on by default.
    pub crash_merge_liveness: bool,
    /// Quorum and session runs: every node holds a cluster key and an
    /// adversary on the network replays, reorders, mutates and forges
    /// traffic (see `sim::net`).
    pub adversary: bool,
    /// Cluster workloads: ask the server for a log merge this often
    /// (virtual ns; 0: only when trees grow). `--merge-every-ms`.
    pub merge_every_ns: u64,
    /// Cluster workloads: crash, reclaim and remount mounts now and then
    /// (`--mount-crashes`). In cluster-failover a crashed mount is one
    /// frozen across a server bounce: the new life fences it at the end
    /// of its window and reclaims it, and the zombie's writes after the
    /// fence must fail.
    pub mount_crashes: bool,
}

impl RunConfig {
    pub fn new(seed: u64, workload: WorkloadKind) -> RunConfig {
        RunConfig {
            seed,
            workload,
            nodes: 1,
            steps: if workload == WorkloadKind::Quorum {
                QUORUM_PHASES
            } else {
                200
            },
            until_ns: u64::MAX / 4,
            inject: Inject::None,
            pauses: true,
            crash_merge_liveness: true,
            adversary: false,
            merge_every_ns: 0,
            mount_crashes: false,
        }
    }
}

/// Fault phases of a quorum run unless told otherwise.
pub const QUORUM_PHASES: u64 = 6;

/// What one seed did.
#[derive(Clone, Debug)]
pub struct SeedReport {
    pub cfg: RunConfig,
    /// Virtual nanoseconds at the end.
    pub virt_ns: u64,
    pub steps: u64,
    pub events: u64,
    pub hash: u64,
    /// The first failure (a checker's verdict or a stalled world).
    pub failure: Option<String>,
    /// The newest events before the end (for a failure report).
    pub recent: Vec<String>,
    pub world: WorldStats,
    pub net: NetStats,
}

impl SeedReport {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// A formatted volume, made once and copied (copy-on-write) into every
/// run: mkfs is deterministic, so runs are identical with or without it.
#[derive(Clone)]
pub struct VolumeImage {
    pub meta: Rc<PageMap>,
    pub data: Rc<PageMap>,
}

impl VolumeImage {
    pub fn mkfs() -> Result<VolumeImage, String> {
        let w = World::new(WorldConfig::new(0));
        w.add_node(0);
        let v = Volume::add(&w, 0, "template");
        v.mkfs()?;
        let img = VolumeImage {
            meta: v.meta.durable_pages(),
            data: v.data.durable_pages(),
        };
        w.finish();
        Ok(img)
    }
}

fn node_options(cfg: &RunConfig) -> NodeOptions {
    match cfg.workload {
        WorkloadKind::Quorum => NodeOptions::default(),
        WorkloadKind::ClusterDisjoint | WorkloadKind::Cluster | WorkloadKind::ClusterFailover => {
            let mut o = sim_node_options(
                MountOptions {
                    cache_budget_bytes: if cfg.seed.is_multiple_of(3) {
                        32 << 10
                    } else {
                        8 << 20
                    },
                    commit: CommitPolicy::default(),
                },
                true,
            );
            o.session = workload::session::sim_session_config();
            // the shared tree takes real cluster locks (unless the run
            // injects their absence); disjoint mounts grant them locally
            let locks = matches!(
                cfg.workload,
                WorkloadKind::Cluster | WorkloadKind::ClusterFailover
            ) && cfg.inject != Inject::NoLocks;
            o.cluster_locks = locks.then(|| LockClientConfig {
                // a tight LRU bound now and then: idle locks go back
                max_idle: if cfg.seed.is_multiple_of(4) {
                    8
                } else {
                    LockClientConfig::default().max_idle
                },
            });
            o
        }
        WorkloadKind::Posix => sim_node_options(
            MountOptions {
                cache_budget_bytes: if cfg.seed.is_multiple_of(3) {
                    32 << 10
                } else {
                    8 << 20
                },
                commit: CommitPolicy::default(),
            },
            true,
        ),
        // only syncs commit (as far as the workload can help it)
        WorkloadKind::Crash | WorkloadKind::Session => sim_node_options(
            MountOptions {
                commit: CommitPolicy {
                    interval_ns: u64::MAX / 4,
                    ..CommitPolicy::default()
                },
                ..MountOptions::default()
            },
            false,
        ),
    }
}

/// Virtual time a run may take past its budget before it counts as hung.
const SLACK_NS: u64 = 3600 * 1_000_000_000;

/// The world of one seed's run: `wc` with the run's pauses and keys (the
/// adversary, if asked), the
/// observer set, and the run's first log line (`nodes`, steps, workload).
fn new_world(
    cfg: &RunConfig,
    mut wc: WorldConfig,
    nodes: u64,
    observer: Option<Observer>,
) -> Rc<World> {
    adversary(&mut wc, cfg);
    if cfg.pauses {
        wc.pauses = Some(PausePlan {
            mean_gap_ns: 3_000_000_000,
            max_ns: 500_000_000,
        });
    }
    let w = World::new(wc);
    w.set_observer(observer);
    w.log(
        crate::sim::hash::WORLD,
        "run",
        &[nodes, cfg.steps],
        cfg.workload.name(),
    );
    w
}

/// Run one seed. `image`: a formatted volume to start from (else mkfs
/// runs); `observer`: sees every event (tracing).
pub fn run_seed(
    cfg: &RunConfig,
    image: Option<&VolumeImage>,
    observer: Option<Observer>,
) -> SeedReport {
    assert!(
        cfg.nodes >= 1 && (cfg.nodes as usize) <= MAX_SIM_NODES,
        "1..={MAX_SIM_NODES} nodes"
    );
    if cfg.workload == WorkloadKind::Quorum {
        return run_quorum_seed(cfg, observer);
    }
    if matches!(
        cfg.workload,
        WorkloadKind::ClusterDisjoint | WorkloadKind::Cluster | WorkloadKind::ClusterFailover
    ) {
        return run_cluster_seed(cfg, image, observer);
    }
    let w = new_world(cfg, WorldConfig::new(cfg.seed), cfg.nodes as u64, observer);
    let session = cfg.workload == WorkloadKind::Session;
    if session {
        assert!(
            (cfg.nodes as usize) < MAX_SIM_NODES,
            "the session workload adds a server node"
        );
    }
    // the session workload: node 0 serves the one volume, nodes
    // 1..=cfg.nodes are its clients
    let nodes: Vec<NodeId> = (0..cfg.nodes).collect();
    let vol_nodes: Vec<NodeId> = if session {
        alloc::vec![0]
    } else {
        nodes.clone()
    };
    if session {
        for n in 1..=cfg.nodes {
            w.add_node(n);
        }
    }
    let mut vols = Vec::new();
    let mut setup_err = None;
    for &n in &vol_nodes {
        w.add_node(n);
        let v = Volume::add(&w, n, &format!("vol{n}"));
        match image {
            Some(img) => v.format_from(img.meta.clone(), img.data.clone()),
            None => {
                if let Err(e) = v.mkfs() {
                    setup_err = Some(e);
                }
            }
        }
        vols.push(v);
    }
    let opts = node_options(cfg);
    let budget = Budget {
        steps: cfg.steps,
        until_ns: cfg.until_ns,
        crash_merge_liveness: cfg.crash_merge_liveness,
    };
    let (inject, kind) = (cfg.inject, cfg.workload);
    let result: Result<u64, (u64, String)> = match setup_err {
        Some(e) => Err((0, e)),
        None if session => {
            let main = workload::session::run(w.clone(), cfg.nodes, cfg.steps);
            let limit = cfg.until_ns.saturating_add(SLACK_NS);
            match w.run(main, limit) {
                Ok(Ok(steps)) => Ok(steps),
                Ok(Err(f)) => Err((f.step, describe(&f))),
                Err(stall) => Err((0, format!("the world stalled: {stall}"))),
            }
        }
        None => {
            let w2 = w.clone();
            let main = async move {
                all_nodes(&w2, &nodes, |n| {
                    let e = Engine::new(
                        w2.clone(),
                        n,
                        vols[n as usize].clone(),
                        opts,
                        budget,
                        inject,
                        kind == WorkloadKind::Crash,
                    );
                    async move {
                        match kind {
                            WorkloadKind::Posix => workload::posix::run(e).await,
                            WorkloadKind::Crash
                            | WorkloadKind::Quorum
                            | WorkloadKind::Session
                            | WorkloadKind::ClusterDisjoint
                            | WorkloadKind::Cluster
                            | WorkloadKind::ClusterFailover => workload::crash::run(e).await,
                        }
                    }
                })
                .await
            };
            let limit = cfg.until_ns.saturating_add(SLACK_NS);
            match w.run(main, limit) {
                Ok(Ok(steps)) => Ok(steps),
                Ok(Err(f)) => Err((f.step, describe(&f))),
                Err(stall) => Err((0, format!("the world stalled: {stall}"))),
            }
        }
    };
    end_report(&w, cfg, result)
}

/// Log the end of a run, take its report (hash, events, stats), then drop
/// every node and harness task.
fn end_report(w: &Rc<World>, cfg: &RunConfig, result: Result<u64, (u64, String)>) -> SeedReport {
    let (steps, failure) = match result {
        Ok(s) => (s, None),
        Err((step, f)) => (step, Some(f)),
    };
    w.log(
        crate::sim::hash::WORLD,
        "end",
        &[steps, failure.is_some() as u64],
        failure.as_deref().unwrap_or(""),
    );
    let mut rep = SeedReport {
        cfg: *cfg,
        virt_ns: w.now(),
        steps,
        events: w.events(),
        hash: w.hash(),
        recent: if failure.is_some() {
            w.recent_events()
        } else {
            Vec::new()
        },
        failure,
        world: w.stats(),
        net: w.net().stats(),
    };
    // the hash is taken; now drop every node and harness task
    w.set_observer(None);
    w.finish();
    rep.world = w.stats();
    rep
}

/// Quorum members of a run: `--nodes` if 2 or more (at most 15), else 3,
/// 5 or 2 by the seed (seed % 3 = 0, 1, 2).
pub fn quorum_slots(cfg: &RunConfig) -> u8 {
    if cfg.nodes >= 2 {
        cfg.nodes.min(15)
    } else {
        [3, 5, 2][(cfg.seed % 3) as usize]
    }
}

/// One seed of the quorum workload: its own world (lossier datagrams),
/// one shared volume with a slot per member.
fn run_quorum_seed(cfg: &RunConfig, observer: Option<Observer>) -> SeedReport {
    let mut wc = WorldConfig::new(cfg.seed);
    wc.net.dgram_loss_ppm = 30_000;
    wc.net.dgram_dup_ppm = 20_000;
    let plan = workload::quorum::QuorumPlan {
        slots: quorum_slots(cfg),
        phases: cfg.steps,
        lying_fence: cfg.inject == Inject::LyingFence,
        lying_flush: cfg.inject == Inject::LyingFlush,
    };
    let w = new_world(cfg, wc, plan.slots as u64, observer);
    let w2 = w.clone();
    let limit = cfg.until_ns.saturating_add(SLACK_NS);
    let result = match w.run(workload::quorum::run(w2, plan), limit) {
        Ok(Ok(phases)) => Ok(phases),
        Ok(Err(f)) => Err((f.step, describe(&f))),
        Err(stall) => Err((0, format!("the world stalled: {stall}"))),
    };
    end_report(&w, cfg, result)
}

/// One seed of a cluster workload: node 0 serves the one volume, nodes
/// 1..=3 mount it (the volume's disks attached to all four).
fn run_cluster_seed(
    cfg: &RunConfig,
    image: Option<&VolumeImage>,
    observer: Option<Observer>,
) -> SeedReport {
    use workload::cluster::{Mode, MOUNTS, SERVER};
    let mut wc = WorldConfig::new(cfg.seed);
    if cfg.seed % 3 == 1 {
        // slow links on every third seed: lock hand-offs and racing
        // operations overlap for longer
        wc.net.link_ns = (1_000_000, 30_000_000);
    }
    let w = new_world(cfg, wc, MOUNTS as u64, observer);
    w.add_node(SERVER);
    let vol = Volume::add(&w, SERVER, "vol");
    for n in 1..=MOUNTS {
        w.add_node(n);
        w.attach(n, vol.meta.id());
        w.attach(n, vol.data.id());
    }
    let setup = match image {
        Some(img) => {
            vol.format_from(img.meta.clone(), img.data.clone());
            Ok(())
        }
        None => vol.mkfs(),
    };
    let opts = node_options(cfg);
    let budget = Budget {
        steps: cfg.steps,
        until_ns: cfg.until_ns,
        crash_merge_liveness: true,
    };
    let mode = match cfg.workload {
        WorkloadKind::Cluster => Mode::Shared,
        WorkloadKind::ClusterFailover => Mode::Failover,
        _ => Mode::Disjoint,
    };
    let result = match setup {
        Err(e) => Err((0, e)),
        Ok(()) => {
            let e = Engine::new(w.clone(), 1, vol.clone(), opts, budget, cfg.inject, false);
            let knobs = workload::cluster::Knobs {
                merge_every_ns: cfg.merge_every_ns,
                mount_crashes: cfg.mount_crashes,
            };
            let main = workload::cluster::run(w.clone(), vol, mode, opts, knobs, e);
            let limit = cfg.until_ns.saturating_add(SLACK_NS);
            match w.run(main, limit) {
                Ok(Ok(steps)) => Ok(steps),
                Ok(Err(f)) => Err((f.step, describe(&f))),
                Err(stall) => Err((0, format!("the world stalled: {stall}"))),
            }
        }
    };
    end_report(&w, cfg, result)
}

/// The adversary's share of datagrams (a quarter of it of stream segments).
pub const ADVERSARY_PPM: u32 = 200_000;

/// Keys on every node and the adversary on the wire, if the run asks.
fn adversary(wc: &mut WorldConfig, cfg: &RunConfig) {
    if cfg.adversary {
        use crate::runtime::env::Entropy;
        let k = crate::runtime::env::SeededEntropy::new(cfg.seed ^ 0x006b_6579);
        let mut key = [0u8; 32];
        for c in key.chunks_exact_mut(8) {
            c.copy_from_slice(&k.next_u64().to_le_bytes());
        }
        wc.cluster_key = Some(key);
        wc.net.adversary_ppm = ADVERSARY_PPM;
    }
}

fn describe(f: &Failure) -> String {
    format!("{f}")
}
