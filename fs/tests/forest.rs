//! The persistent half of a mount over a real volume: transactions written
//! into the client's log tree through the server, forest reads, remounts,
//! crash recovery of open trees, log merges.

mod common;
use common::*;
use scoutvm_fs::btree::Item;
use scoutvm_fs::dev::BlockDev;
use scoutvm_fs::env::{Entropy, SeededEntropy};
use scoutvm_fs::exec::Executor;
use scoutvm_fs::format::key::Key;
use scoutvm_fs::node::{start_node, NodeHandle, NodeOptions};
use scoutvm_fs::trans::{deletion_item, LogCommit};
use std::collections::BTreeMap;
use std::rc::Rc;

const META: u64 = 1 << 30;
const DATA: u64 = 256 << 20;

type Model = BTreeMap<Key, Vec<u8>>;

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
                let (lo, hi) = scoutvm_fs::forest::lock_bounds(&key);
                let r = t.read_items(key, lo, hi).await.unwrap();
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
        let ino = 2 + e.next_u64() % inos;
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
        ex.block_on(async move { t.commit(&lc).await })
            .unwrap()
            .unwrap();
        assert_eq!(read_all(&ex, &node, 2100), model);
    }
    ex.block_on(node.shutdown()).unwrap().unwrap();
    assert_fsck_clean(&*meta, Some(&*data));
    let sb = scoutvm_fs::block::read_super_from(&*meta).unwrap();
    assert!(sb.mounted_clients.is_empty());
    let node = start(&ex, meta.clone(), data.clone(), 12, opts());
    assert_eq!(read_all(&ex, &node, 2100), model);
    ex.block_on(node.shutdown()).unwrap().unwrap();
    assert_fsck_clean(&*meta, Some(&*data));
}
