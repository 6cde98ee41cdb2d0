//! POSIX throughput through the `Mount` API on the in-memory backend and a
//! `MemDev` data device: creates, stats, unlinks per second and sequential
//! write/read MB/s. Prints figures; asserts nothing about speed.
//!
//! `cargo bench -p scoutvm-fs --bench posix` (env: BENCH_FILES, BENCH_MIB).

use std::rc::Rc;
use std::time::Instant;

use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::posix::types::Cred;
use scoutvm_fs::runtime::env::{ManualClock, Timespec};
use scoutvm_fs::runtime::exec::block_on;
use scoutvm_fs::sim::mem_backend::{MemBackend, MemMkfs, MemStore};
use scoutvm_fs::storage::dev::MemDev;
mod report;
use report::{env_num, mbps, rate};

fn main() {
    let files = env_num("BENCH_FILES", 100_000);
    let mib = env_num("BENCH_MIB", 256);
    let data_blocks = (mib << 8) + (1 << 16);
    let store = MemStore::mkfs(MemMkfs {
        data_blocks,
        ..MemMkfs::default()
    });
    let data = Rc::new(MemDev::new(data_blocks * 4096));
    let clock = Rc::new(ManualClock::new(Timespec {
        sec: 1_700_000_000,
        nsec: 0,
    }));
    let mount = || {
        block_on(Mount::mount(
            MemBackend::new(store.clone()),
            data.clone(),
            clock.clone(),
            MountOptions::default(),
        ))
        .unwrap()
    };
    let m = mount();
    let c = Cred::root();
    let dir = block_on(m.mkdir(&c, 1, b"bench", 0o755)).unwrap().ino;
    let names: Vec<Vec<u8>> = (0..files)
        .map(|i| format!("file-{i:08}").into_bytes())
        .collect();

    let t = Instant::now();
    let mut inos = Vec::with_capacity(files as usize);
    for n in &names {
        inos.push(block_on(m.create(&c, dir, n, 0o644)).unwrap().ino);
    }
    block_on(m.sync()).unwrap();
    rate("create (+sync)", files, t.elapsed().as_secs_f64());

    let t = Instant::now();
    for ino in &inos {
        block_on(m.getattr(*ino)).unwrap();
    }
    rate("stat (getattr, cached)", files, t.elapsed().as_secs_f64());

    let t = Instant::now();
    for n in &names {
        block_on(m.lookup(&c, dir, n)).unwrap();
    }
    rate("lookup+stat (cached)", files, t.elapsed().as_secs_f64());

    drop(m);
    let m = mount();
    let t = Instant::now();
    for n in &names {
        block_on(m.lookup(&c, dir, n)).unwrap();
    }
    rate("lookup+stat (cold mount)", files, t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut pos = 0;
    let mut seen = 0u64;
    loop {
        let ents = block_on(m.readdir(&c, dir, pos, 1024)).unwrap();
        let Some(last) = ents.last() else { break };
        pos = last.next_pos;
        seen += ents.len() as u64;
    }
    rate("readdir entries", seen, t.elapsed().as_secs_f64());

    let t = Instant::now();
    for n in &names {
        block_on(m.unlink(&c, dir, n)).unwrap();
    }
    block_on(m.sync()).unwrap();
    rate("unlink (+sync)", files, t.elapsed().as_secs_f64());

    let f = block_on(m.create(&c, 1, b"stream", 0o644)).unwrap().ino;
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| ((i * 31) >> 7) as u8).collect();
    let t = Instant::now();
    for i in 0..mib {
        block_on(m.write(f, i << 20, &chunk)).unwrap();
    }
    block_on(m.fsync(f)).unwrap();
    mbps(
        "write 1 MiB calls (+fsync)",
        mib << 20,
        t.elapsed().as_secs_f64(),
    );

    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    for i in 0..mib {
        let n = block_on(m.read_into(f, i << 20, &mut buf)).unwrap();
        assert_eq!(n, buf.len());
    }
    mbps("read 1 MiB calls", mib << 20, t.elapsed().as_secs_f64());

    let small = vec![7u8; 4096];
    let g = block_on(m.create(&c, 1, b"small", 0o644)).unwrap().ino;
    let blocks = (mib << 8).min(16384);
    let t = Instant::now();
    for i in 0..blocks {
        block_on(m.write(g, i << 12, &small)).unwrap();
    }
    block_on(m.fsync(g)).unwrap();
    mbps(
        "write 4 KiB appends (+fsync)",
        blocks << 12,
        t.elapsed().as_secs_f64(),
    );
    let c = m.counters();
    println!(
        "commits {} backend reads {} evicted ranges {}",
        c.commits, c.items.backend_reads, c.items.evicted_ranges
    );
}
