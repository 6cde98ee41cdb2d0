//! Transaction holds: what keeps POSIX operations and commits apart.
//!
//! An operation that changes items holds the transaction exclusively for
//! its whole duration (a [`WriteHold`]); operations that only read share
//! it ([`ReadHold`]). A commit runs under an exclusive hold, so it never
//! sees half an operation and no item changes while the backend writes.
//! Waiting writers block new readers (no writer starvation).
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

/// The shared/exclusive hold on the open transaction.
#[derive(Default)]
pub struct HoldLock {
    /// > 0: that many readers; -1: one writer; 0: free.
    state: Cell<i64>,
    writers_waiting: Cell<u32>,
    waiters: RefCell<Vec<Waker>>,
    /// Times an acquisition had to wait (a contention counter).
    waits: Cell<u64>,
}

impl HoldLock {
    pub fn new() -> HoldLock {
        HoldLock::default()
    }

    pub fn write(&self) -> AcquireWrite<'_> {
        AcquireWrite {
            lock: self,
            waiting: false,
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
}

impl<'a> Future for AcquireWrite<'a> {
    type Output = WriteHold<'a>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<WriteHold<'a>> {
        let lock = self.lock;
        if lock.state.get() == 0 {
            lock.state.set(-1);
            if self.waiting {
                self.waiting = false;
                lock.writers_waiting.set(lock.writers_waiting.get() - 1);
            }
            return Poll::Ready(WriteHold { lock });
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
    lock: &'a HoldLock,
}

impl Drop for WriteHold<'_> {
    fn drop(&mut self) {
        assert_eq!(self.lock.state.get(), -1);
        self.lock.state.set(0);
        self.lock.wake_all();
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
