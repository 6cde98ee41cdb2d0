//! Crash injection through the whole stack: a POSIX workload with syncs
//! and log merges runs over the real server and client on two RAM disks
//! that record every write and flush in one shared order. Then, for
//! thousands of crash points (every write, or an even sample), the disks a
//! power cut would leave (unflushed writes all lost, all kept, or a random
//! subset with one 64 KiB write torn) must pass fsck, mount (recovering
//! the dead mount and any merge in flight), show exactly the namespace of
//! the last completed sync or of the sync in flight (so fsync'ed data is
//! never lost), and unmount clean.
//!
//! `SCOUTVM_PERSIST_CRASH_POINTS` sets the number of crash points
//! (default 3000); `SCOUTVM_PERSIST_CRASH_OPS` the workload length.

mod common;
use common::*;
use scoutvm_fs::client::node::mount_volume;
use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::posix::types::*;
use scoutvm_fs::runtime::env::{Entropy, SeededEntropy};
use scoutvm_fs::sim::faultdev::{FaultDev, LossPolicy, MultiCrashImages, TraceOp};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

const META: u64 = 8 << 30;
const DATA: u64 = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    mode: u32,
    size: u64,
    nlink: u32,
    /// File contents, or a symlink's target.
    data: Vec<u8>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

type Snap = BTreeMap<Vec<u8>, Entry>;

fn walk(m: &Mount) -> Snap {
    let c = Cred::root();
    let mut out = Snap::new();
    let mut todo = vec![(1u64, b"/".to_vec())];
    while let Some((dir, path)) = todo.pop() {
        let mut pos = 0;
        loop {
            let ents = block_on(m.readdir(&c, dir, pos, 64)).expect("readdir");
            if ents.is_empty() {
                break;
            }
            for e in ents {
                pos = e.next_pos;
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let mut p = path.clone();
                p.extend_from_slice(&e.name);
                let a = block_on(m.getattr(e.ino)).expect("getattr");
                let data = match a.mode & S_IFMT {
                    S_IFREG => block_on(m.read(e.ino, 0, a.size as usize)).expect("read"),
                    S_IFLNK => block_on(m.readlink(e.ino)).expect("readlink"),
                    _ => Vec::new(),
                };
                let mut xattrs = BTreeMap::new();
                for n in block_on(m.listxattr(&c, e.ino)).expect("listxattr") {
                    let v = block_on(m.getxattr(&c, e.ino, &n)).expect("getxattr");
                    xattrs.insert(n, v);
                }
                if a.mode & S_IFMT == S_IFDIR {
                    let mut sub = p.clone();
                    sub.push(b'/');
                    todo.push((e.ino, sub));
                }
                out.insert(
                    p,
                    Entry {
                        mode: a.mode,
                        size: a.size,
                        nlink: a.nlink,
                        data,
                        xattrs,
                    },
                );
            }
        }
    }
    out
}

/// A sync of the recorded run: trace positions when it started and when
/// it returned, and the namespace it made durable.
struct SyncPoint {
    start: usize,
    end: usize,
    snap: Snap,
}

struct Recorded {
    bases: Vec<Rc<scoutvm_fs::sim::faultdev::PageMap>>,
    trace: Vec<(usize, TraceOp)>,
    syncs: Vec<SyncPoint>,
}

fn opts() -> scoutvm_fs::client::node::NodeOptions {
    test_node_options(MountOptions::default())
}

fn record(seed: u64, ops: usize) -> Recorded {
    let (meta, data) = small_volume(META, DATA, seed);
    use scoutvm_fs::storage::dev::BlockDev;
    meta.flush().unwrap();
    data.flush().unwrap();
    let bases = vec![meta.durable_pages(), data.durable_pages()];
    let trace = Rc::new(RefCell::new(Vec::new()));
    meta.start_shared_trace(0, trace.clone());
    data.start_shared_trace(1, trace.clone());
    let clock = Rc::new(scoutvm_fs::runtime::env::ManualClock::new(Timespec {
        sec: 1_700_000_000,
        nsec: 0,
    }));
    let ent: Rc<dyn Entropy> = Rc::new(SeededEntropy::new(seed));
    let (m, node) = block_on(mount_volume(
        meta.clone(),
        data.clone(),
        clock,
        ent,
        handle(),
        opts(),
    ))
    .unwrap();
    let c = Cred::root();
    let rng = SeededEntropy::new(seed ^ 0x5eed);
    let r = |n: u64| rng.next_u64() % n;
    let mut dirs: Vec<u64> = vec![1];
    // files created since the last sync: their blocks are not mapped by
    // anything durable, so writing them in place is crash safe; committed
    // files are only changed at block boundaries (a partial block would
    // be overwritten in place, which scoutfs does not make atomic)
    let mut unsynced: std::collections::BTreeSet<u64> = Default::default();
    let mut files: Vec<(u64, Vec<u8>, u64)> = Vec::new();
    let mut syncs = vec![SyncPoint {
        start: 0,
        end: 0,
        snap: walk(&m),
    }];
    let mut name_nr = 0u64;
    let mut fresh = || {
        name_nr += 1;
        format!("n{name_nr}").into_bytes()
    };
    for i in 0..ops {
        match r(10) {
            0..=2 => {
                let dir = dirs[r(dirs.len() as u64) as usize];
                let name = fresh();
                let a = block_on(m.create(&c, dir, &name, 0o644)).unwrap();
                let len = r(40_000) as usize;
                let bytes: Vec<u8> = (0..len).map(|j| (j as u64 ^ a.ino) as u8 | 1).collect();
                block_on(m.write(a.ino, 0, &bytes)).unwrap();
                files.push((dir, name, a.ino));
                unsynced.insert(a.ino);
            }
            3 => {
                let dir = dirs[r(dirs.len() as u64) as usize];
                let a = block_on(m.mkdir(&c, dir, &fresh(), 0o755)).unwrap();
                dirs.push(a.ino);
            }
            4 if !files.is_empty() => {
                let (_, _, ino) = files[r(files.len() as u64) as usize].clone();
                let size = block_on(m.getattr(ino)).unwrap().size;
                if unsynced.contains(&ino) || size.is_multiple_of(4096) {
                    let bytes = vec![(i as u8) | 1; r(9000) as usize];
                    block_on(m.write(ino, size, &bytes)).unwrap();
                }
            }
            5 if !files.is_empty() => {
                let k = r(files.len() as u64) as usize;
                let (dir, name, ino) = files[k].clone();
                let nd = dirs[r(dirs.len() as u64) as usize];
                let nn = fresh();
                block_on(m.rename(&c, dir, &name, nd, &nn, 0)).unwrap();
                files[k] = (nd, nn, ino);
            }
            6 if !files.is_empty() => {
                let (dir, name, _) = files.swap_remove(r(files.len() as u64) as usize);
                block_on(m.unlink(&c, dir, &name)).unwrap();
            }
            7 if !files.is_empty() => {
                let (_, _, ino) = files[r(files.len() as u64) as usize].clone();
                let v = vec![b'v'; r(2000) as usize];
                block_on(m.setxattr(&c, ino, format!("user.x{}", r(3)).as_bytes(), &v, 0)).unwrap();
            }
            8 if !files.is_empty() => {
                let (_, _, ino) = files[r(files.len() as u64) as usize].clone();
                let size = block_on(m.getattr(ino)).unwrap().size;
                let new = if unsynced.contains(&ino) {
                    size / 2
                } else {
                    (size / 2) & !4095
                };
                let sa = SetAttr {
                    size: Some(new),
                    ..SetAttr::default()
                };
                block_on(m.setattr(&c, ino, &sa)).unwrap();
            }
            _ => {
                let dir = dirs[r(dirs.len() as u64) as usize];
                let target = vec![b't'; 1 + r(300) as usize];
                block_on(m.symlink(&c, dir, &fresh(), &target)).unwrap();
            }
        }
        if i % 6 == 5 {
            let start = trace.borrow().len();
            block_on(m.sync()).unwrap();
            unsynced.clear();
            let end = trace.borrow().len();
            syncs.push(SyncPoint {
                start,
                end,
                snap: walk(&m),
            });
            if syncs.len() % 3 == 0 {
                node.request_merge();
            }
            // merge work lands between syncs: crash points inside it
            for _ in 0..3 {
                if !block_on(node.merge_once()).unwrap() {
                    break;
                }
            }
        }
    }
    assert_eq!(
        node.trans().counters().commits as usize,
        syncs.len() - 1,
        "the workload committed outside its syncs"
    );
    let start = trace.borrow().len();
    drop(m);
    block_on(node.unmount()).unwrap();
    let end = trace.borrow().len();
    let last = syncs.last().unwrap().snap.clone();
    syncs.push(SyncPoint {
        start,
        end,
        snap: last,
    });
    assert_fsck_clean(&*meta, Some(&*data));
    meta.stop_shared_trace();
    data.stop_shared_trace();
    let trace = trace.borrow().clone();
    Recorded {
        bases,
        trace,
        syncs,
    }
}

/// The namespaces a crash at trace position `pos` may leave.
fn allowed(rec: &Recorded, pos: usize) -> Vec<&Snap> {
    let i = rec.syncs.iter().rposition(|s| s.end <= pos).unwrap_or(0);
    let mut out = vec![&rec.syncs[i].snap];
    if let Some(next) = rec.syncs.get(i + 1) {
        if next.start <= pos {
            out.push(&next.snap);
        }
    }
    out
}

fn describe(a: &Snap, b: &Snap) -> String {
    let mut s = String::new();
    for (k, v) in a {
        match b.get(k) {
            None => s += &format!("only in fs: {}\n", String::from_utf8_lossy(k)),
            Some(w) if w != v => {
                s += &format!(
                    "differs: {} ({} vs {} bytes)\n",
                    String::from_utf8_lossy(k),
                    v.size,
                    w.size
                )
            }
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            s += &format!("missing: {}\n", String::from_utf8_lossy(k));
        }
    }
    s
}

fn check_point(
    rec: &Recorded,
    imgs: Vec<FaultDev>,
    pos: usize,
    write: u64,
    policy: LossPolicy,
    deep: bool,
) {
    let mut imgs = imgs.into_iter();
    let meta = Rc::new(imgs.next().unwrap());
    let data = Rc::new(imgs.next().unwrap());
    let (clean, text) = fsck_text(&*meta, Some(&*data));
    assert!(
        clean,
        "crash after write {write} ({policy:?}): image not clean:\n{text}"
    );
    let clock = Rc::new(scoutvm_fs::runtime::env::ManualClock::new(Timespec {
        sec: 1_800_000_000,
        nsec: 0,
    }));
    let ent: Rc<dyn Entropy> = Rc::new(SeededEntropy::new(write));
    let (m, node) = block_on(mount_volume(
        meta.clone(),
        data.clone(),
        clock,
        ent,
        handle(),
        opts(),
    ))
    .unwrap_or_else(|e| panic!("crash after write {write} ({policy:?}): mount failed: {e:?}"));
    let got = walk(&m);
    let ok = allowed(rec, pos);
    if !ok.iter().any(|s| **s == got) {
        if std::env::var("CRASH_DEBUG").is_ok() {
            for (i, s) in rec.syncs.iter().enumerate() {
                eprintln!("sync {i}: {}..{}", s.start, s.end);
            }
            for (i, (d, op)) in rec.trace.iter().enumerate().take(pos + 3) {
                match op {
                    TraceOp::Write { off, data } => {
                        eprintln!("{i}: dev {d} write {} +{}", off / 4096, data.len() / 4096)
                    }
                    TraceOp::Flush => eprintln!("{i}: dev {d} flush"),
                }
            }
            for s in &ok {
                for (k, v) in got.iter() {
                    if let Some(w) = s.get(k) {
                        if w != v {
                            let first = v.data.iter().zip(&w.data).position(|(a, b)| a != b);
                            eprintln!(
                                "{}: first differing byte {first:?} xattrs eq {}",
                                String::from_utf8_lossy(k),
                                v.xattrs == w.xattrs
                            );
                        }
                    }
                }
            }
        }
        panic!(
            "crash after write {write} ({policy:?}): namespace is neither the last sync nor the one in flight:\n{}",
            describe(&got, ok.last().unwrap())
        );
    }
    if deep {
        // the recovered volume takes new work, merges and unmounts clean
        let a = block_on(m.create(&Cred::root(), 1, b"after-crash", 0o644)).unwrap();
        block_on(m.write(a.ino, 0, b"new")).unwrap();
        block_on(m.sync()).unwrap();
        block_on(node.start_merge()).unwrap();
        while block_on(node.merge_once()).unwrap() {}
    }
    drop(m);
    block_on(node.unmount()).unwrap();
    let (clean, text) = fsck_text(&*meta, Some(&*data));
    assert!(
        clean,
        "crash after write {write} ({policy:?}): not clean after recovery:\n{text}"
    );
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn crash_at_any_write_recovers_the_last_sync() {
    let points = env_num("SCOUTVM_PERSIST_CRASH_POINTS", 3000);
    let ops = env_num("SCOUTVM_PERSIST_CRASH_OPS", 480) as usize;
    let rec = record(1, ops);
    let merged = scoutvm_fs::runtime::counters::get("log_merge.completions").unwrap_or(0);
    let finished = scoutvm_fs::runtime::counters::get("log_merge.finished").unwrap_or(0);
    assert!(
        merged > 0 && finished > 0,
        "the recorded run merged nothing: no crash points inside merges"
    );
    let mut imgs = MultiCrashImages::new(vec![META, DATA], rec.bases.clone(), rec.trace.clone());
    let total = imgs.total_writes();
    // positions of the writes in the trace
    let write_pos: Vec<usize> = rec
        .trace
        .iter()
        .enumerate()
        .filter(|(_, (_, op))| matches!(op, TraceOp::Write { .. }))
        .map(|(i, _)| i)
        .collect();
    let stride = (total / points.max(1)).max(1);
    let mut checked = 0u64;
    let t0 = std::time::Instant::now();
    while let Some((n, _dev)) = imgs.advance() {
        if (n - 1) % stride != 0 && n != total {
            continue;
        }
        let pos = write_pos[(n - 1) as usize];
        let policy = match n % 3 {
            0 => LossPolicy::LoseAll,
            1 => LossPolicy::KeepAll,
            _ => LossPolicy::Random {
                seed: n,
                tear: true,
            },
        };
        check_point(
            &rec,
            imgs.images(policy),
            pos,
            n,
            policy,
            checked.is_multiple_of(50),
        );
        checked += 1;
    }
    eprintln!(
        "{checked} crash points of {total} writes ({} syncs) in {:?}",
        rec.syncs.len(),
        t0.elapsed()
    );
    assert!(checked >= points.min(total) / 2);
}
