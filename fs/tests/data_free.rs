//! Data blocks freed by a mount (hole punch, truncate, unlink) come back
//! to the volume, on a real on-disk volume: across a remount, across
//! commits of the same mount, with frees and allocations in the same
//! transaction. After every cycle fsck is clean and statfs accounts for
//! every data block (no leak, no double free).

mod common;

use common::{block_on, bytes, RealVol};
use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::posix::types::*;

const ROOT: u64 = 1;
const BS: u64 = 4096;

fn root() -> Cred {
    Cred::root()
}

fn vol(seed: u64) -> RealVol {
    RealVol::new(
        256 << 20,
        256 << 20,
        seed,
        common::test_node_options(Default::default()),
    )
}

fn create_file(m: &Mount, name: &str, data: &[u8]) -> u64 {
    let a = block_on(m.create(&root(), ROOT, name.as_bytes(), 0o644)).unwrap();
    if !data.is_empty() {
        assert_eq!(block_on(m.write(a.ino, 0, data)).unwrap(), data.len());
    }
    a.ino
}

fn punch(m: &Mount, ino: u64, off: u64, len: u64) {
    block_on(m.fallocate(
        &root(),
        ino,
        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
        off,
        len,
    ))
    .unwrap();
}

/// The reported case: punch a hole, remount, write into the hole twice.
#[test]
fn punched_blocks_are_reusable_after_remount() {
    let v = vol(11);
    let mut golden = bytes(300 << 10, 3);
    let ino;
    {
        let (m, node) = v.mount();
        ino = create_file(&m, "f", &golden);
        punch(&m, ino, 16 * BS, 32 * BS);
        golden[16 * BS as usize..48 * BS as usize].fill(0);
        block_on(m.sync()).unwrap();
        drop(m);
        block_on(node.unmount()).unwrap();
    }
    v.fsck();
    {
        let (m, node) = v.mount();
        let a = bytes(BS as usize, 4);
        assert_eq!(block_on(m.write(ino, 20 * BS, &a)).unwrap(), a.len());
        golden[20 * BS as usize..21 * BS as usize].copy_from_slice(&a);
        let b = bytes(BS as usize, 5);
        assert_eq!(block_on(m.write(ino, 30 * BS, &b)).unwrap(), b.len());
        golden[30 * BS as usize..31 * BS as usize].copy_from_slice(&b);
        block_on(m.sync()).unwrap();
        assert_eq!(block_on(m.read(ino, 0, 1 << 20)).unwrap(), golden);
        drop(m);
        block_on(node.unmount()).unwrap();
    }
    v.fsck();
}

/// The files of a test and their expected contents.
struct Model {
    files: Vec<(String, u64, Vec<u8>)>,
    seed: u64,
}

impl Model {
    fn next_seed(&mut self) -> u64 {
        self.seed += 1;
        self.seed
    }

    fn get(&mut self, name: &str) -> &mut (String, u64, Vec<u8>) {
        self.files.iter_mut().find(|f| f.0 == name).unwrap()
    }

    fn create(&mut self, m: &Mount, name: &str, len: usize) {
        let data = bytes(len, self.next_seed());
        let ino = create_file(m, name, &data);
        self.files.push((name.to_string(), ino, data));
    }

    fn punch(&mut self, m: &Mount, name: &str, first: u64, blocks: u64) {
        let f = self.get(name);
        let ino = f.1;
        let end = (((first + blocks) * BS) as usize).min(f.2.len());
        f.2[(first * BS) as usize..end].fill(0);
        punch(m, ino, first * BS, blocks * BS);
    }

    fn write(&mut self, m: &Mount, name: &str, first: u64, blocks: u64) {
        let data = bytes((blocks * BS) as usize, self.next_seed());
        let f = self.get(name);
        let off = (first * BS) as usize;
        if f.2.len() < off + data.len() {
            f.2.resize(off + data.len(), 0);
        }
        f.2[off..off + data.len()].copy_from_slice(&data);
        let ino = f.1;
        assert_eq!(
            block_on(m.write(ino, first * BS, &data)).unwrap(),
            data.len()
        );
    }

    fn truncate(&mut self, m: &Mount, name: &str, size: u64) {
        let f = self.get(name);
        f.2.resize(size as usize, 0);
        let sa = SetAttr {
            size: Some(size),
            ..SetAttr::default()
        };
        block_on(m.setattr(&root(), f.1, &sa)).unwrap();
    }

    fn unlink(&mut self, m: &Mount, name: &str) {
        block_on(m.unlink(&root(), ROOT, name.as_bytes())).unwrap();
        self.files.retain(|f| f.0 != name);
    }

    /// Contents match, and the free data blocks plus the blocks the
    /// files hold are what the empty volume had free.
    #[track_caller]
    fn check(&self, m: &Mount, free_empty: u64) {
        block_on(m.sync()).unwrap();
        let mut held = 0;
        for (name, ino, data) in &self.files {
            let got = block_on(m.read(*ino, 0, data.len() + (1 << 20))).unwrap();
            assert!(got == *data, "{name}: contents differ");
            held += block_on(m.stat_more(*ino)).unwrap().online_blocks;
        }
        let free = block_on(m.statfs_more()).unwrap().free_data_blocks;
        assert_eq!(
            free + held,
            free_empty,
            "free {free} + held {held}: data blocks leaked or freed twice"
        );
    }
}

fn free_data(m: &Mount) -> u64 {
    block_on(m.sync()).unwrap();
    block_on(m.statfs_more()).unwrap().free_data_blocks
}

/// One round of frees and allocations: punches, writes into holes in the
/// same transaction as other frees, a truncate and regrowth, the unlink
/// of a large file and a new large file.
fn churn(md: &mut Model, m: &Mount, round: u64) {
    let r = round;
    md.punch(m, "a", 16 + r, 32);
    block_on(m.sync()).unwrap();
    // frees and allocations in one transaction
    md.punch(m, "b", 8 * r, 24);
    md.write(m, "a", 20 + r, 2);
    md.write(m, "b", 8 * r + 4, 8);
    md.punch(m, "a", 60, 4);
    md.write(m, "a", 100 + r, 3);
    // truncate and regrow
    md.truncate(m, "c", (40 + r) * BS + 123);
    md.write(m, "c", 64, 16);
    // a large file goes, another comes
    let big = format!("big{r}");
    let old = format!("big{}", r.wrapping_sub(1));
    if md.files.iter().any(|f| f.0 == old) {
        md.unlink(m, &old);
    }
    md.create(m, &big, (1 << 20) + 777);
}

fn start_files(md: &mut Model, m: &Mount) {
    md.create(m, "a", 300 << 10);
    md.create(m, "b", 200 << 10);
    md.create(m, "c", 400 << 10);
}

/// Several punch/free + remount + allocate cycles; fsck clean and the
/// free-space accounting exact after each.
#[test]
fn frees_and_allocations_across_remounts_keep_accounting() {
    let v = vol(12);
    let mut md = Model {
        files: Vec::new(),
        seed: 100,
    };
    let free_empty;
    {
        let (m, node) = v.mount();
        free_empty = free_data(&m);
        start_files(&mut md, &m);
        md.check(&m, free_empty);
        drop(m);
        block_on(node.unmount()).unwrap();
    }
    v.fsck();
    for round in 0..4 {
        let (m, node) = v.mount();
        md.check(&m, free_empty);
        churn(&mut md, &m, round);
        md.check(&m, free_empty);
        drop(m);
        block_on(node.unmount()).unwrap();
        v.fsck();
    }
    let (m, node) = v.mount();
    md.check(&m, free_empty);
    for name in md.files.iter().map(|f| f.0.clone()).collect::<Vec<_>>() {
        md.unlink(&m, &name);
    }
    md.check(&m, free_empty);
    assert_eq!(free_data(&m), free_empty, "everything freed comes back");
    drop(m);
    block_on(node.unmount()).unwrap();
    v.fsck();
}

/// The same churn in one mount: the frees come back after a commit, with
/// no remount between the free and the allocation.
#[test]
fn frees_come_back_after_a_commit_without_remount() {
    let v = vol(13);
    let mut md = Model {
        files: Vec::new(),
        seed: 200,
    };
    let (m, node) = v.mount();
    let free_empty = free_data(&m);
    start_files(&mut md, &m);
    md.check(&m, free_empty);
    for round in 0..4 {
        churn(&mut md, &m, round);
        md.check(&m, free_empty);
    }
    for name in md.files.iter().map(|f| f.0.clone()).collect::<Vec<_>>() {
        md.unlink(&m, &name);
    }
    md.check(&m, free_empty);
    drop(m);
    block_on(node.unmount()).unwrap();
    v.fsck();
}
