//! Fencing (reference §5.3, §5.4): making sure a mount can never write the
//! shared devices again before its work is taken over.
//!
//! [`FenceAgent`] is the seam: `fence(request)` completes when the target
//! is fenced (or fails). [`FenceRegistry`] runs requests through an agent:
//! one per rid (a second request for a rid joins the first), each with a
//! deadline (30 s; 15 s for a new leader's predecessors), ending `Fenced`
//! or `Error`. [`ManualFence`] is the operator's agent: a request waits
//! until the shell's `fence ack RID` calls [`ManualFence::ack`].

use crate::cluster::transport::LocalFut;
use crate::counter;
use crate::runtime::exec::{Handle, Notify};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

/// Deadline of a fence request (`FENCE_TIMEOUT_MS`).
pub const FENCE_TIMEOUT_NS: u64 = 30_000_000_000;
/// How long a new leader waits for its predecessors
/// (`SCOUTFS_QUORUM_FENCE_TO_MS`).
pub const PREDECESSOR_FENCE_TIMEOUT_NS: u64 = 15_000_000_000;

/// Why a mount is fenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceReason {
    ClientRecovery,
    ClientReconnect,
    QuorumBlockLeader,
}

impl FenceReason {
    pub fn name(self) -> &'static str {
        match self {
            FenceReason::ClientRecovery => "client_recovery",
            FenceReason::ClientReconnect => "client_reconnect",
            FenceReason::QuorumBlockLeader => "quorum_block_leader",
        }
    }
}

/// What to fence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceRequest {
    pub rid: u64,
    /// `"a.b.c.d:port"` of the target (its quorum slot address for a
    /// predecessor), for agents that act on the machine.
    pub addr: String,
    pub reason: FenceReason,
    /// The term of the leader asking.
    pub term: u64,
}

/// Why a fence did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceError {
    /// The agent said it could not fence.
    Failed(String),
    /// The deadline passed first.
    TimedOut,
    /// The registry was shut down (the server stopped).
    Cancelled,
}

/// Something that can fence a mount. `fence` completes once the target
/// can no longer write the shared devices.
pub trait FenceAgent {
    fn fence(&self, req: FenceRequest) -> LocalFut<'_, Result<(), FenceError>>;
}

/// A request's state in the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceState {
    Pending,
    Fenced,
    Error(FenceError),
}

struct Entry {
    req: FenceRequest,
    state: FenceState,
    started_ns: u64,
}

/// The fence requests of one server life, one per rid.
pub struct FenceRegistry {
    agent: Rc<dyn FenceAgent>,
    handle: Handle,
    entries: RefCell<BTreeMap<u64, Entry>>,
    changed: Notify,
    tasks: RefCell<Vec<crate::runtime::exec::JoinHandle<()>>>,
}

impl FenceRegistry {
    pub fn new(agent: Rc<dyn FenceAgent>, handle: Handle) -> Rc<FenceRegistry> {
        Rc::new(FenceRegistry {
            agent,
            handle,
            entries: RefCell::new(BTreeMap::new()),
            changed: Notify::new(),
            tasks: RefCell::new(Vec::new()),
        })
    }

    /// Start fencing `req.rid` with deadline `timeout_ns` from now; a rid
    /// that already has a request keeps it (a no-op).
    pub fn start(self: &Rc<Self>, req: FenceRequest, timeout_ns: u64) {
        let rid = req.rid;
        if self.entries.borrow().contains_key(&rid) {
            counter!("fence.duplicates").inc();
            return;
        }
        counter!("fence.requests").inc();
        self.entries.borrow_mut().insert(
            rid,
            Entry {
                req: req.clone(),
                state: FenceState::Pending,
                started_ns: self.handle.now_ns(),
            },
        );
        let me = self.clone();
        let deadline = self.handle.now_ns().saturating_add(timeout_ns);
        let jh = self.handle.spawn_named("fence", async move {
            let agent = me.agent.clone();
            let r = me.handle.timeout_at(deadline, agent.fence(req)).await;
            let st = match r {
                Ok(Ok(())) => FenceState::Fenced,
                Ok(Err(e)) => FenceState::Error(e),
                Err(_) => FenceState::Error(FenceError::TimedOut),
            };
            me.finish(rid, st);
        });
        match jh {
            Ok(jh) => self.tasks.borrow_mut().push(jh),
            Err(_) => self.finish(rid, FenceState::Error(FenceError::Cancelled)),
        }
    }

    fn finish(&self, rid: u64, st: FenceState) {
        if let Some(e) = self.entries.borrow_mut().get_mut(&rid) {
            if e.state == FenceState::Pending {
                match &st {
                    FenceState::Fenced => counter!("fence.fenced").inc(),
                    _ => counter!("fence.errors").inc(),
                }
                e.state = st;
            }
        }
        self.changed.notify();
    }

    pub fn state(&self, rid: u64) -> Option<FenceState> {
        self.entries.borrow().get(&rid).map(|e| e.state.clone())
    }

    /// Every request: (request, state, started at ns).
    pub fn list(&self) -> Vec<(FenceRequest, FenceState, u64)> {
        self.entries
            .borrow()
            .values()
            .map(|e| (e.req.clone(), e.state.clone(), e.started_ns))
            .collect()
    }

    /// Wait until every rid in `rids` is fenced: `Err` at the first that
    /// errors (or timed out).
    pub async fn wait_all(&self, rids: &[u64]) -> Result<(), (u64, FenceError)> {
        loop {
            let changed = self.changed.notified();
            let mut pending = false;
            for &rid in rids {
                match self.state(rid) {
                    Some(FenceState::Fenced) => {}
                    Some(FenceState::Error(e)) => return Err((rid, e)),
                    Some(FenceState::Pending) => pending = true,
                    None => return Err((rid, FenceError::Cancelled)),
                }
            }
            if !pending {
                return Ok(());
            }
            changed.await;
        }
    }

    /// Drop every request (the server stopped): pending ones end
    /// `Cancelled`.
    pub fn shutdown(&self) {
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
        for e in self.entries.borrow_mut().values_mut() {
            if e.state == FenceState::Pending {
                e.state = FenceState::Error(FenceError::Cancelled);
            }
        }
        self.changed.notify();
    }
}

/// A request waiting for the operator, and the answer once given.
type Waiting = (FenceRequest, Option<Result<(), FenceError>>);

/// The operator's agent: a request waits for `fence ack RID` (the operator
/// made sure the machine is off or cut from the disks) or `fence fail RID`.
#[derive(Default)]
pub struct ManualFence {
    /// rid -> (request, answer once given).
    pending: RefCell<BTreeMap<u64, Waiting>>,
    changed: Notify,
}

impl ManualFence {
    pub fn new() -> Rc<ManualFence> {
        Rc::new(ManualFence::default())
    }

    /// The requests waiting for an operator.
    pub fn waiting(&self) -> Vec<FenceRequest> {
        self.pending
            .borrow()
            .values()
            .filter(|(_, a)| a.is_none())
            .map(|(r, _)| r.clone())
            .collect()
    }

    fn answer(&self, rid: u64, a: Result<(), FenceError>) -> bool {
        let mut p = self.pending.borrow_mut();
        match p.get_mut(&rid) {
            Some((_, ans @ None)) => {
                *ans = Some(a);
                drop(p);
                self.changed.notify();
                true
            }
            _ => false,
        }
    }

    /// `fence ack RID`: the operator fenced it. False if no request waits
    /// for that rid.
    pub fn ack(&self, rid: u64) -> bool {
        self.answer(rid, Ok(()))
    }

    /// `fence fail RID`: the operator could not fence it.
    pub fn fail(&self, rid: u64) -> bool {
        self.answer(
            rid,
            Err(FenceError::Failed("operator reported failure".into())),
        )
    }
}

impl ManualFence {
    /// Drop `rid`'s entry (another agent answered, or the request
    /// ended): the shell no longer lists it.
    pub fn forget(&self, rid: u64) {
        if self.pending.borrow_mut().remove(&rid).is_some() {
            self.changed.notify();
        }
    }
}

impl FenceAgent for ManualFence {
    fn fence(&self, req: FenceRequest) -> LocalFut<'_, Result<(), FenceError>> {
        let rid = req.rid;
        self.pending.borrow_mut().entry(rid).or_insert((req, None));
        Box::pin(async move {
            loop {
                let changed = self.changed.notified();
                let ans = self.pending.borrow().get(&rid).and_then(|(_, a)| a.clone());
                if let Some(a) = ans {
                    self.pending.borrow_mut().remove(&rid);
                    return a;
                }
                changed.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::exec::{Executor, Limits};

    fn req(rid: u64) -> FenceRequest {
        FenceRequest {
            rid,
            addr: "10.0.0.1:7000".into(),
            reason: FenceReason::QuorumBlockLeader,
            term: 3,
        }
    }

    #[test]
    fn manual_ack_fences_dedupes_and_deadlines_expire() {
        let ex = Executor::new(Limits::default());
        let man = ManualFence::new();
        let reg = FenceRegistry::new(man.clone(), ex.handle());
        reg.start(req(1), 1_000);
        reg.start(req(1), 1_000);
        reg.start(req(2), 1_000);
        ex.run_until_stalled(0);
        assert_eq!(man.waiting().len(), 2);
        assert!(man.ack(1));
        assert!(!man.ack(9));
        ex.run_until_stalled(10);
        assert_eq!(reg.state(1), Some(FenceState::Fenced));
        assert_eq!(reg.state(2), Some(FenceState::Pending));
        // rid 2 is never acked: its deadline makes it an error
        ex.run_until_stalled(2_000);
        assert_eq!(reg.state(2), Some(FenceState::Error(FenceError::TimedOut)));
        let r = ex.block_on(reg.wait_all(&[1, 2])).unwrap();
        assert_eq!(r, Err((2, FenceError::TimedOut)));
        assert_eq!(ex.block_on(reg.wait_all(&[1])).unwrap(), Ok(()));
    }
}
