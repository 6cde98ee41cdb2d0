//! The FUSE operations: one handler per opcode, mapping node ids (inode
//! numbers) and file handles onto the filesystem's POSIX calls
//! (`posix::mount::Mount`), the way the 9P server's `ops.rs` does.
//!
//! Called by `conn.rs`, one task per request; each handler returns the
//! whole reply frame. Permission checks happen in `Mount` with the `Cred`
//! of the request's uid/gid (root squashed by `p9::access::Identity`);
//! `READ`/`WRITE` check the handle's open mode (access was checked at
//! open). Handlers never hold a `RefCell` borrow across an await. Offline
//! (archival) data makes reads and size changes wait inside `Mount`, as
//! for 9P; an `INTERRUPT` ends a waiting `SETLKW` with `EINTR`.

use alloc::rc::Rc;
use alloc::vec::Vec;

use scoutvm_fs::counter;
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::archive_ctl;
use scoutvm_fs::posix::types::*;

use super::conn::{Conn, OpenHandle, Proto, Req};
use super::server::XATTR_VALUE_MAX;
use super::wire::{self, fattr, init_flags, InHeader, LkIn, Request, SetattrIn, Validity};
use crate::p9::access::Identity;
use crate::p9::locks::{LockError, LockKind, LockOwner};

/// Open flags the filesystem is told about; the rest are the client's.
const OPEN_FLAGS_FS: u32 = O_ACCMODE | O_TRUNC;
/// `OFFSET_MAX`: a lock to the end of the file.
const OFFSET_MAX: u64 = i64::MAX as u64;
/// Bytes `COPY_FILE_RANGE` moves per read/write step.
const COPY_CHUNK: usize = 64 * 1024;
/// `FOPEN_KEEP_CACHE` etc. are not set: the volume is shared with other
/// clients and cluster nodes, so the client's page cache starts cold at
/// every open.
const OPEN_OUT_FLAGS: u32 = 0;

type OpResult = Result<Vec<u8>, Errno>;

/// Run one request: its whole reply frame (an error reply on failure,
/// `EINTR` when interrupted).
pub(crate) async fn handle(conn: &Rc<Conn>, req: &Req, h: &InHeader, msg: Request<'_>) -> Vec<u8> {
    let cx = Cx { conn, req, h };
    match cx.run(msg).await {
        Ok(reply) => reply,
        Err(e) => {
            match crate::p9::error_kind(e) {
                crate::p9::ErrorKind::Enoent => counter!("fuse.enoent").inc(),
                crate::p9::ErrorKind::Client => counter!("fuse.client_errors").inc(),
                crate::p9::ErrorKind::Server => counter!("fuse.server_errors").inc(),
            }
            wire::error_reply(h.unique, e.0)
        }
    }
}

/// Negotiate `INIT`: protocol 7.x, the lower minor, `max_write` and
/// `max_readahead` within both sides' bounds.
pub(crate) fn init(conn: &Conn, unique: u64, init: (u32, u32, u32, u32)) -> Vec<u8> {
    let (major, minor, readahead, flags) = init;
    let cfg = &conn.server.config;
    let mut out = Vec::new();
    wire::start_reply(&mut out, unique);
    if major > wire::KERNEL_VERSION {
        // The client retries with our major.
        wire::put_u32(&mut out, wire::KERNEL_VERSION);
        wire::put_u32(&mut out, wire::KERNEL_MINOR_VERSION);
        out.resize(wire::OUT_HEADER_LEN + wire::INIT_OUT_COMPAT_LEN, 0);
        wire::finish_reply(&mut out);
        return out;
    }
    if major < wire::KERNEL_VERSION || minor < wire::MINOR_MIN {
        counter!("fuse.init_refused").inc();
        return wire::error_reply(unique, Errno::EPROTO.0);
    }
    let minor = minor.min(wire::KERNEL_MINOR_VERSION);
    let want = init_flags::ASYNC_READ
        | init_flags::POSIX_LOCKS
        | init_flags::ATOMIC_O_TRUNC
        | init_flags::BIG_WRITES
        | init_flags::DO_READDIRPLUS
        | init_flags::READDIRPLUS_AUTO
        | init_flags::PARALLEL_DIROPS
        | init_flags::MAX_PAGES
        | init_flags::CACHE_SYMLINKS;
    let granted = flags & want;
    let mut max_write = cfg.max_write;
    if granted & init_flags::MAX_PAGES == 0 {
        // Without max_pages the kernel sends at most 32 pages.
        max_write = max_write.min(128 * 1024);
    }
    let max_pages = max_write.div_ceil(4096).min(u16::MAX as u32) as u16;
    conn.proto.set(Some(Proto { minor, max_write }));
    wire::put_u32(&mut out, wire::KERNEL_VERSION);
    wire::put_u32(&mut out, minor);
    wire::put_u32(&mut out, readahead.min(cfg.max_readahead));
    wire::put_u32(&mut out, granted);
    wire::put_u16(&mut out, cfg.requests_max.min(u16::MAX as usize) as u16); // max_background
    wire::put_u16(
        &mut out,
        (cfg.requests_max * 3 / 4).min(u16::MAX as usize) as u16,
    ); // congestion_threshold
    wire::put_u32(&mut out, max_write);
    wire::put_u32(&mut out, 1); // time_gran: nanoseconds
    wire::put_u16(&mut out, max_pages);
    wire::put_u16(&mut out, 0); // map_alignment
    let len = if minor >= 23 {
        wire::INIT_OUT_LEN
    } else {
        wire::INIT_OUT_COMPAT_LEN
    };
    out.resize(wire::OUT_HEADER_LEN + len, 0);
    wire::finish_reply(&mut out);
    counter!("fuse.inits").inc();
    log::info!(
        "fuse: connection {} from {}: protocol 7.{minor}, max_write {max_write}",
        conn.id,
        conn.peer
    );
    out
}

fn ts(sec: u64, nsec: u32) -> Result<Timespec, Errno> {
    if nsec >= 1_000_000_000 {
        return Err(Errno::EINVAL);
    }
    Ok(Timespec { sec, nsec })
}

/// The `SetAttr` of a `SETATTR`.
pub fn setattr_of(s: &SetattrIn) -> Result<SetAttr, Errno> {
    let mut sa = SetAttr::default();
    if s.valid & fattr::MODE != 0 {
        sa.mode = Some(s.mode & 0o7777);
    }
    if s.valid & fattr::UID != 0 {
        sa.uid = Some(s.uid);
    }
    if s.valid & fattr::GID != 0 {
        sa.gid = Some(s.gid);
    }
    if s.valid & fattr::SIZE != 0 {
        sa.size = Some(s.size);
    }
    if s.valid & fattr::ATIME_NOW != 0 {
        sa.atime = Some(SetTime::Now);
    } else if s.valid & fattr::ATIME != 0 {
        sa.atime = Some(SetTime::At(ts(s.atime, s.atimensec)?));
    }
    if s.valid & fattr::MTIME_NOW != 0 {
        sa.mtime = Some(SetTime::Now);
    } else if s.valid & fattr::MTIME != 0 {
        sa.mtime = Some(SetTime::At(ts(s.mtime, s.mtimensec)?));
    }
    // FATTR_CTIME is "now", which every setattr does anyway.
    Ok(sa)
}

/// The context of one request.
struct Cx<'a> {
    conn: &'a Rc<Conn>,
    req: &'a Req,
    h: &'a InHeader,
}

impl Cx<'_> {
    fn mount(&self) -> &scoutvm_fs::posix::mount::Mount {
        &self.conn.server.mount
    }

    fn validity(&self) -> Validity {
        let c = &self.conn.server.config;
        Validity {
            entry_ns: c.entry_valid_ns,
            attr_ns: c.attr_valid_ns,
        }
    }

    fn max_io(&self) -> usize {
        self.conn.proto.get().map_or(4096, |p| p.max_write) as usize
    }

    /// Who this request runs as: its uid (root squashed) with the gid it
    /// carries learned as one of the user's groups.
    fn cred(&self) -> Result<Cred, Errno> {
        let uid = self.h.uid;
        let ident = {
            let mut users = self.conn.users.borrow_mut();
            match users.get(&uid) {
                Some(i) => i.clone(),
                None => {
                    let i = Rc::new(Identity::new(b"", uid, self.conn.server.config.root_squash));
                    if users.len() < self.conn.server.config.users_max {
                        users.insert(uid, i.clone());
                    } else {
                        counter!("fuse.user_limit").inc();
                    }
                    i
                }
            }
        };
        Ok(ident.cred_creating(self.h.gid))
    }

    /// The inode a node id names.
    fn node(&self, nodeid: u64) -> Result<Ino, Errno> {
        if nodeid == 0 {
            return Err(Errno::EINVAL);
        }
        if self.conn.server.config.strict_nodeids
            && nodeid != wire::ROOT_ID
            && !self.conn.nodes.borrow().contains_key(&nodeid)
        {
            return Err(Errno::ESTALE);
        }
        Ok(nodeid)
    }

    fn ino(&self) -> Result<Ino, Errno> {
        self.node(self.h.nodeid)
    }

    /// The open handle `fh` of this request's node.
    fn handle(&self, fh: u64, dir: bool) -> Result<Rc<OpenHandle>, Errno> {
        let h = self
            .conn
            .handles
            .borrow()
            .get(&fh)
            .cloned()
            .ok_or(Errno::EBADF)?;
        if h.dir != dir {
            return Err(if dir { Errno::ENOTDIR } else { Errno::EISDIR });
        }
        if h.ino != self.h.nodeid {
            return Err(Errno::EBADF);
        }
        Ok(h)
    }

    fn add_handle(&self, ino: Ino, flags: u32, dir: bool) -> Result<u64, Errno> {
        let mut handles = self.conn.handles.borrow_mut();
        if handles.len() >= self.conn.server.config.handles_max {
            counter!("fuse.handle_limit").inc();
            return Err(Errno::EMFILE);
        }
        // Handles stay below 2^32 (the lock table keys them as u32).
        let mut fh = self.conn.next_fh.get();
        while handles.contains_key(&fh) || fh == 0 || fh > u32::MAX as u64 {
            fh = if fh >= u32::MAX as u64 { 1 } else { fh + 1 };
        }
        self.conn.next_fh.set(fh + 1);
        handles.insert(fh, Rc::new(OpenHandle { ino, flags, dir }));
        Ok(fh)
    }

    fn reply(&self, body: impl FnOnce(&mut Vec<u8>)) -> OpResult {
        let mut out = Vec::new();
        wire::start_reply(&mut out, self.h.unique);
        body(&mut out);
        wire::finish_reply(&mut out);
        Ok(out)
    }

    fn empty(&self) -> OpResult {
        self.reply(|_| {})
    }

    /// A reply of raw bytes bounded by the client's `size`.
    fn bytes_reply(&self, size: u32, data: &[u8]) -> OpResult {
        if size == 0 {
            return self.reply(|o| {
                wire::put_u32(o, data.len() as u32);
                wire::put_u32(o, 0);
            });
        }
        if data.len() > size as usize {
            return Err(Errno::ERANGE);
        }
        self.reply(|o| o.extend_from_slice(data))
    }

    fn entry(&self, a: &Attr) -> OpResult {
        self.conn.remember(a.ino);
        let v = self.validity();
        self.reply(|o| wire::put_entry(o, a, v))
    }

    fn check_name(name: &[u8]) -> Result<(), Errno> {
        if name.is_empty() || name.contains(&b'/') {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    async fn run(&self, msg: Request<'_>) -> OpResult {
        match msg {
            Request::Init { .. }
            | Request::Forget { .. }
            | Request::BatchForget { .. }
            | Request::Interrupt { .. }
            | Request::NotifyReply => {
                unreachable!("handled by the connection")
            }
            Request::Destroy => {
                self.conn.release_all().await;
                self.empty()
            }
            Request::Unknown(_) => {
                counter!("fuse.unknown_opcodes").inc();
                Err(Errno::ENOSYS)
            }
            Request::Lookup { name } => {
                let dir = self.ino()?;
                let a = self.mount().lookup(&self.cred()?, dir, name).await?;
                self.entry(&a)
            }
            Request::Getattr { .. } => {
                let a = self.mount().getattr(self.ino()?).await?;
                let v = self.validity();
                self.reply(|o| wire::put_attr_out(o, &a, v))
            }
            Request::Setattr(s) => self.setattr(&s).await,
            Request::Readlink => {
                let t = self.mount().readlink(self.ino()?).await?;
                self.reply(|o| o.extend_from_slice(&t))
            }
            Request::Symlink { name, target } => {
                let dir = self.ino()?;
                let a = self
                    .mount()
                    .symlink(&self.cred()?, dir, name, target)
                    .await?;
                self.entry(&a)
            }
            Request::Mknod {
                mode, rdev, name, ..
            } => {
                let dir = self.ino()?;
                let a = self
                    .mount()
                    .mknod(&self.cred()?, dir, name, mode & (S_IFMT | 0o7777), rdev)
                    .await?;
                self.entry(&a)
            }
            Request::Mkdir { mode, name, .. } => {
                let dir = self.ino()?;
                let a = self
                    .mount()
                    .mkdir(&self.cred()?, dir, name, mode & 0o7777)
                    .await?;
                self.entry(&a)
            }
            Request::Unlink { name } => {
                let dir = self.ino()?;
                self.mount().unlink(&self.cred()?, dir, name).await?;
                self.empty()
            }
            Request::Rmdir { name } => {
                let dir = self.ino()?;
                self.mount().rmdir(&self.cred()?, dir, name).await?;
                self.empty()
            }
            Request::Rename {
                newdir,
                flags,
                old,
                new,
            } => {
                let dir = self.ino()?;
                let newdir = self.node(newdir)?;
                self.mount()
                    .rename(&self.cred()?, dir, old, newdir, new, flags)
                    .await?;
                self.empty()
            }
            Request::Link { oldnodeid, name } => {
                let dir = self.ino()?;
                let ino = self.node(oldnodeid)?;
                let a = self.mount().link(&self.cred()?, ino, dir, name).await?;
                self.entry(&a)
            }
            Request::Open { flags } => self.open(flags, false).await,
            Request::Opendir { flags } => self.open(flags, true).await,
            Request::Read { fh, offset, size } => self.read(fh, offset, size).await,
            Request::Readdir { fh, offset, size } => self.readdir(fh, offset, size, false).await,
            Request::Readdirplus { fh, offset, size } => self.readdir(fh, offset, size, true).await,
            Request::Write {
                fh, offset, data, ..
            } => self.write(fh, offset, data).await,
            Request::Release {
                fh,
                release_flags,
                lock_owner,
                ..
            } => {
                self.handle(fh, false)?;
                if release_flags & 1 != 0 {
                    // FUSE_RELEASE_FLUSH: drop the owner's locks as a
                    // flush would.
                    self.unlock_owner(fh, lock_owner);
                }
                self.release(fh).await
            }
            Request::Releasedir { fh } => {
                self.handle(fh, true)?;
                self.release(fh).await
            }
            Request::Flush { fh, lock_owner } => {
                self.handle(fh, false)?;
                // A close drops the closing process's POSIX locks on the
                // file (the kernel also sends an unlock; this covers a
                // client that does not).
                self.unlock_owner(fh, lock_owner);
                self.empty()
            }
            Request::Fsync { fh, .. } => {
                let h = self.handle(fh, false)?;
                self.mount().fsync(h.ino).await?;
                self.empty()
            }
            Request::Fsyncdir { fh, .. } => {
                let h = self.handle(fh, true)?;
                self.mount().fsync(h.ino).await?;
                self.empty()
            }
            Request::Statfs => {
                self.ino()?;
                let s = self.mount().statfs().await?;
                self.reply(|o| {
                    wire::put_u64(o, s.blocks);
                    wire::put_u64(o, s.bfree);
                    wire::put_u64(o, s.bavail);
                    wire::put_u64(o, s.files);
                    wire::put_u64(o, s.ffree);
                    wire::put_u32(o, s.bsize);
                    wire::put_u32(o, s.namelen);
                    wire::put_u32(o, s.bsize); // frsize
                    o.resize(wire::OUT_HEADER_LEN + wire::STATFS_OUT_LEN, 0);
                })
            }
            Request::Setxattr { name, value, flags } => {
                let ino = self.ino()?;
                let cred = self.cred()?;
                if archive_ctl::is_ctl(name) {
                    archive_ctl::ctl_set(self.mount(), &cred, ino, name, value).await?;
                } else {
                    self.mount()
                        .setxattr(&cred, ino, name, value, flags)
                        .await?;
                }
                self.empty()
            }
            Request::Getxattr { name, size } => {
                let ino = self.ino()?;
                let cred = self.cred()?;
                let v = if archive_ctl::is_ctl(name) {
                    archive_ctl::ctl_get(self.mount(), &cred, ino, name).await?
                } else {
                    self.mount().getxattr(&cred, ino, name).await?
                };
                self.bytes_reply(size, &v)
            }
            Request::Listxattr { size } => {
                let ino = self.ino()?;
                let names = self.mount().listxattr(&self.cred()?, ino).await?;
                let mut list = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
                for n in names {
                    list.extend_from_slice(&n);
                    list.push(0);
                }
                if list.len() > XATTR_VALUE_MAX {
                    return Err(Errno::E2BIG);
                }
                self.bytes_reply(size, &list)
            }
            Request::Removexattr { name } => {
                let ino = self.ino()?;
                self.mount().removexattr(&self.cred()?, ino, name).await?;
                self.empty()
            }
            Request::Getlk(lk) => self.getlk(&lk),
            Request::Setlk(lk) => self.setlk(&lk, false).await,
            Request::Setlkw(lk) => self.setlk(&lk, true).await,
            Request::Access { mask } => {
                let ino = self.ino()?;
                self.mount()
                    .access(&self.cred()?, ino, mask & (MAY_READ | MAY_WRITE | MAY_EXEC))
                    .await?;
                self.empty()
            }
            Request::Create {
                flags, mode, name, ..
            } => self.create(flags, mode, name).await,
            Request::Fallocate {
                fh,
                offset,
                length,
                mode,
            } => {
                let h = self.handle(fh, false)?;
                if h.flags & O_ACCMODE == O_RDONLY {
                    return Err(Errno::EBADF);
                }
                self.mount()
                    .fallocate(&self.cred()?, h.ino, mode, offset, length)
                    .await?;
                self.empty()
            }
            Request::Lseek { fh, offset, whence } => {
                let h = self.handle(fh, false)?;
                let to = self.seek(h.ino, offset, whence).await?;
                self.reply(|o| wire::put_u64(o, to))
            }
            Request::CopyFileRange {
                fh_in,
                off_in,
                nodeid_out,
                fh_out,
                off_out,
                len,
                flags,
            } => {
                self.copy_range(fh_in, off_in, nodeid_out, fh_out, off_out, len, flags)
                    .await
            }
        }
    }

    async fn setattr(&self, s: &SetattrIn) -> OpResult {
        let ino = self.ino()?;
        let sa = setattr_of(s)?;
        let cred = self.cred()?;
        // An ftruncate comes with the handle of a file open for writing,
        // which was checked when it was opened.
        let writable_fh = s.valid & fattr::FH != 0
            && self
                .conn
                .handles
                .borrow()
                .get(&s.fh)
                .is_some_and(|h| h.ino == ino && !h.dir && h.flags & O_ACCMODE != O_RDONLY);
        let a = if sa.size.is_some() && writable_fh {
            self.mount().setattr_open_for_write(&cred, ino, &sa).await?
        } else {
            self.mount().setattr(&cred, ino, &sa).await?
        };
        let v = self.validity();
        self.reply(|o| wire::put_attr_out(o, &a, v))
    }

    async fn open(&self, flags: u32, dir: bool) -> OpResult {
        let ino = self.ino()?;
        let cred = self.cred()?;
        let fs_flags = if dir {
            O_RDONLY | O_DIRECTORY
        } else {
            flags & OPEN_FLAGS_FS
        };
        let a = self.mount().open(&cred, ino, fs_flags).await?;
        if !dir && a.is_dir() {
            self.mount().release(ino).await?;
            return Err(Errno::EISDIR);
        }
        let fh = match self.add_handle(ino, flags, dir) {
            Ok(fh) => fh,
            Err(e) => {
                self.mount().release(ino).await?;
                return Err(e);
            }
        };
        self.reply(|o| wire::put_open_out(o, fh, OPEN_OUT_FLAGS))
    }

    async fn release(&self, fh: u64) -> OpResult {
        let h = self
            .conn
            .handles
            .borrow_mut()
            .remove(&fh)
            .ok_or(Errno::EBADF)?;
        if self
            .conn
            .server
            .locks
            .borrow_mut()
            .release_fid(self.conn.id, fh as u32)
            > 0
        {
            self.conn.server.locks_changed.notify();
        }
        self.mount().release(h.ino).await?;
        self.empty()
    }

    async fn create(&self, flags: u32, mode: u32, name: &[u8]) -> OpResult {
        let dir = self.ino()?;
        Self::check_name(name)?;
        let cred = self.cred()?;
        let created = self.mount().create(&cred, dir, name, mode & 0o7777).await;
        let a = match created {
            // The creator may open what it made whatever the new mode
            // says (open(O_CREAT|O_WRONLY, 0444) works).
            Ok(a) => {
                self.mount()
                    .open(&Cred::root(), a.ino, flags & O_ACCMODE)
                    .await?
            }
            // O_CREAT without O_EXCL on a name that exists opens it.
            Err(Errno::EEXIST) if flags & O_EXCL == 0 => {
                let a = self.mount().lookup(&cred, dir, name).await?;
                if a.is_dir() {
                    return Err(Errno::EISDIR);
                }
                self.mount()
                    .open(&cred, a.ino, flags & OPEN_FLAGS_FS)
                    .await?
            }
            Err(e) => return Err(e),
        };
        let fh = match self.add_handle(a.ino, flags, false) {
            Ok(fh) => fh,
            Err(e) => {
                self.mount().release(a.ino).await?;
                return Err(e);
            }
        };
        self.conn.remember(a.ino);
        let v = self.validity();
        self.reply(|o| {
            wire::put_entry(o, &a, v);
            wire::put_open_out(o, fh, OPEN_OUT_FLAGS);
        })
    }

    /// `READDIR` and `READDIRPLUS`: entries from position `offset` (0 is
    /// ".", each entry's `off` is where the next one starts) as many as
    /// fit `size`. A plus entry counts a lookup of its node (not for "."
    /// and "..", which the kernel does not keep).
    async fn readdir(&self, fh: u64, offset: u64, size: u32, plus: bool) -> OpResult {
        let h = self.handle(fh, true)?;
        let room = (size as usize).min(self.max_io());
        let cred = self.cred()?;
        let v = self.validity();
        let mut out = Vec::new();
        wire::start_reply(&mut out, self.h.unique);
        let base = out.len();
        let mut pos = offset;
        let mut first_too_big = false;
        'fill: loop {
            if self.req.is_cancelled() {
                break;
            }
            let used = out.len() - base;
            let per = if plus { wire::ENTRY_OUT_LEN + 32 } else { 32 };
            let want = ((room - used) / per).clamp(1, 4096);
            let batch = match self.mount().readdir(&cred, h.ino, pos, want).await {
                Ok(b) => b,
                // A removed directory that is still open reads as empty.
                Err(Errno::ENOENT) if self.mount().getattr(h.ino).await?.nlink == 0 => Vec::new(),
                Err(e) => return Err(e),
            };
            if batch.is_empty() {
                break;
            }
            for e in batch {
                let mut len = wire::dirent_size(e.name.len());
                if plus {
                    len += wire::ENTRY_OUT_LEN;
                }
                if out.len() - base + len > room {
                    first_too_big = out.len() == base;
                    break 'fill;
                }
                if plus {
                    let dots = e.name == b"." || e.name == b"..";
                    let a = match self.mount().getattr(e.ino).await {
                        Ok(a) => a,
                        // Removed since it was listed: skip it.
                        Err(Errno::ENOENT) | Err(Errno::ESTALE) => {
                            pos = e.next_pos;
                            continue;
                        }
                        Err(err) => return Err(err),
                    };
                    if !dots {
                        self.conn.remember(a.ino);
                    }
                    wire::put_entry(&mut out, &a, v);
                }
                wire::put_dirent(&mut out, e.ino, e.next_pos, e.dtype, &e.name);
                pos = e.next_pos;
            }
        }
        if first_too_big {
            // Not even one entry fits: an empty reply reads as the end.
            return Err(Errno::EINVAL);
        }
        wire::finish_reply(&mut out);
        Ok(out)
    }

    async fn read(&self, fh: u64, offset: u64, size: u32) -> OpResult {
        let h = self.handle(fh, false)?;
        if h.flags & O_ACCMODE == O_WRONLY {
            return Err(Errno::EBADF);
        }
        let max = (size as usize).min(self.max_io());
        let mut out = Vec::with_capacity(wire::OUT_HEADER_LEN + max);
        wire::start_reply(&mut out, self.h.unique);
        let hdr = out.len();
        out.resize(hdr + max, 0);
        let n = self
            .mount()
            .read_into(h.ino, offset, &mut out[hdr..])
            .await?;
        assert!(n <= max, "read_into returned more than asked");
        out.truncate(hdr + n);
        wire::finish_reply(&mut out);
        counter!("fuse.read_bytes").add(n as u64);
        Ok(out)
    }

    async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> OpResult {
        let h = self.handle(fh, false)?;
        if h.flags & O_ACCMODE == O_RDONLY {
            return Err(Errno::EBADF);
        }
        if data.len() > self.max_io() {
            return Err(Errno::EINVAL);
        }
        let n = if h.flags & O_APPEND != 0 {
            self.append(h.ino, data).await?
        } else {
            self.mount().write(h.ino, offset, data).await?
        };
        counter!("fuse.write_bytes").add(n as u64);
        self.reply(|o| {
            wire::put_u32(o, n as u32);
            wire::put_u32(o, 0);
        })
    }

    /// An `O_APPEND` write: at the end of the file as it is now, with no
    /// other append in between.
    async fn append(&self, ino: Ino, data: &[u8]) -> Result<usize, Errno> {
        let server = &self.conn.server;
        loop {
            let wait = server.append_done.notified();
            if !server.append_busy.get() {
                break;
            }
            self.req.cancellable(wait).await.ok_or(Errno::EINTR)?;
        }
        server.append_busy.set(true);
        let r = async {
            let size = self.mount().getattr(ino).await?.size;
            self.mount().write(ino, size, data).await
        }
        .await;
        server.append_busy.set(false);
        server.append_done.notify();
        r
    }

    /// `SEEK_DATA`/`SEEK_HOLE` from the file's block map: every mapped
    /// extent (written, preallocated or offline) is data, the rest up to
    /// the size a hole, and the size itself the last hole.
    async fn seek(&self, ino: Ino, offset: u64, whence: u32) -> Result<u64, Errno> {
        const BS: u64 = 4096;
        const BATCH: usize = 256;
        if whence != wire::SEEK_DATA && whence != wire::SEEK_HOLE {
            return Err(Errno::EINVAL);
        }
        let size = self.mount().getattr(ino).await?.size;
        if offset >= size {
            return Err(Errno::ENXIO);
        }
        let mut pos = offset;
        loop {
            if self.req.is_cancelled() {
                return Err(Errno::EINTR);
            }
            let exts = self.mount().extents(ino, pos / BS, BATCH).await?;
            for e in &exts {
                let (start, end) = (
                    e.start.saturating_mul(BS),
                    e.last().saturating_add(1).saturating_mul(BS),
                );
                if end <= pos {
                    continue;
                }
                if start > pos {
                    // A hole at pos, data from start.
                    return Ok(if whence == wire::SEEK_HOLE {
                        pos
                    } else if start < size {
                        start
                    } else {
                        return Err(Errno::ENXIO);
                    });
                }
                // pos is inside this extent.
                if whence == wire::SEEK_DATA {
                    return Ok(pos);
                }
                pos = end;
                if pos >= size {
                    return Ok(size);
                }
            }
            if exts.len() < BATCH {
                // No extent past pos: a hole to the end.
                return if whence == wire::SEEK_HOLE {
                    Ok(pos.min(size))
                } else {
                    Err(Errno::ENXIO)
                };
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_range(
        &self,
        fh_in: u64,
        off_in: u64,
        nodeid_out: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u64,
    ) -> OpResult {
        if flags != 0 {
            return Err(Errno::EINVAL);
        }
        let src = self.handle(fh_in, false)?;
        let dst = self
            .conn
            .handles
            .borrow()
            .get(&fh_out)
            .cloned()
            .ok_or(Errno::EBADF)?;
        if dst.dir || dst.ino != nodeid_out {
            return Err(Errno::EBADF);
        }
        if src.flags & O_ACCMODE == O_WRONLY
            || dst.flags & O_ACCMODE == O_RDONLY
            || dst.flags & O_APPEND != 0
        {
            return Err(Errno::EBADF);
        }
        off_in.checked_add(len).ok_or(Errno::EOVERFLOW)?;
        off_out.checked_add(len).ok_or(Errno::EOVERFLOW)?;
        // One reply counts at most u32 bytes; the kernel loops for more.
        let total = len.min(self.max_io() as u64) as usize;
        let mut done = 0usize;
        let mut buf = alloc::vec![0u8; COPY_CHUNK.min(total.max(1))];
        while done < total {
            if self.req.is_cancelled() {
                break;
            }
            let want = (total - done).min(buf.len());
            let n = self
                .mount()
                .read_into(src.ino, off_in + done as u64, &mut buf[..want])
                .await?;
            if n == 0 {
                break;
            }
            let w = self
                .mount()
                .write(dst.ino, off_out + done as u64, &buf[..n])
                .await?;
            done += w;
            if w < n {
                break;
            }
        }
        self.reply(|o| {
            wire::put_u32(o, done as u32);
            wire::put_u32(o, 0);
        })
    }

    // -- locks ---------------------------------------------------------------

    fn owner(&self, lock_owner: u64) -> LockOwner {
        LockOwner {
            conn: self.conn.id,
            proc_id: 0,
            client_id: lock_owner.to_le_bytes().to_vec(),
        }
    }

    fn unlock_owner(&self, fh: u64, lock_owner: u64) {
        let owner = self.owner(lock_owner);
        let ino = self.h.nodeid;
        let r = self
            .conn
            .server
            .locks
            .borrow_mut()
            .set(ino, &owner, fh as u32, None, 0, u64::MAX);
        if r.is_ok() {
            self.conn.server.locks_changed.notify();
        }
    }

    /// The range of a `fuse_file_lock`: `OFFSET_MAX` (or more) is "to the
    /// end".
    fn lock_range(lk: &LkIn) -> Result<(u64, u64), Errno> {
        let end = if lk.end >= OFFSET_MAX {
            u64::MAX
        } else {
            lk.end
        };
        if lk.start > end || lk.start > OFFSET_MAX {
            return Err(Errno::EINVAL);
        }
        Ok((lk.start, end))
    }

    fn lock_kind(ty: u32) -> Result<Option<LockKind>, Errno> {
        match ty {
            wire::F_RDLCK => Ok(Some(LockKind::Read)),
            wire::F_WRLCK => Ok(Some(LockKind::Write)),
            wire::F_UNLCK => Ok(None),
            _ => Err(Errno::EINVAL),
        }
    }

    fn getlk(&self, lk: &LkIn) -> OpResult {
        let h = self.handle(lk.fh, false)?;
        if lk.lk_flags & wire::LK_FLOCK != 0 {
            return Err(Errno::ENOSYS);
        }
        let (start, end) = Self::lock_range(lk)?;
        // F_GETLK with F_UNLCK asks about any lock.
        let kind = Self::lock_kind(lk.ty)?.unwrap_or(LockKind::Write);
        let owner = self.owner(lk.owner);
        let locks = self.conn.server.locks.borrow();
        let found = locks
            .conflict(h.ino, &owner, kind, start, end)
            .map(|l| (l.kind, l.start, l.end, l.owner.proc_id));
        drop(locks);
        let (ty, s, e, pid) = match found {
            Some((k, s, e, pid)) => {
                let ty = match k {
                    LockKind::Read => wire::F_RDLCK,
                    LockKind::Write => wire::F_WRLCK,
                };
                (ty, s, e.min(OFFSET_MAX), pid)
            }
            None => (wire::F_UNLCK, lk.start, lk.end, 0),
        };
        self.reply(|o| {
            wire::put_u64(o, s);
            wire::put_u64(o, e);
            wire::put_u32(o, ty);
            wire::put_u32(o, pid);
        })
    }

    async fn setlk(&self, lk: &LkIn, wait: bool) -> OpResult {
        let h = self.handle(lk.fh, false)?;
        if lk.lk_flags & wire::LK_FLOCK != 0 {
            return Err(Errno::ENOSYS);
        }
        let (start, end) = Self::lock_range(lk)?;
        let kind = Self::lock_kind(lk.ty)?;
        let owner = self.owner(lk.owner);
        let server = &self.conn.server;
        loop {
            let changed = server.locks_changed.notified();
            let r = server
                .locks
                .borrow_mut()
                .set(h.ino, &owner, lk.fh as u32, kind, start, end);
            match r {
                Ok(()) => {
                    server.locks_changed.notify();
                    return self.empty();
                }
                Err(LockError::NoLocks) => {
                    counter!("fuse.lock_limit").inc();
                    return Err(Errno::ENOLCK);
                }
                Err(LockError::Conflict(_)) if !wait => return Err(Errno::EAGAIN),
                Err(LockError::Conflict(_)) => {
                    counter!("fuse.lock_waits").inc();
                    if !self.conn.lock_wait(true) {
                        counter!("fuse.lock_waiter_limit").inc();
                        return Err(Errno::ENOLCK);
                    }
                    let woke = self.req.cancellable(changed).await;
                    self.conn.lock_wait(false);
                    woke.ok_or(Errno::EINTR)?;
                }
            }
        }
    }
}
