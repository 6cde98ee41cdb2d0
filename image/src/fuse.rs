//! The host FUSE front end: maps the kernel's FUSE requests (through the
//! `fuser` crate) onto `posix::mount::Mount`'s POSIX operations, so any host tool
//! can exercise the filesystem.
//!
//! `fuser` calls [`ScoutFuse`] on its session thread; each request becomes
//! a job for the fs thread (`fs_thread.rs`), which owns the `Mount`, runs
//! the operation and sends the reply from there. Called by `scoutvm
//! mount` ([`run_foreground`]) and by tests and benches ([`FuseMount`]).
//! Invariants: every request gets exactly one reply (a reply dropped
//! unsent answers `EIO`); credentials are the caller's (uid, gid, and
//! supplementary groups from `/proc`); permissions are checked by the
//! kernel (`default_permissions`, from the attributes the `Mount` returns)
//! and again by the `Mount`; open files are counted, so an unlinked file
//! lives until its last release.

use crate::fs_thread::{FsStatsSnapshot, FsThread, Job, Opener, Submitter};
use fuser::{
    AccessFlags, BackgroundSession, Config, Errno as FuseErrno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session, SessionACL,
    TimeOrNow, WriteFlags,
};
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::archive_ctl;
use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::posix::types::*;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest write the kernel sends in one request.
pub const MAX_WRITE_BYTES: u32 = 1 << 20;
/// Directory entries read per readdir request (the reply buffer limits
/// how many are sent; the rest are read again from their position).
pub const READDIR_BATCH: usize = 128;
/// Most supplementary groups taken from `/proc/<pid>/status` (Linux's
/// NGROUPS_MAX).
pub const GROUPS_MAX: usize = 65536;

/// How the filesystem is presented to the kernel.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// How long the kernel may cache attributes and names. The mount is
    /// exclusive, so nothing else changes them behind its back.
    pub ttl: Duration,
    /// `fsname` in the mount table.
    pub fsname: String,
    /// Let every user reach the mount (`allow_other`); the `Mount` checks
    /// permissions. Off: only the mounting user.
    pub allow_other: bool,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            ttl: Duration::from_secs(1),
            fsname: "scoutvm".into(),
            allow_other: true,
        }
    }
}

/// The `fuser::Filesystem`: turns requests into fs-thread jobs.
pub struct ScoutFuse {
    sub: Submitter,
    ttl: Duration,
    next_fh: AtomicU64,
}

fn ferr(e: Errno) -> FuseErrno {
    FuseErrno::from_i32(e.0)
}

fn systime(t: Timespec) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::new(t.sec, t.nsec.min(999_999_999)))
        .unwrap_or(UNIX_EPOCH)
}

/// Times before 1970 are stored as the epoch (scoutfs keeps unsigned
/// seconds here).
fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            sec: d.as_secs(),
            nsec: d.subsec_nanos(),
        },
        Err(_) => Timespec::default(),
    }
}

fn kind_of_mode(mode: u32) -> FileType {
    match mode & S_IFMT {
        S_IFDIR => FileType::Directory,
        S_IFLNK => FileType::Symlink,
        S_IFIFO => FileType::NamedPipe,
        S_IFCHR => FileType::CharDevice,
        S_IFBLK => FileType::BlockDevice,
        S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn kind_of_dtype(dtype: u8) -> FileType {
    match dtype {
        DT_DIR => FileType::Directory,
        DT_LNK => FileType::Symlink,
        DT_FIFO => FileType::NamedPipe,
        DT_CHR => FileType::CharDevice,
        DT_BLK => FileType::BlockDevice,
        DT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// The kernel's view of an inode.
pub fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: systime(a.atime),
        mtime: systime(a.mtime),
        ctime: systime(a.ctime),
        crtime: systime(a.crtime),
        kind: kind_of_mode(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// Supplementary groups of a process, from the `Groups:` line of its
/// `/proc/<pid>/status` (empty when it is gone or unreadable).
pub fn proc_groups(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    parse_groups(&status)
}

fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .take(GROUPS_MAX)
                .collect()
        })
        .unwrap_or_default()
}

fn cred_of(req: &Request) -> Cred {
    let (uid, gid) = (req.uid(), req.gid());
    // root passes every check that groups could matter to
    let groups = if uid == 0 {
        Vec::new()
    } else {
        proc_groups(req.pid())
    };
    Cred { uid, gid, groups }
}

/// The reply to a getxattr/listxattr of a `size`-byte buffer: the length
/// for a size probe (0), the bytes when they fit, `ERANGE` otherwise.
pub enum XattrAnswer<'a> {
    Size(u32),
    Data(&'a [u8]),
    Error(Errno),
}

pub fn xattr_answer(value: &[u8], size: u32) -> XattrAnswer<'_> {
    let Ok(len) = u32::try_from(value.len()) else {
        return XattrAnswer::Error(Errno::E2BIG);
    };
    if size == 0 {
        XattrAnswer::Size(len)
    } else if len > size {
        XattrAnswer::Error(Errno::ERANGE)
    } else {
        XattrAnswer::Data(value)
    }
}

fn send_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
    match xattr_answer(value, size) {
        XattrAnswer::Size(n) => reply.size(n),
        XattrAnswer::Data(d) => reply.data(d),
        XattrAnswer::Error(e) => reply.error(ferr(e)),
    }
}

/// A file handle carries the open's access mode in its low two bits.
fn fh_writable(fh: FileHandle) -> bool {
    (fh.0 as u32 & O_ACCMODE) != O_RDONLY
}

/// Open flags the `Mount` looks at.
fn open_flags(flags: i32) -> u32 {
    (flags as u32) & (O_ACCMODE | O_TRUNC)
}

impl ScoutFuse {
    pub fn new(sub: Submitter, opts: &FuseOptions) -> ScoutFuse {
        ScoutFuse {
            sub,
            ttl: opts.ttl,
            next_fh: AtomicU64::new(1),
        }
    }

    /// Queue `f` for the fs thread (the reply inside answers `EIO` if it
    /// cannot run).
    fn run<F, Fut>(&self, f: F)
    where
        F: FnOnce(Rc<Mount>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let job: Job = Box::new(move |m| Box::pin(f(m)));
        self.sub.submit(job);
    }

    fn new_fh(&self, flags: u32) -> FileHandle {
        let n = self.next_fh.fetch_add(1, Ordering::Relaxed);
        FileHandle((n << 2) | (flags & O_ACCMODE) as u64)
    }
}

fn entry_reply(reply: ReplyEntry, ttl: &Duration, r: Result<Attr, Errno>) {
    match r {
        Ok(a) => reply.entry(ttl, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(ferr(e)),
    }
}

fn empty_reply(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(ferr(e)),
    }
}

fn name_of(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(timespec(t)),
    }
}

impl Filesystem for ScoutFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is best effort: an older kernel keeps its default.
        let _ = config.set_max_write(MAX_WRITE_BYTES);
        let _ = config.set_time_granularity(Duration::from_nanos(1));
        // O_TRUNC arrives with open, so the Mount checks and truncates.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let cred = cred_of(req);
        let name = name_of(name);
        let ttl = self.ttl;
        self.run(move |m| async move {
            entry_reply(reply, &ttl, m.lookup(&cred, parent.0, &name).await);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ttl = self.ttl;
        self.run(move |m| async move {
            match m.getattr(ino.0).await {
                Ok(a) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => reply.error(ferr(e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let cred = cred_of(req);
        let sa = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            ctime: ctime.map(timespec),
        };
        // ftruncate on a descriptor open for writing: the open checked
        // write permission already (as on Linux, a file created read-only
        // can be truncated through the descriptor that created it).
        let via_writable_fh = fh.is_some_and(fh_writable)
            && sa
                == SetAttr {
                    size,
                    ..SetAttr::default()
                };
        let ttl = self.ttl;
        self.run(move |m| async move {
            let r = if sa == SetAttr::default() {
                m.getattr(ino.0).await
            } else {
                match m.setattr(&cred, ino.0, &sa).await {
                    Err(Errno::EACCES) if via_writable_fh => {
                        m.setattr(&Cred::root(), ino.0, &sa).await
                    }
                    r => r,
                }
            };
            match r {
                Ok(a) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => reply.error(ferr(e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run(move |m| async move {
            match m.readlink(ino.0).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(ferr(e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let cred = cred_of(req);
        let name = name_of(name);
        let mode = mode & !(umask & 0o777);
        let ttl = self.ttl;
        self.run(move |m| async move {
            let r = m.mknod(&cred, parent.0, &name, mode, rdev).await;
            entry_reply(reply, &ttl, r);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let cred = cred_of(req);
        let name = name_of(name);
        let mode = mode & !(umask & 0o777);
        let ttl = self.ttl;
        self.run(move |m| async move {
            entry_reply(reply, &ttl, m.mkdir(&cred, parent.0, &name, mode).await);
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let cred = cred_of(req);
        let name = name_of(name);
        self.run(move |m| async move {
            empty_reply(reply, m.unlink(&cred, parent.0, &name).await);
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let cred = cred_of(req);
        let name = name_of(name);
        self.run(move |m| async move {
            empty_reply(reply, m.rmdir(&cred, parent.0, &name).await);
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let cred = cred_of(req);
        let name = name_of(link_name);
        let target = target.as_os_str().as_bytes().to_vec();
        let ttl = self.ttl;
        self.run(move |m| async move {
            entry_reply(
                reply,
                &ttl,
                m.symlink(&cred, parent.0, &name, &target).await,
            );
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let cred = cred_of(req);
        let (name, newname) = (name_of(name), name_of(newname));
        let flags = flags.bits();
        self.run(move |m| async move {
            let r = m
                .rename(&cred, parent.0, &name, newparent.0, &newname, flags)
                .await;
            empty_reply(reply, r);
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let cred = cred_of(req);
        let newname = name_of(newname);
        let ttl = self.ttl;
        self.run(move |m| async move {
            entry_reply(
                reply,
                &ttl,
                m.link(&cred, ino.0, newparent.0, &newname).await,
            );
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let cred = cred_of(req);
        let flags = open_flags(flags.0);
        let fh = self.new_fh(flags);
        self.run(move |m| async move {
            match m.open(&cred, ino.0, flags).await {
                Ok(_) => reply.opened(fh, FopenFlags::empty()),
                Err(e) => reply.error(ferr(e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.run(move |m| async move {
            match m.read(ino.0, offset, size as usize).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(ferr(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.run(move |m| async move {
            match m.write(ino.0, offset, &data).await {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(ferr(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes went to the Mount as they came; nothing is buffered here.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |m| async move {
            empty_reply(reply, m.release(ino.0).await);
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |m| async move {
            empty_reply(reply, m.fsync(ino.0).await);
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let cred = cred_of(req);
        let fh = self.new_fh(O_RDONLY);
        self.run(move |m| async move {
            match m.open(&cred, ino.0, O_RDONLY | O_DIRECTORY).await {
                Ok(_) => reply.opened(fh, FopenFlags::empty()),
                Err(e) => reply.error(ferr(e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.run(move |m| async move {
            // opendir checked read permission; reading through the
            // descriptor needs no further check (as on Linux)
            match m.readdir(&Cred::root(), ino.0, offset, READDIR_BATCH).await {
                Ok(entries) => {
                    for e in entries {
                        let full = reply.add(
                            INodeNo(e.ino),
                            e.next_pos,
                            kind_of_dtype(e.dtype),
                            OsStr::from_bytes(&e.name),
                        );
                        if full {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(ferr(e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.run(move |m| async move {
            empty_reply(reply, m.release(ino.0).await);
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |m| async move {
            empty_reply(reply, m.fsync(ino.0).await);
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(move |m| async move {
            match m.statfs().await {
                Ok(s) => reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
                ),
                Err(e) => reply.error(ferr(e)),
            }
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let Ok(flags) = u32::try_from(flags) else {
            return reply.error(FuseErrno::EINVAL);
        };
        if position != 0 {
            return reply.error(FuseErrno::EINVAL);
        }
        let cred = cred_of(req);
        let name = name_of(name);
        let value = value.to_vec();
        self.run(move |m| async move {
            // the archival control channel (docs/archival.md)
            let r = if archive_ctl::is_ctl(&name) {
                archive_ctl::ctl_set(&m, &cred, ino.0, &name, &value).await
            } else {
                m.setxattr(&cred, ino.0, &name, &value, flags).await
            };
            empty_reply(reply, r);
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let cred = cred_of(req);
        let name = name_of(name);
        self.run(move |m| async move {
            let r = if archive_ctl::is_ctl(&name) {
                archive_ctl::ctl_get(&m, &cred, ino.0, &name).await
            } else {
                m.getxattr(&cred, ino.0, &name).await
            };
            match r {
                Ok(v) => send_xattr(reply, &v, size),
                Err(e) => reply.error(ferr(e)),
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let cred = cred_of(req);
        self.run(move |m| async move {
            match m.listxattr(&cred, ino.0).await {
                Ok(names) => {
                    let mut list = Vec::new();
                    for n in names {
                        list.extend_from_slice(&n);
                        list.push(0);
                    }
                    send_xattr(reply, &list, size);
                }
                Err(e) => reply.error(ferr(e)),
            }
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let cred = cred_of(req);
        let name = name_of(name);
        self.run(move |m| async move {
            empty_reply(reply, m.removexattr(&cred, ino.0, &name).await);
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let cred = cred_of(req);
        let mask = mask.bits() as u32;
        self.run(move |m| async move {
            empty_reply(reply, m.access(&cred, ino.0, mask).await);
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let cred = cred_of(req);
        let name = name_of(name);
        let mode = mode & !(umask & 0o777);
        let flags = (flags as u32) & O_ACCMODE;
        let fh = self.new_fh(flags);
        let ttl = self.ttl;
        self.run(move |m| async move {
            let made = match mode & S_IFMT {
                0 | S_IFREG => m.create(&cred, parent.0, &name, mode).await,
                _ => m.mknod(&cred, parent.0, &name, mode, 0).await,
            };
            let a = match made {
                Ok(a) => a,
                Err(e) => return reply.error(ferr(e)),
            };
            // The creator may open what it made whatever the new mode
            // says (as on Linux): no permission check on this open.
            match m.open(&Cred::root(), a.ino, flags).await {
                Ok(a) => {
                    reply.created(&ttl, &file_attr(&a), Generation(0), fh, FopenFlags::empty())
                }
                Err(e) => reply.error(ferr(e)),
            }
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Ok(mode) = u32::try_from(mode) else {
            return reply.error(FuseErrno::EINVAL);
        };
        let cred = cred_of(req);
        self.run(move |m| async move {
            empty_reply(reply, m.fallocate(&cred, ino.0, mode, offset, length).await);
        });
    }
}

/// The `fuser` session configuration for `opts`.
pub fn session_config(opts: &FuseOptions) -> Config {
    let mut c = Config::default();
    c.mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("scoutvm".into()),
        // The kernel checks permissions too, on every path component:
        // names it caches are walked without a lookup reaching the Mount,
        // so only the kernel can check search permission on them. The
        // Mount still checks each operation it gets.
        MountOption::DefaultPermissions,
    ];
    c.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    c
}

fn mount_error(dir: &Path, e: std::io::Error) -> String {
    let hint = if !Path::new("/dev/fuse").exists() {
        " (/dev/fuse is missing: load the fuse module or give the container the device)"
    } else if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (mounting FUSE without fusermount needs root)"
    } else {
        ""
    };
    format!("cannot mount on '{}': {e}{hint}", dir.display())
}

/// A filesystem served through FUSE in the background of this process
/// (tests, benches). Dropping it unmounts (errors are then printed).
pub struct FuseMount {
    dir: PathBuf,
    session: Option<BackgroundSession>,
    fs: Option<FsThread>,
}

impl FuseMount {
    /// Open the volume on a new fs thread and mount it on `dir`.
    pub fn start(opener: Opener, dir: &Path, opts: &FuseOptions) -> Result<FuseMount, String> {
        let fs = FsThread::start(opener)?;
        let fuse = ScoutFuse::new(fs.submitter(), opts);
        let session = match Session::new(fuse, dir, &session_config(opts)) {
            Ok(s) => s,
            Err(e) => {
                let msg = mount_error(dir, e);
                return Err(match fs.shutdown() {
                    Ok(()) => msg,
                    Err(e2) => format!("{msg}; closing the volume failed too: {e2}"),
                });
            }
        };
        let session = session
            .spawn()
            .map_err(|e| format!("cannot start the FUSE session: {e}"))?;
        Ok(FuseMount {
            dir: dir.to_path_buf(),
            session: Some(session),
            fs: Some(fs),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> FsStatsSnapshot {
        self.fs.as_ref().map(|f| f.stats()).unwrap_or_default()
    }

    /// Unmount (`umount`; lazily if busy), wait for the session to end,
    /// then close the volume cleanly.
    pub fn unmount(mut self) -> Result<(), String> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Some(s) = self.session.take() {
            if let Err(e) = unmount_dir(&self.dir) {
                errors.push(e);
            }
            if let Err(e) = s.join() {
                errors.push(format!("FUSE session: {e}"));
            }
        }
        if let Some(fs) = self.fs.take() {
            if let Err(e) = fs.shutdown() {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("scoutvm: unmounting '{}': {e}", self.dir.display());
        }
    }
}

/// `umount DIR`, falling back to a lazy detach when it is busy (the
/// session then ends when the last user lets go).
pub fn unmount_dir(dir: &Path) -> Result<(), String> {
    use nix::mount::{umount2, MntFlags};
    match umount2(dir, MntFlags::empty()) {
        Ok(()) => Ok(()),
        // already gone (e.g. unmounted by hand)
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => umount2(dir, MntFlags::MNT_DETACH)
            .map_err(|e| format!("cannot detach busy '{}': {e}", dir.display())),
        Err(e) => Err(format!("cannot unmount '{}': {e}", dir.display())),
    }
}

/// Serve `opener`'s volume on `dir` in the foreground until it is
/// unmounted (`umount DIR`, `fusermount -u DIR`) or the process gets
/// SIGINT, SIGTERM or SIGHUP (which unmount it); then close the volume
/// cleanly. `mounted` runs once the mount is in place.
pub fn run_foreground(
    opener: Opener,
    dir: &Path,
    opts: &FuseOptions,
    mounted: impl FnOnce(),
) -> Result<FsStatsSnapshot, String> {
    use nix::sys::signal::{SigSet, Signal};
    // Blocked before any thread starts, so every thread inherits the mask
    // and only the signal thread below takes them.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGHUP);
    sigs.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;

    let fs = FsThread::start(opener)?;
    let fuse = ScoutFuse::new(fs.submitter(), opts);
    let session = match Session::new(fuse, dir, &session_config(opts)) {
        Ok(s) => s,
        Err(e) => {
            let msg = mount_error(dir, e);
            return Err(match fs.shutdown() {
                Ok(()) => msg,
                Err(e2) => format!("{msg}; closing the volume failed too: {e2}"),
            });
        }
    };
    let sig_dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("scoutvm-signals".into())
        .spawn(move || {
            while let Ok(sig) = sigs.wait() {
                eprintln!("scoutvm: {sig}: unmounting {}", sig_dir.display());
                if let Err(e) = unmount_dir(&sig_dir) {
                    eprintln!("scoutvm: {e}");
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    mounted();
    let served = session.run();
    let stats = fs.stats();
    let closed = fs.shutdown();
    match (served, closed) {
        (Ok(()), Ok(())) => Ok(stats),
        (Err(e), Ok(())) => Err(format!(
            "FUSE session failed: {e} (the volume was closed cleanly)"
        )),
        (_, Err(e)) => Err(format!("closing the volume failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_parse_from_proc_status() {
        let s = "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 1000 \nNgid:\t0\n";
        assert_eq!(parse_groups(s), vec![4, 24, 1000]);
        assert_eq!(parse_groups("Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("Name:\tx\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("Groups:\t7 junk 8\n"), vec![7, 8]);
        // our own process is readable
        let own = proc_groups(std::process::id());
        assert!(own.len() <= GROUPS_MAX);
        assert!(proc_groups(0).is_empty());
    }

    #[test]
    fn xattr_answers_probe_fit_and_erange() {
        assert!(matches!(xattr_answer(b"abc", 0), XattrAnswer::Size(3)));
        assert!(matches!(xattr_answer(b"abc", 3), XattrAnswer::Data(b"abc")));
        assert!(matches!(
            xattr_answer(b"abc", 64),
            XattrAnswer::Data(b"abc")
        ));
        assert!(matches!(
            xattr_answer(b"abc", 2),
            XattrAnswer::Error(Errno::ERANGE)
        ));
        assert!(matches!(xattr_answer(b"", 0), XattrAnswer::Size(0)));
    }

    #[test]
    fn attrs_and_times_convert() {
        let a = Attr {
            ino: 77,
            mode: S_IFLNK | 0o777,
            nlink: 1,
            size: 5,
            mtime: Timespec {
                sec: 1_700_000_000,
                nsec: 5,
            },
            // a corrupt time far past SystemTime's range does not panic
            atime: Timespec {
                sec: u64::MAX,
                nsec: u32::MAX,
            },
            ..Attr::default()
        };
        let f = file_attr(&a);
        assert_eq!(f.ino, INodeNo(77));
        assert_eq!(f.kind, FileType::Symlink);
        assert_eq!(f.perm, 0o777);
        assert_eq!(timespec(f.mtime), a.mtime);
        assert_eq!(f.atime, UNIX_EPOCH);
        let before_1970 = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(timespec(before_1970), Timespec::default());
        for (m, k) in [
            (S_IFDIR, FileType::Directory),
            (S_IFREG, FileType::RegularFile),
            (S_IFIFO, FileType::NamedPipe),
            (S_IFCHR, FileType::CharDevice),
            (S_IFBLK, FileType::BlockDevice),
            (S_IFSOCK, FileType::Socket),
        ] {
            assert_eq!(kind_of_mode(m), k);
            assert_eq!(kind_of_dtype(dtype_of_mode(m)), k);
        }
    }

    #[test]
    fn file_handles_remember_the_access_mode() {
        for (flags, w) in [(O_RDONLY, false), (O_WRONLY, true), (O_RDWR, true)] {
            let n = 12345u64;
            let fh = FileHandle((n << 2) | flags as u64);
            assert_eq!(fh_writable(fh), w);
        }
        assert_eq!(open_flags(0o1000 | 0o2 | 0o100000), O_TRUNC | O_RDWR);
    }
}
