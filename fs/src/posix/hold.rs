//! Transaction holds: what keeps POSIX operations and commits apart.
//!
//! An operation that changes items holds the transaction exclusively for
//! its whole duration (a [`WriteHold`]); operations that only read share
//! it ([`ReadHold`]). A commit runs under an exclusive hold, so it never
//! sees half an operation and no item changes while the backend writes.
//! Waiting writers block new readers (no writer starvation).
//!
//! An operation that must wait for more cluster locks part way (after a
//! commit moved the transaction seq into an index group it does not hold)
//! *parks* its hold: commits ([`HoldLock::commit`]) may then run, other
//! operations and readers may not, and the operation resumes with its
//! view of the items intact. Waiting for a lock while holding the
//! transaction would deadlock: the grant may need this mount's commit.
//!
//! [`CommitPolicy`] says when the open transaction must commit: on size
//! (dirty bytes), on time (10 s after it first dirtied something, checked
//! at each hold and by `Mount::tick`), when the backend asks, and on sync.
//! Single-threaded: interior mutability, no borrow held across an await.

use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

/// When to commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitPolicy {
    /// Commit when the transaction first dirtied something this long ago.
    pub interval_ns: u64,
    /// Commit before an operation when dirty items use this many bytes.
    pub dirty_limit_bytes: usize,
}

/// scoutfs commits client transactions every 10 seconds.
pub const COMMIT_INTERVAL_NS: u64 = 10_000_000_000;
pub const DEFAULT_DIRTY_LIMIT_BYTES: usize = 32 << 20;

impl Default for CommitPolicy {
    fn default() -> Self {
        CommitPolicy {
            interval_ns: COMMIT_INTERVAL_NS,
            dirty_limit_bytes: DEFAULT_DIRTY_LIMIT_BYTES,
        }
    }
}

impl CommitPolicy {
    /// Is a commit due given the cache's state and the backend's wish?
    pub fn due(
        &self,
        now_ns: u64,
        first_dirty_ns: Option<u64>,
        dirty_bytes: usize,
        backend_wants: bool,
    ) -> bool {
        // the backend may need a new transaction with nothing dirty
        // (allocator refills, a server's sync request)
        if backend_wants {
            return true;
        }
        let Some(first) = first_dirty_ns else {
            return false;
        };
        dirty_bytes >= self.dirty_limit_bytes || now_ns.saturating_sub(first) >= self.interval_ns
    }
}

/// `HoldLock::state` values below zero.
const WRITER: i64 = -1;
/// An operation's hold, lent to commits while it waits for locks.
const PARKED: i64 = -2;
/// A commit runs inside a parked hold.
const PARKED_COMMIT: i64 = -3;

/// The shared/exclusive hold on the open transaction.
#[derive(Default)]
pub struct HoldLock {
    /// Above 0: that many readers; 0: free; else `WRITER`, `PARKED` or
    /// `PARKED_COMMIT`.
    state: Cell<i64>,
    /// The parked operation went away while a commit ran in its hold.
    park_abandoned: Cell<bool>,
    writers_waiting: Cell<u32>,
    waiters: RefCell<Vec<Waker>>,
    /// Times an acquisition had to wait (a contention counter).
    waits: Cell<u64>,
}

impl HoldLock {
    pub fn new() -> HoldLock {
        HoldLock::default()
    }

    /// Exclusive hold for an operation that changes items.
    pub fn write(&self) -> AcquireWrite<'_> {
        AcquireWrite {
            lock: self,
            waiting: false,
            commit: false,
        }
    }

    /// Exclusive hold for a commit: like [`Self::write`], but it may also
    /// run inside a parked operation's hold.
    pub fn commit(&self) -> AcquireWrite<'_> {
        AcquireWrite {
            lock: self,
            waiting: false,
            commit: true,
        }
    }

    pub fn read(&self) -> AcquireRead<'_> {
        AcquireRead { lock: self }
    }

    pub fn waits(&self) -> u64 {
        self.waits.get()
    }

    /// Is anyone holding it?
    pub fn is_held(&self) -> bool {
        self.state.get() != 0
    }

    fn park(&self, cx: &Context<'_>) {
        let mut w = self.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
    }

    fn wake_all(&self) {
        let waiters = core::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}

pub struct AcquireWrite<'a> {
    lock: &'a HoldLock,
    waiting: bool,
    commit: bool,
}

impl<'a> Future for AcquireWrite<'a> {
    type Output = WriteHold<'a>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<WriteHold<'a>> {
        let lock = self.lock;
        let state = lock.state.get();
        let in_park = self.commit && state == PARKED;
        if state == 0 || in_park {
            lock.state.set(if in_park { PARKED_COMMIT } else { WRITER });
            if self.waiting {
                self.waiting = false;
                lock.writers_waiting.set(lock.writers_waiting.get() - 1);
            }
            return Poll::Ready(WriteHold {
                lock: Some(lock),
                in_park,
            });
        }
        if !self.waiting {
            self.waiting = true;
            lock.writers_waiting.set(lock.writers_waiting.get() + 1);
            lock.waits.set(lock.waits.get() + 1);
        }
        lock.park(cx);
        Poll::Pending
    }
}

impl Drop for AcquireWrite<'_> {
    fn drop(&mut self) {
        if self.waiting {
            self.lock
                .writers_waiting
                .set(self.lock.writers_waiting.get() - 1);
            self.lock.wake_all();
        }
    }
}

pub struct AcquireRead<'a> {
    lock: &'a HoldLock,
}

impl<'a> Future for AcquireRead<'a> {
    type Output = ReadHold<'a>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ReadHold<'a>> {
        let lock = self.lock;
        if lock.state.get() >= 0 && lock.writers_waiting.get() == 0 {
            lock.state.set(lock.state.get() + 1);
            return Poll::Ready(ReadHold { lock });
        }
        lock.waits.set(lock.waits.get() + 1);
        lock.park(cx);
        Poll::Pending
    }
}

/// Exclusive hold: item changes and commits happen under it.
pub struct WriteHold<'a> {
    /// `None` once parked.
    lock: Option<&'a HoldLock>,
    /// A commit inside a parked hold: gives it back to the parked
    /// operation when done.
    in_park: bool,
}

impl<'a> WriteHold<'a> {
    /// Lend the hold to commits while this operation waits (for cluster
    /// locks); nothing else gets in. The items must be consistent.
    pub fn park(mut self) -> ParkedHold<'a> {
        assert!(!self.in_park, "a commit does not park");
        let lock = self.lock.take().expect("held");
        assert_eq!(lock.state.get(), WRITER);
        lock.state.set(PARKED);
        lock.wake_all();
        ParkedHold { lock: Some(lock) }
    }
}

impl Drop for WriteHold<'_> {
    fn drop(&mut self) {
        let Some(lock) = self.lock else { return };
        if self.in_park {
            assert_eq!(lock.state.get(), PARKED_COMMIT);
            let back = if lock.park_abandoned.replace(false) {
                0
            } else {
                PARKED
            };
            lock.state.set(back);
        } else {
            assert_eq!(lock.state.get(), WRITER);
            lock.state.set(0);
        }
        lock.wake_all();
    }
}

/// An operation's parked hold: commits may run; [`Self::resume`] takes
/// it back once they are done. Dropped without resuming, it frees the
/// hold.
pub struct ParkedHold<'a> {
    lock: Option<&'a HoldLock>,
}

impl<'a> ParkedHold<'a> {
    pub fn resume(self) -> Resume<'a> {
        Resume { parked: self }
    }
}

impl Drop for ParkedHold<'_> {
    fn drop(&mut self) {
        let Some(lock) = self.lock else { return };
        match lock.state.get() {
            PARKED => {
                lock.state.set(0);
                lock.wake_all();
            }
            PARKED_COMMIT => lock.park_abandoned.set(true),
            s => panic!("parked hold in state {s}"),
        }
    }
}

pub struct Resume<'a> {
    parked: ParkedHold<'a>,
}

impl<'a> Future for Resume<'a> {
    type Output = WriteHold<'a>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<WriteHold<'a>> {
        let lock = self.parked.lock.expect("not resumed yet");
        if lock.state.get() == PARKED {
            lock.state.set(WRITER);
            self.parked.lock = None;
            return Poll::Ready(WriteHold {
                lock: Some(lock),
                in_park: false,
            });
        }
        lock.park(cx);
        Poll::Pending
    }
}

/// Shared hold: reads only.
pub struct ReadHold<'a> {
    lock: &'a HoldLock,
}

impl Drop for ReadHold<'_> {
    fn drop(&mut self) {
        let s = self.lock.state.get();
        assert!(s > 0);
        self.lock.state.set(s - 1);
        if s == 1 {
            self.lock.wake_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::pin::pin;

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn writers_exclude_everyone_and_are_not_starved() {
        let l = HoldLock::new();
        let r1 = match poll_once(pin!(l.read())) {
            Poll::Ready(h) => h,
            Poll::Pending => panic!("free lock"),
        };
        let mut w = pin!(l.write());
        assert!(poll_once(w.as_mut()).is_pending());
        // a waiting writer blocks new readers
        assert!(poll_once(pin!(l.read())).is_pending());
        drop(r1);
        let wh = match poll_once(w.as_mut()) {
            Poll::Ready(h) => h,
            Poll::Pending => panic!("reader gone"),
        };
        assert!(poll_once(pin!(l.read())).is_pending());
        assert!(poll_once(pin!(l.write())).is_pending());
        drop(wh);
        assert!(!l.is_held());
        assert!(poll_once(pin!(l.read())).is_ready());
        assert!(l.waits() >= 3);
    }

    fn ready<F: Future>(f: Pin<&mut F>) -> F::Output {
        match poll_once(f) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("should be ready"),
        }
    }

    #[test]
    fn a_parked_hold_admits_commits_only() {
        let l = HoldLock::new();
        let op = ready(pin!(l.write()));
        let mut waiting_op = pin!(l.write());
        assert!(poll_once(waiting_op.as_mut()).is_pending());
        let parked = op.park();
        assert!(l.is_held());
        assert!(poll_once(waiting_op.as_mut()).is_pending(), "no other op");
        assert!(poll_once(pin!(l.read())).is_pending(), "no reader");
        let c = ready(pin!(l.commit()));
        assert!(
            poll_once(pin!(l.commit())).is_pending(),
            "one commit at a time"
        );
        let mut resume = pin!(parked.resume());
        assert!(poll_once(resume.as_mut()).is_pending(), "the commit runs");
        drop(c);
        let op = ready(resume);
        assert!(poll_once(pin!(l.commit())).is_pending());
        drop(op);
        let other = ready(waiting_op);
        drop(other);
        assert!(!l.is_held());

        // a commit of a free hold is an ordinary writer
        let c = ready(pin!(l.commit()));
        assert!(poll_once(pin!(l.write())).is_pending());
        drop(c);

        // a parked op that goes away during a commit frees the hold after it
        let parked = ready(pin!(l.write())).park();
        let c = ready(pin!(l.commit()));
        drop(parked);
        assert!(l.is_held());
        drop(c);
        assert!(!l.is_held());
        // and without a commit at once
        drop(ready(pin!(l.write())).park());
        assert!(!l.is_held());
    }

    #[test]
    fn policy_triggers() {
        let p = CommitPolicy {
            interval_ns: 10,
            dirty_limit_bytes: 100,
        };
        assert!(
            !p.due(1000, None, 1 << 30, false),
            "nothing dirty, nothing to do"
        );
        assert!(
            p.due(1000, None, 0, true),
            "the backend may need a new transaction with nothing dirty"
        );
        assert!(!p.due(5, Some(0), 99, false));
        assert!(p.due(10, Some(0), 0, false));
        assert!(p.due(5, Some(0), 100, false));
        assert!(p.due(5, Some(0), 0, true));
    }
}
