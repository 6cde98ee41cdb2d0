//! The server's open-inode map fan-out (reference §1.10), sans-IO.
//!
//! A mount about to delete an unlinked inode asks which other mounts
//! still have inodes of its group open. The server gives the question a
//! request id, asks every other mount it knows for its map of that group
//! and answers with the union once the last one answered or left. Mounts
//! are known from their first greeting of this server life until their
//! reclaim (farewell or fencing). While a mount of the last life still
//! owes its greeting (failover recovery), new questions wait: that mount
//! may have the inode open and is not known yet.
//!
//! Called by `role.rs`, which does the messaging: it turns [`OmapOut`]s
//! into calls and replies. Invariants: a pending question waits only for
//! known rids (removing one ends what waited on it); at most `cap`
//! questions are pending or queued; every input from the wire is checked
//! (unknown request ids, rids not asked, another group: errors).

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use crate::cluster::msg::{OmapBits, OpenInoMap, OMAP_WORDS};
use crate::errno::{Errno, FsResult};

/// Questions pending or queued at once, from all mounts (the reference
/// has no bound; ours keeps server memory bounded).
pub const OMAP_MAX_PENDING: usize = 1024;

/// What the server must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OmapOut {
    /// Ask `rid` for its map of `group_nr` under `req_id`.
    Ask {
        rid: u64,
        group_nr: u64,
        req_id: u64,
    },
    /// Answer the question of `token` with `bits`.
    Reply { token: u64, bits: OmapBits },
}

struct Pending {
    token: u64,
    group_nr: u64,
    owed: BTreeSet<u64>,
    bits: OmapBits,
}

struct Queued {
    token: u64,
    asker: u64,
    group_nr: u64,
}

/// The fan-out state of one server life.
pub struct OmapServer {
    cap: usize,
    rids: BTreeSet<u64>,
    pending: BTreeMap<u64, Pending>,
    /// Questions that arrived during recovery, in order.
    queued: VecDeque<Queued>,
    recovering: bool,
    next_req_id: u64,
}

impl OmapServer {
    pub fn new(cap: usize) -> OmapServer {
        assert!(cap > 0, "an omap fan-out needs room for a question");
        OmapServer {
            cap,
            rids: BTreeSet::new(),
            pending: BTreeMap::new(),
            queued: VecDeque::new(),
            recovering: false,
            next_req_id: 1,
        }
    }

    /// Questions pending or queued.
    pub fn outstanding(&self) -> usize {
        self.pending.len() + self.queued.len()
    }

    /// The rids asked for maps.
    pub fn rids(&self) -> Vec<u64> {
        self.rids.iter().copied().collect()
    }

    /// `rid` greeted this server life for the first time.
    pub fn add_rid(&mut self, rid: u64) {
        self.rids.insert(rid);
    }

    /// `rid` was reclaimed (farewell or fencing): questions stop waiting
    /// for it. Its own questions run to their end (their answers go
    /// nowhere), so every question the server took ends with a reply.
    pub fn remove_rid(&mut self, rid: u64) -> Vec<OmapOut> {
        self.rids.remove(&rid);
        let mut out = Vec::new();
        let done: Vec<u64> = self
            .pending
            .iter_mut()
            .filter_map(|(&id, p)| (p.owed.remove(&rid) && p.owed.is_empty()).then_some(id))
            .collect();
        for id in done {
            if let Some(p) = self.pending.remove(&id) {
                out.push(OmapOut::Reply {
                    token: p.token,
                    bits: p.bits,
                });
            }
        }
        out
    }

    /// Some mount of the last life owes its greeting: questions wait.
    pub fn set_recovering(&mut self, recovering: bool) -> Vec<OmapOut> {
        self.recovering = recovering;
        let mut out = Vec::new();
        if !recovering {
            while let Some(q) = self.queued.pop_front() {
                self.start(q, &mut out);
            }
        }
        out
    }

    /// `asker` asks for the map of `group_nr`; `token` names the answer.
    /// `ENOMEM` when [`OMAP_MAX_PENDING`] questions are outstanding.
    pub fn request(&mut self, asker: u64, token: u64, group_nr: u64) -> FsResult<Vec<OmapOut>> {
        if self.outstanding() >= self.cap {
            return Err(Errno::ENOMEM);
        }
        let q = Queued {
            token,
            asker,
            group_nr,
        };
        let mut out = Vec::new();
        if self.recovering {
            self.queued.push_back(q);
        } else {
            self.start(q, &mut out);
        }
        Ok(out)
    }

    fn start(&mut self, q: Queued, out: &mut Vec<OmapOut>) {
        let owed: BTreeSet<u64> = self
            .rids
            .iter()
            .copied()
            .filter(|&r| r != q.asker)
            .collect();
        if owed.is_empty() {
            out.push(OmapOut::Reply {
                token: q.token,
                bits: [0; OMAP_WORDS],
            });
            return;
        }
        let req_id = self.next_req_id;
        // ids are never 0 (a mount's question) and never reused
        self.next_req_id = self.next_req_id.checked_add(1).unwrap_or(1).max(1);
        for &rid in &owed {
            out.push(OmapOut::Ask {
                rid,
                group_nr: q.group_nr,
                req_id,
            });
        }
        self.pending.insert(
            req_id,
            Pending {
                token: q.token,
                group_nr: q.group_nr,
                owed,
                bits: [0; OMAP_WORDS],
            },
        );
    }

    /// Is `rid` still owing `req_id` its map (an ask worth resending)?
    pub fn owes(&self, rid: u64, req_id: u64) -> bool {
        self.pending
            .get(&req_id)
            .is_some_and(|p| p.owed.contains(&rid))
    }

    /// `rid` answered `req_id` with its map of `group_nr`. `ENOENT`: the
    /// question is over or `rid` was not asked (an answer after its
    /// removal, or a duplicate); `EINVAL`: the answer names another group.
    pub fn answer(
        &mut self,
        rid: u64,
        req_id: u64,
        group_nr: u64,
        bits: &OmapBits,
    ) -> FsResult<Vec<OmapOut>> {
        let p = self.pending.get_mut(&req_id).ok_or(Errno::ENOENT)?;
        if p.group_nr != group_nr {
            return Err(Errno::EINVAL);
        }
        if !p.owed.remove(&rid) {
            return Err(Errno::ENOENT);
        }
        for (w, b) in p.bits.iter_mut().zip(bits) {
            *w |= *b;
        }
        if !p.owed.is_empty() {
            return Ok(Vec::new());
        }
        let p = self.pending.remove(&req_id).expect("just found");
        Ok(alloc::vec![OmapOut::Reply {
            token: p.token,
            bits: p.bits,
        }])
    }
}

/// A mount's reply to an ask of `group_nr` under `req_id`: its map,
/// `EINVAL` unless it is exactly an `open_ino_map` echoing the ask.
pub fn decode_answer(group_nr: u64, req_id: u64, b: &[u8]) -> FsResult<OmapBits> {
    let m = OpenInoMap::decode(b)?;
    if m.args.group_nr != group_nr || m.args.req_id != req_id {
        return Err(Errno::EINVAL);
    }
    Ok(m.bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::msg::{omap_set, omap_test};

    fn asks(out: &[OmapOut]) -> Vec<(u64, u64)> {
        out.iter()
            .filter_map(|o| match o {
                OmapOut::Ask { rid, req_id, .. } => Some((*rid, *req_id)),
                _ => None,
            })
            .collect()
    }

    fn replies(out: &[OmapOut]) -> Vec<(u64, OmapBits)> {
        out.iter()
            .filter_map(|o| match o {
                OmapOut::Reply { token, bits } => Some((*token, *bits)),
                _ => None,
            })
            .collect()
    }

    fn map_of(inos: &[u64]) -> OmapBits {
        let mut b = [0; OMAP_WORDS];
        for &i in inos {
            omap_set(&mut b, i);
        }
        b
    }

    #[test]
    fn no_other_rids_answers_empty_at_once() {
        let mut s = OmapServer::new(8);
        let out = s.request(1, 100, 3).unwrap();
        assert_eq!(replies(&out), [(100, [0; OMAP_WORDS])]);
        s.add_rid(1);
        // only the asker is known: nobody else to ask
        let out = s.request(1, 101, 3).unwrap();
        assert_eq!(replies(&out), [(101, [0; OMAP_WORDS])]);
        assert!(asks(&out).is_empty());
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn answers_are_ored_and_the_last_one_replies() {
        let mut s = OmapServer::new(8);
        for r in [1, 2, 3] {
            s.add_rid(r);
        }
        let out = s.request(1, 7, 5).unwrap();
        let a = asks(&out);
        assert_eq!(a.len(), 2);
        let id = a[0].1;
        assert!(a.iter().all(|&(r, i)| i == id && r != 1));
        assert!(replies(&out).is_empty());
        let g = 5 * 1024;
        assert!(s.answer(2, id, 5, &map_of(&[g + 3])).unwrap().is_empty());
        // a duplicate answer and one from a rid not asked are refused
        assert_eq!(s.answer(2, id, 5, &map_of(&[])), Err(Errno::ENOENT));
        assert_eq!(s.answer(1, id, 5, &map_of(&[])), Err(Errno::ENOENT));
        assert_eq!(s.answer(3, id, 6, &map_of(&[])), Err(Errno::EINVAL));
        let r = replies(&s.answer(3, id, 5, &map_of(&[g + 900])).unwrap());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 7);
        assert!(omap_test(&r[0].1, g + 3) && omap_test(&r[0].1, g + 900));
        assert!(!omap_test(&r[0].1, g + 4));
        assert_eq!(s.outstanding(), 0);
        assert_eq!(s.answer(3, id, 5, &map_of(&[])), Err(Errno::ENOENT));
    }

    #[test]
    fn a_rid_removed_while_owing_ends_the_wait() {
        let mut s = OmapServer::new(8);
        for r in [1, 2, 3] {
            s.add_rid(r);
        }
        let id = asks(&s.request(1, 9, 0).unwrap())[0].1;
        assert!(s.owes(2, id) && s.owes(3, id));
        assert!(s.answer(2, id, 0, &map_of(&[4])).unwrap().is_empty());
        // 3 dies: its map is gone with it; 2's answer stands
        let r = replies(&s.remove_rid(3));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 9);
        assert!(omap_test(&r[0].1, 4));
        assert!(!s.owes(3, id));
        assert_eq!(s.rids(), [1, 2]);
        // the asker leaving: its question still ends with a reply
        let id = asks(&s.request(1, 10, 0).unwrap())[0].1;
        assert!(s.remove_rid(1).is_empty());
        assert_eq!(s.outstanding(), 1);
        assert_eq!(replies(&s.answer(2, id, 0, &map_of(&[])).unwrap()).len(), 1);
        assert_eq!(s.outstanding(), 0);
        // the last other rid leaving answers what waited on it
        let id = asks(&s.request(2, 12, 0).unwrap());
        assert!(id.is_empty(), "1 and 3 are gone: nobody else to ask");
    }

    #[test]
    fn questions_during_recovery_wait_for_its_end() {
        let mut s = OmapServer::new(8);
        s.add_rid(1);
        assert!(s.set_recovering(true).is_empty());
        // nobody else is known yet: still no answer during recovery
        assert!(s.request(1, 11, 2).unwrap().is_empty());
        assert_eq!(s.outstanding(), 1);
        // the mount that owed its greeting comes back
        s.add_rid(2);
        let out = s.set_recovering(false);
        let a = asks(&out);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, 2);
        let r = replies(&s.answer(2, a[0].1, 2, &map_of(&[2048 + 5])).unwrap());
        assert_eq!(r[0].0, 11);
        assert!(omap_test(&r[0].1, 2048 + 5));
    }

    #[test]
    fn the_bound_refuses_with_an_error() {
        let mut s = OmapServer::new(2);
        s.add_rid(1);
        s.add_rid(2);
        let id = asks(&s.request(1, 1, 0).unwrap())[0].1;
        s.set_recovering(true);
        s.request(1, 2, 0).unwrap();
        assert_eq!(s.request(1, 3, 0), Err(Errno::ENOMEM));
        // room again once one is answered
        assert_eq!(replies(&s.answer(2, id, 0, &map_of(&[])).unwrap()).len(), 1);
        assert!(s.request(1, 4, 0).is_ok());
        assert_eq!(s.outstanding(), 2);
    }

    #[test]
    fn malformed_answers_are_errors() {
        use crate::cluster::msg::{OpenInoMapArgs, Request};
        let good = OpenInoMap {
            args: OpenInoMapArgs {
                group_nr: 3,
                req_id: 8,
            },
            bits: map_of(&[3 * 1024 + 1]),
        }
        .encode();
        assert!(omap_test(&decode_answer(3, 8, &good).unwrap(), 1));
        assert_eq!(decode_answer(3, 9, &good), Err(Errno::EINVAL));
        assert_eq!(decode_answer(4, 8, &good), Err(Errno::EINVAL));
        assert_eq!(decode_answer(3, 8, &good[..16]), Err(Errno::EINVAL));
        assert_eq!(decode_answer(3, 8, &[]), Err(Errno::EINVAL));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode_answer(3, 8, &long), Err(Errno::EINVAL));
        // a request payload of the wrong size never reaches the machine
        for n in [0, 8, 15, 17, 144] {
            assert!(
                Request::decode(crate::cluster::msg::cmd::OPEN_INO_MAP, &alloc::vec![0u8; n])
                    .is_err()
            );
        }
        // nor does any byte pattern panic
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            let mut b = alloc::vec![0u8; (x % 160) as usize];
            for v in b.iter_mut() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                *v = (x >> 56) as u8;
            }
            let _ = decode_answer(x & 7, x & 3, &b);
            let _ = Request::decode(crate::cluster::msg::cmd::OPEN_INO_MAP, &b);
        }
    }

    #[test]
    fn request_ids_are_unique_and_never_zero() {
        let mut s = OmapServer::new(4);
        s.add_rid(1);
        s.add_rid(2);
        s.next_req_id = u64::MAX;
        let a = asks(&s.request(1, 1, 0).unwrap())[0].1;
        let b = asks(&s.request(1, 2, 0).unwrap())[0].1;
        assert_eq!(a, u64::MAX);
        assert_eq!(b, 1);
    }
}
