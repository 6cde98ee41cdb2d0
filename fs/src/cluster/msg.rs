//! The client <-> server messages (cluster reference 2.1 and 2.4): the
//! 32-byte frame header, the incremental frame decoder, wire errors and
//! every payload this node speaks, with exact little-endian layouts.
//!
//! Called by the framed connection (`rpc.rs`), the server handlers and the
//! client calls. Invariant: nothing received is trusted. A header that
//! breaks a framing rule is a [`FrameError`] (the connection is closed); a
//! payload of the wrong size or with bad contents decodes to `EINVAL`.
//! Decoding never panics on any input (fuzzed in the tests).

use crate::cluster::lock::{LockMode, LockRange};
use crate::errno::Errno;
use crate::format::block::BtreeRoot;
use crate::format::key::{Key, KEY_BYTES};
use crate::format::le::*;
use crate::format::log::{LogTrees, MergeComplete, MergeRequest};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// Bytes of the frame header.
pub const HEADER_BYTES: usize = 32;
/// `SCOUTFS_NET_MAX_DATA_LEN`: the largest payload.
pub const MAX_DATA_LEN: usize = 1100;
/// `SCOUTFS_NET_FLAG_RESPONSE`.
pub const FLAG_RESPONSE: u8 = 1;

/// Command numbers (`enum scoutfs_net_cmd`).
pub mod cmd {
    pub const GREETING: u8 = 0;
    pub const ALLOC_INODES: u8 = 1;
    pub const GET_LOG_TREES: u8 = 2;
    pub const COMMIT_LOG_TREES: u8 = 3;
    pub const SYNC_LOG_TREES: u8 = 4;
    pub const GET_ROOTS: u8 = 5;
    pub const GET_LAST_SEQ: u8 = 6;
    pub const LOCK: u8 = 7;
    pub const LOCK_RECOVER: u8 = 8;
    pub const SRCH_GET_COMPACT: u8 = 9;
    pub const SRCH_COMMIT_COMPACT: u8 = 10;
    pub const GET_LOG_MERGE: u8 = 11;
    pub const COMMIT_LOG_MERGE: u8 = 12;
    pub const OPEN_INO_MAP: u8 = 13;
    pub const GET_VOLOPT: u8 = 14;
    pub const SET_VOLOPT: u8 = 15;
    pub const CLEAR_VOLOPT: u8 = 16;
    pub const RESIZE_DEVICES: u8 = 17;
    pub const STATFS: u8 = 18;
    pub const FAREWELL: u8 = 19;
    /// Session liveness probe (ours, not in the kernel's enum): answered
    /// at once with an empty payload, never executed as work.
    pub const PING: u8 = 20;
    /// First invalid command.
    pub const UNKNOWN: u8 = 21;

    pub fn name(c: u8) -> &'static str {
        const NAMES: [&str; 21] = [
            "GREETING",
            "ALLOC_INODES",
            "GET_LOG_TREES",
            "COMMIT_LOG_TREES",
            "SYNC_LOG_TREES",
            "GET_ROOTS",
            "GET_LAST_SEQ",
            "LOCK",
            "LOCK_RECOVER",
            "SRCH_GET_COMPACT",
            "SRCH_COMMIT_COMPACT",
            "GET_LOG_MERGE",
            "COMMIT_LOG_MERGE",
            "OPEN_INO_MAP",
            "GET_VOLOPT",
            "SET_VOLOPT",
            "CLEAR_VOLOPT",
            "RESIZE_DEVICES",
            "STATFS",
            "FAREWELL",
            "PING",
        ];
        NAMES.get(c as usize).copied().unwrap_or("UNKNOWN")
    }
}

/// Wire error codes of responses (`SCOUTFS_NET_ERR_*`).
pub mod wire_err {
    pub const NONE: u8 = 0;
    pub const ENOENT: u8 = 1;
    pub const ENOMEM: u8 = 2;
    pub const EIO: u8 = 3;
    pub const ENOSPC: u8 = 4;
    pub const EINVAL: u8 = 5;
    pub const ENOLINK: u8 = 6;
    /// First invalid code.
    pub const UNKNOWN: u8 = 7;
}

/// The wire code of an errno; anything the wire cannot carry is EINVAL.
pub fn errno_to_wire(e: Errno) -> u8 {
    match e {
        Errno::ENOENT => wire_err::ENOENT,
        Errno::ENOMEM => wire_err::ENOMEM,
        Errno::EIO => wire_err::EIO,
        Errno::ENOSPC => wire_err::ENOSPC,
        Errno::ENOLINK => wire_err::ENOLINK,
        _ => wire_err::EINVAL,
    }
}

/// The errno of a (valid, non-zero) wire code.
pub fn wire_to_errno(w: u8) -> Errno {
    match w {
        wire_err::ENOENT => Errno::ENOENT,
        wire_err::ENOMEM => Errno::ENOMEM,
        wire_err::EIO => Errno::EIO,
        wire_err::ENOSPC => Errno::ENOSPC,
        wire_err::ENOLINK => Errno::ENOLINK,
        _ => Errno::EINVAL,
    }
}

/// Why a frame header is refused (the connection is then closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    ZeroSeq,
    ZeroId,
    UnknownCmd(u8),
    UnknownFlags(u8),
    UnknownError(u8),
    TooLong(u16),
    ErrorInRequest,
    ErrorWithPayload,
    PadNotZero,
    /// The receive buffer would exceed its bound.
    Overflow,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::ZeroSeq => f.write_str("frame seq is 0"),
            FrameError::ZeroId => f.write_str("frame id is 0"),
            FrameError::UnknownCmd(c) => write!(f, "unknown command {c}"),
            FrameError::UnknownFlags(x) => write!(f, "unknown flags {x:#x}"),
            FrameError::UnknownError(e) => write!(f, "unknown wire error {e}"),
            FrameError::TooLong(n) => write!(f, "payload of {n} bytes exceeds 1100"),
            FrameError::ErrorInRequest => f.write_str("request carries an error"),
            FrameError::ErrorWithPayload => f.write_str("error response carries a payload"),
            FrameError::PadNotZero => f.write_str("header pad bytes not zero"),
            FrameError::Overflow => f.write_str("receive buffer overflow"),
        }
    }
}

/// `scoutfs_net_header`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    pub recv_seq: u64,
    pub id: u64,
    pub data_len: u16,
    pub cmd: u8,
    pub flags: u8,
    pub error: u8,
}

impl Header {
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    pub fn encode(&self, b: &mut [u8]) {
        put_u64(b, 0, self.seq);
        put_u64(b, 8, self.recv_seq);
        put_u64(b, 16, self.id);
        put_u16(b, 24, self.data_len);
        b[26] = self.cmd;
        b[27] = self.flags;
        b[28] = self.error;
        b[29..32].fill(0);
    }

    /// Decode and validate a header (the receiver's rules of 2.1).
    pub fn decode(b: &[u8]) -> Result<Header, FrameError> {
        debug_assert!(b.len() >= HEADER_BYTES);
        let h = Header {
            seq: get_u64(b, 0),
            recv_seq: get_u64(b, 8),
            id: get_u64(b, 16),
            data_len: get_u16(b, 24),
            cmd: b[26],
            flags: b[27],
            error: b[28],
        };
        if b[29..32].iter().any(|&x| x != 0) {
            return Err(FrameError::PadNotZero);
        }
        if h.seq == 0 {
            return Err(FrameError::ZeroSeq);
        }
        if h.id == 0 {
            return Err(FrameError::ZeroId);
        }
        if h.cmd >= cmd::UNKNOWN {
            return Err(FrameError::UnknownCmd(h.cmd));
        }
        if h.flags & !FLAG_RESPONSE != 0 {
            return Err(FrameError::UnknownFlags(h.flags));
        }
        if h.error >= wire_err::UNKNOWN {
            return Err(FrameError::UnknownError(h.error));
        }
        if h.data_len as usize > MAX_DATA_LEN {
            return Err(FrameError::TooLong(h.data_len));
        }
        if !h.is_response() && h.error != wire_err::NONE {
            return Err(FrameError::ErrorInRequest);
        }
        if h.error != wire_err::NONE && h.data_len != 0 {
            return Err(FrameError::ErrorWithPayload);
        }
        Ok(h)
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
}

/// Encode a frame; `header.data_len` is taken from the payload.
pub fn encode_frame(header: &Header, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= MAX_DATA_LEN, "payload over the wire limit");
    let mut out = vec![0u8; HEADER_BYTES + payload.len()];
    let h = Header {
        data_len: payload.len() as u16,
        ..*header
    };
    h.encode(&mut out[..HEADER_BYTES]);
    out[HEADER_BYTES..].copy_from_slice(payload);
    out
}

/// Largest number of bytes the decoder buffers (several max frames).
pub const DECODER_MAX_BUFFERED: usize = 4 * (HEADER_BYTES + MAX_DATA_LEN);

/// Turns a byte stream into frames. Bounded: the caller must drain
/// frames with [`FrameDecoder::next_frame`] as it pushes bytes.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        FrameDecoder::default()
    }

    /// Room left before [`FrameError::Overflow`].
    pub fn room(&self) -> usize {
        DECODER_MAX_BUFFERED - self.buf.len()
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if bytes.len() > self.room() {
            return Err(FrameError::Overflow);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The first `n` buffered bytes, once there are that many (an
    /// authenticated stream's hello).
    pub fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        if self.buf.len() < n {
            return None;
        }
        Some(self.buf.drain(..n).collect())
    }

    /// The next complete frame followed by `trailer` more bytes (its tag):
    /// the frame, and its bytes with the trailer (the trailer is the last
    /// `trailer` bytes).
    pub fn next_frame_trailed(
        &mut self,
        trailer: usize,
    ) -> Result<Option<(Frame, Vec<u8>)>, FrameError> {
        if self.buf.len() < HEADER_BYTES {
            return Ok(None);
        }
        let header = Header::decode(&self.buf[..HEADER_BYTES])?;
        let total = HEADER_BYTES + header.data_len as usize;
        if self.buf.len() < total + trailer {
            return Ok(None);
        }
        let raw: Vec<u8> = self.buf.drain(..total + trailer).collect();
        let payload = raw[HEADER_BYTES..total].to_vec();
        Ok(Some((Frame { header, payload }, raw)))
    }

    /// The next complete frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_BYTES {
            return Ok(None);
        }
        let header = Header::decode(&self.buf[..HEADER_BYTES])?;
        let total = HEADER_BYTES + header.data_len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let payload = self.buf[HEADER_BYTES..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(Frame { header, payload }))
    }
}

// ---- payloads ----

fn need(b: &[u8], n: usize) -> Result<(), Errno> {
    if b.len() != n {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// A payload that is one little-endian u64.
pub fn decode_u64(b: &[u8]) -> Result<u64, Errno> {
    need(b, 8)?;
    Ok(get_u64(b, 0))
}

pub fn encode_u64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// `SCOUTFS_NET_GREETING_FLAG_FAREWELL` / `_QUORUM`.
pub const GREETING_FLAG_FAREWELL: u64 = 1;
pub const GREETING_FLAG_QUORUM: u64 = 2;

/// `scoutfs_net_greeting` (40).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Greeting {
    pub fsid: u64,
    pub fmt_vers: u64,
    pub server_term: u64,
    pub rid: u64,
    pub flags: u64,
}

impl Greeting {
    pub const BYTES: usize = 40;

    pub fn decode(b: &[u8]) -> Result<Self, Errno> {
        need(b, Self::BYTES)?;
        let g = Greeting {
            fsid: get_u64(b, 0),
            fmt_vers: get_u64(b, 8),
            server_term: get_u64(b, 16),
            rid: get_u64(b, 24),
            flags: get_u64(b, 32),
        };
        if g.flags & !(GREETING_FLAG_FAREWELL | GREETING_FLAG_QUORUM) != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(g)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; Self::BYTES];
        put_u64(&mut b, 0, self.fsid);
        put_u64(&mut b, 8, self.fmt_vers);
        put_u64(&mut b, 16, self.server_term);
        put_u64(&mut b, 24, self.rid);
        put_u64(&mut b, 32, self.flags);
        b
    }
}

/// `scoutfs_net_lock` (48): one lock named by the start key of its range,
/// a mode change and the grant's `write_seq`. Both directions use it:
/// a mount asks the server for `old_mode -> new_mode` (the response is the
/// grant, `write_seq` set for write-capable modes), and the server asks a
/// mount to go down from `old_mode` to `new_mode` (an invalidation; the
/// response echoes it once done).
///
/// Layout: key 0..32, write_seq 32..40, old_mode 40, new_mode 41, zero
/// padding 42..48. Decoding refuses a key that starts no lock range, an
/// unknown mode and non-zero padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetLock {
    pub range: LockRange,
    pub write_seq: u64,
    pub old_mode: LockMode,
    pub new_mode: LockMode,
}

impl NetLock {
    pub const BYTES: usize = 48;

    pub fn decode(b: &[u8]) -> Result<Self, Errno> {
        need(b, Self::BYTES)?;
        let mut kb = [0u8; KEY_BYTES];
        kb.copy_from_slice(&b[..KEY_BYTES]);
        let key = Key::decode_strict(&kb).map_err(|_| Errno::EINVAL)?;
        let range = LockRange::from_start(&key).ok_or(Errno::EINVAL)?;
        let mode = |v: u8| LockMode::from_wire(v).ok_or(Errno::EINVAL);
        if b[42..48].iter().any(|&x| x != 0) {
            return Err(Errno::EINVAL);
        }
        Ok(NetLock {
            range,
            write_seq: get_u64(b, 32),
            old_mode: mode(b[40])?,
            new_mode: mode(b[41])?,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; Self::BYTES];
        b[..KEY_BYTES].copy_from_slice(&self.range.start.to_bytes());
        put_u64(&mut b, 32, self.write_seq);
        b[40] = self.old_mode.to_wire();
        b[41] = self.new_mode.to_wire();
        b
    }
}

/// Most locks in one LOCK_RECOVER reply (`SCOUTFS_NET_LOCK_MAX_RECOVER_NR`).
pub const LOCK_RECOVER_MAX_NR: usize = 22;

/// `scoutfs_net_lock_recover`: a mount's answer to LOCK_RECOVER, the locks
/// it holds from the asked key on, in key order (`old_mode == new_mode`:
/// the mode held, or the mode being invalidated from). Layout: `nr` u16,
/// 6 zero bytes, `nr` [`NetLock`]s. Decoding refuses more than
/// [`LOCK_RECOVER_MAX_NR`], a length that is not exactly `8 + nr * 48`,
/// non-zero padding and any bad lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockRecover {
    pub locks: Vec<NetLock>,
}

impl LockRecover {
    pub const HEADER_BYTES: usize = 8;

    pub fn decode(b: &[u8]) -> Result<Self, Errno> {
        if b.len() < Self::HEADER_BYTES || b[2..8].iter().any(|&x| x != 0) {
            return Err(Errno::EINVAL);
        }
        let nr = u16::from_le_bytes([b[0], b[1]]) as usize;
        if nr > LOCK_RECOVER_MAX_NR || b.len() != Self::HEADER_BYTES + nr * NetLock::BYTES {
            return Err(Errno::EINVAL);
        }
        let locks = b[Self::HEADER_BYTES..]
            .chunks_exact(NetLock::BYTES)
            .map(NetLock::decode)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LockRecover { locks })
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(self.locks.len() <= LOCK_RECOVER_MAX_NR, "too many locks");
        let mut b = vec![0u8; Self::HEADER_BYTES];
        b[..2].copy_from_slice(&(self.locks.len() as u16).to_le_bytes());
        for l in &self.locks {
            b.extend_from_slice(&l.encode());
        }
        b
    }
}

/// `scoutfs_net_inode_alloc` (16): `nr` inode numbers from `ino`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeAlloc {
    pub ino: u64,
    pub nr: u64,
}

impl InodeAlloc {
    pub const BYTES: usize = 16;

    pub fn decode(b: &[u8]) -> Result<Self, Errno> {
        need(b, Self::BYTES)?;
        let a = InodeAlloc {
            ino: get_u64(b, 0),
            nr: get_u64(b, 8),
        };
        if a.nr > 0 && a.ino.checked_add(a.nr).is_none() {
            return Err(Errno::EINVAL);
        }
        Ok(a)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; Self::BYTES];
        put_u64(&mut b, 0, self.ino);
        put_u64(&mut b, 8, self.nr);
        b
    }
}

/// `scoutfs_net_roots` (72): the stable roots readers use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRoots {
    pub fs_root: BtreeRoot,
    pub logs_root: BtreeRoot,
    pub srch_root: BtreeRoot,
}

impl NetRoots {
    pub const BYTES: usize = 72;

    pub fn decode(b: &[u8]) -> Result<Self, Errno> {
        need(b, Self::BYTES)?;
        let r = NetRoots {
            fs_root: BtreeRoot::decode(&b[0..24]),
            logs_root: BtreeRoot::decode(&b[24..48]),
            srch_root: BtreeRoot::decode(&b[48..72]),
        };
        for root in [r.fs_root, r.logs_root, r.srch_root] {
            if root.height > BtreeRoot::MAX_HEIGHT {
                return Err(Errno::EINVAL);
            }
        }
        Ok(r)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; Self::BYTES];
        self.fs_root.encode(&mut b[0..24]);
        self.logs_root.encode(&mut b[24..48]);
        self.srch_root.encode(&mut b[48..72]);
        b
    }
}

/// `scoutfs_net_statfs` (56).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStatfs {
    pub uuid: [u8; 16],
    pub free_meta_blocks: u64,
    pub total_meta_blocks: u64,
    pub free_data_blocks: u64,
    pub total_data_blocks: u64,
    pub inode_count: u64,
}

impl NetStatfs {
    pub const BYTES: usize = 56;

    pub fn decode(b: &[u8]) -> Result<Self, Errno> {
        need(b, Self::BYTES)?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0..16]);
        Ok(NetStatfs {
            uuid,
            free_meta_blocks: get_u64(b, 16),
            total_meta_blocks: get_u64(b, 24),
            free_data_blocks: get_u64(b, 32),
            total_data_blocks: get_u64(b, 40),
            inode_count: get_u64(b, 48),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; Self::BYTES];
        b[0..16].copy_from_slice(&self.uuid);
        put_u64(&mut b, 16, self.free_meta_blocks);
        put_u64(&mut b, 24, self.total_meta_blocks);
        put_u64(&mut b, 32, self.free_data_blocks);
        put_u64(&mut b, 40, self.total_data_blocks);
        put_u64(&mut b, 48, self.inode_count);
        b
    }
}

/// Inodes per open-inode map group (the inode lock group).
pub const OMAP_GROUP_INODES: u64 = 1024;
/// u64 words of one group's bitmap.
pub const OMAP_WORDS: usize = (OMAP_GROUP_INODES / 64) as usize;

/// One group's open-inode bitmap: bit `ino & 1023` is set when a mount
/// has inode `(group_nr << 10) | bit` open.
pub type OmapBits = [u64; OMAP_WORDS];

/// Is `ino`'s bit set in `bits` (its group's map)?
pub fn omap_test(bits: &OmapBits, ino: u64) -> bool {
    let b = ino & (OMAP_GROUP_INODES - 1);
    bits[(b / 64) as usize] & (1u64 << (b % 64)) != 0
}

/// Set `ino`'s bit in `bits` (its group's map).
pub fn omap_set(bits: &mut OmapBits, ino: u64) {
    let b = ino & (OMAP_GROUP_INODES - 1);
    bits[(b / 64) as usize] |= 1u64 << (b % 64);
}

/// `scoutfs_open_ino_map_args` (16): which group, and the server's
/// request id (0 from a mount asking the server; the server's own id when
/// it asks a mount).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenInoMapArgs {
    pub group_nr: u64,
    pub req_id: u64,
}

impl OpenInoMapArgs {
    pub const BYTES: usize = 16;

    pub fn decode(b: &[u8]) -> Result<Self, Errno> {
        need(b, Self::BYTES)?;
        let a = OpenInoMapArgs {
            group_nr: get_u64(b, 0),
            req_id: get_u64(b, 8),
        };
        // a group names inodes: its first inode number must fit
        if a.group_nr > u64::MAX / OMAP_GROUP_INODES {
            return Err(Errno::EINVAL);
        }
        Ok(a)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; Self::BYTES];
        put_u64(&mut b, 0, self.group_nr);
        put_u64(&mut b, 8, self.req_id);
        b
    }
}

/// `scoutfs_open_ino_map` (144): the args echoed and the 1024-bit map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenInoMap {
    pub args: OpenInoMapArgs,
    pub bits: OmapBits,
}

impl OpenInoMap {
    pub const BYTES: usize = OpenInoMapArgs::BYTES + OMAP_WORDS * 8;

    pub fn decode(b: &[u8]) -> Result<Self, Errno> {
        need(b, Self::BYTES)?;
        let args = OpenInoMapArgs::decode(&b[..OpenInoMapArgs::BYTES])?;
        let mut bits = [0u64; OMAP_WORDS];
        for (i, w) in bits.iter_mut().enumerate() {
            *w = get_u64(b, OpenInoMapArgs::BYTES + i * 8);
        }
        Ok(OpenInoMap { args, bits })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.args.encode();
        b.resize(Self::BYTES, 0);
        for (i, w) in self.bits.iter().enumerate() {
            put_u64(&mut b, OpenInoMapArgs::BYTES + i * 8, *w);
        }
        b
    }
}

/// A request as the server sees it, payload decoded and size-checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Greeting(Greeting),
    AllocInodes(u64),
    GetLogTrees,
    CommitLogTrees(Box<LogTrees>),
    SyncLogTrees,
    GetRoots,
    GetLastSeq,
    GetLogMerge,
    CommitLogMerge(Box<MergeComplete>),
    Statfs,
    Farewell,
    Ping,
    /// A lock request (mount to server) or an invalidation (server to
    /// mount): see [`NetLock`].
    Lock(NetLock),
    /// The server asks a mount for the locks it holds from this key on
    /// (server to mount, after a failover).
    LockRecover(Key),
    /// Which inodes of a group are open: a mount asks the server
    /// (`req_id == 0`) for every other mount's map, the server asks each
    /// mount for its own (its `req_id`).
    OpenInoMap(OpenInoMapArgs),
    /// A valid command this node does not serve yet (lock recovery, srch
    /// compaction, omap, volume options, resize): answered with EINVAL.
    Unsupported(u8),
}

fn empty(b: &[u8]) -> Result<(), Errno> {
    need(b, 0)
}

impl Request {
    /// Decode the payload of a request frame with command `c`.
    pub fn decode(c: u8, b: &[u8]) -> Result<Request, Errno> {
        Ok(match c {
            cmd::GREETING => Request::Greeting(Greeting::decode(b)?),
            cmd::ALLOC_INODES => Request::AllocInodes(decode_u64(b)?),
            cmd::GET_LOG_TREES => empty(b).map(|_| Request::GetLogTrees)?,
            cmd::COMMIT_LOG_TREES => {
                Request::CommitLogTrees(Box::new(LogTrees::decode(b).map_err(|_| Errno::EINVAL)?))
            }
            cmd::SYNC_LOG_TREES => empty(b).map(|_| Request::SyncLogTrees)?,
            cmd::GET_ROOTS => empty(b).map(|_| Request::GetRoots)?,
            cmd::GET_LAST_SEQ => empty(b).map(|_| Request::GetLastSeq)?,
            cmd::GET_LOG_MERGE => empty(b).map(|_| Request::GetLogMerge)?,
            cmd::COMMIT_LOG_MERGE => Request::CommitLogMerge(Box::new(
                MergeComplete::decode(b).map_err(|_| Errno::EINVAL)?,
            )),
            cmd::STATFS => empty(b).map(|_| Request::Statfs)?,
            cmd::FAREWELL => empty(b).map(|_| Request::Farewell)?,
            cmd::PING => empty(b).map(|_| Request::Ping)?,
            cmd::LOCK => Request::Lock(NetLock::decode(b)?),
            cmd::LOCK_RECOVER => {
                need(b, KEY_BYTES)?;
                let mut kb = [0u8; KEY_BYTES];
                kb.copy_from_slice(b);
                Request::LockRecover(Key::decode_strict(&kb).map_err(|_| Errno::EINVAL)?)
            }
            cmd::OPEN_INO_MAP => Request::OpenInoMap(OpenInoMapArgs::decode(b)?),
            c if c < cmd::UNKNOWN => Request::Unsupported(c),
            _ => return Err(Errno::EINVAL),
        })
    }

    pub fn cmd(&self) -> u8 {
        match self {
            Request::Greeting(_) => cmd::GREETING,
            Request::AllocInodes(_) => cmd::ALLOC_INODES,
            Request::GetLogTrees => cmd::GET_LOG_TREES,
            Request::CommitLogTrees(_) => cmd::COMMIT_LOG_TREES,
            Request::SyncLogTrees => cmd::SYNC_LOG_TREES,
            Request::GetRoots => cmd::GET_ROOTS,
            Request::GetLastSeq => cmd::GET_LAST_SEQ,
            Request::GetLogMerge => cmd::GET_LOG_MERGE,
            Request::CommitLogMerge(_) => cmd::COMMIT_LOG_MERGE,
            Request::Statfs => cmd::STATFS,
            Request::Farewell => cmd::FAREWELL,
            Request::Ping => cmd::PING,
            Request::Lock(_) => cmd::LOCK,
            Request::LockRecover(_) => cmd::LOCK_RECOVER,
            Request::OpenInoMap(_) => cmd::OPEN_INO_MAP,
            Request::Unsupported(c) => *c,
        }
    }

    pub fn encode_payload(&self) -> Vec<u8> {
        match self {
            Request::Greeting(g) => g.encode(),
            Request::AllocInodes(n) => encode_u64(*n),
            Request::CommitLogTrees(lt) => lt.encode().to_vec(),
            Request::CommitLogMerge(c) => c.encode().to_vec(),
            Request::Lock(l) => l.encode(),
            Request::LockRecover(k) => k.to_bytes().to_vec(),
            Request::OpenInoMap(a) => a.encode(),
            _ => Vec::new(),
        }
    }
}

/// Decode a `log_trees` reply.
pub fn decode_log_trees(b: &[u8]) -> Result<LogTrees, Errno> {
    LogTrees::decode(b).map_err(|_| Errno::EINVAL)
}

/// Decode a `log_merge_request` reply.
pub fn decode_merge_request(b: &[u8]) -> Result<MergeRequest, Errno> {
    MergeRequest::decode(b).map_err(|_| Errno::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::key::Key;
    use crate::runtime::env::{Entropy, SeededEntropy};

    #[test]
    fn lock_recover_round_trips_and_refuses_bad_lengths() {
        let l = |ino| NetLock {
            range: LockRange::inode_group(ino),
            write_seq: ino + 1,
            old_mode: LockMode::Write,
            new_mode: LockMode::Write,
        };
        let r = LockRecover {
            locks: (0..LOCK_RECOVER_MAX_NR as u64)
                .map(|i| l(i << 20))
                .collect(),
        };
        let b = r.encode();
        assert_eq!(b.len(), 8 + 22 * 48);
        assert_eq!(LockRecover::decode(&b).unwrap(), r);
        assert_eq!(
            LockRecover::decode(&LockRecover::default().encode())
                .unwrap()
                .locks
                .len(),
            0
        );
        assert!(LockRecover::decode(&b[..b.len() - 1]).is_err());
        let mut over = b.clone();
        over[0] = 23;
        over.extend_from_slice(&l(0).encode());
        assert!(LockRecover::decode(&over).is_err(), "more than 22");
        let mut pad = b.clone();
        pad[5] = 1;
        assert!(LockRecover::decode(&pad).is_err());
        assert!(LockRecover::decode(&[]).is_err());
        let k = LockRange::inode_group(1 << 20).start;
        let q = Request::LockRecover(k);
        assert_eq!(
            Request::decode(cmd::LOCK_RECOVER, &q.encode_payload()).unwrap(),
            q
        );
        assert!(Request::decode(cmd::LOCK_RECOVER, &[0u8; 31]).is_err());
    }

    #[test]
    fn open_ino_maps_round_trip_and_refuse_bad_sizes() {
        let a = OpenInoMapArgs {
            group_nr: 77,
            req_id: 5,
        };
        let q = Request::OpenInoMap(a);
        let b = q.encode_payload();
        assert_eq!(b.len(), 16);
        assert_eq!(Request::decode(cmd::OPEN_INO_MAP, &b), Ok(q));
        assert!(Request::decode(cmd::OPEN_INO_MAP, &b[..15]).is_err());
        assert!(Request::decode(cmd::OPEN_INO_MAP, &[0u8; 17]).is_err());
        let mut huge = b.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Request::decode(cmd::OPEN_INO_MAP, &huge).is_err());
        let mut m = OpenInoMap {
            args: a,
            bits: [0; OMAP_WORDS],
        };
        omap_set(&mut m.bits, 77 * 1024 + 1023);
        omap_set(&mut m.bits, 77 * 1024 + 64);
        let e = m.encode();
        assert_eq!(e.len(), 144);
        let d = OpenInoMap::decode(&e).unwrap();
        assert_eq!(d, m);
        assert!(omap_test(&d.bits, 1023) && omap_test(&d.bits, 64));
        assert!(!omap_test(&d.bits, 63) && !omap_test(&d.bits, 65));
        assert!(OpenInoMap::decode(&e[..143]).is_err());
        assert!(OpenInoMap::decode(&b).is_err());
    }

    fn hdr(cmd: u8, flags: u8, error: u8) -> Header {
        Header {
            seq: 3,
            recv_seq: 2,
            id: 9,
            data_len: 0,
            cmd,
            flags,
            error,
        }
    }

    #[test]
    fn net_locks_round_trip_and_refuse_what_names_no_lock() {
        use crate::cluster::lock::{LockMode, LockRange};
        use crate::format::key::ty;
        for range in [
            LockRange::inode_group(5000),
            LockRange::inode_index(ty::INODE_INDEX_DATA_SEQ, 9000),
            LockRange::orphan(),
            LockRange::rename(),
            LockRange::xattr_totl(),
        ] {
            let l = NetLock {
                range,
                write_seq: 77,
                old_mode: LockMode::Read,
                new_mode: LockMode::Write,
            };
            let b = Request::Lock(l).encode_payload();
            assert_eq!(b.len(), NetLock::BYTES);
            assert_eq!(Request::decode(cmd::LOCK, &b), Ok(Request::Lock(l)));
        }
        let good = NetLock {
            range: LockRange::inode_group(0),
            write_seq: 0,
            old_mode: LockMode::Null,
            new_mode: LockMode::Read,
        }
        .encode();
        let mut mid_group = good.clone();
        mid_group[..KEY_BYTES].copy_from_slice(&Key::fs(5, ty::INODE, 0, 0).to_bytes());
        let mut bad_mode = good.clone();
        bad_mode[41] = 4;
        let mut pad = good.clone();
        pad[47] = 1;
        let mut other_lock_key = good.clone();
        let mut k = LockRange::rename().start;
        k.first += 1;
        other_lock_key[..KEY_BYTES].copy_from_slice(&k.to_bytes());
        for b in [
            mid_group,
            bad_mode,
            pad,
            other_lock_key,
            good[..47].to_vec(),
        ] {
            assert_eq!(NetLock::decode(&b), Err(Errno::EINVAL));
        }
    }

    #[test]
    fn header_layout_and_rules() {
        let f = encode_frame(&hdr(cmd::STATFS, FLAG_RESPONSE, 0), &[7; 56]);
        assert_eq!(f.len(), 88);
        assert_eq!(get_u64(&f, 0), 3);
        assert_eq!(get_u64(&f, 8), 2);
        assert_eq!(get_u64(&f, 16), 9);
        assert_eq!(get_u16(&f, 24), 56);
        assert_eq!((f[26], f[27], f[28]), (cmd::STATFS, 1, 0));
        let h = Header::decode(&f).unwrap();
        assert_eq!(h.data_len, 56);
        let bad = |mutate: &dyn Fn(&mut Vec<u8>)| {
            let mut b = f.clone();
            mutate(&mut b);
            Header::decode(&b)
        };
        assert_eq!(bad(&|b| b[0..8].fill(0)), Err(FrameError::ZeroSeq));
        assert_eq!(bad(&|b| b[16..24].fill(0)), Err(FrameError::ZeroId));
        assert_eq!(bad(&|b| b[26] = 21), Err(FrameError::UnknownCmd(21)));
        assert_eq!(bad(&|b| b[27] = 3), Err(FrameError::UnknownFlags(3)));
        assert_eq!(bad(&|b| b[28] = 7), Err(FrameError::UnknownError(7)));
        assert_eq!(
            bad(&|b| put_u16(b, 24, 1101)),
            Err(FrameError::TooLong(1101))
        );
        assert_eq!(bad(&|b| b[31] = 1), Err(FrameError::PadNotZero));
        assert_eq!(
            bad(&|b| {
                b[27] = 0;
                b[28] = 1;
            }),
            Err(FrameError::ErrorInRequest)
        );
        assert_eq!(bad(&|b| b[28] = 1), Err(FrameError::ErrorWithPayload));
    }

    #[test]
    fn decoder_reassembles_split_frames() {
        let mut stream = Vec::new();
        let frames: Vec<(Header, Vec<u8>)> = (1..=5u64)
            .map(|i| {
                let h = Header {
                    seq: i,
                    id: i,
                    cmd: cmd::ALLOC_INODES,
                    ..Header::default()
                };
                (h, encode_u64(i * 100))
            })
            .collect();
        for (h, p) in &frames {
            stream.extend(encode_frame(h, p));
        }
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(7) {
            d.push(chunk).unwrap();
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 5);
        for (f, (h, p)) in got.iter().zip(&frames) {
            assert_eq!(f.header.seq, h.seq);
            assert_eq!(&f.payload, p);
            assert_eq!(
                Request::decode(f.header.cmd, &f.payload),
                Ok(Request::AllocInodes(f.header.seq * 100))
            );
        }
        let mut d = FrameDecoder::new();
        assert_eq!(
            d.push(&vec![0; DECODER_MAX_BUFFERED + 1]),
            Err(FrameError::Overflow)
        );
    }

    #[test]
    fn payloads_round_trip_and_sizes_are_exact() {
        let g = Greeting {
            fsid: 1,
            fmt_vers: 2,
            server_term: 3,
            rid: 4,
            flags: GREETING_FLAG_QUORUM,
        };
        assert_eq!(Greeting::decode(&g.encode()), Ok(g));
        let mut b = g.encode();
        b[32] = 4;
        assert_eq!(Greeting::decode(&b), Err(Errno::EINVAL));
        assert_eq!(Greeting::decode(&b[..39]), Err(Errno::EINVAL));
        let a = InodeAlloc { ino: 1024, nr: 10 };
        assert_eq!(InodeAlloc::decode(&a.encode()), Ok(a));
        let over = InodeAlloc {
            ino: u64::MAX,
            nr: 2,
        };
        assert!(InodeAlloc::decode(&over.encode()).is_err());
        let r = NetRoots {
            fs_root: BtreeRoot {
                bref: crate::format::block::BlockRef { blkno: 5, seq: 6 },
                height: 2,
            },
            ..NetRoots::default()
        };
        assert_eq!(NetRoots::decode(&r.encode()), Ok(r));
        let s = NetStatfs {
            uuid: [3; 16],
            free_meta_blocks: 1,
            total_meta_blocks: 2,
            free_data_blocks: 3,
            total_data_blocks: 4,
            inode_count: 5,
        };
        assert_eq!(NetStatfs::decode(&s.encode()), Ok(s));
        let c = MergeComplete {
            start: Key::MIN,
            end: Key::MAX,
            seq: 3,
            ..MergeComplete::default()
        };
        let req = Request::CommitLogMerge(Box::new(c));
        assert_eq!(
            Request::decode(req.cmd(), &req.encode_payload()),
            Ok(req.clone())
        );
        assert_eq!(Request::decode(cmd::GET_ROOTS, &[1]), Err(Errno::EINVAL));
        // LOCK is served now: 48 zero bytes name the lock of zone 0
        assert!(matches!(
            Request::decode(cmd::LOCK, &[0; 48]),
            Ok(Request::Lock(l)) if l.range.start == Key::MIN && l.new_mode == LockMode::Null
        ));
        assert_eq!(Request::decode(200, &[]), Err(Errno::EINVAL));
        assert_eq!(Request::decode(cmd::PING, &[]), Ok(Request::Ping));
        assert_eq!(Request::decode(cmd::PING, &[0]), Err(Errno::EINVAL));
        for e in [Errno::ENOENT, Errno::EIO, Errno::ENOSPC, Errno::ENOLINK] {
            assert_eq!(wire_to_errno(errno_to_wire(e)), e);
        }
        assert_eq!(errno_to_wire(Errno::EPERM), wire_err::EINVAL);
    }

    #[test]
    fn random_bytes_never_panic() {
        let e = SeededEntropy::new(11);
        for round in 0..4000u64 {
            let len = (e.next_u64() % 200) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| e.next_u64() as u8).collect();
            if round % 2 == 0 && bytes.len() >= HEADER_BYTES {
                // mostly-valid headers reach the payload decoders
                let h = Header {
                    seq: 1 + e.next_u64() % 4,
                    id: 1 + e.next_u64() % 4,
                    cmd: (e.next_u64() % cmd::UNKNOWN as u64) as u8,
                    flags: (e.next_u64() % 2) as u8,
                    ..Header::default()
                };
                let payload_len = bytes.len() - HEADER_BYTES;
                let f = encode_frame(&h, &bytes[HEADER_BYTES..]);
                bytes = f;
                assert_eq!(bytes.len(), HEADER_BYTES + payload_len);
            }
            let mut d = FrameDecoder::new();
            let _ = d.push(&bytes);
            while let Ok(Some(f)) = d.next_frame() {
                let _ = Request::decode(f.header.cmd, &f.payload);
                let _ = decode_log_trees(&f.payload);
                let _ = decode_merge_request(&f.payload);
                let _ = NetRoots::decode(&f.payload);
                let _ = NetStatfs::decode(&f.payload);
            }
            // every possible payload size of the fixed structures
            let _ = LogTrees::decode(&bytes);
            let _ = MergeComplete::decode(&bytes);
        }
    }
}
