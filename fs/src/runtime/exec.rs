//! The single-threaded async executor every task of a node runs on (9P
//! requests, commits, cluster client and server, the shell).
//!
//! Callers own time: [`Executor::run_until_stalled`] takes `now_ns`, fires
//! the timers that are due and polls ready tasks until none is left (or the
//! per-run poll budget is spent); [`Executor::next_deadline_ns`] tells the
//! kernel how long it may `hlt`. Host tools and tests use
//! [`Executor::block_on`] / [`block_on`], which advance *virtual* time to
//! the next timer whenever everything is stalled. Deterministic: tasks run
//! in FIFO wake order and timers fire in (deadline, registration) order.
//! Bounded: at most `Limits::max_tasks` live tasks; a refused spawn is an
//! error and bumps `exec.spawn_rejected`. 100 % safe code: wakers are
//! `Arc`s over a spin-locked ready queue (`alloc::task::Wake`).
//!
//! Every poll runs as the executor's node ([`Executor::set_node`]) and at
//! its `now` ([`trace::enter_time`], what a [`trace::TimeSource::Executor`]
//! stamps events with).
//!
//! Long polls: a task that runs long between two awaits stops the whole
//! node (heartbeats, replies). fs reads no clock, so the embedder installs
//! a host clock for measuring ([`Executor::set_poll_clock`]); then every
//! poll is timed and the longest one is kept ([`ExecStats::max_poll_ns`],
//! with its task and that task's name) and published as the per-node
//! gauge `exec.max_poll_ns`; polls over [`LONG_POLL_NS`] bump
//! `exec.long_polls` and emit `exec_long_poll`. Long synchronous work
//! awaits [`yield_now`] between bounded steps. A task that wakes itself
//! during its poll (a yield) is polled again only in the next run (queued
//! behind every task ready at the end of this one), so between two of its
//! steps the embedder's main loop gets control back (device interrupts,
//! the network, timers: a heartbeat is answered while a commit goes on).

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::{Rc, Weak};
use alloc::sync::Arc;
use alloc::task::Wake;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll, Waker};

use spin::Mutex;

use crate::counter;
use crate::runtime::counters::Counter;
use crate::runtime::node::{self, NodeId};
use crate::runtime::trace::{self, Tracepoint};

/// A poll longer than this (host time) is counted in `exec.long_polls`
/// and traced: the target for every poll of the filesystem.
pub const LONG_POLL_NS: u64 = 50_000_000;

static TP_LONG_POLL: Tracepoint = Tracepoint::new("exec_long_poll", &["task", "ns"]);
/// The per-node gauge of the longest poll (one static: it is also reset).
static MAX_POLL_NS: Counter = Counter::new("exec.max_poll_ns");
/// Polls longer than [`LONG_POLL_NS`], per node.
static LONG_POLLS: Counter = Counter::new("exec.long_polls");

/// The name of tasks spawned without one.
pub const DEFAULT_TASK_NAME: &str = "task";
/// The task id and name [`ExecStats`] gives the root future of
/// [`Executor::block_on`].
pub const ROOT_TASK: (TaskId, &str) = (0, "block_on");

/// Identifies a task for its whole life; never reused.
pub type TaskId = u64;

/// Bounds of one executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Live tasks at most (spawned and not yet finished).
    pub max_tasks: usize,
    /// Polls per `run_until_stalled` call, so tasks that keep waking each
    /// other cannot starve the main loop (a task that wakes itself gets one
    /// poll per run anyway).
    pub max_polls_per_run: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tasks: 4096,
            max_polls_per_run: 10_000,
        }
    }
}

/// Why a spawn was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnError {
    /// `Limits::max_tasks` tasks are alive.
    TooManyTasks,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("too many tasks")
    }
}

/// The root future of [`Executor::block_on`] can make no progress: no task
/// is ready and no timer is pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stalled;

/// A [`Handle::timeout_at`] deadline passed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed;

/// Totals since the executor was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecStats {
    pub spawned: u64,
    pub completed: u64,
    pub aborted: u64,
    pub rejected: u64,
    pub polls: u64,
    pub timers_fired: u64,
    pub alive: usize,
    /// The longest single poll in host nanoseconds (0 without a poll
    /// clock), since the executor was made or [`Executor::reset_max_poll`].
    pub max_poll_ns: u64,
    /// The task of that poll ([`ROOT_TASK`] for the root of `block_on`).
    pub max_poll_task: TaskId,
    /// Its name ([`Handle::spawn_named`]).
    pub max_poll_name: &'static str,
    /// Polls longer than [`LONG_POLL_NS`].
    pub long_polls: u64,
}

/// What one `run_until_stalled` call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    pub polls: usize,
    pub timers_fired: usize,
    /// Tasks that yielded ([`yield_now`]): ready again for the next run.
    pub yielded: usize,
    /// Tasks are still ready (the poll budget ran out): do not sleep.
    pub more_ready: bool,
}

struct ReadyQueue {
    ids: Mutex<VecDeque<TaskId>>,
}

struct TaskWaker {
    id: TaskId,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.ids.lock().push_back(self.id);
        }
    }
}

struct Task {
    name: &'static str,
    future: Pin<Box<dyn Future<Output = ()>>>,
    waker_state: Arc<TaskWaker>,
    waker: Waker,
}

struct Inner {
    limits: Limits,
    tasks: RefCell<BTreeMap<TaskId, Task>>,
    /// Tasks aborted while they were being polled.
    cancelled: RefCell<Vec<TaskId>>,
    running: Cell<Option<TaskId>>,
    next_id: Cell<TaskId>,
    alive: Cell<usize>,
    ready: Arc<ReadyQueue>,
    timers: RefCell<BTreeMap<(u64, u64), Waker>>,
    timer_seq: Cell<u64>,
    now_ns: Cell<u64>,
    stats: Cell<ExecStats>,
    /// The node whose tasks these are: entered around every poll.
    node: Cell<NodeId>,
    /// Host nanoseconds, for timing polls (see [`Executor::set_poll_clock`]).
    poll_clock: Cell<Option<fn() -> u64>>,
}

impl Inner {
    fn bump(&self, f: impl FnOnce(&mut ExecStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Poll `poll` and, with a poll clock, account for how long it took.
    fn timed<R>(&self, id: TaskId, name: &'static str, poll: impl FnOnce() -> R) -> R {
        let Some(clock) = self.poll_clock.get() else {
            return poll();
        };
        let t0 = clock();
        let r = poll();
        let ns = clock().saturating_sub(t0);
        self.note_poll(id, name, ns);
        r
    }

    fn note_poll(&self, id: TaskId, name: &'static str, ns: u64) {
        let long = ns > LONG_POLL_NS;
        if ns > self.stats.get().max_poll_ns || long {
            self.bump(|s| {
                if ns > s.max_poll_ns {
                    s.max_poll_ns = ns;
                    s.max_poll_task = id;
                    s.max_poll_name = name;
                }
                if long {
                    s.long_polls += 1;
                }
            });
            MAX_POLL_NS.set_max(ns);
        }
        if long {
            LONG_POLLS.inc();
            TP_LONG_POLL.emit(&[id, ns]);
        }
    }

    fn reset_max_poll(&self) {
        self.bump(|s| {
            s.max_poll_ns = 0;
            s.max_poll_task = 0;
            s.max_poll_name = "";
        });
        let _node = node::enter(self.node.get());
        MAX_POLL_NS.set(0);
    }

    fn spawn<F>(
        self: &Rc<Self>,
        name: &'static str,
        future: F,
    ) -> Result<JoinHandle<F::Output>, SpawnError>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        if self.alive.get() >= self.limits.max_tasks {
            self.bump(|s| s.rejected += 1);
            counter!("exec.spawn_rejected").inc();
            return Err(SpawnError::TooManyTasks);
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let state = Rc::new(JoinState {
            result: RefCell::new(None),
            done: Cell::new(false),
            waiter: RefCell::new(None),
        });
        let task_state = state.clone();
        let wrapped = async move {
            let value = future.await;
            *task_state.result.borrow_mut() = Some(value);
            task_state.done.set(true);
            let waiter = task_state.waiter.borrow_mut().take();
            if let Some(w) = waiter {
                w.wake();
            }
        };
        let waker_state = Arc::new(TaskWaker {
            id,
            queued: AtomicBool::new(false),
            ready: self.ready.clone(),
        });
        let waker = Waker::from(waker_state.clone());
        self.tasks.borrow_mut().insert(
            id,
            Task {
                name,
                future: Box::pin(wrapped),
                waker_state,
                waker: waker.clone(),
            },
        );
        self.alive.set(self.alive.get() + 1);
        self.bump(|s| s.spawned += 1);
        counter!("exec.spawned").inc();
        waker.wake();
        Ok(JoinHandle {
            id,
            state,
            exec: Rc::downgrade(self),
        })
    }

    fn abort(&self, id: TaskId) {
        if self.running.get() == Some(id) {
            self.cancelled.borrow_mut().push(id);
            return;
        }
        let task = self.tasks.borrow_mut().remove(&id);
        if task.is_some() {
            self.alive.set(self.alive.get() - 1);
            self.bump(|s| s.aborted += 1);
        }
        drop(task);
    }

    fn fire_timers(&self, now_ns: u64) -> usize {
        if now_ns > self.now_ns.get() {
            self.now_ns.set(now_ns);
        }
        let now = self.now_ns.get();
        let due: Vec<Waker> = {
            let mut timers = self.timers.borrow_mut();
            let later = timers.split_off(&(now.saturating_add(1), 0));
            let due = core::mem::replace(&mut *timers, later);
            due.into_values().collect()
        };
        let fired = due.len();
        for w in due {
            w.wake();
        }
        self.bump(|s| s.timers_fired += fired as u64);
        fired
    }

    fn run(&self, now_ns: u64) -> RunReport {
        let _node = node::enter(self.node.get());
        let mut report = RunReport {
            timers_fired: self.fire_timers(now_ns),
            ..RunReport::default()
        };
        let _time = trace::enter_time(self.now_ns.get());
        // tasks that woke themselves during their poll: next run
        let mut deferred: Vec<TaskId> = Vec::new();
        while report.polls < self.limits.max_polls_per_run {
            let Some(id) = self.ready.ids.lock().pop_front() else {
                break;
            };
            let task = self.tasks.borrow_mut().remove(&id);
            let Some(mut task) = task else {
                continue; // finished or aborted after it was woken
            };
            task.waker_state.queued.store(false, Ordering::Release);
            self.running.set(Some(id));
            let mut cx = Context::from_waker(&task.waker);
            let future = task.future.as_mut();
            let done = self.timed(id, task.name, || future.poll(&mut cx).is_ready());
            self.running.set(None);
            report.polls += 1;
            let cancelled = {
                let mut c = self.cancelled.borrow_mut();
                match c.iter().position(|&x| x == id) {
                    Some(i) => {
                        c.swap_remove(i);
                        true
                    }
                    None => false,
                }
            };
            if done || cancelled {
                self.alive.set(self.alive.get() - 1);
                self.bump(|s| {
                    if done {
                        s.completed += 1
                    } else {
                        s.aborted += 1
                    }
                });
                drop(task);
            } else {
                if task.waker_state.queued.load(Ordering::Acquire) {
                    let mut ids = self.ready.ids.lock();
                    if let Some(at) = ids.iter().rposition(|&x| x == id) {
                        ids.remove(at);
                        deferred.push(id);
                    }
                }
                self.tasks.borrow_mut().insert(id, task);
            }
        }
        report.yielded = deferred.len();
        if !deferred.is_empty() {
            self.ready.ids.lock().extend(deferred);
        }
        self.bump(|s| s.polls += report.polls as u64);
        report.more_ready = !self.ready.ids.lock().is_empty();
        report
    }

    fn add_timer(&self, deadline_ns: u64, waker: Waker) -> (u64, u64) {
        let seq = self.timer_seq.get();
        self.timer_seq.set(seq + 1);
        let key = (deadline_ns, seq);
        self.timers.borrow_mut().insert(key, waker);
        key
    }
}

/// The executor. Not `Send`: it lives on the one CPU (or test thread).
pub struct Executor {
    inner: Rc<Inner>,
}

impl Drop for Executor {
    /// Drop every task with the executor. Tasks commonly hold a [`Handle`]
    /// (an `Rc` of the executor's state), so without this the state, the
    /// tasks and everything they hold would keep each other alive (a
    /// crashed simulated node would leak all of it). Futures dropped here
    /// may drop or abort other tasks, hence the loop; it is bounded by the
    /// task limit.
    fn drop(&mut self) {
        for _ in 0..=self.inner.limits.max_tasks {
            let tasks = core::mem::take(&mut *self.inner.tasks.borrow_mut());
            let timers = core::mem::take(&mut *self.inner.timers.borrow_mut());
            if tasks.is_empty() && timers.is_empty() {
                break;
            }
            drop(timers);
            drop(tasks);
        }
        self.inner.alive.set(0);
    }
}

impl Default for Executor {
    fn default() -> Self {
        Executor::new(Limits::default())
    }
}

impl Executor {
    pub fn new(limits: Limits) -> Self {
        assert!(limits.max_tasks > 0 && limits.max_polls_per_run > 0);
        Executor {
            inner: Rc::new(Inner {
                limits,
                tasks: RefCell::new(BTreeMap::new()),
                cancelled: RefCell::new(Vec::new()),
                running: Cell::new(None),
                next_id: Cell::new(1),
                alive: Cell::new(0),
                ready: Arc::new(ReadyQueue {
                    ids: Mutex::new(VecDeque::new()),
                }),
                timers: RefCell::new(BTreeMap::new()),
                timer_seq: Cell::new(0),
                now_ns: Cell::new(0),
                stats: Cell::new(ExecStats::default()),
                node: Cell::new(node::current()),
                poll_clock: Cell::new(None),
            }),
        }
    }

    /// A cheap, clonable handle for spawning and timers from inside tasks.
    pub fn handle(&self) -> Handle {
        Handle {
            inner: self.inner.clone(),
        }
    }

    pub fn spawn<F>(&self, future: F) -> Result<JoinHandle<F::Output>, SpawnError>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.inner.spawn(DEFAULT_TASK_NAME, future)
    }

    /// [`Self::spawn`] with a name (shown with the longest poll).
    pub fn spawn_named<F>(
        &self,
        name: &'static str,
        future: F,
    ) -> Result<JoinHandle<F::Output>, SpawnError>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.inner.spawn(name, future)
    }

    /// Time every poll with `host_ns` (monotonic host nanoseconds: the
    /// appliance's TSC clock, `Instant` in host tools) and keep the longest
    /// ([`ExecStats::max_poll_ns`], the gauge `exec.max_poll_ns`). Measuring
    /// only: scheduling never depends on it. Its `exec_long_poll` trace
    /// events do, so a simulator whose trace must be deterministic installs
    /// none.
    pub fn set_poll_clock(&self, host_ns: fn() -> u64) {
        self.inner.poll_clock.set(Some(host_ns));
        // measured from now on: show the gauges (the shell `counters`)
        MAX_POLL_NS.touch();
        LONG_POLLS.touch();
    }

    /// Forget the longest poll (per phase measurements). The node's
    /// `exec.max_poll_ns` gauge starts again from 0 too.
    pub fn reset_max_poll(&self) {
        self.inner.reset_max_poll();
    }

    /// Fire timers due at `now_ns` (time never goes back: an older `now`
    /// is ignored) and poll ready tasks until none is ready or the poll
    /// budget is spent.
    pub fn run_until_stalled(&self, now_ns: u64) -> RunReport {
        self.inner.run(now_ns)
    }

    /// Run this executor's tasks as `node` (its counters and trace events
    /// go to that node). A new executor belongs to the node current when it
    /// was made.
    pub fn set_node(&self, node: NodeId) {
        assert!((node as usize) < node::MAX_NODES);
        self.inner.node.set(node);
    }

    pub fn node(&self) -> NodeId {
        self.inner.node.get()
    }

    /// The earliest pending timer deadline.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.inner.timers.borrow().keys().next().map(|k| k.0)
    }

    /// Whether some task has been woken and waits to be polled.
    pub fn has_ready(&self) -> bool {
        !self.inner.ready.ids.lock().is_empty()
    }

    /// The `now` of the last run.
    pub fn now_ns(&self) -> u64 {
        self.inner.now_ns.get()
    }

    pub fn stats(&self) -> ExecStats {
        let mut s = self.inner.stats.get();
        s.alive = self.inner.alive.get();
        s
    }

    /// Drive `future` (and every spawned task) to completion in virtual
    /// time: whenever nothing is ready, time jumps to the next timer.
    /// `Err(Stalled)` if nothing is ready and no timer is pending.
    pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output, Stalled> {
        let root = Arc::new(RootWaker {
            woken: AtomicBool::new(true),
        });
        let waker = Waker::from(root.clone());
        let mut cx = Context::from_waker(&waker);
        let mut future = core::pin::pin!(future);
        loop {
            if root.woken.swap(false, Ordering::AcqRel) {
                let _node = node::enter(self.inner.node.get());
                let _time = trace::enter_time(self.inner.now_ns.get());
                let (id, name) = ROOT_TASK;
                let root_future = future.as_mut();
                if let Poll::Ready(v) = self.inner.timed(id, name, || root_future.poll(&mut cx)) {
                    return Ok(v);
                }
            }
            // the tasks run before the root is polled again (also when the
            // root yielded)
            let report = self.run_until_stalled(self.now_ns());
            if root.woken.load(Ordering::Acquire) || report.more_ready || report.polls > 0 {
                continue;
            }
            match self.next_deadline_ns() {
                Some(deadline) => {
                    self.run_until_stalled(deadline);
                }
                None => return Err(Stalled),
            }
        }
    }
}

struct RootWaker {
    woken: AtomicBool,
}

impl Wake for RootWaker {
    fn wake(self: Arc<Self>) {
        self.woken.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
    }
}

/// Run `future` on a fresh executor in virtual time (host tools, tests).
///
/// # Panics
/// If the future can never finish (no task ready, no timer pending): that
/// is a deadlock in the caller.
pub fn block_on<F: Future>(future: F) -> F::Output {
    match Executor::default().block_on(future) {
        Ok(v) => v,
        Err(Stalled) => panic!("block_on: deadlock (nothing ready, no timer pending)"),
    }
}

/// Spawning and timers from inside tasks.
#[derive(Clone)]
pub struct Handle {
    inner: Rc<Inner>,
}

impl Handle {
    pub fn spawn<F>(&self, future: F) -> Result<JoinHandle<F::Output>, SpawnError>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.inner.spawn(DEFAULT_TASK_NAME, future)
    }

    /// [`Self::spawn`] with a name (shown with the longest poll).
    pub fn spawn_named<F>(
        &self,
        name: &'static str,
        future: F,
    ) -> Result<JoinHandle<F::Output>, SpawnError>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.inner.spawn(name, future)
    }

    /// The node this executor's tasks run as.
    pub fn node(&self) -> NodeId {
        self.inner.node.get()
    }

    /// The time of the current run (what the caller passed).
    pub fn now_ns(&self) -> u64 {
        self.inner.now_ns.get()
    }

    /// The poll clock's reading (monotonic host nanoseconds), if one is
    /// installed ([`Executor::set_poll_clock`]): for measuring only.
    pub fn host_ns(&self) -> Option<u64> {
        self.inner.poll_clock.get().map(|clock| clock())
    }

    /// Complete once `now >= deadline_ns`.
    pub fn sleep_until(&self, deadline_ns: u64) -> Sleep {
        Sleep {
            inner: self.inner.clone(),
            deadline_ns,
            key: None,
        }
    }

    pub fn sleep_ns(&self, duration_ns: u64) -> Sleep {
        self.sleep_until(self.now_ns().saturating_add(duration_ns))
    }

    /// Run `future` but give up at `deadline_ns`.
    pub fn timeout_at<F: Future>(&self, deadline_ns: u64, future: F) -> Timeout<F> {
        Timeout {
            future: Box::pin(future),
            sleep: self.sleep_until(deadline_ns),
        }
    }

    pub fn timeout_ns<F: Future>(&self, duration_ns: u64, future: F) -> Timeout<F> {
        self.timeout_at(self.now_ns().saturating_add(duration_ns), future)
    }

    pub fn stats(&self) -> ExecStats {
        let mut s = self.inner.stats.get();
        s.alive = self.inner.alive.get();
        s
    }

    /// See [`Executor::reset_max_poll`].
    pub fn reset_max_poll(&self) {
        self.inner.reset_max_poll();
    }
}

/// A timer future from [`Handle::sleep_until`].
pub struct Sleep {
    inner: Rc<Inner>,
    deadline_ns: u64,
    key: Option<(u64, u64)>,
}

impl Sleep {
    pub fn deadline_ns(&self) -> u64 {
        self.deadline_ns
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.inner.now_ns.get() >= this.deadline_ns {
            if let Some(key) = this.key.take() {
                this.inner.timers.borrow_mut().remove(&key);
            }
            return Poll::Ready(());
        }
        match this.key {
            Some(key) => {
                let mut timers = this.inner.timers.borrow_mut();
                match timers.get_mut(&key) {
                    Some(w) => w.clone_from(cx.waker()),
                    None => {
                        // Fired but time was not yet visible; re-arm.
                        drop(timers);
                        this.key = Some(this.inner.add_timer(this.deadline_ns, cx.waker().clone()));
                    }
                }
            }
            None => this.key = Some(this.inner.add_timer(this.deadline_ns, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            if let Ok(mut timers) = self.inner.timers.try_borrow_mut() {
                timers.remove(&key);
            }
        }
    }
}

/// A future with a deadline, from [`Handle::timeout_at`].
pub struct Timeout<F: Future> {
    future: Pin<Box<F>>,
    sleep: Sleep,
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

struct JoinState<T> {
    result: RefCell<Option<T>>,
    done: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

/// Awaits a spawned task's output. Dropping it detaches the task.
pub struct JoinHandle<T> {
    id: TaskId,
    state: Rc<JoinState<T>>,
    exec: Weak<Inner>,
}

impl<T> JoinHandle<T> {
    pub fn id(&self) -> TaskId {
        self.id
    }

    pub fn is_finished(&self) -> bool {
        self.state.done.get()
    }

    /// The output, if the task finished and it was not taken yet.
    pub fn try_take(&self) -> Option<T> {
        self.state.result.borrow_mut().take()
    }

    /// Stop the task: its future is dropped at once (or right after its
    /// current poll if it aborts itself).
    pub fn abort(self) {
        if let Some(exec) = self.exec.upgrade() {
            exec.abort(self.id);
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(v) = self.state.result.borrow_mut().take() {
            return Poll::Ready(v);
        }
        assert!(
            !self.state.done.get(),
            "JoinHandle polled after its output was taken"
        );
        *self.state.waiter.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Give the rest of the node a turn: the task wakes itself, and a task
/// that woke itself during its poll runs again only in the executor's next
/// run, so every other ready task runs first and the embedder's main loop
/// (devices, network, timers; the simulator's message delivery) gets
/// control in between. Long synchronous work awaits this between bounded
/// steps. (The root future of `block_on` gets the same: the tasks run
/// before it is polled again.)
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A wake-up signal between tasks (and from device polling code): waiters
/// registered before a [`Notify::notify`] all wake. Clone to share.
#[derive(Clone, Default)]
pub struct Notify {
    state: Rc<NotifyState>,
}

#[derive(Default)]
struct NotifyState {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    pub fn new() -> Self {
        Notify::default()
    }

    /// Wake every task waiting in [`Notify::notified`].
    pub fn notify(&self) {
        self.state.generation.set(self.state.generation.get() + 1);
        let waiters = core::mem::take(&mut *self.state.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    /// Completes at the next `notify` after this call.
    pub fn notified(&self) -> Notified {
        Notified {
            state: self.state.clone(),
            generation: self.state.generation.get(),
        }
    }
}

pub struct Notified {
    state: Rc<NotifyState>,
    generation: u64,
}

impl Future for Notified {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let mut waiters = self.state.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::rc::Rc;
    use alloc::vec;

    #[test]
    fn tasks_run_in_spawn_order_and_join_values() {
        let ex = Executor::default();
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut handles = Vec::new();
        for i in 0..5u32 {
            let log = log.clone();
            handles.push(
                ex.spawn(async move {
                    log.borrow_mut().push(i);
                    yield_now().await;
                    log.borrow_mut().push(10 + i);
                    i * 2
                })
                .unwrap(),
            );
        }
        // a yield ends the task's turn in this run: it goes on in the next
        let report = ex.run_until_stalled(0);
        assert_eq!((report.polls, report.yielded), (5, 5));
        assert!(report.more_ready);
        assert_eq!(*log.borrow(), vec![0, 1, 2, 3, 4]);
        let report = ex.run_until_stalled(0);
        assert_eq!((report.polls, report.yielded), (5, 0));
        assert!(!report.more_ready);
        assert_eq!(*log.borrow(), vec![0, 1, 2, 3, 4, 10, 11, 12, 13, 14]);
        let values: Vec<u32> = handles.iter().map(|h| h.try_take().unwrap()).collect();
        assert_eq!(values, vec![0, 2, 4, 6, 8]);
        assert_eq!(ex.stats().completed, 5);
        assert_eq!(ex.stats().alive, 0);
    }

    #[test]
    fn timers_fire_by_caller_time_in_deadline_order() {
        let ex = Executor::default();
        let h = ex.handle();
        let order = Rc::new(RefCell::new(Vec::new()));
        for (name, at) in [("c", 300u64), ("a", 100), ("b", 200), ("a2", 100)] {
            let h2 = h.clone();
            let order = order.clone();
            ex.spawn(async move {
                h2.sleep_until(at).await;
                order.borrow_mut().push((name, h2.now_ns()));
            })
            .unwrap();
        }
        ex.run_until_stalled(0);
        assert_eq!(ex.next_deadline_ns(), Some(100));
        assert!(order.borrow().is_empty());
        ex.run_until_stalled(99);
        assert!(order.borrow().is_empty());
        ex.run_until_stalled(250);
        assert_eq!(*order.borrow(), vec![("a", 250), ("a2", 250), ("b", 250)]);
        assert_eq!(ex.next_deadline_ns(), Some(300));
        // Time never goes back.
        ex.run_until_stalled(10);
        assert_eq!(ex.now_ns(), 250);
        ex.run_until_stalled(300);
        assert_eq!(order.borrow().len(), 4);
        assert_eq!(ex.next_deadline_ns(), None);
    }

    #[test]
    fn spawn_bound_is_enforced_and_counted() {
        let ex = Executor::new(Limits {
            max_tasks: 2,
            max_polls_per_run: 100,
        });
        let before = crate::runtime::counters::get("exec.spawn_rejected").unwrap_or(0);
        let h = ex.handle();
        let a = ex.spawn(async {}).unwrap();
        let _b = ex.spawn(h.sleep_until(10)).unwrap();
        assert_eq!(ex.spawn(async {}).err(), Some(SpawnError::TooManyTasks));
        assert_eq!(ex.stats().rejected, 1);
        assert!(crate::runtime::counters::get("exec.spawn_rejected").unwrap() > before);
        ex.run_until_stalled(0);
        assert!(a.is_finished());
        assert!(ex.spawn(async {}).is_ok());
    }

    #[test]
    fn poll_budget_bounds_busy_tasks() {
        let ex = Executor::new(Limits {
            max_tasks: 8,
            max_polls_per_run: 10,
        });
        /// Wakes the other one of a pair on every poll: together they are
        /// always ready.
        struct PingPong(
            Rc<Cell<u32>>,
            Rc<RefCell<Option<Waker>>>,
            Rc<RefCell<Option<Waker>>>,
        );
        impl Future for PingPong {
            type Output = ();
            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                self.0.set(self.0.get() + 1);
                *self.1.borrow_mut() = Some(cx.waker().clone());
                if let Some(w) = self.2.borrow_mut().take() {
                    w.wake();
                }
                Poll::Pending
            }
        }
        let count = Rc::new(Cell::new(0u32));
        let (a, b) = (Rc::new(RefCell::new(None)), Rc::new(RefCell::new(None)));
        ex.spawn(PingPong(count.clone(), a.clone(), b.clone()))
            .unwrap();
        ex.spawn(PingPong(count.clone(), b, a)).unwrap();
        let report = ex.run_until_stalled(0);
        assert_eq!(report.polls, 10);
        assert!(report.more_ready);
        assert!(ex.has_ready());
        assert_eq!(count.get(), 10);
        // a task that wakes itself (yield_now) gets one poll per run
        let ex = Executor::default();
        struct Busy(Rc<Cell<u32>>);
        impl Future for Busy {
            type Output = ();
            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                self.0.set(self.0.get() + 1);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
        let busy = Rc::new(Cell::new(0u32));
        ex.spawn(Busy(busy.clone())).unwrap();
        let report = ex.run_until_stalled(0);
        assert_eq!((report.polls, report.yielded, busy.get()), (1, 1, 1));
        assert!(report.more_ready);
        ex.run_until_stalled(0);
        assert_eq!(busy.get(), 2);
    }

    #[test]
    fn a_yielding_task_gives_the_main_loop_a_turn() {
        let ex = Executor::default();
        let h = ex.handle();
        let steps = Rc::new(Cell::new(0u32));
        let s = steps.clone();
        // long work in 100 bounded steps
        let work = ex
            .spawn(async move {
                for _ in 0..100 {
                    s.set(s.get() + 1);
                    yield_now().await;
                }
            })
            .unwrap();
        // a heartbeat due at t=5 while the work goes on
        let beat = Rc::new(Cell::new(None));
        let b = beat.clone();
        let h2 = h.clone();
        let s2 = steps.clone();
        ex.spawn(async move {
            h2.sleep_until(5).await;
            b.set(Some((h2.now_ns(), s2.get())));
        })
        .unwrap();
        // the main loop: one run per turn, time advancing by 1 each turn
        let mut turns = 0u64;
        while !work.is_finished() {
            let r = ex.run_until_stalled(turns);
            assert!(r.polls <= 2, "one step of the work per run");
            turns += 1;
        }
        assert_eq!(steps.get(), 100);
        assert!(turns >= 100);
        // the timer fired in the run at t=5, in the middle of the work
        assert_eq!(beat.get(), Some((5, 6)));
        // block_on interleaves a yielding root with the tasks the same way
        let log = Rc::new(RefCell::new(Vec::new()));
        let l2 = log.clone();
        ex.spawn(async move {
            for i in 0..3 {
                l2.borrow_mut().push(("task", i));
                yield_now().await;
            }
        })
        .unwrap();
        let l3 = log.clone();
        ex.block_on(async move {
            for i in 0..3 {
                l3.borrow_mut().push(("root", i));
                yield_now().await;
            }
        })
        .unwrap();
        assert_eq!(
            *log.borrow(),
            vec![
                ("root", 0),
                ("task", 0),
                ("root", 1),
                ("task", 1),
                ("root", 2),
                ("task", 2)
            ]
        );
        // on any other poller a yield is a plain self-wake
        let w = Arc::new(RootWaker {
            woken: AtomicBool::new(false),
        });
        let waker = Waker::from(w.clone());
        let mut y = core::pin::pin!(yield_now());
        assert!(y
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        assert!(w.woken.load(Ordering::Acquire));
        assert!(y.poll(&mut Context::from_waker(&waker)).is_ready());
    }

    #[test]
    fn abort_drops_the_task_and_its_timer() {
        let ex = Executor::default();
        let h = ex.handle();
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        let j = ex
            .spawn(async move {
                h.sleep_until(50).await;
                r.set(true);
            })
            .unwrap();
        ex.run_until_stalled(0);
        assert_eq!(ex.next_deadline_ns(), Some(50));
        j.abort();
        assert_eq!(ex.next_deadline_ns(), None);
        ex.run_until_stalled(100);
        assert!(!ran.get());
        assert_eq!(ex.stats().aborted, 1);
        assert_eq!(ex.stats().alive, 0);
    }

    #[test]
    fn block_on_uses_virtual_time_and_joins_spawned_tasks() {
        let ex = Executor::default();
        let h = ex.handle();
        let out = ex
            .block_on(async {
                let h2 = h.clone();
                let child = h
                    .spawn(async move {
                        h2.sleep_ns(1_000_000_000).await;
                        h2.now_ns()
                    })
                    .unwrap();
                let t = child.await;
                let late = h.timeout_ns(10, h.sleep_ns(1_000)).await;
                let early = h.timeout_ns(1_000, async { 7 }).await;
                (t, late, early)
            })
            .unwrap();
        assert_eq!(out, (1_000_000_000, Err(Elapsed), Ok(7)));
        // A future that can never finish is reported, not hung.
        let never = Notify::new();
        assert_eq!(ex.block_on(never.notified()), Err(Stalled));
        assert_eq!(block_on(async { 3 }), 3);
    }

    #[test]
    fn notify_wakes_all_waiters() {
        let ex = Executor::default();
        let n = Notify::new();
        let hits = Rc::new(Cell::new(0));
        for _ in 0..3 {
            let n2 = n.clone();
            let hits = hits.clone();
            ex.spawn(async move {
                n2.notified().await;
                hits.set(hits.get() + 1);
            })
            .unwrap();
        }
        ex.run_until_stalled(0);
        assert_eq!(hits.get(), 0);
        n.notify();
        ex.run_until_stalled(0);
        assert_eq!(hits.get(), 3);
    }

    std::thread_local! {
        static FAKE_NS: Cell<u64> = const { Cell::new(0) };
    }

    fn fake_ns() -> u64 {
        FAKE_NS.with(|c| c.get())
    }

    /// Spend `ns` of fake host time.
    fn spend(ns: u64) {
        FAKE_NS.with(|c| c.set(c.get() + ns));
    }

    #[test]
    fn host_ns_reads_the_poll_clock_only_when_installed() {
        let ex = Executor::default();
        let h = ex.handle();
        assert_eq!(h.host_ns(), None);
        ex.set_poll_clock(fake_ns);
        let t0 = h.host_ns().expect("a clock is installed");
        spend(7);
        assert_eq!(h.host_ns(), Some(t0 + 7));
    }

    #[test]
    fn longest_poll_is_recorded_per_node_with_its_task() {
        let ex = Executor::default();
        ex.set_node(9);
        // without a poll clock nothing is measured
        ex.spawn(async { spend(1_000) }).unwrap();
        ex.run_until_stalled(0);
        assert_eq!(ex.stats().max_poll_ns, 0);

        ex.set_poll_clock(fake_ns);
        ex.spawn_named("short", async {
            spend(10);
            yield_now().await;
            spend(20);
        })
        .unwrap();
        let long = ex
            .spawn_named("long", async {
                spend(5);
                yield_now().await;
                spend(LONG_POLL_NS + 1);
                yield_now().await;
                spend(30);
            })
            .unwrap();
        while ex.run_until_stalled(0).more_ready {}
        let s = ex.stats();
        assert_eq!(s.max_poll_ns, LONG_POLL_NS + 1);
        assert_eq!(s.max_poll_task, long.id());
        assert_eq!(s.max_poll_name, "long");
        assert_eq!(s.long_polls, 1);
        let gauge = |n| crate::runtime::counters::get_node("exec.max_poll_ns", n);
        assert_eq!(gauge(9), Some(LONG_POLL_NS + 1));
        let traced = trace::find_on("exec_long_poll", 9);
        assert_eq!(traced.len(), 1);
        assert_eq!(traced[0].arg("task"), Some(long.id()));
        assert_eq!(traced[0].arg("ns"), Some(LONG_POLL_NS + 1));

        // the root of block_on is measured too
        ex.reset_max_poll();
        assert_eq!(ex.stats().max_poll_ns, 0);
        assert_eq!(gauge(9), Some(0));
        ex.block_on(async { spend(777) }).unwrap();
        let s = ex.stats();
        assert_eq!((s.max_poll_ns, s.max_poll_task), (777, ROOT_TASK.0));
        assert_eq!(s.max_poll_name, ROOT_TASK.1);
        assert_eq!(gauge(9), Some(777));
    }

    #[test]
    fn polls_run_as_the_node_at_the_executor_time() {
        static TP: Tracepoint = Tracepoint::new("test_exec_poll", &["i"]);
        trace::clear();
        trace::set_time_source(trace::TimeSource::Executor);
        let a = Executor::default();
        a.set_node(1);
        let b = Executor::default();
        b.set_node(2);
        for (ex, i) in [(&a, 1u64), (&b, 2)] {
            let h = ex.handle();
            ex.spawn(async move {
                TP.emit(&[i]);
                h.sleep_ns(100 * i).await;
                TP.emit(&[i]);
            })
            .unwrap();
        }
        a.run_until_stalled(10);
        b.run_until_stalled(20);
        a.run_until_stalled(500);
        b.run_until_stalled(700);
        let got: Vec<(NodeId, u64, u64)> = trace::find("test_exec_poll")
            .iter()
            .map(|e| (e.node, e.time_ns, e.args[0]))
            .collect();
        assert_eq!(got, vec![(1, 10, 1), (2, 20, 2), (1, 500, 1), (2, 700, 2)]);
        trace::set_time_source(trace::TimeSource::None);
    }

    #[test]
    fn same_inputs_same_order() {
        fn run() -> Vec<u64> {
            let ex = Executor::default();
            let h = ex.handle();
            let log = Rc::new(RefCell::new(Vec::new()));
            for i in 0..20u64 {
                let h = h.clone();
                let log = log.clone();
                ex.spawn(async move {
                    h.sleep_ns((i * 7919) % 13).await;
                    log.borrow_mut().push(i);
                })
                .unwrap();
            }
            ex.block_on(h.sleep_ns(100)).unwrap();
            let v = log.borrow().clone();
            v
        }
        assert_eq!(run(), run());
    }
}
