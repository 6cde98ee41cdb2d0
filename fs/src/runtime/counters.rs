//! Named counters any subsystem can bump, printed by the shell `counters`.
//!
//! A counter is a `static` [`Counter`] (usually made by [`counter!`]); it
//! joins the global registry the first time it is bumped or touched, so an
//! increment costs one relaxed atomic add plus one relaxed load. Counters
//! with the same name (declared in several places) are summed when read.
//! The registry only grows by distinct statics, so it is bounded by code.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spin::Mutex;

/// One named, monotonically increasing (or [`Counter::set`]) 64-bit value.
pub struct Counter {
    name: &'static str,
    value: AtomicU64,
    registered: AtomicBool,
}

static REGISTRY: Mutex<Vec<&'static Counter>> = Mutex::new(Vec::new());

impl Counter {
    /// A counter at zero. Names are dotted, subsystem first: `blk.read_bytes`.
    pub const fn new(name: &'static str) -> Self {
        Counter {
            name,
            value: AtomicU64::new(0),
            registered: AtomicBool::new(false),
        }
    }

    #[inline]
    pub fn inc(&'static self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&'static self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.touch();
    }

    /// Overwrite the value (for gauges such as "tasks alive").
    #[inline]
    pub fn set(&'static self, v: u64) {
        self.value.store(v, Ordering::Relaxed);
        self.touch();
    }

    /// Make the counter visible in the registry, even at zero.
    #[inline]
    pub fn touch(&'static self) {
        if !self.registered.load(Ordering::Relaxed) {
            self.register();
        }
    }

    #[cold]
    fn register(&'static self) {
        if !self.registered.swap(true, Ordering::AcqRel) {
            REGISTRY.lock().push(self);
        }
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Declare a static counter in place and yield `&'static Counter`:
/// `counter!("net.rx_packets").inc()`.
#[macro_export]
macro_rules! counter {
    ($name:expr) => {{
        static COUNTER: $crate::runtime::counters::Counter =
            $crate::runtime::counters::Counter::new($name);
        &COUNTER
    }};
}

/// Every registered counter as (name, value), sorted by name, with
/// same-named counters summed.
pub fn snapshot() -> Vec<(&'static str, u64)> {
    let mut all: Vec<(&'static str, u64)> =
        REGISTRY.lock().iter().map(|c| (c.name, c.get())).collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    let mut merged: Vec<(&'static str, u64)> = Vec::with_capacity(all.len());
    for (name, v) in all {
        match merged.last_mut() {
            Some(last) if last.0 == name => last.1 = last.1.wrapping_add(v),
            _ => merged.push((name, v)),
        }
    }
    merged
}

/// The counters whose name starts with `prefix`.
pub fn snapshot_prefix(prefix: &str) -> Vec<(&'static str, u64)> {
    snapshot()
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .collect()
}

/// The value of the named counter (summed), if any counter of that name
/// has registered.
pub fn get(name: &str) -> Option<u64> {
    let reg = REGISTRY.lock();
    let mut found = None;
    for c in reg.iter().filter(|c| c.name == name) {
        found = Some(found.unwrap_or(0u64).wrapping_add(c.get()));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_register_on_first_use_and_sum_by_name() {
        let a = counter!("test.counters.same");
        let b = counter!("test.counters.same");
        assert_eq!(get("test.counters.same"), None);
        a.inc();
        b.add(4);
        assert_eq!(get("test.counters.same"), Some(5));
        let snap = snapshot_prefix("test.counters.");
        assert_eq!(snap, alloc::vec![("test.counters.same", 5)]);
    }

    #[test]
    fn touched_counter_shows_at_zero_and_set_overwrites() {
        static G: Counter = Counter::new("test.counters.gauge");
        G.touch();
        assert_eq!(get("test.counters.gauge"), Some(0));
        G.set(7);
        G.set(3);
        assert_eq!(get("test.counters.gauge"), Some(3));
        assert!(snapshot().windows(2).all(|w| w[0].0 < w[1].0));
    }
}
