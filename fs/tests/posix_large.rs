//! Scale: a directory of 100 000 entries (create, lookup, readdir across
//! commits and a remount, delete), readdir positions that stay stable
//! while entries come and go, and sparse files far beyond 4 GiB.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{block_on, check_sparse_pattern, readdir_all, write_sparse_pattern, Vol};
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::mount::MountOptions;
use scoutvm_fs::posix::types::*;
use scoutvm_fs::sim::mem_backend::MemMkfs;

const ROOT: u64 = 1;

#[test]
fn hundred_thousand_entries() {
    const N: u32 = 100_000;
    let v = Vol::with(
        MemMkfs::default(),
        MountOptions {
            cache_budget_bytes: 16 << 20,
            ..MountOptions::default()
        },
    );
    let c = Cred::root();
    let (m, _be) = v.mount();
    let d = block_on(m.mkdir(&c, ROOT, b"big", 0o755)).unwrap().ino;
    let mut inos = Vec::with_capacity(N as usize);
    for i in 0..N {
        let a = block_on(m.create(&c, d, format!("entry-{i:06}").as_bytes(), 0o644)).unwrap();
        inos.push(a.ino);
    }
    let a = block_on(m.getattr(d)).unwrap();
    assert_eq!(a.size, N as u64 * 12, "dir size = sum of name lengths");
    assert!(
        m.counters().commits_on_size > 0,
        "a big transaction commits on size"
    );
    block_on(m.sync()).unwrap();
    drop(m);

    // a fresh mount reads everything back through the backend
    let (m, _be) = v.mount();
    for i in (0..N).step_by(7) {
        let a = block_on(m.lookup(&c, d, format!("entry-{i:06}").as_bytes())).unwrap();
        assert_eq!(a.ino, inos[i as usize]);
    }
    assert_eq!(
        block_on(m.lookup(&c, d, b"entry-100000")),
        Err(Errno::ENOENT)
    );
    let ents = readdir_all(&m, d, 1000);
    assert_eq!(ents.len(), N as usize);
    for (i, e) in ents.iter().enumerate() {
        assert_eq!(e.name, format!("entry-{i:06}").as_bytes(), "creation order");
        assert_eq!(e.ino, inos[i]);
    }
    assert!(
        m.counters().items.evicted_ranges > 0,
        "the cache stayed in its budget"
    );
    // delete every other entry, then the rest
    for i in (0..N).step_by(2) {
        block_on(m.unlink(&c, d, format!("entry-{i:06}").as_bytes())).unwrap();
    }
    assert_eq!(readdir_all(&m, d, 777).len(), (N / 2) as usize);
    for i in (1..N).step_by(2) {
        block_on(m.unlink(&c, d, format!("entry-{i:06}").as_bytes())).unwrap();
    }
    block_on(m.rmdir(&c, ROOT, b"big")).unwrap();
    block_on(m.sync()).unwrap();
    assert_eq!(v.store.item_count(), 2, "only the root's items are left");
    assert_eq!(v.store.inode_count(), 1);
}

#[test]
fn readdir_positions_survive_concurrent_changes() {
    let v = Vol::new();
    v.store.set_read_window(8);
    let c = Cred::root();
    let (m, _be) = v.mount();
    let d = block_on(m.mkdir(&c, ROOT, b"d", 0o755)).unwrap().ino;
    let mut live: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for i in 0..300 {
        let name = format!("n{i}").into_bytes();
        live.insert(
            name.clone(),
            block_on(m.create(&c, d, &name, 0o644)).unwrap().ino,
        );
    }
    // walk in small batches, changing the directory between batches
    let stable: BTreeSet<Vec<u8>> = live.keys().filter(|k| k.len() % 2 == 0).cloned().collect();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut pos = 0;
    let mut round = 0u32;
    loop {
        let ents = block_on(m.readdir(&c, d, pos, 5)).unwrap();
        let Some(last) = ents.last() else { break };
        pos = last.next_pos;
        seen.extend(ents.into_iter().map(|e| e.name));
        round += 1;
        if round > 100 {
            continue;
        }
        // churn: delete an unstable name, add a new one
        if let Some(victim) = live.keys().find(|k| !stable.contains(*k)).cloned() {
            block_on(m.unlink(&c, d, &victim)).unwrap();
            live.remove(&victim);
        }
        let name = format!("new{round}").into_bytes();
        live.insert(
            name.clone(),
            block_on(m.create(&c, d, &name, 0o644)).unwrap().ino,
        );
        if round.is_multiple_of(10) {
            block_on(m.sync()).unwrap();
        }
    }
    let uniq: BTreeSet<&Vec<u8>> = seen.iter().collect();
    assert_eq!(uniq.len(), seen.len(), "no entry is returned twice");
    for s in &stable {
        assert!(uniq.contains(s), "entry present throughout was returned");
    }
    assert!(uniq.contains(&b".".to_vec()) && uniq.contains(&b"..".to_vec()));
}

#[test]
fn sparse_files_beyond_4g() {
    let v = Vol::new();
    let c = Cred::root();
    let (m, _be) = v.mount();
    let f = block_on(m.create(&c, ROOT, b"sparse", 0o644)).unwrap().ino;
    write_sparse_pattern(&m, f);
    let a = block_on(m.getattr(f)).unwrap();
    assert_eq!(a.size, i64::MAX as u64);
    assert!(a.online_blocks <= 12, "only written blocks are allocated");
    block_on(m.sync()).unwrap();
    drop(m);
    let (m, _be) = v.mount();
    check_sparse_pattern(&m, f);
    assert!(block_on(m.read(f, 3 << 30, 1 << 16))
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    // a 64 MiB write and read back in the middle of nowhere
    let big: Vec<u8> = (0..64u32 << 20).map(|i| (i >> 12) as u8).collect();
    let off = 7 << 32;
    assert_eq!(block_on(m.write(f, off, &big)).unwrap(), big.len());
    assert!(block_on(m.read(f, off, big.len())).unwrap() == big);
    let ext = block_on(m.extents(f, off >> 12, 100)).unwrap();
    let ext: Vec<_> = ext
        .into_iter()
        .filter(|e| e.start < (off >> 12) + (64 << 8))
        .collect();
    assert!(
        ext.len() <= 2,
        "a streaming write maps few extents: {ext:?}"
    );
    // truncating frees it all over many extents
    let tr = SetAttr {
        size: Some(4096),
        ..SetAttr::default()
    };
    block_on(m.setattr(&c, f, &tr)).unwrap();
    let a = block_on(m.getattr(f)).unwrap();
    assert_eq!((a.size, a.online_blocks), (4096, 1));
    assert_eq!(block_on(m.extents(f, 0, 10)).unwrap().len(), 1);
}
