//! Many writers, one volume (issue 12): three mounts of one in-process
//! server, each a client over its session with the cluster locks, write
//! round after round while merges are requested every round. The server
//! finalizes every mount's tree together (SYNC_LOG_TREES, coordinated
//! finalization) and merges them into fs_root while they keep writing:
//! the number of log trees stays bounded, merges finish, the deferral
//! counter stays small, inode numbers never collide between mounts, and
//! after everything is merged a fresh mount reads every mount's files.
//!
//! `cargo test -p scoutvm-fs --features sim --test log_finalize -- --ignored
//! --nocapture` runs the bench: merge items per second with three writing
//! mounts and the log tree count over a long write (virtual time, so the
//! rate is per host second of the whole in-process cluster).

mod common;
use common::*;
use scoutvm_fs::client::cluster_node::ClientMount;
use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::posix::types::Cred;
use scoutvm_fs::runtime::env::ManualClock;
use std::rc::Rc;

const ROOT: u64 = 1;
/// Virtual time between rounds: over the mounts' commit interval.
const ROUND_IDLE_NS: u64 = scoutvm_fs::posix::hold::COMMIT_INTERVAL_NS + 1_000_000_000;

fn counter(name: &str) -> u64 {
    scoutvm_fs::runtime::counters::get(name).unwrap_or(0)
}

/// Three mounts' cluster: background commits and merge work, as in
/// production.
fn cluster(seed: u64) -> MemCluster {
    let mut opts = test_node_options(MountOptions::default());
    opts.tick_ns = 1_000_000_000;
    opts.merge_poll_ns = 200_000_000;
    MemCluster::new(seed, 2 << 30, 512 << 20, opts)
}

/// The log trees the server holds, open and finalized.
fn trees(c: &MemCluster) -> usize {
    let (open, fin) = c.server.log_tree_counts().unwrap();
    open + fin
}

fn content(mount: usize, round: usize, i: usize) -> Vec<u8> {
    let mut v = format!("mount {mount} round {round} file {i} ").into_bytes();
    v.resize(3000 + (i * 37) % 2000, b'a' + (mount as u8));
    v
}

/// Every mount creates `files` files in its own directory and writes
/// them, all mounts at once. Returns the inode numbers each created.
fn write_round(
    mounts: &[(Rc<Mount>, ClientMount)],
    dirs: &[u64],
    round: usize,
    files: usize,
) -> Vec<Vec<u64>> {
    let h = handle();
    let tasks: Vec<_> = mounts
        .iter()
        .enumerate()
        .map(|(mi, (m, _))| {
            let (m, dir) = (m.clone(), dirs[mi]);
            h.spawn(async move {
                let mut inos = Vec::new();
                for i in 0..files {
                    let name = format!("r{round}f{i}");
                    let a = m
                        .create(&Cred::root(), dir, name.as_bytes(), 0o644)
                        .await
                        .expect("create");
                    m.write(a.ino, 0, &content(mi, round, i))
                        .await
                        .expect("write");
                    inos.push(a.ino);
                }
                inos
            })
            .unwrap()
        })
        .collect();
    block_on(async move {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await);
        }
        out
    })
}

/// Sleep `ns` of virtual time (background commits and merges run); the
/// mounts' clock follows.
fn idle(clock: &ManualClock, ns: u64) {
    let h = handle();
    let step = 100_000_000;
    for _ in 0..ns / step {
        block_on(async { h.sleep_ns(step).await });
        clock.advance_ns(step);
    }
}

fn drain_merges(c: &MemCluster, m: &Mount, cm: &ClientMount) {
    let server = &c.server;
    for _ in 0..10_000 {
        if block_on(cm.merge_once()).unwrap() {
            continue;
        }
        // merged, and nothing finalized waits for the next merge
        if !server.merge_pending() && server.log_tree_counts().unwrap().1 == 0 {
            return;
        }
        if !server.merge_pending() {
            // finalized trees wait for the idle mount's next commit
            cm.client().request_sync();
            block_on(m.tick()).unwrap();
        }
        idle(&c.clock, 500_000_000);
    }
    panic!("the log merge never finished");
}

#[test]
fn three_writing_mounts_finalize_together_and_their_trees_stay_bounded() {
    const MOUNTS: usize = 3;
    const ROUNDS: usize = 24;
    const FILES: usize = 12;
    let c = cluster(7);
    let mounts: Vec<_> = (1..=MOUNTS as u64).map(|r| c.mount(0x100 + r)).collect();
    let mut dirs = Vec::new();
    for (i, (m, _)) in mounts.iter().enumerate() {
        let a = block_on(m.mkdir(&Cred::root(), ROOT, format!("m{i}").as_bytes(), 0o755)).unwrap();
        dirs.push(a.ino);
    }
    let finished0 = counter("log_merge.finished");
    let deferred0 = counter("server.merge_start_deferred");
    let syncs0 = counter("server.sync_log_trees_sent");
    let mut inos: Vec<Vec<u64>> = vec![Vec::new(); MOUNTS];
    let mut most = 0;
    for round in 0..ROUNDS {
        c.server.request_merge();
        let got = write_round(&mounts, &dirs, round, FILES);
        for (mi, v) in got.into_iter().enumerate() {
            inos[mi].extend(v);
        }
        // a commit interval: every mount commits (and merge work runs)
        idle(&c.clock, ROUND_IDLE_NS);
        let n = trees(&c);
        most = most.max(n);
        // every mount's open tree, plus the finalized inputs of at most
        // the merge in flight and the round behind it
        assert!(n <= 3 * MOUNTS, "round {round}: {n} log trees");
        // every tree outside the merge in flight is newer than its inputs
        if let Err(what) = c.server.check_log_order().unwrap() {
            panic!("round {round}: {what}");
        }
        assert_fsck_clean(&*c.meta, Some(&*c.data));
    }
    let finished = counter("log_merge.finished") - finished0;
    let deferred = counter("server.merge_start_deferred") - deferred0;
    let syncs = counter("server.sync_log_trees_sent") - syncs0;
    eprintln!(
        "{ROUNDS} rounds: at most {most} log trees, {finished} merges finished, \
         {deferred} finalization waits timed out, {syncs} SYNC_LOG_TREES sent"
    );
    assert!(
        syncs > 0,
        "the server never asked the other mounts to commit"
    );
    assert!(
        finished >= (ROUNDS / 4) as u64,
        "only {finished} merges finished in {ROUNDS} rounds of forced merges"
    );
    assert!(
        deferred <= (ROUNDS / 2) as u64,
        "{deferred} finalizations timed out in {ROUNDS} rounds"
    );
    // inode numbers: every mount's from its own batches, never shared
    let mut all: Vec<u64> = inos.iter().flatten().copied().collect();
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "an inode number was handed to two creates");
    let next = c.server.stable_super().next_ino;
    assert!(
        all.iter().all(|&i| i < next),
        "an inode past the server's next_ino"
    );
    for (a, va) in inos.iter().enumerate() {
        for vb in &inos[a + 1..] {
            // each mount's inodes come from batches of its own: no inode
            // of another mount falls between two consecutive ones of a
            // mount's batch
            for w in va.windows(2).filter(|w| w[1] == w[0] + 1) {
                assert!(!vb.iter().any(|&i| i > w[0] && i < w[1]));
            }
        }
    }
    // everyone leaves; a fresh mount merges everything and reads it all
    for (_, cm) in mounts {
        block_on(cm.unmount()).unwrap();
    }
    let (fresh, cm) = c.mount(0x200);
    drain_merges(&c, &fresh, &cm);
    // the fresh mount's own tree is all that is left, finalized or not
    let (open, fin) = c.server.log_tree_counts().unwrap();
    assert!(
        open <= 1 && fin == 0,
        "after draining: {open} open, {fin} finalized"
    );
    for (mi, dir) in dirs.iter().enumerate() {
        for round in 0..ROUNDS {
            for i in 0..FILES {
                let name = format!("r{round}f{i}");
                let a = block_on(fresh.lookup(&Cred::root(), *dir, name.as_bytes())).unwrap();
                let want = content(mi, round, i);
                let got = block_on(fresh.read(a.ino, 0, want.len() + 10)).unwrap();
                assert_eq!(got, want, "mount {mi} {name}");
            }
        }
    }
    block_on(cm.unmount()).unwrap();
    block_on(c.server.shutdown());
    assert_fsck_clean(&*c.meta, Some(&*c.data));
}

/// The bench: three mounts write steadily for `SCOUTVM_FINALIZE_BENCH_ROUNDS`
/// rounds (default 200) with merges forced every round; prints the log
/// merge rate (items merged per host second of merge work, and overall)
/// and the log tree counts over the run.
#[test]
#[ignore]
fn bench_log_merge_with_three_writing_mounts() {
    const MOUNTS: usize = 3;
    let rounds: usize = std::env::var("SCOUTVM_FINALIZE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let files = 40;
    let c = cluster(11);
    let mounts: Vec<_> = (1..=MOUNTS as u64).map(|r| c.mount(0x100 + r)).collect();
    let mut dirs = Vec::new();
    for (i, (m, _)) in mounts.iter().enumerate() {
        let a = block_on(m.mkdir(&Cred::root(), ROOT, format!("m{i}").as_bytes(), 0o755)).unwrap();
        dirs.push(a.ino);
    }
    let started = std::time::Instant::now();
    let mut counts = Vec::new();
    for round in 0..rounds {
        c.server.request_merge();
        write_round(&mounts, &dirs, round, files);
        idle(&c.clock, ROUND_IDLE_NS);
        counts.push(trees(&c));
    }
    let wall = started.elapsed().as_secs_f64();
    let items: u64 = mounts
        .iter()
        .map(|(_, cm)| cm.merge_stats().items_merged)
        .sum();
    let reqs: u64 = mounts.iter().map(|(_, cm)| cm.merge_stats().requests).sum();
    let most = counts.iter().max().copied().unwrap_or(0);
    let mean = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
    let tail: Vec<usize> = counts.iter().rev().take(10).rev().copied().collect();
    println!(
        "steady: {rounds} rounds x {MOUNTS} mounts x {files} files, a merge forced every round: \
         {items} items merged in {reqs} requests, {:.0} merged items per host second of the \
         whole run ({wall:.1} s wall, writes included); log trees: max {most}, mean {mean:.1}, \
         last 10 {tail:?}; merges finished {}, finalization timeouts {}",
        items as f64 / wall,
        counter("log_merge.finished"),
        counter("server.merge_start_deferred"),
    );
    // a backlog written by the three mounts, then merged in one go: the
    // rate of merge work alone
    for round in rounds..rounds + rounds / 2 {
        write_round(&mounts, &dirs, round, files);
        idle(&c.clock, ROUND_IDLE_NS);
    }
    let before: u64 = mounts
        .iter()
        .map(|(_, cm)| cm.merge_stats().items_merged)
        .sum();
    c.server.request_merge();
    for (m, cm) in &mounts {
        // a commit even with nothing dirty (as SYNC_LOG_TREES asks)
        cm.client().request_sync();
        block_on(m.tick()).unwrap();
    }
    let t = std::time::Instant::now();
    drain_merges(&c, &mounts[0].0, &mounts[0].1);
    let dt = t.elapsed().as_secs_f64();
    let after: u64 = mounts
        .iter()
        .map(|(_, cm)| cm.merge_stats().items_merged)
        .sum();
    println!(
        "backlog: {} items merged in {dt:.2} s wall = {:.0} items per host second; log trees \
         after: {:?}",
        after - before,
        (after - before) as f64 / dt,
        c.server.log_tree_counts().unwrap()
    );
    for (_, cm) in mounts {
        block_on(cm.unmount()).unwrap();
    }
    block_on(c.server.shutdown());
}
