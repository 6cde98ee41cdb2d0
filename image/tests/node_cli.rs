//! The `scoutvm` archival subcommands in `--node` mode against the admin
//! API (`scoutvm_net::api`) served in this process over a real TCP socket
//! from an in-memory volume: every subcommand, the output the FUSE mode
//! prints (image/tests/fuse.rs), errors with the errno's message, a wrong
//! or missing token. No VM, no FUSE; the booted appliance and a Linux
//! guest waiting for staging are tests/tests/admin_api.rs.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::rc::Rc;
use std::sync::mpsc;

use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::posix::types::Cred;
use scoutvm_fs::runtime::env::{ManualClock, Timespec};
use scoutvm_fs::runtime::exec::Executor;
use scoutvm_fs::sim::mem_backend::{MemBackend, MemMkfs, MemStore};
use scoutvm_fs::storage::dev::MemDev;
use scoutvm_net::api::{serve, Api};
use scoutvm_net::p9::{ByteStream, StreamClosed};

const TOKEN: &str = "node-cli-token";
const BS: usize = 4096;

/// A blocking socket as the server's stream: the executor has nothing
/// else to run while a request is read.
struct Blocking(TcpStream);

impl ByteStream for Blocking {
    fn read<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = Result<usize, StreamClosed>> + 'a {
        std::future::ready((&self.0).read(buf).map_err(|_| StreamClosed))
    }

    fn write_all<'a>(
        &'a self,
        buf: &'a [u8],
    ) -> impl Future<Output = Result<(), StreamClosed>> + 'a {
        std::future::ready((&self.0).write_all(buf).map_err(|_| StreamClosed))
    }

    fn close(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// What the test needs to know of the volume it set up.
struct Facts {
    addr: String,
    f_ino: u64,
    d_ino: u64,
    /// The files /s0../s4 with the xattr `scoutfs.srch.tape`, ascending.
    srch_inos: Vec<u64>,
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + (i >> 12)) as u8).collect()
}

/// Serve the API of a fresh volume (/d/f with 3 blocks, its second name
/// /g, an empty /empty; /mv_src of 2 blocks and 100 bytes, an empty
/// /mv_dst; /s0../s4, all but /s2 with a `.srch.` xattr, /s0
/// with `.totl.` 1.2.3 = 7 and `.indx.` 4.99, /s1 with 1.2.3 = 5) on a
/// free port, in a thread of its own.
fn start_node() -> Facts {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let ex = Executor::default();
        let mk = MemMkfs {
            data_blocks: 1 << 12,
            ..MemMkfs::default()
        };
        let data = Rc::new(MemDev::new(mk.data_blocks * 4096));
        let clock = Rc::new(ManualClock::new(Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        }));
        let m = ex
            .block_on(Mount::mount(
                MemBackend::new(MemStore::mkfs(mk)),
                data,
                clock,
                MountOptions::default(),
            ))
            .unwrap()
            .unwrap();
        let root = Cred::root();
        let (d_ino, f_ino, srch_inos) = ex
            .block_on(async {
                let d = m.mkdir(&root, 1, b"d", 0o755).await.unwrap().ino;
                let f = m.create(&root, d, b"f", 0o644).await.unwrap().ino;
                m.write(f, 0, &pattern(3 * BS)).await.unwrap();
                m.link(&root, f, 1, b"g").await.unwrap();
                m.create(&root, 1, b"empty", 0o644).await.unwrap();
                let src = m.create(&root, 1, b"mv_src", 0o644).await.unwrap().ino;
                m.write(src, 0, &pattern(2 * BS + 100)).await.unwrap();
                m.create(&root, 1, b"mv_dst", 0o644).await.unwrap();
                let mut srch = Vec::new();
                for i in 0..5 {
                    let name = format!("s{i}");
                    let s = m
                        .create(&root, 1, name.as_bytes(), 0o644)
                        .await
                        .unwrap()
                        .ino;
                    let mut xattrs = match i {
                        0 => vec![("scoutfs.totl.a.1.2.3", "7"), ("scoutfs.indx.t.4.99", "")],
                        1 => vec![("scoutfs.totl.b.1.2.3", "5")],
                        _ => vec![],
                    };
                    if i != 2 {
                        xattrs.push(("scoutfs.srch.tape", "1"));
                        srch.push(s);
                    }
                    for (n, v) in xattrs {
                        m.setxattr(&root, s, n.as_bytes(), v.as_bytes(), 0)
                            .await
                            .unwrap();
                    }
                }
                m.sync().await.unwrap();
                (d, f, srch)
            })
            .unwrap();
        let api = Api::new(Rc::new(m), TOKEN);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tx.send(Facts {
            addr,
            f_ino,
            d_ino,
            srch_inos,
        })
        .unwrap();
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let s = Blocking(s);
            ex.block_on(serve(&api, &s)).unwrap();
        }
    });
    rx.recv().unwrap()
}

/// Run `scoutvm ARGS --node ADDR [--token T]`: exit code and all output.
fn cli(addr: &str, token: Option<&str>, args: &[&str]) -> (Option<i32>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_scoutvm"));
    c.args(args)
        .args(["--node", addr])
        .env_remove("SCOUTVM_TOKEN");
    if let Some(t) = token {
        c.args(["--token", t]);
    }
    let o = c.output().unwrap();
    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.code(), text)
}

fn ok(addr: &str, args: &[&str]) -> String {
    let (code, out) = cli(addr, Some(TOKEN), args);
    assert_eq!(code, Some(0), "scoutvm {args:?}: {out}");
    out
}

fn stat(addr: &str, path: &str, field: &str) -> u64 {
    ok(addr, &["stat", "-s", field, path])
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("stat -s {field} {path}"))
}

#[test]
fn every_archival_subcommand_speaks_to_a_node() {
    let n = start_node();
    let a = n.addr.as_str();

    // stat: the FUSE mode's lines, in its order
    let out = ok(a, &["stat", "/d/f"]);
    let keys: Vec<&str> = out
        .lines()
        .map(|l| {
            l.strip_prefix("  ")
                .and_then(|l| l.split_once(": "))
                .unwrap_or_else(|| panic!("stat line {l:?}"))
                .0
        })
        .collect();
    assert_eq!(
        keys,
        [
            "meta_seq",
            "data_seq",
            "data_version",
            "online_blocks",
            "offline_blocks",
            "crtime",
            "size"
        ]
    );
    assert_eq!(stat(a, "/d/f", "size"), 3 * BS as u64);
    assert_eq!(stat(a, "/g", "online_blocks"), 3, "same file by its link");
    let vers = stat(a, "d/f", "data_version").to_string();

    // release, stage, punch-offline
    ok(a, &["release", "/d/f", "-V", &vers, "-o", "0", "-l", "8K"]);
    assert_eq!(stat(a, "/d/f", "offline_blocks"), 2);
    let arch = std::env::temp_dir().join(format!("scoutvm-node-cli-{}", std::process::id()));
    std::fs::write(&arch, &pattern(3 * BS)[..2 * BS]).unwrap();
    let arch_s = arch.to_str().unwrap();
    ok(
        a,
        &["stage", arch_s, "/d/f", "-V", &vers, "-o", "0", "-l", "8K"],
    );
    let _ = std::fs::remove_file(&arch);
    assert_eq!(
        (
            stat(a, "/d/f", "online_blocks"),
            stat(a, "/d/f", "offline_blocks")
        ),
        (3, 0)
    );
    ok(a, &["release", "/d/f", "-V", &vers, "-o", "4K", "-l", "4K"]);
    ok(
        a,
        &["punch-offline", "/d/f", "-V", &vers, "-o", "4K", "-l", "4K"],
    );
    assert_eq!(
        (
            stat(a, "/d/f", "online_blocks"),
            stat(a, "/d/f", "offline_blocks")
        ),
        (2, 0)
    );

    // errors: the errno's message, as on a mount
    let (code, out) = cli(
        a,
        Some(TOKEN),
        &["release", "/d/f", "-V", "999", "-o", "0", "-l", "4K"],
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        out.trim(),
        "scoutvm: release failed: Stale file handle (os error 116)"
    );
    let (code, out) = cli(a, Some(TOKEN), &["stat", "/nope"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        out.trim(),
        "scoutvm: stat failed: No such file or directory (os error 2)"
    );

    // setattr restores an archived file's attributes
    ok(
        a,
        &[
            "setattr",
            "-V",
            "5",
            "-s",
            "8K",
            "-o",
            "-t",
            "1600000000.5",
            "/empty",
        ],
    );
    assert_eq!(stat(a, "/empty", "data_version"), 5);
    assert_eq!(stat(a, "/empty", "offline_blocks"), 2);

    // walk-inodes: the file is in the data_seq index, the directory not
    let out = ok(a, &["walk-inodes", "data_seq", "0", "-1"]);
    let inos: Vec<u64> = out
        .lines()
        .map(|l| l.split(' ').nth(2).unwrap().parse().unwrap())
        .collect();
    assert!(inos.contains(&n.f_ino), "{out}");
    assert!(!inos.contains(&n.d_ino), "{out}");

    // names of an inode
    let ino = n.f_ino.to_string();
    let out = ok(a, &["get-referring-entries", &ino]);
    let mut names: Vec<(String, &str)> = out
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            assert_eq!(
                (w[0], w[2], w[4], w[5], w[6]),
                ("dir", "pos", "type", "8", "name"),
                "{l}"
            );
            (w[1].to_string(), w[7])
        })
        .collect();
    names.sort();
    assert_eq!(names, [("1".to_string(), "g"), (n.d_ino.to_string(), "f")]);
    let out = ok(a, &["ino-path", &ino]);
    let mut paths: Vec<&str> = out.lines().collect();
    paths.sort();
    assert_eq!(paths, ["d/f", "g"]);

    // nothing waits; failing no waiter is fine
    assert_eq!(ok(a, &["data-waiting"]), "");
    ok(
        a,
        &[
            "data-wait-err",
            "-I",
            &ino,
            "-V",
            &vers,
            "-F",
            "0",
            "-C",
            "4K",
            "-O",
            "read",
            "-E",
            "-5",
        ],
    );

    // search-xattrs, read-xattr-totals, read-xattr-index: the lines of
    // image/tests/fuse.rs
    let out = ok(a, &["search-xattrs", "scoutfs.srch.tape"]);
    let found: Vec<u64> = out.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(found, n.srch_inos, "{out}");
    assert_eq!(ok(a, &["search-xattrs", "scoutfs.srch.other"]), "");
    let (code, out) = cli(a, Some(TOKEN), &["search-xattrs", "user.plain"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        out.trim(),
        "scoutvm: search-xattrs failed: Invalid argument (os error 22)"
    );
    assert_eq!(ok(a, &["read-xattr-totals"]), "1.2.3 = 12, 2\n");
    let s0 = n.srch_inos[0];
    assert_eq!(
        ok(
            a,
            &[
                "read-xattr-index",
                "0.0.0",
                "255.18446744073709551615.18446744073709551615"
            ]
        ),
        format!("4.99.{s0}\n")
    );
    assert_eq!(ok(a, &["read-xattr-index", "5.0.0", "6.0.0"]), "");
    let (code, _) = cli(a, Some(TOKEN), &["read-xattr-index", "4.99", "5.0.0"]);
    assert_eq!(code, Some(64), "a position needs MAJOR.MINOR.INO");

    // a wrong token, no token
    let (code, out) = cli(a, Some("wrong-token"), &["stat", "/d/f"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("HTTP 401"), "{out}");
    let (code, out) = cli(a, None, &["stat", "/d/f"]);
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("SCOUTVM_TOKEN"), "{out}");
}

/// `move-blocks` against a node: the reference's flags, both paths from
/// the volume's root, errors as on a mount, `--stage` into a released
/// file.
#[test]
fn move_blocks_speaks_to_a_node() {
    let n = start_node();
    let a = n.addr.as_str();
    let mb = |args: &[&str]| {
        let mut v = vec!["move-blocks"];
        v.extend_from_slice(args);
        cli(a, Some(TOKEN), &v)
    };
    let src_vers = stat(a, "/mv_src", "data_version");
    let (code, out) = mb(&["/mv_src", "-f", "4K", "-l", "4196", "/mv_dst", "-t", "0"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(stat(a, "/mv_dst", "size"), BS as u64 + 100, "partial tail");
    assert_eq!(stat(a, "/mv_dst", "online_blocks"), 2);
    assert_eq!(stat(a, "/mv_src", "online_blocks"), 1);
    assert_eq!(stat(a, "/mv_src", "size"), 2 * BS as u64 + 100);
    assert_ne!(stat(a, "/mv_src", "data_version"), src_vers);

    // errors: the errno's message, as on a mount
    for (args, says) in [
        (
            ["/mv_src", "-f", "0", "-l", "4K", "/mv_dst", "-t", "0"],
            "Invalid argument (os error 22)",
        ),
        (
            ["/mv_src", "-f", "1", "-l", "4K", "/mv_dst", "-t", "8K"],
            "Invalid argument (os error 22)",
        ),
        (
            [
                "/mv_src",
                "-f",
                "0xfffffffffffff000",
                "-l",
                "8K",
                "/mv_dst",
                "-t",
                "0",
            ],
            "Value too large for defined data type (os error 75)",
        ),
        (
            ["/mv_src", "-f", "0", "-l", "4K", "/d", "-t", "0"],
            "Is a directory (os error 21)",
        ),
        (
            ["/nope", "-f", "0", "-l", "4K", "/mv_dst", "-t", "8K"],
            "No such file or directory (os error 2)",
        ),
    ] {
        let (code, out) = mb(&args);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert_eq!(
            out.trim(),
            format!("scoutvm: move-blocks failed: {says}"),
            "{args:?}"
        );
    }

    // --stage: the last source block into the released first block of
    // /mv_dst, whose data_version is checked and stays
    let vers = stat(a, "/mv_dst", "data_version").to_string();
    ok(
        a,
        &["release", "/mv_dst", "-V", &vers, "-o", "0", "-l", "4K"],
    );
    let stage = |v: &str| {
        mb(&[
            "/mv_src", "-f", "0", "-l", "4K", "/mv_dst", "-t", "0", "--stage", "-V", v,
        ])
    };
    let (code, out) = stage("999");
    assert_eq!(
        (code, out.trim()),
        (
            Some(1),
            "scoutvm: move-blocks failed: Stale file handle (os error 116)"
        )
    );
    let (code, out) = stage(&vers);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        (
            stat(a, "/mv_dst", "online_blocks"),
            stat(a, "/mv_dst", "offline_blocks"),
            stat(a, "/mv_dst", "data_version").to_string()
        ),
        (2, 0, vers)
    );
    assert_eq!(stat(a, "/mv_src", "online_blocks"), 0);
    // --stage needs -V
    let (code, out) = mb(&[
        "/mv_src", "-f", "0", "-l", "4K", "/mv_dst", "-t", "0", "--stage",
    ]);
    assert_eq!(code, Some(64), "{out}");
}
