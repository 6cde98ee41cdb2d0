//! The trace ring: a bounded buffer of typed events that any subsystem
//! emits and the shell `trace` prints.
//!
//! A [`Tracepoint`] is a static schema (name and field names); an
//! [`Event`] is one emission with a sequence number, the node that emitted
//! it ([`node::current`]), a timestamp and up to [`MAX_ARGS`] integer
//! fields. When the ring is full the newest event overwrites the oldest,
//! and the overwrites are counted (a full ring is normal, not a loss).
//! Never emit from interrupt context.
//!
//! # Timestamps
//!
//! fs never reads a clock itself; the embedder picks a [`TimeSource`]:
//! - [`TimeSource::Clock`]: a monotonic nanosecond clock (the appliance
//!   installs its TSC clock with [`set_clock`]);
//! - [`TimeSource::Executor`]: the `now` of the executor running the
//!   emitting code. Every [`Executor`](crate::runtime::exec::Executor)
//!   enters its `now` ([`enter_time`]) around its polls, the way it enters
//!   its node, so in a simulator that drives one executor per node in
//!   virtual time every event carries its own node's virtual time (a plain
//!   `fn() -> u64` cannot tell the nodes of one thread apart). Code
//!   outside any executor may enter a time itself; with none entered the
//!   timestamp is 0;
//! - [`TimeSource::None`] (the default): every timestamp is 0.
//!
//! # One ring or one per thread
//!
//! In `no_std` builds (the appliance: one CPU, no threads) the ring and the
//! time source are statics. With the `std` feature or in unit tests (host
//! tools, tests, the simulator) both are per thread: parallel test threads
//! never see each other's events, and a simulation run on one thread gets
//! a deterministic trace. [`clear`] starts a thread's ring afresh (sequence
//! numbers from 0) and [`take`] drains it, so a run can keep every event
//! even past [`RING_CAPACITY`].

use alloc::vec::Vec;
use core::fmt;

use spin::RwLock;

use crate::runtime::node::{self, NodeId};

/// Fields per event.
pub const MAX_ARGS: usize = 4;
/// Events the ring holds before it drops the oldest.
pub const RING_CAPACITY: usize = 1024;

/// A kind of event: its name and the names of its fields.
#[derive(Debug)]
pub struct Tracepoint {
    pub name: &'static str,
    pub fields: &'static [&'static str],
}

impl Tracepoint {
    pub const fn new(name: &'static str, fields: &'static [&'static str]) -> Self {
        assert!(fields.len() <= MAX_ARGS, "too many tracepoint fields");
        Tracepoint { name, fields }
    }

    /// Record one event; `args` pair up with `fields` (missing ones are 0).
    pub fn emit(&'static self, args: &[u64]) {
        emit(self, args);
    }
}

/// One recorded event.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub seq: u64,
    pub time_ns: u64,
    /// The node that emitted it.
    pub node: NodeId,
    pub point: &'static Tracepoint,
    pub args: [u64; MAX_ARGS],
}

impl Event {
    /// The value of a named field.
    pub fn arg(&self, field: &str) -> Option<u64> {
        self.point
            .fields
            .iter()
            .position(|f| *f == field)
            .map(|i| self.args[i])
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:5}.{:06}] n{} #{} {}",
            self.time_ns / 1_000_000_000,
            (self.time_ns % 1_000_000_000) / 1_000,
            self.node,
            self.seq,
            self.point.name
        )?;
        for (name, value) in self.point.fields.iter().zip(self.args.iter()) {
            write!(f, " {name}={value}")?;
        }
        Ok(())
    }
}

/// Totals since boot (or since the last [`clear`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceStats {
    pub emitted: u64,
    pub overwritten: u64,
    pub held: usize,
    pub capacity: usize,
}

/// Where event timestamps come from (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub enum TimeSource {
    /// Every timestamp is 0.
    #[default]
    None,
    /// Monotonic nanoseconds from this clock.
    Clock(fn() -> u64),
    /// The time entered with [`enter_time`] (each executor enters its
    /// `now` around its polls); 0 outside.
    Executor,
}

struct Ring {
    events: heapless::Deque<Event, RING_CAPACITY>,
    next_seq: u64,
    overwritten: u64,
}

impl Ring {
    const fn new() -> Ring {
        Ring {
            events: heapless::Deque::new(),
            next_seq: 0,
            overwritten: 0,
        }
    }

    fn push(
        &mut self,
        time_ns: u64,
        node: NodeId,
        point: &'static Tracepoint,
        args: [u64; MAX_ARGS],
    ) -> Event {
        let event = Event {
            seq: self.next_seq,
            time_ns,
            node,
            point,
            args,
        };
        self.next_seq += 1;
        if self.events.is_full() {
            self.events.pop_front();
            self.overwritten += 1;
        }
        let pushed = self.events.push_back(event).is_ok();
        assert!(pushed, "trace ring has room after dropping the oldest");
        event
    }
}

/// Per thread: the ring (boxed, created at the first event), the time
/// source and the entered time.
#[cfg(any(test, feature = "std"))]
mod local {
    use super::{Ring, TimeSource};
    use alloc::boxed::Box;
    use core::cell::{Cell, RefCell};

    std::thread_local! {
        static RING: RefCell<Option<Box<Ring>>> = const { RefCell::new(None) };
        static SOURCE: Cell<TimeSource> = const { Cell::new(TimeSource::None) };
        static ENTERED: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// Run `f` on this thread's ring; `None` while the thread is being
    /// torn down (or if `f` emits into the ring it is reading).
    pub fn with_ring<R>(f: impl FnOnce(&mut Ring) -> R) -> Option<R> {
        RING.try_with(|r| {
            let mut r = r.try_borrow_mut().ok()?;
            let ring = r.get_or_insert_with(|| Box::new(Ring::new()));
            Some(f(ring))
        })
        .ok()
        .flatten()
    }

    pub fn source() -> TimeSource {
        SOURCE.try_with(|s| s.get()).unwrap_or_default()
    }

    pub fn set_source(s: TimeSource) {
        SOURCE.with(|c| c.set(s))
    }

    pub fn entered() -> Option<u64> {
        ENTERED.try_with(|c| c.get()).ok().flatten()
    }

    pub fn set_entered(t: Option<u64>) {
        let _ = ENTERED.try_with(|c| c.set(t));
    }
}

/// The appliance: one ring, one time source.
#[cfg(not(any(test, feature = "std")))]
mod local {
    use super::{Ring, TimeSource};
    use core::sync::atomic::{AtomicU64, Ordering};
    use spin::{Mutex, RwLock};

    static RING: Mutex<Ring> = Mutex::new(Ring::new());
    static SOURCE: RwLock<TimeSource> = RwLock::new(TimeSource::None);
    /// `u64::MAX`: nothing entered.
    static ENTERED: AtomicU64 = AtomicU64::new(u64::MAX);

    pub fn with_ring<R>(f: impl FnOnce(&mut Ring) -> R) -> Option<R> {
        Some(f(&mut RING.lock()))
    }

    pub fn source() -> TimeSource {
        *SOURCE.read()
    }

    pub fn set_source(s: TimeSource) {
        *SOURCE.write() = s;
    }

    pub fn entered() -> Option<u64> {
        match ENTERED.load(Ordering::Relaxed) {
            u64::MAX => None,
            t => Some(t),
        }
    }

    pub fn set_entered(t: Option<u64>) {
        ENTERED.store(t.unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

static ECHO: RwLock<bool> = RwLock::new(false);

/// Install the timestamp source (this thread's with `std`).
pub fn set_time_source(source: TimeSource) {
    local::set_source(source);
}

/// The timestamp source in use (this thread's with `std`).
pub fn time_source() -> TimeSource {
    local::source()
}

/// Stamp events with this monotonic nanosecond clock:
/// `set_time_source(TimeSource::Clock(now_ns))`.
pub fn set_clock(now_ns: fn() -> u64) {
    set_time_source(TimeSource::Clock(now_ns));
}

/// Run at virtual time `now_ns` until the guard drops (then the previous
/// time is back): what [`TimeSource::Executor`] stamps events with. Each
/// executor enters its `now` around its polls.
pub fn enter_time(now_ns: u64) -> TimeGuard {
    let prev = local::entered();
    local::set_entered(Some(now_ns));
    TimeGuard { prev }
}

/// Restores the previously entered time when dropped.
#[must_use = "the time is left when the guard drops"]
pub struct TimeGuard {
    prev: Option<u64>,
}

impl Drop for TimeGuard {
    fn drop(&mut self) {
        local::set_entered(self.prev);
    }
}

/// Also send every event to the `log` crate (target `trace`, debug level).
/// One switch for the whole process.
pub fn set_echo(on: bool) {
    *ECHO.write() = on;
}

fn now_ns() -> u64 {
    match local::source() {
        TimeSource::None => 0,
        TimeSource::Clock(f) => f(),
        TimeSource::Executor => local::entered().unwrap_or(0),
    }
}

/// Record one event of `point`, as the running node.
pub fn emit(point: &'static Tracepoint, args: &[u64]) {
    debug_assert!(
        args.len() <= point.fields.len(),
        "{}: too many args",
        point.name
    );
    let time_ns = now_ns();
    let mut packed = [0u64; MAX_ARGS];
    for (slot, v) in packed.iter_mut().zip(args.iter()) {
        *slot = *v;
    }
    let node = node::current();
    let event = local::with_ring(|ring| ring.push(time_ns, node, point, packed));
    if let Some(event) = event {
        if *ECHO.read() {
            log::debug!(target: "trace", "{event}");
        }
    }
}

/// Held events that `keep` accepts, oldest first.
fn collect(keep: impl Fn(&Event) -> bool) -> Vec<Event> {
    local::with_ring(|ring| ring.events.iter().filter(|e| keep(e)).copied().collect())
        .unwrap_or_default()
}

/// Every held event, oldest first.
pub fn snapshot() -> Vec<Event> {
    collect(|_| true)
}

/// The newest `n` events, oldest first.
pub fn recent(n: usize) -> Vec<Event> {
    local::with_ring(|ring| {
        let skip = ring.events.len().saturating_sub(n);
        ring.events.iter().skip(skip).copied().collect()
    })
    .unwrap_or_default()
}

/// Held events of the named tracepoint, oldest first.
pub fn find(name: &str) -> Vec<Event> {
    collect(|e| e.point.name == name)
}

/// Held events emitted by `node`, oldest first.
pub fn find_node(node: NodeId) -> Vec<Event> {
    collect(|e| e.node == node)
}

/// Held events of the named tracepoint emitted by `node`, oldest first.
pub fn find_on(name: &str, node: NodeId) -> Vec<Event> {
    collect(|e| e.node == node && e.point.name == name)
}

/// Remove and return every held event, oldest first (the sequence numbers
/// and totals go on).
pub fn take() -> Vec<Event> {
    local::with_ring(|ring| {
        let mut out = Vec::with_capacity(ring.events.len());
        while let Some(e) = ring.events.pop_front() {
            out.push(e);
        }
        out
    })
    .unwrap_or_default()
}

/// Empty the ring and start afresh: sequence numbers from 0, totals at 0.
pub fn clear() {
    local::with_ring(|ring| *ring = Ring::new());
}

pub fn stats() -> TraceStats {
    local::with_ring(|ring| TraceStats {
        emitted: ring.next_seq,
        overwritten: ring.overwritten,
        held: ring.events.len(),
        capacity: RING_CAPACITY,
    })
    .unwrap_or(TraceStats {
        capacity: RING_CAPACITY,
        ..TraceStats::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST_POINT: Tracepoint = Tracepoint::new("test_point", &["a", "b"]);
    static OTHER_POINT: Tracepoint = Tracepoint::new("other_point", &["x"]);

    // Unit tests get a ring per thread, so every test here owns its ring.
    #[test]
    fn ring_records_formats_and_drops_oldest() {
        fn fake_now() -> u64 {
            1_500_000_000
        }
        set_clock(fake_now);
        let before = stats();
        TEST_POINT.emit(&[1, 2]);
        let mine = find("test_point");
        let last = mine.last().expect("event recorded");
        assert_eq!(last.arg("a"), Some(1));
        assert_eq!(last.arg("b"), Some(2));
        assert_eq!(last.arg("c"), None);
        assert_eq!(last.time_ns, 1_500_000_000);
        assert_eq!(last.node, 0);
        let text = alloc::format!("{last}");
        assert!(text.contains("test_point a=1 b=2"), "{text}");
        assert!(text.starts_with("[    1.500000] n0 #"), "{text}");

        for i in 0..(RING_CAPACITY as u64 + 10) {
            TEST_POINT.emit(&[i]);
        }
        let after = stats();
        assert_eq!(after.held, RING_CAPACITY);
        assert!(after.overwritten >= before.overwritten + 11);
        assert_eq!(after.emitted, before.emitted + RING_CAPACITY as u64 + 11);
        let all = snapshot();
        assert!(all.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        assert_eq!(recent(3).len(), 3);
        assert_eq!(recent(3)[2].arg("a"), Some(RING_CAPACITY as u64 + 9));
    }

    #[test]
    fn events_carry_their_node() {
        clear();
        TEST_POINT.emit(&[1]);
        {
            let _n = node::enter(2);
            TEST_POINT.emit(&[2]);
            OTHER_POINT.emit(&[3]);
        }
        {
            let _n = node::enter(7);
            TEST_POINT.emit(&[4]);
        }
        let nodes: Vec<NodeId> = snapshot().iter().map(|e| e.node).collect();
        assert_eq!(nodes, alloc::vec![0, 2, 2, 7]);
        let on2 = find_node(2);
        assert_eq!(on2.len(), 2);
        assert!(alloc::format!("{}", on2[0]).contains(" n2 #1 test_point a=2"));
        assert_eq!(find_on("test_point", 2).len(), 1);
        assert_eq!(find_on("test_point", 2)[0].arg("a"), Some(2));
        assert_eq!(find_on("test_point", 7)[0].arg("a"), Some(4));
        assert!(find_on("other_point", 7).is_empty());
        assert!(find_node(3).is_empty());
    }

    #[test]
    fn clear_restarts_and_take_drains() {
        TEST_POINT.emit(&[1]);
        clear();
        assert_eq!(stats().emitted, 0);
        assert_eq!(stats().held, 0);
        TEST_POINT.emit(&[5]);
        TEST_POINT.emit(&[6]);
        let got = take();
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(stats().held, 0);
        assert_eq!(stats().emitted, 2);
        TEST_POINT.emit(&[7]);
        assert_eq!(snapshot()[0].seq, 2);
    }

    #[test]
    fn executor_time_source_stamps_the_entered_time() {
        clear();
        set_time_source(TimeSource::Executor);
        TEST_POINT.emit(&[0]);
        {
            let _t = enter_time(100);
            TEST_POINT.emit(&[1]);
            {
                let _u = enter_time(250);
                TEST_POINT.emit(&[2]);
            }
            TEST_POINT.emit(&[3]);
        }
        TEST_POINT.emit(&[4]);
        let times: Vec<u64> = snapshot().iter().map(|e| e.time_ns).collect();
        assert_eq!(times, [0, 100, 250, 100, 0]);
        assert!(matches!(time_source(), TimeSource::Executor));
        set_time_source(TimeSource::None);
    }

    #[test]
    fn threads_have_their_own_rings_and_clocks() {
        clear();
        fn seven() -> u64 {
            7
        }
        set_clock(seven);
        TEST_POINT.emit(&[1]);
        let other = std::thread::spawn(|| {
            // a fresh thread: empty ring, no clock
            assert_eq!(stats().emitted, 0);
            assert!(matches!(time_source(), TimeSource::None));
            OTHER_POINT.emit(&[9]);
            OTHER_POINT.emit(&[9]);
            let all = snapshot();
            assert_eq!(all.len(), 2);
            assert!(all.iter().all(|e| e.point.name == "other_point"));
            assert_eq!(all[0].time_ns, 0);
            assert_eq!(all[0].seq, 0);
        });
        other.join().expect("other thread");
        let mine = snapshot();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].point.name, "test_point");
        assert_eq!(mine[0].time_ns, 7);
        assert!(find("other_point").is_empty());
    }
}
