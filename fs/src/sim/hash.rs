//! The run digest: every event the world records (deliveries, faults,
//! disk writes and flushes, workload operations and their results, each
//! with its virtual time and node) is folded into one 64-bit hash. Two
//! runs of one seed must end with the same hash; the first event where
//! they part is found by printing both logs (`--trace`).
//!
//! The log keeps only the newest [`RECENT`] events (for failure reports)
//! and, if the embedder installed one, hands every event to an observer.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Events the log keeps for a failure report.
pub const RECENT: usize = 64;

/// A 64-bit streaming hash (word-at-a-time multiply-rotate with a
/// SplitMix finalizer). Not cryptographic; stable across platforms.
#[derive(Clone, Copy, Debug)]
pub struct Digest {
    h: u64,
    n: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Digest::new()
    }
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Digest {
    pub const fn new() -> Digest {
        Digest {
            h: 0x243f_6a88_85a3_08d3,
            n: 0,
        }
    }

    pub fn word(&mut self, w: u64) {
        self.h = (self.h.rotate_left(23) ^ w).wrapping_mul(K);
        self.n += 1;
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        for c in b.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
    }

    /// The hash of everything folded in so far.
    pub fn value(&self) -> u64 {
        let mut z = self.h ^ self.n.wrapping_mul(K);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Who an event belongs to.
pub const WORLD: u8 = 0xff;

/// One recorded event.
#[derive(Clone, Debug)]
pub struct Event {
    /// Position in the log (from 0).
    pub index: u64,
    pub time_ns: u64,
    /// A node id, or [`WORLD`].
    pub node: u8,
    pub kind: &'static str,
    /// The first `nargs` are the event's arguments.
    pub args: [u64; 4],
    pub nargs: u8,
    /// Free text (workload operations and results); empty for most.
    pub text: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} [{}.{:09}] ",
            self.index,
            self.time_ns / 1_000_000_000,
            self.time_ns % 1_000_000_000
        )?;
        if self.node == WORLD {
            f.write_str("world ")?;
        } else {
            write!(f, "n{} ", self.node)?;
        }
        f.write_str(self.kind)?;
        for a in &self.args[..self.nargs as usize] {
            write!(f, " {a}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

/// Receives every event (the runner's `--trace`).
pub type Observer = Box<dyn FnMut(&Event)>;

/// The world's event log: a digest, a count and the newest events.
pub struct EventLog {
    digest: Digest,
    count: u64,
    recent: VecDeque<Event>,
    observer: Option<Observer>,
    /// Kinds (by prefix) kept whole for a checker ([`EventLog::keep`]).
    keep: Vec<&'static str>,
    kept: Vec<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new()
    }
}

impl EventLog {
    pub fn new() -> EventLog {
        EventLog {
            digest: Digest::new(),
            count: 0,
            recent: VecDeque::with_capacity(RECENT),
            observer: None,
            keep: Vec::new(),
            kept: Vec::new(),
        }
    }

    /// Keep every later event whose kind starts with one of `prefixes`
    /// (a checker reads them with [`EventLog::kept`]; the rest of the log
    /// keeps only the newest).
    pub fn keep(&mut self, prefixes: &[&'static str]) {
        self.keep.extend_from_slice(prefixes);
    }

    /// The events kept by [`EventLog::keep`], oldest first.
    pub fn kept(&self) -> &[Event] {
        &self.kept
    }

    pub fn set_observer(&mut self, o: Option<Observer>) {
        self.observer = o;
    }

    /// Record one event.
    pub fn record(&mut self, time_ns: u64, node: u8, kind: &'static str, args: &[u64], text: &str) {
        let d = &mut self.digest;
        d.word(time_ns);
        d.word(node as u64);
        d.bytes(kind.as_bytes());
        let mut a = [0u64; 4];
        for (slot, v) in a.iter_mut().zip(args) {
            *slot = *v;
        }
        debug_assert!(args.len() <= 4, "{kind}: too many args");
        for v in a {
            d.word(v);
        }
        if !text.is_empty() {
            d.bytes(text.as_bytes());
        }
        let ev = Event {
            index: self.count,
            time_ns,
            node,
            kind,
            args: a,
            nargs: args.len().min(4) as u8,
            text: text.into(),
        };
        self.count += 1;
        if let Some(o) = self.observer.as_mut() {
            o(&ev);
        }
        if self.keep.iter().any(|p| kind.starts_with(p)) {
            self.kept.push(ev.clone());
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(ev);
    }

    pub fn hash(&self) -> u64 {
        self.digest.value()
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The newest events, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &Event> {
        self.recent.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_order_and_content() {
        let mut a = EventLog::new();
        let mut b = EventLog::new();
        a.record(1, 0, "x", &[1, 2], "");
        a.record(2, 0, "y", &[], "t");
        b.record(1, 0, "x", &[1, 2], "");
        b.record(2, 0, "y", &[], "t");
        assert_eq!(a.hash(), b.hash());
        b.record(3, 1, "z", &[], "");
        assert_ne!(a.hash(), b.hash());
        let mut c = EventLog::new();
        c.record(2, 0, "y", &[], "t");
        c.record(1, 0, "x", &[1, 2], "");
        assert_ne!(a.hash(), c.hash());
        assert_eq!(a.count(), 2);
        assert_eq!(
            alloc::format!("{}", a.recent().next().unwrap()),
            "#0 [0.000000001] n0 x 1 2"
        );
    }
}
