//! The backend driven end to end over its sockets: a fake frontend (the
//! `vhost` crate's `Frontend`, as QEMU would speak) with guest memory in a
//! shared file, and a fake appliance on loopback TCP that answers out of
//! order, too big, and with a unique nobody asked for.

use super::guest_memory::{GuestMem, RegionDesc};
use super::relay::Stats;
use super::serve;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

const MEM: u64 = 1 << 20;
const UADDR: u64 = 0x7f12_0000_0000;
const QSIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const DATA: u64 = 0x10000;

struct Driver {
    mem: GuestMem,
    next_desc: u16,
    avail: u16,
    data: u64,
}

impl Driver {
    fn desc(&mut self, addr: u64, len: u32, flags: u16) -> u16 {
        let i = self.next_desc;
        self.next_desc += 1;
        let at = DESC + 16 * u64::from(i);
        self.mem.write(at, &addr.to_le_bytes()).unwrap();
        self.mem.write(at + 8, &len.to_le_bytes()).unwrap();
        self.mem.write(at + 12, &flags.to_le_bytes()).unwrap();
        self.mem.write(at + 14, &(i + 1).to_le_bytes()).unwrap();
        i
    }

    fn buf(&mut self, bytes: &[u8], room: u32) -> u64 {
        let at = self.data;
        self.mem.write(at, bytes).unwrap();
        self.data += u64::from(room.max(bytes.len() as u32)).next_multiple_of(64);
        at
    }

    /// A chain: `req` readable, then `room` writable bytes (if any).
    fn request(&mut self, req: &[u8], room: u32) -> (u16, u64) {
        let r = self.buf(req, 0);
        let head = self.desc(r, req.len() as u32, if room > 0 { 1 } else { 0 });
        let mut w = 0;
        if room > 0 {
            w = self.buf(&[], room);
            self.desc(w, room, 2);
        }
        self.offer(head);
        (head, w)
    }

    fn offer(&mut self, head: u16) {
        let slot = u64::from(self.avail % QSIZE);
        self.mem
            .write(AVAIL + 4 + 2 * slot, &head.to_le_bytes())
            .unwrap();
        self.avail += 1;
        self.mem
            .write(AVAIL + 2, &self.avail.to_le_bytes())
            .unwrap();
    }

    /// Waits until `n` chains are used; their (head, len) in used order.
    fn used(&self, n: u16) -> Vec<(u32, u32)> {
        let t = Instant::now();
        while self.mem.read_u16(USED + 2).unwrap() < n {
            assert!(t.elapsed() < Duration::from_secs(20), "chains not used");
            std::thread::sleep(Duration::from_millis(5));
        }
        (0..n)
            .map(|i| {
                let at = USED + 4 + 8 * u64::from(i);
                (
                    self.mem.read_u32(at).unwrap(),
                    self.mem.read_u32(at + 4).unwrap(),
                )
            })
            .collect()
    }

    fn out_header(&self, at: u64) -> (u32, i32, u64) {
        let mut h = [0u8; 16];
        self.mem.read(at, &mut h).unwrap();
        (
            u32::from_le_bytes(h[..4].try_into().unwrap()),
            i32::from_le_bytes(h[4..8].try_into().unwrap()),
            u64::from_le_bytes(h[8..].try_into().unwrap()),
        )
    }
}

fn fuse_request(opcode: u32, unique: u64, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; 40];
    m[..4].copy_from_slice(&(40 + body.len() as u32).to_le_bytes());
    m[4..8].copy_from_slice(&opcode.to_le_bytes());
    m[8..16].copy_from_slice(&unique.to_le_bytes());
    m.extend_from_slice(body);
    m
}

fn fuse_reply(unique: u64, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    m[..4].copy_from_slice(&(16 + body.len() as u32).to_le_bytes());
    m[8..16].copy_from_slice(&unique.to_le_bytes());
    m.extend_from_slice(body);
    m
}

fn read_request(s: &mut TcpStream) -> Vec<u8> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).unwrap();
    let mut m = vec![0u8; u32::from_le_bytes(h) as usize];
    m[..4].copy_from_slice(&h);
    s.read_exact(&mut m[4..]).unwrap();
    m
}

#[test]
fn frontend_to_appliance_and_back() {
    let (file, mut d) = guest_file("relay");

    let req1 = fuse_request(15, 1, b"hello");
    let req2 = fuse_request(1, 2, b"abc");
    let forget = fuse_request(2, 3, &[0u8; 8]);
    let req4 = fuse_request(3, 4, b"");
    // the fake appliance: checks what arrives, answers 2, 1, a stray, 4
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let expect = [req1.clone(), req2.clone(), forget.clone(), req4.clone()];
    let appliance = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let got: Vec<Vec<u8>> = (0..4).map(|_| read_request(&mut s)).collect();
        assert_eq!(got, expect, "the requests' bytes as the guest wrote them");
        s.write_all(&fuse_reply(2, b"re:abc")).unwrap();
        s.write_all(&fuse_reply(1, b"re:hello")).unwrap();
        s.write_all(&fuse_reply(99, b"nobody")).unwrap();
        s.write_all(&fuse_reply(4, &[7u8; 24])).unwrap();
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
    });
    let node = TcpStream::connect(addr).unwrap();
    let (front, back) = UnixStream::pair().unwrap();
    let backend = std::thread::spawn(move || serve(back, node, None));

    let mut f = Frontend::from_stream(front, 17);
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1");
    assert_ne!(
        features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
        0
    );
    assert_ne!(features & (1 << 28), 0, "indirect descriptors");
    f.set_features(features).unwrap();
    let pf = f.get_protocol_features().unwrap();
    assert!(pf.contains(VhostUserProtocolFeatures::MQ));
    f.set_protocol_features(pf).unwrap();
    assert_eq!(f.get_queue_num().unwrap(), 17);
    f.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM,
        userspace_addr: UADDR,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    }])
    .unwrap();
    let q = 1;
    f.set_vring_num(q, QSIZE).unwrap();
    f.set_vring_addr(
        q,
        &VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: UADDR + DESC,
            used_ring_addr: UADDR + USED,
            avail_ring_addr: UADDR + AVAIL,
            log_addr: None,
        },
    )
    .unwrap();
    f.set_vring_base(q, 0).unwrap();
    let call = EventFd::new(0).unwrap();
    let kick = EventFd::new(0).unwrap();
    f.set_vring_call(q, &call).unwrap();
    f.set_vring_kick(q, &kick).unwrap();
    let (h1, w1) = d.request(&req1, 64);
    let (h2, w2) = d.request(&req2, 64);
    let (h3, _) = d.request(&forget, 0);
    let (h4, w4) = d.request(&req4, 16);
    // out of guest memory: a bad chain
    let h5 = d.desc(MEM - 8, 64, 0);
    d.offer(h5);
    // the header's length is not the chain's: answered EIO, not sent
    let mut lying = fuse_request(1, 6, b"abc");
    lying[0] = 100;
    let (h6, w6) = d.request(&lying, 32);
    // not enabled yet: nothing may be taken
    kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        d.mem.read_u16(USED + 2).unwrap(),
        0,
        "ring used while disabled"
    );
    f.set_vring_enable(q, true).unwrap();
    kick.write(1).unwrap();

    let used = d.used(6);
    let len_of = |h: u16| used.iter().find(|u| u.0 == u32::from(h)).map(|u| u.1);
    assert_eq!(len_of(h3), Some(0), "forget used at once, empty");
    assert_eq!(len_of(h5), Some(0), "bad chain used empty");
    assert_eq!(len_of(h6), Some(16));
    assert_eq!(d.out_header(w6), (16, -5, 6));
    assert_eq!(len_of(h2), Some(22));
    assert_eq!(len_of(h1), Some(24));
    assert_eq!(d.out_header(w1), (24, 0, 1));
    let mut body = [0u8; 8];
    d.mem.read(w1 + 16, &mut body).unwrap();
    assert_eq!(&body, b"re:hello");
    d.mem.read(w2 + 16, &mut body[..6]).unwrap();
    assert_eq!(&body[..6], b"re:abc");
    assert_eq!(len_of(h4), Some(16), "a reply too big for the chain");
    assert_eq!(d.out_header(w4), (16, -5, 4));
    // replies came after the immediate answers, 2 before 1
    let pos = |h: u16| used.iter().position(|u| u.0 == u32::from(h)).unwrap();
    assert!(pos(h2) < pos(h1) && pos(h1) < pos(h4));
    assert!(call.read().unwrap() > 0, "the driver was signalled");

    assert_eq!(f.get_vring_base(q).unwrap(), 6);
    drop(f);
    let relay = backend.join().unwrap().unwrap();
    done_tx.send(()).unwrap();
    appliance.join().unwrap();
    let s = &relay.stats;
    assert_eq!(Stats::get(&s.requests), 3);
    assert_eq!(Stats::get(&s.forgets), 1);
    assert_eq!(Stats::get(&s.replies), 3);
    assert_eq!(Stats::get(&s.too_big), 1);
    assert_eq!(Stats::get(&s.unmatched), 1);
    assert_eq!(Stats::get(&s.bad_chains), 1);
    assert_eq!(Stats::get(&s.bad_requests), 1);
}

/// Guest memory in an unlinked file, shared by the fake frontend and driver.
fn guest_file(tag: &str) -> (std::fs::File, Driver) {
    let path = std::env::temp_dir().join(format!("scoutvm-virtiofs-{tag}-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    file.set_len(MEM).unwrap();
    let region = RegionDesc {
        guest_phys: 0,
        size: MEM,
        user_addr: UADDR,
        mmap_offset: 0,
    };
    let d = Driver {
        mem: GuestMem::from_files(&[region], vec![file.try_clone().unwrap()]).unwrap(),
        next_desc: 0,
        avail: 0,
        data: DATA,
    };
    (file, d)
}

/// Negotiates, shares memory and starts request queue 1, enabled.
fn start_queue(f: &mut Frontend, file: &std::fs::File) -> (EventFd, EventFd) {
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    f.set_features(features).unwrap();
    let pf = f.get_protocol_features().unwrap();
    f.set_protocol_features(pf).unwrap();
    f.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM,
        userspace_addr: UADDR,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    }])
    .unwrap();
    f.set_vring_num(1, QSIZE).unwrap();
    f.set_vring_addr(
        1,
        &VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: UADDR + DESC,
            used_ring_addr: UADDR + USED,
            avail_ring_addr: UADDR + AVAIL,
            log_addr: None,
        },
    )
    .unwrap();
    f.set_vring_base(1, 0).unwrap();
    let call = EventFd::new(0).unwrap();
    let kick = EventFd::new(0).unwrap();
    f.set_vring_call(1, &call).unwrap();
    f.set_vring_kick(1, &kick).unwrap();
    f.set_vring_enable(1, true).unwrap();
    (call, kick)
}

#[test]
fn appliance_gone_answers_enotconn() {
    let (file, mut d) = guest_file("gone");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // the fake appliance takes one request and goes away unanswered
    let appliance = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        read_request(&mut s)
    });
    let node = TcpStream::connect(addr).unwrap();
    let (front, back) = UnixStream::pair().unwrap();
    let backend = std::thread::spawn(move || serve(back, node, None));
    let mut f = Frontend::from_stream(front, 17);
    let (_call, kick) = start_queue(&mut f, &file);

    let (h1, w1) = d.request(&fuse_request(3, 1, b""), 64);
    kick.write(1).unwrap();
    assert_eq!(appliance.join().unwrap(), fuse_request(3, 1, b""));
    assert_eq!(d.used(1), vec![(u32::from(h1), 16)]);
    assert_eq!(d.out_header(w1), (16, -107, 1), "in flight: ENOTCONN");
    let (h2, w2) = d.request(&fuse_request(3, 2, b""), 64);
    kick.write(1).unwrap();
    assert_eq!(d.used(2)[1], (u32::from(h2), 16));
    assert_eq!(d.out_header(w2), (16, -107, 2), "after: ENOTCONN");

    drop(f);
    let relay = backend.join().unwrap().unwrap();
    assert_eq!(Stats::get(&relay.stats.requests), 1);
    assert_eq!(Stats::get(&relay.stats.not_connected), 2);
    assert_eq!(Stats::get(&relay.stats.replies), 0);
}

#[test]
fn appliance_reboot_replays_init_and_what_was_in_flight() {
    let (file, mut d) = guest_file("reboot");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let init = fuse_request(26, 1, &[7, 0, 0, 0, 31, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0]);
    let getattr = fuse_request(3, 2, b"");
    let lookup = fuse_request(1, 3, b"x\0");
    // connection 1: INIT answered, GETATTR taken, then the appliance
    // "reboots"; connection 2: the replayed INIT, GETATTR again, LOOKUP
    let appliance = {
        let (init, getattr, lookup) = (init.clone(), getattr.clone(), lookup.clone());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            assert_eq!(read_request(&mut s), init);
            s.write_all(&fuse_reply(1, b"init-1")).unwrap();
            assert_eq!(read_request(&mut s), getattr);
            drop(s);
            let (mut s, _) = listener.accept().unwrap();
            let replay = read_request(&mut s);
            assert_eq!(replay[..8], init[..8], "INIT first");
            assert_eq!(replay[16..], init[16..]);
            assert_eq!(u64_at(&replay, 8), super::relay::REPLAY_UNIQUE);
            s.write_all(&fuse_reply(super::relay::REPLAY_UNIQUE, b"init-2"))
                .unwrap();
            assert_eq!(read_request(&mut s), getattr, "in flight, sent again");
            s.write_all(&fuse_reply(2, b"attr")).unwrap();
            assert_eq!(read_request(&mut s), lookup);
            s.write_all(&fuse_reply(3, b"entry")).unwrap();
            // hold the connection until the backend goes
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        })
    };
    let node = TcpStream::connect(addr).unwrap();
    let (front, back) = UnixStream::pair().unwrap();
    let reconnect = super::relay::Reconnect {
        node: addr.to_string(),
        window: Duration::from_secs(20),
    };
    let backend = std::thread::spawn(move || serve(back, node, Some(reconnect)));
    let mut f = Frontend::from_stream(front, 17);
    let (_call, kick) = start_queue(&mut f, &file);

    let (h1, w1) = d.request(&init, 64);
    kick.write(1).unwrap();
    assert_eq!(d.used(1), vec![(u32::from(h1), 22)]);
    assert_eq!(d.out_header(w1), (22, 0, 1));
    let (h2, w2) = d.request(&getattr, 64);
    kick.write(1).unwrap();
    // give the loss time to be seen, then a request while reconnecting
    std::thread::sleep(Duration::from_millis(200));
    let (h3, w3) = d.request(&lookup, 64);
    kick.write(1).unwrap();
    let used = d.used(3);
    assert_eq!(used[1..], [(u32::from(h2), 20), (u32::from(h3), 21)]);
    assert_eq!(d.out_header(w2), (20, 0, 2));
    assert_eq!(d.out_header(w3), (21, 0, 3));

    drop(f);
    let relay = backend.join().unwrap().unwrap();
    appliance.join().unwrap();
    let s = &relay.stats;
    assert_eq!(Stats::get(&s.reconnects), 1);
    assert_eq!(Stats::get(&s.not_connected), 0);
    assert_eq!(Stats::get(&s.replies), 3);
    assert!(Stats::get(&s.resent) >= 1);
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
