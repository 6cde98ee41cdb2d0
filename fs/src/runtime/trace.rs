//! The trace ring: a bounded buffer of typed events that any subsystem
//! emits and the shell `trace` prints.
//!
//! A [`Tracepoint`] is a static schema (name and field names); an
//! [`Event`] is one emission with a sequence number, a timestamp from the
//! clock the embedder installed ([`set_clock`]; fs never reads a clock
//! itself) and up to [`MAX_ARGS`] integer fields. When the ring is full the
//! oldest event is dropped and counted. Never emit from interrupt context.

use alloc::vec::Vec;
use core::fmt;

use spin::{Mutex, RwLock};

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
            "[{:5}.{:06}] #{} {}",
            self.time_ns / 1_000_000_000,
            (self.time_ns % 1_000_000_000) / 1_000,
            self.seq,
            self.point.name
        )?;
        for (name, value) in self.point.fields.iter().zip(self.args.iter()) {
            write!(f, " {name}={value}")?;
        }
        Ok(())
    }
}

/// Totals since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceStats {
    pub emitted: u64,
    pub dropped: u64,
    pub held: usize,
    pub capacity: usize,
}

struct Ring {
    events: heapless::Deque<Event, RING_CAPACITY>,
    next_seq: u64,
    dropped: u64,
}

static RING: Mutex<Ring> = Mutex::new(Ring {
    events: heapless::Deque::new(),
    next_seq: 0,
    dropped: 0,
});
static CLOCK: RwLock<Option<fn() -> u64>> = RwLock::new(None);
static ECHO: RwLock<bool> = RwLock::new(false);

/// Install the timestamp source (monotonic nanoseconds).
pub fn set_clock(now_ns: fn() -> u64) {
    *CLOCK.write() = Some(now_ns);
}

/// Also send every event to the `log` crate (target `trace`, debug level).
pub fn set_echo(on: bool) {
    *ECHO.write() = on;
}

/// Record one event of `point`.
pub fn emit(point: &'static Tracepoint, args: &[u64]) {
    debug_assert!(
        args.len() <= point.fields.len(),
        "{}: too many args",
        point.name
    );
    let time_ns = CLOCK.read().map(|f| f()).unwrap_or(0);
    let mut packed = [0u64; MAX_ARGS];
    for (slot, v) in packed.iter_mut().zip(args.iter()) {
        *slot = *v;
    }
    let event = {
        let mut ring = RING.lock();
        let event = Event {
            seq: ring.next_seq,
            time_ns,
            point,
            args: packed,
        };
        ring.next_seq += 1;
        if ring.events.is_full() {
            ring.events.pop_front();
            ring.dropped += 1;
        }
        let pushed = ring.events.push_back(event).is_ok();
        assert!(pushed, "trace ring has room after dropping the oldest");
        event
    };
    if *ECHO.read() {
        log::debug!(target: "trace", "{event}");
    }
}

/// Every held event, oldest first.
pub fn snapshot() -> Vec<Event> {
    RING.lock().events.iter().copied().collect()
}

/// The newest `n` events, oldest first.
pub fn recent(n: usize) -> Vec<Event> {
    let ring = RING.lock();
    let skip = ring.events.len().saturating_sub(n);
    ring.events.iter().skip(skip).copied().collect()
}

/// Held events of the named tracepoint, oldest first.
pub fn find(name: &str) -> Vec<Event> {
    RING.lock()
        .events
        .iter()
        .filter(|e| e.point.name == name)
        .copied()
        .collect()
}

pub fn stats() -> TraceStats {
    let ring = RING.lock();
    TraceStats {
        emitted: ring.next_seq,
        dropped: ring.dropped,
        held: ring.events.len(),
        capacity: RING_CAPACITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST_POINT: Tracepoint = Tracepoint::new("test_point", &["a", "b"]);

    // One test drives the shared global ring, so the assertions cannot race
    // other tests in this module.
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
        let text = alloc::format!("{last}");
        assert!(text.contains("test_point a=1 b=2"), "{text}");
        assert!(text.starts_with("[    1.500000]"), "{text}");

        for i in 0..(RING_CAPACITY as u64 + 10) {
            TEST_POINT.emit(&[i]);
        }
        let after = stats();
        assert_eq!(after.held, RING_CAPACITY);
        assert!(after.dropped >= before.dropped + 11);
        assert_eq!(after.emitted, before.emitted + RING_CAPACITY as u64 + 11);
        let all = snapshot();
        assert!(all.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        assert_eq!(recent(3).len(), 3);
        assert_eq!(recent(3)[2].arg("a"), Some(RING_CAPACITY as u64 + 9));
    }
}
