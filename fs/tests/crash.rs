//! Crash injection: record every device write of a random workload with
//! commits, then cut power after each write, losing some or all unflushed
//! writes and tearing one; the volume must reopen to the previous or the
//! new committed state, pass fsck, and accept new commits.
//!
//! `SCOUTVM_CRASH_POINTS` sets how many crash points to check (default
//! 20000, about half a minute here; CI needs at least 10000).

mod common;
use common::*;
use scoutvm_fs::format::key::Key;
use scoutvm_fs::runtime::env::{Entropy, SeededEntropy};
use scoutvm_fs::server::commit::{CommitConfig, CommitCore};
use scoutvm_fs::sim::faultdev::{CrashImages, FaultDev, LossPolicy, TraceOp};
use scoutvm_fs::storage::btree::{self, Item};
use scoutvm_fs::storage::dev::BlockDev;
use std::collections::BTreeMap;
use std::rc::Rc;

const META: u64 = 1 << 30;
const DATA: u64 = 64 << 20;

type State = BTreeMap<Key, (u64, Vec<u8>)>;

fn cfg() -> CommitConfig {
    // small list targets: refills and empties happen inside crash windows
    CommitConfig {
        fill_lo: 48,
        fill_target: 160,
        cache_budget_bytes: 8 << 20,
        ..Default::default()
    }
}

fn open(meta: Rc<FaultDev>, data: Rc<FaultDev>, seed: u64) -> CommitCore {
    CommitCore::open(
        Box::new(meta),
        Box::new(data),
        Box::new(SeededEntropy::new(seed)),
        cfg(),
    )
    .unwrap()
}

fn items(srv: &mut CommitCore) -> State {
    let root = srv.super_block().fs_root;
    btree::collect_all(srv.cache(), &root)
        .unwrap()
        .into_iter()
        .filter(|it| it.key.zone == 16 && it.key.ty == 8)
        .map(|it| (it.key, (it.seq, it.val)))
        .collect()
}

/// A file extent item mapping data blocks `[s, s+l)` (logical = physical
/// in inode 900, which keeps keys unique).
fn extent_key(s: u64, l: u64) -> Key {
    Key::fs(900, 28, s + l - 1, l)
}

/// One random transaction of tree and data-allocator changes.
fn random_txn(
    srv: &mut CommitCore,
    model: &mut State,
    data_used: &mut Vec<(u64, u64)>,
    rng: &SeededEntropy,
) {
    let ops = 5 + rng.next_u64() % 40;
    for _ in 0..ops {
        let k = Key::fs(1 + rng.next_u64() % 5, 8, rng.next_u64() % 400, 0);
        let seq = srv.trans_seq();
        match rng.next_u64() % 10 {
            0..=5 => {
                let len = (rng.next_u64() % 897) as usize;
                let v = vec![rng.next_u64() as u8; len];
                let tx = srv.tx();
                btree::force(
                    tx.cache,
                    tx.alloc,
                    &mut tx.sb.fs_root,
                    Item::new(k, seq, &v),
                )
                .unwrap();
                model.insert(k, (seq, v));
            }
            6 | 7 => {
                let tx = srv.tx();
                let r = btree::delete(tx.cache, tx.alloc, &mut tx.sb.fs_root, &k);
                assert_eq!(r.is_ok(), model.remove(&k).is_some());
            }
            8 => {
                // allocate data and map it with an extent item
                if let Ok((s, l)) = srv.alloc_data(1 + rng.next_u64() % 64) {
                    let k = extent_key(s, l);
                    let mut v = vec![0u8; 16];
                    v[..8].copy_from_slice(&s.to_le_bytes());
                    let tx = srv.tx();
                    btree::insert(
                        tx.cache,
                        tx.alloc,
                        &mut tx.sb.fs_root,
                        Item::new(k, seq, &v),
                    )
                    .unwrap();
                    data_used.push((s, l));
                }
            }
            _ => {
                if let Some((s, l)) = data_used.pop() {
                    let tx = srv.tx();
                    btree::delete(tx.cache, tx.alloc, &mut tx.sb.fs_root, &extent_key(s, l))
                        .unwrap();
                    srv.free_data(s, l).unwrap();
                }
            }
        }
        if srv.meta_avail_remaining() < 24 {
            break;
        }
    }
}

struct Recorded {
    base: Rc<scoutvm_fs::sim::faultdev::PageMap>,
    trace: Vec<TraceOp>,
    states: BTreeMap<u64, State>,
    data: Rc<FaultDev>,
}

fn record(seed: u64, commits: usize) -> Recorded {
    let (meta, data) = small_volume(META, DATA, seed);
    let base = meta.durable_pages();
    let mut srv = open(meta.clone(), data.clone(), seed);
    let rng = SeededEntropy::new(seed.wrapping_mul(0x9e37));
    let mut model = State::new();
    let mut states = BTreeMap::new();
    states.insert(srv.super_block().seq, model.clone());
    let mut used = Vec::new();
    meta.start_trace();
    for _ in 0..commits {
        random_txn(&mut srv, &mut model, &mut used, &rng);
        srv.commit().unwrap();
        states.insert(srv.super_block().seq, model.clone());
    }
    let trace = meta.take_trace();
    // the volume itself is fine at the end
    assert_fsck_clean(&*meta, Some(&*data));
    Recorded {
        base,
        trace,
        states,
        data,
    }
}

fn is_super_write(op: &TraceOp) -> bool {
    matches!(op, TraceOp::Write { off, data } if *off == 65536 && data.len() == 4096)
}

/// Check every crash point of one recorded run; returns points checked.
fn check_run(rec: &Recorded, seed: u64, budget: u64) -> u64 {
    let mut imgs = CrashImages::new(META, rec.base.clone(), rec.trace.clone());
    let first_seq = *rec.states.keys().next().unwrap();
    let mut supers_done = 0u64;
    let mut points = 0;
    let writes: Vec<&TraceOp> = rec
        .trace
        .iter()
        .filter(|o| matches!(o, TraceOp::Write { .. }))
        .collect();
    while let Some(n) = imgs.advance() {
        let this_is_super = is_super_write(writes[(n - 1) as usize]);
        let policies = [
            LossPolicy::LoseAll,
            LossPolicy::KeepAll,
            LossPolicy::Random {
                seed: seed ^ n,
                tear: true,
            },
        ];
        for (pi, policy) in policies.into_iter().enumerate() {
            let img = Rc::new(imgs.image(policy));
            points += 1;
            let (clean, text) = fsck_text(&*img, Some(&*rec.data));
            assert!(
                clean,
                "seed {seed} write {n} policy {policy:?}: fsck after crash:\n{text}"
            );
            let mut srv = open(img.clone(), rec.data.clone(), seed ^ n);
            let seq = srv.super_block().seq;
            // previous commit, or the one in flight when power went
            let prev = first_seq + supers_done;
            let ok = seq == prev || (this_is_super && seq == prev + 1);
            assert!(ok, "seed {seed} write {n}: reopened at seq {seq}, expected {prev} (or {} if the super landed)", prev + 1);
            assert_eq!(
                &items(&mut srv),
                &rec.states[&seq],
                "seed {seed} write {n} policy {policy:?}: state after crash"
            );
            // every so often, prove the crashed volume takes new commits
            if pi == 2 && n % 23 == 0 {
                let mut model = rec.states[&seq].clone();
                let rng = SeededEntropy::new(n);
                let mut used = Vec::new();
                for _ in 0..2 {
                    random_txn(&mut srv, &mut model, &mut used, &rng);
                    srv.commit().unwrap();
                }
                assert_fsck_clean(&*img, Some(&*rec.data));
                srv.cache().drop_clean_all();
                assert_eq!(items(&mut srv), model);
            }
            if points >= budget {
                return points;
            }
        }
        if this_is_super {
            supers_done += 1;
        }
    }
    points
}

#[test]
fn crash_at_every_write_reopens_consistent() {
    let target: u64 = std::env::var("SCOUTVM_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut points = 0;
    let mut seed = 1;
    let t0 = std::time::Instant::now();
    while points < target {
        let rec = record(seed, 12);
        points += check_run(&rec, seed, target - points);
        seed += 1;
    }
    eprintln!(
        "{points} crash points over {} workloads in {:?}",
        seed - 1,
        t0.elapsed()
    );
    assert!(points >= target);
}

/// A device that dies mid-commit: the commit fails cleanly, the server
/// refuses further work, and the disk opens at the previous commit.
#[test]
fn device_death_mid_commit_is_an_error_not_a_panic() {
    let mut checked = 0;
    for cut in [1u64, 2, 3, 5, 8, 13, 21] {
        let (meta, data) = small_volume(META, DATA, 40 + cut);
        let mut srv = open(meta.clone(), data.clone(), cut);
        let mut model = State::new();
        let mut used = Vec::new();
        let rng = SeededEntropy::new(cut);
        random_txn(&mut srv, &mut model, &mut used, &rng);
        srv.commit().unwrap();
        let committed = items(&mut srv);
        let seq = srv.super_block().seq;
        random_txn(&mut srv, &mut model, &mut used, &rng);
        meta.crash_after_writes(cut);
        let before = meta.writes();
        let r = srv.commit();
        if r.is_ok() {
            // the commit needed fewer writes than the cut: nothing to see
            assert!(
                meta.writes() - before < cut,
                "cut {cut}: commit succeeded on a dead device"
            );
            continue;
        }
        checked += 1;
        assert!(srv.commit().is_err());
        for policy in [LossPolicy::LoseAll, LossPolicy::KeepAll] {
            let img = Rc::new(meta.power_loss_image(policy));
            assert_fsck_clean(&*img, Some(&*data));
            let mut s2 = open(img, data.clone(), 1);
            assert_eq!(s2.super_block().seq, seq);
            assert_eq!(items(&mut s2), committed);
        }
    }
    assert!(checked >= 4, "only {checked} cuts landed inside a commit");
}

#[test]
fn torn_super_is_detected() {
    // the commit protocol assumes 4 KiB super writes are atomic; a torn
    // one must at least be caught by its crc, never read as valid
    let (meta, data) = small_volume(META, DATA, 3);
    let mut b = vec![0u8; 4096];
    meta.read(65536, &mut b).unwrap();
    b[2048..].fill(0xee);
    meta.write(65536, &b).unwrap();
    assert!(CommitCore::open(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        Box::new(SeededEntropy::new(1)),
        cfg()
    )
    .is_err());
    let (clean, text) = fsck_text(&*meta, Some(&*data));
    assert!(!clean && text.contains("super block"), "{text}");
}

/// Running the active allocator dry in the middle of a transaction leaves
/// half-modified blocks: the commit is refused and the volume reopens at
/// the previous commit, clean.
#[test]
fn failed_modification_poisons_the_transaction() {
    let (meta, data) = small_volume(META, DATA, 8);
    let mut srv = open(meta.clone(), data.clone(), 8);
    let mut model = State::new();
    let mut used = Vec::new();
    let rng = SeededEntropy::new(8);
    random_txn(&mut srv, &mut model, &mut used, &rng);
    srv.commit().unwrap();
    let committed = items(&mut srv);
    let mut hit = None;
    for i in 0..1_000_000u64 {
        let seq = srv.trans_seq();
        let tx = srv.tx();
        if let Err(e) = btree::force(
            tx.cache,
            tx.alloc,
            &mut tx.sb.fs_root,
            Item::new(Key::fs(2, 8, i, 0), seq, &[3; 896]),
        ) {
            hit = Some(e);
            break;
        }
    }
    assert_eq!(
        hit,
        Some(scoutvm_fs::storage::store_error::StoreError::NoSpace)
    );
    assert!(srv.cache().poisoned().is_some());
    assert!(srv.commit().is_err());
    assert_fsck_clean(&*meta, Some(&*data));
    let mut s2 = open(meta, data, 9);
    assert_eq!(items(&mut s2), committed);
}
