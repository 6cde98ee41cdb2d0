//! The recovery tracker of a new server life (reference §5.1, §5.2): which
//! mounts of the previous life still owe their greeting and their locks,
//! and the window they have to pay them in.
//!
//! Sans-IO: the server role feeds it rids and time and acts on what it
//! returns. `prepare` marks a rid pending (before the server listens, for
//! every rid in `mounted_clients`), `begin` opens the window, `finish`
//! clears what a rid paid (its greeting, an empty LOCK_RECOVER reply, or
//! everything once it was fenced and reclaimed), and `timer` at the end of
//! the window hands back every rid still pending, to be fenced. The five
//! recovery trace events of the reference fire here (and in the lock
//! server's greeting hook) with its arguments: `remaining` counts rids
//! still owing anything, `nr_pending` the rids pending when the window
//! closed.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::counter;
use crate::runtime::trace::Tracepoint;

/// What a rid owes: its greeting.
pub const RECOV_GREETING: u8 = 1 << 0;
/// What a rid owes: its locks (LOCK_RECOVER until an empty reply).
pub const RECOV_LOCKS: u8 = 1 << 1;
/// Both.
pub const RECOV_ALL: u8 = RECOV_GREETING | RECOV_LOCKS;

/// The window a previous life's mounts have to recover
/// (`SERVER_RECOV_TIMEOUT_MS`).
pub const RECOVERY_WINDOW_NS: u64 = 30_000_000_000;

pub static TP_RECOV_PREPARE: Tracepoint = Tracepoint::new("recov_prepare", &["rid", "which"]);
pub static TP_RECOV_FINISH: Tracepoint =
    Tracepoint::new("recov_finish", &["rid", "which", "remaining"]);
pub static TP_RECOV_TIMEOUT_FIRE: Tracepoint =
    Tracepoint::new("recov_timeout_fire", &["nr_pending"]);
pub static TP_RECOV_FENCE_RID: Tracepoint = Tracepoint::new("recov_fence_rid", &["rid"]);
pub static TP_LOCK_SERVER_GREETING: Tracepoint =
    Tracepoint::new("lock_server_greeting", &["rid", "recov_pending"]);

/// What a call changed about the whole recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryStatus {
    /// Rids still owe something.
    Pending,
    /// This call finished the last rid (said exactly once per life).
    AllDone,
    /// Nothing was pending (or recovery was over already).
    Idle,
}

/// One server life's recovery state.
#[derive(Debug, Default)]
pub struct RecoveryTracker {
    /// rid -> the bits it still owes (never 0: paid-up rids leave).
    pending: BTreeMap<u64, u8>,
    /// `begin` was called.
    begun: bool,
    /// When the window closes, while it is open.
    deadline_ns: Option<u64>,
    /// `AllDone` was reported (or nothing was ever pending at `begin`).
    over: bool,
    /// The window closed with rids pending.
    timed_out: bool,
}

impl RecoveryTracker {
    pub fn new() -> RecoveryTracker {
        RecoveryTracker::default()
    }

    /// `rid` owes `which` (ORed into what it owed).
    pub fn prepare(&mut self, rid: u64, which: u8) {
        assert!(which & !RECOV_ALL == 0 && which != 0, "bad recovery bits");
        *self.pending.entry(rid).or_insert(0) |= which;
        TP_RECOV_PREPARE.emit(&[rid, which as u64]);
        log::info!("recov_prepare rid {rid:016x} which {which:#x}");
        counter!("recov.prepared").inc();
    }

    /// Open the window at `now_ns` for `window_ns`. `Idle` when nothing is
    /// pending (recovery is over before it began).
    pub fn begin(&mut self, now_ns: u64, window_ns: u64) -> RecoveryStatus {
        if self.pending.is_empty() {
            self.over = true;
            return RecoveryStatus::Idle;
        }
        self.begun = true;
        self.deadline_ns = Some(now_ns.saturating_add(window_ns));
        RecoveryStatus::Pending
    }

    /// `rid` paid `which`. Fires `recov_finish` on every call (also for a
    /// rid that owed nothing, as the reference does).
    pub fn finish(&mut self, rid: u64, which: u8) -> RecoveryStatus {
        if let Some(bits) = self.pending.get_mut(&rid) {
            *bits &= !which;
            if *bits == 0 {
                self.pending.remove(&rid);
            }
        }
        let remaining = self.pending.len();
        TP_RECOV_FINISH.emit(&[rid, which as u64, remaining as u64]);
        log::info!("recov_finish rid {rid:016x} which {which:#x} remaining {remaining}");
        if remaining == 0 && self.begun && !self.over {
            self.over = true;
            self.deadline_ns = None;
            counter!("recov.completed").inc();
            return RecoveryStatus::AllDone;
        }
        if remaining == 0 {
            RecoveryStatus::Idle
        } else {
            RecoveryStatus::Pending
        }
    }

    /// Does `rid` still owe any of `which`?
    pub fn is_pending(&self, rid: u64, which: u8) -> bool {
        self.pending.get(&rid).is_some_and(|b| b & which != 0)
    }

    /// Is any rid still owing its locks (the lock server grants nothing
    /// until none is)?
    pub fn locks_pending(&self) -> bool {
        self.pending.values().any(|b| b & RECOV_LOCKS != 0)
    }

    /// When the window closes, while it is open.
    pub fn deadline_ns(&self) -> Option<u64> {
        self.deadline_ns
    }

    /// Rids still owing something, with what they owe.
    pub fn pending(&self) -> Vec<(u64, u8)> {
        self.pending.iter().map(|(&r, &b)| (r, b)).collect()
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// The clock reached `now_ns`: at the end of the window, the rids
    /// still pending are handed back to be fenced (`recov_timeout_fire`
    /// once; each stays pending until its reclaim finishes it). Empty
    /// before the deadline or once recovery is over.
    pub fn timer(&mut self, now_ns: u64) -> Vec<u64> {
        match self.deadline_ns {
            Some(d) if now_ns >= d => {}
            _ => return Vec::new(),
        }
        self.deadline_ns = None;
        self.timed_out = true;
        TP_RECOV_TIMEOUT_FIRE.emit(&[self.pending.len() as u64]);
        log::info!("recov_timeout_fire nr_pending {}", self.pending.len());
        counter!("recov.timeouts").inc();
        self.pending.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::trace;

    fn events(name: &str) -> Vec<trace::Event> {
        trace::snapshot()
            .into_iter()
            .filter(|e| e.point.name == name)
            .collect()
    }

    #[test]
    fn rids_finish_by_greeting_and_locks_and_the_last_says_all_done() {
        trace::clear();
        let mut t = RecoveryTracker::new();
        t.prepare(7, RECOV_ALL);
        t.prepare(9, RECOV_ALL);
        assert_eq!(t.begin(0, RECOVERY_WINDOW_NS), RecoveryStatus::Pending);
        assert!(t.locks_pending());
        assert_eq!(t.finish(7, RECOV_GREETING), RecoveryStatus::Pending);
        assert!(t.is_pending(7, RECOV_LOCKS) && !t.is_pending(7, RECOV_GREETING));
        assert_eq!(t.finish(7, RECOV_LOCKS), RecoveryStatus::Pending);
        assert_eq!(t.finish(5, RECOV_GREETING), RecoveryStatus::Pending);
        assert_eq!(t.finish(9, RECOV_ALL), RecoveryStatus::AllDone);
        // exactly once
        assert_eq!(t.finish(9, RECOV_ALL), RecoveryStatus::Idle);
        assert!(!t.locks_pending());
        assert!(t.timer(u64::MAX).is_empty(), "no timeout after recovery");
        let fin = events("recov_finish");
        let remaining: Vec<u64> = fin.iter().map(|e| e.arg("remaining").unwrap()).collect();
        assert_eq!(remaining, [2, 1, 1, 0, 0]);
        assert_eq!(fin[2].arg("rid"), Some(5), "a rid never pending is traced");
        assert_eq!(events("recov_prepare").len(), 2);
        assert_eq!(events("recov_prepare")[0].arg("which"), Some(3));
    }

    #[test]
    fn the_window_hands_back_the_rids_still_pending_once() {
        trace::clear();
        let mut t = RecoveryTracker::new();
        for rid in [1, 2, 3] {
            t.prepare(rid, RECOV_ALL);
        }
        t.begin(1_000, 30);
        t.finish(2, RECOV_ALL);
        assert!(t.timer(1_029).is_empty(), "not before the deadline");
        assert_eq!(t.timer(1_030), [1, 3]);
        assert!(t.timed_out());
        assert!(t.timer(2_000).is_empty(), "fires once");
        let fire = events("recov_timeout_fire");
        assert_eq!(fire.len(), 1);
        assert_eq!(fire[0].arg("nr_pending"), Some(2));
        // reclaim after fencing finishes them
        assert_eq!(t.finish(1, RECOV_ALL), RecoveryStatus::Pending);
        assert_eq!(t.finish(3, RECOV_ALL), RecoveryStatus::AllDone);
    }

    #[test]
    fn nothing_pending_is_over_at_begin() {
        let mut t = RecoveryTracker::new();
        assert_eq!(t.begin(0, 10), RecoveryStatus::Idle);
        assert!(!t.locks_pending());
        assert!(t.timer(100).is_empty());
        assert_eq!(t.finish(4, RECOV_GREETING), RecoveryStatus::Idle);
    }
}
