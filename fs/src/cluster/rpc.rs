//! A framed request/response connection over a transport [`Conn`]: the
//! RPC layer the client and the server both use.
//!
//! Owns per-connection sequencing (frame `seq` from 1, cumulative
//! `recv_seq`), request ids, the table of outstanding requests matched to
//! responses by `(cmd, id)`, the queue of incoming requests, and the
//! greeting rules of the cluster reference (2.1/2.2). Called by
//! `client/requests.rs` (typed calls) and `server/role.rs` (request handlers). A reader
//! task started by [`Endpoint::start`] decodes frames; any framing error
//! closes the connection, and every outstanding request then fails with
//! `ECONNABORTED`. Bounded: [`MAX_OUTSTANDING`] requests in flight and
//! [`MAX_QUEUED_REQUESTS`] unhandled requests (the reader waits, which
//! back-pressures the peer). Resend and reconnect migration belong to the
//! cluster session layer; the framing here is already what it needs.
//!
//! When the node has a cluster key ([`auth`]), both ends send a hello
//! first and every frame carries a tag; a frame that fails it is counted
//! (`cluster_auth.*`), never dispatched, and closes the connection. The
//! client's hello names its rid; a server refuses a greeting for any other
//! rid (`cluster_auth.wrong_rid`) before a handler sees it.

use crate::cluster::auth::{self, Refusal, SessionAuth, HELLO_BYTES, TAG_BYTES};
use crate::cluster::msg::{
    self, cmd, encode_frame, wire_to_errno, Frame, FrameDecoder, Header, FLAG_RESPONSE,
};
use crate::cluster::transport::{Conn, NetError};
use crate::counter;
use crate::errno::{Errno, FsResult};
use crate::runtime::exec::{Handle, Notify};
use crate::runtime::trace::Tracepoint;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

/// Requests a connection may have in flight.
pub const MAX_OUTSTANDING: usize = 1024;
/// Received requests waiting for a handler.
pub const MAX_QUEUED_REQUESTS: usize = 256;

static TP_PROTO_ERROR: Tracepoint = Tracepoint::new("rpc_protocol_error", &["cmd", "seq"]);

/// Which end of the connection this is (greeting rules differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

struct Slot {
    result: RefCell<Option<FsResult<Vec<u8>>>>,
    done: Notify,
}

struct State {
    next_seq: u64,
    next_id: u64,
    recv_seq: u64,
    pending: BTreeMap<(u8, u64), Rc<Slot>>,
    requests: VecDeque<Frame>,
    greeting_seen: bool,
    closed: bool,
    /// With a cluster key: this connection's tags.
    auth: Option<SessionAuth>,
}

/// One framed connection.
pub struct Endpoint {
    conn: Rc<dyn Conn>,
    role: Role,
    st: RefCell<State>,
    /// A request was queued, or the connection closed.
    request_arrived: Notify,
    /// A queued request was taken (room for the reader).
    request_taken: Notify,
    sending: Cell<bool>,
    send_done: Notify,
    handle: Handle,
    /// When the last frame arrived (the session's idle timeout).
    last_recv_ns: Cell<u64>,
}

impl Endpoint {
    /// Wrap a stream and start its reader task on `handle`. `rid`: on a
    /// client, the mount's rid its greeting will name (bound into the
    /// connection's tags with a cluster key); ignored on a server.
    pub fn start(
        conn: Rc<dyn Conn>,
        role: Role,
        rid: u64,
        handle: &Handle,
    ) -> FsResult<Rc<Endpoint>> {
        let ep = Rc::new(Endpoint {
            conn,
            role,
            st: RefCell::new(State {
                next_seq: 1,
                next_id: 1,
                recv_seq: 0,
                pending: BTreeMap::new(),
                requests: VecDeque::new(),
                greeting_seen: false,
                closed: false,
                auth: auth::session(role == Role::Client, rid),
            }),
            request_arrived: Notify::new(),
            request_taken: Notify::new(),
            sending: Cell::new(false),
            send_done: Notify::new(),
            handle: handle.clone(),
            last_recv_ns: Cell::new(handle.now_ns()),
        });
        let reader = ep.clone();
        handle
            .spawn(async move { reader.read_loop().await })
            .map_err(|_| Errno::ENOMEM)?;
        Ok(ep)
    }

    pub fn is_closed(&self) -> bool {
        self.st.borrow().closed
    }

    /// When the last frame (of any kind) arrived, or the start.
    pub fn last_recv_ns(&self) -> u64 {
        self.last_recv_ns.get()
    }

    /// Wait until the connection is closed.
    pub async fn closed(&self) {
        loop {
            let n = self.request_taken.notified();
            if self.is_closed() {
                return;
            }
            n.await;
        }
    }

    /// Tear the connection down: outstanding requests fail with
    /// `ECONNABORTED`, handlers waiting for requests get `None`.
    pub fn close(&self) {
        let pending = {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return;
            }
            st.closed = true;
            st.requests.clear();
            core::mem::take(&mut st.pending)
        };
        self.conn.close();
        for slot in pending.into_values() {
            *slot.result.borrow_mut() = Some(Err(Errno::ECONNABORTED));
            slot.done.notify();
        }
        self.request_arrived.notify();
        self.request_taken.notify();
        self.send_done.notify();
    }

    async fn send_frame(&self, mut header: Header, payload: &[u8]) -> FsResult<()> {
        if payload.len() > msg::MAX_DATA_LEN {
            return Err(Errno::EINVAL);
        }
        // one frame at a time on the stream
        loop {
            let done = self.send_done.notified();
            if self.is_closed() {
                return Err(Errno::ENOLINK);
            }
            // with a key, frames wait for the peer's hello
            let ready = self.st.borrow().auth.as_ref().is_none_or(|a| a.ready());
            if !self.sending.get() && ready {
                break;
            }
            done.await;
        }
        self.sending.set(true);
        let bytes = {
            let mut st = self.st.borrow_mut();
            header.seq = st.next_seq;
            st.next_seq += 1;
            header.recv_seq = st.recv_seq;
            let mut bytes = encode_frame(&header, payload);
            if let Some(a) = st.auth.as_mut() {
                // ready: checked under `sending` above
                let Some(tag) = a.seal(&bytes) else {
                    drop(st);
                    self.sending.set(false);
                    self.send_done.notify();
                    return Err(Errno::ENOLINK);
                };
                bytes.extend_from_slice(&tag);
            }
            bytes
        };
        let r = self.conn.send(&bytes).await;
        self.sending.set(false);
        self.send_done.notify();
        match r {
            Ok(()) => {
                counter!("rpc.frames_sent").inc();
                Ok(())
            }
            Err(e) => {
                self.close();
                Err(Errno::from(e))
            }
        }
    }

    /// Send a request and wait for its response payload (or the errno
    /// the peer answered, or `ECONNABORTED` if the connection died).
    pub async fn call(&self, c: u8, payload: &[u8]) -> FsResult<Vec<u8>> {
        self.call_with(c, None, payload).await
    }

    /// [`Self::call`] with the request id chosen by the caller (the
    /// session numbers requests across connections so that a resend
    /// keeps its id). `EEXIST` if `(c, id)` is already outstanding here.
    pub async fn call_id(&self, c: u8, id: u64, payload: &[u8]) -> FsResult<Vec<u8>> {
        if id == 0 {
            return Err(Errno::EINVAL);
        }
        self.call_with(c, Some(id), payload).await
    }

    async fn call_with(&self, c: u8, id: Option<u64>, payload: &[u8]) -> FsResult<Vec<u8>> {
        let (id, slot) = {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return Err(Errno::ENOLINK);
            }
            if st.pending.len() >= MAX_OUTSTANDING {
                counter!("rpc.outstanding_full").inc();
                return Err(Errno::ENOBUFS);
            }
            let id = match id {
                Some(id) => {
                    if st.pending.contains_key(&(c, id)) {
                        return Err(Errno::EEXIST);
                    }
                    id
                }
                None => {
                    let id = st.next_id;
                    st.next_id += 1;
                    id
                }
            };
            let slot = Rc::new(Slot {
                result: RefCell::new(None),
                done: Notify::new(),
            });
            st.pending.insert((c, id), slot.clone());
            (id, slot)
        };
        let header = Header {
            id,
            cmd: c,
            ..Header::default()
        };
        if let Err(e) = self.send_frame(header, payload).await {
            self.st.borrow_mut().pending.remove(&(c, id));
            return Err(e);
        }
        loop {
            let done = slot.done.notified();
            if let Some(r) = slot.result.borrow_mut().take() {
                return r;
            }
            done.await;
        }
    }

    /// Answer a request.
    pub async fn reply(&self, req: &Header, result: FsResult<Vec<u8>>) -> FsResult<()> {
        let (error, payload) = match result {
            Ok(p) => (msg::wire_err::NONE, p),
            Err(e) => (msg::errno_to_wire(e), Vec::new()),
        };
        let header = Header {
            id: req.id,
            cmd: req.cmd,
            flags: FLAG_RESPONSE,
            error,
            ..Header::default()
        };
        self.send_frame(header, &payload).await
    }

    /// The next incoming request; `None` once the connection is closed.
    pub async fn next_request(&self) -> Option<Frame> {
        loop {
            let arrived = self.request_arrived.notified();
            {
                let mut st = self.st.borrow_mut();
                if let Some(f) = st.requests.pop_front() {
                    drop(st);
                    self.request_taken.notify();
                    return Some(f);
                }
                if st.closed {
                    return None;
                }
            }
            arrived.await;
        }
    }

    fn protocol_error(&self, h: Option<&Header>, why: &str) {
        counter!("rpc.protocol_errors").inc();
        TP_PROTO_ERROR.emit(&[h.map_or(u64::MAX, |h| h.cmd as u64), h.map_or(0, |h| h.seq)]);
        log::warn!("rpc: closing connection: {why}");
        self.close();
    }

    /// Refuse the peer's traffic: counted, logged, connection closed.
    fn auth_refused(&self, r: Refusal) {
        auth::refuse(r, "session frame");
        self.close();
    }

    /// Send this end's hello (before any frame: senders wait for the
    /// peer's hello, which comes after ours on the other end).
    async fn send_hello(&self) -> bool {
        let hello = match self.st.borrow().auth.as_ref() {
            Some(a) => a.hello(),
            None => return true,
        };
        self.sending.set(true);
        let r = self.conn.send(&hello).await;
        self.sending.set(false);
        self.send_done.notify();
        if r.is_err() {
            self.close();
            return false;
        }
        true
    }

    async fn read_loop(self: Rc<Self>) {
        let mut dec = FrameDecoder::new();
        let mut buf = vec![0u8; 4096];
        let keyed = self.st.borrow().auth.is_some();
        if !self.send_hello().await {
            return;
        }
        let mut hello_pending = keyed;
        loop {
            let want = buf.len().min(dec.room());
            let n = match self.conn.recv(&mut buf[..want]).await {
                Ok(n) => n,
                Err(NetError::Closed) | Err(_) => {
                    self.close();
                    return;
                }
            };
            if let Err(e) = dec.push(&buf[..n]) {
                self.protocol_error(None, &alloc::format!("{e}"));
                return;
            }
            if hello_pending {
                let Some(h) = dec.take(HELLO_BYTES) else {
                    continue;
                };
                let r = self
                    .st
                    .borrow_mut()
                    .auth
                    .as_mut()
                    .map(|a| a.accept_hello(&h));
                if let Some(Err(r)) = r {
                    self.auth_refused(r);
                    return;
                }
                hello_pending = false;
                self.send_done.notify();
            }
            loop {
                let next = if keyed {
                    dec.next_frame_trailed(TAG_BYTES).map(|o| {
                        o.map(|(f, raw)| {
                            let (frame, tag) = raw.split_at(raw.len() - TAG_BYTES);
                            let r = self
                                .st
                                .borrow_mut()
                                .auth
                                .as_mut()
                                .map(|a| a.open(frame, tag));
                            (f, r)
                        })
                    })
                } else {
                    dec.next_frame().map(|o| o.map(|f| (f, None)))
                };
                match next {
                    Ok(Some((f, None | Some(Ok(()))))) => {
                        if !self.dispatch(f).await {
                            return;
                        }
                    }
                    Ok(Some((_, Some(Err(r))))) => {
                        self.auth_refused(r);
                        return;
                    }
                    Ok(None) => break,
                    Err(_) if keyed => {
                        self.auth_refused(Refusal::BadMac);
                        return;
                    }
                    Err(e) => {
                        self.protocol_error(None, &alloc::format!("{e}"));
                        return;
                    }
                }
            }
            if self.is_closed() {
                return;
            }
        }
    }

    /// Handle one frame; false when the connection was closed.
    async fn dispatch(&self, f: Frame) -> bool {
        counter!("rpc.frames_received").inc();
        self.last_recv_ns.set(self.handle.now_ns());
        let h = f.header;
        let greeting = h.cmd == cmd::GREETING;
        {
            let mut st = self.st.borrow_mut();
            if greeting {
                // greetings bypass sequencing; one per stream, requests
                // only towards a server and responses only towards a client
                let ok = !st.greeting_seen
                    && match self.role {
                        Role::Server => !h.is_response(),
                        Role::Client => h.is_response(),
                    };
                if !ok {
                    drop(st);
                    self.protocol_error(Some(&h), "unexpected greeting");
                    return false;
                }
                // with a key, the greeting must be for the rid the hello
                // named (what the tags are bound to)
                let hello_rid = st.auth.as_ref().and_then(|a| a.client_rid());
                if self.role == Role::Server && st.auth.is_some() {
                    let named = msg::Greeting::decode(&f.payload).ok().map(|g| g.rid);
                    if named.is_none() || named != hello_rid {
                        drop(st);
                        self.auth_refused(Refusal::WrongRid);
                        return false;
                    }
                }
                st.greeting_seen = true;
            } else {
                if h.seq <= st.recv_seq {
                    counter!("rpc.duplicates_dropped").inc();
                    return true;
                }
                st.recv_seq = h.seq;
            }
        }
        if h.is_response() {
            let slot = self.st.borrow_mut().pending.remove(&(h.cmd, h.id));
            match slot {
                Some(slot) => {
                    let r = if h.error != msg::wire_err::NONE {
                        Err(wire_to_errno(h.error))
                    } else {
                        Ok(f.payload)
                    };
                    *slot.result.borrow_mut() = Some(r);
                    slot.done.notify();
                }
                None => counter!("rpc.unmatched_responses").inc(),
            }
            return true;
        }
        if self.role == Role::Server && !greeting && !self.st.borrow().greeting_seen {
            self.protocol_error(Some(&h), "request before greeting");
            return false;
        }
        loop {
            let taken = self.request_taken.notified();
            {
                let mut st = self.st.borrow_mut();
                if st.closed {
                    return false;
                }
                if st.requests.len() < MAX_QUEUED_REQUESTS {
                    st.requests.push_back(f);
                    break;
                }
            }
            counter!("rpc.request_queue_full").inc();
            taken.await;
        }
        self.request_arrived.notify();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::msg::{encode_u64, Greeting, Request};
    use crate::cluster::transport::{MemConn, MemNet, Transport};
    use crate::runtime::exec::Executor;

    #[test]
    fn calls_match_responses_out_of_order() {
        let ex = Executor::default();
        let h = ex.handle();
        let (a, b) = MemConn::pair();
        let client = Endpoint::start(a, Role::Client, 5, &h).unwrap();
        let server = Endpoint::start(b, Role::Server, 0, &h).unwrap();
        let srv = server.clone();
        let hs = h.clone();
        // answer greeting at once, ALLOC_INODES in reverse order
        ex.spawn(async move {
            let mut held = Vec::new();
            while let Some(f) = srv.next_request().await {
                match Request::decode(f.header.cmd, &f.payload).unwrap() {
                    Request::Greeting(g) => srv.reply(&f.header, Ok(g.encode())).await.unwrap(),
                    Request::AllocInodes(n) => {
                        held.push((f.header, n));
                        if held.len() == 3 {
                            for (hd, n) in held.drain(..).rev() {
                                hs.sleep_ns(10).await;
                                srv.reply(&hd, Ok(encode_u64(n * 2))).await.unwrap();
                            }
                        }
                    }
                    Request::Statfs => srv.reply(&f.header, Err(Errno::ENOSPC)).await.unwrap(),
                    _ => srv.reply(&f.header, Err(Errno::EINVAL)).await.unwrap(),
                }
            }
        })
        .unwrap();
        let out = ex
            .block_on(async {
                let g = Greeting {
                    fsid: 1,
                    rid: 5,
                    ..Greeting::default()
                };
                let back = client.call(cmd::GREETING, &g.encode()).await.unwrap();
                assert_eq!(Greeting::decode(&back).unwrap(), g);
                let mut js = Vec::new();
                for n in 1..=3u64 {
                    let c = client.clone();
                    js.push(
                        h.spawn(
                            async move { c.call(cmd::ALLOC_INODES, &encode_u64(n)).await.unwrap() },
                        )
                        .unwrap(),
                    );
                }
                let mut got = Vec::new();
                for j in js {
                    got.push(msg::decode_u64(&j.await).unwrap());
                }
                let e = client.call(cmd::STATFS, &[]).await;
                (got, e)
            })
            .unwrap();
        assert_eq!(out.0, vec![2, 4, 6]);
        assert_eq!(out.1, Err(Errno::ENOSPC));
    }

    #[test]
    fn closing_fails_outstanding_calls_and_bad_frames_close() {
        let ex = Executor::default();
        let h = ex.handle();
        let net = MemNet::new();
        let l = net.listen("s").unwrap();
        let r = ex
            .block_on(async {
                let c = net.connect("s").await.unwrap();
                let s = l.accept().await.unwrap();
                let client = Endpoint::start(c, Role::Client, 5, &h).unwrap();
                let server = Endpoint::start(s, Role::Server, 0, &h).unwrap();
                let c2 = client.clone();
                let call = h
                    .spawn(async move { c2.call(cmd::GET_ROOTS, &[]).await })
                    .unwrap();
                // the server gets a request before any greeting: protocol error
                assert!(server.next_request().await.is_none());
                let r = call.await;
                assert!(client.is_closed());
                r
            })
            .unwrap();
        assert!(matches!(r, Err(Errno::ECONNABORTED) | Err(Errno::ENOLINK)));

        // garbage bytes close the connection
        let (a, b) = MemConn::pair();
        let server = Endpoint::start(b, Role::Server, 0, &h).unwrap();
        ex.block_on(async {
            a.send(&[0xffu8; 64]).await.unwrap();
            assert!(server.next_request().await.is_none());
        })
        .unwrap();
        assert!(crate::runtime::counters::get("rpc.protocol_errors").unwrap() >= 2);
    }

    fn greet(ex: &Executor, client: &Rc<Endpoint>, server: &Rc<Endpoint>) -> FsResult<Vec<u8>> {
        let srv = server.clone();
        ex.spawn(async move {
            while let Some(f) = srv.next_request().await {
                let _ = srv.reply(&f.header, Ok(f.payload.clone())).await;
            }
        })
        .unwrap();
        let c = client.clone();
        ex.block_on(async move {
            let g = Greeting {
                fsid: 7,
                rid: 5,
                ..Greeting::default()
            };
            c.call(cmd::GREETING, &g.encode()).await?;
            c.call(cmd::STATFS, &[3]).await
        })
        .unwrap()
    }

    fn refused(why: &str) -> u64 {
        crate::runtime::counters::get(&alloc::format!("cluster_auth.{why}")).unwrap_or(0)
    }

    #[test]
    fn keyed_connections_work_and_refuse_wrong_or_missing_keys() {
        use crate::cluster::auth::{configure, ClusterKey};
        let ex = Executor::default();
        let h = ex.handle();
        let k1 = ClusterKey([1; 32]);
        let k2 = ClusterKey([2; 32]);

        configure(Some(&k1), 7, [1; 32]);
        let (a, b) = MemConn::pair();
        let client = Endpoint::start(a, Role::Client, 5, &h).unwrap();
        let server = Endpoint::start(b, Role::Server, 0, &h).unwrap();
        assert_eq!(greet(&ex, &client, &server), Ok(vec![3]));

        // a client with another key: its greeting never reaches a handler
        let bad_mac = refused("bad_mac");
        configure(Some(&k2), 7, [2; 32]);
        let (a, b) = MemConn::pair();
        let client = Endpoint::start(a, Role::Client, 5, &h).unwrap();
        configure(Some(&k1), 7, [1; 32]);
        let server = Endpoint::start(b, Role::Server, 0, &h).unwrap();
        assert!(greet(&ex, &client, &server).is_err());
        assert!(server.is_closed() && client.is_closed());
        assert!(refused("bad_mac") > bad_mac);

        // a client without a key
        let no_key = refused("no_key");
        configure(None, 7, [0; 32]);
        let (a, b) = MemConn::pair();
        let client = Endpoint::start(a, Role::Client, 5, &h).unwrap();
        configure(Some(&k1), 7, [1; 32]);
        let server = Endpoint::start(b, Role::Server, 0, &h).unwrap();
        assert!(greet(&ex, &client, &server).is_err());
        assert!(server.is_closed());
        assert!(refused("no_key") > no_key);

        // a key holder greeting for another mount's rid than its hello
        // named: refused before the server's handler sees it
        let wrong_rid = refused("wrong_rid");
        let (a, b) = MemConn::pair();
        let client = Endpoint::start(a, Role::Client, 6, &h).unwrap();
        let server = Endpoint::start(b, Role::Server, 0, &h).unwrap();
        assert!(greet(&ex, &client, &server).is_err());
        assert!(server.is_closed() && client.is_closed());
        assert!(refused("wrong_rid") > wrong_rid);
        // without a key there is no hello, and nothing to check it against
        configure(None, 7, [0; 32]);
        let (a, b) = MemConn::pair();
        let client = Endpoint::start(a, Role::Client, 6, &h).unwrap();
        let server = Endpoint::start(b, Role::Server, 0, &h).unwrap();
        assert_eq!(greet(&ex, &client, &server), Ok(vec![3]));
        configure(Some(&k1), 7, [1; 32]);

        // another volume's node with the same key
        let wrong = refused("wrong_volume");
        configure(Some(&k1), 8, [3; 32]);
        let (a, b) = MemConn::pair();
        let client = Endpoint::start(a, Role::Client, 5, &h).unwrap();
        configure(Some(&k1), 7, [1; 32]);
        let server = Endpoint::start(b, Role::Server, 0, &h).unwrap();
        assert!(greet(&ex, &client, &server).is_err());
        assert!(refused("wrong_volume") > wrong);
        configure(None, 7, [0; 32]);
    }
}
