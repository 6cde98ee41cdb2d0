//! One 9P connection's state: its frame buffer, negotiated msize, fids,
//! identities, the requests in flight, the replies not yet sent and the
//! memory they hold.
//!
//! [`Conn`] is the sans-IO core: the caller [`feed`](Conn::feed)s the bytes
//! the peer sent and takes replies out of [`take_output`](Conn::take_output)
//! in completion order; `dispatch.rs` turns frames into request tasks and
//! drives a `Conn` over a [`ByteStream`]. Invariants: at most
//! `requests_max` requests in flight (the reader stops reading past it);
//! every request in flight has a distinct tag; a frame larger than msize or
//! without a valid header closes the connection, any other malformed
//! message gets `Rlerror`; teardown cancels what waits, waits for the
//! rest, then clunks every fid (releasing opens and locks) before the
//! connection unregisters.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::string::String;
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
use super::server::{ClientInfo, Connection, Peer, Server, MSIZE_MIN, TRACE_CONN};
use super::wire::Rmsg;

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
    pub(super) cost: usize,
    pub(super) cancelled: Cell<bool>,
    pub(super) cancel: Notify,
    pub(super) done: Cell<bool>,
    pub(super) done_notify: Notify,
}

impl Request {
    pub(super) fn new(tag: u16, ty: u8, cost: usize) -> Request {
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

    pub(super) fn request_cancel(&self) {
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

    pub(super) async fn finished(&self) {
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
pub(super) struct ConnStats {
    pub(super) requests: u64,
}

/// The state of one client connection.
pub struct Conn {
    pub(crate) id: u64,
    pub(crate) server: Rc<Server>,
    pub(crate) peer: Peer,
    /// The peer's network is on the allow-list (else attach is refused).
    pub(crate) allowed: bool,
    pub(super) frames: RefCell<FrameReader>,
    pub(crate) msize: Cell<u32>,
    pub(super) versioned: Cell<bool>,
    pub(crate) fids: RefCell<FidTable>,
    /// Identities attached, by the uid the client asked for.
    pub(crate) users: RefCell<BTreeMap<u32, Rc<Identity>>>,
    pub(super) inflight: RefCell<BTreeMap<u16, Rc<Request>>>,
    pub(super) outbox: RefCell<VecDeque<Vec<u8>>>,
    /// Bytes reserved by requests in flight and held by unsent replies.
    pub(super) held: Cell<usize>,
    /// A frame taken from the stream that waits for memory.
    pub(super) stalled: RefCell<Option<Vec<u8>>>,
    /// Fids holding an xattr value.
    pub(crate) xattr_fids: Cell<usize>,
    pub(super) out_ready: Notify,
    /// A request finished, a barrier lifted or the connection aborted.
    pub(super) progress: Notify,
    pub(super) barrier: Cell<bool>,
    pub(super) closing: Cell<bool>,
    pub(super) closed: Cell<bool>,
    pub(super) aborted: Cell<bool>,
    pub(super) stats: Cell<ConnStats>,
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

    pub(super) fn try_reserve(&self, n: usize) -> bool {
        if self.held.get() + n > self.server.config.conn_memory_max_bytes {
            return false;
        }
        self.held.set(self.held.get() + n);
        true
    }

    pub(super) fn release(&self, n: usize) {
        assert!(self.held.get() >= n, "released more than held");
        self.held.set(self.held.get() - n);
        self.progress.notify();
    }

    pub(super) fn finish(&self, req: &Rc<Request>, reply: Option<Vec<u8>>) {
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

    pub(super) fn push_reply(&self, tag: u16, msg: Rmsg<'_>) {
        let mut out = Vec::new();
        encode_into(&mut out, tag, &msg);
        self.push_output(out);
    }

    /// Queue a reply; it holds its bytes until the writer takes it.
    pub(super) fn push_output(&self, frame: Vec<u8>) {
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

impl Connection for Conn {
    type Info = ClientInfo;

    fn info(&self) -> ClientInfo {
        Conn::info(self)
    }

    fn abort(&self) {
        Conn::abort(self)
    }
}
