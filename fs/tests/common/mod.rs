//! Test support for the POSIX tests: a tiny `block_on` (every future here
//! is ready or wakes at once) and in-memory volumes that survive remounts.
#![allow(dead_code)]

use core::future::Future;
use core::pin::pin;
use core::task::{Context, Poll, Waker};
use std::rc::Rc;

use scoutvm_fs::dev::MemDev;
use scoutvm_fs::env::{ManualClock, Timespec};
use scoutvm_fs::mem_backend::{MemBackend, MemMkfs, MemStore};
use scoutvm_fs::vfs::{Mount, MountOptions};

/// Poll to completion with a no-op waker; panics if a future stays
/// pending for very long (a lost wake-up would hang otherwise).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("future never completed");
}

/// An in-memory volume: durable items, a data device and a clock.
pub struct Vol {
    pub store: Rc<MemStore>,
    pub data: Rc<MemDev>,
    pub clock: Rc<ManualClock>,
    pub opts: MountOptions,
}

impl Vol {
    pub fn new() -> Vol {
        Vol::with(MemMkfs::default(), MountOptions::default())
    }

    pub fn with(mkfs: MemMkfs, opts: MountOptions) -> Vol {
        let data = Rc::new(MemDev::new(mkfs.data_blocks * 4096));
        let store = MemStore::mkfs(mkfs);
        let clock = Rc::new(ManualClock::new(Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        }));
        Vol {
            store,
            data,
            clock,
            opts,
        }
    }

    /// Mount (a new cache and transaction over the durable state).
    pub fn mount(&self) -> (Mount, Rc<MemBackend>) {
        let be = MemBackend::new(self.store.clone());
        let m = block_on(Mount::mount(
            be.clone(),
            self.data.clone(),
            self.clock.clone(),
            self.opts,
        ))
        .expect("mount");
        (m, be)
    }
}
