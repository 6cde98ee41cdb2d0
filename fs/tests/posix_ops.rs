//! Targeted tests of each POSIX operation: results, errnos, and the items
//! they leave in the volume.

mod common;

use common::{block_on, Vol};
use scoutvm_fs::errno::Errno;
use scoutvm_fs::format::hash::dirent_name_hash;
use scoutvm_fs::format::items::{
    backref_key, dirent_key, inode_index_key, inode_key, orphan_key, readdir_key, totl_key, Dirent,
    InodeItem, TotlVal,
};
use scoutvm_fs::format::key::{ty, zone};
use scoutvm_fs::posix::hold::CommitPolicy;
use scoutvm_fs::posix::mount::MountOptions;
use scoutvm_fs::posix::types::*;
use scoutvm_fs::sim::mem_backend::MemMkfs;

const ROOT: u64 = 1;

fn root() -> Cred {
    Cred::root()
}

fn names(m: &scoutvm_fs::posix::mount::Mount, dir: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let ents = block_on(m.readdir(&root(), dir, pos, 3)).unwrap();
        if ents.is_empty() {
            break;
        }
        for e in ents {
            pos = e.next_pos;
            out.push(String::from_utf8(e.name).unwrap());
        }
    }
    out
}

#[test]
fn create_lookup_readdir_unlink() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let a = block_on(m.create(&root(), ROOT, b"a", 0o644)).unwrap();
    assert_eq!(a.mode, S_IFREG | 0o644);
    assert_eq!((a.nlink, a.size, a.uid), (1, 0, 0));
    assert!(a.ino >= 1024);
    let b = block_on(m.mkdir(&root(), ROOT, b"dir", 0o755)).unwrap();
    assert_eq!((b.nlink, b.mode), (2, S_IFDIR | 0o755));
    let r = block_on(m.getattr(ROOT)).unwrap();
    assert_eq!(r.nlink, 3);
    assert_eq!(r.size, 4, "dir size is the sum of name lengths");
    assert_eq!(block_on(m.lookup(&root(), ROOT, b"a")).unwrap().ino, a.ino);
    assert_eq!(
        block_on(m.lookup(&root(), ROOT, b"nope")),
        Err(Errno::ENOENT)
    );
    assert_eq!(block_on(m.lookup(&root(), ROOT, b".")).unwrap().ino, ROOT);
    assert_eq!(block_on(m.lookup(&root(), b.ino, b"..")).unwrap().ino, ROOT);
    assert_eq!(
        block_on(m.lookup(&root(), a.ino, b"x")),
        Err(Errno::ENOTDIR)
    );
    assert_eq!(
        block_on(m.create(&root(), ROOT, b"a", 0o644)),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        block_on(m.create(&root(), ROOT, &[b'x'; 256], 0o644)),
        Err(Errno::ENAMETOOLONG)
    );
    assert_eq!(
        block_on(m.create(&root(), ROOT, b"", 0o644)),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        block_on(m.create(&root(), ROOT, b"a/b", 0o644)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        block_on(m.mkdir(&root(), ROOT, b"..", 0o755)),
        Err(Errno::EEXIST)
    );
    assert_eq!(names(&m, ROOT), [".", "..", "a", "dir"]);
    let ents = block_on(m.readdir(&root(), ROOT, 0, 10)).unwrap();
    assert_eq!(ents[2].dtype, DT_REG);
    assert_eq!(ents[3].dtype, DT_DIR);
    assert_eq!(ents[1].ino, ROOT);

    assert_eq!(
        block_on(m.unlink(&root(), ROOT, b"dir")),
        Err(Errno::EISDIR)
    );
    assert_eq!(block_on(m.rmdir(&root(), ROOT, b"a")), Err(Errno::ENOTDIR));
    assert_eq!(block_on(m.unlink(&root(), ROOT, b".")), Err(Errno::EISDIR));
    assert_eq!(block_on(m.rmdir(&root(), ROOT, b".")), Err(Errno::EINVAL));
    assert_eq!(
        block_on(m.rmdir(&root(), ROOT, b"..")),
        Err(Errno::ENOTEMPTY)
    );
    block_on(m.create(&root(), b.ino, b"inner", 0o600)).unwrap();
    assert_eq!(
        block_on(m.rmdir(&root(), ROOT, b"dir")),
        Err(Errno::ENOTEMPTY)
    );
    block_on(m.unlink(&root(), b.ino, b"inner")).unwrap();
    block_on(m.rmdir(&root(), ROOT, b"dir")).unwrap();
    block_on(m.unlink(&root(), ROOT, b"a")).unwrap();
    assert_eq!(block_on(m.getattr(a.ino)), Err(Errno::ENOENT));
    let r = block_on(m.getattr(ROOT)).unwrap();
    assert_eq!((r.nlink, r.size), (2, 0));
    assert_eq!(names(&m, ROOT), [".", ".."]);
    block_on(m.sync()).unwrap();
    // only the root's items are left
    let keys: Vec<String> = v.store.items().keys().map(|k| format!("{k}")).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(v.store.inode_count(), 1);
}

#[test]
fn items_are_laid_out_as_scoutfs_stores_them() {
    for fmt in [1u64, 2] {
        let v = Vol::with(
            MemMkfs {
                fmt_vers: fmt,
                ..MemMkfs::default()
            },
            MountOptions::default(),
        );
        let (m, be) = v.mount();
        let seq = scoutvm_fs::posix::backend::Backend::trans_seq(&*be);
        let f = block_on(m.create(&root(), ROOT, b"file", 0o640)).unwrap();
        block_on(m.sync()).unwrap();
        let items = v.store.items();
        let hash = dirent_name_hash(b"file");
        let d = Dirent::decode(&items[&dirent_key(ROOT, hash, 2)]).unwrap();
        assert_eq!(
            (d.ino, d.hash, d.pos, d.dtype, &d.name[..]),
            (f.ino, hash, 2, 4, &b"file"[..])
        );
        assert_eq!(
            items[&readdir_key(ROOT, 2)],
            items[&dirent_key(ROOT, hash, 2)]
        );
        assert_eq!(
            items[&backref_key(f.ino, ROOT, 2)],
            items[&dirent_key(ROOT, hash, 2)]
        );
        let ino_val = &items[&inode_key(f.ino)];
        assert_eq!(ino_val.len(), if fmt == 1 { 160 } else { 168 });
        let i = InodeItem::decode(ino_val).unwrap();
        assert_eq!(
            (i.meta_seq, i.data_seq, i.nlink, i.mode),
            (seq, seq, 1, S_IFREG | 0o640)
        );
        assert!(items.contains_key(&inode_index_key(ty::INODE_INDEX_META_SEQ, seq, f.ino)));
        assert!(items.contains_key(&inode_index_key(ty::INODE_INDEX_DATA_SEQ, seq, f.ino)));
        // the root moved its META_SEQ index item from 0 to this seq
        assert!(!items.contains_key(&inode_index_key(ty::INODE_INDEX_META_SEQ, 0, ROOT)));
        assert!(items.contains_key(&inode_index_key(ty::INODE_INDEX_META_SEQ, seq, ROOT)));
        let r = InodeItem::decode(&items[&inode_key(ROOT)]).unwrap();
        assert_eq!((r.next_readdir_pos, r.size, r.meta_seq), (3, 4, seq));
        // a change in the next transaction moves the index items
        let seq2 = scoutvm_fs::posix::backend::Backend::trans_seq(&*be);
        assert!(seq2 > seq);
        block_on(m.write(f.ino, 0, b"hello")).unwrap();
        block_on(m.sync()).unwrap();
        let items = v.store.items();
        assert!(!items.contains_key(&inode_index_key(ty::INODE_INDEX_DATA_SEQ, seq, f.ino)));
        assert!(items.contains_key(&inode_index_key(ty::INODE_INDEX_DATA_SEQ, seq2, f.ino)));
        assert!(items.contains_key(&inode_index_key(ty::INODE_INDEX_META_SEQ, seq2, f.ino)));
        let data_index: Vec<_> = items
            .keys()
            .filter(|k| k.zone == zone::INODE_INDEX && k.ty == ty::INODE_INDEX_DATA_SEQ)
            .map(|k| (k.second, k.third))
            .collect();
        assert_eq!(data_index, [(seq2, f.ino)]);
        let a = block_on(m.getattr(f.ino)).unwrap();
        assert_eq!((a.data_seq, a.meta_seq, a.data_version), (seq2, seq2, 1));
    }
}

#[test]
fn rename_semantics() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let c = root();
    let d1 = block_on(m.mkdir(&c, ROOT, b"d1", 0o755)).unwrap().ino;
    let d2 = block_on(m.mkdir(&c, ROOT, b"d2", 0o755)).unwrap().ino;
    let sub = block_on(m.mkdir(&c, d1, b"sub", 0o755)).unwrap().ino;
    let f = block_on(m.create(&c, d1, b"f", 0o644)).unwrap().ino;
    let g = block_on(m.create(&c, d2, b"g", 0o644)).unwrap().ino;

    // plain move of a file across dirs
    block_on(m.rename(&c, d1, b"f", d2, b"f2", 0)).unwrap();
    assert_eq!(block_on(m.lookup(&c, d2, b"f2")).unwrap().ino, f);
    assert_eq!(block_on(m.lookup(&c, d1, b"f")), Err(Errno::ENOENT));
    assert_eq!(block_on(m.getattr(d1)).unwrap().size, 3);
    assert_eq!(block_on(m.getattr(d2)).unwrap().size, 3);
    // over an existing file: the target goes away
    block_on(m.rename(&c, d2, b"f2", d2, b"g", 0)).unwrap();
    assert_eq!(block_on(m.getattr(g)), Err(Errno::ENOENT));
    assert_eq!(block_on(m.lookup(&c, d2, b"g")).unwrap().ino, f);
    assert_eq!(block_on(m.getattr(d2)).unwrap().size, 1);
    // a dir moves: parents' nlink and its ".." follow
    block_on(m.rename(&c, d1, b"sub", d2, b"sub", 0)).unwrap();
    assert_eq!(block_on(m.getattr(d1)).unwrap().nlink, 2);
    assert_eq!(block_on(m.getattr(d2)).unwrap().nlink, 3);
    assert_eq!(block_on(m.lookup(&c, sub, b"..")).unwrap().ino, d2);
    // into its own subtree, onto its parent chain
    assert_eq!(
        block_on(m.rename(&c, ROOT, b"d2", sub, b"x", 0)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        block_on(m.rename(&c, ROOT, b"d2", d2, b"x", 0)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        block_on(m.rename(&c, sub, b"..", ROOT, b"x", 0)),
        Err(Errno::EBUSY)
    );
    block_on(m.create(&c, sub, b"deep", 0o644)).unwrap();
    assert_eq!(
        block_on(m.rename(&c, sub, b"deep", ROOT, b"d2", 0)),
        Err(Errno::ENOTEMPTY)
    );
    // type mismatches
    assert_eq!(
        block_on(m.rename(&c, d2, b"sub", d2, b"g", 0)),
        Err(Errno::ENOTDIR)
    );
    assert_eq!(
        block_on(m.rename(&c, d2, b"g", d2, b"sub", 0)),
        Err(Errno::EISDIR)
    );
    // dir over non-empty dir, then over an empty one
    let e = block_on(m.mkdir(&c, d1, b"empty", 0o755)).unwrap().ino;
    assert_eq!(
        block_on(m.rename(&c, d1, b"empty", d2, b"sub", 0)),
        Err(Errno::ENOTEMPTY)
    );
    block_on(m.unlink(&c, sub, b"deep")).unwrap();
    block_on(m.rename(&c, d1, b"empty", d2, b"sub", 0)).unwrap();
    assert_eq!(block_on(m.getattr(sub)), Err(Errno::ENOENT));
    assert_eq!(block_on(m.lookup(&c, d2, b"sub")).unwrap().ino, e);
    assert_eq!(block_on(m.getattr(d1)).unwrap().nlink, 2);
    assert_eq!(block_on(m.getattr(d2)).unwrap().nlink, 3);
    // same inode: nothing happens
    block_on(m.link(&c, f, d1, b"hard")).unwrap();
    block_on(m.rename(&c, d1, b"hard", d2, b"g", 0)).unwrap();
    assert_eq!(block_on(m.lookup(&c, d1, b"hard")).unwrap().ino, f);
    assert_eq!(block_on(m.getattr(f)).unwrap().nlink, 2);
    // flags
    assert_eq!(
        block_on(m.rename(&c, d1, b"hard", d2, b"g", RENAME_NOREPLACE)),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        block_on(m.rename(&c, d1, b"hard", d2, b"zz", RENAME_EXCHANGE)),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        block_on(m.rename(&c, d1, b"hard", d2, b"g", 3)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        block_on(m.rename(&c, d1, b"hard", d2, b"..", RENAME_NOREPLACE)),
        Err(Errno::EEXIST)
    );
    // exchange a file and a dir across dirs
    block_on(m.unlink(&c, d1, b"hard")).unwrap();
    let h = block_on(m.create(&c, d1, b"h", 0o644)).unwrap().ino;
    block_on(m.rename(&c, d1, b"h", d2, b"sub", RENAME_EXCHANGE)).unwrap();
    assert_eq!(block_on(m.lookup(&c, d1, b"h")).unwrap().ino, e);
    assert_eq!(block_on(m.lookup(&c, d2, b"sub")).unwrap().ino, h);
    assert_eq!(block_on(m.getattr(d1)).unwrap().nlink, 3);
    assert_eq!(block_on(m.getattr(d2)).unwrap().nlink, 2);
    assert_eq!(block_on(m.lookup(&c, e, b"..")).unwrap().ino, d1);
    assert_eq!(names(&m, d1), [".", "..", "h"]);
    block_on(m.sync()).unwrap();
    let (m2, _) = v.mount();
    drop(m);
    assert_eq!(names(&m2, d2), [".", "..", "g", "sub"]);
}

#[test]
fn sticky_dirs_and_permissions() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let c = root();
    let alice = Cred::user(1000, 1000);
    let bob = Cred::user(1001, 1001);
    assert_eq!(
        block_on(m.create(&alice, ROOT, b"x", 0o644)),
        Err(Errno::EACCES)
    );
    let tmp = block_on(m.mkdir(&c, ROOT, b"tmp", 0o1777)).unwrap().ino;
    let af = block_on(m.create(&alice, tmp, b"af", 0o644)).unwrap();
    assert_eq!((af.uid, af.gid), (1000, 1000));
    assert_eq!(block_on(m.unlink(&bob, tmp, b"af")), Err(Errno::EPERM));
    assert_eq!(
        block_on(m.rename(&bob, tmp, b"af", tmp, b"bf", 0)),
        Err(Errno::EPERM)
    );
    block_on(m.create(&bob, tmp, b"bf", 0o644)).unwrap();
    assert_eq!(
        block_on(m.rename(&alice, tmp, b"af", tmp, b"bf", 0)),
        Err(Errno::EPERM)
    );
    block_on(m.rename(&alice, tmp, b"af", tmp, b"af2", 0)).unwrap();
    // permission bits
    assert_eq!(block_on(m.open(&bob, af.ino, O_WRONLY)), Err(Errno::EACCES));
    block_on(m.open(&bob, af.ino, O_RDONLY)).unwrap();
    block_on(m.release(af.ino)).unwrap();
    assert_eq!(block_on(m.release(af.ino)), Err(Errno::EBADF));
    let priv_dir = block_on(m.mkdir(&alice, tmp, b"private", 0o700))
        .unwrap()
        .ino;
    block_on(m.create(&alice, priv_dir, b"secret", 0o600)).unwrap();
    assert_eq!(
        block_on(m.lookup(&bob, priv_dir, b"secret")),
        Err(Errno::EACCES)
    );
    assert_eq!(
        block_on(m.readdir(&bob, priv_dir, 0, 10)),
        Err(Errno::EACCES)
    );
    assert_eq!(
        block_on(m.access(&bob, priv_dir, MAY_EXEC)),
        Err(Errno::EACCES)
    );
    block_on(m.access(&alice, priv_dir, MAY_EXEC | MAY_WRITE | MAY_READ)).unwrap();
    block_on(m.access(&bob, af.ino, 0)).unwrap();
    // chmod/chown
    let sa = |mode| SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    };
    assert_eq!(
        block_on(m.setattr(&bob, af.ino, &sa(0o777))),
        Err(Errno::EPERM)
    );
    let a = block_on(m.setattr(&alice, af.ino, &sa(0o4755 | 0o2000))).unwrap();
    assert_eq!(a.mode, S_IFREG | 0o6755);
    let chown = SetAttr {
        uid: Some(1001),
        ..SetAttr::default()
    };
    assert_eq!(
        block_on(m.setattr(&alice, af.ino, &chown)),
        Err(Errno::EPERM)
    );
    let a = block_on(m.setattr(&c, af.ino, &chown)).unwrap();
    assert_eq!(a.uid, 1001);
    assert_eq!(
        a.mode,
        S_IFREG | 0o755,
        "chown clears setuid and exec setgid"
    );
    let grp = SetAttr {
        gid: Some(7),
        ..SetAttr::default()
    };
    assert_eq!(block_on(m.setattr(&bob, af.ino, &grp)), Err(Errno::EPERM));
    let bob7 = Cred {
        uid: 1001,
        gid: 1001,
        groups: vec![7],
    };
    assert_eq!(block_on(m.setattr(&bob7, af.ino, &grp)).unwrap().gid, 7);
    // chmod by a non-member drops setgid
    let a = block_on(m.setattr(&bob, af.ino, &sa(0o2755))).unwrap();
    assert_eq!(a.mode, S_IFREG | 0o755);
    // utimes: now needs write access or ownership, explicit times ownership
    let now = SetAttr {
        atime: Some(SetTime::Now),
        mtime: Some(SetTime::Now),
        ..SetAttr::default()
    };
    assert_eq!(
        block_on(m.setattr(&alice, af.ino, &now)),
        Err(Errno::EACCES)
    );
    let t = Timespec { sec: 5, nsec: 6 };
    let at = SetAttr {
        mtime: Some(SetTime::At(t)),
        ..SetAttr::default()
    };
    assert_eq!(block_on(m.setattr(&alice, af.ino, &at)), Err(Errno::EPERM));
    assert_eq!(block_on(m.setattr(&bob, af.ino, &at)).unwrap().mtime, t);
    // truncate needs write permission
    let tr = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(block_on(m.setattr(&alice, af.ino, &tr)), Err(Errno::EACCES));
    // setgid directories pass their group down
    let sg = block_on(m.mkdir(&c, ROOT, b"sg", 0o2777)).unwrap();
    assert_eq!(sg.mode, S_IFDIR | 0o777, "mkdir drops setgid from its mode");
    let sg = sg.ino;
    block_on(m.setattr(&c, sg, &grp)).unwrap();
    block_on(m.setattr(&c, sg, &sa(0o2777))).unwrap();
    let f = block_on(m.create(&alice, sg, b"f", 0o644)).unwrap();
    assert_eq!(f.gid, 7);
    let d = block_on(m.mkdir(&alice, sg, b"d", 0o755)).unwrap();
    assert_eq!((d.gid, d.mode & S_ISGID), (7, S_ISGID));
    // devices need root
    assert_eq!(
        block_on(m.mknod(&alice, tmp, b"dev", S_IFCHR | 0o600, 0x0101)),
        Err(Errno::EPERM)
    );
    let dev = block_on(m.mknod(&c, tmp, b"dev", S_IFCHR | 0o600, 0x0101)).unwrap();
    assert_eq!((dev.rdev, dev.mode & S_IFMT), (0x0101, S_IFCHR));
    assert_eq!(
        block_on(m.mknod(&c, tmp, b"d2", S_IFDIR | 0o600, 0)),
        Err(Errno::EPERM)
    );
    let fifo = block_on(m.mknod(&alice, tmp, b"fifo", S_IFIFO | 0o600, 0)).unwrap();
    assert_eq!(block_on(m.read(fifo.ino, 0, 1)), Err(Errno::EINVAL));
    // protected hard links
    assert_eq!(block_on(m.link(&bob, f.ino, tmp, b"l")), Err(Errno::EPERM));
    block_on(m.link(&alice, f.ino, tmp, b"l")).unwrap();
    assert_eq!(block_on(m.link(&c, sg, tmp, b"dl")), Err(Errno::EPERM));
}

#[test]
fn symlinks() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let c = root();
    let s = block_on(m.symlink(&c, ROOT, b"s", b"target/path")).unwrap();
    assert_eq!((s.mode, s.size), (S_IFLNK | 0o777, 11));
    assert_eq!(block_on(m.readlink(s.ino)).unwrap(), b"target/path");
    let long = vec![b'q'; 4095];
    let l = block_on(m.symlink(&c, ROOT, b"long", &long)).unwrap();
    assert_eq!(block_on(m.readlink(l.ino)).unwrap(), long);
    assert_eq!(
        block_on(m.symlink(&c, ROOT, b"toolong", &[b'q'; 4096])),
        Err(Errno::ENAMETOOLONG)
    );
    assert_eq!(
        block_on(m.symlink(&c, ROOT, b"empty", b"")),
        Err(Errno::ENOENT)
    );
    assert_eq!(block_on(m.readlink(ROOT)), Err(Errno::EINVAL));
    assert_eq!(block_on(m.open(&c, s.ino, O_RDONLY)), Err(Errno::ELOOP));
    block_on(m.sync()).unwrap();
    let items = v.store.items();
    let chunks: Vec<usize> = items
        .iter()
        .filter(|(k, _)| k.zone == zone::FS && k.first == l.ino && k.ty == ty::SYMLINK)
        .map(|(_, v)| v.len())
        .collect();
    assert_eq!(chunks, [896, 896, 896, 896, 512]);
    let i = InodeItem::decode(&items[&inode_key(l.ino)]).unwrap();
    assert_eq!(i.size, 4096, "scoutfs stores the size with the NUL");
    let (m2, _) = v.mount();
    drop(m);
    assert_eq!(block_on(m2.readlink(l.ino)).unwrap(), long);
    block_on(m2.unlink(&c, ROOT, b"long")).unwrap();
    block_on(m2.sync()).unwrap();
    assert!(!v
        .store
        .items()
        .keys()
        .any(|k| k.zone == zone::FS && k.first == l.ino));
}

#[test]
fn file_data_holes_truncate_and_big_offsets() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let c = root();
    let f = block_on(m.create(&c, ROOT, b"f", 0o644)).unwrap().ino;
    assert_eq!(block_on(m.write(f, 100, b"abc")).unwrap(), 3);
    let a = block_on(m.getattr(f)).unwrap();
    assert_eq!((a.size, a.online_blocks, a.blocks), (103, 1, 8));
    let mut want = vec![0u8; 103];
    want[100..].copy_from_slice(b"abc");
    assert_eq!(block_on(m.read(f, 0, 1000)).unwrap(), want);
    // a write spanning blocks with a hole before it
    let data: Vec<u8> = (0..10000u32).map(|i| (i * 7) as u8).collect();
    block_on(m.write(f, 3 * 4096 + 5, &data)).unwrap();
    let a = block_on(m.getattr(f)).unwrap();
    assert_eq!(a.size, 3 * 4096 + 5 + 10000);
    assert_eq!(a.online_blocks, 1 + 3);
    let back = block_on(m.read(f, 3 * 4096, 20000)).unwrap();
    assert_eq!(back.len(), 10005);
    assert_eq!(&back[..5], &[0; 5]);
    assert_eq!(&back[5..], &data[..]);
    assert_eq!(block_on(m.read(f, 4096, 4096)).unwrap(), vec![0u8; 4096]);
    // overwrite in place across a block boundary (read-modify-write)
    block_on(m.write(f, 4 * 4096 - 2, b"XYZW")).unwrap();
    let back = block_on(m.read(f, 4 * 4096 - 4, 8)).unwrap();
    assert_eq!(&back[2..6], b"XYZW");
    assert_eq!((back[0], back[1]), (data[4087], data[4088]));
    assert_eq!((back[6], back[7]), (data[4093], data[4094]));
    // shrink: the tail of the last block reads zero after extending again
    let tr = |size| SetAttr {
        size: Some(size),
        ..SetAttr::default()
    };
    block_on(m.setattr(&c, f, &tr(3 * 4096 + 10))).unwrap();
    let a = block_on(m.getattr(f)).unwrap();
    assert_eq!(a.online_blocks, 2);
    block_on(m.setattr(&c, f, &tr(5 * 4096))).unwrap();
    let back = block_on(m.read(f, 3 * 4096, 4096)).unwrap();
    assert_eq!(&back[5..10], &data[..5]);
    assert!(back[10..].iter().all(|&b| b == 0));
    assert_eq!(block_on(m.getattr(f)).unwrap().data_version, 5);
    // sparse far beyond 4 GiB
    let big = (1u64 << 40) + 12345;
    block_on(m.write(f, big, b"far away")).unwrap();
    assert_eq!(block_on(m.getattr(f)).unwrap().size, big + 8);
    assert_eq!(block_on(m.read(f, big - 2, 100)).unwrap(), b"\0\0far away");
    assert_eq!(block_on(m.read(f, 1 << 35, 16)).unwrap(), vec![0u8; 16]);
    // limits
    let max = i64::MAX as u64;
    assert_eq!(block_on(m.write(f, max, b"x")), Err(Errno::EFBIG));
    assert_eq!(block_on(m.write(f, max - 1, b"xy")).unwrap(), 1);
    assert_eq!(block_on(m.getattr(f)).unwrap().size, max);
    assert_eq!(block_on(m.read(f, max - 1, 10)).unwrap(), b"x");
    assert_eq!(block_on(m.setattr(&c, f, &tr(max + 1))), Err(Errno::EFBIG));
    assert_eq!(block_on(m.write(ROOT, 0, b"x")), Err(Errno::EISDIR));
    // truncate to 0 frees everything
    let free_before = v.store.free_data_blocks();
    block_on(m.setattr(&c, f, &tr(0))).unwrap();
    let a = block_on(m.getattr(f)).unwrap();
    assert_eq!((a.size, a.online_blocks), (0, 0));
    block_on(m.sync()).unwrap();
    // the 4 blocks left, and the 2 the earlier shrink freed
    assert_eq!(v.store.free_data_blocks(), free_before + 6);
    assert!(!v
        .store
        .items()
        .keys()
        .any(|k| k.first == f && k.ty == ty::DATA_EXTENT));
}

#[test]
fn extents_merge_and_fallocate() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let c = root();
    let f = block_on(m.create(&c, ROOT, b"f", 0o644)).unwrap().ino;
    for i in 0..64u64 {
        block_on(m.write(f, i * 4096, &[i as u8; 4096])).unwrap();
    }
    block_on(m.sync()).unwrap();
    let exts: Vec<_> = v
        .store
        .items()
        .into_keys()
        .filter(|k| k.first == f && k.ty == ty::DATA_EXTENT)
        .collect();
    assert_eq!(exts.len(), 1, "sequential appends merge into one extent");
    assert_eq!((exts[0].second, exts[0].third), (63, 64));
    // fallocate: unwritten blocks read as zeros and are not online
    let g = block_on(m.create(&c, ROOT, b"g", 0o644)).unwrap().ino;
    block_on(m.fallocate(&c, g, FALLOC_FL_KEEP_SIZE, 0, 10 * 4096)).unwrap();
    let a = block_on(m.getattr(g)).unwrap();
    assert_eq!((a.size, a.online_blocks), (0, 0));
    block_on(m.fallocate(&c, g, 0, 0, 3 * 4096 + 1)).unwrap();
    let a = block_on(m.getattr(g)).unwrap();
    assert_eq!((a.size, a.data_version), (3 * 4096 + 1, 1));
    assert_eq!(block_on(m.read(g, 0, 100)).unwrap(), vec![0u8; 100]);
    block_on(m.write(g, 4096 + 10, b"hi")).unwrap();
    let a = block_on(m.getattr(g)).unwrap();
    assert_eq!(a.online_blocks, 1);
    let back = block_on(m.read(g, 4096, 4096)).unwrap();
    assert_eq!(&back[10..12], b"hi");
    assert!(back[..10].iter().all(|&b| b == 0) && back[12..].iter().all(|&b| b == 0));
    // punch a hole: partial edges zeroed, whole blocks freed
    block_on(m.write(g, 0, &[7u8; 4 * 4096])).unwrap();
    assert_eq!(block_on(m.getattr(g)).unwrap().online_blocks, 4);
    block_on(m.fallocate(
        &c,
        g,
        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
        100,
        2 * 4096,
    ))
    .unwrap();
    let a = block_on(m.getattr(g)).unwrap();
    assert_eq!(a.online_blocks, 3);
    assert_eq!(a.size, 4 * 4096);
    let back = block_on(m.read(g, 0, 4 * 4096)).unwrap();
    for (i, b) in back.iter().enumerate() {
        let want = if (100..100 + 2 * 4096).contains(&i) {
            0
        } else {
            7
        };
        assert_eq!(*b, want, "byte {i}");
    }
    assert_eq!(
        block_on(m.fallocate(&c, g, FALLOC_FL_PUNCH_HOLE, 0, 1)),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        block_on(m.fallocate(&c, g, 0x10, 0, 1)),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(block_on(m.fallocate(&c, g, 0, 0, 0)), Err(Errno::EINVAL));
    assert_eq!(block_on(m.fallocate(&c, ROOT, 0, 0, 1)), Err(Errno::EISDIR));
}

#[test]
fn xattrs_and_tags() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let c = root();
    let alice = Cred::user(1000, 1000);
    let f = block_on(m.create(&c, ROOT, b"f", 0o644)).unwrap().ino;
    block_on(m.setxattr(&c, f, b"user.a", b"1", 0)).unwrap();
    assert_eq!(block_on(m.getxattr(&c, f, b"user.a")).unwrap(), b"1");
    assert_eq!(
        block_on(m.setxattr(&c, f, b"user.a", b"2", XATTR_CREATE)),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        block_on(m.setxattr(&c, f, b"user.b", b"2", XATTR_REPLACE)),
        Err(Errno::ENODATA)
    );
    assert_eq!(
        block_on(m.setxattr(&c, f, b"user.b", b"2", 3)),
        Err(Errno::EINVAL)
    );
    let big: Vec<u8> = (0..65535u32).map(|i| (i % 251) as u8).collect();
    block_on(m.setxattr(&c, f, b"user.big", &big, 0)).unwrap();
    assert_eq!(block_on(m.getxattr(&c, f, b"user.big")).unwrap(), big);
    block_on(m.setxattr(&c, f, b"user.big", b"small now", XATTR_REPLACE)).unwrap();
    assert_eq!(
        block_on(m.getxattr(&c, f, b"user.big")).unwrap(),
        b"small now"
    );
    assert_eq!(
        block_on(m.setxattr(&c, f, b"user.x", &[0; 65536], 0)),
        Err(Errno::E2BIG)
    );
    assert_eq!(
        block_on(m.getxattr(&c, f, b"user.nope")),
        Err(Errno::ENODATA)
    );
    assert_eq!(
        block_on(m.getxattr(&c, f, &[b'u'; 256])),
        Err(Errno::ERANGE)
    );
    assert_eq!(block_on(m.getxattr(&c, f, b"")), Err(Errno::ERANGE));
    assert_eq!(
        block_on(m.setxattr(&c, f, b"os2.x", b"", 0)),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        block_on(m.setxattr(&c, f, b"user.", b"", 0)),
        Err(Errno::EINVAL)
    );
    // permissions by namespace
    assert_eq!(
        block_on(m.setxattr(&alice, f, b"user.c", b"", 0)),
        Err(Errno::EACCES)
    );
    assert_eq!(block_on(m.getxattr(&alice, f, b"user.a")).unwrap(), b"1");
    assert_eq!(
        block_on(m.setxattr(&alice, f, b"trusted.t", b"", 0)),
        Err(Errno::EPERM)
    );
    block_on(m.setxattr(&c, f, b"trusted.t", b"tv", 0)).unwrap();
    assert_eq!(
        block_on(m.getxattr(&alice, f, b"trusted.t")),
        Err(Errno::ENODATA)
    );
    assert_eq!(
        block_on(m.setxattr(&alice, f, b"security.s", b"", 0)),
        Err(Errno::EPERM)
    );
    // scoutfs tags
    let f2 = block_on(m.create(&alice, ROOT, b"mine", 0o644));
    assert_eq!(f2, Err(Errno::EACCES));
    let af = block_on(m.mkdir(&c, ROOT, b"pub", 0o777)).unwrap().ino;
    let mine = block_on(m.create(&alice, af, b"mine", 0o644)).unwrap().ino;
    assert_eq!(
        block_on(m.setxattr(&alice, mine, b"scoutfs.hide.x", b"", 0)),
        Err(Errno::EPERM)
    );
    block_on(m.setxattr(&alice, mine, b"scoutfs.x", b"", 0)).unwrap();
    assert_eq!(
        block_on(m.setxattr(&c, f, b"scoutfs.bogus.x", b"", 0)),
        Err(Errno::EINVAL)
    );
    block_on(m.setxattr(&c, f, b"scoutfs.hide.secret", b"h", 0)).unwrap();
    block_on(m.setxattr(&c, f, b"scoutfs.srch.tag", b"s", 0)).unwrap();
    block_on(m.setxattr(&c, f, b"scoutfs.totl.sum.1.2.3", b"40", 0)).unwrap();
    block_on(m.setxattr(&c, mine, b"scoutfs.totl.sum.1.2.3", b"0x2", 0)).unwrap();
    assert_eq!(
        block_on(m.setxattr(&c, f, b"scoutfs.totl.bad.1.2", b"1", 0)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        block_on(m.setxattr(&c, f, b"scoutfs.totl.v.1.2.4", b"x1", 0)),
        Err(Errno::EINVAL)
    );
    block_on(m.setxattr(&c, f, b"scoutfs.indx.tier.3.77", b"", 0)).unwrap();
    assert_eq!(
        block_on(m.setxattr(&c, f, b"scoutfs.indx.tier.3.78", b"v", 0)),
        Err(Errno::EINVAL)
    );
    let mut list = block_on(m.listxattr(&c, f)).unwrap();
    list.sort();
    let want: Vec<&[u8]> = vec![
        b"scoutfs.indx.tier.3.77",
        b"scoutfs.srch.tag",
        b"scoutfs.totl.sum.1.2.3",
        b"trusted.t",
        b"user.a",
        b"user.big",
    ];
    assert_eq!(list, want);
    assert_eq!(
        block_on(m.getxattr(&c, f, b"scoutfs.hide.secret")).unwrap(),
        b"h"
    );
    block_on(m.removexattr(&c, f, b"user.a")).unwrap();
    assert_eq!(
        block_on(m.removexattr(&c, f, b"user.a")),
        Err(Errno::ENODATA)
    );
    block_on(m.sync()).unwrap();
    let items = v.store.items();
    let tv = TotlVal::decode(&items[&totl_key(1, 2, 3)]).unwrap();
    assert_eq!(
        tv,
        TotlVal {
            total: 42,
            count: 2
        }
    );
    assert!(items.keys().any(|k| k.zone == zone::XATTR_INDX));
    assert_eq!(v.store.srch_entries().len(), 1);
    // replacing a totl value applies the difference; deleting the inode
    // drops its contributions
    block_on(m.setxattr(&c, mine, b"scoutfs.totl.sum.1.2.3", b"10", 0)).unwrap();
    block_on(m.unlink(&c, ROOT, b"f")).unwrap();
    block_on(m.sync()).unwrap();
    let items = v.store.items();
    let tv = TotlVal::decode(&items[&totl_key(1, 2, 3)]).unwrap();
    assert_eq!(
        tv,
        TotlVal {
            total: 10,
            count: 1
        }
    );
    assert!(!items.keys().any(|k| k.zone == zone::XATTR_INDX));
    assert_eq!(v.store.srch_entries().len(), 2, "create and delete entries");
    assert!(!items.keys().any(|k| k.zone == zone::FS && k.first == f));
}

#[test]
fn unlinked_open_files_live_until_release_or_remount() {
    let v = Vol::new();
    let c = root();
    let (m, _be) = v.mount();
    let f = block_on(m.create(&c, ROOT, b"f", 0o644)).unwrap().ino;
    block_on(m.open(&c, f, O_RDWR)).unwrap();
    block_on(m.write(f, 0, b"still here")).unwrap();
    block_on(m.unlink(&c, ROOT, b"f")).unwrap();
    assert_eq!(block_on(m.lookup(&c, ROOT, b"f")), Err(Errno::ENOENT));
    assert_eq!(block_on(m.getattr(f)).unwrap().nlink, 0);
    assert_eq!(block_on(m.read(f, 0, 100)).unwrap(), b"still here");
    assert_eq!(block_on(m.link(&c, f, ROOT, b"back")), Err(Errno::ENOENT));
    block_on(m.sync()).unwrap();
    assert!(v.store.item(&orphan_key(f)).is_some());
    block_on(m.release(f)).unwrap();
    assert_eq!(block_on(m.getattr(f)), Err(Errno::ENOENT));
    block_on(m.sync()).unwrap();
    assert!(v.store.item(&orphan_key(f)).is_none());
    assert!(!v
        .store
        .items()
        .keys()
        .any(|k| k.zone == zone::FS && k.first == f));

    // still open when the mount goes away: the next mount deletes it
    let g = block_on(m.create(&c, ROOT, b"g", 0o644)).unwrap().ino;
    block_on(m.write(g, 0, &[1u8; 100_000])).unwrap();
    block_on(m.open(&c, g, O_RDONLY)).unwrap();
    block_on(m.unlink(&c, ROOT, b"g")).unwrap();
    block_on(m.sync()).unwrap();
    let free = v.store.free_data_blocks();
    drop(m);
    let (m2, _) = v.mount();
    assert_eq!(m2.counters().orphans_found, 1);
    assert_eq!(block_on(m2.getattr(g)), Err(Errno::ENOENT));
    block_on(m2.sync()).unwrap();
    assert!(v.store.item(&orphan_key(g)).is_none());
    assert_eq!(v.store.free_data_blocks(), free + 25);
    assert_eq!(v.store.inode_count(), 1);
}

#[test]
fn commits_on_time_size_and_errors() {
    let v = Vol::with(
        MemMkfs::default(),
        MountOptions {
            commit: CommitPolicy {
                interval_ns: 10_000_000_000,
                dirty_limit_bytes: 256 << 10,
            },
            ..MountOptions::default()
        },
    );
    let c = root();
    let (m, be) = v.mount();
    block_on(m.create(&c, ROOT, b"a", 0o644)).unwrap();
    assert!(m.is_dirty());
    let deadline = m.next_commit_deadline_ns().unwrap();
    v.clock.advance_ns(9_000_000_000);
    block_on(m.tick()).unwrap();
    assert_eq!(v.store.commits(), 0);
    v.clock.set_ns(deadline);
    block_on(m.tick()).unwrap();
    assert_eq!(v.store.commits(), 1);
    assert!(!m.is_dirty());
    assert_eq!(m.next_commit_deadline_ns(), None);
    // on size: many creates commit along the way
    for i in 0..2000 {
        block_on(m.create(&c, ROOT, format!("n{i}").as_bytes(), 0o644)).unwrap();
    }
    assert!(m.counters().commits_on_size > 0);
    assert!(v.store.commits() > 1);
    // a failed commit keeps the changes and a later one writes them
    block_on(m.create(&c, ROOT, b"z", 0o644)).unwrap();
    be.fail_next_commits(1);
    assert_eq!(block_on(m.sync()), Err(Errno::EIO));
    assert!(m.is_dirty());
    block_on(m.sync()).unwrap();
    drop(m);
    let (m2, _) = v.mount();
    block_on(m2.lookup(&c, ROOT, b"z")).unwrap();
    block_on(m2.lookup(&c, ROOT, b"n1999")).unwrap();
    // a crash loses only the open transaction
    block_on(m2.create(&c, ROOT, b"lost", 0o644)).unwrap();
    drop(m2);
    let (m3, _) = v.mount();
    assert_eq!(block_on(m3.lookup(&c, ROOT, b"lost")), Err(Errno::ENOENT));
}

#[test]
fn allocator_refills_and_space_limits() {
    let v = Vol::with(
        MemMkfs {
            data_blocks: 64 + 300,
            ..MemMkfs::default()
        },
        MountOptions::default(),
    );
    let c = root();
    let (m, be) = v.mount();
    be.set_txn_data_limit(Some(10));
    let f = block_on(m.create(&c, ROOT, b"f", 0o644)).unwrap().ino;
    let data = vec![9u8; 100 * 4096];
    assert_eq!(block_on(m.write(f, 0, &data)).unwrap(), data.len());
    assert!(m.counters().enobufs_commits >= 9);
    assert_eq!(block_on(m.read(f, 0, data.len())).unwrap(), data);
    be.set_txn_data_limit(None);
    // fill the device: a short write, then ENOSPC
    let g = block_on(m.create(&c, ROOT, b"g", 0o644)).unwrap().ino;
    let n = block_on(m.write(g, 0, &vec![1u8; 300 * 4096])).unwrap();
    assert_eq!(n, 200 * 4096);
    assert_eq!(block_on(m.write(g, n as u64, b"x")), Err(Errno::ENOSPC));
    block_on(m.sync()).unwrap();
    let s = block_on(m.statfs()).unwrap();
    assert_eq!(s.bsize, 4096);
    assert_eq!(s.namelen, 255);
    assert_eq!(s.ffree, s.files - 3);
    // freeing needs a commit before the blocks come back
    block_on(m.unlink(&c, ROOT, b"g")).unwrap();
    assert_eq!(block_on(m.write(f, 100 * 4096, b"x")), Err(Errno::ENOSPC));
    block_on(m.sync()).unwrap();
    block_on(m.write(f, 100 * 4096, b"x")).unwrap();
    // metadata at the reserve: no new items, deletions still work
    be.set_meta_low(true);
    assert_eq!(
        block_on(m.create(&c, ROOT, b"h", 0o644)),
        Err(Errno::ENOSPC)
    );
    block_on(m.unlink(&c, ROOT, b"f")).unwrap();
}

#[test]
fn tiny_cache_budget_still_correct() {
    let v = Vol::with(
        MemMkfs::default(),
        MountOptions {
            cache_budget_bytes: 16 << 10,
            ..MountOptions::default()
        },
    );
    v.store.set_read_window(8);
    let c = root();
    let (m, _be) = v.mount();
    let d = block_on(m.mkdir(&c, ROOT, b"d", 0o755)).unwrap().ino;
    for i in 0..500 {
        block_on(m.create(&c, d, format!("f{i:04}").as_bytes(), 0o644)).unwrap();
    }
    block_on(m.sync()).unwrap();
    for i in 0..500 {
        block_on(m.lookup(&c, d, format!("f{i:04}").as_bytes())).unwrap();
    }
    assert!(m.counters().items.evicted_ranges > 0);
    let n = names(&m, d);
    assert_eq!(n.len(), 502);
    for i in (0..500).step_by(2) {
        block_on(m.unlink(&c, d, format!("f{i:04}").as_bytes())).unwrap();
    }
    m.evict_clean_cache();
    assert_eq!(names(&m, d).len(), 252);
    assert!(m.cache_usage().bytes_total - m.cache_usage().bytes_dirty < 64 << 10);
}

#[test]
fn corrupt_items_give_eio_not_panics() {
    let v = Vol::new();
    let c = root();
    let (m, _be) = v.mount();
    let d = block_on(m.mkdir(&c, ROOT, b"d", 0o755)).unwrap().ino;
    let f = block_on(m.create(&c, d, b"f", 0o644)).unwrap().ino;
    block_on(m.write(f, 0, &[5u8; 10000])).unwrap();
    block_on(m.setxattr(&c, f, b"user.x", b"y", 0)).unwrap();
    let l = block_on(m.symlink(&c, d, b"l", b"target")).unwrap().ino;
    block_on(m.sync()).unwrap();
    drop(m);
    let items = v.store.items();
    let ext_key = *items
        .keys()
        .find(|k| k.first == f && k.ty == ty::DATA_EXTENT)
        .unwrap();
    let xkey = *items
        .keys()
        .find(|k| k.first == f && k.ty == ty::XATTR)
        .unwrap();

    // an inode item of the wrong size
    v.store.put_raw(inode_key(f), Some(&[0u8; 100]));
    let (m, _be) = v.mount();
    assert_eq!(block_on(m.getattr(f)), Err(Errno::EIO));
    assert_eq!(block_on(m.lookup(&c, d, b"f")), Err(Errno::EIO));
    drop(m);
    v.store.put_raw(inode_key(f), Some(&items[&inode_key(f)]));
    // extent flags nobody knows, a truncated xattr, a symlink without NUL
    v.store.put_raw(
        ext_key,
        Some(&[1, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0]),
    );
    v.store.put_raw(xkey, Some(&[1, 0, 6]));
    let skey = scoutvm_fs::format::items::symlink_key(l, 0);
    v.store.put_raw(skey, Some(b"target!"));
    let (m, _be) = v.mount();
    assert_eq!(block_on(m.read(f, 0, 10)), Err(Errno::EIO));
    assert_eq!(block_on(m.getxattr(&c, f, b"user.x")), Err(Errno::EIO));
    assert_eq!(block_on(m.listxattr(&c, f)), Err(Errno::EIO));
    assert_eq!(block_on(m.readlink(l)), Err(Errno::EIO));
    drop(m);
    // a dirent naming an inode that does not exist
    v.store.put_raw(inode_key(f), None);
    let (m, _be) = v.mount();
    assert_eq!(block_on(m.lookup(&c, d, b"f")), Err(Errno::EIO));
    assert_eq!(block_on(m.unlink(&c, d, b"f")), Err(Errno::EIO));
    // a missing root refuses the mount
    drop(m);
    v.store.put_raw(inode_key(ROOT), None);
    let be = scoutvm_fs::sim::mem_backend::MemBackend::new(v.store.clone());
    let r = block_on(scoutvm_fs::posix::mount::Mount::mount(
        be,
        v.data.clone(),
        v.clock.clone(),
        MountOptions::default(),
    ));
    assert!(matches!(r, Err(Errno::EIO)));
}

/// Issue 16 item 2: fallocate changes ctime and mtime like Linux (size
/// growth and preallocation alike), and a punched hole does too.
#[test]
fn fallocate_updates_ctime_and_mtime() {
    let v = Vol::new();
    let (m, _be) = v.mount();
    let c = root();
    let f = block_on(m.create(&c, ROOT, b"f", 0o644)).unwrap().ino;
    let mut last = block_on(m.getattr(f)).unwrap();
    let cases = [
        (0, 0, 123),                    // size 0 -> 123
        (FALLOC_FL_KEEP_SIZE, 0, 8192), // allocation only
        (0, 4096, 3 * 4096),            // allocation and size
        (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096),
    ];
    for (mode, off, len) in cases {
        v.clock.advance_ns(2_000_000_000);
        block_on(m.fallocate(&c, f, mode, off, len)).unwrap();
        let a = block_on(m.getattr(f)).unwrap();
        assert!(
            a.mtime > last.mtime && a.ctime > last.ctime,
            "fallocate mode {mode:#x} {off}+{len}: times {:?}/{:?} after {:?}/{:?}",
            a.mtime,
            a.ctime,
            last.mtime,
            last.ctime
        );
        last = a;
    }
    assert_eq!(last.size, 4 * 4096);
}

/// Items as a damaged (but crc-valid) volume could hold them: extents past
/// the data device or with byte offsets that overflow, a zero-length
/// extent, short inode/dirent/xattr/symlink values, a symlink inode with an
/// absurd size. Every operation that reads them fails with EIO; none
/// panics.
#[test]
fn wrong_item_values_are_eio_not_panic() {
    use scoutvm_fs::format::items::data_extent_key;
    use scoutvm_fs::sim::mem_backend::MemStore;
    fn fs_items(store: &MemStore, ino: u64, t: u8) -> Vec<(scoutvm_fs::format::key::Key, Vec<u8>)> {
        store
            .items()
            .into_iter()
            .filter(|(k, _)| k.zone == zone::FS && k.first == ino && k.ty == t)
            .collect()
    }
    fn only(store: &MemStore, ino: u64, t: u8) -> (scoutvm_fs::format::key::Key, Vec<u8>) {
        let v = fs_items(store, ino, t);
        assert_eq!(v.len(), 1, "{t}: {v:?}");
        v.into_iter().next().unwrap()
    }
    let c = root();
    for case in [
        "extent past the data device",
        "extent byte offsets overflow",
        "zero-length extent",
        "short inode",
        "short dirent",
        "short xattr",
        "short symlink chunk",
        "huge symlink size",
    ] {
        let v = Vol::new();
        let (f, s) = {
            let (m, _be) = v.mount();
            let f = block_on(m.create(&c, ROOT, b"f", 0o644)).unwrap();
            block_on(m.write(f.ino, 0, &[7u8; 3 * 4096])).unwrap();
            block_on(m.setxattr(&c, f.ino, b"user.a", b"value", 0)).unwrap();
            let s = block_on(m.symlink(&c, ROOT, b"s", b"target/path")).unwrap();
            block_on(m.sync()).unwrap();
            (f.ino, s.ino)
        };
        let st = &v.store;
        let set_blkno = |b: u64| {
            let (k, mut val) = only(st, f, ty::DATA_EXTENT);
            val[..8].copy_from_slice(&b.to_le_bytes());
            st.put_raw(k, Some(&val));
        };
        let shorten = |ino: u64, t: u8, len: usize| {
            let (k, val) = only(st, ino, t);
            st.put_raw(k, Some(&val[..len]));
        };
        match case {
            "extent past the data device" => set_blkno(MemMkfs::default().data_blocks + 10),
            "extent byte offsets overflow" => set_blkno(u64::MAX - 8),
            "zero-length extent" => {
                let (k, val) = only(st, f, ty::DATA_EXTENT);
                st.put_raw(k, None);
                st.put_raw(data_extent_key(f, 2, 0), Some(&val));
            }
            "short inode" => shorten(f, ty::INODE, 40),
            "short dirent" => {
                let k = dirent_key(ROOT, dirent_name_hash(b"f"), 2);
                let val = st.item(&k).expect("dirent of f");
                st.put_raw(k, Some(&val[..20]));
            }
            "short xattr" => shorten(f, ty::XATTR, 10),
            "short symlink chunk" => shorten(s, ty::SYMLINK, 4),
            "huge symlink size" => {
                let (k, val) = only(st, s, ty::INODE);
                let mut i = InodeItem::decode(&val).unwrap();
                i.size = u64::MAX;
                st.put_raw(k, Some(&i.encode(if val.len() == 160 { 1 } else { 2 })));
            }
            _ => unreachable!(),
        }
        let (m, _be) = v.mount();
        let got = match case {
            "short inode" => block_on(m.getattr(f)).map(|_| ()),
            "short dirent" => block_on(m.lookup(&c, ROOT, b"f")).map(|_| ()),
            "short xattr" => block_on(m.getxattr(&c, f, b"user.a")).map(|_| ()),
            "short symlink chunk" | "huge symlink size" => block_on(m.readlink(s)).map(|_| ()),
            _ => block_on(m.read(f, 0, 3 * 4096)).map(|_| ()),
        };
        assert_eq!(got, Err(Errno::EIO), "{case}");
        if case.starts_with("extent") {
            // a partial write reads the block around it first
            assert_eq!(block_on(m.write(f, 100, b"x")), Err(Errno::EIO), "{case}");
        }
        if case == "extent past the data device" {
            // truncating must not free blocks past the device
            let free = st.free_data_blocks();
            let sa = SetAttr {
                size: Some(0),
                ..Default::default()
            };
            assert_eq!(block_on(m.setattr(&c, f, &sa)).map(|_| ()), Err(Errno::EIO));
            let _ = block_on(m.sync());
            assert_eq!(st.free_data_blocks(), free);
            // and the bad extent is left in place, not half unmapped
            assert_eq!(fs_items(st, f, ty::DATA_EXTENT).len(), 1);
        }
    }
}
