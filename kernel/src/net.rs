//! The node's network: one smoltcp interface over virtio-net, configured
//! statically from the command line or by DHCP, and an async socket API
//! for tasks on the executor: [`TcpListener`] (with a backlog of listening
//! sockets, so many clients can connect at once), [`TcpStream`],
//! [`UdpSocket`] and [`ping`]. The main loop calls [`poll`] after device
//! interrupts and after each executor run; smoltcp wakes the tasks whose
//! sockets changed. Bounded: at most [`SOCKETS_MAX`] sockets
//! (`net.socket_limit` counts refusals). No borrow of the stack is ever
//! held across an `.await`.

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
use smoltcp::time::Instant;
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
const EPHEMERAL_FIRST: u16 = 49152;

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

struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: VirtioNet,
    dhcp: Option<SocketHandle>,
    mode: NetConfig,
    gateway: Option<Ipv4>,
    /// Closed streams whose FIN/ACK exchange smoltcp still finishes.
    closing: Vec<SocketHandle>,
    /// Ports owned by a TcpListener or UdpSocket (one owner per port).
    bound_tcp: Vec<u16>,
    bound_udp: Vec<u16>,
    socket_count: usize,
    next_ephemeral: u16,
    next_ident: u16,
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

/// Bring the interface up. Without a card this does nothing and every
/// socket call returns `NoInterface`.
pub fn init(mut dev: VirtioNet, mode: &NetConfig, now_ns: u64, seed: u64) {
    let mac = EthernetAddress(dev.mac());
    let mut config = Config::new(HardwareAddress::Ethernet(mac));
    config.random_seed = seed;
    let mut iface = Interface::new(config, &mut dev, instant(now_ns));
    let mut sockets = SocketSet::new(Vec::new());
    let mut dhcp = None;
    let mut gateway = None;
    match mode {
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
                "net: static {}.{}.{}.{}/{}",
                addr[0],
                addr[1],
                addr[2],
                addr[3],
                prefix
            );
        }
        NetConfig::Dhcp => {
            dhcp = Some(sockets.add(dhcpv4::Socket::new()));
            log::info!("net: DHCP");
        }
        NetConfig::Off => log::info!("net: interface left unconfigured (ip=off)"),
    }
    *STACK.borrow_mut() = Some(Stack {
        iface,
        sockets,
        dev,
        dhcp,
        mode: mode.clone(),
        gateway,
        closing: Vec::new(),
        bound_tcp: Vec::new(),
        bound_udp: Vec::new(),
        socket_count: 0,
        next_ephemeral: EPHEMERAL_FIRST,
        next_ident: 0x5c00,
    });
}

/// The card raised its line: acknowledge it (received frames are taken by
/// the next [`poll`]).
pub fn service_interrupt() {
    let _ = with_stack(|s| s.dev.service_interrupt());
}

fn dhcp_events(s: &mut Stack) {
    let Some(h) = s.dhcp else { return };
    match s.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
        None => {}
        Some(dhcpv4::Event::Configured(cfg)) => {
            let addr = cfg.address;
            s.iface.update_ip_addrs(|a| {
                a.clear();
                let _ = a.push(IpCidr::Ipv4(addr));
            });
            s.gateway = cfg.router.map(|r| r.octets());
            match cfg.router {
                Some(r) => {
                    let _ = s.iface.routes_mut().add_default_ipv4_route(r);
                }
                None => {
                    s.iface.routes_mut().remove_default_ipv4_route();
                }
            }
            let o = addr.address().octets();
            NET_UP.emit(&[o[0] as u64, o[1] as u64, o[2] as u64, o[3] as u64]);
            counter!("net.dhcp_configured").inc();
            log::info!("net: DHCP address {addr}");
        }
        Some(dhcpv4::Event::Deconfigured) => {
            if s.iface.ipv4_addr().is_none() {
                return; // the socket's initial reset, not a lost lease
            }
            s.iface.update_ip_addrs(|a| a.clear());
            s.iface.routes_mut().remove_default_ipv4_route();
            s.gateway = None;
            counter!("net.dhcp_deconfigured").inc();
            log::warn!("net: DHCP lease lost");
        }
    }
}

fn reap_closing(s: &mut Stack) {
    let mut i = 0;
    while i < s.closing.len() {
        let h = s.closing[i];
        let state = s.sockets.get::<tcp::Socket>(h).state();
        if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
            s.sockets.remove(h);
            s.socket_count -= 1;
            s.closing.swap_remove(i);
        } else {
            i += 1;
        }
    }
}

/// Move frames in and out and run protocol timers. Returns when the stack
/// next needs a poll (absolute ns), if it has a deadline.
pub fn poll(now_ns: u64) -> Option<u64> {
    let mut guard = STACK.try_borrow_mut().ok()?;
    let s = guard.as_mut()?;
    let ts = instant(now_ns);
    s.iface.poll(ts, &mut s.dev, &mut s.sockets);
    dhcp_events(s);
    reap_closing(s);
    s.iface
        .poll_delay(ts, &s.sockets)
        .map(|d| now_ns.saturating_add(d.total_micros() * 1_000))
}

/// Whether the card holds received frames not yet processed.
pub fn has_rx() -> bool {
    STACK
        .try_borrow()
        .ok()
        .and_then(|g| g.as_ref().map(|s| s.dev.can_recv()))
        .unwrap_or(false)
}

/// What `net` prints.
pub struct NetInfo {
    pub mac: [u8; 6],
    pub addr: Option<Ipv4Cidr>,
    pub gateway: Option<Ipv4>,
    pub mode: NetConfig,
    pub sockets: usize,
}

pub fn info() -> Option<NetInfo> {
    let guard = STACK.try_borrow().ok()?;
    let s = guard.as_ref()?;
    Some(NetInfo {
        mac: s.dev.mac(),
        addr: s.iface.ipv4_addr().and_then(|a| {
            s.iface.ip_addrs().iter().find_map(|c| match c {
                IpCidr::Ipv4(c) if c.address() == a => Some(*c),
                _ => None,
            })
        }),
        gateway: s.gateway,
        mode: s.mode.clone(),
        sockets: s.socket_count,
    })
}

fn add_socket<T: smoltcp::socket::AnySocket<'static>>(
    s: &mut Stack,
    sock: T,
) -> Result<SocketHandle, NetError> {
    if s.socket_count >= SOCKETS_MAX {
        counter!("net.socket_limit").inc();
        return Err(NetError::TooManySockets);
    }
    s.socket_count += 1;
    Ok(s.sockets.add(sock))
}

fn remove_socket(h: SocketHandle) {
    if let Ok(mut g) = STACK.try_borrow_mut() {
        if let Some(s) = g.as_mut() {
            s.sockets.remove(h);
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

/// A TCP port accepting connections; holds `backlog` listening sockets so
/// that many clients can connect at once.
pub struct TcpListener {
    port: u16,
    backlog: Vec<SocketHandle>,
    rx_bytes: usize,
    tx_bytes: usize,
}

impl TcpListener {
    /// Listen on `port` with default buffers.
    pub fn bind(port: u16, backlog: usize) -> Result<Self, NetError> {
        Self::bind_with(port, backlog, TCP_BUFFER_BYTES, TCP_BUFFER_BYTES)
    }

    pub fn bind_with(
        port: u16,
        backlog: usize,
        rx_bytes: usize,
        tx_bytes: usize,
    ) -> Result<Self, NetError> {
        if port == 0 || backlog == 0 || rx_bytes == 0 || tx_bytes == 0 {
            return Err(NetError::Invalid);
        }
        with_stack(|s| {
            if s.bound_tcp.contains(&port) {
                return Err(NetError::AddrInUse);
            }
            s.bound_tcp.push(port);
            Ok(())
        })??;
        let mut l = TcpListener {
            port,
            backlog: Vec::new(),
            rx_bytes,
            tx_bytes,
        };
        for _ in 0..backlog {
            let h = l.new_listener()?;
            l.backlog.push(h);
        }
        Ok(l)
    }

    fn new_listener(&self) -> Result<SocketHandle, NetError> {
        with_stack(|s| {
            let mut sock = new_tcp(self.rx_bytes, self.tx_bytes);
            sock.listen(IpListenEndpoint::from(self.port))
                .map_err(|_| NetError::AddrInUse)?;
            add_socket(s, sock)
        })?
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Wait for the next connection.
    pub async fn accept(&mut self) -> Result<TcpStream, NetError> {
        let index = poll_fn(|cx| {
            let r = with_stack(|s| {
                for (i, &h) in self.backlog.iter().enumerate() {
                    let sock = s.sockets.get_mut::<tcp::Socket>(h);
                    match sock.state() {
                        tcp::State::Listen | tcp::State::SynReceived => {
                            sock.register_recv_waker(cx.waker())
                        }
                        tcp::State::Closed => {
                            // Reset before it was accepted: listen again.
                            let _ = sock.listen(IpListenEndpoint::from(self.port));
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
        let handle = self.backlog[index];
        // Replace the taken socket so the backlog stays full.
        match self.new_listener() {
            Ok(h) => self.backlog[index] = h,
            Err(_) => {
                self.backlog.swap_remove(index);
            }
        }
        counter!("net.tcp_accepted").inc();
        Ok(TcpStream { handle })
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        for &h in &self.backlog {
            remove_socket(h);
        }
        let port = self.port;
        let _ = with_stack(|s| s.bound_tcp.retain(|&p| p != port));
    }
}

/// One TCP connection. Reads and writes take `&self`, so one task may
/// read while another writes (share it in an `Rc`).
pub struct TcpStream {
    handle: SocketHandle,
}

impl TcpStream {
    /// Connect to `addr:port`, waiting until established.
    pub async fn connect(addr: Ipv4, port: u16) -> Result<TcpStream, NetError> {
        if port == 0 {
            return Err(NetError::Invalid);
        }
        let handle = with_stack(|s| {
            let mut sock = new_tcp(TCP_BUFFER_BYTES, TCP_BUFFER_BYTES);
            let local = s.next_ephemeral;
            s.next_ephemeral = if local == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                local + 1
            };
            let remote = IpEndpoint::new(IpAddress::Ipv4(v4(addr)), port);
            sock.connect(s.iface.context(), remote, local)
                .map_err(|_| NetError::Unreachable)?;
            add_socket(s, sock)
        })??;
        let stream = TcpStream { handle };
        poll_fn(|cx| {
            with_stack(|s| {
                let sock = s.sockets.get_mut::<tcp::Socket>(handle);
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
        let h = self.handle;
        poll_fn(|cx| {
            with_stack(|s| {
                let sock = s.sockets.get_mut::<tcp::Socket>(h);
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
        let h = self.handle;
        poll_fn(|cx| {
            with_stack(|s| {
                let sock = s.sockets.get_mut::<tcp::Socket>(h);
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
        let h = self.handle;
        poll_fn(|cx| {
            with_stack(|s| {
                let sock = s.sockets.get_mut::<tcp::Socket>(h);
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
            s.sockets
                .get::<tcp::Socket>(self.handle)
                .remote_endpoint()
                .map(|ep| {
                    let IpAddress::Ipv4(a) = ep.addr;
                    (a.octets(), ep.port)
                })
        })
        .ok()
        .flatten()
    }

    /// Send FIN; reads still drain what the peer sent.
    pub fn shutdown(&self) {
        let _ = with_stack(|s| s.sockets.get_mut::<tcp::Socket>(self.handle).close());
    }

    /// Reset the connection at once (RST); pending and later reads and
    /// writes fail.
    pub fn abort(&self) {
        let _ = with_stack(|s| s.sockets.get_mut::<tcp::Socket>(self.handle).abort());
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        if let Ok(mut g) = STACK.try_borrow_mut() {
            if let Some(s) = g.as_mut() {
                s.sockets.get_mut::<tcp::Socket>(self.handle).close();
                s.closing.push(self.handle);
            }
        }
    }
}

/// A bound UDP port.
pub struct UdpSocket {
    handle: SocketHandle,
    port: u16,
}

impl UdpSocket {
    pub fn bind(port: u16) -> Result<Self, NetError> {
        if port == 0 {
            return Err(NetError::Invalid);
        }
        let handle = with_stack(|s| {
            if s.bound_udp.contains(&port) {
                return Err(NetError::AddrInUse);
            }
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
            sock.bind(port).map_err(|_| NetError::AddrInUse)?;
            let h = add_socket(s, sock)?;
            s.bound_udp.push(port);
            Ok(h)
        })??;
        Ok(UdpSocket { handle, port })
    }

    /// Wait for a datagram; returns its length (truncated to `buf`) and sender.
    pub async fn recv_from(&mut self, buf: &mut [u8]) -> Result<(usize, (Ipv4, u16)), NetError> {
        let h = self.handle;
        poll_fn(|cx| {
            with_stack(|s| {
                let sock = s.sockets.get_mut::<udp::Socket>(h);
                match sock.recv_slice(buf) {
                    Ok((n, meta)) => {
                        let IpAddress::Ipv4(a) = meta.endpoint.addr;
                        Poll::Ready(Ok((n, (a.octets(), meta.endpoint.port))))
                    }
                    Err(udp::RecvError::Truncated) => Poll::Ready(Err(NetError::Invalid)),
                    Err(udp::RecvError::Exhausted) => {
                        sock.register_recv_waker(cx.waker());
                        Poll::Pending
                    }
                }
            })
            .unwrap_or(Poll::Ready(Err(NetError::NoInterface)))
        })
        .await
    }

    /// Queue one datagram (waits while the send buffer is full).
    pub async fn send_to(&mut self, buf: &[u8], to: (Ipv4, u16)) -> Result<(), NetError> {
        let h = self.handle;
        let ep = IpEndpoint::new(IpAddress::Ipv4(v4(to.0)), to.1);
        poll_fn(|cx| {
            with_stack(|s| {
                let sock = s.sockets.get_mut::<udp::Socket>(h);
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
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        remove_socket(self.handle);
        let port = self.port;
        let _ = with_stack(|s| s.bound_udp.retain(|&p| p != port));
    }
}

struct SocketGuard(SocketHandle);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        remove_socket(self.0);
    }
}

/// Send one ICMP echo request and wait for its reply; returns the round
/// trip in nanoseconds.
pub async fn ping(addr: Ipv4, seq: u16, timeout_ns: u64) -> Result<u64, NetError> {
    let (handle, ident) = with_stack(|s| {
        let mut sock = icmp::Socket::new(
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 2048]),
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 2048]),
        );
        let ident = s.next_ident;
        s.next_ident = s.next_ident.wrapping_add(1);
        sock.bind(icmp::Endpoint::Ident(ident))
            .map_err(|_| NetError::Invalid)?;
        Ok::<_, NetError>((add_socket(s, sock)?, ident))
    })??;
    let _guard = SocketGuard(handle);
    let target = IpAddress::Ipv4(v4(addr));
    let payload = b"scoutvm-ping-0123456789abcdef";
    let caps = ChecksumCapabilities::default();
    let start = scoutvm_drivers::clock::monotonic_ns();
    let exchange = async {
        poll_fn(|cx| {
            with_stack(|s| {
                let sock = s.sockets.get_mut::<icmp::Socket>(handle);
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
                let sock = s.sockets.get_mut::<icmp::Socket>(handle);
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

/// The card's capabilities (for `net`).
pub fn mtu() -> Option<usize> {
    with_stack(|s| s.dev.capabilities().max_transmission_unit).ok()
}
