//! A stable-toolchain fuzzer for the wire decoders: coverage-less but
//! structure-aware random mutation of valid messages.
//!
//! Honest about what it is: no coverage feedback (no instrumentation, so
//! it runs on stable Rust with no extra tools); instead every target seeds
//! its pool with valid messages of every type (built by the codecs' own
//! generators and encoders), each input is a pool entry with 1 to 8
//! stacked byte-level mutations (bit flips, boundary values, inserts,
//! deletes, duplicated ranges, splices of two entries, arithmetic), and
//! half the time the target repairs its length fields so that mutations
//! reach the body decoders instead of dying at the size check. Inputs that
//! still decode are kept in the (bounded) pool: the only feedback is
//! "this is still a valid message". Deterministic for a given seed.
//!
//! Each target checks properties, not just "no panic": a decoded 9P
//! message re-encodes to exactly the bytes it came from, the framers never
//! buffer past their bound and hand out frames whose length fields match,
//! a decoded cluster header re-encodes to the same 32 bytes, a decoded
//! payload re-encodes to its bytes, a decoded FUSE request's header says
//! the frame's length and re-encodes to its bytes. A failed property or a panic is a
//! [`Crash`] with the input, the iteration and the seed to replay it.
//!
//! Run by `tests/tests/fuzz.rs` (CI, bounded) and `scoutvm-fuzz`
//! (`cargo xtask fuzz --iterations N`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use scoutvm_fs::cluster::auth::{
    ClusterKey, QuorumAuth, Refusal, SessionAuth, VolumeKey, QUORUM_TRAILER_BYTES, TAG_BYTES,
};
use scoutvm_fs::cluster::lock::{LockMode, LockRange};
use scoutvm_fs::cluster::lock_server::{LockServer, LockServerConfig};
use scoutvm_fs::cluster::msg::{
    self as cmsg, cmd, decode_log_trees, decode_merge_request, decode_u64, encode_frame,
    FrameDecoder, Greeting, Header, InodeAlloc, NetLock, NetRoots, NetStatfs, Request,
    FLAG_RESPONSE, HEADER_BYTES, MAX_DATA_LEN,
};
use scoutvm_fs::cluster::quorum_wire::{MsgKind, QuorumMsg, QUORUM_MSG_BYTES};
use scoutvm_net::p9::wire::{self, DecodeError, Dirents, Fcall, Gen, Msg, Rmsg, Tmsg};
use scoutvm_net::p9::FrameReader;
use std::cell::Cell;

/// Longest input the mutator makes.
const INPUT_MAX: usize = 64 * 1024;
/// Most inputs the pool keeps.
const POOL_MAX: usize = 4096;
/// Most mutations stacked on one input.
const STACK_MAX: u64 = 8;

/// splitmix64: small, fast, good enough to pick mutations.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// One decoder under test.
pub struct Target {
    pub name: &'static str,
    /// Valid inputs to start from.
    seeds: fn(&mut Rng) -> Vec<Vec<u8>>,
    /// Repair length fields after mutation (structure awareness).
    fix: fn(&mut [u8]),
    /// Decode and check; `Ok(true)` when the input decoded as valid,
    /// `Err` when a property failed.
    run: fn(&[u8]) -> Result<bool, String>,
}

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "p9",
            seeds: p9_seeds,
            fix: p9_fix,
            run: p9_decode,
        },
        Target {
            name: "p9_framing",
            seeds: p9_stream_seeds,
            fix: |_| {},
            run: p9_framing,
        },
        Target {
            name: "cluster",
            seeds: cluster_seeds,
            fix: cluster_fix,
            run: cluster_decode,
        },
        Target {
            name: "cluster_auth",
            seeds: auth_seeds,
            fix: auth_fix,
            run: auth_decode,
        },
        Target {
            name: "fuse",
            seeds: fuse_seeds,
            fix: p9_fix,
            run: fuse_decode,
        },
    ]
}

/// FUSE requests of every opcode the appliance serves, with bodies of
/// their sizes (names NUL-terminated) and a few random ones.
fn fuse_seeds(rng: &mut Rng) -> Vec<Vec<u8>> {
    use scoutvm_net::fuse::wire::{encode_request, op};
    let name = |n: &[u8]| {
        let mut v = n.to_vec();
        v.push(0);
        v
    };
    let sized = |n: usize, tail: &[u8]| {
        let mut v = vec![0u8; n];
        v.extend_from_slice(tail);
        v
    };
    let mut init = vec![0u8; 64];
    init[..4].copy_from_slice(&7u32.to_le_bytes());
    init[4..8].copy_from_slice(&31u32.to_le_bytes());
    let mut write = sized(40, b"hello");
    write[16..20].copy_from_slice(&5u32.to_le_bytes());
    let mut two = sized(16, &name(b"old"));
    two.extend_from_slice(&name(b"new"));
    let mut xattr = sized(16, &name(b"user.k"));
    xattr.extend_from_slice(b"val");
    xattr[..4].copy_from_slice(&3u32.to_le_bytes());
    let bodies: Vec<(u32, Vec<u8>)> = vec![
        (op::INIT, init),
        (op::LOOKUP, name(b"a")),
        (op::FORGET, sized(8, b"")),
        (op::GETATTR, sized(16, b"")),
        (op::SETATTR, sized(88, b"")),
        (op::READLINK, Vec::new()),
        (op::SYMLINK, [name(b"l"), name(b"target")].concat()),
        (op::MKNOD, sized(16, &name(b"n"))),
        (op::MKDIR, sized(8, &name(b"d"))),
        (op::UNLINK, name(b"f")),
        (op::RMDIR, name(b"d")),
        (op::RENAME, sized(8, &[name(b"a"), name(b"b")].concat())),
        (op::LINK, sized(8, &name(b"h"))),
        (op::OPEN, sized(8, b"")),
        (op::READ, sized(40, b"")),
        (op::WRITE, write),
        (op::STATFS, Vec::new()),
        (op::RELEASE, sized(24, b"")),
        (op::FSYNC, sized(16, b"")),
        (op::SETXATTR, xattr),
        (op::GETXATTR, sized(8, &name(b"user.k"))),
        (op::LISTXATTR, sized(8, b"")),
        (op::REMOVEXATTR, name(b"user.k")),
        (op::FLUSH, sized(24, b"")),
        (op::OPENDIR, sized(8, b"")),
        (op::READDIR, sized(40, b"")),
        (op::READDIRPLUS, sized(40, b"")),
        (op::RELEASEDIR, sized(24, b"")),
        (op::GETLK, sized(48, b"")),
        (op::SETLK, sized(48, b"")),
        (op::SETLKW, sized(48, b"")),
        (op::ACCESS, sized(8, b"")),
        (op::CREATE, sized(16, &name(b"c"))),
        (op::INTERRUPT, sized(8, b"")),
        (op::BATCH_FORGET, sized(24, b"")),
        (op::FALLOCATE, sized(32, b"")),
        (op::RENAME2, two),
        (op::LSEEK, sized(24, b"")),
        (op::COPY_FILE_RANGE, sized(56, b"")),
        (op::DESTROY, Vec::new()),
    ];
    let mut out: Vec<Vec<u8>> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, (opc, body))| encode_request(opc, i as u64 + 1, 1, 0, 0, &body))
        .collect();
    for _ in 0..16 {
        let opc = rng.below(64) as u32;
        let n = rng.below(128) as usize;
        let body = rng.bytes(n);
        out.push(encode_request(
            opc,
            rng.next_u64(),
            rng.next_u64(),
            0,
            0,
            &body,
        ));
    }
    out
}

/// Decode a FUSE request: a decoded one has a header whose `len` is the
/// frame's and which re-encodes to the frame's first 38 bytes; anything
/// else is refused with an error, never a panic.
fn fuse_decode(data: &[u8]) -> Result<bool, String> {
    use scoutvm_net::fuse::wire::{decode_request, IN_HEADER_LEN};
    match decode_request(data) {
        Ok((h, _)) => {
            if h.len as usize != data.len() {
                return Err(format!(
                    "decoded len {} of a {}-byte frame",
                    h.len,
                    data.len()
                ));
            }
            let mut again = Vec::new();
            h.encode(&mut again);
            // the last two bytes are padding, ignored as the kernel does
            if again[..IN_HEADER_LEN - 2] != data[..IN_HEADER_LEN - 2] {
                return Err(format!("header {h:?} re-encodes differently"));
            }
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: &'static str,
    pub iterations: u64,
    pub secs: f64,
    /// Inputs that decoded as valid messages.
    pub valid: u64,
    pub pool: usize,
}

impl Report {
    pub fn per_sec(&self) -> f64 {
        self.iterations as f64 / self.secs.max(1e-9)
    }
}

/// A failed property or a panic, with what replays it.
#[derive(Clone, Debug)]
pub struct Crash {
    pub target: &'static str,
    pub seed: u64,
    pub iteration: u64,
    pub input: Vec<u8>,
    pub what: String,
}

impl std::fmt::Display for Crash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} seed {} iteration {}: {}\ninput ({} bytes): {:02x?}",
            self.target,
            self.seed,
            self.iteration,
            self.what,
            self.input.len(),
            &self.input[..self.input.len().min(256)]
        )
    }
}

/// Run `target` for `iterations` inputs from `seed`; `progress` is called
/// every 2^20 inputs with the count so far.
pub fn fuzz(
    target: &Target,
    iterations: u64,
    seed: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Report, Box<Crash>> {
    let mut rng = Rng::new(seed);
    let mut pool = (target.seeds)(&mut rng);
    assert!(!pool.is_empty(), "{}: no seeds", target.name);
    let crash = |iteration: u64, input: &[u8], what: String| {
        Box::new(Crash {
            target: target.name,
            seed,
            iteration,
            input: input.to_vec(),
            what,
        })
    };
    // Every seed must itself pass.
    for (i, s) in pool.iter().enumerate() {
        match run_caught(target, s) {
            Ok(_) => {}
            Err(what) => return Err(crash(i as u64, s, format!("seed: {what}"))),
        }
    }
    let started = Instant::now();
    let mut valid = 0;
    let mut input = Vec::new();
    for it in 0..iterations {
        if it & ((1 << 20) - 1) == 0 && it != 0 {
            progress(it);
        }
        let base = rng.below(pool.len() as u64) as usize;
        input.clear();
        input.extend_from_slice(&pool[base]);
        let other = rng.below(pool.len() as u64) as usize;
        for _ in 0..=rng.below(STACK_MAX) {
            mutate(&mut rng, &mut input, &pool[other]);
        }
        if rng.below(2) == 0 {
            (target.fix)(&mut input);
        }
        match run_caught(target, &input) {
            Ok(true) => {
                valid += 1;
                if pool.len() < POOL_MAX {
                    pool.push(input.clone());
                } else if rng.below(16) == 0 {
                    let at = rng.below(POOL_MAX as u64) as usize;
                    pool[at] = input.clone();
                }
            }
            Ok(false) => {}
            Err(what) => return Err(crash(it, &input, what)),
        }
    }
    Ok(Report {
        target: target.name,
        iterations,
        secs: started.elapsed().as_secs_f64(),
        valid,
        pool: pool.len(),
    })
}

fn run_caught(target: &Target, input: &[u8]) -> Result<bool, String> {
    match catch_unwind(AssertUnwindSafe(|| (target.run)(input))) {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panic: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

/// Boundary values worth writing over a field.
const INTERESTING: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
];

fn mutate(rng: &mut Rng, b: &mut Vec<u8>, other: &[u8]) {
    let len = b.len() as u64;
    match rng.below(11) {
        0 if len > 0 => {
            let at = rng.below(len) as usize;
            b[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len) as usize;
            b[at] = rng.next_u64() as u8;
        }
        2 if len > 0 => {
            // a boundary value of 1, 2, 4 or 8 bytes, little-endian
            let width = 1usize << rng.below(4);
            let v = INTERESTING[rng.below(INTERESTING.len() as u64) as usize].to_le_bytes();
            let at = rng.below(len) as usize;
            let end = (at + width).min(b.len());
            b[at..end].copy_from_slice(&v[..end - at]);
        }
        3 if len > 0 => {
            let at = rng.below(len) as usize;
            b[at] = b[at].wrapping_add((rng.below(33) as u8).wrapping_sub(16));
        }
        4 => {
            let at = rng.below(len + 1) as usize;
            let n = 1 + rng.below(16) as usize;
            let ins = rng.bytes(n);
            b.splice(at..at, ins);
        }
        5 if len > 0 => {
            let at = rng.below(len) as usize;
            let n = 1 + rng.below((len - at as u64).min(64)) as usize;
            b.drain(at..at + n);
        }
        6 if len > 0 => {
            let from = rng.below(len) as usize;
            let n = 1 + rng.below((len - from as u64).min(64)) as usize;
            let chunk = b[from..from + n].to_vec();
            let at = rng.below(len + 1) as usize;
            b.splice(at..at, chunk);
        }
        7 if len > 0 => b.truncate(rng.below(len) as usize),
        8 if !other.is_empty() => {
            // splice: a prefix of this one, the rest of the other
            let at = rng.below(len + 1) as usize;
            let from = rng.below(other.len() as u64) as usize;
            b.truncate(at);
            b.extend_from_slice(&other[from..]);
        }
        9 => {
            let n = 1 + rng.below(32) as usize;
            let more = rng.bytes(n);
            b.extend_from_slice(&more);
        }
        _ if len > 1 => {
            // swap two bytes
            let (i, j) = (rng.below(len) as usize, rng.below(len) as usize);
            b.swap(i, j);
        }
        _ => b.push(rng.next_u64() as u8),
    }
    b.truncate(INPUT_MAX);
}

// ---- 9P -------------------------------------------------------------------

/// Every message type, several times, from the codec's own generator.
fn p9_seeds(rng: &mut Rng) -> Vec<Vec<u8>> {
    let codes: Vec<u8> = Tmsg::TYPE_CODES
        .iter()
        .chain(Rmsg::TYPE_CODES)
        .copied()
        .collect();
    let mut out = Vec::new();
    for &code in &codes {
        for _ in 0..4 {
            let n = rng.below(200) as usize;
            let raw = rng.bytes(n);
            let mut g = Gen::new(&raw);
            let msg = match Tmsg::arbitrary_of(code, &mut g) {
                Some(t) => Msg::T(t),
                None => match Rmsg::arbitrary_of(code, &mut g) {
                    Some(r) => Msg::R(r),
                    None => continue,
                },
            };
            let call = Fcall {
                tag: rng.next_u64() as u16,
                msg,
            };
            let mut buf = Vec::new();
            if wire::encode(&call, &mut buf).is_ok() {
                out.push(buf);
            }
        }
    }
    out
}

/// The size field is the whole frame's length.
fn p9_fix(b: &mut [u8]) {
    if b.len() >= 4 {
        let n = (b.len() as u32).to_le_bytes();
        b[..4].copy_from_slice(&n);
    }
}

/// Decode; what decodes re-encodes to the same bytes; readdir payloads
/// parse or fail cleanly.
fn p9_decode(data: &[u8]) -> Result<bool, String> {
    match wire::decode(data) {
        Ok((call, used)) => {
            if used > data.len() {
                return Err(format!("used {used} of {}", data.len()));
            }
            let mut out = Vec::new();
            wire::encode(&call, &mut out).map_err(|e| format!("decoded but won't encode: {e}"))?;
            if out[..] != data[..used] {
                return Err("decode/encode is not canonical".into());
            }
            if let Msg::R(Rmsg::Readdir { data: payload }) = &call.msg {
                for entry in Dirents::new(payload) {
                    if entry.is_err() {
                        break;
                    }
                }
            }
            Ok(true)
        }
        Err(DecodeError::Incomplete { have, need }) => {
            if have == data.len() && need > have {
                Ok(false)
            } else {
                Err(format!(
                    "incomplete: have {have} need {need} of {}",
                    data.len()
                ))
            }
        }
        Err(e) => {
            if e.tag().is_some() && e.reply_errno().is_none() {
                return Err(format!("tagged error without errno: {e}"));
            }
            Ok(false)
        }
    }
}

/// A chunk size byte, then several frames back to back.
fn p9_stream_seeds(rng: &mut Rng) -> Vec<Vec<u8>> {
    let frames = p9_seeds(rng);
    (0..256)
        .map(|_| {
            let mut s = vec![rng.next_u64() as u8];
            for _ in 0..1 + rng.below(4) {
                s.extend_from_slice(&frames[rng.below(frames.len() as u64) as usize]);
            }
            s
        })
        .collect()
}

/// The incremental framer in chunks: bounded, frames match their size
/// fields, never stalls.
fn p9_framing(data: &[u8]) -> Result<bool, String> {
    let Some((&chunk, stream)) = data.split_first() else {
        return Ok(false);
    };
    let chunk = chunk as usize % 64 + 1;
    let msize = 8192u32;
    let mut reader = FrameReader::new(msize);
    let mut rest = stream;
    let mut frames = 0;
    while !rest.is_empty() {
        let n = reader.feed(&rest[..rest.len().min(chunk)]);
        rest = &rest[n..];
        if reader.buffered() > msize as usize {
            return Err(format!("{} bytes buffered", reader.buffered()));
        }
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    frames += 1;
                    if wire::frame_len(&frame) != Ok(Some(frame.len())) {
                        return Err("frame length differs from its size field".into());
                    }
                    if frame.len() > msize as usize {
                        return Err("frame over msize".into());
                    }
                    p9_decode(&frame)?;
                }
                Ok(None) if n == 0 => return Err("framer stalled".into()),
                Ok(None) => break,
                Err(_) => return Ok(false),
            }
        }
    }
    Ok(frames > 0)
}

// ---- cluster ----------------------------------------------------------------

fn frame_of(rng: &mut Rng, c: u8, response: bool, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        seq: 1 + rng.below(1000),
        recv_seq: rng.below(1000),
        id: 1 + rng.below(1000),
        data_len: 0,
        cmd: c,
        flags: if response { FLAG_RESPONSE } else { 0 },
        error: 0,
    };
    encode_frame(&h, payload)
}

/// A chunk size byte, then frames of every command: requests with their
/// payloads, responses with the payloads the client decodes.
fn cluster_seeds(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut payloads: Vec<(u8, Vec<u8>)> = vec![
        (cmd::GREETING, Greeting::default().encode()),
        (cmd::ALLOC_INODES, cmsg::encode_u64(rng.next_u64())),
        (cmd::ALLOC_INODES, InodeAlloc::default().encode()),
        (cmd::GET_ROOTS, NetRoots::default().encode()),
        (cmd::STATFS, NetStatfs::default().encode()),
        (cmd::GET_LAST_SEQ, cmsg::encode_u64(rng.next_u64())),
        (
            cmd::COMMIT_LOG_TREES,
            scoutvm_fs::format::log::LogTrees::default()
                .encode()
                .to_vec(),
        ),
        (
            cmd::COMMIT_LOG_MERGE,
            scoutvm_fs::format::log::MergeComplete::default()
                .encode()
                .to_vec(),
        ),
        (
            cmd::GET_LOG_MERGE,
            scoutvm_fs::format::log::MergeRequest::default()
                .encode()
                .to_vec(),
        ),
    ];
    let modes = [
        LockMode::Null,
        LockMode::Read,
        LockMode::Write,
        LockMode::WriteOnly,
    ];
    for range in [
        LockRange::inode_group(rng.next_u64()),
        LockRange::inode_index(4, rng.next_u64()),
        LockRange::orphan(),
        LockRange::rename(),
        LockRange::xattr_totl(),
    ] {
        let nl = NetLock {
            range,
            write_seq: if rng.below(2) == 0 { 0 } else { rng.next_u64() },
            old_mode: modes[rng.below(4) as usize],
            new_mode: modes[rng.below(4) as usize],
        };
        payloads.push((cmd::LOCK, nl.encode()));
    }
    for c in 0..cmd::UNKNOWN {
        payloads.push((c, Vec::new()));
    }
    let mut out = Vec::new();
    for _ in 0..4 {
        for (c, p) in &payloads {
            for response in [false, true] {
                let mut s = vec![rng.next_u64() as u8];
                s.extend_from_slice(&frame_of(rng, *c, response, p));
                if rng.below(2) == 0 {
                    let (c2, p2) = &payloads[rng.below(payloads.len() as u64) as usize];
                    let response = rng.below(2) == 0;
                    s.extend_from_slice(&frame_of(rng, *c2, response, p2));
                }
                out.push(s);
            }
        }
    }
    out
}

/// The first frame's header gets `data_len` = what follows it (capped),
/// zero pad bytes and non-zero seq and id.
fn cluster_fix(b: &mut [u8]) {
    let h = 1; // after the chunk byte
    if b.len() < h + HEADER_BYTES {
        return;
    }
    let len = (b.len() - h - HEADER_BYTES).min(MAX_DATA_LEN) as u16;
    b[h + 24..h + 26].copy_from_slice(&len.to_le_bytes());
    b[h + 29..h + 32].fill(0);
    if b[h..h + 8].iter().all(|&x| x == 0) {
        b[h] = 1;
    }
    if b[h + 16..h + 24].iter().all(|&x| x == 0) {
        b[h + 16] = 1;
    }
}

/// A decoded payload survives encode and decode unchanged. (Not byte
/// equality: some layouts have pad bytes a decoder may ignore.)
fn round_trip<T: PartialEq + std::fmt::Debug>(
    what: &str,
    v: &T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Option<T>,
) -> Result<(), String> {
    let bytes = encode(v);
    match decode(&bytes) {
        Some(back) if back == *v => Ok(()),
        other => Err(format!(
            "{what}: {v:?} encodes to what decodes as {other:?}"
        )),
    }
}

thread_local! {
    /// LOCK requests decoded (tests check the mutations reach them).
    static LOCKS_DECODED: Cell<u64> = const { Cell::new(0) };
}

/// A decoded LOCK request, asked by two mounts of a fresh lock server
/// (with a give-back and a departure): its table stays consistent.
fn lock_server_takes(nl: &NetLock) -> Result<(), String> {
    LOCKS_DECODED.with(|c| c.set(c.get() + 1));
    let mut ls = LockServer::new(LockServerConfig::default());
    let mut seq = 0u64;
    let mut next = || {
        seq += 1;
        seq
    };
    ls.request(1, nl, &mut next);
    ls.request(2, nl, &mut next);
    ls.request(1, nl, &mut next);
    ls.check()
        .map_err(|e| format!("lock server after {nl:?}: {e}"))?;
    ls.rid_gone(1, &mut next);
    ls.check()
        .map_err(|e| format!("lock server after {nl:?}: {e}"))?;
    while ls.poll_output().is_some() {}
    Ok(())
}

/// Frames from a byte stream in chunks, then every payload decoder that
/// applies to the command; what decodes re-encodes to its bytes.
fn cluster_decode(data: &[u8]) -> Result<bool, String> {
    let Some((&chunk, stream)) = data.split_first() else {
        return Ok(false);
    };
    let chunk = chunk as usize % 97 + 1;
    let mut dec = FrameDecoder::new();
    let mut rest = stream;
    let mut valid = false;
    while !rest.is_empty() {
        let n = rest.len().min(chunk).min(dec.room());
        if n == 0 {
            return Err("decoder full with no frame to hand out".into());
        }
        if dec.push(&rest[..n]).is_err() {
            return Err("push within room refused".into());
        }
        rest = &rest[n..];
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return Ok(valid),
            };
            let h = frame.header;
            let mut again = [0u8; HEADER_BYTES];
            h.encode(&mut again);
            let back = Header::decode(&again).map_err(|e| format!("header re-decode: {e}"))?;
            if back != h || h.data_len as usize != frame.payload.len() {
                return Err("header does not round-trip".into());
            }
            let p = &frame.payload[..];
            if !h.is_response() {
                if let Ok(r) = Request::decode(h.cmd, p) {
                    valid = true;
                    if r.cmd() != h.cmd {
                        return Err(format!("request of cmd {} decoded as {}", h.cmd, r.cmd()));
                    }
                    if !matches!(r, Request::Unsupported(_)) {
                        let c = h.cmd;
                        round_trip("request", &r, Request::encode_payload, |b| {
                            Request::decode(c, b).ok()
                        })?;
                    }
                    if let Request::Lock(nl) = &r {
                        lock_server_takes(nl)?;
                    }
                }
                continue;
            }
            // A response: whatever the client would decode it as.
            valid = true;
            if let Ok(v) = Greeting::decode(p) {
                round_trip("greeting", &v, Greeting::encode, |b| {
                    Greeting::decode(b).ok()
                })?;
            }
            if let Ok(v) = InodeAlloc::decode(p) {
                round_trip("inode alloc", &v, InodeAlloc::encode, |b| {
                    InodeAlloc::decode(b).ok()
                })?;
            }
            if let Ok(v) = NetRoots::decode(p) {
                round_trip("roots", &v, NetRoots::encode, |b| NetRoots::decode(b).ok())?;
            }
            if let Ok(v) = NetStatfs::decode(p) {
                round_trip("statfs", &v, NetStatfs::encode, |b| {
                    NetStatfs::decode(b).ok()
                })?;
            }
            if let Ok(v) = decode_u64(p) {
                round_trip("u64", &v, |v| cmsg::encode_u64(*v), |b| decode_u64(b).ok())?;
            }
            if let Ok(v) = NetLock::decode(p) {
                round_trip("lock", &v, NetLock::encode, |b| NetLock::decode(b).ok())?;
            }
            if let Ok(v) = cmsg::LockRecover::decode(p) {
                round_trip("lock recover", &v, cmsg::LockRecover::encode, |b| {
                    cmsg::LockRecover::decode(b).ok()
                })?;
            }
            let _ = decode_log_trees(p);
            let _ = decode_merge_request(p);
        }
    }
    Ok(valid)
}

// ---- cluster traffic under a key ------------------------------------------

const AUTH_FSID: u64 = 0x5eed;
/// Flag byte: the fixer writes valid tags (else mutated tags stay).
const AUTH_SEALED: u8 = 1;
/// Flag byte: quorum datagrams (else a session stream).
const AUTH_QUORUM: u8 = 2;
const DGRAM_BYTES: usize = QUORUM_MSG_BYTES + QUORUM_TRAILER_BYTES;

fn auth_key() -> VolumeKey {
    VolumeKey::derive(&ClusterKey([7; 32]), AUTH_FSID)
}

/// Both ends of one keyed connection, hellos exchanged.
fn auth_pair() -> (SessionAuth, SessionAuth) {
    let mut c = SessionAuth::new(auth_key(), true, 5, [1; 16]);
    let mut s = SessionAuth::new(auth_key(), false, 0, [2; 16]);
    let (hc, hs) = (c.hello(), s.hello());
    c.accept_hello(&hs).expect("own hello");
    s.accept_hello(&hc).expect("own hello");
    (c, s)
}

/// Sealed and unsealed session streams (the cluster seeds' frames with
/// tags) and quorum datagrams.
fn auth_seeds(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, seed) in cluster_seeds(rng).into_iter().enumerate().step_by(4) {
        let mut s = vec![if i % 8 == 0 { AUTH_SEALED } else { 0 }];
        let mut dec = FrameDecoder::new();
        if dec.push(&seed[1..]).is_err() {
            continue;
        }
        s.push(seed[0]);
        while let Ok(Some((_, raw))) = dec.next_frame_trailed(0) {
            s.extend_from_slice(&raw);
            s.extend_from_slice(&[0; TAG_BYTES]);
        }
        auth_fix(&mut s);
        out.push(s);
    }
    for sealed in [0, AUTH_SEALED] {
        let mut s = vec![AUTH_QUORUM | sealed, 1];
        for t in 0..4 {
            let m = QuorumMsg {
                fsid: AUTH_FSID,
                term: 10 + t,
                kind: MsgKind::Heartbeat,
                from: (t % 3) as u8,
            };
            s.extend_from_slice(&m.encode());
            s.extend_from_slice(&[0; QUORUM_TRAILER_BYTES]);
        }
        auth_fix(&mut s);
        out.push(s);
    }
    out
}

/// With [`AUTH_SEALED`]: write the tags a key holder would.
fn auth_fix(b: &mut [u8]) {
    if b.len() < 2 || b[0] & AUTH_SEALED == 0 {
        return;
    }
    let quorum = b[0] & AUTH_QUORUM != 0;
    let body = &mut b[2..];
    if quorum {
        let mut q = QuorumAuth::new(auth_key(), 1);
        for d in body.chunks_exact_mut(DGRAM_BYTES) {
            let sealed = q.seal(&d[..QUORUM_MSG_BYTES]);
            d.copy_from_slice(&sealed);
        }
        return;
    }
    let (mut c, _) = auth_pair();
    let mut at = 0;
    while at + HEADER_BYTES <= body.len() {
        let Ok(h) = Header::decode(&body[at..at + HEADER_BYTES]) else {
            return;
        };
        let end = at + HEADER_BYTES + h.data_len as usize;
        if end + TAG_BYTES > body.len() {
            return;
        }
        let tag = c.seal(&body[at..end]).expect("hellos exchanged");
        body[end..end + TAG_BYTES].copy_from_slice(&tag);
        at = end + TAG_BYTES;
    }
}

/// A keyed server end reads the stream (or the datagrams): what passes
/// the tag goes on to the cluster decoders; a sealed input is never
/// refused for its tag.
fn auth_decode(data: &[u8]) -> Result<bool, String> {
    if data.len() < 2 {
        return Ok(false);
    }
    // the fixer ran on it (it runs on half the inputs): tags are right
    let sealed = data[0] & AUTH_SEALED != 0 && {
        let mut again = data.to_vec();
        auth_fix(&mut again);
        again == data
    };
    let body = &data[2..];
    let mut valid = false;
    if data[0] & AUTH_QUORUM != 0 {
        let mut q = QuorumAuth::new(auth_key(), 0);
        for d in body.chunks(DGRAM_BYTES) {
            match q.open(d) {
                Ok(m) => {
                    valid = true;
                    if let Ok(msg) = QuorumMsg::decode(m, AUTH_FSID, 0x7fff) {
                        if msg.encode() != m {
                            return Err("an opened datagram does not round-trip".into());
                        }
                    }
                }
                Err(Refusal::BadMac) if sealed && d.len() == DGRAM_BYTES => {
                    return Err("a sealed datagram was refused for its tag".into());
                }
                Err(_) => {}
            }
        }
        return Ok(valid);
    }
    let chunk = data[1] as usize % 97 + 1;
    let (_, mut s) = auth_pair();
    let mut dec = FrameDecoder::new();
    let mut rest = body;
    while !rest.is_empty() {
        let n = rest.len().min(chunk).min(dec.room());
        if n == 0 {
            // a frame plus its tag always fits: nothing to hand out
            return Err("decoder full with no frame to hand out".into());
        }
        if dec.push(&rest[..n]).is_err() {
            return Err("push within room refused".into());
        }
        rest = &rest[n..];
        loop {
            let (_, raw) = match dec.next_frame_trailed(TAG_BYTES) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return Ok(valid),
            };
            let (frame, tag) = raw.split_at(raw.len() - TAG_BYTES);
            match s.open(frame, tag) {
                Ok(()) => {
                    let mut one = vec![1u8];
                    one.extend_from_slice(frame);
                    valid |= cluster_decode(&one)?;
                }
                Err(_) if sealed => {
                    return Err("a sealed frame was refused for its tag".into());
                }
                // the connection closes
                Err(_) => return Ok(valid),
            }
        }
    }
    Ok(valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_stays_bounded_and_is_deterministic() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let (mut x, mut y) = (vec![1u8; 100], vec![1u8; 100]);
        for _ in 0..10_000 {
            mutate(&mut a, &mut x, &[9; 70_000]);
            mutate(&mut b, &mut y, &[9; 70_000]);
            assert!(x.len() <= INPUT_MAX);
        }
        assert_eq!(x, y);
    }

    #[test]
    fn mutated_cluster_frames_reach_the_lock_server() {
        let t = targets().into_iter().find(|t| t.name == "cluster").unwrap();
        let before = LOCKS_DECODED.with(|c| c.get());
        fuzz(&t, 20_000, 3, &mut |_| {}).unwrap();
        // 5 LOCK request seeds per round, 4 rounds: more means mutated
        // inputs reached it too
        let n = LOCKS_DECODED.with(|c| c.get()) - before;
        assert!(n > 5 * 4, "{n} LOCK requests decoded");
    }

    #[test]
    fn a_property_failure_is_reported_with_its_input() {
        let t = Target {
            name: "finds-0x42",
            seeds: |_| vec![vec![0u8; 4]],
            fix: |_| {},
            run: |d| {
                if d.contains(&0x42) {
                    Err("found".into())
                } else {
                    Ok(true)
                }
            },
        };
        let c = fuzz(&t, 1_000_000, 1, &mut |_| {}).unwrap_err();
        assert!(c.input.contains(&0x42), "{c}");
        assert_eq!(c.what, "found");
    }
}
