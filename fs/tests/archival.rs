//! The archival interfaces on a mount: data_version, release, stage,
//! waiting on offline data, and inode index walks. Ports of the reference
//! tests simple-staging, simple-release-extents, offline-extent-waiting,
//! basic-block-counts and simple-inode-index, driving a `Mount` directly
//! (in-memory volume), plus one run on a real on-disk volume that fsck
//! checks.

mod common;

use std::rc::Rc;

use common::{block_on, bytes, handle, offline, RealVol, Vol};
use scoutvm_fs::errno::Errno;
use scoutvm_fs::format::items::{DataExtent, SEF_OFFLINE};
use scoutvm_fs::posix::archive::{
    WaitingEntry, WalkEntry, WalkIndex, DWO_CHANGE_SIZE, DWO_READ, DWO_WRITE,
};
use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::posix::types::*;

const ROOT: u64 = 1;
const BS: u64 = 4096;

fn root() -> Cred {
    Cred::root()
}

/// Let spawned tasks run until they wait (a little virtual time).
fn settle() {
    let h = handle();
    block_on(async move { h.sleep_ns(1_000_000).await });
}

fn create_file(m: &Mount, name: &str, data: &[u8]) -> u64 {
    let a = block_on(m.create(&root(), ROOT, name.as_bytes(), 0o644)).unwrap();
    if !data.is_empty() {
        assert_eq!(block_on(m.write(a.ino, 0, data)).unwrap(), data.len());
    }
    a.ino
}

fn vers(m: &Mount, ino: u64) -> u64 {
    block_on(m.stat_more(ino)).unwrap().data_version
}

fn release(m: &Mount, ino: u64, off: u64, len: u64) -> Result<(), Errno> {
    let v = vers(m, ino);
    block_on(m.release_data(ino, off, len, v))
}

fn stage(m: &Mount, ino: u64, off: u64, data: &[u8]) -> Result<(), Errno> {
    let v = vers(m, ino);
    block_on(m.stage(ino, v, off, data))
}

fn extents(m: &Mount, ino: u64) -> Vec<DataExtent> {
    block_on(m.extents(ino, 0, 1000)).unwrap()
}

fn read_all(m: &Mount, ino: u64) -> Vec<u8> {
    let size = block_on(m.getattr(ino)).unwrap().size;
    block_on(m.read(ino, 0, size as usize)).unwrap()
}

// ---- simple-staging ----

#[test]
fn simple_staging() {
    let v = Vol::new();
    let (m, _be) = v.mount();

    // create/release/stage single block and larger files
    for (name, size) in [("one", 4096usize), ("large", 4 << 20)] {
        let golden = bytes(size, size as u64);
        let ino = create_file(&m, name, &golden);
        release(&m, ino, 0, size as u64).unwrap();
        assert_eq!(extents(&m, ino), [offline(0, size as u64 / BS)]);
        stage(&m, ino, 0, &golden).unwrap();
        assert_eq!(read_all(&m, ino), golden);
        block_on(m.unlink(&root(), ROOT, name.as_bytes())).unwrap();
    }

    // multiple release, drop cache, stage cycles
    let golden = bytes(1 << 20, 7);
    let ino = create_file(&m, "cycle", &golden);
    for _ in 1..10 {
        release(&m, ino, 0, 1 << 20).unwrap();
        block_on(m.sync()).unwrap();
        m.evict_clean_cache();
        stage(&m, ino, 0, &golden).unwrap();
        assert_eq!(read_all(&m, ino), golden);
        block_on(m.sync()).unwrap();
    }
    block_on(m.unlink(&root(), ROOT, b"cycle")).unwrap();

    // release + stage change no stat field, data_seq nor data_version
    let golden = bytes(4096, 8);
    let ino = create_file(&m, "same", &golden);
    block_on(m.sync()).unwrap();
    let before = block_on(m.getattr(ino)).unwrap();
    release(&m, ino, 0, 4096).unwrap();
    stage(&m, ino, 0, &golden).unwrap();
    let after = block_on(m.getattr(ino)).unwrap();
    assert_eq!(
        (
            after.size,
            after.blocks,
            after.mtime,
            after.ctime,
            after.mode
        ),
        (
            before.size,
            before.blocks,
            before.mtime,
            before.ctime,
            before.mode
        )
    );
    assert_eq!(after.data_seq, before.data_seq);
    assert_eq!(after.data_version, before.data_version);

    // stage does change meta_seq
    release(&m, ino, 0, 4096).unwrap();
    block_on(m.sync()).unwrap();
    let before = block_on(m.stat_more(ino)).unwrap().meta_seq;
    stage(&m, ino, 0, &golden).unwrap();
    let after = block_on(m.stat_more(ino)).unwrap().meta_seq;
    assert!(after > before, "meta_seq {before} -> {after}");
    block_on(m.unlink(&root(), ROOT, b"same")).unwrap();

    // can't use stage to extend a file
    let ino = create_file(&m, "empty", &[]);
    assert_eq!(stage(&m, ino, 0, &[0; 4096]), Err(Errno::EINVAL));
    assert_eq!(block_on(m.getattr(ino)).unwrap().size, 0);

    // a wrapped region fails
    let ino = create_file(&m, "wrap", &bytes(8192, 9));
    assert_eq!(
        stage(&m, ino, 0xFFFF_FFFF_FFFF_F000, &[0; 8192]),
        Err(Errno::EINVAL)
    );

    // a non-block-aligned offset, and a length inside a block short of
    // the end of the file, fail and leave the extents offline
    for (off, len) in [(1u64, 4095usize), (0, 1024)] {
        let name = format!("align{off}");
        let golden = bytes(4096, 10);
        let ino = create_file(&m, &name, &golden);
        release(&m, ino, 0, 4096).unwrap();
        assert_eq!(
            stage(&m, ino, off, &golden[..len]),
            Err(Errno::EINVAL),
            "stage {off}+{len}"
        );
        assert_eq!(extents(&m, ino), [offline(0, 1)]);
    }

    // a partial final block that ends at i_size works
    let golden = bytes(2048, 11);
    let ino = create_file(&m, "partial", &golden);
    release(&m, ino, 0, 4096).unwrap();
    stage(&m, ino, 0, &golden).unwrap();
    assert_eq!(read_all(&m, ino), golden);
    // the rest of the staged block reads as zeros past a later extension
    block_on(m.setattr(
        &root(),
        ino,
        &SetAttr {
            size: Some(4096),
            ..Default::default()
        },
    ))
    .unwrap();
    let back = read_all(&m, ino);
    assert_eq!(&back[..2048], &golden[..]);
    assert!(back[2048..].iter().all(|&b| b == 0));

    // a zero length stage brings no block online
    let ino = create_file(&m, "zero", &bytes(4096 * 100, 12));
    release(&m, ino, 0, 400 << 10).unwrap();
    stage(&m, ino, 4096, &[]).unwrap();
    assert_eq!(extents(&m, ino), [offline(0, 100)]);

    // a stale data_version fails
    let v0 = vers(&m, ino);
    assert_eq!(
        block_on(m.stage(ino, v0 + 1, 0, &[0; 4096])),
        Err(Errno::ESTALE)
    );

    // stage of a non-regular file fails
    let c = block_on(m.mknod(&root(), ROOT, b"char", S_IFCHR | 0o644, 0x103)).unwrap();
    assert_eq!(block_on(m.stage(c.ino, 0, 0, &[0; 1])), Err(Errno::EINVAL));
}

// ---- simple-release-extents ----

/// A file written over a preallocation of `size` bytes.
fn falloc_file(m: &Mount, name: &str, size: u64) -> u64 {
    let ino = create_file(m, name, &[]);
    block_on(m.fallocate(&root(), ino, 0, 0, size)).unwrap();
    assert_eq!(
        block_on(m.write(ino, 0, &bytes(size as usize, size))).unwrap(),
        size as usize
    );
    ino
}

#[test]
fn simple_release_extents() {
    let v = Vol::new();
    let (m, _be) = v.mount();

    // whole file multi-block releasing
    let ino = falloc_file(&m, "file", 65536);
    release(&m, ino, 0, 64 << 10).unwrap();
    assert_eq!(extents(&m, ino), [offline(0, 16)]);
    block_on(m.unlink(&root(), ROOT, b"file")).unwrap();

    // the last block that straddles i_size
    let ino = falloc_file(&m, "file", 6144);
    release(&m, ino, 4096, 4096).unwrap();
    let e = extents(&m, ino);
    assert_eq!(e.len(), 2);
    assert!(e[0].blkno != 0 && e[0].start == 0 && e[0].len == 1);
    assert_eq!(e[1], offline(1, 1));
    block_on(m.unlink(&root(), ROOT, b"file")).unwrap();

    // the entire file, and past i_size
    let ino = falloc_file(&m, "file", 8192);
    let v0 = vers(&m, ino);
    release(&m, ino, 0, 400 << 10).unwrap();
    assert_eq!(extents(&m, ino), [offline(0, 2)]);
    // releasing offline extents, a 0 count, and past i_size are fine
    release(&m, ino, 0, 400 << 10).unwrap();
    release(&m, ino, 0, 0).unwrap();
    release(&m, ino, 400 << 10, 4096).unwrap();
    assert_eq!(extents(&m, ino), [offline(0, 2)]);
    assert_eq!(vers(&m, ino), v0, "release keeps data_version");

    // the last block of the largest offset is fine; a wrapped range fails
    release(&m, ino, 0xFFFF_FFFF_FFFF_F000, 4096).unwrap();
    assert_eq!(
        release(&m, ino, 0xFFFF_FFFF_FFFF_F000, 8192),
        Err(Errno::EINVAL)
    );
    // unaligned ranges fail
    assert_eq!(release(&m, ino, 1, 4096), Err(Errno::EINVAL));
    assert_eq!(release(&m, ino, 0, 4095), Err(Errno::EINVAL));

    // a non-file fails; a bad version fails
    let c = block_on(m.mknod(&root(), ROOT, b"char", S_IFCHR | 0o644, 0x103)).unwrap();
    assert_eq!(
        block_on(m.release_data(c.ino, 0, 4096, 0)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        block_on(m.release_data(ino, 0, 4096, v0 + 1)),
        Err(Errno::ESTALE)
    );
    block_on(m.unlink(&root(), ROOT, b"file")).unwrap();

    // every combination of releasing three single blocks of a 5 block
    // file merges offline extents as a per-block model says
    for a in 0..5u64 {
        for b in 0..5u64 {
            for c in 0..5u64 {
                let ino = falloc_file(&m, "file", 5 * BS);
                let e = extents(&m, ino);
                assert_eq!(e.len(), 1, "one preallocated extent");
                let base = e[0].blkno;
                for blk in [a, b, c] {
                    release(&m, ino, blk * BS, BS).unwrap();
                }
                // model: released blocks offline, others at base + block;
                // neighbours merge when both offline or physically
                // contiguous
                let mut want: Vec<DataExtent> = Vec::new();
                for blk in 0..5 {
                    let off = [a, b, c].contains(&blk);
                    let next = if off {
                        offline(blk, 1)
                    } else {
                        DataExtent {
                            start: blk,
                            len: 1,
                            blkno: base + blk,
                            flags: 0,
                        }
                    };
                    match want.last_mut() {
                        Some(l)
                            if l.flags == next.flags
                                && (l.blkno == 0) == (next.blkno == 0)
                                && (l.blkno == 0 || l.blkno + l.len == next.blkno) =>
                        {
                            l.len += 1
                        }
                        _ => want.push(next),
                    }
                }
                assert_eq!(extents(&m, ino), want, "releasing {a} {b} {c}");
                let st = block_on(m.stat_more(ino)).unwrap();
                let nr_off = [a, b, c]
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .len() as u64;
                assert_eq!((st.online_blocks, st.offline_blocks), (5 - nr_off, nr_off));
                block_on(m.unlink(&root(), ROOT, b"file")).unwrap();
            }
        }
    }
}

// ---- basic-block-counts ----

#[test]
fn basic_block_counts() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let counts = |ino: u64| {
        let s = block_on(m.stat_more(ino)).unwrap();
        let a = block_on(m.getattr(ino)).unwrap();
        (s.online_blocks, s.offline_blocks, a.blocks)
    };
    let ino = create_file(&m, "file", &[0; 4096]);
    assert_eq!(counts(ino), (1, 0, 8), "single block write");
    block_on(m.write(ino, 0, &[0; 4096])).unwrap();
    assert_eq!(counts(ino), (1, 0, 8), "overwrite");
    block_on(m.write(ino, 4096, &[0; 4096])).unwrap();
    assert_eq!(counts(ino), (2, 0, 16), "append");
    release(&m, ino, 0, 8192).unwrap();
    assert_eq!(counts(ino), (0, 2, 16), "release");
    release(&m, ino, 0, 8192).unwrap();
    assert_eq!(counts(ino), (0, 2, 16), "duplicate release");
    release(&m, ino, 0, 64 << 10).unwrap();
    assert_eq!(counts(ino), (0, 2, 16), "duplicate release past i_size");
    stage(&m, ino, 0, &[0; 8192]).unwrap();
    assert_eq!(counts(ino), (2, 0, 16), "stage");
    stage(&m, ino, 0, &[0; 8192]).unwrap();
    assert_eq!(counts(ino), (2, 0, 16), "duplicate stage");
    block_on(m.write(ino, 0, &vec![0; 1 << 20])).unwrap();
    assert_eq!(counts(ino), (256, 0, 2048), "larger file");
    let trunc = |size: u64| SetAttr {
        size: Some(size),
        ..Default::default()
    };
    block_on(m.setattr(&root(), ino, &trunc(512 << 10))).unwrap();
    assert_eq!(counts(ino), (128, 0, 1024), "partial truncate");
    block_on(m.unlink(&root(), ROOT, b"file")).unwrap();
    let ino = create_file(&m, "file", &[]);
    block_on(m.write(ino, 4096 * 1024, &[0; 4096])).unwrap();
    assert_eq!(counts(ino), (1, 0, 8), "single sparse block");
    block_on(m.unlink(&root(), ROOT, b"file")).unwrap();
    let ino = create_file(&m, "file", &[]);
    assert_eq!(counts(ino), (0, 0, 0), "empty file");
    let d = block_on(m.mkdir(&root(), ROOT, b"dir", 0o755)).unwrap();
    assert_eq!(counts(d.ino), (0, 0, 0), "non-regular file");
}

#[test]
fn data_version_moves_on_every_data_change_only() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let ino = create_file(&m, "f", &[]);
    let mut last = vers(&m, ino);
    let mut changed = |what: &str, expect: bool| {
        let now = vers(&m, ino);
        assert_eq!(now != last, expect, "{what}: data_version {last} -> {now}");
        last = now;
    };
    block_on(m.write(ino, 0, &bytes(3 * 4096, 1))).unwrap();
    changed("write", true);
    let size = |s: u64| SetAttr {
        size: Some(s),
        ..Default::default()
    };
    block_on(m.setattr(&root(), ino, &size(2 * 4096))).unwrap();
    changed("truncate", true);
    block_on(m.setattr(&root(), ino, &size(2 * 4096))).unwrap();
    changed("truncate to the same size", false);
    block_on(m.fallocate(&root(), ino, 0, 0, 5 * 4096)).unwrap();
    changed("fallocate growing the file", true);
    block_on(m.setxattr(&root(), ino, b"user.x", b"1", 0)).unwrap();
    changed("setxattr", false);
    release(&m, ino, 0, 4096).unwrap();
    changed("release", false);
    stage(&m, ino, 0, &[1; 4096]).unwrap();
    changed("stage", false);
}

// ---- offline-extent-waiting ----

fn waiting(m: &Mount) -> Vec<WaitingEntry> {
    m.data_waiting(0, 0, 100)
}

fn entry(ino: u64, iblock: u64, ops: u8) -> WaitingEntry {
    WaitingEntry { ino, iblock, ops }
}

/// Read `len` bytes at `off` in a task of its own.
fn spawn_read(
    m: &Rc<Mount>,
    ino: u64,
    off: u64,
    len: usize,
) -> scoutvm_fs::runtime::exec::JoinHandle<Result<Vec<u8>, Errno>> {
    let m = m.clone();
    handle()
        .spawn(async move { m.read(ino, off, len).await })
        .unwrap()
}

#[test]
fn offline_extent_waiting() {
    const BLOCKS: u64 = 256;
    const BYTES: u64 = BLOCKS * BS;
    let v = Vol::new();
    let (m, _be) = v.mount();
    let m = Rc::new(m);
    let golden = bytes(BYTES as usize, 42);
    let ino = create_file(&m, "file", &golden);
    let ver = vers(&m, ino);
    let stage_all = || block_on(m.stage(ino, ver, 0, &golden)).unwrap();
    let release_all = || block_on(m.release_data(ino, 0, BYTES, ver)).unwrap();

    // a waiter shows up, same block listed once, different blocks listed
    assert!(waiting(&m).is_empty());
    release_all();
    let r1 = spawn_read(&m, ino, 0, BYTES as usize);
    settle();
    assert_eq!(waiting(&m), [entry(ino, 0, DWO_READ)]);
    let r2 = spawn_read(&m, ino, 0, BYTES as usize);
    settle();
    assert_eq!(waiting(&m), [entry(ino, 0, DWO_READ)]);
    let r3 = spawn_read(&m, ino, BS, BS as usize);
    settle();
    assert_eq!(
        waiting(&m),
        [entry(ino, 0, DWO_READ), entry(ino, 1, DWO_READ)]
    );
    // the cursor is exclusive
    assert_eq!(m.data_waiting(ino, 0, 100), [entry(ino, 1, DWO_READ)]);

    // staging wakes everyone, and they get their bytes
    stage_all();
    settle();
    assert!(waiting(&m).is_empty());
    for r in [&r1, &r2] {
        assert_eq!(r.try_take().unwrap().unwrap(), golden);
    }
    assert_eq!(
        r3.try_take().unwrap().unwrap(),
        &golden[BS as usize..2 * BS as usize]
    );

    // interruption does no harm
    release_all();
    let r = spawn_read(&m, ino, 0, BYTES as usize);
    settle();
    assert_eq!(waiting(&m), [entry(ino, 0, DWO_READ)]);
    r.abort();
    settle();
    assert!(waiting(&m).is_empty());

    // EIO injection for waiting readers
    let r1 = spawn_read(&m, ino, 0, BS as usize);
    let r2 = spawn_read(&m, ino, BS, BS as usize);
    settle();
    assert_eq!(
        waiting(&m),
        [entry(ino, 0, DWO_READ), entry(ino, 1, DWO_READ)]
    );
    // bad arguments
    for (off, count, ops, err) in [
        (0, 0, DWO_READ, -5),
        (0, 8192, 0, -5),
        (0, 8192, 8, -5),
        (0, 8192, DWO_READ, 5),
        (0, 8192, DWO_READ, -4096),
        (u64::MAX, 2, DWO_READ, -5),
    ] {
        assert_eq!(
            block_on(m.data_wait_err(ino, ver, off, count, ops, err)),
            Err(Errno::EINVAL)
        );
    }
    assert_eq!(
        block_on(m.data_wait_err(ino, ver + 1, 0, 8192, DWO_READ, -5)),
        Err(Errno::ESTALE)
    );
    // a write mask fails no reader
    assert_eq!(
        block_on(m.data_wait_err(ino, ver, 0, 8192, DWO_WRITE, -5)),
        Ok(0)
    );
    assert_eq!(
        block_on(m.data_wait_err(ino, ver, 0, 2 * BS, DWO_READ, -5)),
        Ok(2)
    );
    settle();
    assert!(waiting(&m).is_empty());
    assert_eq!(r1.try_take().unwrap(), Err(Errno::EIO));
    assert_eq!(r2.try_take().unwrap(), Err(Errno::EIO));

    // waiting on interesting blocks works
    stage_all();
    for base in [0, BLOCKS / 2, BLOCKS - 2] {
        for b in [base, base + 1] {
            release_all();
            let r = spawn_read(&m, ino, b * BS, BS as usize);
            settle();
            assert_eq!(waiting(&m), [entry(ino, b, DWO_READ)]);
            stage_all();
            settle();
            assert!(waiting(&m).is_empty(), "block {b}");
            assert_eq!(
                r.try_take().unwrap().unwrap(),
                &golden[(b * BS) as usize..((b + 1) * BS) as usize]
            );
        }
    }

    // contents match when staging blocks forward, then backwards
    for forward in [true, false] {
        release_all();
        let r = spawn_read(&m, ino, 0, BYTES as usize);
        settle();
        let order: Vec<u64> = if forward {
            (0..BLOCKS).collect()
        } else {
            (0..BLOCKS).rev().collect()
        };
        for b in order {
            let part = &golden[(b * BS) as usize..((b + 1) * BS) as usize];
            block_on(m.stage(ino, ver, b * BS, part)).unwrap();
            settle();
        }
        assert!(waiting(&m).is_empty());
        assert_eq!(r.try_take().unwrap().unwrap(), golden, "forward {forward}");
    }

    // truncate to the same size doesn't wait; truncating does
    release_all();
    let truncate = |size: u64| {
        let m = m.clone();
        handle()
            .spawn(async move {
                let sa = SetAttr {
                    size: Some(size),
                    ..Default::default()
                };
                m.setattr(&Cred::root(), ino, &sa).await
            })
            .unwrap()
    };
    let t = truncate(BYTES);
    settle();
    assert!(t.try_take().unwrap().is_ok());
    assert!(waiting(&m).is_empty());
    let t = truncate(BS);
    settle();
    assert_eq!(waiting(&m), [entry(ino, 0, DWO_CHANGE_SIZE)]);
    stage_all();
    settle();
    assert!(waiting(&m).is_empty());
    assert_eq!(t.try_take().unwrap().unwrap().size, BS);

    // writing waits, then overwrites the staged data
    block_on(m.write(ino, 0, &golden)).unwrap();
    let ver = vers(&m, ino);
    let other = bytes(BYTES as usize, 43);
    block_on(m.release_data(ino, 0, BYTES, ver)).unwrap();
    let w = {
        let m = m.clone();
        let other = other.clone();
        handle()
            .spawn(async move { m.write(ino, 0, &other).await })
            .unwrap()
    };
    settle();
    assert_eq!(waiting(&m), [entry(ino, 0, DWO_WRITE)]);
    block_on(m.stage(ino, ver, 0, &golden)).unwrap();
    settle();
    assert_eq!(w.try_take().unwrap(), Ok(BYTES as usize));
    assert_eq!(read_all(&m, ino), other);
    assert!(vers(&m, ino) != ver, "the write moved data_version");
}

// ---- simple-inode-index ----

fn walk(m: &Mount, index: WalkIndex) -> Vec<WalkEntry> {
    block_on(m.walk_inodes(index, WalkEntry::default(), WalkEntry::MAX, 1 << 20)).unwrap()
}

fn major_of(m: &Mount, index: WalkIndex, ino: u64) -> Option<u64> {
    let found: Vec<_> = walk(m, index)
        .into_iter()
        .filter(|e| e.ino == ino)
        .collect();
    assert!(found.len() <= 1, "one entry per inode: {found:?}");
    found.first().map(|e| e.major)
}

#[test]
fn simple_inode_index() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let sync = || block_on(m.sync()).unwrap();

    // dirs don't appear in data_seq walks
    let dir = block_on(m.mkdir(&root(), ROOT, b"dir", 0o755)).unwrap().ino;
    sync();
    assert_eq!(major_of(&m, WalkIndex::DataSeq, dir), None);
    assert!(major_of(&m, WalkIndex::MetaSeq, dir).is_some());

    // two created files are present and come after each other
    let first = block_on(m.create(&root(), dir, b"first", 0o644))
        .unwrap()
        .ino;
    sync();
    let second = block_on(m.create(&root(), dir, b"second", 0o644))
        .unwrap()
        .ino;
    sync();
    let a = major_of(&m, WalkIndex::DataSeq, first).expect("first");
    let b = major_of(&m, WalkIndex::DataSeq, second).expect("second");
    assert!(a < b);

    // unlinked entries are not present
    let victim = block_on(m.create(&root(), dir, b"victim", 0o644))
        .unwrap()
        .ino;
    block_on(m.unlink(&root(), dir, b"victim")).unwrap();
    sync();
    assert_eq!(major_of(&m, WalkIndex::DataSeq, victim), None);
    assert_eq!(major_of(&m, WalkIndex::MetaSeq, victim), None);

    // dirty inodes are not present: the walk stops at the stable seq
    let dirty = block_on(m.create(&root(), dir, b"dirty", 0o644))
        .unwrap()
        .ino;
    assert_eq!(major_of(&m, WalkIndex::MetaSeq, dirty), None);
    let stable = block_on(m.stable_seq()).unwrap();
    assert!(walk(&m, WalkIndex::MetaSeq)
        .iter()
        .all(|e| e.major <= stable));
    sync();
    assert!(major_of(&m, WalkIndex::MetaSeq, dirty).is_some());

    // changing metadata increases meta_seq, not data_seq
    let f = block_on(m.create(&root(), dir, b"meta_file", 0o644))
        .unwrap()
        .ino;
    sync();
    let (meta0, data0) = (
        major_of(&m, WalkIndex::MetaSeq, f).unwrap(),
        major_of(&m, WalkIndex::DataSeq, f).unwrap(),
    );
    block_on(m.setxattr(&root(), f, b"user.scoutfs-testing.meta_seq", b"1", 0)).unwrap();
    sync();
    assert!(major_of(&m, WalkIndex::MetaSeq, f).unwrap() > meta0);
    assert_eq!(major_of(&m, WalkIndex::DataSeq, f).unwrap(), data0);

    // changing contents increases data_seq
    block_on(m.write(f, 0, b"first contents")).unwrap();
    sync();
    let before = major_of(&m, WalkIndex::DataSeq, f).unwrap();
    block_on(m.write(f, 14, b"more contents")).unwrap();
    sync();
    assert!(major_of(&m, WalkIndex::DataSeq, f).unwrap() > before);

    // release and stage move meta_seq but not data_seq
    let g = create_file(&m, "g", &bytes(8192, 3));
    sync();
    let d = major_of(&m, WalkIndex::DataSeq, g).unwrap();
    let mm = major_of(&m, WalkIndex::MetaSeq, g).unwrap();
    release(&m, g, 0, 8192).unwrap();
    sync();
    assert_eq!(major_of(&m, WalkIndex::DataSeq, g), Some(d));
    assert!(major_of(&m, WalkIndex::MetaSeq, g).unwrap() > mm);

    // concurrent-ish updates keep single entries (major_of checks), and
    // walking in small pages gives the whole walk
    for round in 0..5u8 {
        for n in 0..20u8 {
            let name = format!("file-{n}");
            match block_on(m.lookup(&root(), dir, name.as_bytes())) {
                Ok(a) => {
                    block_on(m.write(a.ino, 0, &[round])).unwrap();
                }
                Err(_) => {
                    block_on(m.create(&root(), dir, name.as_bytes(), 0o644)).unwrap();
                }
            }
        }
        sync();
    }
    for index in [WalkIndex::MetaSeq, WalkIndex::DataSeq] {
        let all = walk(&m, index);
        let mut inos: Vec<u64> = all.iter().map(|e| e.ino).collect();
        inos.sort();
        inos.dedup();
        assert_eq!(inos.len(), all.len(), "one entry per inode");
        assert!(all.windows(2).all(|w| w[0] < w[1]), "in order");
        let mut paged = Vec::new();
        let mut from = WalkEntry::default();
        loop {
            let page = block_on(m.walk_inodes(index, from, WalkEntry::MAX, 3)).unwrap();
            let Some(l) = page.last() else { break };
            from = WalkEntry {
                ino: l.ino + 1,
                ..*l
            };
            paged.extend(page);
        }
        assert_eq!(paged, all);
        // a bounded walk returns exactly the entries in the bounds
        let lo = all[all.len() / 3];
        let hi = all[2 * all.len() / 3];
        let part = block_on(m.walk_inodes(index, lo, hi, 1 << 20)).unwrap();
        let want: Vec<_> = all
            .iter()
            .filter(|e| **e >= lo && **e <= hi)
            .copied()
            .collect();
        assert_eq!(part, want);
    }
}

// ---- the on-disk format ----

/// Offline extents on a real volume: they survive a remount and read
/// back through the real client (online parts), and fsck stays clean.
#[test]
fn offline_extents_on_disk_are_fsck_clean() {
    let vol = RealVol::new(
        256 << 20,
        256 << 20,
        7,
        common::test_node_options(Default::default()),
    );
    let golden = bytes(300 << 10, 5);
    let ino;
    {
        let (m, node) = vol.mount();
        ino = create_file(&m, "file", &golden);
        release(&m, ino, 16 * BS, 32 * BS).unwrap();
        block_on(m.sync()).unwrap();
        stage(
            &m,
            ino,
            16 * BS,
            &golden[16 * BS as usize..32 * BS as usize],
        )
        .unwrap();
        drop(m);
        block_on(node.unmount()).unwrap();
    }
    vol.fsck();
    {
        let (m, node) = vol.mount();
        let e = extents(&m, ino);
        assert!(e.contains(&offline(32, 16)), "{e:?}");
        assert!(e
            .iter()
            .all(|e| e.flags & SEF_OFFLINE == 0 || e.start == 32));
        let st = block_on(m.stat_more(ino)).unwrap();
        assert_eq!((st.online_blocks, st.offline_blocks), (75 - 16, 16));
        let head = block_on(m.read(ino, 0, 32 * BS as usize)).unwrap();
        assert_eq!(head, &golden[..32 * BS as usize]);
        let tail = block_on(m.read(ino, 48 * BS, 1 << 20)).unwrap();
        assert_eq!(tail, &golden[48 * BS as usize..]);
        drop(m);
        block_on(node.unmount()).unwrap();
    }
    vol.fsck();
}

// ---- the control xattrs front ends carry ----

#[test]
fn control_xattrs_drive_the_archival_operations() {
    use scoutvm_fs::posix::archive_ctl::{ctl_get, ctl_set, is_ctl, walk_name};
    let v = Vol::new();
    let (m, _be) = v.mount();
    let m = Rc::new(m);
    let c = root();
    let golden = bytes(8192, 77);
    let ino = create_file(&m, "f", &golden);
    let get = |name: &str| {
        block_on(ctl_get(&m, &c, ino, name.as_bytes())).map(|v| String::from_utf8(v).unwrap())
    };
    let set = |name: &str, val: &[u8]| block_on(ctl_set(&m, &c, ino, name.as_bytes(), val));
    assert!(is_ctl(b"scoutvm.ctl.stat") && !is_ctl(b"user.x"));

    let stat = get("scoutvm.ctl.stat").unwrap();
    let field = |stat: &str, f: &str| -> u64 {
        stat.lines()
            .find_map(|l| l.strip_prefix(&format!("{f} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    let vers = field(&stat, "data_version");
    assert_eq!(vers, block_on(m.stat_more(ino)).unwrap().data_version);
    assert_eq!(field(&stat, "online_blocks"), 2);

    // release through the channel; a reader waits; listed; staged
    assert_eq!(
        set(
            "scoutvm.ctl.release",
            format!("{} 0 8192", vers + 1).as_bytes()
        ),
        Err(Errno::ESTALE)
    );
    set("scoutvm.ctl.release", format!("{vers} 0 8192").as_bytes()).unwrap();
    let stat = get("scoutvm.ctl.stat").unwrap();
    assert_eq!(field(&stat, "offline_blocks"), 2);
    let r = spawn_read(&m, ino, 4096, 4096);
    settle();
    assert_eq!(
        get("scoutvm.ctl.data_waiting.0.0").unwrap(),
        format!("ino {ino} iblock 1 ops read\n")
    );
    assert_eq!(
        get(&format!("scoutvm.ctl.data_waiting.{ino}.1")).unwrap(),
        ""
    );
    let mut val = format!("{vers} 0\n").into_bytes();
    val.extend_from_slice(&golden);
    set("scoutvm.ctl.stage", &val).unwrap();
    settle();
    assert_eq!(r.try_take().unwrap().unwrap(), &golden[4096..]);
    assert_eq!(get("scoutvm.ctl.data_waiting.0.0").unwrap(), "");

    // data_wait_err fails a waiter with the errno given
    set("scoutvm.ctl.release", format!("{vers} 0 4096").as_bytes()).unwrap();
    let r = spawn_read(&m, ino, 0, 10);
    settle();
    set(
        "scoutvm.ctl.data_wait_err",
        format!("{ino} {vers} 0 4096 1 -5").as_bytes(),
    )
    .unwrap();
    settle();
    assert_eq!(r.try_take().unwrap(), Err(Errno::EIO));

    // walk: the file's data_seq entry once it is stable
    block_on(m.sync()).unwrap();
    let d = block_on(m.stat_more(ino)).unwrap().data_seq;
    let walk = get(&walk_name(
        WalkIndex::DataSeq,
        WalkEntry::default(),
        WalkEntry::MAX,
    ))
    .unwrap();
    assert!(walk.lines().any(|l| l == format!("{d} 0 {ino}")), "{walk}");

    // bad requests
    for (name, val) in [
        ("scoutvm.ctl.release", &b"1 2"[..]),
        ("scoutvm.ctl.release", b"x 0 4096"),
        ("scoutvm.ctl.stage", b"1 0"),
        ("scoutvm.ctl.data_wait_err", b"1 2 3"),
    ] {
        assert_eq!(set(name, val), Err(Errno::EINVAL), "{name}");
    }
    assert_eq!(get("scoutvm.ctl.data_waiting.x.0"), Err(Errno::EINVAL));
    assert_eq!(get("scoutvm.ctl.walk.nope.0.0.1.1"), Err(Errno::EINVAL));
    assert_eq!(get("scoutvm.ctl.nope"), Err(Errno::EOPNOTSUPP));
    assert_eq!(set("scoutvm.ctl.nope", b""), Err(Errno::EOPNOTSUPP));
    let user = Cred {
        uid: 1000,
        ..Cred::root()
    };
    assert_eq!(
        block_on(ctl_set(&m, &user, ino, b"scoutvm.ctl.release", b"0 0 4096")),
        Err(Errno::EPERM)
    );
}

/// Port of the reference stage-multi-part: a released file is staged
/// back in parts, out of order, while a reader of the whole file waits;
/// the reader gets every byte once the last part is in, the data version
/// never moves, every block is online again and the volume is fsck
/// clean after a remount. The reference stages 4 GiB;
/// `SCOUTVM_STAGE_MULTI_PART_MIB` sets the size here (default 16).
#[test]
fn stage_multi_part() {
    let mib: u64 = std::env::var("SCOUTVM_STAGE_MULTI_PART_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let size = mib << 20;
    let vol = RealVol::new(
        256 << 20,
        (size + (64 << 20)).max(256 << 20),
        13,
        common::test_node_options(Default::default()),
    );
    const PART: u64 = 1 << 20;
    let part_bytes = |i: u64| bytes(PART as usize, 1000 + i);
    let ino;
    {
        let (m, node) = vol.mount();
        ino = create_file(&m, "big", &[]);
        for i in 0..mib {
            let n = block_on(m.write(ino, i * PART, &part_bytes(i))).unwrap();
            assert_eq!(n as u64, PART);
        }
        block_on(m.sync()).unwrap();
        let v = vers(&m, ino);
        release(&m, ino, 0, size).unwrap();
        let st = block_on(m.stat_more(ino)).unwrap();
        assert_eq!((st.online_blocks, st.offline_blocks), (0, size / BS));

        // a reader of the whole file waits on the first offline block
        let reader = spawn_read(&m, ino, 0, size as usize);
        settle();
        assert!(!waiting(&m).is_empty(), "the reader waits");

        // the parts in a scattered order: every 5th index mod the count
        let mut order: Vec<u64> = (0..mib).map(|i| (i * 5 + 3) % mib).collect();
        order.sort_unstable();
        order.dedup();
        let mut rest: Vec<u64> = (0..mib).filter(|i| !order.contains(i)).collect();
        order.append(&mut rest);
        let order: Vec<u64> = order.into_iter().rev().collect();
        for (n, &i) in order.iter().enumerate() {
            block_on(m.stage(ino, v, i * PART, &part_bytes(i))).unwrap();
            settle();
            if n + 1 < order.len() {
                assert!(
                    !reader.is_finished(),
                    "the reader finished before part {n} of {mib}"
                );
            }
        }
        let got = block_on(handle().timeout_ns(60_000_000_000, reader))
            .expect("the reader wakes")
            .expect("the reader reads");
        assert_eq!(got.len() as u64, size);
        for i in 0..mib {
            let s = (i * PART) as usize;
            assert!(
                got[s..s + PART as usize] == part_bytes(i)[..],
                "part {i} read back wrong"
            );
        }
        assert!(waiting(&m).is_empty());
        let st = block_on(m.stat_more(ino)).unwrap();
        assert_eq!(st.data_version, v, "staging leaves the data version");
        assert_eq!((st.online_blocks, st.offline_blocks), (size / BS, 0));
        block_on(m.sync()).unwrap();
        drop(m);
        block_on(node.unmount()).unwrap();
    }
    vol.fsck();
    let (m, node) = vol.mount();
    let last = block_on(m.read(ino, size - PART, PART as usize)).unwrap();
    assert!(last == part_bytes(mib - 1), "after a remount");
    drop(m);
    block_on(node.unmount()).unwrap();
}
