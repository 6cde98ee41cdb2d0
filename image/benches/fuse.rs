//! POSIX throughput through the kernel's FUSE and the `scoutvm` front end:
//! creates, stats, readdir, unlinks per second and sequential write/read
//! MB/s, with ordinary syscalls (std::fs) on a fresh mount made by this
//! process. Prints figures; asserts nothing about speed.
//!
//! `cargo bench -p scoutvm-image --bench fuse` (root and /dev/fuse;
//! env: BENCH_FILES, BENCH_MIB, BENCH_VOLUMES=mem,file). Two volumes:
//! `mem`, the in-memory backend with a RAM data device (the FUSE path and
//! the POSIX layer without device I/O), and `file`, a real volume made by
//! `scoutvm mkfs` on sparse image files in $TMPDIR (log btrees, server
//! commits, fdatasync of the image files).
//!
//! What each figure includes: create = lookup + create + release per file
//! (then a sync); stat = a lookup and getattr reaching the filesystem
//! (the kernel's 1 s attribute cache has expired before the pass);
//! write = 1 MiB writes then fsync; read = a fresh open (FUSE drops the
//! file's page cache on open) and 1 MiB reads.

use scoutvm_fs::posix::mount::MountOptions;
use scoutvm_image::fs_thread::Opener;
use scoutvm_image::fuse::{FuseMount, FuseOptions};
use scoutvm_image::volume::{mem_opener, open_for_mount, volume_opener};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
#[path = "../../fs/benches/report/mod.rs"]
mod report;
use report::{env_num, mbps, rate};

/// A fresh volume on sparse image files in `dir`.
fn file_volume(dir: &Path, data_bytes: u64) -> Opener {
    let (meta, data) = (dir.join("meta.img"), dir.join("data.img"));
    for (p, size) in [(&meta, 8u64 << 30), (&data, data_bytes.max(4 << 30))] {
        let f = std::fs::File::create(p).expect("image file");
        f.set_len(size).expect("sparse image");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_scoutvm"))
        .args(["mkfs", "-A", "-Q", "0,127.0.0.1,7100"])
        .arg(&meta)
        .arg(&data)
        .output()
        .expect("run scoutvm mkfs");
    assert!(
        o.status.success(),
        "mkfs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let devs = open_for_mount(meta.to_str().unwrap(), data.to_str().unwrap(), false)
        .unwrap_or_else(|e| panic!("{e}"));
    volume_opener(devs, MountOptions::default())
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too
    // and should not mount anything.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let files = env_num("BENCH_FILES", 20_000);
    let mib = env_num("BENCH_MIB", 256);
    let volumes = std::env::var("BENCH_VOLUMES").unwrap_or_else(|_| "mem,file".into());
    for v in volumes.split(',') {
        let work =
            std::env::temp_dir().join(format!("scoutvm-fuse-bench-{}-{v}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("bench dir");
        let data_bytes = (mib << 20) + (256 << 20);
        let (opener, what) = match v {
            "mem" => (
                mem_opener(data_bytes, MountOptions::default()),
                "an in-memory volume".to_string(),
            ),
            "file" => (
                file_volume(&work, data_bytes),
                format!("a volume on sparse image files in {}", work.display()),
            ),
            other => panic!("BENCH_VOLUMES: unknown volume '{other}' (mem, file)"),
        };
        bench(opener, &what, &work.join("mnt"), files, mib);
        let _ = std::fs::remove_dir_all(&work);
    }
}

fn bench(opener: Opener, what: &str, dir: &Path, files: u64, mib: u64) {
    std::fs::create_dir_all(dir).expect("mount point");
    let opts = FuseOptions::default();
    let mnt = FuseMount::start(opener, dir, &opts)
        .unwrap_or_else(|e| panic!("cannot mount for the bench: {e}"));
    println!("FUSE bench on {what} ({files} files, {mib} MiB)");

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
    println!(
        "fs thread: {} requests, {} queue-full waits",
        stats.jobs, stats.queue_full
    );
}
