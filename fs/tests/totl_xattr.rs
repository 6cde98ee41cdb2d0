//! `.totl.` xattr totals: a port of the reference test totl-xattr-tag
//! (totals follow adds, updates, removals and inode deletions; bad names
//! and values are refused; a larger population checked against a model),
//! read through the control channel the CLI's `read-xattr-totals` speaks,
//! and the same totals on a real volume across log trees, a log merge
//! into fs_root and a remount.

mod common;

use std::collections::BTreeMap;

use common::{block_on, merge_until_idle, RealVol, Vol};
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::archive_ctl::{ctl_get, next_totals_name};
use scoutvm_fs::posix::mount::{Mount, XattrTotal};
use scoutvm_fs::posix::types::*;

const ROOT: u64 = 1;

fn cred() -> Cred {
    Cred::root()
}

fn touch(m: &Mount, name: &str) -> u64 {
    match block_on(m.create(&cred(), ROOT, name.as_bytes(), 0o644)) {
        Ok(a) => a.ino,
        Err(Errno::EEXIST) => {
            block_on(m.lookup(&cred(), ROOT, name.as_bytes()))
                .unwrap()
                .ino
        }
        Err(e) => panic!("create {name}: {e:?}"),
    }
}

fn set(m: &Mount, ino: u64, name: &str, val: &str) -> Result<(), Errno> {
    block_on(m.setxattr(&cred(), ino, name.as_bytes(), val.as_bytes(), 0))
}

fn rm(m: &Mount, name: &str) {
    block_on(m.unlink(&cred(), ROOT, name.as_bytes())).unwrap();
}

/// What `scoutvm read-xattr-totals` prints (after a sync, as the
/// reference test does), paged through the control channel a few names
/// at a time so the paging is exercised too.
fn read_totals(m: &Mount) -> String {
    block_on(m.sync()).unwrap();
    let mut out = String::new();
    let mut from = [0u64; 3];
    loop {
        let name = format!("scoutvm.ctl.totals.{}.{}.{}", from[0], from[1], from[2]);
        let ans = block_on(ctl_get(m, &cred(), ROOT, name.as_bytes())).unwrap();
        let ans = String::from_utf8(ans).unwrap();
        if ans.is_empty() {
            return out;
        }
        out.push_str(&ans);
        let last = ans.lines().last().unwrap();
        let n: Vec<u64> = last
            .split(" = ")
            .next()
            .unwrap()
            .split('.')
            .map(|s| s.parse().unwrap())
            .collect();
        match next_totals_name([n[0], n[1], n[2]]) {
            Some(f) => from = f,
            None => return out,
        }
    }
}

#[test]
fn totl_xattr_tag() {
    let v = Vol::new();
    let (m, _be) = v.mount();

    // single file
    let f1 = touch(&m, "file-1");
    set(&m, f1, "scoutfs.totl.test.1.2.3", "1").unwrap();
    set(&m, f1, "scoutfs.totl.test.4.5.6", "1").unwrap();
    assert_eq!(read_totals(&m), "1.2.3 = 1, 1\n4.5.6 = 1, 1\n");

    // multiple files add up
    let f2 = touch(&m, "file-2");
    set(&m, f2, "scoutfs.totl.test.1.2.3", "1").unwrap();
    set(&m, f2, "scoutfs.totl.test.4.5.6", "1").unwrap();
    assert_eq!(read_totals(&m), "1.2.3 = 2, 2\n4.5.6 = 2, 2\n");

    // removing an xattr updates the total
    block_on(m.removexattr(&cred(), f2, b"scoutfs.totl.test.4.5.6")).unwrap();
    assert_eq!(read_totals(&m), "1.2.3 = 2, 2\n4.5.6 = 1, 1\n");

    // updating an xattr updates the total
    set(&m, f2, "scoutfs.totl.test.1.2.3", "10").unwrap();
    assert_eq!(read_totals(&m), "1.2.3 = 11, 2\n4.5.6 = 1, 1\n");

    // removing files updates the totals; totals back at zero are gone
    rm(&m, "file-1");
    assert_eq!(read_totals(&m), "1.2.3 = 10, 1\n");
    rm(&m, "file-2");
    assert_eq!(read_totals(&m), "");

    // multiple files and names in one transaction
    for a in 1..=10u64 {
        let ino = touch(&m, &format!("file-{a}"));
        set(&m, ino, "scoutfs.totl.test.1.2.3", &a.to_string()).unwrap();
    }
    assert_eq!(read_totals(&m), "1.2.3 = 55, 10\n");
    for a in 1..=10u64 {
        rm(&m, &format!("file-{a}"));
    }

    // invalid names, then invalid values
    let bad = touch(&m, "invalid");
    for name in [
        "scoutfs.totl.test...",
        "scoutfs.totl.test..2.3",
        "scoutfs.totl.test.1..3",
        "scoutfs.totl.test.1.2.",
        "scoutfs.totl.test.1",
        "scoutfs.totl.test.1.2",
    ] {
        assert_eq!(set(&m, bad, name, "10"), Err(Errno::EINVAL), "{name}");
    }
    for val in ["+1", "10.", "-", "junk10", "10junk"] {
        assert_eq!(
            set(&m, bad, "scoutfs.totl.test.1.2.3", val),
            Err(Errno::EINVAL),
            "{val}"
        );
    }
    rm(&m, "invalid");
    assert_eq!(read_totals(&m), "");

    // a larger population (the reference's, at a tenth): create, update
    // and remove phases, the totals checked against a model every 50
    const NR: u64 = 500;
    const TOTS: u64 = 10;
    const PER_FILE: u64 = 10;
    let mut model: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    let mut inos = BTreeMap::new();
    for i in (0..=NR).step_by(PER_FILE as usize) {
        inos.insert(i / PER_FILE, touch(&m, &format!("lots-{}", i / PER_FILE)));
    }
    let expect = |model: &BTreeMap<u64, (i64, i64)>| -> String {
        model
            .iter()
            .filter(|(_, &(t, c))| (t, c) != (0, 0))
            .map(|(k, (t, c))| format!("{k}.0.0 = {t}, {c}\n"))
            .collect()
    };
    for phase in ["create", "update", "remove"] {
        for i in 0..=NR {
            let ino = inos[&(i / PER_FILE)];
            let t = i % TOTS;
            let n = format!("scoutfs.totl.test-{i}.{t}.0.0");
            let e = model.entry(t).or_default();
            match phase {
                "create" => {
                    set(&m, ino, &n, &i.to_string()).unwrap();
                    e.0 += i as i64;
                    e.1 += 1;
                }
                "update" => {
                    set(&m, ino, &n, &(i * 3).to_string()).unwrap();
                    e.0 += (i * 2) as i64;
                }
                _ => {
                    block_on(m.removexattr(&cred(), ino, n.as_bytes())).unwrap();
                    e.0 -= (i * 3) as i64;
                    e.1 -= 1;
                }
            }
            if i > 0 && i % 50 == 0 {
                assert_eq!(read_totals(&m), expect(&model), "{phase} {i}");
            }
        }
    }
    assert_eq!(read_totals(&m), "");
}

#[test]
fn totals_sum_log_trees_and_fs_root_and_survive_a_merge_and_remount() {
    let vol = RealVol::new(
        256 << 20,
        256 << 20,
        11,
        common::test_node_options(Default::default()),
    );
    let totals = |m: &Mount| -> Vec<XattrTotal> {
        block_on(m.sync()).unwrap();
        block_on(m.read_xattr_totals([0, 0, 0], 1000)).unwrap()
    };
    let want;
    {
        let (m, node) = vol.mount();
        // deltas in several commits (several log tree versions), some
        // cancelling: 7.8.9 sums 1..=20, 1.1.1 comes and goes
        for i in 1..=20u64 {
            let ino = touch(&m, &format!("f{i}"));
            set(&m, ino, "scoutfs.totl.a.7.8.9", &i.to_string()).unwrap();
            set(&m, ino, "scoutfs.totl.b.1.1.1", "5").unwrap();
            if i % 2 == 0 {
                block_on(m.removexattr(&cred(), ino, b"scoutfs.totl.b.1.1.1")).unwrap();
            }
            if i % 5 == 0 {
                block_on(m.sync()).unwrap();
            }
        }
        let ino = touch(&m, "f1");
        set(&m, ino, "scoutfs.totl.c.18446744073709551615.0.2", "0x10").unwrap();
        want = vec![
            XattrTotal {
                name: [1, 1, 1],
                total: 50,
                count: 10,
            },
            XattrTotal {
                name: [7, 8, 9],
                total: 210,
                count: 20,
            },
            XattrTotal {
                name: [u64::MAX, 0, 2],
                total: 16,
                count: 1,
            },
        ];
        assert_eq!(totals(&m), want);
        // from a name on; past the last
        assert_eq!(
            block_on(m.read_xattr_totals([7, 8, 9], 1000)).unwrap(),
            want[1..]
        );
        assert_eq!(
            block_on(m.read_xattr_totals([1, 1, 1], 1)).unwrap(),
            want[..1]
        );
        assert_eq!(next_totals_name([u64::MAX; 3]), None);
        // the merge moves the log trees' deltas into fs_root: same totals
        merge_until_idle(&node);
        assert_eq!(totals(&m), want);
        drop(m);
        block_on(node.unmount()).unwrap();
    }
    vol.fsck();
    let (m, node) = vol.mount();
    assert_eq!(totals(&m), want);
    drop(m);
    block_on(node.unmount()).unwrap();
}
