//! How a connection's frames become work: [`Conn::process`] cuts the
//! bytes fed in into frames and starts each request as its own task on the
//! executor (through the operations in `ops`), `Tversion` is a barrier,
//! `Tflush` cancels, [`Conn::close`] tears a connection down, and [`serve`]
//! drives a `Conn` over any [`ByteStream`].
//!
//! It sits above the connection state (`conn`) and the operations (`ops`),
//! so neither of those imports the other's caller.

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;

use scoutvm_fs::counter;

use super::conn::{
    encode_into, race, ByteStream, Conn, ConnError, Either, Request, READ_CHUNK_BYTES,
    WRITER_DRAIN_NS,
};
use super::ops;
use super::server::{Peer, Server, MSIZE_MIN, TRACE_CONN};
use super::wire::{self, Rmsg, Tmsg, VERSION_9P2000_L, VERSION_UNKNOWN};

impl Conn {
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
        let t0 = self.server.exec.host_ns();
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
        self.start_request(tag, ty, frame, cost, t0);
        Ok(None)
    }

    fn start_request(
        self: &Rc<Self>,
        tag: u16,
        ty: u8,
        frame: Vec<u8>,
        cost: usize,
        t0: Option<u64>,
    ) {
        let req = Rc::new(Request::new(tag, ty, cost));
        self.inflight.borrow_mut().insert(tag, req.clone());
        let conn = self.clone();
        let exec = self.server.exec.clone();
        // Where a request's time goes (with the executor's poll clock):
        // decode and bookkeeping up to the spawn, waiting to run, the
        // operation with its reply's encoding.
        let t1 = exec.host_ns();
        if let (Some(a), Some(b)) = (t0, t1) {
            counter!("p9.ns_dispatch").add(b.saturating_sub(a));
        }
        let task = async move {
            let t2 = exec.host_ns();
            if let (Some(a), Some(b)) = (t1, t2) {
                counter!("p9.ns_queued").add(b.saturating_sub(a));
            }
            let mut out = Vec::new();
            let replied = match wire::decode_request(&frame) {
                Ok((_, msg)) if !req.is_cancelled() => {
                    let r = ops::handle(&conn, &req, tag, msg, &mut out).await;
                    if let (Some(a), Some(b)) = (t2, exec.host_ns()) {
                        counter!("p9.ns_op").add(b.saturating_sub(a));
                    }
                    r
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
        let exec = server.exec.clone();
        server.exec.spawn(async move {
            let mut broken = false;
            loop {
                let wait = conn.output_ready();
                while let Some(frame) = conn.take_output() {
                    let t0 = exec.host_ns();
                    if !broken && stream.write_all(&frame).await.is_err() {
                        broken = true;
                        conn.abort();
                    }
                    if let (Some(a), Some(b)) = (t0, exec.host_ns()) {
                        counter!("p9.ns_transmit").add(b.saturating_sub(a));
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
