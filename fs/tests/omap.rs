//! The open-inode map across mounts (issue 12, reference §1.10 and the
//! inode-deletion / orphan-inodes tests): an inode unlinked on one mount
//! while another has it open stays whole until the last close on any
//! mount, and an orphan left open by a mount that died is deleted by a
//! survivor's orphan scanner once the server reclaimed the dead mount,
//! never before. Two mounts, each a client of one in-process server with
//! the cluster locks, over MemNet in virtual time.

mod common;
use common::*;
use scoutvm_fs::cluster::fence::{FenceAgent, ManualFence};
use scoutvm_fs::cluster::lock_client::LockClientConfig;
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::posix::types::{Cred, O_RDWR};
use std::rc::Rc;

const ROOT: u64 = 1;
const META: u64 = 1 << 30;
const DATA: u64 = 32 << 20;
/// Each file: 256 KiB (64 data blocks).
const FILE: usize = 256 << 10;

/// Two mounts' cluster: the cluster locks, the orphan scanner every
/// `scan_ms` (0: none), a manual fence agent on the server.
fn cluster(seed: u64, scan_ms: u64) -> (MemCluster, Rc<ManualFence>) {
    let mut opts = test_node_options(MountOptions::default());
    opts.cluster_locks = Some(LockClientConfig::default());
    opts.orphan_scan_delay_ms = scan_ms;
    // each mount's transactions get a share of the small data device,
    // not all of it (mount 0 would leave mount 1 an ENOSPC)
    opts.server.log_trees.data_fill_lo = 512;
    opts.server.log_trees.data_fill_target = 1024;
    let c = MemCluster::new(seed, META, DATA, opts);
    let fence = ManualFence::new();
    let agent: Rc<dyn FenceAgent> = fence.clone();
    c.server.set_fence_agent(agent);
    (c, fence)
}

fn content(tag: u8) -> Vec<u8> {
    (0..FILE)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag))
        .collect()
}

/// Create `name` in the root on `m` and write `data` into it.
fn make_file(m: &Mount, name: &str, data: &[u8]) -> u64 {
    let a = run_bounded(
        "create",
        m.create(&Cred::root(), ROOT, name.as_bytes(), 0o644),
    )
    .unwrap();
    assert_eq!(
        run_bounded("write", m.write(a.ino, 0, data)).unwrap(),
        data.len()
    );
    a.ino
}

fn open(m: &Mount, ino: u64) {
    run_bounded("open", m.open(&Cred::root(), ino, O_RDWR)).unwrap();
}

fn read_all(m: &Mount, ino: u64, len: usize) -> Vec<u8> {
    run_bounded("read", m.read(ino, 0, len)).unwrap()
}

/// Free data blocks as the server counts them, after both mounts
/// committed (freed blocks count once their commit is durable).
fn free_data(mounts: &[&Mount]) -> u64 {
    for m in mounts {
        run_bounded("sync", m.sync()).unwrap();
    }
    run_bounded("statfs", mounts[0].statfs_more())
        .unwrap()
        .free_data_blocks
}

fn deleted(m: &Mount) -> u64 {
    m.counters().inodes_deleted
}

#[test]
fn unlinked_on_one_mount_stays_readable_on_the_other_until_its_close() {
    let (c, _fence) = cluster(11, 0);
    let (m0, cm0) = c.mount(1);
    let (m1, cm1) = c.mount(2);
    let before = free_data(&[&m0, &m1]);
    let data = content(1);
    let ino = make_file(&m0, "f", &data);
    open(&m0, ino);
    let written = free_data(&[&m0, &m1]);
    assert!(
        written + (FILE as u64 / 4096) <= before,
        "{written} {before}"
    );

    run_bounded("unlink", m1.unlink(&Cred::root(), ROOT, b"f")).unwrap();
    assert_eq!(deleted(&m1), 0, "mount 0 has it open: mount 1 keeps it");
    assert!(m1.counters().orphans_kept >= 1);
    assert_eq!(
        run_bounded("lookup", m1.lookup(&Cred::root(), ROOT, b"f")),
        Err(Errno::ENOENT)
    );
    // every byte is still there for mount 0, and it can still write
    assert_eq!(read_all(&m0, ino, FILE), data);
    let more = vec![0x5a; 8192];
    assert_eq!(
        run_bounded("write", m0.write(ino, FILE as u64, &more)).unwrap(),
        more.len()
    );
    let mut whole = data.clone();
    whole.extend_from_slice(&more);
    assert_eq!(read_all(&m0, ino, whole.len()), whole);
    assert_eq!(run_bounded("getattr", m0.getattr(ino)).unwrap().nlink, 0);
    // mount 1's scanner (at mount, or periodic) leaves it alone too
    assert_eq!(run_bounded("scan", m1.scan_orphans()).unwrap(), 0);
    assert_eq!(read_all(&m0, ino, whole.len()), whole);

    // the last close deletes it: items gone, space back
    run_bounded("release", m0.release(ino)).unwrap();
    assert_eq!(deleted(&m0), 1);
    assert_eq!(run_bounded("getattr", m1.getattr(ino)), Err(Errno::ENOENT));
    let after = free_data(&[&m0, &m1]);
    assert!(
        after >= written + (FILE as u64 / 4096),
        "data space back: {after} free, {written} with the first {FILE} bytes"
    );
    assert_eq!(
        run_bounded("scan", m1.scan_orphans()).unwrap(),
        0,
        "no orphan left"
    );
    c.shutdown(vec![(m0, cm0), (m1, cm1)]);
}

#[test]
fn the_last_closer_deletes_whichever_mount_it_is() {
    let (c, _fence) = cluster(12, 0);
    let (m0, cm0) = c.mount(1);
    let (m1, cm1) = c.mount(2);
    for (round, first) in [0usize, 1].into_iter().enumerate() {
        let ms = [&m0, &m1];
        let name = format!("f{round}");
        let data = content(round as u8);
        let ino = make_file(&m0, &name, &data);
        open(&m0, ino);
        open(&m1, ino);
        // the unlinker is the first closer's peer, not always mount 0
        run_bounded(
            "unlink",
            ms[first].unlink(&Cred::root(), ROOT, name.as_bytes()),
        )
        .unwrap();
        let (a, b) = (ms[first], ms[1 - first]);
        let (da, db) = (deleted(a), deleted(b));
        run_bounded("release", a.release(ino)).unwrap();
        assert_eq!(deleted(a), da, "round {round}: the other mount has it open");
        assert_eq!(read_all(b, ino, FILE), data, "round {round}");
        run_bounded("release", b.release(ino)).unwrap();
        assert_eq!(deleted(b), db + 1, "round {round}: the last closer deletes");
        assert_eq!(run_bounded("getattr", a.getattr(ino)), Err(Errno::ENOENT));
    }
    // rename over an inode open elsewhere keeps it too
    let data = content(9);
    let victim = make_file(&m0, "victim", &data);
    make_file(&m1, "new", &content(10));
    open(&m0, victim);
    run_bounded(
        "rename",
        m1.rename(&Cred::root(), ROOT, b"new", ROOT, b"victim", 0),
    )
    .unwrap();
    assert_eq!(read_all(&m0, victim, FILE), data);
    let d0 = deleted(&m0);
    run_bounded("release", m0.release(victim)).unwrap();
    assert_eq!(deleted(&m0), d0 + 1);
    c.shutdown(vec![(m0, cm0), (m1, cm1)]);
}

#[test]
fn a_dead_mounts_open_orphan_is_deleted_by_the_scanner_after_its_reclaim() {
    const SCAN_MS: u64 = 1_000;
    let (c, fence) = cluster(13, SCAN_MS);
    let (m0, cm0) = c.mount(1);
    let (m1, cm1) = c.mount(2);
    let data = content(3);
    let ino = make_file(&m1, "f", &data);
    open(&m1, ino);
    run_bounded("sync", m1.sync()).unwrap();
    let written = free_data(&[&m0, &m1]);
    run_bounded("unlink", m0.unlink(&Cred::root(), ROOT, b"f")).unwrap();
    // a few scans while mount 1 lives: kept
    block_on(handle().sleep_ns(5 * SCAN_MS * 1_000_000));
    assert!(m0.counters().orphan_scans >= 3);
    assert_eq!(deleted(&m0), 0);
    assert_eq!(read_all(&m1, ino, FILE), data);

    // mount 1 dies holding it open (no farewell)
    run_bounded("sync", m1.sync()).unwrap();
    cm1.abandon();
    drop(m1);
    // before the server reclaims it, no survivor may delete its inode
    block_on(handle().sleep_ns(5 * SCAN_MS * 1_000_000));
    assert_eq!(deleted(&m0), 0, "not before the dead mount is reclaimed");
    assert_eq!(m0.counters().orphans_deleted, 0);
    // the reconnect window ends: the server fences and reclaims it
    let mut waited = 0;
    while fence.waiting().is_empty() {
        block_on(handle().sleep_ns(1_000_000_000));
        waited += 1;
        assert!(waited < 120, "mount 1 was never fenced");
        assert_eq!(deleted(&m0), 0, "not before the dead mount is reclaimed");
    }
    assert_eq!(fence.waiting()[0].rid, 2);
    assert!(fence.ack(2));
    // within about one scan period of the reclaim
    block_on(handle().sleep_ns(2 * SCAN_MS * 1_000_000));
    assert_eq!(deleted(&m0), 1, "the survivor's scanner deleted it");
    assert_eq!(m0.counters().orphans_deleted, 1);
    assert_eq!(run_bounded("getattr", m0.getattr(ino)), Err(Errno::ENOENT));
    let after = free_data(&[&m0]);
    assert!(
        after >= written + (FILE as u64 / 4096),
        "{after} free, {written} with the file"
    );
    c.shutdown(vec![(m0, cm0)]);
}

// ---- the server's fan-out over real sessions ----

mod fanout {
    use super::common::*;
    use scoutvm_fs::client::requests::{Client, ClientIdentity};
    use scoutvm_fs::cluster::fence::{FenceAgent, ManualFence};
    use scoutvm_fs::cluster::msg::{omap_set, omap_test, OmapBits, OMAP_WORDS};
    use scoutvm_fs::cluster::transport::MemNet;
    use scoutvm_fs::runtime::env::SeededEntropy;
    use scoutvm_fs::server::role::{ServerConfig, ServerRole};
    use std::cell::RefCell;
    use std::rc::Rc;

    const ADDR: &str = "fanout";
    const WINDOW_NS: u64 = 5_000_000_000;
    const GROUP: u64 = 3;

    fn life(
        meta: &Rc<scoutvm_fs::sim::faultdev::FaultDev>,
        data: &Rc<scoutvm_fs::sim::faultdev::FaultDev>,
        net: &MemNet,
        term: u64,
        fence: &Rc<ManualFence>,
    ) -> ServerRole {
        let mut cfg = ServerConfig::default();
        cfg.commit.reserved_meta_blocks = 64;
        cfg.log_trees.reserved_meta_blocks = 64;
        cfg.reclaim_mounted_at_start = false;
        cfg.recovery_window_ns = WINDOW_NS;
        cfg.term = term;
        let role = ServerRole::open(
            meta.clone(),
            data.clone(),
            Box::new(SeededEntropy::new(term)),
            cfg,
            handle(),
        )
        .unwrap();
        let agent: Rc<dyn FenceAgent> = fence.clone();
        role.set_fence_agent(agent);
        block_on(role.start(net, ADDR)).unwrap();
        role
    }

    /// A mount (just its client) that has inode `GROUP * 1024 + bit` open.
    fn mount(net: &MemNet, role: &ServerRole, rid: u64, bit: u64) -> Rc<Client> {
        let sb = role.stable_super();
        let id = ClientIdentity {
            fsid: sb.hdr.fsid,
            fmt_vers: sb.fmt_vers,
            rid,
            flags: 0,
        };
        let c = block_on(Client::connect(Rc::new(net.clone()), ADDR, id, &handle())).unwrap();
        c.set_omap_handler(Rc::new(move |g| {
            let mut b = [0; OMAP_WORDS];
            if g == GROUP {
                omap_set(&mut b, GROUP * 1024 + bit);
            }
            b
        }));
        c
    }

    fn bits_of(b: &OmapBits) -> Vec<u64> {
        (0..1024).filter(|&i| omap_test(b, i)).collect()
    }

    #[test]
    fn questions_union_the_others_and_wait_for_recovery() {
        let (meta, data) = small_volume(8 << 30, 1 << 30, 41);
        let net = MemNet::new();
        let fence = ManualFence::new();
        let one = life(&meta, &data, &net, 1, &fence);
        let a = mount(&net, &one, 7, 1);
        let b = mount(&net, &one, 8, 2);
        let c = mount(&net, &one, 9, 3);
        // the asker's own map is not in the answer
        let got = block_on(c.open_ino_map(GROUP)).unwrap();
        assert_eq!(bits_of(&got), [1, 2]);
        assert_eq!(bits_of(&block_on(a.open_ino_map(GROUP)).unwrap()), [2, 3]);
        assert_eq!(
            bits_of(&block_on(c.open_ino_map(GROUP + 1)).unwrap()),
            [0u64; 0]
        );

        // the server dies; mount 8's node with it
        block_on(one.shutdown());
        b.session().close();
        drop(b);
        let two = life(&meta, &data, &net, 2, &fence);
        let answer: Rc<RefCell<Option<OmapBits>>> = Rc::new(RefCell::new(None));
        let (c2, ans) = (c.clone(), answer.clone());
        let asked = handle()
            .spawn(async move {
                *ans.borrow_mut() = Some(c2.open_ino_map(GROUP).await.unwrap());
            })
            .unwrap();
        // 7 and 9 greet the new life; 8 still owes its greeting: the
        // question waits (8 may have the inode open)
        block_on(handle().sleep_ns(WINDOW_NS / 2));
        assert!(!two.recovery_pending().0.is_empty());
        assert!(answer.borrow().is_none(), "answered during recovery");
        // the window closes: 8 is fenced, reclaimed, and the question runs
        block_on(handle().sleep_ns(WINDOW_NS));
        let asked_fence = fence.waiting();
        assert_eq!(asked_fence.len(), 1);
        assert_eq!(asked_fence[0].rid, 8);
        assert!(answer.borrow().is_none(), "answered before 8's reclaim");
        assert!(fence.ack(8));
        block_on(handle().timeout_ns(60_000_000_000, asked)).expect("answered after recovery");
        assert_eq!(bits_of(&answer.borrow().unwrap()), [1], "7's map only");
        drop((a, c));
        block_on(two.shutdown());
    }
}
