//! The FUSE server in process over an in-memory volume: `INIT`
//! negotiation, the file operations a kernel client sends, lookup counts
//! and `FORGET`, replies out of request order, `INTERRUPT`, bounds, and
//! random and mutated messages (never a panic, every reply well-formed).
//! Runs in virtual time on one executor (no timing assertions).

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use common::{Pipe, ServerEnd};
use proptest::prelude::*;
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::runtime::env::{ManualClock, Timespec};
use scoutvm_fs::runtime::exec::{Executor, JoinHandle};
use scoutvm_fs::sim::mem_backend::{MemBackend, MemMkfs};
use scoutvm_fs::storage::dev::MemDev;
use scoutvm_net::fuse::wire::{self, init_flags, op, OutHeader};
use scoutvm_net::fuse::{serve, Conn, Server, ServerConfig};
use scoutvm_net::p9::access::AllowList;
use scoutvm_net::p9::Peer;

const ROOT: u64 = 1;
const ALL_FLAGS: u32 = init_flags::ASYNC_READ
    | init_flags::POSIX_LOCKS
    | init_flags::BIG_WRITES
    | init_flags::DO_READDIRPLUS
    | init_flags::MAX_PAGES
    | (1 << 16); // WRITEBACK_CACHE: asked for, never granted

struct Env {
    ex: Executor,
    server: Rc<Server>,
}

impl Env {
    fn new() -> Env {
        Env::with(ServerConfig::default())
    }

    fn with(config: ServerConfig) -> Env {
        let ex = Executor::default();
        let mk = MemMkfs {
            data_blocks: 1 << 14,
            ..MemMkfs::default()
        };
        let data = Rc::new(MemDev::new(mk.data_blocks * 4096));
        let store = scoutvm_fs::sim::mem_backend::MemStore::mkfs(mk);
        let clock = Rc::new(ManualClock::new(Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        }));
        let mount = ex
            .block_on(Mount::mount(
                MemBackend::new(store),
                data,
                clock,
                MountOptions::default(),
            ))
            .expect("executor")
            .expect("mount");
        let server = Server::new(Rc::new(mount), ex.handle(), config);
        Env { ex, server }
    }

    fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        self.ex
            .block_on(f)
            .expect("deadlock: nothing ready, no timer")
    }

    fn connect_from(&self, addr: [u8; 4]) -> Client {
        let pipe = Rc::new(Pipe::default());
        let end = Rc::new(ServerEnd(pipe.clone()));
        let task = self
            .ex
            .spawn(serve(self.server.clone(), end, Peer { addr, port: 40000 }))
            .expect("spawn");
        Client {
            pipe,
            task: RefCell::new(Some(task)),
            next: Cell::new(1),
            stash: RefCell::new(BTreeMap::new()),
            uid: Cell::new(0),
        }
    }

    /// Connected and initialised.
    fn client(&self) -> Client {
        let c = self.connect_from([10, 0, 2, 2]);
        self.run(async {
            let r = c.init(7, 31, ALL_FLAGS).await.expect("init");
            assert_eq!(r.minor, 31);
        });
        c
    }

    fn close(&self, c: &Client) {
        c.pipe.c2s.close();
        if let Some(t) = c.task.borrow_mut().take() {
            self.run(t);
        }
    }
}

/// A reply, checked well-formed on arrival.
struct Reply {
    error: i32,
    body: Vec<u8>,
}

#[derive(Debug)]
struct InitOut {
    major: u32,
    minor: u32,
    max_readahead: u32,
    flags: u32,
    max_write: u32,
}

#[derive(Debug, Clone, Copy)]
struct FAttr {
    ino: u64,
    size: u64,
    mode: u32,
    nlink: u32,
    uid: u32,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn attr_at(b: &[u8], o: usize) -> FAttr {
    FAttr {
        ino: u64_at(b, o),
        size: u64_at(b, o + 8),
        mode: u32_at(b, o + 60),
        nlink: u32_at(b, o + 64),
        uid: u32_at(b, o + 68),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Dirent {
    ino: u64,
    off: u64,
    ty: u32,
    name: Vec<u8>,
    /// READDIRPLUS: the entry's node id.
    nodeid: Option<u64>,
}

fn parse_dirents(b: &[u8], plus: bool) -> Vec<Dirent> {
    let mut out = Vec::new();
    let mut o = 0;
    while o < b.len() {
        let nodeid = if plus {
            let n = u64_at(b, o);
            o += wire::ENTRY_OUT_LEN;
            Some(n)
        } else {
            None
        };
        let namelen = u32_at(b, o + 16) as usize;
        out.push(Dirent {
            ino: u64_at(b, o),
            off: u64_at(b, o + 8),
            ty: u32_at(b, o + 20),
            name: b[o + 24..o + 24 + namelen].to_vec(),
            nodeid,
        });
        o += wire::dirent_size(namelen);
    }
    assert_eq!(o, b.len(), "dirents padded to the reply's end");
    out
}

fn names(d: &[Dirent]) -> Vec<String> {
    d.iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn le32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn le64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn read_in(fh: u64, off: u64, size: u32) -> Vec<u8> {
    let mut b = Vec::new();
    le64(&mut b, fh);
    le64(&mut b, off);
    le32(&mut b, size);
    b.resize(40, 0);
    b
}

fn lk_in(fh: u64, owner: u64, start: u64, end: u64, ty: u32) -> Vec<u8> {
    let mut b = Vec::new();
    le64(&mut b, fh);
    le64(&mut b, owner);
    le64(&mut b, start);
    le64(&mut b, end);
    le32(&mut b, ty);
    le32(&mut b, 77);
    le32(&mut b, 0);
    le32(&mut b, 0);
    b
}

struct Client {
    pipe: Rc<Pipe>,
    task: RefCell<Option<JoinHandle<()>>>,
    next: Cell<u64>,
    stash: RefCell<BTreeMap<u64, Reply>>,
    uid: Cell<u32>,
}

impl Client {
    fn send(&self, opcode: u32, nodeid: u64, body: &[u8]) -> u64 {
        let u = self.next.get();
        self.next.set(u + 1);
        let uid = self.uid.get();
        self.pipe
            .c2s
            .push(&wire::encode_request(opcode, u, nodeid, uid, uid, body));
        u
    }

    /// The next reply frame; `None` once the server closed.
    async fn recv_any(&self) -> Option<(u64, Reply)> {
        let mut head = [0u8; 16];
        if !self.read_exact(&mut head).await {
            return None;
        }
        let h = OutHeader::decode(&head).unwrap();
        assert!(h.len as usize >= 16, "reply len {}", h.len);
        assert!(h.error <= 0 && h.error > -4096, "error {}", h.error);
        let mut body = vec![0u8; h.len as usize - 16];
        assert!(self.read_exact(&mut body).await, "truncated reply");
        if h.error != 0 {
            assert!(body.is_empty(), "an error reply carries no body");
        }
        Some((
            h.unique,
            Reply {
                error: h.error,
                body,
            },
        ))
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

    async fn recv(&self, unique: u64) -> Reply {
        if let Some(r) = self.stash.borrow_mut().remove(&unique) {
            return r;
        }
        loop {
            let (u, r) = self
                .recv_any()
                .await
                .unwrap_or_else(|| panic!("closed waiting for {unique}"));
            if u == unique {
                return r;
            }
            assert!(
                self.stash.borrow_mut().insert(u, r).is_none(),
                "two replies to {u}"
            );
        }
    }

    async fn call(&self, opcode: u32, nodeid: u64, body: &[u8]) -> Result<Vec<u8>, Errno> {
        let u = self.send(opcode, nodeid, body);
        let r = self.recv(u).await;
        if r.error != 0 {
            return Err(Errno(-r.error));
        }
        Ok(r.body)
    }

    async fn init(&self, major: u32, minor: u32, flags: u32) -> Result<InitOut, Errno> {
        let mut b = Vec::new();
        le32(&mut b, major);
        le32(&mut b, minor);
        le32(&mut b, 256 * 1024);
        le32(&mut b, flags);
        b.resize(64, 0);
        let r = self.call(op::INIT, 0, &b).await?;
        assert!(r.len() == wire::INIT_OUT_LEN || r.len() == wire::INIT_OUT_COMPAT_LEN);
        Ok(InitOut {
            major: u32_at(&r, 0),
            minor: u32_at(&r, 4),
            max_readahead: u32_at(&r, 8),
            flags: u32_at(&r, 12),
            max_write: u32_at(&r, 20),
        })
    }

    async fn entry(&self, opcode: u32, dir: u64, body: &[u8]) -> Result<FAttr, Errno> {
        let r = self.call(opcode, dir, body).await?;
        assert_eq!(r.len(), wire::ENTRY_OUT_LEN);
        assert_eq!(u64_at(&r, 0), u64_at(&r, 40), "node id is the inode");
        Ok(attr_at(&r, 40))
    }

    async fn lookup(&self, dir: u64, name: &str) -> Result<FAttr, Errno> {
        self.entry(op::LOOKUP, dir, &cstr(name)).await
    }

    async fn mkdir(&self, dir: u64, name: &str, mode: u32) -> Result<FAttr, Errno> {
        let mut b = Vec::new();
        le32(&mut b, mode);
        le32(&mut b, 0);
        b.extend(cstr(name));
        self.entry(op::MKDIR, dir, &b).await
    }

    async fn create(
        &self,
        dir: u64,
        name: &str,
        flags: u32,
        mode: u32,
    ) -> Result<(FAttr, u64), Errno> {
        let mut b = Vec::new();
        le32(&mut b, flags);
        le32(&mut b, mode);
        le32(&mut b, 0);
        le32(&mut b, 0);
        b.extend(cstr(name));
        let r = self.call(op::CREATE, dir, &b).await?;
        assert_eq!(r.len(), wire::ENTRY_OUT_LEN + wire::OPEN_OUT_LEN);
        Ok((attr_at(&r, 40), u64_at(&r, wire::ENTRY_OUT_LEN)))
    }

    async fn open(&self, node: u64, flags: u32, dir: bool) -> Result<u64, Errno> {
        let mut b = Vec::new();
        le32(&mut b, flags);
        le32(&mut b, 0);
        let opc = if dir { op::OPENDIR } else { op::OPEN };
        let r = self.call(opc, node, &b).await?;
        assert_eq!(r.len(), wire::OPEN_OUT_LEN);
        Ok(u64_at(&r, 0))
    }

    async fn release(&self, node: u64, fh: u64, dir: bool) -> Result<(), Errno> {
        let mut b = Vec::new();
        le64(&mut b, fh);
        b.resize(24, 0);
        let opc = if dir { op::RELEASEDIR } else { op::RELEASE };
        self.call(opc, node, &b)
            .await
            .map(|r| assert!(r.is_empty()))
    }

    async fn write(&self, node: u64, fh: u64, off: u64, data: &[u8]) -> Result<u32, Errno> {
        let mut b = Vec::new();
        le64(&mut b, fh);
        le64(&mut b, off);
        le32(&mut b, data.len() as u32);
        b.resize(40, 0);
        b.extend_from_slice(data);
        let r = self.call(op::WRITE, node, &b).await?;
        assert_eq!(r.len(), 8);
        Ok(u32_at(&r, 0))
    }

    async fn read(&self, node: u64, fh: u64, off: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.call(op::READ, node, &read_in(fh, off, size)).await
    }

    async fn readdir(
        &self,
        node: u64,
        fh: u64,
        off: u64,
        size: u32,
        plus: bool,
    ) -> Result<Vec<Dirent>, Errno> {
        let opc = if plus { op::READDIRPLUS } else { op::READDIR };
        let r = self.call(opc, node, &read_in(fh, off, size)).await?;
        assert!(
            r.len() <= size as usize,
            "readdir reply over the asked size"
        );
        Ok(parse_dirents(&r, plus))
    }

    /// Every entry of a directory, in as many calls as `size` needs.
    async fn list(&self, node: u64, size: u32, plus: bool) -> Vec<Dirent> {
        let fh = self.open(node, 0, true).await.expect("opendir");
        let mut all = Vec::new();
        let mut off = 0;
        loop {
            let batch = self
                .readdir(node, fh, off, size, plus)
                .await
                .expect("readdir");
            let Some(last) = batch.last() else { break };
            off = last.off;
            all.extend(batch);
        }
        self.release(node, fh, true).await.expect("releasedir");
        all
    }

    async fn lseek(&self, node: u64, fh: u64, off: u64, whence: u32) -> Result<u64, Errno> {
        let mut b = Vec::new();
        le64(&mut b, fh);
        le64(&mut b, off);
        le32(&mut b, whence);
        le32(&mut b, 0);
        let r = self.call(op::LSEEK, node, &b).await?;
        assert_eq!(r.len(), wire::LSEEK_OUT_LEN);
        Ok(u64_at(&r, 0))
    }

    async fn getattr(&self, node: u64) -> Result<FAttr, Errno> {
        let r = self.call(op::GETATTR, node, &[0u8; 16]).await?;
        assert_eq!(r.len(), wire::ATTR_OUT_LEN);
        Ok(attr_at(&r, 16))
    }

    async fn setattr(
        &self,
        node: u64,
        valid: u32,
        fh: u64,
        size: u64,
        mode: u32,
    ) -> Result<FAttr, Errno> {
        let mut b = Vec::new();
        le32(&mut b, valid);
        le32(&mut b, 0);
        le64(&mut b, fh);
        le64(&mut b, size);
        b.resize(68, 0);
        le32(&mut b, mode);
        b.resize(88, 0);
        let r = self.call(op::SETATTR, node, &b).await?;
        Ok(attr_at(&r, 16))
    }

    async fn name_op(&self, opcode: u32, dir: u64, name: &str) -> Result<(), Errno> {
        self.call(opcode, dir, &cstr(name)).await.map(|_| ())
    }

    async fn rename2(
        &self,
        dir: u64,
        old: &str,
        newdir: u64,
        new: &str,
        flags: u32,
    ) -> Result<(), Errno> {
        let mut b = Vec::new();
        le64(&mut b, newdir);
        le32(&mut b, flags);
        le32(&mut b, 0);
        b.extend(cstr(old));
        b.extend(cstr(new));
        self.call(op::RENAME2, dir, &b).await.map(|_| ())
    }

    async fn setxattr(&self, node: u64, name: &str, value: &[u8], flags: u32) -> Result<(), Errno> {
        let mut b = Vec::new();
        le32(&mut b, value.len() as u32);
        le32(&mut b, flags);
        b.extend(cstr(name));
        b.extend_from_slice(value);
        self.call(op::SETXATTR, node, &b).await.map(|_| ())
    }

    async fn getxattr(&self, node: u64, name: &str, size: u32) -> Result<Vec<u8>, Errno> {
        let mut b = Vec::new();
        le32(&mut b, size);
        le32(&mut b, 0);
        b.extend(cstr(name));
        self.call(op::GETXATTR, node, &b).await
    }

    async fn listxattr(&self, node: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let mut b = Vec::new();
        le32(&mut b, size);
        le32(&mut b, 0);
        self.call(op::LISTXATTR, node, &b).await
    }
}

#[test]
fn init_negotiates_down_and_gates_requests() {
    let env = Env::new();
    let c = env.connect_from([10, 0, 2, 2]);
    env.run(async {
        // Before INIT nothing is served.
        assert_eq!(c.getattr(ROOT).await.unwrap_err(), Errno::EIO);
        // Too old a protocol.
        assert_eq!(c.init(7, 5, 0).await.unwrap_err(), Errno::EPROTO);
        // A newer major: we answer with ours (the kernel retries).
        let r = c.init(8, 0, 0).await.unwrap();
        assert_eq!(r.major, 7);
        // A newer minor is negotiated down; flags are the intersection.
        let r = c.init(7, 40, ALL_FLAGS).await.unwrap();
        assert_eq!((r.major, r.minor), (7, 31));
        assert_eq!(r.flags & (1 << 16), 0, "no writeback cache");
        assert_ne!(r.flags & init_flags::POSIX_LOCKS, 0);
        assert_eq!(r.max_write, ServerConfig::default().max_write);
        assert_eq!(r.max_readahead, 256 * 1024);
        assert_eq!(c.getattr(ROOT).await.unwrap().mode & 0o170000, 0o040000);
        // Re-INIT without max_pages: the kernel's 32-page bound.
        let r = c.init(7, 26, init_flags::ASYNC_READ).await.unwrap();
        assert_eq!((r.minor, r.max_write), (26, 128 * 1024));
        assert_eq!(r.flags, init_flags::ASYNC_READ);
        // An old minor gets the short init_out.
        let r = c.init(7, 22, 0).await.unwrap();
        assert_eq!(r.minor, 22);
    });
    env.close(&c);
    assert_eq!(env.server.connection_count(), 0);
}

#[test]
fn files_directories_links_and_xattrs() {
    let env = Env::new();
    let c = env.client();
    env.run(async {
        let d = c.mkdir(ROOT, "d", 0o755).await.unwrap();
        assert_eq!(d.mode, 0o040755);
        assert_eq!(c.mkdir(ROOT, "d", 0o755).await.unwrap_err(), Errno::EEXIST);
        let (f, fh) = c.create(d.ino, "f", 2 /* O_RDWR */, 0o644).await.unwrap();
        assert_eq!(f.mode, 0o100644);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(c.write(f.ino, fh, 0, &data).await.unwrap(), 200_000);
        assert_eq!(c.read(f.ino, fh, 0, 300_000).await.unwrap(), data);
        assert_eq!(c.read(f.ino, fh, 100, 10).await.unwrap(), &data[100..110]);
        assert!(c.read(f.ino, fh, 500_000, 10).await.unwrap().is_empty());
        assert_eq!(c.getattr(f.ino).await.unwrap().size, 200_000);
        // A handle is for its own node.
        assert_eq!(c.read(d.ino, fh, 0, 10).await.unwrap_err(), Errno::EBADF);
        // lseek: data from an offset inside, a hole at the end.
        let (hole, data_) = (wire::SEEK_HOLE, wire::SEEK_DATA);
        assert_eq!(c.lseek(f.ino, fh, 10, hole).await.unwrap(), 200_000);
        assert_eq!(c.lseek(f.ino, fh, 10, data_).await.unwrap(), 10);
        assert_eq!(
            c.lseek(f.ino, fh, 300_000, data_).await.unwrap_err(),
            Errno::ENXIO
        );
        // A sparse file: data at [0, 4K) and [1M, 1M+4K), holes between.
        let (sp, sfh) = c.create(ROOT, "sparse", 2, 0o644).await.unwrap();
        c.write(sp.ino, sfh, 0, &[1u8; 4096]).await.unwrap();
        c.write(sp.ino, sfh, 1 << 20, &[2u8; 4096]).await.unwrap();
        assert_eq!(c.lseek(sp.ino, sfh, 0, hole).await.unwrap(), 4096);
        assert_eq!(c.lseek(sp.ino, sfh, 100, data_).await.unwrap(), 100);
        assert_eq!(c.lseek(sp.ino, sfh, 5000, data_).await.unwrap(), 1 << 20);
        assert_eq!(c.lseek(sp.ino, sfh, 5000, hole).await.unwrap(), 5000);
        assert_eq!(
            c.lseek(sp.ino, sfh, (1 << 20) + 10, hole).await.unwrap(),
            (1 << 20) + 4096
        );
        assert_eq!(c.lseek(sp.ino, sfh, 0, 7).await.unwrap_err(), Errno::EINVAL);
        // A hole at the end: past the last extent data is gone.
        c.setattr(sp.ino, (1 << 3) | (1 << 6), sfh, 3 << 20, 0)
            .await
            .unwrap();
        assert_eq!(
            c.lseek(sp.ino, sfh, (1 << 20) + 8192, data_)
                .await
                .unwrap_err(),
            Errno::ENXIO
        );
        assert_eq!(
            c.lseek(sp.ino, sfh, (1 << 20) + 8192, hole).await.unwrap(),
            (1 << 20) + 8192
        );
        c.release(sp.ino, sfh, false).await.unwrap();
        // fallocate past the end grows the file.
        let mut b = Vec::new();
        le64(&mut b, fh);
        le64(&mut b, 200_000);
        le64(&mut b, 4096);
        le32(&mut b, 0);
        le32(&mut b, 0);
        c.call(op::FALLOCATE, f.ino, &b).await.unwrap();
        assert_eq!(c.getattr(f.ino).await.unwrap().size, 204_096);
        // ftruncate and chmod through SETATTR.
        let fattr_size_fh = (1 << 3) | (1 << 6);
        assert_eq!(
            c.setattr(f.ino, fattr_size_fh, fh, 5, 0)
                .await
                .unwrap()
                .size,
            5
        );
        assert_eq!(
            c.setattr(f.ino, 1, 0, 0, 0o600).await.unwrap().mode,
            0o100600
        );
        assert_eq!(c.read(f.ino, fh, 0, 100).await.unwrap(), &data[..5]);
        c.release(f.ino, fh, false).await.unwrap();
        assert_eq!(c.read(f.ino, fh, 0, 1).await.unwrap_err(), Errno::EBADF);

        // A read-only handle refuses writes.
        let ro = c.open(f.ino, 0, false).await.unwrap();
        assert_eq!(c.write(f.ino, ro, 0, b"x").await.unwrap_err(), Errno::EBADF);
        c.release(f.ino, ro, false).await.unwrap();
        // O_APPEND writes land at the end.
        let ap = c.open(f.ino, 1 | 0o2000, false).await.unwrap();
        assert_eq!(c.write(f.ino, ap, 0, b"tail").await.unwrap(), 4);
        c.release(f.ino, ap, false).await.unwrap();
        assert_eq!(c.getattr(f.ino).await.unwrap().size, 9);
        // CREATE without O_EXCL of an existing name opens it (O_TRUNC).
        let (again, fh2) = c.create(d.ino, "f", 2 | 0o1000, 0o644).await.unwrap();
        assert_eq!((again.ino, again.size), (f.ino, 0));
        c.release(f.ino, fh2, false).await.unwrap();
        assert_eq!(
            c.create(d.ino, "f", 2 | 0o200, 0o644).await.unwrap_err(),
            Errno::EEXIST
        );

        // Symlink, readlink, hard link.
        let mut b = cstr("s");
        b.extend(cstr("f"));
        let s = c.entry(op::SYMLINK, d.ino, &b).await.unwrap();
        assert_eq!(s.mode & 0o170000, 0o120000);
        assert_eq!(c.call(op::READLINK, s.ino, &[]).await.unwrap(), b"f");
        let mut b = f.ino.to_le_bytes().to_vec();
        b.extend(cstr("hard"));
        let l = c.entry(op::LINK, ROOT, &b).await.unwrap();
        assert_eq!((l.ino, l.nlink), (f.ino, 2));

        // Directory listing, small buffers force several calls.
        for i in 0..30 {
            let (_, h) = c
                .create(d.ino, &format!("n{i:02}"), 1, 0o600)
                .await
                .unwrap();
            let node = c.lookup(d.ino, &format!("n{i:02}")).await.unwrap().ino;
            c.release(node, h, false).await.unwrap();
        }
        let all = c.list(d.ino, 200, false).await;
        let n = names(&all);
        assert_eq!(&n[..2], [".", ".."]);
        assert_eq!(n.len(), 2 + 2 + 30);
        assert!(n.contains(&"s".to_string()) && n.contains(&"n29".to_string()));
        let plus = c.list(d.ino, 700, true).await;
        assert_eq!(names(&plus), n);
        for e in &plus {
            assert_eq!(e.nodeid, Some(e.ino));
        }
        // A buffer too small for one entry is refused, not "end".
        let fh = c.open(d.ino, 0, true).await.unwrap();
        assert_eq!(
            c.readdir(d.ino, fh, 0, 10, false).await.unwrap_err(),
            Errno::EINVAL
        );
        c.release(d.ino, fh, true).await.unwrap();

        // Rename, exchange, noreplace.
        c.rename2(d.ino, "n00", ROOT, "moved", 0).await.unwrap();
        assert_eq!(c.lookup(d.ino, "n00").await.unwrap_err(), Errno::ENOENT);
        c.lookup(ROOT, "moved").await.unwrap();
        assert_eq!(
            c.rename2(d.ino, "n01", ROOT, "moved", 1).await.unwrap_err(),
            Errno::EEXIST
        );
        let a = c.lookup(d.ino, "n01").await.unwrap().ino;
        c.rename2(d.ino, "n01", ROOT, "moved", 2).await.unwrap();
        assert_eq!(c.lookup(ROOT, "moved").await.unwrap().ino, a);
        let mut b = d.ino.to_le_bytes().to_vec();
        b.extend(cstr("moved"));
        b.extend(cstr("plain"));
        c.call(op::RENAME, ROOT, &b).await.unwrap();
        assert_eq!(c.lookup(d.ino, "plain").await.unwrap().ino, a);

        // Xattrs: set, size query, value, list, ERANGE, remove.
        c.setxattr(f.ino, "user.k", b"value", 0).await.unwrap();
        assert_eq!(
            c.setxattr(f.ino, "user.k", b"v", 1).await.unwrap_err(),
            Errno::EEXIST
        );
        assert_eq!(u32_at(&c.getxattr(f.ino, "user.k", 0).await.unwrap(), 0), 5);
        assert_eq!(c.getxattr(f.ino, "user.k", 64).await.unwrap(), b"value");
        assert_eq!(
            c.getxattr(f.ino, "user.k", 2).await.unwrap_err(),
            Errno::ERANGE
        );
        assert_eq!(c.listxattr(f.ino, 64).await.unwrap(), b"user.k\0");
        c.name_op(op::REMOVEXATTR, f.ino, "user.k").await.unwrap();
        assert_eq!(
            c.getxattr(f.ino, "user.k", 64).await.unwrap_err(),
            Errno::ENODATA
        );

        // Unlink, rmdir, statfs, access, mknod, unknown opcodes.
        c.name_op(op::UNLINK, ROOT, "hard").await.unwrap();
        assert_eq!(c.getattr(f.ino).await.unwrap().nlink, 1);
        assert_eq!(
            c.name_op(op::RMDIR, ROOT, "d").await.unwrap_err(),
            Errno::ENOTEMPTY
        );
        let e = c.mkdir(ROOT, "e", 0o700).await.unwrap();
        c.name_op(op::RMDIR, ROOT, "e").await.unwrap();
        assert!(c.getattr(e.ino).await.is_err());
        let st = c.call(op::STATFS, ROOT, &[]).await.unwrap();
        assert_eq!(st.len(), wire::STATFS_OUT_LEN);
        assert!(u64_at(&st, 0) > 0 && u32_at(&st, 40) > 0);
        c.call(op::ACCESS, f.ino, &[4, 0, 0, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let mut b = Vec::new();
        le32(&mut b, 0o010644);
        le32(&mut b, 0);
        le32(&mut b, 0);
        le32(&mut b, 0);
        b.extend(cstr("fifo"));
        let fifo = c.entry(op::MKNOD, ROOT, &b).await.unwrap();
        assert_eq!(fifo.mode, 0o010644);
        assert_eq!(
            c.call(op::BMAP, f.ino, &[0; 16]).await.unwrap_err(),
            Errno::ENOSYS
        );
        assert_eq!(c.call(9999, f.ino, &[]).await.unwrap_err(), Errno::ENOSYS);
        // DESTROY releases everything the session held.
        let h = c.open(f.ino, 0, false).await.unwrap();
        c.call(op::DESTROY, 0, &[]).await.unwrap();
        assert_eq!(c.read(f.ino, h, 0, 1).await.unwrap_err(), Errno::EBADF);
        assert_eq!(env.server.mount().open_count(f.ino), 0);
    });
    env.close(&c);
}

#[test]
fn permissions_and_root_squash() {
    let env = Env::with(ServerConfig {
        root_squash: true,
        ..ServerConfig::default()
    });
    let c = env.client();
    env.run(async {
        // Squashed root creates as nobody and cannot write a 0755 root.
        assert_eq!(c.mkdir(ROOT, "x", 0o755).await.unwrap_err(), Errno::EACCES);
    });
    env.close(&c);
    let env = Env::new();
    let c = env.client();
    env.run(async {
        let d = c.mkdir(ROOT, "private", 0o700).await.unwrap();
        let (f, fh) = c.create(ROOT, "f", 1, 0o644).await.unwrap();
        c.release(f.ino, fh, false).await.unwrap();
        c.uid.set(1000);
        assert_eq!(c.lookup(d.ino, "x").await.unwrap_err(), Errno::EACCES);
        assert_eq!(c.open(f.ino, 1, false).await.unwrap_err(), Errno::EACCES);
        let mine = c.mkdir(ROOT, "m", 0o755).await.unwrap_err();
        assert_eq!(mine, Errno::EACCES);
        c.uid.set(0);
        let (g, gh) = c.create(ROOT, "g", 1, 0o644).await.unwrap();
        assert_eq!(g.uid, 0);
        c.release(g.ino, gh, false).await.unwrap();
    });
    env.close(&c);
    // Not on the allow-list: INIT is refused.
    let env = Env::with(ServerConfig {
        allow: AllowList::parse("192.168.0.0/16").unwrap(),
        ..ServerConfig::default()
    });
    let c = env.connect_from([10, 0, 2, 2]);
    env.run(async {
        assert_eq!(c.init(7, 31, 0).await.unwrap_err(), Errno::EACCES);
        assert_eq!(c.getattr(ROOT).await.unwrap_err(), Errno::EACCES);
    });
    env.close(&c);
}

/// Drive a `Conn` directly (the sans-IO API the kernel service uses):
/// feed frames, let the tasks run, take the replies.
fn exchange(env: &Env, conn: &Rc<Conn>, frames: &[Vec<u8>]) -> Vec<(u64, i32, Vec<u8>)> {
    for f in frames {
        assert_eq!(conn.feed(f), f.len());
    }
    env.run(async {
        loop {
            let wait = conn.progress();
            let n = conn.process().expect("process");
            if n == 0 && conn.is_idle() && !conn.is_stalled() {
                break;
            }
            wait.await;
        }
    });
    let mut out = Vec::new();
    while let Some(r) = conn.take_output() {
        let h = OutHeader::decode(&r).unwrap();
        assert_eq!(h.len as usize, r.len());
        out.push((h.unique, h.error, r[16..].to_vec()));
    }
    out
}

fn init_frame(unique: u64) -> Vec<u8> {
    let mut b = Vec::new();
    le32(&mut b, 7);
    le32(&mut b, 31);
    le32(&mut b, 0);
    le32(&mut b, ALL_FLAGS);
    wire::encode_request(op::INIT, unique, 0, 0, 0, &b)
}

#[test]
fn lookup_counts_and_forget() {
    let env = Env::new();
    let c = env.client();
    let (a, b) = env.run(async {
        let (a, h) = c.create(ROOT, "a", 1, 0o644).await.unwrap();
        c.release(a.ino, h, false).await.unwrap();
        let b = c.mkdir(ROOT, "b", 0o755).await.unwrap();
        (a.ino, b.ino)
    });
    env.close(&c);

    let conn = Conn::new(
        &env.server,
        Peer {
            addr: [10, 0, 2, 2],
            port: 1,
        },
    )
    .unwrap();
    let r = exchange(&env, &conn, &[init_frame(1)]);
    assert_eq!(r[0].1, 0);
    let look = |u, name: &str| wire::encode_request(op::LOOKUP, u, ROOT, 0, 0, &cstr(name));
    let r = exchange(
        &env,
        &conn,
        &[look(2, "a"), look(3, "a"), look(4, "b"), look(5, "zz")],
    );
    assert_eq!(r.len(), 4);
    assert_eq!(r.iter().find(|x| x.0 == 5).unwrap().1, -Errno::ENOENT.0);
    assert_eq!((conn.lookups_of(a), conn.lookups_of(b)), (2, 1));
    assert_eq!(conn.node_count(), 2);
    // FORGET gets no reply.
    let forget = wire::encode_request(op::FORGET, 6, a, 0, 0, &1u64.to_le_bytes());
    assert!(exchange(&env, &conn, &[forget]).is_empty());
    assert_eq!(conn.lookups_of(a), 1);
    let mut bf = Vec::new();
    le32(&mut bf, 2);
    le32(&mut bf, 0);
    for (n, k) in [(a, 1u64), (b, 5)] {
        le64(&mut bf, n);
        le64(&mut bf, k);
    }
    assert!(exchange(
        &env,
        &conn,
        &[wire::encode_request(op::BATCH_FORGET, 7, 0, 0, 0, &bf)]
    )
    .is_empty());
    assert_eq!(conn.node_count(), 0);
    // READDIRPLUS counts a lookup per entry but not for "." and "..".
    let r = exchange(
        &env,
        &conn,
        &[wire::encode_request(op::OPENDIR, 8, ROOT, 0, 0, &[0; 8])],
    );
    let fh = u64_at(&r[0].2, 0);
    let r = exchange(
        &env,
        &conn,
        &[wire::encode_request(
            op::READDIRPLUS,
            9,
            ROOT,
            0,
            0,
            &read_in(fh, 0, 65536),
        )],
    );
    let ents = parse_dirents(&r[0].2, true);
    assert_eq!(names(&ents), [".", "..", "a", "b"]);
    assert_eq!(
        (conn.lookups_of(a), conn.lookups_of(b), conn.node_count()),
        (1, 1, 2)
    );
    assert_eq!(conn.lookups_of(ROOT), 0);
    assert_eq!(conn.handle_count(), 1);
    env.run(conn.close());
    assert_eq!(env.server.mount().open_count(ROOT), 0);

    // Strict node ids: a forgotten node is stale.
    let env2 = Env::with(ServerConfig {
        strict_nodeids: true,
        ..ServerConfig::default()
    });
    let conn = Conn::new(
        &env2.server,
        Peer {
            addr: [10, 0, 2, 2],
            port: 1,
        },
    )
    .unwrap();
    exchange(&env2, &conn, &[init_frame(1)]);
    let mk = {
        let mut b = Vec::new();
        le32(&mut b, 0o755);
        le32(&mut b, 0);
        b.extend(cstr("d"));
        wire::encode_request(op::MKDIR, 2, ROOT, 0, 0, &b)
    };
    let r = exchange(&env2, &conn, &[mk]);
    let d = u64_at(&r[0].2, 0);
    let ga = |u| wire::encode_request(op::GETATTR, u, d, 0, 0, &[0; 16]);
    assert_eq!(exchange(&env2, &conn, &[ga(3)])[0].1, 0);
    exchange(
        &env2,
        &conn,
        &[wire::encode_request(
            op::FORGET,
            4,
            d,
            0,
            0,
            &1u64.to_le_bytes(),
        )],
    );
    assert_eq!(exchange(&env2, &conn, &[ga(5)])[0].1, -Errno::ESTALE.0);
    env2.run(conn.close());
}

#[test]
fn replies_out_of_order_locks_and_interrupt() {
    let env = Env::new();
    let c = env.client();
    env.run(async {
        let (f, fh1) = c.create(ROOT, "l", 2, 0o644).await.unwrap();
        let fh2 = c.open(f.ino, 2, false).await.unwrap();
        let end = i64::MAX as u64;
        // Owner 1 write-locks the whole file.
        c.call(op::SETLK, f.ino, &lk_in(fh1, 1, 0, end, wire::F_WRLCK))
            .await
            .unwrap();
        assert_eq!(
            c.call(op::SETLK, f.ino, &lk_in(fh2, 2, 10, 20, wire::F_RDLCK))
                .await
                .unwrap_err(),
            Errno::EAGAIN
        );
        let r = c
            .call(op::GETLK, f.ino, &lk_in(fh2, 2, 0, 5, wire::F_RDLCK))
            .await
            .unwrap();
        assert_eq!(
            (u32_at(&r, 16), u64_at(&r, 0), u64_at(&r, 8)),
            (wire::F_WRLCK, 0, end)
        );
        // A blocking lock waits; a later GETATTR is answered first.
        let w = c.send(op::SETLKW, f.ino, &lk_in(fh2, 2, 0, 9, wire::F_WRLCK));
        let g = c.send(op::GETATTR, f.ino, &[0; 16]);
        let (first, r) = c.recv_any().await.unwrap();
        assert_eq!((first, r.error), (g, 0));
        // Unlocking lets the waiter in.
        c.call(op::SETLK, f.ino, &lk_in(fh1, 1, 0, end, wire::F_UNLCK))
            .await
            .unwrap();
        assert_eq!(c.recv(w).await.error, 0);
        // Now owner 1 blocks; INTERRUPT ends the wait with EINTR and
        // itself gets no reply.
        let w = c.send(op::SETLKW, f.ino, &lk_in(fh1, 1, 5, 5, wire::F_RDLCK));
        let i = c.send(op::INTERRUPT, 0, &w.to_le_bytes());
        assert_eq!(c.recv(w).await.error, -Errno::EINTR.0);
        // A duplicate unique while in flight is refused.
        let w = c.send(op::SETLKW, f.ino, &lk_in(fh1, 1, 5, 5, wire::F_RDLCK));
        let dup = wire::encode_request(op::GETATTR, w, f.ino, 0, 0, &[0; 16]);
        c.pipe.c2s.push(&dup);
        assert_eq!(c.recv(w).await.error, -Errno::EINVAL.0);
        // FLUSH of owner 2 drops its lock: the waiter proceeds.
        let mut b = Vec::new();
        le64(&mut b, fh2);
        le64(&mut b, 0);
        le64(&mut b, 2);
        c.call(op::FLUSH, f.ino, &b).await.unwrap();
        assert_eq!(c.recv(w).await.error, 0);
        assert!(!c.stash.borrow().contains_key(&i), "INTERRUPT was answered");
        c.release(f.ino, fh1, false).await.unwrap();
        c.release(f.ino, fh2, false).await.unwrap();
        assert_eq!(env.server.locks_held(), 0);
    });
    env.close(&c);
}

#[test]
fn bounds_requests_in_flight_lock_waiters_and_frame_size() {
    let env = Env::with(ServerConfig {
        requests_max: 4,
        lock_waiters_max: 3,
        ..ServerConfig::default()
    });
    // At most requests_max dispatched at once (the sans-IO API).
    let conn = Conn::new(
        &env.server,
        Peer {
            addr: [10, 0, 2, 2],
            port: 1,
        },
    )
    .unwrap();
    exchange(&env, &conn, &[init_frame(1)]);
    for u in 0..10 {
        let f = wire::encode_request(op::GETATTR, 10 + u, ROOT, 0, 0, &[0; 16]);
        assert_eq!(conn.feed(&f), f.len());
    }
    assert_eq!(conn.process(), Ok(4));
    assert_eq!(conn.requests_in_flight(), 4);
    assert!(conn.memory_held() > 0);
    let r = exchange(&env, &conn, &[]);
    assert_eq!(r.len(), 10);
    assert!(r.iter().all(|x| x.1 == 0));
    assert_eq!(conn.memory_held(), 0);
    env.run(conn.close());

    let c = env.client();
    env.run(async {
        let (f, fh1) = c.create(ROOT, "l", 2, 0o644).await.unwrap();
        c.call(op::SETLK, f.ino, &lk_in(fh1, 1, 0, 0, wire::F_WRLCK))
            .await
            .unwrap();
        // Blocked SETLKWs do not fill the request queue, so requests
        // behind them (the unlock, an INTERRUPT) are still read; their
        // own number is bounded.
        let ws: Vec<u64> = (2..5)
            .map(|o| c.send(op::SETLKW, f.ino, &lk_in(fh1, o, 0, 0, wire::F_WRLCK)))
            .collect();
        let g = c.send(op::GETATTR, f.ino, &[0; 16]);
        assert_eq!(c.recv(g).await.error, 0);
        assert_eq!(env.server.clients()[0].requests_in_flight, 3);
        let over = c.send(op::SETLKW, f.ino, &lk_in(fh1, 9, 0, 0, wire::F_WRLCK));
        assert_eq!(c.recv(over).await.error, -Errno::ENOLCK.0);
        c.send(op::INTERRUPT, 0, &ws[0].to_le_bytes());
        assert_eq!(c.recv(ws[0]).await.error, -Errno::EINTR.0);
        c.call(op::SETLK, f.ino, &lk_in(fh1, 1, 0, 0, wire::F_UNLCK))
            .await
            .unwrap();
        // One waiter gets the lock; the other still waits until the
        // winner unlocks.
        let (first, r) = c.recv_any().await.unwrap();
        assert_eq!(r.error, 0);
        let owner = if first == ws[1] { 3 } else { 4 };
        let other = if first == ws[1] { ws[2] } else { ws[1] };
        c.call(op::SETLK, f.ino, &lk_in(fh1, owner, 0, 0, wire::F_UNLCK))
            .await
            .unwrap();
        assert_eq!(c.recv(other).await.error, 0);
    });
    // A frame longer than the bound closes the connection.
    let mut huge = wire::encode_request(op::WRITE, 999, 2, 0, 0, &[]);
    huge[..4].copy_from_slice(&(env.server.frame_max() + 1).to_le_bytes());
    c.pipe.c2s.push(&huge);
    env.run(async {
        assert!(c.recv_any().await.is_none());
    });
    env.close(&c);
    assert_eq!(env.server.connection_count(), 0);
    assert_eq!(env.server.locks_held(), 0);
}

/// A corpus of valid requests over the nodes a session creates.
fn corpus(file: u64, dir: u64, fh: u64, dfh: u64) -> Vec<Vec<u8>> {
    let mut v: Vec<(u32, u64, Vec<u8>)> = vec![
        (op::LOOKUP, ROOT, cstr("f")),
        (op::GETATTR, file, vec![0; 16]),
        (op::READ, file, read_in(fh, 0, 4096)),
        (op::READDIR, dir, read_in(dfh, 0, 4096)),
        (op::READDIRPLUS, dir, read_in(dfh, 0, 4096)),
        (op::STATFS, ROOT, vec![]),
        (op::FORGET, file, 1u64.to_le_bytes().to_vec()),
        (op::GETLK, file, lk_in(fh, 1, 0, 10, wire::F_RDLCK)),
        (op::SETLK, file, lk_in(fh, 1, 0, 10, wire::F_WRLCK)),
        (op::LISTXATTR, file, vec![0, 1, 0, 0, 0, 0, 0, 0]),
        (op::INTERRUPT, 0, 3u64.to_le_bytes().to_vec()),
    ];
    let mut w = read_in(fh, 0, 5);
    w.extend_from_slice(b"hello");
    v.push((op::WRITE, file, w));
    let mut m = Vec::new();
    le32(&mut m, 0o755);
    le32(&mut m, 0);
    m.extend(cstr("sub"));
    v.push((op::MKDIR, dir, m));
    let mut sx = vec![1, 0, 0, 0, 0, 0, 0, 0];
    sx.extend(cstr("user.a"));
    sx.push(b'z');
    v.push((op::SETXATTR, file, sx));
    let mut rn = dir.to_le_bytes().to_vec();
    rn.extend([0; 8]);
    rn.extend(cstr("sub"));
    rn.extend(cstr("sub2"));
    v.push((op::RENAME2, dir, rn));
    let mut cr = Vec::new();
    le32(&mut cr, 2);
    le32(&mut cr, 0o644);
    le64(&mut cr, 0);
    cr.extend(cstr("c"));
    v.push((op::CREATE, dir, cr));
    v.into_iter()
        .enumerate()
        .map(|(i, (o, n, b))| wire::encode_request(o, 100 + i as u64, n, 0, 0, &b))
        .collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Flip a byte (and keep `len` honest or not).
    Flip {
        at: usize,
        xor: u8,
        fix_len: bool,
    },
    /// Cut the frame (and set `len` to the cut).
    Truncate {
        to: usize,
    },
    /// Random bytes as a body.
    Body {
        opcode: u32,
        nodeid: u64,
        bytes: Vec<u8>,
    },
    Untouched,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..200, 1u8..=255, any::<bool>()).prop_map(|(at, xor, fix_len)| Mutation::Flip {
            at,
            xor,
            fix_len
        }),
        (0usize..120).prop_map(|to| Mutation::Truncate { to }),
        (
            0u32..50,
            prop_oneof![Just(0u64), Just(1), 2u64..10, any::<u64>()],
            proptest::collection::vec(any::<u8>(), 0..120)
        )
            .prop_map(|(opcode, nodeid, bytes)| Mutation::Body {
                opcode,
                nodeid,
                bytes
            }),
        Just(Mutation::Untouched),
    ]
}

fn apply(m: &Mutation, frame: &[u8], unique: u64) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[8..16].copy_from_slice(&unique.to_le_bytes());
    match m {
        Mutation::Flip { at, xor, fix_len } => {
            let at = at % f.len();
            f[at] ^= xor;
            if *fix_len {
                let n = f.len() as u32;
                f[..4].copy_from_slice(&n.to_le_bytes());
            }
        }
        Mutation::Truncate { to } => {
            f.truncate((*to).max(8).min(f.len()));
            let n = f.len() as u32;
            f[..4].copy_from_slice(&n.to_le_bytes());
        }
        Mutation::Body {
            opcode,
            nodeid,
            bytes,
        } => {
            f = wire::encode_request(*opcode, unique, *nodeid, 0, 0, bytes);
        }
        Mutation::Untouched => {}
    }
    f
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random and mutated messages: the server never panics, every reply
    /// is well-formed and answers a request sent, and the volume still
    /// serves a fresh client afterwards.
    #[test]
    fn random_and_mutated_messages(muts in proptest::collection::vec((0usize..16, mutation()), 1..40)) {
        let env = Env::new();
        let c = env.client();
        let (file, dir, fh, dfh) = env.run(async {
            let d = c.mkdir(ROOT, "d", 0o755).await.unwrap();
            let (f, fh) = c.create(ROOT, "f", 2, 0o644).await.unwrap();
            let dfh = c.open(d.ino, 0, true).await.unwrap();
            (f.ino, d.ino, fh, dfh)
        });
        let corpus = corpus(file, dir, fh, dfh);
        let mut sent = BTreeSet::new();
        let mut stream = Vec::new();
        for (i, (pick, m)) in muts.iter().enumerate() {
            let unique = 1000 + i as u64;
            stream.extend(apply(m, &corpus[pick % corpus.len()], unique));
        }
        // The frames the server sees: a mutated length moves the frame
        // boundaries after it, so cut the stream by its length fields.
        let mut at = 0;
        while stream.len() - at >= 4 {
            let len = u32::from_le_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
            if len < 7 || len > env.server.frame_max() as usize || stream.len() - at < len {
                break;
            }
            if len >= 16 {
                sent.insert(u64::from_le_bytes(stream[at + 8..at + 16].try_into().unwrap()));
            }
            at += len;
        }
        c.pipe.c2s.push(&stream);
        c.pipe.c2s.close();
        let replies = env.run(async {
            let mut v = Vec::new();
            while let Some((u, r)) = c.recv_any().await {
                v.push((u, r.error));
            }
            v
        });
        if let Some(t) = c.task.borrow_mut().take() {
            env.run(t);
        }
        for (u, _) in &replies {
            prop_assert!(sent.contains(u), "a reply to {} which was never sent", u);
        }
        prop_assert_eq!(env.server.connection_count(), 0);
        prop_assert_eq!(env.server.mount().open_count(file), 0);
        let c2 = env.client();
        env.run(async {
            assert_eq!(c2.getattr(file).await.unwrap().ino, file);
        });
        env.close(&c2);
    }
}
