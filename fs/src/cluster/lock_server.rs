//! The cluster lock server's machine (reference §3.4, the contract in
//! lockproto.md): per lock range, the mode each mount (rid) was granted,
//! the FIFO of waiting requests and the invalidations in flight. Sans-IO:
//! the server role feeds it requests, invalidation answers and departed
//! rids, and drains what to send ([`LockOutput`]); the seqs stamped on
//! WRITE and WRITE_ONLY grants come from a callback (the server's seq
//! counter). No I/O, no time.
//!
//! Rules: per range, requests are served in arrival order; the first one
//! that conflicts with another mount's grant gets every conflicting
//! holder invalidated (to READ when it asks READ and the holder has
//! WRITE, else to NULL) and the queue waits; nothing on a range is
//! granted while an invalidation of it is in flight (an answer then
//! always lowers exactly the grant it was sent for). A mount's own grant
//! never conflicts with its own request. Give-backs (new mode NULL) are
//! answered at once. A request's `old_mode` is advisory: the server's
//! record wins.
//!
//! Invariants (checked by [`LockServer::check`]): no two rids hold
//! incompatible modes on a range; NULL is never recorded; at most one
//! waiting request per (rid, range) and one invalidation per (rid,
//! range); a range with nothing recorded is dropped; grants plus waiting
//! requests stay within [`LockServerConfig::max_entries`].

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use crate::cluster::lock::{compatible, LockMode, LockRange};
use crate::cluster::msg::NetLock;
use crate::errno::Errno;
use crate::format::key::Key;

/// Bounds of the lock server's table.
#[derive(Clone, Copy, Debug)]
pub struct LockServerConfig {
    /// Grants plus waiting requests recorded at once; a request beyond it
    /// is refused with `ENOLCK` (clients bound their locks far below:
    /// this only stops a misbehaving one from growing the table).
    pub max_entries: usize,
}

impl Default for LockServerConfig {
    fn default() -> Self {
        LockServerConfig {
            max_entries: 1 << 20,
        }
    }
}

/// What the machine asks its driver to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutput {
    /// Answer request `token` of `rid` with `lock` (the granted mode in
    /// `new_mode`, `old_mode` as asked, `write_seq` fresh for WRITE and
    /// WRITE_ONLY, 0 otherwise).
    Grant { token: u64, rid: u64, lock: NetLock },
    /// Call `rid` with `lock` (`old_mode`: what the server recorded for
    /// it, `new_mode`: READ or NULL); feed its answer to
    /// [`LockServer::invalidation_done`].
    Invalidate { rid: u64, lock: NetLock },
    /// Answer request `token` of `rid` with an error (`EINVAL`: a second
    /// request for a range while one is in process, or a range that is
    /// no lock; `ENOLCK`: the table is full; `ENOLINK`: the rid left).
    Refuse { token: u64, rid: u64, errno: Errno },
}

/// Event counts since the machine was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockServerStats {
    pub requests: u64,
    pub grants: u64,
    pub give_backs: u64,
    pub invalidations_sent: u64,
    pub refused: u64,
    /// Requests whose `old_mode` was not the server's record (a client
    /// racing a give-back or an invalidation); served from the record.
    pub old_mode_mismatches: u64,
    /// Grants rebuilt from LOCK_RECOVER reports.
    pub recovered: u64,
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    token: u64,
    rid: u64,
    old_mode: LockMode,
    new_mode: LockMode,
}

struct RangeState {
    range: LockRange,
    /// Non-NULL modes by rid.
    granted: BTreeMap<u64, LockMode>,
    waiting: VecDeque<Waiter>,
    /// The mode each invalidated rid was asked to drop to.
    invalidating: BTreeMap<u64, LockMode>,
}

impl RangeState {
    fn is_idle(&self) -> bool {
        self.granted.is_empty() && self.waiting.is_empty() && self.invalidating.is_empty()
    }
}

/// The mode a holder of `held` is invalidated to for a request of
/// `requested` (reference §3.2): WRITE drops to READ for a reader, every
/// other conflict to NULL.
pub fn invalidation_target(held: LockMode, requested: LockMode) -> LockMode {
    if held == LockMode::Write && requested == LockMode::Read {
        LockMode::Read
    } else {
        LockMode::Null
    }
}

/// The lock server's table.
pub struct LockServer {
    cfg: LockServerConfig,
    ranges: BTreeMap<Key, RangeState>,
    next_token: u64,
    /// Grants recorded across ranges.
    nr_granted: usize,
    /// Waiting requests across ranges.
    nr_waiting: usize,
    out: VecDeque<LockOutput>,
    stats: LockServerStats,
    /// A new server life rebuilds the table from the mounts' reports
    /// (LOCK_RECOVER): until that ends nothing is granted and requests
    /// wait in their queues.
    recovering: bool,
}

impl LockServer {
    pub fn new(cfg: LockServerConfig) -> LockServer {
        assert!(cfg.max_entries > 0, "a lock table with no room");
        LockServer {
            cfg,
            ranges: BTreeMap::new(),
            next_token: 1,
            nr_granted: 0,
            nr_waiting: 0,
            out: VecDeque::new(),
            stats: LockServerStats::default(),
            recovering: false,
        }
    }

    /// A new server life: hold every request until [`Self::end_recovery`]
    /// while the mounts of the last life report what they hold.
    pub fn begin_recovery(&mut self) {
        self.recovering = true;
    }

    pub fn is_recovering(&self) -> bool {
        self.recovering
    }

    /// `rid` reports holding `lock.new_mode` on `lock.range` (a LOCK_RECOVER
    /// answer). `EINVAL` for a range that is no lock, a NULL mode, a
    /// second report of one range by one rid, a mode incompatible with
    /// another rid's report (a confused or lying mount: refused rather
    /// than recorded), or outside recovery; `ENOLCK` when the table is
    /// full.
    pub fn recover(&mut self, rid: u64, lock: &NetLock) -> Result<(), Errno> {
        let range = lock.range;
        let mode = lock.new_mode;
        if !self.recovering
            || mode == LockMode::Null
            || LockRange::from_start(&range.start) != Some(range)
        {
            return Err(Errno::EINVAL);
        }
        if self.nr_granted + self.nr_waiting >= self.cfg.max_entries {
            return Err(Errno::ENOLCK);
        }
        let st = self
            .ranges
            .entry(range.start)
            .or_insert_with(|| RangeState {
                range,
                granted: BTreeMap::new(),
                waiting: VecDeque::new(),
                invalidating: BTreeMap::new(),
            });
        let conflict = st.granted.contains_key(&rid)
            || st
                .granted
                .iter()
                .any(|(&other, &held)| other != rid && !compatible(held, mode, false));
        if conflict {
            if st.is_idle() {
                self.ranges.remove(&range.start);
            }
            return Err(Errno::EINVAL);
        }
        st.granted.insert(rid, mode);
        self.nr_granted += 1;
        self.stats.recovered += 1;
        Ok(())
    }

    /// Every mount reported (or was fenced and is gone): serve the
    /// requests that waited, in their arrival order per range.
    pub fn end_recovery(&mut self, next_seq: &mut dyn FnMut() -> u64) {
        if !self.recovering {
            return;
        }
        self.recovering = false;
        let keys: Vec<Key> = self.ranges.keys().copied().collect();
        for key in keys {
            self.process(&key, next_seq);
        }
    }

    /// Request `lock.new_mode` on `lock.range` for `rid`. Returns the
    /// token its answer ([`LockOutput::Grant`] or
    /// [`LockOutput::Refuse`]) will carry; the answer may already be
    /// queued. `next_seq` hands out server seqs for WRITE grants (of this
    /// or of waiting requests this one unblocks).
    pub fn request(&mut self, rid: u64, lock: &NetLock, next_seq: &mut dyn FnMut() -> u64) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.stats.requests += 1;
        let range = lock.range;
        if LockRange::from_start(&range.start) != Some(range) {
            self.refuse(token, rid, Errno::EINVAL);
            return token;
        }
        let key = range.start;
        let st = self.ranges.get(&key);
        if st.is_some_and(|s| s.waiting.iter().any(|w| w.rid == rid)) {
            self.refuse(token, rid, Errno::EINVAL);
            return token;
        }
        let recorded = st
            .and_then(|s| s.granted.get(&rid).copied())
            .unwrap_or(LockMode::Null);
        if lock.old_mode != recorded {
            self.stats.old_mode_mismatches += 1;
        }
        if lock.new_mode == LockMode::Null {
            // a give-back: nothing to wait for
            self.stats.give_backs += 1;
            if let Some(st) = self.ranges.get_mut(&key) {
                if st.granted.remove(&rid).is_some() {
                    self.nr_granted -= 1;
                }
            }
            self.out.push_back(LockOutput::Grant {
                token,
                rid,
                lock: NetLock {
                    range,
                    write_seq: 0,
                    old_mode: lock.old_mode,
                    new_mode: LockMode::Null,
                },
            });
            self.process(&key, next_seq);
            return token;
        }
        if self.nr_granted + self.nr_waiting >= self.cfg.max_entries {
            self.refuse(token, rid, Errno::ENOLCK);
            return token;
        }
        let st = self.ranges.entry(key).or_insert_with(|| RangeState {
            range,
            granted: BTreeMap::new(),
            waiting: VecDeque::new(),
            invalidating: BTreeMap::new(),
        });
        st.waiting.push_back(Waiter {
            token,
            rid,
            old_mode: lock.old_mode,
            new_mode: lock.new_mode,
        });
        self.nr_waiting += 1;
        self.process(&key, next_seq);
        token
    }

    /// `rid` answered the invalidation of `range` to `mode`. `EINVAL` if
    /// no such invalidation is in flight (a stray or late answer: nothing
    /// changes).
    pub fn invalidation_done(
        &mut self,
        rid: u64,
        range: &LockRange,
        mode: LockMode,
        next_seq: &mut dyn FnMut() -> u64,
    ) -> Result<(), Errno> {
        let key = range.start;
        let st = self.ranges.get_mut(&key).ok_or(Errno::EINVAL)?;
        if st.range != *range || st.invalidating.get(&rid) != Some(&mode) {
            return Err(Errno::EINVAL);
        }
        st.invalidating.remove(&rid);
        // the record may already be lower (the mount gave the lock back)
        match (mode, st.granted.get(&rid).copied()) {
            (LockMode::Null, Some(_)) => {
                st.granted.remove(&rid);
                self.nr_granted -= 1;
            }
            (LockMode::Read, Some(LockMode::Write)) => {
                st.granted.insert(rid, LockMode::Read);
            }
            _ => {}
        }
        self.process(&key, next_seq);
        Ok(())
    }

    /// `rid` left (farewell) or was fenced and reclaimed: its grants,
    /// waiting requests (refused with `ENOLINK`) and invalidations are
    /// dropped; requests waiting on them proceed.
    pub fn rid_gone(&mut self, rid: u64, next_seq: &mut dyn FnMut() -> u64) {
        let keys: Vec<Key> = self.ranges.keys().copied().collect();
        for key in keys {
            let Some(st) = self.ranges.get_mut(&key) else {
                continue;
            };
            if st.granted.remove(&rid).is_some() {
                self.nr_granted -= 1;
            }
            st.invalidating.remove(&rid);
            let before = st.waiting.len();
            let mut gone = Vec::new();
            st.waiting.retain(|w| {
                let mine = w.rid == rid;
                if mine {
                    gone.push(w.token);
                }
                !mine
            });
            self.nr_waiting -= before - st.waiting.len();
            for token in gone {
                self.refuse(token, rid, Errno::ENOLINK);
            }
            self.process(&key, next_seq);
        }
    }

    /// The next thing to send, in the order the machine decided them.
    pub fn poll_output(&mut self) -> Option<LockOutput> {
        self.out.pop_front()
    }

    /// Every recorded grant: (rid, range, mode), by range then rid.
    pub fn granted(&self) -> Vec<(u64, LockRange, LockMode)> {
        let mut v = Vec::with_capacity(self.nr_granted);
        for st in self.ranges.values() {
            v.extend(st.granted.iter().map(|(&rid, &m)| (rid, st.range, m)));
        }
        v
    }

    /// Requests waiting for a grant.
    pub fn waiting(&self) -> usize {
        self.nr_waiting
    }

    /// Invalidations sent and not answered: (rid, range, target mode).
    pub fn invalidations_in_flight(&self) -> Vec<(u64, LockRange, LockMode)> {
        let mut v = Vec::new();
        for st in self.ranges.values() {
            v.extend(st.invalidating.iter().map(|(&rid, &m)| (rid, st.range, m)));
        }
        v
    }

    /// Is an invalidation of `range` to `rid` still unanswered?
    pub fn is_invalidating(&self, rid: u64, range: &LockRange) -> bool {
        self.ranges
            .get(&range.start)
            .is_some_and(|st| st.invalidating.contains_key(&rid))
    }

    pub fn stats(&self) -> LockServerStats {
        self.stats
    }

    /// Check every invariant of the table (tests; cost is linear in it,
    /// quadratic in the holders of one range).
    pub fn check(&self) -> Result<(), &'static str> {
        let (mut granted, mut waiting) = (0, 0);
        for (key, st) in &self.ranges {
            if st.range.start != *key {
                return Err("range filed under another key");
            }
            if st.is_idle() {
                return Err("idle range kept");
            }
            for (&a, &ma) in &st.granted {
                if ma == LockMode::Null {
                    return Err("NULL recorded as a grant");
                }
                for (&b, &mb) in &st.granted {
                    if a != b && !compatible(ma, mb, false) {
                        return Err("two rids hold incompatible modes");
                    }
                }
            }
            for (i, w) in st.waiting.iter().enumerate() {
                if w.new_mode == LockMode::Null {
                    return Err("a give-back waits");
                }
                if st.waiting.iter().skip(i + 1).any(|o| o.rid == w.rid) {
                    return Err("two waiting requests of one rid");
                }
            }
            if st.invalidating.values().any(|m| *m == LockMode::Write) {
                return Err("invalidation to a mode above READ");
            }
            granted += st.granted.len();
            waiting += st.waiting.len();
        }
        if granted != self.nr_granted || waiting != self.nr_waiting {
            return Err("entry counts drifted");
        }
        Ok(())
    }

    fn refuse(&mut self, token: u64, rid: u64, errno: Errno) {
        self.stats.refused += 1;
        self.out.push_back(LockOutput::Refuse { token, rid, errno });
    }

    /// Grant from the head of `key`'s queue while that is compatible;
    /// invalidate the holders blocking the first one that is not.
    fn process(&mut self, key: &Key, next_seq: &mut dyn FnMut() -> u64) {
        let Some(st) = self.ranges.get_mut(key) else {
            return;
        };
        // one round at a time: answers lower exactly what they were sent
        // for; during recovery the table is not complete yet
        while st.invalidating.is_empty() && !self.recovering {
            let Some(&w) = st.waiting.front() else {
                break;
            };
            debug_assert!(w.new_mode != LockMode::Null);
            let mut blocked = false;
            for (&rid, &held) in &st.granted {
                if rid != w.rid && !compatible(held, w.new_mode, false) {
                    blocked = true;
                    let target = invalidation_target(held, w.new_mode);
                    st.invalidating.insert(rid, target);
                    self.stats.invalidations_sent += 1;
                    self.out.push_back(LockOutput::Invalidate {
                        rid,
                        lock: NetLock {
                            range: st.range,
                            write_seq: 0,
                            old_mode: held,
                            new_mode: target,
                        },
                    });
                }
            }
            if blocked {
                break;
            }
            st.waiting.pop_front();
            self.nr_waiting -= 1;
            if st.granted.insert(w.rid, w.new_mode).is_none() {
                self.nr_granted += 1;
            }
            let write_seq = if w.new_mode.can_write() {
                next_seq()
            } else {
                0
            };
            self.stats.grants += 1;
            self.out.push_back(LockOutput::Grant {
                token: w.token,
                rid: w.rid,
                lock: NetLock {
                    range: st.range,
                    write_seq,
                    old_mode: w.old_mode,
                    new_mode: w.new_mode,
                },
            });
        }
        if st.is_idle() {
            self.ranges.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::env::{Entropy, SeededEntropy};
    use alloc::collections::BTreeSet;
    use alloc::vec;
    use LockMode::*;

    const MODES: [LockMode; 3] = [Read, Write, WriteOnly];

    /// The machine and a seq counter standing in for the server's.
    struct Rig {
        ls: LockServer,
        seq: u64,
    }

    impl Rig {
        fn new() -> Rig {
            Rig {
                ls: LockServer::new(LockServerConfig::default()),
                seq: 100,
            }
        }

        fn req(&mut self, rid: u64, range: LockRange, old: LockMode, new: LockMode) -> u64 {
            let seq = &mut self.seq;
            let nl = NetLock {
                range,
                write_seq: 0,
                old_mode: old,
                new_mode: new,
            };
            let t = self.ls.request(rid, &nl, &mut || {
                *seq += 1;
                *seq
            });
            self.ls.check().unwrap();
            t
        }

        fn done(&mut self, rid: u64, range: LockRange, mode: LockMode) -> Result<(), Errno> {
            let seq = &mut self.seq;
            let r = self.ls.invalidation_done(rid, &range, mode, &mut || {
                *seq += 1;
                *seq
            });
            self.ls.check().unwrap();
            r
        }

        fn gone(&mut self, rid: u64) {
            let seq = &mut self.seq;
            self.ls.rid_gone(rid, &mut || {
                *seq += 1;
                *seq
            });
            self.ls.check().unwrap();
        }

        fn drain(&mut self) -> Vec<LockOutput> {
            let mut v = Vec::new();
            while let Some(o) = self.ls.poll_output() {
                v.push(o);
            }
            v
        }

        /// Grant `mode` to `rid` on an uncontended range.
        fn hold(&mut self, rid: u64, range: LockRange, mode: LockMode) {
            let t = self.req(rid, range, Null, mode);
            let out = self.drain();
            assert!(
                matches!(out[..], [LockOutput::Grant { token, lock, .. }] if token == t && lock.new_mode == mode),
                "{out:?}"
            );
        }
    }

    fn r0() -> LockRange {
        LockRange::inode_group(0)
    }

    fn grants_of(out: &[LockOutput]) -> Vec<(u64, u64, LockMode)> {
        out.iter()
            .filter_map(|o| match o {
                LockOutput::Grant { token, rid, lock } => Some((*token, *rid, lock.new_mode)),
                _ => None,
            })
            .collect()
    }

    fn invals_of(out: &[LockOutput]) -> Vec<(u64, LockMode, LockMode)> {
        out.iter()
            .filter_map(|o| match o {
                LockOutput::Invalidate { rid, lock } => Some((*rid, lock.old_mode, lock.new_mode)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_mode_pair_of_two_rids() {
        for held in MODES {
            for want in MODES {
                let mut g = Rig::new();
                g.hold(1, r0(), held);
                let t = g.req(2, r0(), Null, want);
                let out = g.drain();
                if compatible(held, want, false) {
                    assert_eq!(grants_of(&out), vec![(t, 2, want)], "{held:?} {want:?}");
                    assert!(invals_of(&out).is_empty());
                } else {
                    let target = invalidation_target(held, want);
                    assert_eq!(
                        invals_of(&out),
                        vec![(1, held, target)],
                        "{held:?} {want:?}"
                    );
                    assert!(grants_of(&out).is_empty());
                    assert_eq!(g.ls.waiting(), 1);
                    g.done(1, r0(), target).unwrap();
                    assert_eq!(grants_of(&g.drain()), vec![(t, 2, want)]);
                }
                let mut expect = vec![(2, r0(), want)];
                let kept = if compatible(held, want, false) {
                    Some(held)
                } else {
                    Some(invalidation_target(held, want)).filter(|m| *m != Null)
                };
                if let Some(m) = kept {
                    expect.insert(0, (1, r0(), m));
                }
                assert_eq!(g.ls.granted(), expect, "{held:?} {want:?}");
            }
        }
    }

    #[test]
    fn a_mounts_own_grant_never_blocks_its_request() {
        for held in MODES {
            for want in MODES {
                let mut g = Rig::new();
                g.hold(1, r0(), held);
                let t = g.req(1, r0(), held, want);
                assert_eq!(
                    grants_of(&g.drain()),
                    vec![(t, 1, want)],
                    "{held:?} {want:?}"
                );
                assert_eq!(g.ls.granted(), vec![(1, r0(), want)]);
            }
        }
    }

    #[test]
    fn every_mode_triple_of_three_rids() {
        for a in MODES {
            for b in MODES {
                if !compatible(a, b, false) {
                    continue;
                }
                for want in MODES {
                    let mut g = Rig::new();
                    g.hold(1, r0(), a);
                    g.hold(2, r0(), b);
                    let t = g.req(3, r0(), Null, want);
                    let out = g.drain();
                    let mut expect_inv = Vec::new();
                    for (rid, m) in [(1, a), (2, b)] {
                        if !compatible(m, want, false) {
                            expect_inv.push((rid, m, invalidation_target(m, want)));
                        }
                    }
                    assert_eq!(invals_of(&out), expect_inv, "{a:?} {b:?} {want:?}");
                    if expect_inv.is_empty() {
                        assert_eq!(grants_of(&out), vec![(t, 3, want)]);
                    }
                    for (i, &(rid, _, target)) in expect_inv.iter().enumerate() {
                        assert!(g.ls.poll_output().is_none());
                        g.done(rid, r0(), target).unwrap();
                        // granted only once the last holder answered
                        let out = g.drain();
                        let last = i + 1 == expect_inv.len();
                        let expect = if last { vec![(t, 3, want)] } else { vec![] };
                        assert_eq!(grants_of(&out), expect);
                    }
                    assert!(g.ls.granted().contains(&(3, r0(), want)));
                    assert!(g.ls.invalidations_in_flight().is_empty());
                }
            }
        }
    }

    #[test]
    fn requests_are_served_in_arrival_order() {
        let mut g = Rig::new();
        g.hold(1, r0(), Write);
        let tb = g.req(2, r0(), Null, Read);
        let tc = g.req(3, r0(), Null, Write);
        let td = g.req(4, r0(), Null, Read);
        assert_eq!(invals_of(&g.drain()), vec![(1, Write, Read)]);
        g.done(1, r0(), Read).unwrap();
        // B shares READ with A; C needs both to drop; D (a reader, which
        // A and B would admit) waits behind C
        let out = g.drain();
        assert_eq!(grants_of(&out), vec![(tb, 2, Read)]);
        assert_eq!(invals_of(&out), vec![(1, Read, Null), (2, Read, Null)]);
        g.done(2, r0(), Null).unwrap();
        assert!(g.drain().is_empty());
        g.done(1, r0(), Null).unwrap();
        let out = g.drain();
        assert_eq!(grants_of(&out), vec![(tc, 3, Write)]);
        assert_eq!(invals_of(&out), vec![(3, Write, Read)]);
        g.done(3, r0(), Read).unwrap();
        assert_eq!(grants_of(&g.drain()), vec![(td, 4, Read)]);
        assert_eq!(g.ls.granted(), vec![(3, r0(), Read), (4, r0(), Read)]);
    }

    #[test]
    fn every_reader_is_invalidated_for_a_writer() {
        let mut g = Rig::new();
        for rid in 1..=3 {
            g.hold(rid, r0(), Read);
        }
        let t = g.req(9, r0(), Null, Write);
        let out = g.drain();
        assert_eq!(
            invals_of(&out),
            vec![(1, Read, Null), (2, Read, Null), (3, Read, Null)]
        );
        for rid in 1..=3 {
            g.done(rid, r0(), Null).unwrap();
        }
        let out = g.drain();
        assert_eq!(grants_of(&out), vec![(t, 9, Write)]);
        assert_eq!(g.ls.granted(), vec![(9, r0(), Write)]);
    }

    #[test]
    fn a_writer_is_downgraded_to_read_for_a_reader() {
        let mut g = Rig::new();
        g.hold(1, r0(), Write);
        let t = g.req(2, r0(), Null, Read);
        let out = g.drain();
        assert!(matches!(
            out[..],
            [LockOutput::Invalidate { rid: 1, lock }]
                if lock.old_mode == Write && lock.new_mode == Read && lock.range == r0() && lock.write_seq == 0
        ));
        g.done(1, r0(), Read).unwrap();
        let out = g.drain();
        assert!(matches!(
            out[..],
            [LockOutput::Grant { token, rid: 2, lock }]
                if token == t && lock.new_mode == Read && lock.old_mode == Null && lock.write_seq == 0
        ));
        assert_eq!(g.ls.granted(), vec![(1, r0(), Read), (2, r0(), Read)]);
    }

    #[test]
    fn read_upgrades_to_write_in_place_when_alone() {
        let mut g = Rig::new();
        g.hold(1, r0(), Read);
        let before = g.seq;
        let t = g.req(1, r0(), Read, Write);
        let out = g.drain();
        assert!(matches!(
            out[..],
            [LockOutput::Grant { token, rid: 1, lock }]
                if token == t && lock.old_mode == Read && lock.new_mode == Write && lock.write_seq > before
        ));
        assert_eq!(g.ls.granted(), vec![(1, r0(), Write)]);
        // not alone: only the other reader is invalidated
        let mut g = Rig::new();
        g.hold(1, r0(), Read);
        g.hold(2, r0(), Read);
        let t = g.req(1, r0(), Read, Write);
        assert_eq!(invals_of(&g.drain()), vec![(2, Read, Null)]);
        g.done(2, r0(), Null).unwrap();
        assert_eq!(grants_of(&g.drain()), vec![(t, 1, Write)]);
    }

    #[test]
    fn write_grants_carry_fresh_seqs_and_reads_none() {
        let mut g = Rig::new();
        let mut last = 0;
        for (i, mode) in [Write, WriteOnly, Write, Read].into_iter().enumerate() {
            let range = LockRange::inode_group(i as u64 * 4096);
            let t = g.req(1, range, Null, mode);
            match g.drain()[..] {
                [LockOutput::Grant { token, lock, .. }] if token == t => {
                    if mode.can_write() {
                        assert!(lock.write_seq > last, "{mode:?}");
                        last = lock.write_seq;
                    } else {
                        assert_eq!(lock.write_seq, 0);
                    }
                }
                ref o => panic!("{o:?}"),
            }
        }
    }

    #[test]
    fn a_give_back_is_answered_at_once_and_unblocks() {
        let mut g = Rig::new();
        g.hold(1, r0(), Write);
        let t = g.req(1, r0(), Write, Null);
        assert_eq!(grants_of(&g.drain()), vec![(t, 1, Null)]);
        assert!(g.ls.granted().is_empty());
        let t = g.req(2, r0(), Null, Write);
        assert_eq!(grants_of(&g.drain()), vec![(t, 2, Write)]);

        // a give-back racing an invalidation: the answer finds it gone
        let mut g = Rig::new();
        g.hold(1, r0(), Write);
        let t2 = g.req(2, r0(), Null, Write);
        assert_eq!(invals_of(&g.drain()), vec![(1, Write, Null)]);
        let t = g.req(1, r0(), Write, Null);
        assert_eq!(grants_of(&g.drain()), vec![(t, 1, Null)]);
        g.done(1, r0(), Null).unwrap();
        assert_eq!(grants_of(&g.drain()), vec![(t2, 2, Write)]);
        assert_eq!(g.ls.stats().give_backs, 1);
    }

    #[test]
    fn a_departed_rid_releases_its_grants_and_waiters() {
        let mut g = Rig::new();
        g.hold(1, r0(), Write);
        g.hold(1, LockRange::orphan(), WriteOnly);
        let t2 = g.req(2, r0(), Null, Write);
        let t3 = g.req(3, LockRange::orphan(), Null, Read);
        assert_eq!(
            invals_of(&g.drain()),
            vec![(1, Write, Null), (1, WriteOnly, Null)]
        );
        // rid 1 also waits for the rename lock behind rid 2
        g.hold(2, LockRange::rename(), Write);
        let t1 = g.req(1, LockRange::rename(), Null, Read);
        g.drain();
        g.gone(1);
        let out = g.drain();
        let mut grants = grants_of(&out);
        grants.sort();
        assert_eq!(grants, vec![(t2, 2, Write), (t3, 3, Read)]);
        assert!(out.contains(&LockOutput::Refuse {
            token: t1,
            rid: 1,
            errno: Errno::ENOLINK
        }));
        assert!(g.ls.granted().iter().all(|(rid, ..)| *rid != 1));
        // its late answer changes nothing
        assert_eq!(g.done(1, r0(), Null), Err(Errno::EINVAL));
    }

    #[test]
    fn bad_requests_are_refused_not_panicked_on() {
        let mut g = Rig::new();
        g.hold(1, r0(), Write);
        let t2 = g.req(2, r0(), Null, Write);
        g.drain();
        // a second request of rid 2 for the range while one waits
        let dup = g.req(2, r0(), Null, Read);
        let dup_null = g.req(2, r0(), Null, Null);
        let out = g.drain();
        assert_eq!(
            out,
            vec![
                LockOutput::Refuse {
                    token: dup,
                    rid: 2,
                    errno: Errno::EINVAL
                },
                LockOutput::Refuse {
                    token: dup_null,
                    rid: 2,
                    errno: Errno::EINVAL
                },
            ]
        );
        // a range that is not a lock
        let mut bad = r0();
        bad.end = bad.start;
        let t = g.req(3, bad, Null, Read);
        assert_eq!(
            g.drain(),
            vec![LockOutput::Refuse {
                token: t,
                rid: 3,
                errno: Errno::EINVAL
            }]
        );
        // answers nobody asked for
        assert_eq!(g.done(2, r0(), Null), Err(Errno::EINVAL));
        assert_eq!(g.done(1, r0(), Read), Err(Errno::EINVAL));
        assert_eq!(g.done(1, LockRange::orphan(), Null), Err(Errno::EINVAL));
        g.done(1, r0(), Null).unwrap();
        assert_eq!(grants_of(&g.drain()), vec![(t2, 2, Write)]);
        // an old_mode that disagrees with the record: served from the record
        let t = g.req(1, r0(), Write, Read);
        assert_eq!(invals_of(&g.drain()), vec![(2, Write, Read)]);
        g.done(2, r0(), Read).unwrap();
        assert!(matches!(
            g.drain()[..],
            [LockOutput::Grant { token, rid: 1, lock }] if token == t && lock.old_mode == Write && lock.new_mode == Read
        ));
        assert_eq!(g.ls.stats().old_mode_mismatches, 1);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut g = Rig::new();
        g.ls = LockServer::new(LockServerConfig { max_entries: 3 });
        g.hold(1, r0(), Write);
        g.hold(2, LockRange::orphan(), Read);
        let t = g.req(2, r0(), Null, Read);
        g.drain();
        let full = g.req(3, LockRange::rename(), Null, Read);
        assert_eq!(
            g.drain(),
            vec![LockOutput::Refuse {
                token: full,
                rid: 3,
                errno: Errno::ENOLCK
            }]
        );
        // give-backs still work when full
        let gb = g.req(2, LockRange::orphan(), Read, Null);
        assert_eq!(grants_of(&g.drain()), vec![(gb, 2, Null)]);
        g.done(1, r0(), Read).unwrap();
        assert_eq!(grants_of(&g.drain()), vec![(t, 2, Read)]);
    }

    /// A mount as the randomized test models it: its recorded mode, its
    /// request in flight and the invalidations it has not answered.
    #[derive(Default)]
    struct ModelLock {
        mode: Option<LockMode>,
        pending: Option<u64>,
        invals: Vec<NetLock>,
    }

    fn mode_of(m: &ModelLock) -> LockMode {
        m.mode.unwrap_or(Null)
    }

    fn run_random(seed: u64, steps: usize) {
        let rng = SeededEntropy::new(seed);
        let pick = |n: usize| (rng.next_u64() % n as u64) as usize;
        let ranges = [
            LockRange::inode_group(0),
            LockRange::inode_group(1024),
            LockRange::orphan(),
            LockRange::rename(),
        ];
        let mut g = Rig::new();
        let mut live: Vec<u64> = (1..=4).collect();
        let mut next_rid = 5;
        // (rid, range index) -> model
        let mut model: BTreeMap<(u64, usize), ModelLock> = BTreeMap::new();
        let mut last_seq = 0;
        let mut outstanding: BTreeSet<u64> = BTreeSet::new();
        let deliver = |g: &mut Rig,
                       model: &mut BTreeMap<(u64, usize), ModelLock>,
                       outstanding: &mut BTreeSet<u64>,
                       last_seq: &mut u64| {
            while let Some(o) = g.ls.poll_output() {
                match o {
                    LockOutput::Grant { token, rid, lock } => {
                        let ri = ranges.iter().position(|r| *r == lock.range).unwrap();
                        let m = model.get_mut(&(rid, ri)).unwrap();
                        assert_eq!(m.pending, Some(token), "seed {seed}");
                        m.pending = None;
                        m.mode = Some(lock.new_mode);
                        assert!(outstanding.remove(&token));
                        if lock.new_mode.can_write() {
                            assert!(lock.write_seq > *last_seq, "seed {seed}");
                            *last_seq = lock.write_seq;
                        } else {
                            assert_eq!(lock.write_seq, 0);
                        }
                    }
                    LockOutput::Invalidate { rid, lock } => {
                        let ri = ranges.iter().position(|r| *r == lock.range).unwrap();
                        let m = model.get_mut(&(rid, ri)).unwrap();
                        // only modes whose grant was sent are invalidated
                        assert_eq!(lock.old_mode, mode_of(m), "seed {seed}");
                        m.invals.push(lock);
                    }
                    LockOutput::Refuse { token, errno, .. } => {
                        // only a departed rid's requests are refused
                        assert_eq!(errno, Errno::ENOLINK, "seed {seed}");
                        assert!(outstanding.remove(&token));
                    }
                }
            }
        };
        let answer = |g: &mut Rig,
                      model: &mut BTreeMap<(u64, usize), ModelLock>,
                      key: (u64, usize),
                      i: usize| {
            let m = model.get_mut(&key).unwrap();
            let inv = m.invals.remove(i);
            m.mode = match (inv.new_mode, mode_of(m)) {
                (Null, _) => Some(Null),
                (Read, Write) => Some(Read),
                (_, cur) => Some(cur),
            };
            g.done(key.0, inv.range, inv.new_mode).unwrap();
        };
        let exclusive = |model: &BTreeMap<(u64, usize), ModelLock>, live: &[u64]| {
            for ri in 0..ranges.len() {
                for &a in live {
                    for &b in live {
                        let (ma, mb) = (model.get(&(a, ri)), model.get(&(b, ri)));
                        if let (true, Some(ma), Some(mb)) = (a != b, ma, mb) {
                            assert!(
                                compatible(mode_of(ma), mode_of(mb), false),
                                "seed {seed}: rids {a} and {b} hold {:?} and {:?}",
                                ma.mode,
                                mb.mode
                            );
                        }
                    }
                }
            }
        };
        for _ in 0..steps {
            match pick(10) {
                0..=4 => {
                    let rid = live[pick(live.len())];
                    let ri = pick(ranges.len());
                    let m = model.entry((rid, ri)).or_default();
                    if m.pending.is_none() {
                        let want = [Null, Read, Read, Write, Write, WriteOnly][pick(6)];
                        // sometimes a stale old mode (a racing client)
                        let old = if pick(8) == 0 {
                            MODES[pick(3)]
                        } else {
                            mode_of(m)
                        };
                        let t = g.req(rid, ranges[ri], old, want);
                        model.get_mut(&(rid, ri)).unwrap().pending = Some(t);
                        outstanding.insert(t);
                    }
                }
                5..=8 => {
                    let with: Vec<(u64, usize)> = model
                        .iter()
                        .filter(|(_, m)| !m.invals.is_empty())
                        .map(|(k, _)| *k)
                        .collect();
                    if !with.is_empty() {
                        let key = with[pick(with.len())];
                        let n = model[&key].invals.len();
                        answer(&mut g, &mut model, key, pick(n));
                    }
                }
                _ => {
                    if pick(20) == 0 {
                        let i = pick(live.len());
                        let rid = live.swap_remove(i);
                        g.gone(rid);
                        model.retain(|k, _| k.0 != rid);
                        live.push(next_rid);
                        next_rid += 1;
                    }
                }
            }
            deliver(&mut g, &mut model, &mut outstanding, &mut last_seq);
            exclusive(&model, &live);
        }
        // answer every invalidation: every request is then granted
        for _ in 0..10_000 {
            let with: Vec<(u64, usize)> = model
                .iter()
                .filter(|(_, m)| !m.invals.is_empty())
                .map(|(k, _)| *k)
                .collect();
            let Some(&key) = with.first() else { break };
            answer(&mut g, &mut model, key, 0);
            deliver(&mut g, &mut model, &mut outstanding, &mut last_seq);
            exclusive(&model, &live);
        }
        assert!(
            outstanding.is_empty(),
            "seed {seed}: {outstanding:?} never answered"
        );
        assert_eq!(g.ls.waiting(), 0);
        assert!(g.ls.invalidations_in_flight().is_empty());
        // the server's record is every mount's own
        let mine: Vec<(u64, LockRange, LockMode)> = model
            .iter()
            .filter(|(_, m)| mode_of(m) != Null)
            .map(|(&(rid, ri), m)| (rid, ranges[ri], mode_of(m)))
            .collect();
        let mut theirs = g.ls.granted();
        let mut mine = mine;
        let order = |a: &(u64, LockRange, LockMode), b: &(u64, LockRange, LockMode)| {
            (a.0, a.1.start).cmp(&(b.0, b.1.start))
        };
        theirs.sort_by(order);
        mine.sort_by(order);
        assert_eq!(theirs, mine, "seed {seed}");
        let s = g.ls.stats();
        assert!(
            s.grants > 100 && s.invalidations_sent > 100 && s.give_backs > 10,
            "{s:?}"
        );
    }

    #[test]
    fn random_requests_stay_exclusive_and_all_get_granted() {
        for seed in 0..40 {
            run_random(seed, 2000);
        }
    }

    fn report(range: LockRange, mode: LockMode, write_seq: u64) -> NetLock {
        NetLock {
            range,
            write_seq,
            old_mode: mode,
            new_mode: mode,
        }
    }

    /// A new life: the reports rebuild the table, requests wait until
    /// recovery ends and are then served against the recovered grants.
    #[test]
    fn recovery_rebuilds_grants_and_holds_requests_until_it_ends() {
        let mut g = Rig::new();
        let r1 = LockRange::inode_group(1 << 20);
        g.ls.begin_recovery();
        assert!(g.ls.is_recovering());
        g.ls.recover(1, &report(r0(), Write, 50)).unwrap();
        g.ls.recover(2, &report(r1, Read, 0)).unwrap();
        g.ls.recover(3, &report(r1, Read, 0)).unwrap();
        g.ls.check().unwrap();
        // refused reports: twice, NULL, incompatible, not a lock range
        assert_eq!(
            g.ls.recover(1, &report(r0(), Write, 50)),
            Err(Errno::EINVAL)
        );
        assert_eq!(g.ls.recover(4, &report(r0(), Null, 0)), Err(Errno::EINVAL));
        assert_eq!(g.ls.recover(4, &report(r0(), Read, 0)), Err(Errno::EINVAL));
        let mut bad = report(r1, Read, 0);
        bad.range.end = bad.range.start;
        assert_eq!(g.ls.recover(4, &bad), Err(Errno::EINVAL));
        assert_eq!(g.ls.stats().recovered, 3);
        // a request waits, even one compatible with every grant
        let t_read = g.req(4, r1, Null, Read);
        let t_write = g.req(2, r0(), Null, Write);
        assert!(g.drain().is_empty(), "nothing granted during recovery");
        // a give-back is answered at once
        let t_back = g.req(3, r1, Read, Null);
        assert!(matches!(g.drain()[..], [LockOutput::Grant { token, .. }] if token == t_back));
        let seq = &mut g.seq;
        g.ls.end_recovery(&mut || {
            *seq += 1;
            *seq
        });
        g.ls.check().unwrap();
        let out = g.drain();
        // r0: rid 1's recovered WRITE is invalidated for rid 2; r1: granted
        assert_eq!(invals_of(&out), [(1, Write, Null)]);
        assert_eq!(grants_of(&out), [(t_read, 4, Read)]);
        g.done(1, r0(), Null).unwrap();
        assert_eq!(grants_of(&g.drain()), [(t_write, 2, Write)]);
        assert!(g.ls.recover(5, &report(r1, Read, 0)).is_err(), "over");
    }

    /// A rid fenced during recovery leaves: its reported grants go and
    /// the requests behind them are served once recovery ends.
    #[test]
    fn a_fenced_rid_releases_its_recovered_grants() {
        let mut g = Rig::new();
        g.ls.begin_recovery();
        g.ls.recover(1, &report(r0(), Write, 9)).unwrap();
        let t = g.req(2, r0(), Null, Read);
        g.gone(1);
        assert!(g.drain().is_empty());
        let seq = &mut g.seq;
        g.ls.end_recovery(&mut || {
            *seq += 1;
            *seq
        });
        assert_eq!(grants_of(&g.drain()), [(t, 2, Read)]);
        g.ls.check().unwrap();
    }
}
