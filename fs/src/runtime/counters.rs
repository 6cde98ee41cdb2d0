//! Named counters any subsystem can bump, printed by the shell `counters`.
//!
//! A counter is a `static` [`Counter`] (usually made by [`counter!`]); it
//! joins the global registry the first time it is bumped or touched. It
//! holds one value per node ([`MAX_NODES`]): a bump goes to the node
//! running now ([`node::current`]), so several nodes in one process (the
//! simulator) keep separate figures. An increment costs the node lookup,
//! one relaxed atomic add and one relaxed load.
//!
//! Reads come in two kinds: per node ([`snapshot_node`], [`get_node`]) and
//! summed over every node ([`snapshot`], [`get`], [`snapshot_prefix`]; on
//! the one-node appliance the two agree). Counters with the same name
//! (declared in several places) are summed too. The registry only grows by
//! distinct statics, so it is bounded by code.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spin::Mutex;

use crate::runtime::node::{self, NodeId, MAX_NODES};

/// One named 64-bit value per node: monotonically increasing
/// ([`Counter::add`]) or a gauge ([`Counter::set`], [`Counter::set_max`]).
pub struct Counter {
    name: &'static str,
    values: [AtomicU64; MAX_NODES],
    registered: AtomicBool,
}

static REGISTRY: Mutex<Vec<&'static Counter>> = Mutex::new(Vec::new());

impl Counter {
    /// A counter at zero. Names are dotted, subsystem first: `blk.read_bytes`.
    pub const fn new(name: &'static str) -> Self {
        Counter {
            name,
            values: [const { AtomicU64::new(0) }; MAX_NODES],
            registered: AtomicBool::new(false),
        }
    }

    /// The running node's slot.
    #[inline]
    fn mine(&self) -> &AtomicU64 {
        // `node::enter` keeps the node below MAX_NODES
        &self.values[node::current() as usize % MAX_NODES]
    }

    #[inline]
    pub fn inc(&'static self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&'static self, n: u64) {
        self.mine().fetch_add(n, Ordering::Relaxed);
        self.touch();
    }

    /// Overwrite the running node's value (for gauges such as "tasks
    /// alive").
    #[inline]
    pub fn set(&'static self, v: u64) {
        self.mine().store(v, Ordering::Relaxed);
        self.touch();
    }

    /// Raise the running node's value to at least `v` (high-water gauges
    /// such as "longest poll").
    #[inline]
    pub fn set_max(&'static self, v: u64) {
        self.mine().fetch_max(v, Ordering::Relaxed);
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

    /// The value summed over every node.
    pub fn get(&self) -> u64 {
        self.values
            .iter()
            .fold(0u64, |a, v| a.wrapping_add(v.load(Ordering::Relaxed)))
    }

    /// The value of one node (0 for a node at or above [`MAX_NODES`]).
    pub fn get_node(&self, node: NodeId) -> u64 {
        self.values
            .get(node as usize)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Declare a static counter in place and yield `&'static Counter`:
/// `counter!("net.rx_packets").inc()` bumps the running node's value.
#[macro_export]
macro_rules! counter {
    ($name:expr) => {{
        static COUNTER: $crate::runtime::counters::Counter =
            $crate::runtime::counters::Counter::new($name);
        &COUNTER
    }};
}

/// Every registered counter as (name, value) with `value` picked by
/// `read`, sorted by name, same-named counters summed.
fn collect(read: impl Fn(&Counter) -> u64) -> Vec<(&'static str, u64)> {
    let mut all: Vec<(&'static str, u64)> =
        REGISTRY.lock().iter().map(|c| (c.name, read(c))).collect();
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

/// The named value picked by `read` (summed), if any counter of that name
/// has registered.
fn find(name: &str, read: impl Fn(&Counter) -> u64) -> Option<u64> {
    let reg = REGISTRY.lock();
    let mut found = None;
    for c in reg.iter().filter(|c| c.name == name) {
        found = Some(found.unwrap_or(0u64).wrapping_add(read(c)));
    }
    found
}

/// Every registered counter as (name, value summed over nodes), sorted by
/// name, with same-named counters summed.
pub fn snapshot() -> Vec<(&'static str, u64)> {
    collect(Counter::get)
}

/// Every registered counter as (name, value of `node`), sorted by name,
/// with same-named counters summed.
pub fn snapshot_node(node: NodeId) -> Vec<(&'static str, u64)> {
    collect(|c| c.get_node(node))
}

/// The counters whose name starts with `prefix` (summed over nodes).
pub fn snapshot_prefix(prefix: &str) -> Vec<(&'static str, u64)> {
    snapshot()
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .collect()
}

/// The value of the named counter summed over nodes (and over counters
/// of that name), if any counter of that name has registered.
pub fn get(name: &str) -> Option<u64> {
    find(name, Counter::get)
}

/// The value of the named counter on `node`, if any counter of that name
/// has registered.
pub fn get_node(name: &str, node: NodeId) -> Option<u64> {
    find(name, |c| c.get_node(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_register_on_first_use_and_sum_by_name() {
        // a prefix no other test uses: tests run in parallel in one process
        let a = counter!("test.sum_by_name.same");
        let b = counter!("test.sum_by_name.same");
        assert_eq!(get("test.sum_by_name.same"), None);
        a.inc();
        b.add(4);
        assert_eq!(get("test.sum_by_name.same"), Some(5));
        let snap = snapshot_prefix("test.sum_by_name.");
        assert_eq!(snap, alloc::vec![("test.sum_by_name.same", 5)]);
    }

    #[test]
    fn touched_counter_shows_at_zero_and_set_overwrites() {
        static G: Counter = Counter::new("test.counters.gauge");
        G.touch();
        assert_eq!(get("test.counters.gauge"), Some(0));
        G.set(7);
        G.set(3);
        assert_eq!(get("test.counters.gauge"), Some(3));
        G.set_max(2);
        assert_eq!(get("test.counters.gauge"), Some(3));
        G.set_max(9);
        assert_eq!(get("test.counters.gauge"), Some(9));
        assert!(snapshot().windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn nodes_keep_separate_values_and_reads_sum_them() {
        let c = counter!("test.counters.per_node");
        {
            let _n0 = node::enter(0);
            c.add(2);
        }
        {
            let _n1 = node::enter(1);
            c.add(5);
            c.inc();
        }
        {
            let _n1 = node::enter(MAX_NODES as NodeId - 1);
            c.inc();
        }
        assert_eq!(c.get_node(0), 2);
        assert_eq!(c.get_node(1), 6);
        assert_eq!(c.get_node(2), 0);
        assert_eq!(c.get_node(MAX_NODES as NodeId - 1), 1);
        assert_eq!(c.get_node(MAX_NODES as NodeId), 0);
        assert_eq!(c.get(), 9);
        assert_eq!(get("test.counters.per_node"), Some(9));
        assert_eq!(get_node("test.counters.per_node", 0), Some(2));
        assert_eq!(get_node("test.counters.per_node", 1), Some(6));
        assert_eq!(get_node("test.counters.per_node", 3), Some(0));
        assert_eq!(get_node("test.counters.nosuch", 1), None);
        let find = |snap: Vec<(&'static str, u64)>| {
            snap.into_iter()
                .find(|(n, _)| *n == "test.counters.per_node")
                .map(|(_, v)| v)
        };
        assert_eq!(find(snapshot_node(0)), Some(2));
        assert_eq!(find(snapshot_node(1)), Some(6));
        assert_eq!(find(snapshot()), Some(9));
        // a gauge is per node too
        static G: Counter = Counter::new("test.counters.per_node_gauge");
        {
            let _n = node::enter(4);
            G.set(40);
        }
        {
            let _n = node::enter(5);
            G.set_max(50);
        }
        assert_eq!(get_node("test.counters.per_node_gauge", 4), Some(40));
        assert_eq!(get_node("test.counters.per_node_gauge", 5), Some(50));
    }
}
