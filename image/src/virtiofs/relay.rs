//! Moves FUSE messages: requests from the queues' chains out to the
//! appliance over one TCP stream (the readable bytes as they are), replies
//! (`fuse_out_header` first, any order) back into the chain with the same
//! FUSE unique. FORGET, BATCH_FORGET and INTERRUPT get no reply (the
//! appliance's contract): their chains are used at once. A request or reply that cannot be delivered is answered with an
//! error header when the chain has room for one, else used empty; all of it
//! is counted in `Stats`.
//!
//! When the appliance connection ends (an appliance reboot) and a reconnect
//! window is set, requests are held while the relay connects again; on the
//! new connection it first replays the guest's `INIT` (its reply is
//! swallowed) and then every request not answered yet, re-read from the
//! guest's buffers, so the guest's mount carries on (open file handles are
//! gone on the new session: `EBADF`, per the service's contract). Past the
//! window, or without one, everything is answered `ENOTCONN`.
//!
//! Two threads: `run_queues` (poll on the kick eventfds, pop, send) and
//! `run_replies` (read replies, complete, reconnect). One lock
//! (`DeviceState`) for the queues; the writer's lock is taken first when
//! both are held.

use super::guest_memory::GuestMem;
use super::vhost_user::{DeviceState, Link, Pending};
use super::virtqueue::{Chain, Popped};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, extlen, pad.
pub const IN_HEADER_LEN: usize = 40;
/// fuse_out_header: len, error, unique.
pub const OUT_HEADER_LEN: usize = 16;
/// The largest request taken from a guest (a 1 MiB write plus headers,
/// with room for larger `max_pages`).
pub const MAX_REQUEST: u64 = 16 << 20;
/// The largest reply accepted from the appliance.
pub const MAX_REPLY: u32 = 16 << 20;

const FUSE_FORGET: u32 = 2;
const FUSE_BATCH_FORGET: u32 = 42;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_INIT: u32 = 26;
/// The unique of a replayed `INIT` (Linux counts uniques up from 1).
pub const REPLAY_UNIQUE: u64 = u64::MAX;
const EIO: i32 = 5;
const ENOTCONN: i32 = 107;

/// What went through, and what was refused (shown when the backend ends).
#[derive(Default, Debug)]
pub struct Stats {
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    pub forgets: AtomicU64,
    /// Malformed chains (out-of-range buffers, loops, ...), used empty.
    pub bad_chains: AtomicU64,
    /// Malformed FUSE requests (short, length not the chain's), or no room
    /// for a reply header; answered EIO or used empty.
    pub bad_requests: AtomicU64,
    /// Replies larger than the chain's writable space, answered EIO.
    pub too_big: AtomicU64,
    /// Replies whose unique matches no request in flight.
    pub unmatched: AtomicU64,
    /// Replies for a queue stopped or reset since the request.
    pub stale: AtomicU64,
    /// Requests answered ENOTCONN because the appliance connection is gone.
    pub not_connected: AtomicU64,
    /// Queues stopped for a broken ring.
    pub broken_rings: AtomicU64,
    /// New appliance connections after a lost one.
    pub reconnects: AtomicU64,
    /// Requests sent again on a new connection.
    pub resent: AtomicU64,
}

impl Stats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = Stats::get;
        write!(
            f,
            "requests {} replies {} forgets {} bad_chains {} bad_requests {} too_big {} \
             unmatched {} stale {} not_connected {} broken_rings {} reconnects {} resent {}",
            g(&self.requests),
            g(&self.replies),
            g(&self.forgets),
            g(&self.bad_chains),
            g(&self.bad_requests),
            g(&self.too_big),
            g(&self.unmatched),
            g(&self.stale),
            g(&self.not_connected),
            g(&self.broken_rings),
            g(&self.reconnects),
            g(&self.resent)
        )
    }
}

/// Where to connect again when the appliance connection is lost, and for
/// how long to keep trying.
#[derive(Clone, Debug)]
pub struct Reconnect {
    pub node: String,
    pub window: Duration,
}

pub struct Relay {
    state: Mutex<DeviceState>,
    writer: Mutex<TcpStream>,
    reconnect: Option<Reconnect>,
    /// The guest's last `INIT`, replayed on a new connection.
    saved_init: Mutex<Option<Vec<u8>>>,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
    stop: AtomicBool,
    pub stats: Stats,
}

fn error_header(unique: u64, errno: i32) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    h[..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_le_bytes());
    h[4..8].copy_from_slice(&(-errno).to_le_bytes());
    h[8..].copy_from_slice(&unique.to_le_bytes());
    h
}

fn signal(st: &DeviceState, queue: usize) {
    if let Some(call) = &st.vrings[queue].call {
        // an eventfd: add 1; a full counter only means it is signalled
        let _ = (&*call).write(&1u64.to_ne_bytes());
    }
}

impl Relay {
    /// `writer`: the stream to the appliance.
    pub fn new(writer: TcpStream, reconnect: Option<Reconnect>) -> io::Result<Arc<Self>> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        Ok(Arc::new(Relay {
            state: Mutex::new(DeviceState::new()),
            writer: Mutex::new(writer),
            reconnect,
            saved_init: Mutex::new(None),
            wake_tx,
            wake_rx,
            stop: AtomicBool::new(false),
            stats: Stats::default(),
        }))
    }

    pub fn lock_state(&self) -> MutexGuard<'_, DeviceState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `run_queues` look at the queues again.
    pub fn wake(&self) {
        // full buffer: a wake-up is pending anyway
        let _ = (&self.wake_tx).write(&[1]);
    }

    /// Ends both threads (the reply thread through its socket).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
        let _ = self.lock_writer().shutdown(Shutdown::Both);
    }

    fn lock_writer(&self) -> MutexGuard<'_, TcpStream> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// RESET_OWNER / RESET_DEVICE: every queue back to unconfigured;
    /// replies still in flight are dropped when they come.
    pub fn reset_queues(&self) {
        let mut st = self.lock_state();
        let acked = st.acked_features;
        // without protocol features a ring is enabled from the start
        let enabled = acked & super::vhost_user::PROTOCOL_FEATURES_BIT == 0;
        for v in st.vrings.iter_mut() {
            let generation = v.generation + 1;
            *v = Default::default();
            v.generation = generation;
            v.enabled = enabled;
        }
        st.acked_features = acked;
        drop(st);
        self.wake();
    }

    /// The queue thread: waits for kicks, takes requests, sends them.
    pub fn run_queues(&self) {
        while !self.stop.load(Ordering::Acquire) {
            let kicks: Vec<_> = {
                let st = self.lock_state();
                st.vrings
                    .iter()
                    .filter(|v| v.runnable())
                    .filter_map(|v| v.kick.clone())
                    .collect()
            };
            let mut fds = vec![PollFd::new(self.wake_rx.as_fd(), PollFlags::POLLIN)];
            fds.extend(
                kicks
                    .iter()
                    .map(|k| PollFd::new(k.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("scoutvm virtiofs: poll: {e}");
                    return;
                }
            }
            let mut buf = [0u8; 64];
            while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
            let ready: Vec<bool> = fds[1..]
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            for (k, r) in kicks.iter().zip(ready) {
                if r {
                    // drain the eventfd counter (non-blocking from QEMU)
                    let _ = (&**k).read(&mut [0u8; 8]);
                }
            }
            // a kick may have come before the queue started: look at all
            let n = self.lock_state().vrings.len();
            for q in 0..n {
                self.service(q);
            }
        }
    }

    /// Takes every available chain of queue `q` and sends its request.
    pub fn service(&self, q: usize) {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let epoch;
        {
            let mut st = self.lock_state();
            epoch = st.epoch;
            let Some(mem) = st.mem.clone() else { return };
            if !st.vrings[q].runnable() {
                return;
            }
            let mut used = false;
            loop {
                let popped = match st.vrings[q].queue.pop(&mem) {
                    Ok(None) => break,
                    Ok(Some(p)) => p,
                    Err(e) => {
                        eprintln!("scoutvm virtiofs: queue {q} stopped: {e}");
                        st.vrings[q].broken = true;
                        Stats::bump(&self.stats.broken_rings);
                        break;
                    }
                };
                used |= match popped {
                    Popped::Bad { head, error } => {
                        if Stats::get(&self.stats.bad_chains) < 10 {
                            eprintln!("scoutvm virtiofs: queue {q}: bad chain {head}: {error}");
                        }
                        Stats::bump(&self.stats.bad_chains);
                        self.push_used(&mut st, &mem, q, head, 0)
                    }
                    Popped::Chain(c) => self.take_request(&mut st, &mem, q, c, &mut out),
                };
            }
            if used {
                signal(&st, q);
            }
        }
        if out.is_empty() {
            return;
        }
        let mut w = self.lock_writer();
        if self.lock_state().epoch != epoch {
            // a new connection came meanwhile and its replay sent these
            return;
        }
        if let Err(e) = out.iter().try_for_each(|m| w.write_all(m)) {
            eprintln!("scoutvm virtiofs: sending to the appliance: {e}");
            // the reply thread sees the end and reconnects or gives up
            let _ = w.shutdown(Shutdown::Both);
        }
    }

    /// Queue `q`'s used ring gets `head`; `true` when the driver must be told.
    fn push_used(
        &self,
        st: &mut DeviceState,
        mem: &GuestMem,
        q: usize,
        head: u16,
        len: u32,
    ) -> bool {
        match st.vrings[q].queue.push_used(mem, head, len) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("scoutvm virtiofs: queue {q} stopped: {e}");
                st.vrings[q].broken = true;
                Stats::bump(&self.stats.broken_rings);
                false
            }
        }
    }

    /// Answers a chain with just an error header (or empty, without room).
    fn answer_error(
        &self,
        st: &mut DeviceState,
        mem: &GuestMem,
        q: usize,
        c: &Chain,
        unique: u64,
        errno: i32,
    ) -> bool {
        let h = error_header(unique, errno);
        let len = match c.write_all(mem, &h) {
            Ok(true) => OUT_HEADER_LEN as u32,
            _ => 0,
        };
        self.push_used(st, mem, q, c.head, len)
    }

    fn take_request(
        &self,
        st: &mut DeviceState,
        mem: &GuestMem,
        q: usize,
        c: Chain,
        out: &mut Vec<Vec<u8>>,
    ) -> bool {
        let bytes = match c.read_all(mem, MAX_REQUEST) {
            Ok(Some(b)) if b.len() >= IN_HEADER_LEN => b,
            Ok(_) => {
                Stats::bump(&self.stats.bad_requests);
                return self.answer_error(st, mem, q, &c, 0, EIO);
            }
            Err(_) => {
                Stats::bump(&self.stats.bad_chains);
                return self.push_used(st, mem, q, c.head, 0);
            }
        };
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let len = word(0);
        let opcode = word(4);
        let unique = u64::from(word(8)) | (u64::from(word(12)) << 32);
        if len as usize != bytes.len() {
            Stats::bump(&self.stats.bad_requests);
            return self.answer_error(st, mem, q, &c, unique, EIO);
        }
        if opcode == FUSE_INIT {
            *self.saved_init.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes.clone());
        }
        if matches!(opcode, FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT) {
            Stats::bump(&self.stats.forgets);
            // (a new session has no lookup counts to forget)
            if st.link == Link::Up {
                out.push(bytes);
            }
            return self.push_used(st, mem, q, c.head, 0);
        }
        if c.writable_len() < OUT_HEADER_LEN as u64 {
            Stats::bump(&self.stats.bad_requests);
            return self.push_used(st, mem, q, c.head, 0);
        }
        if st.link == Link::Gone {
            Stats::bump(&self.stats.not_connected);
            return self.answer_error(st, mem, q, &c, unique, ENOTCONN);
        }
        if unique == REPLAY_UNIQUE || st.pending.contains_key(&unique) {
            Stats::bump(&self.stats.bad_requests);
            return self.answer_error(st, mem, q, &c, unique, EIO);
        }
        let generation = st.vrings[q].generation;
        st.pending.insert(
            unique,
            Pending {
                queue: q,
                generation,
                chain: c,
            },
        );
        Stats::bump(&self.stats.requests);
        if st.link == Link::Up {
            out.push(bytes);
        }
        false
    }

    /// The reply thread: reads the appliance's replies until the stream
    /// ends, then connects again (within the window) or gives up.
    pub fn run_replies(&self, mut reader: TcpStream) {
        // since when no connection has answered anything: the window runs
        // from there (a connection that dies before answering, say one a
        // port forwarder accepts for an appliance still booting, or one the
        // appliance drops for what was replayed, does not restart it)
        let mut lost_since: Option<Instant> = None;
        loop {
            let (why, answered) = self.read_replies(&mut reader);
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            if answered {
                lost_since = None;
                eprintln!("scoutvm virtiofs: {why}");
            } else if self.reconnect.is_some() {
                std::thread::sleep(Duration::from_millis(500));
            }
            let since = *lost_since.get_or_insert_with(Instant::now);
            match self.reconnect_node(since) {
                Some(r) => reader = r,
                None => {
                    if !self.stop.load(Ordering::Acquire) {
                        eprintln!(
                            "scoutvm virtiofs: appliance gone; answering ENOTCONN from now on"
                        );
                    }
                    break;
                }
            }
        }
        self.node_lost();
    }

    /// Connects again within the window: the `INIT` replayed, then every
    /// request not answered yet. The new connection's reader, or `None`.
    fn reconnect_node(&self, since: Instant) -> Option<TcpStream> {
        let rc = self.reconnect.as_ref()?;
        self.lock_state().link = Link::Reconnecting;
        let deadline = since + rc.window;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return None;
            }
            let attempt = super::connect_node(&rc.node).and_then(|s| {
                let r = s.try_clone().map_err(|e| e.to_string())?;
                Ok((s, r))
            });
            match attempt {
                Ok((s, r)) => {
                    self.resume_on(s);
                    return Some(r);
                }
                Err(e) => {
                    if Instant::now() >= deadline {
                        eprintln!("scoutvm virtiofs: {e}; giving up after {:?}", rc.window);
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// A new connection: the saved `INIT` first, then what is in flight
    /// (oldest first); requests taken meanwhile follow (the writer's lock
    /// is held throughout).
    fn resume_on(&self, stream: TcpStream) {
        let mut w = self.lock_writer();
        *w = stream;
        Stats::bump(&self.stats.reconnects);
        let mut out = Vec::new();
        let init = self
            .saved_init
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(mut init) = init {
            init[8..16].copy_from_slice(&REPLAY_UNIQUE.to_le_bytes());
            out.push(init);
        }
        {
            let mut st = self.lock_state();
            st.link = Link::Up;
            st.epoch += 1;
            if let Some(mem) = st.mem.clone() {
                let mut ids: Vec<u64> = st.pending.keys().copied().collect();
                ids.sort_unstable();
                for id in ids {
                    let bytes = st
                        .pending
                        .get(&id)
                        .map(|p| p.chain.read_all(&mem, MAX_REQUEST));
                    match bytes {
                        Some(Ok(Some(b))) => {
                            Stats::bump(&self.stats.resent);
                            out.push(b);
                        }
                        _ => {
                            // its buffers are no longer readable: nothing to send
                            st.pending.remove(&id);
                            Stats::bump(&self.stats.bad_chains);
                        }
                    }
                }
            }
        }
        if out.iter().try_for_each(|m| w.write_all(m)).is_err() {
            let _ = w.shutdown(Shutdown::Both);
        }
    }

    /// Delivers replies until the connection ends: why, and whether it
    /// answered anything.
    fn read_replies(&self, reader: &mut TcpStream) -> (String, bool) {
        let mut answered = false;
        loop {
            let mut head = [0u8; OUT_HEADER_LEN];
            if let Err(e) = reader.read_exact(&mut head) {
                return (format!("appliance connection: {e}"), answered);
            }
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            if !(OUT_HEADER_LEN as u32..=MAX_REPLY).contains(&len) {
                let _ = reader.shutdown(Shutdown::Both);
                return (format!("appliance sent a reply of length {len}"), answered);
            }
            let mut msg = vec![0u8; len as usize];
            msg[..OUT_HEADER_LEN].copy_from_slice(&head);
            if let Err(e) = reader.read_exact(&mut msg[OUT_HEADER_LEN..]) {
                return (format!("appliance connection: {e}"), answered);
            }
            self.deliver(&msg);
            answered = true;
        }
    }

    /// Writes one reply (a whole message, header checked) into its chain.
    pub fn deliver(&self, msg: &[u8]) {
        let unique = u64::from_le_bytes(msg[8..16].try_into().unwrap_or([0; 8]));
        if unique == REPLAY_UNIQUE {
            let error = i32::from_le_bytes(msg[4..8].try_into().unwrap_or([0; 4]));
            if error != 0 {
                eprintln!(
                    "scoutvm virtiofs: the replayed INIT failed: errno {}",
                    -error
                );
            }
            return;
        }
        let mut st = self.lock_state();
        let Some(p) = st.pending.remove(&unique) else {
            Stats::bump(&self.stats.unmatched);
            return;
        };
        let v = &st.vrings[p.queue];
        let Some(mem) = st.mem.clone() else { return };
        if v.generation != p.generation || !v.started || v.broken {
            Stats::bump(&self.stats.stale);
            return;
        }
        Stats::bump(&self.stats.replies);
        let len = match p.chain.write_all(&mem, msg) {
            Ok(true) => msg.len() as u32,
            Ok(false) => {
                Stats::bump(&self.stats.too_big);
                match p.chain.write_all(&mem, &error_header(unique, EIO)) {
                    Ok(true) => OUT_HEADER_LEN as u32,
                    _ => 0,
                }
            }
            Err(_) => {
                Stats::bump(&self.stats.bad_chains);
                0
            }
        };
        if self.push_used(&mut st, &mem, p.queue, p.chain.head, len) {
            signal(&st, p.queue);
        }
    }

    /// The appliance is gone: everything in flight gets ENOTCONN.
    fn node_lost(&self) {
        let mut st = self.lock_state();
        st.link = Link::Gone;
        let pending: Vec<(u64, Pending)> = st.pending.drain().collect();
        let Some(mem) = st.mem.clone() else { return };
        let mut touched = vec![false; st.vrings.len()];
        for (unique, p) in pending {
            let v = &st.vrings[p.queue];
            if v.generation != p.generation || !v.started || v.broken {
                continue;
            }
            Stats::bump(&self.stats.not_connected);
            if self.answer_error(&mut st, &mem, p.queue, &p.chain, unique, ENOTCONN) {
                touched[p.queue] = true;
            }
        }
        for (q, t) in touched.into_iter().enumerate() {
            if t {
                signal(&st, q);
            }
        }
    }
}
