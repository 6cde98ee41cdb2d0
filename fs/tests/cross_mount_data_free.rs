//! Data space freed on one mount is allocatable on another (issue 12,
//! the reference's cross-mount-data-free): two mounts of one volume, each
//! a client of one in-process server with the cluster locks, a small data
//! device. Mount 0 writes files until about 60 % of the data device is
//! used, mount 1 unlinks them, mount 0 writes again: over the rounds
//! mount 0 writes more than twice the device without an ENOSPC, statfs
//! stays sane and fsck is clean after unmount. The mirror: mount 1 only
//! frees (the previous batch) while mount 0 writes the next, with merges
//! requested every round or never.
//!
//! `cargo test -p scoutvm-fs --features sim --test cross_mount_data_free
//! -- --ignored --nocapture` prints how many bytes mount 0 writes before
//! its first ENOSPC (`SCOUTVM_DATA_FREE_MAX_X=N`: stop after N times the
//! device, default 8).

mod common;
use common::*;
use scoutvm_fs::cluster::lock_client::LockClientConfig;
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::posix::types::Cred;
use scoutvm_fs::runtime::env::ManualClock;

const ROOT: u64 = 1;
const META: u64 = 1 << 30;
/// The data device: 32 MiB, 8192 blocks of 4 KiB.
const DATA: u64 = 32 << 20;
/// Each file: 1 MiB, written in 256 KiB pieces.
const FILE: usize = 1 << 20;
const PIECE: usize = 256 << 10;

/// The two-mount cluster of these tests: the cluster locks, background
/// commits and merge work as in production, on a 32 MiB data device.
fn cluster(seed: u64) -> MemCluster {
    let mut opts = test_node_options(MountOptions::default());
    opts.cluster_locks = Some(LockClientConfig::default());
    opts.tick_ns = 1_000_000_000;
    opts.merge_poll_ns = 200_000_000;
    MemCluster::new(seed, META, DATA, opts)
}

fn content(round: usize, i: usize) -> Vec<u8> {
    let mut v = format!("round {round} file {i} ").into_bytes();
    v.resize(FILE, b'a' + (i % 26) as u8);
    v
}

/// Create and write one file; `Err(ENOSPC)` on a short write.
async fn write_file(m: &Mount, dir: u64, name: &str, data: &[u8]) -> Result<u64, Errno> {
    let a = m.create(&Cred::root(), dir, name.as_bytes(), 0o644).await?;
    let mut off = 0;
    while off < data.len() {
        let end = (off + PIECE).min(data.len());
        let n = m.write(a.ino, off as u64, &data[off..end]).await?;
        if n == 0 {
            return Err(Errno::ENOSPC);
        }
        off += n;
    }
    Ok(a.ino)
}

/// Free and total 4 KiB data blocks as statfs reports them.
fn data_space(m: &Mount) -> (u64, u64) {
    let s = run_bounded("statfs", m.statfs_more()).unwrap();
    assert!(
        s.free_data_blocks <= s.total_data_blocks,
        "statfs: {} free of {} data blocks",
        s.free_data_blocks,
        s.total_data_blocks
    );
    (s.free_data_blocks, s.total_data_blocks)
}

/// Files per batch: about 60 % of the data device.
fn batch_files() -> usize {
    (DATA as usize * 6 / 10) / FILE
}

/// The reference scenario: mount 0 fills 60 % of the data device, mount 1
/// unlinks everything (and syncs), four rounds (2.4 times the device).
#[test]
fn space_freed_on_one_mount_is_allocated_on_another() {
    let c = cluster(31);
    let (m0, cm0) = c.mount(0x101);
    let (m1, cm1) = c.mount(0x102);
    let dir = run_bounded("mkdir", m0.mkdir(&Cred::root(), ROOT, b"d", 0o755))
        .unwrap()
        .ino;
    run_bounded("sync", m0.sync()).unwrap();
    let (free0, total) = data_space(&m0);
    assert!(free0 > total / 2, "{free0} of {total} free on a new volume");
    let files = batch_files();
    let mut written = 0usize;
    for round in 0..4 {
        for i in 0..files {
            let name = format!("r{round}f{i}");
            let data = content(round, i);
            if let Err(e) = run_bounded("write", write_file(&m0, dir, &name, &data)) {
                panic!(
                    "round {round} file {i}: {e:?} after {written} bytes written \
                     ({} times the data device)",
                    written as f64 / DATA as f64
                );
            }
            written += data.len();
        }
        // statfs counts committed allocators
        run_bounded("sync 0", m0.sync()).unwrap();
        let (free, _) = data_space(&m1);
        assert!(
            free <= free0 - (files * FILE) as u64 / 4096,
            "round {round}: {free} blocks free with {files} MiB written"
        );
        // mount 1 reads one back (the lock hand-off) and unlinks them all
        let a = run_bounded("lookup", m1.lookup(&Cred::root(), dir, b"r0f0".as_ref()));
        if round == 0 {
            let got = run_bounded("read", m1.read(a.unwrap().ino, 0, FILE)).unwrap();
            assert_eq!(got, content(0, 0));
        }
        for i in 0..files {
            let name = format!("r{round}f{i}");
            run_bounded("unlink", m1.unlink(&Cred::root(), dir, name.as_bytes())).unwrap();
        }
        run_bounded("sync 1", m1.sync()).unwrap();
        run_bounded("sync 0", m0.sync()).unwrap();
        let (free, _) = data_space(&m0);
        assert_eq!(
            free, free0,
            "round {round}: every freed block is free again"
        );
    }
    assert!(written as u64 > 2 * DATA);
    c.shutdown(vec![(m0, cm0), (m1, cm1)]);
}

/// Let background commits and merge work run for `ns` of virtual time.
fn idle(clock: &ManualClock, ns: u64) {
    let h = handle();
    let step = 100_000_000;
    for _ in 0..ns / step {
        block_on(async { h.sleep_ns(step).await });
        clock.advance_ns(step);
    }
}

/// The mirror: mount 1 only frees (batch k−1, no sync: its commits come
/// from the lock hand-offs and its ticker) while mount 0 writes batch k,
/// both at once; with a merge requested every round or never.
fn only_frees_while_the_other_allocates(merges: bool, seed: u64) {
    let c = cluster(seed);
    let (m0, cm0) = c.mount(0x101);
    let (m1, cm1) = c.mount(0x102);
    let dir = run_bounded("mkdir", m0.mkdir(&Cred::root(), ROOT, b"d", 0o755))
        .unwrap()
        .ino;
    run_bounded("sync", m0.sync()).unwrap();
    let (free0, _) = data_space(&m0);
    // 45 % per batch: at most two batches (90 %) live at once
    let files = (DATA as usize * 45 / 100) / FILE;
    let rounds = 6;
    let h = handle();
    let mut written = 0usize;
    for round in 0..rounds {
        if merges {
            c.server.request_merge();
        }
        let writer = {
            let m0 = m0.clone();
            h.spawn(async move {
                for i in 0..files {
                    let name = format!("r{round}f{i}");
                    if let Err(e) = write_file(&m0, dir, &name, &content(round, i)).await {
                        return Err((i, e));
                    }
                }
                Ok(())
            })
            .unwrap()
        };
        let freer = {
            let m1 = m1.clone();
            h.spawn(async move {
                if round == 0 {
                    return;
                }
                for i in 0..files {
                    let name = format!("r{}f{i}", round - 1);
                    m1.unlink(&Cred::root(), dir, name.as_bytes())
                        .await
                        .expect("unlink");
                }
            })
            .unwrap()
        };
        if let Err((i, e)) = run_bounded("writer", writer) {
            panic!(
                "round {round} file {i}: {e:?} after {} bytes written",
                written + i * FILE
            );
        }
        run_bounded("freer", freer);
        written += files * FILE;
        idle(&c.clock, 2_000_000_000);
        data_space(&m0);
    }
    assert!(written as u64 > 2 * DATA);
    // the last batch goes too; every block is free again
    for i in 0..files {
        let name = format!("r{}f{i}", rounds - 1);
        run_bounded("unlink", m1.unlink(&Cred::root(), dir, name.as_bytes())).unwrap();
    }
    run_bounded("sync 1", m1.sync()).unwrap();
    run_bounded("sync 0", m0.sync()).unwrap();
    assert_eq!(data_space(&m1).0, free0);
    c.shutdown(vec![(m0, cm0), (m1, cm1)]);
}

#[test]
fn a_mount_that_only_frees_feeds_one_that_allocates() {
    only_frees_while_the_other_allocates(false, 41);
}

#[test]
fn a_mount_that_only_frees_feeds_one_that_allocates_with_merges() {
    only_frees_while_the_other_allocates(true, 43);
}

/// The figure: mount 0 writes 10 % of the device per iteration (as the
/// reference does), mount 1 unlinks it, no syncs, until mount 0's first
/// ENOSPC or `SCOUTVM_DATA_FREE_MAX_X` times the device.
#[test]
#[ignore]
fn bench_bytes_written_before_enospc() {
    let max_x: u64 = std::env::var("SCOUTVM_DATA_FREE_MAX_X")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let c = cluster(51);
    let (m0, cm0) = c.mount(0x101);
    let (m1, cm1) = c.mount(0x102);
    let dir = run_bounded("mkdir", m0.mkdir(&Cred::root(), ROOT, b"d", 0o755))
        .unwrap()
        .ino;
    let per_iter = (DATA as usize / 10 / FILE).max(1);
    let mut written = 0u64;
    let mut enospc = false;
    'outer: for it in 0.. {
        for i in 0..per_iter {
            let name = format!("i{it}f{i}");
            match run_bounded("write", write_file(&m0, dir, &name, &content(it, i))) {
                Ok(_) => written += FILE as u64,
                Err(Errno::ENOSPC) => {
                    enospc = true;
                    break 'outer;
                }
                Err(e) => panic!("write: {e:?}"),
            }
        }
        if written >= max_x * DATA {
            break;
        }
        for i in 0..per_iter {
            let name = format!("i{it}f{i}");
            run_bounded("unlink", m1.unlink(&Cred::root(), dir, name.as_bytes())).unwrap();
        }
    }
    eprintln!(
        "data device {} MiB: mount 0 wrote {} MiB ({:.2} times the device) {}",
        DATA >> 20,
        written >> 20,
        written as f64 / DATA as f64,
        if enospc {
            "before its first ENOSPC"
        } else {
            "without an ENOSPC (the bound)"
        }
    );
    c.shutdown(vec![(m0, cm0), (m1, cm1)]);
}
