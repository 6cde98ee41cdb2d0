//! `.indx.` xattrs: a port of the reference test basic-xattr-indx (bad
//! names and values refused; index entries appear with the xattr and go
//! with its removal and with the inode), read through `read_xattr_index`
//! and the control request the CLI speaks, on a real volume across a log
//! merge and a remount, checked against a model.

mod common;

use std::collections::BTreeSet;

use common::{block_on, merge_until_idle, RealVol};
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::archive_ctl::ctl_get;
use scoutvm_fs::posix::mount::{IndxEntry, Mount};
use scoutvm_fs::posix::types::*;

const ROOT: u64 = 1;

fn cred() -> Cred {
    Cred::root()
}

fn touch(m: &Mount, name: &str) -> u64 {
    block_on(m.create(&cred(), ROOT, name.as_bytes(), 0o644))
        .unwrap()
        .ino
}

fn set(m: &Mount, ino: u64, name: &str, val: &str) -> Result<(), Errno> {
    block_on(m.setxattr(&cred(), ino, name.as_bytes(), val.as_bytes(), 0))
}

const ALL_FIRST: IndxEntry = IndxEntry {
    major: 0,
    minor: 0,
    ino: 0,
};
const ALL_LAST: IndxEntry = IndxEntry {
    major: u8::MAX,
    minor: u64::MAX,
    ino: u64::MAX,
};

fn index(m: &Mount) -> Vec<IndxEntry> {
    block_on(m.sync()).unwrap();
    block_on(m.read_xattr_index(ALL_FIRST, ALL_LAST, 100_000)).unwrap()
}

/// The whole index through the control request, two lines at a time.
fn index_via_ctl(m: &Mount) -> Vec<IndxEntry> {
    block_on(m.sync()).unwrap();
    let mut out = Vec::new();
    let mut from = (0u8, 0u64, 0u64);
    loop {
        let name = format!(
            "scoutvm.ctl.indx.{}.{}.{}.255.{}.{}",
            from.0,
            from.1,
            from.2,
            u64::MAX,
            u64::MAX
        );
        let ans = block_on(ctl_get(m, &cred(), ROOT, name.as_bytes())).unwrap();
        let ans = String::from_utf8(ans).unwrap();
        if ans.is_empty() {
            return out;
        }
        for line in ans.lines() {
            let f: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
            assert_eq!(f.len(), 3, "{line}");
            let e = IndxEntry {
                major: f[0] as u8,
                minor: f[1],
                ino: f[2],
            };
            out.push(e);
            from = match e.ino.checked_add(1) {
                Some(i) => (e.major, e.minor, i),
                None => return out,
            };
        }
    }
}

#[test]
fn basic_xattr_indx() {
    let vol = RealVol::new(
        256 << 20,
        256 << 20,
        12,
        common::test_node_options(Default::default()),
    );
    let mut model: BTreeSet<IndxEntry> = BTreeSet::new();
    {
        let (m, node) = vol.mount();
        let f = touch(&m, "f");
        // bad names and values (the reference's checks)
        for bad in [
            "scoutfs.indx.a",                        // no position
            "scoutfs.indx.a.1",                      // no minor
            "scoutfs.indx.a.256.1",                  // major past u8
            "scoutfs.indx.a.1.18446744073709551616", // minor past u64
            "scoutfs.indx.a.x.1",
            "scoutfs.indx.a.1.-1",
            "scoutfs.totl.indx.a.1.1", // totl and indx together
        ] {
            assert_eq!(set(&m, f, bad, ""), Err(Errno::EINVAL), "{bad}");
        }
        assert_eq!(
            set(&m, f, "scoutfs.indx.a.1.2", "value"),
            Err(Errno::EINVAL),
            "an indx xattr's value must be empty"
        );
        assert!(index(&m).is_empty());

        // entries come with the xattrs, once per position per inode
        let mut files = Vec::new();
        for i in 0..40u64 {
            let ino = touch(&m, &format!("g{i}"));
            let (major, minor) = ((i % 3) as u8, i * 7 % 11);
            set(&m, ino, &format!("scoutfs.indx.t.{major}.{minor}"), "").unwrap();
            // a second name at the same position: one entry
            set(&m, ino, &format!("scoutfs.indx.u.{major}.{minor}"), "").unwrap();
            model.insert(IndxEntry { major, minor, ino });
            files.push((ino, major, minor));
            if i % 10 == 9 {
                block_on(m.sync()).unwrap();
            }
        }
        set(&m, f, "scoutfs.indx.z.255.18446744073709551615", "").unwrap();
        model.insert(IndxEntry {
            major: 255,
            minor: u64::MAX,
            ino: f,
        });
        let want: Vec<IndxEntry> = model.iter().copied().collect();
        assert_eq!(index(&m), want);
        assert_eq!(index_via_ctl(&m), want);
        // a range
        let lo = IndxEntry {
            major: 1,
            minor: 0,
            ino: 0,
        };
        let hi = IndxEntry {
            major: 1,
            minor: u64::MAX,
            ino: u64::MAX,
        };
        let ones: Vec<IndxEntry> = want.iter().copied().filter(|e| e.major == 1).collect();
        assert!(!ones.is_empty());
        assert_eq!(block_on(m.read_xattr_index(lo, hi, 1000)).unwrap(), ones);
        assert_eq!(
            block_on(m.read_xattr_index(lo, hi, 2)).unwrap(),
            ones[..2],
            "capped"
        );
        assert_eq!(block_on(m.read_xattr_index(hi, lo, 10)), Err(Errno::EINVAL));

        // removal of one name keeps the other's entry; of both drops it;
        // deleting the inode drops its entries
        for (n, &(ino, major, minor)) in files.iter().enumerate() {
            match n % 4 {
                0 => {
                    block_on(m.removexattr(
                        &cred(),
                        ino,
                        format!("scoutfs.indx.t.{major}.{minor}").as_bytes(),
                    ))
                    .unwrap();
                }
                1 => {
                    for t in ["t", "u"] {
                        block_on(m.removexattr(
                            &cred(),
                            ino,
                            format!("scoutfs.indx.{t}.{major}.{minor}").as_bytes(),
                        ))
                        .unwrap();
                    }
                    model.remove(&IndxEntry { major, minor, ino });
                }
                2 => {
                    block_on(m.unlink(&cred(), ROOT, format!("g{n}").as_bytes())).unwrap();
                    model.remove(&IndxEntry { major, minor, ino });
                }
                _ => {}
            }
        }
        let want: Vec<IndxEntry> = model.iter().copied().collect();
        assert_eq!(index(&m), want);
        merge_until_idle(&node);
        assert_eq!(index(&m), want, "after the merge into fs_root");
        block_on(node.unmount()).unwrap();
    }
    let (m, node) = vol.mount();
    let want: Vec<IndxEntry> = model.iter().copied().collect();
    assert_eq!(index_via_ctl(&m), want, "after a remount");
    block_on(node.unmount()).unwrap();
    drop(m);
    vol.fsck();
}
