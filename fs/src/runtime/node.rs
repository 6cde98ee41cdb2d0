//! Which node the code running now belongs to.
//!
//! The appliance is one node, but the simulator (and some tests) run several
//! nodes in one process. Counters and trace events are kept per node, so
//! whoever drives a node's work says which node it is: each node's
//! [`Executor`](crate::runtime::exec::Executor) enters its node around every
//! poll, and code outside an executor can use [`enter`]. The default is
//! node 0, so single-node code needs nothing.
//!
//! In `no_std` builds (the appliance, one CPU, no threads) the current node
//! is one static; with the `std` feature (host tools, tests, simulator) it
//! is per thread, so tests running in parallel threads do not see each
//! other's nodes.

/// A node's index in this process (its quorum slot in the simulator).
pub type NodeId = u8;

/// Nodes one process can keep apart; counters hold one value per node.
pub const MAX_NODES: usize = 16;

#[cfg(any(test, feature = "std"))]
mod current {
    use super::NodeId;
    use core::cell::Cell;

    std::thread_local! {
        static CURRENT: Cell<NodeId> = const { Cell::new(0) };
    }

    pub fn get() -> NodeId {
        CURRENT.with(|c| c.get())
    }

    pub fn set(n: NodeId) {
        CURRENT.with(|c| c.set(n))
    }
}

#[cfg(not(any(test, feature = "std")))]
mod current {
    use super::NodeId;
    use core::sync::atomic::{AtomicU8, Ordering};

    static CURRENT: AtomicU8 = AtomicU8::new(0);

    pub fn get() -> NodeId {
        CURRENT.load(Ordering::Relaxed)
    }

    pub fn set(n: NodeId) {
        CURRENT.store(n, Ordering::Relaxed)
    }
}

/// The node running now.
#[inline]
pub fn current() -> NodeId {
    current::get()
}

/// Run as `node` until the guard drops (then the previous node is back).
///
/// # Panics
/// If `node` is not below [`MAX_NODES`].
pub fn enter(node: NodeId) -> NodeGuard {
    assert!((node as usize) < MAX_NODES, "node {node} >= MAX_NODES");
    let prev = current::get();
    current::set(node);
    NodeGuard { prev }
}

/// Restores the previous node when dropped.
#[must_use = "the node is left when the guard drops"]
pub struct NodeGuard {
    prev: NodeId,
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        current::set(self.prev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_nests_and_restores() {
        assert_eq!(current(), 0);
        {
            let _a = enter(3);
            assert_eq!(current(), 3);
            {
                let _b = enter(5);
                assert_eq!(current(), 5);
            }
            assert_eq!(current(), 3);
        }
        assert_eq!(current(), 0);
    }
}
