//! Btree property tests against a `BTreeMap` model, through the server:
//! random inserts/updates/deletes with values up to 896 bytes, commits in
//! between, fsck after every commit, and a check that no commit writes a
//! block the previous durable super still references.

mod common;
use common::*;
use scoutvm_fs::format::key::Key;
use scoutvm_fs::format::BTREE_MAX_VAL_LEN;
use scoutvm_fs::runtime::env::{Entropy, SeededEntropy};
use scoutvm_fs::server::commit::{CommitConfig, CommitCore};
use scoutvm_fs::sim::faultdev::{FaultDev, TraceOp};
use scoutvm_fs::storage::btree::{self, Item};
use scoutvm_fs::storage::store_error::StoreError;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

const META: u64 = 1 << 30;
const DATA: u64 = 256 << 20;

fn key(i: u64) -> Key {
    // xattr-type keys of a few inodes below next_ino
    Key::fs(1 + i % 7, 8, i / 7, i % 3)
}

fn val(rng: &SeededEntropy, max: usize) -> Vec<u8> {
    let len = match rng.next_u64() % 4 {
        0 => 0,
        1 => (rng.next_u64() % 16) as usize,
        2 => (rng.next_u64() % 200) as usize,
        _ => (rng.next_u64() % (max as u64 + 1)) as usize,
    };
    let b = rng.next_u64() as u8;
    (0..len).map(|i| b.wrapping_add(i as u8)).collect()
}

fn open(meta: &Rc<FaultDev>, data: &Rc<FaultDev>, seed: u64, cfg: CommitConfig) -> CommitCore {
    CommitCore::open(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        Box::new(SeededEntropy::new(seed)),
        cfg,
    )
    .unwrap()
}

fn tree_items(srv: &mut CommitCore) -> BTreeMap<Key, (u64, Vec<u8>)> {
    let root = srv.super_block().fs_root;
    btree::collect_all(srv.cache(), &root)
        .unwrap()
        .into_iter()
        .filter(|it| it.key.zone == 16 && it.key.ty == 8)
        .map(|it| (it.key, (it.seq, it.val)))
        .collect()
}

/// Blocks written by the trace since `from`.
fn written_blknos(trace: &[TraceOp]) -> BTreeSet<u64> {
    trace
        .iter()
        .filter_map(|op| match op {
            TraceOp::Write { off, data } if data.len() == 65536 => Some(off >> 16),
            _ => None,
        })
        .collect()
}

fn run_model(seed: u64, ops: usize, key_space: u64, commit_every: usize, cfg: CommitConfig) {
    run_model_vals(seed, ops, key_space, commit_every, cfg, BTREE_MAX_VAL_LEN)
}

fn run_model_vals(
    seed: u64,
    ops: usize,
    key_space: u64,
    commit_every: usize,
    cfg: CommitConfig,
    max_val: usize,
) {
    let (meta, data) = small_volume(META, DATA, seed);
    let mut srv = open(&meta, &data, seed, cfg);
    let rng = SeededEntropy::new(seed ^ 0x5eed);
    let mut model: BTreeMap<Key, (u64, Vec<u8>)> = BTreeMap::new();
    let mut prev_refs: BTreeSet<u64> =
        scoutvm_fs::tools::fsck::fsck(&*meta, Some(&*data), &mut |_, _, _| {})
            .referenced
            .into_iter()
            .collect();
    meta.start_trace();
    let mut max_height = 0;
    for n in 0..ops {
        let k = key(rng.next_u64() % key_space);
        let seq = srv.trans_seq();
        let v = if max_val == 0 {
            Vec::new()
        } else {
            val(&rng, max_val)
        };
        let tx = srv.tx();
        let root = &mut tx.sb.fs_root;
        match rng.next_u64() % 8 {
            0..=2 => {
                let r = btree::insert(tx.cache, tx.alloc, root, Item::new(k, seq, &v));
                match model.contains_key(&k) {
                    true => assert_eq!(r, Err(StoreError::Exists)),
                    false => {
                        r.unwrap();
                        model.insert(k, (seq, v));
                    }
                }
            }
            3 => {
                let r = btree::update(tx.cache, tx.alloc, root, Item::new(k, seq, &v));
                match model.contains_key(&k) {
                    true => {
                        r.unwrap();
                        model.insert(k, (seq, v));
                    }
                    false => assert_eq!(r, Err(StoreError::NotFound)),
                }
            }
            4 => {
                btree::force(tx.cache, tx.alloc, root, Item::new(k, seq, &v)).unwrap();
                model.insert(k, (seq, v));
            }
            _ => {
                let r = btree::delete(tx.cache, tx.alloc, root, &k);
                match model.remove(&k) {
                    Some((s, v)) => {
                        let it = r.unwrap();
                        assert_eq!((it.seq, it.val), (s, v));
                    }
                    None => assert_eq!(r.unwrap_err(), StoreError::NotFound),
                }
            }
        }
        max_height = max_height.max(srv.super_block().fs_root.height);
        // point queries against the model
        if n % 17 == 0 {
            let q = key(rng.next_u64() % key_space);
            let root = srv.super_block().fs_root;
            let got = btree::lookup(srv.cache(), &root, &q)
                .unwrap()
                .map(|it| (it.seq, it.val));
            assert_eq!(got.as_ref(), model.get(&q));
            let nx = btree::next(srv.cache(), &root, &q)
                .unwrap()
                .filter(|it| it.key.zone == 16 && it.key.ty == 8);
            let want = model.range(q..).next().map(|(k, _)| *k);
            assert_eq!(nx.map(|it| it.key), want);
            let pv = btree::prev(srv.cache(), &root, &q)
                .unwrap()
                .filter(|it| it.key.zone == 16 && it.key.ty == 8);
            let want = model.range(..=q).next_back().map(|(k, _)| *k);
            assert_eq!(pv.map(|it| it.key), want);
        }
        if (n + 1) % commit_every == 0 || srv.meta_avail_remaining() < 64 {
            srv.commit().unwrap();
            // nothing the previous durable super referenced was overwritten
            let written = written_blknos(&meta.take_trace());
            let clobbered: Vec<_> = written.intersection(&prev_refs).collect();
            assert!(
                clobbered.is_empty(),
                "commit overwrote live blocks {clobbered:?}"
            );
            meta.start_trace();
            let rep = scoutvm_fs::tools::fsck::fsck(&*meta, Some(&*data), &mut |_, _, _| {});
            let mut t = String::new();
            rep.render(&mut t).unwrap();
            assert!(rep.is_clean(), "seed {seed} op {n}:\n{t}");
            prev_refs = rep.referenced.into_iter().collect();
            assert_eq!(tree_items(&mut srv), model, "seed {seed} op {n}");
        }
    }
    srv.commit().unwrap();
    assert_fsck_clean(&*meta, Some(&*data));
    // a fresh open from disk sees the same tree
    drop(srv);
    let mut srv = open(&meta, &data, seed + 1, cfg);
    srv.cache().drop_clean_all();
    assert_eq!(tree_items(&mut srv), model);
    eprintln!(
        "seed {seed}: {} items, max height {max_height}",
        model.len()
    );
}

/// Seeds to run: `SCOUTVM_MODEL_SEEDS` (default 4) for longer runs.
fn seeds() -> u64 {
    std::env::var("SCOUTVM_MODEL_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

#[test]
fn random_ops_match_model() {
    for seed in 1..=seeds() {
        run_model(seed, 6000, 1500, 150, CommitConfig::default());
    }
}

#[test]
fn random_ops_small_lists_and_cache() {
    // tiny list fill targets force refills and list-block churn every
    // commit; a tiny cache forces evictions and re-reads
    let cfg = CommitConfig {
        fill_lo: 64,
        fill_target: 200,
        cache_budget_bytes: 8 << 16,
        ..Default::default()
    };
    for seed in 1000..1000 + seeds().div_ceil(2) {
        run_model(seed, 4000, 1200, 40, cfg);
    }
}

/// Grow a tree to height 3 with large values, then delete everything:
/// splits, root growth, joins and collapse down to an empty root.
#[test]
fn tall_tree_grows_and_collapses() {
    let (meta, data) = small_volume(META, DATA, 77);
    let mut srv = open(&meta, &data, 77, CommitConfig::default());
    let n = 70_000u64;
    let v = vec![0xa5u8; 896];
    for i in 0..n {
        let seq = srv.trans_seq();
        let tx = srv.tx();
        btree::insert(
            tx.cache,
            tx.alloc,
            &mut tx.sb.fs_root,
            Item::new(Key::fs(2, 8, i, 0), seq, &v),
        )
        .unwrap();
        if srv.meta_avail_remaining() < 64 {
            srv.commit().unwrap();
        }
    }
    srv.commit().unwrap();
    assert!(
        srv.super_block().fs_root.height >= 3,
        "height {}",
        srv.super_block().fs_root.height
    );
    assert_fsck_clean(&*meta, Some(&*data));
    // the level-1 parent covering a key, and replacing it with itself
    let root = srv.super_block().fs_root;
    let (par, start, end) = btree::get_parent(srv.cache(), &root, &Key::fs(2, 8, 500, 0)).unwrap();
    assert_eq!(par.height, 2);
    assert!(start <= Key::fs(2, 8, 500, 0) && Key::fs(2, 8, 500, 0) <= end);
    {
        let tx = srv.tx();
        btree::set_parent(
            tx.cache,
            tx.alloc,
            &mut tx.sb.fs_root,
            &Key::fs(2, 8, 500, 0),
            &par,
        )
        .unwrap();
    }
    for i in (0..n).rev() {
        let tx = srv.tx();
        btree::delete(tx.cache, tx.alloc, &mut tx.sb.fs_root, &Key::fs(2, 8, i, 0)).unwrap();
        if srv.meta_avail_remaining() < 64 {
            srv.commit().unwrap();
        }
    }
    srv.commit().unwrap();
    // only the two mkfs items remain, in a single leaf
    assert_eq!(srv.super_block().fs_root.height, 1);
    assert_fsck_clean(&*meta, Some(&*data));
}

/// Free a large tree incrementally across commits.
#[test]
fn free_blocks_incrementally() {
    let (meta, data) = small_volume(META, DATA, 5);
    let mut srv = open(&meta, &data, 5, CommitConfig::default());
    let v = vec![7u8; 800];
    for i in 0..20_000u64 {
        let tx = srv.tx();
        btree::insert(
            tx.cache,
            tx.alloc,
            &mut tx.sb.fs_root,
            Item::new(Key::fs(3, 8, i, 0), 1, &v),
        )
        .unwrap();
        if srv.meta_avail_remaining() < 64 {
            srv.commit().unwrap();
        }
    }
    srv.commit().unwrap();
    assert!(srv.super_block().fs_root.height >= 2);
    // the leftmost leaf, freed first, holds the root inode
    srv.tx().sb.inode_count = 0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let tx = srv.tx();
        let done = btree::free_blocks(tx.cache, tx.alloc, &mut tx.sb.fs_root, 50).unwrap();
        srv.commit().unwrap();
        assert_fsck_clean(&*meta, Some(&*data));
        if done {
            break;
        }
    }
    assert!(rounds > 3, "freeing took {rounds} rounds");
    assert!(srv.super_block().fs_root.is_empty());
}

/// Bulk insert of sorted batches matches inserting one by one.
#[test]
fn insert_list_matches_model() {
    let (meta, data) = small_volume(META, DATA, 21);
    let mut srv = open(&meta, &data, 21, CommitConfig::default());
    let rng = SeededEntropy::new(21);
    let mut model: BTreeMap<Key, (u64, Vec<u8>)> = BTreeMap::new();
    for round in 0..60 {
        let mut batch: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
        for _ in 0..(1 + rng.next_u64() % 400) {
            batch.insert(key(rng.next_u64() % 5000), val(&rng, BTREE_MAX_VAL_LEN));
        }
        let seq = srv.trans_seq();
        let items: Vec<Item> = batch.iter().map(|(k, v)| Item::new(*k, seq, v)).collect();
        let tx = srv.tx();
        btree::insert_list(tx.cache, tx.alloc, &mut tx.sb.fs_root, items).unwrap();
        for (k, v) in batch {
            model.insert(k, (seq, v));
        }
        if round % 5 == 4 || srv.meta_avail_remaining() < 200 {
            srv.commit().unwrap();
            assert_fsck_clean(&*meta, Some(&*data));
            assert_eq!(tree_items(&mut srv), model, "round {round}");
        }
    }
    assert!(srv.super_block().fs_root.height >= 2);
    // unsorted input is refused without touching the tree
    let before = srv.super_block().fs_root;
    let tx = srv.tx();
    let bad = vec![Item::new(key(9), 1, &[]), Item::new(key(2), 1, &[])];
    assert!(matches!(
        btree::insert_list(tx.cache, tx.alloc, &mut tx.sb.fs_root, bad),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(srv.super_block().fs_root, before);
}

/// Empty values pack over a thousand items per leaf: the leaf hash table
/// runs at high load and probes wrap around its end.
#[test]
fn dense_leaves_with_empty_values() {
    run_model_vals(31, 20_000, 30_000, 2000, CommitConfig::default(), 0);
}
