//! The node's network: one smoltcp interface per virtio-net card (eth0,
//! eth1, ...), each configured statically from the command line (`ip=`,
//! `ip1=`, ...) or by DHCP, and an async socket API for tasks on the
//! executor: [`TcpListener`] (with a backlog of listening sockets, so many
//! clients can connect at once), [`TcpStream`], [`UdpSocket`] and
//! [`ping`]. Each card has its own socket set; a socket lives on the card
//! its destination routes through ([`route`]: the card whose subnet holds
//! the address, else the first card with a default gateway), and a
//! listener or UDP port bound to no address has one socket on every card.
//! The main loop calls [`poll`] after device interrupts and after each
//! executor run; smoltcp wakes the tasks whose sockets changed. Bounded:
//! at most [`SOCKETS_MAX`] sockets (`net.socket_limit` counts refusals).
//! No borrow of the stack is ever held across an `.await`.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use core::future::poll_fn;
use core::task::Poll;

use scoutvm_drivers::net::VirtioNet;
use scoutvm_fs::counter;
use scoutvm_fs::runtime::trace::Tracepoint;
use scoutvm_kernel::cmdline::{Ipv4, NetConfig};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, Device};
use smoltcp::socket::{dhcpv4, icmp, tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpEndpoint,
    IpListenEndpoint, Ipv4Address, Ipv4Cidr,
};

use crate::runtime::Local;

/// Most sockets alive at once (listeners' backlog included).
pub const SOCKETS_MAX: usize = 512;
/// Default TCP buffer sizes (each direction).
pub const TCP_BUFFER_BYTES: usize = 64 * 1024;
const UDP_PACKETS: usize = 32;
const UDP_BUFFER_BYTES: usize = 64 * 1024;
/// Ephemeral (connecting) ports are `EPHEMERAL_FIRST..=u16::MAX`; the
/// first one used is random (boot entropy), so a rebooted node does not
/// reuse the ports of its previous life's connections.
pub const EPHEMERAL_FIRST: u16 = 49152;
/// A stream we closed probes its peer this often, and is reset when the
/// peer stops answering for [`CLOSING_TIMEOUT_S`]: a dead peer never
/// keeps a socket of ours (a session reconnecting to a crashed node
/// would otherwise leak one per try).
const CLOSING_KEEPALIVE_S: u64 = 10;
const CLOSING_TIMEOUT_S: u64 = 60;

static NET_UP: Tracepoint = Tracepoint::new("net_address", &["a", "b", "c", "d"]);

/// Why a socket operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// No network card, or the interface is not configured.
    NoInterface,
    /// [`SOCKETS_MAX`] reached.
    TooManySockets,
    /// The port is in use or invalid.
    AddrInUse,
    /// The connection was closed or reset.
    Closed,
    /// The peer could not be reached (no route, no address).
    Unreachable,
    /// The operation did not finish in time.
    Timeout,
    /// Bad argument (zero port, oversize datagram, ...).
    Invalid,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetError::NoInterface => "no network interface",
            NetError::TooManySockets => "too many sockets",
            NetError::AddrInUse => "address in use",
            NetError::Closed => "connection closed",
            NetError::Unreachable => "unreachable",
            NetError::Timeout => "timed out",
            NetError::Invalid => "invalid argument",
        })
    }
}

/// One card and its interface.
struct Nic {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: VirtioNet,
    dhcp: Option<SocketHandle>,
    mode: NetConfig,
    gateway: Option<Ipv4>,
}

impl Nic {
    fn addr(&self) -> Option<Ipv4Cidr> {
        self.iface.ip_addrs().iter().find_map(|c| match c {
            IpCidr::Ipv4(c) => Some(*c),
            #[allow(unreachable_patterns)]
            _ => None,
        })
    }
}

/// A socket: the card whose set holds it and its handle there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sock {
    nic: usize,
    h: SocketHandle,
}

struct Stack {
    nics: Vec<Nic>,
    /// Closed streams whose FIN/ACK exchange smoltcp still finishes.
    closing: Vec<Sock>,
    /// Ports owned by a TcpListener or UdpSocket (one owner per port).
    bound_tcp: Vec<u16>,
    bound_udp: Vec<u16>,
    socket_count: usize,
    next_ephemeral: u16,
    next_ident: u16,
}

impl Stack {
    fn tcp(&mut self, s: Sock) -> &mut tcp::Socket<'static> {
        self.nics[s.nic].sockets.get_mut::<tcp::Socket>(s.h)
    }

    fn udp(&mut self, s: Sock) -> &mut udp::Socket<'static> {
        self.nics[s.nic].sockets.get_mut::<udp::Socket>(s.h)
    }

    /// The card a packet to `dst` leaves through: the one whose subnet
    /// holds `dst`, else the first with a default gateway.
    fn route(&self, dst: Ipv4) -> Result<usize, NetError> {
        let a = v4(dst);
        self.nics
            .iter()
            .position(|n| n.addr().is_some_and(|c| c.contains_addr(&a)))
            .or_else(|| self.nics.iter().position(|n| n.gateway.is_some()))
            .ok_or(NetError::Unreachable)
    }

    /// The card holding address `a`.
    fn nic_of(&self, a: Ipv4) -> Result<usize, NetError> {
        self.nics
            .iter()
            .position(|n| n.addr().is_some_and(|c| c.address() == v4(a)))
            .ok_or(NetError::Unreachable)
    }

    fn ephemeral_port(&mut self) -> u16 {
        loop {
            let p = self.next_ephemeral;
            self.next_ephemeral = if p == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                p + 1
            };
            if !self.bound_tcp.contains(&p) {
                return p;
            }
        }
    }
}

static STACK: Local<RefCell<Option<Stack>>> = Local::new(RefCell::new(None));

fn with_stack<R>(f: impl FnOnce(&mut Stack) -> R) -> Result<R, NetError> {
    let mut guard = STACK.borrow_mut();
    match guard.as_mut() {
        Some(s) => Ok(f(s)),
        None => Err(NetError::NoInterface),
    }
}

fn instant(now_ns: u64) -> Instant {
    Instant::from_micros((now_ns / 1_000) as i64)
}

fn v4(a: Ipv4) -> Ipv4Address {
    Ipv4Address::new(a[0], a[1], a[2], a[3])
}

/// Bring the cards up, eth0 first, each with its configuration. Without a
/// card this does nothing and every socket call returns `NoInterface`.
pub fn init(cards: Vec<(VirtioNet, NetConfig)>, now_ns: u64, seed: u64) {
    if cards.is_empty() {
        return;
    }
    let mut nics = Vec::new();
    for (i, (mut dev, mode)) in cards.into_iter().enumerate() {
        let mac = EthernetAddress(dev.mac());
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = seed.rotate_left(i as u32 * 8) ^ i as u64;
        let mut iface = Interface::new(config, &mut dev, instant(now_ns));
        let mut sockets = SocketSet::new(Vec::new());
        let mut dhcp = None;
        let mut gateway = None;
        match &mode {
            NetConfig::Static {
                addr,
                prefix,
                gateway: gw,
            } => {
                iface.update_ip_addrs(|a| {
                    let _ = a.push(IpCidr::new(IpAddress::Ipv4(v4(*addr)), *prefix));
                });
                if let Some(g) = gw {
                    let _ = iface.routes_mut().add_default_ipv4_route(v4(*g));
                    gateway = Some(*g);
                }
                NET_UP.emit(&[
                    addr[0] as u64,
                    addr[1] as u64,
                    addr[2] as u64,
                    addr[3] as u64,
                ]);
                log::info!(
                    "net: eth{i} static {}.{}.{}.{}/{}",
                    addr[0],
                    addr[1],
                    addr[2],
                    addr[3],
                    prefix
                );
            }
            NetConfig::Dhcp => {
                dhcp = Some(sockets.add(dhcpv4::Socket::new()));
                log::info!("net: eth{i} DHCP");
            }
            NetConfig::Off => log::info!("net: eth{i} left unconfigured (off)"),
        }
        nics.push(Nic {
            iface,
            sockets,
            dev,
            dhcp,
            mode,
            gateway,
        });
    }
    let span = (u16::MAX - EPHEMERAL_FIRST) as u64 + 1;
    *STACK.borrow_mut() = Some(Stack {
        nics,
        closing: Vec::new(),
        bound_tcp: Vec::new(),
        bound_udp: Vec::new(),
        socket_count: 0,
        next_ephemeral: EPHEMERAL_FIRST + ((seed >> 17) % span) as u16,
        next_ident: 0x5c00,
    });
}

/// Card `nic` raised its line: acknowledge it (received frames are taken
/// by the next [`poll`]).
pub fn service_interrupt(nic: usize) {
    let _ = with_stack(|s| {
        if let Some(n) = s.nics.get(nic) {
            n.dev.service_interrupt();
        }
    });
}

fn dhcp_events(i: usize, n: &mut Nic) {
    let Some(h) = n.dhcp else { return };
    match n.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
        None => {}
        Some(dhcpv4::Event::Configured(cfg)) => {
            let addr = cfg.address;
            n.iface.update_ip_addrs(|a| {
                a.clear();
                let _ = a.push(IpCidr::Ipv4(addr));
            });
            n.gateway = cfg.router.map(|r| r.octets());
            match cfg.router {
                Some(r) => {
                    let _ = n.iface.routes_mut().add_default_ipv4_route(r);
                }
                None => {
                    n.iface.routes_mut().remove_default_ipv4_route();
                }
            }
            let o = addr.address().octets();
            NET_UP.emit(&[o[0] as u64, o[1] as u64, o[2] as u64, o[3] as u64]);
            counter!("net.dhcp_configured").inc();
            log::info!("net: eth{i} DHCP address {addr}");
        }
        Some(dhcpv4::Event::Deconfigured) => {
            if n.iface.ipv4_addr().is_none() {
                return; // the socket's initial reset, not a lost lease
            }
            n.iface.update_ip_addrs(|a| a.clear());
            n.iface.routes_mut().remove_default_ipv4_route();
            n.gateway = None;
            counter!("net.dhcp_deconfigured").inc();
            log::warn!("net: eth{i} DHCP lease lost");
        }
    }
}

fn reap_closing(s: &mut Stack) {
    let mut i = 0;
    while i < s.closing.len() {
        let c = s.closing[i];
        let state = s.tcp(c).state();
        if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
            s.nics[c.nic].sockets.remove(c.h);
            s.socket_count -= 1;
            s.closing.swap_remove(i);
        } else {
            i += 1;
        }
    }
}

/// Move frames in and out and run protocol timers on every card. Returns
/// when the stack next needs a poll (absolute ns), if it has a deadline.
pub fn poll(now_ns: u64) -> Option<u64> {
    let mut guard = STACK.try_borrow_mut().ok()?;
    let s = guard.as_mut()?;
    let ts = instant(now_ns);
    for (i, n) in s.nics.iter_mut().enumerate() {
        n.iface.poll(ts, &mut n.dev, &mut n.sockets);
        dhcp_events(i, n);
    }
    reap_closing(s);
    s.nics
        .iter_mut()
        .filter_map(|n| n.iface.poll_delay(ts, &n.sockets))
        .map(|d| now_ns.saturating_add(d.total_micros() * 1_000))
        .min()
}

/// Whether a card holds received frames not yet processed.
pub fn has_rx() -> bool {
    STACK
        .try_borrow()
        .ok()
        .and_then(|g| g.as_ref().map(|s| s.nics.iter().any(|n| n.dev.can_recv())))
        .unwrap_or(false)
}

/// What `net` prints about one card.
pub struct NetInfo {
    /// "eth0", "eth1", ...
    pub name: String,
    pub mac: [u8; 6],
    pub addr: Option<Ipv4Cidr>,
    pub gateway: Option<Ipv4>,
    pub mode: NetConfig,
    /// Sockets on the whole stack (all cards).
    pub sockets: usize,
}

fn nic_info(s: &Stack, i: usize) -> NetInfo {
    let n = &s.nics[i];
    NetInfo {
        name: format!("eth{i}"),
        mac: n.dev.mac(),
        addr: n.iface.ipv4_addr().and_then(|a| {
            n.iface.ip_addrs().iter().find_map(|c| match c {
                IpCidr::Ipv4(c) if c.address() == a => Some(*c),
                _ => None,
            })
        }),
        gateway: n.gateway,
        mode: n.mode.clone(),
        sockets: s.socket_count,
    }
}

/// eth0 (the card with the default route and the 9P clients).
pub fn info() -> Option<NetInfo> {
    let guard = STACK.try_borrow().ok()?;
    let s = guard.as_ref()?;
    Some(nic_info(s, 0))
}

/// Every card, eth0 first.
pub fn infos() -> Vec<NetInfo> {
    let Ok(guard) = STACK.try_borrow() else {
        return Vec::new();
    };
    match guard.as_ref() {
        Some(s) => (0..s.nics.len()).map(|i| nic_info(s, i)).collect(),
        None => Vec::new(),
    }
}

/// Whether `a` is one of this node's addresses.
pub fn is_own_addr(a: Ipv4) -> bool {
    with_stack(|s| s.nic_of(a).is_ok()).unwrap_or(false)
}

fn add_socket<T: smoltcp::socket::AnySocket<'static>>(
    s: &mut Stack,
    nic: usize,
    sock: T,
) -> Result<Sock, NetError> {
    if s.socket_count >= SOCKETS_MAX {
        counter!("net.socket_limit").inc();
        return Err(NetError::TooManySockets);
    }
    s.socket_count += 1;
    Ok(Sock {
        nic,
        h: s.nics[nic].sockets.add(sock),
    })
}

fn remove_socket(sock: Sock) {
    if let Ok(mut g) = STACK.try_borrow_mut() {
        if let Some(s) = g.as_mut() {
            s.nics[sock.nic].sockets.remove(sock.h);
            s.socket_count -= 1;
        }
    }
}

fn new_tcp(rx: usize, tx: usize) -> tcp::Socket<'static> {
    let mut sock = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    );
    sock.set_nagle_enabled(false);
    sock.set_ack_delay(None);
    // Without congestion control smoltcp sends its whole window at once;
    // with transmits no longer waiting on the device, a 256 KiB burst
    // overruns any queue on the way (a dgram link drops, a switch would
    // too) and recovery waits on retransmit timers. Reno backs off and
    // uses no floating point.
    sock.set_congestion_control(tcp::CongestionControl::Reno);
    sock
}

/// Close (FIN) with the closing stream's liveness bounds.
fn close_bounded(sock: &mut tcp::Socket<'static>) {
    sock.set_keep_alive(Some(Duration::from_secs(CLOSING_KEEPALIVE_S)));
    sock.set_timeout(Some(Duration::from_secs(CLOSING_TIMEOUT_S)));
    sock.close();
}

/// A TCP port accepting connections; holds `backlog` listening sockets
/// (on every card, or on the one card holding the bound address) so that
/// many clients can connect at once.
pub struct TcpListener {
    port: u16,
    addr: Option<Ipv4>,
    backlog: RefCell<Vec<Sock>>,
    rx_bytes: usize,
    tx_bytes: usize,
}

impl TcpListener {
    /// Listen on `port` of every card with default buffers.
    pub fn bind(port: u16, backlog: usize) -> Result<Self, NetError> {
        Self::bind_with(port, backlog, TCP_BUFFER_BYTES, TCP_BUFFER_BYTES)
    }

    /// Listen on `port` of every card.
    pub fn bind_with(
        port: u16,
        backlog: usize,
        rx_bytes: usize,
        tx_bytes: usize,
    ) -> Result<Self, NetError> {
        Self::bind_on(None, port, backlog, rx_bytes, tx_bytes)
    }

    /// Listen on `addr:port` (`None`: every card), `backlog` sockets per card.
    pub fn bind_on(
        addr: Option<Ipv4>,
        port: u16,
        backlog: usize,
        rx_bytes: usize,
        tx_bytes: usize,
    ) -> Result<Self, NetError> {
        if port == 0 || backlog == 0 || rx_bytes == 0 || tx_bytes == 0 {
            return Err(NetError::Invalid);
        }
        let nics: Vec<usize> = with_stack(|s| {
            let nics = match addr {
                Some(a) => vec![s.nic_of(a)?],
                None => (0..s.nics.len()).collect(),
            };
            if s.bound_tcp.contains(&port) {
                return Err(NetError::AddrInUse);
            }
            s.bound_tcp.push(port);
            Ok(nics)
        })??;
        let l = TcpListener {
            port,
            addr,
            backlog: RefCell::new(Vec::new()),
            rx_bytes,
            tx_bytes,
        };
        for nic in nics {
            for _ in 0..backlog {
                let sock = l.new_listener(nic)?;
                l.backlog.borrow_mut().push(sock);
            }
        }
        Ok(l)
    }

    fn endpoint(&self) -> IpListenEndpoint {
        IpListenEndpoint {
            addr: self.addr.map(|a| IpAddress::Ipv4(v4(a))),
            port: self.port,
        }
    }

    fn new_listener(&self, nic: usize) -> Result<Sock, NetError> {
        let ep = self.endpoint();
        with_stack(|s| {
            let mut sock = new_tcp(self.rx_bytes, self.tx_bytes);
            sock.listen(ep).map_err(|_| NetError::AddrInUse)?;
            add_socket(s, nic, sock)
        })?
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Wait for the next connection.
    pub async fn accept(&self) -> Result<TcpStream, NetError> {
        let ep = self.endpoint();
        let index = poll_fn(|cx| {
            let backlog = self.backlog.borrow();
            if backlog.is_empty() {
                return Poll::Ready(Err(NetError::TooManySockets));
            }
            let r = with_stack(|s| {
                for (i, &h) in backlog.iter().enumerate() {
                    let sock = s.tcp(h);
                    match sock.state() {
                        tcp::State::Listen | tcp::State::SynReceived => {
                            sock.register_recv_waker(cx.waker())
                        }
                        tcp::State::Closed => {
                            // Reset before it was accepted: listen again.
                            let _ = sock.listen(ep);
                            sock.register_recv_waker(cx.waker());
                        }
                        _ => return Some(i),
                    }
                }
                None
            });
            match r {
                Err(e) => Poll::Ready(Err(e)),
                Ok(Some(i)) => Poll::Ready(Ok(i)),
                Ok(None) => Poll::Pending,
            }
        })
        .await?;
        let sock = self.backlog.borrow()[index];
        // Replace the taken socket so the backlog stays full.
        match self.new_listener(sock.nic) {
            Ok(h) => self.backlog.borrow_mut()[index] = h,
            Err(_) => {
                self.backlog.borrow_mut().swap_remove(index);
            }
        }
        counter!("net.tcp_accepted").inc();
        Ok(TcpStream { sock })
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        for &h in self.backlog.borrow().iter() {
            remove_socket(h);
        }
        let port = self.port;
        let _ = with_stack(|s| s.bound_tcp.retain(|&p| p != port));
    }
}

/// One TCP connection. Reads and writes take `&self`, so one task may
/// read while another writes (share it in an `Rc`).
pub struct TcpStream {
    sock: Sock,
}

impl TcpStream {
    /// Connect to `addr:port` through the card that routes there, from
    /// the next ephemeral port, waiting until established (or refused:
    /// `Closed`). The caller bounds the wait (`Handle::timeout_ns`).
    pub async fn connect(addr: Ipv4, port: u16) -> Result<TcpStream, NetError> {
        if port == 0 {
            return Err(NetError::Invalid);
        }
        let sock = with_stack(|s| {
            let nic = s.route(addr)?;
            let mut sock = new_tcp(TCP_BUFFER_BYTES, TCP_BUFFER_BYTES);
            let local = s.ephemeral_port();
            let remote = IpEndpoint::new(IpAddress::Ipv4(v4(addr)), port);
            sock.connect(s.nics[nic].iface.context(), remote, local)
                .map_err(|_| NetError::Unreachable)?;
            add_socket(s, nic, sock)
        })??;
        // Dropped on any early return: the socket is closed and reaped.
        let stream = TcpStream { sock };
        poll_fn(|cx| {
            with_stack(|s| {
                let sock = s.tcp(sock);
                match sock.state() {
                    tcp::State::Established => Poll::Ready(Ok(())),
                    tcp::State::SynSent | tcp::State::SynReceived => {
                        sock.register_send_waker(cx.waker());
                        Poll::Pending
                    }
                    _ => Poll::Ready(Err(NetError::Closed)),
                }
            })
            .unwrap_or(Poll::Ready(Err(NetError::NoInterface)))
        })
        .await?;
        Ok(stream)
    }

    /// Read some bytes; `Ok(0)` at end of stream.
    pub async fn read(&self, buf: &mut [u8]) -> Result<usize, NetError> {
        let h = self.sock;
        poll_fn(|cx| {
            with_stack(|s| {
                let sock = s.tcp(h);
                if sock.can_recv() {
                    return Poll::Ready(sock.recv_slice(buf).map_err(|_| NetError::Closed));
                }
                if !sock.may_recv() {
                    return Poll::Ready(Ok(0));
                }
                sock.register_recv_waker(cx.waker());
                Poll::Pending
            })
            .unwrap_or(Poll::Ready(Err(NetError::NoInterface)))
        })
        .await
    }

    /// Read exactly `buf.len()` bytes, or fail with `Closed`.
    pub async fn read_exact(&self, buf: &mut [u8]) -> Result<(), NetError> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read(&mut buf[done..]).await?;
            if n == 0 {
                return Err(NetError::Closed);
            }
            done += n;
        }
        Ok(())
    }

    /// Queue some bytes for sending; returns how many were taken.
    pub async fn write(&self, buf: &[u8]) -> Result<usize, NetError> {
        let h = self.sock;
        poll_fn(|cx| {
            with_stack(|s| {
                let sock = s.tcp(h);
                if !sock.may_send() {
                    return Poll::Ready(Err(NetError::Closed));
                }
                if sock.can_send() {
                    return Poll::Ready(sock.send_slice(buf).map_err(|_| NetError::Closed));
                }
                sock.register_send_waker(cx.waker());
                Poll::Pending
            })
            .unwrap_or(Poll::Ready(Err(NetError::NoInterface)))
        })
        .await
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> Result<(), NetError> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Wait until everything written was acknowledged by the peer.
    pub async fn flush(&self) -> Result<(), NetError> {
        let h = self.sock;
        poll_fn(|cx| {
            with_stack(|s| {
                let sock = s.tcp(h);
                if sock.send_queue() == 0 {
                    return Poll::Ready(Ok(()));
                }
                if !sock.may_send() {
                    return Poll::Ready(Err(NetError::Closed));
                }
                sock.register_send_waker(cx.waker());
                Poll::Pending
            })
            .unwrap_or(Poll::Ready(Err(NetError::NoInterface)))
        })
        .await
    }

    /// The peer's address and port.
    pub fn peer(&self) -> Option<(Ipv4, u16)> {
        with_stack(|s| {
            s.tcp(self.sock).remote_endpoint().map(|ep| {
                let IpAddress::Ipv4(a) = ep.addr;
                (a.octets(), ep.port)
            })
        })
        .ok()
        .flatten()
    }

    /// Whether the connection can no longer carry data both ways.
    pub fn is_closed(&self) -> bool {
        with_stack(|s| {
            let sock = s.tcp(self.sock);
            !sock.may_send() || !sock.may_recv()
        })
        .unwrap_or(true)
    }

    /// Send FIN; reads still drain what the peer sent.
    pub fn shutdown(&self) {
        let _ = with_stack(|s| close_bounded(s.tcp(self.sock)));
    }

    /// Reset the connection at once (RST); pending and later reads and
    /// writes fail.
    pub fn abort(&self) {
        let _ = with_stack(|s| s.tcp(self.sock).abort());
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        if let Ok(mut g) = STACK.try_borrow_mut() {
            if let Some(s) = g.as_mut() {
                close_bounded(s.tcp(self.sock));
                s.closing.push(self.sock);
            }
        }
    }
}

/// A bound UDP port: one socket on every card, or on the one card
/// holding the bound address. Sends leave through the card that routes
/// to the destination.
pub struct UdpSocket {
    socks: Vec<Sock>,
    port: u16,
}

/// Outcome of [`UdpSocket::try_send_to`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The send buffer was full: the datagram was dropped.
    Dropped,
}

impl UdpSocket {
    /// Bind `port` on every card.
    pub fn bind(port: u16) -> Result<Self, NetError> {
        Self::bind_on(None, port)
    }

    /// Bind `addr:port` (`None`: every card).
    pub fn bind_on(addr: Option<Ipv4>, port: u16) -> Result<Self, NetError> {
        if port == 0 {
            return Err(NetError::Invalid);
        }
        let socks = with_stack(|s| {
            if s.bound_udp.contains(&port) {
                return Err(NetError::AddrInUse);
            }
            let nics = match addr {
                Some(a) => vec![s.nic_of(a)?],
                None => (0..s.nics.len()).collect(),
            };
            if s.socket_count + nics.len() > SOCKETS_MAX {
                counter!("net.socket_limit").inc();
                return Err(NetError::TooManySockets);
            }
            let ep = IpListenEndpoint {
                addr: addr.map(|a| IpAddress::Ipv4(v4(a))),
                port,
            };
            let mut socks = Vec::new();
            for nic in nics {
                let mut sock = udp::Socket::new(
                    udp::PacketBuffer::new(
                        vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                        vec![0; UDP_BUFFER_BYTES],
                    ),
                    udp::PacketBuffer::new(
                        vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                        vec![0; UDP_BUFFER_BYTES],
                    ),
                );
                sock.bind(ep).map_err(|_| NetError::AddrInUse)?;
                socks.push(add_socket(s, nic, sock)?);
            }
            s.bound_udp.push(port);
            Ok(socks)
        })??;
        Ok(UdpSocket { socks, port })
    }

    /// Wait for a datagram; returns its length (truncated to `buf`) and sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, (Ipv4, u16)), NetError> {
        poll_fn(|cx| {
            with_stack(|s| {
                for &h in &self.socks {
                    let sock = s.udp(h);
                    match sock.recv_slice(buf) {
                        Ok((n, meta)) => {
                            let IpAddress::Ipv4(a) = meta.endpoint.addr;
                            return Poll::Ready(Ok((n, (a.octets(), meta.endpoint.port))));
                        }
                        Err(udp::RecvError::Truncated) => {
                            return Poll::Ready(Err(NetError::Invalid))
                        }
                        Err(udp::RecvError::Exhausted) => sock.register_recv_waker(cx.waker()),
                    }
                }
                Poll::Pending
            })
            .unwrap_or(Poll::Ready(Err(NetError::NoInterface)))
        })
        .await
    }

    /// The socket of this port on the card that routes to `to`.
    fn sock_for(&self, s: &Stack, to: Ipv4) -> Result<Sock, NetError> {
        let nic = match self.socks.as_slice() {
            [one] => one.nic, // bound to an address: its card only
            _ => s.route(to)?,
        };
        self.socks
            .iter()
            .copied()
            .find(|h| h.nic == nic)
            .ok_or(NetError::Unreachable)
    }

    /// Queue one datagram (waits while the send buffer is full).
    pub async fn send_to(&self, buf: &[u8], to: (Ipv4, u16)) -> Result<(), NetError> {
        let ep = IpEndpoint::new(IpAddress::Ipv4(v4(to.0)), to.1);
        poll_fn(|cx| {
            with_stack(|s| {
                let h = match self.sock_for(s, to.0) {
                    Ok(h) => h,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                let sock = s.udp(h);
                match sock.send_slice(buf, ep) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(udp::SendError::BufferFull) => {
                        sock.register_send_waker(cx.waker());
                        Poll::Pending
                    }
                    Err(udp::SendError::Unaddressable) => Poll::Ready(Err(NetError::Unreachable)),
                }
            })
            .unwrap_or(Poll::Ready(Err(NetError::NoInterface)))
        })
        .await
    }

    /// Queue one datagram without waiting: a full send buffer drops it
    /// (`net.udp_send_dropped`).
    pub fn try_send_to(&self, buf: &[u8], to: (Ipv4, u16)) -> Result<Sent, NetError> {
        if to.1 == 0 {
            return Err(NetError::Invalid);
        }
        let ep = IpEndpoint::new(IpAddress::Ipv4(v4(to.0)), to.1);
        with_stack(|s| {
            let h = self.sock_for(s, to.0)?;
            match s.udp(h).send_slice(buf, ep) {
                Ok(()) => Ok(Sent::Queued),
                Err(udp::SendError::BufferFull) => {
                    counter!("net.udp_send_dropped").inc();
                    Ok(Sent::Dropped)
                }
                Err(udp::SendError::Unaddressable) => Err(NetError::Unreachable),
            }
        })?
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        for &h in &self.socks {
            remove_socket(h);
        }
        let port = self.port;
        let _ = with_stack(|s| s.bound_udp.retain(|&p| p != port));
    }
}

struct SocketGuard(Sock);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        remove_socket(self.0);
    }
}

/// Send one ICMP echo request and wait for its reply; returns the round
/// trip in nanoseconds.
pub async fn ping(addr: Ipv4, seq: u16, timeout_ns: u64) -> Result<u64, NetError> {
    let (handle, ident) = with_stack(|s| {
        let nic = s.route(addr)?;
        let mut sock = icmp::Socket::new(
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 2048]),
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 2048]),
        );
        let ident = s.next_ident;
        s.next_ident = s.next_ident.wrapping_add(1);
        sock.bind(icmp::Endpoint::Ident(ident))
            .map_err(|_| NetError::Invalid)?;
        Ok::<_, NetError>((add_socket(s, nic, sock)?, ident))
    })??;
    let _guard = SocketGuard(handle);
    let target = IpAddress::Ipv4(v4(addr));
    let payload = b"scoutvm-ping-0123456789abcdef";
    let caps = ChecksumCapabilities::default();
    let start = scoutvm_drivers::clock::monotonic_ns();
    let exchange = async {
        poll_fn(|cx| {
            with_stack(|s| {
                let sock = s.nics[handle.nic].sockets.get_mut::<icmp::Socket>(handle.h);
                if !sock.can_send() {
                    sock.register_send_waker(cx.waker());
                    return Poll::Pending;
                }
                let repr = Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no: seq,
                    data: payload,
                };
                match sock.send(repr.buffer_len(), target) {
                    Ok(buf) => {
                        let mut pkt = Icmpv4Packet::new_unchecked(buf);
                        repr.emit(&mut pkt, &caps);
                        Poll::Ready(Ok(()))
                    }
                    Err(_) => Poll::Ready(Err(NetError::Unreachable)),
                }
            })
            .unwrap_or(Poll::Ready(Err(NetError::NoInterface)))
        })
        .await?;
        counter!("net.ping_sent").inc();
        poll_fn(|cx| {
            with_stack(|s| {
                let sock = s.nics[handle.nic].sockets.get_mut::<icmp::Socket>(handle.h);
                while sock.can_recv() {
                    let Ok((data, _from)) = sock.recv() else {
                        break;
                    };
                    let Ok(pkt) = Icmpv4Packet::new_checked(data) else {
                        continue;
                    };
                    if let Ok(Icmpv4Repr::EchoReply {
                        ident: i, seq_no, ..
                    }) = Icmpv4Repr::parse(&pkt, &caps)
                    {
                        if i == ident && seq_no == seq {
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
                sock.register_recv_waker(cx.waker());
                Poll::Pending
            })
            .unwrap_or(Poll::Ready(Err(NetError::NoInterface)))
        })
        .await
    };
    let handle_exec = crate::runtime::handle();
    match handle_exec.timeout_ns(timeout_ns, exchange).await {
        Ok(Ok(())) => {
            counter!("net.ping_replies").inc();
            Ok(scoutvm_drivers::clock::monotonic_ns() - start)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(NetError::Timeout),
    }
}

/// The cards' MTU (for `net`; every card has the same).
pub fn mtu() -> Option<usize> {
    with_stack(|s| s.nics[0].dev.capabilities().max_transmission_unit).ok()
}
