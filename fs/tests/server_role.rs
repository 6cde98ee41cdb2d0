//! The server role over its wire protocol: concurrent requests share
//! commits, inode ranges never overlap, GET_LOG_TREES and
//! COMMIT_LOG_TREES are idempotent, bad requests and broken frames are
//! refused without harming other clients, farewell forgets a mount.

mod common;
use common::*;
use scoutvm_fs::client::requests::{Client, ClientIdentity};
use scoutvm_fs::cluster::msg::{cmd, encode_frame, Header};
use scoutvm_fs::cluster::transport::{MemNet, Transport};
use scoutvm_fs::errno::Errno;
use scoutvm_fs::runtime::env::SeededEntropy;
use scoutvm_fs::server::role::{ServerConfig, ServerRole};
use std::rc::Rc;

const ADDR: &str = "srv";

fn server() -> (ServerRole, MemNet, u64, u64) {
    let (meta, data) = small_volume(8 << 30, 1 << 30, 9);
    let mut cfg = ServerConfig::default();
    cfg.commit.reserved_meta_blocks = 64;
    cfg.log_trees.reserved_meta_blocks = 64;
    let l = ServerRole::open(meta, data, Box::new(SeededEntropy::new(3)), cfg, handle()).unwrap();
    let net = MemNet::new();
    block_on(l.start(&net, ADDR)).unwrap();
    let sb = l.stable_super();
    (l, net, sb.hdr.fsid, sb.fmt_vers)
}

fn connect(net: &MemNet, fsid: u64, fmt: u64, rid: u64) -> Rc<Client> {
    let id = ClientIdentity {
        fsid,
        fmt_vers: fmt,
        rid,
        flags: 0,
    };
    block_on(Client::connect(Rc::new(net.clone()), ADDR, id, &handle())).unwrap()
}

#[test]
fn concurrent_requests_share_commits_and_ranges_are_disjoint() {
    let (l, net, fsid, fmt) = server();
    let clients: Vec<Rc<Client>> = (1..=4).map(|r| connect(&net, fsid, fmt, r)).collect();
    let commits0 = l.counters().commits;
    let h = handle();
    let got = block_on(async {
        let mut js = Vec::new();
        for i in 0..64 {
            let c = clients[i % 4].clone();
            js.push(
                h.spawn(async move { c.alloc_inodes(100).await.unwrap() })
                    .unwrap(),
            );
        }
        let mut out = Vec::new();
        for j in js {
            out.push(j.await);
        }
        out
    });
    let commits = l.counters().commits - commits0;
    assert!(commits < 64, "64 requests took {commits} commits");
    let mut ranges: Vec<(u64, u64)> = got.iter().map(|a| (a.ino, a.nr)).collect();
    ranges.sort();
    assert!(ranges.iter().all(|r| r.1 == 100 && r.0 >= 1024));
    for w in ranges.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlapping inode ranges");
    }
    let sb = l.stable_super();
    assert_eq!(sb.next_ino, 1024 + 6400);
    block_on(l.shutdown());
}

#[test]
fn log_trees_requests_are_idempotent_and_checked() {
    let (l, net, fsid, fmt) = server();
    let a = connect(&net, fsid, fmt, 7);
    let b = connect(&net, fsid, fmt, 8);
    let lt1 = block_on(a.get_log_trees()).unwrap();
    let again = block_on(a.get_log_trees()).unwrap();
    assert_eq!(
        lt1, again,
        "a resent GET_LOG_TREES returns the open transaction"
    );
    assert!(lt1.meta_avail.total_nr > 4000 && lt1.data_avail.total_len > 0);
    // another mount may not commit our tree
    assert_eq!(block_on(b.commit_log_trees(&lt1)), Err(Errno::EINVAL));
    block_on(a.commit_log_trees(&lt1)).unwrap();
    block_on(a.commit_log_trees(&lt1)).unwrap();
    let lt2 = block_on(a.get_log_trees()).unwrap();
    assert!(lt2.get_trans_seq > lt1.get_trans_seq);
    assert_eq!(lt2.nr, lt1.nr);
    // a stale transaction is refused
    assert_eq!(block_on(a.commit_log_trees(&lt1)), Err(Errno::EINVAL));
    let last = block_on(a.get_last_seq()).unwrap();
    assert!(
        last < lt2.get_trans_seq,
        "open transactions bound the last seq"
    );
    block_on(a.farewell()).unwrap();
    block_on(b.farewell()).unwrap();
    block_on(l.shutdown());
    // only finalized trees and no mounts are left
    let sb = l.stable_super();
    assert!(sb.mounted_clients.is_empty());
}

#[test]
fn broken_frames_close_one_connection_only() {
    let (l, net, fsid, fmt) = server();
    let good = connect(&net, fsid, fmt, 11);
    block_on(async {
        let raw = net.connect(ADDR).await.unwrap();
        // garbage
        raw.send(&[0xa5; 100]).await.unwrap();
        let mut buf = [0u8; 64];
        assert!(raw.recv(&mut buf).await.is_err(), "the server hung up");
        // a request before any greeting
        let raw = net.connect(ADDR).await.unwrap();
        let f = encode_frame(
            &Header {
                seq: 1,
                id: 1,
                cmd: cmd::GET_ROOTS,
                ..Header::default()
            },
            &[],
        );
        raw.send(&f).await.unwrap();
        assert!(raw.recv(&mut buf).await.is_err());
    });
    // a wrong filesystem id is refused
    let bad = ClientIdentity {
        fsid: fsid ^ 1,
        fmt_vers: fmt,
        rid: 12,
        flags: 0,
    };
    assert!(block_on(Client::connect(Rc::new(net.clone()), ADDR, bad, &handle())).is_err());
    // the good client still works
    assert!(block_on(good.statfs()).unwrap().total_meta_blocks > 0);
    assert!(block_on(good.get_roots()).is_ok());
    block_on(l.shutdown());
    // server gone: the session keeps trying (no permanent error) until it
    // is closed
    let h = handle();
    assert!(
        block_on(h.timeout_ns(10_000_000_000, good.statfs())).is_err(),
        "no server: the call waits"
    );
    assert!(!good.is_closed());
    good.disconnect();
    assert_eq!(block_on(good.statfs()).err(), Some(Errno::ENOLINK));
}
