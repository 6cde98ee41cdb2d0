//! The 9P2000.L server in-process: a client speaking the wire codec over
//! an in-memory stream to a server over a `Mount` on the in-memory
//! backend. Every message, the error paths, flush, bounds, the semantics
//! clients rely on (unlink while open, rename over, readdir under churn,
//! stable qids), permissions of non-root users and malformed input.

mod common;

use common::*;
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::types::*;
use scoutvm_net::p9::access::{AllowList, Cidr, NOBODY};
use scoutvm_net::p9::wire::{
    self, LockStatus, LockType, QidType, Rmsg, SetattrValid, Tmsg, AT_REMOVEDIR, LOCK_FLAGS_BLOCK,
    NOFID, NOTAG,
};
use scoutvm_net::p9::ServerConfig;

const RW: u32 = O_RDWR;

fn counter(name: &str) -> u64 {
    scoutvm_fs::runtime::counters::get(name).unwrap_or(0)
}

#[test]
fn version_negotiates_msize_and_rejects_unknown_versions() {
    let env = Env::new();
    let c = env.connect();
    env.run(async {
        // Anything before Tversion is refused.
        let r = c.rpc(Tmsg::Clunk { fid: 1 }).await;
        assert_eq!(r.ok().unwrap_err(), Errno::EPROTO);
        assert_eq!(c.version(4 << 20).await, (1 << 20, b"9P2000.L".to_vec()));
        assert_eq!(c.version(MSIZE).await.0, MSIZE);
        let mut out = Vec::new();
        Tmsg::Version {
            msize: 8192,
            version: b"9P2000.u",
        }
        .encode(NOTAG, &mut out)
        .unwrap();
        c.send_raw(&out);
        match c.recv(NOTAG).await.msg() {
            Rmsg::Version { version, .. } => assert_eq!(version, b"unknown"),
            m => panic!("{m:?}"),
        }
        // Not versioned any more.
        assert_eq!(c.attach(0, b"", b"", 0).await, Err(Errno::EPROTO));
        let mut out = Vec::new();
        Tmsg::Version {
            msize: 100,
            version: b"9P2000.L",
        }
        .encode(NOTAG, &mut out)
        .unwrap();
        c.send_raw(&out);
        assert_eq!(c.recv(NOTAG).await.ok().unwrap_err(), Errno::EINVAL);
        c.version(MSIZE).await;
        assert!(c.attach(0, b"", b"", 0).await.is_ok());
    });
}

#[test]
fn attach_gives_the_root_and_named_subtrees() {
    let env = Env::new();
    let c = env.connect();
    env.run(async {
        c.version(MSIZE).await;
        let root = c.attach(0, b"root", b"", NONUNAME).await.unwrap();
        assert_eq!((root.path, root.ty), (1, QidType::DIR));
        assert_eq!(c.attach(1, b"", b"/", 0).await.unwrap().path, 1);
        assert_eq!(c.attach(1, b"", b"/", 0).await, Err(Errno::EBADF));
        c.mkdir(0, "sub", 0o755, 0).await.unwrap();
        let sub = c.walk(0, 2, &["sub"]).await.unwrap()[0];
        c.mkdir(2, "deeper", 0o755, 0).await.unwrap();
        assert_eq!(c.attach(3, b"", b"/sub", 0).await.unwrap().path, sub.path);
        // `..` stops at the attach point.
        assert_eq!(c.walk(3, 4, &[".."]).await.unwrap()[0].path, sub.path);
        assert_eq!(c.walk(0, 5, &[".."]).await.unwrap()[0].path, 1);
        assert_eq!(
            c.walk(3, 6, &["deeper", ".."]).await.unwrap()[1].path,
            sub.path
        );
        assert_eq!(c.attach(7, b"", b"/nope", 0).await, Err(Errno::ENOENT));
        c.create_file(8, "/", "file", 0o644).await.unwrap();
        assert_eq!(c.attach(9, b"", b"/file", 0).await, Err(Errno::ENOTDIR));
        // Unknown user names are refused; nobody and numbers are users.
        assert_eq!(
            c.attach(10, b"alice", b"", NONUNAME).await,
            Err(Errno::EACCES)
        );
        c.attach(11, b"nobody", b"", NONUNAME).await.unwrap();
        c.attach(12, b"1000", b"", NONUNAME).await.unwrap();
        assert_eq!(
            c.rpc(Tmsg::Attach {
                fid: 13,
                afid: 5,
                uname: b"",
                aname: b"",
                n_uname: 0
            })
            .await
            .ok()
            .unwrap_err(),
            Errno::EINVAL
        );
        let r = c
            .rpc(Tmsg::Auth {
                afid: 1,
                uname: b"",
                aname: b"",
                n_uname: 0,
            })
            .await;
        assert_eq!(r.ok().unwrap_err(), Errno::EOPNOTSUPP);
    });
    let users: Vec<u32> = env.server.clients()[0].users.iter().map(|u| u.1).collect();
    assert_eq!(users, vec![0, 1000, NOBODY]);
}

/// Error replies the request asked for are counted apart from server
/// faults: a healthy server answering lookups of new names must not show
/// errors in `counters`.
#[test]
fn error_replies_are_counted_by_whose_doing_they_are() {
    let env = Env::new();
    let c = env.connect();
    let (enoent, client) = (counter("p9.enoent"), counter("p9.client_errors"));
    env.run(async {
        c.version(MSIZE).await;
        c.attach(0, b"", b"", 0).await.unwrap();
        assert_eq!(c.walk(0, 1, &["missing"]).await.err(), Some(Errno::ENOENT));
        c.mkdir(0, "d", 0o755, 0).await.unwrap();
        assert_eq!(c.mkdir(0, "d", 0o755, 0).await.err(), Some(Errno::EEXIST));
    });
    assert!(counter("p9.enoent") > enoent);
    assert!(counter("p9.client_errors") > client);
    // The old catch-all name is gone.
    assert_eq!(scoutvm_fs::runtime::counters::get("p9.errors"), None);
}

#[test]
fn clients_outside_the_allow_list_are_refused_at_attach() {
    let env = Env::with(ServerConfig {
        allow: AllowList::of(vec![Cidr::parse("10.0.2.0/24").unwrap()]),
        ..ServerConfig::default()
    });
    let before = counter("p9.attach_refused");
    let c = env.connect_from([192, 168, 7, 9]);
    env.run(async {
        c.version(MSIZE).await;
        assert_eq!(c.attach(0, b"", b"", 0).await, Err(Errno::EACCES));
    });
    assert!(counter("p9.attach_refused") > before);
    let ev = scoutvm_fs::runtime::trace::find("p9_refused");
    assert!(ev.iter().any(|e| e.args[..4] == [192, 168, 7, 9]), "{ev:?}");
    let info = env.server.clients();
    assert!(!info[0].allowed);
    let ok = env.connect_from([10, 0, 2, 2]);
    env.run(async {
        ok.version(MSIZE).await;
        ok.attach(0, b"", b"", 0).await.unwrap();
    });
}

#[test]
fn walk_clone_multi_partial_and_errors() {
    let env = Env::new();
    let c = env.client_as(0);
    env.run(async {
        c.mkdir(0, "a", 0o755, 0).await.unwrap();
        c.walk(0, 1, &["a"]).await.unwrap();
        c.mkdir(1, "b", 0o755, 0).await.unwrap();
        c.walk(1, 2, &["b"]).await.unwrap();
        c.lcreate(2, "c", RW, 0o644, 0).await.unwrap();
        // Multi-element walk.
        let q = c.walk(0, 3, &["a", "b", "c"]).await.unwrap();
        assert_eq!(q.len(), 3);
        assert_eq!(q[0].ty, QidType::DIR);
        assert_eq!(q[2].ty, QidType::FILE);
        // Clone.
        assert!(c.walk(3, 4, &[]).await.unwrap().is_empty());
        assert_eq!(c.getattr(4).await.unwrap().qid, q[2]);
        // A walk onto itself moves the fid.
        c.walk(0, 5, &[]).await.unwrap();
        c.walk(5, 5, &["a"]).await.unwrap();
        assert_eq!(c.getattr(5).await.unwrap().qid, q[0]);
        // Partial: the first name resolves, the second does not; no newfid.
        let part = c.walk(0, 6, &["a", "nope", "c"]).await.unwrap();
        assert_eq!(part, vec![q[0]]);
        assert_eq!(c.getattr(6).await, Err(Errno::EBADF));
        // The first element failing is an error.
        assert_eq!(c.walk(0, 6, &["nope"]).await, Err(Errno::ENOENT));
        // Walking through a file.
        assert_eq!(c.walk(3, 6, &["x"]).await, Err(Errno::ENOTDIR));
        // newfid in use; unknown fid.
        assert_eq!(c.walk(0, 3, &["a"]).await, Err(Errno::EBADF));
        assert_eq!(c.walk(99, 100, &["a"]).await, Err(Errno::EBADF));
        // Bad names.
        assert_eq!(c.walk(0, 7, &["a/b"]).await, Err(Errno::EINVAL));
        let long = "x".repeat(300);
        assert_eq!(
            c.walk(0, 7, &[long.as_str()]).await,
            Err(Errno::ENAMETOOLONG)
        );
        // 16 names is the most a walk carries; more is malformed.
        let many: Vec<&str> = vec!["."; 16];
        assert_eq!(c.walk(0, 7, &many).await.unwrap().len(), 16);
        let mut out = Vec::new();
        let w = Tmsg::Walk {
            fid: 0,
            newfid: 8,
            wnames: vec![b"." as &[u8]; 17],
        };
        assert!(w.encode(77, &mut out).is_err());
    });
}

#[test]
fn create_write_read_getattr_and_qids() {
    let env = Env::new();
    let c = env.client_as(0);
    env.run(async {
        let q = c.create_file(1, "/", "f", 0o640).await.unwrap();
        assert_eq!(q.ty, QidType::FILE);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        // Writes of up to iounit bytes.
        let mut off = 0;
        for chunk in data.chunks(100_000) {
            assert_eq!(c.write(1, off, chunk).await.unwrap() as usize, chunk.len());
            off += chunk.len() as u64;
        }
        assert_eq!(c.read_all(1).await.unwrap(), data);
        // A read asks for at most msize - 24.
        let r = c.read(1, 0, u32::MAX).await.unwrap();
        assert_eq!(r.len(), 300_000);
        assert!(c.read(1, 1 << 40, 10).await.unwrap().is_empty());
        let a = c.getattr(1).await.unwrap();
        assert_eq!(a.size, 300_000);
        assert_eq!(a.mode, S_IFREG | 0o640);
        assert_eq!(a.nlink, 1);
        assert_eq!(a.blocks, 8 * 74);
        assert_eq!(a.qid.path, q.path);
        assert_ne!(a.qid.version, q.version, "qid version follows changes");
        assert_eq!(a.valid & 0x7ff, 0x7ff);
        // Stable: another walk gives the same qid path; other files differ.
        let q2 = c.walk(0, 2, &["f"]).await.unwrap()[0];
        assert_eq!(q2.path, q.path);
        let g = c.create_file(3, "/", "g", 0o600).await.unwrap();
        assert_ne!(g.path, q.path);
        // Open modes are enforced per fid.
        c.lopen(2, O_RDONLY).await.unwrap();
        assert_eq!(c.write(2, 0, b"x").await, Err(Errno::EBADF));
        assert_eq!(c.lopen(2, O_RDONLY).await, Err(Errno::EBUSY));
        c.walk(0, 4, &["f"]).await.unwrap();
        assert_eq!(c.read(4, 0, 10).await, Err(Errno::EBADF), "not open");
        c.lopen(4, O_WRONLY).await.unwrap();
        assert_eq!(c.read(4, 0, 10).await, Err(Errno::EBADF));
        // lcreate of an existing name.
        c.walk(0, 5, &[]).await.unwrap();
        assert_eq!(c.lcreate(5, "f", RW, 0o644, 0).await, Err(Errno::EEXIST));
        // The fid is still the directory after a failed create.
        assert_eq!(c.getattr(5).await.unwrap().qid.path, 1);
        // lcreate needs a directory fid.
        assert_eq!(c.lcreate(2, "z", RW, 0o644, 0).await, Err(Errno::ENOTDIR));
        // An 0444 file created for writing can be written (POSIX).
        let _ = c.lcreate(5, "ro", O_WRONLY, 0o444, 0).await.unwrap();
        assert_eq!(c.write(5, 0, b"hello").await.unwrap(), 5);
        for f in [1, 2, 3, 4, 5] {
            c.clunk(f).await.unwrap();
        }
        assert_eq!(c.clunk(1).await, Err(Errno::EBADF));
    });
}

#[test]
fn append_writes_go_to_the_end() {
    let env = Env::new();
    let c = env.client_as(0);
    env.run(async {
        c.create_file(1, "/", "log", 0o644).await.unwrap();
        c.write(1, 0, b"0123456789").await.unwrap();
        c.walk(0, 2, &["log"]).await.unwrap();
        c.lopen(2, O_WRONLY | O_APPEND).await.unwrap();
        // The offset is ignored: appends land at the end, in order, even
        // with several in flight.
        let t1 = c.tag();
        let t2 = c.tag();
        c.send(
            t1,
            &Tmsg::Write {
                fid: 2,
                offset: 0,
                data: wire::Data(b"AB"),
            },
        );
        c.send(
            t2,
            &Tmsg::Write {
                fid: 2,
                offset: 3,
                data: wire::Data(b"CD"),
            },
        );
        c.recv(t1).await.ok().unwrap();
        c.recv(t2).await.ok().unwrap();
        assert_eq!(c.read_all(1).await.unwrap(), b"0123456789ABCD");
    });
}

#[test]
fn directories_links_symlinks_nodes_rename_unlink() {
    let env = Env::new();
    let c = env.client_as(0);
    env.run(async {
        let d = c.mkdir(0, "d", 0o750, 0).await.unwrap();
        assert_eq!(d.ty, QidType::DIR);
        assert_eq!(c.mkdir(0, "d", 0o750, 0).await, Err(Errno::EEXIST));
        c.walk(0, 1, &["d"]).await.unwrap();
        assert_eq!(c.getattr(1).await.unwrap().mode, S_IFDIR | 0o750);
        // Symlink and readlink.
        let r = c
            .rpc(Tmsg::Symlink {
                fid: 1,
                name: b"ln",
                symtgt: b"../target/x",
                gid: 0,
            })
            .await;
        let sq = match r.msg() {
            Rmsg::Symlink { qid } => qid,
            m => panic!("{m:?}"),
        };
        assert_eq!(sq.ty, QidType::SYMLINK);
        c.walk(1, 2, &["ln"]).await.unwrap();
        match c.rpc(Tmsg::Readlink { fid: 2 }).await.msg() {
            Rmsg::Readlink { target } => assert_eq!(target, b"../target/x"),
            m => panic!("{m:?}"),
        }
        assert_eq!(c.getattr(2).await.unwrap().mode & S_IFMT, S_IFLNK);
        assert_eq!(c.lopen(2, O_RDONLY).await, Err(Errno::ELOOP));
        assert_eq!(
            c.rpc(Tmsg::Readlink { fid: 1 }).await.ok().unwrap_err(),
            Errno::EINVAL
        );
        // mknod: a fifo and a char device.
        let r = c
            .rpc(Tmsg::Mknod {
                dfid: 1,
                name: b"fifo",
                mode: S_IFIFO | 0o644,
                major: 0,
                minor: 0,
                gid: 0,
            })
            .await;
        assert!(matches!(r.msg(), Rmsg::Mknod { .. }));
        let r = c
            .rpc(Tmsg::Mknod {
                dfid: 1,
                name: b"chr",
                mode: S_IFCHR | 0o600,
                major: 4,
                minor: 300,
                gid: 0,
            })
            .await;
        assert!(matches!(r.msg(), Rmsg::Mknod { .. }));
        c.walk(1, 3, &["chr"]).await.unwrap();
        let a = c.getattr(3).await.unwrap();
        assert_eq!(a.mode, S_IFCHR | 0o600);
        // Linux new_encode_dev(4, 300).
        assert_eq!(a.rdev, (300 & 0xff) | (4 << 8) | ((300 & !0xff) << 12));
        c.walk(1, 4, &["fifo"]).await.unwrap();
        assert_eq!(c.getattr(4).await.unwrap().mode, S_IFIFO | 0o644);
        // Hard link.
        c.lcreate(1, "file", RW, 0o644, 0).await.unwrap(); // fid 1 is now d/file
        c.write(1, 0, b"linked").await.unwrap();
        c.walk(0, 5, &["d"]).await.unwrap();
        let r = c
            .rpc(Tmsg::Link {
                dfid: 0,
                fid: 1,
                name: b"hard",
            })
            .await;
        assert!(matches!(r.msg(), Rmsg::Link {}));
        assert_eq!(c.getattr(1).await.unwrap().nlink, 2);
        let h = c.walk(0, 6, &["hard"]).await.unwrap()[0];
        assert_eq!(h.path, c.getattr(1).await.unwrap().qid.path);
        assert_eq!(
            c.rpc(Tmsg::Link {
                dfid: 0,
                fid: 5,
                name: b"dirlink"
            })
            .await
            .ok()
            .unwrap_err(),
            Errno::EPERM
        );
        // renameat within and across directories, over a file.
        let r = c
            .rpc(Tmsg::Renameat {
                olddirfid: 0,
                oldname: b"hard",
                newdirfid: 5,
                newname: b"moved",
            })
            .await;
        assert!(matches!(r.msg(), Rmsg::Renameat {}));
        assert_eq!(c.walk(0, 7, &["hard"]).await, Err(Errno::ENOENT));
        let r = c
            .rpc(Tmsg::Renameat {
                olddirfid: 5,
                oldname: b"moved",
                newdirfid: 5,
                newname: b"fifo",
            })
            .await;
        assert!(r.ok().is_ok());
        assert_eq!(c.walk(5, 7, &["fifo"]).await.unwrap()[0].path, h.path);
        // Trename moves the file of a fid.
        let r = c
            .rpc(Tmsg::Rename {
                fid: 7,
                dfid: 0,
                name: b"back",
            })
            .await;
        assert!(matches!(r.msg(), Rmsg::Rename {}), "{:?}", r.msg());
        assert_eq!(c.walk(0, 8, &["back"]).await.unwrap()[0].path, h.path);
        // ...and knows where it went: a second rename through it works.
        let r = c
            .rpc(Tmsg::Rename {
                fid: 7,
                dfid: 5,
                name: b"again",
            })
            .await;
        assert!(r.ok().is_ok());
        // Over a non-empty directory fails.
        c.mkdir(0, "full", 0o755, 0).await.unwrap();
        c.walk(0, 9, &["full"]).await.unwrap();
        c.mkdir(9, "x", 0o755, 0).await.unwrap();
        c.mkdir(0, "e", 0o755, 0).await.unwrap();
        let r = c
            .rpc(Tmsg::Renameat {
                olddirfid: 0,
                oldname: b"e",
                newdirfid: 0,
                newname: b"full",
            })
            .await;
        assert_eq!(r.ok().unwrap_err(), Errno::ENOTEMPTY);
        // unlinkat: files, directories with AT_REMOVEDIR, wrong kinds.
        assert_eq!(c.unlinkat(0, "full", 0).await, Err(Errno::EISDIR));
        assert_eq!(
            c.unlinkat(0, "full", AT_REMOVEDIR).await,
            Err(Errno::ENOTEMPTY)
        );
        c.unlinkat(9, "x", AT_REMOVEDIR).await.unwrap();
        c.unlinkat(0, "full", AT_REMOVEDIR).await.unwrap();
        assert_eq!(
            c.unlinkat(5, "chr", AT_REMOVEDIR).await,
            Err(Errno::ENOTDIR)
        );
        c.unlinkat(5, "chr", 0).await.unwrap();
        assert_eq!(c.unlinkat(5, "chr", 0).await, Err(Errno::ENOENT));
        assert_eq!(c.unlinkat(5, "fifo", 0x1).await, Err(Errno::EINVAL));
        // Tremove removes the fid's file and clunks it, even on error.
        c.walk(0, 10, &["e"]).await.unwrap();
        c.remove(10).await.unwrap();
        assert_eq!(c.walk(0, 11, &["e"]).await, Err(Errno::ENOENT));
        assert_eq!(c.getattr(10).await, Err(Errno::EBADF));
        c.walk(0, 12, &["d"]).await.unwrap();
        assert_eq!(c.remove(12).await, Err(Errno::ENOTEMPTY));
        assert_eq!(c.getattr(12).await, Err(Errno::EBADF));
        c.walk(0, 13, &[]).await.unwrap();
        assert_eq!(c.remove(13).await, Err(Errno::EBUSY), "the root");
    });
}

#[test]
fn setattr_mode_owner_size_and_times() {
    let env = Env::new();
    let c = env.client_as(0);
    env.run(async {
        c.create_file(1, "/", "f", 0o644).await.unwrap();
        c.write(1, 0, &[7u8; 10_000]).await.unwrap();
        let set =
            |valid: u32, mode, uid, gid, size, at: (u64, u64), mt: (u64, u64)| Tmsg::Setattr {
                fid: 1,
                valid: SetattrValid(valid),
                mode,
                uid,
                gid,
                size,
                atime_sec: at.0,
                atime_nsec: at.1,
                mtime_sec: mt.0,
                mtime_nsec: mt.1,
            };
        assert!(c
            .rpc(set(0x1, 0o4711, 0, 0, 0, (0, 0), (0, 0)))
            .await
            .ok()
            .is_ok());
        assert_eq!(c.getattr(1).await.unwrap().mode, S_IFREG | 0o4711);
        assert!(c
            .rpc(set(0x2 | 0x4, 0, 1000, 100, 0, (0, 0), (0, 0)))
            .await
            .ok()
            .is_ok());
        let a = c.getattr(1).await.unwrap();
        assert_eq!((a.uid, a.gid), (1000, 100));
        assert_eq!(a.mode & 0o7777, 0o711, "chown clears setuid");
        assert!(c
            .rpc(set(0x8, 0, 0, 0, 100, (0, 0), (0, 0)))
            .await
            .ok()
            .is_ok());
        assert_eq!(c.getattr(1).await.unwrap().size, 100);
        assert_eq!(c.read_all(1).await.unwrap(), vec![7u8; 100]);
        assert!(c
            .rpc(set(0x8, 0, 0, 0, 5000, (0, 0), (0, 0)))
            .await
            .ok()
            .is_ok());
        let back = c.read_all(1).await.unwrap();
        assert_eq!(back.len(), 5000);
        assert!(back[100..].iter().all(|&b| b == 0));
        // Explicit times.
        let valid = 0x10 | 0x20 | 0x80 | 0x100;
        assert!(c
            .rpc(set(valid, 0, 0, 0, 0, (1234, 5), (5678, 9)))
            .await
            .ok()
            .is_ok());
        let a = c.getattr(1).await.unwrap();
        assert_eq!((a.atime_sec, a.mtime), (1234, (5678, 9)));
        // Times now.
        assert!(c
            .rpc(set(0x10 | 0x20 | 0x40, 0, 0, 0, 0, (0, 0), (0, 0)))
            .await
            .ok()
            .is_ok());
        assert_eq!(c.getattr(1).await.unwrap().mtime.0, 1_700_000_000);
        // Bad nanoseconds.
        assert_eq!(
            c.rpc(set(0x20 | 0x100, 0, 0, 0, 0, (0, 0), (1, 2_000_000_000)))
                .await
                .ok()
                .unwrap_err(),
            Errno::EINVAL
        );
        c.walk(0, 2, &[]).await.unwrap();
        let r = c
            .rpc(Tmsg::Setattr {
                fid: 2,
                valid: SetattrValid(0x8),
                mode: 0,
                uid: 0,
                gid: 0,
                size: 0,
                atime_sec: 0,
                atime_nsec: 0,
                mtime_sec: 0,
                mtime_nsec: 0,
            })
            .await;
        assert_eq!(r.ok().unwrap_err(), Errno::EISDIR);
    });
}

#[test]
fn statfs_and_fsync() {
    let env = Env::new();
    let c = env.client_as(0);
    env.run(async {
        match c.rpc(Tmsg::Statfs { fid: 0 }).await.msg() {
            Rmsg::Statfs {
                ty,
                bsize,
                namelen,
                blocks,
                bfree,
                ..
            } => {
                assert_eq!(ty, wire::V9FS_MAGIC);
                assert_eq!((bsize, namelen), (4096, 255));
                assert!(blocks >= bfree && bfree > 0);
            }
            m => panic!("{m:?}"),
        }
        c.create_file(1, "/", "f", 0o644).await.unwrap();
        c.write(1, 0, b"durable").await.unwrap();
        let commits = env.store.commits();
        assert!(matches!(
            c.rpc(Tmsg::Fsync {
                fid: 1,
                datasync: 0
            })
            .await
            .msg(),
            Rmsg::Fsync {}
        ));
        assert!(env.store.commits() > commits, "fsync commits");
        assert_eq!(
            c.rpc(Tmsg::Statfs { fid: 42 }).await.ok().unwrap_err(),
            Errno::EBADF
        );
    });
}

#[test]
fn readdir_pages_and_offsets_stay_valid_under_churn() {
    let env = Env::new();
    let c = env.client_as(0);
    env.run(async {
        c.mkdir(0, "d", 0o755, 0).await.unwrap();
        c.walk(0, 1, &["d"]).await.unwrap();
        for i in 0..300 {
            c.walk(1, 2, &[]).await.unwrap();
            c.lcreate(2, &format!("file-{i:04}-{}", "n".repeat(40)), RW, 0o644, 0)
                .await
                .unwrap();
            c.clunk(2).await.unwrap();
        }
        c.lopen(1, O_RDONLY | O_DIRECTORY).await.unwrap();
        // Small pages: many Treaddir round trips.
        let all = c.readdir_all(1, 700).await.unwrap();
        assert_eq!(all.len(), 302);
        assert_eq!((all[0].0.as_str(), all[1].0.as_str()), (".", ".."));
        assert_eq!(all[0].2, DT_DIR);
        assert!(all[2..].iter().all(|e| e.2 == DT_REG));
        // Offsets are strictly increasing positions.
        assert!(all.windows(2).all(|w| w[0].3 < w[1].3));
        // A page never exceeds count.
        let page = c.readdir(1, 0, 700).await.unwrap();
        let bytes: usize = page.iter().map(|e| 24 + e.0.len()).sum();
        assert!(bytes <= 700 && page.len() >= 2);
        // Too small for even one entry.
        assert_eq!(c.readdir(1, 2, 30).await, Err(Errno::EINVAL));

        // Churn: read a third, delete half the names and create new ones,
        // continue from the saved offset.
        let first = c.readdir(1, 0, 4000).await.unwrap();
        let resume = first.last().unwrap().3;
        let seen: Vec<String> = first.iter().map(|e| e.0.clone()).collect();
        let mut deleted = std::collections::BTreeSet::new();
        for (i, e) in all[2..].iter().enumerate() {
            if i % 2 == 0 {
                c.unlinkat(1, &e.0, 0).await.unwrap();
                deleted.insert(e.0.clone());
            }
        }
        c.walk(0, 3, &["d"]).await.unwrap();
        for i in 0..30 {
            c.walk(3, 4, &[]).await.unwrap();
            c.lcreate(4, &format!("new-{i}"), RW, 0o644, 0)
                .await
                .unwrap();
            c.clunk(4).await.unwrap();
        }
        let mut rest = Vec::new();
        let mut off = resume;
        loop {
            let p = c.readdir(1, off, 2000).await.unwrap();
            if p.is_empty() {
                break;
            }
            off = p.last().unwrap().3;
            rest.extend(p.into_iter().map(|e| e.0));
        }
        let mut names: Vec<String> = seen.clone();
        names.extend(rest.iter().cloned());
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "no entry twice");
        for e in &all[2..] {
            let was_seen = seen.contains(&e.0);
            let later = rest.contains(&e.0);
            if !deleted.contains(&e.0) {
                assert!(was_seen || later, "{} missing", e.0);
            } else {
                assert!(!later, "{} deleted but listed after", e.0);
            }
        }
        // Entries created during the listing come after it, since
        // positions only grow.
        assert!(rest.iter().filter(|n| n.starts_with("new-")).count() == 30);
        // Readdir of a file fid.
        c.walk(0, 5, &["d", "new-1"]).await.unwrap();
        assert_eq!(c.readdir(5, 0, 4000).await, Err(Errno::ENOTDIR));
    });
}

#[test]
fn xattrs_get_list_set_replace_remove() {
    let env = Env::new();
    let c = env.client_as(0);
    env.run(async {
        c.create_file(1, "/", "f", 0o644).await.unwrap();
        c.walk(0, 2, &["f"]).await.unwrap();
        let big: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        c.xattr_set(2, 10, "user.small", b"1", 0).await.unwrap();
        c.xattr_set(2, 10, "user.big", &big, 0).await.unwrap();
        assert_eq!(c.xattr_get(2, 11, "user.small").await.unwrap(), b"1");
        assert_eq!(c.xattr_get(2, 11, "user.big").await.unwrap(), big);
        // Size query: walk without reading.
        match c
            .rpc(Tmsg::Xattrwalk {
                fid: 2,
                newfid: 12,
                name: b"user.big",
            })
            .await
            .msg()
        {
            Rmsg::Xattrwalk { size } => assert_eq!(size, 4000),
            m => panic!("{m:?}"),
        }
        // Partial reads at offsets.
        assert_eq!(c.read(12, 3990, 100).await.unwrap(), &big[3990..]);
        c.clunk(12).await.unwrap();
        let list = c.xattr_get(2, 11, "").await.unwrap();
        let mut names: Vec<&[u8]> = list.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
        names.sort();
        assert_eq!(names, vec![b"user.big" as &[u8], b"user.small"]);
        assert_eq!(
            c.xattr_set(2, 10, "user.small", b"2", XATTR_CREATE).await,
            Err(Errno::EEXIST)
        );
        assert_eq!(
            c.xattr_set(2, 10, "user.none", b"2", XATTR_REPLACE).await,
            Err(Errno::ENODATA)
        );
        c.xattr_set(2, 10, "user.small", b"replaced", XATTR_REPLACE)
            .await
            .unwrap();
        assert_eq!(c.xattr_get(2, 11, "user.small").await.unwrap(), b"replaced");
        // An empty value is a value; a zero-size replace is removexattr.
        c.xattr_set(2, 10, "user.empty", b"", 0).await.unwrap();
        assert_eq!(c.xattr_get(2, 11, "user.empty").await.unwrap(), b"");
        c.xattr_set(2, 10, "user.empty", b"", XATTR_REPLACE)
            .await
            .unwrap();
        assert_eq!(c.xattr_get(2, 11, "user.empty").await, Err(Errno::ENODATA));
        assert_eq!(
            c.xattr_set(2, 10, "user.empty", b"", XATTR_REPLACE).await,
            Err(Errno::ENODATA)
        );
        // Bad requests.
        assert_eq!(
            c.xattr_set(2, 10, "nonamespace", b"v", 0).await,
            Err(Errno::EOPNOTSUPP)
        );
        c.walk(2, 13, &[]).await.unwrap();
        let r = c
            .rpc(Tmsg::Xattrcreate {
                fid: 13,
                name: b"user.x",
                attr_size: 70_000,
                flags: 0,
            })
            .await;
        assert_eq!(r.ok().unwrap_err(), Errno::E2BIG);
        let r = c
            .rpc(Tmsg::Xattrcreate {
                fid: 13,
                name: b"user.x",
                attr_size: 4,
                flags: 0,
            })
            .await;
        assert!(r.ok().is_ok());
        assert_eq!(
            c.write(13, 1, b"ab").await,
            Err(Errno::EINVAL),
            "out of order"
        );
        assert_eq!(
            c.write(13, 0, b"abcde").await,
            Err(Errno::EINVAL),
            "too long"
        );
        c.write(13, 0, b"ab").await.unwrap();
        assert_eq!(c.clunk(13).await, Err(Errno::EINVAL), "short value");
        assert_eq!(c.xattr_get(2, 11, "user.x").await, Err(Errno::ENODATA));
        // On a directory.
        c.xattr_set(0, 10, "user.on-dir", b"dir value", 0)
            .await
            .unwrap();
        assert_eq!(
            c.xattr_get(0, 11, "user.on-dir").await.unwrap(),
            b"dir value"
        );
        // File content untouched.
        assert!(c.read_all(1).await.unwrap().is_empty());
    });
}

#[test]
fn unlink_while_open_keeps_the_file_until_the_last_clunk() {
    let env = Env::new();
    let c = env.client_as(0);
    let ino = env.run(async {
        let q = c.create_file(1, "/", "victim", 0o644).await.unwrap();
        c.write(1, 0, &[5u8; 70_000]).await.unwrap();
        c.walk(0, 2, &["victim"]).await.unwrap();
        c.lopen(2, O_RDONLY).await.unwrap();
        c.walk(0, 3, &["victim"]).await.unwrap(); // walked, not open
        c.unlinkat(0, "victim", 0).await.unwrap();
        assert_eq!(c.walk(0, 4, &["victim"]).await, Err(Errno::ENOENT));
        // Both open fids still work: read, write, getattr, setattr.
        assert_eq!(c.read_all(2).await.unwrap(), vec![5u8; 70_000]);
        c.write(1, 69_990, b"after unlink").await.unwrap();
        assert_eq!(c.read(2, 69_990, 100).await.unwrap(), b"after unlink");
        let a = c.getattr(3).await.unwrap();
        assert_eq!((a.nlink, a.size), (0, 70_002));
        let r = c
            .rpc(Tmsg::Setattr {
                fid: 1,
                valid: SetattrValid(0x8 | 0x1),
                mode: 0o600,
                uid: 0,
                gid: 0,
                size: 1000,
                atime_sec: 0,
                atime_nsec: 0,
                mtime_sec: 0,
                mtime_nsec: 0,
            })
            .await;
        assert!(r.ok().is_ok());
        let a = c.getattr(2).await.unwrap();
        assert_eq!((a.size, a.mode), (1000, S_IFREG | 0o600));
        c.clunk(1).await.unwrap();
        assert_eq!(c.read(2, 0, 10).await.unwrap(), vec![5u8; 10]);
        assert_eq!(env.mount().open_count(q.path), 1);
        c.clunk(2).await.unwrap();
        // Gone with the last open: the walked fid sees ENOENT.
        assert_eq!(c.getattr(3).await, Err(Errno::ENOENT));
        q.path
    });
    assert_eq!(env.mount().open_count(ino), 0);
}

#[test]
fn rename_over_an_open_file_and_rmdir_of_an_open_directory() {
    let env = Env::new();
    let c = env.client_as(0);
    env.run(async {
        c.create_file(1, "/", "old", 0o644).await.unwrap();
        c.write(1, 0, b"old content").await.unwrap();
        c.create_file(2, "/", "new", 0o644).await.unwrap();
        c.write(2, 0, b"new!").await.unwrap();
        let r = c
            .rpc(Tmsg::Renameat {
                olddirfid: 0,
                oldname: b"new",
                newdirfid: 0,
                newname: b"old",
            })
            .await;
        assert!(r.ok().is_ok());
        assert_eq!(c.read_all(1).await.unwrap(), b"old content");
        c.walk(0, 3, &["old"]).await.unwrap();
        c.lopen(3, O_RDONLY).await.unwrap();
        assert_eq!(c.read_all(3).await.unwrap(), b"new!");

        // A directory removed while open: getattr works, readdir is empty.
        c.mkdir(0, "gone", 0o755, 0).await.unwrap();
        c.walk(0, 4, &["gone"]).await.unwrap();
        c.lopen(4, O_RDONLY | O_DIRECTORY).await.unwrap();
        c.unlinkat(0, "gone", AT_REMOVEDIR).await.unwrap();
        let a = c.getattr(4).await.unwrap();
        assert_eq!(a.mode & S_IFMT, S_IFDIR);
        assert_eq!(c.readdir_all(4, 4000).await.unwrap(), vec![]);
        assert_eq!(c.mkdir(4, "x", 0o755, 0).await, Err(Errno::ENOENT));
        c.clunk(4).await.unwrap();
        assert_eq!(c.walk(0, 5, &["gone"]).await, Err(Errno::ENOENT));
    });
}

#[test]
fn permissions_follow_the_attached_user() {
    let env = Env::new();
    let root = env.client_as(0);
    env.run(async {
        root.mkdir(0, "shared", 0o777, 0).await.unwrap();
        root.mkdir(0, "closed", 0o755, 0).await.unwrap();
        root.create_file(9, "/closed", "kept", 0o666).await.unwrap();
        root.create_file(1, "/shared", "rootonly", 0o600)
            .await
            .unwrap();
        root.write(1, 0, b"secret").await.unwrap();
        root.create_file(2, "/shared", "owned", 0o640)
            .await
            .unwrap();
        let r = root
            .rpc(Tmsg::Setattr {
                fid: 2,
                valid: SetattrValid(0x2 | 0x4),
                mode: 0,
                uid: 1000,
                gid: 1000,
                size: 0,
                atime_sec: 0,
                atime_nsec: 0,
                mtime_sec: 0,
                mtime_nsec: 0,
            })
            .await;
        assert!(r.ok().is_ok());
    });
    // access=user: the client attaches once per uid with n_uname.
    let user = env.connect();
    env.run(async {
        user.version(MSIZE).await;
        user.attach(0, b"nobody", b"", 1000).await.unwrap();
        // Own file: write it.
        user.walk_path(0, 1, "shared/owned").await.unwrap();
        user.lopen(1, O_WRONLY).await.unwrap();
        user.write(1, 0, b"user wrote").await.unwrap();
        // Root's 0600 file: no read, no write.
        user.walk_path(0, 2, "shared/rootonly").await.unwrap();
        assert_eq!(user.lopen(2, O_RDONLY).await, Err(Errno::EACCES));
        assert_eq!(user.lopen(2, O_WRONLY).await, Err(Errno::EACCES));
        // chmod: own file yes, root's no.
        let chmod = |fid, mode| Tmsg::Setattr {
            fid,
            valid: SetattrValid(0x1),
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            atime_sec: 0,
            atime_nsec: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
        };
        assert!(user.rpc(chmod(1, 0o600)).await.ok().is_ok());
        assert_eq!(
            user.rpc(chmod(2, 0o666)).await.ok().unwrap_err(),
            Errno::EPERM
        );
        // chown to root, chgrp to a foreign group: no.
        let chown = |uid, gid, valid| Tmsg::Setattr {
            fid: 1,
            valid: SetattrValid(valid),
            mode: 0,
            uid,
            gid,
            size: 0,
            atime_sec: 0,
            atime_nsec: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
        };
        assert_eq!(
            user.rpc(chown(0, 0, 0x2)).await.ok().unwrap_err(),
            Errno::EPERM
        );
        assert_eq!(
            user.rpc(chown(0, 5242, 0x4)).await.ok().unwrap_err(),
            Errno::EPERM
        );
        // Creating in root's 0755 directory: no.
        user.walk_path(0, 3, "closed").await.unwrap();
        assert_eq!(user.mkdir(3, "sub", 0o755, 1000).await, Err(Errno::EACCES));
        assert_eq!(
            user.lcreate(3, "f", RW, 0o644, 1000).await,
            Err(Errno::EACCES)
        );
        // In the shared dir: yes, owned by the user and the gid it sent.
        user.walk_path(0, 4, "shared").await.unwrap();
        user.lcreate(4, "userfile", RW, 0o644, 1000).await.unwrap();
        let a = user.getattr(4).await.unwrap();
        assert_eq!((a.uid, a.gid), (1000, 1000));
        user.walk_path(0, 5, "shared").await.unwrap();
        let q = user.mkdir(5, "userdir", 0o755, 1000).await.unwrap();
        assert_eq!(q.ty, QidType::DIR);
        // Removing from root's 0755 directory: no, even a 0666 file.
        assert_eq!(user.unlinkat(3, "kept", 0).await, Err(Errno::EACCES));
        assert_eq!(user.unlinkat(3, "nothing", 0).await, Err(Errno::ENOENT));
    });
    // access=any: uname nobody without n_uname acts as nobody.
    let any = env.connect();
    env.run(async {
        any.version(MSIZE).await;
        any.attach(0, b"nobody", b"", NONUNAME).await.unwrap();
        any.walk(0, 1, &["shared"]).await.unwrap();
        any.lcreate(1, "by-nobody", RW, 0o644, NOBODY)
            .await
            .unwrap();
        assert_eq!(any.getattr(1).await.unwrap().uid, NOBODY);
        assert_eq!(any.mkdir(0, "top", 0o755, 0).await, Err(Errno::EACCES));
    });
}

#[test]
fn root_squash_maps_root_to_nobody() {
    let env = Env::with(ServerConfig {
        root_squash: true,
        ..ServerConfig::default()
    });
    let c = env.client_as(0);
    env.run(async {
        // The root directory belongs to root and is 0755: nobody can't write.
        assert_eq!(c.mkdir(0, "d", 0o755, 0).await, Err(Errno::EACCES));
    });
    // Let squashed root write somewhere (make the root 0777 directly).
    let sa = SetAttr {
        mode: Some(0o777),
        ..SetAttr::default()
    };
    env.run(env.mount().setattr(&Cred::root(), 1, &sa)).unwrap();
    env.run(async {
        c.walk(0, 1, &[]).await.unwrap();
        c.lcreate(1, "f", RW, 0o644, 0).await.unwrap();
        let a = c.getattr(1).await.unwrap();
        assert_eq!((a.uid, a.gid), (NOBODY, NOBODY));
    });
}

#[test]
fn posix_locks_conflict_getlock_block_and_release() {
    let env = Env::new();
    let c = env.client_as(0);
    let lock = |fid, ty, flags, start, length, pid: u32| Tmsg::Lock {
        fid,
        ty,
        flags,
        start,
        length,
        proc_id: pid,
        client_id: b"guest",
    };
    let getlock = |fid, ty, start, length, pid: u32| Tmsg::Getlock {
        fid,
        ty,
        start,
        length,
        proc_id: pid,
        client_id: b"guest",
    };
    env.run(async {
        c.create_file(1, "/", "f", 0o644).await.unwrap();
        c.walk(0, 2, &["f"]).await.unwrap();
        c.lopen(2, RW).await.unwrap();
        let status = |r: common::Reply| match r.msg() {
            Rmsg::Lock { status } => status,
            m => panic!("{m:?}"),
        };
        assert_eq!(
            status(c.rpc(lock(1, LockType::Write, 0, 0, 100, 10)).await),
            LockStatus::Success
        );
        // Our own lock: F_GETLK says unlocked.
        match c.rpc(getlock(1, LockType::Write, 0, 100, 10)).await.msg() {
            Rmsg::Getlock {
                ty,
                start,
                length,
                proc_id,
                ..
            } => {
                assert_eq!((ty, start, length, proc_id), (LockType::Unlock, 0, 100, 10))
            }
            m => panic!("{m:?}"),
        }
        // Another process sees it.
        match c.rpc(getlock(2, LockType::Read, 50, 0, 20)).await.msg() {
            Rmsg::Getlock {
                ty,
                start,
                length,
                proc_id,
                client_id,
            } => {
                assert_eq!(
                    (ty, start, length, proc_id, client_id),
                    (LockType::Write, 0, 100, 10, b"guest" as &[u8])
                )
            }
            m => panic!("{m:?}"),
        }
        assert_eq!(
            status(c.rpc(lock(2, LockType::Read, 0, 99, 1, 20)).await),
            LockStatus::Blocked
        );
        assert_eq!(
            status(c.rpc(lock(2, LockType::Read, 0, 100, 0, 20)).await),
            LockStatus::Success
        );
        // A blocking request waits, other requests still run, and it is
        // granted when the holder unlocks.
        let t = c.tag();
        c.send(t, &lock(2, LockType::Write, LOCK_FLAGS_BLOCK, 0, 10, 20));
        c.sleep(1_000_000).await;
        assert!(!c.has_reply(t));
        assert!(c.getattr(1).await.is_ok(), "a blocked lock stalls nothing");
        assert_eq!(
            status(c.rpc(lock(1, LockType::Unlock, 0, 0, 0, 10)).await),
            LockStatus::Success
        );
        assert_eq!(status(c.recv(t).await), LockStatus::Success);
        assert_eq!(env.server.locks_held(), 2);
        // A blocking wait ends with Blocked after the server's wait bound.
        c.walk(0, 3, &["f"]).await.unwrap();
        c.lopen(3, RW).await.unwrap();
        let t = c.tag();
        c.send(t, &lock(3, LockType::Write, LOCK_FLAGS_BLOCK, 0, 0, 30));
        assert_eq!(status(c.recv(t).await), LockStatus::Blocked);
        // Clunking the fid a lock was taken through drops it.
        c.clunk(2).await.unwrap();
        assert_eq!(env.server.locks_held(), 0);
        assert_eq!(
            status(c.rpc(lock(3, LockType::Write, 0, 0, 0, 30)).await),
            LockStatus::Success
        );
        // Linux asks F_GETLK with type UNLCK: any other owner's lock counts.
        match c.rpc(getlock(3, LockType::Unlock, 0, 0, 40)).await.msg() {
            Rmsg::Getlock { ty, proc_id, .. } => assert_eq!((ty, proc_id), (LockType::Write, 30)),
            m => panic!("{m:?}"),
        }
        match c.rpc(getlock(3, LockType::Unlock, 0, 0, 30)).await.msg() {
            Rmsg::Getlock { ty, .. } => assert_eq!(ty, LockType::Unlock),
            m => panic!("{m:?}"),
        }
        let long = vec![b'x'; 300];
        let r = c
            .rpc(Tmsg::Lock {
                fid: 3,
                ty: LockType::Read,
                flags: 0,
                start: 0,
                length: 0,
                proc_id: 1,
                client_id: &long,
            })
            .await;
        assert_eq!(r.ok().unwrap_err(), Errno::EINVAL);
    });
    // Closing the connection releases everything it held.
    c.hang_up();
    env.run(async {
        c.sleep(1000).await;
    });
    assert_eq!(env.server.locks_held(), 0);
    assert_eq!(env.server.connection_count(), 0);
}

#[test]
fn flush_cancels_a_waiting_request_and_answers_after_it() {
    let env = Env::new();
    let c = env.client_as(0);
    env.run(async {
        c.create_file(1, "/", "f", 0o644).await.unwrap();
        c.walk(0, 2, &["f"]).await.unwrap();
        c.lopen(2, RW).await.unwrap();
        let r = c
            .rpc(Tmsg::Lock {
                fid: 1,
                ty: LockType::Write,
                flags: 0,
                start: 0,
                length: 0,
                proc_id: 1,
                client_id: b"a",
            })
            .await;
        assert!(matches!(
            r.msg(),
            Rmsg::Lock {
                status: LockStatus::Success
            }
        ));
        let before = counter("p9.cancelled");
        let t = c.tag();
        c.send(
            t,
            &Tmsg::Lock {
                fid: 2,
                ty: LockType::Write,
                flags: LOCK_FLAGS_BLOCK,
                start: 0,
                length: 0,
                proc_id: 2,
                client_id: b"a",
            },
        );
        c.sleep(1_000_000).await;
        let f = c.tag();
        c.send(f, &Tmsg::Flush { oldtag: t });
        // Rflush arrives; the flushed lock never answers.
        let r = c.recv_any().await.unwrap();
        assert_eq!(r.tag(), f);
        assert!(matches!(r.msg(), Rmsg::Flush {}));
        assert!(counter("p9.cancelled") > before);
        c.sleep(60_000_000_000).await;
        assert!(!c.has_reply(t));
        // The flushed lock was not taken.
        assert_eq!(env.server.locks_held(), 1);
        // The tag is free again.
        c.send(
            t,
            &Tmsg::Getattr {
                fid: 1,
                request_mask: wire::GetattrMask::ALL,
            },
        );
        assert!(c.recv(t).await.ok().is_ok());
        // Flushing a finished (or unknown) tag answers at once.
        let r = c.rpc(Tmsg::Flush { oldtag: 4242 }).await;
        assert!(matches!(r.msg(), Rmsg::Flush {}));
        // A request flushed before it started is cancelled: only Rflush.
        let t = c.tag();
        let f = c.tag();
        c.send(
            t,
            &Tmsg::Getattr {
                fid: 1,
                request_mask: wire::GetattrMask::ALL,
            },
        );
        c.send(f, &Tmsg::Flush { oldtag: t });
        assert_eq!(c.recv_any().await.unwrap().tag(), f);
        c.sleep(1_000_000).await;
        assert!(!c.has_reply(t));
        // A request that finished before the flush arrived: its reply,
        // then Rflush.
        let t = c.tag();
        c.send(
            t,
            &Tmsg::Getattr {
                fid: 1,
                request_mask: wire::GetattrMask::ALL,
            },
        );
        c.sleep(1_000).await;
        let f = c.tag();
        c.send(f, &Tmsg::Flush { oldtag: t });
        assert_eq!(c.recv_any().await.unwrap().tag(), t);
        assert_eq!(c.recv_any().await.unwrap().tag(), f);
    });
}

#[test]
fn fid_table_and_request_queue_are_bounded() {
    let env = Env::with(ServerConfig {
        fids_max: 4,
        requests_max: 2,
        ..ServerConfig::default()
    });
    let c = env.client_as(0);
    let before = counter("p9.fid_limit");
    env.run(async {
        c.walk(0, 1, &[]).await.unwrap();
        c.walk(0, 2, &[]).await.unwrap();
        c.walk(0, 3, &[]).await.unwrap();
        assert_eq!(c.walk(0, 4, &[]).await, Err(Errno::EMFILE));
        assert_eq!(c.attach(4, b"", b"", 0).await, Err(Errno::EMFILE));
        c.clunk(3).await.unwrap();
        c.walk(0, 4, &[]).await.unwrap();
    });
    assert!(counter("p9.fid_limit") >= before + 2);
    // Three blocking locks on a 2-request queue: the third waits in the
    // socket until a slot frees; all complete.
    let q_before = counter("p9.request_queue_full");
    env.run(async {
        c.clunk(4).await.unwrap();
        c.walk(0, 1, &[]).await.ok();
        let r = c
            .rpc(Tmsg::Lock {
                fid: 0,
                ty: LockType::Write,
                flags: 0,
                start: 0,
                length: 0,
                proc_id: 1,
                client_id: b"a",
            })
            .await;
        assert!(matches!(
            r.msg(),
            Rmsg::Lock {
                status: LockStatus::Success
            }
        ));
        let tags: Vec<u16> = (0..3).map(|_| c.tag()).collect();
        for (i, &t) in tags.iter().enumerate() {
            c.send(
                t,
                &Tmsg::Lock {
                    fid: 0,
                    ty: LockType::Write,
                    flags: LOCK_FLAGS_BLOCK,
                    start: 0,
                    length: 0,
                    proc_id: 10 + i as u32,
                    client_id: b"a",
                },
            );
        }
        c.sleep(1_000_000).await;
        assert!(tags.iter().all(|&t| !c.has_reply(t)));
        // The unlock queues behind the two waiters in flight; they time
        // out (Blocked) or get the lock in turn. Every request is answered.
        let u = c.tag();
        c.send(
            u,
            &Tmsg::Lock {
                fid: 0,
                ty: LockType::Unlock,
                flags: 0,
                start: 0,
                length: 0,
                proc_id: 1,
                client_id: b"a",
            },
        );
        for &t in tags.iter().chain([u].iter()) {
            let r = c.recv(t).await;
            assert!(matches!(r.msg(), Rmsg::Lock { .. }));
        }
    });
    assert!(counter("p9.request_queue_full") > q_before);
}

#[test]
fn malformed_messages_get_errors_and_bad_framing_closes() {
    let env = Env::new();
    let c = env.client_as(0);
    env.run(async {
        // Unknown type: EOPNOTSUPP with the tag.
        let mut f = vec![7, 0, 0, 0, 200, 9, 0];
        c.send_raw(&f);
        let r = c.recv(9).await;
        assert_eq!(r.ok().unwrap_err(), Errno::EOPNOTSUPP);
        // A 9P2000 Topen: not decoded either.
        f = vec![12, 0, 0, 0, 112, 10, 0, 1, 0, 0, 0, 0];
        c.send_raw(&f);
        assert_eq!(c.recv(10).await.ok().unwrap_err(), Errno::EOPNOTSUPP);
        // A truncated Twalk: EPROTO.
        f = vec![11, 0, 0, 0, 110, 11, 0, 0, 0, 0, 0];
        c.send_raw(&f);
        assert_eq!(c.recv(11).await.ok().unwrap_err(), Errno::EPROTO);
        // A reply sent to the server: EPROTO.
        let mut out = Vec::new();
        Rmsg::Clunk {}.encode(12, &mut out).unwrap();
        c.send_raw(&out);
        assert_eq!(c.recv(12).await.ok().unwrap_err(), Errno::EPROTO);
        // Still usable.
        assert!(c.getattr(0).await.is_ok());
        // A frame over msize closes the connection.
        let big = (MSIZE + 1).to_le_bytes();
        c.send_raw(&[big[0], big[1], big[2], big[3], 118, 1, 0]);
        assert!(c.recv_any().await.is_none());
    });
    assert!(c.server_closed());
    assert_eq!(env.server.connection_count(), 0);
    // A size field below the header closes too.
    let c = env.client_as(0);
    env.run(async {
        c.send_raw(&[3, 0, 0, 0]);
        assert!(c.recv_any().await.is_none());
    });
    // A duplicate tag in flight closes the connection.
    let c = env.client_as(0);
    env.run(async {
        c.create_file(1, "/", "f", 0o644).await.unwrap();
        c.rpc(Tmsg::Lock {
            fid: 1,
            ty: LockType::Write,
            flags: 0,
            start: 0,
            length: 0,
            proc_id: 1,
            client_id: b"a",
        })
        .await;
        let lock = Tmsg::Lock {
            fid: 1,
            ty: LockType::Write,
            flags: LOCK_FLAGS_BLOCK,
            start: 0,
            length: 0,
            proc_id: 2,
            client_id: b"a",
        };
        c.send(500, &lock);
        c.send(500, &Tmsg::Clunk { fid: 0 });
        loop {
            if c.recv_any().await.is_none() {
                break;
            }
        }
    });
    assert_eq!(env.server.connection_count(), 0);
}

#[test]
fn random_bytes_never_panic_the_server() {
    let env = Env::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let c = env.client_as(0);
        env.run(async {
            for _ in 0..20 {
                let len = 7 + (next() % 60) as usize;
                let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if next() % 4 != 0 {
                    f[..4].copy_from_slice(&(len as u32).to_le_bytes());
                    // Mostly known request types.
                    let types = Tmsg::TYPE_CODES;
                    f[4] = types[(next() % types.len() as u64) as usize];
                    if f[4] == 100 && round % 2 == 0 {
                        f[4] = 120;
                    }
                }
                c.send_raw(&f);
            }
            c.hang_up();
            while c.recv_any().await.is_some() {}
        });
    }
    env.run(async {});
    assert_eq!(env.server.connection_count(), 0);
    // The volume is still fine.
    let c = env.client_as(0);
    env.run(async {
        assert!(c.getattr(0).await.is_ok());
    });
}

#[test]
fn version_and_teardown_release_open_fids() {
    let env = Env::new();
    let c = env.client_as(0);
    let ino = env.run(async {
        let q = c.create_file(1, "/", "f", 0o644).await.unwrap();
        c.walk(0, 2, &["f"]).await.unwrap();
        c.lopen(2, O_RDONLY).await.unwrap();
        assert_eq!(env.mount().open_count(q.path), 2);
        // A new Tversion resets the session: every fid is clunked.
        c.version(MSIZE).await;
        assert_eq!(env.mount().open_count(q.path), 0);
        assert_eq!(c.getattr(0).await, Err(Errno::EBADF));
        c.attach(0, b"", b"", 0).await.unwrap();
        c.walk(0, 1, &["f"]).await.unwrap();
        c.lopen(1, O_RDONLY).await.unwrap();
        c.unlinkat(0, "f", 0).await.unwrap();
        q.path
    });
    assert_eq!(env.mount().open_count(ino), 1);
    let info = &env.server.clients()[0];
    assert_eq!((info.fids, info.open_fids), (2, 1));
    // The client goes away: its unlinked open file is deleted.
    c.hang_up();
    env.run(async { c.sleep(1000).await });
    assert_eq!(env.mount().open_count(ino), 0);
    assert!(env.run(env.mount().getattr(ino)).is_err());
}

#[test]
fn shutdown_closes_every_connection() {
    let env = Env::new();
    let a = env.client_as(0);
    let b = env.client_as(1000);
    env.run(async {
        a.create_file(1, "/", "f", 0o644).await.unwrap();
        // b waits on a lock that a holds.
        a.rpc(Tmsg::Lock {
            fid: 1,
            ty: LockType::Write,
            flags: 0,
            start: 0,
            length: 0,
            proc_id: 1,
            client_id: b"a",
        })
        .await;
        b.walk(0, 1, &["f"]).await.unwrap();
        b.lopen(1, O_RDONLY).await.unwrap();
        b.send(
            77,
            &Tmsg::Lock {
                fid: 1,
                ty: LockType::Read,
                flags: LOCK_FLAGS_BLOCK,
                start: 0,
                length: 0,
                proc_id: 2,
                client_id: b"b",
            },
        );
        b.sleep(1000).await;
    });
    assert_eq!(env.server.connection_count(), 2);
    env.run(env.server.shutdown());
    assert_eq!(env.server.connection_count(), 0);
    assert_eq!(env.server.locks_held(), 0);
    assert!(a.server_closed() || env.run(a.recv_any()).is_none());
    // New connections are refused.
    let c = env.connect();
    env.run(async {
        assert!(c.recv_any().await.is_none());
    });
    let _ = NOFID;
}

#[test]
fn a_client_that_stops_reading_holds_bounded_memory() {
    let env = Env::with(ServerConfig {
        msize_max: 65536,
        conn_memory_max_bytes: 256 * 1024,
        ..ServerConfig::default()
    });
    let c = env.client_as(0);
    let before = counter("p9.memory_full");
    env.run(async {
        assert_eq!(c.version(65536).await.0, 65536);
        c.attach(0, b"", b"", 0).await.unwrap();
        c.create_file(1, "/", "f", 0o644).await.unwrap();
        let data: Vec<u8> = (0..65000u32).map(|i| i as u8).collect();
        for i in 0..16 {
            c.write(1, i * 65000, &data).await.unwrap();
        }
    });
    // The client sends 40 big reads and reads nothing back.
    c.pipe.s2c.capacity.set(65536);
    let tags: Vec<u16> = (0..40).map(|_| c.tag()).collect();
    env.run(async {
        for (i, &t) in tags.iter().enumerate() {
            c.send(
                t,
                &Tmsg::Read {
                    fid: 1,
                    offset: (i as u64 % 16) * 65000,
                    count: 65000,
                },
            );
        }
        c.sleep(1_000_000_000).await;
    });
    let info = env.server.clients()[0].clone();
    assert!(info.memory_held <= 256 * 1024 + 65536, "{info:?}");
    assert!(counter("p9.memory_full") > before);
    assert!(c.pipe.s2c.unread() <= 2 * 65536 + 100);
    // Reading again drains everything, in order, with the right data.
    env.run(async {
        for (i, &t) in tags.iter().enumerate() {
            let r = c.recv(t).await;
            match r.msg() {
                Rmsg::Read { data } => {
                    assert_eq!(data.len(), 65000, "read {i}");
                    assert!(data.iter().enumerate().all(|(j, &b)| b == j as u8));
                }
                m => panic!("{m:?}"),
            }
        }
    });
    assert_eq!(env.server.clients()[0].memory_held, 0);
}

#[test]
fn xattr_fids_are_bounded() {
    let env = Env::with(ServerConfig {
        xattr_fids_max: 3,
        ..ServerConfig::default()
    });
    let c = env.client_as(0);
    env.run(async {
        c.xattr_set(0, 1, "user.a", b"v", 0).await.unwrap();
        for f in 10..13 {
            let r = c
                .rpc(Tmsg::Xattrwalk {
                    fid: 0,
                    newfid: f,
                    name: b"user.a",
                })
                .await;
            assert!(r.ok().is_ok());
        }
        let r = c
            .rpc(Tmsg::Xattrwalk {
                fid: 0,
                newfid: 13,
                name: b"user.a",
            })
            .await;
        assert_eq!(r.ok().unwrap_err(), Errno::ENFILE);
        c.walk(0, 14, &[]).await.unwrap();
        let r = c
            .rpc(Tmsg::Xattrcreate {
                fid: 14,
                name: b"user.b",
                attr_size: 1,
                flags: 0,
            })
            .await;
        assert_eq!(r.ok().unwrap_err(), Errno::ENFILE);
        c.clunk(10).await.unwrap();
        let r = c
            .rpc(Tmsg::Xattrcreate {
                fid: 14,
                name: b"user.b",
                attr_size: 1,
                flags: 0,
            })
            .await;
        assert!(r.ok().is_ok());
        c.write(14, 0, b"x").await.unwrap();
        c.clunk(14).await.unwrap();
        // 11 and 12 still hold values: one more fits, then no more.
        assert_eq!(c.xattr_get(0, 15, "user.b").await.unwrap(), b"x");
        c.walk(0, 16, &[]).await.unwrap();
        let r = c
            .rpc(Tmsg::Xattrcreate {
                fid: 16,
                name: b"user.c",
                attr_size: 1,
                flags: 0,
            })
            .await;
        assert!(r.ok().is_ok());
        assert_eq!(c.xattr_get(0, 17, "user.b").await, Err(Errno::ENFILE));
        c.clunk(11).await.unwrap();
        assert_eq!(c.xattr_get(0, 17, "user.b").await.unwrap(), b"x");
    });
}

/// Issue 16 item 3: `open(O_CREAT|O_RDWR, 0)` then `ftruncate` works, as
/// on Linux: a size change through a fid open for writing is checked
/// against how it was opened, not against the mode bits again. Through a
/// fid that is not open for writing the mode bits still decide.
#[test]
fn ftruncate_through_a_fid_open_for_writing_ignores_the_mode_bits() {
    let env = Env::new();
    let root = env.client_as(0);
    env.run(async {
        root.mkdir(0, "t", 0o777, 0).await.unwrap();
    });
    let user = env.connect();
    let truncate = |fid, size| Tmsg::Setattr {
        fid,
        valid: SetattrValid(0x8),
        mode: 0,
        uid: 0,
        gid: 0,
        size,
        atime_sec: 0,
        atime_nsec: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
    };
    env.run(async {
        user.version(MSIZE).await;
        user.attach(0, b"nobody", b"", 1000).await.unwrap();
        user.walk_path(0, 1, "t").await.unwrap();
        user.lcreate(1, "f", RW, 0, 1000).await.unwrap();
        user.write(1, 0, b"hello world").await.unwrap();
        assert!(user.rpc(truncate(1, 5)).await.ok().is_ok());
        let a = user.getattr(1).await.unwrap();
        assert_eq!((a.size, a.mode & 0o7777), (5, 0));
        // a fid that only names the file: the mode bits say no
        user.walk_path(0, 2, "t/f").await.unwrap();
        assert_eq!(
            user.rpc(truncate(2, 0)).await.ok().unwrap_err(),
            Errno::EACCES
        );
        assert_eq!(user.getattr(2).await.unwrap().size, 5);
    });
}

/// The archival control xattrs (`scoutvm.ctl.*`, docs/archival.md) reach
/// the mount's control channel over 9P as they do over FUSE: stat,
/// release, stage; changes need root (a squashed or other user gets
/// EPERM); unknown requests are EOPNOTSUPP, not an xattr.
#[test]
fn archival_control_xattrs_over_9p() {
    let env = Env::new();
    let c = env.client_as(0);
    let other = env.client_as(1000);
    env.run(async {
        c.create_file(1, "/", "f", 0o644).await.unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        c.write(1, 0, &data).await.unwrap();
        c.walk(0, 2, &["f"]).await.unwrap();
        let stat = |t: Vec<u8>| -> Vec<(String, String)> {
            String::from_utf8(t)
                .unwrap()
                .lines()
                .map(|l| {
                    let (k, v) = l.split_once(' ').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect()
        };
        let field = |s: &[(String, String)], k: &str| -> u64 {
            s.iter().find(|(n, _)| n == k).unwrap().1.parse().unwrap()
        };
        let s = stat(c.xattr_get(2, 11, "scoutvm.ctl.stat").await.unwrap());
        assert_eq!(field(&s, "online_blocks"), 2);
        let vers = field(&s, "data_version");
        let release = format!("{vers} 0 8192");
        other.walk(0, 2, &["f"]).await.unwrap();
        assert_eq!(
            other
                .xattr_set(2, 10, "scoutvm.ctl.release", release.as_bytes(), 0)
                .await,
            Err(Errno::EPERM)
        );
        c.xattr_set(2, 10, "scoutvm.ctl.release", release.as_bytes(), 0)
            .await
            .unwrap();
        let s = stat(c.xattr_get(2, 11, "scoutvm.ctl.stat").await.unwrap());
        assert_eq!(
            (field(&s, "online_blocks"), field(&s, "offline_blocks")),
            (0, 2)
        );
        let mut req = format!("{vers} 0\n").into_bytes();
        req.extend_from_slice(&data);
        c.xattr_set(2, 10, "scoutvm.ctl.stage", &req, 0)
            .await
            .unwrap();
        let s = stat(c.xattr_get(2, 11, "scoutvm.ctl.stat").await.unwrap());
        assert_eq!(
            (field(&s, "online_blocks"), field(&s, "offline_blocks")),
            (2, 0)
        );
        assert_eq!(
            c.xattr_get(2, 11, "scoutvm.ctl.nope").await,
            Err(Errno::EOPNOTSUPP)
        );
        // not stored as an xattr
        let names = c.xattr_get(2, 11, "").await.unwrap();
        assert!(!names.windows(7).any(|w| w == b"scoutvm"));
    });
}
