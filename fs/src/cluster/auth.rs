//! Cluster traffic authentication: every session frame and every quorum
//! datagram carries a tag under a key only cluster members hold.
//!
//! The cluster key (256 bits, given to every node) is never used directly:
//! [`VolumeKey::derive`] binds it to the volume's fsid, so a key shared by
//! two volumes still cannot cross-feed their clusters. Tags are keyed
//! BLAKE2s-256 (the MAC WireGuard uses), truncated to 128 bits, compared in
//! constant time.
//!
//! Session streams ([`SessionAuth`]): each end first sends a hello (magic,
//! fsid, the sender's rid, a fresh 16-byte nonce, a tag over them; the
//! client's rid is the mount's, the server's is 0); every frame after it
//! is followed by a tag over the direction, the client's rid, both nonces,
//! an implicit per-direction frame counter and the frame bytes. A frame
//! captured on one connection fails on any other (other nonces or rid),
//! and a frame dropped, repeated or reordered within one fails the
//! counter. The server's endpoint refuses a greeting whose rid is not the
//! one the client's hello named ([`Refusal::WrongRid`]). Any refusal
//! closes the connection.
//!
//! Trust: one key is shared by the whole cluster, so every key holder is
//! trusted equally. The rid and slot bindings stop a captured frame from
//! being passed off as another node's, not a key holder from claiming
//! another rid in its own hello or another slot in its own datagrams;
//! per-node keys (each node's hello and datagrams tagged under its own key,
//! the others holding its public half or a derived verifier) would be the
//! next step.
//!
//! Quorum datagrams ([`QuorumAuth`]): the 32-byte datagram is followed by
//! the sender's counter (u64, seeded from its wall clock so a restarted
//! node continues above its old values) and a tag over both. A datagram
//! whose (term, counter) is not above the highest seen from its slot is a
//! replay.
//!
//! With no key configured the wire is unchanged (no hello, no tags). Each
//! node's key is configured once per node ([`configure`]) and read by the
//! rpc endpoints and the quorum agent of that node.
//!
//! Refusals are counted per reason (`cluster_auth.*`) and logged at a
//! bounded rate ([`refuse`]).

use crate::counter;
use crate::format::le::{get_u64, put_u64};
use crate::runtime::node::{self, MAX_NODES};
use alloc::string::String;
use blake2::digest::{FixedOutput, KeyInit, Mac, Update};
use blake2::Blake2sMac256;
use core::sync::atomic::{AtomicU64, Ordering};

/// Bytes of a cluster key.
pub const KEY_BYTES: usize = 32;
/// Bytes of a tag on the wire.
pub const TAG_BYTES: usize = 16;
/// Bytes of a connection nonce.
pub const NONCE_BYTES: usize = 16;
/// First bytes of an authenticated stream's hello.
pub const HELLO_MAGIC: [u8; 8] = *b"SVMAUTH2";
/// A hello: magic, fsid u64, rid u64, nonce, and a tag over them (so a
/// node with another key learns it at once, and says so).
pub const HELLO_BYTES: usize = 8 + 8 + 8 + NONCE_BYTES + TAG_BYTES;
/// Where the hello's tag starts.
const HELLO_TAG_AT: usize = HELLO_BYTES - TAG_BYTES;
/// What an authenticated quorum datagram adds: counter u64 and tag.
pub const QUORUM_TRAILER_BYTES: usize = 8 + TAG_BYTES;

/// The shared secret of a cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(pub [u8; KEY_BYTES]);

impl core::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // never print the secret
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Parse exactly 64 hex digits.
    pub fn parse_hex(s: &str) -> Result<ClusterKey, String> {
        let b = s.as_bytes();
        if b.len() != 2 * KEY_BYTES {
            return Err(alloc::format!(
                "expected {} hex digits, got {}",
                2 * KEY_BYTES,
                b.len()
            ));
        }
        let mut k = [0u8; KEY_BYTES];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]);
            let lo = hex_val(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => k[i] = (h << 4) | l,
                _ => return Err(alloc::format!("not a hex digit at {}", 2 * i)),
            }
        }
        Ok(ClusterKey(k))
    }

    /// 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        const D: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(2 * KEY_BYTES);
        for b in self.0 {
            s.push(D[(b >> 4) as usize] as char);
            s.push(D[(b & 15) as usize] as char);
        }
        s
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The cluster key bound to one volume.
#[derive(Clone)]
pub struct VolumeKey {
    key: [u8; KEY_BYTES],
    fsid: u64,
}

impl VolumeKey {
    pub fn derive(key: &ClusterKey, fsid: u64) -> VolumeKey {
        let mut m = <Blake2sMac256 as KeyInit>::new_from_slice(&key.0).expect("32-byte key");
        Update::update(&mut m, b"scoutvm cluster volume key v1");
        Update::update(&mut m, &fsid.to_le_bytes());
        let out = m.finalize_fixed();
        let mut k = [0u8; KEY_BYTES];
        k.copy_from_slice(&out);
        VolumeKey { key: k, fsid }
    }

    pub fn fsid(&self) -> u64 {
        self.fsid
    }

    fn mac(&self, parts: &[&[u8]]) -> Blake2sMac256 {
        let mut m = <Blake2sMac256 as KeyInit>::new_from_slice(&self.key).expect("32-byte key");
        for p in parts {
            Update::update(&mut m, p);
        }
        m
    }

    /// The tag of the concatenation of `parts`.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        let out = self.mac(parts).finalize_fixed();
        let mut t = [0u8; TAG_BYTES];
        t.copy_from_slice(&out[..TAG_BYTES]);
        t
    }

    /// Whether `tag` is the tag of `parts` (constant time).
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        tag.len() == TAG_BYTES && self.mac(parts).verify_truncated_left(tag).is_ok()
    }
}

/// Why traffic was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The tag does not match (wrong key, mutated, replayed into another
    /// connection, or out of order within one).
    BadMac,
    /// A quorum datagram not newer than one already accepted from its slot.
    Replay,
    /// Traffic of another volume.
    WrongVolume,
    /// The peer sent no authentication (it runs without a key).
    NoKey,
    /// A greeting whose rid is not the one its connection's hello named.
    WrongRid,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::BadMac => "bad_mac",
            Refusal::Replay => "replay",
            Refusal::WrongVolume => "wrong_volume",
            Refusal::NoKey => "no_key",
            Refusal::WrongRid => "wrong_rid",
        }
    }
}

/// Refusals logged in full before the log thins out.
const LOG_FIRST: u64 = 8;
/// After that, one refusal in this many is logged.
const LOG_EVERY: u64 = 1024;
static REFUSALS: AtomicU64 = AtomicU64::new(0);

/// Count a refusal and log it (the first few, then one in [`LOG_EVERY`]).
pub fn refuse(r: Refusal, what: &str) {
    match r {
        Refusal::BadMac => counter!("cluster_auth.bad_mac").inc(),
        Refusal::Replay => counter!("cluster_auth.replay").inc(),
        Refusal::WrongVolume => counter!("cluster_auth.wrong_volume").inc(),
        Refusal::NoKey => counter!("cluster_auth.no_key").inc(),
        Refusal::WrongRid => counter!("cluster_auth.wrong_rid").inc(),
    }
    let n = REFUSALS.fetch_add(1, Ordering::Relaxed);
    if n < LOG_FIRST || n.is_multiple_of(LOG_EVERY) {
        let hint = match r {
            Refusal::BadMac => " (another cluster key?)",
            Refusal::NoKey => " (the peer has no cluster.key=)",
            Refusal::WrongVolume => " (another volume's node)",
            Refusal::WrongRid => " (a greeting for another mount's rid)",
            Refusal::Replay => "",
        };
        log::warn!(
            "cluster auth: refused {what}: {}{hint} (refusal #{})",
            r.name(),
            n + 1
        );
    }
}

// ---- session streams ----

/// One connection's authentication state.
pub struct SessionAuth {
    key: VolumeKey,
    /// This end opened the connection.
    client: bool,
    /// This end's rid in its hello (the mount's on a client, 0 on a server).
    local_rid: u64,
    /// The rid of the peer's hello, once taken.
    peer_rid: u64,
    local_nonce: [u8; NONCE_BYTES],
    peer_nonce: Option<[u8; NONCE_BYTES]>,
    tx: u64,
    rx: u64,
}

impl SessionAuth {
    /// `rid`: on a client the mount's rid (what its greeting will name),
    /// on a server 0.
    pub fn new(key: VolumeKey, client: bool, rid: u64, nonce: [u8; NONCE_BYTES]) -> SessionAuth {
        SessionAuth {
            key,
            client,
            local_rid: if client { rid } else { 0 },
            peer_rid: 0,
            local_nonce: nonce,
            peer_nonce: None,
            tx: 0,
            rx: 0,
        }
    }

    /// The bytes this end sends first.
    pub fn hello(&self) -> [u8; HELLO_BYTES] {
        let mut b = [0u8; HELLO_BYTES];
        b[..8].copy_from_slice(&HELLO_MAGIC);
        put_u64(&mut b, 8, self.key.fsid);
        put_u64(&mut b, 16, self.local_rid);
        b[24..HELLO_TAG_AT].copy_from_slice(&self.local_nonce);
        let t = self.key.tag(&[b"hello", &b[..HELLO_TAG_AT]]);
        b[HELLO_TAG_AT..].copy_from_slice(&t);
        b
    }

    /// The rid the client's hello named (its own on a client, the peer's
    /// on a server); `None` on a server before the client's hello.
    pub fn client_rid(&self) -> Option<u64> {
        if self.client {
            Some(self.local_rid)
        } else {
            self.peer_nonce.map(|_| self.peer_rid)
        }
    }

    /// Whether the peer's hello has been taken.
    pub fn ready(&self) -> bool {
        self.peer_nonce.is_some()
    }

    /// Take the peer's hello.
    pub fn accept_hello(&mut self, b: &[u8]) -> Result<(), Refusal> {
        if b.len() != HELLO_BYTES || b[..8] != HELLO_MAGIC {
            return Err(Refusal::NoKey);
        }
        if get_u64(b, 8) != self.key.fsid {
            return Err(Refusal::WrongVolume);
        }
        if !self
            .key
            .verify(&[b"hello", &b[..HELLO_TAG_AT]], &b[HELLO_TAG_AT..])
        {
            return Err(Refusal::BadMac);
        }
        let mut n = [0u8; NONCE_BYTES];
        n.copy_from_slice(&b[24..HELLO_TAG_AT]);
        self.peer_rid = get_u64(b, 16);
        self.peer_nonce = Some(n);
        Ok(())
    }

    fn parts_tag(&self, from_client: bool, n: u64, frame: &[u8]) -> Option<[u8; TAG_BYTES]> {
        let peer = self.peer_nonce?;
        let (cn, sn, rid) = if self.client {
            (self.local_nonce, peer, self.local_rid)
        } else {
            (peer, self.local_nonce, self.peer_rid)
        };
        let dir: &[u8] = if from_client { b"c2s" } else { b"s2c" };
        Some(self.key.tag(&[
            b"session",
            dir,
            &rid.to_le_bytes(),
            &cn,
            &sn,
            &n.to_le_bytes(),
            frame,
        ]))
    }

    /// The tag to send after `frame` (the next frame of this end).
    /// `None` before the peer's hello.
    pub fn seal(&mut self, frame: &[u8]) -> Option<[u8; TAG_BYTES]> {
        let t = self.parts_tag(self.client, self.tx, frame)?;
        self.tx += 1;
        Some(t)
    }

    /// Check the peer's next frame and its tag.
    pub fn open(&mut self, frame: &[u8], tag: &[u8]) -> Result<(), Refusal> {
        let Some(want) = self.parts_tag(!self.client, self.rx, frame) else {
            return Err(Refusal::BadMac);
        };
        let mut diff = 0u8;
        if tag.len() != TAG_BYTES {
            return Err(Refusal::BadMac);
        }
        for (a, b) in want.iter().zip(tag) {
            diff |= a ^ b;
        }
        if diff != 0 {
            return Err(Refusal::BadMac);
        }
        self.rx += 1;
        Ok(())
    }
}

// ---- quorum datagrams ----

/// Slots a quorum may have (the datagram's slot byte is checked against it).
const QUORUM_SLOTS: usize = 16;

/// A node's quorum datagram authentication.
pub struct QuorumAuth {
    key: VolumeKey,
    next: u64,
    /// Highest (term, counter) accepted per sender slot.
    seen: [Option<(u64, u64)>; QUORUM_SLOTS],
}

impl QuorumAuth {
    /// `start` seeds the send counter (the wall clock in ns, so a
    /// restarted node continues above what it sent before).
    pub fn new(key: VolumeKey, start: u64) -> QuorumAuth {
        QuorumAuth {
            key,
            next: start,
            seen: [None; QUORUM_SLOTS],
        }
    }

    /// The datagram with its counter and tag.
    pub fn seal(&mut self, dgram: &[u8]) -> alloc::vec::Vec<u8> {
        let c = self.next;
        self.next = self.next.wrapping_add(1);
        let mut out = alloc::vec::Vec::with_capacity(dgram.len() + QUORUM_TRAILER_BYTES);
        out.extend_from_slice(dgram);
        out.extend_from_slice(&c.to_le_bytes());
        let t = self.key.tag(&[b"quorum", &out]);
        out.extend_from_slice(&t);
        out
    }

    /// The datagram inside `b` if it is authentic and new. The fsid sits
    /// at 0, the term at 16 and the sender slot at 25 of the datagram.
    pub fn open<'a>(&mut self, b: &'a [u8]) -> Result<&'a [u8], Refusal> {
        let base = crate::cluster::quorum_wire::QUORUM_MSG_BYTES;
        if b.len() == base {
            return Err(Refusal::NoKey);
        }
        if b.len() != base + QUORUM_TRAILER_BYTES {
            return Err(Refusal::BadMac);
        }
        if get_u64(b, 0) != self.key.fsid {
            return Err(Refusal::WrongVolume);
        }
        let body = &b[..base + 8];
        if !self.key.verify(&[b"quorum", body], &b[base + 8..]) {
            return Err(Refusal::BadMac);
        }
        let slot = b[25] as usize;
        if slot >= QUORUM_SLOTS {
            // authentic but nonsense: the wire decoder refuses it
            return Ok(&b[..base]);
        }
        let now = (get_u64(b, 16), get_u64(b, base));
        if let Some(prev) = self.seen[slot] {
            if now <= prev {
                return Err(Refusal::Replay);
            }
        }
        self.seen[slot] = Some(now);
        Ok(&b[..base])
    }
}

// ---- each node's key ----

#[derive(Clone)]
struct NodeAuth {
    key: VolumeKey,
    /// Per-boot secret for connection nonces.
    seed: [u8; 32],
    conns: u64,
}

#[cfg(any(test, feature = "std"))]
mod store {
    use super::NodeAuth;
    use super::MAX_NODES;
    use core::cell::RefCell;

    std::thread_local! {
        static NODES: RefCell<[Option<NodeAuth>; MAX_NODES]> =
            const { RefCell::new([const { None }; MAX_NODES]) };
    }

    pub fn with<R>(f: impl FnOnce(&mut [Option<NodeAuth>; MAX_NODES]) -> R) -> R {
        NODES.with(|n| f(&mut n.borrow_mut()))
    }
}

#[cfg(not(any(test, feature = "std")))]
mod store {
    use super::NodeAuth;
    use super::MAX_NODES;

    static NODES: spin::Mutex<[Option<NodeAuth>; MAX_NODES]> =
        spin::Mutex::new([const { None }; MAX_NODES]);

    pub fn with<R>(f: impl FnOnce(&mut [Option<NodeAuth>; MAX_NODES]) -> R) -> R {
        f(&mut NODES.lock())
    }
}

/// Set (or with `None` clear) the running node's cluster key for volume
/// `fsid`. `seed` must differ on every boot (it makes the connection
/// nonces). Called before the node's endpoints and quorum agent start.
pub fn configure(key: Option<&ClusterKey>, fsid: u64, seed: [u8; 32]) {
    let me = node::current() as usize;
    let v = key.map(|k| NodeAuth {
        key: VolumeKey::derive(k, fsid),
        seed,
        conns: 0,
    });
    store::with(|n| n[me] = v);
}

/// Whether the running node has a key.
pub fn enabled() -> bool {
    let me = node::current() as usize;
    store::with(|n| n[me].is_some())
}

/// A new connection's authentication for the running node, `None`
/// without a key. `rid`: the mount's rid on a client, ignored on a server.
pub fn session(client: bool, rid: u64) -> Option<SessionAuth> {
    let me = node::current() as usize;
    store::with(|n| {
        let a = n[me].as_mut()?;
        a.conns += 1;
        let k = <Blake2sMac256 as KeyInit>::new_from_slice(&a.seed).expect("32-byte seed");
        let out = k
            .chain(b"nonce")
            .chain(a.conns.to_le_bytes())
            .finalize_fixed();
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&out[..NONCE_BYTES]);
        Some(SessionAuth::new(a.key.clone(), client, rid, nonce))
    })
}

/// The quorum authentication of the running node, `None` without a key.
pub fn quorum(start: u64) -> Option<QuorumAuth> {
    let me = node::current() as usize;
    store::with(|n| {
        n[me]
            .as_ref()
            .map(|a| QuorumAuth::new(a.key.clone(), start))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::quorum_wire::{MsgKind, QuorumMsg};

    fn key(b: u8) -> ClusterKey {
        ClusterKey([b; KEY_BYTES])
    }

    fn pair(k1: &ClusterKey, k2: &ClusterKey) -> (SessionAuth, SessionAuth) {
        let mut c = SessionAuth::new(VolumeKey::derive(k1, 7), true, 5, [1; NONCE_BYTES]);
        let mut s = SessionAuth::new(VolumeKey::derive(k2, 7), false, 0, [2; NONCE_BYTES]);
        let (hc, hs) = (c.hello(), s.hello());
        c.accept_hello(&hs).unwrap();
        s.accept_hello(&hc).unwrap();
        (c, s)
    }

    #[test]
    fn hex_keys_round_trip_and_bad_ones_are_refused() {
        let h = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let k = ClusterKey::parse_hex(h).unwrap();
        assert_eq!(k.0[1], 0x11);
        assert_eq!(k.to_hex(), h.to_ascii_lowercase());
        assert!(ClusterKey::parse_hex(&h[..62]).is_err());
        assert!(ClusterKey::parse_hex(&h.replace('f', "g")).is_err());
        assert!(!alloc::format!("{k:?}").contains("11"));
    }

    #[test]
    fn good_session_frames_pass_and_any_flipped_bit_is_refused() {
        let frame = b"header and payload bytes";
        let t = pair(&key(9), &key(9)).0.seal(frame).unwrap();
        for bit in 0..(frame.len() + TAG_BYTES) * 8 {
            let mut f = frame.to_vec();
            let mut tt = t;
            if bit < frame.len() * 8 {
                f[bit / 8] ^= 1 << (bit % 8);
            } else {
                let b = bit - frame.len() * 8;
                tt[b / 8] ^= 1 << (b % 8);
            }
            let mut probe = pair(&key(9), &key(9)).1;
            assert_eq!(probe.open(&f, &tt), Err(Refusal::BadMac), "bit {bit}");
        }
        let mut probe = pair(&key(9), &key(9)).1;
        assert_eq!(probe.open(frame, &t), Ok(()));
        let (mut c, mut s) = pair(&key(9), &key(9));
        for i in 0..3u8 {
            let t = c.seal(&[i]).unwrap();
            assert_eq!(s.open(&[i], &t), Ok(()));
        }
        // the server's answer goes the other way: a client frame's tag
        // does not verify as a server frame
        let t = c.seal(b"x").unwrap();
        assert_eq!(c.open(b"x", &t), Err(Refusal::BadMac));
        let back = s.seal(b"y").unwrap();
        assert_eq!(c.open(b"y", &back), Ok(()));
    }

    #[test]
    fn session_replays_and_foreign_connections_are_refused() {
        let (mut c, mut s) = pair(&key(9), &key(9));
        let t0 = c.seal(b"one").unwrap();
        assert_eq!(s.open(b"one", &t0), Ok(()));
        // the same frame again (the counter moved on)
        assert_eq!(s.open(b"one", &t0), Err(Refusal::BadMac));
        // into a new connection with other nonces
        let mut c3 = SessionAuth::new(VolumeKey::derive(&key(9), 7), true, 5, [5; NONCE_BYTES]);
        let mut s3 = SessionAuth::new(VolumeKey::derive(&key(9), 7), false, 0, [6; NONCE_BYTES]);
        s3.accept_hello(&c3.hello()).unwrap();
        c3.accept_hello(&s3.hello()).unwrap();
        let mut fresh = SessionAuth::new(VolumeKey::derive(&key(9), 7), true, 5, [1; NONCE_BYTES]);
        fresh.accept_hello(&s.hello()).unwrap();
        let t = fresh.seal(b"one").unwrap();
        assert_eq!(s3.open(b"one", &t), Err(Refusal::BadMac));
        // wrong key: the hello already fails
        let cw = SessionAuth::new(VolumeKey::derive(&key(1), 7), true, 5, [1; NONCE_BYTES]);
        let mut sw = SessionAuth::new(VolumeKey::derive(&key(2), 7), false, 0, [2; NONCE_BYTES]);
        assert_eq!(sw.accept_hello(&cw.hello()), Err(Refusal::BadMac));
        let mut h = s.hello();
        h[20] ^= 1;
        let mut fresh = SessionAuth::new(VolumeKey::derive(&key(9), 7), true, 5, [1; NONCE_BYTES]);
        assert_eq!(fresh.accept_hello(&h), Err(Refusal::BadMac));
        // hello of another volume, and of a node without a key
        let other = SessionAuth::new(VolumeKey::derive(&key(9), 8), true, 5, [1; NONCE_BYTES]);
        let mut s4 = SessionAuth::new(VolumeKey::derive(&key(9), 7), false, 0, [2; NONCE_BYTES]);
        assert_eq!(s4.accept_hello(&other.hello()), Err(Refusal::WrongVolume));
        assert_eq!(s4.accept_hello(&[0u8; HELLO_BYTES]), Err(Refusal::NoKey));
        assert!(!s4.ready());
        assert!(s4.seal(b"x").is_none());
    }

    #[test]
    fn hellos_carry_the_clients_rid_and_frames_are_bound_to_it() {
        let vk = || VolumeKey::derive(&key(9), 7);
        let (c, s) = pair(&key(9), &key(9));
        assert_eq!(c.client_rid(), Some(5));
        assert_eq!(s.client_rid(), Some(5));
        let fresh = SessionAuth::new(vk(), false, 0, [2; NONCE_BYTES]);
        assert_eq!(fresh.client_rid(), None);
        // a server's hello never names a rid
        let server_side = SessionAuth::new(vk(), false, 77, [2; NONCE_BYTES]);
        let mut probe = SessionAuth::new(vk(), true, 5, [1; NONCE_BYTES]);
        probe.accept_hello(&server_side.hello()).unwrap();
        assert_eq!(probe.peer_rid, 0);
        // another rid in a captured hello: its tag fails
        let mut h = SessionAuth::new(vk(), true, 5, [1; NONCE_BYTES]).hello();
        h[16] ^= 3;
        let mut s2 = SessionAuth::new(vk(), false, 0, [2; NONCE_BYTES]);
        assert_eq!(s2.accept_hello(&h), Err(Refusal::BadMac));
        // same nonces, other rid: the frames of one do not pass on the other
        for rid in [5u64, 6] {
            let mut c = SessionAuth::new(vk(), true, rid, [1; NONCE_BYTES]);
            let mut s = SessionAuth::new(vk(), false, 0, [2; NONCE_BYTES]);
            c.accept_hello(&s.hello()).unwrap();
            s.accept_hello(&SessionAuth::new(vk(), true, 5, [1; NONCE_BYTES]).hello())
                .unwrap();
            let t = c.seal(b"frame").unwrap();
            let want = if rid == 5 {
                Ok(())
            } else {
                Err(Refusal::BadMac)
            };
            assert_eq!(s.open(b"frame", &t), want, "rid {rid}");
        }
    }

    fn dgram(term: u64, from: u8) -> [u8; 32] {
        QuorumMsg {
            fsid: 7,
            term,
            kind: MsgKind::Vote,
            from,
        }
        .encode()
    }

    #[test]
    fn quorum_datagrams_authentic_new_ones_pass() {
        let vk = VolumeKey::derive(&key(3), 7);
        let mut tx = QuorumAuth::new(vk.clone(), 100);
        let mut rx = QuorumAuth::new(vk, 0);
        let a = tx.seal(&dgram(5, 2));
        let b = tx.seal(&dgram(5, 2));
        assert_eq!(rx.open(&a).unwrap(), &dgram(5, 2));
        // replayed
        assert_eq!(rx.open(&a), Err(Refusal::Replay));
        assert_eq!(rx.open(&b).unwrap(), &dgram(5, 2));
        // older than the newest accepted (reordered or replayed)
        assert_eq!(rx.open(&a), Err(Refusal::Replay));
        // a higher term passes even with a restarted (lower) counter
        let mut restarted = QuorumAuth::new(VolumeKey::derive(&key(3), 7), 0);
        assert!(rx.open(&restarted.seal(&dgram(6, 2))).is_ok());
        // every flipped bit
        let c = tx.seal(&dgram(9, 1));
        for bit in 0..c.len() * 8 {
            let mut m = c.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            let mut fresh = QuorumAuth::new(VolumeKey::derive(&key(3), 7), 0);
            let r = fresh.open(&m);
            assert!(
                matches!(r, Err(Refusal::BadMac | Refusal::WrongVolume)),
                "bit {bit}: {r:?}"
            );
        }
        // wrong key, no key, another volume
        let mut wrong = QuorumAuth::new(VolumeKey::derive(&key(4), 7), 0);
        assert_eq!(rx.open(&wrong.seal(&dgram(10, 1))), Err(Refusal::BadMac));
        assert_eq!(rx.open(&dgram(10, 1)), Err(Refusal::NoKey));
        let mut other = QuorumAuth::new(VolumeKey::derive(&key(3), 8), 0);
        let mut foreign = dgram(10, 1);
        foreign[..8].copy_from_slice(&8u64.to_le_bytes());
        assert_eq!(rx.open(&other.seal(&foreign)), Err(Refusal::WrongVolume));
    }

    #[test]
    fn nodes_keep_their_own_keys() {
        let fsid = 7;
        {
            let _g = node::enter(3);
            configure(Some(&key(1)), fsid, [9; 32]);
            assert!(enabled());
        }
        {
            let _g = node::enter(4);
            assert!(!enabled());
            assert!(session(true, 5).is_none());
        }
        let _g = node::enter(3);
        let a = session(true, 5).unwrap();
        let b = session(true, 5).unwrap();
        assert_ne!(a.local_nonce, b.local_nonce);
        assert!(quorum(0).is_some());
        configure(None, fsid, [0; 32]);
        assert!(!enabled());
    }
}
