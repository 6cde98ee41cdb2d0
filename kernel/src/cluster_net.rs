//! The cluster's network seams over smoltcp: [`SmolTransport`] implements
//! `scoutvm_fs::cluster::transport::Transport` (ordered byte streams over
//! TCP, for the session) and [`SmolDatagrams`] implements `Datagrams` (UDP,
//! for the quorum election). Addresses are `"a.b.c.d:port"`; `0.0.0.0`
//! binds every card. The cluster boot message and the `cluster` and
//! `clusternet` shell commands live here too.
//!
//! Loopback: smoltcp does not deliver a packet to its own interface, so a
//! stream or datagram to one of this node's own addresses goes through an
//! in-memory path instead (the fs crate's `MemNet` for streams, a queue
//! for datagrams): the leader's own client connects to the leader's
//! address like any other. Invariants: a connect gives up after its
//! timeout (`Refused`); a datagram send never waits: a full send buffer,
//! no route or no local receiver is silent loss, counted in
//! `cluster_net.*` counters.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::rc::{Rc, Weak};
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::Poll;

use scoutvm_fs::cluster::transport::{
    Conn, Datagrams, Listener, LocalFut, MemNet, NetError, Transport,
};
use scoutvm_fs::counter;
use scoutvm_fs::runtime::exec::Notify;
use scoutvm_kernel::cmdline::{parse_socket_addr, ClusterMode, Ipv4};

use crate::net::{self, TcpListener, TcpStream};
use crate::runtime::{self, Local};
use crate::shell::{boxed, expect_args, register, CmdResult, Command};

/// How long a connect waits for the handshake by default.
pub const CONNECT_TIMEOUT_NS: u64 = 5_000_000_000;
/// Listening sockets a stream listener keeps per card.
pub const LISTEN_BACKLOG: usize = 8;
/// Largest datagram received whole; longer ones are dropped.
pub const DATAGRAM_MAX: usize = 8192;
/// Datagrams queued for a local (loopback) receiver before loss.
const LOOPBACK_QUEUE: usize = 32;
/// Stream buffer bytes each way (smaller than the 9P default: the cluster
/// keeps one stream per peer).
const STREAM_BUFFER_BYTES: usize = 64 * 1024;

/// Parse `"a.b.c.d:port"` (port 1..=65535).
pub fn parse_addr(s: &str) -> Option<(Ipv4, u16)> {
    parse_socket_addr(s)
}

fn addr_str(a: Ipv4, port: u16) -> String {
    format!("{}.{}.{}.{}:{}", a[0], a[1], a[2], a[3], port)
}

fn is_local(a: Ipv4) -> bool {
    a[0] == 127 || a == [0; 4] || net::is_own_addr(a)
}

/// Wait for whichever of two futures finishes first.
async fn first<T>(a: impl Future<Output = T>, b: impl Future<Output = T>) -> T {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        b.as_mut().poll(cx)
    })
    .await
}

/// Listeners of this node by address, for connects to itself (shared by
/// every transport, as the TCP ports are).
static LOCAL_STREAMS: Local<RefCell<Option<MemNet>>> = Local::new(RefCell::new(None));

fn local_streams() -> MemNet {
    LOCAL_STREAMS
        .borrow_mut()
        .get_or_insert_with(MemNet::new)
        .clone()
}

/// Streams over smoltcp TCP (and an in-memory path to this node itself).
pub struct SmolTransport {
    connect_timeout_ns: u64,
    local: MemNet,
}

impl SmolTransport {
    /// A transport whose connects give up after `connect_timeout_ns`.
    pub fn new(connect_timeout_ns: u64) -> Self {
        SmolTransport {
            connect_timeout_ns,
            local: local_streams(),
        }
    }
}

impl Default for SmolTransport {
    fn default() -> Self {
        Self::new(CONNECT_TIMEOUT_NS)
    }
}

/// One TCP stream.
pub struct SmolConn {
    stream: TcpStream,
    closed: Cell<bool>,
}

impl SmolConn {
    fn new(stream: TcpStream) -> Self {
        SmolConn {
            stream,
            closed: Cell::new(false),
        }
    }
}

impl Conn for SmolConn {
    fn send<'a>(&'a self, data: &'a [u8]) -> LocalFut<'a, Result<(), NetError>> {
        Box::pin(async move {
            if self.closed.get() {
                return Err(NetError::Closed);
            }
            self.stream.write_all(data).await.map_err(|_| {
                self.closed.set(true);
                NetError::Closed
            })
        })
    }

    fn recv<'a>(&'a self, buf: &'a mut [u8]) -> LocalFut<'a, Result<usize, NetError>> {
        Box::pin(async move {
            if self.closed.get() {
                return Err(NetError::Closed);
            }
            if buf.is_empty() {
                return Ok(0);
            }
            match self.stream.read(buf).await {
                Ok(0) | Err(_) => {
                    self.closed.set(true);
                    Err(NetError::Closed)
                }
                Ok(n) => Ok(n),
            }
        })
    }

    fn close(&self) {
        if !self.closed.replace(true) {
            counter!("cluster_net.stream_closes").inc();
        }
        // FIN after what is queued; the peer reads it, then `Closed`.
        self.stream.shutdown();
    }

    fn is_closed(&self) -> bool {
        self.closed.get() || self.stream.is_closed()
    }
}

/// Accepts streams from the network and from this node itself.
pub struct SmolListener {
    tcp: TcpListener,
    local: Rc<dyn Listener>,
    closed: Cell<bool>,
    stop: Notify,
}

impl Listener for SmolListener {
    fn accept(&self) -> LocalFut<'_, Result<Rc<dyn Conn>, NetError>> {
        Box::pin(async move {
            let stopped = self.stop.notified();
            if self.closed.get() {
                return Err(NetError::Closed);
            }
            let remote = async {
                match self.tcp.accept().await {
                    Ok(s) => {
                        counter!("cluster_net.accepted").inc();
                        Ok(Rc::new(SmolConn::new(s)) as Rc<dyn Conn>)
                    }
                    Err(_) => Err(NetError::Closed),
                }
            };
            let stop = async {
                stopped.await;
                Err(NetError::Closed)
            };
            first(first(remote, self.local.accept()), stop).await
        })
    }

    fn close(&self) {
        if !self.closed.replace(true) {
            self.local.close();
            self.stop.notify();
        }
    }
}

impl Transport for SmolTransport {
    /// Listen at `"a.b.c.d:port"` (the card holding that address) or
    /// `"0.0.0.0:port"` (every card). A malformed address or one this
    /// node does not have is `Refused`; a port taken is `AddrInUse`.
    fn listen(&self, addr: &str) -> Result<Rc<dyn Listener>, NetError> {
        let (ip, port) = parse_addr(addr).ok_or(NetError::Refused)?;
        let bind = if ip == [0; 4] { None } else { Some(ip) };
        let tcp = TcpListener::bind_on(
            bind,
            port,
            LISTEN_BACKLOG,
            STREAM_BUFFER_BYTES,
            STREAM_BUFFER_BYTES,
        )
        .map_err(|e| match e {
            net::NetError::AddrInUse => NetError::AddrInUse,
            _ => NetError::Refused,
        })?;
        let local = self.local.listen(&addr_str(ip, port))?;
        Ok(Rc::new(SmolListener {
            tcp,
            local,
            closed: Cell::new(false),
            stop: Notify::new(),
        }))
    }

    /// Connect to `"a.b.c.d:port"`: `Refused` when nobody listens, the
    /// address is malformed or unreachable, or the handshake does not
    /// finish within the connect timeout.
    fn connect<'a>(&'a self, addr: &'a str) -> LocalFut<'a, Result<Rc<dyn Conn>, NetError>> {
        Box::pin(async move {
            let (ip, port) = parse_addr(addr).ok_or(NetError::Refused)?;
            if is_local(ip) {
                counter!("cluster_net.loopback_connects").inc();
                let exact = self.local.connect(&addr_str(ip, port)).await;
                return match exact {
                    Ok(c) => Ok(c),
                    Err(_) => self.local.connect(&addr_str([0; 4], port)).await,
                };
            }
            let h = runtime::handle();
            match h
                .timeout_ns(self.connect_timeout_ns, TcpStream::connect(ip, port))
                .await
            {
                Ok(Ok(s)) => {
                    counter!("cluster_net.connected").inc();
                    Ok(Rc::new(SmolConn::new(s)) as Rc<dyn Conn>)
                }
                Ok(Err(_)) => {
                    counter!("cluster_net.connect_refused").inc();
                    Err(NetError::Refused)
                }
                Err(_) => {
                    counter!("cluster_net.connect_timeouts").inc();
                    Err(NetError::Refused)
                }
            }
        })
    }
}

/// A local receiver of datagrams sent to this node's own addresses.
struct LoopQueue {
    port: u16,
    queue: RefCell<VecDeque<(String, Vec<u8>)>>,
    arrived: Notify,
}

/// Bound datagram sockets of this node, for sends to itself.
static LOOPBACK: Local<RefCell<Vec<Weak<LoopQueue>>>> = Local::new(RefCell::new(Vec::new()));

/// UDP datagrams at one bound port.
pub struct SmolDatagrams {
    sock: net::UdpSocket,
    /// This socket's own address string (what peers see as the sender).
    me: String,
    lo: Rc<LoopQueue>,
}

impl SmolDatagrams {
    /// Bind `"a.b.c.d:port"` (the card holding it) or `"0.0.0.0:port"`.
    pub fn bind(addr: &str) -> Result<SmolDatagrams, NetError> {
        let (ip, port) = parse_addr(addr).ok_or(NetError::Refused)?;
        let bind = if ip == [0; 4] { None } else { Some(ip) };
        let sock = net::UdpSocket::bind_on(bind, port).map_err(|e| match e {
            net::NetError::AddrInUse => NetError::AddrInUse,
            _ => NetError::Refused,
        })?;
        let lo = Rc::new(LoopQueue {
            port,
            queue: RefCell::new(VecDeque::new()),
            arrived: Notify::new(),
        });
        let mut reg = LOOPBACK.borrow_mut();
        reg.retain(|w| w.strong_count() > 0);
        reg.push(Rc::downgrade(&lo));
        Ok(SmolDatagrams {
            sock,
            me: addr_str(ip, port),
            lo,
        })
    }
}

impl Datagrams for SmolDatagrams {
    fn send_to(&self, to: &str, data: &[u8]) -> Result<(), NetError> {
        let (ip, port) = parse_addr(to).ok_or(NetError::Refused)?;
        if data.len() > DATAGRAM_MAX {
            return Err(NetError::TooLarge);
        }
        if is_local(ip) {
            let target = LOOPBACK
                .borrow()
                .iter()
                .filter_map(Weak::upgrade)
                .find(|q| q.port == port);
            match target {
                Some(q) if q.queue.borrow().len() < LOOPBACK_QUEUE => {
                    q.queue
                        .borrow_mut()
                        .push_back((self.me.clone(), data.to_vec()));
                    q.arrived.notify();
                    counter!("cluster_net.dgram_loopback").inc();
                }
                _ => counter!("cluster_net.dgram_dropped").inc(),
            }
            return Ok(());
        }
        match self.sock.try_send_to(data, (ip, port)) {
            Ok(net::Sent::Queued) => counter!("cluster_net.dgram_sent").inc(),
            Ok(net::Sent::Dropped) | Err(net::NetError::Unreachable) => {
                counter!("cluster_net.dgram_dropped").inc()
            }
            Err(net::NetError::NoInterface) => return Err(NetError::Closed),
            Err(_) => counter!("cluster_net.dgram_dropped").inc(),
        }
        Ok(())
    }

    fn recv_from(&self) -> LocalFut<'_, Result<(String, Vec<u8>), NetError>> {
        Box::pin(async move {
            let mut buf = vec![0u8; DATAGRAM_MAX];
            loop {
                let arrived = self.lo.arrived.notified();
                if let Some(d) = self.lo.queue.borrow_mut().pop_front() {
                    return Ok(d);
                }
                let net_rx = async { Some(self.sock.recv_from(&mut buf).await) };
                let local = async {
                    arrived.await;
                    None
                };
                match first(net_rx, local).await {
                    None => continue,
                    Some(Ok((n, (a, p)))) => {
                        counter!("cluster_net.dgram_received").inc();
                        return Ok((addr_str(a, p), buf[..n].to_vec()));
                    }
                    Some(Err(net::NetError::Invalid)) => {
                        // longer than DATAGRAM_MAX: dropped
                        counter!("cluster_net.dgram_truncated").inc();
                    }
                    Some(Err(_)) => return Err(NetError::Closed),
                }
            }
        })
    }
}

/// Boot: say what the cluster words asked for. The volume service keeps
/// the shared volume unmounted in cluster mode (`volume_service`).
pub fn announce(mode: &ClusterMode) {
    match mode {
        ClusterMode::Off => {}
        ClusterMode::On(c) => match c.quorum_slot_nr {
            Some(slot) => log::info!(
                "cluster: quorum slot {slot}, heartbeat timeout {} ms",
                c.heartbeat_timeout_ms
            ),
            None => log::info!(
                "cluster: client-only node (no quorum slot), heartbeat timeout {} ms",
                c.heartbeat_timeout_ms
            ),
        },
        ClusterMode::Invalid(why) => {
            log::error!("cluster: {why}: not joining, not mounting the volume")
        }
    }
}

const COMMANDS: &[Command] = &[
    Command {
        name: "cluster",
        usage: "",
        help: "this node's cluster settings and state",
        run: |a| boxed(cluster_cmd(a)),
    },
    Command {
        name: "clusternet",
        usage: "serve PORT | ping ADDR:PORT TEXT",
        help: "test the cluster stream and datagram transports",
        run: |a| boxed(clusternet_cmd(a)),
    },
];

pub fn register_commands() {
    for c in COMMANDS {
        register(*c).expect("cluster command names are unique");
    }
}

async fn cluster_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "cluster")?;
    match &runtime::config().cluster {
        ClusterMode::Off => kprintln!("cluster: off (a single node serving its own volume)"),
        ClusterMode::On(c) => {
            match c.quorum_slot_nr {
                Some(s) => kprintln!("cluster: on, quorum slot {s}"),
                None => kprintln!("cluster: on, client only (no quorum slot)"),
            }
            kprintln!("heartbeat timeout: {} ms", c.heartbeat_timeout_ms);
            match (&c.key, c.insecure) {
                (Some(_), _) => kprintln!("auth: cluster key set"),
                (None, true) => kprintln!("auth: none (cluster.insecure=1)"),
                (None, false) => kprintln!("auth: none"),
            }
            for why in ["bad_mac", "replay", "wrong_volume", "no_key", "wrong_rid"] {
                let name = format!("cluster_auth.{why}");
                let n = scoutvm_fs::runtime::counters::get(&name).unwrap_or(0);
                kprintln!("{}: {}", name, n);
            }
        }
        ClusterMode::Invalid(why) => kprintln!("cluster: not joining: {why}"),
    }
    for i in net::infos() {
        if let Some(a) = i.addr {
            kprintln!("{}: {}", i.name, a);
        }
    }
    if let Err(why) = crate::volume::require() {
        kprintln!("volume: {why}");
    }
    Ok(())
}

async fn clusternet_cmd(args: Vec<String>) -> CmdResult {
    match args.first().map(|s| s.as_str()) {
        Some("serve") => {
            expect_args(&args, 2, 2, "clusternet serve PORT")?;
            serve(&args[1])
        }
        Some("ping") => {
            expect_args(&args, 3, 3, "clusternet ping ADDR:PORT TEXT")?;
            ping(&args[1], &args[2]).await
        }
        _ => Err("usage: clusternet serve PORT | ping ADDR:PORT TEXT".to_string()),
    }
}

/// Echo streams and datagrams on `0.0.0.0:PORT` through the adapters.
fn serve(port: &str) -> CmdResult {
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("bad port '{port}'"))?;
    let addr = addr_str([0; 4], port);
    let t = SmolTransport::default();
    let listener = t
        .listen(&addr)
        .map_err(|e| format!("listen {addr}: {e:?}"))?;
    let dg = SmolDatagrams::bind(&addr).map_err(|e| format!("bind {addr}: {e:?}"))?;
    let h = runtime::handle();
    let h2 = h.clone();
    h.spawn_named("clusternet.streams", async move {
        let _t = t;
        while let Ok(conn) = listener.accept().await {
            let echo = async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = conn.recv(&mut buf).await {
                    if conn.send(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                conn.close();
            };
            if h2.spawn_named("clusternet.echo", echo).is_err() {
                log::warn!("clusternet: too many tasks, stream dropped");
            }
        }
    })
    .map_err(|e| format!("{e}"))?;
    h.spawn_named("clusternet.datagrams", async move {
        while let Ok((from, data)) = dg.recv_from().await {
            let _ = dg.send_to(&from, &data);
        }
    })
    .map_err(|e| format!("{e}"))?;
    kprintln!("clusternet: echoing streams and datagrams on {}", addr);
    Ok(())
}

/// A stream exchange and a datagram exchange with a `clusternet serve`.
async fn ping(to: &str, text: &str) -> CmdResult {
    let (_, port) = parse_addr(to).ok_or_else(|| format!("bad address '{to}' (a.b.c.d:port)"))?;
    let h = runtime::handle();
    let t = SmolTransport::default();
    let t0 = h.now_ns();
    let conn = t
        .connect(to)
        .await
        .map_err(|e| format!("connect {to}: {e:?}"))?;
    let exchange = async {
        conn.send(text.as_bytes()).await?;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while got.len() < text.len() {
            let n = conn.recv(&mut buf).await?;
            got.extend_from_slice(&buf[..n]);
        }
        Ok::<_, NetError>(got)
    };
    let got = match h.timeout_ns(CONNECT_TIMEOUT_NS, exchange).await {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => return Err(format!("stream {to}: {e:?}")),
        Err(_) => return Err(format!("stream {to}: no echo in time")),
    };
    conn.close();
    if got != text.as_bytes() {
        return Err(format!("stream {to}: echo differs"));
    }
    let ms = (h.now_ns() - t0) / 1_000_000;
    kprintln!("stream {}: echoed {} bytes in {} ms", to, got.len(), ms);

    // The reply port: the server's port plus one, or the next free above.
    let mut dg = None;
    for k in 1..=64u16 {
        let p = port.wrapping_add(k).max(1);
        if let Ok(d) = SmolDatagrams::bind(&addr_str([0; 4], p)) {
            dg = Some(d);
            break;
        }
    }
    let dg = dg.ok_or("no free UDP port for the reply")?;
    let t0 = h.now_ns();
    for attempt in 1..=5 {
        dg.send_to(to, text.as_bytes())
            .map_err(|e| format!("datagram {to}: {e:?}"))?;
        match h.timeout_ns(1_000_000_000, dg.recv_from()).await {
            Ok(Ok((_, data))) if data == text.as_bytes() => {
                let ms = (h.now_ns() - t0) / 1_000_000;
                kprintln!(
                    "datagram {}: echoed {} bytes in {} ms (attempt {})",
                    to,
                    data.len(),
                    ms,
                    attempt
                );
                return Ok(());
            }
            Ok(Ok(_)) => return Err(format!("datagram {to}: echo differs")),
            Ok(Err(e)) => return Err(format!("datagram {to}: {e:?}")),
            Err(_) => {}
        }
    }
    Err(format!("datagram {to}: no echo after 5 tries"))
}
