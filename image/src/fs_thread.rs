//! The fs thread: one OS thread that owns a mounted filesystem (`Mount`,
//! single-threaded, `Rc`/`RefCell` inside) and runs every operation on it
//! as a task of a real-time `Executor`. Front ends (the FUSE session
//! thread) hand it jobs over a bounded channel; each job is an async
//! closure that runs the operation and sends its own reply.
//!
//! Called by `fuse.rs` (jobs) and `scoutvm mount` (start, shutdown).
//! Invariants: the `Mount` never leaves this thread; the executor's time
//! is the host's monotonic clock (timers fire in real time, never
//! early); a due commit is attempted at least every `TICK_NS` (`tick`);
//! shutdown waits for every job already queued, then runs the volume's
//! close (final sync, clean unmount) exactly once.

use crate::hostenv::HostClock;
use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::runtime::env::Clock;
use scoutvm_fs::runtime::exec::{Executor, Handle, JoinHandle};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// A boxed future that stays on the fs thread.
pub type LocalFut<T> = Pin<Box<dyn Future<Output = T>>>;

/// One operation for the fs thread: called there with the mount, it
/// returns the future that does the work and replies.
pub type Job = Box<dyn FnOnce(Rc<Mount>) -> LocalFut<()> + Send>;

/// What an opener gets to build the volume with.
pub struct OpenCtx {
    /// The fs thread's executor, for the volume's background tasks.
    pub handle: Handle,
    pub clock: Rc<HostClock>,
}

/// How to close an opened volume: final sync and clean unmount (and
/// whatever else the volume needs stopped); runs once, after the last job.
pub type Close = Box<dyn FnOnce(Rc<Mount>) -> LocalFut<Result<(), String>>>;

/// An opened volume: the mount, and how to close it cleanly.
pub struct Opened {
    pub mount: Rc<Mount>,
    pub close: Close,
}

/// Builds the volume on the fs thread (the devices, backend and `Mount`
/// are not `Send`; only this closure crosses threads).
pub type Opener = Box<dyn FnOnce(OpenCtx) -> LocalFut<Result<Opened, String>> + Send>;

/// Jobs queued at most; a full queue blocks the submitter (back pressure
/// on the kernel's request stream), counted in `queue_full`.
pub const QUEUE_DEPTH: usize = 1024;
/// A commit that is due is attempted at least this often.
pub const TICK_NS: u64 = 1_000_000_000;
/// The loop wakes at least this often even when idle.
const IDLE_WAKE_NS: u64 = 1_000_000_000;
/// Jobs taken from the channel per turn before the executor runs again.
const BATCH_JOBS: usize = 64;

enum Msg {
    Job(Job),
    Shutdown,
}

/// Totals of one fs thread, readable from any thread.
#[derive(Default, Debug)]
pub struct FsStats {
    pub jobs: AtomicU64,
    pub queue_full: AtomicU64,
    pub spawn_rejected: AtomicU64,
    pub ticks: AtomicU64,
    pub tick_errors: AtomicU64,
}

/// A snapshot of [`FsStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStatsSnapshot {
    pub jobs: u64,
    pub queue_full: u64,
    pub spawn_rejected: u64,
    pub ticks: u64,
    pub tick_errors: u64,
}

impl FsStats {
    pub fn snapshot(&self) -> FsStatsSnapshot {
        FsStatsSnapshot {
            jobs: self.jobs.load(Ordering::Relaxed),
            queue_full: self.queue_full.load(Ordering::Relaxed),
            spawn_rejected: self.spawn_rejected.load(Ordering::Relaxed),
            ticks: self.ticks.load(Ordering::Relaxed),
            tick_errors: self.tick_errors.load(Ordering::Relaxed),
        }
    }
}

/// Sends jobs to the fs thread; cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Submitter {
    tx: SyncSender<Msg>,
    stats: Arc<FsStats>,
}

impl Submitter {
    /// Queue `job`; blocks while the queue is full. `false` if the fs
    /// thread is gone (the job is dropped: a FUSE reply inside it answers
    /// `EIO` when dropped).
    pub fn submit(&self, job: Job) -> bool {
        match self.tx.try_send(Msg::Job(job)) {
            Ok(()) => true,
            Err(TrySendError::Full(msg)) => {
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                self.tx.send(msg).is_ok()
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// The running fs thread.
pub struct FsThread {
    tx: SyncSender<Msg>,
    stats: Arc<FsStats>,
    join: std::thread::JoinHandle<Result<(), String>>,
}

impl FsThread {
    /// Start the thread and open the volume on it; returns once the
    /// volume is mounted, or with the opener's error.
    pub fn start(opener: Opener) -> Result<FsThread, String> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = mpsc::channel();
        let stats = Arc::new(FsStats::default());
        let thread_stats = stats.clone();
        let join = std::thread::Builder::new()
            .name("scoutvm-fs".into())
            .spawn(move || run(opener, rx, ready_tx, thread_stats))
            .map_err(|e| format!("cannot start the fs thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(FsThread { tx, stats, join }),
            Ok(Err(e)) => {
                let _ = join.join();
                Err(e)
            }
            Err(_) => Err(match join.join() {
                Ok(Err(e)) => e,
                Ok(Ok(())) => "the fs thread stopped while opening the volume".into(),
                Err(_) => "the fs thread panicked while opening the volume".into(),
            }),
        }
    }

    pub fn submitter(&self) -> Submitter {
        Submitter {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
        }
    }

    pub fn stats(&self) -> FsStatsSnapshot {
        self.stats.snapshot()
    }

    /// Finish every queued job, close the volume (final sync, clean
    /// unmount) and stop the thread.
    pub fn shutdown(self) -> Result<(), String> {
        // A send error means the thread already ended; join tells why.
        let _ = self.tx.send(Msg::Shutdown);
        drop(self.tx);
        match self.join.join() {
            Ok(r) => r,
            Err(_) => Err("the fs thread panicked".into()),
        }
    }
}

enum Phase {
    Opening(JoinHandle<Result<Opened, String>>),
    Serving { mount: Rc<Mount>, close: Close },
    Closing(JoinHandle<Result<(), String>>),
}

fn run(
    opener: Opener,
    rx: Receiver<Msg>,
    ready: mpsc::Sender<Result<(), String>>,
    stats: Arc<FsStats>,
) -> Result<(), String> {
    let exec = Executor::default();
    let clock = Rc::new(HostClock::new());
    let ctx = OpenCtx {
        handle: exec.handle(),
        clock: clock.clone(),
    };
    let opening = exec
        .spawn(opener(ctx))
        .map_err(|e| format!("cannot start opening the volume: {e}"))?;
    let mut phase = Phase::Opening(opening);
    let mut ready = Some(ready);
    // Jobs and ticks running; shutdown waits for them.
    let in_flight = Rc::new(Cell::new(0usize));
    let tick_running = Rc::new(Cell::new(false));
    let commits_failing = Rc::new(Cell::new(false));
    let mut shutting_down = false;
    let mut next_tick_ns = TICK_NS;
    loop {
        let now = clock.monotonic_ns();
        exec.run_until_stalled(now);

        phase = match phase {
            Phase::Opening(h) if h.is_finished() => {
                let r = h.try_take().unwrap_or_else(|| Err("open lost".into()));
                match r {
                    Ok(opened) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(Ok(()));
                        }
                        Phase::Serving {
                            mount: opened.mount,
                            close: opened.close,
                        }
                    }
                    Err(e) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(Err(e.clone()));
                        }
                        return Err(e);
                    }
                }
            }
            Phase::Serving { mount, close }
                if shutting_down && in_flight.get() == 0 && !tick_running.get() =>
            {
                let closing = exec
                    .spawn(close(mount))
                    .map_err(|e| format!("cannot start closing the volume: {e}"))?;
                Phase::Closing(closing)
            }
            Phase::Closing(h) if h.is_finished() => {
                return h.try_take().unwrap_or_else(|| Err("close lost".into()));
            }
            p => p,
        };
        if exec.has_ready() {
            continue;
        }

        if let Phase::Serving { mount, .. } = &phase {
            if !shutting_down && !tick_running.get() && now >= next_tick_ns {
                next_tick_ns = now.saturating_add(TICK_NS);
                spawn_tick(&exec, mount, &tick_running, &commits_failing, &stats);
                continue;
            }
        }

        let mut deadline = now.saturating_add(IDLE_WAKE_NS);
        if let Some(t) = exec.next_deadline_ns() {
            deadline = deadline.min(t);
        }
        if let Phase::Serving { mount, .. } = &phase {
            deadline = deadline.min(next_tick_ns);
            if let Some(t) = mount.next_commit_deadline_ns() {
                // A commit due before the next regular tick moves it up.
                if t < next_tick_ns {
                    next_tick_ns = t.max(now);
                    deadline = deadline.min(next_tick_ns);
                }
            }
        }
        let wait = Duration::from_nanos(deadline.saturating_sub(now).max(1));
        let serving = matches!(phase, Phase::Serving { .. });
        if !serving || shutting_down {
            // Opening or closing: only timers can wake tasks. Jobs that
            // arrive late (after shutdown) are dropped, answering EIO.
            if shutting_down {
                while let Ok(Msg::Job(_)) = rx.try_recv() {}
            }
            if !exec.has_ready() {
                std::thread::sleep(wait.min(Duration::from_millis(10)));
            }
            continue;
        }
        let Phase::Serving { mount, .. } = &phase else {
            continue;
        };
        let first = match rx.recv_timeout(wait) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => Msg::Shutdown,
        };
        let mut msg = Some(first);
        let mut taken = 0;
        while let Some(m) = msg.take() {
            match m {
                Msg::Job(job) => {
                    stats.jobs.fetch_add(1, Ordering::Relaxed);
                    spawn_job(&exec, mount, job, &in_flight, &stats);
                }
                Msg::Shutdown => {
                    shutting_down = true;
                    break;
                }
            }
            taken += 1;
            if taken < BATCH_JOBS {
                msg = match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => Some(Msg::Shutdown),
                };
            }
        }
    }
}

fn spawn_job(
    exec: &Executor,
    mount: &Rc<Mount>,
    job: Job,
    in_flight: &Rc<Cell<usize>>,
    stats: &FsStats,
) {
    let fut = job(mount.clone());
    let count = in_flight.clone();
    count.set(count.get() + 1);
    let r = exec.spawn(async move {
        fut.await;
        count.set(count.get() - 1);
    });
    if r.is_err() {
        // The future (and the reply in it) is dropped: the kernel gets EIO.
        in_flight.set(in_flight.get() - 1);
        stats.spawn_rejected.fetch_add(1, Ordering::Relaxed);
    }
}

fn spawn_tick(
    exec: &Executor,
    mount: &Rc<Mount>,
    running: &Rc<Cell<bool>>,
    failing: &Rc<Cell<bool>>,
    stats: &Arc<FsStats>,
) {
    let m = mount.clone();
    let flag = running.clone();
    let failing = failing.clone();
    let st = stats.clone();
    flag.set(true);
    let r = exec.spawn(async move {
        st.ticks.fetch_add(1, Ordering::Relaxed);
        // The items stay dirty and the next tick retries; say so once
        // per run of failures.
        match m.tick().await {
            Err(e) => {
                st.tick_errors.fetch_add(1, Ordering::Relaxed);
                if !failing.replace(true) {
                    eprintln!("scoutvm: periodic commit failed: {e}; retrying");
                }
            }
            Ok(()) => {
                if failing.replace(false) {
                    eprintln!("scoutvm: periodic commits work again");
                }
            }
        }
        flag.set(false);
    });
    if r.is_err() {
        running.set(false);
        stats.spawn_rejected.fetch_add(1, Ordering::Relaxed);
    }
}
