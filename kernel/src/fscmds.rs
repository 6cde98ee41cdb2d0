//! Shell commands on the node's volume: `mkfs`, `df`, `ls`, `stat`,
//! `cat`, `mkdir`, `rm`, `sync`, `fsck`, `clients` (9P connections) and
//! the archival `release`, `stage`, `data-waiting`, `data-wait-err`,
//! `walk-inodes`, `search-xattrs`, `get-referring-entries`, `ino-path`, `setattr`,
//! `punch-offline` and `move-blocks` (docs/archival.md).
//!
//! Registered by the volume service at boot; they act as root on the
//! mounted `posix::mount::Mount` (through `volume::require`) and print one-line
//! errors for bad arguments or failed operations. `mkfs` refuses while a
//! volume is mounted and mounts (and serves) the new volume when done.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use scoutvm_fs::errno::Errno;
use scoutvm_fs::format::{LG_BLOCK_SIZE, SM_BLOCK_SIZE};
use scoutvm_fs::posix::archive;
use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::posix::types::{Attr, Cred, Ino, S_IFMT};
use scoutvm_fs::runtime::env::{Clock, Entropy};
use scoutvm_fs::storage::block::read_super_from;
use scoutvm_fs::storage::dev::BlockDev;
use scoutvm_fs::tools::mkfs::{self, MkfsParams};
use scoutvm_kernel::datetime::{Utc, UtcNanos};
use scoutvm_kernel::fsargs::{self, MKFS_USAGE};

use crate::devices::BlockEntry;
use crate::platform::{KernelClock, KernelEntropy};
use crate::shell::{self, boxed, expect_args, CmdResult, Command};
use crate::volume::{self, Disk, Kind};

/// Most bytes `cat` prints.
const CAT_MAX_BYTES: u64 = 1 << 20;
/// Entries `ls` asks for at a time.
const LS_BATCH: usize = 256;

const COMMANDS: &[Command] = &[
    Command {
        name: "mkfs",
        usage: "[-f] [-A] [-V 1|2] [-m SIZE] [-d SIZE] [-Q NR,ADDR,PORT]...",
        help: "make a volume on the meta/data disks, then mount and serve it",
        run: |a| boxed(mkfs_cmd(a)),
    },
    Command {
        name: "df",
        usage: "",
        help: "volume size, use and inodes",
        run: |a| boxed(df(a)),
    },
    Command {
        name: "ls",
        usage: "[-l] [PATH]",
        help: "list a directory of the volume",
        run: |a| boxed(ls(a)),
    },
    Command {
        name: "stat",
        usage: "PATH",
        help: "an inode's attributes",
        run: |a| boxed(stat(a)),
    },
    Command {
        name: "cat",
        usage: "PATH",
        help: "print a file (at most 1 MiB)",
        run: |a| boxed(cat(a)),
    },
    Command {
        name: "mkdir",
        usage: "PATH",
        help: "make a directory (mode 0755, root)",
        run: |a| boxed(mkdir(a)),
    },
    Command {
        name: "rm",
        usage: "PATH",
        help: "remove a file or an empty directory",
        run: |a| boxed(rm(a)),
    },
    Command {
        name: "sync",
        usage: "",
        help: "commit everything to the disks",
        run: |a| boxed(sync(a)),
    },
    Command {
        name: "fsck",
        usage: "",
        help: "check the volume on the disks (read-only, after a sync)",
        run: |a| boxed(fsck(a)),
    },
    Command {
        name: "clients",
        usage: "",
        help: "9P connections: peer, users, fids, requests",
        run: |a| boxed(clients(a)),
    },
    Command {
        name: "quorum",
        usage: "",
        help: "the quorum: slots, term, leader, last heartbeats",
        run: |a| boxed(quorum_cmd(a)),
    },
    Command {
        name: "locks",
        usage: "[all]",
        help: "cluster locks this mount holds (range, mode, users) and, on the leader, the grants per node",
        run: |a| boxed(locks_cmd(a)),
    },
    Command {
        name: "rpcping",
        usage: "[COUNT]",
        help: "no-op RPCs (PING) to the leader's server through this mount's session: round trips",
        run: |a| boxed(rpcping(a)),
    },
    Command {
        name: "release",
        usage: "PATH VERS OFFSET LENGTH",
        help: "free a file's blocks in a range, leaving offline extents (data_version VERS)",
        run: |a| boxed(release_cmd(a)),
    },
    Command {
        name: "stage",
        usage: "ARCHIVE PATH VERS OFFSET LENGTH",
        help: "copy ARCHIVE (a file of the volume, from 0) into PATH's offline extents",
        run: |a| boxed(stage_cmd(a)),
    },
    Command {
        name: "data-waiting",
        usage: "[INO BLOCK]",
        help: "operations waiting for offline data (after INO, BLOCK)",
        run: |a| boxed(data_waiting_cmd(a)),
    },
    Command {
        name: "data-wait-err",
        usage: "INO VERS OFFSET COUNT read|write|change_size[,..] ERR",
        help: "fail operations waiting for offline data with the negative errno ERR",
        run: |a| boxed(data_wait_err_cmd(a)),
    },
    Command {
        name: "walk-inodes",
        usage: "meta_seq|data_seq FIRST LAST",
        help: "inodes of a seq index from FIRST to LAST (-1: up to the stable seq)",
        run: |a| boxed(walk_inodes_cmd(a)),
    },
    Command {
        name: "read-xattr-index",
        usage: "[FIRST [LAST]]",
        help: "inodes in the .indx. xattr index from FIRST to LAST (MAJOR.MINOR.INO), committed",
        run: |a| boxed(read_xattr_index_cmd(a)),
    },
    Command {
        name: "read-xattr-totals",
        usage: "",
        help: "the volume's .totl. xattr totals (committed): A.B.C = TOTAL, COUNT",
        run: |a| boxed(read_xattr_totals_cmd(a)),
    },
    Command {
        name: "search-xattrs",
        usage: "XATTR-NAME",
        help: "inodes that have the .srch.-tagged xattr XATTR-NAME",
        run: |a| boxed(search_xattrs_cmd(a)),
    },
    Command {
        name: "get-referring-entries",
        usage: "INO",
        help: "the directory entries that refer to inode INO",
        run: |a| boxed(referring_cmd(a)),
    },
    Command {
        name: "ino-path",
        usage: "INO",
        help: "the paths of inode INO from the root",
        run: |a| boxed(ino_path_cmd(a)),
    },
    Command {
        name: "setattr",
        usage: "PATH VERS|- SIZE|- [offline]",
        help: "set data_version and size (one offline extent) on a new, empty file",
        run: |a| boxed(setattr_cmd(a)),
    },
    Command {
        name: "punch-offline",
        usage: "PATH VERS OFFSET LENGTH",
        help: "turn a file's offline extents in a range into holes (data_version VERS)",
        run: |a| boxed(punch_offline_cmd(a)),
    },
    Command {
        name: "move-blocks",
        usage: "FROM FROM_OFFSET LENGTH TO TO_OFFSET [stage VERS]",
        help: "move a region's extents from one file into another (stage: into TO's offline extents)",
        run: |a| boxed(move_blocks_cmd(a)),
    },
    Command {
        name: "fence",
        usage: "[ack RID | fail RID]",
        help: "list fence requests waiting, acknowledge one (the node is off) or fail it",
        run: |a| boxed(fence_cmd(a)),
    },
    Command {
        name: "recovery",
        usage: "",
        help: "the leader's recovery of the last server life's mounts, and its fence requests",
        run: |a| boxed(recovery_cmd(a)),
    },
];

pub fn register() {
    for c in COMMANDS {
        if shell::register(*c).is_err() {
            log::warn!("shell: cannot register '{}'", c.name);
        }
    }
}

fn err(e: Errno) -> String {
    format!("{} ({})", e.text(), e.name())
}

/// The inode at `path` (as root).
async fn resolve(m: &Mount, path: &str) -> Result<Attr, String> {
    let mut a = m.getattr(scoutvm_fs::format::ROOT_INO).await.map_err(err)?;
    for name in fsargs::path_components(path)? {
        a = m
            .lookup(&Cred::root(), a.ino, name.as_bytes())
            .await
            .map_err(|e| format!("{path}: {}", err(e)))?;
    }
    Ok(a)
}

async fn parent_of(m: &Mount, path: &str) -> Result<(Ino, String), String> {
    let (parents, name) = fsargs::parent_and_name(path)?;
    let mut ino = scoutvm_fs::format::ROOT_INO;
    for p in parents {
        ino = m
            .lookup(&Cred::root(), ino, p.as_bytes())
            .await
            .map_err(|e| format!("{path}: {}", err(e)))?
            .ino;
    }
    Ok((ino, name.to_string()))
}

async fn mkfs_cmd(args: Vec<String>) -> CmdResult {
    let a = fsargs::parse_mkfs(&args)?;
    if let Some(v) = volume::current() {
        return Err(format!(
            "the volume on {} is mounted; mkfs refuses a mounted volume",
            v.describe()
        ));
    }
    if crate::runtime::cmdline()
        .get("volume")
        .is_some_and(|v| v.starts_with("ram"))
    {
        return Err("volume=ram: there are no disks to make a volume on".to_string());
    }
    let (meta, data) = volume::find_devices()?;
    if !a.force {
        for (b, which) in [(meta, "meta"), (data, "data")] {
            if read_super_from(b.dev).is_ok() {
                return Err(format!(
                    "{which} disk {} already holds a scoutfs volume, use -f to overwrite it",
                    b.name
                ));
            }
        }
    }
    let mut sizes = [0u64; 2];
    for (k, (b, max, which)) in [
        (meta, a.max_meta_bytes, "meta"),
        (data, a.max_data_bytes, "data"),
    ]
    .into_iter()
    .enumerate()
    {
        let (size, notes, warns) =
            mkfs::limit_device_size(b.dev.size_bytes(), max, a.allow_small, which)?;
        for n in notes.iter().chain(warns.iter()) {
            kprintln!("{}", n);
        }
        sizes[k] = size;
    }
    let mut qconf = a.qconf;
    if !a.quorum_given {
        let addr = crate::net::info()
            .and_then(|i| i.addr)
            .map(|c| c.address().octets())
            .unwrap_or([127, 0, 0, 1]);
        let slot = format!("0,{}.{}.{}.{},7100", addr[0], addr[1], addr[2], addr[3]);
        mkfs::parse_quorum_slot(&mut qconf, &slot)?;
        kprintln!(
            "quorum slot 0 at {}:7100 (give -Q to choose)",
            slot[2..].split(',').next().unwrap_or("")
        );
    }
    let e = KernelEntropy::new();
    let p = MkfsParams {
        fmt_vers: a.fmt_vers,
        meta_bytes: sizes[0] - sizes[0] % LG_BLOCK_SIZE as u64,
        data_bytes: sizes[1] - sizes[1] % SM_BLOCK_SIZE as u64,
        qconf,
        fsid: e.next_u64(),
        uuid: mkfs::uuid_from_random(e.next_u64(), e.next_u64()),
        now: KernelClock.wall(),
        data_alloc_zone_blocks: a.zone_blocks,
    };
    let sb = mkfs::mkfs(&Disk(meta.dev), &Disk(data.dev), &p)
        .map_err(|e| format!("mkfs failed: {e} (usage: {MKFS_USAGE})"))?;
    kprint!("{}", mkfs::describe(&sb, &meta.name, &data.name));
    let v = crate::volume_service::mount_and_serve().await?;
    kprintln!("mounted {}", v.describe());
    Ok(())
}

async fn df(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "df")?;
    let v = volume::require()?;
    let s = v.mount.statfs_more().await.map_err(err)?;
    let f = v.mount.statfs().await.map_err(err)?;
    kprintln!("volume    {}", v.describe());
    kprint!(
        "{}",
        fsargs::df_table(
            (s.total_meta_blocks, s.free_meta_blocks),
            (s.total_data_blocks, s.free_data_blocks)
        )
    );
    kprintln!(
        "inodes    {} total, {} used, {} free",
        f.files,
        f.files.saturating_sub(f.ffree),
        f.ffree
    );
    Ok(())
}

fn long_line(a: &Attr, name: &str) -> String {
    format!(
        "{} {:>3} {:>5} {:>5} {:>12} {} {}",
        fsargs::mode_string(a.mode),
        a.nlink,
        a.uid,
        a.gid,
        a.size,
        Utc(a.mtime.sec),
        name
    )
}

async fn ls(args: Vec<String>) -> CmdResult {
    let (long, path) = fsargs::parse_ls(&args)?;
    let v = volume::require()?;
    let m = &v.mount;
    let a = resolve(m, &path).await?;
    if !a.is_dir() {
        let name = path.rsplit('/').next().unwrap_or(&path);
        if long {
            kprintln!("{}", long_line(&a, name));
        } else {
            kprintln!("{}", name);
        }
        return Ok(());
    }
    let mut pos = 2; // skip "." and ".."
    let mut count = 0u64;
    loop {
        let batch = m
            .readdir(&Cred::root(), a.ino, pos, LS_BATCH)
            .await
            .map_err(|e| format!("{path}: {}", err(e)))?;
        if batch.is_empty() {
            break;
        }
        for e in batch {
            pos = e.next_pos;
            count += 1;
            let name = String::from_utf8_lossy(&e.name);
            if long {
                match m.getattr(e.ino).await {
                    Ok(at) => kprintln!("{}", long_line(&at, &name)),
                    Err(er) => kprintln!("?????????? {} ({})", name, err(er)),
                }
            } else {
                kprintln!("{}", name);
            }
        }
    }
    if long {
        kprintln!("{} entries", count);
    }
    Ok(())
}

async fn stat(args: Vec<String>) -> CmdResult {
    expect_args(&args, 1, 1, "stat PATH")?;
    let v = volume::require()?;
    let a = resolve(&v.mount, &args[0]).await?;
    kprintln!("  path: {}", args[0]);
    kprintln!(
        "  inode: {}  type/mode: {} ({:o})  links: {}",
        a.ino,
        fsargs::mode_string(a.mode),
        a.mode & !S_IFMT,
        a.nlink
    );
    kprintln!(
        "  uid: {}  gid: {}  size: {}  blocks: {}  rdev: {:#x}",
        a.uid,
        a.gid,
        a.size,
        a.blocks,
        a.rdev
    );
    for (what, t) in [
        ("atime", a.atime),
        ("mtime", a.mtime),
        ("ctime", a.ctime),
        ("crtime", a.crtime),
    ] {
        kprintln!("  {what}: {} UTC", UtcNanos(t.sec, t.nsec));
    }
    kprintln!(
        "  version: {}  data_version: {}  meta_seq: {}  data_seq: {}  online: {}  offline: {}",
        a.version,
        a.data_version,
        a.meta_seq,
        a.data_seq,
        a.online_blocks,
        a.offline_blocks
    );
    Ok(())
}

async fn cat(args: Vec<String>) -> CmdResult {
    expect_args(&args, 1, 1, "cat PATH")?;
    let v = volume::require()?;
    let m = &v.mount;
    let a = resolve(m, &args[0]).await?;
    if a.is_dir() {
        return Err(format!("{}: is a directory", args[0]));
    }
    if a.is_symlink() {
        let t = m.readlink(a.ino).await.map_err(err)?;
        kprintln!("-> {}", String::from_utf8_lossy(&t));
        return Ok(());
    }
    if !a.is_reg() {
        return Err(format!("{}: not a regular file", args[0]));
    }
    let len = a.size.min(CAT_MAX_BYTES);
    let mut off = 0;
    while off < len {
        let chunk = m
            .read(a.ino, off, (len - off).min(64 * 1024) as usize)
            .await
            .map_err(err)?;
        if chunk.is_empty() {
            break;
        }
        off += chunk.len() as u64;
        crate::console::write_bytes(&chunk);
    }
    if a.size > CAT_MAX_BYTES {
        kprintln!("\n[{} more bytes not shown]", a.size - CAT_MAX_BYTES);
    }
    Ok(())
}

async fn mkdir(args: Vec<String>) -> CmdResult {
    expect_args(&args, 1, 1, "mkdir PATH")?;
    let v = volume::require()?;
    let (dir, name) = parent_of(&v.mount, &args[0]).await?;
    v.mount
        .mkdir(&Cred::root(), dir, name.as_bytes(), 0o755)
        .await
        .map_err(|e| format!("{}: {}", args[0], err(e)))?;
    Ok(())
}

async fn rm(args: Vec<String>) -> CmdResult {
    expect_args(&args, 1, 1, "rm PATH")?;
    let v = volume::require()?;
    let (dir, name) = parent_of(&v.mount, &args[0]).await?;
    let root = Cred::root();
    match v.mount.unlink(&root, dir, name.as_bytes()).await {
        Err(Errno::EISDIR) => v.mount.rmdir(&root, dir, name.as_bytes()).await,
        r => r,
    }
    .map_err(|e| format!("{}: {}", args[0], err(e)))
}

async fn sync(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "sync")?;
    let v = volume::require()?;
    v.mount.sync().await.map_err(err)
}

async fn fsck(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "fsck")?;
    let (mdev, ddev, names): (Rc<dyn BlockDev>, Rc<dyn BlockDev>, String) = match volume::current()
    {
        Some(v) => {
            v.mount.sync().await.map_err(err)?;
            match &v.kind {
                Kind::Ram { meta, data, .. } => {
                    (meta.clone(), data.clone(), "the RAM disks".to_string())
                }
                Kind::Disk { meta, data } => disks(meta, data),
            }
        }
        None => {
            let (meta, data) = volume::find_devices()?;
            disks(meta, data)
        }
    };
    let rep = scoutvm_fs::tools::fsck::fsck(&*mdev, Some(&*ddev), &mut |_, _, _| {});
    let mut out = String::new();
    if rep.render(&mut out).is_err() {
        return Err("cannot format the report".to_string());
    }
    kprint!("{}", out);
    if rep.is_clean() {
        Ok(())
    } else {
        Err(format!("{} problem(s) on {names}", rep.findings.len()))
    }
}

/// Two disks as the devices fsck reads, and their names for messages.
fn disks(
    meta: &'static BlockEntry,
    data: &'static BlockEntry,
) -> (Rc<dyn BlockDev>, Rc<dyn BlockDev>, String) {
    (
        Rc::new(Disk(meta.dev)),
        Rc::new(Disk(data.dev)),
        format!("{} + {}", meta.name, data.name),
    )
}

async fn clients(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "clients")?;
    let v = volume::require()?;
    if let Some((me, rids)) = v.cluster_clients() {
        let leads = v.quorum_status().is_some_and(|q| q.leader == Some(q.slot));
        kprintln!(
            "cluster: this mount rid {me:016x}{}",
            if leads { ", this node leads" } else { "" }
        );
        if leads {
            kprintln!("{} cluster mount(s)", rids.len());
            for r in rids {
                let who = if r == me { " (this node)" } else { "" };
                kprintln!("  rid {r:016x}{who}");
            }
        }
    }
    let p9 = v.p9.borrow().clone();
    let fuse = v.fuse.borrow().clone();
    if p9.is_none() && fuse.is_none() {
        return Err("9P and FUSE are not being served (no network address?)".to_string());
    }
    if let Some(server) = p9 {
        p9_clients(&server);
    }
    if let Some(server) = fuse {
        fuse_clients(&server);
    }
    Ok(())
}

/// The FUSE part of `clients`.
fn fuse_clients(server: &scoutvm_net::fuse::Server) {
    let list = server.clients();
    kprintln!(
        "FUSE: {} connection(s), {} lock range(s) held",
        list.len(),
        server.locks_held()
    );
    for c in list {
        kprintln!(
            "  #{} {}{} 7.{} max_write {} nodes {} handles {} requests {} in flight, {} total, {} KiB held",
            c.id,
            c.peer,
            if c.allowed { "" } else { " REFUSED" },
            c.minor,
            c.max_write,
            c.nodes,
            c.handles,
            c.requests_in_flight,
            c.requests_total,
            c.memory_held >> 10
        );
    }
}

/// The 9P part of `clients`.
fn p9_clients(server: &scoutvm_net::p9::Server) {
    let list = server.clients();
    kprintln!(
        "9P: {} connection(s), {} lock range(s) held",
        list.len(),
        server.locks_held()
    );
    for c in list {
        let users: Vec<String> = c
            .users
            .iter()
            .map(|(n, u)| {
                if n.is_empty() {
                    format!("{u}")
                } else {
                    format!("{n}({u})")
                }
            })
            .collect();
        kprintln!(
            "  #{} {}{} msize {} users [{}] fids {} (open {}) requests {} in flight, {} total, {} KiB held",
            c.id,
            c.peer,
            if c.allowed { "" } else { " REFUSED" },
            c.msize,
            users.join(" "),
            c.fids,
            c.open_fids,
            c.requests_in_flight,
            c.requests_total,
            c.memory_held >> 10
        );
    }
}

/// `quorum`: this node's quorum agent (slots, terms, leader, heartbeats).
async fn quorum_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "quorum")?;
    let v = volume::require()?;
    match v.quorum_status() {
        Some(st) => kprintln!("{st}"),
        None => kprintln!("this node holds no quorum slot"),
    }
    Ok(())
}

/// Lines `locks` prints per list unless asked for `all`.
const LOCKS_SHOWN: usize = 40;

/// `locks [all]`: this mount's lock client (figures, then each range held
/// with its mode and users) and, on the leader, the lock server's grants.
async fn locks_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 1, "locks [all]")?;
    let all = match args.first().map(|s| s.as_str()) {
        None => false,
        Some("all") => true,
        Some(a) => return Err(format!("unknown argument '{a}' (usage: locks [all])")),
    };
    let v = volume::require()?;
    let Some((client, grants)) = v.cluster_locks() else {
        return Err("this node is not a cluster member: every lock is local".to_string());
    };
    let shown = if all { usize::MAX } else { LOCKS_SHOWN };
    match client {
        None => kprintln!("this mount grants its locks locally (cluster locks are off)"),
        Some(lc) => {
            let st = lc.stats();
            let mut held = lc.held();
            held.sort_by(|a, b| scoutvm_fs::cluster::lock::lock_order(&a.0, &b.0));
            kprintln!(
                "{} lock(s) held; requests {} grants {} cached {} invalidations {} \
                 (commits {}, cache drops {}) give-backs {}",
                held.len(),
                st.requests,
                st.grants,
                st.cached,
                st.invalidations,
                st.commits_for_invalidation,
                st.cache_drops,
                st.lru_give_backs
            );
            for (range, mode, users) in held.iter().take(shown) {
                kprintln!("  {range}: {mode:?}, {users} user(s)");
            }
            if held.len() > shown {
                kprintln!("  ... {} more (locks all)", held.len() - shown);
            }
        }
    }
    if let Some(mut g) = grants {
        g.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(scoutvm_fs::cluster::lock::lock_order(&a.1, &b.1))
        });
        let mut rids: Vec<u64> = g.iter().map(|x| x.0).collect();
        rids.dedup();
        kprintln!(
            "lock server: {} grant(s) to {} mount(s)",
            g.len(),
            rids.len()
        );
        for (rid, range, mode) in g.iter().take(shown) {
            kprintln!("  rid {rid:016x} {range}: {mode:?}");
        }
        if g.len() > shown {
            kprintln!("  ... {} more (locks all)", g.len() - shown);
        }
    }
    Ok(())
}

/// `rpcping [COUNT]`: COUNT (default 20, at most 10000) PING requests,
/// one at a time, through the same session, framing and server request
/// path every cluster RPC takes; prints min, median and max round trip.
async fn rpcping(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 1, "rpcping [COUNT]")?;
    let count: usize = match args.first() {
        None => 20,
        Some(a) => a
            .parse()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| format!("bad count '{a}' (1..10000)"))?,
    };
    let v = volume::require()?;
    let client = v
        .cluster_client()
        .ok_or_else(|| "this node is not a cluster member".to_string())?;
    let clock = KernelClock;
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = clock.monotonic_ns();
        client
            .session()
            .call(scoutvm_fs::cluster::msg::cmd::PING, &[])
            .await
            .map_err(|e| format!("ping: {e}"))?;
        rtts.push(clock.monotonic_ns().saturating_sub(t0));
    }
    rtts.sort_unstable();
    let us = |ns: u64| format!("{}.{:03} ms", ns / 1_000_000, (ns / 1000) % 1000);
    kprintln!(
        "{count} no-op RPCs to the server: min {}, median {}, max {}",
        us(rtts[0]),
        us(rtts[rtts.len() / 2]),
        us(rtts[rtts.len() - 1])
    );
    Ok(())
}

/// `fence` lists the fence requests waiting for an operator;
/// `fence ack RID` says RID can no longer write the shared disks.
async fn fence_cmd(args: Vec<String>) -> CmdResult {
    let Some(f) = volume::fence_agent() else {
        return Err("this node is not a cluster member".to_string());
    };
    match args.first().map(|s| s.as_str()) {
        None => {
            let w = f.waiting();
            kprintln!("{} fence request(s) waiting", w.len());
            for r in w {
                kprintln!(
                    "  rid {:016x} at {} ({}, term {})",
                    r.rid,
                    r.addr,
                    r.reason.name(),
                    r.term
                );
            }
            Ok(())
        }
        Some(verb @ ("ack" | "fail")) => {
            expect_args(&args, 2, 2, "fence ack|fail RID")?;
            let rid = u64::from_str_radix(args[1].trim_start_matches("0x"), 16)
                .map_err(|_| format!("bad rid '{}' (hex)", args[1]))?;
            let done = if verb == "ack" {
                f.ack(rid)
            } else {
                f.fail(rid)
            };
            if done {
                let what = if verb == "ack" {
                    "acknowledged"
                } else {
                    "failed (the server stops; another leader retries)"
                };
                kprintln!("fence of {rid:016x} {what}");
                Ok(())
            } else {
                Err(format!("no fence request waits for rid {rid:016x}"))
            }
        }
        _ => Err("usage: fence [ack RID | fail RID]".to_string()),
    }
}

async fn recovery_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "recovery")?;
    let v = volume::require()?;
    let Some(server) = v.cluster_server() else {
        return Err("this node does not lead: the leader recovers".to_string());
    };
    let (pending, timed_out) = server.recovery_pending();
    if pending.is_empty() {
        kprintln!("no mount owes recovery");
    } else {
        kprintln!(
            "{} mount(s) owe recovery{}",
            pending.len(),
            if timed_out {
                " (window closed: being fenced)"
            } else {
                ""
            }
        );
        for (rid, which) in pending {
            let g = which & scoutvm_fs::cluster::recovery::RECOV_GREETING != 0;
            let l = which & scoutvm_fs::cluster::recovery::RECOV_LOCKS != 0;
            kprintln!(
                "  rid {rid:016x}:{}{}",
                if g { " greeting" } else { "" },
                if l { " locks" } else { "" }
            );
        }
    }
    for (req, state, started_ns) in server.fence_requests() {
        kprintln!(
            "  fence rid {:016x} ({}) {:?}, started at {} ms",
            req.rid,
            req.reason.name(),
            state,
            started_ns / 1_000_000
        );
    }
    Ok(())
}

// -- archival ------------------------------------------------------------

/// Bytes `stage` copies per operation.
const STAGE_CHUNK: u64 = 1 << 20;
/// Entries `walk-inodes` and `data-waiting` ask for at a time.
const WALK_BATCH: usize = 1024;

/// A number with an optional K/M/G/T/P suffix, or `0x` hex.
fn num(what: &str, s: &str) -> Result<u64, String> {
    mkfs::parse_size(s).map_err(|_| format!("bad {what} '{s}'"))
}

async fn release_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 4, 4, "release PATH VERS OFFSET LENGTH")?;
    let v = volume::require()?;
    let a = resolve(&v.mount, &args[0]).await?;
    let vers = num("version", &args[1])?;
    let (off, len) = (num("offset", &args[2])?, num("length", &args[3])?);
    v.mount
        .release_data(a.ino, off, len, vers)
        .await
        .map_err(|e| format!("release: {}", err(e)))
}

async fn stage_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 5, 5, "stage ARCHIVE PATH VERS OFFSET LENGTH")?;
    let v = volume::require()?;
    let m = &v.mount;
    let src = resolve(m, &args[0]).await?;
    let dst = resolve(m, &args[1]).await?;
    let vers = num("version", &args[2])?;
    let (off, len) = (num("offset", &args[3])?, num("length", &args[4])?);
    let mut done = 0;
    while done < len {
        let n = (len - done).min(STAGE_CHUNK) as usize;
        let chunk = m.read(src.ino, done, n).await.map_err(err)?;
        if chunk.len() != n {
            return Err(format!("{}: shorter than {len} bytes", args[0]));
        }
        let at = off.checked_add(done).ok_or("offset + length overflows")?;
        m.stage(dst.ino, vers, at, &chunk)
            .await
            .map_err(|e| format!("stage: {}", err(e)))?;
        done += n as u64;
    }
    Ok(())
}

async fn data_waiting_cmd(args: Vec<String>) -> CmdResult {
    if !args.is_empty() && args.len() != 2 {
        return Err("usage: data-waiting [INO BLOCK]".to_string());
    }
    let v = volume::require()?;
    let (mut ino, mut block) = match args.len() {
        2 => (num("inode", &args[0])?, num("block", &args[1])?),
        _ => (0, 0),
    };
    loop {
        let batch = v.mount.data_waiting(ino, block, WALK_BATCH);
        let Some(last) = batch.last() else {
            return Ok(());
        };
        (ino, block) = (last.ino, last.iblock);
        for e in &batch {
            kprintln!(
                "ino {} iblock {} ops {}",
                e.ino,
                e.iblock,
                archive::dwo_names(e.ops)
            );
        }
    }
}

async fn data_wait_err_cmd(args: Vec<String>) -> CmdResult {
    expect_args(
        &args,
        6,
        6,
        "data-wait-err INO VERS OFFSET COUNT read|write|change_size[,..] ERR",
    )?;
    let v = volume::require()?;
    let ino = num("inode", &args[0])?;
    let vers = num("version", &args[1])?;
    let (off, count) = (num("offset", &args[2])?, num("count", &args[3])?);
    let mut ops = 0;
    for name in args[4].split(',') {
        ops |= archive::dwo_parse(name).ok_or(format!("unknown op '{name}'"))?;
    }
    let e: i64 = args[5]
        .parse()
        .map_err(|_| format!("bad errno '{}'", args[5]))?;
    let n = v
        .mount
        .data_wait_err(ino, vers, off, count, ops, e)
        .await
        .map_err(|e| format!("data-wait-err: {}", err(e)))?;
    kprintln!("{n} waiting operations failed");
    Ok(())
}

async fn read_xattr_totals_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "read-xattr-totals")?;
    let v = volume::require()?;
    let mut from = [0u64; 3];
    loop {
        let batch = v
            .mount
            .read_xattr_totals(from, WALK_BATCH)
            .await
            .map_err(err)?;
        let Some(l) = batch.last() else {
            return Ok(());
        };
        for t in &batch {
            kprintln!("{}", scoutvm_fs::posix::archive_ctl::totals_line(t));
        }
        match scoutvm_fs::posix::archive_ctl::next_totals_name(l.name) {
            Some(n) => from = n,
            None => return Ok(()),
        }
    }
}

async fn read_xattr_index_cmd(args: Vec<String>) -> CmdResult {
    use scoutvm_fs::posix::archive_ctl::{next_indx_entry, parse_indx_entry};
    expect_args(&args, 0, 2, "read-xattr-index [FIRST [LAST]]")?;
    let pos = |i: usize, dflt| match args.get(i) {
        None => Ok(dflt),
        Some(a) => parse_indx_entry(a).ok_or(format!("bad position '{a}' (MAJOR.MINOR.INO)")),
    };
    let mut first = pos(
        0,
        scoutvm_fs::posix::mount::IndxEntry {
            major: 0,
            minor: 0,
            ino: 0,
        },
    )?;
    let last = pos(
        1,
        scoutvm_fs::posix::mount::IndxEntry {
            major: u8::MAX,
            minor: u64::MAX,
            ino: u64::MAX,
        },
    )?;
    let v = volume::require()?;
    loop {
        let batch = v
            .mount
            .read_xattr_index(first, last, WALK_BATCH)
            .await
            .map_err(err)?;
        for e in &batch {
            kprintln!("{}.{}.{}", e.major, e.minor, e.ino);
        }
        match batch.last() {
            Some(&l) if batch.len() == WALK_BATCH => match next_indx_entry(l) {
                Some(n) if n <= last => first = n,
                _ => return Ok(()),
            },
            _ => return Ok(()),
        }
    }
}

async fn walk_inodes_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 3, 3, "walk-inodes meta_seq|data_seq FIRST LAST")?;
    let v = volume::require()?;
    let index = archive::WalkIndex::parse(&args[0]).ok_or(format!(
        "unknown index '{}' (meta_seq or data_seq)",
        args[0]
    ))?;
    let bound = |what, s: &str| {
        if s == "-1" {
            Ok(u64::MAX)
        } else {
            num(what, s)
        }
    };
    let mut first = archive::WalkEntry {
        major: bound("first", &args[1])?,
        minor: 0,
        ino: 0,
    };
    let last = archive::WalkEntry {
        major: bound("last", &args[2])?,
        ..archive::WalkEntry::MAX
    };
    loop {
        let batch = v
            .mount
            .walk_inodes(index, first, last, WALK_BATCH)
            .await
            .map_err(err)?;
        let Some(l) = batch.last() else {
            return Ok(());
        };
        for e in &batch {
            kprintln!("{} {} {}", e.major, e.minor, e.ino);
        }
        first = match (l.ino.checked_add(1), l.major.checked_add(1)) {
            (Some(i), _) => archive::WalkEntry { ino: i, ..*l },
            (None, Some(m)) => archive::WalkEntry {
                major: m,
                minor: 0,
                ino: 0,
            },
            (None, None) => return Ok(()),
        };
    }
}

async fn search_xattrs_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 1, 1, "search-xattrs XATTR-NAME")?;
    let v = volume::require()?;
    let mut from = 0u64;
    loop {
        let r = v
            .mount
            .search_xattrs(args[0].as_bytes(), from, u64::MAX, WALK_BATCH)
            .await
            .map_err(|e| format!("search-xattrs: {}", err(e)))?;
        for ino in &r.inos {
            kprintln!("{ino}");
        }
        // a capped answer covers less: go on after it
        match r.last_ino.checked_add(1) {
            Some(n) if n > from => from = n,
            _ => return Ok(()),
        }
    }
}

/// The cursor after the link at `(dir, pos)`.
fn next_link(dir: u64, pos: u64) -> Option<(u64, u64)> {
    match (pos.checked_add(1), dir.checked_add(1)) {
        (Some(p), _) => Some((dir, p)),
        (None, Some(d)) => Some((d, 0)),
        (None, None) => None,
    }
}

async fn referring_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 1, 1, "get-referring-entries INO")?;
    let v = volume::require()?;
    let ino = num("inode", &args[0])?;
    let mut cur = Some((0, 0));
    while let Some((dir, pos)) = cur {
        let batch = v
            .mount
            .referring_entries(ino, dir, pos, WALK_BATCH)
            .await
            .map_err(err)?;
        let Some(l) = batch.last() else {
            return Ok(());
        };
        cur = next_link(l.dir, l.pos);
        for e in &batch {
            kprintln!(
                "dir {} pos {} type {} name {}",
                e.dir,
                e.pos,
                e.dtype,
                String::from_utf8_lossy(&e.name)
            );
        }
    }
    Ok(())
}

async fn ino_path_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 1, 1, "ino-path INO")?;
    let v = volume::require()?;
    let ino = num("inode", &args[0])?;
    let mut cur = Some((0, 0));
    while let Some((dir, pos)) = cur {
        let Some(p) = v.mount.ino_path(ino, dir, pos).await.map_err(err)? else {
            return Ok(());
        };
        cur = next_link(p.dir, p.pos);
        kprintln!("{}", String::from_utf8_lossy(&p.path));
    }
    Ok(())
}

async fn setattr_cmd(args: Vec<String>) -> CmdResult {
    const USAGE: &str = "setattr PATH VERS|- SIZE|- [offline]";
    expect_args(&args, 3, 4, USAGE)?;
    let v = volume::require()?;
    let a = resolve(&v.mount, &args[0]).await?;
    let field = |what, s: &str| match s {
        "-" => Ok(None),
        s => num(what, s).map(Some),
    };
    let offline = match args.get(3).map(String::as_str) {
        None => false,
        Some("offline") => true,
        Some(_) => return Err(format!("usage: {USAGE}")),
    };
    let sa = archive::SetAttrMore {
        data_version: field("version", &args[1])?,
        size: field("size", &args[2])?,
        offline,
        ..archive::SetAttrMore::default()
    };
    v.mount
        .setattr_more(a.ino, &sa)
        .await
        .map_err(|e| format!("setattr: {}", err(e)))
}

async fn move_blocks_cmd(args: Vec<String>) -> CmdResult {
    const USAGE: &str = "move-blocks FROM FROM_OFFSET LENGTH TO TO_OFFSET [stage VERS]";
    expect_args(&args, 5, 7, USAGE)?;
    let v = volume::require()?;
    let from = resolve(&v.mount, &args[0]).await?;
    let to = resolve(&v.mount, &args[3]).await?;
    let (flags, data_version) = match args.get(5).map(String::as_str) {
        None => (0, 0),
        Some("stage") if args.len() == 7 => (archive::MB_STAGE, num("version", &args[6])?),
        Some(_) => return Err(format!("usage: {USAGE}")),
    };
    let mb = archive::MoveBlocks {
        from: from.ino,
        from_off: num("offset", &args[1])?,
        len: num("length", &args[2])?,
        to_off: num("offset", &args[4])?,
        data_version,
        flags,
    };
    v.mount
        .move_blocks(&Cred::root(), to.ino, &mb)
        .await
        .map_err(|e| format!("move-blocks: {}", err(e)))
}

async fn punch_offline_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 4, 4, "punch-offline PATH VERS OFFSET LENGTH")?;
    let v = volume::require()?;
    let a = resolve(&v.mount, &args[0]).await?;
    let vers = num("version", &args[1])?;
    let (off, len) = (num("offset", &args[2])?, num("length", &args[3])?);
    v.mount
        .punch_offline(a.ino, vers, off, len)
        .await
        .map_err(|e| format!("punch-offline: {}", err(e)))
}
