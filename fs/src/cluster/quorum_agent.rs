//! The quorum agent: runs the election machine ([`super::quorum`]) on the
//! node's executor over a datagram socket and the meta device, fences a
//! new leader's predecessors, and tells the node when to start and stop
//! its server.
//!
//! The node gives [`QuorumAgent::start`] its [`ServerControl`]: the agent
//! calls `start_server(term)` once this node leads `term` and every
//! earlier leader is fenced, and `stop_server()` when it must stop; the
//! node answers with [`QuorumAgent::server_up`] / [`QuorumAgent::server_down`].
//! A quorum-block I/O error ends the agent (the node's server is stopped
//! and it no longer takes part: a fenced node cannot write).

use crate::cluster::auth::{self, QuorumAuth};
use crate::cluster::fence::{
    FenceAgent, FenceReason, FenceRegistry, FenceRequest, PREDECESSOR_FENCE_TIMEOUT_NS,
};
use crate::cluster::quorum::{
    Dest, Effect, Input, Params, Quorum, Role, ServerState, HB_TIMEOUT_MAX_NS, HB_TIMEOUT_MIN_NS,
    MAX_SLOTS,
};
use crate::cluster::quorum_blocks::{self, fence_candidates, QEvent, QbError, SlotWriter};
use crate::cluster::quorum_wire::QuorumMsg;
use crate::cluster::transport::{Datagrams, LocalFut, NetError};
use crate::counter;
use crate::format::super_block::SuperBlock;
use crate::runtime::env::{Clock, Entropy};
use crate::runtime::exec::{Handle, JoinHandle, Notified, Notify};
use crate::storage::dev::BlockDev;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

/// What the node does for the agent.
pub trait ServerControl {
    /// This node leads `term` and its predecessors are fenced: start the
    /// server role, then call [`QuorumAgent::server_up`] (or
    /// [`QuorumAgent::server_down`] if it fails).
    fn start_server(&self, term: u64);
    /// Stop the server role, then call [`QuorumAgent::server_down`].
    fn stop_server(&self);
}

/// How the agent is configured.
#[derive(Clone, Copy, Debug)]
pub struct AgentConfig {
    /// Our quorum slot (configured in the super block).
    pub slot: u8,
    /// The mount's rid: what the quorum blocks record and fencing targets.
    pub rid: u64,
    /// Heartbeat timeout, 2–60 s (default 10 s).
    pub hb_timeout_ns: u64,
}

/// A snapshot for the shell's `quorum` command.
#[derive(Clone, Debug)]
pub struct QuorumStatus {
    pub slot: u8,
    pub rid: u64,
    pub role: Role,
    pub term: u64,
    pub leader: Option<u8>,
    pub server: ServerState,
    pub hb_timeout_ns: u64,
    /// (slot, address, ns since we last heard it, or None).
    pub slots: Vec<(u8, String, Option<u64>)>,
    /// Fence requests of the current server start: (rid, state).
    pub fences: Vec<(u64, String)>,
    /// Why the agent ended, if it did.
    pub ended: Option<String>,
}

impl core::fmt::Display for QuorumStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        writeln!(
            f,
            "slot {} rid {:016x} {} term {} leader {} server {:?} heartbeat timeout {} ms",
            self.slot,
            self.rid,
            self.role.name(),
            self.term,
            self.leader.map_or("none".into(), |l| format!("{l}")),
            self.server,
            self.hb_timeout_ns / 1_000_000
        )?;
        for (s, a, h) in &self.slots {
            match h {
                Some(ns) => writeln!(f, "  slot {s} {a} last heard {} ms ago", ns / 1_000_000)?,
                None => writeln!(f, "  slot {s} {a} never heard")?,
            }
        }
        for (rid, st) in &self.fences {
            writeln!(f, "  fence {rid:016x} {st}")?;
        }
        if let Some(e) = &self.ended {
            writeln!(f, "  agent ended: {e}")?;
        }
        Ok(())
    }
}

/// Why the agent could not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentError {
    /// Our slot is not in the super block's quorum config.
    NotASlot(u8),
    BadTimeout(u64),
    Blocks(QbError),
    /// The executor refused the agent's task.
    Spawn,
}

impl core::fmt::Display for AgentError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AgentError::NotASlot(s) => {
                write!(f, "quorum slot {s} is not configured on this volume")
            }
            AgentError::BadTimeout(ns) => write!(
                f,
                "quorum heartbeat timeout {} ms is outside {}..={} ms",
                ns / 1_000_000,
                HB_TIMEOUT_MIN_NS / 1_000_000,
                HB_TIMEOUT_MAX_NS / 1_000_000
            ),
            AgentError::Blocks(e) => write!(f, "{e}"),
            AgentError::Spawn => f.write_str("cannot spawn the quorum task"),
        }
    }
}

struct Inner {
    cfg: AgentConfig,
    fsid: u64,
    mask: u16,
    addrs: Vec<(u8, String)>,
    handle: Handle,
    clock: Rc<dyn Clock>,
    dev: Rc<dyn BlockDev>,
    sock: Rc<dyn Datagrams>,
    control: Rc<dyn ServerControl>,
    fencer: Rc<dyn FenceAgent>,
    machine: RefCell<Quorum>,
    writer: RefCell<SlotWriter>,
    inputs: RefCell<VecDeque<Input>>,
    kick: Notify,
    /// The fencing-then-start task of the current server start.
    starting: RefCell<Option<JoinHandle<()>>>,
    registry: RefCell<Option<Rc<FenceRegistry>>>,
    /// `start_server` was called and `server_down` not yet.
    node_started: Cell<bool>,
    ended: RefCell<Option<String>>,
    done: Notify,
    task: RefCell<Option<JoinHandle<()>>>,
    /// With a cluster key: datagram tags and the replay window.
    auth: RefCell<Option<QuorumAuth>>,
}

/// The running agent (cheap to clone).
#[derive(Clone)]
pub struct QuorumAgent {
    inner: Rc<Inner>,
}

impl QuorumAgent {
    /// Start the agent of slot `cfg.slot`: read every slot's block (the
    /// greatest term), write BEGIN, and spawn the election loop on
    /// `handle`. `sock` must be bound at our slot's address.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: AgentConfig,
        sb: &SuperBlock,
        dev: Rc<dyn BlockDev>,
        sock: Rc<dyn Datagrams>,
        handle: Handle,
        clock: Rc<dyn Clock>,
        entropy: Rc<dyn Entropy>,
        control: Rc<dyn ServerControl>,
        fencer: Rc<dyn FenceAgent>,
    ) -> Result<QuorumAgent, AgentError> {
        let mut mask = 0u16;
        let mut addrs = Vec::new();
        for (s, a) in sb.qconf.configured() {
            if s < MAX_SLOTS {
                mask |= 1 << s;
                addrs.push((s as u8, format!("{a}")));
            }
        }
        if cfg.slot as usize >= MAX_SLOTS || mask & (1 << cfg.slot) == 0 {
            return Err(AgentError::NotASlot(cfg.slot));
        }
        if !(HB_TIMEOUT_MIN_NS..=HB_TIMEOUT_MAX_NS).contains(&cfg.hb_timeout_ns) {
            return Err(AgentError::BadTimeout(cfg.hb_timeout_ns));
        }
        let fsid = sb.hdr.fsid;
        let blocks = quorum_blocks::read_all(&*dev, fsid, &sb.qconf);
        if let Some((_, Err(e))) = blocks.iter().find(|(s, _)| *s == cfg.slot as usize) {
            return Err(AgentError::Blocks(e.clone()));
        }
        let ok = || blocks.iter().filter_map(|(_, b)| b.as_ref().ok());
        let start_term = ok().map(quorum_blocks::block_term).max().unwrap_or(0);
        // the leader the blocks show (the greatest ELECT not stopped) of
        // another slot: ours is an earlier life of this node, gone
        let active = blocks
            .iter()
            .filter(|(s, _)| *s != cfg.slot as usize)
            .filter_map(|(s, b)| b.as_ref().ok().map(|b| (*s, b)))
            .map(|(s, b)| (s, b.events[QEvent::Elect as usize].term, b))
            .filter(|(_, el, b)| *el > b.events[QEvent::Stop as usize].term)
            .max_by_key(|(_, el, _)| *el)
            .map(|(s, _, _)| s as u8);
        let p = Params {
            slot: cfg.slot,
            slots: mask,
            hb_timeout_ns: cfg.hb_timeout_ns,
        };
        let (machine, fx) = Quorum::new(p, start_term, active, handle.now_ns(), entropy);
        let mut writer = SlotWriter::new(fsid, cfg.slot as usize, cfg.rid);
        for e in fx {
            if let Effect::Write(evs) = e {
                writer
                    .write(&*dev, &evs, clock.wall())
                    .map_err(AgentError::Blocks)?;
            }
        }
        // the counter starts at the wall clock so that a restarted node
        // sends above what it sent before
        let wall = clock.wall();
        let auth = auth::quorum(wall.sec.saturating_mul(1_000_000_000) + u64::from(wall.nsec));
        let inner = Rc::new(Inner {
            auth: RefCell::new(auth),
            cfg,
            fsid,
            mask,
            addrs,
            handle: handle.clone(),
            clock,
            dev,
            sock,
            control,
            fencer,
            machine: RefCell::new(machine),
            writer: RefCell::new(writer),
            inputs: RefCell::new(VecDeque::new()),
            kick: Notify::new(),
            starting: RefCell::new(None),
            registry: RefCell::new(None),
            node_started: Cell::new(false),
            ended: RefCell::new(None),
            done: Notify::new(),
            task: RefCell::new(None),
        });
        let me = inner.clone();
        let jh = handle
            .spawn_named("quorum", async move { me.run().await })
            .map_err(|_| AgentError::Spawn)?;
        *inner.task.borrow_mut() = Some(jh);
        counter!("quorum.agents_started").inc();
        Ok(QuorumAgent { inner })
    }

    /// The node's server came up (after `start_server`).
    pub fn server_up(&self) {
        self.inner.push(Input::ServerUp);
    }

    /// The node's server went down (stopped, failed to start, or failed).
    pub fn server_down(&self) {
        self.inner.node_started.set(false);
        self.inner.push(Input::ServerDown);
    }

    /// Change the heartbeat timeout at runtime (clamped to 2–60 s).
    pub fn set_hb_timeout(&self, ns: u64) {
        self.inner.machine.borrow_mut().set_hb_timeout(ns);
    }

    /// Stop the server if it runs, resign, write END, and end the agent.
    pub async fn shutdown(&self) {
        self.inner.push(Input::Shutdown);
        loop {
            let done = self.inner.done.notified();
            if self.inner.ended.borrow().is_some() {
                return;
            }
            done.await;
        }
    }

    /// Drop the loop and any fencing without writing anything (the node
    /// died).
    pub fn abandon(&self) {
        if let Some(t) = self.inner.task.borrow_mut().take() {
            t.abort();
        }
        self.inner.cancel_start();
    }

    pub fn is_ended(&self) -> bool {
        self.inner.ended.borrow().is_some()
    }

    /// The state for the shell's `quorum` command.
    pub fn status(&self) -> QuorumStatus {
        let i = &self.inner;
        let m = i.machine.borrow();
        let now = i.handle.now_ns();
        QuorumStatus {
            slot: i.cfg.slot,
            rid: i.cfg.rid,
            role: m.role(),
            term: m.term(),
            leader: m.leader(),
            server: m.server(),
            hb_timeout_ns: m.hb_timeout_ns(),
            slots: i
                .addrs
                .iter()
                .map(|(s, a)| {
                    let h = m.heard(*s as usize).map(|t| now.saturating_sub(t));
                    (*s, a.clone(), h)
                })
                .collect(),
            fences: i
                .registry
                .borrow()
                .as_ref()
                .map(|r| {
                    r.list()
                        .into_iter()
                        .map(|(q, st, _)| (q.rid, format!("{st:?}")))
                        .collect()
                })
                .unwrap_or_default(),
            ended: i.ended.borrow().clone(),
        }
    }
}

type RecvFut<'a> = LocalFut<'a, Result<(String, Vec<u8>), NetError>>;

/// Wait for a datagram or a kick, whichever comes first.
struct Either<'a> {
    recv: RecvFut<'a>,
    kick: Pin<Box<Notified>>,
}

enum Woke {
    Dgram(Result<(String, Vec<u8>), NetError>),
    Kick,
}

impl Future for Either<'_> {
    type Output = Woke;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Woke> {
        if let Poll::Ready(()) = self.kick.as_mut().poll(cx) {
            return Poll::Ready(Woke::Kick);
        }
        if let Poll::Ready(r) = self.recv.as_mut().poll(cx) {
            return Poll::Ready(Woke::Dgram(r));
        }
        Poll::Pending
    }
}

impl Inner {
    fn push(&self, i: Input) {
        self.inputs.borrow_mut().push_back(i);
        self.kick.notify();
    }

    async fn run(self: Rc<Self>) {
        while self.ended.borrow().is_none() {
            // a kick armed before the queue is drained is not missed
            let kick = Box::pin(self.kick.notified());
            loop {
                let next = self.inputs.borrow_mut().pop_front();
                let Some(i) = next else { break };
                self.step(i);
                if self.ended.borrow().is_some() {
                    return;
                }
            }
            let deadline = self.machine.borrow().deadline_ns();
            let either = Either {
                recv: self.sock.recv_from(),
                kick,
            };
            match self.handle.timeout_at(deadline, either).await {
                Err(_) => self.step(Input::Timer),
                Ok(Woke::Kick) => {}
                Ok(Woke::Dgram(Ok((_from, bytes)))) => {
                    let opened = match self.auth.borrow_mut().as_mut() {
                        None => Ok(&bytes[..]),
                        Some(a) => a.open(&bytes),
                    };
                    let bytes = match opened {
                        Ok(b) => b,
                        Err(r) => {
                            auth::refuse(r, "quorum datagram");
                            continue;
                        }
                    };
                    if let Ok(m) = QuorumMsg::decode(bytes, self.fsid, self.mask) {
                        self.step(Input::Msg {
                            from: m.from,
                            term: m.term,
                            kind: m.kind,
                        });
                    }
                }
                Ok(Woke::Dgram(Err(e))) => self.end(format!("quorum socket failed: {e:?}")),
            }
        }
    }

    fn step(self: &Rc<Self>, i: Input) {
        let now = self.handle.now_ns();
        let fx = self.machine.borrow_mut().step(now, i);
        for e in fx {
            if self.ended.borrow().is_some() {
                return;
            }
            self.apply(e);
        }
        let ask = self.machine.borrow().wants_disk_leader();
        if let Some((slot, term)) = ask {
            // the leader the blocks show, as clients find it
            let blocks: Vec<_> = self
                .addrs
                .iter()
                .map(|(s, _)| {
                    let s = *s as usize;
                    (s, quorum_blocks::read_block(&*self.dev, self.fsid, s))
                })
                .collect();
            let shown = blocks
                .iter()
                .filter_map(|(s, b)| b.as_ref().ok().map(|b| (*s, b)))
                .map(|(s, b)| (s, b.events[QEvent::Elect as usize].term, b))
                .filter(|(_, el, b)| *el > b.events[QEvent::Stop as usize].term)
                .max_by_key(|(_, el, _)| *el)
                .map(|(s, el, _)| (s as u8, el));
            let fx = if shown == Some((slot, term)) {
                self.machine
                    .borrow_mut()
                    .step(now, Input::LeaderOnDisk { slot, term })
            } else {
                self.machine.borrow_mut().step(
                    now,
                    Input::LeaderOnDisk {
                        slot: 0xff,
                        term: 0,
                    },
                )
            };
            for e in fx {
                if self.ended.borrow().is_some() {
                    return;
                }
                self.apply(e);
            }
        }
    }

    fn apply(self: &Rc<Self>, e: Effect) {
        match e {
            Effect::Send { to, kind, term } => {
                let msg = QuorumMsg {
                    fsid: self.fsid,
                    term,
                    kind,
                    from: self.cfg.slot,
                }
                .encode();
                let msg = match self.auth.borrow_mut().as_mut() {
                    Some(a) => a.seal(&msg),
                    None => msg.to_vec(),
                };
                for (s, a) in &self.addrs {
                    let hit = match to {
                        Dest::Others => *s != self.cfg.slot,
                        Dest::Slot(x) => *s == x,
                    };
                    if hit && self.sock.send_to(a, &msg).is_err() {
                        counter!("quorum.tx_errors").inc();
                    }
                }
            }
            Effect::Write(evs) => {
                let r = self
                    .writer
                    .borrow_mut()
                    .write(&*self.dev, &evs, self.clock.wall());
                if let Err(e) = r {
                    counter!("quorum.block_write_errors").inc();
                    self.end(format!("{e}"));
                }
            }
            Effect::StartServer(term) => self.start_server(term),
            Effect::StopServer => {
                if self.node_started.get() {
                    self.control.stop_server();
                } else {
                    // still fencing: give up and report down at once
                    self.cancel_start();
                    self.push(Input::ServerDown);
                }
            }
            Effect::Ended => self.end("shut down".into()),
        }
    }

    fn cancel_start(&self) {
        if let Some(t) = self.starting.borrow_mut().take() {
            t.abort();
        }
        if let Some(r) = self.registry.borrow().as_ref() {
            r.shutdown();
        }
    }

    /// Fence every predecessor (§4.5), then let the node start.
    fn start_server(self: &Rc<Self>, term: u64) {
        self.cancel_start();
        let reg = FenceRegistry::new(self.fencer.clone(), self.handle.clone());
        *self.registry.borrow_mut() = Some(reg.clone());
        let me = self.clone();
        let jh = self.handle.spawn_named("quorum_fence", async move {
            let blocks: Vec<_> = me
                .addrs
                .iter()
                .map(|(s, _)| {
                    let s = *s as usize;
                    (s, quorum_blocks::read_block(&*me.dev, me.fsid, s))
                })
                .collect();
            // a leader of a higher term we did not hear (a quorum of 2
            // split in two): whichever of us wrote its ELECT first, the
            // other's read after its own write sees it; the lower yields
            let higher = blocks
                .iter()
                .filter(|(s, _)| *s != me.cfg.slot as usize)
                .filter_map(|(s, b)| b.as_ref().ok().map(|b| (*s, b)))
                .find(|(_, b)| {
                    let el = b.events[QEvent::Elect as usize].term;
                    el > term && el > b.events[QEvent::Stop as usize].term
                });
            if let Some((slot, _)) = higher {
                me.push(Input::Yield { slot: slot as u8 });
                return;
            }
            let preds = fence_candidates(&blocks, me.cfg.rid, term);
            for p in &preds {
                let addr = me
                    .addrs
                    .iter()
                    .find(|(s, _)| *s as usize == p.slot)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_default();
                reg.start(
                    FenceRequest {
                        rid: p.rid,
                        addr,
                        reason: FenceReason::QuorumBlockLeader,
                        term,
                    },
                    PREDECESSOR_FENCE_TIMEOUT_NS,
                );
            }
            let rids: Vec<u64> = preds.iter().map(|p| p.rid).collect();
            match reg.wait_all(&rids).await {
                Ok(()) => {
                    counter!("quorum.server_starts").inc();
                    me.node_started.set(true);
                    me.control.start_server(term);
                }
                Err(_) => {
                    counter!("quorum.fence_failures").inc();
                    me.push(Input::ServerDown);
                }
            }
        });
        match jh {
            Ok(jh) => *self.starting.borrow_mut() = Some(jh),
            Err(_) => self.push(Input::ServerDown),
        }
    }

    fn end(&self, why: String) {
        if self.ended.borrow().is_some() {
            return;
        }
        counter!("quorum.agents_ended").inc();
        self.cancel_start();
        if self.node_started.replace(false) {
            self.control.stop_server();
        }
        *self.ended.borrow_mut() = Some(why);
        self.done.notify();
    }
}
