//! The persistent half of a mount over a real volume: transactions written
//! into the client's log tree through the server, forest reads, remounts,
//! crash recovery of open trees, log merges.

mod common;
use common::*;
use scoutvm_fs::client::log_txn::{deletion_item, LogCommit};
use scoutvm_fs::client::node::{start_node, NodeHandle, NodeOptions};
use scoutvm_fs::format::key::Key;
use scoutvm_fs::posix::backend::Backend;
use scoutvm_fs::runtime::env::{Entropy, SeededEntropy};
use scoutvm_fs::runtime::exec::Executor;
use scoutvm_fs::storage::btree::Item;
use scoutvm_fs::storage::dev::BlockDev;
use std::collections::BTreeMap;
use std::rc::Rc;

const META: u64 = 1 << 30;
const DATA: u64 = 256 << 20;

type Model = BTreeMap<Key, Vec<u8>>;

/// The first differences between two models, readable.
fn diff(got: &Model, want: &Model) -> String {
    let mut out = String::new();
    let mut n = 0;
    for (k, v) in got {
        match want.get(k) {
            None => out += &format!("extra {k} ({} bytes)\n", v.len()),
            Some(w) if w != v => out += &format!("differs {k}: {} vs {} bytes\n", v.len(), w.len()),
            _ => continue,
        }
        n += 1;
        if n > 10 {
            break;
        }
    }
    for k in want.keys() {
        if !got.contains_key(k) {
            out += &format!("missing {k}\n");
            n += 1;
            if n > 20 {
                break;
            }
        }
    }
    out += &format!("got {} items, want {}", got.len(), want.len());
    out
}

#[track_caller]
fn assert_model(got: &Model, want: &Model, what: &str) {
    if got != want {
        panic!("{what}:\n{}", diff(got, want));
    }
}

fn opts() -> NodeOptions {
    let mut o = NodeOptions::default();
    o.server.log_trees.reserved_meta_blocks = 64;
    o.server.commit.reserved_meta_blocks = 64;
    o.merge_poll_ns = 0;
    o
}

fn start(
    ex: &Executor,
    meta: Rc<dyn BlockDev>,
    data: Rc<dyn BlockDev>,
    seed: u64,
    o: NodeOptions,
) -> NodeHandle {
    let ent: Rc<dyn Entropy> = Rc::new(SeededEntropy::new(seed));
    ex.block_on(start_node(meta, data, ent, ex.handle(), o))
        .unwrap()
        .unwrap()
}

/// Read every item of inode group ranges through the forest.
fn read_all(ex: &Executor, node: &NodeHandle, inos: u64) -> Model {
    let t = node.trans().clone();
    let mut out = ex
        .block_on(async move {
            let mut out = Model::new();
            let mut key = Key::fs(0, 0, 0, 0);
            let last = Key::fs(inos, 255, u64::MAX, u64::MAX);
            while key <= last {
                let (lo, hi) = scoutvm_fs::posix::backend::lock_range(&key);
                let r = t.forest_read(key, lo, hi).await.unwrap();
                for (k, v) in r.items {
                    out.insert(k, v);
                }
                if r.end >= last {
                    break;
                }
                key = r.end.inc();
            }
            out
        })
        .unwrap();
    out.retain(|k, _| k.zone == 16 && k.first >= 2 && k.first <= inos);
    out
}

fn random_commit(e: &SeededEntropy, seq: u64, model: &mut Model, n: usize, inos: u64) -> LogCommit {
    let mut items = BTreeMap::new();
    for _ in 0..n {
        let ino = 2 + e.next_u64() % (inos - 1);
        let k = Key::fs(ino, 8, e.next_u64() % 64, 0);
        if e.next_u64().is_multiple_of(4) {
            items.insert(k, deletion_item(k, seq));
            model.remove(&k);
        } else {
            let len = (e.next_u64() % 200) as usize;
            let v: Vec<u8> = (0..len).map(|i| (i as u64 ^ seq) as u8).collect();
            model.insert(k, v.clone());
            items.insert(k, Item::new(k, seq, &v));
        }
    }
    LogCommit {
        seq,
        items: items.into_values().collect(),
        totl: Vec::new(),
        inode_count_delta: 0,
        srch: Vec::new(),
    }
}

#[test]
fn commits_are_read_back_through_the_forest_and_survive_remount() {
    let (meta, data) = small_volume(META, DATA, 1);
    let (meta, data): (Rc<dyn BlockDev>, Rc<dyn BlockDev>) = (meta, data);
    let ex = Executor::default();
    let e = SeededEntropy::new(5);
    let mut model = Model::new();
    let node = start(&ex, meta.clone(), data.clone(), 11, opts());
    for _ in 0..20 {
        let t = node.trans().clone();
        let lc = random_commit(&e, t.trans_seq(), &mut model, 300, 2000);
        ex.block_on(async move { t.commit_log(&lc).await })
            .unwrap()
            .unwrap();
        assert_model(&read_all(&ex, &node, 2100), &model, "reads");
    }
    ex.block_on(node.shutdown()).unwrap().unwrap();
    assert_fsck_clean(&*meta, Some(&*data));
    let sb = scoutvm_fs::storage::block::read_super_from(&*meta).unwrap();
    assert!(sb.mounted_clients.is_empty());
    let node = start(&ex, meta.clone(), data.clone(), 12, opts());
    assert_model(&read_all(&ex, &node, 2100), &model, "reads");
    ex.block_on(node.shutdown()).unwrap().unwrap();
    assert_fsck_clean(&*meta, Some(&*data));
}

/// Run merge work until the server has none and no merge or freeing is
/// left; fsck after every step.
fn merge_all(
    ex: &Executor,
    node: &NodeHandle,
    meta: &Rc<dyn BlockDev>,
    data: &Rc<dyn BlockDev>,
    inos: u64,
    model: &Model,
) -> u64 {
    let mut steps = 0;
    for _ in 0..10_000 {
        let did = ex.block_on(node.merge_once()).unwrap().unwrap();
        assert_fsck_clean(&**meta, Some(&**data));
        assert_model(
            &read_all(ex, node, inos),
            model,
            "reads changed during the merge",
        );
        if did {
            steps += 1;
            continue;
        }
        // let the freeing job run
        let h = ex.handle();
        ex.block_on(async move { h.sleep_ns(3_000_000_000).await })
            .unwrap();
        if !node.leader().merge_pending() {
            return steps;
        }
    }
    panic!("merge did not finish");
}

fn commit_n(
    ex: &Executor,
    node: &NodeHandle,
    e: &SeededEntropy,
    model: &mut Model,
    n: usize,
    per: usize,
    inos: u64,
) {
    for _ in 0..n {
        let t = node.trans().clone();
        let lc = random_commit(e, t.trans_seq(), model, per, inos);
        ex.block_on(async move { t.commit_log(&lc).await })
            .unwrap()
            .unwrap();
    }
}

#[test]
fn log_merge_keeps_reads_identical_and_frees_inputs() {
    let (meta, data) = small_volume(META, DATA, 2);
    let (meta, data): (Rc<dyn BlockDev>, Rc<dyn BlockDev>) = (meta, data);
    let ex = Executor::default();
    let e = SeededEntropy::new(6);
    let mut model = Model::new();
    let inos = 5000;
    let node = start(&ex, meta.clone(), data.clone(), 21, opts());
    commit_n(&ex, &node, &e, &mut model, 30, 400, inos);
    node.request_merge();
    commit_n(&ex, &node, &e, &mut model, 1, 10, inos);
    assert!(node.leader().merge_pending());
    let steps = merge_all(&ex, &node, &meta, &data, inos, &model);
    assert!(steps >= 1);
    let sb = node.leader().stable_super();
    assert!(sb.log_merge.is_empty());
    assert!(!sb.fs_root.is_empty());
    // more changes on top of the merged fs_root, then a second merge
    commit_n(&ex, &node, &e, &mut model, 20, 400, inos);
    node.request_merge();
    commit_n(&ex, &node, &e, &mut model, 1, 10, inos);
    merge_all(&ex, &node, &meta, &data, inos, &model);
    ex.block_on(node.shutdown()).unwrap().unwrap();
    assert_fsck_clean(&*meta, Some(&*data));
    let node = start(&ex, meta.clone(), data.clone(), 22, opts());
    assert_model(&read_all(&ex, &node, inos), &model, "after remount");
    merge_all(&ex, &node, &meta, &data, inos, &model);
    ex.block_on(node.shutdown()).unwrap().unwrap();
    assert_fsck_clean(&*meta, Some(&*data));
}

/// `n` commits of [`bulk_commit`] through the node's transaction.
#[allow(clippy::too_many_arguments)]
fn bulk_commit_n(
    ex: &Executor,
    node: &NodeHandle,
    e: &SeededEntropy,
    model: &mut Model,
    n: usize,
    per: usize,
    inos: u64,
    val_len: usize,
) {
    for _ in 0..n {
        let t = node.trans().clone();
        let lc = bulk_commit(e, t.trans_seq(), model, per, inos, val_len);
        ex.block_on(async move { t.commit_log(&lc).await })
            .unwrap()
            .unwrap();
    }
}

/// Items with large values, keyed so that inode groups spread over the
/// whole fs_root.
fn bulk_commit(
    e: &SeededEntropy,
    seq: u64,
    model: &mut Model,
    n: usize,
    inos: u64,
    val_len: usize,
) -> LogCommit {
    let mut items = BTreeMap::new();
    for _ in 0..n {
        let ino = 2 + e.next_u64() % (inos - 1);
        let k = Key::fs(ino, 8, e.next_u64() % 16, 0);
        let v: Vec<u8> = (0..val_len).map(|i| (i as u64 ^ seq ^ ino) as u8).collect();
        model.insert(k, v.clone());
        items.insert(k, Item::new(k, seq, &v));
    }
    LogCommit {
        seq,
        items: items.into_values().collect(),
        totl: Vec::new(),
        inode_count_delta: 0,
        srch: Vec::new(),
    }
}

fn tiny_budget(mut o: NodeOptions) -> NodeOptions {
    o.server.commit.fill_lo = 12;
    o.server.commit.fill_target = 24;
    o.server.hold_budget_blocks = 4;
    o.server.merge.request_fill = 64;
    o
}

#[test]
fn subtree_merges_and_tiny_server_budget_splice_across_many_commits() {
    let (meta, data) = small_volume(2 << 30, DATA, 3);
    let (meta, data): (Rc<dyn BlockDev>, Rc<dyn BlockDev>) = (meta, data);
    let ex = Executor::default();
    let e = SeededEntropy::new(7);
    let mut model = Model::new();
    let inos = 60_000;
    let node = start(&ex, meta.clone(), data.clone(), 31, opts());
    // about 40 MB of items: fs_root grows past two levels
    bulk_commit_n(&ex, &node, &e, &mut model, 40, 1200, inos, 800);
    node.request_merge();
    commit_n(&ex, &node, &e, &mut model, 1, 10, inos);
    let t0 = std::time::Instant::now();
    let mut steps = 0;
    while node.leader().merge_pending() {
        if !ex.block_on(node.merge_once()).unwrap().unwrap() {
            let h = ex.handle();
            ex.block_on(async move { h.sleep_ns(2_000_000_000).await })
                .unwrap();
        }
        steps += 1;
        assert!(steps < 5000);
    }
    eprintln!("first merge: {steps} steps in {:?}", t0.elapsed());
    assert_fsck_clean(&*meta, Some(&*data));
    let sb = node.leader().stable_super();
    assert!(
        sb.fs_root.height >= 3,
        "fs_root height {}",
        sb.fs_root.height
    );
    assert_model(&read_all(&ex, &node, inos), &model, "after the first merge");
    ex.block_on(node.shutdown()).unwrap().unwrap();

    // several mounts with a server allocator so small that reclaiming
    // their trees and splicing the merge must span many commits: each
    // writes and crashes, the next reclaims it
    let mut before = 0;
    for round in 0..8u64 {
        let node = start(
            &ex,
            meta.clone(),
            data.clone(),
            40 + round,
            tiny_budget(opts()),
        );
        if round == 0 {
            before = scoutvm_fs::runtime::counters::get("server.multi_commit_steps").unwrap_or(0);
        }
        bulk_commit_n(&ex, &node, &e, &mut model, 3, 800, inos, 100);
        ex.block_on(node.abandon()).unwrap();
        assert_fsck_clean(&*meta, Some(&*data));
    }
    let node = start(&ex, meta.clone(), data.clone(), 60, tiny_budget(opts()));
    commit_n(&ex, &node, &e, &mut model, 1, 10, inos);
    let splices_before = scoutvm_fs::runtime::counters::get("log_merge.spliced").unwrap_or(0);
    let mut steps = 0;
    while node.leader().merge_pending() {
        if !ex.block_on(node.merge_once()).unwrap().unwrap() {
            let h = ex.handle();
            ex.block_on(async move { h.sleep_ns(2_000_000_000).await })
                .unwrap();
        }
        steps += 1;
        if steps % 8 == 0 {
            assert_fsck_clean(&*meta, Some(&*data));
        }
        assert!(steps < 5000);
    }
    let multi =
        scoutvm_fs::runtime::counters::get("server.multi_commit_steps").unwrap_or(0) - before;
    let spliced =
        scoutvm_fs::runtime::counters::get("log_merge.spliced").unwrap_or(0) - splices_before;
    eprintln!(
        "tiny budget merge: {steps} steps, {spliced} completions spliced, {multi} extra commits"
    );

    assert!(spliced >= 8, "only {spliced} completions");
    assert!(
        multi >= 8,
        "reclaim and splicing fit in too few commits ({multi})"
    );
    let splice_more = scoutvm_fs::runtime::trace::find("log_merge_splice")
        .iter()
        .filter(|e| e.arg("more") == Some(1))
        .count();
    assert!(splice_more >= 2, "splicing never needed another commit");
    assert_eq!(node.merge_stats().errors, 0);
    assert_fsck_clean(&*meta, Some(&*data));
    assert_model(
        &read_all(&ex, &node, inos),
        &model,
        "after the tiny budget merge",
    );
    ex.block_on(node.shutdown()).unwrap().unwrap();
    assert_fsck_clean(&*meta, Some(&*data));
}

/// A merge interrupted at every few steps of its work (requests out,
/// completions stored, splicing half done, freeing half done) by a crash:
/// each new server cancels the dead mount's requests and resumes from the
/// persistent items; the merge completes and reads never change.
#[test]
fn crashes_during_merge_and_splice_resume() {
    let (meta, data) = small_volume(4 << 30, DATA, 4);
    let (meta, data): (Rc<dyn BlockDev>, Rc<dyn BlockDev>) = (meta, data);
    let ex = Executor::default();
    let e = SeededEntropy::new(9);
    let mut model = Model::new();
    let inos = 30_000;
    let node = start(&ex, meta.clone(), data.clone(), 71, opts());
    bulk_commit_n(&ex, &node, &e, &mut model, 25, 1200, inos, 800);
    node.request_merge();
    commit_n(&ex, &node, &e, &mut model, 1, 10, inos);
    let mut node = node;
    let mut crashes = 0;
    for round in 0..200u64 {
        if !node.leader().merge_pending() {
            break;
        }
        // a little merge work, then a crash
        for _ in 0..(1 + round % 3) {
            if !ex.block_on(node.merge_once()).unwrap().unwrap() {
                let h = ex.handle();
                ex.block_on(async move { h.sleep_ns(1_100_000_000).await })
                    .unwrap();
            }
        }
        ex.block_on(node.abandon()).unwrap();
        crashes += 1;
        assert_fsck_clean(&*meta, Some(&*data));
        node = start(
            &ex,
            meta.clone(),
            data.clone(),
            100 + round,
            tiny_budget(opts()),
        );
        assert_model(
            &read_all(&ex, &node, inos),
            &model,
            "after a crash mid-merge",
        );
    }
    assert!(!node.leader().merge_pending(), "the merge never finished");
    assert!(crashes >= 3);
    assert!(node.leader().stable_super().fs_root.height >= 2);
    ex.block_on(node.shutdown()).unwrap().unwrap();
    assert_fsck_clean(&*meta, Some(&*data));
}

/// fsck is the oracle of the forest: a log tree bloom block missing the
/// bits of its items' locks (valid checksum), or a log tree item block
/// damaged, are found.
#[test]
fn fsck_finds_forest_damage() {
    use scoutvm_fs::format::log::BLOOM_BITS_OFF;
    let (meta, data) = small_volume(META, DATA, 5);
    let fmeta = meta.clone();
    let (meta, data): (Rc<dyn BlockDev>, Rc<dyn BlockDev>) = (meta, data);
    let ex = Executor::default();
    let e = SeededEntropy::new(8);
    let mut model = Model::new();
    let node = start(&ex, meta.clone(), data.clone(), 81, opts());
    commit_n(&ex, &node, &e, &mut model, 3, 200, 1000);
    ex.block_on(node.shutdown()).unwrap().unwrap();
    assert_fsck_clean(&*meta, Some(&*data));
    let sb = scoutvm_fs::storage::block::read_super_from(&*meta).unwrap();
    let mut cache = scoutvm_fs::storage::block::BlockCache::new(
        Box::new(meta.clone()),
        Box::new(SeededEntropy::new(1)),
        sb.hdr.fsid,
        8 << 20,
    );
    let lt = scoutvm_fs::server::log_trees::all(&mut cache, &sb.logs_root).unwrap()[0];
    // clear every bloom bit, keep the block valid
    let off = lt.bloom_ref.blkno << 16;
    let mut b = vec![0u8; 65536];
    meta.read(off, &mut b).unwrap();
    b[BLOOM_BITS_OFF..].fill(0);
    b[32..40].fill(0);
    scoutvm_fs::storage::block::seal_block(&mut b);
    meta.write(off, &b).unwrap();
    let (clean, text) = fsck_text(&*meta, Some(&*data));
    assert!(!clean && text.contains("bloom: bits of lock"), "{text}");
    // damage a byte of the tree's item block
    fmeta.corrupt_byte((lt.item_root.bref.blkno << 16) + 1000, 0x40);
    let (clean, text) = fsck_text(&*meta, Some(&*data));
    assert!(!clean && text.contains("item_root"), "{text}");
}
