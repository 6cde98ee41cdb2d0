//! The quorum datagram (reference §2.5): 32 bytes, fsid u64 @0, version
//! u64 @8 (0), term u64 @16, kind u8 @24, sender slot u8 @25, 2 pad, crc
//! u32 @28 (`crc32c_raw(!0, bytes[0..28])`).
//!
//! Decoding never panics: a datagram of the wrong size, with a bad crc, of
//! another volume, of an unknown kind or from a slot that is not configured
//! is counted (`quorum.rx_*`) and dropped.

use crate::counter;
use crate::format::hash::crc32c_raw;
use crate::format::le::{get_u32, get_u64, put_u32, put_u64};

/// Bytes of one quorum datagram.
pub const QUORUM_MSG_BYTES: usize = 32;

/// What a datagram says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MsgKind {
    RequestVote = 0,
    Vote = 1,
    Heartbeat = 2,
    Resignation = 3,
}

impl MsgKind {
    fn from_u8(b: u8) -> Option<MsgKind> {
        Some(match b {
            0 => MsgKind::RequestVote,
            1 => MsgKind::Vote,
            2 => MsgKind::Heartbeat,
            3 => MsgKind::Resignation,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            MsgKind::RequestVote => "request_vote",
            MsgKind::Vote => "vote",
            MsgKind::Heartbeat => "heartbeat",
            MsgKind::Resignation => "resignation",
        }
    }
}

/// A decoded datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumMsg {
    pub fsid: u64,
    pub term: u64,
    pub kind: MsgKind,
    /// The sender's slot.
    pub from: u8,
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    Size,
    Crc,
    /// Another volume's cluster.
    Fsid,
    Kind,
    /// The sender slot is out of range or not configured.
    Slot,
}

impl QuorumMsg {
    pub fn encode(&self) -> [u8; QUORUM_MSG_BYTES] {
        let mut b = [0u8; QUORUM_MSG_BYTES];
        put_u64(&mut b, 0, self.fsid);
        put_u64(&mut b, 8, 0);
        put_u64(&mut b, 16, self.term);
        b[24] = self.kind as u8;
        b[25] = self.from;
        let crc = crc32c_raw(!0, &b[..28]);
        put_u32(&mut b, 28, crc);
        b
    }

    /// Decode a datagram for volume `fsid` whose configured slots are the
    /// set bits of `slots`; every rejection is counted.
    pub fn decode(b: &[u8], fsid: u64, slots: u16) -> Result<QuorumMsg, WireError> {
        let r = Self::check(b, fsid, slots);
        match r {
            Ok(_) => counter!("quorum.rx_ok").inc(),
            Err(WireError::Size) => counter!("quorum.rx_bad_size").inc(),
            Err(WireError::Crc) => counter!("quorum.rx_bad_crc").inc(),
            Err(WireError::Fsid) => counter!("quorum.rx_foreign_fsid").inc(),
            Err(WireError::Kind) => counter!("quorum.rx_bad_kind").inc(),
            Err(WireError::Slot) => counter!("quorum.rx_bad_slot").inc(),
        }
        r
    }

    fn check(b: &[u8], fsid: u64, slots: u16) -> Result<QuorumMsg, WireError> {
        if b.len() != QUORUM_MSG_BYTES {
            return Err(WireError::Size);
        }
        if get_u32(b, 28) != crc32c_raw(!0, &b[..28]) {
            return Err(WireError::Crc);
        }
        if get_u64(b, 0) != fsid {
            return Err(WireError::Fsid);
        }
        let kind = MsgKind::from_u8(b[24]).ok_or(WireError::Kind)?;
        let from = b[25];
        if from >= 15 || slots & (1 << from) == 0 {
            return Err(WireError::Slot);
        }
        Ok(QuorumMsg {
            fsid,
            term: get_u64(b, 16),
            kind,
            from,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::env::{Entropy, SeededEntropy};

    fn msg() -> QuorumMsg {
        QuorumMsg {
            fsid: 0x1234,
            term: 77,
            kind: MsgKind::Heartbeat,
            from: 2,
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let b = msg().encode();
        assert_eq!(get_u64(&b, 16), 77);
        assert_eq!((b[24], b[25]), (2, 2));
        assert_eq!(QuorumMsg::decode(&b, 0x1234, 0b111), Ok(msg()));
    }

    #[test]
    fn foreign_truncated_and_corrupt_datagrams_are_rejected() {
        let b = msg().encode();
        assert_eq!(QuorumMsg::decode(&b, 0x9999, 0b111), Err(WireError::Fsid));
        assert_eq!(
            QuorumMsg::decode(&b[..31], 0x1234, 0b111),
            Err(WireError::Size)
        );
        assert_eq!(QuorumMsg::decode(&b, 0x1234, 0b011), Err(WireError::Slot));
        let mut c = b;
        c[17] ^= 1;
        assert_eq!(QuorumMsg::decode(&c, 0x1234, 0b111), Err(WireError::Crc));
        let mut k = msg();
        k.from = 14;
        assert_eq!(
            QuorumMsg::decode(&k.encode(), 0x1234, 0b111),
            Err(WireError::Slot)
        );
        let mut bad = b;
        bad[24] = 4;
        let crc = crc32c_raw(!0, &bad[..28]);
        put_u32(&mut bad, 28, crc);
        assert_eq!(QuorumMsg::decode(&bad, 0x1234, 0b111), Err(WireError::Kind));
    }

    #[test]
    fn random_bytes_never_panic_and_rarely_decode() {
        let r = SeededEntropy::new(3);
        let mut ok = 0;
        for i in 0..20_000 {
            let len = (r.next_u64() % 40) as usize;
            let mut b: alloc::vec::Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
            if i % 2 == 0 && len == QUORUM_MSG_BYTES {
                // a valid crc, so the later checks are fuzzed too
                let crc = crc32c_raw(!0, &b[..28]);
                put_u32(&mut b, 28, crc);
            }
            if QuorumMsg::decode(&b, 0x1234, 0x7fff).is_ok() {
                ok += 1;
            }
        }
        // random fsids essentially never match
        assert_eq!(ok, 0);
    }
}
