//! `scoutvm p9load` against the appliance's 9P server served in this
//! process over TCP (`scoutvm_image::p9_tcp` on an in-memory volume):
//! every op completes its count without errors at 1 and 16 outstanding,
//! the written files read back with the expected pattern, and a server
//! that breaks the protocol ends the run with an error, not a panic.
//! Counts and contents only, no timings.

use std::io::{Read, Write};
use std::net::TcpListener;

use scoutvm_fs::posix::mount::MountOptions;
use scoutvm_image::p9_tcp::TcpP9Server;
use scoutvm_image::p9load::{self, pattern_byte, Budget, Client, Config, Op};
use scoutvm_net::p9::ServerConfig;

fn server() -> TcpP9Server {
    let opener = scoutvm_image::volume::mem_opener(1 << 30, MountOptions::default());
    TcpP9Server::start(opener, ServerConfig::default(), "127.0.0.1:0").expect("serve")
}

/// Read `path` (from the attach root) whole and check it holds the
/// pattern over `len` bytes.
fn check_file(addr: &str, path: &[&str], len: usize) {
    let mut c = Client::connect(addr, 512 << 10, "root", "", 0).expect("connect");
    c.open_path(200, path).expect("open the written file");
    let got = c.read_at(200, 0, len + 4096).expect("read back");
    assert_eq!(got.len(), len, "{path:?}: file length");
    for (i, &b) in got.iter().enumerate() {
        assert_eq!(b, pattern_byte(i as u64), "{path:?}: byte {i}");
    }
}

fn run_all(outstanding: usize, count: u64, dir: &str) {
    let srv = server();
    let addr = format!("127.0.0.1:{}", srv.port());
    let mut cfg = Config::new(&addr);
    cfg.outstanding = outstanding;
    cfg.budget = Budget::Count(count);
    cfg.run_dir = Some(dir.into());
    let reports = p9load::run(&cfg).expect("the load runs");
    assert_eq!(reports.len(), Op::ALL.len());
    for (r, op) in reports.iter().zip(Op::ALL) {
        assert_eq!(r.op, op);
        assert_eq!(r.ops, count, "{}", r.line());
        assert_eq!(r.errors, 0, "{}", r.line());
        let per = match op {
            Op::Read(n) | Op::Write(n) => n as u64,
            _ => 0,
        };
        assert_eq!(r.bytes, per * count, "{}", r.line());
        assert!(r.p50_us <= r.p99_us, "{}", r.line());
    }
    // Writes of iteration k land at (k * size) % (16 * size).
    let slots = count.min(16) as usize;
    for (i, op) in Op::ALL.iter().enumerate() {
        if let Op::Write(size) = op {
            let d = format!("{}-{i}", op.name());
            check_file(&addr, &[dir, &d, "data"], slots * *size as usize);
        }
    }
    srv.stop().expect("stop cleanly");
}

#[test]
fn every_op_one_outstanding() {
    run_all(1, 5, "one");
}

#[test]
fn every_op_sixteen_outstanding() {
    run_all(16, 40, "sixteen");
}

#[test]
fn small_msize_splits_large_requests() {
    let srv = server();
    let addr = format!("127.0.0.1:{}", srv.port());
    let mut cfg = Config::new(&addr);
    cfg.msize = 64 << 10;
    cfg.outstanding = 4;
    cfg.budget = Budget::Count(6);
    cfg.ops = vec![Op::Write(1 << 20), Op::Read(1 << 20)];
    cfg.run_dir = Some("small".into());
    let reports = p9load::run(&cfg).expect("the load runs");
    for r in &reports {
        assert_eq!((r.ops, r.errors), (6, 0), "{}", r.line());
        assert_eq!(r.bytes, 6 << 20, "{}", r.line());
    }
    check_file(&addr, &["small", "write1m-0", "data"], 6 << 20);
    srv.stop().expect("stop cleanly");
}

#[test]
fn seconds_budget_and_unlink_without_create() {
    let srv = server();
    let addr = format!("127.0.0.1:{}", srv.port());
    let mut cfg = Config::new(&addr);
    cfg.outstanding = 2;
    cfg.budget = Budget::Seconds(0.2);
    cfg.ops = vec![Op::Unlink, Op::Getattr];
    let reports = p9load::run(&cfg).expect("the load runs");
    for r in &reports {
        assert!(r.ops > 0, "{}", r.line());
        assert_eq!(r.errors, 0, "{}", r.line());
    }
    srv.stop().expect("stop cleanly");
}

#[test]
fn unlink_by_walk_and_remove() {
    let srv = server();
    let addr = format!("127.0.0.1:{}", srv.port());
    let mut cfg = Config::new(&addr);
    cfg.outstanding = 4;
    cfg.budget = Budget::Count(10);
    cfg.ops = vec![Op::Create, Op::Unlink];
    cfg.unlink_by_remove = true;
    cfg.run_dir = Some("rm".into());
    let reports = p9load::run(&cfg).expect("the load runs");
    for r in &reports {
        assert_eq!((r.ops, r.errors), (10, 0), "{}", r.line());
    }
    let mut c = Client::connect(&addr, 64 << 10, "root", "", 0).expect("connect");
    for k in 0..10 {
        let name = format!("c{k}");
        let e = c
            .open_path(300 + k, &["rm", "create-0", &name])
            .expect_err("removed");
        assert!(e.contains("Twalk"), "{e}");
    }
    srv.stop().expect("stop cleanly");
}

/// A "server" that answers Tversion with an Rgetattr-sized garbage frame.
#[test]
fn a_bad_answer_is_an_error() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        // size 9, type 101 (Rversion), tag NOTAG, then too few bytes.
        let _ = s.write_all(&[9, 0, 0, 0, 101, 0xff, 0xff, 1, 2]);
        let _ = s.read(&mut buf);
    });
    let mut cfg = Config::new(&addr);
    cfg.budget = Budget::Count(1);
    let e = p9load::run(&cfg).expect_err("a malformed Rversion");
    assert!(e.contains("bad reply"), "{e}");
    t.join().unwrap();
}
