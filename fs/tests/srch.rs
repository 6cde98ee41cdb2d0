//! srch: `.srch.`-tagged xattrs written to srch files, rotated and
//! compacted by the server, searched with `Mount::search_xattrs`. A port
//! of the reference srch-basic-functionality on a real volume (with a
//! remount and fsck), and a brute-force check: random xattr sets,
//! replaces, removes and unlinks across many commits, rotations and
//! compactions, where every search equals a scan of every inode's xattrs.
//!
//! `SRCH_BENCH_FILES=N cargo test --release -p scoutvm-fs --features sim
//! --test srch -- --ignored --nocapture search_xattrs_bench` times a
//! search over N files (default 100 000).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use common::{block_on, RealVol};
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::posix::types::*;
use scoutvm_fs::runtime::env::{Entropy, SeededEntropy};
use scoutvm_fs::tools::fsck::{fsck, FsckReport};

const ROOT: u64 = 1;
const NAME: &[u8] = b"scoutfs.srch.test";

fn cred() -> Cred {
    Cred::root()
}

/// Options that rotate every commit's srch log file (the reference test
/// forces rotations with a trigger), so compactions run too.
fn vol(seed: u64, meta: u64) -> RealVol {
    let mut o = common::test_node_options(Default::default());
    o.server.srch_rotate_blocks = 1;
    RealVol::new(meta, 64 << 20, seed, o)
}

fn search(m: &Mount, name: &[u8]) -> Vec<u64> {
    let r = block_on(m.search_xattrs(name, 0, u64::MAX, 1 << 20)).unwrap();
    assert_eq!(r.last_ino, u64::MAX, "an uncapped search covers the range");
    r.inos
}

fn report(v: &RealVol) -> FsckReport {
    let rep = fsck(&*v.meta, Some(&*v.data), &mut |_, _, _| {});
    let mut s = String::new();
    rep.render(&mut s).unwrap();
    assert!(rep.is_clean(), "fsck:\n{s}");
    rep
}

fn create(m: &Mount, name: &str) -> u64 {
    block_on(m.create(&cred(), ROOT, name.as_bytes(), 0o644))
        .unwrap()
        .ino
}

fn set(m: &Mount, ino: u64, name: &[u8], val: &[u8]) {
    block_on(m.setxattr(&cred(), ino, name, val, 0)).unwrap();
}

#[test]
fn srch_basic_functionality() {
    let v = vol(41, 256 << 20);
    let inos: Vec<u64>;
    let before_compactions = scoutvm_fs::runtime::counters::get("server.srch_compactions");
    {
        let (m, node) = v.mount();
        // nothing tagged yet; untagged names cannot be searched
        assert!(search(&m, NAME).is_empty());
        assert_eq!(
            block_on(m.search_xattrs(b"user.plain", 0, u64::MAX, 10)).unwrap_err(),
            Errno::EINVAL
        );
        inos = (0..200).map(|i| create(&m, &format!("f{i}"))).collect();
        for (i, &ino) in inos.iter().enumerate() {
            set(&m, ino, NAME, b"1");
            if i % 20 == 0 {
                block_on(m.sync()).unwrap();
            }
        }
        assert_eq!(search(&m, NAME), inos);
        // a new value is not a new entry: parity holds
        for &ino in &inos[..50] {
            set(&m, ino, NAME, b"changed");
        }
        assert_eq!(search(&m, NAME), inos);
        // another tagged name on some files does not show for the first
        let other = b"scoutfs.srch.other";
        for &ino in inos.iter().step_by(7) {
            set(&m, ino, other, b"");
        }
        let sevenths: Vec<u64> = inos.iter().step_by(7).copied().collect();
        assert_eq!(search(&m, other), sevenths);
        assert_eq!(search(&m, NAME), inos);
        // removing the xattr from the even files
        for &ino in inos.iter().step_by(2) {
            block_on(m.removexattr(&cred(), ino, NAME)).unwrap();
        }
        let odd: Vec<u64> = inos.iter().skip(1).step_by(2).copied().collect();
        assert_eq!(search(&m, NAME), odd);
        // unlinked files are gone from the answers
        for i in (1..200).step_by(4) {
            block_on(m.unlink(&cred(), ROOT, format!("f{i}").as_bytes())).unwrap();
        }
        let kept: Vec<u64> = (3..200).step_by(4).map(|i| inos[i]).collect();
        assert_eq!(search(&m, NAME), kept);
        // an inode range answers its part
        let (lo, hi) = (kept[5], kept[20]);
        let r = block_on(m.search_xattrs(NAME, lo, hi, 1000)).unwrap();
        assert_eq!(r.inos, kept[5..=20].to_vec());
        // a capped search covers less and says how far; paging finds all
        let mut paged = Vec::new();
        let mut from = 0u64;
        loop {
            let r = block_on(m.search_xattrs(NAME, from, u64::MAX, 7)).unwrap();
            assert!(r.inos.iter().all(|&i| i >= from && i <= r.last_ino));
            paged.extend(r.inos);
            if r.last_ino == u64::MAX {
                break;
            }
            from = r.last_ino + 1;
        }
        assert_eq!(paged, kept);
        drop(m);
        block_on(node.unmount()).unwrap();
    }
    let rep = report(&v);
    assert!(rep.srch_entries > 0, "entries are on disk");
    assert!(rep.srch_sorted_files > 0, "compactions wrote sorted files");
    let after = scoutvm_fs::runtime::counters::get("server.srch_compactions");
    assert!(after > before_compactions);
    {
        let (m, node) = v.mount();
        let kept: Vec<u64> = (3..200).step_by(4).map(|i| inos[i]).collect();
        assert_eq!(search(&m, NAME), kept);
        // set again on a file it was removed from: found again
        set(&m, inos[0], NAME, b"back");
        let mut want = kept.clone();
        want.insert(0, inos[0]);
        assert_eq!(search(&m, NAME), want);
        drop(m);
        block_on(node.unmount()).unwrap();
    }
    report(&v);
}

/// The control request front ends carry (`scoutvm search-xattrs`).
#[test]
fn search_through_the_control_xattr() {
    use scoutvm_fs::posix::archive_ctl::{ctl_get, parse_search_answer, search_name};
    let v = vol(45, 256 << 20);
    let (m, node) = v.mount();
    let inos: Vec<u64> = (0..30).map(|i| create(&m, &format!("c{i}"))).collect();
    for &ino in &inos[..20] {
        set(&m, ino, NAME, b"x");
    }
    let ask = |req: &str| block_on(ctl_get(&m, &cred(), ROOT, req.as_bytes()));
    let ans = ask(&search_name(0, u64::MAX, "scoutfs.srch.test")).unwrap();
    let (last, got) = parse_search_answer(core::str::from_utf8(&ans).unwrap()).unwrap();
    assert_eq!((last, got), (u64::MAX, inos[..20].to_vec()));
    let ans = ask(&search_name(inos[5], inos[9], "scoutfs.srch.test")).unwrap();
    let (last, got) = parse_search_answer(core::str::from_utf8(&ans).unwrap()).unwrap();
    assert_eq!((last, got), (inos[9], inos[5..=9].to_vec()));
    for bad in [
        "scoutvm.ctl.search.0.10.user.x",
        "scoutvm.ctl.search.0.10",
        "scoutvm.ctl.search.x.10.scoutfs.srch.test",
        "scoutvm.ctl.search.10.0.scoutfs.srch.test",
        "scoutvm.ctl.search.-1.10.scoutfs.srch.test",
    ] {
        assert_eq!(ask(bad).unwrap_err(), Errno::EINVAL, "{bad}");
    }
    assert!(parse_search_answer("last 5\nnot a number\n").is_none());
    assert!(parse_search_answer("").is_none());
    drop(m);
    block_on(node.unmount()).unwrap();
}

/// fsck decodes srch leaves: a leaf whose entry count disagrees with its
/// bytes (crc and header intact) is a finding, not a panic.
#[test]
fn fsck_finds_a_damaged_srch_leaf() {
    use scoutvm_fs::storage::block::{read_super_from, seal_block, BlockCache};
    use scoutvm_fs::storage::dev::BlockDev;
    use scoutvm_fs::storage::srch_file::{leaf_ref, root_files};
    let v = vol(47, 256 << 20);
    {
        let (m, node) = v.mount();
        for i in 0..10 {
            let ino = create(&m, &format!("d{i}"));
            set(&m, ino, NAME, b"1");
        }
        drop(m);
        block_on(node.unmount()).unwrap();
    }
    assert!(report(&v).srch_entries >= 10);
    let sb = read_super_from(&*v.meta).unwrap();
    let mut c = BlockCache::new(
        Box::new(v.meta.clone()),
        Box::new(SeededEntropy::new(1)),
        sb.hdr.fsid,
        1 << 20,
    );
    let files = root_files(&mut c, &sb.srch_root).unwrap();
    let f = files
        .first()
        .expect("the unmount rotated the log file")
        .file;
    let blkno = leaf_ref(&mut c, &f, 0).unwrap().blkno;
    let mut b = vec![0u8; 1 << 16];
    v.meta.read(blkno << 16, &mut b).unwrap();
    let nr = u32::from_le_bytes(b[104..108].try_into().unwrap());
    b[104..108].copy_from_slice(&(nr + 1).to_le_bytes());
    seal_block(&mut b);
    v.meta.write(blkno << 16, &b).unwrap();
    let rep = fsck(&*v.meta, Some(&*v.data), &mut |_, _, _| {});
    assert!(
        rep.findings
            .iter()
            .any(|f| f.blkno == Some(blkno) && f.msg.contains("srch")),
        "{:?}",
        rep.findings
    );
}

/// Every name's search against a scan of every live inode's xattrs.
fn check_all(m: &Mount, live: &BTreeMap<String, u64>, names: &[&[u8]]) {
    let mut scan: BTreeMap<&[u8], BTreeSet<u64>> = BTreeMap::new();
    for &ino in live.values() {
        for n in names {
            match block_on(m.getxattr(&cred(), ino, n)) {
                Ok(_) => {
                    scan.entry(n).or_default().insert(ino);
                }
                Err(Errno::ENODATA) => {}
                Err(x) => panic!("getxattr: {x:?}"),
            }
        }
    }
    for n in names {
        let want: Vec<u64> = scan
            .get(n)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        assert_eq!(search(m, n), want, "name {}", String::from_utf8_lossy(n));
    }
}

#[test]
fn search_equals_brute_force_across_rotations_and_compactions() {
    let mut v = vol(43, 256 << 20);
    let names: [&[u8]; 4] = [
        b"scoutfs.srch.a",
        b"scoutfs.srch.b",
        b"scoutfs.hide.srch.c",
        b"scoutfs.srch.totl.d.1.2.3",
    ];
    let e = SeededEntropy::new(7);
    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    let mut next = 0u64;
    // round 0 keeps every entry in the mount's open log file (the
    // reference's 16-block rotation), the others rotate and compact
    for (round, rotate) in [(0, 16), (1, 1), (2, 2)] {
        v.opts.server.srch_rotate_blocks = rotate;
        let (m, node) = v.mount();
        for step in 0..600 {
            let r = e.next_u64();
            let fname = format!("f{}", r % 40);
            let name = names[(r >> 8) as usize % names.len()];
            match (r >> 16) % 10 {
                0 => {
                    if live.remove(&fname).is_some() {
                        block_on(m.unlink(&cred(), ROOT, fname.as_bytes())).unwrap();
                    }
                }
                1..=5 => {
                    let ino = *live.entry(fname.clone()).or_insert_with(|| {
                        next += 1;
                        create(&m, &fname)
                    });
                    set(&m, ino, name, format!("{}", r % 1000).as_bytes());
                }
                _ => {
                    if let Some(&ino) = live.get(&fname) {
                        match block_on(m.removexattr(&cred(), ino, name)) {
                            Ok(()) | Err(Errno::ENODATA) => {}
                            Err(x) => panic!("removexattr: {x:?}"),
                        }
                    }
                }
            }
            if step % 25 == 24 {
                block_on(m.sync()).unwrap();
            }
            if step % 150 == 149 {
                check_all(&m, &live, &names);
            }
        }
        check_all(&m, &live, &names);
        drop(m);
        block_on(node.unmount()).unwrap();
        let rep = report(&v);
        assert!(rep.srch_files > 0, "round {round}: srch files on disk");
    }
    assert!(next > 0);
}

/// Time a search over many files (ignored: run by hand, see the module
/// comment). Every file has the searched xattr; a second name is on a
/// tenth of them.
#[test]
#[ignore]
fn search_xattrs_bench() {
    let n: u64 = std::env::var("SRCH_BENCH_FILES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let meta = (n * 4096).max(512 << 20);
    let mut o = common::test_node_options(Default::default());
    o.trans.cache_budget_bytes = 64 << 20;
    // merges run in the background, as on a real node
    o.merge_poll_ns = scoutvm_fs::client::node::NodeOptions::default().merge_poll_ns;
    let v = RealVol::new(meta, 64 << 20, 9, o);
    let (m, node) = v.mount();
    let t = Instant::now();
    let mut dirs = Vec::new();
    for d in 0..n.div_ceil(10_000) {
        dirs.push(
            block_on(m.mkdir(&cred(), ROOT, format!("d{d}").as_bytes(), 0o755))
                .unwrap()
                .ino,
        );
    }
    for i in 0..n {
        let dir = dirs[(i / 10_000) as usize];
        let ino = block_on(m.create(&cred(), dir, format!("f{i}").as_bytes(), 0o644))
            .unwrap()
            .ino;
        set(&m, ino, NAME, b"");
        if i % 10 == 0 {
            set(&m, ino, b"scoutfs.srch.tenth", b"");
        }
        if i % 5000 == 4999 {
            block_on(m.sync()).unwrap();
        }
    }
    block_on(m.sync()).unwrap();
    println!("created {n} files with srch xattrs in {:.1?}", t.elapsed());
    let t = Instant::now();
    let found = search(&m, NAME);
    let all = t.elapsed();
    assert_eq!(found.len() as u64, n);
    let t = Instant::now();
    let tenth = search(&m, b"scoutfs.srch.tenth");
    let small = t.elapsed();
    assert_eq!(tenth.len() as u64, n.div_ceil(10));
    let t = Instant::now();
    let none = search(&m, b"scoutfs.srch.absent");
    let empty = t.elapsed();
    assert!(none.is_empty());
    println!(
        "search-xattrs over {n} files: all {n} found in {all:.1?} ({:.0} inodes/s), \
         a tenth in {small:.1?}, an absent name in {empty:.1?}",
        n as f64 / all.as_secs_f64()
    );
    drop(m);
    block_on(node.unmount()).unwrap();
    let rep = report(&v);
    println!(
        "{} srch files ({} sorted), {} entries; {:?}",
        rep.srch_files,
        rep.srch_sorted_files,
        rep.srch_entries,
        scoutvm_fs::runtime::counters::snapshot_prefix("server.srch")
    );
}
