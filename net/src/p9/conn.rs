//! One 9P connection: bytes in, replies out, one task per request.
//!
//! [`Conn`] is the sans-IO core: the caller [`feed`](Conn::feed)s the bytes
//! the peer sent, [`process`](Conn::process) cuts them into frames and
//! dispatches each request as its own task on the executor, and replies
//! come out of [`take_output`](Conn::take_output) in completion order.
//! [`serve`] drives a `Conn` over any [`ByteStream`] (a TCP socket in the
//! appliance, an in-memory pipe in tests) with a reader loop and a writer
//! task. `Tversion` is a barrier (no other request runs across it);
//! `Tflush` cancels a request that is still waiting (queued, or blocked on
//! a lock) and answers `Rflush` only after the flushed request's reply or
//! its cancellation. Invariants: at most `requests_max` requests in flight
//! (the reader stops reading past it); every request in flight has a
//! distinct tag; a frame larger than msize or without a valid header
//! closes the connection, any other malformed message gets `Rlerror`;
//! teardown cancels what waits, waits for the rest, then clunks every fid
//! (releasing opens and locks) before the connection unregisters.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::Poll;

use scoutvm_fs::counter;
use scoutvm_fs::runtime::exec::{Notified, Notify};

use super::access::Identity;
use super::fid::FidTable;
use super::frame::FrameReader;
use super::ops;
use super::server::{ClientInfo, Peer, Server, MSIZE_MIN, TRACE_CONN};
use super::wire::{self, Rmsg, Tmsg, VERSION_9P2000_L, VERSION_UNKNOWN};

/// Bytes the reader asks the stream for at a time.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// How long the writer may take to hand the last replies to a closing
/// stream before it is cut.
pub const WRITER_DRAIN_NS: u64 = 5_000_000_000;

/// The peer's stream is closed or broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamClosed;

/// A reliable, ordered byte stream (a TCP connection). Reads and writes
/// take `&self` so one task can read while another writes.
pub trait ByteStream {
    /// Some bytes into `buf`; `Ok(0)` at end of stream.
    fn read<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = Result<usize, StreamClosed>> + 'a;
    fn write_all<'a>(
        &'a self,
        buf: &'a [u8],
    ) -> impl Future<Output = Result<(), StreamClosed>> + 'a;
    /// Close (or abort) the stream; pending and later reads and writes
    /// fail or see end of stream.
    fn close(&self);
}

/// Why a connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnError {
    /// The byte stream is not 9P (bad size field, frame over msize).
    Framing,
    /// A tag reused while its request is in flight.
    DuplicateTag(u16),
    /// The connection is closing.
    Closed,
}

/// One request in flight.
pub struct Request {
    pub tag: u16,
    pub ty: u8,
    /// Bytes reserved for it (its frame and the largest reply).
    cost: usize,
    cancelled: Cell<bool>,
    cancel: Notify,
    done: Cell<bool>,
    done_notify: Notify,
}

impl Request {
    fn new(tag: u16, ty: u8, cost: usize) -> Request {
        Request {
            tag,
            ty,
            cost,
            cancelled: Cell::new(false),
            cancel: Notify::new(),
            done: Cell::new(false),
            done_notify: Notify::new(),
        }
    }

    /// A `Tflush` (or teardown) asked to cancel this request.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.get()
    }

    fn request_cancel(&self) {
        self.cancelled.set(true);
        self.cancel.notify();
    }

    /// Run `f`, a wait that is safe to abandon; `None` if the request is
    /// cancelled first (then `f` is dropped unfinished).
    pub async fn cancellable<F: Future>(&self, f: F) -> Option<F::Output> {
        let wait = self.cancel.notified();
        if self.cancelled.get() {
            return None;
        }
        match race(f, wait).await {
            Either::Left(v) => Some(v),
            Either::Right(()) => None,
        }
    }

    async fn finished(&self) {
        loop {
            let n = self.done_notify.notified();
            if self.done.get() {
                return;
            }
            n.await;
        }
    }
}

pub(crate) enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Poll both; the first to finish wins (ties go to `a`).
pub(crate) async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        if let Poll::Ready(v) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    })
    .await
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
    /// The peer's network is on the allow-list (else attach is refused).
    pub(crate) allowed: bool,
    frames: RefCell<FrameReader>,
    pub(crate) msize: Cell<u32>,
    versioned: Cell<bool>,
    pub(crate) fids: RefCell<FidTable>,
    /// Identities attached, by the uid the client asked for.
    pub(crate) users: RefCell<BTreeMap<u32, Rc<Identity>>>,
    inflight: RefCell<BTreeMap<u16, Rc<Request>>>,
    outbox: RefCell<VecDeque<Vec<u8>>>,
    /// Bytes reserved by requests in flight and held by unsent replies.
    held: Cell<usize>,
    /// A frame taken from the stream that waits for memory.
    stalled: RefCell<Option<Vec<u8>>>,
    /// Fids holding an xattr value.
    pub(crate) xattr_fids: Cell<usize>,
    out_ready: Notify,
    /// A request finished, a barrier lifted or the connection aborted.
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
                frames: RefCell::new(FrameReader::new(server.config.msize_max)),
                msize: Cell::new(server.config.msize_max),
                versioned: Cell::new(false),
                fids: RefCell::new(FidTable::new(server.config.fids_max)),
                users: RefCell::new(BTreeMap::new()),
                inflight: RefCell::new(BTreeMap::new()),
                outbox: RefCell::new(VecDeque::new()),
                held: Cell::new(0),
                stalled: RefCell::new(None),
                xattr_fids: Cell::new(0),
                out_ready: Notify::new(),
                progress: Notify::new(),
                barrier: Cell::new(false),
                closing: Cell::new(false),
                closed: Cell::new(false),
                aborted: Cell::new(false),
                stats: Cell::new(ConnStats::default()),
            })
        })?;
        counter!("p9.connections").inc();
        TRACE_CONN.emit(&[conn.id, peer.addr_u32() as u64, peer.port as u64, 1]);
        Some(conn)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Take as many bytes as the frame buffer has room for.
    pub fn feed(&self, bytes: &[u8]) -> usize {
        let n = self.frames.borrow_mut().feed(bytes);
        counter!("p9.bytes_received").add(n as u64);
        n
    }

    /// Can another request be dispatched now? (Not while a `Tversion`
    /// runs or the queue is full.)
    pub fn can_dispatch(&self) -> bool {
        !self.barrier.get()
            && !self.closing.get()
            && self.inflight.borrow().len() < self.server.config.requests_max
    }

    /// A frame waits for this connection's memory (replies to drain);
    /// [`process`](Self::process) retries it.
    pub fn is_stalled(&self) -> bool {
        self.stalled.borrow().is_some()
    }

    /// Bytes held by requests in flight and unsent replies.
    pub fn memory_held(&self) -> usize {
        self.held.get()
    }

    fn try_reserve(&self, n: usize) -> bool {
        if self.held.get() + n > self.server.config.conn_memory_max_bytes {
            return false;
        }
        self.held.set(self.held.get() + n);
        true
    }

    fn release(&self, n: usize) {
        assert!(self.held.get() >= n, "released more than held");
        self.held.set(self.held.get() - n);
        self.progress.notify();
    }

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
                    counter!("p9.request_queue_full").inc();
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
                        counter!("p9.framing_errors").inc();
                        log::debug!("p9: connection {} closed: {e}", self.id);
                        return Err(ConnError::Framing);
                    }
                },
            };
            if let Some(frame) = self.dispatch(frame)? {
                // Over its memory: wait until replies drain.
                counter!("p9.memory_full").inc();
                *self.stalled.borrow_mut() = Some(frame);
                return Ok(taken);
            }
            taken += 1;
        }
    }

    /// The most a reply to `msg` can take.
    fn reply_estimate(&self, msg: &Tmsg<'_>) -> usize {
        let msize = self.msize.get() as usize;
        match msg {
            Tmsg::Read { count, .. } => (*count as usize).min(msize) + wire::RREAD_HEADER_LEN,
            Tmsg::Readdir { count, .. } => (*count as usize).min(msize) + wire::RREAD_HEADER_LEN,
            // Symlink targets are at most a page.
            Tmsg::Readlink { .. } => 4096 + 64,
            _ => 512,
        }
    }

    /// Start one frame; gives it back if the connection's memory cannot
    /// take it now.
    fn dispatch(self: &Rc<Self>, frame: Vec<u8>) -> Result<Option<Vec<u8>>, ConnError> {
        let (tag, ty, oldtag, version, cost) = match wire::decode_request(&frame) {
            Err(e) => {
                let (Some(tag), Some(errno)) = (e.tag(), e.reply_errno()) else {
                    return Err(ConnError::Framing);
                };
                if self.inflight.borrow().contains_key(&tag) {
                    return Err(ConnError::DuplicateTag(tag));
                }
                if !self.try_reserve(64) {
                    return Ok(Some(frame));
                }
                counter!("p9.malformed").inc();
                log::debug!("p9: connection {}: {e}", self.id);
                self.push_reply(tag, Rmsg::lerror(errno));
                self.release(64);
                return Ok(None);
            }
            Ok((tag, msg)) => {
                let cost = frame.len() + self.reply_estimate(&msg);
                match msg {
                    Tmsg::Version { msize, version } => (
                        tag,
                        100,
                        None,
                        Some((msize, version == VERSION_9P2000_L)),
                        cost,
                    ),
                    Tmsg::Flush { oldtag } => (tag, 108, Some(oldtag), None, cost),
                    m => (tag, m.type_code(), None, None, cost),
                }
            }
        };
        if !self.try_reserve(cost) {
            return Ok(Some(frame));
        }
        let mut s = self.stats.get();
        s.requests += 1;
        self.stats.set(s);
        counter!("p9.requests").inc();
        if let Some((msize, known)) = version {
            return self.start_version(tag, msize, known, cost).map(|()| None);
        }
        if self.inflight.borrow().contains_key(&tag) {
            counter!("p9.duplicate_tags").inc();
            return Err(ConnError::DuplicateTag(tag));
        }
        if !self.versioned.get() {
            self.push_reply(tag, Rmsg::lerror(scoutvm_fs::errno::Errno::EPROTO));
            self.release(cost);
            return Ok(None);
        }
        if let Some(oldtag) = oldtag {
            self.start_flush(tag, oldtag, cost);
            return Ok(None);
        }
        self.start_request(tag, ty, frame, cost);
        Ok(None)
    }

    fn start_request(self: &Rc<Self>, tag: u16, ty: u8, frame: Vec<u8>, cost: usize) {
        let req = Rc::new(Request::new(tag, ty, cost));
        self.inflight.borrow_mut().insert(tag, req.clone());
        let conn = self.clone();
        let task = async move {
            let mut out = Vec::new();
            let replied = match wire::decode_request(&frame) {
                Ok((_, msg)) if !req.is_cancelled() => {
                    ops::handle(&conn, &req, tag, msg, &mut out).await
                }
                Ok(_) => false,
                Err(_) => {
                    // `dispatch` decoded this very frame successfully.
                    unreachable!("a dispatched frame no longer decodes")
                }
            };
            drop(frame);
            conn.finish(&req, replied.then_some(out));
        };
        if self.server.exec.spawn(task).is_err() {
            counter!("p9.spawn_failed").inc();
            self.inflight.borrow_mut().remove(&tag);
            self.push_reply(tag, Rmsg::lerror(scoutvm_fs::errno::Errno::EAGAIN));
            self.release(cost);
        }
    }

    fn start_flush(self: &Rc<Self>, tag: u16, oldtag: u16, cost: usize) {
        counter!("p9.flushes").inc();
        let old = self.inflight.borrow().get(&oldtag).cloned();
        let Some(old) = old else {
            // Already answered (or never sent): nothing to wait for.
            self.push_reply(tag, Rmsg::Flush {});
            self.release(cost);
            return;
        };
        old.request_cancel();
        let req = Rc::new(Request::new(tag, 108, cost));
        self.inflight.borrow_mut().insert(tag, req.clone());
        let conn = self.clone();
        let task = async move {
            old.finished().await;
            let mut out = Vec::new();
            encode_into(&mut out, tag, &Rmsg::Flush {});
            conn.finish(&req, Some(out));
        };
        if self.server.exec.spawn(task).is_err() {
            counter!("p9.spawn_failed").inc();
            self.inflight.borrow_mut().remove(&tag);
            self.push_reply(tag, Rmsg::lerror(scoutvm_fs::errno::Errno::EAGAIN));
            self.release(cost);
        }
    }

    /// `Tversion`: wait for every request, clunk every fid, negotiate.
    fn start_version(
        self: &Rc<Self>,
        tag: u16,
        client_msize: u32,
        known: bool,
        cost: usize,
    ) -> Result<(), ConnError> {
        self.barrier.set(true);
        let conn = self.clone();
        let task = async move {
            conn.wait_idle().await;
            conn.clunk_all().await;
            let msize = client_msize.min(conn.server.config.msize_max);
            conn.versioned.set(false);
            let reply = if !known {
                Rmsg::Version {
                    msize,
                    version: VERSION_UNKNOWN,
                }
            } else if msize < MSIZE_MIN {
                Rmsg::lerror(scoutvm_fs::errno::Errno::EINVAL)
            } else {
                conn.msize.set(msize);
                conn.frames.borrow_mut().set_msize(msize);
                conn.versioned.set(true);
                Rmsg::Version {
                    msize,
                    version: VERSION_9P2000_L,
                }
            };
            conn.push_reply(tag, reply);
            conn.release(cost);
            conn.barrier.set(false);
            conn.progress.notify();
        };
        if self.server.exec.spawn(task).is_err() {
            counter!("p9.spawn_failed").inc();
            return Err(ConnError::Closed);
        }
        Ok(())
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

    /// Clunk every fid (connection teardown and `Tversion`).
    async fn clunk_all(self: &Rc<Self>) {
        let fids = self.fids.borrow_mut().drain();
        for (no, fid) in fids {
            if let Err(e) = ops::clunk_fid(self, no, &fid, true).await {
                counter!("p9.teardown_errors").inc();
                log::warn!("p9: connection {}: releasing fid {no}: {e:?}", self.id);
            }
        }
    }

    fn finish(&self, req: &Rc<Request>, reply: Option<Vec<u8>>) {
        match reply {
            Some(r) => self.push_output(r),
            None => counter!("p9.cancelled").inc(),
        }
        {
            let mut inflight = self.inflight.borrow_mut();
            if inflight.get(&req.tag).is_some_and(|r| Rc::ptr_eq(r, req)) {
                inflight.remove(&req.tag);
            }
        }
        self.release(req.cost);
        req.done.set(true);
        req.done_notify.notify();
        self.progress.notify();
    }

    fn push_reply(&self, tag: u16, msg: Rmsg<'_>) {
        let mut out = Vec::new();
        encode_into(&mut out, tag, &msg);
        self.push_output(out);
    }

    /// Queue a reply; it holds its bytes until the writer takes it.
    fn push_output(&self, frame: Vec<u8>) {
        debug_assert!(frame.len() <= self.msize.get() as usize || self.msize.get() < MSIZE_MIN);
        counter!("p9.bytes_sent").add(frame.len() as u64);
        if self.closed.get() {
            return;
        }
        self.held.set(self.held.get() + frame.len());
        self.outbox.borrow_mut().push_back(frame);
        self.out_ready.notify();
    }

    /// The next reply to send, in completion order.
    pub fn take_output(&self) -> Option<Vec<u8>> {
        let frame = self.outbox.borrow_mut().pop_front()?;
        self.release(frame.len());
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

    /// Ask the connection to stop (server shutdown): the reader stops and
    /// the connection closes.
    pub fn abort(&self) {
        self.aborted.set(true);
        self.progress.notify();
    }

    pub fn requests_in_flight(&self) -> usize {
        self.inflight.borrow().len()
    }

    /// Tear down: cancel what waits, let the rest finish, clunk all fids,
    /// drop this connection's locks, unregister.
    pub async fn close(self: &Rc<Self>) {
        if self.closing.replace(true) {
            while !self.closed.get() {
                self.progress.notified().await;
            }
            return;
        }
        let reqs: Vec<Rc<Request>> = self.inflight.borrow().values().cloned().collect();
        for r in &reqs {
            r.request_cancel();
        }
        self.wait_idle().await;
        self.clunk_all().await;
        let dropped = self.server.locks.borrow_mut().release_conn(self.id);
        if dropped > 0 {
            self.server.locks_changed.notify();
        }
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

    /// What `clients` shows.
    pub fn info(&self) -> ClientInfo {
        let fids = self.fids.borrow();
        ClientInfo {
            id: self.id,
            peer: self.peer,
            allowed: self.allowed,
            msize: self.msize.get(),
            users: self
                .users
                .borrow()
                .values()
                .map(|u| (u.uname.clone(), u.uid))
                .collect::<Vec<(String, u32)>>(),
            fids: fids.len(),
            open_fids: fids.open_count(),
            requests_in_flight: self.inflight.borrow().len(),
            requests_total: self.stats.get().requests,
            memory_held: self.held.get(),
        }
    }
}

/// Encode a reply the server built; our replies always fit (names and
/// targets are bounded by the filesystem, payloads by msize).
pub(crate) fn encode_into(out: &mut Vec<u8>, tag: u16, msg: &Rmsg<'_>) {
    if let Err(e) = msg.encode(tag, out) {
        panic!("encoding a server reply failed: {e}");
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
        counter!("p9.spawn_failed").inc();
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
            // A partial frame is shorter than msize, so there is room.
            assert!(n > 0, "frame buffer full without a whole frame");
            start += n;
            continue;
        }
        let read = race(stream.read(&mut buf), conn.progress_until_abort()).await;
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

impl Conn {
    /// Completes once the connection is aborted.
    async fn progress_until_abort(&self) {
        loop {
            let n = self.progress();
            if self.aborted.get() {
                return;
            }
            n.await;
        }
    }
}
