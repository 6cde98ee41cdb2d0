//! Filesystem throughput through the `Mount` API over the real persistent
//! half (server, client log trees over the loopback transport, forest
//! reads): creates, stats, unlinks per second and sequential write/read
//! MB/s, on RAM disks and on file devices (temp files, fsync'ed at every
//! commit), and log merge items per second. After each phase it prints
//! the longest single executor poll in host time (the node answers
//! nothing else while a poll runs; the goal is at most 50 ms) and which
//! task ran it, and at the end the longest of all. A poll that waits on a
//! device flush (fsync of a file device) is I/O, not work that could
//! yield: the longest flush of the phase is printed beside it. Prints
//! figures; asserts nothing about speed.
//!
//! `cargo bench -p scoutvm-fs --bench fs` (env: BENCH_FILES, BENCH_MIB,
//! BENCH_DIR for the file devices, BENCH_RAM_ONLY=1 to skip them).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{block_on, handle, merge_until_idle, with_executor, FileDev};
use scoutvm_fs::client::node::{mount_volume, NodeHandle, NodeOptions};
use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::posix::types::Cred;
use scoutvm_fs::runtime::env::{Entropy, ManualClock, SeededEntropy, Timespec};
use scoutvm_fs::storage::dev::{BlockDev, IoError, MemDev};
use scoutvm_fs::tools::mkfs::mkfs;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Instant;
mod report;
use report::{env_num, mbps, rate};

const META: u64 = 16 << 30;
const DATA: u64 = 16 << 30;

/// Host nanoseconds since the bench started: the executor's poll clock.
fn host_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A device that times its flushes (host time).
struct TimedFlush(Rc<dyn BlockDev>);

impl BlockDev for TimedFlush {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.0.read(off, buf)
    }
    fn write(&self, off: u64, buf: &[u8]) -> Result<(), IoError> {
        self.0.write(off, buf)
    }
    fn flush(&self) -> Result<(), IoError> {
        let t = host_ns();
        let r = self.0.flush();
        let ns = host_ns() - t;
        MAX_FLUSH.with(|m| m.set(m.get().max(ns)));
        r
    }
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
}

thread_local! {
    /// The longest device flush since the last [`longest_poll`].
    static MAX_FLUSH: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The longest poll of the whole bench: (ns, where).
    static WORST: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Print the longest poll since the last call, then start over.
fn longest_poll(label: &str, phase: &str) {
    let s = with_executor(|ex| {
        let s = ex.stats();
        ex.reset_max_poll();
        s
    });
    let flush = MAX_FLUSH.with(|m| m.replace(0));
    println!(
        "    longest poll {:>8.3} ms  ({phase}: task #{} {}; longest device flush {:.3} ms)",
        s.max_poll_ns as f64 / 1e6,
        s.max_poll_task,
        s.max_poll_name,
        flush as f64 / 1e6
    );
    WORST.with(|w| {
        let mut w = w.borrow_mut();
        if s.max_poll_ns > w.0 {
            *w = (s.max_poll_ns, format!("{label}, {phase}"));
        }
    });
}

fn mount(meta: &Rc<dyn BlockDev>, data: &Rc<dyn BlockDev>, seed: u64) -> (Rc<Mount>, NodeHandle) {
    let clock = Rc::new(ManualClock::new(Timespec {
        sec: 1_700_000_000,
        nsec: 0,
    }));
    let ent: Rc<dyn Entropy> = Rc::new(SeededEntropy::new(seed));
    let opts = NodeOptions {
        tick_ns: 0,
        merge_poll_ns: 0,
        ..NodeOptions::default()
    };
    block_on(mount_volume(
        meta.clone(),
        data.clone(),
        clock,
        ent,
        handle(),
        opts,
    ))
    .expect("mount")
}

fn run(label: &str, meta: Rc<dyn BlockDev>, data: Rc<dyn BlockDev>) {
    println!("{label}:");
    let meta: Rc<dyn BlockDev> = Rc::new(TimedFlush(meta));
    let data: Rc<dyn BlockDev> = Rc::new(TimedFlush(data));
    mkfs(&*meta, &*data, &common::params(2, META, DATA, 1)).expect("mkfs");
    let files = env_num("BENCH_FILES", 20_000);
    let mib = env_num("BENCH_MIB", 256);
    let c = Cred::root();
    with_executor(|ex| ex.reset_max_poll());
    let (m, node) = mount(&meta, &data, 1);
    let dir = block_on(m.mkdir(&c, 1, b"bench", 0o755)).unwrap().ino;
    longest_poll(label, "mount");

    let t = Instant::now();
    let mut inos = Vec::with_capacity(files as usize);
    for i in 0..files {
        let a = block_on(m.create(&c, dir, format!("f{i:08}").as_bytes(), 0o644)).unwrap();
        inos.push(a.ino);
    }
    block_on(m.sync()).unwrap();
    rate("creates (+ sync)", files, t.elapsed().as_secs_f64());
    longest_poll(label, "creates");

    // the log merge of everything created
    let before = scoutvm_fs::runtime::counters::get("log_merge.items_merged").unwrap_or(0);
    block_on(node.start_merge()).unwrap();
    let t = Instant::now();
    merge_until_idle(&node);
    let merged = scoutvm_fs::runtime::counters::get("log_merge.items_merged").unwrap_or(0) - before;
    rate("log merge items", merged, t.elapsed().as_secs_f64());
    longest_poll(label, "log merge");

    m.evict_clean_cache();
    let t = Instant::now();
    for &ino in &inos {
        block_on(m.getattr(ino)).unwrap();
    }
    rate("stats (cold item cache)", files, t.elapsed().as_secs_f64());
    longest_poll(label, "stats cold");
    let t = Instant::now();
    for &ino in &inos {
        block_on(m.getattr(ino)).unwrap();
    }
    rate("stats (warm)", files, t.elapsed().as_secs_f64());
    longest_poll(label, "stats warm");

    let t = Instant::now();
    for i in 0..files {
        block_on(m.unlink(&c, dir, format!("f{i:08}").as_bytes())).unwrap();
    }
    block_on(m.sync()).unwrap();
    rate("unlinks (+ sync)", files, t.elapsed().as_secs_f64());
    longest_poll(label, "unlinks");

    let f = block_on(m.create(&c, 1, b"big", 0o644)).unwrap().ino;
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7) as u8).collect();
    let t = Instant::now();
    for i in 0..mib {
        block_on(m.write(f, i << 20, &chunk)).unwrap();
    }
    block_on(m.sync()).unwrap();
    mbps(
        "sequential write (+ sync)",
        mib << 20,
        t.elapsed().as_secs_f64(),
    );
    longest_poll(label, "sequential write");
    m.evict_clean_cache();
    let t = Instant::now();
    let mut sum = 0u64;
    for i in 0..mib {
        let b = block_on(m.read(f, i << 20, 1 << 20)).unwrap();
        sum += b.len() as u64;
    }
    mbps("sequential read", sum, t.elapsed().as_secs_f64());
    longest_poll(label, "sequential read");
    drop(m);
    block_on(node.unmount()).unwrap();
    longest_poll(label, "unmount");
    let rep = scoutvm_fs::tools::fsck::fsck(&*meta, Some(&*data), &mut |_, _, _| {});
    println!(
        "  fsck after unmount: {}",
        if rep.is_clean() { "clean" } else { "PROBLEMS" }
    );
}

fn main() {
    with_executor(|ex| ex.set_poll_clock(host_ns));
    run(
        "RAM disks (MemDev)",
        Rc::new(MemDev::new(META)),
        Rc::new(MemDev::new(DATA)),
    );
    if env_num("BENCH_RAM_ONLY", 0) != 0 {
        print_worst();
        return;
    }
    let dir = std::env::var("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let mp = dir.join(format!("scoutvm-bench-meta-{}", std::process::id()));
    let dp = dir.join(format!("scoutvm-bench-data-{}", std::process::id()));
    let meta: Rc<dyn BlockDev> = Rc::new(FileDev::create_sparse(&mp, META));
    let data: Rc<dyn BlockDev> = Rc::new(FileDev::create_sparse(&dp, DATA));
    run(
        &format!("file devices in {} (fsync per commit)", dir.display()),
        meta,
        data,
    );
    let _ = std::fs::remove_file(&mp);
    let _ = std::fs::remove_file(&dp);
    print_worst();
}

fn print_worst() {
    let (ns, phase) = WORST.with(|w| w.borrow().clone());
    println!(
        "longest poll overall: {:.3} ms in {phase} (target: at most 50 ms)",
        ns as f64 / 1e6
    );
}
