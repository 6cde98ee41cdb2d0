//! `scoutfs_quorum_block` (280 bytes in a 4 KiB block, SM blkno 17 + slot):
//! the election record each quorum slot read-modify-writes.

use super::block::BlockHeader;
use super::le::*;
use crate::runtime::env::Timespec;

pub const QUORUM_BLOCK_BYTES: usize = 280;
/// Event records in order: BEGIN, TERM, ELECT, FENCE, STOP, END.
pub const QUORUM_EVENT_NR: usize = 6;
pub const QUORUM_EVENT_NAMES: [&str; QUORUM_EVENT_NR] =
    ["begin", "term", "elect", "fence", "stop", "end"];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuorumEvent {
    pub write_nr: u64,
    pub rid: u64,
    pub term: u64,
    pub ts: Timespec,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuorumBlock {
    pub hdr: BlockHeader,
    pub write_nr: u64,
    pub events: [QuorumEvent; QUORUM_EVENT_NR],
}

impl QuorumBlock {
    pub const BYTES: usize = QUORUM_BLOCK_BYTES;

    pub fn decode(b: &[u8]) -> Self {
        let mut q = QuorumBlock {
            hdr: BlockHeader::decode(b),
            write_nr: get_u64(b, 32),
            ..Default::default()
        };
        for (i, e) in q.events.iter_mut().enumerate() {
            let o = 40 + i * 40;
            *e = QuorumEvent {
                write_nr: get_u64(b, o),
                rid: get_u64(b, o + 8),
                term: get_u64(b, o + 16),
                ts: Timespec {
                    sec: get_u64(b, o + 24),
                    nsec: get_u32(b, o + 32),
                },
            };
        }
        q
    }

    pub fn encode(&self, b: &mut [u8]) {
        self.hdr.encode(b);
        put_u64(b, 32, self.write_nr);
        for (i, e) in self.events.iter().enumerate() {
            let o = 40 + i * 40;
            put_u64(b, o, e.write_nr);
            put_u64(b, o + 8, e.rid);
            put_u64(b, o + 16, e.term);
            put_u64(b, o + 24, e.ts.sec);
            put_u32(b, o + 32, e.ts.nsec);
            put_u32(b, o + 36, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_round_trip() {
        assert_eq!(40 + QUORUM_EVENT_NR * 40, QUORUM_BLOCK_BYTES);
        let mut q = QuorumBlock {
            write_nr: 3,
            ..Default::default()
        };
        q.events[4].rid = 0xabc;
        q.events[5].ts = Timespec { sec: 5, nsec: 6 };
        let mut b = [0u8; QUORUM_BLOCK_BYTES];
        q.encode(&mut b);
        assert_eq!(QuorumBlock::decode(&b), q);
    }
}
