//! Shared helpers of the fs integration tests: the golden volumes, a
//! file-backed device, small volumes on fault-injecting RAM disks, and for
//! the POSIX tests a tiny `block_on` and in-memory volumes that survive
//! remounts.
#![allow(dead_code)]

use scoutvm_fs::format::items::{DataExtent, SEF_OFFLINE};
use scoutvm_fs::format::super_block::QuorumConfig;
use scoutvm_fs::runtime::env::{SeededEntropy, Timespec};
use scoutvm_fs::sim::faultdev::FaultDev;
use scoutvm_fs::storage::dev::{check_request, BlockDev, IoError};
use scoutvm_fs::tools::mkfs::{mkfs, parse_quorum_slot, MkfsParams};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// `<repo>/../shared`, or a clear panic when it is missing.
pub fn shared_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let shared = repo.parent().unwrap().join("shared");
    assert!(
        shared.join("golden/scoutfs-mkfs-images.tar.xz").exists(),
        "golden volumes missing: expected {} (the shared/ folder beside the project)",
        shared.join("golden/scoutfs-mkfs-images.tar.xz").display()
    );
    shared
}

/// Unpack the golden images (sparse) into a fresh temp dir, once per test
/// process.
pub fn golden_dir() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let shared = shared_dir();
        // inside the target dir, replaced on every run
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let st = std::process::Command::new("tar")
            .arg("-xSf")
            .arg(shared.join("golden/scoutfs-mkfs-images.tar.xz"))
            .arg("-C")
            .arg(&dir)
            .status()
            .expect("running tar");
        assert!(st.success(), "tar -xSf of the golden images failed");
        dir
    })
    .clone()
}

/// A read/write device over a file. It flushes on its own after every
/// [`WRITE_BEHIND_BYTES`] written (flushing early never weakens
/// durability), so no single flush waits for a whole transaction's data:
/// a commit's flush waits only for the tail.
pub struct FileDev {
    f: File,
    size: u64,
    unflushed: std::cell::Cell<u64>,
}

/// Bytes written between two flushes the device does on its own.
pub const WRITE_BEHIND_BYTES: u64 = 16 << 20;

impl FileDev {
    pub fn open(p: &Path, writable: bool) -> FileDev {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(p)
            .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
        let size = f.metadata().unwrap().len();
        FileDev {
            f,
            size,
            unflushed: std::cell::Cell::new(0),
        }
    }

    pub fn create_sparse(p: &Path, size: u64) -> FileDev {
        let f = File::create(p).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        FileDev::open(p, true)
    }
}

impl BlockDev for FileDev {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check_request(off, buf.len(), self.size)?;
        self.f.read_exact_at(buf, off).map_err(|_| IoError::Device)
    }
    fn write(&self, off: u64, buf: &[u8]) -> Result<(), IoError> {
        check_request(off, buf.len(), self.size)?;
        self.f.write_all_at(buf, off).map_err(|_| IoError::Device)?;
        let n = self.unflushed.get() + buf.len() as u64;
        self.unflushed.set(n);
        if n >= WRITE_BEHIND_BYTES {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), IoError> {
        self.unflushed.set(0);
        self.f.sync_data().map_err(|_| IoError::Device)
    }
    fn size_bytes(&self) -> u64 {
        self.size
    }
}

pub fn qconf(slots: &[&str]) -> QuorumConfig {
    let mut q = QuorumConfig::default();
    for s in slots {
        parse_quorum_slot(&mut q, s).unwrap();
    }
    q
}

pub fn params(fmt_vers: u64, meta_bytes: u64, data_bytes: u64, seed: u64) -> MkfsParams {
    let e = SeededEntropy::new(seed);
    use scoutvm_fs::runtime::env::Entropy;
    MkfsParams {
        fmt_vers,
        meta_bytes,
        data_bytes,
        qconf: qconf(&["0,10.0.2.15,7100"]),
        fsid: e.next_u64(),
        uuid: scoutvm_fs::tools::mkfs::uuid_from_random(e.next_u64(), e.next_u64()),
        now: Timespec {
            sec: 1_700_000_000,
            nsec: 5,
        },
        data_alloc_zone_blocks: 0,
    }
}

/// A freshly made volume on two fault-injecting RAM disks.
pub fn small_volume(meta_bytes: u64, data_bytes: u64, seed: u64) -> (Rc<FaultDev>, Rc<FaultDev>) {
    let meta = Rc::new(FaultDev::new(meta_bytes));
    let data = Rc::new(FaultDev::new(data_bytes));
    mkfs(&*meta, &*data, &params(2, meta_bytes, data_bytes, seed)).unwrap();
    (meta, data)
}

pub fn fsck_text(meta: &dyn BlockDev, data: Option<&dyn BlockDev>) -> (bool, String) {
    let rep = scoutvm_fs::tools::fsck::fsck(meta, data, &mut |_, _, _| {});
    let mut s = String::new();
    rep.render(&mut s).unwrap();
    (rep.is_clean(), s)
}

#[track_caller]
pub fn assert_fsck_clean(meta: &dyn BlockDev, data: Option<&dyn BlockDev>) {
    let (clean, text) = fsck_text(meta, data);
    assert!(clean, "fsck found problems:\n{text}");
}

// ---- POSIX test support ----

use core::future::Future;

use scoutvm_fs::client::cluster_node::{mount_client, ClientMount};
use scoutvm_fs::client::node::{mount_volume, NodeHandle, NodeOptions};
use scoutvm_fs::cluster::transport::{MemNet, Transport};
use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::runtime::env::Entropy;
use scoutvm_fs::runtime::env::ManualClock;
use scoutvm_fs::runtime::exec::{Executor, Handle};
use scoutvm_fs::server::role::ServerRole;
use scoutvm_fs::sim::mem_backend::{MemBackend, MemMkfs, MemStore};
use scoutvm_fs::storage::dev::MemDev;

thread_local! {
    static EXEC: Executor = Executor::default();
}

/// Run `f` on this thread's executor (in virtual time) with every task
/// spawned on [`handle`]; panics on a deadlock (nothing ready, no timer).
pub fn block_on<F: Future>(f: F) -> F::Output {
    EXEC.with(|ex| ex.block_on(f))
        .unwrap_or_else(|_| panic!("block_on: deadlock (nothing ready, no timer pending)"))
}

/// The handle of this thread's executor.
pub fn handle() -> Handle {
    EXEC.with(|ex| ex.handle())
}

/// Use this thread's executor directly (poll clock, statistics).
pub fn with_executor<R>(f: impl FnOnce(&Executor) -> R) -> R {
    EXEC.with(f)
}

/// An in-memory volume: durable items, a data device and a clock.
pub struct Vol {
    pub store: Rc<MemStore>,
    pub data: Rc<MemDev>,
    pub clock: Rc<ManualClock>,
    pub opts: MountOptions,
}

impl Vol {
    pub fn new() -> Vol {
        Vol::with(MemMkfs::default(), MountOptions::default())
    }

    pub fn with(mkfs: MemMkfs, opts: MountOptions) -> Vol {
        let data = Rc::new(MemDev::new(mkfs.data_blocks * 4096));
        let store = MemStore::mkfs(mkfs);
        let clock = Rc::new(ManualClock::new(Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        }));
        Vol {
            store,
            data,
            clock,
            opts,
        }
    }

    /// Mount (a new cache and transaction over the durable state).
    pub fn mount(&self) -> (Mount, Rc<MemBackend>) {
        let be = MemBackend::new(self.store.clone());
        let m = block_on(Mount::mount(
            be.clone(),
            self.data.clone(),
            self.clock.clone(),
            self.opts,
        ))
        .expect("mount");
        (m, be)
    }
}

/// Node options for small test volumes: reserves and allocator targets
/// scaled down, no background tasks (tests commit and merge explicitly).
pub fn test_node_options(mount: MountOptions) -> NodeOptions {
    let mut o = NodeOptions {
        mount,
        tick_ns: 0,
        merge_poll_ns: 0,
        ..Default::default()
    };
    o.server.commit.reserved_meta_blocks = 64;
    o.server.log_trees.reserved_meta_blocks = 64;
    o.server.log_trees.data_fill_lo = 1 << 14;
    o.server.log_trees.data_fill_target = 1 << 15;
    o.server.log_trees.data_fill_min = 256;
    o.trans.data_refill_thresh = 64;
    o.trans.cache_budget_bytes = 8 << 20;
    o.merge_cache_budget_bytes = 8 << 20;
    o
}

/// A scoutfs volume on RAM disks, mounted through the real server and
/// client (log trees, forest reads, merges).
pub struct RealVol {
    pub meta: Rc<FaultDev>,
    pub data: Rc<FaultDev>,
    pub clock: Rc<ManualClock>,
    pub opts: NodeOptions,
    pub seed: std::cell::Cell<u64>,
}

impl RealVol {
    pub fn new(meta_bytes: u64, data_bytes: u64, seed: u64, opts: NodeOptions) -> RealVol {
        let (meta, data) = small_volume(meta_bytes, data_bytes, seed);
        let clock = Rc::new(ManualClock::new(Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        }));
        RealVol {
            meta,
            data,
            clock,
            opts,
            seed: std::cell::Cell::new(seed.wrapping_mul(1000)),
        }
    }

    /// Mount: start a node on the devices.
    pub fn mount(&self) -> (Rc<Mount>, NodeHandle) {
        let s = self.seed.get() + 1;
        self.seed.set(s);
        let ent: Rc<dyn scoutvm_fs::runtime::env::Entropy> = Rc::new(SeededEntropy::new(s));
        block_on(mount_volume(
            self.meta.clone(),
            self.data.clone(),
            self.clock.clone(),
            ent,
            handle(),
            self.opts,
        ))
        .expect("mount")
    }

    #[track_caller]
    pub fn fsck(&self) {
        assert_fsck_clean(&*self.meta, Some(&*self.data));
    }
}

/// Every entry of a directory after "." and "..", `batch` at a time.
pub fn readdir_all(m: &Mount, dir: u64, batch: usize) -> Vec<scoutvm_fs::posix::types::DirEntry> {
    let mut out = Vec::new();
    let mut pos = 2;
    loop {
        let ents =
            block_on(m.readdir(&scoutvm_fs::posix::types::Cred::root(), dir, pos, batch)).unwrap();
        match ents.last() {
            Some(e) => pos = e.next_pos,
            None => break,
        }
        out.extend(ents);
    }
    out
}

/// Run log merge work until the server has none left (and the freeing of
/// merged trees is done).
pub fn merge_until_idle(node: &NodeHandle) {
    for _ in 0..100_000 {
        if block_on(node.merge_once()).unwrap() {
            continue;
        }
        let h = handle();
        block_on(async move { h.sleep_ns(2_000_000_000).await });
        if !node.leader().merge_pending() {
            return;
        }
    }
    panic!("log merge never finished");
}

// ---- sparse files far past 4 GiB, the same on every backend ----

/// Where the sparse-file tests write: from 0 to just below the largest
/// file size (a write there is cut short at `i64::MAX`).
pub const SPARSE_OFFSETS: [u64; 5] = [
    0,
    5 << 30,
    (1 << 40) - 3,
    (1 << 50) + 4095,
    (i64::MAX as u64) - 10,
];

/// Write 6000 bytes of `i + 1` at each of [`SPARSE_OFFSETS`].
pub fn write_sparse_pattern(m: &Mount, ino: u64) {
    for (i, off) in SPARSE_OFFSETS.iter().enumerate() {
        let data = vec![i as u8 + 1; 6000];
        let n = block_on(m.write(ino, *off, &data)).unwrap();
        assert_eq!(n, data.len().min((i64::MAX as u64 - off) as usize));
    }
}

/// What [`write_sparse_pattern`] wrote reads back, and the hole before
/// each piece reads as zeros.
pub fn check_sparse_pattern(m: &Mount, ino: u64) {
    for (i, off) in SPARSE_OFFSETS.iter().enumerate() {
        let back = block_on(m.read(ino, *off, 6000)).unwrap();
        let want = 6000.min((i64::MAX as u64 - off) as usize);
        assert_eq!(back.len(), want);
        assert!(back.iter().all(|&b| b == i as u8 + 1), "data at {off}");
        if *off >= 4096 {
            assert!(block_on(m.read(ino, off - 4096, 4096))
                .unwrap()
                .iter()
                .all(|&b| b == 0));
        }
    }
}

/// Deterministic bytes (xorshift), different per `seed`.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An OFFLINE unmapped extent of blocks `[start, start + len)`.
pub fn offline(start: u64, len: u64) -> DataExtent {
    DataExtent {
        start,
        len,
        blkno: 0,
        flags: SEF_OFFLINE,
    }
}

/// The address the in-process server of a [`MemCluster`] listens on.
pub const MEM_CLUSTER_ADDR: &str = "srv";

/// One in-process server role on a small volume, serving over `MemNet` in
/// virtual time, and client mounts of it (the multi-mount tests).
pub struct MemCluster {
    pub meta: Rc<dyn BlockDev>,
    pub data: Rc<dyn BlockDev>,
    pub net: Rc<dyn Transport>,
    pub clock: Rc<ManualClock>,
    pub opts: NodeOptions,
    pub server: ServerRole,
    pub seed: u64,
}

impl MemCluster {
    /// A fresh volume of `meta_bytes` + `data_bytes` and its server,
    /// configured by `opts.server`.
    pub fn new(seed: u64, meta_bytes: u64, data_bytes: u64, opts: NodeOptions) -> MemCluster {
        let (meta, data) = small_volume(meta_bytes, data_bytes, seed);
        let (meta, data): (Rc<dyn BlockDev>, Rc<dyn BlockDev>) = (meta, data);
        let server = ServerRole::open(
            meta.clone(),
            data.clone(),
            Box::new(SeededEntropy::new(seed)),
            opts.server,
            handle(),
        )
        .unwrap();
        let mem = MemNet::new();
        block_on(server.start(&mem, MEM_CLUSTER_ADDR)).unwrap();
        MemCluster {
            meta,
            data,
            net: Rc::new(mem),
            clock: Rc::new(ManualClock::new(Default::default())),
            opts,
            server,
            seed,
        }
    }

    /// Mount `rid` as a client of the server.
    pub fn mount(&self, rid: u64) -> (Rc<Mount>, ClientMount) {
        let ent: Rc<dyn Entropy> = Rc::new(SeededEntropy::new(self.seed * 100 + rid));
        run_bounded(
            "mount_client",
            mount_client(
                self.net.clone(),
                MEM_CLUSTER_ADDR,
                rid,
                self.meta.clone(),
                self.data.clone(),
                self.clock.clone(),
                ent,
                handle(),
                self.opts,
            ),
        )
        .expect("mount_client")
    }

    /// Unmount `mounts` (last first), stop the server, and insist on a
    /// clean fsck.
    pub fn shutdown(self, mounts: Vec<(Rc<Mount>, ClientMount)>) {
        for (m, cm) in mounts.into_iter().rev() {
            run_bounded("unmount", cm.unmount()).unwrap();
            drop(m);
        }
        block_on(self.server.shutdown());
        assert_fsck_clean(&*self.meta, Some(&*self.data));
    }
}

/// Run `f`, bounded in virtual time (10 min): a wait that never ends is a
/// failure, not a hang.
pub fn run_bounded<F: Future>(what: &str, f: F) -> F::Output {
    block_on(handle().timeout_ns(600_000_000_000, f))
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}
