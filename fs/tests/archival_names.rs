//! Inode -> names: `referring_entries` (scoutfs get-referring-entries)
//! and `ino_path`, from the LINK_BACKREF items every link writes. A port
//! of the reference test get-referring-entries, with the names checked
//! against a brute-force walk of the namespace, and the control xattrs
//! that carry both.

mod common;

use std::collections::BTreeSet;

use common::{block_on, Vol};
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::archive::ReferringEntry;
use scoutvm_fs::posix::archive_ctl::{ctl_get, parse_named_record};
use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::posix::types::*;

const ROOT: u64 = 1;

fn c() -> Cred {
    Cred::root()
}

/// All referring entries, paged two at a time through the cursor.
fn gre(m: &Mount, ino: u64) -> Vec<ReferringEntry> {
    let (mut dir, mut pos) = (0, 0);
    let mut out: Vec<ReferringEntry> = Vec::new();
    loop {
        let page = block_on(m.referring_entries(ino, dir, pos, 2)).unwrap();
        let Some(last) = page.last() else {
            return out;
        };
        (dir, pos) = (last.dir, last.pos + 1);
        out.extend(page);
    }
}

fn names(m: &Mount, ino: u64) -> Vec<String> {
    let mut v: Vec<String> = gre(m, ino)
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect();
    v.sort();
    v
}

/// Every path to `ino` found by walking the whole tree (brute force).
fn scan_paths(m: &Mount, dir: u64, prefix: &str, ino: u64, out: &mut BTreeSet<String>) {
    let mut pos = 0;
    loop {
        let ents = block_on(m.readdir(&c(), dir, pos, 64)).unwrap();
        let Some(last) = ents.last() else {
            return;
        };
        pos = last.next_pos;
        for e in ents {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let p = format!("{prefix}{}", String::from_utf8(e.name).unwrap());
            if e.ino == ino {
                out.insert(p.clone());
            }
            if e.dtype == DT_DIR {
                scan_paths(m, e.ino, &format!("{p}/"), ino, out);
            }
        }
    }
}

fn ino_paths(m: &Mount, ino: u64) -> BTreeSet<String> {
    let (mut dir, mut pos) = (0, 0);
    let mut out = BTreeSet::new();
    while let Some(p) = block_on(m.ino_path(ino, dir, pos)).unwrap() {
        (dir, pos) = (p.dir, p.pos + 1);
        assert!(out.insert(String::from_utf8(p.path).unwrap()));
    }
    out
}

#[test]
fn get_referring_entries() {
    let v = Vol::new();
    let (m, _be) = v.mount();

    // root inode and a crazy large unused inode return nothing
    assert!(gre(&m, ROOT).is_empty());
    assert!(gre(&m, 1 << 62).is_empty());
    assert_eq!(block_on(m.ino_path(1 << 62, 0, 0)), Ok(None));

    // basic entry, rename, hard link, removal
    let d0 = block_on(m.mkdir(&c(), ROOT, b"d0", 0o755)).unwrap().ino;
    let ino = block_on(m.create(&c(), d0, b"file", 0o644)).unwrap().ino;
    assert_eq!(names(&m, ino), ["file"]);
    let e = &gre(&m, ino)[0];
    assert_eq!((e.dir, e.ino, e.dtype), (d0, ino, DT_REG));
    block_on(m.rename(&c(), d0, b"file", d0, b"renamed", 0)).unwrap();
    assert_eq!(names(&m, ino), ["renamed"]);
    block_on(m.rename(&c(), d0, b"renamed", d0, b"file", 0)).unwrap();
    block_on(m.link(&c(), ino, d0, b"link")).unwrap();
    assert_eq!(names(&m, ino), ["file", "link"]);
    block_on(m.unlink(&c(), d0, b"file")).unwrap();
    block_on(m.unlink(&c(), d0, b"link")).unwrap();
    assert!(gre(&m, ino).is_empty());

    // different dirs: the same names as a brute-force walk finds
    let ino = block_on(m.create(&c(), d0, b"file", 0o644)).unwrap().ino;
    for i in 1..=10 {
        let d = block_on(m.mkdir(&c(), d0, format!("dir-{i}").as_bytes(), 0o755))
            .unwrap()
            .ino;
        block_on(m.link(&c(), ino, d, format!("file-{i}").as_bytes())).unwrap();
    }
    let mut found = BTreeSet::new();
    scan_paths(&m, ROOT, "", ino, &mut found);
    assert_eq!(found.len(), 11);
    let scanned: Vec<String> = found
        .iter()
        .map(|p| p.rsplit('/').next().unwrap().to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names(&m, ino), scanned);
    // ino-path: exactly the walk's paths
    assert_eq!(ino_paths(&m, ino), found);
    block_on(m.unlink(&c(), d0, b"file")).unwrap();

    // file types: each entry's type is its DT_* code
    let dir = block_on(m.mkdir(&c(), d0, b"dir", 0o755)).unwrap().ino;
    let kinds = [
        (
            block_on(m.create(&c(), dir, b"file", 0o644)).unwrap(),
            DT_REG,
        ),
        (block_on(m.mkdir(&c(), dir, b"dir", 0o755)).unwrap(), DT_DIR),
        (
            block_on(m.symlink(&c(), dir, b"symlink", b"file")).unwrap(),
            DT_LNK,
        ),
        (
            block_on(m.mknod(&c(), dir, b"char", S_IFCHR | 0o644, (1 << 8) | 3)).unwrap(),
            DT_CHR,
        ),
        (
            block_on(m.mknod(&c(), dir, b"block", S_IFBLK | 0o644, 42 << 8)).unwrap(),
            DT_BLK,
        ),
        (
            block_on(m.mknod(&c(), dir, b"fifo", S_IFIFO | 0o644, 0)).unwrap(),
            DT_FIFO,
        ),
    ];
    for (a, dt) in kinds {
        let e = gre(&m, a.ino);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].dir, e[0].dtype), (dir, dt));
    }

    // all name lengths work
    let dir = block_on(m.mkdir(&c(), d0, b"lens", 0o755)).unwrap().ino;
    let ino = block_on(m.create(&c(), dir, b"file", 0o644)).unwrap().ino;
    let mut want = Vec::new();
    for n in 1..=255 {
        let name = "a".repeat(n);
        block_on(m.link(&c(), ino, dir, name.as_bytes())).unwrap();
        want.push(name);
    }
    block_on(m.unlink(&c(), dir, b"file")).unwrap();
    want.sort();
    assert_eq!(names(&m, ino), want);
    assert_eq!(ino_paths(&m, ino).len(), 255);
}

#[test]
fn ino_path_follows_renames_and_unlinks() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let a = block_on(m.mkdir(&c(), ROOT, b"a", 0o755)).unwrap().ino;
    let b = block_on(m.mkdir(&c(), a, b"b", 0o755)).unwrap().ino;
    let f = block_on(m.create(&c(), b, b"f", 0o644)).unwrap().ino;
    let paths = |m: &Mount| ino_paths(m, f).into_iter().collect::<Vec<_>>();
    assert_eq!(paths(&m), ["a/b/f"]);
    assert_eq!(ino_paths(&m, b).into_iter().collect::<Vec<_>>(), ["a/b"]);
    let x = block_on(m.mkdir(&c(), ROOT, b"x", 0o755)).unwrap().ino;
    block_on(m.rename(&c(), a, b"b", x, b"moved", 0)).unwrap();
    assert_eq!(paths(&m), ["x/moved/f"]);
    // a file in the root: just its name; the root itself: no path
    let g = block_on(m.create(&c(), ROOT, b"g", 0o644)).unwrap().ino;
    assert_eq!(ino_paths(&m, g).into_iter().collect::<Vec<_>>(), ["g"]);
    assert!(ino_paths(&m, ROOT).is_empty());
    // the paths survive a commit and a remount (backrefs are on disk)
    block_on(m.sync()).unwrap();
    drop(m);
    let (m, _be) = v.mount();
    assert_eq!(
        ino_paths(&m, f).into_iter().collect::<Vec<_>>(),
        ["x/moved/f"]
    );
    // unlinked files and directories (still open) have no names
    let open_dir = block_on(m.mkdir(&c(), ROOT, b"gone", 0o755)).unwrap().ino;
    block_on(m.open(&c(), open_dir, 0)).unwrap();
    let h = block_on(m.create(&c(), open_dir, b"h", 0o644)).unwrap().ino;
    block_on(m.unlink(&c(), open_dir, b"h")).unwrap();
    block_on(m.rmdir(&c(), ROOT, b"gone")).unwrap();
    assert!(ino_paths(&m, h).is_empty());
    assert!(gre(&m, open_dir).is_empty());
}

#[test]
fn names_through_the_control_xattrs() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let d = block_on(m.mkdir(&c(), ROOT, b"d", 0o755)).unwrap().ino;
    let f = block_on(m.create(&c(), d, b"odd\nname", 0o644))
        .unwrap()
        .ino;
    // enough long links to need more than one answer
    for i in 0..300 {
        let name = format!("{i:03}{}", "x".repeat(240));
        block_on(m.link(&c(), f, d, name.as_bytes())).unwrap();
    }
    let want: BTreeSet<Vec<u8>> = gre(&m, f).into_iter().map(|e| e.name).collect();
    assert_eq!(want.len(), 301);
    for (req, numbers) in [("referring", 2), ("ino_path", 0)] {
        let (mut dir, mut pos) = (0u64, 0u64);
        let mut got = BTreeSet::new();
        let mut answers = 0;
        loop {
            let name = format!("scoutvm.ctl.{req}.{f}.{dir}.{pos}");
            let ans = block_on(ctl_get(&m, &c(), ROOT, name.as_bytes())).unwrap();
            assert!(ans.len() < 64 << 10);
            if ans.is_empty() {
                break;
            }
            answers += 1;
            let mut rest = &ans[..];
            while !rest.is_empty() {
                let (r, tail) = parse_named_record(rest, numbers).unwrap();
                let (rd, rp, nums, n) = (r.dir, r.pos, r.numbers, r.name);
                rest = tail;
                if numbers == 2 {
                    assert_eq!(nums, [f, DT_REG as u64]);
                    assert!(got.insert(n.to_vec()));
                } else {
                    assert_eq!(&n[..2], b"d/");
                    assert!(got.insert(n[2..].to_vec()));
                }
                (dir, pos) = (rd, rp + 1);
            }
        }
        assert!(answers > 1, "{req}");
        assert_eq!(got, want, "{req}");
    }
    for bad in [
        "scoutvm.ctl.referring.x.0.0",
        "scoutvm.ctl.referring.1.0",
        "scoutvm.ctl.ino_path.1.0.0.0",
    ] {
        assert_eq!(
            block_on(ctl_get(&m, &c(), ROOT, bad.as_bytes())),
            Err(Errno::EINVAL)
        );
    }
    assert_eq!(parse_named_record(b"1 2 3 x\n", 0), None);
    assert_eq!(parse_named_record(b"1 2 3 abc", 0), None);
}
