//! A host TCP port relayed onto a `-netdev dgram` link: how a host process
//! reaches a VM on a direct Ethernet without root (no tap). The relay
//! owns the link's other end (a UDP socket carrying whole Ethernet
//! frames), runs smoltcp on it as `10.0.3.20`, and copies bytes between
//! each accepted host connection (one at a time) and a smoltcp TCP connection to the
//! VM's address and port. Everything runs natively on one thread, woken
//! by `poll(2)` on the UDP socket and the host connection, so its cost is
//! small next to an emulated server; it replaces QEMU's user-network
//! stack (slirp) on the server's side of the link.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant as StdInstant;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

/// The relay's address on the link (the guest's, see `guest::GUEST_IP`).
const RELAY_IP: [u8; 4] = [10, 0, 3, 20];
const MTU: usize = 1514;
/// smoltcp socket buffers: room for a 1 MiB request or reply in flight.
const TCP_BUF: usize = 4 << 20;

struct UdpDev {
    sock: UdpSocket,
    frame: Vec<u8>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a UdpSocket);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        // A full socket buffer drops the frame, as a wire would.
        let _ = self.0.send(&buf);
        r
    }
}

impl phy::Device for UdpDev {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx, Tx<'_>)> {
        match self.sock.recv(&mut self.frame) {
            Ok(n) => Some((Rx(self.frame[..n].to_vec()), Tx(&self.sock))),
            Err(_) => None,
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        Some(Tx(&self.sock))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.max_transmission_unit = MTU;
        caps.medium = Medium::Ethernet;
        caps.checksum.ipv4 = Checksum::Both;
        caps
    }
}

/// A running relay: host `127.0.0.1:port()` reaches `vm_ip:vm_port` on
/// the link. Stops when dropped.
pub struct LinkRelay {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LinkRelay {
    /// Own the link end `local_udp` (frames go to `remote_udp`, the VM's
    /// `-netdev dgram` local port) and relay each connection to a free
    /// host port, one at a time, onto `vm_ip:vm_port`.
    pub fn start(
        local_udp: u16,
        remote_udp: u16,
        vm_ip: [u8; 4],
        vm_port: u16,
    ) -> std::io::Result<LinkRelay> {
        let sock = UdpSocket::bind(("127.0.0.1", local_udp))?;
        sock.connect(("127.0.0.1", remote_udp))?;
        sock.set_nonblocking(true)?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("link-relay".into())
            .spawn(move || {
                if let Err(e) = relay(sock, listener, vm_ip, vm_port, &stop2) {
                    eprintln!("link relay: {e}");
                }
            })?;
        Ok(LinkRelay {
            port,
            stop,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LinkRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake an accept that is still waiting.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(
    sock: UdpSocket,
    listener: TcpListener,
    vm_ip: [u8; 4],
    vm_port: u16,
    stop: &AtomicBool,
) -> Result<(), String> {
    let t0 = StdInstant::now();
    let now = || Instant::from_micros(t0.elapsed().as_micros() as i64);
    let mut dev = UdpDev {
        sock,
        frame: vec![0u8; 65536],
    };
    // A locally administered MAC.
    let mac = EthernetAddress([0x02, 0x53, 0x56, 0x00, 0x03, 0x14]);
    let mut iface = Interface::new(Config::new(HardwareAddress::Ethernet(mac)), &mut dev, now());
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(
            IpAddress::Ipv4(Ipv4Address::from_octets(RELAY_IP)),
            24,
        ));
    });
    let mut sockets = SocketSet::new(Vec::new());
    let mut buf = vec![0u8; 256 << 10];
    for local_port in 40000u16.. {
        let (host, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut tcp = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; TCP_BUF]),
            tcp::SocketBuffer::new(vec![0u8; TCP_BUF]),
        );
        tcp.set_nagle_enabled(false);
        tcp.set_ack_delay(None);
        tcp.connect(
            iface.context(),
            (IpAddress::Ipv4(Ipv4Address::from_octets(vm_ip)), vm_port),
            local_port,
        )
        .map_err(|e| format!("connect: {e}"))?;
        let h = sockets.add(tcp);
        let r = pump(
            &mut iface,
            &mut dev,
            &mut sockets,
            h,
            host,
            &mut buf,
            stop,
            &now,
        );
        // Let the FIN go out, then forget the connection.
        let until = t0.elapsed() + std::time::Duration::from_secs(1);
        while t0.elapsed() < until && sockets.get::<tcp::Socket>(h).is_open() {
            iface.poll(now(), &mut dev, &mut sockets);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        sockets.remove(h);
        r?;
    }
    Ok(())
}

/// Copy bytes both ways between `host` and the smoltcp socket `h` until
/// the host closes its end.
#[allow(clippy::too_many_arguments)]
fn pump(
    iface: &mut Interface,
    dev: &mut UdpDev,
    sockets: &mut SocketSet<'_>,
    h: smoltcp::iface::SocketHandle,
    mut host: TcpStream,
    buf: &mut [u8],
    stop: &AtomicBool,
    now: &dyn Fn() -> Instant,
) -> Result<(), String> {
    let _ = host.set_nodelay(true);
    host.set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    let mut to_host: Vec<u8> = Vec::new();
    let mut host_open = true;
    while !stop.load(Ordering::SeqCst) {
        iface.poll(now(), dev, sockets);
        let s = sockets.get_mut::<tcp::Socket>(h);
        if !s.is_open() {
            return Err("the VM closed the connection".into());
        }
        // VM -> host.
        while s.can_recv() && to_host.len() < (8 << 20) {
            match s.recv_slice(buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => to_host.extend_from_slice(&buf[..n]),
            }
        }
        while !to_host.is_empty() {
            match host.write(&to_host) {
                Ok(n) => {
                    to_host.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("host write: {e}")),
            }
        }
        // Host -> VM, as much as the socket takes.
        let mut moved = false;
        if host_open && s.may_send() {
            let room = s.send_capacity() - s.send_queue();
            if room > 0 {
                let want = room.min(buf.len());
                match host.read(&mut buf[..want]) {
                    Ok(0) => {
                        host_open = false;
                        s.close();
                    }
                    Ok(n) => {
                        let _ = s.send_slice(&buf[..n]);
                        moved = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("host read: {e}")),
                }
            }
        }
        if !host_open {
            return Ok(());
        }
        if moved {
            continue;
        }
        // Sleep until a frame, host bytes (if the socket has room) or
        // smoltcp's next timer.
        let delay = iface
            .poll_delay(now(), sockets)
            .unwrap_or(Duration::from_millis(100))
            .total_millis()
            .min(100) as u16;
        let s = sockets.get::<tcp::Socket>(h);
        let mut host_events = PollFlags::empty();
        if s.send_queue() < s.send_capacity() {
            host_events |= PollFlags::POLLIN;
        }
        if !to_host.is_empty() {
            host_events |= PollFlags::POLLOUT;
        }
        let mut fds = [
            PollFd::new(dev.sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(host.as_fd(), host_events),
        ];
        let _ = poll(&mut fds, PollTimeout::from(delay));
    }
    Ok(())
}
