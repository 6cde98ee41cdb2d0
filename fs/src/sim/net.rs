//! The simulated network: byte streams (the [`Transport`] seam of the
//! cluster code, one [`SimTransport`] per node) and datagrams
//! ([`SimSocket`], for the quorum's UDP), between string addresses owned
//! by nodes.
//!
//! Streams behave like TCP: bytes arrive in order and exactly once, each
//! `send` as one segment after a seeded one-way latency (bounded by
//! [`NetConfig`]; loopback, between two ends on one node, is faster);
//! a direction holds at most `stream_window` bytes in flight plus unread
//! (senders wait). `close` sends a FIN behind the data in flight: the
//! peer reads what was sent and then sees `Closed`, and its sends fail
//! from then on. A reset ([`SimNet::reset_node`], a node crash) tears the
//! stream down at once for both ends: bytes in flight and unread are
//! lost. A crashed node's peers see the reset one latency later.
//!
//! A cut link ([`SimNet::cut`], one way) holds stream segments (they are
//! retried every `retransmit_ns`, like TCP retransmission, and arrive in
//! order after the heal), refuses connects after `connect_tries`, and
//! drops datagrams. Datagrams are lost and duplicated by seeded
//! per-million rates and may be reordered by latency jitter.
//!
//! An adversary on the wire (`NetConfig::adversary_ppm`, for runs with a
//! cluster key) acts on that share of datagrams and on a quarter of that
//! share of stream segments: it replays captured datagrams later,
//! delays (reorders), mutates and forges them, and mutates stream
//! segments or injects forged frames and segments captured from other
//! streams. Forgeries carry terms from [`FORGED_TERM`] and request ids
//! from [`FORGED_ID`] so that a checker can tell if one was ever taken.
//!
//! Every send, delivery, close, reset, connect and drop is a world event.

use crate::cluster::transport::{Conn, Datagrams, Listener, LocalFut, NetError, Transport};
use crate::runtime::env::{Entropy, SeededEntropy};
use crate::runtime::exec::{Handle, Notify};
use crate::runtime::node::NodeId;
use crate::sim::world::{Core, Event};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

/// Bounds of the network model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// One-way latency between two ends on one node, ns (min, max).
    pub loopback_ns: (u64, u64),
    /// One-way latency between nodes, ns (min, max).
    pub link_ns: (u64, u64),
    /// How often a stream segment held by a cut link is retried.
    pub retransmit_ns: u64,
    /// Connect attempts across a cut link before `Refused`.
    pub connect_tries: u32,
    /// Bytes one stream direction holds (in flight plus unread).
    pub stream_window: usize,
    /// Datagrams lost, per million.
    pub dgram_loss_ppm: u32,
    /// Datagrams delivered twice, per million.
    pub dgram_dup_ppm: u32,
    /// Datagrams a socket queues before dropping.
    pub dgram_queue: usize,
    /// Largest datagram.
    pub dgram_max: usize,
    /// Datagrams (per million) the adversary acts on; a quarter of that
    /// share of stream segments. 0: no adversary.
    pub adversary_ppm: u32,
}

/// Terms of the adversary's forged quorum datagrams start here.
pub const FORGED_TERM: u64 = 1 << 60;
/// Request ids of the adversary's forged session frames start here.
pub const FORGED_ID: u64 = 1 << 62;
/// Captured datagrams and segments the adversary keeps for replays.
const CAPTURED_MAX: usize = 32;

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            loopback_ns: (5_000, 50_000),
            link_ns: (50_000, 2_000_000),
            retransmit_ns: 200_000_000,
            connect_tries: 5,
            stream_window: 64 << 10,
            dgram_loss_ppm: 10_000,
            dgram_dup_ppm: 5_000,
            dgram_queue: 256,
            dgram_max: 65_507,
            adversary_ppm: 0,
        }
    }
}

/// Network events the world's loop hands back to [`SimNet::handle`].
pub(crate) enum NetEvent {
    /// Deliver the due segments of one stream direction.
    Pump { stream: u64, dir: usize },
    /// A crashed peer's reset arrives.
    Rst { stream: u64 },
    Dgram {
        to: String,
        from: String,
        from_node: NodeId,
        data: Vec<u8>,
    },
}

enum Seg {
    Data(Vec<u8>),
    Fin,
}

struct End {
    node: NodeId,
    rx: RefCell<VecDeque<u8>>,
    /// Segments from this end to the other: (arrival time, segment).
    tx: RefCell<VecDeque<(u64, Seg)>>,
    tx_bytes: Cell<usize>,
    last_at: Cell<u64>,
    pumping: Cell<bool>,
    /// This end closed (or its node died).
    closed: Cell<bool>,
    /// The other end's FIN arrived.
    fin: Cell<bool>,
    readable: Notify,
    writable: Notify,
}

impl End {
    fn new(node: NodeId) -> End {
        End {
            node,
            rx: RefCell::new(VecDeque::new()),
            tx: RefCell::new(VecDeque::new()),
            tx_bytes: Cell::new(0),
            last_at: Cell::new(0),
            pumping: Cell::new(false),
            closed: Cell::new(false),
            fin: Cell::new(false),
            readable: Notify::new(),
            writable: Notify::new(),
        }
    }

    fn wake(&self) {
        self.readable.notify();
        self.writable.notify();
    }
}

struct Stream {
    id: u64,
    ends: [End; 2],
    reset: Cell<bool>,
}

impl Stream {
    fn is_closed(&self, e: usize) -> bool {
        self.reset.get() || self.ends[e].closed.get() || self.ends[e].fin.get()
    }

    fn finished(&self) -> bool {
        self.reset.get()
            || self.ends.iter().all(|e| {
                (e.closed.get() || e.fin.get()) && e.tx.borrow().is_empty() && !e.pumping.get()
            })
    }
}

struct ListenerState {
    node: NodeId,
    addr: String,
    queue: RefCell<VecDeque<Rc<SimConn>>>,
    closed: Cell<bool>,
    arrived: Notify,
}

struct SockState {
    node: NodeId,
    queue: RefCell<VecDeque<(String, Vec<u8>)>>,
    closed: Cell<bool>,
    arrived: Notify,
}

#[derive(Default)]
struct NetState {
    listeners: BTreeMap<String, Rc<ListenerState>>,
    streams: BTreeMap<u64, Rc<Stream>>,
    sockets: BTreeMap<String, Rc<SockState>>,
    cut: BTreeSet<(NodeId, NodeId)>,
    down: BTreeSet<NodeId>,
    next_stream: u64,
    /// The adversary's captures: datagrams, and (stream, segment).
    captured_dgrams: VecDeque<Vec<u8>>,
    captured_segs: VecDeque<(u64, Vec<u8>)>,
}

/// Totals of one network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub segments: u64,
    pub bytes: u64,
    pub held: u64,
    pub resets: u64,
    pub connects: u64,
    pub refused: u64,
    pub dgrams_sent: u64,
    pub dgrams_delivered: u64,
    pub dgrams_dropped: u64,
    /// The adversary's replays, mutations, forgeries and delays.
    pub adversary_acts: u64,
}

/// The network of one world.
pub struct SimNet {
    core: Rc<Core>,
    cfg: NetConfig,
    rng: SeededEntropy,
    st: RefCell<NetState>,
    stats: Cell<NetStats>,
}

impl SimNet {
    pub(crate) fn new(core: Rc<Core>, cfg: NetConfig, seed: u64) -> SimNet {
        assert!(cfg.loopback_ns.0 <= cfg.loopback_ns.1 && cfg.link_ns.0 <= cfg.link_ns.1);
        assert!(cfg.retransmit_ns > 0 && cfg.stream_window > 0);
        SimNet {
            core,
            cfg,
            rng: SeededEntropy::new(seed),
            st: RefCell::new(NetState::default()),
            stats: Cell::new(NetStats::default()),
        }
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    pub fn stats(&self) -> NetStats {
        self.stats.get()
    }

    fn bump(&self, f: impl FnOnce(&mut NetStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// A seeded one-way latency from `from` to `to`.
    fn latency(&self, from: NodeId, to: NodeId) -> u64 {
        let (lo, hi) = if from == to {
            self.cfg.loopback_ns
        } else {
            self.cfg.link_ns
        };
        lo + self.rng.next_u64() % (hi - lo + 1)
    }

    fn roll(&self, ppm: u32) -> bool {
        ppm > 0 && self.rng.next_u64() % 1_000_000 < ppm as u64
    }

    /// Is the link from `from` to `to` cut?
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        from != to && self.st.borrow().cut.contains(&(from, to))
    }

    /// Drop packets from `from` to `to` (one way).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        if from != to && self.st.borrow_mut().cut.insert((from, to)) {
            self.core.log(from, "net_cut", &[to as u64], "");
        }
    }

    pub fn heal(&self, from: NodeId, to: NodeId) {
        if self.st.borrow_mut().cut.remove(&(from, to)) {
            self.core.log(from, "net_heal", &[to as u64], "");
        }
    }

    /// Cut both directions between `a` and `b`.
    pub fn partition(&self, a: NodeId, b: NodeId) {
        self.cut(a, b);
        self.cut(b, a);
    }

    pub fn heal_all(&self) {
        let cuts: Vec<(NodeId, NodeId)> = self.st.borrow().cut.iter().copied().collect();
        for (a, b) in cuts {
            self.heal(a, b);
        }
    }

    fn stream(&self, id: u64) -> Option<Rc<Stream>> {
        self.st.borrow().streams.get(&id).cloned()
    }

    fn gc(&self, s: &Stream) {
        if s.finished() {
            self.st.borrow_mut().streams.remove(&s.id);
        }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.st.borrow().streams.len()
    }

    /// The adversary acts on a stream segment about to be sent: it may
    /// mutate it, or put a forged frame or another stream's segment
    /// before it.
    fn adversary_seg(&self, s: &Rc<Stream>, dir: usize, data: &mut Vec<u8>) {
        if self.cfg.adversary_ppm == 0 {
            return;
        }
        {
            let mut st = self.st.borrow_mut();
            if st.captured_segs.len() >= CAPTURED_MAX {
                st.captured_segs.pop_front();
            }
            st.captured_segs.push_back((s.id, data.clone()));
        }
        if !self.roll(self.cfg.adversary_ppm / 4) || data.is_empty() {
            return;
        }
        self.bump(|st| st.adversary_acts += 1);
        let node = s.ends[dir].node;
        match self.rng.next_u64() % 3 {
            0 => {
                let bit = (self.rng.next_u64() % (data.len() as u64 * 8)) as usize;
                data[bit / 8] ^= 1 << (bit % 8);
                self.core.log(node, "adversary_mutate_seg", &[s.id], "");
            }
            1 => {
                // a well-formed request (or a greeting) with a forged id
                use crate::cluster::msg::{cmd, encode_frame, encode_u64, Greeting, Header};
                let greet = self.rng.next_u64().is_multiple_of(2);
                let (c, payload) = if greet {
                    let g = Greeting {
                        fsid: crate::sim::fsnode::mkfs_params(0, 0).fsid,
                        rid: 0x100 + self.rng.next_u64() % 8,
                        ..Greeting::default()
                    };
                    (cmd::GREETING, g.encode())
                } else {
                    (cmd::ALLOC_INODES, encode_u64(1 + self.rng.next_u64() % 100))
                };
                let h = Header {
                    seq: 1 + self.rng.next_u64() % (1 << 20),
                    id: FORGED_ID + self.rng.next_u64() % (1 << 20),
                    cmd: c,
                    ..Header::default()
                };
                let mut f = encode_frame(&h, &payload);
                // a guessed tag
                f.extend((0..crate::cluster::auth::TAG_BYTES).map(|_| self.rng.next_u64() as u8));
                f.extend_from_slice(data);
                *data = f;
                self.core.log(node, "adversary_forge_seg", &[s.id], "");
            }
            _ => {
                let other = {
                    let st = self.st.borrow();
                    let n = st.captured_segs.len() as u64;
                    let k = (self.rng.next_u64() % n) as usize;
                    st.captured_segs.get(k).cloned()
                };
                if let Some((sid, mut bytes)) = other {
                    bytes.extend_from_slice(data);
                    *data = bytes;
                    self.core
                        .log(node, "adversary_replay_seg", &[s.id, sid], "");
                }
            }
        }
    }

    fn push_seg(&self, s: &Rc<Stream>, dir: usize, mut seg: Seg) {
        if let Seg::Data(d) = &mut seg {
            self.adversary_seg(s, dir, d);
        }
        let from = &s.ends[dir];
        let to_node = s.ends[1 - dir].node;
        let now = self.core.now();
        let at = (now + self.latency(from.node, to_node)).max(from.last_at.get());
        from.last_at.set(at);
        let len = match &seg {
            Seg::Data(d) => d.len(),
            Seg::Fin => 0,
        };
        from.tx_bytes.set(from.tx_bytes.get() + len);
        from.tx.borrow_mut().push_back((at, seg));
        self.core.log(
            from.node,
            "net_send",
            &[s.id, dir as u64, len as u64, at - now],
            "",
        );
        self.bump(|st| {
            st.segments += 1;
            st.bytes += len as u64;
        });
        if !from.pumping.replace(true) {
            self.core
                .schedule(at, Event::Net(NetEvent::Pump { stream: s.id, dir }));
        }
    }

    /// Reset a stream: both ends see the close at once; bytes in flight
    /// and unread are lost.
    fn reset(&self, s: &Stream) {
        if s.reset.replace(true) {
            return;
        }
        for e in &s.ends {
            e.tx.borrow_mut().clear();
            e.tx_bytes.set(0);
            e.rx.borrow_mut().clear();
            e.wake();
        }
        self.st.borrow_mut().streams.remove(&s.id);
        self.core.log(s.ends[0].node, "net_reset", &[s.id], "");
        self.bump(|st| st.resets += 1);
    }

    /// Reset every stream with an end on `node`.
    pub fn reset_node(&self, node: NodeId) {
        let all: Vec<Rc<Stream>> = self.st.borrow().streams.values().cloned().collect();
        for s in all {
            if s.ends.iter().any(|e| e.node == node) {
                self.reset(&s);
            }
        }
    }

    /// The node crashed: its ends of streams die (their peers see a reset
    /// one latency later), its listeners and sockets close, and traffic to
    /// it is dropped until it boots again.
    pub(crate) fn node_down(&self, node: NodeId) {
        self.st.borrow_mut().down.insert(node);
        let all: Vec<Rc<Stream>> = self.st.borrow().streams.values().cloned().collect();
        for s in all {
            let mine: Vec<usize> = (0..2).filter(|&e| s.ends[e].node == node).collect();
            match mine.len() {
                0 => {}
                2 => self.reset(&s),
                _ => {
                    let dead = &s.ends[mine[0]];
                    let peer = s.ends[1 - mine[0]].node;
                    dead.closed.set(true);
                    dead.tx.borrow_mut().clear();
                    dead.tx_bytes.set(0);
                    dead.rx.borrow_mut().clear();
                    let at = self.core.now() + self.latency(node, peer);
                    self.core
                        .schedule(at, Event::Net(NetEvent::Rst { stream: s.id }));
                }
            }
        }
        let ls: Vec<Rc<ListenerState>> = self
            .st
            .borrow()
            .listeners
            .values()
            .filter(|l| l.node == node)
            .cloned()
            .collect();
        for l in ls {
            self.close_listener(&l);
        }
        let socks: Vec<String> = self
            .st
            .borrow()
            .sockets
            .iter()
            .filter(|(_, s)| s.node == node)
            .map(|(a, _)| a.clone())
            .collect();
        for a in socks {
            if let Some(s) = self.st.borrow_mut().sockets.remove(&a) {
                s.closed.set(true);
                s.arrived.notify();
            }
        }
    }

    pub(crate) fn node_up(&self, node: NodeId) {
        self.st.borrow_mut().down.remove(&node);
    }

    pub(crate) fn handle(&self, ev: NetEvent) {
        match ev {
            NetEvent::Pump { stream, dir } => self.pump(stream, dir),
            NetEvent::Rst { stream } => {
                if let Some(s) = self.stream(stream) {
                    self.reset(&s);
                }
            }
            NetEvent::Dgram {
                to,
                from,
                from_node,
                data,
            } => self.deliver_dgram(&to, from, from_node, data),
        }
    }

    fn pump(&self, id: u64, dir: usize) {
        let Some(s) = self.stream(id) else {
            return;
        };
        let from = &s.ends[dir];
        let to = &s.ends[1 - dir];
        from.pumping.set(false);
        if s.reset.get() {
            return;
        }
        let now = self.core.now();
        if self.is_cut(from.node, to.node) {
            from.pumping.set(true);
            self.core.log(to.node, "net_hold", &[id, dir as u64], "");
            self.bump(|st| st.held += 1);
            self.core.schedule(
                now + self.cfg.retransmit_ns,
                Event::Net(NetEvent::Pump { stream: id, dir }),
            );
            return;
        }
        let mut bytes = 0usize;
        let mut fin = false;
        loop {
            let seg = {
                let mut tx = from.tx.borrow_mut();
                match tx.front() {
                    Some((at, _)) if *at <= now => tx.pop_front().map(|x| x.1),
                    _ => None,
                }
            };
            match seg {
                None => break,
                Some(Seg::Data(d)) => {
                    from.tx_bytes.set(from.tx_bytes.get() - d.len());
                    bytes += d.len();
                    if !to.closed.get() {
                        to.rx.borrow_mut().extend(d);
                    }
                }
                Some(Seg::Fin) => {
                    to.fin.set(true);
                    fin = true;
                }
            }
        }
        self.core.log(
            to.node,
            "net_deliver",
            &[id, dir as u64, bytes as u64, fin as u64],
            "",
        );
        to.readable.notify();
        if fin {
            to.writable.notify();
        }
        let next = from.tx.borrow().front().map(|(at, _)| *at);
        if let Some(at) = next {
            from.pumping.set(true);
            self.core
                .schedule(at, Event::Net(NetEvent::Pump { stream: id, dir }));
        }
        self.gc(&s);
    }

    fn close_listener(&self, l: &ListenerState) {
        if l.closed.replace(true) {
            return;
        }
        {
            let mut st = self.st.borrow_mut();
            if st
                .listeners
                .get(&l.addr)
                .is_some_and(|x| core::ptr::eq(Rc::as_ptr(x), l))
            {
                st.listeners.remove(&l.addr);
            }
        }
        for c in l.queue.borrow_mut().drain(..) {
            self.reset(&c.s);
        }
        l.arrived.notify();
        self.core.log(l.node, "net_unlisten", &[], &l.addr);
    }

    fn listen(self: &Rc<Self>, node: NodeId, addr: &str) -> Result<Rc<dyn Listener>, NetError> {
        let mut st = self.st.borrow_mut();
        if st.listeners.contains_key(addr) {
            return Err(NetError::AddrInUse);
        }
        let l = Rc::new(ListenerState {
            node,
            addr: addr.into(),
            queue: RefCell::new(VecDeque::new()),
            closed: Cell::new(false),
            arrived: Notify::new(),
        });
        st.listeners.insert(addr.into(), l.clone());
        drop(st);
        self.core.log(node, "net_listen", &[], addr);
        Ok(Rc::new(SimListener {
            net: self.clone(),
            st: l,
        }))
    }

    async fn connect(
        self: &Rc<Self>,
        node: NodeId,
        handle: &Handle,
        addr: &str,
    ) -> Result<Rc<dyn Conn>, NetError> {
        for _ in 0..self.cfg.connect_tries.max(1) {
            let l = self.st.borrow().listeners.get(addr).cloned();
            let Some(l) = l else {
                // the refusal comes back after a round trip
                let rtt = 2 * self.latency(node, node);
                handle.sleep_ns(rtt).await;
                self.core.log(node, "net_refused", &[], addr);
                self.bump(|st| st.refused += 1);
                return Err(NetError::Refused);
            };
            if self.is_cut(node, l.node) || self.is_cut(l.node, node) {
                handle.sleep_ns(self.cfg.retransmit_ns).await;
                continue;
            }
            let rtt = self.latency(node, l.node) + self.latency(l.node, node);
            handle.sleep_ns(rtt).await;
            if l.closed.get() || self.st.borrow().down.contains(&l.node) {
                continue;
            }
            let id = {
                let mut st = self.st.borrow_mut();
                st.next_stream += 1;
                st.next_stream
            };
            let s = Rc::new(Stream {
                id,
                ends: [End::new(node), End::new(l.node)],
                reset: Cell::new(false),
            });
            self.st.borrow_mut().streams.insert(id, s.clone());
            let ours = Rc::new(SimConn {
                net: self.clone(),
                s: s.clone(),
                e: 0,
            });
            let theirs = Rc::new(SimConn {
                net: self.clone(),
                s,
                e: 1,
            });
            l.queue.borrow_mut().push_back(theirs);
            l.arrived.notify();
            self.core
                .log(node, "net_connect", &[id, l.node as u64], addr);
            self.bump(|st| st.connects += 1);
            return Ok(ours as Rc<dyn Conn>);
        }
        self.core.log(node, "net_refused", &[1], addr);
        self.bump(|st| st.refused += 1);
        Err(NetError::Refused)
    }

    /// Bind a datagram socket at `addr` on `node`.
    pub fn bind(self: &Rc<Self>, node: NodeId, addr: &str) -> Result<Rc<SimSocket>, NetError> {
        let mut st = self.st.borrow_mut();
        if st.sockets.contains_key(addr) {
            return Err(NetError::AddrInUse);
        }
        if st.down.contains(&node) {
            return Err(NetError::Closed);
        }
        let s = Rc::new(SockState {
            node,
            queue: RefCell::new(VecDeque::new()),
            closed: Cell::new(false),
            arrived: Notify::new(),
        });
        st.sockets.insert(addr.into(), s.clone());
        Ok(Rc::new(SimSocket {
            net: self.clone(),
            addr: addr.into(),
            st: s,
        }))
    }

    fn send_dgram(&self, from: &SimSocket, to: &str, data: &[u8]) -> Result<(), NetError> {
        if from.st.closed.get() {
            return Err(NetError::Closed);
        }
        if data.len() > self.cfg.dgram_max {
            return Err(NetError::TooLarge);
        }
        let node = from.st.node;
        self.bump(|st| st.dgrams_sent += 1);
        self.core.log(node, "dgram_send", &[data.len() as u64], to);
        let to_node = self.st.borrow().sockets.get(to).map(|s| s.node);
        let Some(to_node) = to_node else {
            self.drop_dgram(node, 0, to);
            return Ok(());
        };
        if self.roll(self.cfg.dgram_loss_ppm) {
            self.drop_dgram(node, 1, to);
            return Ok(());
        }
        let copies = if self.roll(self.cfg.dgram_dup_ppm) {
            2
        } else {
            1
        };
        let delay = self.adversary_dgram(node, to_node, to, &from.addr, data);
        for _ in 0..copies {
            let at = self.core.now() + self.latency(node, to_node) + delay;
            self.core.schedule(
                at,
                Event::Net(NetEvent::Dgram {
                    to: to.into(),
                    from: from.addr.clone(),
                    from_node: node,
                    data: data.to_vec(),
                }),
            );
        }
        Ok(())
    }

    /// The adversary sees a datagram from `node` to `to`: it captures it
    /// and may deliver a replayed, mutated or forged one beside it, or
    /// delay it (the extra delay returned).
    fn adversary_dgram(
        &self,
        node: NodeId,
        to_node: NodeId,
        to: &str,
        from: &str,
        data: &[u8],
    ) -> u64 {
        if self.cfg.adversary_ppm == 0 {
            return 0;
        }
        {
            let mut st = self.st.borrow_mut();
            if st.captured_dgrams.len() >= CAPTURED_MAX {
                st.captured_dgrams.pop_front();
            }
            st.captured_dgrams.push_back(data.to_vec());
        }
        if !self.roll(self.cfg.adversary_ppm) {
            return 0;
        }
        self.bump(|st| st.adversary_acts += 1);
        let r = self.rng.next_u64();
        let bad = match r % 4 {
            0 => {
                let st = self.st.borrow();
                let k = (self.rng.next_u64() % st.captured_dgrams.len() as u64) as usize;
                self.core.log(node, "adversary_replay_dgram", &[], to);
                st.captured_dgrams[k].clone()
            }
            1 if !data.is_empty() => {
                let mut m = data.to_vec();
                let bit = (self.rng.next_u64() % (m.len() as u64 * 8)) as usize;
                m[bit / 8] ^= 1 << (bit % 8);
                self.core.log(node, "adversary_mutate_dgram", &[], to);
                m
            }
            2 => {
                // a well-formed datagram of this volume with a forged term
                // and sender, with or without a guessed trailer
                use crate::cluster::quorum_wire::{MsgKind, QuorumMsg};
                let kinds = [
                    MsgKind::RequestVote,
                    MsgKind::Vote,
                    MsgKind::Heartbeat,
                    MsgKind::Resignation,
                ];
                let mut m = QuorumMsg {
                    fsid: crate::sim::fsnode::mkfs_params(0, 0).fsid,
                    term: FORGED_TERM + self.rng.next_u64() % (1 << 20),
                    kind: kinds[(self.rng.next_u64() % 4) as usize],
                    from: (self.rng.next_u64() % 5) as u8,
                }
                .encode()
                .to_vec();
                if self.rng.next_u64().is_multiple_of(2) {
                    m.extend(
                        (0..crate::cluster::auth::QUORUM_TRAILER_BYTES)
                            .map(|_| self.rng.next_u64() as u8),
                    );
                }
                self.core.log(node, "adversary_forge_dgram", &[], to);
                m
            }
            _ => {
                // reorder: hold the real one back
                let d = self.rng.next_u64() % 1_000_000_000;
                self.core.log(node, "adversary_delay_dgram", &[d], to);
                return d;
            }
        };
        let at =
            self.core.now() + self.latency(node, to_node) + self.rng.next_u64() % 2_000_000_000;
        self.core.schedule(
            at,
            Event::Net(NetEvent::Dgram {
                to: to.into(),
                from: from.into(),
                from_node: node,
                data: bad,
            }),
        );
        0
    }

    /// Reasons: 0 nobody bound, 1 lost, 2 cut link, 3 queue full.
    fn drop_dgram(&self, node: NodeId, why: u64, to: &str) {
        self.bump(|st| st.dgrams_dropped += 1);
        self.core.log(node, "dgram_drop", &[why], to);
    }

    fn deliver_dgram(&self, to: &str, from: String, from_node: NodeId, data: Vec<u8>) {
        let sock = self.st.borrow().sockets.get(to).cloned();
        let Some(sock) = sock else {
            return self.drop_dgram(from_node, 0, to);
        };
        if self.is_cut(from_node, sock.node) {
            return self.drop_dgram(from_node, 2, to);
        }
        if sock.queue.borrow().len() >= self.cfg.dgram_queue {
            return self.drop_dgram(from_node, 3, to);
        }
        self.core
            .log(sock.node, "dgram_deliver", &[data.len() as u64], &from);
        self.bump(|st| st.dgrams_delivered += 1);
        sock.queue.borrow_mut().push_back((from, data));
        sock.arrived.notify();
    }
}

/// One end of a simulated stream.
pub struct SimConn {
    net: Rc<SimNet>,
    s: Rc<Stream>,
    e: usize,
}

impl SimConn {
    /// The stream's id (in the event log).
    pub fn stream_id(&self) -> u64 {
        self.s.id
    }

    async fn send_inner(&self, data: &[u8]) -> Result<(), NetError> {
        if data.len() > self.net.cfg.stream_window {
            return Err(NetError::TooLarge);
        }
        let me = &self.s.ends[self.e];
        let peer = &self.s.ends[1 - self.e];
        loop {
            let room = me.writable.notified();
            if self.s.is_closed(self.e) {
                return Err(NetError::Closed);
            }
            let used = me.tx_bytes.get() + peer.rx.borrow().len();
            if used + data.len() <= self.net.cfg.stream_window {
                self.net.push_seg(&self.s, self.e, Seg::Data(data.to_vec()));
                return Ok(());
            }
            room.await;
        }
    }

    async fn recv_inner(&self, buf: &mut [u8]) -> Result<usize, NetError> {
        let me = &self.s.ends[self.e];
        let peer = &self.s.ends[1 - self.e];
        loop {
            let arrived = me.readable.notified();
            {
                let mut rx = me.rx.borrow_mut();
                if !rx.is_empty() && !buf.is_empty() {
                    let n = buf.len().min(rx.len());
                    for (dst, src) in buf.iter_mut().zip(rx.drain(..n)) {
                        *dst = src;
                    }
                    drop(rx);
                    peer.writable.notify();
                    return Ok(n);
                }
            }
            if self.s.is_closed(self.e) {
                return Err(NetError::Closed);
            }
            arrived.await;
        }
    }
}

impl Conn for SimConn {
    fn send<'a>(&'a self, data: &'a [u8]) -> LocalFut<'a, Result<(), NetError>> {
        Box::pin(self.send_inner(data))
    }

    fn recv<'a>(&'a self, buf: &'a mut [u8]) -> LocalFut<'a, Result<usize, NetError>> {
        Box::pin(self.recv_inner(buf))
    }

    fn close(&self) {
        let me = &self.s.ends[self.e];
        if self.s.reset.get() || me.closed.replace(true) {
            return;
        }
        if !me.fin.get() {
            self.net.push_seg(&self.s, self.e, Seg::Fin);
        }
        me.wake();
        self.net.core.log(me.node, "net_close", &[self.s.id], "");
        self.net.gc(&self.s);
    }

    fn is_closed(&self) -> bool {
        self.s.is_closed(self.e)
    }
}

impl Drop for SimConn {
    fn drop(&mut self) {
        self.close();
    }
}

struct SimListener {
    net: Rc<SimNet>,
    st: Rc<ListenerState>,
}

impl Listener for SimListener {
    fn accept(&self) -> LocalFut<'_, Result<Rc<dyn Conn>, NetError>> {
        Box::pin(async move {
            loop {
                let arrived = self.st.arrived.notified();
                if self.st.closed.get() {
                    return Err(NetError::Closed);
                }
                let c = self.st.queue.borrow_mut().pop_front();
                if let Some(c) = c {
                    return Ok(c as Rc<dyn Conn>);
                }
                arrived.await;
            }
        })
    }

    fn close(&self) {
        self.net.close_listener(&self.st);
    }
}

impl Drop for SimListener {
    fn drop(&mut self) {
        self.close();
    }
}

/// A node's view of the network: the stream [`Transport`] (its timers,
/// e.g. connect round trips, run on the node's executor) and datagram
/// sockets.
pub struct SimTransport {
    net: Rc<SimNet>,
    node: NodeId,
    handle: Handle,
}

impl SimTransport {
    pub(crate) fn new(net: Rc<SimNet>, node: NodeId, handle: Handle) -> SimTransport {
        SimTransport { net, node, handle }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Bind a datagram socket at `addr`.
    pub fn bind(&self, addr: &str) -> Result<Rc<SimSocket>, NetError> {
        self.net.bind(self.node, addr)
    }
}

impl Transport for SimTransport {
    fn listen(&self, addr: &str) -> Result<Rc<dyn Listener>, NetError> {
        self.net.listen(self.node, addr)
    }

    fn connect<'a>(&'a self, addr: &'a str) -> LocalFut<'a, Result<Rc<dyn Conn>, NetError>> {
        Box::pin(self.net.connect(self.node, &self.handle, addr))
    }
}

/// A datagram socket.
pub struct SimSocket {
    net: Rc<SimNet>,
    addr: String,
    st: Rc<SockState>,
}

impl SimSocket {
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Send one datagram (fire and forget: loss is silent).
    pub fn send_to(&self, to: &str, data: &[u8]) -> Result<(), NetError> {
        self.net.send_dgram(self, to, data)
    }

    /// The next datagram and its sender's address.
    pub async fn recv_from(&self) -> Result<(String, Vec<u8>), NetError> {
        loop {
            let arrived = self.st.arrived.notified();
            if let Some(d) = self.st.queue.borrow_mut().pop_front() {
                return Ok(d);
            }
            if self.st.closed.get() {
                return Err(NetError::Closed);
            }
            arrived.await;
        }
    }

    /// Datagrams waiting.
    pub fn queued(&self) -> usize {
        self.st.queue.borrow().len()
    }

    pub fn close(&self) {
        if !self.st.closed.replace(true) {
            let mut st = self.net.st.borrow_mut();
            if st
                .sockets
                .get(&self.addr)
                .is_some_and(|s| Rc::ptr_eq(s, &self.st))
            {
                st.sockets.remove(&self.addr);
            }
            drop(st);
            self.st.arrived.notify();
        }
    }
}

impl Datagrams for SimSocket {
    fn send_to(&self, to: &str, data: &[u8]) -> Result<(), NetError> {
        SimSocket::send_to(self, to, data)
    }
    fn recv_from(&self) -> LocalFut<'_, Result<(String, Vec<u8>), NetError>> {
        Box::pin(SimSocket::recv_from(self))
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        self.close();
    }
}
