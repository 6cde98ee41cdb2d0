//! What an archive restore does to a new file: `setattr_more` (data
//! version, size with an offline extent, ctime, crtime) and
//! `punch_offline` (offline extents back to holes). Ports of the
//! reference tests setattr_more and punch-offline.

mod common;

use common::{block_on, offline, Vol};
use scoutvm_fs::errno::Errno;
use scoutvm_fs::format::items::{DataExtent, SEF_UNWRITTEN};
use scoutvm_fs::posix::archive::SetAttrMore;
use scoutvm_fs::posix::archive_ctl::ctl_set;
use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::posix::types::*;
use scoutvm_fs::runtime::env::Timespec;

const ROOT: u64 = 1;
const BS: u64 = 4096;

fn c() -> Cred {
    Cred::root()
}

fn touch(m: &Mount, name: &str) -> u64 {
    block_on(m.create(&c(), ROOT, name.as_bytes(), 0o644))
        .unwrap()
        .ino
}

fn rm(m: &Mount, name: &str) {
    block_on(m.unlink(&c(), ROOT, name.as_bytes())).unwrap();
}

fn sam(vers: u64, size: u64, offline: bool) -> SetAttrMore {
    SetAttrMore {
        data_version: (vers != 0).then_some(vers),
        size: Some(size),
        offline,
        ..SetAttrMore::default()
    }
}

fn extents(m: &Mount, ino: u64) -> Vec<DataExtent> {
    block_on(m.extents(ino, 0, 10_000)).unwrap()
}

fn vers(m: &Mount, ino: u64) -> u64 {
    block_on(m.stat_more(ino)).unwrap().data_version
}

#[test]
fn setattr_more() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let set = |ino, sa: &SetAttrMore| block_on(m.setattr_more(ino, sa));

    // 0 data_version fails; offline needs a size
    let f = touch(&m, "file");
    let zero = SetAttrMore {
        data_version: Some(0),
        size: Some(1),
        ..SetAttrMore::default()
    };
    assert_eq!(set(f, &zero), Err(Errno::EINVAL));
    assert_eq!(set(f, &sam(1, 0, true)), Err(Errno::EINVAL));
    rm(&m, "file");

    // only regular files
    let d = block_on(m.mkdir(&c(), ROOT, b"dir", 0o755)).unwrap().ino;
    assert_eq!(set(d, &sam(1, 1, false)), Err(Errno::EINVAL));
    let ch = block_on(m.mknod(&c(), ROOT, b"char", S_IFCHR | 0o644, (1 << 8) | 3))
        .unwrap()
        .ino;
    assert_eq!(set(ch, &sam(1, 1, false)), Err(Errno::EINVAL));

    // a non-zero size, or data_version, fails
    let f = touch(&m, "file");
    block_on(m.write(f, 0, b"contents\n")).unwrap();
    assert_eq!(set(f, &sam(1, 1, false)), Err(Errno::EINVAL));
    rm(&m, "file");
    let f = touch(&m, "file");
    let trunc = |size| SetAttr {
        size: Some(size),
        ..SetAttr::default()
    };
    block_on(m.setattr(&c(), f, &trunc(1 << 20))).unwrap();
    block_on(m.setattr(&c(), f, &trunc(0))).unwrap();
    assert_ne!(vers(&m, f), 0);
    assert_eq!(set(f, &sam(1, 1, true)), Err(Errno::EINVAL));
    rm(&m, "file");
    // preallocated blocks count as contents too
    let f = touch(&m, "file");
    block_on(m.fallocate(&c(), f, 1, 0, 8192)).unwrap();
    assert_eq!(extents(&m, f)[0].flags, SEF_UNWRITTEN);
    assert_eq!(set(f, &sam(0, 1, false)), Err(Errno::EINVAL));
    rm(&m, "file");

    // large size and data_version are set; the file reads as a hole
    let f = touch(&m, "file");
    assert_eq!(vers(&m, f), 0, "a new file's data_version");
    set(f, &sam(1, 578437695752307201, false)).unwrap();
    assert_eq!(block_on(m.getattr(f)).unwrap().size, 578437695752307201);
    assert!(extents(&m, f).is_empty());
    rm(&m, "file");
    let f = touch(&m, "file");
    set(f, &sam(578437695752307201, 1, false)).unwrap();
    assert_eq!(vers(&m, f), 578437695752307201);
    assert_eq!(block_on(m.read(f, 0, 10)).unwrap(), [0]);
    rm(&m, "file");

    // ctime and crtime are set (ctime otherwise moves to now)
    let f = touch(&m, "file");
    let t = Timespec {
        sec: 67305985,
        nsec: 999_999_999,
    };
    let r = Timespec {
        sec: 1725670311,
        nsec: 5,
    };
    let sa = SetAttrMore {
        ctime: Some(t),
        crtime: Some(r),
        ..sam(1, 1, false)
    };
    set(f, &sa).unwrap();
    assert_eq!(block_on(m.getattr(f)).unwrap().ctime, t);
    assert_eq!(block_on(m.stat_more(f)).unwrap().crtime, r);
    rm(&m, "file");

    // large offline extents: one, over the whole size, counted
    let f = touch(&m, "file");
    set(f, &sam(1, 10007 * BS, true)).unwrap();
    assert_eq!(extents(&m, f), [offline(0, 10007)]);
    rm(&m, "file");
    let f = touch(&m, "file");
    set(f, &sam(1, 4_000_000_000, true)).unwrap();
    let s = block_on(m.stat_more(f)).unwrap();
    assert_eq!((s.offline_blocks, s.online_blocks), (976563, 0));
    assert_eq!(s.data_version, 1);
    // a restore then stages the archived bytes back
    let golden: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
    block_on(m.stage(f, 1, 0, &golden)).unwrap();
    assert_eq!(block_on(m.read(f, 0, 8192)).unwrap(), golden);
    assert_eq!(block_on(m.stat_more(f)).unwrap().offline_blocks, 976561);
    rm(&m, "file");

    // omitting data_version does not fail
    let f = touch(&m, "file");
    let sa = SetAttrMore {
        size: Some(0),
        ctime: Some(r),
        crtime: Some(r),
        ..SetAttrMore::default()
    };
    set(f, &sa).unwrap();
    assert_eq!(vers(&m, f), 0);

    // through the control channel (root only)
    let g = touch(&m, "g");
    let ctl = |cred: &Cred, val: &str| {
        block_on(ctl_set(&m, cred, g, b"scoutvm.ctl.setattr", val.as_bytes()))
    };
    assert_eq!(
        ctl(&Cred::user(1000, 1000), "7 8192 1 - -"),
        Err(Errno::EPERM)
    );
    assert_eq!(ctl(&c(), "7 8192"), Err(Errno::EINVAL));
    ctl(&c(), "7 8192 1 5.000000006 -").unwrap();
    assert_eq!(extents(&m, g), [offline(0, 2)]);
    assert_eq!(vers(&m, g), 7);
    let t = block_on(m.getattr(g)).unwrap().ctime;
    assert_eq!((t.sec, t.nsec), (5, 6));
}

/// A file of `blocks` preallocated blocks, released.
fn released(m: &Mount, name: &str, blocks: u64) -> (u64, u64) {
    let f = touch(m, name);
    block_on(m.fallocate(&c(), f, 0, 0, blocks * BS)).unwrap();
    let v = vers(m, f);
    block_on(m.release_data(f, 0, blocks * BS, v)).unwrap();
    assert_eq!(extents(m, f), [offline(0, blocks)]);
    (f, v)
}

#[test]
fn punch_offline() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let punch = |f, vers, off, len| block_on(m.punch_offline(f, vers, off, len));

    // directories, empty files, past i_size
    let d = block_on(m.mkdir(&c(), ROOT, b"dir", 0o755)).unwrap().ino;
    assert_eq!(punch(d, 0, 0, BS), Err(Errno::EINVAL));
    let f = touch(&m, "file");
    punch(f, 0, 0, BS).unwrap();
    block_on(m.write(f, 0, &[0u8; 4096])).unwrap();
    let v1 = vers(&m, f);
    punch(f, v1, BS, BS).unwrap();
    // online and unwritten extents stay
    let before = extents(&m, f);
    punch(f, v1, 0, BS).unwrap();
    assert_eq!(extents(&m, f), before);
    rm(&m, "file");
    let f = touch(&m, "file");
    block_on(m.fallocate(&c(), f, 0, 0, 3 * BS)).unwrap();
    let before = extents(&m, f);
    punch(f, vers(&m, f), BS, BS).unwrap();
    assert_eq!(extents(&m, f), before);
    rm(&m, "file");

    // an offline extent gets a hole; its waiters see zeros
    let (f, v) = released(&m, "file", 3);
    punch(f, v, BS, BS).unwrap();
    assert_eq!(extents(&m, f), [offline(0, 1), offline(2, 1)]);
    assert_eq!(block_on(m.stat_more(f)).unwrap().offline_blocks, 2);
    assert_eq!(block_on(m.read(f, BS, 4096)).unwrap(), [0u8; 4096]);
    assert_eq!(vers(&m, f), v, "punch-offline keeps the data_version");

    // unaligned offsets and lengths, a zero length, a stale version fail
    for (off, len) in [
        (4095, BS),
        (1, BS),
        (BS, 409700),
        (BS, 4097),
        (BS, 4095),
        (BS, 1),
        (BS, 0),
    ] {
        assert_eq!(punch(f, v, off, len), Err(Errno::EINVAL), "{off} {len}");
    }
    for bad in [0, v + 1, 9999] {
        assert_eq!(punch(f, bad, 0, BS), Err(Errno::EINVAL));
    }
    assert_eq!(extents(&m, f), [offline(0, 1), offline(2, 1)]);
    rm(&m, "file");

    // crossing several extents, and starting at a hole
    for start in [2, 1] {
        let (f, v) = released(&m, "file", 7);
        for b in [1, 3, 5] {
            punch(f, v, b * BS, BS).unwrap();
        }
        assert_eq!(
            extents(&m, f),
            [offline(0, 1), offline(2, 1), offline(4, 1), offline(6, 1)]
        );
        punch(f, v, start * BS, (5 - start) * BS).unwrap();
        assert_eq!(extents(&m, f), [offline(0, 1), offline(6, 1)]);
        rm(&m, "file");
    }

    // overlapping punches of many extents match a model of the blocks
    let n = 1024u64;
    let (f, v) = released(&m, "file", n);
    let mut model = vec![true; n as usize];
    let hole = |model: &mut Vec<bool>, first: u64, len: u64| {
        punch(f, v, first * BS, len * BS).unwrap();
        for b in first..(first + len).min(n) {
            model[b as usize] = false;
        }
    };
    for h in (1..n).step_by(2) {
        hole(&mut model, h, 1);
    }
    hole(&mut model, 32, 13);
    for h in (6..n).step_by(8) {
        hole(&mut model, h, 1);
    }
    for h in (4..n).step_by(8) {
        hole(&mut model, h, 1);
    }
    hole(&mut model, 127, 48);
    for h in (2..n).step_by(8) {
        hole(&mut model, h, 1);
    }
    let mut want = Vec::new();
    for (b, &off) in model.iter().enumerate() {
        if off {
            want.push(offline(b as u64, 1));
        }
    }
    assert_eq!(extents(&m, f), want);
    assert_eq!(
        block_on(m.stat_more(f)).unwrap().offline_blocks,
        want.len() as u64
    );
    for h in (0..n).step_by(8) {
        hole(&mut model, h, 1);
    }
    assert!(extents(&m, f).is_empty());
    assert_eq!(block_on(m.stat_more(f)).unwrap().offline_blocks, 0);

    // through the control channel
    let (g, v) = released(&m, "g", 2);
    let req = format!("{v} 0 4096");
    block_on(ctl_set(
        &m,
        &c(),
        g,
        b"scoutvm.ctl.punch_offline",
        req.as_bytes(),
    ))
    .unwrap();
    assert_eq!(extents(&m, g), [offline(1, 1)]);
}
