//! Archival throughput through the `Mount` API over the real persistent
//! half on file devices (temp files, fsync'ed at every commit): release
//! (blocks freed, extents turned offline) and stage (archived bytes
//! written back into offline extents) MB/s, each including its commit,
//! and a read-back check. Also a walk of the data_seq index over the
//! files. Prints figures; asserts nothing about speed.
//!
//! `cargo bench -p scoutvm-fs --bench archival` (env: BENCH_MIB file
//! size, BENCH_ROUNDS release/stage rounds, BENCH_FILES files walked,
//! BENCH_DIR for the file devices).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{block_on, handle, FileDev};
use scoutvm_fs::client::node::{mount_volume, NodeOptions};
use scoutvm_fs::posix::archive::{WalkEntry, WalkIndex};
use scoutvm_fs::posix::types::Cred;
use scoutvm_fs::runtime::env::{Entropy, ManualClock, SeededEntropy, Timespec};
use scoutvm_fs::storage::dev::BlockDev;
use scoutvm_fs::tools::mkfs::mkfs;
use std::rc::Rc;
use std::time::Instant;
mod report;
use report::{env_num, mbps, rate};

const META: u64 = 16 << 30;
const DATA: u64 = 16 << 30;
/// Bytes per stage call (what an agent copies back at a time).
const STAGE_CHUNK: usize = 8 << 20;

fn main() {
    let mib = env_num("BENCH_MIB", 256);
    let rounds = env_num("BENCH_ROUNDS", 3);
    let files = env_num("BENCH_FILES", 10_000);
    let dir = std::env::var("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let mp = dir.join(format!("scoutvm-archival-meta-{}", std::process::id()));
    let dp = dir.join(format!("scoutvm-archival-data-{}", std::process::id()));
    let meta: Rc<dyn BlockDev> = Rc::new(FileDev::create_sparse(&mp, META));
    let data: Rc<dyn BlockDev> = Rc::new(FileDev::create_sparse(&dp, DATA));
    println!("file devices in {} (fsync per commit):", dir.display());
    mkfs(&*meta, &*data, &common::params(2, META, DATA, 1)).expect("mkfs");
    let clock = Rc::new(ManualClock::new(Timespec {
        sec: 1_700_000_000,
        nsec: 0,
    }));
    let ent: Rc<dyn Entropy> = Rc::new(SeededEntropy::new(1));
    let opts = NodeOptions {
        tick_ns: 0,
        merge_poll_ns: 0,
        ..NodeOptions::default()
    };
    let (m, node) = block_on(mount_volume(
        meta.clone(),
        data.clone(),
        clock,
        ent,
        handle(),
        opts,
    ))
    .expect("mount");
    let c = Cred::root();

    let bytes = mib << 20;
    let golden: Vec<u8> = (0..bytes).map(|i| (i * 7 + (i >> 12)) as u8).collect();
    let ino = block_on(m.create(&c, 1, b"archived", 0o644)).unwrap().ino;
    let t = Instant::now();
    for (i, chunk) in golden.chunks(STAGE_CHUNK).enumerate() {
        let off = (i * STAGE_CHUNK) as u64;
        assert_eq!(block_on(m.write(ino, off, chunk)).unwrap(), chunk.len());
    }
    block_on(m.sync()).unwrap();
    mbps("write (+sync)", bytes, t.elapsed().as_secs_f64());

    for round in 1..=rounds {
        let v = block_on(m.stat_more(ino)).unwrap().data_version;
        let t = Instant::now();
        block_on(m.release_data(ino, 0, bytes, v)).unwrap();
        block_on(m.sync()).unwrap();
        mbps(
            &format!("release (+sync), round {round}"),
            bytes,
            t.elapsed().as_secs_f64(),
        );
        let st = block_on(m.stat_more(ino)).unwrap();
        assert_eq!((st.online_blocks, st.offline_blocks), (0, bytes >> 12));

        let t = Instant::now();
        for (i, chunk) in golden.chunks(STAGE_CHUNK).enumerate() {
            let off = (i * STAGE_CHUNK) as u64;
            block_on(m.stage(ino, v, off, chunk)).unwrap();
        }
        block_on(m.sync()).unwrap();
        mbps(
            &format!("stage (+sync), round {round}"),
            bytes,
            t.elapsed().as_secs_f64(),
        );
        let st = block_on(m.stat_more(ino)).unwrap();
        assert_eq!((st.online_blocks, st.offline_blocks), (bytes >> 12, 0));
    }
    let t = Instant::now();
    let mut same = true;
    for (i, chunk) in golden.chunks(STAGE_CHUNK).enumerate() {
        let off = (i * STAGE_CHUNK) as u64;
        same &= block_on(m.read(ino, off, chunk.len())).unwrap() == chunk;
    }
    mbps("read back", bytes, t.elapsed().as_secs_f64());
    println!("  staged contents match: {same}");

    let d = block_on(m.mkdir(&c, 1, b"walk", 0o755)).unwrap().ino;
    for i in 0..files {
        block_on(m.create(&c, d, format!("f{i:08}").as_bytes(), 0o644)).unwrap();
    }
    block_on(m.sync()).unwrap();
    let t = Instant::now();
    let mut from = WalkEntry::default();
    let mut n = 0u64;
    loop {
        let page = block_on(m.walk_inodes(WalkIndex::DataSeq, from, WalkEntry::MAX, 1024)).unwrap();
        let Some(l) = page.last() else { break };
        n += page.len() as u64;
        from = WalkEntry {
            ino: l.ino + 1,
            ..*l
        };
    }
    rate(
        "walk-inodes data_seq (1024/call)",
        n,
        t.elapsed().as_secs_f64(),
    );

    drop(m);
    block_on(node.unmount()).unwrap();
    let rep = scoutvm_fs::tools::fsck::fsck(&*meta, Some(&*data), &mut |_, _, _| {});
    println!(
        "  fsck after unmount: {}",
        if rep.is_clean() { "clean" } else { "PROBLEMS" }
    );
    let _ = std::fs::remove_file(&mp);
    let _ = std::fs::remove_file(&dp);
}
