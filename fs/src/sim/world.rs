//! The world: one virtual clock, one seed, the node table, the shared
//! disks, the network, and the discrete-event loop that runs them.
//!
//! Each node has its own [`Executor`] (its tasks run in its node context)
//! for as long as it is up; a crash drops the executor and every task of
//! the node. The *harness* (workloads and checkers) runs on one more
//! executor, as node [`HARNESS`]: it survives crashes, talks to nodes only
//! through [`World::on`] (run a future on a node, get `Err(NodeDown)` if
//! the node dies first) and changes the world through [`World::fault`].
//!
//! The loop ([`World::run`]): at the current instant, poll every runnable
//! executor that has work (nodes in id order, then the harness), then
//! apply the events due now (deliveries, faults, resumes) in the order
//! they were scheduled, and repeat until nothing moves; then jump the
//! clock to the earliest of the next event and the next timer of a
//! runnable executor. Nothing reads host time; all randomness comes from
//! the seed; maps are ordered; so a seed always gives the same event log
//! and the same hash ([`World::hash`]).

use crate::cluster::transport::LocalFut;
use crate::runtime::env::{Clock, Entropy, ManualClock, SeededEntropy, Timespec};
use crate::runtime::exec::{Executor, Handle, JoinHandle, Limits, Notify};
use crate::runtime::node::{NodeId, MAX_NODES};
use crate::runtime::trace;
use crate::sim::disk::{DiskHandle, DiskId, Power, SimDisk};
use crate::sim::fault::{CrashTrigger, Fault, Loss, PausePlan};
use crate::sim::faultdev::LossPolicy;
use crate::sim::hash::{EventLog, Observer, WORLD};
use crate::sim::net::{NetConfig, NetEvent, SimNet, SimTransport};
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::any::Any;
use core::cell::{Cell, RefCell};
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

/// The harness's node id (its counters and trace events go there).
pub const HARNESS: NodeId = (MAX_NODES - 1) as NodeId;
/// Simulated nodes one world holds (ids `0..MAX_SIM_NODES`).
pub const MAX_SIM_NODES: usize = MAX_NODES - 1;

/// Something scheduled at a virtual time.
pub(crate) enum Event {
    Net(NetEvent),
    Fault(Fault, Option<Notify>),
    PowerLost { node: NodeId, life: u32 },
    Resume { node: NodeId, life: u32 },
    NextPause,
}

/// What the world's parts share: the clock, the event queue and the log.
pub struct Core {
    clock: Rc<ManualClock>,
    queue: RefCell<BTreeMap<(u64, u64), Event>>,
    seq: Cell<u64>,
    log: RefCell<EventLog>,
}

impl Core {
    /// Virtual nanoseconds since the world began.
    pub fn now(&self) -> u64 {
        self.clock.monotonic_ns()
    }

    pub(crate) fn schedule(&self, at: u64, ev: Event) {
        let at = at.max(self.now());
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        self.queue.borrow_mut().insert((at, seq), ev);
    }

    fn pop_due(&self, now: u64) -> Option<Event> {
        let mut q = self.queue.borrow_mut();
        let key = *q.keys().next()?;
        if key.0 > now {
            return None;
        }
        q.remove(&key)
    }

    fn next_at(&self) -> Option<u64> {
        self.queue.borrow().keys().next().map(|k| k.0)
    }

    /// Record an event (node [`WORLD`] for the world itself).
    pub fn log(&self, node: u8, kind: &'static str, args: &[u64], text: &str) {
        let now = self.now();
        self.log.borrow_mut().record(now, node, kind, args, text);
    }
}

/// A node's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Never booted, crashed or stopped.
    Down,
    Up,
    /// Frozen until the given time.
    Paused {
        until: u64,
    },
}

/// What runs on a node besides its executor's tasks: the world asks it to
/// let go of its memory when the node dies (after its disks and network
/// are gone, so nothing it does then can reach the outside).
pub trait Software {
    /// Drop every task and reference cycle of this life.
    fn teardown(&self) -> LocalFut<'static, ()>;
    fn into_any(self: Rc<Self>) -> Rc<dyn Any>;
}

trait OpWake {
    fn node_gone(&self);
    fn done(&self) -> bool;
}

struct OpSlot<T> {
    value: RefCell<Option<T>>,
    finished: Cell<bool>,
    gone: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl<T> OpSlot<T> {
    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

impl<T> OpWake for OpSlot<T> {
    fn node_gone(&self) {
        self.gone.set(true);
        self.wake();
    }
    fn done(&self) -> bool {
        self.finished.get()
    }
}

/// The node died before the operation finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeDown;

/// An operation running on a node, awaited by the harness.
pub struct OpFuture<T> {
    slot: Option<Rc<OpSlot<T>>>,
    power: Option<Rc<Power>>,
}

impl<T> Future for OpFuture<T> {
    type Output = Result<T, NodeDown>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(slot) = &self.slot else {
            return Poll::Ready(Err(NodeDown));
        };
        // a result produced after the power went is an artefact of the
        // dying node (a failed write), not an answer
        if self.power.as_ref().is_some_and(|p| !p.is_on()) || slot.gone.get() {
            return Poll::Ready(Err(NodeDown));
        }
        if let Some(v) = slot.value.borrow_mut().take() {
            return Poll::Ready(Ok(v));
        }
        *slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// What a booted node gets to build its software from.
pub struct NodeEnv {
    pub node: NodeId,
    /// Boot count of this node (from 1).
    pub life: u32,
    pub handle: Handle,
    pub clock: Rc<dyn Clock>,
    /// Seeded per life.
    pub entropy: Rc<dyn Entropy>,
    pub net: Rc<SimTransport>,
    /// Handles of the attached disks, in attach order.
    pub disks: Vec<Rc<DiskHandle>>,
}

struct Slot {
    state: NodeState,
    life: u32,
    exec: Option<Rc<Executor>>,
    power: Option<Rc<Power>>,
    attached: Vec<DiskId>,
    handles: Vec<Rc<DiskHandle>>,
    software: Option<Rc<dyn Software>>,
    ops: Vec<(JoinHandle<()>, Rc<dyn OpWake>)>,
    changed: Notify,
    /// Loss policy of the next crash from an armed trigger.
    trigger_loss: Loss,
}

/// Bounds and tunables of a world.
#[derive(Clone, Copy, Debug)]
pub struct WorldConfig {
    pub seed: u64,
    pub net: NetConfig,
    pub exec_limits: Limits,
    /// Background pauses of live nodes (None: none).
    pub pauses: Option<PausePlan>,
    /// Rounds of polling at one instant before the world calls it a
    /// livelock.
    pub max_rounds_per_instant: u64,
    /// Polls of a dying node's executor for its teardown.
    pub teardown_rounds: usize,
    /// Every node's cluster key (set at each boot, for the fixed fsid of
    /// the simulator's volumes); `None`: unauthenticated.
    pub cluster_key: Option<[u8; 32]>,
}

impl WorldConfig {
    pub fn new(seed: u64) -> WorldConfig {
        WorldConfig {
            seed,
            net: NetConfig::default(),
            exec_limits: Limits::default(),
            pauses: None,
            max_rounds_per_instant: 100_000,
            teardown_rounds: 1000,
            cluster_key: None,
        }
    }
}

/// Why [`World::run`] gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// Nothing is ready, no event or timer is pending, and the harness has
    /// not finished.
    Deadlock { time_ns: u64 },
    /// Work kept appearing at one instant.
    Livelock { time_ns: u64 },
    /// The next event is past the time limit.
    TimeLimit { time_ns: u64 },
}

impl core::fmt::Display for Stall {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Stall::Deadlock { time_ns } => {
                write!(
                    f,
                    "deadlock at {time_ns} ns: nothing ready, nothing pending"
                )
            }
            Stall::Livelock { time_ns } => write!(f, "livelock at {time_ns} ns"),
            Stall::TimeLimit { time_ns } => write!(f, "time limit reached at {time_ns} ns"),
        }
    }
}

/// Totals of one world.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorldStats {
    pub instants: u64,
    pub polls: u64,
    pub events: u64,
    pub boots: u64,
    pub crashes: u64,
    pub pauses: u64,
    /// Teardowns that did not finish in `teardown_rounds` (memory leaked).
    pub teardowns_unfinished: u64,
    /// Software of dead nodes still alive when the world finished (a
    /// reference cycle kept its memory).
    pub software_leaked: u64,
}

/// The simulated world.
pub struct World {
    core: Rc<Core>,
    clock: Rc<ManualClock>,
    net: Rc<SimNet>,
    disks: RefCell<Vec<Rc<SimDisk>>>,
    slots: RefCell<BTreeMap<NodeId, Slot>>,
    harness: Executor,
    harness_tasks: RefCell<Vec<JoinHandle<()>>>,
    /// Software of dead lives, to count leaks at the end.
    dead_software: RefCell<Vec<alloc::rc::Weak<dyn Software>>>,
    rng: SeededEntropy,
    cfg: WorldConfig,
    stats: Cell<WorldStats>,
}

/// Seeds of the world's independent random streams.
fn fork(seed: u64, stream: u64) -> u64 {
    SeededEntropy::new(seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03)).next_u64()
}

impl World {
    pub fn new(cfg: WorldConfig) -> Rc<World> {
        // The trace ring is per thread: start this run's empty, stamped
        // with each node's virtual time.
        trace::clear();
        trace::set_time_source(trace::TimeSource::Executor);
        let clock = Rc::new(ManualClock::new(Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        }));
        let core = Rc::new(Core {
            clock: clock.clone(),
            queue: RefCell::new(BTreeMap::new()),
            seq: Cell::new(0),
            log: RefCell::new(EventLog::new()),
        });
        let net = Rc::new(SimNet::new(core.clone(), cfg.net, fork(cfg.seed, 1)));
        let harness = Executor::new(cfg.exec_limits);
        harness.set_node(HARNESS);
        let w = Rc::new(World {
            core,
            clock,
            net,
            disks: RefCell::new(Vec::new()),
            slots: RefCell::new(BTreeMap::new()),
            harness,
            harness_tasks: RefCell::new(Vec::new()),
            dead_software: RefCell::new(Vec::new()),
            rng: SeededEntropy::new(fork(cfg.seed, 2)),
            cfg,
            stats: Cell::new(WorldStats::default()),
        });
        w.core.log(WORLD, "world_start", &[cfg.seed], "");
        if cfg.pauses.is_some() {
            w.schedule_next_pause();
        }
        w
    }

    pub fn seed(&self) -> u64 {
        self.cfg.seed
    }

    pub fn core(&self) -> &Rc<Core> {
        &self.core
    }

    /// Virtual nanoseconds since the world began.
    pub fn now(&self) -> u64 {
        self.core.now()
    }

    pub fn clock(&self) -> Rc<ManualClock> {
        self.clock.clone()
    }

    pub fn net(&self) -> &Rc<SimNet> {
        &self.net
    }

    /// The hash of the event log so far.
    pub fn hash(&self) -> u64 {
        self.core.log.borrow().hash()
    }

    pub fn events(&self) -> u64 {
        self.core.log.borrow().count()
    }

    /// The newest events, formatted (for failure reports).
    pub fn recent_events(&self) -> Vec<alloc::string::String> {
        self.core
            .log
            .borrow()
            .recent()
            .map(|e| alloc::format!("{e}"))
            .collect()
    }

    /// Hand every later event to `o` (tracing).
    pub fn set_observer(&self, o: Option<Observer>) {
        self.core.log.borrow_mut().set_observer(o);
    }

    /// Record a harness event (workload operations, checks).
    pub fn log(&self, node: u8, kind: &'static str, args: &[u64], text: &str) {
        self.core.log(node, kind, args, text);
    }

    /// Keep every later event (the world's and the nodes' trace events)
    /// whose kind starts with one of `prefixes`, for a checker.
    pub fn keep_events(&self, prefixes: &[&'static str]) {
        self.core.log.borrow_mut().keep(prefixes);
    }

    /// The events kept by [`World::keep_events`], oldest first.
    pub fn kept_events(&self) -> Vec<crate::sim::hash::Event> {
        self.core.log.borrow().kept().to_vec()
    }

    pub fn stats(&self) -> WorldStats {
        self.stats.get()
    }

    fn bump(&self, f: impl FnOnce(&mut WorldStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// A value from the world's random stream (faults, loss policies).
    pub fn random(&self) -> u64 {
        self.rng.next_u64()
    }

    /// An independent seed for a named stream (a workload's own).
    pub fn fork_seed(&self, stream: u64) -> u64 {
        fork(self.cfg.seed, 1000 + stream)
    }

    // ---- nodes and disks ----

    /// Add node `node` (down until booted).
    ///
    /// # Panics
    /// If the id is out of range or taken (a harness bug).
    pub fn add_node(&self, node: NodeId) {
        assert!((node as usize) < MAX_SIM_NODES, "node id {node} too large");
        let mut slots = self.slots.borrow_mut();
        assert!(!slots.contains_key(&node), "node {node} added twice");
        slots.insert(
            node,
            Slot {
                state: NodeState::Down,
                life: 0,
                exec: None,
                power: None,
                attached: Vec::new(),
                handles: Vec::new(),
                software: None,
                ops: Vec::new(),
                changed: Notify::new(),
                trigger_loss: Loss::Any,
            },
        );
    }

    pub fn nodes(&self) -> Vec<NodeId> {
        self.slots.borrow().keys().copied().collect()
    }

    pub fn add_disk(&self, name: &str, size: u64) -> Rc<SimDisk> {
        let mut disks = self.disks.borrow_mut();
        let d = Rc::new(SimDisk::new(disks.len(), name, size, self.core.clone()));
        disks.push(d.clone());
        d
    }

    pub fn disk(&self, id: DiskId) -> Rc<SimDisk> {
        self.disks.borrow()[id].clone()
    }

    /// Give `node` a handle on `disk` from its next boot on.
    pub fn attach(&self, node: NodeId, disk: DiskId) {
        let mut slots = self.slots.borrow_mut();
        let s = slots.get_mut(&node).expect("attach to an unknown node");
        s.attached.push(disk);
    }

    pub fn state(&self, node: NodeId) -> NodeState {
        self.slots
            .borrow()
            .get(&node)
            .map_or(NodeState::Down, |s| s.state)
    }

    pub fn is_down(&self, node: NodeId) -> bool {
        self.state(node) == NodeState::Down
    }

    /// The node's boot count.
    pub fn life(&self, node: NodeId) -> u32 {
        self.slots.borrow().get(&node).map_or(0, |s| s.life)
    }

    /// Boot a down node: a fresh executor, fresh disk handles (empty write
    /// caches), its network back. The caller builds the software on the
    /// returned environment (usually with [`World::on`]) and installs it.
    ///
    /// # Panics
    /// If the node is unknown or not down (a harness bug).
    pub fn boot(&self, node: NodeId) -> NodeEnv {
        let mut slots = self.slots.borrow_mut();
        let s = slots.get_mut(&node).expect("boot of an unknown node");
        assert_eq!(s.state, NodeState::Down, "boot of a live node {node}");
        s.life += 1;
        let exec = Rc::new(Executor::new(self.cfg.exec_limits));
        exec.set_node(node);
        let power = Rc::new(Power::new(node, s.life, self.core.clone()));
        let disks = self.disks.borrow();
        s.handles = s
            .attached
            .iter()
            .map(|&d| Rc::new(DiskHandle::new(disks[d].clone(), power.clone())))
            .collect();
        self.net.node_up(node);
        let net = Rc::new(SimTransport::new(self.net.clone(), node, exec.handle()));
        let entropy: Rc<dyn Entropy> = Rc::new(SeededEntropy::new(self.rng.next_u64()));
        {
            // this life's key and nonce seed (none: the node runs keyless;
            // keyless worlds draw nothing, so their seeds replay as before)
            let _g = crate::runtime::node::enter(node);
            let fsid = crate::sim::fsnode::mkfs_params(0, 0).fsid;
            let mut seed = [0u8; 32];
            if self.cfg.cluster_key.is_some() {
                for c in seed.chunks_exact_mut(8) {
                    c.copy_from_slice(&self.rng.next_u64().to_le_bytes());
                }
            }
            let key = self.cfg.cluster_key.map(crate::cluster::auth::ClusterKey);
            crate::cluster::auth::configure(key.as_ref(), fsid, seed);
        }
        s.state = NodeState::Up;
        s.exec = Some(exec.clone());
        s.power = Some(power);
        s.trigger_loss = Loss::Any;
        s.changed.notify();
        let env = NodeEnv {
            node,
            life: s.life,
            handle: exec.handle(),
            clock: self.clock.clone(),
            entropy,
            net,
            disks: s.handles.clone(),
        };
        drop(disks);
        drop(slots);
        self.core.log(node, "boot", &[env.life as u64], "");
        self.bump(|st| st.boots += 1);
        env
    }

    /// Install the node's software (torn down when the node dies).
    pub fn install(&self, node: NodeId, sw: Rc<dyn Software>) {
        if let Some(s) = self.slots.borrow_mut().get_mut(&node) {
            if s.state != NodeState::Down {
                s.software = Some(sw);
            }
        }
    }

    /// The node's software, if it is up and of type `T`.
    pub fn software<T: 'static>(&self, node: NodeId) -> Option<Rc<T>> {
        let sw = self.slots.borrow().get(&node)?.software.clone()?;
        sw.into_any().downcast::<T>().ok()
    }

    /// Run `fut` on `node`'s executor. The result is `Err(NodeDown)` if
    /// the node is down, or dies (or loses power) before `fut` finishes.
    pub fn on<T: 'static>(
        &self,
        node: NodeId,
        fut: impl Future<Output = T> + 'static,
    ) -> OpFuture<T> {
        let mut slots = self.slots.borrow_mut();
        let Some(s) = slots.get_mut(&node) else {
            return OpFuture {
                slot: None,
                power: None,
            };
        };
        let (Some(exec), false) = (s.exec.clone(), s.state == NodeState::Down) else {
            return OpFuture {
                slot: None,
                power: None,
            };
        };
        let slot = Rc::new(OpSlot {
            value: RefCell::new(None),
            finished: Cell::new(false),
            gone: Cell::new(false),
            waker: RefCell::new(None),
        });
        let o = slot.clone();
        let jh = exec.spawn(async move {
            let v = fut.await;
            *o.value.borrow_mut() = Some(v);
            o.finished.set(true);
            o.wake();
        });
        s.ops.retain(|(_, w)| !w.done());
        match jh {
            Ok(jh) => {
                s.ops.push((jh, slot.clone()));
                OpFuture {
                    slot: Some(slot),
                    power: s.power.clone(),
                }
            }
            Err(_) => {
                drop(slots);
                self.core.log(node, "op_spawn_refused", &[], "");
                OpFuture {
                    slot: None,
                    power: None,
                }
            }
        }
    }

    /// Spawn a harness task (a workload on one node, a checker).
    pub fn spawn<T: 'static>(&self, fut: impl Future<Output = T> + 'static) -> OpFuture<T> {
        let slot = Rc::new(OpSlot {
            value: RefCell::new(None),
            finished: Cell::new(false),
            gone: Cell::new(false),
            waker: RefCell::new(None),
        });
        let o = slot.clone();
        match self.harness.spawn(async move {
            let v = fut.await;
            *o.value.borrow_mut() = Some(v);
            o.finished.set(true);
            o.wake();
        }) {
            Ok(jh) => {
                self.harness_tasks.borrow_mut().push(jh);
                OpFuture {
                    slot: Some(slot),
                    power: None,
                }
            }
            Err(_) => OpFuture {
                slot: None,
                power: None,
            },
        }
    }

    /// Sleep in virtual time (harness tasks only).
    pub async fn sleep(&self, ns: u64) {
        self.harness.handle().sleep_ns(ns).await
    }

    /// Apply `f` at the current instant; completes once it is applied.
    pub fn fault(&self, f: Fault) -> impl Future<Output = ()> {
        let done = Notify::new();
        let wait = done.notified();
        self.core.schedule(self.now(), Event::Fault(f, Some(done)));
        wait
    }

    /// Apply `f` at virtual time `at`.
    pub fn schedule_fault(&self, at: u64, f: Fault) {
        self.core.schedule(at, Event::Fault(f, None));
    }

    /// Arm a crash of `node`'s current life; its unflushed writes then go
    /// by `loss`.
    pub fn arm_crash(&self, node: NodeId, trigger: CrashTrigger, loss: Loss) {
        let mut slots = self.slots.borrow_mut();
        let Some(s) = slots.get_mut(&node) else {
            return;
        };
        let Some(power) = s.power.clone() else {
            return;
        };
        s.trigger_loss = loss;
        let life = s.life;
        drop(slots);
        match trigger {
            CrashTrigger::AfterWrites(n) => power.crash_after_writes(n),
            CrashTrigger::At(t) => self.core.schedule(t, Event::PowerLost { node, life }),
        }
        self.core.log(
            node,
            "crash_armed",
            &[
                life as u64,
                match trigger {
                    CrashTrigger::AfterWrites(n) => n,
                    CrashTrigger::At(t) => t,
                },
                matches!(trigger, CrashTrigger::At(_)) as u64,
            ],
            "",
        );
    }

    /// Disarm a crash armed after writes (a time trigger stays).
    pub fn disarm_crash(&self, node: NodeId) {
        if let Some(p) = self.slots.borrow().get(&node).and_then(|s| s.power.clone()) {
            p.disarm();
        }
    }

    /// Wait until `node` is down (a crash has been fully applied).
    pub async fn wait_down(&self, node: NodeId) {
        loop {
            let changed = match self.slots.borrow().get(&node) {
                Some(s) if s.state != NodeState::Down => s.changed.notified(),
                _ => return,
            };
            changed.await;
        }
    }

    // ---- applying events ----

    fn apply(&self, ev: Event) {
        self.bump(|s| s.events += 1);
        match ev {
            Event::Net(e) => self.net.handle(e),
            Event::Fault(f, done) => {
                self.apply_fault(&f);
                if let Some(d) = done {
                    d.notify();
                }
            }
            Event::PowerLost { node, life } => {
                let (live, loss) = match self.slots.borrow().get(&node) {
                    Some(s) => (s.life == life && s.state != NodeState::Down, s.trigger_loss),
                    None => (false, Loss::Any),
                };
                if live {
                    self.kill(node, loss, true);
                }
            }
            Event::Resume { node, life } => {
                let mut slots = self.slots.borrow_mut();
                if let Some(s) = slots.get_mut(&node) {
                    if s.life == life && matches!(s.state, NodeState::Paused { .. }) {
                        s.state = NodeState::Up;
                        s.changed.notify();
                        drop(slots);
                        self.core.log(node, "resume", &[], "");
                    }
                }
            }
            Event::NextPause => self.random_pause(),
        }
    }

    fn apply_fault(&self, f: &Fault) {
        match *f {
            Fault::Crash { node, loss } => {
                if !self.is_down(node) {
                    self.kill(node, loss, true);
                }
            }
            Fault::Stop { node } => {
                if !self.is_down(node) {
                    self.kill(node, Loss::KeepAll, false);
                }
            }
            Fault::Pause { node, ns } => self.pause(node, ns),
            Fault::Cut { from, to } => self.net.cut(from, to),
            Fault::Heal { from, to } => self.net.heal(from, to),
            Fault::HealAll => self.net.heal_all(),
            Fault::ResetStreams { node } => {
                self.core.log(node, "reset_streams", &[], "");
                self.net.reset_node(node);
            }
        }
    }

    fn pause(&self, node: NodeId, ns: u64) {
        let mut slots = self.slots.borrow_mut();
        let Some(s) = slots.get_mut(&node) else {
            return;
        };
        if s.state != NodeState::Up {
            return;
        }
        let until = self.now() + ns.max(1);
        s.state = NodeState::Paused { until };
        let life = s.life;
        s.changed.notify();
        drop(slots);
        self.core.schedule(until, Event::Resume { node, life });
        self.core.log(node, "pause", &[ns], "");
        self.bump(|st| st.pauses += 1);
    }

    fn schedule_next_pause(&self) {
        if let Some(p) = self.cfg.pauses {
            let gap = 1 + self.rng.next_u64() % (2 * p.mean_gap_ns.max(1));
            self.core.schedule(self.now() + gap, Event::NextPause);
        }
    }

    fn random_pause(&self) {
        let Some(p) = self.cfg.pauses else {
            return;
        };
        let up: Vec<NodeId> = self
            .slots
            .borrow()
            .iter()
            .filter(|(_, s)| s.state == NodeState::Up)
            .map(|(n, _)| *n)
            .collect();
        if !up.is_empty() {
            let node = up[(self.rng.next_u64() % up.len() as u64) as usize];
            let ns = 1 + self.rng.next_u64() % p.max_ns.max(1);
            self.pause(node, ns);
        }
        self.schedule_next_pause();
    }

    fn loss_policy(&self, loss: Loss) -> LossPolicy {
        let loss = match loss {
            Loss::Any => match self.rng.next_u64() % 4 {
                0 => Loss::LoseAll,
                1 => Loss::KeepAll,
                _ => Loss::Random { tear: true },
            },
            l => l,
        };
        match loss {
            Loss::LoseAll => LossPolicy::LoseAll,
            Loss::KeepAll | Loss::Any => LossPolicy::KeepAll,
            Loss::Random { tear } => LossPolicy::Random {
                seed: self.rng.next_u64(),
                tear,
            },
        }
    }

    /// The node dies: power off (unflushed writes by `loss`), network
    /// gone, operations in flight fail, memory dropped.
    fn kill(&self, node: NodeId, loss: Loss, crash: bool) {
        let (exec, power, handles, sw, ops, changed) = {
            let mut slots = self.slots.borrow_mut();
            let s = slots.get_mut(&node).expect("kill of an unknown node");
            s.state = NodeState::Down;
            (
                s.exec.take(),
                s.power.take(),
                core::mem::take(&mut s.handles),
                s.software.take(),
                core::mem::take(&mut s.ops),
                s.changed.clone(),
            )
        };
        self.core
            .log(node, if crash { "crash" } else { "stop" }, &[], "");
        if crash {
            self.bump(|st| st.crashes += 1);
        }
        if let Some(p) = &power {
            p.cut();
        }
        for h in &handles {
            let policy = self.loss_policy(loss);
            h.power_cut(policy);
        }
        self.net.node_down(node);
        for (jh, w) in ops {
            jh.abort();
            w.node_gone();
        }
        let weak_sw = sw.as_ref().map(Rc::downgrade);
        if let Some(exec) = exec {
            if let Some(sw) = sw {
                let _ = exec.spawn(sw.teardown());
            }
            let now = self.now();
            let mut finished = false;
            for _ in 0..self.cfg.teardown_rounds {
                exec.run_until_stalled(now);
                if !exec.has_ready() {
                    finished = true;
                    break;
                }
            }
            if !finished {
                self.bump(|st| st.teardowns_unfinished += 1);
            }
        }
        drop(handles);
        drop(power);
        if let Some(w) = weak_sw {
            self.dead_software.borrow_mut().push(w);
        }
        changed.notify();
    }

    // ---- the loop ----

    fn runnable(&self) -> Vec<Rc<Executor>> {
        self.slots
            .borrow()
            .values()
            .filter(|s| s.state == NodeState::Up)
            .filter_map(|s| s.exec.clone())
            .collect()
    }

    /// Poll and apply everything due at the current instant.
    /// Fold the trace events the filesystem emitted (each with its node
    /// and its executor's virtual time) into the run's log, so the hash
    /// covers what happened inside the nodes too, not only the world's
    /// own events. Folded after every executor run, before the per-thread
    /// ring could wrap.
    fn fold_fs_trace(&self) {
        let events = trace::take();
        if events.is_empty() {
            return;
        }
        let mut log = self.core.log.borrow_mut();
        for e in events {
            let n = e.point.fields.len().min(trace::MAX_ARGS);
            log.record(e.time_ns, e.node, e.point.name, &e.args[..n], "");
        }
    }

    fn settle(&self) -> Result<(), Stall> {
        let now = self.now();
        let mut rounds = 0u64;
        loop {
            let mut work = 0u64;
            let due =
                |e: &Executor| e.has_ready() || e.next_deadline_ns().is_some_and(|d| d <= now);
            for exec in self.runnable() {
                if due(&exec) {
                    let r = exec.run_until_stalled(now);
                    work += (r.polls + r.timers_fired) as u64;
                    self.fold_fs_trace();
                }
            }
            if due(&self.harness) {
                let r = self.harness.run_until_stalled(now);
                work += (r.polls + r.timers_fired) as u64;
                self.fold_fs_trace();
            }
            self.bump(|s| s.polls += work);
            while let Some(ev) = self.core.pop_due(now) {
                self.apply(ev);
                work += 1;
            }
            if work == 0 {
                return Ok(());
            }
            rounds += 1;
            if rounds > self.cfg.max_rounds_per_instant {
                return Err(Stall::Livelock { time_ns: now });
            }
        }
    }

    fn next_time(&self) -> Option<u64> {
        let mut next = self.core.next_at();
        let mut consider = |t: Option<u64>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for exec in self.runnable() {
            consider(exec.next_deadline_ns());
        }
        consider(self.harness.next_deadline_ns());
        next
    }

    /// Run the world until `main` (a harness future) finishes, or the
    /// world stalls, or virtual time would pass `limit_ns`.
    pub fn run<T: 'static>(
        &self,
        main: impl Future<Output = T> + 'static,
        limit_ns: u64,
    ) -> Result<T, Stall> {
        let mut main = self.spawn(main);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        loop {
            self.settle()?;
            if let Poll::Ready(r) = Pin::new(&mut main).poll(&mut cx) {
                return r.map_err(|_| Stall::Deadlock {
                    time_ns: self.now(),
                });
            }
            let Some(next) = self.next_time() else {
                return Err(Stall::Deadlock {
                    time_ns: self.now(),
                });
            };
            if next > limit_ns {
                return Err(Stall::TimeLimit {
                    time_ns: self.now(),
                });
            }
            if next > self.now() {
                self.clock.set_ns(next);
                self.bump(|s| s.instants += 1);
            }
        }
    }

    /// End the world: every node stops (unflushed writes kept), every
    /// harness task is dropped, so no reference cycle outlives it.
    pub fn finish(&self) {
        for node in self.nodes() {
            if !self.is_down(node) {
                self.kill(node, Loss::KeepAll, false);
            }
        }
        for t in self.harness_tasks.borrow_mut().drain(..) {
            t.abort();
        }
        self.core.queue.borrow_mut().clear();
        let leaked = self
            .dead_software
            .borrow_mut()
            .drain(..)
            .filter(|w| w.upgrade().is_some())
            .count() as u64;
        self.bump(|st| st.software_leaked += leaked);
    }
}
