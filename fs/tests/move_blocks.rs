//! `move_blocks`: extents of a byte range of one file move to another
//! without copying. A port of the reference test move-blocks (argument
//! checks, moves compared against copies made by hand, the final partial
//! block, inode fields, moving backwards, combining files), plus the
//! STAGE flag (into offline extents, waking readers), errors the
//! reference returns that its test does not reach, the control xattr,
//! and a run on a real volume that fsck checks after a remount.

mod common;

use std::rc::Rc;

use common::{block_on, bytes, handle, offline, RealVol, Vol};
use scoutvm_fs::errno::Errno;
use scoutvm_fs::format::items::DataExtent;
use scoutvm_fs::posix::archive::{MoveBlocks, MB_STAGE};
use scoutvm_fs::posix::archive_ctl::ctl_set;
use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::posix::types::*;

const ROOT: u64 = 1;
const BS: u64 = 4096;
const BLOCKS: u64 = 8;
const PART: u64 = 123;
const LEN: u64 = BS * BLOCKS + PART;
const PIECES: u64 = 8;

fn root() -> Cred {
    Cred::root()
}

fn create(m: &Mount, name: &str, data: &[u8]) -> u64 {
    let _ = block_on(m.unlink(&root(), ROOT, name.as_bytes()));
    let ino = block_on(m.create(&root(), ROOT, name.as_bytes(), 0o644))
        .unwrap()
        .ino;
    if !data.is_empty() {
        assert_eq!(block_on(m.write(ino, 0, data)).unwrap(), data.len());
    }
    ino
}

fn read_all(m: &Mount, ino: u64) -> Vec<u8> {
    let size = block_on(m.getattr(ino)).unwrap().size;
    block_on(m.read(ino, 0, size as usize)).unwrap()
}

fn extents(m: &Mount, ino: u64) -> Vec<DataExtent> {
    block_on(m.extents(ino, 0, 10_000)).unwrap()
}

fn vers(m: &Mount, ino: u64) -> u64 {
    block_on(m.stat_more(ino)).unwrap().data_version
}

fn mv(m: &Mount, from: u64, from_off: u64, len: u64, to: u64, to_off: u64) -> Result<(), Errno> {
    let mb = MoveBlocks {
        from,
        from_off,
        len,
        to_off,
        ..MoveBlocks::default()
    };
    block_on(m.move_blocks(&root(), to, &mb))
}

fn stage_mv(
    m: &Mount,
    from: u64,
    from_off: u64,
    len: u64,
    to: u64,
    to_off: u64,
    data_version: u64,
) -> Result<(), Errno> {
    let mb = MoveBlocks {
        from,
        from_off,
        len,
        to_off,
        data_version,
        flags: MB_STAGE,
    };
    block_on(m.move_blocks(&root(), to, &mb))
}

/// The reference's `move_and_compare`: build the expected contents of
/// both files by hand (the source range reads as zeros, its size stays;
/// the target gets the source's bytes of those blocks and grows to hold
/// them), move, and compare.
fn move_and_compare(m: &Mount, from: u64, from_off: u64, len: u64, to: u64, to_off: u64) {
    let (src, dst) = (read_all(m, from), read_all(m, to));
    let start = from_off as usize;
    let end = (from_off + len.div_ceil(BS) * BS).min(src.len() as u64) as usize;
    let mut want_from = src.clone();
    want_from[start..end].fill(0);
    let mut want_to = dst.clone();
    let t_end = to_off as usize + (end - start);
    if want_to.len() < t_end {
        want_to.resize(t_end, 0);
    }
    want_to[to_off as usize..t_end].copy_from_slice(&src[start..end]);
    mv(m, from, from_off, len, to, to_off).unwrap();
    assert_eq!(
        read_all(m, from),
        want_from,
        "source after {from_off}+{len}"
    );
    assert_eq!(read_all(m, to), want_to, "target after {from_off}+{len}");
}

struct Files {
    from: u64,
    to: u64,
    golden: Vec<u8>,
}

fn regenerate(m: &Mount, seed: u64) -> Files {
    let golden = bytes(LEN as usize, seed);
    Files {
        from: create(m, "from", &golden),
        to: create(m, "to", b""),
        golden,
    }
}

#[test]
fn move_blocks_port() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let f = regenerate(&m, 1);
    block_on(m.link(&root(), f.from, ROOT, b"hardlink")).unwrap();

    // wrapped offsets fail
    let huge = 0xffff_ffff_ffff_f000;
    assert_eq!(mv(&m, f.from, huge, 8192, f.to, 0), Err(Errno::EOVERFLOW));
    assert_eq!(mv(&m, f.from, 0, huge, f.to, 8192), Err(Errno::EOVERFLOW));

    // the same file (by its other name) fails
    let hard = block_on(m.lookup(&root(), ROOT, b"hardlink")).unwrap().ino;
    assert_eq!(mv(&m, f.from, 0, BS, hard, 0), Err(Errno::EINVAL));

    // offsets must be multiples of 4 KiB
    assert_eq!(mv(&m, f.from, 1, BS, f.to, 0), Err(Errno::EINVAL));
    assert_eq!(mv(&m, f.from, 0, 1, f.to, 0), Err(Errno::EINVAL));
    assert_eq!(mv(&m, f.from, 0, BS, f.to, 1), Err(Errno::EINVAL));

    // can't move onto an existing extent
    block_on(m.write(f.to, 0, &bytes(BS as usize, 9))).unwrap();
    assert_eq!(mv(&m, f.from, 0, BS, f.to, 0), Err(Errno::EINVAL));
    assert_eq!(read_all(&m, f.from), f.golden, "nothing moved");

    // can't move between files with offline extents
    block_on(m.write(f.to, 0, &[0; BS as usize])).unwrap();
    let tv = vers(&m, f.to);
    block_on(m.release_data(f.to, 0, BS, tv)).unwrap();
    assert_eq!(mv(&m, f.from, 0, BS, f.to, 0), Err(Errno::ENODATA));
    let f = regenerate(&m, 2);
    let fv = vers(&m, f.from);
    block_on(m.release_data(f.from, 0, BS, fv)).unwrap();
    assert_eq!(mv(&m, f.from, 0, BS, f.to, 0), Err(Errno::ENODATA));

    // basic moves work
    let f = regenerate(&m, 3);
    move_and_compare(&m, f.from, 0, BS, f.to, 0);
    let f = regenerate(&m, 4);
    move_and_compare(&m, f.from, 0, BS, f.to, BS);
    let f = regenerate(&m, 5);
    move_and_compare(&m, f.from, 0, LEN, f.to, 0);
    assert_eq!(read_all(&m, f.to), f.golden);
    assert!(extents(&m, f.from).is_empty(), "the source is all hole");
    let st = block_on(m.stat_more(f.from)).unwrap();
    assert_eq!((st.size, st.online_blocks), (LEN, 0), "size stays");
    let st = block_on(m.stat_more(f.to)).unwrap();
    assert_eq!((st.size, st.online_blocks), (LEN, BLOCKS + 1));

    // moving the final partial block sets a partial size
    let f = regenerate(&m, 6);
    move_and_compare(&m, f.from, LEN - PART, PART, f.to, 0);
    assert_eq!(block_on(m.getattr(f.to)).unwrap().size, PART);

    // moving updates inode fields of both files
    let f = regenerate(&m, 7);
    let fields = |ino| {
        let a = block_on(m.getattr(ino)).unwrap();
        let s = block_on(m.stat_more(ino)).unwrap();
        [
            ("ctime", (a.ctime.sec, a.ctime.nsec)),
            ("mtime", (a.mtime.sec, a.mtime.nsec)),
            ("data_version", (s.data_version, 0)),
            ("meta_seq", (s.meta_seq, 0)),
            ("data_seq", (s.data_seq, 0)),
        ]
    };
    let (from_before, to_before) = (fields(f.from), fields(f.to));
    block_on(m.sync()).unwrap();
    v.clock.advance_ns(1_000_000_000);
    move_and_compare(&m, f.from, 0, BS, f.to, 0);
    let (from_after, to_after) = (fields(f.from), fields(f.to));
    for i in 0..from_before.len() {
        assert_ne!(from_before[i], from_after[i], "from {}", from_before[i].0);
        assert_ne!(to_before[i], to_after[i], "to {}", to_before[i].0);
    }

    // moving blocks backwards works
    let f = regenerate(&m, 8);
    move_and_compare(&m, f.from, LEN - PART, PART, f.to, LEN - PART);
    for i in (0..BLOCKS).rev() {
        move_and_compare(&m, f.from, i * BS, BS, f.to, i * BS);
    }
    assert_eq!(read_all(&m, f.to), f.golden);
    assert_eq!(extents(&m, f.to).len(), 1, "adjacent blocks merge");

    // combine many files into one
    let f = regenerate(&m, 9);
    let mut large = Vec::new();
    for i in 0..PIECES {
        let name = format!("from.{i}");
        let piece = bytes((BS * BLOCKS) as usize, 100 + i);
        let p = create(&m, &name, &piece);
        large.extend_from_slice(&piece);
        move_and_compare(&m, p, 0, BS * BLOCKS, f.to, i * BS * BLOCKS);
    }
    large.extend_from_slice(&f.golden);
    move_and_compare(&m, f.from, 0, LEN, f.to, PIECES * BS * BLOCKS);
    assert_eq!(read_all(&m, f.to), large);
}

#[test]
fn move_blocks_errors_the_reference_test_does_not_reach() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let f = regenerate(&m, 1);
    let d = block_on(m.mkdir(&root(), ROOT, b"dir", 0o755)).unwrap().ino;
    let s = block_on(m.symlink(&root(), ROOT, b"sym", b"from"))
        .unwrap()
        .ino;

    // directories are EISDIR, other files EINVAL, either way round
    block_on(m.create(&root(), d, b"entry", 0o644)).unwrap();
    assert!(block_on(m.getattr(d)).unwrap().size > 0);
    assert_eq!(mv(&m, d, 0, BS, f.to, 0), Err(Errno::EISDIR));
    assert_eq!(mv(&m, f.from, 0, BS, d, 0), Err(Errno::EISDIR));
    assert_eq!(mv(&m, f.from, 0, BS, s, 0), Err(Errno::EINVAL));
    // unknown flags
    let mb = MoveBlocks {
        from: f.from,
        len: BS,
        flags: 2,
        ..MoveBlocks::default()
    };
    assert_eq!(
        block_on(m.move_blocks(&root(), f.to, &mb)),
        Err(Errno::EINVAL)
    );
    // past the source's size, or nothing: nothing to do
    mv(&m, f.from, 16 * BS, BS, f.to, 0).unwrap();
    mv(&m, f.from, 0, 0, f.to, 0).unwrap();
    assert_eq!(block_on(m.getattr(f.to)).unwrap().size, 0);
    // the target could not be that large
    assert_eq!(
        mv(&m, f.from, 0, BS, f.to, (i64::MAX as u64) & !(BS - 1)),
        Err(Errno::EFBIG)
    );
    // a partial length must end at the source's size
    assert_eq!(mv(&m, f.from, 0, BS + 1, f.to, 0), Err(Errno::EINVAL));
    // both files need write permission
    let user = Cred {
        uid: 1000,
        gid: 1000,
        groups: vec![],
    };
    let mb = MoveBlocks {
        from: f.from,
        len: BS,
        ..MoveBlocks::default()
    };
    assert_eq!(
        block_on(m.move_blocks(&user, f.to, &mb)),
        Err(Errno::EACCES)
    );
    assert_eq!(read_all(&m, f.from), f.golden, "nothing moved");

    // an overlap part way: the pieces before it moved (as the reference)
    block_on(m.write(f.to, 4 * BS, &[7; BS as usize])).unwrap();
    // two extents in the source so that the first moves on its own
    mv(&m, f.from, 2 * BS, BS, f.to, 20 * BS).unwrap();
    assert_eq!(mv(&m, f.from, 0, 8 * BS, f.to, 0), Err(Errno::EINVAL));
    let moved: Vec<_> = extents(&m, f.to).iter().map(|e| e.start).collect();
    assert_eq!(moved, [0, 4, 20], "blocks 0-1 moved, 4 was in the way");
    assert_eq!(
        block_on(m.read(f.to, 0, 2 * BS as usize)).unwrap(),
        &f.golden[..2 * BS as usize]
    );
}

#[test]
fn stage_flag_moves_into_offline_extents() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let m = Rc::new(m);
    let golden = bytes((16 * BS) as usize, 11);
    let target = create(&m, "target", &golden);
    let tv = vers(&m, target);
    block_on(m.release_data(target, 4 * BS, 8 * BS, tv)).unwrap();
    assert_eq!(extents(&m, target)[1], offline(4, 8));
    let scratch = create(&m, "scratch", &golden[4 * BS as usize..12 * BS as usize]);
    let sv = vers(&m, scratch);

    // a reader of the offline range waits
    let reader = {
        let m = m.clone();
        handle()
            .spawn(async move { m.read(target, 4 * BS, (8 * BS) as usize).await })
            .unwrap()
    };
    block_on(async { handle().sleep_ns(1_000_000).await });
    assert_eq!(m.data_waiting(0, 0, 10).len(), 1);

    // a stale data_version, a range that is not offline, a move without
    // the flag: refused, nothing moved
    assert_eq!(
        stage_mv(&m, scratch, 0, 8 * BS, target, 4 * BS, tv + 1),
        Err(Errno::ESTALE)
    );
    assert_eq!(
        stage_mv(&m, scratch, 0, 8 * BS, target, 3 * BS, tv),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        stage_mv(&m, scratch, 0, 8 * BS, target, 16 * BS, tv),
        Err(Errno::EINVAL),
        "a hole past the end is not offline"
    );
    assert_eq!(
        mv(&m, scratch, 0, 8 * BS, target, 4 * BS),
        Err(Errno::ENODATA)
    );
    assert_eq!(block_on(m.stat_more(target)).unwrap().offline_blocks, 8);

    // in two parts, out of order
    stage_mv(&m, scratch, 4 * BS, 4 * BS, target, 8 * BS, tv).unwrap();
    assert_eq!(block_on(m.stat_more(target)).unwrap().offline_blocks, 4);
    stage_mv(&m, scratch, 0, 4 * BS, target, 4 * BS, tv).unwrap();
    block_on(async { handle().sleep_ns(1_000_000).await });
    assert_eq!(
        reader.try_take().unwrap().unwrap(),
        &golden[4 * BS as usize..12 * BS as usize],
        "the waiting reader got the staged bytes"
    );
    assert!(m.data_waiting(0, 0, 10).is_empty());
    let t = block_on(m.stat_more(target)).unwrap();
    assert_eq!(
        (t.data_version, t.online_blocks, t.offline_blocks, t.size),
        (tv, 16, 0, 16 * BS),
        "the target's data_version stays"
    );
    assert_eq!(read_all(&m, target), golden);
    let s = block_on(m.stat_more(scratch)).unwrap();
    assert_ne!(s.data_version, sv, "the source's data_version moves");
    assert_eq!((s.online_blocks, s.size), (0, 8 * BS));
}

#[test]
fn control_xattr_moves_blocks() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let f = regenerate(&m, 3);
    let set = |req: &str| {
        block_on(ctl_set(
            &m,
            &root(),
            f.to,
            b"scoutvm.ctl.move_blocks",
            req.as_bytes(),
        ))
    };
    assert_eq!(set(&format!("{} 0 4096 0 0", f.from)), Err(Errno::EINVAL));
    assert_eq!(
        set(&format!("{} 0 4096 0 0 0 9", f.from)),
        Err(Errno::EINVAL)
    );
    assert_eq!(set(&format!("{} 1 4096 0 0 0", f.from)), Err(Errno::EINVAL));
    set(&format!("{} 4096 4096 0 0 0", f.from)).unwrap();
    assert_eq!(read_all(&m, f.to), &f.golden[BS as usize..2 * BS as usize]);
    let user = Cred {
        uid: 1000,
        gid: 1000,
        groups: vec![],
    };
    let r = block_on(ctl_set(
        &m,
        &user,
        f.to,
        b"scoutvm.ctl.move_blocks",
        format!("{} 0 4096 4096 0 0", f.from).as_bytes(),
    ));
    assert_eq!(r, Err(Errno::EPERM), "changing requests need root");
}

/// Moves (plain and staged) on a real volume: commits in between, fsck
/// clean after unmount, and everything reads back after a remount.
#[test]
fn moved_extents_on_disk_are_fsck_clean() {
    let vol = RealVol::new(
        256 << 20,
        256 << 20,
        7,
        common::test_node_options(Default::default()),
    );
    let golden = bytes((64 * BS + PART) as usize, 5);
    let (from, to, target, tv);
    {
        let (m, node) = vol.mount();
        from = create(&m, "from", &golden);
        to = create(&m, "to", b"");
        target = create(&m, "target", &golden);
        tv = vers(&m, target);
        block_on(m.release_data(target, 0, 64 * BS, tv)).unwrap();
        block_on(m.sync()).unwrap();
        // the second half into `to`, the final partial block with it
        mv(&m, from, 32 * BS, 32 * BS + PART, to, 0).unwrap();
        block_on(m.sync()).unwrap();
        // a scratch copy of the first half staged into `target`
        let scratch = create(&m, "scratch", &golden[..32 * BS as usize]);
        stage_mv(&m, scratch, 0, 32 * BS, target, 0, tv).unwrap();
        drop(m);
        block_on(node.unmount()).unwrap();
    }
    vol.fsck();
    {
        let (m, node) = vol.mount();
        let half = 32 * BS as usize;
        let mut want_from = golden.clone();
        want_from[half..].fill(0);
        assert_eq!(read_all(&m, from), want_from);
        assert_eq!(read_all(&m, to), &golden[half..]);
        let t = block_on(m.stat_more(target)).unwrap();
        assert_eq!((t.online_blocks, t.offline_blocks), (33, 32));
        assert_eq!(block_on(m.read(target, 0, half)).unwrap(), &golden[..half]);
        drop(m);
        block_on(node.unmount()).unwrap();
    }
    vol.fsck();
}
