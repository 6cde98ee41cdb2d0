//! One FUSE connection: its frame buffer, the negotiated protocol, node
//! lookup counts, open handles, the requests in flight, the replies not
//! yet sent and the memory they hold; how frames become request tasks;
//! and [`serve`], which drives a connection over a byte stream.
//!
//! [`Conn`] is sans-IO: the caller [`feed`](Conn::feed)s the bytes the
//! peer sent, calls [`process`](Conn::process) and takes replies out of
//! [`take_output`](Conn::take_output) in completion order (FUSE matches
//! them by `unique`). Invariants: at most `requests_max` requests in
//! flight; every request in flight has a distinct `unique` (a duplicate
//! is answered `EINVAL`); a frame longer than [`Server::frame_max`] or
//! whose `len` is below a header closes the connection (the stream cannot
//! be resynced), any other malformed message gets `EINVAL` (or is dropped
//! and counted when it has no usable header or expects no reply); `INIT`
//! is a barrier (it waits for the requests in flight); teardown cancels
//! what waits, waits for the rest, then releases every handle and lock
//! before the connection unregisters.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::future::Future;

use scoutvm_fs::counter;
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::types::Ino;
use scoutvm_fs::runtime::exec::{Notified, Notify};

use super::ops;
use super::server::{ClientInfo, Connection, Server, TRACE_CONN};
use super::wire::{self, op, DecodeError, InHeader, Request, IN_HEADER_LEN};
use crate::p9::access::Identity;
use crate::p9::conn::{race, Either, READ_CHUNK_BYTES, WRITER_DRAIN_NS};
use crate::p9::{ByteStream, FrameReader, Peer};

/// Why a connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnError {
    /// The byte stream is not FUSE (a length below a header or over
    /// the frame bound).
    Framing,
    /// The connection is closing.
    Closed,
}

/// One request in flight.
pub(crate) struct Req {
    pub(crate) unique: u64,
    cost: usize,
    cancelled: Cell<bool>,
    cancel: Notify,
}

impl Req {
    /// An `INTERRUPT` (or teardown) asked to stop this request.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.get()
    }

    fn request_cancel(&self) {
        self.cancelled.set(true);
        self.cancel.notify();
    }

    /// Run `f`, a wait that is safe to abandon; `None` if the request is
    /// interrupted first.
    pub(crate) async fn cancellable<F: Future>(&self, f: F) -> Option<F::Output> {
        let wait = self.cancel.notified();
        if self.cancelled.get() {
            return None;
        }
        match race(f, wait).await {
            Either::Left(v) => Some(v),
            Either::Right(()) => None,
        }
    }
}

/// An open file or directory (`fh` in requests).
#[derive(Debug)]
pub(crate) struct OpenHandle {
    pub(crate) ino: Ino,
    /// The `open(2)` flags (`O_ACCMODE`, `O_APPEND`, ...).
    pub(crate) flags: u32,
    pub(crate) dir: bool,
}

/// What `INIT` settled.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Proto {
    pub(crate) minor: u32,
    pub(crate) max_write: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct ConnStats {
    requests: u64,
}

/// The state of one client connection.
pub struct Conn {
    pub(crate) id: u64,
    pub(crate) server: Rc<Server>,
    pub(crate) peer: Peer,
    /// The peer's network is on the allow-list (else every request gets
    /// `EACCES`).
    pub(crate) allowed: bool,
    frames: RefCell<FrameReader>,
    /// `None` until `INIT` succeeds.
    pub(crate) proto: Cell<Option<Proto>>,
    /// Lookup counts by node id (= inode number).
    pub(crate) nodes: RefCell<BTreeMap<u64, u64>>,
    pub(crate) handles: RefCell<BTreeMap<u64, Rc<OpenHandle>>>,
    pub(crate) next_fh: Cell<u64>,
    pub(crate) users: RefCell<BTreeMap<u32, Rc<Identity>>>,
    inflight: RefCell<BTreeMap<u64, Rc<Req>>>,
    /// Requests in flight blocked in `SETLKW`: they do not count against
    /// `requests_max`, so the unlock (or `INTERRUPT`) that frees them can
    /// still be read.
    pub(crate) lock_waiters: Cell<usize>,
    outbox: RefCell<VecDeque<Vec<u8>>>,
    /// Bytes reserved by requests in flight and held by unsent replies.
    held: Cell<usize>,
    /// A frame taken from the stream that waits for memory.
    stalled: RefCell<Option<Vec<u8>>>,
    out_ready: Notify,
    progress: Notify,
    barrier: Cell<bool>,
    closing: Cell<bool>,
    closed: Cell<bool>,
    aborted: Cell<bool>,
    stats: Cell<ConnStats>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.server.unregister(self.id);
    }
}

impl Conn {
    /// A new connection from `peer`; `None` if the server is full or
    /// shutting down (close the stream).
    pub fn new(server: &Rc<Server>, peer: Peer) -> Option<Rc<Conn>> {
        let conn = server.register(|id| {
            Rc::new(Conn {
                id,
                server: server.clone(),
                peer,
                allowed: server.config.allow.allows(peer.addr),
                frames: RefCell::new(FrameReader::new(server.frame_max())),
                proto: Cell::new(None),
                nodes: RefCell::new(BTreeMap::new()),
                handles: RefCell::new(BTreeMap::new()),
                next_fh: Cell::new(1),
                users: RefCell::new(BTreeMap::new()),
                inflight: RefCell::new(BTreeMap::new()),
                lock_waiters: Cell::new(0),
                outbox: RefCell::new(VecDeque::new()),
                held: Cell::new(0),
                stalled: RefCell::new(None),
                out_ready: Notify::new(),
                progress: Notify::new(),
                barrier: Cell::new(false),
                closing: Cell::new(false),
                closed: Cell::new(false),
                aborted: Cell::new(false),
                stats: Cell::new(ConnStats::default()),
            })
        })?;
        counter!("fuse.connections").inc();
        TRACE_CONN.emit(&[conn.id, peer.addr_u32() as u64, peer.port as u64, 1]);
        Some(conn)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Take as many bytes as the frame buffer has room for.
    pub fn feed(&self, bytes: &[u8]) -> usize {
        let n = self.frames.borrow_mut().feed(bytes);
        counter!("fuse.bytes_received").add(n as u64);
        n
    }

    /// Can another request be dispatched now? (Not while an `INIT` runs
    /// or the queue is full.)
    pub fn can_dispatch(&self) -> bool {
        let busy = self.inflight.borrow().len() - self.lock_waiters.get();
        !self.barrier.get() && !self.closing.get() && busy < self.server.config.requests_max
    }

    /// A `SETLKW` starts (`true`) or stops waiting. `false` if the
    /// connection already has `lock_waiters_max` waiters.
    pub(crate) fn lock_wait(&self, start: bool) -> bool {
        let n = self.lock_waiters.get();
        if start {
            if n >= self.server.config.lock_waiters_max {
                return false;
            }
            self.lock_waiters.set(n + 1);
        } else {
            assert!(n > 0, "lock waiter count out of step");
            self.lock_waiters.set(n - 1);
        }
        self.progress.notify();
        true
    }

    /// A frame waits for this connection's memory (replies to drain).
    pub fn is_stalled(&self) -> bool {
        self.stalled.borrow().is_some()
    }

    /// Bytes held by requests in flight and unsent replies.
    pub fn memory_held(&self) -> usize {
        self.held.get()
    }

    /// Nothing in flight and no `INIT` under way.
    pub fn is_idle(&self) -> bool {
        self.inflight.borrow().is_empty() && !self.barrier.get()
    }

    pub fn requests_in_flight(&self) -> usize {
        self.inflight.borrow().len()
    }

    /// Node ids with a lookup count, and the count of `nodeid`.
    pub fn node_count(&self) -> usize {
        self.nodes.borrow().len()
    }

    pub fn lookups_of(&self, nodeid: u64) -> u64 {
        self.nodes.borrow().get(&nodeid).copied().unwrap_or(0)
    }

    pub fn handle_count(&self) -> usize {
        self.handles.borrow().len()
    }

    fn try_reserve(&self, n: usize) -> bool {
        if self.held.get() + n > self.server.config.conn_memory_max_bytes {
            return false;
        }
        self.held.set(self.held.get() + n);
        true
    }

    fn release_bytes(&self, n: usize) {
        assert!(self.held.get() >= n, "released more than held");
        self.held.set(self.held.get() - n);
        self.progress.notify();
    }

    /// Queue a reply; it holds its bytes until the writer takes it.
    pub(crate) fn push_output(&self, frame: Vec<u8>) {
        debug_assert_eq!(
            wire::OutHeader::decode(&frame).map(|h| h.len as usize),
            Some(frame.len())
        );
        counter!("fuse.bytes_sent").add(frame.len() as u64);
        if self.closed.get() {
            return;
        }
        self.held.set(self.held.get() + frame.len());
        self.outbox.borrow_mut().push_back(frame);
        self.out_ready.notify();
    }

    fn push_error(&self, unique: u64, e: Errno) {
        self.push_output(wire::error_reply(unique, e.0));
    }

    /// The next reply to send, in completion order.
    pub fn take_output(&self) -> Option<Vec<u8>> {
        let frame = self.outbox.borrow_mut().pop_front()?;
        self.release_bytes(frame.len());
        Some(frame)
    }

    /// Completes when output may be waiting.
    pub fn output_ready(&self) -> Notified {
        self.out_ready.notified()
    }

    /// Completes when a request finishes, a barrier lifts or the
    /// connection is aborted.
    pub fn progress(&self) -> Notified {
        self.progress.notified()
    }

    /// Teardown finished: nothing more will be queued.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.get()
    }

    /// Ask the connection to stop (server shutdown).
    pub fn abort(&self) {
        self.aborted.set(true);
        self.progress.notify();
    }

    pub fn info(&self) -> ClientInfo {
        let p = self.proto.get().unwrap_or_default();
        ClientInfo {
            id: self.id,
            peer: self.peer,
            allowed: self.allowed,
            minor: p.minor,
            max_write: p.max_write,
            nodes: self.nodes.borrow().len(),
            handles: self.handles.borrow().len(),
            requests_in_flight: self.inflight.borrow().len(),
            requests_total: self.stats.get().requests,
            memory_held: self.held.get(),
        }
    }

    // -- dispatch -----------------------------------------------------------

    /// Dispatch every whole frame while requests may start. Returns how
    /// many frames were taken; `Err` means close the connection.
    pub fn process(self: &Rc<Self>) -> Result<usize, ConnError> {
        let mut taken = 0;
        loop {
            if self.closing.get() {
                return Err(ConnError::Closed);
            }
            let stalled = self.stalled.borrow_mut().take();
            if !self.can_dispatch() {
                if !self.barrier.get() && self.frames.borrow().buffered() > 0 {
                    counter!("fuse.request_queue_full").inc();
                }
                *self.stalled.borrow_mut() = stalled;
                return Ok(taken);
            }
            let frame = match stalled {
                Some(f) => f,
                None => match self.frames.borrow_mut().next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => return Ok(taken),
                    Err(e) => {
                        counter!("fuse.framing_errors").inc();
                        log::debug!("fuse: connection {} closed: {e}", self.id);
                        return Err(ConnError::Framing);
                    }
                },
            };
            if frame.len() < IN_HEADER_LEN {
                // A consistent length but no room for a header: nothing
                // to answer, and the next frame starts right after it.
                counter!("fuse.malformed_dropped").inc();
                taken += 1;
                continue;
            }
            if let Some(frame) = self.dispatch(frame) {
                counter!("fuse.memory_full").inc();
                *self.stalled.borrow_mut() = Some(frame);
                return Ok(taken);
            }
            taken += 1;
        }
    }

    /// The most a reply to `req` can take.
    fn reply_estimate(&self, req: &Request<'_>) -> usize {
        let io = self
            .proto
            .get()
            .map_or(self.server.config.max_write, |p| p.max_write) as usize;
        let x = super::server::XATTR_VALUE_MAX;
        wire::OUT_HEADER_LEN
            + match req {
                Request::Read { size, .. }
                | Request::Readdir { size, .. }
                | Request::Readdirplus { size, .. } => (*size as usize).min(io),
                Request::Getxattr { size, .. } | Request::Listxattr { size } => {
                    (*size as usize).min(x)
                }
                Request::Readlink => wire::PATH_MAX,
                _ => 512,
            }
    }

    /// Start one frame; gives it back if the connection's memory cannot
    /// take it now.
    fn dispatch(self: &Rc<Self>, frame: Vec<u8>) -> Option<Vec<u8>> {
        let (h, cost, init) = match wire::decode_request(&frame) {
            Err(DecodeError::NoHeader) => {
                counter!("fuse.malformed_dropped").inc();
                return None;
            }
            Err(DecodeError::BadBody(h)) => {
                counter!("fuse.malformed").inc();
                if Request::is_unanswered(h.opcode) {
                    return None;
                }
                if !self.try_reserve(64) {
                    return Some(frame);
                }
                log::debug!(
                    "fuse: connection {}: opcode {} malformed",
                    self.id,
                    h.opcode
                );
                self.push_error(h.unique, Errno::EINVAL);
                self.release_bytes(64);
                return None;
            }
            Ok((h, req)) => {
                let init = match req {
                    Request::Init {
                        major,
                        minor,
                        max_readahead,
                        flags,
                    } => Some((major, minor, max_readahead, flags)),
                    _ => None,
                };
                (h, frame.len() + self.reply_estimate(&req), init)
            }
        };
        if !self.try_reserve(cost) {
            return Some(frame);
        }
        let mut s = self.stats.get();
        s.requests += 1;
        self.stats.set(s);
        counter!("fuse.requests").inc();
        if let Some(init) = init {
            self.start_init(h.unique, init, cost);
            return None;
        }
        match h.opcode {
            op::FORGET | op::BATCH_FORGET | op::INTERRUPT | op::NOTIFY_REPLY => {
                // Bookkeeping without a reply, done in order right here.
                if self.proto.get().is_some() {
                    if let Ok((h, req)) = wire::decode_request(&frame) {
                        self.unanswered(h.nodeid, req);
                    }
                }
                self.release_bytes(cost);
                return None;
            }
            _ => {}
        }
        if self.inflight.borrow().contains_key(&h.unique) {
            counter!("fuse.duplicate_uniques").inc();
            self.push_error(h.unique, Errno::EINVAL);
            self.release_bytes(cost);
            return None;
        }
        if !self.allowed {
            counter!("fuse.refused").inc();
            self.push_error(h.unique, Errno::EACCES);
            self.release_bytes(cost);
            return None;
        }
        if self.proto.get().is_none() {
            self.push_error(h.unique, Errno::EIO);
            self.release_bytes(cost);
            return None;
        }
        self.start_request(h, frame, cost);
        None
    }

    /// `FORGET`, `BATCH_FORGET`, `INTERRUPT`.
    fn unanswered(&self, nodeid: u64, req: Request<'_>) {
        match req {
            Request::Forget { nlookup } => self.forget(nodeid, nlookup),
            Request::BatchForget { forgets } => {
                for (nodeid, n) in forgets {
                    self.forget(nodeid, n);
                }
            }
            Request::Interrupt { unique } => {
                counter!("fuse.interrupts").inc();
                // Not found: it already finished (the stream is ordered).
                if let Some(r) = self.inflight.borrow().get(&unique) {
                    r.request_cancel();
                }
            }
            _ => {}
        }
    }

    /// Drop `n` lookups of `nodeid`.
    pub(crate) fn forget(&self, nodeid: u64, n: u64) {
        counter!("fuse.forgets").inc();
        let mut nodes = self.nodes.borrow_mut();
        match nodes.get_mut(&nodeid) {
            Some(c) if *c > n => *c -= n,
            Some(_) => {
                nodes.remove(&nodeid);
            }
            None => counter!("fuse.forget_unknown").inc(),
        }
    }

    /// Count one more lookup of `nodeid` (the root is never forgotten).
    pub(crate) fn remember(&self, nodeid: u64) {
        if nodeid == wire::ROOT_ID {
            return;
        }
        let mut nodes = self.nodes.borrow_mut();
        if let Some(c) = nodes.get_mut(&nodeid) {
            *c = c.saturating_add(1);
            return;
        }
        if nodes.len() >= self.server.config.nodes_max {
            counter!("fuse.node_limit").inc();
            return;
        }
        nodes.insert(nodeid, 1);
    }

    fn start_request(self: &Rc<Self>, h: InHeader, frame: Vec<u8>, cost: usize) {
        let req = Rc::new(Req {
            unique: h.unique,
            cost,
            cancelled: Cell::new(false),
            cancel: Notify::new(),
        });
        self.inflight.borrow_mut().insert(h.unique, req.clone());
        let conn = self.clone();
        let task = async move {
            let reply = match wire::decode_request(&frame) {
                Ok((h, msg)) => ops::handle(&conn, &req, &h, msg).await,
                // dispatch decoded this very frame.
                Err(_) => unreachable!("a dispatched frame no longer decodes"),
            };
            drop(frame);
            conn.finish(&req, reply);
        };
        if self.server.exec.spawn(task).is_err() {
            counter!("fuse.spawn_failed").inc();
            self.inflight.borrow_mut().remove(&h.unique);
            self.push_error(h.unique, Errno::EAGAIN);
            self.release_bytes(cost);
        }
    }

    fn finish(&self, req: &Rc<Req>, reply: Vec<u8>) {
        self.push_output(reply);
        {
            let mut inflight = self.inflight.borrow_mut();
            if inflight
                .get(&req.unique)
                .is_some_and(|r| Rc::ptr_eq(r, req))
            {
                inflight.remove(&req.unique);
            }
        }
        self.release_bytes(req.cost);
        self.progress.notify();
    }

    /// `INIT`: wait for every request, drop what an earlier session left
    /// (a re-`INIT` starts over), negotiate.
    fn start_init(self: &Rc<Self>, unique: u64, init: (u32, u32, u32, u32), cost: usize) {
        self.barrier.set(true);
        let conn = self.clone();
        let task = async move {
            conn.wait_idle().await;
            conn.release_all().await;
            conn.proto.set(None);
            let reply = if conn.allowed {
                ops::init(&conn, unique, init)
            } else {
                counter!("fuse.refused").inc();
                log::warn!("fuse: refused {} (not in fuse.allow)", conn.peer);
                wire::error_reply(unique, Errno::EACCES.0)
            };
            conn.push_output(reply);
            conn.release_bytes(cost);
            conn.barrier.set(false);
            conn.progress.notify();
        };
        if self.server.exec.spawn(task).is_err() {
            counter!("fuse.spawn_failed").inc();
            self.barrier.set(false);
            self.push_error(unique, Errno::EAGAIN);
            self.release_bytes(cost);
        }
    }

    async fn wait_idle(&self) {
        loop {
            let n = self.progress.notified();
            if self.inflight.borrow().is_empty() {
                return;
            }
            n.await;
        }
    }

    /// Release every open handle and lock, forget every node (`DESTROY`,
    /// re-`INIT`, teardown).
    pub(crate) async fn release_all(&self) {
        let handles = core::mem::take(&mut *self.handles.borrow_mut());
        for (fh, h) in handles {
            if let Err(e) = self.server.mount.release(h.ino).await {
                counter!("fuse.teardown_errors").inc();
                log::warn!("fuse: connection {}: releasing fh {fh}: {e:?}", self.id);
            }
        }
        if self.server.locks.borrow_mut().release_conn(self.id) > 0 {
            self.server.locks_changed.notify();
        }
        self.nodes.borrow_mut().clear();
    }

    /// Tear down: cancel what waits, let the rest finish, release every
    /// handle and lock, unregister.
    pub async fn close(self: &Rc<Self>) {
        if self.closing.replace(true) {
            while !self.closed.get() {
                self.progress.notified().await;
            }
            return;
        }
        let reqs: Vec<Rc<Req>> = self.inflight.borrow().values().cloned().collect();
        for r in &reqs {
            r.request_cancel();
        }
        self.wait_idle().await;
        // An INIT task may still run: wait for its barrier.
        while self.barrier.get() {
            self.progress.notified().await;
        }
        self.release_all().await;
        self.closed.set(true);
        self.out_ready.notify();
        self.progress.notify();
        TRACE_CONN.emit(&[
            self.id,
            self.peer.addr_u32() as u64,
            self.peer.port as u64,
            0,
        ]);
        self.server.unregister(self.id);
    }

    /// Completes once the connection is aborted.
    async fn until_abort(&self) {
        loop {
            let n = self.progress();
            if self.aborted.get() {
                return;
            }
            n.await;
        }
    }
}

impl Connection for Conn {
    type Info = ClientInfo;

    fn info(&self) -> ClientInfo {
        Conn::info(self)
    }

    fn abort(&self) {
        Conn::abort(self)
    }
}

/// Serve one connection until the peer goes away or the server shuts
/// down: read and dispatch requests, write replies, then tear down.
pub async fn serve<S: ByteStream + 'static>(server: Rc<Server>, stream: Rc<S>, peer: Peer) {
    let Some(conn) = Conn::new(&server, peer) else {
        stream.close();
        return;
    };
    let writer = {
        let conn = conn.clone();
        let stream = stream.clone();
        server.exec.spawn(async move {
            let mut broken = false;
            loop {
                let wait = conn.output_ready();
                while let Some(frame) = conn.take_output() {
                    if !broken && stream.write_all(&frame).await.is_err() {
                        broken = true;
                        conn.abort();
                    }
                }
                if conn.is_closed() {
                    return;
                }
                wait.await;
            }
        })
    };
    let Ok(mut writer) = writer else {
        counter!("fuse.spawn_failed").inc();
        stream.close();
        conn.close().await;
        return;
    };
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        if conn.is_aborted() {
            break;
        }
        let wait = conn.progress();
        if !conn.can_dispatch() {
            wait.await;
            continue;
        }
        if conn.process().is_err() {
            break;
        }
        if !conn.can_dispatch() || conn.is_stalled() {
            wait.await;
            continue;
        }
        if start < end {
            let n = conn.feed(&buf[start..end]);
            // A partial frame is shorter than the bound, so there is room.
            assert!(n > 0, "frame buffer full without a whole frame");
            start += n;
            continue;
        }
        let read = race(stream.read(&mut buf), conn.until_abort()).await;
        match read {
            Either::Left(Ok(n)) if n > 0 => {
                start = 0;
                end = n;
            }
            _ => break,
        }
    }
    conn.close().await;
    let h = server.exec.clone();
    if h.timeout_ns(WRITER_DRAIN_NS, &mut writer).await.is_err() {
        stream.close();
        writer.await;
    }
    stream.close();
}
