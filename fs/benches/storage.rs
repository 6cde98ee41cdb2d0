//! Storage benchmarks (`cargo bench -p scoutvm-fs --bench storage`):
//! btree inserts and lookups per second, commit throughput on a RAM disk
//! and on a file, and the memory the block cache holds. Prints figures;
//! asserts nothing about speed.

#[path = "../tests/common/mod.rs"]
mod common;

use common::FileDev;
use scoutvm_fs::format::key::Key;
use scoutvm_fs::runtime::env::{Entropy, SeededEntropy};
use scoutvm_fs::server::commit::{CommitConfig, CommitCore};
use scoutvm_fs::storage::btree::{self, Item};
use scoutvm_fs::storage::dev::{BlockDev, MemDev};
use scoutvm_fs::tools::mkfs::mkfs;
use std::rc::Rc;
use std::time::Instant;

const META: u64 = 16 << 30;
const DATA: u64 = 16 << 30;

fn server_on(meta: Rc<dyn BlockDev>, data: Rc<dyn BlockDev>, budget: usize) -> CommitCore {
    mkfs(&*meta, &*data, &common::params(2, META, DATA, 1)).unwrap();
    let cfg = CommitConfig {
        cache_budget_bytes: budget,
        ..Default::default()
    };
    CommitCore::open(
        Box::new(meta),
        Box::new(data),
        Box::new(SeededEntropy::new(7)),
        cfg,
    )
    .unwrap()
}

fn key(i: u64) -> Key {
    Key::fs(1 + i % 1000, 8, i, 0)
}

fn insert_n(srv: &mut CommitCore, keys: &[u64], val: &[u8]) -> (f64, u64) {
    let t = Instant::now();
    let mut commits = 0;
    for &i in keys {
        let seq = srv.trans_seq();
        let tx = srv.tx();
        btree::force(
            tx.cache,
            tx.alloc,
            &mut tx.sb.fs_root,
            Item::new(key(i), seq, val),
        )
        .unwrap();
        if srv.meta_avail_remaining() < 64 {
            srv.commit().unwrap();
            commits += 1;
        }
    }
    srv.commit().unwrap();
    (t.elapsed().as_secs_f64(), commits + 1)
}

fn bench_btree() {
    println!("== btree (RAM disk, 64 MiB cache) ==");
    let meta: Rc<dyn BlockDev> = Rc::new(MemDev::new(META));
    let data: Rc<dyn BlockDev> = Rc::new(MemDev::new(DATA));
    let mut srv = server_on(meta, data, 64 << 20);
    let n = 200_000u64;
    let rng = SeededEntropy::new(3);
    let mut keys: Vec<u64> = (0..n).collect();
    for i in (1..keys.len()).rev() {
        keys.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let val = [0x5au8; 64];
    let (secs, commits) = insert_n(&mut srv, &keys, &val);
    println!(
        "insert {n} random keys, 64-byte values: {:.0} inserts/s ({commits} commits included), height {}",
        n as f64 / secs,
        srv.super_block().fs_root.height
    );
    let root = srv.super_block().fs_root;
    let t = Instant::now();
    let lookups = 400_000u64;
    let mut found = 0;
    for _ in 0..lookups {
        let i = rng.next_u64() % n;
        if btree::lookup(srv.cache(), &root, &key(i))
            .unwrap()
            .is_some()
        {
            found += 1;
        }
    }
    assert_eq!(found, lookups);
    println!(
        "lookup random keys (warm cache): {:.0} lookups/s",
        lookups as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut seen = 0u64;
    btree::for_each_range(srv.cache(), &root, &Key::MIN, &Key::MAX, |_| {
        seen += 1;
        true
    })
    .unwrap();
    println!(
        "range scan: {:.0} items/s ({seen} items)",
        seen as f64 / t.elapsed().as_secs_f64()
    );
    // bulk insert of sorted batches (what a log-tree commit does)
    let t = Instant::now();
    let batches = 20u64;
    let per = 10_000u64;
    for bt in 0..batches {
        let seq = srv.trans_seq();
        let items: Vec<Item> = (0..per)
            .map(|j| Item::new(Key::fs(5000, 8, bt * per + j, 0), seq, &val))
            .collect();
        let tx = srv.tx();
        btree::insert_list(tx.cache, tx.alloc, &mut tx.sb.fs_root, items).unwrap();
        srv.commit().unwrap();
    }
    println!(
        "insert_list sorted batches of {per}, 64-byte values: {:.0} items/s (a commit per batch included)",
        (batches * per) as f64 / t.elapsed().as_secs_f64()
    );
    let c = srv.cache();
    println!(
        "block cache: {} clean + {} dirty blocks = {:.1} MiB of a {:.0} MiB budget; {} hits, {} misses, {} evictions",
        c.clean_blocks(),
        c.dirty_blocks(),
        c.memory_bytes() as f64 / (1 << 20) as f64,
        c.budget_bytes() as f64 / (1 << 20) as f64,
        c.counters.cache_hit,
        c.counters.cache_miss,
        c.counters.evict
    );
}

fn bench_cache_budget() {
    println!("== block cache under a 4 MiB budget ==");
    let meta: Rc<dyn BlockDev> = Rc::new(MemDev::new(META));
    let data: Rc<dyn BlockDev> = Rc::new(MemDev::new(DATA));
    let mut srv = server_on(meta, data, 4 << 20);
    let keys: Vec<u64> = (0..100_000).collect();
    insert_n(&mut srv, &keys, &[1u8; 200]);
    let root = srv.super_block().fs_root;
    let rng = SeededEntropy::new(9);
    let t = Instant::now();
    let lookups = 100_000;
    for _ in 0..lookups {
        btree::lookup(srv.cache(), &root, &key(rng.next_u64() % 100_000))
            .unwrap()
            .unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let c = srv.cache();
    let hits = c.counters.cache_hit as f64;
    let total = hits + c.counters.cache_miss as f64;
    println!(
        "lookups with evictions: {:.0} lookups/s; cache holds {:.2} MiB (budget 4 MiB), hit rate {:.1}%, {} evictions",
        lookups as f64 / secs,
        c.memory_bytes() as f64 / (1 << 20) as f64,
        100.0 * hits / total,
        c.counters.evict
    );
}

fn bench_commits(name: &str, meta: Rc<dyn BlockDev>, data: Rc<dyn BlockDev>) {
    let mut srv = server_on(meta, data, 64 << 20);
    let rng = SeededEntropy::new(5);
    let per_txn = 1000u64;
    let txns = 50u64;
    let val = [7u8; 128];
    let written0 = srv.counters.blocks_written;
    let t = Instant::now();
    for _ in 0..txns {
        for _ in 0..per_txn {
            let seq = srv.trans_seq();
            let k = key(rng.next_u64() % 1_000_000);
            let tx = srv.tx();
            btree::force(
                tx.cache,
                tx.alloc,
                &mut tx.sb.fs_root,
                Item::new(k, seq, &val),
            )
            .unwrap();
        }
        srv.commit().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let blocks = srv.counters.blocks_written - written0;
    println!(
        "{name}: {:.1} commits/s of {per_txn} random 128-byte inserts ({:.0} items/s), {:.1} MiB/s of metadata ({} blocks)",
        txns as f64 / secs,
        (txns * per_txn) as f64 / secs,
        blocks as f64 * 65536.0 / (1 << 20) as f64 / secs,
        blocks
    );
    // small commits: latency is dominated by the flush/super/flush sequence
    let t = Instant::now();
    let small = 50;
    for i in 0..small {
        let seq = srv.trans_seq();
        let tx = srv.tx();
        btree::force(
            tx.cache,
            tx.alloc,
            &mut tx.sb.fs_root,
            Item::new(key(i), seq, &val),
        )
        .unwrap();
        srv.commit().unwrap();
    }
    println!(
        "{name}: {:.0} single-item commits/s",
        small as f64 / t.elapsed().as_secs_f64()
    );
}

fn main() {
    bench_btree();
    bench_cache_budget();
    println!("== commits ==");
    bench_commits(
        "RAM disk",
        Rc::new(MemDev::new(META)),
        Rc::new(MemDev::new(DATA)),
    );
    let dir = std::env::temp_dir().join(format!("scoutvm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m: Rc<dyn BlockDev> = Rc::new(FileDev::create_sparse(&dir.join("meta.img"), META));
    let d: Rc<dyn BlockDev> = Rc::new(FileDev::create_sparse(&dir.join("data.img"), DATA));
    bench_commits(&format!("file device ({})", dir.display()), m, d);
    let _ = std::fs::remove_dir_all(&dir);
}
