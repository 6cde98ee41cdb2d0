//! Kernel-wide state of the one CPU: the executor handle, the parsed
//! command line and configuration. Set once during boot, read by tasks and
//! shell commands afterwards; never touched from interrupt handlers.

use alloc::string::String;
use core::cell::UnsafeCell;
use core::ops::Deref;

use scoutvm_fs::runtime::exec::Handle;
use scoutvm_kernel::cmdline::{Cmdline, Config};

/// A value shared by everything on the one CPU. `Sync` by fiat: the kernel
/// runs a single thread of control and interrupt handlers never touch a
/// `Local` (they only use atomics in `drivers::irq`).
pub struct Local<T>(T);

// SAFETY: see the type comment: one CPU, no access from interrupt context,
// so no two threads of control can observe `T` concurrently.
unsafe impl<T> Sync for Local<T> {}

impl<T> Local<T> {
    pub const fn new(v: T) -> Self {
        Local(v)
    }
}

impl<T> Deref for Local<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Written once at boot, then only read.
pub struct Once<T>(UnsafeCell<Option<T>>);

// SAFETY: as for `Local`; additionally `set` runs before any `get`.
unsafe impl<T> Sync for Once<T> {}

impl<T> Once<T> {
    pub const fn new() -> Self {
        Once(UnsafeCell::new(None))
    }

    pub fn set(&self, v: T) {
        // SAFETY: called once during boot, before any reader exists.
        let slot = unsafe { &mut *self.0.get() };
        assert!(slot.is_none(), "runtime value set twice");
        *slot = Some(v);
    }

    pub fn try_get(&self) -> Option<&T> {
        // SAFETY: after `set` the value is never mutated again.
        unsafe { (*self.0.get()).as_ref() }
    }

    pub fn get(&self) -> &T {
        self.try_get()
            .expect("runtime value read before boot set it")
    }
}

static HANDLE: Once<Handle> = Once::new();
static CMDLINE: Once<Cmdline> = Once::new();
static CONFIG: Once<Config> = Once::new();

pub fn init(handle: Handle, cmdline: Cmdline, config: Config) {
    HANDLE.set(handle);
    CMDLINE.set(cmdline);
    CONFIG.set(config);
}

/// Spawn tasks and make timers from anywhere in the kernel.
pub fn handle() -> Handle {
    HANDLE.get().clone()
}

/// The full kernel command line (generic `key=value` store).
pub fn cmdline() -> &'static Cmdline {
    CMDLINE.get()
}

pub fn config() -> &'static Config {
    CONFIG.get()
}

pub fn node_name() -> String {
    CONFIG
        .try_get()
        .map_or_else(|| String::from("scoutvm"), |c| c.node.clone())
}
