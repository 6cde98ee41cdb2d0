//! Scale over the real persistent half (server, client log trees, forest
//! reads, log merges): a directory of 100 000 entries across commits,
//! merges and a remount, and sparse files far beyond 4 GiB.

mod common;

use common::*;
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::hold::CommitPolicy;
use scoutvm_fs::posix::mount::MountOptions;
use scoutvm_fs::posix::types::*;

const ROOT: u64 = 1;

fn vol(seed: u64) -> RealVol {
    let opts = test_node_options(MountOptions {
        cache_budget_bytes: 16 << 20,
        commit: CommitPolicy {
            dirty_limit_bytes: 4 << 20,
            ..CommitPolicy::default()
        },
    });
    RealVol::new(16 << 30, 16 << 30, seed, opts)
}

#[test]
fn hundred_thousand_entries_real_backend() {
    const N: u32 = 100_000;
    let v = vol(1);
    let c = Cred::root();
    let (m, node) = v.mount();
    let d = block_on(m.mkdir(&c, ROOT, b"big", 0o755)).unwrap().ino;
    let mut inos = Vec::with_capacity(N as usize);
    for i in 0..N {
        let a = block_on(m.create(&c, d, format!("entry-{i:06}").as_bytes(), 0o644)).unwrap();
        inos.push(a.ino);
        if i % 20_000 == 19_999 {
            // merge what the commits on size wrote so far
            merge_until_idle(&node);
        }
    }
    assert!(m.counters().commits_on_size > 3, "commits on size");
    assert_eq!(block_on(m.getattr(d)).unwrap().size, N as u64 * 12);
    drop(m);
    block_on(node.unmount()).unwrap();
    v.fsck();

    let (m, node) = v.mount();
    for i in (0..N).step_by(7) {
        let a = block_on(m.lookup(&c, d, format!("entry-{i:06}").as_bytes())).unwrap();
        assert_eq!(a.ino, inos[i as usize]);
    }
    assert_eq!(
        block_on(m.lookup(&c, d, b"entry-100000")),
        Err(Errno::ENOENT)
    );
    merge_until_idle(&node);
    let ents = readdir_all(&m, d, 1000);
    assert_eq!(ents.len(), N as usize);
    for (i, e) in ents.iter().enumerate() {
        assert_eq!(e.name, format!("entry-{i:06}").as_bytes(), "creation order");
        assert_eq!(e.ino, inos[i]);
    }
    let sb = node.leader().stable_super();
    assert!(
        sb.fs_root.height >= 2,
        "the merged fs root holds the directory"
    );
    for i in (0..N).step_by(2) {
        block_on(m.unlink(&c, d, format!("entry-{i:06}").as_bytes())).unwrap();
    }
    assert_eq!(readdir_all(&m, d, 777).len(), (N / 2) as usize);
    for i in (1..N).step_by(2) {
        block_on(m.unlink(&c, d, format!("entry-{i:06}").as_bytes())).unwrap();
    }
    block_on(m.rmdir(&c, ROOT, b"big")).unwrap();
    block_on(m.sync()).unwrap();
    block_on(node.start_merge()).unwrap();
    merge_until_idle(&node);
    let st = block_on(m.statfs()).unwrap();
    assert_eq!(st.files - st.ffree, 1, "only the root inode is left");
    drop(m);
    block_on(node.unmount()).unwrap();
    v.fsck();
}

#[test]
fn sparse_files_beyond_4g_real_backend() {
    let v = vol(2);
    let c = Cred::root();
    let (m, node) = v.mount();
    let f = block_on(m.create(&c, ROOT, b"sparse", 0o644)).unwrap().ino;
    write_sparse_pattern(&m, f);
    assert_eq!(block_on(m.getattr(f)).unwrap().size, i64::MAX as u64);
    block_on(m.sync()).unwrap();
    block_on(node.start_merge()).unwrap();
    merge_until_idle(&node);
    drop(m);
    block_on(node.unmount()).unwrap();
    v.fsck();
    let (m, node) = v.mount();
    check_sparse_pattern(&m, f);
    // 64 MiB far out, across commits, then truncated away
    let big: Vec<u8> = (0..64u32 << 20).map(|i| (i >> 12) as u8).collect();
    let off = 7 << 32;
    assert_eq!(block_on(m.write(f, off, &big)).unwrap(), big.len());
    block_on(m.sync()).unwrap();
    assert!(block_on(m.read(f, off, big.len())).unwrap() == big);
    let tr = SetAttr {
        size: Some(4096),
        ..SetAttr::default()
    };
    block_on(m.setattr(&c, f, &tr)).unwrap();
    let a = block_on(m.getattr(f)).unwrap();
    assert_eq!((a.size, a.online_blocks), (4096, 1));
    block_on(m.sync()).unwrap();
    v.fsck();
    drop(m);
    block_on(node.unmount()).unwrap();
    v.fsck();
}

/// The production setup: the commit ticker and the merge worker run in
/// the background while operations go on (virtual time advances between
/// batches); commits and merges interleave with reads and writes, and
/// everything written is there after a remount.
#[test]
fn background_commits_and_merges_while_working() {
    let mut opts = test_node_options(MountOptions::default());
    opts.tick_ns = scoutvm_fs::client::node::TICK_NS;
    opts.merge_poll_ns = scoutvm_fs::client::node::MERGE_POLL_NS;
    opts.server.finalize_height = 1;
    let v = RealVol::new(16 << 30, 4 << 30, 3, opts);
    let c = Cred::root();
    let (m, node) = v.mount();
    let h = handle();
    let mut files = Vec::new();
    for i in 0..3000u32 {
        let dir = 1;
        let a = block_on(m.create(&c, dir, format!("f{i}").as_bytes(), 0o644)).unwrap();
        block_on(m.write(a.ino, 0, format!("contents of {i}").as_bytes())).unwrap();
        files.push(a.ino);
        if i % 100 == 99 {
            // let the clock run: the ticker commits (10 s after the first
            // change), the worker merges what was finalized
            v.clock.advance_ns(3_000_000_000);
            let h2 = h.clone();
            block_on(async move { h2.sleep_ns(3_000_000_000).await });
            // reads in the middle of it all
            let j = (i as usize * 7) % files.len();
            let back = block_on(m.read(files[j], 0, 64)).unwrap();
            assert_eq!(back, format!("contents of {j}").as_bytes());
        }
    }
    let commits = node.trans().counters().commits;
    let merged = node.merge_stats().items_merged;
    assert!(commits >= 5, "the ticker committed ({commits})");
    assert!(merged > 0, "the background worker merged");
    drop(m);
    block_on(node.unmount()).unwrap();
    v.fsck();
    let (m, node) = v.mount();
    for (i, ino) in files.iter().enumerate().step_by(13) {
        let back = block_on(m.read(*ino, 0, 64)).unwrap();
        assert_eq!(back, format!("contents of {i}").as_bytes());
    }
    drop(m);
    block_on(node.unmount()).unwrap();
    v.fsck();
}
