//! The 9P2000.L file server: what all connections of one mounted volume
//! share.
//!
//! Owns the [`ServerConfig`] (bounds, allow-list, root squash), the POSIX
//! lock table (locks are per file across every client), the registry of
//! live connections (for the shell's `clients`) and the shutdown switch.
//! The appliance (or a test) makes one [`Server`] over a `posix::mount::Mount` and
//! an executor `Handle`, then hands each accepted byte stream to
//! [`serve`](super::serve); the state of a connection lives in
//! `conn.rs`, the operations in `ops.rs`. Memory: a connection holds at
//! most `conn_memory_max_bytes` in requests and unsent replies, plus its
//! frame buffer (msize) and `xattr_fids_max` xattr values, so the server
//! needs about `connections_max` x (that + msize + 1 MiB). Invariants: at
//! most `connections_max` connections are registered; after [`Server::shutdown`]
//! starts, no connection is accepted and the call returns only once every
//! connection has released its fids and locks.

pub(crate) use crate::conns::Connection;
use crate::conns::Registry;

use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::runtime::exec::{Handle, Notify};
use scoutvm_fs::runtime::trace::Tracepoint;

use super::access::AllowList;
use super::locks::LockTable;
use super::wire::MSIZE_MAX;

/// A refused attach: the client's address (the connection id is in
/// `p9_conn`).
pub static TRACE_REFUSED: Tracepoint = Tracepoint::new("p9_refused", &["a", "b", "c", "d"]);
/// A connection opened (`open=1`) or closed (`open=0`).
pub static TRACE_CONN: Tracepoint = Tracepoint::new("p9_conn", &["id", "addr", "port", "open"]);

/// The smallest msize the server accepts in `Tversion`.
pub const MSIZE_MIN: u32 = 4096;

/// Bounds and policy of a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The largest msize negotiated (clients ask for less or get this).
    pub msize_max: u32,
    /// Fids per connection.
    pub fids_max: usize,
    /// Requests in flight per connection; past it the connection stops
    /// reading (the client waits), counted in `p9.request_queue_full`.
    pub requests_max: usize,
    pub connections_max: usize,
    /// Lock ranges held in all.
    pub locks_max: usize,
    /// How long a blocking `Tlock` waits before answering `Blocked` (the
    /// client then retries).
    pub lock_wait_ns: u64,
    /// Treat uid 0 as `nobody`.
    pub root_squash: bool,
    /// Client networks that may attach.
    pub allow: AllowList,
    /// Distinct users per connection.
    pub users_max: usize,
    /// Bytes one connection may hold in requests being served and replies
    /// not yet sent; past it the connection stops taking requests until
    /// its replies drain (`p9.memory_full`). At least twice `msize_max`.
    pub conn_memory_max_bytes: usize,
    /// Fids per connection holding an xattr value (up to 64 KiB each).
    pub xattr_fids_max: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            msize_max: MSIZE_MAX,
            fids_max: 16384,
            requests_max: 64,
            connections_max: 32,
            locks_max: 16384,
            lock_wait_ns: 30_000_000_000,
            root_squash: false,
            allow: AllowList::any(),
            users_max: 64,
            conn_memory_max_bytes: 4 << 20,
            xattr_fids_max: 16,
        }
    }
}

/// A client's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: [u8; 4],
    pub port: u16,
}

impl Peer {
    /// The address as one integer (for trace fields).
    pub fn addr_u32(&self) -> u32 {
        u32::from_be_bytes(self.addr)
    }
}

impl core::fmt::Display for Peer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let a = self.addr;
        write!(f, "{}.{}.{}.{}:{}", a[0], a[1], a[2], a[3], self.port)
    }
}

/// What `clients` prints about one connection.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub peer: Peer,
    /// The peer is on an allowed network.
    pub allowed: bool,
    pub msize: u32,
    /// Attached users: (uname as sent, effective uid).
    pub users: Vec<(String, u32)>,
    pub fids: usize,
    pub open_fids: usize,
    pub requests_in_flight: usize,
    pub requests_total: u64,
    /// Bytes held by requests being served and unsent replies.
    pub memory_held: usize,
}

/// One 9P server over one mounted volume.
pub struct Server {
    pub(crate) mount: Rc<Mount>,
    pub(crate) exec: Handle,
    pub(crate) config: ServerConfig,
    pub(crate) locks: RefCell<LockTable>,
    /// Notified whenever a lock is released or changed (blocked `Tlock`s
    /// retry).
    pub(crate) locks_changed: Notify,
    /// Serialises `O_APPEND` writes (size lookup + write).
    pub(crate) append_busy: Cell<bool>,
    pub(crate) append_done: Notify,
    conns: Registry<ClientInfo>,
}

impl Server {
    pub fn new(mount: Rc<Mount>, exec: Handle, config: ServerConfig) -> Rc<Server> {
        assert!(config.msize_max >= MSIZE_MIN && config.msize_max <= MSIZE_MAX);
        assert!(config.fids_max > 0 && config.requests_max > 0 && config.users_max > 0);
        assert!(
            config.conn_memory_max_bytes >= 2 * config.msize_max as usize + 64 * 1024,
            "a connection's memory must hold a request and its reply"
        );
        let locks = LockTable::new(config.locks_max);
        let connections_max = config.connections_max;
        Rc::new(Server {
            mount,
            exec,
            config,
            locks: RefCell::new(locks),
            locks_changed: Notify::new(),
            append_busy: Cell::new(false),
            append_done: Notify::new(),
            conns: Registry::new(
                connections_max,
                scoutvm_fs::counter!("p9.connections_refused"),
            ),
        })
    }

    pub fn mount(&self) -> &Rc<Mount> {
        &self.mount
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Lock ranges held by all clients.
    pub fn locks_held(&self) -> usize {
        self.locks.borrow().held()
    }

    pub fn is_stopping(&self) -> bool {
        self.conns.is_stopping()
    }

    /// Register a new connection; `None` when full or shutting down.
    pub(crate) fn register<C: Connection<Info = ClientInfo> + 'static>(
        &self,
        make: impl FnOnce(u64) -> Rc<C>,
    ) -> Option<Rc<C>> {
        self.conns.register(make)
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.conns.unregister(id)
    }

    /// Connections being served.
    pub fn connection_count(&self) -> usize {
        self.conns.count()
    }

    /// One line of facts per connection.
    pub fn clients(&self) -> Vec<ClientInfo> {
        self.conns.infos()
    }

    /// Stop: refuse new connections, abort every connection (requests in
    /// flight finish or are cancelled, fids are clunked, locks dropped)
    /// and wait until all are gone. Call before the final commit.
    pub async fn shutdown(&self) {
        self.conns.shutdown().await
    }
}
