//! The quorum workload: 2, 3 or 5 quorum members on one shared meta disk
//! elect leaders through lossy, duplicating datagrams while the world
//! partitions them, pauses them, and crashes and restarts them.
//!
//! Each member runs the real [`QuorumAgent`]; its "server" is a stand-in
//! that, while up, writes a server block (its term and rid) to the shared
//! disk every 100–300 ms, as a real server commits. The fence agent is the
//! simulator's: it revokes the fenced life's disk handles after a delay.
//!
//! Checkers, sampled every 50 ms and at every server write:
//! * at most one ELECT per term on disk, and at most one member that
//!   believes it leads a term;
//! * a slot's persisted term never decreases;
//! * server writes land in term order (no write of an older term after a
//!   newer one), and none from a term older than the latest FENCE on disk;
//! * nothing written by a fenced rid after its fence;
//! * liveness: after each fault phase heals, a leader whose server is up
//!   and followed by a majority within heartbeat timeout + 8 s;
//! * no usurping: no member is elected while another leads a lower term
//!   with its server up, has been leading and undisturbed (up, unpaused,
//!   no link from it cut) for a heartbeat timeout + 1 s, and no member had
//!   persisted a term above its term that long ago (every member hears
//!   its heartbeats, so nobody may vote a successor in);
//! * fencing: a new leader never fences a life that leads the same or a
//!   higher term (its ELECT on disk), and two leaders of one term never
//!   fence each other.

use crate::cluster::fence::{FenceAgent, FenceError, FenceReason, FenceRequest};
use crate::cluster::quorum::{Role, ServerState};
use crate::cluster::quorum_agent::{AgentConfig, QuorumAgent, ServerControl};
use crate::cluster::quorum_blocks::{block_term, find_leader, read_block, QEvent};
use crate::cluster::transport::{Datagrams, LocalFut};
use crate::format::quorum::QuorumBlock;
use crate::format::super_block::{InetAddr, QuorumConfig, SuperBlock};
use crate::format::{QUORUM_BLKNO, SM_BLOCK_SHIFT};
use crate::runtime::env::{Entropy, SeededEntropy};
use crate::runtime::exec::{Handle, JoinHandle};
use crate::runtime::node::NodeId;
use crate::sim::disk::{DiskHandle, SimDisk};
use crate::sim::fault::{Fault, Loss};
use crate::sim::fsnode::mkfs_params;
use crate::sim::workload::Failure;
use crate::sim::world::{NodeState, Software, World};
use crate::storage::block::read_super_from;
use crate::storage::dev::{BlockDev, IoError};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::rc::Rc;
use alloc::rc::Weak;
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;
use core::cell::RefCell;

/// Heartbeat timeout in the simulator (the smallest allowed: cheap runs).
pub const SIM_HB_TIMEOUT_NS: u64 = 2_000_000_000;
/// Where the stand-in server writes (4 KiB units on the meta disk).
const SERVER_BLKNO: u64 = 40;
/// Liveness budget after a heal, beyond the heartbeat timeout.
const LIVENESS_SLACK_NS: u64 = 8_000_000_000;
/// How long a leader must have led undisturbed before a successor
/// elected meanwhile counts as a usurper.
const CALM_NS: u64 = SIM_HB_TIMEOUT_NS + 1_000_000_000;
const MS: u64 = 1_000_000;

/// What one quorum run is.
#[derive(Clone, Copy, Debug)]
pub struct QuorumPlan {
    pub slots: u8,
    /// Fault phases, each followed by a heal and the liveness check.
    pub phases: u64,
    /// Plant a bug: the fence agent reports fenced without revoking.
    pub lying_fence: bool,
    /// Plant a bug: the shared disk acknowledges flushes without making
    /// anything durable (a crashed voter forgets the term it voted in).
    pub lying_flush: bool,
}

/// The quorum slot address of `node`.
pub fn slot_addr(node: NodeId) -> String {
    format!("10.0.0.{}:7200", node as u32 + 1)
}

/// A write that reached the disk, for the checkers.
#[derive(Clone, Copy, Debug)]
struct Write {
    rid: u64,
    node: NodeId,
    /// The server's term (0: a quorum block write).
    term: u64,
    time: u64,
    /// The greatest FENCE term on disk just before it.
    fence_max: u64,
}

/// What the harness and the nodes share.
struct Shared {
    meta: Rc<SimDisk>,
    fsid: u64,
    slots: u8,
    lying_fence: bool,
    /// rid -> the disk handles of that life.
    lives: RefCell<BTreeMap<u64, Vec<Rc<DiskHandle>>>>,
    /// rid -> when it was fenced.
    fenced: RefCell<BTreeMap<u64, u64>>,
    writes: RefCell<Vec<Write>>,
    now: Rc<dyn Fn() -> u64>,
    /// Checker findings made inside a member (at an ELECT write, at a
    /// fence request), reported by the next [`check`].
    violations: RefCell<Vec<(NodeId, String)>>,
    /// rid -> (term, time) of its latest ELECT write.
    elected: RefCell<BTreeMap<u64, (u64, u64)>>,
    /// (asking rid, fenced rid, asking term) of every predecessor fence.
    fences: RefCell<Vec<(u64, u64, u64)>>,
    /// Per node: since when it runs undisturbed (booted, unpaused, no
    /// link from it cut), and whether a link from it is cut now.
    calm_since: RefCell<[u64; 16]>,
    cut_out: RefCell<[bool; 16]>,
    /// (time, greatest persisted term on disk), sampled by [`check`].
    terms: RefCell<VecDeque<(u64, u64)>>,
    world: Weak<World>,
}

impl Shared {
    fn violation(&self, node: NodeId, what: String) {
        self.violations.borrow_mut().push((node, what));
    }

    /// `node` was just elected in `term`: was another member leading,
    /// reachable and undisturbed long enough that nobody should have
    /// voted for a successor?
    fn check_usurp(&self, node: NodeId, term: u64, now: u64) {
        let Some(w) = self.world.upgrade() else {
            return;
        };
        let Some(since) = now.checked_sub(CALM_NS) else {
            return;
        };
        // the greatest persisted term a calm period ago
        let Some(&(_, then_max)) = self.terms.borrow().iter().rev().find(|(t, _)| *t <= since)
        else {
            return;
        };
        for l in (0..self.slots).filter(|&l| l != node) {
            let Some(q) = w.software::<QNode>(l) else {
                continue;
            };
            let st = q.agent.status();
            let led_since = self.elected.borrow().get(&q.rid).copied();
            let calm = w.state(l) == NodeState::Up
                && !self.cut_out.borrow()[l as usize]
                && self.calm_since.borrow()[l as usize] <= since;
            if st.ended.is_none()
                && st.role == Role::Leader
                && st.term < term
                && st.server == ServerState::Up(st.term)
                && led_since.is_some_and(|(t, at)| t == st.term && at <= since)
                && calm
                && then_max <= st.term
            {
                self.violation(
                    node,
                    format!(
                        "node {node} elected in term {term} while node {l} led term {} \
                         undisturbed and heartbeating (a usurper)",
                        st.term
                    ),
                );
            }
        }
    }

    /// The greatest FENCE term on the durable disk.
    fn fence_max(&self) -> u64 {
        let snap = self.meta.snapshot();
        (0..self.slots as usize)
            .filter_map(|s| read_block(&snap, self.fsid, s).ok())
            .map(|b| b.events[QEvent::Fence as usize].term)
            .max()
            .unwrap_or(0)
    }
}

/// The meta disk as a member sees it: every successful write is logged.
struct RecDev {
    inner: Rc<DiskHandle>,
    shared: Rc<Shared>,
    rid: u64,
    node: NodeId,
}

impl RecDev {
    fn log(&self, term: u64) {
        let fence_max = if term != 0 {
            self.shared.fence_max()
        } else {
            0
        };
        self.shared.writes.borrow_mut().push(Write {
            rid: self.rid,
            node: self.node,
            term,
            time: (self.shared.now)(),
            fence_max,
        });
    }
}

impl BlockDev for RecDev {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.inner.read(off, buf)
    }
    fn write(&self, off: u64, buf: &[u8]) -> Result<(), IoError> {
        self.inner.write(off, buf)?;
        self.log(0);
        let blk = off >> SM_BLOCK_SHIFT;
        if (QUORUM_BLKNO..QUORUM_BLKNO + 15).contains(&blk) {
            let el = QuorumBlock::decode(buf).events[QEvent::Elect as usize];
            let prev = self.shared.elected.borrow().get(&self.rid).map(|e| e.0);
            if el.rid == self.rid && el.term != 0 && prev.is_none_or(|p| el.term > p) {
                let now = (self.shared.now)();
                self.shared
                    .elected
                    .borrow_mut()
                    .insert(self.rid, (el.term, now));
                self.shared.check_usurp(self.node, el.term, now);
            }
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), IoError> {
        self.inner.flush()
    }
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
}

/// The simulator's fence agent: after 5–300 ms, the target life loses
/// its disks (unless planted to lie).
struct SimFence {
    handle: Handle,
    entropy: Rc<dyn Entropy>,
    shared: Rc<Shared>,
    /// The life that asks (its rid and node).
    asker: u64,
    node: NodeId,
}

impl FenceAgent for SimFence {
    fn fence(&self, req: FenceRequest) -> LocalFut<'_, Result<(), FenceError>> {
        if req.reason == FenceReason::QuorumBlockLeader {
            self.check_predecessor(&req);
        }
        Box::pin(async move {
            let delay = (5 + self.entropy.next_u64() % 296) * MS;
            self.handle.sleep_ns(delay).await;
            if !self.shared.lying_fence {
                if let Some(hs) = self.shared.lives.borrow().get(&req.rid) {
                    for h in hs {
                        h.revoke();
                    }
                }
            }
            let now = (self.shared.now)();
            self.shared
                .fenced
                .borrow_mut()
                .entry(req.rid)
                .or_insert(now);
            Ok(())
        })
    }
}

impl SimFence {
    /// A predecessor must be a leader of a lower term, and no two lives
    /// fence each other.
    fn check_predecessor(&self, req: &FenceRequest) {
        let sh = &self.shared;
        let snap = sh.meta.snapshot();
        for s in 0..sh.slots as usize {
            let Ok(b) = read_block(&snap, sh.fsid, s) else {
                continue;
            };
            let el = b.events[QEvent::Elect as usize];
            if el.rid == req.rid && el.term >= req.term {
                sh.violation(
                    self.node,
                    format!(
                        "rid {:x} (term {}) fenced rid {:x}, the leader of term {}",
                        self.asker, req.term, req.rid, el.term
                    ),
                );
            }
        }
        // two leaders of one term fencing each other (bug (a) of issue
        // 13). Leadership bouncing between two lives under pauses and
        // partitions, each fencing the other's lower term, is safe (if
        // wasteful): the fence agent resolves it
        let mutual = sh
            .fences
            .borrow()
            .iter()
            .any(|&(a, t, term)| a == req.rid && t == self.asker && term == req.term);
        if mutual {
            sh.violation(
                self.node,
                format!("rids {:x} and {:x} fenced each other", self.asker, req.rid),
            );
        }
        sh.fences.borrow_mut().push((self.asker, req.rid, req.term));
    }
}

/// The stand-in server role.
struct FakeServer {
    handle: Handle,
    dev: Rc<RecDev>,
    entropy: Rc<dyn Entropy>,
    agent: RefCell<Option<QuorumAgent>>,
    task: RefCell<Option<JoinHandle<()>>>,
}

impl FakeServer {
    async fn serve(self: Rc<Self>, term: u64) {
        let agent = self.agent.borrow().clone();
        let Some(agent) = agent else { return };
        agent.server_up();
        let mut b = alloc::vec![0u8; 4096];
        loop {
            b[..8].copy_from_slice(&term.to_le_bytes());
            b[8..16].copy_from_slice(&self.dev.rid.to_le_bytes());
            let off = SERVER_BLKNO << 12;
            let r = self
                .dev
                .inner
                .write(off, &b)
                .and_then(|_| self.dev.inner.flush());
            match r {
                Ok(()) => self.dev.log(term),
                Err(_) => {
                    // fenced or dying: the server fails
                    agent.server_down();
                    return;
                }
            }
            let gap = (100 + self.entropy.next_u64() % 200) * MS;
            self.handle.sleep_ns(gap).await;
        }
    }
}

/// `start_server` needs `Rc<Self>`: the control is a thin wrapper.
struct Control(Rc<FakeServer>);

impl ServerControl for Control {
    fn start_server(&self, term: u64) {
        let me = self.0.clone();
        if let Ok(jh) = self.0.handle.spawn_named("fake_server", me.serve(term)) {
            if let Some(old) = self.0.task.borrow_mut().replace(jh) {
                old.abort();
            }
        }
    }

    fn stop_server(&self) {
        if let Some(t) = self.0.task.borrow_mut().take() {
            t.abort();
        }
        if let Some(a) = self.0.agent.borrow().clone() {
            a.server_down();
        }
    }
}

/// A member's software for one life.
pub struct QNode {
    pub rid: u64,
    pub agent: QuorumAgent,
    server: Rc<FakeServer>,
}

impl Software for QNode {
    fn teardown(&self) -> LocalFut<'static, ()> {
        self.agent.abandon();
        self.server.agent.borrow_mut().take();
        if let Some(t) = self.server.task.borrow_mut().take() {
            t.abort();
        }
        Box::pin(async {})
    }

    fn into_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }
}

/// Format the shared volume with `slots` quorum slots.
pub fn format_volume(meta: &SimDisk, data: &SimDisk, slots: u8) -> Result<u64, String> {
    let mut p = mkfs_params(meta.size(), data.size());
    p.qconf = QuorumConfig::default();
    for s in 0..slots {
        p.qconf.slots[s as usize] = InetAddr::ipv4([10, 0, 0, s + 1], 7200);
    }
    p.qconf.version = 1;
    let fsid = p.fsid;
    meta.with_offline(|m| {
        data.with_offline(|d| {
            crate::tools::mkfs::mkfs(m, d, &p)
                .map(|_| ())
                .map_err(|e| format!("mkfs: {e}"))
        })
    })?;
    Ok(fsid)
}

/// Boot `node` and start its agent. `Ok(None)`: it died on the way.
async fn boot(w: &Rc<World>, sh: &Rc<Shared>, node: NodeId) -> Result<Option<Rc<QNode>>, Failure> {
    let env = w.boot(node);
    let rid = env.entropy.next_u64() | 1;
    sh.lives.borrow_mut().insert(rid, env.disks.clone());
    let dev = Rc::new(RecDev {
        inner: env.disks[0].clone(),
        shared: sh.clone(),
        rid,
        node,
    });
    let server = Rc::new(FakeServer {
        handle: env.handle.clone(),
        dev: dev.clone(),
        entropy: Rc::new(SeededEntropy::new(env.entropy.next_u64())),
        agent: RefCell::new(None),
        task: RefCell::new(None),
    });
    let fence = Rc::new(SimFence {
        handle: env.handle.clone(),
        entropy: Rc::new(SeededEntropy::new(env.entropy.next_u64())),
        shared: sh.clone(),
        asker: rid,
        node,
    });
    sh.calm_since.borrow_mut()[node as usize] = w.now();
    let net = env.net.clone();
    let (handle, clock, entropy) = (env.handle.clone(), env.clock.clone(), env.entropy.clone());
    let srv = server.clone();
    let r = w
        .on(node, async move {
            let sb: SuperBlock = read_super_from(&*dev).map_err(|e| format!("super: {e:?}"))?;
            let sock: Rc<dyn Datagrams> = net
                .bind(&slot_addr(node))
                .map_err(|e| format!("bind: {e:?}"))?;
            let cfg = AgentConfig {
                slot: node,
                rid,
                hb_timeout_ns: SIM_HB_TIMEOUT_NS,
            };
            let agent = QuorumAgent::start(
                cfg,
                &sb,
                dev,
                sock,
                handle,
                clock,
                entropy,
                Rc::new(Control(srv.clone())),
                fence,
            )
            .map_err(|e| format!("agent: {e}"))?;
            *srv.agent.borrow_mut() = Some(agent.clone());
            Ok::<QuorumAgent, String>(agent)
        })
        .await;
    match r {
        Err(_) => Ok(None),
        // a fenced life may still be running when the harness restarts
        // it; an agent that cannot start on a revoked disk is not a bug
        Ok(Err(e)) if e.contains("Gone") || e.contains("device gone") => Ok(None),
        Ok(Err(e)) => Err(Failure {
            node,
            step: 0,
            time_ns: w.now(),
            what: e,
        }),
        Ok(Ok(agent)) => {
            let q = Rc::new(QNode { rid, agent, server });
            w.install(node, q.clone());
            Ok(Some(q))
        }
    }
}

/// The checkers' memory.
#[derive(Default)]
struct Seen {
    elect: BTreeMap<u64, (usize, u64)>,
    leaders: BTreeMap<u64, NodeId>,
    slot_term: BTreeMap<usize, u64>,
    writes_checked: usize,
    last_server_term: u64,
}

fn fail(w: &World, node: NodeId, step: u64, what: String) -> Failure {
    Failure {
        node,
        step,
        time_ns: w.now(),
        what,
    }
}

fn check(w: &World, sh: &Shared, seen: &mut Seen, step: u64) -> Result<(), Failure> {
    if let Some((n, what)) = sh.violations.borrow().first() {
        return Err(fail(w, *n, step, what.clone()));
    }
    let now = w.now();
    for n in 0..sh.slots {
        if let NodeState::Paused { until } = w.state(n) {
            let c = &mut sh.calm_since.borrow_mut()[n as usize];
            *c = (*c).max(until);
        }
    }
    let snap = sh.meta.snapshot();
    let max_term = (0..sh.slots as usize)
        .filter_map(|s| read_block(&snap, sh.fsid, s).ok())
        .map(|b| block_term(&b))
        .max()
        .unwrap_or(0);
    {
        let mut terms = sh.terms.borrow_mut();
        terms.push_back((now, max_term));
        while terms.len() > 2 && terms[1].0 + 2 * CALM_NS < now {
            terms.pop_front();
        }
    }
    for s in 0..sh.slots as usize {
        let Ok(b) = read_block(&snap, sh.fsid, s) else {
            return Err(fail(
                w,
                s as NodeId,
                step,
                format!("quorum block {s} unreadable"),
            ));
        };
        let t = block_term(&b);
        if t >= crate::sim::net::FORGED_TERM {
            return Err(fail(
                w,
                s as NodeId,
                step,
                format!("slot {s} took the forged term {t}"),
            ));
        }
        let prev = seen.slot_term.insert(s, t).unwrap_or(0);
        if t < prev {
            return Err(fail(
                w,
                s as NodeId,
                step,
                format!("slot {s} persisted term went from {prev} to {t}"),
            ));
        }
        let el = b.events[QEvent::Elect as usize];
        if el.term != 0 {
            if let Some(&(s2, rid2)) = seen.elect.get(&el.term) {
                if s2 != s {
                    return Err(fail(
                        w,
                        s as NodeId,
                        step,
                        format!(
                            "two ELECTs in term {}: slot {s2} (rid {rid2:x}) and slot {s} (rid {:x})",
                            el.term, el.rid
                        ),
                    ));
                }
            }
            seen.elect.insert(el.term, (s, el.rid));
        }
    }
    for n in 0..sh.slots {
        let Some(q) = w.software::<QNode>(n) else {
            continue;
        };
        let st = q.agent.status();
        if st.role == Role::Leader && st.ended.is_none() {
            if let Some(&other) = seen.leaders.get(&st.term) {
                if other != n {
                    return Err(fail(
                        w,
                        n,
                        step,
                        format!("nodes {other} and {n} both lead term {}", st.term),
                    ));
                }
            }
            seen.leaders.insert(st.term, n);
        }
    }
    let writes = sh.writes.borrow();
    let fenced = sh.fenced.borrow();
    for wr in &writes[seen.writes_checked..] {
        if let Some(&at) = fenced.get(&wr.rid) {
            if wr.time >= at {
                return Err(fail(
                    w,
                    wr.node,
                    step,
                    format!(
                        "rid {:x} wrote at {} after its fence at {at}",
                        wr.rid, wr.time
                    ),
                ));
            }
        }
        if wr.term != 0 {
            if wr.term < seen.last_server_term {
                return Err(fail(
                    w,
                    wr.node,
                    step,
                    format!(
                        "server write of term {} after one of term {}",
                        wr.term, seen.last_server_term
                    ),
                ));
            }
            if wr.term < wr.fence_max {
                return Err(fail(
                    w,
                    wr.node,
                    step,
                    format!(
                        "server write of term {} after FENCE of term {}",
                        wr.term, wr.fence_max
                    ),
                ));
            }
            seen.last_server_term = wr.term;
        }
    }
    seen.writes_checked = writes.len();
    Ok(())
}

/// A leader with its server up that a majority of members follow.
fn stable_leader(w: &World, sh: &Shared) -> Option<(NodeId, u64)> {
    let mut statuses = Vec::new();
    for n in 0..sh.slots {
        if let Some(q) = w.software::<QNode>(n) {
            let st = q.agent.status();
            if st.ended.is_none() {
                statuses.push((n, st));
            }
        }
    }
    let (ln, lt) = statuses.iter().find_map(|(n, st)| {
        (st.role == Role::Leader && st.server == ServerState::Up(st.term)).then_some((*n, st.term))
    })?;
    let following = statuses
        .iter()
        .filter(|(_, st)| st.term == lt && st.leader == Some(ln))
        .count();
    (following as u32 > sh.slots as u32 / 2).then_some((ln, lt))
}

/// Apply a fault, noting whom it disturbs (for the usurper checker).
async fn fault(w: &World, sh: &Shared, f: Fault) {
    let now = w.now();
    match &f {
        Fault::Cut { from, .. } => sh.cut_out.borrow_mut()[*from as usize] = true,
        Fault::HealAll => {
            let mut cut = sh.cut_out.borrow_mut();
            let mut calm = sh.calm_since.borrow_mut();
            for n in 0..16 {
                if cut[n] {
                    cut[n] = false;
                    calm[n] = calm[n].max(now);
                }
            }
        }
        Fault::Pause { node, ns } => {
            let c = &mut sh.calm_since.borrow_mut()[*node as usize];
            *c = (*c).max(now.saturating_add(*ns));
        }
        Fault::Crash { node, .. } => sh.calm_since.borrow_mut()[*node as usize] = now,
        _ => {}
    }
    w.fault(f).await
}

/// Restart every member that is down or whose agent ended (fenced).
async fn revive(w: &Rc<World>, sh: &Rc<Shared>) -> Result<(), Failure> {
    for n in 0..sh.slots {
        let ended = w.software::<QNode>(n).is_none_or(|q| q.agent.is_ended());
        if !w.is_down(n) && ended {
            fault(
                w,
                sh,
                Fault::Crash {
                    node: n,
                    loss: Loss::Any,
                },
            )
            .await;
            w.wait_down(n).await;
        }
        if w.is_down(n) {
            boot(w, sh, n).await?;
        }
    }
    Ok(())
}

/// Run the workload; `Ok(phases)`.
pub async fn run(w: Rc<World>, plan: QuorumPlan) -> Result<u64, Failure> {
    let rng = SeededEntropy::new(w.fork_seed(77));
    let r = |n: u64| rng.next_u64() % n.max(1);
    let meta = w.add_disk("quorum.meta", 8 << 30);
    let data = w.add_disk("quorum.data", 1 << 30);
    let fsid = format_volume(&meta, &data, plan.slots).map_err(|e| fail(&w, 0, 0, e))?;
    meta.set_lying_flush(plan.lying_flush);
    for n in 0..plan.slots {
        w.add_node(n);
        w.attach(n, meta.id());
    }
    let w2 = w.clone();
    let sh = Rc::new(Shared {
        meta,
        fsid,
        slots: plan.slots,
        lying_fence: plan.lying_fence,
        lives: RefCell::new(BTreeMap::new()),
        fenced: RefCell::new(BTreeMap::new()),
        writes: RefCell::new(Vec::new()),
        now: Rc::new(move || w2.now()),
        violations: RefCell::new(Vec::new()),
        elected: RefCell::new(BTreeMap::new()),
        fences: RefCell::new(Vec::new()),
        calm_since: RefCell::new([0; 16]),
        cut_out: RefCell::new([false; 16]),
        terms: RefCell::new(VecDeque::new()),
        world: Rc::downgrade(&w),
    });
    for n in 0..plan.slots {
        boot(&w, &sh, n).await?;
    }
    let mut seen = Seen::default();
    let mut elections = 0u64;
    for phase in 0..plan.phases {
        w.log(crate::sim::hash::WORLD, "quorum_phase", &[phase], "faults");
        // the fault phase: faults at random instants, checks every 50 ms
        let len = (3_000 + r(7_000)) * MS;
        let end = w.now() + len;
        let mut next_fault = w.now() + r(1_000) * MS;
        let mut reboot_at: BTreeMap<NodeId, u64> = BTreeMap::new();
        while w.now() < end {
            w.sleep(50 * MS).await;
            check(&w, &sh, &mut seen, phase)?;
            let now = w.now();
            for (n, at) in reboot_at.clone() {
                if now >= at && w.is_down(n) {
                    reboot_at.remove(&n);
                    boot(&w, &sh, n).await?;
                }
            }
            if now < next_fault {
                continue;
            }
            next_fault = now + (200 + r(2_500)) * MS;
            let leader = (0..plan.slots).find(|&n| {
                w.software::<QNode>(n)
                    .is_some_and(|q| q.agent.status().role == Role::Leader)
            });
            let victim = match (leader, r(3)) {
                (Some(l), 0) => l,
                _ => r(plan.slots as u64) as NodeId,
            };
            match r(6) {
                0 | 1 => {
                    // isolate the victim (both ways, or only its sends)
                    let one_way = r(3) == 0;
                    for o in 0..plan.slots {
                        if o != victim {
                            fault(
                                &w,
                                &sh,
                                Fault::Cut {
                                    from: victim,
                                    to: o,
                                },
                            )
                            .await;
                            if !one_way {
                                fault(
                                    &w,
                                    &sh,
                                    Fault::Cut {
                                        from: o,
                                        to: victim,
                                    },
                                )
                                .await;
                            }
                        }
                    }
                }
                2 => {
                    // split in two random halves
                    let mask = r(1 << plan.slots);
                    for a in 0..plan.slots {
                        for b in 0..plan.slots {
                            if (mask >> a) & 1 != (mask >> b) & 1 {
                                fault(&w, &sh, Fault::Cut { from: a, to: b }).await;
                            }
                        }
                    }
                }
                3 => {
                    if !w.is_down(victim) {
                        fault(
                            &w,
                            &sh,
                            Fault::Crash {
                                node: victim,
                                loss: Loss::Any,
                            },
                        )
                        .await;
                        reboot_at.insert(victim, w.now() + (300 + r(4_000)) * MS);
                    }
                }
                4 => {
                    if w.state(victim) == NodeState::Up {
                        fault(
                            &w,
                            &sh,
                            Fault::Pause {
                                node: victim,
                                ns: (200 + r(5_000)) * MS,
                            },
                        )
                        .await;
                    }
                }
                _ => fault(&w, &sh, Fault::HealAll).await,
            }
        }
        // heal: everything back, then a leader within the budget
        fault(&w, &sh, Fault::HealAll).await;
        w.log(crate::sim::hash::WORLD, "quorum_phase", &[phase], "heal");
        let healed = w.now();
        let deadline = healed + SIM_HB_TIMEOUT_NS + LIVENESS_SLACK_NS;
        loop {
            revive(&w, &sh).await?;
            check(&w, &sh, &mut seen, phase)?;
            if let Some((l, t)) = stable_leader(&w, &sh) {
                w.log(l, "quorum_leader", &[t, w.now() - healed], "");
                // a client finds the same leader in the quorum blocks
                let snap = sh.meta.snapshot();
                let found = read_super_from(&snap)
                    .ok()
                    .and_then(|sb| find_leader(&snap, &sb));
                let want = (l as usize, t, slot_addr(l));
                if found.as_ref().map(|f| (f.slot, f.term, f.addr.clone())) != Some(want.clone()) {
                    return Err(fail(
                        &w,
                        l,
                        phase,
                        format!("find_leader says {found:?}, the members say {want:?}"),
                    ));
                }
                elections += 1;
                break;
            }
            if w.now() >= deadline {
                let mut s = String::new();
                for n in 0..plan.slots {
                    if let Some(q) = w.software::<QNode>(n) {
                        s += &format!("\n    {}", q.agent.status()).replace('\n', "\n    ");
                    }
                }
                return Err(fail(
                    &w,
                    0,
                    phase,
                    format!(
                        "no stable leader {} ms after the heal{s}",
                        (w.now() - healed) / MS
                    ),
                ));
            }
            w.sleep(50 * MS).await;
        }
    }
    Ok(elections)
}
