//! The session workload: one server node (node 0, a static leader
//! address) and client nodes 1..=K, each with a session to the server
//! over the simulated network, issuing random requests (GET_ROOTS,
//! STATFS, GET_LAST_SEQ, ALLOC_INODES, and transaction cycles of
//! GET_LOG_TREES/COMMIT_LOG_TREES) while links reset about once a second,
//! partitions come and go (some longer than the idle timeout) and the
//! server crashes once and restarts as a new life (a higher term).
//!
//! Checkers: every request completes with a correct answer (no error
//! surfaces, however the network behaves); each request id of each rid is
//! executed at most once per server life (counted on the server); inode
//! ranges handed out never overlap; each transaction cycle opens a later
//! transaction of the client's own rid.

use crate::client::requests::{Client, ClientIdentity};
use crate::cluster::session::{SessionConfig, StaticLeader};
use crate::errno::FsResult;
use crate::format::log::LogTrees;
use crate::runtime::node::NodeId;
use crate::server::role::{ServerConfig, ServerRole};
use crate::sim::fault::{Fault, Loss};
use crate::sim::fsnode::{mkfs_params, FsNode};
use crate::sim::workload::Failure;
use crate::sim::world::World;
use crate::storage::dev::BlockDev;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

/// The server's node.
pub const SERVER: NodeId = 0;

/// Session timeouts of the simulation: shorter than production so that a
/// run sees idle timeouts and backoff (partitions last up to 6 s).
pub fn sim_session_config() -> SessionConfig {
    SessionConfig {
        connect_timeout_ns: 1_000_000_000,
        reconnect_delay_ns: 100_000_000,
        max_reconnect_delay_ns: 1_000_000_000,
        ping_interval_ns: 1_000_000_000,
        idle_timeout_ns: 4_000_000_000,
        reconnect_window_ns: 10_000_000_000,
        window: 64,
    }
}

/// What the checkers share.
#[derive(Default)]
struct Shared {
    /// Executions per (server life, rid, request id).
    executed: RefCell<BTreeMap<(u32, u64, u64), u32>>,
    /// The first request executed twice in one life.
    twice: RefCell<Option<String>>,
    /// Inode ranges handed out: start -> (len, rid).
    ranges: RefCell<BTreeMap<u64, (u64, u64)>>,
    total_meta: Cell<u64>,
    requests: Cell<u64>,
    server: RefCell<Option<ServerRole>>,
    /// The clients are done: the chaos task stops.
    finished: Cell<bool>,
}

fn fail(w: &World, node: NodeId, step: u64, what: String) -> Failure {
    Failure {
        node,
        step,
        time_ns: w.now(),
        what,
    }
}

/// Boot the server node and start the server role at its address; its
/// term is its boot count (a new life, a higher term).
async fn start_server(w: &Rc<World>, sh: &Rc<Shared>) -> Result<(), Failure> {
    let env = w.boot(SERVER);
    let life = env.life;
    let meta: Rc<dyn BlockDev> = env.disks[0].clone();
    let data: Rc<dyn BlockDev> = env.disks[1].clone();
    let mut cfg = ServerConfig {
        term: life as u64,
        // the clients outlive the server: nothing to reclaim
        reclaim_mounted_at_start: false,
        session: sim_session_config(),
        ..crate::sim::fsnode::sim_node_options(Default::default(), false).server
    };
    cfg.commit.reserved_meta_blocks = 64;
    let sh2 = sh.clone();
    let net = env.net.clone();
    let handle = env.handle.clone();
    let entropy = env.entropy.clone();
    let r = w
        .on(SERVER, async move {
            let role = ServerRole::open(
                meta,
                data,
                Box::new(crate::runtime::env::SeededEntropy::new(entropy.next_u64())),
                cfg,
                handle,
            )?;
            let sh3 = sh2.clone();
            role.set_exec_observer(Some(Rc::new(move |rid, id, c| {
                if id >= crate::sim::net::FORGED_ID && sh3.twice.borrow().is_none() {
                    *sh3.twice.borrow_mut() = Some(format!(
                        "a forged request {id} (cmd {c}) of rid {rid} executed"
                    ));
                }
                let mut ex = sh3.executed.borrow_mut();
                let n = ex.entry((life, rid, id)).or_insert(0);
                *n += 1;
                if *n > 1 && sh3.twice.borrow().is_none() {
                    *sh3.twice.borrow_mut() = Some(format!(
                        "request {id} (cmd {c}) of rid {rid} executed {n} times in server life {life}"
                    ));
                }
            })));
            role.start(&*net, &FsNode::server_addr(SERVER)).await?;
            let total = role.stable_super().total_meta_blocks;
            FsResult::Ok((role, total))
        })
        .await;
    match r {
        Ok(Ok((role, total))) => {
            sh.total_meta.set(total);
            *sh.server.borrow_mut() = Some(role);
            Ok(())
        }
        Ok(Err(e)) => Err(fail(w, SERVER, 0, format!("server start: {e}"))),
        Err(_) => Err(fail(w, SERVER, 0, "server node died starting".into())),
    }
}

/// What one request's answer was.
enum Out {
    Fine,
    Next(Box<LogTrees>),
    Range(u64, u64),
    Bad(String),
}

/// One client node: connect, then `ops` random requests, each of which
/// must succeed with a sensible answer.
async fn client(w: Rc<World>, sh: Rc<Shared>, node: NodeId, ops: u64) -> Result<u64, Failure> {
    let env = w.boot(node);
    let p = mkfs_params(0, 0);
    let id = ClientIdentity {
        fsid: p.fsid,
        fmt_vers: p.fmt_vers,
        rid: 0x100 + node as u64,
        flags: 0,
    };
    let net = env.net.clone();
    let handle = env.handle.clone();
    let c = match w
        .on(node, async move {
            Client::connect_via(
                net,
                Rc::new(StaticLeader::new(&FsNode::server_addr(SERVER))),
                id,
                sim_session_config(),
                &handle,
            )
            .await
        })
        .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(fail(&w, node, 0, format!("connect: {e}"))),
        Err(_) => return Err(fail(&w, node, 0, "client node died".into())),
    };
    let c2 = c.clone();
    let mut lt = match w.on(node, async move { c2.get_log_trees().await }).await {
        Ok(Ok(lt)) => lt,
        Ok(Err(e)) => return Err(fail(&w, node, 0, format!("first GET_LOG_TREES: {e}"))),
        Err(_) => return Err(fail(&w, node, 0, "client node died".into())),
    };
    for step in 1..=ops {
        w.sleep(w.random() % 300_000_000).await;
        let c2 = c.clone();
        let pick = w.random() % 6;
        let want = 1 + w.random() % 100;
        let cur = lt;
        let r: FsResult<Out> = match w
            .on(node, async move {
                Ok(match pick {
                    0 => {
                        c2.get_roots().await?;
                        Out::Fine
                    }
                    1 => {
                        let s = c2.statfs().await?;
                        if s.total_meta_blocks == 0 {
                            Out::Bad("STATFS: no meta blocks".into())
                        } else {
                            Out::Fine
                        }
                    }
                    2 => {
                        c2.get_last_seq().await?;
                        Out::Fine
                    }
                    3 | 4 => {
                        let a = c2.alloc_inodes(want).await?;
                        if a.nr == 0 || a.nr > want {
                            Out::Bad(format!("ALLOC_INODES {want} gave {} inodes", a.nr))
                        } else {
                            Out::Range(a.ino, a.nr)
                        }
                    }
                    _ => {
                        c2.commit_log_trees(&cur).await?;
                        let next = c2.get_log_trees().await?;
                        if next.get_trans_seq <= cur.get_trans_seq {
                            Out::Bad(format!(
                                "transaction {} after {}",
                                next.get_trans_seq, cur.get_trans_seq
                            ))
                        } else {
                            Out::Next(Box::new(next))
                        }
                    }
                })
            })
            .await
        {
            Ok(r) => r,
            Err(_) => return Err(fail(&w, node, step, "client node died".into())),
        };
        sh.requests.set(sh.requests.get() + 1);
        match r {
            Err(e) => {
                return Err(fail(
                    &w,
                    node,
                    step,
                    format!("an error surfaced to the mount: op {pick}: {e}"),
                ))
            }
            Ok(Out::Next(next)) => lt = *next,
            Ok(Out::Fine) => {}
            Ok(Out::Range(ino, nr)) => {
                let mut ranges = sh.ranges.borrow_mut();
                let before = ranges
                    .range(..=ino)
                    .next_back()
                    .map(|(&s, &(l, r))| (s, l, r));
                let after = ranges.range(ino..).next().map(|(&s, &(l, r))| (s, l, r));
                let clash = before
                    .filter(|&(s, l, _)| s.saturating_add(l) > ino)
                    .or(after.filter(|&(s, _, _)| ino.saturating_add(nr) > s));
                if let Some((s, l, r)) = clash {
                    return Err(fail(
                        &w,
                        node,
                        step,
                        format!("inodes {ino}+{nr} overlap {s}+{l} of rid {r}"),
                    ));
                }
                ranges.insert(ino, (nr, id.rid));
            }
            Ok(Out::Bad(s)) => return Err(fail(&w, node, step, s)),
        }
        if let Some(t) = sh.twice.borrow().clone() {
            return Err(fail(&w, SERVER, step, t));
        }
    }
    let c2 = c.clone();
    let _ = w
        .on(node, async move {
            c2.disconnect();
        })
        .await;
    Ok(ops)
}

/// Cut `a` and `b` apart both ways for a random time under `max_ns`,
/// then heal every link.
pub(super) async fn partition(w: &World, a: NodeId, b: NodeId, max_ns: u64) {
    w.fault(Fault::Cut { from: a, to: b }).await;
    w.fault(Fault::Cut { from: b, to: a }).await;
    w.sleep(w.random() % max_ns).await;
    w.fault(Fault::HealAll).await;
}

/// Links reset about once a second, partitions between the server and a
/// client (some longer than the idle timeout), one server crash and
/// restart.
async fn chaos(w: Rc<World>, sh: Rc<Shared>, clients: u8) -> Result<(), Failure> {
    // early enough that every run has one (a client makes its requests
    // over several seconds)
    let crash_at = w.now() + 1_000_000_000 + w.random() % 3_000_000_000;
    let mut crashed = false;
    while !sh.finished.get() {
        w.sleep(500_000_000 + w.random() % 1_000_000_000).await;
        if sh.finished.get() {
            break;
        }
        let victim = (w.random() % (clients as u64 + 1)) as NodeId;
        match w.random() % 4 {
            0 | 1 => w.fault(Fault::ResetStreams { node: victim }).await,
            2 if victim != SERVER => partition(&w, SERVER, victim, 6_000_000_000).await,
            _ => {}
        }
        if !crashed && w.now() >= crash_at {
            crashed = true;
            sh.server.borrow_mut().take();
            w.fault(Fault::Crash {
                node: SERVER,
                loss: Loss::Any,
            })
            .await;
            w.sleep(w.random() % 3_000_000_000).await;
            start_server(&w, &sh).await?;
        }
    }
    Ok(())
}

/// Run the session workload: the server on node 0 (its volume attached
/// there), `clients` client nodes, `ops` requests each.
pub async fn run(w: Rc<World>, clients: u8, ops: u64) -> Result<u64, Failure> {
    let sh = Rc::new(Shared::default());
    start_server(&w, &sh).await?;
    let chaos_task = w.spawn(chaos(w.clone(), sh.clone(), clients));
    let tasks: Vec<_> = (1..=clients)
        .map(|n| w.spawn(client(w.clone(), sh.clone(), n, ops)))
        .collect();
    let mut steps = 0;
    let mut first = None;
    for (t, n) in tasks.into_iter().zip(1..) {
        match t.await {
            Ok(Ok(s)) => steps += s,
            Ok(Err(f)) => {
                first.get_or_insert(f);
            }
            Err(_) => {
                first.get_or_insert(fail(&w, n, 0, "client task lost".into()));
            }
        }
    }
    sh.finished.set(true);
    match chaos_task.await {
        Ok(Err(f)) => {
            first.get_or_insert(f);
        }
        Err(_) => {
            first.get_or_insert(fail(&w, SERVER, 0, "chaos task lost".into()));
        }
        Ok(Ok(())) => {}
    }
    if let Some(t) = sh.twice.borrow().clone() {
        first.get_or_insert(fail(&w, SERVER, steps, t));
    }
    // the role's observer holds `sh`: break the cycle
    if let Some(role) = sh.server.borrow_mut().take() {
        role.set_exec_observer(None);
    }
    match first {
        Some(f) => Err(f),
        None => Ok(steps),
    }
}
