//! The lock server in the server role, over the in-memory transport with
//! two clients speaking the LOCK protocol by hand (lockproto.md): a WRITE
//! moves from one mount to the other through an invalidation, with a
//! larger write_seq; a give-back is answered at once; a mount that is
//! reclaimed (fenced) or says farewell releases the lock a waiter needs;
//! a shutdown fails a waiting request. All in virtual time.

mod common;
use common::*;
use scoutvm_fs::client::requests::{Client, ClientIdentity};
use scoutvm_fs::cluster::lock::{LockMode, LockRange};
use scoutvm_fs::cluster::msg::{cmd, NetLock, Request};
use scoutvm_fs::cluster::session::{SessionConfig, StaticLeader};
use scoutvm_fs::cluster::transport::{MemNet, Transport};
use scoutvm_fs::errno::FsResult;
use scoutvm_fs::runtime::counters;
use scoutvm_fs::runtime::env::SeededEntropy;
use scoutvm_fs::runtime::exec::{JoinHandle, Notify};
use scoutvm_fs::server::role::{ServerConfig, ServerRole};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

const ADDR: &str = "srv";
const A: u64 = 0xa;
const B: u64 = 0xb;
/// Virtual time for messages to settle.
const SETTLE_NS: u64 = 50_000_000;

fn server(net: &MemNet) -> ServerRole {
    let (meta, data) = small_volume(8 << 30, 1 << 30, 11);
    let mut cfg = ServerConfig::default();
    cfg.commit.reserved_meta_blocks = 64;
    cfg.log_trees.reserved_meta_blocks = 64;
    cfg.reclaim_mounted_at_start = false;
    let l = ServerRole::open(meta, data, Box::new(SeededEntropy::new(5)), cfg, handle()).unwrap();
    block_on(l.start(net, ADDR)).unwrap();
    l
}

/// A mount that answers invalidations (recording them) once its gate is
/// open.
struct Mount {
    client: Rc<Client>,
    invalidations: Rc<RefCell<Vec<NetLock>>>,
    open: Rc<Cell<bool>>,
    opened: Notify,
}

impl Mount {
    fn new(net: &MemNet, l: &ServerRole, rid: u64, open: bool) -> Mount {
        let sb = l.stable_super();
        let id = ClientIdentity {
            fsid: sb.hdr.fsid,
            fmt_vers: sb.fmt_vers,
            rid,
            flags: 0,
        };
        let t: Rc<dyn Transport> = Rc::new(net.clone());
        let client = block_on(Client::connect_via(
            t,
            Rc::new(StaticLeader::new(ADDR)),
            id,
            SessionConfig::default(),
            &handle(),
        ))
        .unwrap();
        let m = Mount {
            client,
            invalidations: Rc::default(),
            open: Rc::new(Cell::new(open)),
            opened: Notify::new(),
        };
        let (inv, op, n) = (m.invalidations.clone(), m.open.clone(), m.opened.clone());
        m.client.session().set_handler(Rc::new(move |req| {
            let (inv, op, n) = (inv.clone(), op.clone(), n.clone());
            Box::pin(async move {
                let Request::Lock(nl) = req else {
                    return Ok(Vec::new());
                };
                inv.borrow_mut().push(nl);
                loop {
                    let w = n.notified();
                    if op.get() {
                        break;
                    }
                    w.await;
                }
                Ok(nl.encode())
            })
        }));
        m
    }

    fn open(&self) {
        self.open.set(true);
        self.opened.notify();
    }

    fn lock(
        &self,
        range: LockRange,
        old: LockMode,
        new: LockMode,
    ) -> JoinHandle<FsResult<NetLock>> {
        let c = self.client.clone();
        handle()
            .spawn(async move {
                let nl = NetLock {
                    range,
                    write_seq: 0,
                    old_mode: old,
                    new_mode: new,
                };
                let r = c.session().call(cmd::LOCK, &nl.encode()).await?;
                NetLock::decode(&r)
            })
            .unwrap()
    }
}

fn settle() {
    block_on(handle().sleep_ns(SETTLE_NS));
}

fn counter(name: &str) -> u64 {
    counters::get(name).unwrap_or(0)
}

#[test]
fn a_write_moves_to_the_other_mount_through_an_invalidation() {
    let net = MemNet::new();
    let l = server(&net);
    let a = Mount::new(&net, &l, A, false);
    let b = Mount::new(&net, &l, B, true);
    let range = LockRange::inode_group(4096);
    let lt_a = block_on(a.client.get_log_trees()).unwrap();
    let sent_before = counter("lock_server.invalidations_sent");

    let ga = block_on(a.lock(range, LockMode::Null, LockMode::Write)).unwrap();
    assert_eq!(
        (ga.range, ga.old_mode, ga.new_mode),
        (range, LockMode::Null, LockMode::Write)
    );
    assert!(
        ga.write_seq > lt_a.get_trans_seq,
        "a write_seq above every seq handed out: {} {}",
        ga.write_seq,
        lt_a.get_trans_seq
    );
    assert_eq!(l.lock_grants(), vec![(A, range, LockMode::Write)]);

    // B waits while A has not answered its invalidation
    let wb = b.lock(range, LockMode::Null, LockMode::Write);
    settle();
    assert!(!wb.is_finished());
    let inv = a.invalidations.borrow().clone();
    assert_eq!(inv.len(), 1);
    assert_eq!(
        (
            inv[0].range,
            inv[0].old_mode,
            inv[0].new_mode,
            inv[0].write_seq
        ),
        (range, LockMode::Write, LockMode::Null, 0)
    );
    assert_eq!(l.lock_grants(), vec![(A, range, LockMode::Write)]);
    assert!(counter("lock_server.invalidations_sent") > sent_before);

    a.open();
    let gb = block_on(wb).unwrap();
    assert_eq!((gb.range, gb.new_mode), (range, LockMode::Write));
    assert!(
        gb.write_seq > ga.write_seq,
        "{} {}",
        gb.write_seq,
        ga.write_seq
    );
    assert_eq!(l.lock_grants(), vec![(B, range, LockMode::Write)]);
    // transactions opened later get seqs above the grant's
    let lt_b = block_on(b.client.get_log_trees()).unwrap();
    assert!(lt_b.get_trans_seq > gb.write_seq);

    // a READ from A downgrades B's WRITE to READ: both then read
    let wa = a.lock(range, LockMode::Null, LockMode::Read);
    let ra = block_on(wa).unwrap();
    assert_eq!((ra.new_mode, ra.write_seq), (LockMode::Read, 0));
    assert_eq!(
        l.lock_grants(),
        vec![(A, range, LockMode::Read), (B, range, LockMode::Read)]
    );

    // a give-back is answered at once, and what it held is free
    let back = block_on(a.lock(range, LockMode::Read, LockMode::Null)).unwrap();
    assert_eq!(back.new_mode, LockMode::Null);
    assert_eq!(l.lock_grants(), vec![(B, range, LockMode::Read)]);
    let up = block_on(b.lock(range, LockMode::Read, LockMode::Write)).unwrap();
    assert_eq!(up.new_mode, LockMode::Write);
    assert_eq!(
        a.invalidations.borrow().len(),
        1,
        "an upgrade alone invalidates no one"
    );
    block_on(l.shutdown());
}

#[test]
fn a_reclaimed_or_departed_holder_releases_a_waiter() {
    let net = MemNet::new();
    let l = server(&net);
    // A never answers invalidations (a dead or fenced mount)
    let a = Mount::new(&net, &l, A, false);
    let b = Mount::new(&net, &l, B, true);
    let r1 = LockRange::inode_group(0);
    let r2 = LockRange::orphan();
    block_on(a.lock(r1, LockMode::Null, LockMode::Write)).unwrap();
    block_on(a.lock(r2, LockMode::Null, LockMode::WriteOnly)).unwrap();

    let wb = b.lock(r1, LockMode::Null, LockMode::Read);
    settle();
    assert!(!wb.is_finished());
    block_on(l.reclaim_fenced(A)).unwrap();
    let gb = block_on(wb).unwrap();
    assert_eq!(gb.new_mode, LockMode::Read);
    assert_eq!(l.lock_grants(), vec![(B, r1, LockMode::Read)]);

    // a farewell does the same: a new mount takes a lock, says farewell
    // without answering, and the waiter proceeds
    let c = Mount::new(&net, &l, 0xc, false);
    block_on(c.lock(r2, LockMode::Null, LockMode::Write)).unwrap();
    let wb = b.lock(r2, LockMode::Null, LockMode::WriteOnly);
    settle();
    assert!(!wb.is_finished());
    assert_eq!(c.invalidations.borrow().len(), 1);
    block_on(c.client.farewell()).unwrap();
    assert_eq!(block_on(wb).unwrap().new_mode, LockMode::WriteOnly);
    assert_eq!(
        l.lock_grants(),
        vec![(B, r2, LockMode::WriteOnly), (B, r1, LockMode::Read)]
    );
    block_on(l.shutdown());
}

#[test]
fn a_shutdown_fails_a_waiting_request() {
    let net = MemNet::new();
    let l = server(&net);
    let a = Mount::new(&net, &l, A, false);
    let b = Mount::new(&net, &l, B, true);
    let range = LockRange::rename();
    block_on(a.lock(range, LockMode::Null, LockMode::Write)).unwrap();
    let wb = b.lock(range, LockMode::Null, LockMode::Write);
    settle();
    assert!(!wb.is_finished());
    let errors = l.counters().request_errors;
    block_on(l.shutdown());
    settle();
    assert_eq!(
        l.counters().request_errors,
        errors + 1,
        "the waiting request failed"
    );
    assert_eq!(l.lock_grants(), vec![(A, range, LockMode::Write)]);
    // the client keeps its call for the next server life
    assert!(!wb.is_finished());
    wb.abort();
}

#[test]
fn a_commit_carries_item_seqs_of_its_write_grant_but_none_never_handed_out() {
    let net = MemNet::new();
    let l = server(&net);
    let a = Mount::new(&net, &l, A, true);
    let range = LockRange::inode_group(4096);
    // the transaction begins, then a WRITE is granted with a newer seq:
    // items dirtied under it carry that seq (reference §3.7.6)
    let mut lt = block_on(a.client.get_log_trees()).unwrap();
    let g = block_on(a.lock(range, LockMode::Null, LockMode::Write)).unwrap();
    assert!(g.write_seq > lt.get_trans_seq);
    lt.max_item_seq = g.write_seq;
    block_on(a.client.commit_log_trees(&lt)).expect("a commit with its grant's write_seq");
    // a seq the server never handed out is refused
    let mut lt2 = block_on(a.client.get_log_trees()).unwrap();
    lt2.max_item_seq = lt2.get_trans_seq + 1_000_000;
    assert_eq!(
        block_on(a.client.commit_log_trees(&lt2)),
        Err(scoutvm_fs::errno::Errno::EINVAL)
    );
    block_on(l.shutdown());
}

#[test]
fn waiting_lock_requests_leave_room_for_other_requests() {
    let net = MemNet::new();
    let l = server(&net);
    let a = Mount::new(&net, &l, A, false);
    let b = Mount::new(&net, &l, B, true);
    // more waiting LOCK requests than the connection's other handlers
    let n = scoutvm_fs::server::role::MAX_HANDLERS_PER_CONN as u64 + 8;
    let ranges: Vec<LockRange> = (0..n).map(|i| LockRange::inode_group(i * 1024)).collect();
    for r in &ranges {
        block_on(a.lock(*r, LockMode::Null, LockMode::Write)).unwrap();
    }
    let waits: Vec<_> = ranges
        .iter()
        .map(|r| b.lock(*r, LockMode::Null, LockMode::Write))
        .collect();
    settle();
    assert!(waits.iter().all(|w| !w.is_finished()));
    // (A's session runs at most MAX_INCOMING_HANDLERS of them at once)
    let at_once = n.min(scoutvm_fs::cluster::session::MAX_INCOMING_HANDLERS as u64);
    assert_eq!(a.invalidations.borrow().len(), at_once as usize);
    // B can still commit (what answering an invalidation may need)
    let lt = block_on(b.client.get_log_trees()).unwrap();
    block_on(b.client.commit_log_trees(&lt)).unwrap();
    a.open();
    for w in waits {
        assert_eq!(block_on(w).unwrap().new_mode, LockMode::Write);
    }
    assert_eq!(l.lock_grants().len(), n as usize);
    assert!(l.lock_grants().iter().all(|(rid, ..)| *rid == B));
}
