//! A new server life recovers the mounts of the last one (reference §3.6,
//! §5): a mount that comes back greets and reports its locks
//! (LOCK_RECOVER); one that does not is fenced at the end of the window
//! and reclaimed; lock requests wait until then and are served after. The
//! five recovery trace events fire with the reference's arguments.
//! Virtual time, RAM disks, the server role over the in-process network.

mod common;
use common::*;
use scoutvm_fs::client::requests::{Client, ClientIdentity};
use scoutvm_fs::cluster::fence::{FenceAgent, FenceReason, ManualFence};
use scoutvm_fs::cluster::lock::{LockMode, LockRange};
use scoutvm_fs::cluster::msg::{cmd, NetLock};
use scoutvm_fs::cluster::recovery::{RECOV_ALL, RECOV_GREETING, RECOV_LOCKS};
use scoutvm_fs::cluster::transport::MemNet;
use scoutvm_fs::runtime::env::SeededEntropy;
use scoutvm_fs::runtime::trace;
use scoutvm_fs::server::role::{ServerConfig, ServerRole};
use std::rc::Rc;

const ADDR: &str = "srv";
const WINDOW_NS: u64 = 5_000_000_000;

fn cfg(term: u64) -> ServerConfig {
    let mut cfg = ServerConfig::default();
    cfg.commit.reserved_meta_blocks = 64;
    cfg.log_trees.reserved_meta_blocks = 64;
    cfg.reclaim_mounted_at_start = false;
    cfg.recovery_window_ns = WINDOW_NS;
    cfg.term = term;
    cfg
}

/// Open the volume for server life `term` and serve it on `net`, fencing
/// through `fence` if given.
fn life(
    meta: &Rc<scoutvm_fs::sim::faultdev::FaultDev>,
    data: &Rc<scoutvm_fs::sim::faultdev::FaultDev>,
    net: &MemNet,
    term: u64,
    fence: Option<&Rc<ManualFence>>,
) -> ServerRole {
    let role = ServerRole::open(
        meta.clone(),
        data.clone(),
        Box::new(SeededEntropy::new(term)),
        cfg(term),
        handle(),
    )
    .unwrap();
    if let Some(f) = fence {
        let agent: Rc<dyn FenceAgent> = f.clone();
        role.set_fence_agent(agent);
    }
    block_on(role.start(net, ADDR)).unwrap();
    role
}

fn connect(net: &MemNet, sb: &scoutvm_fs::format::super_block::SuperBlock, rid: u64) -> Rc<Client> {
    let id = ClientIdentity {
        fsid: sb.hdr.fsid,
        fmt_vers: sb.fmt_vers,
        rid,
        flags: 0,
    };
    block_on(Client::connect(Rc::new(net.clone()), ADDR, id, &handle())).unwrap()
}

fn lock(c: &Client, range: LockRange, old: LockMode, new: LockMode) -> NetLock {
    let nl = NetLock {
        range,
        write_seq: 0,
        old_mode: old,
        new_mode: new,
    };
    let r = block_on(c.session().call(cmd::LOCK, &nl.encode())).unwrap();
    NetLock::decode(&r).unwrap()
}

fn events(name: &str) -> Vec<[u64; 4]> {
    trace::snapshot()
        .into_iter()
        .filter(|e| e.point.name == name)
        .map(|e| e.args)
        .collect()
}

#[test]
fn a_mount_that_does_not_come_back_is_fenced_and_its_locks_released() {
    trace::clear();
    let (meta, data) = small_volume(8 << 30, 1 << 30, 31);
    let net = MemNet::new();
    let group = LockRange::inode_group(1 << 20);

    // life 1: mount 7 writes under a WRITE lock, mount 8 holds nothing
    let one = life(&meta, &data, &net, 1, None);
    let sb = one.stable_super();
    let a = connect(&net, &sb, 7);
    let b = connect(&net, &sb, 8);
    let granted = lock(&a, group, LockMode::Null, LockMode::Write);
    assert!(granted.write_seq > 0);
    // mount 7 answers a new life's LOCK_RECOVER with its WRITE, and
    // invalidations by lowering
    let report = NetLock {
        old_mode: LockMode::Write,
        ..granted
    };
    let lowered = Rc::new(std::cell::Cell::new(false));
    a.set_lock_recover_handler(Rc::new(move |from| {
        if report.range.start >= *from {
            vec![report]
        } else {
            Vec::new()
        }
    }));
    let l2 = lowered.clone();
    a.set_lock_handler(Rc::new(move |nl| {
        l2.set(true);
        Box::pin(async move { Ok(nl) })
    }));

    // the server dies; mount 8's node dies with it
    block_on(one.shutdown());
    b.session().close();
    drop(b);

    // life 2 recovers: 7 comes back, 8 does not
    let fence = ManualFence::new();
    let two = life(&meta, &data, &net, 2, Some(&fence));
    let c = connect(&net, &sb, 9);
    let h = handle();
    let c2 = c.clone();
    let wants_read = h
        .spawn(async move {
            let nl = NetLock {
                range: group,
                write_seq: 0,
                old_mode: LockMode::Null,
                new_mode: LockMode::Read,
            };
            let r = c2.session().call(cmd::LOCK, &nl.encode()).await;
            r.map(|b| NetLock::decode(&b).unwrap())
        })
        .unwrap();
    block_on(h.sleep_ns(WINDOW_NS / 2));
    let (pending, timed_out) = two.recovery_pending();
    assert_eq!(pending, [(8, RECOV_ALL)], "7 recovered, 8 owes everything");
    assert!(!timed_out);
    assert_eq!(two.lock_grants(), [(7, group, LockMode::Write)]);
    assert!(!lowered.get(), "nothing is served during recovery");

    // the window closes: 8 is fenced (the request waits for the agent)
    block_on(h.sleep_ns(WINDOW_NS));
    let (pending, timed_out) = two.recovery_pending();
    assert!(timed_out);
    assert_eq!(pending, [(8, RECOV_ALL)], "pending until reclaimed");
    let asked = fence.waiting();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        (asked[0].rid, asked[0].reason),
        (8, FenceReason::ClientRecovery)
    );
    assert_eq!(two.fence_requests().len(), 1);
    assert!(fence.ack(8));
    let got = block_on(handle().timeout_ns(60_000_000_000, wants_read))
        .expect("granted once 8 is reclaimed")
        .expect("read granted");
    assert_eq!(got.new_mode, LockMode::Read);
    assert!(lowered.get(), "7's WRITE was invalidated for the reader");
    assert!(two.recovery_pending().0.is_empty());
    assert!(
        two.lock_grants().iter().all(|(rid, _, _)| *rid != 8),
        "no grant of the fenced rid"
    );

    // the events, with the reference's arguments
    let prepared = events("recov_prepare");
    assert_eq!(prepared.len(), 2);
    assert!(prepared.iter().all(|e| e[1] == RECOV_ALL as u64));
    let greet = events("lock_server_greeting");
    assert!(greet.contains(&[7, 1, 0, 0]), "{greet:?}");
    assert!(greet.contains(&[9, 0, 0, 0]), "a new mount owes nothing");
    let fin = events("recov_finish");
    // remaining counts rids still owing anything
    assert!(fin.contains(&[7, RECOV_GREETING as u64, 2, 0]), "{fin:?}");
    assert!(fin.contains(&[7, RECOV_LOCKS as u64, 1, 0]), "{fin:?}");
    assert!(fin.contains(&[8, RECOV_ALL as u64, 0, 0]), "{fin:?}");
    let fire = events("recov_timeout_fire");
    assert_eq!(fire, [[1, 0, 0, 0]]);
    assert_eq!(events("recov_fence_rid"), [[8, 0, 0, 0]]);

    drop(a);
    drop(c);
    block_on(two.shutdown());
    assert_fsck_clean(&*meta, Some(&*data));
}

#[test]
fn a_failed_fence_stops_the_server() {
    let (meta, data) = small_volume(8 << 30, 1 << 30, 32);
    let net = MemNet::new();
    let one = life(&meta, &data, &net, 1, None);
    let sb = one.stable_super();
    let b = connect(&net, &sb, 8);
    block_on(one.shutdown());
    b.session().close();
    drop(b);
    let fence = ManualFence::new();
    let two = life(&meta, &data, &net, 2, Some(&fence));
    block_on(handle().sleep_ns(WINDOW_NS + 1_000_000_000));
    assert_eq!(fence.waiting().len(), 1);
    assert!(fence.fail(8));
    block_on(handle().timeout_ns(60_000_000_000, two.stopped()))
        .expect("a failed fence stops the server: another leader retries");
    block_on(two.shutdown());
}

/// A port of the reference's client-unmount-recovery: the server goes
/// down, and every mount that comes back to the new life leaves
/// (FAREWELL) at once, concurrently, while the others still owe their
/// recovery. Round after round, the new life's lock table, sessions and
/// recovery must hold none of the departed rids, nothing is ever fenced
/// (a departed rid left in `mounted_clients` would be prepared by the
/// next life and fenced at the end of its window), and fsck is clean.
#[test]
fn client_unmount_recovery() {
    trace::clear();
    let (meta, data) = small_volume(8 << 30, 1 << 30, 33);
    let net = MemNet::new();
    let fence = ManualFence::new();
    let mut term = 1;
    let mut server = life(&meta, &data, &net, term, Some(&fence));
    let sb = server.stable_super();
    let h = handle();
    for round in 0..4u64 {
        // three mounts of this life, each with a WRITE lock it reports
        // to the next life
        let rids = [10 + round * 3, 11 + round * 3, 12 + round * 3];
        let clients: Vec<Rc<Client>> = rids.iter().map(|&r| writer(&net, &sb, r)).collect();
        assert_eq!(server.lock_grants().len(), 3, "round {round}");

        // the server goes down; the next life prepares exactly these rids
        block_on(server.shutdown());
        term += 1;
        server = life(&meta, &data, &net, term, Some(&fence));
        let mut owed: Vec<u64> = server.recovery_pending().0.iter().map(|p| p.0).collect();
        owed.sort_unstable();
        assert_eq!(
            owed, rids,
            "round {round}: only the mounts of the last life"
        );

        // every mount leaves at once, during the recovery
        let leaving: Vec<_> = clients
            .iter()
            .map(|c| {
                let c = c.clone();
                h.spawn(async move { c.farewell().await }).unwrap()
            })
            .collect();
        for (rid, l) in rids.iter().zip(leaving) {
            block_on(h.timeout_ns(60_000_000_000, l))
                .unwrap_or_else(|_| panic!("round {round}: rid {rid}'s farewell hung"))
                .unwrap_or_else(|e| panic!("round {round}: rid {rid}'s farewell: {e:?}"));
        }
        drop(clients);
        let (pending, _) = server.recovery_pending();
        assert!(pending.is_empty(), "round {round}: still owed {pending:?}");
        assert!(
            server.lock_grants().is_empty(),
            "round {round}: departed rids hold locks: {:?}",
            server.lock_grants()
        );
        assert!(server.client_rids().is_empty(), "round {round}");
        // past the window: nobody was fenced
        block_on(h.sleep_ns(2 * WINDOW_NS));
        assert!(fence.waiting().is_empty(), "round {round}: a fence request");
        assert!(server.fence_requests().is_empty(), "round {round}");
        assert!(!server.is_failed(), "round {round}");
    }
    assert!(events("recov_fence_rid").is_empty());
    assert!(events("recov_timeout_fire").is_empty());
    // one more life: nothing left to recover
    block_on(server.shutdown());
    let last = life(&meta, &data, &net, term + 1, Some(&fence));
    assert!(
        last.recovery_pending().0.is_empty(),
        "a departed rid left in mounted_clients"
    );
    block_on(last.shutdown());
    assert_fsck_clean(&*meta, Some(&*data));
}

/// Poll `done` on the virtual clock (100 ms steps) for up to `secs`.
fn wait_until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let h = handle();
    for _ in 0..secs * 10 {
        if done() {
            return;
        }
        block_on(h.sleep_ns(100_000_000));
    }
    assert!(done(), "{what}: not within {secs} s");
}

/// A mount `rid` of the running server life holding a WRITE lock on an
/// inode group of its own, which it reports to a new life's LOCK_RECOVER.
fn writer(net: &MemNet, sb: &scoutvm_fs::format::super_block::SuperBlock, rid: u64) -> Rc<Client> {
    let c = connect(net, sb, rid);
    let granted = lock(
        &c,
        LockRange::inode_group(rid << 20),
        LockMode::Null,
        LockMode::Write,
    );
    let report = NetLock {
        old_mode: LockMode::Write,
        ..granted
    };
    c.set_lock_recover_handler(Rc::new(move |from| {
        if report.range.start >= *from {
            vec![report]
        } else {
            Vec::new()
        }
    }));
    c
}

/// Ack every fence request the agent waits on, checking who and why.
fn ack_all(fence: &ManualFence, mut want: Vec<u64>, reason: FenceReason) {
    let mut asked: Vec<u64> = fence
        .waiting()
        .iter()
        .inspect(|r| assert_eq!(r.reason, reason, "rid {}", r.rid))
        .map(|r| r.rid)
        .collect();
    asked.sort_unstable();
    want.sort_unstable();
    assert_eq!(asked, want, "the rids the agent is asked to fence");
    for rid in want {
        assert!(fence.ack(rid));
    }
}

fn holders(server: &ServerRole) -> Vec<u64> {
    let mut rids: Vec<u64> = server.lock_grants().iter().map(|g| g.0).collect();
    rids.dedup();
    rids
}

/// A port of the reference's fence-and-reclaim: force-unmount (die
/// without a farewell) one mount, then every mount, then the server, then
/// everything. Each mount that does not come back is fenced through the
/// agent, for `client_reconnect` under a running server or
/// `client_recovery` in a new server life, and reclaimed: its locks go
/// and a new mount takes them. Mounts that come back are never fenced.
#[test]
fn fence_and_reclaim() {
    trace::clear();
    let (meta, data) = small_volume(8 << 30, 1 << 30, 34);
    let net = MemNet::new();
    let fence = ManualFence::new();
    let mut server = life(&meta, &data, &net, 1, Some(&fence));
    let sb = server.stable_super();
    // the reconnect window (20 s) and a fence's round trip, with slack
    let patience = 60;

    // one mount dies under a running server
    let a = writer(&net, &sb, 20);
    let b = writer(&net, &sb, 21);
    drop(b);
    wait_until(patience, "rid 21 fenced", || !fence.waiting().is_empty());
    ack_all(&fence, vec![21], FenceReason::ClientReconnect);
    wait_until(patience, "rid 21 reclaimed", || holders(&server) == [20]);
    assert_eq!(server.client_rids(), [20]);

    // every mount dies
    let c = writer(&net, &sb, 22);
    drop(a);
    drop(c);
    wait_until(patience, "rids 20, 22 fenced", || {
        fence.waiting().len() == 2
    });
    ack_all(&fence, vec![20, 22], FenceReason::ClientReconnect);
    wait_until(patience, "rids 20, 22 reclaimed", || {
        holders(&server).is_empty()
    });
    assert!(server.client_rids().is_empty());

    // the server dies: its mounts come back to the next life, recover
    // their locks, and nobody is fenced
    let d = writer(&net, &sb, 23);
    let e = writer(&net, &sb, 24);
    block_on(server.shutdown());
    server = life(&meta, &data, &net, 2, Some(&fence));
    wait_until(patience, "23 and 24 recovered", || {
        server.recovery_pending().0.is_empty()
    });
    assert_eq!(holders(&server), [23, 24]);
    block_on(handle().sleep_ns(2 * WINDOW_NS));
    assert!(
        fence.waiting().is_empty(),
        "a mount that came back was fenced"
    );

    // everything dies: the next life fences both at its window's end
    block_on(server.shutdown());
    drop(d);
    drop(e);
    server = life(&meta, &data, &net, 3, Some(&fence));
    wait_until(patience, "23, 24 fenced", || fence.waiting().len() == 2);
    ack_all(&fence, vec![23, 24], FenceReason::ClientRecovery);
    wait_until(patience, "23, 24 reclaimed", || {
        server.recovery_pending().0.is_empty() && holders(&server).is_empty()
    });
    assert_eq!(events("recov_timeout_fire"), [[2, 0, 0, 0]]);

    // what the dead held can be had again
    let f = connect(&net, &sb, 25);
    for rid in 20..=24 {
        let got = lock(
            &f,
            LockRange::inode_group(rid << 20),
            LockMode::Null,
            LockMode::Write,
        );
        assert_eq!(got.new_mode, LockMode::Write, "rid {rid}'s group");
    }
    assert!(!server.is_failed());
    drop(f);
    block_on(server.shutdown());
    assert_fsck_clean(&*meta, Some(&*data));
}
