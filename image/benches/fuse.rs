//! POSIX throughput through the kernel's FUSE and the `scoutvm` front end:
//! creates, stats, readdir, unlinks per second and sequential write/read
//! MB/s, with ordinary syscalls (std::fs) on a fresh mount made by this
//! process. Prints figures; asserts nothing about speed.
//!
//! `cargo bench -p scoutvm-image --bench fuse` (root and /dev/fuse;
//! env: BENCH_FILES, BENCH_MIB). The volume is in memory (the in-memory
//! backend with a RAM data device), so the figures are the FUSE path plus
//! the POSIX layer, without device I/O.
//!
//! What each figure includes: create = lookup + create + release per file
//! (then a sync); stat = a lookup and getattr reaching the filesystem
//! (the kernel's 1 s attribute cache has expired before the pass);
//! write = 1 MiB writes then fsync; read = a fresh open (FUSE drops the
//! file's page cache on open) and 1 MiB reads.

use scoutvm_fs::vfs::MountOptions;
use scoutvm_image::fuse::{FuseMount, FuseOptions};
use scoutvm_image::volume::mem_opener;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rate(what: &str, n: u64, secs: f64) {
    println!(
        "{what:<34} {n:>9} in {secs:>7.3} s = {:>10.0} /s",
        n as f64 / secs
    );
}

fn mbps(what: &str, bytes: u64, secs: f64) {
    println!(
        "{what:<34} {:>6} MiB in {secs:>7.3} s = {:>8.1} MB/s",
        bytes >> 20,
        bytes as f64 / secs / 1e6
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too
    // and should not mount anything.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let files = env_num("BENCH_FILES", 20_000);
    let mib = env_num("BENCH_MIB", 256);
    let dir = std::env::temp_dir().join(format!("scoutvm-fuse-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mount point");
    let opts = FuseOptions::default();
    let data_bytes = (mib << 20) + (256 << 20);
    let mnt = FuseMount::start(mem_opener(data_bytes, MountOptions::default()), &dir, &opts)
        .unwrap_or_else(|e| panic!("cannot mount for the bench: {e}"));
    println!(
        "FUSE bench on an in-memory volume at {} ({files} files, {mib} MiB)",
        dir.display()
    );

    let d = dir.join("bench");
    std::fs::create_dir(&d).unwrap();
    let names: Vec<_> = (0..files).map(|i| d.join(format!("file-{i:08}"))).collect();

    let t = Instant::now();
    for n in &names {
        std::fs::File::create(n).unwrap();
    }
    std::fs::File::open(&d).unwrap().sync_all().unwrap();
    rate("create (+sync)", files, t.elapsed().as_secs_f64());

    std::thread::sleep(opts.ttl + Duration::from_millis(100));
    let t = Instant::now();
    for n in &names {
        std::fs::metadata(n).unwrap();
    }
    rate("stat (lookup+getattr)", files, t.elapsed().as_secs_f64());

    let t = Instant::now();
    let seen = std::fs::read_dir(&d).unwrap().count() as u64;
    assert_eq!(seen, files);
    rate("readdir entries", seen, t.elapsed().as_secs_f64());

    let t = Instant::now();
    for n in &names {
        std::fs::remove_file(n).unwrap();
    }
    std::fs::File::open(&d).unwrap().sync_all().unwrap();
    rate("unlink (+sync)", files, t.elapsed().as_secs_f64());

    let path = dir.join("stream");
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| ((i * 31) >> 7) as u8).collect();
    let t = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap();
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    mbps(
        "sequential write 1 MiB (+fsync)",
        mib << 20,
        t.elapsed().as_secs_f64(),
    );

    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::open(&path).unwrap();
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    mbps("sequential read 1 MiB", total, t.elapsed().as_secs_f64());
    assert_eq!(total, mib << 20);
    drop(f);
    std::fs::remove_file(&path).unwrap();

    let stats = mnt.stats();
    mnt.unmount().expect("clean unmount");
    let _ = std::fs::remove_dir(&dir);
    println!(
        "fs thread: {} requests, {} queue-full waits",
        stats.jobs, stats.queue_full
    );
}
