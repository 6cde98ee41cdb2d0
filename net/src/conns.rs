//! The connections of a file server (9P, FUSE): registered with ids, a
//! bound on how many, listed for `clients`, all aborted at shutdown. One
//! registry for both servers; each says what its connections show.

use alloc::collections::BTreeMap;
use alloc::rc::{Rc, Weak};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use scoutvm_fs::runtime::counters::Counter;
use scoutvm_fs::runtime::exec::Notify;

/// A connection as its server's registry sees it.
pub(crate) trait Connection {
    /// What `clients` shows about it.
    type Info;
    fn info(&self) -> Self::Info;
    /// Stop reading, cancel what waits; the connection then tears down
    /// and unregisters.
    fn abort(&self);
}

/// The live connections of one server.
pub(crate) struct Registry<I> {
    conns: RefCell<BTreeMap<u64, Weak<dyn Connection<Info = I>>>>,
    closed: Notify,
    next: Cell<u64>,
    stopping: Cell<bool>,
    max: usize,
    /// Counts connections refused for `max`.
    refused: &'static Counter,
}

impl<I> Registry<I> {
    pub(crate) fn new(max: usize, refused: &'static Counter) -> Registry<I> {
        Registry {
            conns: RefCell::new(BTreeMap::new()),
            closed: Notify::new(),
            next: Cell::new(1),
            stopping: Cell::new(false),
            max,
            refused,
        }
    }

    /// Register a new connection made by `make` with its id; `None` when
    /// full or shutting down.
    pub(crate) fn register<C: Connection<Info = I> + 'static>(
        &self,
        make: impl FnOnce(u64) -> Rc<C>,
    ) -> Option<Rc<C>> {
        if self.stopping.get() {
            return None;
        }
        let mut conns = self.conns.borrow_mut();
        if conns.len() >= self.max {
            self.refused.inc();
            return None;
        }
        let id = self.next.get();
        self.next.set(id + 1);
        let c = make(id);
        let rc: Rc<dyn Connection<Info = I>> = c.clone();
        conns.insert(id, Rc::downgrade(&rc));
        Some(c)
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.conns.borrow_mut().remove(&id);
        self.closed.notify();
    }

    fn live(&self) -> Vec<Rc<dyn Connection<Info = I>>> {
        self.conns
            .borrow()
            .values()
            .filter_map(|w| w.upgrade())
            .collect()
    }

    pub(crate) fn count(&self) -> usize {
        self.conns.borrow().len()
    }

    pub(crate) fn infos(&self) -> Vec<I> {
        self.live().iter().map(|c| c.info()).collect()
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Refuse new connections, abort every one and wait until all are
    /// gone.
    pub(crate) async fn shutdown(&self) {
        self.stopping.set(true);
        loop {
            let wait = self.closed.notified();
            let live = self.live();
            if live.is_empty() && self.conns.borrow().is_empty() {
                return;
            }
            for c in &live {
                c.abort();
            }
            wait.await;
        }
    }
}
