//! The reliable per-peer session over the framed connection (`rpc.rs`):
//! what survives a broken socket (cluster reference 1.6, 2.2, 2.3).
//!
//! A client session ([`ClientSession`]) numbers its requests itself, so a
//! request keeps its id across sockets; it finds the server through the
//! [`LeaderAddr`] seam, connects with a timeout, greets with the term of
//! the server life it last greeted, and reconnects with backoff whenever
//! the socket breaks or goes idle (pings keep an idle link alive). After a
//! reconnect to the *same* server life (same term in the greeting reply)
//! an unanswered request is resent with the same id; the server executes
//! it at most once ([`Replay`]) and answers a duplicate from the retained
//! response. After a reconnect to a *new* server life the request's fate
//! is unknown: it is retried on the new server when its command is
//! idempotent by design ([`retried_on_new_server`]), else it fails with
//! `ESTALE`.
//!
//! Acknowledgement is implicit in the ids: a peer never has requests
//! outstanding that span more than [`SessionConfig::window`] ids
//! ([`IdWindow`]), so a request with id `n` acknowledges every response
//! to ids `<= n - window`, which the receiver then forgets; ids at or
//! below that floor are refused as stale duplicates. Retained responses
//! are so bounded by the window per peer.
//!
//! The server side of a session ([`ServerPeer`], one per rid, owned by the
//! server role) holds the replay table, the rid's current connection and
//! the server's own calls to the client (SYNC_LOG_TREES now, lock
//! invalidation next), which are resent on the client's next socket the
//! same way and deduplicated by the client.

use crate::cluster::msg::{cmd, Greeting, Request, GREETING_FLAG_FAREWELL};
use crate::cluster::rpc::{Endpoint, Role};
use crate::cluster::transport::{LocalFut, Transport};
use crate::counter;
use crate::errno::{Errno, FsResult};
use crate::runtime::exec::{Handle, JoinHandle, Notify};
use crate::runtime::trace::Tracepoint;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

static TP_CONNECTED: Tracepoint = Tracepoint::new("session_connected", &["rid", "term", "life"]);
static TP_DISCONNECTED: Tracepoint = Tracepoint::new("session_disconnected", &["rid", "idle"]);
static TP_NEW_SERVER: Tracepoint = Tracepoint::new("session_new_server", &["rid", "term"]);
static TP_RECLAIMED: Tracepoint = Tracepoint::new("session_reclaimed", &["rid"]);

/// Where the server is: `(term, address)` of the current leader, `None`
/// while there is none. A static address now; the quorum's find-leader
/// later. The term is informational (the greeting reply's term decides
/// what counts as a new server life).
pub trait LeaderAddr {
    fn leader(&self) -> LocalFut<'_, Option<(u64, String)>>;
}

/// A fixed server address (single node, tests, the simulator's static
/// leader).
pub struct StaticLeader {
    addr: String,
}

impl StaticLeader {
    pub fn new(addr: &str) -> StaticLeader {
        StaticLeader { addr: addr.into() }
    }
}

impl LeaderAddr for StaticLeader {
    fn leader(&self) -> LocalFut<'_, Option<(u64, String)>> {
        let a = self.addr.clone();
        Box::pin(async move { Some((0, a)) })
    }
}

/// Timeouts and bounds of a session (cluster reference 8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// A connect plus greeting that takes longer is abandoned.
    pub connect_timeout_ns: u64,
    /// First delay after a failed connect; doubles up to the maximum.
    /// After a successful greeting a broken socket is retried at once.
    pub reconnect_delay_ns: u64,
    pub max_reconnect_delay_ns: u64,
    /// A link that received nothing for this long is pinged.
    pub ping_interval_ns: u64,
    /// A link that received nothing for this long is closed (both ends).
    pub idle_timeout_ns: u64,
    /// The server waits this long for a broken client to come back before
    /// a call to it fails.
    pub reconnect_window_ns: u64,
    /// Most ids a peer's outstanding requests may span (the implicit ack).
    pub window: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            connect_timeout_ns: 1_000_000_000,
            reconnect_delay_ns: 100_000_000,
            max_reconnect_delay_ns: 2_000_000_000,
            ping_interval_ns: 3_000_000_000,
            idle_timeout_ns: 24_000_000_000,
            reconnect_window_ns: 20_000_000_000,
            window: 256,
        }
    }
}

/// Is a request with command `c`, whose answer was lost with a server
/// life, sent again to the next server? Every command this node sends is
/// idempotent by design (cluster reference 2.2): GET_LOG_TREES returns the
/// already open transaction, COMMIT_LOG_TREES recognises a committed one,
/// COMMIT_LOG_MERGE tolerates a missing request, FAREWELL's reclaim
/// tolerates missing state, reads are reads (OPEN_INO_MAP: a new server
/// asks every mount afresh), and ALLOC_INODES at worst
/// skips the range the lost answer carried (inode numbers are never
/// reused, so a lost range only leaves a gap). Commands not listed (locks,
/// whose recovery is its own protocol) fail with `ESTALE`.
pub fn retried_on_new_server(c: u8) -> bool {
    matches!(
        c,
        cmd::ALLOC_INODES
            | cmd::GET_LOG_TREES
            | cmd::COMMIT_LOG_TREES
            | cmd::GET_ROOTS
            | cmd::GET_LAST_SEQ
            | cmd::GET_LOG_MERGE
            | cmd::COMMIT_LOG_MERGE
            | cmd::STATFS
            | cmd::FAREWELL
            | cmd::SYNC_LOG_TREES
            | cmd::OPEN_INO_MAP
    )
}

/// Request ids of one sender: handed out in order, never spanning more
/// than the window while outstanding (a new request waits for room).
pub struct IdWindow {
    window: u64,
    next: Cell<u64>,
    outstanding: RefCell<BTreeSet<u64>>,
    changed: Notify,
}

impl IdWindow {
    pub fn new(window: u64) -> IdWindow {
        assert!(window >= 1);
        IdWindow {
            window,
            next: Cell::new(1),
            outstanding: RefCell::new(BTreeSet::new()),
            changed: Notify::new(),
        }
    }

    /// The next id, once the oldest outstanding one is within the window.
    pub async fn begin(&self) -> u64 {
        loop {
            let n = self.changed.notified();
            let next = self.next.get();
            let oldest = self.outstanding.borrow().first().copied().unwrap_or(next);
            if next - oldest < self.window {
                self.next.set(next + 1);
                self.outstanding.borrow_mut().insert(next);
                return next;
            }
            counter!("session.window_full").inc();
            n.await;
        }
    }

    /// The request `id` is answered (or given up).
    pub fn end(&self, id: u64) {
        self.outstanding.borrow_mut().remove(&id);
        self.changed.notify();
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.borrow().len()
    }
}

/// Ends an id when the call finishes or is dropped.
struct IdGuard<'a>(&'a IdWindow, u64);

impl Drop for IdGuard<'_> {
    fn drop(&mut self) {
        self.0.end(self.1);
    }
}

/// A request being executed; duplicates wait on it.
pub struct ReplaySlot {
    result: RefCell<Option<FsResult<Vec<u8>>>>,
    done: Notify,
}

impl ReplaySlot {
    pub async fn wait(&self) -> FsResult<Vec<u8>> {
        loop {
            let n = self.done.notified();
            if let Some(r) = self.result.borrow().clone() {
                return r;
            }
            n.await;
        }
    }
}

enum Entry {
    Running(Rc<ReplaySlot>),
    Done(FsResult<Vec<u8>>),
}

/// What to do with a received request.
pub enum Begin {
    /// New: execute it, then [`Replay::finish`] with this slot.
    Run(Rc<ReplaySlot>),
    /// Being executed (a resend overtook it): answer with its result.
    Wait(Rc<ReplaySlot>),
    /// Executed: answer from the retained response.
    Answer(FsResult<Vec<u8>>),
    /// At or below the acknowledged floor: a stale duplicate, dropped.
    Stale,
}

/// The receiver's memory of one peer's requests within one life: which
/// ids it executed and their responses until acknowledged.
pub struct Replay {
    window: u64,
    floor: u64,
    entries: BTreeMap<u64, Entry>,
}

impl Replay {
    pub fn new(window: u64) -> Replay {
        Replay {
            window,
            floor: 0,
            entries: BTreeMap::new(),
        }
    }

    /// Forget everything (the peer's ids start over: a new life).
    pub fn reset(&mut self) {
        self.floor = 0;
        self.entries.clear();
    }

    pub fn retained(&self) -> usize {
        self.entries.len()
    }

    pub fn begin(&mut self, id: u64) -> Begin {
        if id <= self.floor {
            counter!("session.stale_requests").inc();
            return Begin::Stale;
        }
        match self.entries.get(&id) {
            Some(Entry::Running(s)) => {
                counter!("session.duplicates_waited").inc();
                return Begin::Wait(s.clone());
            }
            Some(Entry::Done(r)) => {
                counter!("session.duplicates_answered").inc();
                return Begin::Answer(r.clone());
            }
            None => {}
        }
        let slot = Rc::new(ReplaySlot {
            result: RefCell::new(None),
            done: Notify::new(),
        });
        self.entries.insert(id, Entry::Running(slot.clone()));
        // id acknowledges everything a window below it
        let floor = id.saturating_sub(self.window);
        if floor > self.floor {
            self.floor = floor;
            self.entries
                .retain(|&k, e| k > floor || matches!(e, Entry::Running(_)));
        }
        Begin::Run(slot)
    }

    /// `id` executed with `r` in `slot` (what [`Self::begin`] handed
    /// out): wake duplicates, retain the response. A request of a life
    /// the table was [`reset`](Self::reset) from since retains nothing:
    /// its id may already name another request of the new life, which
    /// must never be answered with this one's result.
    pub fn finish(&mut self, id: u64, slot: &Rc<ReplaySlot>, r: FsResult<Vec<u8>>) {
        *slot.result.borrow_mut() = Some(r.clone());
        slot.done.notify();
        let current =
            matches!(self.entries.get(&id), Some(Entry::Running(s)) if Rc::ptr_eq(s, slot));
        if !current {
            counter!("session.finished_after_reset").inc();
            return;
        }
        if id <= self.floor {
            self.entries.remove(&id);
        } else {
            self.entries.insert(id, Entry::Done(r));
        }
    }
}

/// Answers requests the server sends a client (everything but PING).
pub type IncomingHandler = Rc<dyn Fn(Request) -> LocalFut<'static, FsResult<Vec<u8>>>>;

/// Who a client greets as.
#[derive(Clone, Copy, Debug)]
pub struct ClientIdentity {
    pub fsid: u64,
    pub fmt_vers: u64,
    pub rid: u64,
    /// `GREETING_FLAG_QUORUM` when the mount is a quorum member.
    pub flags: u64,
}

/// Figures of a client session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounters {
    pub connects: u64,
    pub connect_failures: u64,
    pub disconnects: u64,
    pub idle_timeouts: u64,
    pub resends: u64,
    pub new_server_retries: u64,
    /// Server lives greeted (distinct terms in greeting replies).
    pub server_lives: u64,
    /// Quiet connections dropped because another node leads now.
    pub leader_moves: u64,
}

struct ClientState {
    ep: Option<Rc<Endpoint>>,
    /// Term of the server life last greeted (0: none yet).
    term: u64,
    /// Server lives greeted so far.
    life: u64,
    /// Closed: calls fail with this errno.
    closed: Option<Errno>,
    farewell: bool,
    /// The server refused the greeting before the first connection.
    refused: Option<Errno>,
    /// The leader (term, address) the current connection went to.
    connected_to: Option<(u64, String)>,
}

/// The client end of a session.
pub struct ClientSession {
    transport: Rc<dyn Transport>,
    leader: Rc<dyn LeaderAddr>,
    id: ClientIdentity,
    cfg: SessionConfig,
    handle: Handle,
    st: RefCell<ClientState>,
    changed: Notify,
    ids: IdWindow,
    incoming: RefCell<Replay>,
    handler: RefCell<Option<IncomingHandler>>,
    task: RefCell<Option<JoinHandle<()>>>,
    counters: Cell<SessionCounters>,
}

enum ConnectError {
    /// The server answered the greeting with an error.
    Refused(Errno),
    Failed,
}

/// Requests from the server a client handles at once.
pub const MAX_INCOMING_HANDLERS: u32 = 32;

impl ClientSession {
    /// Start connecting (in the background; see [`Self::wait_connected`]).
    pub fn start(
        transport: Rc<dyn Transport>,
        leader: Rc<dyn LeaderAddr>,
        id: ClientIdentity,
        cfg: SessionConfig,
        handle: &Handle,
    ) -> FsResult<Rc<ClientSession>> {
        if id.rid == 0 || id.rid == u64::MAX || cfg.window == 0 {
            return Err(Errno::EINVAL);
        }
        let s = Rc::new(ClientSession {
            transport,
            leader,
            id,
            cfg,
            handle: handle.clone(),
            st: RefCell::new(ClientState {
                ep: None,
                term: 0,
                life: 0,
                closed: None,
                farewell: false,
                refused: None,
                connected_to: None,
            }),
            changed: Notify::new(),
            ids: IdWindow::new(cfg.window),
            incoming: RefCell::new(Replay::new(cfg.window)),
            handler: RefCell::new(None),
            task: RefCell::new(None),
            counters: Cell::new(SessionCounters::default()),
        });
        // the task holds the session weakly: dropping the last user ends it
        let weak = Rc::downgrade(&s);
        let t = handle
            .spawn_named("session.connect", async move { run(weak).await })
            .map_err(|_| Errno::ENOMEM)?;
        *s.task.borrow_mut() = Some(t);
        Ok(s)
    }

    /// Answer the server's requests with `h`.
    pub fn set_handler(&self, h: IncomingHandler) {
        *self.handler.borrow_mut() = Some(h);
    }

    pub fn rid(&self) -> u64 {
        self.id.rid
    }

    /// Term of the server life last greeted (0 before the first).
    pub fn server_term(&self) -> u64 {
        self.st.borrow().term
    }

    pub fn counters(&self) -> SessionCounters {
        self.counters.get()
    }

    fn count(&self, f: impl FnOnce(&mut SessionCounters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    /// Is a greeted connection up right now?
    pub fn is_connected(&self) -> bool {
        self.st.borrow().ep.as_ref().is_some_and(|e| !e.is_closed())
    }

    pub fn is_closed(&self) -> bool {
        self.st.borrow().closed.is_some()
    }

    /// Wait for the first greeted connection; the server's error if it
    /// refused the greeting (wrong filesystem), `ENOLINK` once closed.
    pub async fn wait_connected(&self) -> FsResult<()> {
        loop {
            let n = self.changed.notified();
            {
                let st = self.st.borrow();
                if let Some(e) = st.closed {
                    return Err(e);
                }
                if st.life > 0 {
                    return Ok(());
                }
                if let Some(e) = st.refused {
                    return Err(e);
                }
            }
            n.await;
        }
    }

    /// Break the current socket (tests, an admin's kick): the session
    /// reconnects and resends.
    pub fn drop_connection(&self) {
        let ep = self.st.borrow().ep.clone();
        if let Some(ep) = ep {
            ep.close();
        }
    }

    /// End the session: calls in flight and later fail with `ENOLINK`.
    pub fn close(&self) {
        self.close_with(Errno::ENOLINK)
    }

    /// End the session; calls fail with `e` (the node's own server
    /// failed: nobody is left to answer).
    pub fn close_with(&self, e: Errno) {
        let (ep, task) = {
            let mut st = self.st.borrow_mut();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(e);
            (st.ep.take(), self.task.borrow_mut().take())
        };
        if let Some(ep) = ep {
            ep.close();
        }
        if let Some(t) = task {
            t.abort();
        }
        self.changed.notify();
    }

    /// Say farewell (resent, also to a new server, until answered), then
    /// close. Later greetings carry the farewell flag.
    pub async fn farewell(&self) -> FsResult<()> {
        self.st.borrow_mut().farewell = true;
        let r = self.call(cmd::FAREWELL, &[]).await;
        self.close();
        r.map(|_| ())
    }

    /// The current greeted connection and the server life it belongs to.
    async fn current(&self) -> FsResult<(Rc<Endpoint>, u64)> {
        loop {
            let n = self.changed.notified();
            {
                let st = self.st.borrow();
                if let Some(e) = st.closed {
                    return Err(e);
                }
                if let Some(ep) = st.ep.as_ref().filter(|e| !e.is_closed()) {
                    return Ok((ep.clone(), st.life));
                }
            }
            n.await;
        }
    }

    /// Send a request and wait for its answer, across reconnects: the
    /// server's answer (an errno it replied with included), `ESTALE` if
    /// the server life changed and `c` is not retried on a new server,
    /// the close errno if the session was closed.
    pub async fn call(&self, c: u8, payload: &[u8]) -> FsResult<Vec<u8>> {
        counter!("session.calls").inc();
        let id = self.ids.begin().await;
        let _g = IdGuard(&self.ids, id);
        let mut life = None;
        loop {
            let (ep, l) = self.current().await?;
            match life {
                Some(prev) if prev != l => {
                    if !retried_on_new_server(c) {
                        counter!("session.new_server_failed").inc();
                        return Err(Errno::ESTALE);
                    }
                    counter!("session.new_server_retries").inc();
                    self.count(|k| k.new_server_retries += 1);
                }
                Some(_) => {
                    counter!("session.resends").inc();
                    self.count(|k| k.resends += 1);
                }
                None => {}
            }
            life = Some(l);
            match ep.call_id(c, id, payload).await {
                Err(Errno::ECONNABORTED | Errno::ENOLINK) if ep.is_closed() => continue,
                r => return r,
            }
        }
    }

    async fn connect_once(self: &Rc<Self>) -> Result<Rc<Endpoint>, ConnectError> {
        let Some(leader) = self.leader.leader().await else {
            return Err(ConnectError::Failed);
        };
        let addr = leader.1.clone();
        let to = self.cfg.connect_timeout_ns;
        let conn = match self
            .handle
            .timeout_ns(to, self.transport.connect(&addr))
            .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(_)) | Err(_) => return Err(ConnectError::Failed),
        };
        let ep = Endpoint::start(conn, Role::Client, self.id.rid, &self.handle)
            .map_err(|_| ConnectError::Failed)?;
        let (term, farewell) = {
            let st = self.st.borrow();
            (st.term, st.farewell)
        };
        let mut flags = self.id.flags & !GREETING_FLAG_FAREWELL;
        if farewell {
            flags |= GREETING_FLAG_FAREWELL;
        }
        let g = Greeting {
            fsid: self.id.fsid,
            fmt_vers: self.id.fmt_vers,
            server_term: term,
            rid: self.id.rid,
            flags,
        };
        let reply = match self
            .handle
            .timeout_ns(to, ep.call(cmd::GREETING, &g.encode()))
            .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                ep.close();
                // a broken socket fails the call with these; anything
                // else is the server's answer
                return Err(match e {
                    Errno::ECONNABORTED | Errno::ENOLINK => ConnectError::Failed,
                    e => ConnectError::Refused(e),
                });
            }
            Err(_) => {
                ep.close();
                counter!("session.connect_timeouts").inc();
                return Err(ConnectError::Failed);
            }
        };
        let r = match Greeting::decode(&reply) {
            Ok(r)
                if r.fsid == self.id.fsid
                    && r.fmt_vers == self.id.fmt_vers
                    && r.rid == self.id.rid
                    && r.server_term != 0 =>
            {
                r
            }
            _ => {
                ep.close();
                counter!("session.bad_greeting_replies").inc();
                return Err(ConnectError::Refused(Errno::EPROTO));
            }
        };
        {
            let mut st = self.st.borrow_mut();
            if st.closed.is_some() {
                ep.close();
                return Err(ConnectError::Failed);
            }
            if r.server_term != st.term {
                if st.term != 0 {
                    TP_NEW_SERVER.emit(&[self.id.rid, r.server_term]);
                    counter!("session.new_server_lives").inc();
                }
                st.term = r.server_term;
                st.life += 1;
                // the new server's ids start over
                self.incoming.borrow_mut().reset();
            }
            st.ep = Some(ep.clone());
            st.connected_to = Some(leader);
            TP_CONNECTED.emit(&[self.id.rid, st.term, st.life]);
        }
        let life = self.st.borrow().life;
        self.count(|k| {
            k.connects += 1;
            k.server_lives = life;
        });
        counter!("session.connects").inc();
        let me = self.clone();
        let ep2 = ep.clone();
        if self
            .handle
            .spawn_named(
                "session.incoming",
                async move { me.serve_incoming(ep2).await },
            )
            .is_err()
        {
            ep.close();
            return Err(ConnectError::Failed);
        }
        self.changed.notify();
        Ok(ep)
    }

    /// Ping an idle link, close a silent one; returns once it is closed.
    async fn watch(&self, ep: &Rc<Endpoint>) {
        let mut idle = false;
        loop {
            if ep.is_closed() {
                break;
            }
            let quiet = self.handle.now_ns().saturating_sub(ep.last_recv_ns());
            if quiet >= self.cfg.idle_timeout_ns {
                idle = true;
                self.count(|k| k.idle_timeouts += 1);
                counter!("session.idle_timeouts").inc();
                ep.close();
                break;
            }
            if quiet >= self.cfg.ping_interval_ns {
                // a quiet link: if another node leads now, its server is
                // where the mount goes (the old one is dead or stepping
                // down), without waiting for the idle timeout
                if self.leader_moved().await {
                    self.count(|k| k.leader_moves += 1);
                    counter!("session.leader_moves").inc();
                    ep.close();
                    break;
                }
                counter!("session.pings").inc();
                let _ = self
                    .handle
                    .timeout_ns(self.cfg.ping_interval_ns, ep.call(cmd::PING, &[]))
                    .await;
                continue;
            }
            let _ = self
                .handle
                .timeout_ns(self.cfg.ping_interval_ns - quiet, ep.closed())
                .await;
        }
        TP_DISCONNECTED.emit(&[self.id.rid, idle as u64]);
        self.count(|k| k.disconnects += 1);
        let mut st = self.st.borrow_mut();
        if st.ep.as_ref().is_some_and(|e| Rc::ptr_eq(e, ep)) {
            st.ep = None;
        }
        drop(st);
        self.changed.notify();
    }

    /// Does the leader seam name another leader (term or address) than
    /// the one this connection went to? `None` (an election under way)
    /// is not a move.
    async fn leader_moved(&self) -> bool {
        let Some(now) = self.leader.leader().await else {
            return false;
        };
        self.st
            .borrow()
            .connected_to
            .as_ref()
            .is_some_and(|c| *c != now)
    }

    /// Requests the server sends on `ep`, each executed at most once per
    /// server life.
    async fn serve_incoming(self: Rc<Self>, ep: Rc<Endpoint>) {
        let inflight = Rc::new(Cell::new(0u32));
        let done = Rc::new(Notify::new());
        while let Some(f) = ep.next_request().await {
            if f.header.cmd == cmd::PING {
                let _ = ep.reply(&f.header, Ok(Vec::new())).await;
                continue;
            }
            loop {
                let d = done.notified();
                if inflight.get() < MAX_INCOMING_HANDLERS {
                    break;
                }
                d.await;
            }
            inflight.set(inflight.get() + 1);
            let me = self.clone();
            let ep2 = ep.clone();
            let (inf, dn) = (inflight.clone(), done.clone());
            let spawned = self.handle.spawn_named("session.request", async move {
                let id = f.header.id;
                let begin = me.incoming.borrow_mut().begin(id);
                let r = match begin {
                    Begin::Run(slot) => {
                        let handler = me.handler.borrow().clone();
                        let r = match (Request::decode(f.header.cmd, &f.payload), handler) {
                            (Ok(req), Some(h)) => h(req).await,
                            (Ok(_), None) => Err(Errno::EINVAL),
                            (Err(e), _) => Err(e),
                        };
                        me.incoming.borrow_mut().finish(id, &slot, r.clone());
                        Some(r)
                    }
                    Begin::Wait(s) => Some(s.wait().await),
                    Begin::Answer(r) => Some(r),
                    Begin::Stale => None,
                };
                if let Some(r) = r {
                    let _ = ep2.reply(&f.header, r).await;
                }
                inf.set(inf.get() - 1);
                dn.notify();
            });
            if spawned.is_err() {
                inflight.set(inflight.get() - 1);
                let _ = ep.reply(&f.header, Err(Errno::ENOMEM)).await;
            }
        }
    }
}

/// The connection task: connect, watch, reconnect with backoff. It holds
/// the session only while it works on it; close it to stop.
async fn run(weak: alloc::rc::Weak<ClientSession>) {
    let mut delay = 0u64;
    loop {
        if delay > 0 {
            let Some(h) = weak.upgrade().map(|s| s.handle.clone()) else {
                return;
            };
            h.sleep_ns(delay).await;
        }
        let Some(s) = weak.upgrade() else {
            return;
        };
        if s.is_closed() {
            return;
        }
        match s.connect_once().await {
            Ok(ep) => {
                delay = 0;
                s.watch(&ep).await;
            }
            Err(e) => {
                if let ConnectError::Refused(e) = e {
                    let life = s.st.borrow().life;
                    if life == 0 {
                        s.st.borrow_mut().refused = Some(e);
                        s.changed.notify();
                    } else if e == Errno::ENOENT {
                        // the server has no mount of this rid any more:
                        // it was fenced and reclaimed while away
                        TP_RECLAIMED.emit(&[s.id.rid]);
                        counter!("session.reclaimed").inc();
                        log::error!(
                            "session: the server reclaimed rid {:016x} (fenced): closing",
                            s.id.rid
                        );
                        s.close_with(Errno::EIO);
                        return;
                    }
                }
                s.count(|k| k.connect_failures += 1);
                counter!("session.connect_failures").inc();
                delay = next_delay(delay, &s.cfg);
            }
        }
    }
}

fn next_delay(delay: u64, cfg: &SessionConfig) -> u64 {
    if delay == 0 {
        cfg.reconnect_delay_ns
    } else {
        delay.saturating_mul(2).min(cfg.max_reconnect_delay_ns)
    }
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        if let Some(ep) = self.st.borrow_mut().ep.take() {
            ep.close();
        }
        if let Some(t) = self.task.borrow_mut().take() {
            t.abort();
        }
    }
}

/// The server's side of one client's session (per rid, per server life):
/// its replay table, its current connection, and calls to it.
pub struct ServerPeer {
    rid: u64,
    cfg: SessionConfig,
    handle: Handle,
    replay: RefCell<Replay>,
    ep: RefCell<Option<Rc<Endpoint>>>,
    changed: Notify,
    ids: IdWindow,
    gone: Cell<bool>,
    /// When its last connection ended, while it has none.
    away_since: Cell<Option<u64>>,
}

impl ServerPeer {
    pub fn new(rid: u64, cfg: SessionConfig, handle: &Handle) -> ServerPeer {
        ServerPeer {
            rid,
            cfg,
            handle: handle.clone(),
            replay: RefCell::new(Replay::new(cfg.window.max(1))),
            ep: RefCell::new(None),
            changed: Notify::new(),
            ids: IdWindow::new(cfg.window.max(1)),
            gone: Cell::new(false),
            away_since: Cell::new(None),
        }
    }

    /// When the client's last connection ended, while it has none.
    pub fn away_since(&self) -> Option<u64> {
        self.away_since.get()
    }

    /// It left (farewell) or the server forgot it.
    pub fn is_gone(&self) -> bool {
        self.gone.get()
    }

    pub fn rid(&self) -> u64 {
        self.rid
    }

    /// `ep` is the rid's connection from now on; an older one is closed
    /// (its requests are resent on `ep`).
    pub fn attach(&self, ep: &Rc<Endpoint>) {
        let old = self.ep.borrow_mut().replace(ep.clone());
        self.away_since.set(None);
        if let Some(old) = old.filter(|o| !Rc::ptr_eq(o, ep)) {
            counter!("session.server_conn_replaced").inc();
            old.close();
        }
        self.changed.notify();
    }

    /// `ep` ended.
    pub fn detach(&self, ep: &Rc<Endpoint>) {
        let mut cur = self.ep.borrow_mut();
        if cur.as_ref().is_some_and(|c| Rc::ptr_eq(c, ep)) {
            *cur = None;
            self.away_since.set(Some(self.handle.now_ns()));
        }
        drop(cur);
        self.changed.notify();
    }

    /// The client left (farewell) or the server stops: calls to it fail.
    /// The connection is left to the client to close after a farewell
    /// (closing first would make it reconnect before it saw the answer);
    /// the idle timeout ends it otherwise.
    pub fn forget(&self, close: bool) {
        self.gone.set(true);
        if let Some(ep) = self.ep.borrow_mut().take() {
            if close {
                ep.close();
            }
        }
        self.changed.notify();
    }

    pub fn is_connected(&self) -> bool {
        self.ep.borrow().as_ref().is_some_and(|e| !e.is_closed())
    }

    /// Responses retained for resends.
    pub fn retained(&self) -> usize {
        self.replay.borrow().retained()
    }

    /// Decide what to do with request `id` of this client.
    pub fn begin(&self, id: u64) -> Begin {
        self.replay.borrow_mut().begin(id)
    }

    pub fn finish(&self, id: u64, slot: &Rc<ReplaySlot>, r: FsResult<Vec<u8>>) {
        self.replay.borrow_mut().finish(id, slot, r)
    }

    async fn current(&self, deadline: u64) -> FsResult<Rc<Endpoint>> {
        loop {
            let n = self.changed.notified();
            if self.gone.get() {
                return Err(Errno::ENOLINK);
            }
            if let Some(ep) = self.ep.borrow().as_ref().filter(|e| !e.is_closed()) {
                return Ok(ep.clone());
            }
            if self.handle.timeout_at(deadline, n).await.is_err() {
                counter!("session.server_call_no_client").inc();
                return Err(Errno::ENOLINK);
            }
        }
    }

    /// Call the client; resent on its next socket if this one breaks.
    /// `ENOLINK` if it stays away for the reconnect window or left.
    pub async fn call(&self, c: u8, payload: &[u8]) -> FsResult<Vec<u8>> {
        counter!("session.server_calls").inc();
        let id = self.ids.begin().await;
        let _g = IdGuard(&self.ids, id);
        let mut deadline = self.handle.now_ns() + self.cfg.reconnect_window_ns;
        loop {
            let ep = self.current(deadline).await?;
            match ep.call_id(c, id, payload).await {
                Err(Errno::ECONNABORTED | Errno::ENOLINK) if ep.is_closed() => {
                    counter!("session.server_call_resends").inc();
                    deadline = self.handle.now_ns() + self.cfg.reconnect_window_ns;
                }
                r => return r,
            }
        }
    }

    /// Close `ep` once nothing arrived on it for the idle timeout.
    pub async fn watch_idle(&self, ep: &Endpoint) {
        loop {
            if ep.is_closed() {
                return;
            }
            let quiet = self.handle.now_ns().saturating_sub(ep.last_recv_ns());
            if quiet >= self.cfg.idle_timeout_ns {
                counter!("session.server_idle_timeouts").inc();
                ep.close();
                return;
            }
            let _ = self
                .handle
                .timeout_ns(self.cfg.idle_timeout_ns - quiet, ep.closed())
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::exec::Executor;

    #[test]
    fn replay_runs_once_answers_duplicates_and_forgets_below_the_window() {
        let mut r = Replay::new(4);
        let Begin::Run(s1) = r.begin(1) else {
            panic!("new id runs")
        };
        assert!(matches!(r.begin(1), Begin::Wait(_)));
        r.finish(1, &s1, Ok(alloc::vec![7]));
        assert!(matches!(r.begin(1), Begin::Answer(Ok(ref v)) if v == &[7]));
        for id in 2..=5 {
            let Begin::Run(s) = r.begin(id) else {
                panic!("new id runs")
            };
            r.finish(id, &s, Err(Errno::ENOSPC));
        }
        assert!(matches!(r.begin(2), Begin::Answer(Err(Errno::ENOSPC))));
        // id 5 acknowledged id 1: forgotten and refused
        assert!(matches!(r.begin(1), Begin::Stale));
        assert!(r.retained() <= 4);
        assert!(matches!(r.begin(100), Begin::Run(_)));
        assert!(matches!(r.begin(90), Begin::Stale));
        assert!(r.retained() <= 5);
        r.reset();
        assert!(matches!(r.begin(1), Begin::Run(_)));
    }

    /// A request of the last life that finishes after the reset must not
    /// answer the new life's request of the same id (a stale lock
    /// invalidation answer would tell a new server a lock was lowered).
    #[test]
    fn a_request_finishing_after_a_reset_answers_no_one_of_the_new_life() {
        let mut r = Replay::new(8);
        let Begin::Run(old) = r.begin(5) else {
            panic!("new id runs")
        };
        r.reset();
        let Begin::Run(new) = r.begin(5) else {
            panic!("the new life's id 5 runs")
        };
        r.finish(5, &old, Ok(alloc::vec![9]));
        assert!(matches!(r.begin(5), Begin::Wait(_)), "still the new one's");
        r.finish(5, &new, Ok(alloc::vec![1]));
        assert!(matches!(r.begin(5), Begin::Answer(Ok(ref v)) if v == &[1]));
        // and with no new request of that id: nothing retained
        let Begin::Run(old) = r.begin(6) else {
            panic!("new id runs")
        };
        r.reset();
        r.finish(6, &old, Ok(alloc::vec![9]));
        assert_eq!(r.retained(), 0);
    }

    #[test]
    fn a_waiting_duplicate_gets_the_result_of_the_running_request() {
        let ex = Executor::default();
        let out = ex
            .block_on(async {
                let mut r = Replay::new(8);
                let Begin::Run(run) = r.begin(3) else {
                    panic!("new id runs")
                };
                let Begin::Wait(s) = r.begin(3) else {
                    panic!("duplicate must wait")
                };
                r.finish(3, &run, Ok(alloc::vec![1, 2]));
                s.wait().await
            })
            .unwrap();
        assert_eq!(out, Ok(alloc::vec![1, 2]));
    }

    #[test]
    fn the_id_window_holds_new_ids_until_the_oldest_ends() {
        let ex = Executor::default();
        let h = ex.handle();
        let w = Rc::new(IdWindow::new(3));
        let got = ex
            .block_on(async {
                let a = w.begin().await;
                let b = w.begin().await;
                let c = w.begin().await;
                assert_eq!((a, b, c), (1, 2, 3));
                let w2 = w.clone();
                let j = h.spawn(async move { w2.begin().await }).unwrap();
                h.sleep_ns(10).await;
                assert!(!j.is_finished(), "a fourth id would span more than 3");
                w.end(2);
                h.sleep_ns(10).await;
                assert!(!j.is_finished(), "the oldest (1) is still out");
                w.end(1);
                j.await
            })
            .unwrap();
        assert_eq!(got, 4);
        assert_eq!(w.outstanding(), 2);
    }

    #[test]
    fn every_command_we_send_is_retried_on_a_new_server_but_locks() {
        for c in [
            cmd::ALLOC_INODES,
            cmd::GET_LOG_TREES,
            cmd::COMMIT_LOG_TREES,
            cmd::GET_ROOTS,
            cmd::STATFS,
            cmd::FAREWELL,
            cmd::OPEN_INO_MAP,
        ] {
            assert!(retried_on_new_server(c), "{}", cmd::name(c));
        }
        assert!(!retried_on_new_server(cmd::LOCK));
        assert!(!retried_on_new_server(cmd::GREETING));
    }
}
