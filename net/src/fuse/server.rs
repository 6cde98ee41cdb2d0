//! The FUSE file server: what all connections over one mounted volume
//! share.
//!
//! Owns the [`ServerConfig`] (bounds, allow-list, root squash, cache
//! validity), the POSIX lock table (the 9P server's [`LockTable`] machine,
//! one table for every FUSE client), the registry of live connections (for
//! the shell's `fuse` command) and the shutdown switch. The appliance (or
//! a test) makes one [`Server`] over a `posix::mount::Mount` and an
//! executor `Handle`, then hands each accepted byte stream to
//! [`serve`](super::serve). Memory: a connection holds at most
//! `conn_memory_max_bytes` in requests and unsent replies plus its frame
//! buffer ([`Server::frame_max`]). Invariants: at most `connections_max`
//! connections are registered; after [`Server::shutdown`] starts none is
//! accepted, and it returns once every connection has released its file
//! handles and locks.

pub(crate) use crate::conns::Connection;
use crate::conns::Registry;

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::runtime::exec::{Handle, Notify};
use scoutvm_fs::runtime::trace::Tracepoint;

use crate::p9::access::AllowList;
use crate::p9::locks::LockTable;
use crate::p9::Peer;

/// A connection opened (`open=1`) or closed (`open=0`).
pub static TRACE_CONN: Tracepoint = Tracepoint::new("fuse_conn", &["id", "addr", "port", "open"]);

/// The smallest `max_write` a server may be configured with.
pub const MAX_WRITE_MIN: u32 = 4096;
/// The largest: `fuse_write_out.size` and the kernel's `max_pages` bound.
pub const MAX_WRITE_MAX: u32 = 16 << 20;
/// Largest xattr value (Linux `XATTR_SIZE_MAX`): a `SETXATTR` frame may be
/// this big whatever `max_write` is.
pub const XATTR_VALUE_MAX: usize = 65536;

/// Bounds and policy of a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The largest `WRITE` (and `READ` reply) accepted; told the client
    /// in `INIT`.
    pub max_write: u32,
    /// The most readahead granted (the client's own is the other bound).
    pub max_readahead: u32,
    /// Requests in flight per connection; past it the connection stops
    /// reading (`fuse.request_queue_full`).
    pub requests_max: usize,
    pub connections_max: usize,
    /// Open file and directory handles per connection (`EMFILE` past it).
    pub handles_max: usize,
    /// Node ids with a lookup count per connection; past it lookups still
    /// answer but are not counted (`fuse.node_limit`).
    pub nodes_max: usize,
    /// Lock ranges held in all.
    pub locks_max: usize,
    /// `SETLKW`s one connection may have waiting (they do not count in
    /// `requests_max`); past it a blocked `SETLKW` gets `ENOLCK`.
    pub lock_waiters_max: usize,
    /// Treat uid 0 (and gid 0) as `nobody`.
    pub root_squash: bool,
    /// Client networks that may use the service.
    pub allow: AllowList,
    /// Distinct users per connection (their learned groups).
    pub users_max: usize,
    /// Bytes one connection may hold in requests being served and replies
    /// not yet sent (`fuse.memory_full` past it). At least twice
    /// [`Server::frame_max`].
    pub conn_memory_max_bytes: usize,
    /// How long the client may cache a name and an inode's attributes.
    /// Short: other clients and cluster nodes change the volume too.
    pub entry_valid_ns: u64,
    pub attr_valid_ns: u64,
    /// Only serve node ids this connection looked up (else `ESTALE`).
    /// Off by default: a node id is the inode number, so a client that
    /// reconnects (a relay across an appliance reboot) keeps working.
    pub strict_nodeids: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_write: 1 << 20,
            max_readahead: 1 << 20,
            requests_max: 64,
            connections_max: 32,
            handles_max: 16384,
            nodes_max: 1 << 20,
            locks_max: 16384,
            lock_waiters_max: 1024,
            root_squash: false,
            allow: AllowList::any(),
            users_max: 64,
            conn_memory_max_bytes: 8 << 20,
            entry_valid_ns: 1_000_000_000,
            attr_valid_ns: 1_000_000_000,
            strict_nodeids: false,
        }
    }
}

/// What the shell prints about one connection.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub peer: Peer,
    pub allowed: bool,
    /// The negotiated protocol minor version (0: no `INIT` yet).
    pub minor: u32,
    pub max_write: u32,
    /// Node ids with a lookup count.
    pub nodes: usize,
    /// Open file and directory handles.
    pub handles: usize,
    pub requests_in_flight: usize,
    pub requests_total: u64,
    pub memory_held: usize,
}

/// One FUSE server over one mounted volume.
pub struct Server {
    pub(crate) mount: Rc<Mount>,
    pub(crate) exec: Handle,
    pub(crate) config: ServerConfig,
    pub(crate) locks: RefCell<LockTable>,
    /// Notified whenever a lock is released or changed (`SETLKW` retries).
    pub(crate) locks_changed: Notify,
    /// Serialises `O_APPEND` writes (size lookup + write).
    pub(crate) append_busy: Cell<bool>,
    pub(crate) append_done: Notify,
    conns: Registry<ClientInfo>,
}

impl Server {
    pub fn new(mount: Rc<Mount>, exec: Handle, config: ServerConfig) -> Rc<Server> {
        assert!((MAX_WRITE_MIN..=MAX_WRITE_MAX).contains(&config.max_write));
        assert!(config.requests_max > 0 && config.handles_max > 0 && config.users_max > 0);
        let frame = Self::frame_max_of(config.max_write) as usize;
        assert!(
            config.conn_memory_max_bytes >= 2 * frame + 64 * 1024,
            "a connection's memory must hold a request and its reply"
        );
        let connections_max = config.connections_max;
        Rc::new(Server {
            locks: RefCell::new(LockTable::new(config.locks_max)),
            mount,
            exec,
            config,
            locks_changed: Notify::new(),
            append_busy: Cell::new(false),
            append_done: Notify::new(),
            conns: Registry::new(
                connections_max,
                scoutvm_fs::counter!("fuse.connections_refused"),
            ),
        })
    }

    fn frame_max_of(max_write: u32) -> u32 {
        // A WRITE is its data plus two headers; a SETXATTR is a value of
        // up to 64 KiB plus a name.
        (max_write as usize).max(XATTR_VALUE_MAX) as u32 + 4096
    }

    /// The largest request frame accepted (a longer one closes the
    /// connection: the stream cannot be resynced).
    pub fn frame_max(&self) -> u32 {
        Self::frame_max_of(self.config.max_write)
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
    /// flight finish or are cancelled, handles released, locks dropped)
    /// and wait until all are gone. Call before the final commit.
    pub async fn shutdown(&self) {
        self.conns.shutdown().await
    }
}
