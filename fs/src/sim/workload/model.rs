//! A reference model of a small POSIX namespace (as root: no permission
//! checks), the errno each operation must return, and a canonical
//! [`Tree`] of a namespace that can be taken from the model or walked
//! from a real mount and compared.

use crate::errno::{Errno, FsResult};
use crate::posix::mount::Mount;
use crate::posix::types::*;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

pub const ROOT: u64 = 1;
pub const BS: u64 = 4096;

/// One inode of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MNode {
    pub mode: u32,
    pub nlink: u32,
    pub size: u64,
    /// Non-zero 4 KiB blocks of a regular file; bytes past `size` are 0.
    pub blocks: BTreeMap<u64, Vec<u8>>,
    pub target: Vec<u8>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub kids: BTreeMap<Vec<u8>, u64>,
    pub parent: u64,
}

impl MNode {
    pub fn new(mode: u32) -> MNode {
        MNode {
            mode,
            nlink: if mode & S_IFMT == S_IFDIR { 2 } else { 1 },
            size: 0,
            blocks: BTreeMap::new(),
            target: Vec::new(),
            xattrs: BTreeMap::new(),
            kids: BTreeMap::new(),
            parent: 0,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    pub fn is_reg(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }

    /// The size `getattr` reports.
    pub fn attr_size(&self) -> u64 {
        match self.mode & S_IFMT {
            S_IFDIR => self.kids.keys().map(|k| k.len() as u64).sum(),
            S_IFLNK => self.target.len() as u64,
            S_IFREG => self.size,
            _ => 0,
        }
    }

    pub fn read(&self, off: u64, len: u64) -> Vec<u8> {
        if off >= self.size || len == 0 {
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

    pub fn write(&mut self, off: u64, data: &[u8]) {
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

    pub fn truncate(&mut self, size: u64) {
        if size < self.size {
            let keys: Vec<u64> = self.blocks.range(size / BS..).map(|(k, _)| *k).collect();
            for b in keys {
                let bs = b * BS;
                let blk = self.blocks.get_mut(&b).expect("listed block");
                for i in bs.max(size)..bs + BS {
                    blk[(i - bs) as usize] = 0;
                }
                if blk.iter().all(|&x| x == 0) {
                    self.blocks.remove(&b);
                }
            }
        }
        self.size = size;
    }
}

/// The model of a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub nodes: BTreeMap<u64, MNode>,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

impl Model {
    /// An empty volume: the root directory.
    pub fn new() -> Model {
        let mut r = MNode::new(S_IFDIR | 0o755);
        r.parent = ROOT;
        let mut nodes = BTreeMap::new();
        nodes.insert(ROOT, r);
        Model { nodes }
    }

    pub fn get(&self, ino: u64) -> FsResult<&MNode> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    pub fn dir(&self, ino: u64) -> FsResult<&MNode> {
        let d = self.get(ino)?;
        if !d.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(d)
    }

    /// A regular file (what read, write and truncate need).
    pub fn file(&self, ino: u64) -> FsResult<&MNode> {
        let n = self.get(ino)?;
        if n.is_dir() {
            return Err(Errno::EISDIR);
        }
        if !n.is_reg() {
            return Err(Errno::EINVAL);
        }
        Ok(n)
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

    /// Check a create of `mode` (type bits included) in `dir`.
    pub fn check_create(&self, dir: u64, name: &[u8], mode: u32) -> FsResult<MNode> {
        let d = self.dir(dir)?;
        if name == b"." || name == b".." || d.kids.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        if d.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        let mut n = MNode::new(mode);
        n.parent = dir;
        Ok(n)
    }

    pub fn add(&mut self, dir: u64, name: &[u8], ino: u64, n: MNode) -> Result<(), String> {
        if self.nodes.contains_key(&ino) {
            return Err(format!("inode number {ino} reused"));
        }
        let is_dir = n.is_dir();
        self.nodes.insert(ino, n);
        let d = self.nodes.get_mut(&dir).expect("checked dir");
        d.kids.insert(name.to_vec(), ino);
        if is_dir {
            d.nlink += 1;
        }
        Ok(())
    }

    pub fn check_link(&self, ino: u64, dir: u64, name: &[u8]) -> FsResult<()> {
        let d = self.dir(dir)?;
        if d.kids.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let n = self.get(ino)?;
        if d.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if n.is_dir() {
            return Err(Errno::EPERM);
        }
        if n.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        Ok(())
    }

    pub fn apply_link(&mut self, ino: u64, dir: u64, name: &[u8]) {
        self.nodes.get_mut(&ino).expect("checked").nlink += 1;
        self.nodes
            .get_mut(&dir)
            .expect("checked")
            .kids
            .insert(name.to_vec(), ino);
    }

    pub fn check_unlink(&self, dir: u64, name: &[u8], rmdir: bool) -> FsResult<()> {
        let d = self.dir(dir)?;
        if rmdir && name == b"." {
            return Err(Errno::EINVAL);
        }
        if rmdir && name == b".." {
            return Err(Errno::ENOTEMPTY);
        }
        let ino = *d.kids.get(name).ok_or(Errno::ENOENT)?;
        let v = &self.nodes[&ino];
        match (rmdir, v.is_dir()) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        if rmdir && !v.kids.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        Ok(())
    }

    /// Unlink (no file is ever open: the last link deletes the inode).
    pub fn apply_unlink(&mut self, dir: u64, name: &[u8]) {
        let ino = self
            .nodes
            .get_mut(&dir)
            .expect("checked")
            .kids
            .remove(name)
            .expect("checked");
        self.drop_link(dir, ino);
    }

    fn drop_link(&mut self, dir: u64, ino: u64) {
        let v = self.nodes.get_mut(&ino).expect("linked inode");
        v.nlink -= 1;
        if v.is_dir() {
            v.nlink = 0;
            self.nodes.get_mut(&dir).expect("dir").nlink -= 1;
        }
        if self.nodes[&ino].nlink == 0 {
            self.nodes.remove(&ino);
        }
    }

    /// Ok(true): the rename changes something; Ok(false): a no-op.
    pub fn check_rename(
        &self,
        od: u64,
        on: &[u8],
        nd: u64,
        nn: &[u8],
        flags: u32,
    ) -> FsResult<bool> {
        let exchange = flags & RENAME_EXCHANGE != 0;
        let noreplace = flags & RENAME_NOREPLACE != 0;
        let odn = self.dir(od)?;
        let ndn = self.dir(nd)?;
        let src_ino = *odn.kids.get(on).ok_or(Errno::ENOENT)?;
        let new_ino = ndn.kids.get(nn).copied();
        if exchange && new_ino.is_none() {
            return Err(Errno::ENOENT);
        }
        if noreplace && new_ino.is_some() {
            return Err(Errno::EEXIST);
        }
        let src = &self.nodes[&src_ino];
        if src.is_dir() && self.is_ancestor(src_ino, nd) {
            return Err(Errno::EINVAL);
        }
        let target = new_ino.map(|i| (i, &self.nodes[&i]));
        if let Some((ti, t)) = target {
            if t.is_dir() && self.is_ancestor(ti, od) {
                return Err(if exchange {
                    Errno::EINVAL
                } else {
                    Errno::ENOTEMPTY
                });
            }
            if ti == src_ino {
                return Ok(false);
            }
            if !exchange {
                match (src.is_dir(), t.is_dir()) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    _ => {}
                }
            }
        } else if ndn.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if let Some((_, t)) = target {
            if !exchange && t.is_dir() && !t.kids.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
        }
        Ok(true)
    }

    pub fn apply_rename(&mut self, od: u64, on: &[u8], nd: u64, nn: &[u8], flags: u32) {
        let src = self
            .nodes
            .get_mut(&od)
            .expect("dir")
            .kids
            .remove(on)
            .expect("checked");
        let target = self.nodes.get_mut(&nd).expect("dir").kids.remove(nn);
        self.nodes
            .get_mut(&nd)
            .expect("dir")
            .kids
            .insert(nn.to_vec(), src);
        let src_dir = self.nodes[&src].is_dir();
        self.nodes.get_mut(&src).expect("src").parent = nd;
        if src_dir && od != nd {
            self.nodes.get_mut(&od).expect("dir").nlink -= 1;
            self.nodes.get_mut(&nd).expect("dir").nlink += 1;
        }
        if let Some(t) = target {
            if flags & RENAME_EXCHANGE != 0 {
                let t_dir = self.nodes[&t].is_dir();
                self.nodes
                    .get_mut(&od)
                    .expect("dir")
                    .kids
                    .insert(on.to_vec(), t);
                self.nodes.get_mut(&t).expect("target").parent = od;
                if t_dir && od != nd {
                    self.nodes.get_mut(&nd).expect("dir").nlink -= 1;
                    self.nodes.get_mut(&od).expect("dir").nlink += 1;
                }
            } else {
                self.drop_link(nd, t);
            }
        }
    }

    /// xattr names in the model's namespaces: `user.` only on files and
    /// directories (EPERM to set, ENODATA to get elsewhere).
    pub fn check_xattr(&self, ino: u64, name: &[u8], write: bool) -> FsResult<&MNode> {
        let n = self.get(ino)?;
        if name.starts_with(b"user.") && !n.is_reg() && !n.is_dir() {
            return Err(if write { Errno::EPERM } else { Errno::ENODATA });
        }
        Ok(n)
    }

    pub fn lookup(&self, dir: u64, name: &[u8]) -> FsResult<u64> {
        let d = self.dir(dir)?;
        if d.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        match name {
            b"." => Ok(dir),
            b".." => Ok(d.parent),
            _ => d.kids.get(name).copied().ok_or(Errno::ENOENT),
        }
    }

    /// The canonical tree of the model.
    pub fn tree(&self) -> Tree {
        let mut out = Tree::new();
        let r = &self.nodes[&ROOT];
        out.insert(
            b"/".to_vec(),
            Entry {
                ino: ROOT,
                mode: r.mode,
                nlink: r.nlink,
                size: r.attr_size(),
                blocks: BTreeMap::new(),
                target: Vec::new(),
                xattrs: r.xattrs.clone(),
            },
        );
        let mut todo = vec![(ROOT, b"/".to_vec())];
        while let Some((dir, path)) = todo.pop() {
            for (name, &ino) in &self.nodes[&dir].kids {
                let n = &self.nodes[&ino];
                let mut p = path.clone();
                p.extend_from_slice(name);
                if n.is_dir() {
                    let mut sub = p.clone();
                    sub.push(b'/');
                    todo.push((ino, sub));
                }
                out.insert(
                    p,
                    Entry {
                        ino,
                        mode: n.mode,
                        nlink: n.nlink,
                        size: n.attr_size(),
                        blocks: n.blocks.clone(),
                        target: n.target.clone(),
                        xattrs: n.xattrs.clone(),
                    },
                );
            }
        }
        out
    }
}

/// One entry of a canonical namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ino: u64,
    pub mode: u32,
    pub nlink: u32,
    pub size: u64,
    /// Non-zero 4 KiB blocks below `size` (regular files).
    pub blocks: BTreeMap<u64, Vec<u8>>,
    /// A symlink's target.
    pub target: Vec<u8>,
    /// Visible xattrs.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A namespace by path (directories end in `/` when they are parents).
pub type Tree = BTreeMap<Vec<u8>, Entry>;

/// Walk a mount into its canonical tree (as root). Reads only mapped
/// blocks, so sparse files far past their data cost nothing.
pub async fn walk(m: &Mount) -> FsResult<Tree> {
    let c = Cred::root();
    let mut out = Tree::new();
    let a = m.getattr(ROOT).await?;
    let mut xattrs = BTreeMap::new();
    for n in m.listxattr(&c, ROOT).await? {
        let v = m.getxattr(&c, ROOT, &n).await?;
        xattrs.insert(n, v);
    }
    out.insert(
        b"/".to_vec(),
        Entry {
            ino: ROOT,
            mode: a.mode,
            nlink: a.nlink,
            size: a.size,
            blocks: BTreeMap::new(),
            target: Vec::new(),
            xattrs,
        },
    );
    let mut todo = vec![(ROOT, b"/".to_vec())];
    while let Some((dir, path)) = todo.pop() {
        let mut pos = 0;
        loop {
            let ents = m.readdir(&c, dir, pos, 64).await?;
            if ents.is_empty() {
                break;
            }
            for e in ents {
                pos = e.next_pos;
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let mut p = path.clone();
                p.extend_from_slice(&e.name);
                let a = m.getattr(e.ino).await?;
                if dtype_of_mode(a.mode) != e.dtype {
                    return Err(Errno::EUCLEAN);
                }
                let mut blocks = BTreeMap::new();
                let mut target = Vec::new();
                match a.mode & S_IFMT {
                    S_IFREG => {
                        let end = a.size.div_ceil(BS);
                        let mut from = 0;
                        'ext: loop {
                            let exts = m.extents(e.ino, from, 16).await?;
                            if exts.is_empty() {
                                break;
                            }
                            for x in exts {
                                from = x.start + x.len;
                                for b in x.start..from.min(end) {
                                    let mut d = m.read(e.ino, b * BS, BS as usize).await?;
                                    if d.iter().any(|&v| v != 0) {
                                        d.resize(BS as usize, 0);
                                        blocks.insert(b, d);
                                    }
                                }
                                if from >= end {
                                    break 'ext;
                                }
                            }
                        }
                    }
                    S_IFLNK => target = m.readlink(e.ino).await?,
                    S_IFDIR => {
                        let mut sub = p.clone();
                        sub.push(b'/');
                        todo.push((e.ino, sub));
                    }
                    _ => {}
                }
                let mut xattrs = BTreeMap::new();
                for n in m.listxattr(&c, e.ino).await? {
                    let v = m.getxattr(&c, e.ino, &n).await?;
                    xattrs.insert(n, v);
                }
                out.insert(
                    p,
                    Entry {
                        ino: e.ino,
                        mode: a.mode,
                        nlink: a.nlink,
                        size: a.size,
                        blocks,
                        target,
                        xattrs,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// The model's tree minus what a mount does not show (hidden xattrs).
pub fn visible(mut t: Tree) -> Tree {
    for e in t.values_mut() {
        e.xattrs.retain(|k, _| !k.starts_with(b"scoutfs.hide."));
    }
    t
}

/// The first few differences between the filesystem's tree and the
/// expected one, or None if they are equal.
pub fn diff(fs: &Tree, want: &Tree) -> Option<String> {
    if fs == want {
        return None;
    }
    let mut s = String::new();
    let mut n = 0;
    let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    for (k, v) in fs {
        if n >= 6 {
            break;
        }
        match want.get(k) {
            None => {
                s += &format!("only in fs: {} (ino {}); ", show(k), v.ino);
                n += 1;
            }
            Some(w) if w != v => {
                s += &format!("differs: {}: {}; ", show(k), describe(v, w));
                n += 1;
            }
            _ => {}
        }
    }
    for (k, w) in want {
        if n >= 6 {
            break;
        }
        if !fs.contains_key(k) {
            s += &format!("missing in fs: {} (ino {}); ", show(k), w.ino);
            n += 1;
        }
    }
    Some(s.trim_end_matches("; ").into())
}

fn describe(fs: &Entry, want: &Entry) -> String {
    let mut s = String::new();
    if fs.ino != want.ino {
        s += &format!("ino {} vs {} ", fs.ino, want.ino);
    }
    if fs.mode != want.mode {
        s += &format!("mode {:o} vs {:o} ", fs.mode, want.mode);
    }
    if fs.nlink != want.nlink {
        s += &format!("nlink {} vs {} ", fs.nlink, want.nlink);
    }
    if fs.size != want.size {
        s += &format!("size {} vs {} ", fs.size, want.size);
    }
    if fs.blocks != want.blocks {
        let b = fs
            .blocks
            .iter()
            .find(|(k, v)| want.blocks.get(*k) != Some(*v))
            .map(|(k, _)| *k)
            .or_else(|| {
                want.blocks
                    .keys()
                    .find(|k| !fs.blocks.contains_key(*k))
                    .copied()
            });
        s += &format!("data (first differing block {b:?}) ");
    }
    if fs.target != want.target {
        s += "symlink target ";
    }
    if fs.xattrs != want.xattrs {
        s += &format!(
            "xattrs {:?} vs {:?} ",
            fs.xattrs.keys().map(|k| show_name(k)).collect::<Vec<_>>(),
            want.xattrs.keys().map(|k| show_name(k)).collect::<Vec<_>>()
        );
    }
    s.trim_end().into()
}

fn show_name(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}
