//! The quorum blocks on the meta device (reference §4.1, §4.4, §4.5): one
//! 4 KiB block per slot at blkno 17 + slot, holding six events (BEGIN,
//! TERM, ELECT, FENCE, STOP, END), each `{write_nr, rid, term, time}`.
//!
//! Only a slot's owner writes its block, read-modify-write, then a flush
//! (the write is not done until it is durable). Everybody reads them: a
//! starting member for the greatest term, clients to find the leader
//! ([`find_leader`]), a new leader for the predecessors to fence
//! ([`fence_candidates`]). Uncached: every read goes to the device.

use crate::counter;
use crate::format::hash::crc32c_block;
use crate::format::quorum::{QuorumBlock, QuorumEvent};
use crate::format::super_block::{QuorumConfig, SuperBlock};
use crate::format::{MAGIC_QUORUM, QUORUM_BLKNO, SM_BLOCK_SHIFT, SM_BLOCK_SIZE};
use crate::runtime::env::Timespec;
use crate::storage::block::seal_block;
use crate::storage::dev::{BlockDev, IoError};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// The events of a quorum block, in their on-disk order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum QEvent {
    Begin = 0,
    Term = 1,
    Elect = 2,
    Fence = 3,
    Stop = 4,
    End = 5,
}

/// Why a quorum block could not be read or written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QbError {
    Io(IoError),
    /// Bad crc, magic, fsid or blkno.
    Corrupt {
        slot: usize,
        why: &'static str,
    },
    /// Another mount wrote BEGIN in our slot (two mounts on one slot).
    NotOurs {
        slot: usize,
        rid: u64,
    },
    /// The write would lower the slot's persisted term (a bug: refused).
    TermWentBack {
        slot: usize,
        have: u64,
        write: u64,
    },
    /// The slot is not configured in the super block.
    NoSlot {
        slot: usize,
    },
}

impl core::fmt::Display for QbError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            QbError::Io(e) => write!(f, "quorum block i/o: {e}"),
            QbError::Corrupt { slot, why } => write!(f, "quorum block of slot {slot}: {why}"),
            QbError::NotOurs { slot, rid } => write!(
                f,
                "quorum slot {slot} was started by another mount (rid {rid:016x}): two mounts configured on one slot?"
            ),
            QbError::TermWentBack { slot, have, write } => write!(
                f,
                "refused to lower quorum slot {slot}'s term from {have} to {write}"
            ),
            QbError::NoSlot { slot } => write!(f, "quorum slot {slot} is not configured"),
        }
    }
}

impl From<IoError> for QbError {
    fn from(e: IoError) -> Self {
        QbError::Io(e)
    }
}

fn off(slot: usize) -> u64 {
    (QUORUM_BLKNO + slot as u64) << SM_BLOCK_SHIFT
}

/// The greatest term of any event of a block.
pub fn block_term(b: &QuorumBlock) -> u64 {
    b.events.iter().map(|e| e.term).max().unwrap_or(0)
}

/// Read and check one slot's block.
pub fn read_block(dev: &dyn BlockDev, fsid: u64, slot: usize) -> Result<QuorumBlock, QbError> {
    if slot >= crate::format::QUORUM_BLOCKS as usize {
        return Err(QbError::NoSlot { slot });
    }
    let mut b = vec![0u8; SM_BLOCK_SIZE];
    dev.read(off(slot), &mut b)?;
    let q = QuorumBlock::decode(&b);
    let why = if q.hdr.crc != crc32c_block(&b) {
        Some("crc mismatch")
    } else if q.hdr.magic != MAGIC_QUORUM {
        Some("bad magic")
    } else if q.hdr.fsid != fsid {
        Some("another volume's fsid")
    } else if q.hdr.blkno != QUORUM_BLKNO + slot as u64 {
        Some("wrong blkno")
    } else {
        None
    };
    match why {
        Some(why) => {
            counter!("quorum.block_corrupt").inc();
            Err(QbError::Corrupt { slot, why })
        }
        None => Ok(q),
    }
}

/// Every configured slot's block, by slot (`None`: unreadable).
pub fn read_all(
    dev: &dyn BlockDev,
    fsid: u64,
    qconf: &QuorumConfig,
) -> Vec<(usize, Result<QuorumBlock, QbError>)> {
    qconf
        .configured()
        .map(|(s, _)| (s, read_block(dev, fsid, s)))
        .collect()
}

/// The greatest term in any event of any configured slot (a starting
/// member begins there); unreadable blocks are skipped.
pub fn greatest_term(dev: &dyn BlockDev, fsid: u64, qconf: &QuorumConfig) -> u64 {
    read_all(dev, fsid, qconf)
        .iter()
        .filter_map(|(_, b)| b.as_ref().ok().map(block_term))
        .max()
        .unwrap_or(0)
}

/// One slot owner's writer: read-modify-write of its block, then flush.
pub struct SlotWriter {
    pub fsid: u64,
    pub slot: usize,
    pub rid: u64,
    /// BEGIN is written: later writes check the block is still ours.
    begun: bool,
}

impl SlotWriter {
    pub fn new(fsid: u64, slot: usize, rid: u64) -> SlotWriter {
        SlotWriter {
            fsid,
            slot,
            rid,
            begun: false,
        }
    }

    /// Record `events` (each at `term`) in one write, then flush. Checks
    /// that the block is still ours (after BEGIN) and that the slot's
    /// greatest term never goes down.
    pub fn write(
        &mut self,
        dev: &dyn BlockDev,
        events: &[(QEvent, u64)],
        now: Timespec,
    ) -> Result<QuorumBlock, QbError> {
        let mut q = read_block(dev, self.fsid, self.slot)?;
        let begin = q.events[QEvent::Begin as usize];
        if self.begun && begin.rid != self.rid {
            return Err(QbError::NotOurs {
                slot: self.slot,
                rid: begin.rid,
            });
        }
        let have = block_term(&q);
        q.write_nr = q.write_nr.saturating_add(1);
        for &(ev, term) in events {
            // only TERM and ELECT carry a new term; the others repeat ours
            if matches!(ev, QEvent::Term | QEvent::Elect) && term < have {
                return Err(QbError::TermWentBack {
                    slot: self.slot,
                    have,
                    write: term,
                });
            }
            q.events[ev as usize] = QuorumEvent {
                write_nr: q.write_nr,
                rid: self.rid,
                term,
                ts: now,
            };
        }
        let mut b = vec![0u8; SM_BLOCK_SIZE];
        q.encode(&mut b);
        seal_block(&mut b);
        dev.write(off(self.slot), &b)?;
        dev.flush()?;
        counter!("quorum.block_writes").inc();
        if events.iter().any(|&(e, _)| e == QEvent::Begin) {
            self.begun = true;
        }
        q.hdr.crc = crate::format::le::get_u32(&b, 0);
        Ok(q)
    }
}

/// The leader's address from the quorum blocks (§4.4): the slot with the
/// greatest ELECT term among those whose ELECT is newer than their STOP.
/// `None`: no leader recorded (try again later). A stale answer is
/// harmless: connecting fails and the client asks again.
pub fn find_leader(dev: &dyn BlockDev, sb: &SuperBlock) -> Option<LeaderAddr> {
    let mut best: Option<LeaderAddr> = None;
    for (slot, b) in read_all(dev, sb.hdr.fsid, &sb.qconf) {
        let Ok(b) = b else { continue };
        let el = b.events[QEvent::Elect as usize];
        let st = b.events[QEvent::Stop as usize];
        if el.term > st.term && best.as_ref().is_none_or(|l| el.term > l.term) {
            best = Some(LeaderAddr {
                slot,
                term: el.term,
                rid: el.rid,
                addr: format!("{}", sb.qconf.slots[slot]),
            });
        }
    }
    best
}

/// Where the leader is, as the quorum blocks say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderAddr {
    pub slot: usize,
    pub term: u64,
    pub rid: u64,
    /// `"a.b.c.d:port"`.
    pub addr: String,
}

/// A predecessor a new leader must fence (§4.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Predecessor {
    pub slot: usize,
    pub rid: u64,
    pub term: u64,
}

/// The earlier leaders a new leader of `term` with `rid` must fence, from
/// the blocks of every configured slot: a slot's ELECT newer than its STOP
/// (a leader that never recorded a stop), and its FENCE newer than its STOP
/// but older than its ELECT (an earlier life not recorded as stopped);
/// only those at or after the latest FENCE of any slot (older ones were
/// fenced by that leader), below `term` (a leader of the same or a higher
/// term is no predecessor: it is a concurrent leader, and the one of the
/// lower term yields or is fenced by the higher), and not our own rid.
pub fn fence_candidates(
    blocks: &[(usize, Result<QuorumBlock, QbError>)],
    rid: u64,
    term: u64,
) -> Vec<Predecessor> {
    let fenced = blocks
        .iter()
        .filter_map(|(_, b)| b.as_ref().ok())
        .map(|b| b.events[QEvent::Fence as usize].term)
        .max()
        .unwrap_or(0);
    let mut out: Vec<Predecessor> = Vec::new();
    for (slot, b) in blocks {
        let Ok(b) = b else { continue };
        let el = b.events[QEvent::Elect as usize];
        let fe = b.events[QEvent::Fence as usize];
        let st = b.events[QEvent::Stop as usize];
        let mut cands = Vec::new();
        if el.term > st.term {
            cands.push(el);
        }
        if fe.term > st.term && fe.term < el.term {
            cands.push(fe);
        }
        for e in cands {
            if e.term != 0
                && e.term >= fenced
                && e.term < term
                && e.rid != rid
                && !out.iter().any(|p| p.rid == e.rid)
            {
                out.push(Predecessor {
                    slot: *slot,
                    rid: e.rid,
                    term: e.term,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::block::BlockHeader;
    use crate::storage::dev::MemDev;

    const FSID: u64 = 0xf5;

    fn dev() -> MemDev {
        let d = MemDev::new(1 << 20);
        for s in 0..15u64 {
            let mut b = vec![0u8; SM_BLOCK_SIZE];
            let q = QuorumBlock {
                hdr: BlockHeader {
                    magic: MAGIC_QUORUM,
                    fsid: FSID,
                    seq: 1,
                    blkno: QUORUM_BLKNO + s,
                    crc: 0,
                },
                ..Default::default()
            };
            q.encode(&mut b);
            seal_block(&mut b);
            d.write(off(s as usize), &b).unwrap();
        }
        d
    }

    const T: Timespec = Timespec { sec: 1, nsec: 0 };

    #[test]
    fn writes_are_read_back_and_terms_never_go_back() {
        let d = dev();
        let mut w = SlotWriter::new(FSID, 1, 0xaa);
        w.write(&d, &[(QEvent::Begin, 3)], T).unwrap();
        w.write(&d, &[(QEvent::Term, 5)], T).unwrap();
        let q = read_block(&d, FSID, 1).unwrap();
        assert_eq!(q.write_nr, 2);
        assert_eq!(block_term(&q), 5);
        assert_eq!(
            w.write(&d, &[(QEvent::Term, 4)], T),
            Err(QbError::TermWentBack {
                slot: 1,
                have: 5,
                write: 4
            })
        );
        // another mount takes the slot: ours notices
        SlotWriter::new(FSID, 1, 0xbb)
            .write(&d, &[(QEvent::Begin, 5)], T)
            .unwrap();
        assert_eq!(
            w.write(&d, &[(QEvent::Term, 6)], T),
            Err(QbError::NotOurs { slot: 1, rid: 0xbb })
        );
        assert!(matches!(
            read_block(&d, 0x99, 1),
            Err(QbError::Corrupt { .. })
        ));
    }

    fn qconf(n: usize) -> QuorumConfig {
        let mut q = QuorumConfig::default();
        for i in 0..n {
            q.slots[i] = crate::format::super_block::InetAddr::ipv4([10, 0, 0, i as u8], 7000);
        }
        q
    }

    #[test]
    fn leader_discovery_and_predecessors() {
        let d = dev();
        let qc = qconf(3);
        let mut sb = SuperBlock::default();
        sb.hdr.fsid = FSID;
        sb.qconf = qc;
        assert_eq!(find_leader(&d, &sb), None);
        // slot 0 led term 2 and stopped; slot 1 leads term 4 (crashed, no
        // stop); slot 2 elected in 6
        let mut w0 = SlotWriter::new(FSID, 0, 0xa0);
        w0.write(&d, &[(QEvent::Elect, 2)], T).unwrap();
        w0.write(&d, &[(QEvent::Stop, 2)], T).unwrap();
        let mut w1 = SlotWriter::new(FSID, 1, 0xa1);
        w1.write(&d, &[(QEvent::Elect, 4)], T).unwrap();
        let l = find_leader(&d, &sb).unwrap();
        assert_eq!((l.slot, l.term, l.addr.as_str()), (1, 4, "10.0.0.1:7000"));
        assert_eq!(greatest_term(&d, FSID, &qc), 4);
        let mut w2 = SlotWriter::new(FSID, 2, 0xa2);
        w2.write(&d, &[(QEvent::Elect, 6)], T).unwrap();
        let all = read_all(&d, FSID, &qc);
        let c = fence_candidates(&all, 0xa2, 6);
        assert_eq!(
            c,
            vec![Predecessor {
                slot: 1,
                rid: 0xa1,
                term: 4
            }]
        );
        // a leader of the same term is no predecessor
        assert_eq!(fence_candidates(&all, 0xa1, 6), vec![]);
        // once slot 2 recorded FENCE(6), term 4 is behind it
        w2.write(&d, &[(QEvent::Fence, 6)], T).unwrap();
        assert_eq!(
            fence_candidates(&read_all(&d, FSID, &qc), 0xa3, 7),
            vec![Predecessor {
                slot: 2,
                rid: 0xa2,
                term: 6
            }]
        );
    }
}
