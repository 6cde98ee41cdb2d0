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

/// A leader seam the test moves.
struct MovingLeader(RefCell<Option<(u64, String)>>);

impl scoutvm_fs::cluster::session::LeaderAddr for MovingLeader {
    fn leader(&self) -> scoutvm_fs::cluster::transport::LocalFut<'_, Option<(u64, String)>> {
        let l = self.0.borrow().clone();
        Box::pin(async move { l })
    }
}

/// A deposed leader whose machine hangs: it greets, then answers nothing
/// (not even pings) and never closes the connection. Once the seam names
/// another leader, the mount's quiet link goes there within a couple of
/// ping intervals instead of the idle timeout, and its waiting call is
/// served by the new leader.
#[test]
fn a_quiet_link_to_a_deposed_leader_moves_to_the_new_leader() {
    use scoutvm_fs::cluster::msg::{Greeting, Request};
    use scoutvm_fs::cluster::rpc::{Endpoint, Role};
    let (meta, data) = small_volume(8 << 30, 1 << 30, 9);
    let net = MemNet::new();
    let execs: Execs = Rc::default();
    // the mount greeted a real server first (it is in mounted_clients)
    let sb = {
        let l = server(meta.clone(), data.clone(), &net, 1, &execs);
        let sb = l.stable_super();
        let c0 = client(&net, &l, 11);
        c0.disconnect();
        block_on(l.shutdown());
        sb
    };
    // the hanging old leader at "old"
    let h = handle();
    let listener = net.listen("old").unwrap();
    let hung = h
        .spawn(async move {
            let mut keep = Vec::new();
            while let Ok(conn) = listener.accept().await {
                let ep = Endpoint::start(conn, Role::Server, 0, &handle()).unwrap();
                let Some(first) = ep.next_request().await else {
                    continue;
                };
                if let Ok(Request::Greeting(g)) = Request::decode(first.header.cmd, &first.payload)
                {
                    let reply = Greeting {
                        server_term: 1,
                        flags: 0,
                        ..g
                    };
                    let _ = ep.reply(&first.header, Ok(reply.encode())).await;
                }
                keep.push(ep);
            }
        })
        .unwrap();
    let seam = Rc::new(MovingLeader(RefCell::new(Some((1, "old".to_string())))));
    let id = ClientIdentity {
        fsid: sb.hdr.fsid,
        fmt_vers: sb.fmt_vers,
        rid: 11,
        flags: 0,
    };
    let cfg = SessionConfig::default();
    let t: Rc<dyn Transport> = Rc::new(net.clone());
    let c = block_on(Client::connect_via(t, seam.clone(), id, cfg, &h)).unwrap();
    assert_eq!(c.server_term(), 1);
    // a call to the hung leader waits; the quorum elects "srv"
    let c2 = c.clone();
    let call = h.spawn(async move { c2.statfs().await }).unwrap();
    block_on(h.sleep_ns(cfg.ping_interval_ns));
    assert!(!call.is_finished(), "the hung leader answers nothing");
    let l2 = server(meta, data, &net, 2, &execs);
    *seam.0.borrow_mut() = Some((2, ADDR.to_string()));
    let started = h.now_ns();
    let st = block_on(call).unwrap();
    let waited = h.now_ns() - started;
    assert!(st.total_meta_blocks > 0);
    assert_eq!(c.server_term(), 2);
    let k = c.session().counters();
    assert_eq!(k.leader_moves, 1, "{k:?}");
    assert_eq!(k.idle_timeouts, 0, "{k:?}");
    assert!(
        waited < cfg.idle_timeout_ns,
        "moved after {waited} ns, not before the idle timeout"
    );
    hung.abort();
    block_on(c.farewell()).unwrap();
    block_on(l2.shutdown());
}
