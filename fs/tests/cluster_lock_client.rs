//! Two cluster nodes on one volume, each mount taking its locks from the
//! leader's lock server through its lock client (`NodeOptions::
//! cluster_locks`): what one node writes the other reads (the writer's
//! WRITE is invalidated, it commits, the reader's grant makes its roots
//! stale), back and forth, and the server never records a WRITE beside
//! another grant of the range. Virtual time, host RAM disks.

mod common;
use common::*;
use scoutvm_fs::client::cluster_node::{
    mount_cluster, ClusterNode, ClusterSlot, OwnSlotFence, SoloDatagrams,
};
use scoutvm_fs::client::node::NodeOptions;
use scoutvm_fs::cluster::fence::{FenceAgent, ManualFence};
use scoutvm_fs::cluster::lock::{LockMode, LockRange};
use scoutvm_fs::cluster::lock_client::LockClientConfig;
use scoutvm_fs::cluster::quorum::HB_TIMEOUT_MIN_NS;
use scoutvm_fs::cluster::transport::{MemNet, Transport};
use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::posix::types::Cred;
use scoutvm_fs::runtime::env::{Entropy, ManualClock, SeededEntropy};
use scoutvm_fs::server::role::ServerRole;
use scoutvm_fs::sim::faultdev::FaultDev;
use std::rc::Rc;

const META: u64 = 1 << 30;
const DATA: u64 = 256 << 20;

fn opts() -> NodeOptions {
    let mut o = test_node_options(MountOptions::default());
    o.cluster_locks = Some(LockClientConfig::default());
    // the background merge worker and commit ticker run, as in a node
    let d = NodeOptions::default();
    o.merge_poll_ns = d.merge_poll_ns;
    o.tick_ns = d.tick_ns;
    o
}

/// Mount a node: `lead` holds the volume's one quorum slot (and serves),
/// the other finds the leader in the quorum blocks.
fn node(
    meta: &Rc<FaultDev>,
    data: &Rc<FaultDev>,
    net: &MemNet,
    lead: bool,
    seed: u64,
) -> (Rc<Mount>, ClusterNode) {
    let fence: Rc<dyn FenceAgent> =
        Rc::new(OwnSlotFence::new("10.0.2.15:7100", ManualFence::new()));
    let t: Rc<dyn Transport> = Rc::new(net.clone());
    let ent: Rc<dyn Entropy> = Rc::new(SeededEntropy::new(seed));
    let clock = Rc::new(ManualClock::new(Default::default()));
    let slot = lead.then(|| ClusterSlot {
        slot: 0,
        sock: Rc::new(SoloDatagrams),
        hb_timeout_ns: HB_TIMEOUT_MIN_NS,
    });
    run(
        "mount_cluster",
        mount_cluster(
            meta.clone(),
            data.clone(),
            t,
            slot,
            fence,
            clock,
            ent,
            handle(),
            opts(),
        ),
    )
    .expect("mount_cluster")
}

/// A volume (from `vol_seed`) and two nodes on it over one in-process
/// network: the first leads (entropy seed `seed`), the second follows
/// (`seed + 1`).
#[allow(clippy::type_complexity)]
fn two_nodes(
    vol_seed: u64,
    seed: u64,
) -> (
    Rc<FaultDev>,
    Rc<FaultDev>,
    (Rc<Mount>, ClusterNode),
    (Rc<Mount>, ClusterNode),
) {
    let (meta, data) = small_volume(META, DATA, vol_seed);
    let net = MemNet::new();
    let a = node(&meta, &data, &net, true, seed);
    let b = node(&meta, &data, &net, false, seed + 1);
    (meta, data, a, b)
}

/// The follower unmounts, then the leader; the volume is fsck clean.
fn unmount_both_and_fsck(
    meta: &FaultDev,
    data: &FaultDev,
    (ma, a): (Rc<Mount>, ClusterNode),
    (mb, b): (Rc<Mount>, ClusterNode),
) {
    run("unmount b", b.unmount()).unwrap();
    drop(mb);
    run("unmount a", a.unmount()).unwrap();
    drop(ma);
    assert_fsck_clean(meta, Some(data));
}

/// Run `f`, bounded in virtual time: a lock hand-off that never ends is
/// a failure, not a hang.
fn run<F: std::future::Future>(what: &str, f: F) -> F::Output {
    eprintln!("step: {what}");
    block_on(handle().timeout_ns(120_000_000_000, f))
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// Never a WRITE beside another mount's grant of the same range.
fn assert_exclusive(server: &ServerRole) {
    let grants = server.lock_grants();
    for (i, (rid, r, m)) in grants.iter().enumerate() {
        for (rid2, r2, m2) in &grants[i + 1..] {
            if r == r2 && rid != rid2 && *m != LockMode::Null && *m2 != LockMode::Null {
                assert!(
                    scoutvm_fs::cluster::lock::compatible(*m, *m2, false),
                    "{r:?}: {m:?} on {rid:016x} beside {m2:?} on {rid2:016x}"
                );
            }
        }
    }
}

#[test]
fn two_nodes_see_each_others_writes_through_cluster_locks() {
    let (meta, data, (ma, a), (mb, b)) = two_nodes(21, 1);
    let c = Cred::root();
    let server = a.server().expect("node a leads");
    let (la, lb) = (
        a.lock_client().unwrap().clone(),
        b.lock_client().unwrap().clone(),
    );

    // a creates and writes; b sees it without any explicit sync
    let f = run(
        "ma.create(&c, 1, b'f', 0o644)",
        ma.create(&c, 1, b"f", 0o644),
    )
    .unwrap();
    run("ma.write(f.ino, 0, b'hello')", ma.write(f.ino, 0, b"hello")).unwrap();
    assert_exclusive(&server);
    let r = block_on(handle().timeout_ns(30_000_000_000, mb.lookup(&c, 1, b"f")));
    if r.is_err() {
        eprintln!(
            "A {:x} held {:?}\n stats {:?}",
            a.client().rid(),
            la.held(),
            la.stats()
        );
        eprintln!(
            "B {:x} held {:?}\n stats {:?}",
            b.client().rid(),
            lb.held(),
            lb.stats()
        );
        eprintln!("server {:?}", server.lock_grants());
        eprintln!(
            "counters {:?}",
            scoutvm_fs::runtime::counters::snapshot()
                .iter()
                .filter(|(n, _)| n.starts_with("lock"))
                .collect::<Vec<_>>()
        );
    }
    let seen = r.unwrap().expect("b sees a's create");
    assert_eq!(seen.ino, f.ino);
    assert_eq!(
        run("mb.read(f.ino, 0, 16)", mb.read(f.ino, 0, 16)).unwrap(),
        b"hello"
    );
    assert!(
        la.stats().commits_for_invalidation >= 1,
        "a committed for b: {:?}",
        la.stats()
    );
    assert!(lb.stats().roots_stale >= 1);
    assert_exclusive(&server);

    // b appends, a reads it back
    run(
        "mb.write(f.ino, 5, b' world')",
        mb.write(f.ino, 5, b" world"),
    )
    .unwrap();
    assert_exclusive(&server);
    assert_eq!(
        run("ma.read(f.ino, 0, 32)", ma.read(f.ino, 0, 32)).unwrap(),
        b"hello world"
    );
    assert!(lb.stats().commits_for_invalidation >= 1);
    assert!(
        la.stats().cache_drops >= 1,
        "a's cache of the group went: {:?}",
        la.stats()
    );

    // b renames, a sees the new name only
    run(
        "mb.rename(&c, 1, b'f', 1, b'g', 0)",
        mb.rename(&c, 1, b"f", 1, b"g", 0),
    )
    .unwrap();
    assert!(run("ma.lookup(&c, 1, b'f')", ma.lookup(&c, 1, b"f")).is_err());
    assert_eq!(
        run("ma.lookup(&c, 1, b'g')", ma.lookup(&c, 1, b"g"))
            .unwrap()
            .ino,
        f.ino
    );
    assert_exclusive(&server);
    let group = LockRange::inode_group(f.ino);
    assert!(la
        .held()
        .iter()
        .any(|(r, m, _)| *r == group && m.can_read()));
    println!("a: {:?}\nb: {:?}", la.stats(), lb.stats());

    run("b.unmount()", b.unmount()).unwrap();
    drop(mb);
    run("a.unmount()", a.unmount()).unwrap();
    drop(ma);
    assert_fsck_clean(&*meta, Some(&*data));
}

/// Tasks on both nodes at once: each appends its own records to one
/// shared file and creates files in one shared directory; every record
/// and every file is there in the end, seen alike from both nodes.
#[test]
fn concurrent_writers_on_two_nodes_hand_locks_back_and_forth() {
    let (meta, data, (ma, a), (mb, b)) = two_nodes(22, 3);
    let c = Cred::root();
    let server = a.server().expect("node a leads");
    let f = run("create", ma.create(&c, 1, b"shared", 0o644)).unwrap();
    const TASKS: u64 = 3;
    const ROUNDS: u64 = 4;
    let mut joins = Vec::new();
    for (n, m, tr) in [
        (0u64, ma.clone(), a.trans().clone()),
        (1, mb.clone(), b.trans().clone()),
    ] {
        for t in 0..TASKS {
            let m = m.clone();
            let tr = tr.clone();
            let c = c.clone();
            joins.push(
                handle()
                    .spawn(async move {
                        for r in 0..ROUNDS {
                            let id = (n * TASKS + t) * ROUNDS + r;
                            // one 8-byte record per id: its own slot
                            if let Err(e) = m.write(f.ino, id * 8, &id.to_le_bytes()).await {
                                panic!("node {n} write {id}: {e:?} trans failed {} counters {:?} trans {:?}", tr.is_failed(), m.counters(), tr.counters());
                            }
                            let name = format!("n{n}t{t}r{r}");
                            if let Err(e) = m.create(&c, 1, name.as_bytes(), 0o644).await {
                                panic!("node {n} create {name}: {e:?} trans failed {} counters {:?} trans {:?}", tr.is_failed(), m.counters(), tr.counters());
                            }
                        }
                    })
                    .unwrap(),
            );
        }
    }
    for j in joins {
        run("writers", j);
        assert_exclusive(&server);
    }
    let total = 2 * TASKS * ROUNDS;
    for m in [&ma, &mb] {
        let got = run("read", m.read(f.ino, 0, (total * 8) as usize)).unwrap();
        assert_eq!(got.len() as u64, total * 8);
        for id in 0..total {
            let i = (id * 8) as usize;
            assert_eq!(u64::from_le_bytes(got[i..i + 8].try_into().unwrap()), id);
        }
        for n in 0..2 {
            for t in 0..TASKS {
                for r in 0..ROUNDS {
                    let name = format!("n{n}t{t}r{r}");
                    run("lookup", m.lookup(&c, 1, name.as_bytes())).unwrap();
                }
            }
        }
    }
    let (la, lb) = (a.lock_client().unwrap(), b.lock_client().unwrap());
    println!("a: {:?}\nb: {:?}", la.stats(), lb.stats());
    assert!(la.stats().invalidations > 0 && lb.stats().invalidations > 0);
    unmount_both_and_fsck(&meta, &data, (ma, a), (mb, b));
}

/// Commit rounds of the two-writer test (`SCOUTVM_MANY_COMMITS=<n>` for
/// longer runs; the default keeps it a few seconds).
fn rounds() -> u64 {
    std::env::var("SCOUTVM_MANY_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// The non-leader commits again and again (each round a create, a
/// write with data, a sync): every commit of its log trees is accepted.
/// Before `commit::fill_target_for_device` its 4th COMMIT_LOG_TREES got
/// ENOSPC on this 1 GiB metadata device (the list refills had emptied
/// the extent trees).
#[test]
fn many_commits_on_the_follower() {
    let (meta, data, (ma, a), (mb, b)) = two_nodes(22, 3);
    let c = Cred::root();
    for i in 0..60u64 {
        let name = format!("f{i}");
        let f = run("create", mb.create(&c, 1, name.as_bytes(), 0o644))
            .unwrap_or_else(|e| panic!("create {i}: {e:?}"));
        run("write", mb.write(f.ino, 0, &[i as u8; 5000])).unwrap();
        run("sync", mb.sync()).unwrap_or_else(|e| panic!("sync {i}: {e:?}"));
    }
    assert!(b.trans().counters().commits >= 60);
    unmount_both_and_fsck(&meta, &data, (ma, a), (mb, b));
}

/// Both nodes commit in turn, hundreds of times, creating files with data
/// and unlinking some the other node wrote: no commit fails, statfs stays
/// sane (the metadata used stays far from the reserve, the data used
/// covers the live files), the log trees stay bounded, fsck is clean.
#[test]
fn many_commits_from_both_nodes() {
    let (meta, data, (ma, a), (mb, b)) = two_nodes(23, 5);
    let c = Cred::root();
    let server = a.server().expect("node a leads");
    let reserve = scoutvm_fs::server::commit::reserve_for_device(
        scoutvm_fs::server::commit::RESERVED_META_BLOCKS,
        server.stable_super().total_meta_blocks,
    );
    let mut live: Vec<u64> = Vec::new();
    let mut max_trees = 0;
    let n = rounds();
    for i in 0..n {
        let m = if i % 2 == 0 { &ma } else { &mb };
        let name = format!("f{i}");
        let f = run("create", m.create(&c, 1, name.as_bytes(), 0o644))
            .unwrap_or_else(|e| panic!("create {i}: {e:?}"));
        run("write", m.write(f.ino, 0, &[i as u8; 5000])).unwrap();
        live.push(i);
        if i % 7 == 6 {
            // unlink a file the other node wrote
            let j = live.remove(live.len() - 2);
            run("unlink", m.unlink(&c, 1, format!("f{j}").as_bytes()))
                .unwrap_or_else(|e| panic!("unlink f{j} at {i}: {e:?}"));
        }
        if i == n / 2 {
            server.request_merge();
        }
        run("sync", m.sync()).unwrap_or_else(|e| panic!("sync {i}: {e:?}"));
        let (open, fin) = server.log_tree_counts().unwrap();
        max_trees = max_trees.max(open + fin);
        if i % 25 == 24 {
            for m in [&ma, &mb] {
                let s = run("statfs", m.statfs_more()).unwrap();
                assert!(s.free_meta_blocks <= s.total_meta_blocks, "{s:?}");
                assert!(s.free_data_blocks <= s.total_data_blocks, "{s:?}");
                // a few hundred small files: nowhere near the reserve
                assert!(
                    s.free_meta_blocks > s.total_meta_blocks / 2 + reserve,
                    "round {i}: {s:?}"
                );
                // 5000 bytes: two 4 KiB blocks a live file
                let used = s.total_data_blocks - s.free_data_blocks;
                assert!(used >= 2 * live.len() as u64, "round {i}: {s:?}");
            }
        }
    }
    let end = run("statfs", ma.statfs_more()).unwrap();
    println!(
        "end statfs {end:?} reserve {reserve} merge pending {}",
        server.merge_pending()
    );
    println!(
        "rounds {n} max log trees {max_trees} server {:?} counters {:?}",
        server.counters(),
        scoutvm_fs::runtime::counters::snapshot()
            .iter()
            .filter(|(k, _)| k.starts_with("server.") || k.starts_with("merge"))
            .collect::<Vec<_>>()
    );
    // one open tree a mount, plus finalized ones waiting for a merge
    assert!(max_trees <= 4, "log trees: {max_trees}");
    for m in [&ma, &mb] {
        for j in &live {
            run("lookup", m.lookup(&c, 1, format!("f{j}").as_bytes())).unwrap();
        }
    }
    unmount_both_and_fsck(&meta, &data, (ma, a), (mb, b));
}

/// Archival across nodes: a reader of released data on one node waits and
/// gets its bytes once the other node stages them (the stager's lock
/// request invalidates the reader's and wakes its waiters), and index
/// walks stop below any node's open transaction, not only the walker's.
#[test]
fn a_stage_on_one_node_wakes_readers_on_the_other() {
    use scoutvm_fs::posix::backend::Backend;
    let (meta, data, (ma, a), (mb, b)) = two_nodes(24, 7);
    let c = Cred::root();
    let bytes: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    let f = run("create", ma.create(&c, 1, b"archived", 0o644)).unwrap();
    run("write", ma.write(f.ino, 0, &bytes)).unwrap();
    run("sync", ma.sync()).unwrap();
    let dv = run("stat_more", ma.stat_more(f.ino)).unwrap().data_version;
    run("release", ma.release_data(f.ino, 0, 8192, dv)).unwrap();
    assert_eq!(
        run("stat_more", ma.stat_more(f.ino))
            .unwrap()
            .offline_blocks,
        2
    );

    // b reads the offline range: it waits
    let reader = {
        let mb = mb.clone();
        handle()
            .spawn(async move { mb.read(f.ino, 0, 8192).await })
            .unwrap()
    };
    run("let b block", handle().sleep_ns(2_000_000_000));
    assert_eq!(
        mb.data_waiting(0, 0, 16).len(),
        1,
        "b's reader waits on the offline blocks"
    );

    // a stages: b's reader wakes, takes its lock again and reads the bytes
    run("stage", ma.stage(f.ino, dv, 0, &bytes)).unwrap();
    let got = run("reader", reader).expect("b reads the staged bytes");
    assert_eq!(got, bytes);
    assert!(mb.data_waiting(0, 0, 16).is_empty());

    // b holds an open transaction with a change: a's walks stop below it
    run("b dirties", mb.create(&c, 1, b"dirty-on-b", 0o644)).unwrap();
    for i in 0..3u64 {
        run("a writes", ma.write(f.ino, 8192 + i, b"x")).unwrap();
        run("a syncs", ma.sync()).unwrap();
    }
    let stable = run("stable_seq", ma.stable_seq()).unwrap();
    let b_open = b.trans().trans_seq();
    assert!(
        stable < b_open,
        "a's stable seq {stable} must stay below b's open transaction {b_open}"
    );
    run("b syncs", mb.sync()).unwrap();

    unmount_both_and_fsck(&meta, &data, (ma, a), (mb, b));
}

/// Port of the reference archive-light-cycle: rounds in which every node,
/// at once, writes its files, verifies them and the other node's, releases
/// its own, and stages them back while the other node reads them (those
/// readers wait on the offline blocks and then get the staged bytes).
/// Data versions move only with writes; fsck clean at the end.
#[test]
// node n's mount, files and versions sit at index n of parallel arrays
#[allow(clippy::needless_range_loop)]
fn archive_light_cycle() {
    let (meta, data, (ma, a), (mb, b)) = two_nodes(25, 9);
    let c = Cred::root();
    const FILES: u64 = 6;
    const ROUNDS: u64 = 2;
    let content = |n: u64, f: u64, r: u64| -> Vec<u8> {
        let len = 1000 + ((n * 7 + f * 13 + r * 5) % 9) * 4096 + f * 37;
        (0..len)
            .map(|i| (i * 31 + n * 7 + f * 3 + r) as u8)
            .collect()
    };
    let mounts = [ma.clone(), mb.clone()];
    let dirs: Vec<u64> = mounts
        .iter()
        .enumerate()
        .map(|(n, m)| {
            run("mkdir", m.mkdir(&c, 1, format!("n{n}").as_bytes(), 0o755))
                .unwrap()
                .ino
        })
        .collect();
    let mut inos: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for (n, m) in mounts.iter().enumerate() {
        for f in 0..FILES {
            let ino = run(
                "create",
                m.create(&c, dirs[n], format!("f{f}").as_bytes(), 0o644),
            )
            .unwrap()
            .ino;
            inos[n].push(ino);
        }
    }
    for r in 0..ROUNDS {
        // write, at once on both nodes
        let writers: Vec<_> = (0..2)
            .map(|n| {
                let (m, inos) = (mounts[n].clone(), inos[n].clone());
                handle()
                    .spawn(async move {
                        for (f, &ino) in inos.iter().enumerate() {
                            let want = content(n as u64, f as u64, r);
                            let trunc = scoutvm_fs::posix::types::SetAttr {
                                size: Some(0),
                                ..Default::default()
                            };
                            m.setattr(&Cred::root(), ino, &trunc).await?;
                            m.write(ino, 0, &want).await?;
                        }
                        m.sync().await
                    })
                    .unwrap()
            })
            .collect();
        for w in writers {
            run("writers", w).expect("write round");
        }
        // verify everything from both nodes
        for m in &mounts {
            for n in 0..2 {
                for (f, &ino) in inos[n].iter().enumerate() {
                    let want = content(n as u64, f as u64, r);
                    let got = run("verify", m.read(ino, 0, want.len() + 10)).unwrap();
                    assert!(got == want, "round {r} node {n} file {f}");
                }
            }
        }
        // release each node's own files (data versions checked)
        let mut vers = [Vec::new(), Vec::new()];
        for n in 0..2 {
            let m = &mounts[n];
            for &ino in &inos[n] {
                let st = run("stat_more", m.stat_more(ino)).unwrap();
                let len = st.size.div_ceil(4096) * 4096;
                run("release", m.release_data(ino, 0, len, st.data_version)).unwrap();
                vers[n].push(st.data_version);
            }
        }
        // the other node reads (and waits) while the owner stages
        let readers: Vec<Vec<_>> = (0..2)
            .map(|n| {
                let other = mounts[1 - n].clone();
                inos[n]
                    .iter()
                    .enumerate()
                    .map(|(f, &ino)| {
                        let (o, len) = (other.clone(), content(n as u64, f as u64, r).len());
                        handle()
                            .spawn(async move { o.read(ino, 0, len).await })
                            .unwrap()
                    })
                    .collect()
            })
            .collect();
        run("let readers block", handle().sleep_ns(1_000_000_000));
        for n in 0..2 {
            assert!(
                !mounts[1 - n].data_waiting(0, 0, 64).is_empty(),
                "round {r}: node {}'s readers wait",
                1 - n
            );
        }
        let stagers: Vec<_> = (0..2)
            .map(|n| {
                let (m, inos, vers) = (mounts[n].clone(), inos[n].clone(), vers[n].clone());
                handle()
                    .spawn(async move {
                        for (f, &ino) in inos.iter().enumerate() {
                            let want = content(n as u64, f as u64, r);
                            m.stage(ino, vers[f], 0, &want).await?;
                        }
                        m.sync().await
                    })
                    .unwrap()
            })
            .collect();
        for s in stagers {
            run("stagers", s).expect("stage round");
        }
        for (n, rs) in readers.into_iter().enumerate() {
            for (f, rd) in rs.into_iter().enumerate() {
                let got = run("reader", rd).expect("a reader gets the staged bytes");
                assert!(
                    got == content(n as u64, f as u64, r),
                    "round {r} node {n} file {f}"
                );
            }
        }
        for n in 0..2 {
            for (f, &ino) in inos[n].iter().enumerate() {
                let st = run("stat_more", mounts[n].stat_more(ino)).unwrap();
                assert_eq!(st.data_version, vers[n][f], "staging keeps the version");
                assert_eq!(st.offline_blocks, 0);
            }
        }
    }
    drop(mounts);
    unmount_both_and_fsck(&meta, &data, (ma, a), (mb, b));
}
