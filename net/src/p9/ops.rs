//! The 9P2000.L operations: one handler per request type, mapping fids
//! onto the filesystem's POSIX calls (`posix::mount::Mount`).
//!
//! Called by `conn.rs`, one request task at a time per request; each
//! handler encodes its success reply into `out` or returns an errno (which
//! becomes `Rlerror`), or gives up silently when a `Tflush` cancelled it
//! while it waited. Handlers never hold a `RefCell` borrow across an
//! await. Permission checks happen in `Mount` with the `Cred` of the fid's
//! identity; `read`/`write` check the fid's open mode (the filesystem
//! checked access at open). Qids: `path` is the inode number (never
//! reused), `version` the inode's change counter.

use alloc::rc::Rc;
use alloc::vec::Vec;

use scoutvm_fs::counter;
use scoutvm_fs::errno::Errno;
use scoutvm_fs::format::ROOT_INO;
use scoutvm_fs::posix::archive_ctl;
use scoutvm_fs::posix::types::*;

use super::access::{uid_of, Identity};
use super::conn::{encode_into, Conn, Request};
use super::fid::{Fid, FidError, FidState, XattrWrite};
use super::locks::{range_end, LockError, LockKind, LockOwner};
use super::server::TRACE_REFUSED;
use super::wire::{
    self, Dirent, GetattrMask, LockStatus, LockType, Qid, QidType, Rmsg, SetattrValid, Tmsg,
    AT_REMOVEDIR, HEADER_LEN, IOHDRSZ, LOCK_FLAGS_BLOCK, NOFID, V9FS_MAGIC,
};

/// Longest `client_id` a lock owner may carry.
pub const CLIENT_ID_MAX: usize = 256;
/// Largest xattr value (Linux `XATTR_SIZE_MAX`).
pub const XATTR_VALUE_MAX: u64 = 65536;
/// Open flags the filesystem is told about; the rest are the client's.
const OPEN_FLAGS_FS: u32 = O_ACCMODE | O_TRUNC | O_DIRECTORY;

/// Why a handler produced no success reply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fail {
    Errno(Errno),
    /// Flushed while waiting: no reply at all.
    Cancelled,
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Fail {
        Fail::Errno(e)
    }
}

type OpResult = Result<(), Fail>;

/// Whose doing an error reply is, for the counters: a healthy server
/// answers many requests with an error the request itself asked for (a
/// lookup of a name that is not there, a create of one that is, a
/// permission check), and those must not look like faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// `ENOENT`: the usual answer to a lookup of a new name.
    Enoent,
    /// The request was wrong for the state it found (exists, not empty,
    /// not permitted, bad argument, would block, not supported, ...).
    Client,
    /// The server or the volume failed it (`EIO`, `ENOMEM`, `ENOSPC`,
    /// `EUCLEAN`, ... and any errno not listed as the request's doing).
    Server,
}

pub(crate) fn error_kind(e: Errno) -> ErrorKind {
    use Errno as E;
    match e {
        E::ENOENT => ErrorKind::Enoent,
        E::EPERM
        | E::EBADF
        | E::EAGAIN
        | E::EACCES
        | E::EBUSY
        | E::EEXIST
        | E::EXDEV
        | E::ENOTDIR
        | E::EISDIR
        | E::EINVAL
        | E::ETXTBSY
        | E::EFBIG
        | E::ESPIPE
        | E::EMLINK
        | E::ERANGE
        | E::EDEADLK
        | E::ENAMETOOLONG
        | E::ENOTEMPTY
        | E::ELOOP
        | E::ENODATA
        | E::EOVERFLOW
        | E::EOPNOTSUPP
        | E::ENOSYS
        | E::ESTALE => ErrorKind::Client,
        _ => ErrorKind::Server,
    }
}

/// Run one request; returns whether `out` holds a reply (false: it was
/// cancelled and must not be answered).
pub(crate) async fn handle(
    conn: &Rc<Conn>,
    req: &Request,
    tag: u16,
    msg: Tmsg<'_>,
    out: &mut Vec<u8>,
) -> bool {
    let start = out.len();
    let cx = Cx { conn, req, tag };
    let r = cx.run(msg, out).await;
    match r {
        Ok(()) => true,
        Err(Fail::Errno(e)) => {
            match error_kind(e) {
                ErrorKind::Enoent => counter!("p9.enoent").inc(),
                ErrorKind::Client => counter!("p9.client_errors").inc(),
                ErrorKind::Server => counter!("p9.server_errors").inc(),
            }
            out.truncate(start);
            encode_into(out, tag, &Rmsg::lerror(e));
            true
        }
        Err(Fail::Cancelled) => {
            out.truncate(start);
            false
        }
    }
}

/// The qid of an inode.
pub fn qid_of(a: &Attr) -> Qid {
    Qid {
        ty: QidType::of_mode(a.mode),
        version: a.version as u32,
        path: a.ino,
    }
}

fn qid_of_dtype(ino: Ino, dtype: u8) -> Qid {
    let ty = match dtype {
        DT_DIR => QidType::DIR,
        DT_LNK => QidType::SYMLINK,
        _ => QidType::FILE,
    };
    Qid {
        ty,
        version: 0,
        path: ino,
    }
}

/// Linux `new_encode_dev`.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn ts(sec: u64, nsec: u64) -> Result<Timespec, Errno> {
    if nsec >= 1_000_000_000 {
        return Err(Errno::EINVAL);
    }
    Ok(Timespec {
        sec,
        nsec: nsec as u32,
    })
}

/// The context of one request.
struct Cx<'a> {
    conn: &'a Rc<Conn>,
    req: &'a Request,
    tag: u16,
}

impl Cx<'_> {
    fn mount(&self) -> &scoutvm_fs::posix::mount::Mount {
        &self.conn.server.mount
    }

    fn fid(&self, no: u32) -> Result<Rc<Fid>, Errno> {
        self.conn.fids.borrow().get(no).ok_or(Errno::EBADF)
    }

    fn reply(&self, out: &mut Vec<u8>, msg: Rmsg<'_>) -> OpResult {
        encode_into(out, self.tag, &msg);
        Ok(())
    }

    fn check_cancelled(&self) -> OpResult {
        if self.req.is_cancelled() {
            return Err(Fail::Cancelled);
        }
        Ok(())
    }

    fn add_fid(&self, no: u32, fid: Fid) -> Result<(), Errno> {
        match self.conn.fids.borrow_mut().insert(no, Rc::new(fid)) {
            Ok(()) => Ok(()),
            Err(FidError::InUse) => Err(Errno::EBADF),
            Err(FidError::TooMany) => {
                counter!("p9.fid_limit").inc();
                Err(Errno::EMFILE)
            }
        }
    }

    /// Is `fid` still the table's entry for `no`?
    fn still_installed(&self, no: u32, fid: &Rc<Fid>) -> bool {
        self.conn
            .fids
            .borrow()
            .get(no)
            .is_some_and(|f| Rc::ptr_eq(&f, fid))
    }

    async fn run(&self, msg: Tmsg<'_>, out: &mut Vec<u8>) -> OpResult {
        self.check_cancelled()?;
        match msg {
            Tmsg::Version { .. } | Tmsg::Flush { .. } => {
                unreachable!("version and flush are handled by the connection")
            }
            Tmsg::Auth { .. } => Err(Errno::EOPNOTSUPP.into()),
            Tmsg::Attach {
                fid,
                afid,
                uname,
                aname,
                n_uname,
            } => self.attach(out, fid, afid, uname, aname, n_uname).await,
            Tmsg::Walk {
                fid,
                newfid,
                wnames,
            } => self.walk(out, fid, newfid, &wnames).await,
            Tmsg::Lopen { fid, flags } => self.lopen(out, fid, flags).await,
            Tmsg::Lcreate {
                fid,
                name,
                flags,
                mode,
                gid,
            } => self.lcreate(out, fid, name, flags, mode, gid).await,
            Tmsg::Mkdir {
                dfid,
                name,
                mode,
                gid,
            } => {
                let d = self.fid(dfid)?;
                let cred = d.ident.cred_creating(gid);
                let a = self
                    .mount()
                    .mkdir(&cred, d.ino, name, mode & 0o7777)
                    .await?;
                self.reply(out, Rmsg::Mkdir { qid: qid_of(&a) })
            }
            Tmsg::Symlink {
                fid,
                name,
                symtgt,
                gid,
            } => {
                let d = self.fid(fid)?;
                let cred = d.ident.cred_creating(gid);
                let a = self.mount().symlink(&cred, d.ino, name, symtgt).await?;
                self.reply(out, Rmsg::Symlink { qid: qid_of(&a) })
            }
            Tmsg::Mknod {
                dfid,
                name,
                mode,
                major,
                minor,
                gid,
            } => {
                let d = self.fid(dfid)?;
                let cred = d.ident.cred_creating(gid);
                let a = self
                    .mount()
                    .mknod(
                        &cred,
                        d.ino,
                        name,
                        mode & (S_IFMT | 0o7777),
                        encode_dev(major, minor),
                    )
                    .await?;
                self.reply(out, Rmsg::Mknod { qid: qid_of(&a) })
            }
            Tmsg::Rename { fid, dfid, name } => self.rename(out, fid, dfid, name).await,
            Tmsg::Renameat {
                olddirfid,
                oldname,
                newdirfid,
                newname,
            } => {
                let od = self.fid(olddirfid)?;
                let nd = self.fid(newdirfid)?;
                let cred = od.ident.cred();
                self.mount()
                    .rename(&cred, od.ino, oldname, nd.ino, newname, 0)
                    .await?;
                self.reply(out, Rmsg::Renameat {})
            }
            Tmsg::Unlinkat { dirfd, name, flags } => {
                let d = self.fid(dirfd)?;
                if flags & !AT_REMOVEDIR != 0 {
                    return Err(Errno::EINVAL.into());
                }
                let cred = d.ident.cred();
                if flags & AT_REMOVEDIR != 0 {
                    self.mount().rmdir(&cred, d.ino, name).await?;
                } else {
                    self.mount().unlink(&cred, d.ino, name).await?;
                }
                self.reply(out, Rmsg::Unlinkat {})
            }
            Tmsg::Link { dfid, fid, name } => {
                let d = self.fid(dfid)?;
                let f = self.fid(fid)?;
                let cred = d.ident.cred();
                self.mount().link(&cred, f.ino, d.ino, name).await?;
                self.reply(out, Rmsg::Link {})
            }
            Tmsg::Readlink { fid } => {
                let f = self.fid(fid)?;
                if f.ftype != S_IFLNK {
                    return Err(Errno::EINVAL.into());
                }
                let target = self.mount().readlink(f.ino).await?;
                self.reply(out, Rmsg::Readlink { target: &target })
            }
            Tmsg::Getattr { fid, .. } => {
                let f = self.fid(fid)?;
                let a = self.mount().getattr(f.ino).await?;
                self.reply(out, getattr_reply(&a))
            }
            Tmsg::Setattr {
                fid,
                valid,
                mode,
                uid,
                gid,
                size,
                atime_sec,
                atime_nsec,
                mtime_sec,
                mtime_nsec,
            } => {
                let f = self.fid(fid)?;
                let sa = setattr_of(
                    valid,
                    mode,
                    uid,
                    gid,
                    size,
                    (atime_sec, atime_nsec),
                    (mtime_sec, mtime_nsec),
                )?;
                let cred = f.ident.cred();
                // an ftruncate comes on the fid of the open file: a fid
                // open for writing was checked when it was opened
                if sa.size.is_some() && f.writable().is_some() {
                    self.mount()
                        .setattr_open_for_write(&cred, f.ino, &sa)
                        .await?;
                } else {
                    self.mount().setattr(&cred, f.ino, &sa).await?;
                }
                self.reply(out, Rmsg::Setattr {})
            }
            Tmsg::Xattrwalk { fid, newfid, name } => self.xattrwalk(out, fid, newfid, name).await,
            Tmsg::Xattrcreate {
                fid,
                name,
                attr_size,
                flags,
            } => self.xattrcreate(out, fid, name, attr_size, flags),
            Tmsg::Readdir { fid, offset, count } => self.readdir(out, fid, offset, count).await,
            Tmsg::Read { fid, offset, count } => self.read(out, fid, offset, count).await,
            Tmsg::Write { fid, offset, data } => self.write(out, fid, offset, &data).await,
            Tmsg::Fsync { fid, .. } => {
                let f = self.fid(fid)?;
                self.mount().fsync(f.ino).await?;
                self.reply(out, Rmsg::Fsync {})
            }
            Tmsg::Statfs { fid } => {
                self.fid(fid)?;
                let s = self.mount().statfs().await?;
                self.reply(
                    out,
                    Rmsg::Statfs {
                        ty: V9FS_MAGIC,
                        bsize: s.bsize,
                        blocks: s.blocks,
                        bfree: s.bfree,
                        bavail: s.bavail,
                        files: s.files,
                        ffree: s.ffree,
                        fsid: s.fsid,
                        namelen: s.namelen,
                    },
                )
            }
            Tmsg::Lock {
                fid,
                ty,
                flags,
                start,
                length,
                proc_id,
                client_id,
            } => {
                self.lock(out, fid, ty, flags, start, length, proc_id, client_id)
                    .await
            }
            Tmsg::Getlock {
                fid,
                ty,
                start,
                length,
                proc_id,
                client_id,
            } => self.getlock(out, fid, ty, start, length, proc_id, client_id),
            Tmsg::Clunk { fid } => {
                let f = self
                    .conn
                    .fids
                    .borrow_mut()
                    .remove(fid)
                    .ok_or(Errno::EBADF)?;
                clunk_fid(self.conn, fid, &f, false).await?;
                self.reply(out, Rmsg::Clunk {})
            }
            Tmsg::Remove { fid } => self.remove(out, fid).await,
        }
    }

    // -- session ---------------------------------------------------------------

    async fn attach(
        &self,
        out: &mut Vec<u8>,
        fid: u32,
        afid: u32,
        uname: &[u8],
        aname: &[u8],
        n_uname: u32,
    ) -> OpResult {
        if !self.conn.allowed {
            let a = self.conn.peer.addr;
            TRACE_REFUSED.emit(&[a[0] as u64, a[1] as u64, a[2] as u64, a[3] as u64]);
            counter!("p9.attach_refused").inc();
            log::warn!(
                "p9: refused attach from {} (not in p9.allow)",
                self.conn.peer
            );
            return Err(Errno::EACCES.into());
        }
        if afid != NOFID {
            return Err(Errno::EINVAL.into());
        }
        let uid = uid_of(uname, n_uname).ok_or(Errno::EACCES)?;
        let ident = self.identity(uname, uid)?;
        let cred = ident.cred();
        let mut ino = ROOT_INO;
        for name in aname.split(|&b| b == b'/').filter(|n| !n.is_empty()) {
            ino = self.mount().lookup(&cred, ino, name).await?.ino;
        }
        let a = self.mount().getattr(ino).await?;
        if !a.is_dir() {
            return Err(Errno::ENOTDIR.into());
        }
        // The attach point is its own root: `..` and remove stop there.
        self.add_fid(fid, Fid::new(ino, a.mode, ident, ino, None))?;
        self.reply(out, Rmsg::Attach { qid: qid_of(&a) })
    }

    fn identity(&self, uname: &[u8], uid: u32) -> Result<Rc<Identity>, Errno> {
        let mut users = self.conn.users.borrow_mut();
        if let Some(i) = users.get(&uid) {
            return Ok(i.clone());
        }
        if users.len() >= self.conn.server.config.users_max {
            counter!("p9.user_limit").inc();
            return Err(Errno::EMFILE);
        }
        let i = Rc::new(Identity::new(
            uname,
            uid,
            self.conn.server.config.root_squash,
        ));
        users.insert(uid, i.clone());
        Ok(i)
    }

    // -- names -----------------------------------------------------------------

    async fn walk(&self, out: &mut Vec<u8>, fid: u32, newfid: u32, names: &[&[u8]]) -> OpResult {
        let f = self.fid(fid)?;
        if matches!(
            *f.state.borrow(),
            FidState::XattrRead(_) | FidState::XattrWrite(_)
        ) {
            return Err(Errno::EBADF.into());
        }
        if newfid != fid && self.conn.fids.borrow().contains(newfid) {
            return Err(Errno::EBADF.into());
        }
        let cred = f.ident.cred();
        let mut ino = f.ino;
        let mut ftype = f.ftype;
        let mut parent = f.parent.borrow().clone();
        let mut qids = Vec::with_capacity(names.len());
        for (i, &name) in names.iter().enumerate() {
            self.check_cancelled()?;
            let step = if name == b".." && ino == f.root {
                self.mount().getattr(ino).await.map(|a| (a, parent.clone()))
            } else {
                self.mount().lookup(&cred, ino, name).await.map(|a| {
                    let p = if name == b"." || name == b".." {
                        None
                    } else {
                        Some((ino, name.to_vec()))
                    };
                    (a, p)
                })
            };
            match step {
                Ok((a, p)) => {
                    qids.push(qid_of(&a));
                    ino = a.ino;
                    ftype = a.mode & S_IFMT;
                    parent = if name == b"." { parent } else { p };
                }
                Err(e) if i == 0 => return Err(e.into()),
                Err(_) => break,
            }
        }
        if qids.len() == names.len() {
            let nf = Fid::new(ino, ftype, f.ident.clone(), f.root, parent);
            if newfid == fid {
                if !matches!(*f.state.borrow(), FidState::Walked) {
                    return Err(Errno::EBUSY.into());
                }
                self.conn.fids.borrow_mut().replace(fid, Rc::new(nf));
            } else {
                self.add_fid(newfid, nf)?;
            }
        }
        self.reply(out, Rmsg::Walk { qids })
    }

    async fn rename(&self, out: &mut Vec<u8>, fid: u32, dfid: u32, name: &[u8]) -> OpResult {
        let f = self.fid(fid)?;
        let d = self.fid(dfid)?;
        let (pdir, pname) = f.parent.borrow().clone().ok_or(Errno::EBUSY)?;
        let cred = f.ident.cred();
        // The name the fid was reached by must still be this file.
        let now = self.mount().lookup(&cred, pdir, &pname).await?;
        if now.ino != f.ino {
            return Err(Errno::ESTALE.into());
        }
        self.mount()
            .rename(&cred, pdir, &pname, d.ino, name, 0)
            .await?;
        *f.parent.borrow_mut() = Some((d.ino, name.to_vec()));
        self.reply(out, Rmsg::Rename {})
    }

    async fn remove(&self, out: &mut Vec<u8>, fid: u32) -> OpResult {
        // Tremove clunks the fid whatever happens.
        let f = self
            .conn
            .fids
            .borrow_mut()
            .remove(fid)
            .ok_or(Errno::EBADF)?;
        let removed = self.remove_name(&f).await;
        let clunked = clunk_fid(self.conn, fid, &f, false).await;
        removed?;
        clunked?;
        self.reply(out, Rmsg::Remove {})
    }

    async fn remove_name(&self, f: &Fid) -> Result<(), Errno> {
        let (pdir, pname) = f.parent.borrow().clone().ok_or(Errno::EBUSY)?;
        let cred = f.ident.cred();
        let now = self.mount().lookup(&cred, pdir, &pname).await?;
        if now.ino != f.ino {
            return Err(Errno::ESTALE);
        }
        if f.is_dir() {
            self.mount().rmdir(&cred, pdir, &pname).await
        } else {
            self.mount().unlink(&cred, pdir, &pname).await
        }
    }

    // -- open files --------------------------------------------------------------

    async fn lopen(&self, out: &mut Vec<u8>, fid: u32, flags: u32) -> OpResult {
        let f = self.fid(fid)?;
        {
            let mut st = f.state.borrow_mut();
            if !matches!(*st, FidState::Walked) {
                return Err(Errno::EBUSY.into());
            }
            *st = FidState::Opening;
        }
        let cred = f.ident.cred();
        let r = self.mount().open(&cred, f.ino, flags & OPEN_FLAGS_FS).await;
        let a = match r {
            Ok(a) => a,
            Err(e) => {
                *f.state.borrow_mut() = FidState::Walked;
                return Err(e.into());
            }
        };
        *f.state.borrow_mut() = FidState::Open { flags };
        if !self.still_installed(fid, &f) {
            // Clunked while opening: nobody will release it later.
            *f.state.borrow_mut() = FidState::Walked;
            self.mount().release(f.ino).await?;
            return Err(Errno::EBADF.into());
        }
        let iounit = self.conn.msize.get() - IOHDRSZ;
        self.reply(
            out,
            Rmsg::Lopen {
                qid: qid_of(&a),
                iounit,
            },
        )
    }

    async fn lcreate(
        &self,
        out: &mut Vec<u8>,
        fid: u32,
        name: &[u8],
        flags: u32,
        mode: u32,
        gid: u32,
    ) -> OpResult {
        let d = self.fid(fid)?;
        if !d.is_dir() {
            return Err(Errno::ENOTDIR.into());
        }
        {
            let mut st = d.state.borrow_mut();
            if !matches!(*st, FidState::Walked) {
                return Err(Errno::EBUSY.into());
            }
            *st = FidState::Opening;
        }
        let r = self.create_and_open(&d, name, flags, mode, gid).await;
        *d.state.borrow_mut() = FidState::Walked;
        let a = r?;
        let nf = Fid::new(
            a.ino,
            a.mode,
            d.ident.clone(),
            d.root,
            Some((d.ino, name.to_vec())),
        );
        *nf.state.borrow_mut() = FidState::Open { flags };
        let nf = Rc::new(nf);
        let replaced = {
            let mut fids = self.conn.fids.borrow_mut();
            match fids.get(fid) {
                Some(cur) if Rc::ptr_eq(&cur, &d) => {
                    fids.replace(fid, nf);
                    true
                }
                _ => false,
            }
        };
        if !replaced {
            self.mount().release(a.ino).await?;
            return Err(Errno::EBADF.into());
        }
        let iounit = self.conn.msize.get() - IOHDRSZ;
        self.reply(
            out,
            Rmsg::Lcreate {
                qid: qid_of(&a),
                iounit,
            },
        )
    }

    async fn create_and_open(
        &self,
        d: &Fid,
        name: &[u8],
        flags: u32,
        mode: u32,
        gid: u32,
    ) -> Result<Attr, Errno> {
        let cred = d.ident.cred_creating(gid);
        let a = self
            .mount()
            .create(&cred, d.ino, name, mode & 0o7777)
            .await?;
        // The creator may open what it made whatever the new mode says
        // (open(O_CREAT|O_WRONLY, 0444) works), so no access check here.
        self.mount()
            .open(&Cred::root(), a.ino, flags & O_ACCMODE)
            .await
    }

    async fn read(&self, out: &mut Vec<u8>, fid: u32, offset: u64, count: u32) -> OpResult {
        let f = self.fid(fid)?;
        let max = (self.conn.msize.get() - IOHDRSZ).min(count) as usize;
        let xattr = match &*f.state.borrow() {
            FidState::XattrRead(data) => Some(data.clone()),
            _ => None,
        };
        if let Some(data) = xattr {
            let from = offset.min(data.len() as u64) as usize;
            let to = from + (data.len() - from).min(max);
            return self.reply(
                out,
                Rmsg::Read {
                    data: wire::Data(&data[from..to]),
                },
            );
        }
        if !f.readable() {
            return Err(Errno::EBADF.into());
        }
        let start = out.len();
        let hdr = wire::RREAD_HEADER_LEN;
        out.resize(start + hdr + max, 0);
        let n = self
            .mount()
            .read_into(f.ino, offset, &mut out[start + hdr..])
            .await?;
        assert!(n <= max, "read_into returned more than asked");
        out.truncate(start + hdr + n);
        wire::put_rread_header(&mut out[start..start + hdr], self.tag, n as u32);
        counter!("p9.read_bytes").add(n as u64);
        Ok(())
    }

    async fn write(&self, out: &mut Vec<u8>, fid: u32, offset: u64, data: &[u8]) -> OpResult {
        let f = self.fid(fid)?;
        {
            let mut st = f.state.borrow_mut();
            if let FidState::XattrWrite(w) = &mut *st {
                if offset != w.value.len() as u64 || w.value.len() + data.len() > w.size {
                    return Err(Errno::EINVAL.into());
                }
                w.value.extend_from_slice(data);
                drop(st);
                return self.reply(
                    out,
                    Rmsg::Write {
                        count: data.len() as u32,
                    },
                );
            }
        }
        let append = f.writable().ok_or(Errno::EBADF)?;
        let n = if append {
            self.append(f.ino, data).await?
        } else {
            self.mount().write(f.ino, offset, data).await?
        };
        counter!("p9.write_bytes").add(n as u64);
        self.reply(out, Rmsg::Write { count: n as u32 })
    }

    /// An `O_APPEND` write: at the end of the file as it is now, with no
    /// other append in between.
    async fn append(&self, ino: Ino, data: &[u8]) -> Result<usize, Fail> {
        let server = &self.conn.server;
        loop {
            let wait = server.append_done.notified();
            if !server.append_busy.get() {
                break;
            }
            self.req.cancellable(wait).await.ok_or(Fail::Cancelled)?;
        }
        server.append_busy.set(true);
        let r = async {
            let size = self.mount().getattr(ino).await?.size;
            self.mount().write(ino, size, data).await
        }
        .await;
        server.append_busy.set(false);
        server.append_done.notify();
        Ok(r?)
    }

    async fn readdir(&self, out: &mut Vec<u8>, fid: u32, offset: u64, count: u32) -> OpResult {
        let f = self.fid(fid)?;
        if !f.is_dir() {
            return Err(Errno::ENOTDIR.into());
        }
        let room = (self.conn.msize.get() as usize - HEADER_LEN - 4).min(count as usize);
        let cred = f.ident.cred();
        let mut entries: Vec<DirEntry> = Vec::new();
        let mut used = 0usize;
        let mut pos = offset;
        let mut first_too_big = false;
        'fill: loop {
            self.check_cancelled()?;
            // Enough entries for the room left at the shortest names.
            let want = ((room - used) / 25).clamp(1, 4096);
            let batch = match self.mount().readdir(&cred, f.ino, pos, want).await {
                Ok(b) => b,
                // A removed directory that is still open reads as empty.
                Err(Errno::ENOENT) if self.mount().getattr(f.ino).await?.nlink == 0 => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            if batch.is_empty() {
                break;
            }
            for e in batch {
                let len = wire::QID_LEN + 8 + 1 + 2 + e.name.len();
                if used + len > room {
                    first_too_big = entries.is_empty();
                    break 'fill;
                }
                used += len;
                pos = e.next_pos;
                entries.push(e);
            }
        }
        if first_too_big {
            // Not even one entry fits the client's buffer: an empty reply
            // would read as the end of the directory.
            return Err(Errno::EINVAL.into());
        }
        if let Err(e) = wire::encode_rreaddir_with(self.tag, out, |buf| {
            for e in &entries {
                Dirent {
                    qid: qid_of_dtype(e.ino, e.dtype),
                    offset: e.next_pos,
                    ty: e.dtype,
                    name: &e.name,
                }
                .encode(buf)
                .expect("directory entry names are short");
            }
        }) {
            panic!("encoding Rreaddir failed: {e}");
        }
        Ok(())
    }

    // -- xattrs ------------------------------------------------------------------

    async fn xattrwalk(&self, out: &mut Vec<u8>, fid: u32, newfid: u32, name: &[u8]) -> OpResult {
        let f = self.fid(fid)?;
        if newfid != fid && self.conn.fids.borrow().contains(newfid) {
            return Err(Errno::EBADF.into());
        }
        let cred = f.ident.cred();
        let data: Vec<u8> = if name.is_empty() {
            let names = self.mount().listxattr(&cred, f.ino).await?;
            let mut list = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
            for n in names {
                list.extend_from_slice(&n);
                list.push(0);
            }
            list
        } else if archive_ctl::is_ctl(name) {
            // the archival control channel (docs/archival.md), as on FUSE
            archive_ctl::ctl_get(self.mount(), &cred, f.ino, name).await?
        } else {
            self.mount().getxattr(&cred, f.ino, name).await?
        };
        let size = data.len() as u64;
        self.take_xattr_slot()?;
        let nf = Fid::new(
            f.ino,
            f.ftype,
            f.ident.clone(),
            f.root,
            f.parent.borrow().clone(),
        );
        *nf.state.borrow_mut() = FidState::XattrRead(data.into());
        let installed = if newfid == fid {
            // Only a walked fid may turn into a reader (an open one would
            // lose its open).
            if matches!(*f.state.borrow(), FidState::Walked) {
                self.conn.fids.borrow_mut().replace(fid, Rc::new(nf));
                Ok(())
            } else {
                Err(Errno::EBUSY)
            }
        } else {
            self.add_fid(newfid, nf)
        };
        if let Err(e) = installed {
            self.conn.xattr_fids.set(self.conn.xattr_fids.get() - 1);
            return Err(e.into());
        }
        self.reply(out, Rmsg::Xattrwalk { size })
    }

    fn xattrcreate(
        &self,
        out: &mut Vec<u8>,
        fid: u32,
        name: &[u8],
        attr_size: u64,
        flags: u32,
    ) -> OpResult {
        let f = self.fid(fid)?;
        if attr_size > XATTR_VALUE_MAX {
            return Err(Errno::E2BIG.into());
        }
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 || name.is_empty() {
            return Err(Errno::EINVAL.into());
        }
        let mut st = f.state.borrow_mut();
        if !matches!(*st, FidState::Walked) {
            return Err(Errno::EBUSY.into());
        }
        self.take_xattr_slot()?;
        *st = FidState::XattrWrite(XattrWrite {
            name: name.to_vec(),
            size: attr_size as usize,
            flags,
            value: Vec::with_capacity(attr_size as usize),
        });
        drop(st);
        self.reply(out, Rmsg::Xattrcreate {})
    }

    /// Count one more fid holding an xattr value, within the bound.
    fn take_xattr_slot(&self) -> Result<(), Errno> {
        let n = self.conn.xattr_fids.get();
        if n >= self.conn.server.config.xattr_fids_max {
            counter!("p9.xattr_fid_limit").inc();
            return Err(Errno::ENFILE);
        }
        self.conn.xattr_fids.set(n + 1);
        Ok(())
    }

    // -- locks -------------------------------------------------------------------

    fn owner(&self, proc_id: u32, client_id: &[u8]) -> Result<LockOwner, Errno> {
        if client_id.len() > CLIENT_ID_MAX {
            return Err(Errno::EINVAL);
        }
        Ok(LockOwner {
            conn: self.conn.id,
            proc_id,
            client_id: client_id.to_vec(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn lock(
        &self,
        out: &mut Vec<u8>,
        fid: u32,
        ty: LockType,
        flags: u32,
        start: u64,
        length: u64,
        proc_id: u32,
        client_id: &[u8],
    ) -> OpResult {
        let f = self.fid(fid)?;
        let owner = self.owner(proc_id, client_id)?;
        let end = range_end(start, length);
        let kind = match ty {
            LockType::Read => Some(LockKind::Read),
            LockType::Write => Some(LockKind::Write),
            LockType::Unlock => None,
        };
        let server = &self.conn.server;
        let deadline = server
            .exec
            .now_ns()
            .saturating_add(server.config.lock_wait_ns);
        let status = loop {
            let changed = server.locks_changed.notified();
            let r = server
                .locks
                .borrow_mut()
                .set(f.ino, &owner, fid, kind, start, end);
            match r {
                Ok(()) => {
                    // Unlocks and downgrades may let a waiter in.
                    server.locks_changed.notify();
                    break LockStatus::Success;
                }
                Err(LockError::NoLocks) => {
                    counter!("p9.lock_limit").inc();
                    break LockStatus::Error;
                }
                Err(LockError::Conflict(_)) if flags & LOCK_FLAGS_BLOCK == 0 => {
                    break LockStatus::Blocked;
                }
                Err(LockError::Conflict(_)) => {
                    counter!("p9.lock_waits").inc();
                    let wait = server.exec.timeout_at(deadline, changed);
                    match self.req.cancellable(wait).await {
                        None => return Err(Fail::Cancelled),
                        Some(Err(_elapsed)) => break LockStatus::Blocked,
                        Some(Ok(())) => continue,
                    }
                }
            }
        };
        self.reply(out, Rmsg::Lock { status })
    }

    #[allow(clippy::too_many_arguments)]
    fn getlock(
        &self,
        out: &mut Vec<u8>,
        fid: u32,
        ty: LockType,
        start: u64,
        length: u64,
        proc_id: u32,
        client_id: &[u8],
    ) -> OpResult {
        let f = self.fid(fid)?;
        let owner = self.owner(proc_id, client_id)?;
        let kind = match ty {
            LockType::Read => LockKind::Read,
            // Linux sends F_GETLK as type UNLCK (its local test overwrote
            // the type): report any lock another owner holds.
            LockType::Write | LockType::Unlock => LockKind::Write,
        };
        let locks = self.conn.server.locks.borrow();
        let end = range_end(start, length);
        match locks.conflict(f.ino, &owner, kind, start, end) {
            Some(l) => {
                let ty = match l.kind {
                    LockKind::Read => LockType::Read,
                    LockKind::Write => LockType::Write,
                };
                encode_into(
                    out,
                    self.tag,
                    &Rmsg::Getlock {
                        ty,
                        start: l.start,
                        length: l.length(),
                        proc_id: l.owner.proc_id,
                        client_id: &l.owner.client_id,
                    },
                );
                Ok(())
            }
            None => {
                drop(locks);
                self.reply(
                    out,
                    Rmsg::Getlock {
                        ty: LockType::Unlock,
                        start,
                        length,
                        proc_id,
                        client_id,
                    },
                )
            }
        }
    }
}

/// `Rgetattr` with everything filled in.
pub fn getattr_reply(a: &Attr) -> Rmsg<'static> {
    Rmsg::Getattr {
        valid: GetattrMask::BASIC | GetattrMask::BTIME | GetattrMask::DATA_VERSION,
        qid: qid_of(a),
        mode: a.mode,
        uid: a.uid,
        gid: a.gid,
        nlink: a.nlink as u64,
        rdev: a.rdev as u64,
        size: a.size,
        blksize: 4096,
        blocks: a.blocks,
        atime_sec: a.atime.sec,
        atime_nsec: a.atime.nsec as u64,
        mtime_sec: a.mtime.sec,
        mtime_nsec: a.mtime.nsec as u64,
        ctime_sec: a.ctime.sec,
        ctime_nsec: a.ctime.nsec as u64,
        btime_sec: a.crtime.sec,
        btime_nsec: a.crtime.nsec as u64,
        gen: 0,
        data_version: a.data_version,
    }
}

/// The `SetAttr` of a `Tsetattr`.
pub fn setattr_of(
    valid: SetattrValid,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    atime: (u64, u64),
    mtime: (u64, u64),
) -> Result<SetAttr, Errno> {
    let mut sa = SetAttr::default();
    if valid.contains(SetattrValid::MODE) {
        sa.mode = Some(mode & 0o7777);
    }
    if valid.contains(SetattrValid::UID) {
        sa.uid = Some(uid);
    }
    if valid.contains(SetattrValid::GID) {
        sa.gid = Some(gid);
    }
    if valid.contains(SetattrValid::SIZE) {
        sa.size = Some(size);
    }
    if valid.contains(SetattrValid::ATIME) {
        sa.atime = Some(if valid.contains(SetattrValid::ATIME_SET) {
            SetTime::At(ts(atime.0, atime.1)?)
        } else {
            SetTime::Now
        });
    }
    if valid.contains(SetattrValid::MTIME) {
        sa.mtime = Some(if valid.contains(SetattrValid::MTIME_SET) {
            SetTime::At(ts(mtime.0, mtime.1)?)
        } else {
            SetTime::Now
        });
    }
    // P9_ATTR_CTIME means "now", which every setattr does anyway.
    Ok(sa)
}

/// Drop a fid that has left the table: release an open (the last close
/// of an unlinked file deletes it) and the locks taken through it, or set
/// a collected xattr (unless `discard`, at teardown).
pub(crate) async fn clunk_fid(conn: &Conn, no: u32, f: &Fid, discard: bool) -> Result<(), Errno> {
    let state = core::mem::replace(&mut *f.state.borrow_mut(), FidState::Walked);
    if matches!(state, FidState::XattrRead(_) | FidState::XattrWrite(_)) {
        let n = conn.xattr_fids.get();
        assert!(n > 0, "xattr fid count out of step");
        conn.xattr_fids.set(n - 1);
    }
    if conn.server.locks.borrow_mut().release_fid(conn.id, no) > 0 {
        conn.server.locks_changed.notify();
    }
    match state {
        FidState::Open { .. } => conn.server.mount.release(f.ino).await,
        FidState::XattrWrite(w) if !discard => {
            if w.value.len() != w.size {
                return Err(Errno::EINVAL);
            }
            let cred = f.ident.cred();
            let m = &conn.server.mount;
            if archive_ctl::is_ctl(&w.name) {
                archive_ctl::ctl_set(m, &cred, f.ino, &w.name, &w.value).await
            } else if w.size == 0 && w.flags & XATTR_REPLACE != 0 {
                // Linux's removexattr arrives as a zero-size replace.
                m.removexattr(&cred, f.ino, &w.name).await
            } else {
                m.setxattr(&cred, f.ino, &w.name, &w.value, w.flags).await
            }
        }
        FidState::Opening => {
            // The open under way notices the fid is gone and releases.
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod error_kind_tests {
    use super::*;

    #[test]
    fn faults_are_told_from_answers_the_request_asked_for() {
        assert_eq!(error_kind(Errno::ENOENT), ErrorKind::Enoent);
        for e in [
            Errno::EEXIST,
            Errno::EACCES,
            Errno::ENOTEMPTY,
            Errno::ENODATA,
        ] {
            assert_eq!(error_kind(e), ErrorKind::Client, "{e:?}");
        }
        for e in [Errno::EIO, Errno::ENOMEM, Errno::ENOSPC, Errno::EUCLEAN] {
            assert_eq!(error_kind(e), ErrorKind::Server, "{e:?}");
        }
    }
}
