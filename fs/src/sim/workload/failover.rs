//! What a failover run (the cluster workload's [`Mode::Failover`]) checks
//! about recovery and fencing, apart from the cluster checkers:
//!
//! - [`check_recovery_events`]: the five recovery trace events of every
//!   server life, read back from the world's log: every rid a life
//!   prepared ends in `recov_finish` (all it owed) or `recov_fence_rid`
//!   within the window plus slack; `remaining` and `nr_pending` agree
//!   with what the events before them left owing; a life fences only
//!   after its `recov_timeout_fire`, at most `nr_pending` rids, each one
//!   it prepared and still owing.
//! - [`SimFenceAgent`]: the server's fence agent in the simulator: after
//!   5-300 ms the fenced rid's disk handles are revoked (unless a planted
//!   bug makes it lie), and the fence time is recorded.
//! - [`WatchedDev`]: a mount's disks as it sees them: a write that
//!   succeeds at or after its rid's fence is a failure (no zombie ever
//!   writes again).
//!
//! [`Mode::Failover`]: super::cluster::Mode::Failover

use crate::cluster::fence::{FenceAgent, FenceError, FenceRequest};
use crate::cluster::recovery::RECOV_ALL;
use crate::cluster::transport::LocalFut;
use crate::runtime::env::Entropy;
use crate::runtime::exec::Handle;
use crate::runtime::node::NodeId;
use crate::sim::disk::DiskHandle;
use crate::sim::hash::Event;
use crate::storage::dev::{BlockDev, IoError};
use alloc::boxed::Box;
use alloc::collections::{btree_map, BTreeMap};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

/// Kinds the failover checker reads from the world's log: the recovery
/// events and the harness's life markers.
pub const KEPT_EVENTS: &[&str] = &["recov_", "server_life", "server_crash"];

/// What the recovery events of a run added up to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryTally {
    pub lives: u64,
    pub prepared: u64,
    /// Rids that paid everything they owed.
    pub recovered: u64,
    pub fenced: u64,
    pub timeouts: u64,
}

/// One server life as its events show it.
#[derive(Default)]
struct Life {
    /// rid -> bits still owed, as the tracker counts them (a fenced rid
    /// stays until its reclaim finishes it).
    owing: BTreeMap<u64, u8>,
    /// rid -> when it was first prepared, while it has not ended.
    open: BTreeMap<u64, u64>,
    /// `recov_timeout_fire`'s nr_pending, once it fired.
    fired: Option<u64>,
    fences: u64,
}

/// Check the recovery events of a failover run (see the module
/// comment). `events`: the kept events, oldest first; `now_ns`: the
/// instant of the check (a rid still open then must not be older than
/// `window_ns + slack_ns`).
pub fn check_recovery_events(
    events: &[Event],
    window_ns: u64,
    slack_ns: u64,
    now_ns: u64,
) -> Result<RecoveryTally, String> {
    let limit = window_ns.saturating_add(slack_ns);
    let mut t = RecoveryTally::default();
    let mut life = Life::default();
    let late = |rid: u64, since: u64, at: u64, how: &str| {
        format!(
            "recovery: rid {rid:#x} prepared at {since} ns {how} only at {at} ns, \
             past the window ({window_ns} ns) plus slack ({slack_ns} ns)"
        )
    };
    for ev in events {
        let arg = |i: usize| ev.args[i];
        let at = ev.time_ns;
        match ev.kind {
            // a crash ends the life: what it left owing is the next
            // life's to recover
            "server_crash" => life = Life::default(),
            "server_life" => {
                life = Life::default();
                t.lives += 1;
            }
            "recov_prepare" => {
                let (rid, which) = (arg(0), arg(1) as u8);
                if which == 0 || which & !RECOV_ALL != 0 {
                    return Err(format!("recov_prepare rid {rid:#x}: bad bits {which:#x}"));
                }
                *life.owing.entry(rid).or_insert(0) |= which;
                if let btree_map::Entry::Vacant(v) = life.open.entry(rid) {
                    v.insert(at);
                    t.prepared += 1;
                }
            }
            "recov_finish" => {
                let (rid, which, remaining) = (arg(0), arg(1) as u8, arg(2));
                if let Some(bits) = life.owing.get_mut(&rid) {
                    *bits &= !which;
                    if *bits == 0 {
                        life.owing.remove(&rid);
                        if let Some(since) = life.open.remove(&rid) {
                            if at.saturating_sub(since) > limit {
                                return Err(late(rid, since, at, "recovered"));
                            }
                            t.recovered += 1;
                        }
                    }
                }
                if remaining != life.owing.len() as u64 {
                    return Err(format!(
                        "recov_finish rid {rid:#x} which {which:#x}: remaining {remaining}, \
                         but the events leave {} rids owing ({:x?})",
                        life.owing.len(),
                        life.owing
                    ));
                }
            }
            "recov_timeout_fire" => {
                let nr = arg(0);
                if life.fired.is_some() {
                    return Err("recov_timeout_fire twice in one server life".into());
                }
                if nr != life.owing.len() as u64 {
                    return Err(format!(
                        "recov_timeout_fire nr_pending {nr}, but the events leave {} rids \
                         owing ({:x?})",
                        life.owing.len(),
                        life.owing
                    ));
                }
                life.fired = Some(nr);
                t.timeouts += 1;
            }
            "recov_fence_rid" => {
                let rid = arg(0);
                let Some(nr) = life.fired else {
                    return Err(format!(
                        "recov_fence_rid rid {rid:#x} before any recov_timeout_fire"
                    ));
                };
                life.fences += 1;
                if life.fences > nr {
                    return Err(format!(
                        "{} recov_fence_rid after recov_timeout_fire nr_pending {nr}",
                        life.fences
                    ));
                }
                if !life.owing.contains_key(&rid) {
                    return Err(format!(
                        "recov_fence_rid rid {rid:#x}, which owes nothing in this life"
                    ));
                }
                if let Some(since) = life.open.remove(&rid) {
                    if at.saturating_sub(since) > limit {
                        return Err(late(rid, since, at, "fenced"));
                    }
                }
                t.fenced += 1;
            }
            _ => {}
        }
    }
    if let Some((&rid, &since)) = life
        .open
        .iter()
        .find(|(_, &since)| now_ns.saturating_sub(since) > limit)
    {
        return Err(late(rid, since, now_ns, "has not ended"));
    }
    Ok(t)
}

/// What the simulator's server fence agent did, shared with the harness
/// and the mounts' [`WatchedDev`]s.
#[derive(Default)]
pub struct Fences {
    /// rid -> the disk handles of the life that mounted as it.
    handles: RefCell<BTreeMap<u64, Vec<Rc<DiskHandle>>>>,
    /// rid -> when its fence was acknowledged.
    fenced: RefCell<BTreeMap<u64, u64>>,
    /// The first write seen after a fence.
    violation: RefCell<Option<String>>,
}

impl Fences {
    pub fn new() -> Rc<Fences> {
        Rc::new(Fences::default())
    }

    /// `rid` mounted with these disk handles.
    pub fn register(&self, rid: u64, handles: Vec<Rc<DiskHandle>>) {
        self.handles.borrow_mut().insert(rid, handles);
    }

    /// Rids fenced so far, with when.
    pub fn fenced(&self) -> BTreeMap<u64, u64> {
        self.fenced.borrow().clone()
    }

    /// A write after its fence, if one was seen.
    pub fn violation(&self) -> Option<String> {
        self.violation.borrow().clone()
    }
}

/// The server's fence agent in a failover run: after 5-300 ms the
/// target's disks are revoked (`lying`: not; a planted bug the write
/// watch must catch), then the fence is acknowledged.
pub struct SimFenceAgent {
    pub handle: Handle,
    pub entropy: Rc<dyn Entropy>,
    pub fences: Rc<Fences>,
    pub lying: bool,
}

impl FenceAgent for SimFenceAgent {
    fn fence(&self, req: FenceRequest) -> LocalFut<'_, Result<(), FenceError>> {
        Box::pin(async move {
            let delay_ms = 5 + self.entropy.next_u64() % 296;
            self.handle.sleep_ns(delay_ms * 1_000_000).await;
            if !self.lying {
                if let Some(hs) = self.fences.handles.borrow().get(&req.rid) {
                    for h in hs {
                        h.revoke();
                    }
                }
            }
            let now = self.handle.now_ns();
            self.fences
                .fenced
                .borrow_mut()
                .entry(req.rid)
                .or_insert(now);
            Ok(())
        })
    }
}

/// A mount's disk as the mount sees it: every write that succeeds at or
/// after the fence of its rid is recorded as a violation.
pub struct WatchedDev {
    pub inner: Rc<dyn BlockDev>,
    pub fences: Rc<Fences>,
    pub rid: u64,
    pub node: NodeId,
    pub now: Rc<dyn Fn() -> u64>,
}

impl BlockDev for WatchedDev {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.inner.read(off, buf)
    }
    fn write(&self, off: u64, buf: &[u8]) -> Result<(), IoError> {
        self.inner.write(off, buf)?;
        let now = (self.now)();
        if let Some(&at) = self.fences.fenced.borrow().get(&self.rid) {
            let mut v = self.fences.violation.borrow_mut();
            if now >= at && v.is_none() {
                *v = Some(format!(
                    "rid {:#x} (node {}) wrote {} bytes at offset {off} at {now} ns, \
                     after its fence at {at} ns",
                    self.rid,
                    self.node,
                    buf.len()
                ));
            }
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), IoError> {
        self.inner.flush()
    }
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::recovery::{RECOV_GREETING, RECOV_LOCKS};

    fn ev(time_ns: u64, kind: &'static str, args: &[u64]) -> Event {
        let mut a = [0u64; 4];
        a[..args.len()].copy_from_slice(args);
        Event {
            index: 0,
            time_ns,
            node: 0,
            kind,
            args: a,
            nargs: args.len() as u8,
            text: String::new(),
        }
    }

    const W: u64 = 30;
    const ALL: u64 = RECOV_ALL as u64;
    const G: u64 = RECOV_GREETING as u64;
    const L: u64 = RECOV_LOCKS as u64;

    #[test]
    fn a_life_that_recovers_one_rid_and_fences_another_passes() {
        let evs = [
            ev(0, "server_life", &[1]),
            ev(1, "recov_prepare", &[7, ALL]),
            ev(1, "recov_prepare", &[8, ALL]),
            ev(2, "recov_finish", &[7, G, 2]),
            ev(3, "recov_finish", &[7, L, 1]),
            ev(31, "recov_timeout_fire", &[1]),
            ev(31, "recov_fence_rid", &[8]),
            ev(32, "recov_finish", &[8, ALL, 0]),
        ];
        let t = check_recovery_events(&evs, W, 5, 40).unwrap();
        assert_eq!(
            t,
            RecoveryTally {
                lives: 1,
                prepared: 2,
                recovered: 1,
                fenced: 1,
                timeouts: 1
            }
        );
    }

    #[test]
    fn each_broken_rule_is_reported() {
        let base = [
            ev(0, "server_life", &[1]),
            ev(1, "recov_prepare", &[7, ALL]),
        ];
        let with = |more: &[Event]| {
            let mut v = base.to_vec();
            v.extend_from_slice(more);
            check_recovery_events(&v, W, 5, 100)
        };
        // never ends
        let e = with(&[]).unwrap_err();
        assert!(e.contains("has not ended"), "{e}");
        // ends too late
        let e = with(&[ev(50, "recov_finish", &[7, ALL, 0])]).unwrap_err();
        assert!(e.contains("recovered only at 50"), "{e}");
        // a wrong remaining
        let e = with(&[ev(2, "recov_finish", &[7, G, 0])]).unwrap_err();
        assert!(e.contains("remaining 0"), "{e}");
        // a fence without a timeout
        let e = with(&[ev(31, "recov_fence_rid", &[7])]).unwrap_err();
        assert!(e.contains("before any recov_timeout_fire"), "{e}");
        // more fences than nr_pending
        let e = with(&[
            ev(31, "recov_timeout_fire", &[1]),
            ev(31, "recov_fence_rid", &[7]),
            ev(31, "recov_fence_rid", &[7]),
        ])
        .unwrap_err();
        assert!(e.contains("2 recov_fence_rid"), "{e}");
        // a fence of a rid that owes nothing
        let e = with(&[
            ev(31, "recov_timeout_fire", &[1]),
            ev(31, "recov_fence_rid", &[9]),
        ])
        .unwrap_err();
        assert!(e.contains("owes nothing"), "{e}");
        // nr_pending disagreeing with the events
        let e = with(&[ev(31, "recov_timeout_fire", &[2])]).unwrap_err();
        assert!(e.contains("nr_pending 2"), "{e}");
    }

    #[test]
    fn a_crash_ends_a_life_and_its_open_rids() {
        let evs = [
            ev(0, "server_life", &[1]),
            ev(1, "recov_prepare", &[7, ALL]),
            ev(5, "server_crash", &[]),
            ev(6, "server_life", &[2]),
            ev(7, "recov_prepare", &[7, ALL]),
            ev(8, "recov_finish", &[7, ALL, 0]),
        ];
        let t = check_recovery_events(&evs, W, 5, 1000).unwrap();
        assert_eq!((t.lives, t.prepared, t.recovered), (2, 2, 1));
    }
}
