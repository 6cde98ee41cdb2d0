//! The network seam: ordered byte streams between a client and a server
//! ([`Transport`], [`Listener`], [`Conn`]) and [`MemNet`], an in-memory
//! implementation that behaves like TCP on one host.
//!
//! Called by the framed connection (`rpc.rs`) and the node composition.
//! The appliance will plug smoltcp TCP in behind the same traits; the
//! leader's own client uses `MemNet` (loopback), never a direct call.
//! Invariants of `MemNet`: bytes arrive in order and exactly once; each
//! direction buffers at most [`MEM_PIPE_BYTES`] (a sender waits for room,
//! counted in `net.mem_send_waits`); a `send` is delivered contiguously;
//! closing either end tears the stream down for both: later sends fail,
//! and receivers get the bytes already buffered and then `Closed`.

use crate::counter;
use crate::errno::Errno;
use crate::runtime::exec::Notify;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::string::String;
use core::cell::{Cell, RefCell};
use core::future::Future;
use core::pin::Pin;

/// A boxed, non-`Send` future (what the dyn-compatible async methods
/// return).
pub type LocalFut<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Why a stream operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The stream (or listener) was closed by either end.
    Closed,
    /// Nobody listens at the address.
    Refused,
    /// Someone already listens at the address.
    AddrInUse,
    /// The request exceeds what the transport can carry in one send.
    TooLarge,
}

impl From<NetError> for Errno {
    fn from(e: NetError) -> Errno {
        match e {
            NetError::Closed => Errno::ENOLINK,
            NetError::Refused => Errno::ECONNREFUSED,
            NetError::AddrInUse => Errno::EBUSY,
            NetError::TooLarge => Errno::EINVAL,
        }
    }
}

/// One end of an ordered, reliable byte stream.
pub trait Conn {
    /// Queue `data` for the peer, contiguously; waits for buffer room.
    fn send<'a>(&'a self, data: &'a [u8]) -> LocalFut<'a, Result<(), NetError>>;
    /// Wait for at least one byte and copy up to `buf.len()` bytes; after
    /// a close, buffered bytes are still returned, then `Closed`.
    fn recv<'a>(&'a self, buf: &'a mut [u8]) -> LocalFut<'a, Result<usize, NetError>>;
    /// Tear the stream down (both ends see it).
    fn close(&self);
    fn is_closed(&self) -> bool;
}

/// Accepts incoming streams at one address.
pub trait Listener {
    fn accept(&self) -> LocalFut<'_, Result<Rc<dyn Conn>, NetError>>;
    /// Stop listening: pending and later accepts fail, the address frees.
    fn close(&self);
}

/// Makes streams.
pub trait Transport {
    fn listen(&self, addr: &str) -> Result<Rc<dyn Listener>, NetError>;
    fn connect<'a>(&'a self, addr: &'a str) -> LocalFut<'a, Result<Rc<dyn Conn>, NetError>>;
}

/// Unreliable datagrams between string addresses (`"a.b.c.d:port"` in the
/// appliance): the seam the quorum's UDP election runs on. The simulator's
/// `SimSocket` and the appliance's smoltcp UDP socket implement it.
pub trait Datagrams {
    /// Send one datagram. Loss is silent (fire and forget); an error only
    /// says the socket itself is unusable or the address is malformed.
    fn send_to(&self, to: &str, data: &[u8]) -> Result<(), NetError>;
    /// Wait for the next datagram: its sender's address and its bytes.
    fn recv_from(&self) -> LocalFut<'_, Result<(String, alloc::vec::Vec<u8>), NetError>>;
}

/// Bytes one direction of a `MemNet` stream buffers.
pub const MEM_PIPE_BYTES: usize = 64 << 10;
/// Connections a `MemNet` listener queues before `connect` is refused.
pub const MEM_ACCEPT_BACKLOG: usize = 255;

struct Pipe {
    buf: RefCell<VecDeque<u8>>,
    /// Shared by both directions of one stream.
    closed: Rc<Cell<bool>>,
    /// Bytes arrived or closed.
    readable: Notify,
    /// Room freed or closed.
    writable: Notify,
}

/// One end of an in-memory stream.
pub struct MemConn {
    tx: Rc<Pipe>,
    rx: Rc<Pipe>,
}

impl MemConn {
    /// A connected pair of ends.
    pub fn pair() -> (Rc<MemConn>, Rc<MemConn>) {
        let closed = Rc::new(Cell::new(false));
        let mk = || {
            Rc::new(Pipe {
                buf: RefCell::new(VecDeque::new()),
                closed: closed.clone(),
                readable: Notify::new(),
                writable: Notify::new(),
            })
        };
        let (ab, ba) = (mk(), mk());
        (
            Rc::new(MemConn {
                tx: ab.clone(),
                rx: ba.clone(),
            }),
            Rc::new(MemConn { tx: ba, rx: ab }),
        )
    }

    async fn send_inner(&self, data: &[u8]) -> Result<(), NetError> {
        if data.len() > MEM_PIPE_BYTES {
            return Err(NetError::TooLarge);
        }
        loop {
            let room = self.tx.writable.notified();
            if self.tx.closed.get() {
                return Err(NetError::Closed);
            }
            if MEM_PIPE_BYTES - self.tx.buf.borrow().len() >= data.len() {
                self.tx.buf.borrow_mut().extend(data.iter().copied());
                self.tx.readable.notify();
                return Ok(());
            }
            counter!("net.mem_send_waits").inc();
            room.await;
        }
    }

    async fn recv_inner(&self, buf: &mut [u8]) -> Result<usize, NetError> {
        loop {
            let arrived = self.rx.readable.notified();
            {
                let mut b = self.rx.buf.borrow_mut();
                if !b.is_empty() && !buf.is_empty() {
                    let n = buf.len().min(b.len());
                    for (dst, src) in buf.iter_mut().zip(b.drain(..n)) {
                        *dst = src;
                    }
                    drop(b);
                    self.rx.writable.notify();
                    return Ok(n);
                }
            }
            if self.rx.closed.get() {
                return Err(NetError::Closed);
            }
            arrived.await;
        }
    }
}

impl Conn for MemConn {
    fn send<'a>(&'a self, data: &'a [u8]) -> LocalFut<'a, Result<(), NetError>> {
        Box::pin(self.send_inner(data))
    }

    fn recv<'a>(&'a self, buf: &'a mut [u8]) -> LocalFut<'a, Result<usize, NetError>> {
        Box::pin(self.recv_inner(buf))
    }

    fn close(&self) {
        if !self.tx.closed.replace(true) {
            counter!("net.mem_closes").inc();
        }
        for p in [&self.tx, &self.rx] {
            p.readable.notify();
            p.writable.notify();
        }
    }

    fn is_closed(&self) -> bool {
        self.tx.closed.get()
    }
}

impl Drop for MemConn {
    fn drop(&mut self) {
        // a dropped end is a closed socket
        self.close();
    }
}

struct ListenerState {
    queue: RefCell<VecDeque<Rc<MemConn>>>,
    closed: Cell<bool>,
    arrived: Notify,
}

/// An in-memory network: listeners by name, streams between them.
#[derive(Clone, Default)]
pub struct MemNet {
    listeners: Rc<RefCell<BTreeMap<String, Rc<ListenerState>>>>,
}

impl MemNet {
    pub fn new() -> MemNet {
        MemNet::default()
    }
}

struct MemListener {
    net: MemNet,
    addr: String,
    state: Rc<ListenerState>,
}

impl Listener for MemListener {
    fn accept(&self) -> LocalFut<'_, Result<Rc<dyn Conn>, NetError>> {
        Box::pin(async move {
            loop {
                let arrived = self.state.arrived.notified();
                if self.state.closed.get() {
                    return Err(NetError::Closed);
                }
                if let Some(c) = self.state.queue.borrow_mut().pop_front() {
                    return Ok(c as Rc<dyn Conn>);
                }
                arrived.await;
            }
        })
    }

    fn close(&self) {
        if self.state.closed.replace(true) {
            return;
        }
        let mut ls = self.net.listeners.borrow_mut();
        if ls
            .get(&self.addr)
            .is_some_and(|s| Rc::ptr_eq(s, &self.state))
        {
            ls.remove(&self.addr);
        }
        for c in self.state.queue.borrow_mut().drain(..) {
            c.close();
        }
        self.state.arrived.notify();
    }
}

impl Drop for MemListener {
    fn drop(&mut self) {
        self.close();
    }
}

impl Transport for MemNet {
    fn listen(&self, addr: &str) -> Result<Rc<dyn Listener>, NetError> {
        let mut ls = self.listeners.borrow_mut();
        if ls.contains_key(addr) {
            return Err(NetError::AddrInUse);
        }
        let state = Rc::new(ListenerState {
            queue: RefCell::new(VecDeque::new()),
            closed: Cell::new(false),
            arrived: Notify::new(),
        });
        ls.insert(addr.into(), state.clone());
        Ok(Rc::new(MemListener {
            net: self.clone(),
            addr: addr.into(),
            state,
        }))
    }

    fn connect<'a>(&'a self, addr: &'a str) -> LocalFut<'a, Result<Rc<dyn Conn>, NetError>> {
        Box::pin(async move {
            let state = self
                .listeners
                .borrow()
                .get(addr)
                .cloned()
                .ok_or(NetError::Refused)?;
            if state.closed.get() || state.queue.borrow().len() >= MEM_ACCEPT_BACKLOG {
                counter!("net.mem_connect_refused").inc();
                return Err(NetError::Refused);
            }
            let (ours, theirs) = MemConn::pair();
            state.queue.borrow_mut().push_back(theirs);
            state.arrived.notify();
            Ok(ours as Rc<dyn Conn>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::exec::{block_on, Executor};
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn streams_are_ordered_bounded_and_close_both_ends() {
        let ex = Executor::default();
        let net = MemNet::new();
        let l = net.listen("server").unwrap();
        assert_eq!(
            net.listen("server").err(),
            Some(NetError::AddrInUse),
            "one listener per address"
        );
        let got = ex
            .block_on(async {
                let c = net.connect("server").await.unwrap();
                let s = l.accept().await.unwrap();
                // a writer larger than the pipe waits for the reader
                let big: Vec<u8> = (0..(3 * MEM_PIPE_BYTES / 2)).map(|i| i as u8).collect();
                let writer = {
                    let c = c.clone();
                    let big = big.clone();
                    ex.spawn(async move {
                        for chunk in big.chunks(1000) {
                            c.send(chunk).await.unwrap();
                        }
                        c.close();
                    })
                    .unwrap()
                };
                let mut out = Vec::new();
                let mut buf = vec![0u8; 777];
                loop {
                    match s.recv(&mut buf).await {
                        Ok(n) => out.extend_from_slice(&buf[..n]),
                        Err(e) => {
                            assert_eq!(e, NetError::Closed);
                            break;
                        }
                    }
                }
                writer.await;
                assert!(s.is_closed());
                assert_eq!(s.send(b"x").await, Err(NetError::Closed));
                out == big
            })
            .unwrap();
        assert!(got);
        assert!(crate::runtime::counters::get("net.mem_send_waits").unwrap_or(0) > 0);
    }

    #[test]
    fn connect_needs_a_listener_and_closing_refuses() {
        let net = MemNet::new();
        block_on(async {
            assert_eq!(net.connect("nobody").await.err(), Some(NetError::Refused));
            let l = net.listen("a").unwrap();
            let c = net.connect("a").await.unwrap();
            l.close();
            // the queued, never accepted stream is torn down
            let mut b = [0u8; 4];
            assert_eq!(c.recv(&mut b).await, Err(NetError::Closed));
            assert_eq!(l.accept().await.err(), Some(NetError::Closed));
            assert_eq!(net.connect("a").await.err(), Some(NetError::Refused));
            // the address can be reused
            let _l2 = net.listen("a").unwrap();
        });
    }

    #[test]
    fn dropping_an_end_closes_the_stream() {
        let (a, b) = MemConn::pair();
        block_on(async move {
            a.send(b"hi").await.unwrap();
            drop(a);
            let mut buf = [0u8; 8];
            assert_eq!(b.recv(&mut buf).await, Ok(2));
            assert_eq!(&buf[..2], b"hi");
            assert_eq!(b.recv(&mut buf).await, Err(NetError::Closed));
        });
    }
}
