//! Model-based test: random sequences of POSIX operations run against the
//! filesystem and against a plain in-memory model of a POSIX namespace;
//! every result and errno must agree. Commits, clean remounts and crashes
//! (dropping the mount without a commit) are interleaved; after a crash
//! the namespace must equal the model at the last commit, and inodes that
//! were unlinked while open must be gone (their orphan items).
//!
//! Seeds: `POSIX_MODEL_SEEDS` (default 200), ops per seed
//! `POSIX_MODEL_OPS` (default 400).
//!
//! The same runs go over the real persistent half too (server, client log
//! trees, forest reads, log merges on RAM disks): `POSIX_MODEL_REAL_SEEDS`
//! (default 60), with fsck after every commit and merges between ops.
//!
//! And over a slow cluster lock provider (`sim::slow_locks`: grants late,
//! in seeded random order, each write grant first making the mount commit
//! from another task): `POSIX_MODEL_LOCK_SEEDS` (default 50). A task that
//! waited for a lock while holding the transaction would deadlock there.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use common::{block_on, test_node_options, RealVol, Vol};
use scoutvm_fs::client::node::NodeHandle;
use scoutvm_fs::errno::{Errno, FsResult};
use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::posix::types::*;
use scoutvm_fs::runtime::env::{Entropy, SeededEntropy};
use scoutvm_fs::sim::mem_backend::MemBackend;
use scoutvm_fs::sim::mem_backend::MemMkfs;
use scoutvm_fs::sim::slow_locks::SlowLocks;

const ROOT: u64 = 1;
const BS: u64 = 4096;

#[derive(Clone, Debug)]
struct Node {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    rdev: u32,
    size: u64,
    /// Non-zero 4 KiB blocks of a regular file; bytes past `size` are 0.
    blocks: BTreeMap<u64, Vec<u8>>,
    target: Vec<u8>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    kids: BTreeMap<Vec<u8>, u64>,
    parent: u64,
}

impl Node {
    fn new(mode: u32, uid: u32, gid: u32) -> Node {
        Node {
            mode,
            uid,
            gid,
            nlink: if mode & S_IFMT == S_IFDIR { 2 } else { 1 },
            rdev: 0,
            size: 0,
            blocks: BTreeMap::new(),
            target: Vec::new(),
            xattrs: BTreeMap::new(),
            kids: BTreeMap::new(),
            parent: 0,
        }
    }
    fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    fn is_reg(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
    fn dir_size(&self) -> u64 {
        self.kids.keys().map(|k| k.len() as u64).sum()
    }
    fn read(&self, off: u64, len: u64) -> Vec<u8> {
        if off >= self.size {
            return Vec::new();
        }
        let end = self.size.min(off + len);
        let mut out = vec![0u8; (end - off) as usize];
        for (b, data) in self.blocks.range(off / BS..=(end - 1) / BS) {
            let bs = b * BS;
            for i in bs.max(off)..(bs + BS).min(end) {
                out[(i - off) as usize] = data[(i - bs) as usize];
            }
        }
        out
    }
    fn write(&mut self, off: u64, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            let p = off + i as u64;
            let blk = self
                .blocks
                .entry(p / BS)
                .or_insert_with(|| vec![0; BS as usize]);
            blk[(p % BS) as usize] = byte;
        }
        self.size = self.size.max(off + data.len() as u64);
    }
    fn zero(&mut self, from: u64, to: u64) {
        let keys: Vec<u64> = self.blocks.range(from / BS..).map(|(k, _)| *k).collect();
        for b in keys {
            let bs = b * BS;
            if bs >= to {
                break;
            }
            let blk = self.blocks.get_mut(&b).unwrap();
            for i in bs.max(from)..(bs + BS).min(to) {
                blk[(i - bs) as usize] = 0;
            }
            if blk.iter().all(|&x| x == 0) {
                self.blocks.remove(&b);
            }
        }
    }
    fn truncate(&mut self, size: u64) {
        if size < self.size {
            self.zero(size, u64::MAX);
        }
        self.size = size;
    }
}

fn root_cred() -> Cred {
    Cred::root()
}

fn is_root(c: &Cred) -> bool {
    c.uid == 0
}

/// generic_permission, written again for the model.
fn allowed(c: &Cred, n: &Node, mask: u32) -> bool {
    if is_root(c) {
        return mask & MAY_EXEC == 0 || n.is_dir() || n.mode & 0o111 != 0;
    }
    let bits = if c.uid == n.uid {
        n.mode >> 6
    } else if c.in_group(n.gid) {
        n.mode >> 3
    } else {
        n.mode
    } & 7;
    bits & mask == mask
}

fn need(c: &Cred, n: &Node, mask: u32) -> FsResult<()> {
    if allowed(c, n, mask) {
        Ok(())
    } else {
        Err(Errno::EACCES)
    }
}

fn kill_suid(mode: u32) -> u32 {
    let mut m = mode & !S_ISUID;
    if m & (S_ISGID | 0o010) == (S_ISGID | 0o010) {
        m &= !S_ISGID;
    }
    m
}

#[derive(Clone, Debug)]
struct Model {
    nodes: BTreeMap<u64, Node>,
    open: BTreeMap<u64, u32>,
}

impl Model {
    fn new() -> Model {
        let mut nodes = BTreeMap::new();
        let mut r = Node::new(S_IFDIR | 0o755, 0, 0);
        r.parent = ROOT;
        nodes.insert(ROOT, r);
        Model {
            nodes,
            open: BTreeMap::new(),
        }
    }

    fn get(&self, ino: u64) -> FsResult<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> FsResult<&Node> {
        let d = self.get(ino)?;
        if !d.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(d)
    }

    fn is_open(&self, ino: u64) -> bool {
        self.open.get(&ino).is_some_and(|n| *n > 0)
    }

    fn maybe_delete(&mut self, ino: u64) {
        if self.nodes[&ino].nlink == 0 && !self.is_open(ino) {
            self.nodes.remove(&ino);
        }
    }

    fn is_ancestor(&self, anc: u64, mut ino: u64) -> bool {
        loop {
            if ino == anc {
                return true;
            }
            if ino == ROOT || ino == 0 {
                return false;
            }
            ino = self.nodes[&ino].parent;
        }
    }

    fn may_delete(&self, c: &Cred, d: &Node, v: &Node, want_dir: bool) -> FsResult<()> {
        need(c, d, MAY_WRITE | MAY_EXEC)?;
        if d.mode & S_ISVTX != 0 && !is_root(c) && c.uid != v.uid && c.uid != d.uid {
            return Err(Errno::EPERM);
        }
        match (want_dir, v.is_dir()) {
            (true, false) => Err(Errno::ENOTDIR),
            (false, true) => Err(Errno::EISDIR),
            _ => Ok(()),
        }
    }

    fn may_create(&self, c: &Cred, d: &Node) -> FsResult<()> {
        if d.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        need(c, d, MAY_WRITE | MAY_EXEC)
    }

    /// Check a create; returns the new node (without ino).
    fn check_create(&self, c: &Cred, dir: u64, name: &[u8], mode: u32) -> FsResult<Node> {
        let d = self.dir(dir)?;
        need(c, d, MAY_EXEC)?;
        if name == b"." || name == b".." || d.kids.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        self.may_create(c, d)?;
        let mut mode = mode;
        let gid = if d.mode & S_ISGID != 0 {
            if mode & S_IFMT == S_IFDIR {
                mode |= S_ISGID;
            } else if mode & (S_ISGID | 0o010) == (S_ISGID | 0o010)
                && !c.in_group(d.gid)
                && !is_root(c)
            {
                mode &= !S_ISGID;
            }
            d.gid
        } else {
            c.gid
        };
        let mut n = Node::new(mode, c.uid, gid);
        n.parent = dir;
        Ok(n)
    }

    fn add_created(&mut self, dir: u64, name: &[u8], ino: u64, n: Node) {
        assert!(!self.nodes.contains_key(&ino), "inode number reused");
        let is_dir = n.is_dir();
        self.nodes.insert(ino, n);
        let d = self.nodes.get_mut(&dir).unwrap();
        d.kids.insert(name.to_vec(), ino);
        if is_dir {
            d.nlink += 1;
        }
    }
}

/// Compare an fs result with the model's prediction.
fn agree<T: std::fmt::Debug, U: std::fmt::Debug>(
    what: &str,
    fs: &FsResult<T>,
    model: &FsResult<U>,
) {
    match (fs, model) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(b)) if a == b => {}
        _ => panic!("{what}: fs {fs:?} model {model:?}"),
    }
}

/// What the mount runs on.
enum Backing {
    Mem {
        vol: Vol,
        be: Option<Rc<MemBackend>>,
        /// Cluster locks from a slow provider instead of the local one.
        locks: Option<Rc<SlowLocks>>,
    },
    Real {
        vol: Box<RealVol>,
        node: Option<NodeHandle>,
    },
}

impl Backing {
    fn mount(&mut self, busy_commits: bool) -> Rc<Mount> {
        match self {
            Backing::Mem {
                vol,
                be,
                locks: None,
            } => {
                let (m, b) = vol.mount();
                if busy_commits {
                    b.set_txn_data_limit(Some(3));
                }
                *be = Some(b);
                Rc::new(m)
            }
            Backing::Mem {
                vol,
                be,
                locks: Some(locks),
            } => {
                let b = MemBackend::new(vol.store.clone());
                if busy_commits {
                    b.set_txn_data_limit(Some(3));
                }
                let m = Rc::new(
                    block_on(Mount::mount_with_locks(
                        b.clone(),
                        vol.data.clone(),
                        vol.clock.clone(),
                        vol.opts,
                        locks.clone(),
                    ))
                    .expect("mount"),
                );
                locks.attach(&m, b.clone());
                *be = Some(b);
                m
            }
            Backing::Real { vol, node } => {
                let (m, n) = vol.mount();
                *node = Some(n);
                m
            }
        }
    }

    /// Drop the mount without committing.
    fn crash(&mut self) {
        match self {
            Backing::Mem { be, locks, .. } => {
                *be = None;
                if let Some(l) = locks {
                    l.detach();
                }
            }
            Backing::Real { vol, node } => {
                if let Some(n) = node.take() {
                    block_on(n.abandon());
                }
                vol.fsck();
            }
        }
    }

    /// Commit and unmount.
    fn unmount(&mut self, m: &Mount) {
        match self {
            Backing::Mem { be, locks, .. } => {
                block_on(m.sync()).unwrap();
                *be = None;
                if let Some(l) = locks {
                    l.detach();
                }
            }
            Backing::Real { vol, node } => {
                if let Some(n) = node.take() {
                    block_on(n.unmount()).unwrap();
                }
                vol.fsck();
                let sb = scoutvm_fs::storage::block::read_super_from(&*vol.meta).unwrap();
                assert!(sb.mounted_clients.is_empty(), "unmount leaves no mount");
            }
        }
    }

    /// Commits made so far (by this mount, for the real backing).
    fn commits(&self) -> u64 {
        match self {
            Backing::Mem { vol, .. } => vol.store.commits(),
            Backing::Real { node, .. } => node.as_ref().map_or(0, |n| n.trans().counters().commits),
        }
    }

    /// Checks after a commit: the volume is consistent.
    fn after_commit(&self) {
        if let Backing::Real { vol, .. } = self {
            vol.fsck();
        }
    }

    /// Between operations: let the log merge make progress.
    fn merge_some(&self, rounds: usize, request: bool) {
        if let Backing::Real { vol, node: Some(n) } = self {
            if request {
                block_on(n.start_merge()).unwrap();
            }
            for _ in 0..rounds {
                if !block_on(n.merge_once()).unwrap() {
                    break;
                }
            }
            vol.fsck();
        }
    }
}

struct Run {
    backing: Backing,
    m: Option<Rc<Mount>>,
    model: Model,
    committed: Model,
    /// Blocks of each file that changed in place since the last commit.
    data_dirty: BTreeMap<u64, BTreeSet<u64>>,
    rng: SeededEntropy,
    /// Every inode number ever seen (to also hit deleted ones).
    seen: Vec<u64>,
    log: Vec<String>,
    /// Commits at any time (tiny dirty limit, tiny data allocator per
    /// transaction).
    busy_commits: bool,
    /// Commits happen at times the model does not know (busy commits, or
    /// lock grants that make the mount commit): remounts are clean only.
    commits_anytime: bool,
    /// Commits the mounts made on their own (size, allocator refills).
    auto_commits: u64,
}

const NAMES: [&[u8]; 8] = [b"a", b"b", b"c", b"dd", b"eee", b"f", b"name_longer", b"z"];
const XNAMES: [&[u8]; 6] = [
    b"user.a",
    b"user.b",
    b"user.long",
    b"trusted.t",
    b"scoutfs.hide.h",
    b"security.s",
];
const MODES: [u32; 8] = [0o755, 0o700, 0o777, 0o1777, 0o644, 0o600, 0o666, 0o2775];

impl Run {
    fn m(&self) -> &Mount {
        self.m.as_ref().unwrap()
    }

    fn r(&self, n: u64) -> u64 {
        self.rng.next_u64() % n
    }

    fn cred(&self) -> Cred {
        match self.r(3) {
            0 => root_cred(),
            1 => Cred::user(1000, 1000),
            _ => Cred {
                uid: 1001,
                gid: 1001,
                groups: vec![1000],
            },
        }
    }

    fn name(&self) -> Vec<u8> {
        NAMES[self.r(NAMES.len() as u64) as usize].to_vec()
    }

    fn any_ino(&self) -> u64 {
        if self.r(10) == 0 && !self.seen.is_empty() {
            return self.seen[self.r(self.seen.len() as u64) as usize];
        }
        let keys: Vec<u64> = self.model.nodes.keys().copied().collect();
        keys[self.r(keys.len() as u64) as usize]
    }

    fn dir_ino(&self) -> u64 {
        let dirs: Vec<u64> = self
            .model
            .nodes
            .iter()
            .filter(|(_, n)| n.is_dir())
            .map(|(k, _)| *k)
            .collect();
        if self.r(20) == 0 {
            return self.any_ino();
        }
        dirs[self.r(dirs.len() as u64) as usize]
    }

    fn file_ino(&self) -> u64 {
        let files: Vec<u64> = self
            .model
            .nodes
            .iter()
            .filter(|(_, n)| n.is_reg())
            .map(|(k, _)| *k)
            .collect();
        if files.is_empty() || self.r(20) == 0 {
            return self.any_ino();
        }
        files[self.r(files.len() as u64) as usize]
    }

    fn offset(&self) -> u64 {
        match self.r(10) {
            0 => (1 << 32) + self.r(3 * BS),
            1 => self.r(1 << 20),
            _ => self.r(6 * BS),
        }
    }

    fn bytes(&self, max: u64) -> Vec<u8> {
        let n = self.r(max) as usize;
        let seed = self.rng.next_u64() as u8;
        (0..n).map(|i| seed.wrapping_add(i as u8) | 1).collect()
    }

    fn step(&mut self) {
        let c = self.cred();
        match self.r(100) {
            0..=11 => {
                let (dir, name, mode) = (self.dir_ino(), self.name(), MODES[self.r(8) as usize]);
                let kind = self.r(4);
                let full = match kind {
                    0 => S_IFDIR | (mode & 0o1777),
                    3 => S_IFIFO | (mode & 0o7777),
                    _ => S_IFREG | (mode & 0o7777),
                };
                self.log.push(format!(
                    "create {kind} {c:?} {dir} {:?} {mode:o}",
                    String::from_utf8_lossy(&name)
                ));
                let want = self.model.check_create(&c, dir, &name, full);
                let got = match kind {
                    0 => block_on(self.m().mkdir(&c, dir, &name, mode)),
                    3 => block_on(self.m().mknod(&c, dir, &name, S_IFIFO | mode, 0)),
                    _ => block_on(self.m().create(&c, dir, &name, mode)),
                };
                agree("create", &got, &want);
                if let (Ok(a), Ok(n)) = (got, want) {
                    assert_eq!(
                        (a.mode, a.uid, a.gid, a.nlink),
                        (n.mode, n.uid, n.gid, n.nlink)
                    );
                    self.seen.push(a.ino);
                    self.model.add_created(dir, &name, a.ino, n);
                }
            }
            12..=14 => {
                let (dir, name) = (self.dir_ino(), self.name());
                let target = self.bytes(1500);
                let target = if target.is_empty() {
                    b"t".to_vec()
                } else {
                    target
                };
                self.log
                    .push(format!("symlink {dir} {name:?} {}", target.len()));
                let want = self.model.check_create(&c, dir, &name, S_IFLNK | 0o777);
                let got = block_on(self.m().symlink(&c, dir, &name, &target));
                agree("symlink", &got, &want);
                if let (Ok(a), Ok(mut n)) = (got, want) {
                    n.size = target.len() as u64;
                    n.target = target;
                    self.seen.push(a.ino);
                    self.model.add_created(dir, &name, a.ino, n);
                }
            }
            15..=19 => {
                let (ino, dir, name) = (self.any_ino(), self.dir_ino(), self.name());
                self.log.push(format!("link {c:?} {ino} {dir} {name:?}"));
                let want = self.model_link(&c, ino, dir, &name);
                let got = block_on(self.m().link(&c, ino, dir, &name));
                agree("link", &got, &want);
                if got.is_ok() {
                    let n = self.model.nodes.get_mut(&ino).unwrap();
                    n.nlink += 1;
                    self.model
                        .nodes
                        .get_mut(&dir)
                        .unwrap()
                        .kids
                        .insert(name, ino);
                }
            }
            20..=29 => {
                let (dir, name, rmdir) = (self.dir_ino(), self.name(), self.r(3) == 0);
                self.log
                    .push(format!("unlink {c:?} {dir} {name:?} rmdir={rmdir}"));
                let want = self.model_unlink(&c, dir, &name, rmdir);
                let got = if rmdir {
                    block_on(self.m().rmdir(&c, dir, &name))
                } else {
                    block_on(self.m().unlink(&c, dir, &name))
                };
                agree("unlink", &got, &want);
                if got.is_ok() {
                    self.apply_unlink(dir, &name);
                }
            }
            30..=39 => {
                let (od, on, nd, nn) = (self.dir_ino(), self.name(), self.dir_ino(), self.name());
                let flags = [0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE][self.r(4) as usize];
                self.log
                    .push(format!("rename {c:?} {od} {on:?} {nd} {nn:?} {flags}"));
                let want = self.model_rename(&c, od, &on, nd, &nn, flags);
                let got = block_on(self.m().rename(&c, od, &on, nd, &nn, flags));
                agree("rename", &got, &want);
                if let Ok(true) = want {
                    self.apply_rename(od, &on, nd, &nn, flags);
                }
            }
            40..=45 => {
                let ino = self.any_ino();
                let sa = match self.r(3) {
                    0 => SetAttr {
                        mode: Some(
                            MODES[self.r(8) as usize] | if self.r(4) == 0 { S_ISUID } else { 0 },
                        ),
                        ..SetAttr::default()
                    },
                    1 => SetAttr {
                        uid: if self.r(2) == 0 {
                            Some([0, 1000, 1001][self.r(3) as usize])
                        } else {
                            None
                        },
                        gid: Some([0, 1000, 1001][self.r(3) as usize]),
                        ..SetAttr::default()
                    },
                    _ => SetAttr {
                        size: Some(self.offset()),
                        ..SetAttr::default()
                    },
                };
                self.log.push(format!("setattr {c:?} {ino} {sa:?}"));
                let want = self.model_setattr(&c, ino, &sa);
                let got = block_on(self.m().setattr(&c, ino, &sa));
                agree("setattr", &got, &want);
                if let (Ok(a), Ok(n)) = (&got, &want) {
                    check_attr(ino, a, n);
                }
                if let Ok(n) = want {
                    if let Some(size) = sa.size {
                        let old = self.model.nodes[&ino].size;
                        self.touch(ino, &[old / BS, size / BS]);
                    }
                    self.model.nodes.insert(ino, n);
                }
            }
            46..=57 => {
                let (ino, off, data) = (self.file_ino(), self.offset(), self.bytes(9000));
                self.log.push(format!("write {ino} {off} {}", data.len()));
                let want = self.model_file(ino).map(|_| data.len());
                let got = block_on(self.m().write(ino, off, &data));
                agree("write", &got, &want);
                if let (Ok(n), Ok(_)) = (&got, &want) {
                    assert_eq!(*n, data.len());
                    if !data.is_empty() {
                        let node = self.model.nodes.get_mut(&ino).unwrap();
                        let old = node.size;
                        node.write(off, &data);
                        let end = off + data.len() as u64;
                        let mut blocks: Vec<u64> = (off / BS..=(end - 1) / BS).collect();
                        blocks.push(old / BS);
                        self.touch(ino, &blocks);
                    }
                }
            }
            58..=65 => {
                let (ino, off, len) = (self.file_ino(), self.offset(), self.r(12000));
                self.log.push(format!("read {ino} {off} {len}"));
                let want = self.model_file(ino).map(|n| n.read(off, len));
                let got = block_on(self.m().read(ino, off, len as usize));
                agree("read", &got, &want);
                if let (Ok(a), Ok(b)) = (&got, &want) {
                    assert_eq!(a.len(), b.len(), "read {ino} {off} {len} length");
                    if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
                        panic!(
                            "read {ino} {off} {len} differs at {i}: fs {} model {}",
                            a[i], b[i]
                        );
                    }
                }
            }
            66..=69 => {
                let ino = self.file_ino();
                let flags = [
                    O_RDONLY,
                    O_WRONLY,
                    O_RDWR,
                    O_RDWR | O_TRUNC,
                    O_RDONLY | O_DIRECTORY,
                ][self.r(5) as usize];
                self.log.push(format!("open {c:?} {ino} {flags:o}"));
                let want = self.model_open(&c, ino, flags);
                let got = block_on(self.m().open(&c, ino, flags));
                agree("open", &got, &want);
                if let Ok(n) = want {
                    if flags & O_TRUNC != 0 && n.is_reg() {
                        self.touch(ino, &[]);
                    }
                    self.model.nodes.insert(ino, n);
                    *self.model.open.entry(ino).or_insert(0) += 1;
                }
            }
            70..=73 => {
                let open: Vec<u64> = self.model.open.keys().copied().collect();
                if open.is_empty() {
                    return;
                }
                let ino = open[self.r(open.len() as u64) as usize];
                self.log.push(format!("release {ino}"));
                block_on(self.m().release(ino)).unwrap();
                let n = self.model.open.get_mut(&ino).unwrap();
                *n -= 1;
                if *n == 0 {
                    self.model.open.remove(&ino);
                    self.model.maybe_delete(ino);
                }
            }
            74..=81 => self.xattr_op(&c),
            82..=84 => {
                let ino = self.file_ino();
                let (off, len) = (self.offset(), 1 + self.r(3 * BS));
                let mode = [
                    0,
                    FALLOC_FL_KEEP_SIZE,
                    FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                ][self.r(3) as usize];
                self.log.push(format!("fallocate {ino} {mode} {off} {len}"));
                let want = self.model_file(ino).map(|_| ());
                let want = match want {
                    Err(Errno::EINVAL) => Err(Errno::ENODEV),
                    w => w,
                };
                let got = block_on(self.m().fallocate(&c, ino, mode, off, len));
                agree("fallocate", &got, &want);
                if got.is_ok() {
                    let n = self.model.nodes.get_mut(&ino).unwrap();
                    if !is_root(&c) {
                        n.mode = kill_suid(n.mode);
                    }
                    if mode & FALLOC_FL_PUNCH_HOLE != 0 {
                        n.zero(off, off + len);
                        self.touch(ino, &[off / BS, (off + len - 1) / BS]);
                    } else if mode == 0 && off + len > n.size {
                        let old = n.size;
                        n.size = off + len;
                        self.touch(ino, &[old / BS]);
                    }
                }
            }
            85..=90 => {
                let dir = self.dir_ino();
                let name = self.name();
                self.log.push(format!("lookup {c:?} {dir} {name:?}"));
                let want = self.model_lookup(&c, dir, &name);
                let got = block_on(self.m().lookup(&c, dir, &name));
                agree("lookup", &got, &want);
                if let (Ok(a), Ok(ino)) = (got, want) {
                    assert_eq!(a.ino, ino);
                }
            }
            91..=94 => {
                let ino = self.any_ino();
                self.log.push(format!("getattr {ino}"));
                let got = block_on(self.m().getattr(ino));
                let want = self.model.get(ino).cloned();
                agree("getattr", &got, &want);
                if let (Ok(a), Ok(n)) = (got, want) {
                    check_attr(ino, &a, &n);
                }
            }
            95 => {
                self.log.push("sync".into());
                block_on(self.m().sync()).unwrap();
                self.committed = self.model.clone();
                self.data_dirty.clear();
                self.backing.after_commit();
                let request = self.r(3) == 0;
                self.backing.merge_some(4, request);
            }
            96..=97 => {
                let dir = self.dir_ino();
                self.log.push(format!("readdir {c:?} {dir}"));
                let want = self.model.dir(dir).and_then(|d| {
                    need(&c, d, MAY_READ)?;
                    if d.nlink == 0 {
                        return Err(Errno::ENOENT);
                    }
                    Ok(())
                });
                let got = block_on(self.m().readdir(&c, dir, 0, 1000));
                agree("readdir", &got, &want);
            }
            _ => {
                if self.r(2) == 0 && !self.commits_anytime {
                    self.remount(true);
                } else {
                    self.remount(false);
                }
            }
        }
    }

    fn touch(&mut self, ino: u64, blocks: &[u64]) {
        self.data_dirty
            .entry(ino)
            .or_default()
            .extend(blocks.iter().copied());
    }

    fn model_file(&self, ino: u64) -> FsResult<&Node> {
        let n = self.model.get(ino)?;
        if n.is_dir() {
            return Err(Errno::EISDIR);
        }
        if !n.is_reg() {
            return Err(Errno::EINVAL);
        }
        Ok(n)
    }

    fn model_lookup(&self, c: &Cred, dir: u64, name: &[u8]) -> FsResult<u64> {
        let d = self.model.dir(dir)?;
        need(c, d, MAY_EXEC)?;
        if d.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        match name {
            b"." => Ok(dir),
            b".." => Ok(d.parent),
            _ => d.kids.get(name).copied().ok_or(Errno::ENOENT),
        }
    }

    fn model_link(&self, c: &Cred, ino: u64, dir: u64, name: &[u8]) -> FsResult<()> {
        let d = self.model.dir(dir)?;
        need(c, d, MAY_EXEC)?;
        if d.kids.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let n = self.model.get(ino)?;
        if !is_root(c) && c.uid != n.uid {
            let safe = n.is_reg()
                && n.mode & S_ISUID == 0
                && n.mode & (S_ISGID | 0o010) != (S_ISGID | 0o010)
                && allowed(c, n, MAY_READ | MAY_WRITE);
            if !safe {
                return Err(Errno::EPERM);
            }
        }
        self.model.may_create(c, d)?;
        if n.is_dir() {
            return Err(Errno::EPERM);
        }
        if n.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        Ok(())
    }

    fn model_unlink(&self, c: &Cred, dir: u64, name: &[u8], rmdir: bool) -> FsResult<()> {
        let d = self.model.dir(dir)?;
        need(c, d, MAY_EXEC)?;
        if rmdir && name == b"." {
            return Err(Errno::EINVAL);
        }
        if rmdir && name == b".." {
            return Err(Errno::ENOTEMPTY);
        }
        let ino = *d.kids.get(name).ok_or(Errno::ENOENT)?;
        let v = &self.model.nodes[&ino];
        self.model.may_delete(c, d, v, rmdir)?;
        if rmdir && !v.kids.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        Ok(())
    }

    fn apply_unlink(&mut self, dir: u64, name: &[u8]) {
        let ino = self
            .model
            .nodes
            .get_mut(&dir)
            .unwrap()
            .kids
            .remove(name)
            .unwrap();
        let v = self.model.nodes.get_mut(&ino).unwrap();
        v.nlink -= 1;
        if v.is_dir() {
            v.nlink = 0;
            v.parent = 0;
            self.model.nodes.get_mut(&dir).unwrap().nlink -= 1;
        }
        self.model.maybe_delete(ino);
    }

    /// Ok(true): a change happens; Ok(false): a successful no-op.
    fn model_rename(
        &self,
        c: &Cred,
        od: u64,
        on: &[u8],
        nd: u64,
        nn: &[u8],
        flags: u32,
    ) -> FsResult<bool> {
        let exchange = flags & RENAME_EXCHANGE != 0;
        let noreplace = flags & RENAME_NOREPLACE != 0;
        let odn = self.model.dir(od)?;
        let ndn = self.model.dir(nd)?;
        need(c, odn, MAY_EXEC)?;
        need(c, ndn, MAY_EXEC)?;
        let src_ino = *odn.kids.get(on).ok_or(Errno::ENOENT)?;
        let new_ino = ndn.kids.get(nn).copied();
        if exchange && new_ino.is_none() {
            return Err(Errno::ENOENT);
        }
        if noreplace && new_ino.is_some() {
            return Err(Errno::EEXIST);
        }
        let src = &self.model.nodes[&src_ino];
        if src.is_dir() && self.model.is_ancestor(src_ino, nd) {
            return Err(Errno::EINVAL);
        }
        let target = new_ino.map(|i| &self.model.nodes[&i]);
        if let (Some(t), Some(ti)) = (target, new_ino) {
            if t.is_dir() && self.model.is_ancestor(ti, od) {
                return Err(if exchange {
                    Errno::EINVAL
                } else {
                    Errno::ENOTEMPTY
                });
            }
            if ti == src_ino {
                return Ok(false);
            }
        }
        self.model.may_delete(c, odn, src, src.is_dir())?;
        match target {
            Some(t) => self.model.may_delete(
                c,
                ndn,
                t,
                if exchange { t.is_dir() } else { src.is_dir() },
            )?,
            None => self.model.may_create(c, ndn)?,
        }
        if od != nd {
            if src.is_dir() {
                need(c, src, MAY_WRITE)?;
            }
            if let Some(t) = target {
                if exchange && t.is_dir() {
                    need(c, t, MAY_WRITE)?;
                }
            }
        }
        if let Some(t) = target {
            if !exchange && t.is_dir() && !t.kids.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
        }
        Ok(true)
    }

    fn apply_rename(&mut self, od: u64, on: &[u8], nd: u64, nn: &[u8], flags: u32) {
        let md = &mut self.model;
        let src = md.nodes.get_mut(&od).unwrap().kids.remove(on).unwrap();
        let target = md.nodes.get_mut(&nd).unwrap().kids.remove(nn);
        md.nodes.get_mut(&nd).unwrap().kids.insert(nn.to_vec(), src);
        let src_dir = md.nodes[&src].is_dir();
        md.nodes.get_mut(&src).unwrap().parent = nd;
        if src_dir && od != nd {
            md.nodes.get_mut(&od).unwrap().nlink -= 1;
            md.nodes.get_mut(&nd).unwrap().nlink += 1;
        }
        if let Some(t) = target {
            let t_dir = md.nodes[&t].is_dir();
            if flags & RENAME_EXCHANGE != 0 {
                md.nodes.get_mut(&od).unwrap().kids.insert(on.to_vec(), t);
                md.nodes.get_mut(&t).unwrap().parent = od;
                if t_dir && od != nd {
                    md.nodes.get_mut(&nd).unwrap().nlink -= 1;
                    md.nodes.get_mut(&od).unwrap().nlink += 1;
                }
            } else {
                let tn = md.nodes.get_mut(&t).unwrap();
                tn.nlink -= 1;
                if t_dir {
                    tn.nlink = 0;
                    tn.parent = 0;
                    md.nodes.get_mut(&nd).unwrap().nlink -= 1;
                }
                md.maybe_delete(t);
            }
        }
    }

    fn model_setattr(&self, c: &Cred, ino: u64, sa: &SetAttr) -> FsResult<Node> {
        let n = self.model.get(ino)?;
        let owner = is_root(c) || c.uid == n.uid;
        if let Some(_size) = sa.size {
            if n.is_dir() {
                return Err(Errno::EISDIR);
            }
            if !n.is_reg() {
                return Err(Errno::EINVAL);
            }
            need(c, n, MAY_WRITE)?;
        }
        if let Some(uid) = sa.uid {
            if !(is_root(c) || (c.uid == n.uid && uid == n.uid)) {
                return Err(Errno::EPERM);
            }
        }
        if let Some(gid) = sa.gid {
            if !(is_root(c) || (c.uid == n.uid && (gid == n.gid || c.in_group(gid)))) {
                return Err(Errno::EPERM);
            }
        }
        if sa.mode.is_some() && !owner {
            return Err(Errno::EPERM);
        }
        let mut n = n.clone();
        if sa.uid.is_some() || sa.gid.is_some() {
            n.uid = sa.uid.unwrap_or(n.uid);
            n.gid = sa.gid.unwrap_or(n.gid);
            if !n.is_dir() {
                n.mode = kill_suid(n.mode);
            }
        }
        if let Some(mode) = sa.mode {
            let mut m = (n.mode & S_IFMT) | (mode & 0o7777);
            if !is_root(c) && !c.in_group(n.gid) {
                m &= !S_ISGID;
            }
            n.mode = m;
        }
        if let Some(size) = sa.size {
            if !is_root(c) {
                n.mode = kill_suid(n.mode);
            }
            n.truncate(size);
        }
        Ok(n)
    }

    fn model_open(&self, c: &Cred, ino: u64, flags: u32) -> FsResult<Node> {
        let n = self.model.get(ino)?;
        if n.mode & S_IFMT == S_IFLNK {
            return Err(Errno::ELOOP);
        }
        if flags & O_DIRECTORY != 0 && !n.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let mut mask = match flags & O_ACCMODE {
            O_RDONLY => MAY_READ,
            O_WRONLY => MAY_WRITE,
            _ => MAY_READ | MAY_WRITE,
        };
        if flags & O_TRUNC != 0 {
            mask |= MAY_WRITE;
        }
        if n.is_dir() && mask & MAY_WRITE != 0 {
            return Err(Errno::EISDIR);
        }
        need(c, n, mask)?;
        let mut n = n.clone();
        if flags & O_TRUNC != 0 && n.is_reg() {
            if !is_root(c) {
                n.mode = kill_suid(n.mode);
            }
            n.truncate(0);
        }
        Ok(n)
    }

    fn xattr_op(&mut self, c: &Cred) {
        let ino = self.any_ino();
        let name = XNAMES[self.r(XNAMES.len() as u64) as usize].to_vec();
        let op = self.r(4);
        let n = match self.model.get(ino) {
            Ok(n) => n.clone(),
            Err(e) => {
                let got = block_on(self.m().getxattr(c, ino, &name));
                agree("getxattr missing", &got, &Err::<(), _>(e));
                return;
            }
        };
        let ns_user = name.starts_with(b"user.");
        let ns_trusted = name.starts_with(b"trusted.");
        let ns_security = name.starts_with(b"security.");
        let perm = |write: bool| -> FsResult<()> {
            if ns_security {
                return if write && !is_root(c) {
                    Err(Errno::EPERM)
                } else {
                    Ok(())
                };
            }
            if ns_trusted {
                return if !is_root(c) {
                    Err(if write { Errno::EPERM } else { Errno::ENODATA })
                } else {
                    Ok(())
                };
            }
            if ns_user {
                if !n.is_reg() && !n.is_dir() {
                    return Err(if write { Errno::EPERM } else { Errno::ENODATA });
                }
                if write && n.is_dir() && n.mode & S_ISVTX != 0 && !(is_root(c) || c.uid == n.uid) {
                    return Err(Errno::EPERM);
                }
            }
            need(c, &n, if write { MAY_WRITE } else { MAY_READ })
        };
        let tagged = name.starts_with(b"scoutfs.hide.");
        match op {
            0 | 1 => {
                let value = self.bytes(if name == b"user.long" { 3000 } else { 40 });
                let flags = [0, 0, XATTR_CREATE, XATTR_REPLACE][self.r(4) as usize];
                self.log.push(format!(
                    "setxattr {c:?} {ino} {name:?} {} {flags}",
                    value.len()
                ));
                let want = perm(true).and_then(|_| {
                    if tagged && !is_root(c) {
                        return Err(Errno::EPERM);
                    }
                    let exists = n.xattrs.contains_key(&name);
                    if exists && flags == XATTR_CREATE {
                        return Err(Errno::EEXIST);
                    }
                    if !exists && flags == XATTR_REPLACE {
                        return Err(Errno::ENODATA);
                    }
                    Ok(())
                });
                let got = block_on(self.m().setxattr(c, ino, &name, &value, flags));
                agree("setxattr", &got, &want);
                if got.is_ok() {
                    self.model
                        .nodes
                        .get_mut(&ino)
                        .unwrap()
                        .xattrs
                        .insert(name, value);
                }
            }
            2 => {
                self.log.push(format!("removexattr {c:?} {ino} {name:?}"));
                let want = perm(true).and_then(|_| {
                    if tagged && !is_root(c) {
                        return Err(Errno::EPERM);
                    }
                    if !n.xattrs.contains_key(&name) {
                        return Err(Errno::ENODATA);
                    }
                    Ok(())
                });
                let got = block_on(self.m().removexattr(c, ino, &name));
                agree("removexattr", &got, &want);
                if got.is_ok() {
                    self.model.nodes.get_mut(&ino).unwrap().xattrs.remove(&name);
                }
            }
            _ => {
                self.log.push(format!("getxattr {c:?} {ino} {name:?}"));
                let want =
                    perm(false).and_then(|_| n.xattrs.get(&name).cloned().ok_or(Errno::ENODATA));
                let got = block_on(self.m().getxattr(c, ino, &name));
                agree("getxattr", &got, &want);
                if let (Ok(a), Ok(b)) = (got, want) {
                    assert_eq!(a, b);
                }
            }
        }
    }

    fn remount(&mut self, crash: bool) {
        self.log.push(format!("remount crash={crash}"));
        let c = self.m().counters();
        self.auto_commits += c.commits_on_size + c.enobufs_commits;
        if crash {
            self.m = None;
            self.backing.crash();
            self.model = self.committed.clone();
        } else {
            let m = self.m.take().unwrap();
            self.backing.unmount(&m);
        }
        self.model.open.clear();
        let gone: Vec<u64> = self
            .model
            .nodes
            .iter()
            .filter(|(_, n)| n.nlink == 0)
            .map(|(k, _)| *k)
            .collect();
        for ino in &gone {
            self.model.nodes.remove(ino);
        }
        let m = self.backing.mount(self.busy_commits);
        self.m = Some(m);
        for ino in gone {
            assert_eq!(
                block_on(self.m().getattr(ino)),
                Err(Errno::ENOENT),
                "orphan {ino} deleted at mount"
            );
        }
        if crash {
            // In-place overwrites of blocks a commit already mapped are
            // not undone by a crash: adopt the contents of files written
            // since the last commit, after checking their size.
            for (ino, touched) in std::mem::take(&mut self.data_dirty) {
                if let Some(n) = self.model.nodes.get_mut(&ino) {
                    if n.is_reg() {
                        let a = block_on(self.m.as_ref().unwrap().getattr(ino)).unwrap();
                        assert_eq!(a.size, n.size, "size of {ino} at the last commit");
                        // blocks mapped at the commit that a lost
                        // operation changed in place
                        for b in touched {
                            if b * BS >= n.size {
                                continue;
                            }
                            let got =
                                block_on(self.m.as_ref().unwrap().read(ino, b * BS, BS as usize))
                                    .unwrap();
                            let mut full = got.clone();
                            full.resize(BS as usize, 0);
                            if full.iter().any(|&x| x != 0) {
                                n.blocks.insert(b, full);
                            } else {
                                n.blocks.remove(&b);
                            }
                        }
                    }
                }
            }
        }
        self.committed = self.model.clone();
        self.data_dirty.clear();
        self.verify();
    }

    /// Walk the whole model and compare every directory, inode, file,
    /// symlink and xattr with the filesystem.
    fn verify(&self) {
        let m = self.m();
        let c = root_cred();
        for (&ino, n) in &self.model.nodes {
            let a = block_on(m.getattr(ino)).unwrap_or_else(|e| panic!("getattr {ino}: {e:?}"));
            check_attr(ino, &a, n);
            if n.is_dir() && n.nlink > 0 {
                let mut pos = 0;
                let mut got = BTreeMap::new();
                loop {
                    let ents = block_on(m.readdir(&c, ino, pos, 7)).unwrap();
                    if ents.is_empty() {
                        break;
                    }
                    for e in ents {
                        pos = e.next_pos;
                        got.insert(e.name.clone(), (e.ino, e.dtype));
                    }
                }
                assert_eq!(got.remove(b".".as_slice()).unwrap().0, ino);
                assert_eq!(got.remove(b"..".as_slice()).unwrap().0, n.parent);
                let want: BTreeMap<Vec<u8>, (u64, u8)> = n
                    .kids
                    .iter()
                    .map(|(k, v)| (k.clone(), (*v, dtype_of_mode(self.model.nodes[v].mode))))
                    .collect();
                assert_eq!(got, want, "entries of {ino}");
            }
            if n.is_reg() {
                for (&b, data) in &n.blocks {
                    let got = block_on(m.read(ino, b * BS, BS as usize)).unwrap();
                    let len = got.len();
                    if let Some(i) = (0..len).find(|&i| got[i] != data[i]) {
                        panic!(
                            "block {b} of {ino} differs at byte {i} of {len}: fs {} model {}",
                            got[i], data[i]
                        );
                    }
                }
                // every mapped block the fs has must match the model too
                let mut blocks: BTreeSet<u64> = BTreeSet::new();
                for e in block_on(m.extents(ino, 0, 10_000)).unwrap() {
                    for b in e.start..e.start + e.len.min(64) {
                        if b * BS < n.size {
                            blocks.insert(b);
                        }
                    }
                }
                for b in blocks {
                    let got = block_on(m.read(ino, b * BS, BS as usize)).unwrap();
                    let want = n.read(b * BS, BS);
                    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                        panic!(
                            "mapped block {b} of {ino} differs at byte {i}: fs {} model {}",
                            got[i], want[i]
                        );
                    }
                }
            }
            if n.mode & S_IFMT == S_IFLNK {
                assert_eq!(block_on(m.readlink(ino)).unwrap(), n.target);
            }
            let mut names = block_on(m.listxattr(&c, ino)).unwrap();
            names.sort();
            let want: Vec<Vec<u8>> = n
                .xattrs
                .keys()
                .filter(|k| !k.starts_with(b"scoutfs.hide."))
                .cloned()
                .collect();
            assert_eq!(names, want, "xattrs of {ino}");
            for (k, v) in &n.xattrs {
                assert_eq!(&block_on(m.getxattr(&c, ino, k)).unwrap(), v);
            }
        }
    }
}

fn check_attr(ino: u64, a: &Attr, n: &Node) {
    let size = match n.mode & S_IFMT {
        S_IFDIR => n.dir_size(),
        S_IFLNK => n.target.len() as u64,
        S_IFREG => n.size,
        _ => 0,
    };
    assert_eq!(
        (a.mode, a.uid, a.gid, a.nlink, a.size, a.rdev),
        (n.mode, n.uid, n.gid, n.nlink, size, n.rdev),
        "attributes of {ino}"
    );
}

fn mount_options(seed: u64, busy_commits: bool) -> MountOptions {
    MountOptions {
        cache_budget_bytes: if seed.is_multiple_of(3) {
            32 << 10
        } else {
            8 << 20
        },
        commit: scoutvm_fs::posix::hold::CommitPolicy {
            dirty_limit_bytes: if busy_commits { 2 << 10 } else { 32 << 20 },
            ..Default::default()
        },
    }
}

/// What a seed runs over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Over {
    Mem,
    Real,
    /// The in-memory backend with the slow cluster lock provider.
    SlowLocks,
}

fn run_seed(seed: u64, ops: usize, over: Over) -> Backing {
    let busy_commits = seed % 5 == 4;
    let real = over == Over::Real;
    let locks = (over == Over::SlowLocks).then(|| SlowLocks::new(common::handle(), seed));
    let mut backing = if real {
        let opts = test_node_options(mount_options(seed, busy_commits));
        Backing::Real {
            vol: Box::new(RealVol::new(8 << 30, 1 << 30, seed, opts)),
            node: None,
        }
    } else {
        let vol = Vol::with(
            MemMkfs {
                data_blocks: 1 << 22,
                ..MemMkfs::default()
            },
            mount_options(seed, busy_commits),
        );
        vol.store
            .set_read_window(if seed.is_multiple_of(2) { 16 } else { 256 });
        Backing::Mem {
            vol,
            be: None,
            locks,
        }
    };
    let m = backing.mount(busy_commits);
    let mut run = Run {
        backing,
        m: Some(m),
        model: Model::new(),
        committed: Model::new(),
        data_dirty: BTreeMap::new(),
        rng: SeededEntropy::new(seed),
        seen: Vec::new(),
        log: Vec::new(),
        busy_commits,
        commits_anytime: busy_commits || over == Over::SlowLocks,
        auto_commits: 0,
    };
    for i in 0..=ops {
        let commits = run.backing.commits();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if i < ops {
                run.step();
                if std::env::var("POSIX_MODEL_VERIFY_ALL").is_ok() {
                    run.verify();
                }
            } else {
                let c = run.m().counters();
                run.auto_commits += c.commits_on_size + c.enobufs_commits;
                // (lock grants commit before the dirty limit is reached)
                if run.busy_commits && over != Over::SlowLocks {
                    assert!(
                        run.auto_commits >= 3,
                        "only {} commits on size",
                        run.auto_commits
                    );
                }
                run.log.push("final check".into());
                run.verify();
                run.remount(false);
            }
        }));
        if std::env::var("POSIX_MODEL_TRACE").is_ok() {
            eprintln!("{i}: {}", run.log.last().unwrap());
        }
        if let Some(ino) = std::env::var("POSIX_MODEL_DUMP_INO")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            if let Some(m) = run.m.as_ref() {
                let a = block_on(m.getattr(ino)).map(|a| a.size);
                eprintln!(
                    "  {ino} size {a:?} extents {:?}",
                    block_on(m.extents(ino, 0, 100))
                );
            }
        }
        if let Err(e) = r {
            eprintln!("seed {seed} op {i} failed; last ops (newest first):");
            for l in run.log.iter().rev().take(40) {
                eprintln!("  {l}");
            }
            std::panic::resume_unwind(e);
        }
        // only explicit syncs and remounts commit in this test
        let last = run.log.last().map(String::as_str).unwrap_or("");
        let now = run.backing.commits();
        if now != commits && !run.commits_anytime {
            assert!(
                last == "sync" || last.starts_with("remount") || last == "final check",
                "unexpected commit after {last}"
            );
        }
        if now != commits && !last.starts_with("remount") {
            run.backing.after_commit();
        }
    }
    run.backing
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_operations_match_the_model() {
    let seeds = env_num("POSIX_MODEL_SEEDS", 200) as u64;
    let first = env_num("POSIX_MODEL_FIRST_SEED", 0) as u64;
    let ops = env_num("POSIX_MODEL_OPS", 400);
    for seed in first..first + seeds {
        run_seed(seed, ops, Over::Mem);
    }
}

#[test]
fn random_operations_match_the_model_on_the_real_backend() {
    let seeds = env_num("POSIX_MODEL_REAL_SEEDS", 60) as u64;
    let first = env_num("POSIX_MODEL_FIRST_SEED", 0) as u64;
    let ops = env_num("POSIX_MODEL_OPS", 400);
    for seed in first..first + seeds {
        run_seed(seed, ops, Over::Real);
    }
    let merged = scoutvm_fs::runtime::counters::get("log_merge.items_merged").unwrap_or(0);
    let finished = scoutvm_fs::runtime::counters::get("log_merge.finished").unwrap_or(0);
    eprintln!("real backend: {finished} merges finished, {merged} items merged");
    if seeds >= 8 {
        assert!(finished > 0 && merged > 0, "the runs never merged");
    }
}

#[test]
fn random_operations_match_the_model_under_slow_cluster_locks() {
    let seeds = env_num("POSIX_MODEL_LOCK_SEEDS", 50) as u64;
    let first = env_num("POSIX_MODEL_FIRST_SEED", 0) as u64;
    let ops = env_num("POSIX_MODEL_OPS", 400);
    let mut total = scoutvm_fs::sim::slow_locks::SlowLockStats::default();
    for seed in first..first + seeds {
        let Backing::Mem {
            locks: Some(locks), ..
        } = run_seed(seed, ops, Over::SlowLocks)
        else {
            unreachable!("slow locks run over memory");
        };
        let s = locks.stats();
        total.acquisitions += s.acquisitions;
        total.cached += s.cached;
        total.grants += s.grants;
        total.commits += s.commits;
        total.dropped += s.dropped;
        total.write_seq_ahead += s.write_seq_ahead;
    }
    eprintln!("slow locks: {total:?}");
    if seeds >= 8 {
        // the runs went through the provider, and it made them commit and
        // stamp items with write_seqs ahead of their transactions
        assert!(total.grants > 0 && total.commits > 0 && total.dropped > 0);
        assert!(total.write_seq_ahead > 0);
    }
}
