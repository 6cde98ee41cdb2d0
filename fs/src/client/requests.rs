//! The mount's connection to the server: connect and greet, typed calls
//! for every request the mount makes, and the answers to requests the
//! server sends (SYNC_LOG_TREES).
//!
//! Called by the transaction engine (`trans.rs`), the merge worker and
//! the node. Every call goes through the framed connection (`rpc.rs`) over
//! a [`Transport`]; there is no other way to the server. Errors are errnos:
//! the server's answer, or `ECONNABORTED`/`ENOLINK` when the connection is
//! gone (no reconnect yet: that is the cluster session's job).

use crate::cluster::msg::{
    self, cmd, decode_log_trees, decode_merge_request, Greeting, InodeAlloc, NetRoots, NetStatfs,
    Request, GREETING_FLAG_FAREWELL,
};
use crate::cluster::rpc::{Endpoint, Role};
use crate::cluster::transport::Transport;
use crate::counter;
use crate::errno::{Errno, FsResult};
use crate::format::log::{LogTrees, MergeComplete, MergeRequest};
use crate::runtime::exec::Handle;
use alloc::rc::Rc;
use core::cell::Cell;

/// Identity a client greets with.
#[derive(Clone, Copy, Debug)]
pub struct ClientIdentity {
    pub fsid: u64,
    pub fmt_vers: u64,
    pub rid: u64,
    /// `GREETING_FLAG_QUORUM` when the mount is a quorum member.
    pub flags: u64,
}

/// A connected, greeted client.
pub struct Client {
    ep: Rc<Endpoint>,
    id: ClientIdentity,
    server_term: u64,
    sync_requested: Rc<Cell<bool>>,
}

impl Client {
    /// Connect to the server at `addr` and greet it.
    pub async fn connect(
        transport: &dyn Transport,
        addr: &str,
        id: ClientIdentity,
        handle: &Handle,
    ) -> FsResult<Rc<Client>> {
        if id.rid == 0 || id.rid == u64::MAX {
            return Err(Errno::EINVAL);
        }
        let conn = transport.connect(addr).await.map_err(Errno::from)?;
        let ep = Endpoint::start(conn, Role::Client, handle)?;
        let g = Greeting {
            fsid: id.fsid,
            fmt_vers: id.fmt_vers,
            server_term: 0,
            rid: id.rid,
            flags: id.flags & !GREETING_FLAG_FAREWELL,
        };
        let reply = match ep.call(cmd::GREETING, &g.encode()).await {
            Ok(r) => r,
            Err(e) => {
                ep.close();
                return Err(e);
            }
        };
        let r = Greeting::decode(&reply)?;
        if r.fsid != id.fsid || r.fmt_vers != id.fmt_vers || r.rid != id.rid || r.server_term == 0 {
            ep.close();
            return Err(Errno::EPROTO);
        }
        let client = Rc::new(Client {
            ep: ep.clone(),
            id,
            server_term: r.server_term,
            sync_requested: Rc::new(Cell::new(false)),
        });
        let sync = client.sync_requested.clone();
        handle
            .spawn(async move {
                // requests the server sends us
                while let Some(f) = ep.next_request().await {
                    let r = match Request::decode(f.header.cmd, &f.payload) {
                        Ok(Request::SyncLogTrees) => {
                            sync.set(true);
                            counter!("client.sync_requests").inc();
                            Ok(alloc::vec::Vec::new())
                        }
                        Ok(_) | Err(_) => Err(Errno::EINVAL),
                    };
                    let _ = ep.reply(&f.header, r).await;
                }
            })
            .map_err(|_| Errno::ENOMEM)?;
        Ok(client)
    }

    pub fn rid(&self) -> u64 {
        self.id.rid
    }

    pub fn server_term(&self) -> u64 {
        self.server_term
    }

    /// Did the server ask for a commit since the last call?
    pub fn take_sync_request(&self) -> bool {
        self.sync_requested.replace(false)
    }

    /// Ask the mount for a commit (as a server's SYNC_LOG_TREES would).
    pub fn request_sync(&self) {
        self.sync_requested.set(true);
    }

    /// Has the server asked for a commit that has not happened yet?
    pub fn sync_pending(&self) -> bool {
        self.sync_requested.get()
    }

    pub fn is_connected(&self) -> bool {
        !self.ep.is_closed()
    }

    /// Drop the connection (pending calls fail).
    pub fn disconnect(&self) {
        self.ep.close();
    }

    async fn call(&self, req: Request) -> FsResult<alloc::vec::Vec<u8>> {
        counter!("client.requests").inc();
        self.ep.call(req.cmd(), &req.encode_payload()).await
    }

    /// Up to `count` fresh inode numbers (`nr == 0`: exhausted).
    pub async fn alloc_inodes(&self, count: u64) -> FsResult<InodeAlloc> {
        InodeAlloc::decode(&self.call(Request::AllocInodes(count)).await?)
    }

    /// Open the next transaction: the log tree with refilled allocators
    /// and a fresh `get_trans_seq`.
    pub async fn get_log_trees(&self) -> FsResult<LogTrees> {
        let lt = decode_log_trees(&self.call(Request::GetLogTrees).await?)?;
        if lt.rid != self.id.rid || lt.is_finalized() || !lt.is_open() {
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
                if req.rid != self.id.rid {
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

    pub async fn statfs(&self) -> FsResult<NetStatfs> {
        NetStatfs::decode(&self.call(Request::Statfs).await?)
    }

    /// Leave: the server reclaims this mount's resources and forgets it.
    pub async fn farewell(&self) -> FsResult<()> {
        self.call(Request::Farewell).await.map(|_| ())
    }
}
