//! The cost of cluster traffic authentication in process: tags per second
//! (seal + open) of a no-op RPC frame (header only, the shape of a PING
//! and its answer), of a full 1100-byte payload frame, and of a quorum
//! datagram, and the MAC's MB/s. Prints figures; asserts nothing about
//! speed.
//!
//! `cargo bench -p scoutvm-fs --bench cluster_auth` (env: BENCH_FRAMES).

use std::hint::black_box;
use std::time::Instant;

use scoutvm_fs::cluster::auth::{ClusterKey, QuorumAuth, SessionAuth, VolumeKey};
use scoutvm_fs::cluster::quorum_wire::{MsgKind, QuorumMsg};
mod report;
use report::{env_num, mbps, rate};

fn pair() -> (SessionAuth, SessionAuth) {
    let k = VolumeKey::derive(&ClusterKey([7; 32]), 1);
    let mut c = SessionAuth::new(k.clone(), true, 5, [1; 16]);
    let mut s = SessionAuth::new(k, false, 0, [2; 16]);
    let (hc, hs) = (c.hello(), s.hello());
    c.accept_hello(&hs).unwrap();
    s.accept_hello(&hc).unwrap();
    (c, s)
}

fn frames(what: &str, len: usize, n: u64) {
    let (mut c, mut s) = pair();
    let frame = vec![0x5au8; len];
    let t0 = Instant::now();
    for _ in 0..n {
        let tag = c.seal(black_box(&frame)).unwrap();
        s.open(black_box(&frame), &tag).unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    rate(what, n, secs);
    println!("  {:.0} ns per frame (seal + open)", secs * 1e9 / n as f64);
    mbps(
        &format!("{what}, bytes MACed twice"),
        2 * n * len as u64,
        secs,
    );
}

fn main() {
    let n = env_num("BENCH_FRAMES", 1_000_000);
    frames("no-op frame (32 bytes)", 32, n);
    frames("full frame (32 + 1100 bytes)", 32 + 1100, n / 4);
    let k = VolumeKey::derive(&ClusterKey([7; 32]), 1);
    let (mut tx, mut rx) = (QuorumAuth::new(k.clone(), 1), QuorumAuth::new(k, 0));
    let d = QuorumMsg {
        fsid: 1,
        term: 5,
        kind: MsgKind::Heartbeat,
        from: 1,
    }
    .encode();
    let t0 = Instant::now();
    for _ in 0..n {
        let sealed = tx.seal(black_box(&d));
        rx.open(&sealed).unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    rate("quorum datagram (seal + open)", n, secs);
    println!("  {:.0} ns per datagram", secs * 1e9 / n as f64);
}
