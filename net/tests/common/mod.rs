//! The host-side 9P test client: an in-memory duplex byte stream, a
//! server over a `Mount` on the in-memory backend, and a client that
//! speaks 9P2000.L to it with the codec. Everything runs on one executor
//! in virtual time (`Env::run`), so tests can keep several requests in
//! flight, block on locks and flush them deterministically.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::rc::Rc;

use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::runtime::env::{ManualClock, Timespec};
use scoutvm_fs::runtime::exec::{Executor, Handle, JoinHandle, Notify};
use scoutvm_fs::sim::mem_backend::{MemBackend, MemMkfs, MemStore};
use scoutvm_fs::storage::dev::MemDev;
use scoutvm_net::p9::wire::{self, Dirents, Qid, Rmsg, Tmsg, NOFID, NOTAG};
use scoutvm_net::p9::{serve, ByteStream, Peer, Server, ServerConfig, StreamClosed};

pub const NONUNAME: u32 = u32::MAX;
pub const MSIZE: u32 = 512 * 1024;

/// One direction of a pipe.
#[derive(Default)]
pub struct Half {
    buf: RefCell<VecDeque<u8>>,
    notify: Notify,
    closed: Cell<bool>,
    /// Writers wait while this many bytes are unread (0: no bound).
    pub capacity: Cell<usize>,
    drained: Notify,
}

impl Half {
    pub fn push(&self, b: &[u8]) -> bool {
        if self.closed.get() {
            return false;
        }
        self.buf.borrow_mut().extend(b.iter().copied());
        self.notify.notify();
        true
    }

    pub async fn pull(&self, buf: &mut [u8]) -> usize {
        loop {
            let n = self.notify.notified();
            {
                let mut q = self.buf.borrow_mut();
                if !q.is_empty() {
                    let k = q.len().min(buf.len());
                    for (i, b) in q.drain(..k).enumerate() {
                        buf[i] = b;
                    }
                    self.drained.notify();
                    return k;
                }
            }
            if self.closed.get() {
                return 0;
            }
            n.await;
        }
    }

    pub fn close(&self) {
        self.closed.set(true);
        self.notify.notify();
        self.drained.notify();
    }

    /// Wait until there is room under `capacity` (or the pipe closed).
    pub async fn wait_room(&self) {
        loop {
            let n = self.drained.notified();
            let cap = self.capacity.get();
            if cap == 0 || self.buf.borrow().len() < cap || self.closed.get() {
                return;
            }
            n.await;
        }
    }

    pub fn unread(&self) -> usize {
        self.buf.borrow().len()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }
}

/// Both directions: client to server and server to client.
#[derive(Default)]
pub struct Pipe {
    pub c2s: Half,
    pub s2c: Half,
}

/// The server's end of a pipe.
pub struct ServerEnd(pub Rc<Pipe>);

impl ByteStream for ServerEnd {
    async fn read(&self, buf: &mut [u8]) -> Result<usize, StreamClosed> {
        Ok(self.0.c2s.pull(buf).await)
    }

    async fn write_all(&self, buf: &[u8]) -> Result<(), StreamClosed> {
        self.0.s2c.wait_room().await;
        if self.0.s2c.push(buf) {
            Ok(())
        } else {
            Err(StreamClosed)
        }
    }

    fn close(&self) {
        self.0.s2c.close();
        self.0.c2s.close();
    }
}

/// An in-memory volume, a server over it, and the executor.
pub struct Env {
    pub ex: Executor,
    pub store: Rc<MemStore>,
    pub data: Rc<MemDev>,
    pub clock: Rc<ManualClock>,
    pub server: Rc<Server>,
}

impl Env {
    pub fn new() -> Env {
        Env::with(ServerConfig::default())
    }

    pub fn with(config: ServerConfig) -> Env {
        let ex = Executor::default();
        let mk = MemMkfs {
            data_blocks: 1 << 16,
            ..MemMkfs::default()
        };
        let data = Rc::new(MemDev::new(mk.data_blocks * 4096));
        let store = MemStore::mkfs(mk);
        let clock = Rc::new(ManualClock::new(Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        }));
        let backend = MemBackend::new(store.clone());
        let mount = ex
            .block_on(Mount::mount(
                backend,
                data.clone(),
                clock.clone(),
                MountOptions::default(),
            ))
            .expect("executor")
            .expect("mount");
        let server = Server::new(Rc::new(mount), ex.handle(), config);
        Env {
            ex,
            store,
            data,
            clock,
            server,
        }
    }

    pub fn handle(&self) -> Handle {
        self.ex.handle()
    }

    pub fn mount(&self) -> &Mount {
        self.server.mount()
    }

    /// Run `f` (and every server task) to completion in virtual time.
    pub fn run<F: Future>(&self, f: F) -> F::Output {
        self.ex
            .block_on(f)
            .expect("deadlock: nothing ready, no timer")
    }

    /// A new connection from `peer`, served by a task; the client is not
    /// versioned yet.
    pub fn connect_from(&self, addr: [u8; 4]) -> Client {
        let pipe = Rc::new(Pipe::default());
        let server = self.server.clone();
        let end = Rc::new(ServerEnd(pipe.clone()));
        let task = self
            .ex
            .spawn(serve(server, end, Peer { addr, port: 40000 }))
            .expect("spawn");
        Client {
            pipe,
            task: RefCell::new(Some(task)),
            next_tag: Cell::new(1),
            stash: RefCell::new(BTreeMap::new()),
            msize: Cell::new(MSIZE),
            h: self.handle(),
        }
    }

    pub fn connect(&self) -> Client {
        self.connect_from([10, 0, 2, 2])
    }

    /// Connected, versioned and attached as `uid` (fid 0 is the root).
    pub fn client_as(&self, uid: u32) -> Client {
        let c = self.connect();
        self.run(async {
            c.version(MSIZE).await;
            c.attach(0, b"", b"", uid).await.expect("attach");
        });
        c
    }
}

/// A reply frame.
pub struct Reply {
    pub frame: Vec<u8>,
}

impl Reply {
    pub fn tag(&self) -> u16 {
        u16::from_le_bytes([self.frame[5], self.frame[6]])
    }

    pub fn msg(&self) -> Rmsg<'_> {
        wire::decode_reply(&self.frame)
            .unwrap_or_else(|e| panic!("server sent an undecodable reply: {e}"))
            .1
    }

    /// `Err(errno)` for `Rlerror`.
    pub fn ok(&self) -> Result<Rmsg<'_>, Errno> {
        match self.msg() {
            Rmsg::Lerror { ecode } => Err(Errno(ecode as i32)),
            m => Ok(m),
        }
    }
}

/// The client side of one connection.
pub struct Client {
    pub pipe: Rc<Pipe>,
    pub task: RefCell<Option<JoinHandle<()>>>,
    next_tag: Cell<u16>,
    stash: RefCell<BTreeMap<u16, Reply>>,
    pub msize: Cell<u32>,
    h: Handle,
}

macro_rules! expect {
    ($r:expr, $pat:pat => $out:expr) => {
        match $r.ok() {
            Ok($pat) => Ok($out),
            Ok(other) => panic!("unexpected reply {other:?}"),
            Err(e) => Err(e),
        }
    };
}

impl Client {
    pub fn tag(&self) -> u16 {
        let t = self.next_tag.get();
        self.next_tag.set(if t >= 60000 { 1 } else { t + 1 });
        t
    }

    pub fn send_raw(&self, bytes: &[u8]) {
        self.pipe.c2s.push(bytes);
    }

    pub fn send(&self, tag: u16, msg: &Tmsg<'_>) {
        let mut out = Vec::new();
        msg.encode(tag, &mut out).expect("encode request");
        self.send_raw(&out);
    }

    /// Close our side (the server sees end of stream).
    pub fn hang_up(&self) {
        self.pipe.c2s.close();
    }

    /// Has the server closed the connection (and sent everything)?
    pub fn server_closed(&self) -> bool {
        self.pipe.s2c.is_closed() && self.pipe.s2c.buf.borrow().is_empty()
    }

    /// The next reply frame in arrival order; `None` when the server
    /// closed the connection.
    pub async fn recv_any(&self) -> Option<Reply> {
        let mut head = [0u8; 4];
        if !self.read_exact(&mut head).await {
            return None;
        }
        let size = u32::from_le_bytes(head) as usize;
        assert!(size >= 7, "reply size {size}");
        let mut frame = head.to_vec();
        frame.resize(size, 0);
        assert!(self.read_exact(&mut frame[4..]).await, "truncated reply");
        Some(Reply { frame })
    }

    async fn read_exact(&self, buf: &mut [u8]) -> bool {
        let mut done = 0;
        while done < buf.len() {
            let n = self.pipe.s2c.pull(&mut buf[done..]).await;
            if n == 0 {
                return false;
            }
            done += n;
        }
        true
    }

    /// The reply to `tag` (others are kept for later).
    pub async fn recv(&self, tag: u16) -> Reply {
        if let Some(r) = self.stash.borrow_mut().remove(&tag) {
            return r;
        }
        loop {
            let r = self
                .recv_any()
                .await
                .unwrap_or_else(|| panic!("connection closed waiting for tag {tag}"));
            if r.tag() == tag {
                return r;
            }
            let old = self.stash.borrow_mut().insert(r.tag(), r);
            assert!(old.is_none(), "two replies with one tag");
        }
    }

    /// Has a reply to `tag` arrived (after running what is ready)?
    pub fn has_reply(&self, tag: u16) -> bool {
        if self.stash.borrow().contains_key(&tag) {
            return true;
        }
        // Move whole frames from the pipe into the stash.
        loop {
            let q = self.pipe.s2c.buf.borrow();
            if q.len() < 4 {
                break;
            }
            let size = u32::from_le_bytes([q[0], q[1], q[2], q[3]]) as usize;
            if q.len() < size {
                break;
            }
            drop(q);
            let frame: Vec<u8> = self.pipe.s2c.buf.borrow_mut().drain(..size).collect();
            let r = Reply { frame };
            self.stash.borrow_mut().insert(r.tag(), r);
        }
        self.stash.borrow().contains_key(&tag)
    }

    pub async fn rpc(&self, msg: Tmsg<'_>) -> Reply {
        let tag = self.tag();
        self.send(tag, &msg);
        self.recv(tag).await
    }

    /// Let the server run for `ns` of virtual time.
    pub async fn sleep(&self, ns: u64) {
        self.h.sleep_ns(ns).await;
    }

    // -- typed calls -----------------------------------------------------

    pub async fn version(&self, msize: u32) -> (u32, Vec<u8>) {
        let mut out = Vec::new();
        Tmsg::Version {
            msize,
            version: wire::VERSION_9P2000_L,
        }
        .encode(NOTAG, &mut out)
        .unwrap();
        self.send_raw(&out);
        let r = self.recv(NOTAG).await;
        match r.msg() {
            Rmsg::Version { msize, version } => {
                self.msize.set(msize);
                (msize, version.to_vec())
            }
            m => panic!("version: {m:?}"),
        }
    }

    pub async fn attach(
        &self,
        fid: u32,
        uname: &[u8],
        aname: &[u8],
        uid: u32,
    ) -> Result<Qid, Errno> {
        let r = self
            .rpc(Tmsg::Attach {
                fid,
                afid: NOFID,
                uname,
                aname,
                n_uname: uid,
            })
            .await;
        expect!(r, Rmsg::Attach { qid } => qid)
    }

    pub async fn walk(&self, fid: u32, newfid: u32, names: &[&str]) -> Result<Vec<Qid>, Errno> {
        let wnames: Vec<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
        let r = self
            .rpc(Tmsg::Walk {
                fid,
                newfid,
                wnames,
            })
            .await;
        expect!(r, Rmsg::Walk { qids } => qids)
    }

    /// Walk a slash-separated path from `fid` (the whole path must exist).
    pub async fn walk_path(&self, fid: u32, newfid: u32, path: &str) -> Result<Qid, Errno> {
        let names: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let qids = self.walk(fid, newfid, &names).await?;
        if qids.len() != names.len() {
            return Err(Errno::ENOENT);
        }
        Ok(qids.last().copied().unwrap_or_default())
    }

    pub async fn lopen(&self, fid: u32, flags: u32) -> Result<(Qid, u32), Errno> {
        let r = self.rpc(Tmsg::Lopen { fid, flags }).await;
        expect!(r, Rmsg::Lopen { qid, iounit } => (qid, iounit))
    }

    pub async fn lcreate(
        &self,
        fid: u32,
        name: &str,
        flags: u32,
        mode: u32,
        gid: u32,
    ) -> Result<Qid, Errno> {
        let r = self
            .rpc(Tmsg::Lcreate {
                fid,
                name: name.as_bytes(),
                flags,
                mode,
                gid,
            })
            .await;
        expect!(r, Rmsg::Lcreate { qid, .. } => qid)
    }

    /// Walk `dir` from fid 0 into `fid`, create `name` there, opened
    /// read-write.
    pub async fn create_file(
        &self,
        fid: u32,
        dir: &str,
        name: &str,
        mode: u32,
    ) -> Result<Qid, Errno> {
        self.walk_path(0, fid, dir).await?;
        self.lcreate(fid, name, 2, mode, 0).await
    }

    pub async fn mkdir(&self, dfid: u32, name: &str, mode: u32, gid: u32) -> Result<Qid, Errno> {
        let r = self
            .rpc(Tmsg::Mkdir {
                dfid,
                name: name.as_bytes(),
                mode,
                gid,
            })
            .await;
        expect!(r, Rmsg::Mkdir { qid } => qid)
    }

    pub async fn read(&self, fid: u32, offset: u64, count: u32) -> Result<Vec<u8>, Errno> {
        let r = self.rpc(Tmsg::Read { fid, offset, count }).await;
        expect!(r, Rmsg::Read { data } => data.to_vec())
    }

    pub async fn write(&self, fid: u32, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let r = self
            .rpc(Tmsg::Write {
                fid,
                offset,
                data: wire::Data(data),
            })
            .await;
        expect!(r, Rmsg::Write { count } => count)
    }

    /// Read a whole file through an open fid.
    pub async fn read_all(&self, fid: u32) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        loop {
            let chunk = self.read(fid, out.len() as u64, 65536).await?;
            if chunk.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
        }
    }

    pub async fn clunk(&self, fid: u32) -> Result<(), Errno> {
        let r = self.rpc(Tmsg::Clunk { fid }).await;
        expect!(r, Rmsg::Clunk {} => ())
    }

    pub async fn remove(&self, fid: u32) -> Result<(), Errno> {
        let r = self.rpc(Tmsg::Remove { fid }).await;
        expect!(r, Rmsg::Remove {} => ())
    }

    pub async fn getattr(&self, fid: u32) -> Result<Getattr, Errno> {
        let r = self
            .rpc(Tmsg::Getattr {
                fid,
                request_mask: wire::GetattrMask::ALL,
            })
            .await;
        expect!(r, Rmsg::Getattr { qid, mode, uid, gid, nlink, size, blocks, mtime_sec, mtime_nsec, atime_sec, rdev, valid, .. } =>
            Getattr { qid, mode, uid, gid, nlink, size, blocks, mtime: (mtime_sec, mtime_nsec), atime_sec, rdev, valid: valid.0 })
    }

    pub async fn unlinkat(&self, dirfd: u32, name: &str, flags: u32) -> Result<(), Errno> {
        let r = self
            .rpc(Tmsg::Unlinkat {
                dirfd,
                name: name.as_bytes(),
                flags,
            })
            .await;
        expect!(r, Rmsg::Unlinkat {} => ())
    }

    /// All entries of an open directory fid, `count` bytes per request:
    /// (name, qid path, type, offset).
    pub async fn readdir_all(
        &self,
        fid: u32,
        count: u32,
    ) -> Result<Vec<(String, u64, u8, u64)>, Errno> {
        let mut out = Vec::new();
        let mut off = 0;
        loop {
            let page = self.readdir(fid, off, count).await?;
            if page.is_empty() {
                return Ok(out);
            }
            off = page.last().unwrap().3;
            out.extend(page);
        }
    }

    pub async fn readdir(
        &self,
        fid: u32,
        offset: u64,
        count: u32,
    ) -> Result<Vec<(String, u64, u8, u64)>, Errno> {
        let r = self.rpc(Tmsg::Readdir { fid, offset, count }).await;
        expect!(r, Rmsg::Readdir { data } => Dirents::new(&data)
            .map(|d| {
                let d = d.expect("well-formed dirent");
                (String::from_utf8(d.name.to_vec()).unwrap(), d.qid.path, d.ty, d.offset)
            })
            .collect())
    }

    pub async fn xattr_set(
        &self,
        fid: u32,
        newfid: u32,
        name: &str,
        value: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        self.walk(fid, newfid, &[]).await?;
        let r = self
            .rpc(Tmsg::Xattrcreate {
                fid: newfid,
                name: name.as_bytes(),
                attr_size: value.len() as u64,
                flags,
            })
            .await;
        if let Err(e) = expect!(r, Rmsg::Xattrcreate {} => ()) {
            self.clunk(newfid)
                .await
                .expect("clunk after failed xattrcreate");
            return Err(e);
        }
        if !value.is_empty() {
            self.write(newfid, 0, value).await?;
        }
        self.clunk(newfid).await
    }

    pub async fn xattr_get(&self, fid: u32, newfid: u32, name: &str) -> Result<Vec<u8>, Errno> {
        let r = self
            .rpc(Tmsg::Xattrwalk {
                fid,
                newfid,
                name: name.as_bytes(),
            })
            .await;
        let size = expect!(r, Rmsg::Xattrwalk { size } => size)?;
        let v = self.read(newfid, 0, size as u32).await?;
        assert_eq!(v.len() as u64, size);
        self.clunk(newfid).await?;
        Ok(v)
    }
}

/// The fields of `Rgetattr` tests look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Getattr {
    pub qid: Qid,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
    pub blocks: u64,
    pub mtime: (u64, u64),
    pub atime_sec: u64,
    pub rdev: u64,
    pub valid: u64,
}
