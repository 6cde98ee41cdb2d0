//! The mount's connection to the server: typed calls for every request
//! the mount makes, over a reliable session (`cluster/session.rs`), and
//! the answers to requests the server sends (SYNC_LOG_TREES, LOCK,
//! LOCK_RECOVER, OPEN_INO_MAP).
//!
//! Called by the transaction engine (`log_txn.rs`), the merge worker and
//! the node. Every call goes through the session over a [`Transport`];
//! there is no other way to the server. A broken connection is retried
//! (reconnect with backoff, resend, retry on a new server life), never a
//! permanent error; errors are the server's answers, or the close errno
//! once the session is closed (`ENOLINK`, or `EIO` when the node's own
//! server failed).

use crate::cluster::msg::{
    self, decode_log_trees, decode_merge_request, InodeAlloc, LockRecover, NetLock, NetRoots,
    NetStatfs, OmapBits, OpenInoMap, OpenInoMapArgs, Request, OMAP_WORDS,
};
use crate::cluster::session::{ClientSession, LeaderAddr, SessionConfig, StaticLeader};
use crate::cluster::transport::{LocalFut, Transport};
use crate::counter;
use crate::errno::{Errno, FsResult};
use crate::format::key::Key;
use crate::format::log::{LogTrees, MergeComplete, MergeRequest};
use crate::runtime::exec::{Handle, Notified, Notify};
use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

pub use crate::cluster::session::ClientIdentity;

/// Answers the server's LOCK calls (invalidations): the lock client.
pub type LockHandler = Rc<dyn Fn(NetLock) -> LocalFut<'static, FsResult<NetLock>>>;

/// Answers a new server's LOCK_RECOVER from a key: the lock client's
/// report of what it holds.
pub type LockRecoverHandler = Rc<dyn Fn(&Key) -> Vec<NetLock>>;

/// Answers the server's OPEN_INO_MAP for a group: the mount's open map.
pub type OmapHandler = Rc<dyn Fn(u64) -> OmapBits>;

/// A mount's client: a session and what the server asked of it.
pub struct Client {
    session: Rc<ClientSession>,
    sync_requested: Rc<Cell<bool>>,
    /// Notified when the server asks for a commit.
    sync_kick: Notify,
    lock_handler: Rc<RefCell<Option<LockHandler>>>,
    recover_handler: Rc<RefCell<Option<LockRecoverHandler>>>,
    omap_handler: Rc<RefCell<Option<OmapHandler>>>,
}

impl Client {
    /// Connect to the server at the fixed address `addr` and greet it.
    pub async fn connect(
        transport: Rc<dyn Transport>,
        addr: &str,
        id: ClientIdentity,
        handle: &Handle,
    ) -> FsResult<Rc<Client>> {
        Client::connect_via(
            transport,
            Rc::new(StaticLeader::new(addr)),
            id,
            SessionConfig::default(),
            handle,
        )
        .await
    }

    /// Start a session to whoever `leader` names and wait for the first
    /// greeting: the server's error if it refused it (wrong filesystem).
    /// Until a server answers, this waits (the session keeps trying).
    pub async fn connect_via(
        transport: Rc<dyn Transport>,
        leader: Rc<dyn LeaderAddr>,
        id: ClientIdentity,
        cfg: SessionConfig,
        handle: &Handle,
    ) -> FsResult<Rc<Client>> {
        let session = ClientSession::start(transport, leader, id, cfg, handle)?;
        let sync = Rc::new(Cell::new(false));
        let s2 = sync.clone();
        let kick = Notify::new();
        let k2 = kick.clone();
        let locks: Rc<RefCell<Option<LockHandler>>> = Rc::new(RefCell::new(None));
        let l2 = locks.clone();
        let recover: Rc<RefCell<Option<LockRecoverHandler>>> = Rc::new(RefCell::new(None));
        let r2 = recover.clone();
        let omap: Rc<RefCell<Option<OmapHandler>>> = Rc::new(RefCell::new(None));
        let o2 = omap.clone();
        session.set_handler(Rc::new(move |req| {
            let sync = s2.clone();
            let kick = k2.clone();
            let lock = l2.borrow().clone();
            let recover = r2.borrow().clone();
            let omap = o2.borrow().clone();
            Box::pin(async move {
                match req {
                    Request::SyncLogTrees => {
                        sync.set(true);
                        kick.notify();
                        counter!("client.sync_requests").inc();
                        Ok(Vec::new())
                    }
                    // without a lock client (a single node) there are no
                    // grants to invalidate
                    Request::Lock(nl) => match lock {
                        Some(h) => h(nl).await.map(|r| r.encode()),
                        None => Err(Errno::EINVAL),
                    },
                    // no lock client: no locks to report
                    Request::LockRecover(start) => Ok(LockRecover {
                        locks: recover.map(|h| h(&start)).unwrap_or_default(),
                    }
                    .encode()),
                    // no mount yet (or any more): nothing is open
                    Request::OpenInoMap(args) => {
                        counter!("client.omap_requests").inc();
                        Ok(OpenInoMap {
                            args,
                            bits: omap.map(|h| h(args.group_nr)).unwrap_or([0; OMAP_WORDS]),
                        }
                        .encode())
                    }
                    _ => Err(Errno::EINVAL),
                }
            })
        }));
        if let Err(e) = session.wait_connected().await {
            session.close();
            return Err(e);
        }
        Ok(Rc::new(Client {
            session,
            sync_requested: sync,
            sync_kick: kick,
            lock_handler: locks,
            recover_handler: recover,
            omap_handler: omap,
        }))
    }

    pub fn rid(&self) -> u64 {
        self.session.rid()
    }

    /// Term of the server life last greeted.
    pub fn server_term(&self) -> u64 {
        self.session.server_term()
    }

    /// The session (counters, tests that break its socket).
    pub fn session(&self) -> &Rc<ClientSession> {
        &self.session
    }

    /// Answer the server's LOCK calls with `h` (the mount's lock client).
    pub fn set_lock_handler(&self, h: LockHandler) {
        *self.lock_handler.borrow_mut() = Some(h);
    }

    /// Answer a new server's LOCK_RECOVER with `h` (the lock client).
    pub fn set_lock_recover_handler(&self, h: LockRecoverHandler) {
        *self.recover_handler.borrow_mut() = Some(h);
    }

    /// Answer the server's OPEN_INO_MAP with `h` (the mount's open map).
    pub fn set_omap_handler(&self, h: OmapHandler) {
        *self.omap_handler.borrow_mut() = Some(h);
    }

    /// Did the server ask for a commit since the last call?
    pub fn take_sync_request(&self) -> bool {
        self.sync_requested.replace(false)
    }

    /// Ask the mount for a commit (as a server's SYNC_LOG_TREES would).
    pub fn request_sync(&self) {
        self.sync_requested.set(true);
    }

    /// Completes at the next SYNC_LOG_TREES from the server (take it
    /// before looking at [`Self::sync_pending`]).
    pub fn sync_notified(&self) -> Notified {
        self.sync_kick.notified()
    }

    /// Has the server asked for a commit that has not happened yet?
    pub fn sync_pending(&self) -> bool {
        self.sync_requested.get()
    }

    /// Is a greeted connection up right now (it may come back)?
    pub fn is_connected(&self) -> bool {
        self.session.is_connected()
    }

    /// Was the session closed (no call can succeed any more)?
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// Close the session (pending and later calls fail with `ENOLINK`).
    pub fn disconnect(&self) {
        self.session.close();
    }

    async fn call(&self, req: Request) -> FsResult<Vec<u8>> {
        counter!("client.requests").inc();
        self.session.call(req.cmd(), &req.encode_payload()).await
    }

    /// Up to `count` fresh inode numbers (`nr == 0`: exhausted).
    pub async fn alloc_inodes(&self, count: u64) -> FsResult<InodeAlloc> {
        InodeAlloc::decode(&self.call(Request::AllocInodes(count)).await?)
    }

    /// Open the next transaction: the log tree with refilled allocators
    /// and a fresh `get_trans_seq`.
    pub async fn get_log_trees(&self) -> FsResult<LogTrees> {
        let lt = decode_log_trees(&self.call(Request::GetLogTrees).await?)?;
        if lt.rid != self.rid() || lt.is_finalized() || !lt.is_open() {
            return Err(Errno::EPROTO);
        }
        Ok(lt)
    }

    /// Publish a written transaction; durable when this returns.
    pub async fn commit_log_trees(&self, lt: &LogTrees) -> FsResult<()> {
        self.call(Request::CommitLogTrees(alloc::boxed::Box::new(*lt)))
            .await
            .map(|_| ())
    }

    /// The stable roots readers use.
    pub async fn get_roots(&self) -> FsResult<NetRoots> {
        NetRoots::decode(&self.call(Request::GetRoots).await?)
    }

    /// The greatest seq below which every transaction is committed.
    pub async fn get_last_seq(&self) -> FsResult<u64> {
        msg::decode_u64(&self.call(Request::GetLastSeq).await?)
    }

    /// A piece of log merge work, if there is any.
    pub async fn get_log_merge(&self) -> FsResult<Option<MergeRequest>> {
        match self.call(Request::GetLogMerge).await {
            Ok(b) => {
                let req = decode_merge_request(&b)?;
                if req.rid != self.rid() {
                    return Err(Errno::EPROTO);
                }
                Ok(Some(req))
            }
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn commit_log_merge(&self, comp: &MergeComplete) -> FsResult<()> {
        self.call(Request::CommitLogMerge(alloc::boxed::Box::new(*comp)))
            .await
            .map(|_| ())
    }

    /// The union of every other mount's open map of `group_nr`.
    pub async fn open_ino_map(&self, group_nr: u64) -> FsResult<OmapBits> {
        let args = OpenInoMapArgs {
            group_nr,
            req_id: 0,
        };
        let m = OpenInoMap::decode(&self.call(Request::OpenInoMap(args)).await?)?;
        if m.args != args {
            return Err(Errno::EPROTO);
        }
        Ok(m.bits)
    }

    pub async fn statfs(&self) -> FsResult<NetStatfs> {
        NetStatfs::decode(&self.call(Request::Statfs).await?)
    }

    /// Leave: the server reclaims this mount's resources and forgets it;
    /// the session closes.
    pub async fn farewell(&self) -> FsResult<()> {
        counter!("client.requests").inc();
        self.session.farewell().await
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.session.close();
    }
}
