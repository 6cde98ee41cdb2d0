//! The cluster session over the in-memory transport: a request whose
//! connection breaks after the server executed it is resent and answered
//! from the retained response (executed once); a new server life (higher
//! term) is greeted as such and serves waiting requests; the server calls
//! a client over the same session; farewell ends the session.

mod common;
use common::*;
use scoutvm_fs::client::requests::{Client, ClientIdentity};
use scoutvm_fs::cluster::msg::cmd;
use scoutvm_fs::cluster::session::{SessionConfig, StaticLeader};
use scoutvm_fs::cluster::transport::{MemNet, Transport};
use scoutvm_fs::runtime::env::SeededEntropy;
use scoutvm_fs::server::role::{ServerConfig, ServerRole};
use scoutvm_fs::storage::dev::BlockDev;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

const ADDR: &str = "srv";

type Execs = Rc<RefCell<BTreeMap<(u64, u64, u64), u32>>>;

fn server(
    meta: Rc<dyn BlockDev>,
    data: Rc<dyn BlockDev>,
    net: &MemNet,
    term: u64,
    execs: &Execs,
) -> ServerRole {
    let mut cfg = ServerConfig::default();
    cfg.commit.reserved_meta_blocks = 64;
    cfg.log_trees.reserved_meta_blocks = 64;
    cfg.term = term;
    cfg.reclaim_mounted_at_start = false;
    let l = ServerRole::open(meta, data, Box::new(SeededEntropy::new(3)), cfg, handle()).unwrap();
    let e = execs.clone();
    l.set_exec_observer(Some(Rc::new(move |rid, id, _| {
        *e.borrow_mut().entry((term, rid, id)).or_insert(0) += 1;
    })));
    block_on(l.start(net, ADDR)).unwrap();
    l
}

fn client(net: &MemNet, l: &ServerRole, rid: u64) -> Rc<Client> {
    let sb = l.stable_super();
    let id = ClientIdentity {
        fsid: sb.hdr.fsid,
        fmt_vers: sb.fmt_vers,
        rid,
        flags: 0,
    };
    let t: Rc<dyn Transport> = Rc::new(net.clone());
    block_on(Client::connect_via(
        t,
        Rc::new(StaticLeader::new(ADDR)),
        id,
        SessionConfig::default(),
        &handle(),
    ))
    .unwrap()
}

#[test]
fn a_lost_response_is_resent_and_answered_once() {
    let (meta, data) = small_volume(8 << 30, 1 << 30, 9);
    let net = MemNet::new();
    let execs: Execs = Rc::default();
    let l = server(meta, data, &net, 1, &execs);
    let c = client(&net, &l, 7);
    // break the connection while the server executes ALLOC_INODES: its
    // answer is lost, the client resends the same id on a new socket
    let s = c.session().clone();
    let armed = Rc::new(RefCell::new(true));
    let (e2, a2) = (execs.clone(), armed.clone());
    l.set_exec_observer(Some(Rc::new(move |rid, id, c| {
        *e2.borrow_mut().entry((1, rid, id)).or_insert(0) += 1;
        if c == cmd::ALLOC_INODES && a2.replace(false) {
            s.drop_connection();
        }
    })));
    let a = block_on(c.alloc_inodes(10)).unwrap();
    assert_eq!(a.nr, 10);
    let b = block_on(c.alloc_inodes(10)).unwrap();
    assert_eq!(b.ino, a.ino + 10, "the first range was allocated once");
    assert!(c.session().counters().resends >= 1);
    assert!(c.session().counters().connects >= 2);
    assert!(
        execs.borrow().values().all(|&n| n == 1),
        "{:?}",
        execs.borrow()
    );
    block_on(l.shutdown());
}

#[test]
fn a_new_server_life_gets_the_request_again_and_calls_to_clients_work() {
    let (meta, data) = small_volume(8 << 30, 1 << 30, 9);
    let net = MemNet::new();
    let execs: Execs = Rc::default();
    let l1 = server(meta.clone(), data.clone(), &net, 1, &execs);
    let c = client(&net, &l1, 8);
    assert_eq!(c.server_term(), 1);
    // the server calls the client: SYNC_LOG_TREES sets its request
    assert!(!c.sync_pending());
    block_on(l1.call_client(8, cmd::SYNC_LOG_TREES, &[])).unwrap();
    assert!(c.take_sync_request());
    assert!(block_on(l1.call_client(99, cmd::SYNC_LOG_TREES, &[])).is_err());
    // the server dies; a request waits for a server, and a new life with
    // a higher term serves it (the retry of a request sent to the old
    // life is exercised by the simulator's session workload)
    block_on(l1.shutdown());
    let h = handle();
    let c2 = c.clone();
    let call = h.spawn(async move { c2.statfs().await }).unwrap();
    block_on(h.sleep_ns(3_000_000_000));
    assert!(!call.is_finished(), "no server: the call waits");
    let l2 = server(meta, data, &net, 2, &execs);
    let st = block_on(call).unwrap();
    assert!(st.total_meta_blocks > 0);
    assert_eq!(c.server_term(), 2);
    assert_eq!(c.session().counters().server_lives, 2);
    // and the new server's calls reach the client
    block_on(l2.call_client(8, cmd::SYNC_LOG_TREES, &[])).unwrap();
    assert!(c.take_sync_request());
    assert!(execs.borrow().values().all(|&n| n == 1));
    block_on(c.farewell()).unwrap();
    assert!(c.is_closed());
    assert!(
        l2.client_rids().is_empty(),
        "farewell forgets the session: {:?} {:?}",
        l2.client_rids(),
        c.session().counters()
    );
    block_on(l2.shutdown());
}
