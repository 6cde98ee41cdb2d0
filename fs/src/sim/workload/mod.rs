//! Workloads and their checkers. Today: single-node workloads on the real
//! backend, one independent volume per node (so `--nodes K` runs K of
//! them side by side in one world):
//!
//! - [`posix`]: random namespace and data operations against the
//!   [`model`], every result and errno checked after every operation,
//!   with syncs, log merges, clean remounts and full walks; the node's
//!   background tasks (commit ticker, merge worker) run as in production.
//! - [`crash`]: the same operations (those a crash cannot make
//!   ambiguous), with crash cycles: a power cut at a random instant or
//!   after a random number of disk writes (inside commits), then fsck of
//!   what the disks kept, a restart (recovery) and a walk that must equal
//!   the namespace of the last commit or of the one in flight.
//!
//! Checkers never panic: they return a [`Failure`] (node, step, virtual
//! time, what differed), which ends the seed. The [`Engine`] holds what
//! both share: the model, the operation mix and the bookkeeping of what
//! may be durable.

pub mod cluster;
pub mod crash;
pub mod failover;
pub mod model;
pub mod posix;
pub mod quorum;
pub mod session;

use crate::client::node::NodeOptions;
use crate::errno::{Errno, FsResult};
use crate::posix::mount::Mount;
use crate::posix::types::*;
use crate::runtime::env::{Entropy, SeededEntropy};
use crate::runtime::node::NodeId;
use crate::sim::fault::{CrashTrigger, Fault, Loss};
use crate::sim::fsnode::{FsNode, Volume};
use crate::sim::world::World;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::future::Future;
use model::{Model, Tree, BS, ROOT};

/// A checker's verdict against the filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub node: NodeId,
    pub step: u64,
    pub time_ns: u64,
    pub what: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {} step {} at {}.{:09}s: {}",
            self.node,
            self.step,
            self.time_ns / 1_000_000_000,
            self.time_ns % 1_000_000_000,
            self.what
        )
    }
}

/// Why a step did not complete.
pub enum Stop {
    /// The node died under the operation (expected in crash cycles).
    Down,
    Fail(Failure),
}

/// A fault planted on purpose, to prove the checkers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inject {
    None,
    /// The disks acknowledge flushes without making anything durable.
    LyingFlush,
    /// The model is corrupted at this step (an xattr the fs never got).
    ModelBug {
        step: u64,
    },
    /// The quorum workload's fence agent reports fenced without cutting
    /// the target off its disks.
    LyingFence,
    /// The cluster workload's mounts share their tree with local locks
    /// (no coherence): the cross-mount probes must see it.
    NoLocks,
}

/// How long a workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Operations per node.
    pub steps: u64,
    /// Stop starting steps after this virtual time.
    pub until_ns: u64,
    /// Crash runs end with the merge liveness check (pending merge work
    /// finishes once faults stop); the runner always sets it (it caught
    /// merge ranges given back at a crash and never handed out again,
    /// docs/simulator.md).
    pub crash_merge_liveness: bool,
}

const NAMES: [&[u8]; 8] = [b"a", b"b", b"c", b"dd", b"eee", b"f", b"name_longer", b"z"];
const XNAMES: [&[u8]; 4] = [b"user.a", b"user.b", b"user.long", b"trusted.t"];
const MODES: [u32; 4] = [0o755, 0o700, 0o644, 0o600];

/// What the model may look like on disk after a crash now.
#[derive(Clone, Default)]
struct Durability {
    /// Committed states the volume may hold (newest last).
    durable: Vec<Model>,
    /// Blocks written in place since the oldest of them (their contents
    /// after a crash may be old or new).
    touched: BTreeMap<u64, BTreeSet<u64>>,
    /// Files created since the last commit (never mapped by a commit:
    /// in-place writes to them are safe).
    fresh: BTreeSet<u64>,
    commits_seen: u64,
    /// This operation's share of the above.
    op_touched: BTreeMap<u64, BTreeSet<u64>>,
    op_created: BTreeSet<u64>,
}

/// One node's workload: the world, the node, its volume and the model.
pub struct Engine {
    pub w: Rc<World>,
    pub node: NodeId,
    pub vol: Volume,
    pub opts: NodeOptions,
    pub budget: Budget,
    pub inject: Inject,
    rng: SeededEntropy,
    pub model: Model,
    pub step: u64,
    crash_mode: bool,
    seen: Vec<u64>,
    dur: Durability,
    injected: bool,
    /// The mount operations run on instead of the node's own
    /// [`FsNode`] (the cluster workload: several mounts of one volume,
    /// `node` set to the mount's node before each step).
    pub mount_override: Option<Rc<Mount>>,
    /// Pick targets only under this directory (each mount of the
    /// cluster-disjoint workload keeps to its own).
    pub scope: Option<u64>,
    /// What the last operation named: (directory, name) pairs and
    /// inodes, so another mount can read them back (the cluster
    /// workload's cross-mount probe).
    pub marks: Vec<Mark>,
}

/// A target of an operation another mount reads back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    Name(u64, Vec<u8>),
    Ino(u64),
}

fn code<T>(r: &FsResult<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.name().into(),
    }
}

impl Engine {
    pub fn new(
        w: Rc<World>,
        node: NodeId,
        vol: Volume,
        opts: NodeOptions,
        budget: Budget,
        inject: Inject,
        crash_mode: bool,
    ) -> Engine {
        let rng = SeededEntropy::new(w.fork_seed(node as u64));
        Engine {
            w,
            node,
            vol,
            opts,
            budget,
            inject,
            rng,
            model: Model::new(),
            step: 0,
            crash_mode,
            seen: Vec::new(),
            dur: Durability {
                durable: alloc::vec![Model::new()],
                ..Durability::default()
            },
            injected: false,
            mount_override: None,
            scope: None,
            marks: Vec::new(),
        }
    }

    fn mark_name(&mut self, dir: u64, name: &[u8]) {
        self.marks.push(Mark::Name(dir, name.to_vec()));
    }

    fn mark_ino(&mut self, ino: u64) {
        self.marks.push(Mark::Ino(ino));
    }

    /// The inodes under `self.scope` (with it), if there is a scope.
    fn in_scope(&self) -> Option<BTreeSet<u64>> {
        let root = self.scope?;
        let mut out = BTreeSet::new();
        let mut todo = alloc::vec![root];
        while let Some(d) = todo.pop() {
            if !out.insert(d) {
                continue;
            }
            if let Some(n) = self.model.nodes.get(&d) {
                todo.extend(n.kids.values().copied());
            }
        }
        Some(out)
    }

    pub fn r(&self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    pub fn failure(&self, what: String) -> Failure {
        Failure {
            node: self.node,
            step: self.step,
            time_ns: self.w.now(),
            what,
        }
    }

    pub fn fail(&self, what: String) -> Stop {
        Stop::Fail(self.failure(what))
    }

    /// More steps to run?
    pub fn more(&self) -> bool {
        self.step < self.budget.steps && self.w.now() < self.budget.until_ns
    }

    fn fs(&self) -> Result<Rc<FsNode>, Stop> {
        self.w.software::<FsNode>(self.node).ok_or(Stop::Down)
    }

    /// Log a harness event of this node.
    pub fn note(&self, kind: &'static str, text: &str) {
        self.w.log(self.node, kind, &[self.step], text);
    }

    /// Run one filesystem operation on the node and log it and its result.
    pub async fn op<T: 'static, Fut>(
        &self,
        desc: String,
        make: impl FnOnce(Rc<Mount>) -> Fut,
    ) -> Result<FsResult<T>, Stop>
    where
        Fut: Future<Output = FsResult<T>> + 'static,
    {
        let m = match &self.mount_override {
            Some(m) => m.clone(),
            None => self.fs()?.mount.clone(),
        };
        let r = self.w.on(self.node, make(m)).await;
        let result = match &r {
            Ok(x) => code(x),
            Err(_) => "node down".into(),
        };
        self.w.log(
            self.node,
            "op",
            &[self.step],
            &format!("{desc} -> {result}"),
        );
        r.map_err(|_| Stop::Down)
    }

    fn agree<T, U>(&self, desc: &str, fs: &FsResult<T>, model: &FsResult<U>) -> Result<(), Stop> {
        match (fs, model) {
            (Ok(_), Ok(_)) => Ok(()),
            (Err(a), Err(b)) if a == b => Ok(()),
            _ => Err(self.fail(format!(
                "{desc}: fs says {}, the model {}",
                code(fs),
                code(model)
            ))),
        }
    }

    /// Think time between operations: mostly short, now and then long
    /// enough for the node's timers (commit ticker, merge worker).
    pub async fn think(&self) {
        let ns = if self.r(100) < 2 {
            1_000_000_000 + self.r(4_000_000_000)
        } else {
            self.r(2_000_000)
        };
        self.w.sleep(ns).await;
    }

    // ---- picking targets ----

    fn name(&self) -> Vec<u8> {
        NAMES[self.r(NAMES.len() as u64) as usize].to_vec()
    }

    fn any_ino(&self) -> u64 {
        let scope = self.in_scope();
        // a scoped mount keeps off inodes gone from the model (another
        // mount's, which it may still see in roots it has not refreshed)
        if self.r(10) == 0 && !self.seen.is_empty() && scope.is_none() {
            return self.seen[self.r(self.seen.len() as u64) as usize];
        }
        let keys: Vec<u64> = self
            .model
            .nodes
            .keys()
            .copied()
            .filter(|k| scope.as_ref().is_none_or(|s| s.contains(k)))
            .collect();
        keys[self.r(keys.len() as u64) as usize]
    }

    fn pick(&self, f: impl Fn(&model::MNode) -> bool) -> u64 {
        let scope = self.in_scope();
        let v: Vec<u64> = self
            .model
            .nodes
            .iter()
            .filter(|(k, n)| f(n) && scope.as_ref().is_none_or(|s| s.contains(k)))
            .map(|(k, _)| *k)
            .collect();
        if v.is_empty() || self.r(20) == 0 {
            return self.any_ino();
        }
        v[self.r(v.len() as u64) as usize]
    }

    fn dir_ino(&self) -> u64 {
        self.pick(|n| n.is_dir())
    }

    fn file_ino(&self) -> u64 {
        self.pick(|n| n.is_reg())
    }

    fn offset(&self) -> u64 {
        match self.r(20) {
            0 => (1 << 32) + self.r(3 * BS),
            1..=2 => self.r(1 << 20),
            _ => self.r(6 * BS),
        }
    }

    fn bytes(&self, max: u64) -> Vec<u8> {
        let n = self.r(max) as usize;
        let seed = self.rng.next_u64() as u8;
        (0..n).map(|i| seed.wrapping_add(i as u8) | 1).collect()
    }

    fn touch(&mut self, ino: u64, blocks: impl IntoIterator<Item = u64>) {
        let blocks: Vec<u64> = blocks.into_iter().collect();
        self.dur
            .touched
            .entry(ino)
            .or_default()
            .extend(blocks.iter().copied());
        self.dur.op_touched.entry(ino).or_default().extend(blocks);
    }

    fn created(&mut self, ino: u64) {
        self.seen.push(ino);
        self.dur.fresh.insert(ino);
        self.dur.op_created.insert(ino);
    }

    // ---- one random operation ----

    /// One random namespace or data operation, checked against the model.
    pub async fn random_op(&mut self) -> Result<(), Stop> {
        if let Inject::ModelBug { step } = self.inject {
            if self.step >= step && !self.injected {
                self.injected = true;
                self.note("inject_model_bug", "");
                if let Some(root) = self.model.nodes.get_mut(&ROOT) {
                    root.xattrs.insert(b"user.injected".to_vec(), b"1".to_vec());
                }
            }
        }
        let pre = self.crash_mode.then(|| self.model.clone());
        self.dur.op_touched.clear();
        self.dur.op_created.clear();
        let r = self.random_op_inner().await;
        if let (Some(pre), Ok(())) = (pre, &r) {
            self.after_op(pre, false);
        }
        r
    }

    async fn random_op_inner(&mut self) -> Result<(), Stop> {
        match self.r(100) {
            0..=15 => self.op_create().await,
            16..=19 => self.op_symlink().await,
            20..=24 => self.op_link().await,
            25..=34 => self.op_unlink().await,
            35..=44 => self.op_rename().await,
            45..=50 => self.op_truncate().await,
            51..=66 => self.op_write().await,
            67..=74 => self.op_read().await,
            75..=84 => self.op_xattr().await,
            85..=91 => self.op_lookup().await,
            92..=96 => self.op_getattr().await,
            _ => self.op_readdir().await,
        }
    }

    /// Crash mode: account for commits the operation caused.
    fn after_op(&mut self, pre: Model, sync: bool) {
        let Ok(fs) = self.fs() else {
            return;
        };
        let commits = fs.mount.counters().commits;
        if sync {
            self.dur.durable = alloc::vec![self.model.clone()];
            self.dur.touched.clear();
            self.dur.fresh.clear();
        } else if commits != self.dur.commits_seen {
            // a commit before the operation changed anything (a hold's
            // checkpoint), or one right after it
            self.note("commit_outside_sync", "");
            self.dur.durable = alloc::vec![pre, self.model.clone()];
            self.dur.touched = core::mem::take(&mut self.dur.op_touched);
            self.dur.fresh = core::mem::take(&mut self.dur.op_created);
        }
        self.dur.commits_seen = commits;
    }

    async fn op_create(&mut self) -> Result<(), Stop> {
        let (dir, name, mode) = (self.dir_ino(), self.name(), MODES[self.r(4) as usize]);
        let is_dir = self.r(4) == 0;
        let full = if is_dir {
            S_IFDIR | mode
        } else {
            S_IFREG | mode
        };
        let desc = format!(
            "{} {dir} {:?} {mode:o}",
            if is_dir { "mkdir" } else { "create" },
            String::from_utf8_lossy(&name)
        );
        self.mark_name(dir, &name);
        let want = self.model.check_create(dir, &name, full);
        let n2 = name.clone();
        let got = self
            .op(desc.clone(), move |m| async move {
                let c = Cred::root();
                if is_dir {
                    m.mkdir(&c, dir, &n2, mode).await
                } else {
                    m.create(&c, dir, &n2, mode).await
                }
            })
            .await?;
        self.agree(&desc, &got, &want)?;
        if let (Ok(a), Ok(n)) = (got, want) {
            if (a.mode, a.nlink, a.size) != (n.mode, n.nlink, 0) {
                return Err(self.fail(format!(
                    "{desc}: attributes {:o}/{}/{} want {:o}/{}/0",
                    a.mode, a.nlink, a.size, n.mode, n.nlink
                )));
            }
            self.model
                .add(dir, &name, a.ino, n)
                .map_err(|e| self.fail(format!("{desc}: {e}")))?;
            self.created(a.ino);
        }
        Ok(())
    }

    async fn op_symlink(&mut self) -> Result<(), Stop> {
        let (dir, name) = (self.dir_ino(), self.name());
        let mut target = self.bytes(1500);
        if target.is_empty() {
            target.push(b't');
        }
        let desc = format!(
            "symlink {dir} {:?} {}",
            String::from_utf8_lossy(&name),
            target.len()
        );
        self.mark_name(dir, &name);
        let want = self.model.check_create(dir, &name, S_IFLNK | 0o777);
        let (n2, t2) = (name.clone(), target.clone());
        let got = self
            .op(desc.clone(), move |m| async move {
                m.symlink(&Cred::root(), dir, &n2, &t2).await
            })
            .await?;
        self.agree(&desc, &got, &want)?;
        if let (Ok(a), Ok(mut n)) = (got, want) {
            n.size = target.len() as u64;
            n.target = target;
            self.model
                .add(dir, &name, a.ino, n)
                .map_err(|e| self.fail(format!("{desc}: {e}")))?;
            self.created(a.ino);
        }
        Ok(())
    }

    async fn op_link(&mut self) -> Result<(), Stop> {
        let (ino, dir, name) = (self.any_ino(), self.dir_ino(), self.name());
        let desc = format!("link {ino} {dir} {:?}", String::from_utf8_lossy(&name));
        self.mark_name(dir, &name);
        self.mark_ino(ino);
        let want = self.model.check_link(ino, dir, &name);
        let n2 = name.clone();
        let got = self
            .op(desc.clone(), move |m| async move {
                m.link(&Cred::root(), ino, dir, &n2).await
            })
            .await?;
        self.agree(&desc, &got, &want)?;
        if got.is_ok() {
            self.model.apply_link(ino, dir, &name);
        }
        Ok(())
    }

    async fn op_unlink(&mut self) -> Result<(), Stop> {
        let (dir, name, rmdir) = (self.dir_ino(), self.name(), self.r(3) == 0);
        let desc = format!(
            "{} {dir} {:?}",
            if rmdir { "rmdir" } else { "unlink" },
            String::from_utf8_lossy(&name)
        );
        self.mark_name(dir, &name);
        let want = self.model.check_unlink(dir, &name, rmdir);
        let n2 = name.clone();
        let got = self
            .op(desc.clone(), move |m| async move {
                if rmdir {
                    m.rmdir(&Cred::root(), dir, &n2).await
                } else {
                    m.unlink(&Cred::root(), dir, &n2).await
                }
            })
            .await?;
        self.agree(&desc, &got, &want)?;
        if got.is_ok() {
            self.model.apply_unlink(dir, &name);
        }
        Ok(())
    }

    async fn op_rename(&mut self) -> Result<(), Stop> {
        let (od, on, nd, nn) = (self.dir_ino(), self.name(), self.dir_ino(), self.name());
        let flags = [0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE][self.r(4) as usize];
        let desc = format!(
            "rename {od} {:?} {nd} {:?} {flags}",
            String::from_utf8_lossy(&on),
            String::from_utf8_lossy(&nn)
        );
        self.mark_name(od, &on);
        self.mark_name(nd, &nn);
        let want = self.model.check_rename(od, &on, nd, &nn, flags);
        let (o2, n2) = (on.clone(), nn.clone());
        let got = self
            .op(desc.clone(), move |m| async move {
                m.rename(&Cred::root(), od, &o2, nd, &n2, flags).await
            })
            .await?;
        self.agree(&desc, &got, &want)?;
        if let Ok(true) = want {
            self.model.apply_rename(od, &on, nd, &nn, flags);
        }
        Ok(())
    }

    async fn op_truncate(&mut self) -> Result<(), Stop> {
        let ino = self.file_ino();
        let cur = self.model.nodes.get(&ino).map_or(0, |n| n.size);
        let size = if self.crash_mode {
            if self.dur.fresh.contains(&ino) {
                self.r(2 * cur + 1)
            } else {
                // a committed file's partial block would be zeroed in place
                (cur / 2) & !(BS - 1)
            }
        } else {
            self.offset()
        };
        let desc = format!("truncate {ino} {size}");
        self.mark_ino(ino);
        let want = self.model.file(ino).map(|_| ());
        let got = self
            .op(desc.clone(), move |m| async move {
                let sa = SetAttr {
                    size: Some(size),
                    ..SetAttr::default()
                };
                m.setattr(&Cred::root(), ino, &sa).await
            })
            .await?;
        self.agree(&desc, &got, &want)?;
        if let Ok(a) = &got {
            if a.size != size {
                return Err(self.fail(format!("{desc}: size {} after", a.size)));
            }
            self.model.nodes.get_mut(&ino).expect("file").truncate(size);
            self.touch(ino, [cur / BS, size / BS]);
        }
        Ok(())
    }

    async fn op_write(&mut self) -> Result<(), Stop> {
        let ino = self.file_ino();
        let cur = self.model.nodes.get(&ino).map_or(0, |n| n.size);
        let off = if self.crash_mode {
            if self.dur.fresh.contains(&ino) {
                self.r(cur + 1)
            } else if cur.is_multiple_of(BS) {
                // appends at a block boundary never rewrite a committed block
                cur
            } else {
                return self.op_read().await;
            }
        } else {
            self.offset()
        };
        let data = self.bytes(if self.crash_mode { 20_000 } else { 9000 });
        let desc = format!("write {ino} {off} {}", data.len());
        self.mark_ino(ino);
        let want = self.model.file(ino).map(|_| data.len());
        let d2 = data.clone();
        let got = self
            .op(desc.clone(), move |m| async move {
                m.write(ino, off, &d2).await
            })
            .await?;
        self.agree(&desc, &got, &want)?;
        if let Ok(n) = got {
            if n != data.len() {
                return Err(self.fail(format!("{desc}: wrote {n}")));
            }
            if !data.is_empty() {
                self.model
                    .nodes
                    .get_mut(&ino)
                    .expect("file")
                    .write(off, &data);
                let end = off + data.len() as u64;
                let mut blocks: Vec<u64> = (off / BS..=(end - 1) / BS).collect();
                blocks.push(cur / BS);
                self.touch(ino, blocks);
            }
        }
        Ok(())
    }

    async fn op_read(&mut self) -> Result<(), Stop> {
        let (ino, off, len) = (self.file_ino(), self.offset(), self.r(12_000));
        let desc = format!("read {ino} {off} {len}");
        let want = self.model.file(ino).map(|n| n.read(off, len));
        let got = self
            .op(desc.clone(), move |m| async move {
                m.read(ino, off, len as usize).await
            })
            .await?;
        self.agree(&desc, &got, &want)?;
        if let (Ok(a), Ok(b)) = (&got, &want) {
            if a != b {
                let at = a.iter().zip(b).position(|(x, y)| x != y);
                return Err(self.fail(format!(
                    "{desc}: {} bytes read, model {}; first difference at {at:?}",
                    a.len(),
                    b.len()
                )));
            }
        }
        Ok(())
    }

    async fn op_xattr(&mut self) -> Result<(), Stop> {
        let ino = self.any_ino();
        let name = XNAMES[self.r(XNAMES.len() as u64) as usize].to_vec();
        let shown = String::from_utf8_lossy(&name).into_owned();
        self.mark_ino(ino);
        match self.r(4) {
            0 | 1 => {
                let value = self.bytes(if name == b"user.long" { 3000 } else { 40 });
                let flags = [0, 0, XATTR_CREATE, XATTR_REPLACE][self.r(4) as usize];
                let desc = format!("setxattr {ino} {shown} {} {flags}", value.len());
                let want = self.model.check_xattr(ino, &name, true).and_then(|n| {
                    let exists = n.xattrs.contains_key(&name);
                    if exists && flags == XATTR_CREATE {
                        return Err(Errno::EEXIST);
                    }
                    if !exists && flags == XATTR_REPLACE {
                        return Err(Errno::ENODATA);
                    }
                    Ok(())
                });
                let (n2, v2) = (name.clone(), value.clone());
                let got = self
                    .op(desc.clone(), move |m| async move {
                        m.setxattr(&Cred::root(), ino, &n2, &v2, flags).await
                    })
                    .await?;
                self.agree(&desc, &got, &want)?;
                if got.is_ok() {
                    let n = self.model.nodes.get_mut(&ino).expect("checked");
                    n.xattrs.insert(name, value);
                }
            }
            2 => {
                let desc = format!("removexattr {ino} {shown}");
                let want = self.model.check_xattr(ino, &name, true).and_then(|n| {
                    if n.xattrs.contains_key(&name) {
                        Ok(())
                    } else {
                        Err(Errno::ENODATA)
                    }
                });
                let n2 = name.clone();
                let got = self
                    .op(desc.clone(), move |m| async move {
                        m.removexattr(&Cred::root(), ino, &n2).await
                    })
                    .await?;
                self.agree(&desc, &got, &want)?;
                if got.is_ok() {
                    self.model
                        .nodes
                        .get_mut(&ino)
                        .expect("checked")
                        .xattrs
                        .remove(&name);
                }
            }
            _ => {
                let desc = format!("getxattr {ino} {shown}");
                let want = self
                    .model
                    .check_xattr(ino, &name, false)
                    .and_then(|n| n.xattrs.get(&name).cloned().ok_or(Errno::ENODATA));
                let n2 = name.clone();
                let got = self
                    .op(desc.clone(), move |m| async move {
                        m.getxattr(&Cred::root(), ino, &n2).await
                    })
                    .await?;
                self.agree(&desc, &got, &want)?;
                if let (Ok(a), Ok(b)) = (&got, &want) {
                    if a != b {
                        return Err(self.fail(format!("{desc}: value differs")));
                    }
                }
            }
        }
        Ok(())
    }

    async fn op_lookup(&mut self) -> Result<(), Stop> {
        let (dir, name) = (self.dir_ino(), self.name());
        let desc = format!("lookup {dir} {:?}", String::from_utf8_lossy(&name));
        self.check_lookup(desc, dir, name).await?;
        Ok(())
    }

    /// Look `name` up in `dir` and check it against the model (`desc`
    /// names the check in a failure); returns the inode both agree on.
    pub(super) async fn check_lookup(
        &mut self,
        desc: String,
        dir: u64,
        name: Vec<u8>,
    ) -> Result<Option<u64>, Stop> {
        let want = self.model.lookup(dir, &name);
        let n2 = name.clone();
        let got = self
            .op(desc.clone(), move |m| async move {
                m.lookup(&Cred::root(), dir, &n2).await
            })
            .await?;
        self.agree(&desc, &got, &want)?;
        if let (Ok(a), Ok(ino)) = (&got, &want) {
            if a.ino != *ino {
                return Err(self.fail(format!("{desc}: ino {} want {ino}", a.ino)));
            }
            return Ok(Some(*ino));
        }
        Ok(None)
    }

    async fn op_getattr(&mut self) -> Result<(), Stop> {
        let ino = self.any_ino();
        let desc = format!("getattr {ino}");
        let want = self.model.get(ino).cloned();
        let got = self
            .op(desc.clone(), move |m| async move { m.getattr(ino).await })
            .await?;
        self.agree(&desc, &got, &want)?;
        if let (Ok(a), Ok(n)) = (&got, &want) {
            if (a.mode, a.nlink, a.size) != (n.mode, n.nlink, n.attr_size()) {
                return Err(self.fail(format!(
                    "{desc}: mode/nlink/size {:o}/{}/{} want {:o}/{}/{}",
                    a.mode,
                    a.nlink,
                    a.size,
                    n.mode,
                    n.nlink,
                    n.attr_size()
                )));
            }
        }
        Ok(())
    }

    async fn op_readdir(&mut self) -> Result<(), Stop> {
        let dir = self.dir_ino();
        self.check_readdir(format!("readdir {dir}"), dir, 7).await
    }

    /// List `dir` whole, `batch` entries a call, and check it against the
    /// model (`desc` names the check in a failure).
    pub(super) async fn check_readdir(
        &mut self,
        desc: String,
        dir: u64,
        batch: usize,
    ) -> Result<(), Stop> {
        let want = self.model.dir(dir).and_then(|d| {
            if d.nlink == 0 {
                Err(Errno::ENOENT)
            } else {
                Ok(d.kids.clone())
            }
        });
        let got = self
            .op(desc.clone(), move |m| async move {
                let mut out = BTreeMap::new();
                let mut pos = 0;
                loop {
                    let ents = m.readdir(&Cred::root(), dir, pos, batch).await?;
                    let Some(last) = ents.last() else {
                        break;
                    };
                    pos = last.next_pos;
                    for e in ents {
                        if e.name != b"." && e.name != b".." {
                            out.insert(e.name, e.ino);
                        }
                    }
                }
                Ok(out)
            })
            .await?;
        self.agree(&desc, &got, &want)?;
        if let (Ok(a), Ok(b)) = (&got, &want) {
            if a != b {
                return Err(self.fail(format!("{desc}: entries {a:?} want {b:?}")));
            }
        }
        Ok(())
    }

    // ---- whole-volume actions ----

    /// Mount the node's volume (a boot; recovery runs).
    pub async fn mount(&mut self) -> Result<(), Stop> {
        self.mount_armed(None).await
    }

    async fn mount_armed(&mut self, arm: Option<CrashTrigger>) -> Result<(), Stop> {
        self.note("mount", "");
        let arm = arm.map(|t| (t, Loss::Any));
        match FsNode::start_armed(&self.w, self.node, self.opts, arm).await {
            Ok(Ok(fs)) => {
                self.dur.commits_seen = fs.mount.counters().commits;
                Ok(())
            }
            Ok(Err(e)) => Err(self.fail(format!("mount failed: {e:?}"))),
            Err(_) => Err(Stop::Down),
        }
    }

    /// Commit everything (a sync point).
    pub async fn sync(&mut self) -> Result<(), Stop> {
        let pre = self.model.clone();
        let got = self
            .op("sync".into(), |m| async move { m.sync().await })
            .await?;
        if let Err(e) = got {
            return Err(self.fail(format!("sync: {e:?}")));
        }
        self.after_op(pre, true);
        Ok(())
    }

    /// Start a log merge (a commit, with the tree finalized) and do up to
    /// `rounds` pieces of merge work.
    pub async fn merge(&mut self, rounds: usize) -> Result<(), Stop> {
        let fs = self.fs()?;
        if self.r(3) == 0 {
            let pre = self.model.clone();
            let f = fs.clone();
            let got = self
                .op("start_merge".into(), move |_| f.start_merge())
                .await?;
            if let Err(e) = got {
                return Err(self.fail(format!("start_merge: {e:?}")));
            }
            self.after_op(pre, true);
        }
        for _ in 0..rounds {
            let f = fs.clone();
            match self
                .op("merge_once".into(), move |_| f.merge_once())
                .await?
            {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(self.fail(format!("merge_once: {e:?}"))),
            }
        }
        Ok(())
    }

    /// Liveness: with no more faults, pending log merge work finishes
    /// (merge work, then time for the server's freeing worker), within
    /// `rounds` rounds.
    pub async fn drain_merges(&mut self, rounds: usize) -> Result<(), Stop> {
        let fs = self.fs()?;
        for _ in 0..rounds {
            let f = fs.clone();
            match self
                .op("merge_once".into(), move |_| f.merge_once())
                .await?
            {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Err(self.fail(format!("merge_once: {e:?}"))),
            }
            let pending = fs.node_handle().is_some_and(|h| h.leader().merge_pending());
            if !pending {
                return Ok(());
            }
            self.w.sleep(2_000_000_000).await;
        }
        Err(self.fail(format!(
            "log merge still pending after {rounds} rounds of merge work with no faults"
        )))
    }

    /// Walk the mount and compare it with the model, exactly.
    pub async fn verify(&mut self) -> Result<(), Stop> {
        let tree = self.walk().await?;
        if let Some(d) = model::diff(&tree, &model::visible(self.model.tree())) {
            return Err(self.fail(format!("namespace differs from the model: {d}")));
        }
        Ok(())
    }

    async fn walk(&self) -> Result<Tree, Stop> {
        match self
            .op("walk".into(), |m| async move { model::walk(&m).await })
            .await?
        {
            Ok(t) => Ok(t),
            Err(e) => Err(self.fail(format!("walk failed: {e:?}"))),
        }
    }

    /// Unmount cleanly and stop the node.
    pub async fn unmount(&mut self) -> Result<(), Stop> {
        let fs = self.fs()?;
        let got = self.op("unmount".into(), move |_| fs.unmount()).await?;
        if let Err(e) = got {
            return Err(self.fail(format!("unmount: {e:?}")));
        }
        self.w.fault(Fault::Stop { node: self.node }).await;
        self.dur.durable = alloc::vec![self.model.clone()];
        self.dur.touched.clear();
        self.dur.fresh.clear();
        Ok(())
    }

    /// fsck what the disks hold durably.
    pub fn fsck(&self, when: &str) -> Result<(), Stop> {
        self.note("fsck", when);
        self.vol
            .fsck()
            .map_err(|t| self.fail(format!("fsck {when}: {t}")))
    }

    /// After a crash (the node is down): fsck, mount (recovery), and the
    /// namespace must be one of the states that may be durable. The
    /// model becomes the one found.
    pub async fn recover(&mut self, in_flight: Option<Model>) -> Result<(), Stop> {
        // now and then the recovery itself is cut short by another crash
        for attempt in 0.. {
            self.w.wait_down(self.node).await;
            self.fsck("after the crash")?;
            let arm =
                (attempt < 3 && self.r(4) == 0).then(|| CrashTrigger::AfterWrites(1 + self.r(30)));
            match self.mount_armed(arm).await {
                Ok(()) => break,
                Err(Stop::Down) => self.note("crash_during_recovery", ""),
                Err(e) => return Err(e),
            }
        }
        self.w.disarm_crash(self.node);
        let tree = self.walk().await?;
        let mut cands = core::mem::take(&mut self.dur.durable);
        cands.extend(in_flight);
        let mut last = String::new();
        for (i, cand) in cands.iter().enumerate().rev() {
            let want = model::visible(cand.tree());
            let (fs_l, want_l) = lenient(&tree, &want, &self.dur.touched);
            match model::diff(&fs_l, &want_l) {
                None => {
                    self.note("recovered", &format!("state {i} of {}", cands.len()));
                    let mut m = cand.clone();
                    adopt(&mut m, &tree, &self.dur.touched);
                    self.model = m;
                    self.dur = Durability {
                        durable: alloc::vec![self.model.clone()],
                        commits_seen: self.dur.commits_seen,
                        ..Durability::default()
                    };
                    return Ok(());
                }
                Some(d) if last.is_empty() => last = d,
                Some(_) => {}
            }
        }
        Err(self.fail(format!(
            "after the crash the namespace is none of the {} states that may be durable; against the newest: {last}",
            cands.len()
        )))
    }

    /// The states a crash right now may leave.
    pub fn durable_now(&self) -> usize {
        self.dur.durable.len()
    }
}

/// Both trees without the blocks written in place since the candidate
/// was committed (a crash may leave either contents there).
fn lenient(fs: &Tree, want: &Tree, touched: &BTreeMap<u64, BTreeSet<u64>>) -> (Tree, Tree) {
    let mut a = fs.clone();
    let mut b = want.clone();
    for t in [&mut a, &mut b] {
        for e in t.values_mut() {
            if let Some(bl) = touched.get(&e.ino) {
                e.blocks.retain(|k, _| !bl.contains(k));
            }
        }
    }
    (a, b)
}

/// Take the filesystem's contents of blocks written in place into the
/// model.
fn adopt(m: &mut Model, fs: &Tree, touched: &BTreeMap<u64, BTreeSet<u64>>) {
    for e in fs.values() {
        let (Some(bl), Some(n)) = (touched.get(&e.ino), m.nodes.get_mut(&e.ino)) else {
            continue;
        };
        for b in bl {
            match e.blocks.get(b) {
                Some(d) => {
                    n.blocks.insert(*b, d.clone());
                }
                None => {
                    n.blocks.remove(b);
                }
            }
        }
    }
}

/// Run `per_node` on every node of `nodes` side by side; the first
/// failure wins (by node order).
pub async fn all_nodes<F, Fut>(w: &Rc<World>, nodes: &[NodeId], per_node: F) -> Result<u64, Failure>
where
    F: Fn(NodeId) -> Fut,
    Fut: Future<Output = Result<u64, Failure>> + 'static,
{
    let tasks: Vec<_> = nodes.iter().map(|&n| w.spawn(per_node(n))).collect();
    let mut steps = 0;
    let mut first = None;
    for (t, &n) in tasks.into_iter().zip(nodes) {
        match t.await {
            Ok(Ok(s)) => steps += s,
            Ok(Err(f)) => {
                first.get_or_insert(f);
            }
            Err(_) => {
                first.get_or_insert(Failure {
                    node: n,
                    step: 0,
                    time_ns: w.now(),
                    what: "workload task lost".into(),
                });
            }
        }
    }
    match first {
        Some(f) => Err(f),
        None => Ok(steps),
    }
}
