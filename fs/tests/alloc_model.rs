//! Allocator property tests against set models: data extents are handed
//! out at most once and come back only after the commit that freed them;
//! metadata blocks allocated in a commit were free in the previous durable
//! super; list and extent-tree allocators agree with a block set.

mod common;
use common::*;
use scoutvm_fs::format::block::{AllocListHead, AllocRoot};
use scoutvm_fs::runtime::env::{Entropy, SeededEntropy};
use scoutvm_fs::server::commit::{CommitConfig, CommitCore};
use scoutvm_fs::storage::allocator::{
    empty_list, ext_alloc, ext_insert, ext_list, ext_remove, fill_list, ListAlloc,
};
use scoutvm_fs::storage::block::{BlockCache, MetaAlloc};
use scoutvm_fs::storage::store_error::StoreError;
use std::collections::BTreeSet;
use std::rc::Rc;

fn extents_to_set(ext: &[(u64, u64)]) -> BTreeSet<u64> {
    ext.iter().flat_map(|&(s, l)| s..s + l).collect()
}

#[test]
fn data_allocator_matches_set_model() {
    for seed in 1..=3u64 {
        let data_bytes = 64 << 20; // 16384 blocks
        let (meta, data) = small_volume(1 << 30, data_bytes, seed);
        let mut srv = CommitCore::open(
            Box::new(meta.clone()),
            Box::new(data.clone()),
            Box::new(SeededEntropy::new(seed)),
            CommitConfig::default(),
        )
        .unwrap();
        let rng = SeededEntropy::new(seed * 31);
        let mut free: BTreeSet<u64> = (64..16384).collect();
        let mut used: Vec<(u64, u64)> = Vec::new();
        let mut pending: BTreeSet<u64> = BTreeSet::new();
        for step in 0..1500 {
            match rng.next_u64() % 5 {
                0..=2 => {
                    let want = 1 + rng.next_u64() % 300;
                    match srv.alloc_data(want) {
                        Ok((s, l)) => {
                            assert!(l >= 1 && l <= want);
                            for b in s..s + l {
                                assert!(
                                    free.remove(&b),
                                    "seed {seed} step {step}: block {b} handed out while not free"
                                );
                            }
                            used.push((s, l));
                        }
                        Err(StoreError::NoSpace) => {
                            assert!(free.is_empty(), "NoSpace with {} free", free.len())
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                3 if !used.is_empty() => {
                    let i = (rng.next_u64() % used.len() as u64) as usize;
                    let (s, l) = used.swap_remove(i);
                    // free a piece or all of it
                    let cut = rng.next_u64() % l;
                    srv.free_data(s, l - cut).unwrap();
                    if cut > 0 {
                        used.push((s + l - cut, cut));
                    }
                    pending.extend(s..s + l - cut);
                }
                _ => {
                    srv.commit().unwrap();
                    free.append(&mut pending);
                    let root = srv.super_block().data_alloc;
                    let ext = ext_list(srv.cache(), &root, usize::MAX).unwrap();
                    assert_eq!(extents_to_set(&ext), free, "seed {seed} step {step}");
                    assert_eq!(root.total_len, free.len() as u64);
                    // extents are maximal: no two touch
                    assert!(ext.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0));
                }
            }
        }
        // give everything back: the volume must account for every block
        for (s, l) in used.drain(..) {
            srv.free_data(s, l).unwrap();
        }
        srv.commit().unwrap();
        assert_fsck_clean(&*meta, Some(&*data));
        let root = srv.super_block().data_alloc;
        assert_eq!(
            ext_list(srv.cache(), &root, usize::MAX).unwrap(),
            vec![(64, 16384 - 64)]
        );
        // freeing garbage is refused, not accepted
        assert!(srv.free_data(0, 10).is_err());
        assert!(srv.free_data(16380, 10).is_err());
    }
}

/// A plain bump allocator for exercising extent trees in isolation.
struct Bump(u64, Vec<u64>);
impl MetaAlloc for Bump {
    fn alloc_meta(&mut self, _: &mut BlockCache) -> Result<u64, StoreError> {
        self.0 += 1;
        Ok(self.0)
    }
    fn free_meta(&mut self, _: &mut BlockCache, b: u64) -> Result<(), StoreError> {
        self.1.push(b);
        Ok(())
    }
}

#[test]
fn extent_tree_matches_set_model() {
    let dev = Rc::new(scoutvm_fs::storage::dev::MemDev::new(1 << 30));
    let mut cache = BlockCache::new(Box::new(dev), Box::new(SeededEntropy::new(1)), 9, 16 << 20);
    let mut a = Bump(100, Vec::new());
    let mut root = AllocRoot::default();
    let mut model: BTreeSet<u64> = BTreeSet::new();
    let rng = SeededEntropy::new(42);
    for step in 0..4000 {
        let s = rng.next_u64() % 20_000;
        let l = 1 + rng.next_u64() % 40;
        let op = rng.next_u64() % 3;
        let before = root;
        match op {
            0 => {
                let overlaps = (s..s + l).any(|b| model.contains(&b));
                let r = ext_insert(&mut cache, &mut a, &mut root, s, l);
                if overlaps {
                    assert!(
                        matches!(r, Err(StoreError::Invalid(_))),
                        "step {step}: double free accepted"
                    );
                } else {
                    r.unwrap();
                    model.extend(s..s + l);
                }
            }
            1 => {
                let inside = (s..s + l).all(|b| model.contains(&b));
                let r = ext_remove(&mut cache, &mut a, &mut root, s, l);
                if inside {
                    r.unwrap();
                    for b in s..s + l {
                        model.remove(&b);
                    }
                } else {
                    assert!(r.is_err(), "step {step}: removed a non-free range");
                }
            }
            _ => {
                if let Some((s, l)) = ext_alloc(&mut cache, &mut a, &mut root, l).unwrap() {
                    for b in s..s + l {
                        assert!(model.remove(&b));
                    }
                } else {
                    assert!(model.is_empty());
                }
            }
        }
        if step % 50 == 0 || step > 3900 {
            let got = extents_to_set(&ext_list(&mut cache, &root, usize::MAX).unwrap());
            if got != model {
                let extra: Vec<_> = model.difference(&got).take(20).collect();
                let more: Vec<_> = got.difference(&model).take(20).collect();
                panic!("step {step} op {op} root {before:?} -> {root:?} (s {s} l {l}): model-only {extra:?} tree-only {more:?}");
            }
            assert_eq!(root.total_len, model.len() as u64);
        }
    }
}

/// List allocators: alloc hands out each listed block once; fill and empty
/// move blocks between lists and extent trees without loss.
#[test]
fn list_fill_alloc_empty_round_trip() {
    let dev = Rc::new(scoutvm_fs::storage::dev::MemDev::new(1 << 30));
    let mut cache = BlockCache::new(Box::new(dev), Box::new(SeededEntropy::new(2)), 9, 32 << 20);
    let mut boot = Bump(10, Vec::new());
    // extent tree with blocks 1000..9000 free
    let mut src = AllocRoot::default();
    ext_insert(&mut cache, &mut boot, &mut src, 1000, 8000).unwrap();
    // a list filled from it
    let mut avail = AllocListHead::default();
    fill_list(&mut cache, &mut boot, &mut avail, &mut src, 100, 3000).unwrap();
    assert_eq!(avail.total_nr, 3000);
    assert_eq!(src.total_len, 5000);
    let mut la = ListAlloc::new(avail, AllocListHead::default());
    let mut got = BTreeSet::new();
    loop {
        match la.alloc_meta(&mut cache) {
            Ok(b) => {
                assert!((1000..9000).contains(&b));
                assert!(got.insert(b), "block {b} handed out twice");
                if got.len() % 3 == 0 {
                    la.free_meta(&mut cache, b).unwrap();
                }
            }
            Err(StoreError::NoSpace) => break,
            Err(e) => panic!("{e}"),
        }
    }
    // all 3000 listed: 2 became the COWed list blocks, the rest handed out
    assert_eq!(got.len(), 2998);
    // the 999 frees and the avail list block COWed away
    assert_eq!(la.freed.total_nr as usize, 2998 / 3 + 1);
    // empty the freed list back into a tree
    let mut dst = AllocRoot::default();
    let mut freed = la.freed;
    let n = empty_list(&mut cache, &mut boot, &mut dst, &mut freed).unwrap();
    assert_eq!(n as usize, 2998 / 3 + 1);
    assert_eq!(dst.total_len, n);
    assert_eq!(freed, AllocListHead::default());
}

/// The server's metadata lists never hand out a block the previous durable
/// super references (checked from the device's write trace) while a tiny
/// fill target forces refills from the extent trees every commit.
#[test]
fn meta_blocks_reused_only_after_durable_commit() {
    let (meta, data) = small_volume(1 << 30, 64 << 20, 9);
    let cfg = CommitConfig {
        fill_lo: 40,
        fill_target: 120,
        cache_budget_bytes: 4 << 20,
        ..Default::default()
    };
    let mut srv = CommitCore::open(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        Box::new(SeededEntropy::new(9)),
        cfg,
    )
    .unwrap();
    let rng = SeededEntropy::new(99);
    let mut live: BTreeSet<u64> = scoutvm_fs::tools::fsck::fsck(&*meta, None, &mut |_, _, _| {})
        .referenced
        .into_iter()
        .collect();
    for commit in 0..60 {
        meta.start_trace();
        for _ in 0..(5 + rng.next_u64() % 60) {
            let k = scoutvm_fs::format::Key::fs(5, 8, rng.next_u64() % 3000, 0);
            let seq = srv.trans_seq();
            let tx = srv.tx();
            if rng.next_u64().is_multiple_of(3) {
                let _ =
                    scoutvm_fs::storage::btree::delete(tx.cache, tx.alloc, &mut tx.sb.fs_root, &k);
            } else {
                scoutvm_fs::storage::btree::force(
                    tx.cache,
                    tx.alloc,
                    &mut tx.sb.fs_root,
                    scoutvm_fs::storage::btree::Item::new(k, seq, &[1; 700]),
                )
                .unwrap();
            }
            if srv.meta_avail_remaining() < 16 {
                break;
            }
        }
        srv.commit().unwrap();
        let written: BTreeSet<u64> = meta
            .take_trace()
            .into_iter()
            .filter_map(|op| match op {
                scoutvm_fs::sim::faultdev::TraceOp::Write { off, data } if data.len() == 65536 => {
                    Some(off >> 16)
                }
                _ => None,
            })
            .collect();
        let bad: Vec<_> = written.intersection(&live).collect();
        assert!(
            bad.is_empty(),
            "commit {commit} overwrote blocks of the durable super: {bad:?}"
        );
        let rep = scoutvm_fs::tools::fsck::fsck(&*meta, Some(&*data), &mut |_, _, _| {});
        assert!(rep.is_clean(), "{:?}", rep.findings);
        live = rep.referenced.into_iter().collect();
    }
    assert!(srv.counters.list_filled > 0 && srv.counters.list_emptied > 0);
    assert!(srv.counters.meta_root_swaps > 0);
}
