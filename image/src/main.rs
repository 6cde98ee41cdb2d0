//! `scoutvm`: make, dump, check, change and mount scoutfs volumes on image
//! files or block devices: `mkfs`, `print`, `fsck` and the offline
//! `change-quorum-config`, `change-format-version` and
//! `prepare-empty-data-device`, with the reference tool's flags, habits
//! (`--long=VALUE`, bundled short flags, `--help` everywhere) and output,
//! and `mount` (a host FUSE mount). The work is done by
//! `scoutvm_fs::tools::{mkfs, print, fsck, offline}` and
//! `scoutvm_image::{fuse, volume}`; this file parses arguments (clap),
//! opens devices, draws randomness and shows progress. Exit status: 0
//! success, 1 operation failed or fsck found problems, 64 usage error (the
//! reference's `EX_USAGE`).

mod archive_cli;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use scoutvm_fs::format::super_block::QuorumConfig;
use scoutvm_fs::format::{FORMAT_VERSION_MAX, FORMAT_VERSION_MIN, LG_BLOCK_SIZE, SM_BLOCK_SIZE};
use scoutvm_fs::posix::mount::MountOptions;
use scoutvm_fs::runtime::env::Timespec;
use scoutvm_fs::storage::dev::BlockDev;
use scoutvm_fs::tools::mkfs::{self, MkfsParams};
use scoutvm_fs::tools::offline::{self, FormatChange};
use scoutvm_fs::tools::print::PrintOptions;
use scoutvm_image::filedev::FileDev;
use scoutvm_image::fuse::FuseOptions;
use scoutvm_image::volume;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

/// The reference tool's exit status for a usage error (`EX_USAGE`).
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "scoutvm",
    version,
    about = "Make, dump, check, change and mount scoutfs volumes on image files or block devices",
    arg_required_else_help = true,
    // like argp: a unique prefix of a long option names it
    infer_long_args = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a new volume on the metadata and data devices
    Mkfs(MkfsArgs),
    /// Dump the super, quorum blocks, allocators, log trees and items of a volume
    Print(PrintArgs),
    /// Check a volume; exit 0 only when it is clean
    Fsck(FsckArgs),
    /// Serve a volume (or an in-memory one) on DIR through FUSE, in the foreground
    #[command(long_about = MOUNT_ABOUT)]
    Mount(MountArgs),
    /// Change the quorum slots of an unmounted volume
    ChangeQuorumConfig(ChangeQuorumArgs),
    /// Upgrade the format version of an unmounted volume
    ChangeFormatVersion(ChangeFormatArgs),
    /// Write the super of a new, empty data device for an existing volume
    PrepareEmptyDataDevice(PrepareDataArgs),
    /// Show a mounted file's archival attributes (seqs, data_version, block counts)
    Stat(archive_cli::StatArgs),
    /// Free a mounted file's data blocks in a range, leaving offline extents
    Release(archive_cli::ReleaseArgs),
    /// Write archived data back into a mounted file's offline extents
    Stage(archive_cli::StageArgs),
    /// List operations of a mount waiting for offline data
    DataWaiting(archive_cli::DataWaitingArgs),
    /// Fail operations waiting for offline data with an errno
    DataWaitErr(archive_cli::DataWaitErrArgs),
    /// Walk a mount's meta_seq or data_seq inode index
    WalkInodes(archive_cli::WalkArgs),
    /// Print the directory entries that refer to an inode number
    GetReferringEntries(archive_cli::ReferringArgs),
    /// Print the paths that refer to an inode number
    InoPath(archive_cli::InoPathArgs),
    /// Set data_version, size (offline), ctime and crtime on a new, empty file
    Setattr(archive_cli::SetattrArgs),
    /// Turn a mounted file's offline extents in a range into holes
    PunchOffline(archive_cli::PunchOfflineArgs),
    /// Move the extents of a region of one mounted file into another
    MoveBlocks(archive_cli::MoveBlocksArgs),
    /// Print the volume's `.totl.` xattr totals: `A.B.C = TOTAL, COUNT`
    ReadXattrTotals(archive_cli::TotalsArgs),
    /// Print the inodes of the `.indx.` xattr index from FIRST to LAST
    /// (MAJOR.MINOR.INO each)
    ReadXattrIndex(archive_cli::IndexArgs),
    /// Print the inode numbers of the files that have a `.srch.` xattr
    SearchXattrs(archive_cli::SearchXattrsArgs),
    /// Print a new random cluster key (64 hex digits) for `cluster.key=`
    ClusterKey,
    /// Fence nodes of a `qemu/cluster.sh` run directory on request (QMP quit)
    FenceAgent(FenceAgentArgs),
    /// Load a 9P2000.L server from this host: per op, ops/s, MB/s and
    /// p50/p99 latency with N requests outstanding on one connection
    P9load(P9loadArgs),
    /// Be a vhost-user-fs device (virtio-fs) for a QEMU guest, relaying its
    /// FUSE requests to a running appliance
    #[command(long_about = VIRTIOFS_ABOUT)]
    Virtiofs(VirtiofsArgs),
}

const VIRTIOFS_ABOUT: &str = "\
Be the vhost-user-fs backend of a QEMU guest's virtio-fs device and relay
its FUSE requests to a running appliance's FUSE service (fuse.port=, 7564 by
default). Serves one frontend, then exits when it disconnects. QEMU side:
  -object memory-backend-memfd,id=mem,size=<guest mem>,share=on -numa node,memdev=mem
  -chardev socket,id=vfs,path=SOCKET -device vhost-user-fs-pci,chardev=vfs,tag=scoutvm
and in the guest: mount -t virtiofs scoutvm /mnt";

#[derive(Args)]
struct VirtiofsArgs {
    /// The appliance's FUSE service
    #[arg(long, value_name = "ADDR:PORT")]
    node: String,
    /// The vhost-user socket to create and listen on
    #[arg(long, value_name = "PATH")]
    socket: std::path::PathBuf,
    /// When the appliance connection is lost (a reboot), keep trying to
    /// connect again for this long, holding the guest's requests; then
    /// answer ENOTCONN. 0: answer ENOTCONN at once
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    reconnect_secs: u64,
}

#[derive(Args)]
struct FenceAgentArgs {
    /// The cluster's run directory (its node0, node1, ... directories)
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Where to listen (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Append every request and answer here
    #[arg(long)]
    log: std::path::PathBuf,
    /// Write the port listened on here once listening
    #[arg(long)]
    port_file: Option<std::path::PathBuf>,
}

const MOUNT_ABOUT: &str = "\
Serve a volume on DIR through FUSE (needs root and /dev/fuse), in the
foreground until `umount DIR` or SIGINT/SIGTERM, then commit and exit. The
devices are locked and a volume in use elsewhere is refused.

`mount --node ADDR:PORT DIR` mounts a running appliance's volume instead,
relaying FUSE to its FUSE service (TCP 7564 on the appliance; qemu/run.sh
forwards 127.0.0.1:7564), until `umount DIR` or SIGINT/SIGTERM.

Mount options (-o, comma-separated):
  cache_mb=N   item cache budget (default 64)
  dirty_mb=N   commit at N MiB of dirty items (default 32)
  commit_s=N   commit every N seconds (default 10)
  ttl_ms=N     kernel attribute/name cache (default 1000)
  fsname=NAME  source name in the mount table
  private      only the mounting user may enter";

#[derive(Args)]
struct MkfsArgs {
    /// Quorum slot (repeatable, at least one)
    #[arg(
        short = 'Q',
        long = "quorum-slot",
        value_name = "NR,ADDR,PORT",
        required = true
    )]
    quorum_slot: Vec<String>,
    /// Use at most SIZE bytes of the metadata device (K/M/G/T/P)
    #[arg(short = 'm', long = "max-meta-size", value_name = "SIZE")]
    max_meta_size: Option<String>,
    /// Use at most SIZE bytes of the data device (K/M/G/T/P)
    #[arg(short = 'd', long = "max-data-size", value_name = "SIZE")]
    max_data_size: Option<String>,
    /// The data_alloc_zone_blocks volume option
    #[arg(short = 'z', long = "data-alloc-zone-blocks", value_name = "BLOCKS")]
    data_alloc_zone_blocks: Option<u64>,
    /// Overwrite an existing volume
    #[arg(short = 'f', long = "force")]
    force: bool,
    /// Allow devices smaller than 64 GiB
    #[arg(short = 'A', long = "allow-small-size")]
    allow_small_size: bool,
    /// Format version
    #[arg(short = 'V', long = "format-version", value_name = "VERS",
          default_value_t = FORMAT_VERSION_MAX, value_parser = format_version)]
    format_version: u64,
    /// Metadata device
    #[arg(value_name = "META-DEVICE")]
    meta: String,
    /// Data device
    #[arg(value_name = "DATA-DEVICE")]
    data: String,
}

#[derive(Args)]
struct PrintArgs {
    /// Skip the structures that can be huge (allocator trees, srch files, fs_root)
    #[arg(short = 'S', long = "skip-likely-huge")]
    skip_likely_huge: bool,
    /// Metadata device
    #[arg(value_name = "META-DEVICE")]
    meta: String,
}

#[derive(Args)]
struct FsckArgs {
    /// Metadata device
    #[arg(value_name = "META-DEVICE")]
    meta: String,
    /// Data device (its super and data allocator are checked too)
    #[arg(value_name = "DATA-DEVICE")]
    data: Option<String>,
}

#[derive(Args)]
struct P9loadArgs {
    /// The server, HOST:PORT
    #[arg(long, value_name = "HOST:PORT")]
    server: String,
    /// The attach name (diod: /export)
    #[arg(long, default_value = "")]
    aname: String,
    /// The msize asked for (the server may give less)
    #[arg(long, default_value_t = 512 * 1024)]
    msize: u32,
    /// Requests in flight at once (workers, one tag each)
    #[arg(long, default_value_t = 1)]
    outstanding: usize,
    /// Seconds each op runs (default 5)
    #[arg(long, conflicts_with = "count")]
    seconds: Option<f64>,
    /// Iterations each op runs instead of a time
    #[arg(long)]
    count: Option<u64>,
    /// Comma-separated ops: getattr,walk,create,unlink,read64k,write64k,read1m,write1m
    #[arg(
        long,
        default_value = "getattr,walk,create,unlink,read64k,write64k,read1m,write1m"
    )]
    ops: String,
    /// The user name of the attach
    #[arg(long, default_value = "root")]
    uname: String,
    /// The uid of the attach (n_uname)
    #[arg(long, default_value_t = 0)]
    uid: u32,
}

#[derive(Args)]
struct MountArgs {
    /// Mount options (see below), repeatable
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// The mounts the volume lists are dead (a crashed mount): reclaim them;
    /// only when no node on any host has the volume mounted
    #[arg(long)]
    recover: bool,
    /// An in-memory volume with SIZE of data (K/M/G/T), discarded at unmount
    #[arg(long, value_name = "SIZE")]
    mem: Option<String>,
    /// A running appliance's volume through its FUSE service (ADDR:PORT,
    /// port 7564 by default on the appliance)
    #[arg(long, value_name = "ADDR:PORT")]
    node: Option<String>,
    /// META-DEVICE DATA-DEVICE DIR, or DIR with --mem or --node
    #[arg(value_name = "PATHS")]
    paths: Vec<String>,
}

#[derive(Args)]
struct ChangeQuorumArgs {
    /// New quorum slot (repeatable, at least one); replaces all slots
    #[arg(
        short = 'Q',
        long = "quorum-slot",
        value_name = "NR,ADDR,PORT",
        required = true
    )]
    quorum_slot: Vec<String>,
    /// Write the config into the super of the unmounted device [required]
    #[arg(short = 'F', long = "offline", required = true)]
    offline: bool,
    /// Metadata device
    #[arg(value_name = "META-DEVICE")]
    meta: String,
}

#[derive(Args)]
struct ChangeFormatArgs {
    /// Format version to upgrade to
    #[arg(short = 'V', long = "format-version", value_name = "VERS",
          default_value_t = FORMAT_VERSION_MAX, value_parser = format_version)]
    format_version: u64,
    /// Write the version into the supers of the unmounted devices [required]
    #[arg(short = 'F', long = "offline", required = true)]
    offline: bool,
    /// Metadata device
    #[arg(value_name = "META-DEVICE")]
    meta: String,
    /// Data device
    #[arg(value_name = "DATA-DEVICE")]
    data: String,
}

#[derive(Args)]
struct PrepareDataArgs {
    /// Only check for errors and do not write
    #[arg(short = 'c', long = "check")]
    check: bool,
    /// Metadata device
    #[arg(value_name = "META-DEVICE")]
    meta: String,
    /// The new data device (optional with --check)
    #[arg(value_name = "DATA-DEVICE", required_unless_present = "check")]
    data: Option<String>,
}

fn format_version(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (FORMAT_VERSION_MIN..=FORMAT_VERSION_MAX).contains(&n) => Ok(n),
        _ => Err(format!(
            "format version '{s}' is outside the supported range \
             {FORMAT_VERSION_MIN}-{FORMAT_VERSION_MAX}"
        )),
    }
}

/// A usage error found after parsing: message, exit 64.
struct Usage(String);

fn usage<T>(msg: impl Into<String>) -> Result<T, Usage> {
    Err(Usage(msg.into()))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(EXIT_USAGE)
                }
                // named like the reference's argp errors ("scoutfs: ...")
                _ => {
                    eprint!("scoutvm: {}", e.render());
                    ExitCode::from(EXIT_USAGE)
                }
            };
        }
    };
    let (name, r) = match cli.cmd {
        Cmd::Mkfs(a) => ("mkfs", cmd_mkfs(a)),
        Cmd::Print(a) => ("print", cmd_print(a)),
        Cmd::Fsck(a) => ("fsck", cmd_fsck(a)),
        Cmd::Mount(a) => ("mount", cmd_mount(a)),
        Cmd::ChangeQuorumConfig(a) => ("change-quorum-config", cmd_change_quorum(a)),
        Cmd::ChangeFormatVersion(a) => ("change-format-version", cmd_change_format(a)),
        Cmd::PrepareEmptyDataDevice(a) => ("prepare-empty-data-device", cmd_prepare_data(a)),
        Cmd::Stat(a) => ("stat", archive_cli::cmd_stat(a).map_err(Usage)),
        Cmd::Release(a) => ("release", archive_cli::cmd_release(a).map_err(Usage)),
        Cmd::Stage(a) => ("stage", archive_cli::cmd_stage(a).map_err(Usage)),
        Cmd::DataWaiting(a) => (
            "data-waiting",
            archive_cli::cmd_data_waiting(a).map_err(Usage),
        ),
        Cmd::DataWaitErr(a) => (
            "data-wait-err",
            archive_cli::cmd_data_wait_err(a).map_err(Usage),
        ),
        Cmd::SearchXattrs(a) => (
            "search-xattrs",
            archive_cli::cmd_search_xattrs(a).map_err(Usage),
        ),
        Cmd::WalkInodes(a) => (
            "walk-inodes",
            archive_cli::cmd_walk_inodes(a).map_err(Usage),
        ),
        Cmd::GetReferringEntries(a) => (
            "get-referring-entries",
            archive_cli::cmd_get_referring_entries(a).map_err(Usage),
        ),
        Cmd::InoPath(a) => ("ino-path", archive_cli::cmd_ino_path(a).map_err(Usage)),
        Cmd::Setattr(a) => ("setattr", archive_cli::cmd_setattr(a).map_err(Usage)),
        Cmd::PunchOffline(a) => (
            "punch-offline",
            archive_cli::cmd_punch_offline(a).map_err(Usage),
        ),
        Cmd::MoveBlocks(a) => (
            "move-blocks",
            archive_cli::cmd_move_blocks(a).map_err(Usage),
        ),
        Cmd::ReadXattrTotals(a) => (
            "read-xattr-totals",
            archive_cli::cmd_read_xattr_totals(a).map_err(Usage),
        ),
        Cmd::ReadXattrIndex(a) => (
            "read-xattr-index",
            archive_cli::cmd_read_xattr_index(a).map_err(Usage),
        ),
        Cmd::ClusterKey => ("cluster-key", Ok(cmd_cluster_key())),
        Cmd::FenceAgent(a) => ("fence-agent", Ok(cmd_fence_agent(a))),
        Cmd::P9load(a) => ("p9load", cmd_p9load(a)),
        Cmd::Virtiofs(a) => (
            "virtiofs",
            Ok(
                match scoutvm_image::virtiofs::run(&a.node, &a.socket, a.reconnect_secs) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(format!("virtiofs: {e}")),
                },
            ),
        ),
    };
    match r {
        Ok(code) => code,
        Err(Usage(m)) => {
            eprintln!("scoutvm: {m}");
            eprintln!("try 'scoutvm {name} --help'");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// `scoutvm p9load`: one `P9LOAD ...` line per op (image/src/p9load.rs).
fn cmd_p9load(a: P9loadArgs) -> Result<ExitCode, Usage> {
    use scoutvm_image::p9load::{self, Budget, Config};
    let mut cfg = Config::new(&a.server);
    cfg.aname = a.aname;
    cfg.msize = a.msize;
    if a.outstanding == 0 || a.outstanding > 1024 {
        return usage("--outstanding must be 1..=1024");
    }
    cfg.outstanding = a.outstanding;
    cfg.budget = match (a.seconds, a.count) {
        (_, Some(n)) => Budget::Count(n),
        (Some(s), None) if s > 0.0 && s.is_finite() => Budget::Seconds(s),
        (Some(_), None) => return usage("--seconds must be a positive number"),
        (None, None) => Budget::Seconds(5.0),
    };
    cfg.ops = p9load::parse_ops(&a.ops).map_err(Usage)?;
    cfg.uname = a.uname;
    cfg.uid = a.uid;
    let r = p9load::run_with(&cfg, &mut |rep| {
        println!("{}", rep.line());
        let _ = std::io::stdout().flush();
    });
    Ok(match r {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(format!("p9load: {e}")),
    })
}

/// Serve fence requests until killed.
fn cmd_fence_agent(a: FenceAgentArgs) -> ExitCode {
    let l = match std::net::TcpListener::bind(&a.listen) {
        Ok(l) => l,
        Err(e) => return fail(format!("fence-agent: listen on {}: {e}", a.listen)),
    };
    let port = match l.local_addr() {
        Ok(ad) => ad.port(),
        Err(e) => return fail(format!("fence-agent: {e}")),
    };
    if let Some(f) = &a.port_file {
        // written whole then renamed: a reader never sees half a port
        let tmp = f.with_extension("tmp");
        if let Err(e) =
            std::fs::write(&tmp, format!("{port}\n")).and_then(|_| std::fs::rename(&tmp, f))
        {
            return fail(format!("fence-agent: {}: {e}", f.display()));
        }
    }
    eprintln!(
        "fence-agent: listening on port {port} for {}",
        a.dir.display()
    );
    match scoutvm_image::fence_agent::serve(l, a.dir, a.log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("fence-agent: {e}")),
    }
}

/// A key from the OS random source only (no weaker fallback for a secret).
fn cmd_cluster_key() -> ExitCode {
    use std::io::Read;
    let mut k = [0u8; scoutvm_fs::cluster::auth::KEY_BYTES];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut k)) {
        Ok(()) => {
            println!("{}", scoutvm_fs::cluster::auth::ClusterKey(k).to_hex());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cluster-key: cannot read /dev/urandom: {e}")),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("scoutvm: {msg}");
    ExitCode::from(1)
}

fn open_dev(path: &str, writable: bool, which: &str) -> Result<FileDev, ExitCode> {
    FileDev::open(Path::new(path), writable)
        .map_err(|e| fail(format!("failed to open {which} device '{path}': {e}")))
}

/// Random words from the OS (fsid, uuid). Falls back to time and pid.
fn random_u64s() -> [u64; 3] {
    scoutvm_image::hostenv::random_u64s::<3>()
}

fn now() -> Timespec {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // the reference stores microsecond precision
    Timespec {
        sec: d.as_secs(),
        nsec: d.subsec_micros() * 1000,
    }
}

fn cmd_mkfs(a: MkfsArgs) -> Result<ExitCode, Usage> {
    let mut qconf = QuorumConfig::default();
    for q in &a.quorum_slot {
        mkfs::parse_quorum_slot(&mut qconf, q).map_err(Usage)?;
    }
    let mut max_meta = 0u64;
    if let Some(v) = &a.max_meta_size {
        let n = mkfs::parse_size(v).map_err(Usage)?;
        max_meta = n - n % LG_BLOCK_SIZE as u64;
        if max_meta != n {
            eprintln!("Meta dev size {n} rounded down to {max_meta} bytes");
        }
        if max_meta == 0 {
            return usage(format!("meta size '{v}' is smaller than one 64KB block"));
        }
    }
    let mut max_data = 0u64;
    if let Some(v) = &a.max_data_size {
        let n = mkfs::parse_size(v).map_err(Usage)?;
        max_data = n - n % SM_BLOCK_SIZE as u64;
        if max_data != n {
            eprintln!("Data dev size {n} rounded down to {max_data} bytes");
        }
        if max_data == 0 {
            return usage(format!("data size '{v}' is smaller than one 4KB block"));
        }
    }
    Ok(run_mkfs(
        &a.meta,
        &a.data,
        a.force,
        a.allow_small_size,
        a.format_version,
        max_meta,
        max_data,
        a.data_alloc_zone_blocks.unwrap_or(0),
        qconf,
    ))
}

#[allow(clippy::too_many_arguments)]
fn run_mkfs(
    meta_path: &str,
    data_path: &str,
    force: bool,
    allow_small: bool,
    fmt_vers: u64,
    max_meta: u64,
    max_data: u64,
    zone_blocks: u64,
    qconf: QuorumConfig,
) -> ExitCode {
    if let (Ok(a), Ok(b)) = (
        std::fs::canonicalize(meta_path),
        std::fs::canonicalize(data_path),
    ) {
        if a == b {
            return fail("the meta and data devices must be different");
        }
    }
    let meta = match open_dev(meta_path, true, "meta") {
        Ok(d) => d,
        Err(c) => return c,
    };
    let data = match open_dev(data_path, true, "data") {
        Ok(d) => d,
        Err(c) => return c,
    };
    if !force {
        for (dev, path, which) in [(&meta, meta_path, "meta"), (&data, data_path, "data")] {
            if mkfs::has_volume(dev) {
                return fail(format!(
                    "{which} device '{path}' already contains a scoutfs volume, use -f to overwrite it"
                ));
            }
        }
    }
    let mut sizes = [0u64; 2];
    for (k, (dev, max, which)) in [(&meta, max_meta, "meta"), (&data, max_data, "data")]
        .into_iter()
        .enumerate()
    {
        match mkfs::limit_device_size(dev.size_bytes(), max, allow_small, which) {
            Ok((size, notes, warns)) => {
                for n in notes {
                    println!("{n}");
                }
                for w in warns {
                    eprintln!("{w}");
                }
                sizes[k] = size;
            }
            Err(e) => return fail(e),
        }
    }
    let r = random_u64s();
    let p = MkfsParams {
        fmt_vers,
        meta_bytes: sizes[0] - sizes[0] % LG_BLOCK_SIZE as u64,
        data_bytes: sizes[1] - sizes[1] % SM_BLOCK_SIZE as u64,
        qconf,
        fsid: r[0],
        uuid: mkfs::uuid_from_random(r[1], r[2]),
        now: now(),
        data_alloc_zone_blocks: zone_blocks,
    };
    match mkfs::mkfs(&meta, &data, &p) {
        Ok(sb) => {
            print!("{}", mkfs::describe(&sb, meta_path, data_path));
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("mkfs failed: {e}")),
    }
}

/// `core::fmt::Write` onto stdout; remembers a write error (broken pipe).
struct StdoutFmt {
    out: std::io::BufWriter<std::io::Stdout>,
    failed: bool,
}

impl std::fmt::Write for StdoutFmt {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.out.write_all(s.as_bytes()).map_err(|_| {
            self.failed = true;
            std::fmt::Error
        })
    }
}

fn cmd_print(a: PrintArgs) -> Result<ExitCode, Usage> {
    let path = &a.meta;
    let dev = match open_dev(path, false, "meta") {
        Ok(d) => d,
        Err(c) => return Ok(c),
    };
    let mut out = StdoutFmt {
        out: std::io::BufWriter::new(std::io::stdout()),
        failed: false,
    };
    let opts = PrintOptions {
        skip_likely_huge: a.skip_likely_huge,
    };
    let r = scoutvm_fs::tools::print::print_volume_with(&dev, &mut out, &opts);
    let flushed = out.out.flush().is_ok();
    Ok(match r {
        Ok(()) => ExitCode::SUCCESS,
        // output closed early (e.g. piped into head): not an error of ours
        Err(scoutvm_fs::tools::print::PrintError::Fmt) if out.failed || !flushed => {
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("print '{path}': {e}")),
    })
}

/// Progress on stderr when it is a terminal, at most ~10 updates a second.
struct Progress {
    tty: bool,
    last: std::time::Instant,
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: std::time::Instant::now(),
            shown: false,
        }
    }

    fn update(&mut self, phase: &str, done: u64, total: u64) {
        if !self.tty || self.last.elapsed().as_millis() < 100 {
            return;
        }
        self.last = std::time::Instant::now();
        self.shown = true;
        match (done * 100).checked_div(total) {
            Some(pct) => eprint!("\r\x1b[Kfsck: {phase}: {pct}%"),
            None => eprint!("\r\x1b[Kfsck: {phase}"),
        }
    }

    fn finish(&self) {
        if self.shown {
            eprint!("\r\x1b[K");
        }
    }
}

fn cmd_fsck(a: FsckArgs) -> Result<ExitCode, Usage> {
    let (meta_path, data_path) = (&a.meta, a.data.as_ref());
    let meta = match open_dev(meta_path, false, "meta") {
        Ok(d) => d,
        Err(c) => return Ok(c),
    };
    let data = match data_path.map(|p| open_dev(p, false, "data")).transpose() {
        Ok(d) => d,
        Err(c) => return Ok(c),
    };
    let mut prog = Progress::new();
    let rep = scoutvm_fs::tools::fsck::fsck(
        &meta,
        data.as_ref().map(|d| d as &dyn BlockDev),
        &mut |phase, done, total| prog.update(phase, done, total),
    );
    prog.finish();
    let mut text = String::new();
    let _ = rep.render(&mut text);
    print!("{text}");
    Ok(if rep.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `-o` settings of `mount`.
fn parse_mount_options(
    list: &str,
    mopts: &mut MountOptions,
    fopts: &mut FuseOptions,
) -> Result<(), Usage> {
    for opt in list.split(',').filter(|o| !o.is_empty()) {
        let (key, val) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let num = |max: u64| -> Result<u64, Usage> {
            let v = val.ok_or_else(|| Usage(format!("mount option '{key}' needs a value")))?;
            match v.parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => usage(format!("mount option '{key}={v}' must be 1..={max}")),
            }
        };
        match key {
            "cache_mb" => mopts.cache_budget_bytes = (num(1 << 20)? << 20) as usize,
            "dirty_mb" => mopts.commit.dirty_limit_bytes = (num(1 << 14)? << 20) as usize,
            "commit_s" => mopts.commit.interval_ns = num(3600)? * 1_000_000_000,
            "ttl_ms" => fopts.ttl = std::time::Duration::from_millis(num(3_600_000)?),
            "fsname" => match val {
                Some(v) if !v.is_empty() && !v.contains([' ', '\t', '\n']) => {
                    fopts.fsname = v.to_string()
                }
                _ => return usage("mount option 'fsname' needs a name without blanks"),
            },
            "private" if val.is_none() => fopts.allow_other = false,
            _ => return usage(format!("unknown mount option '{opt}'")),
        }
    }
    Ok(())
}

fn cmd_mount(a: MountArgs) -> Result<ExitCode, Usage> {
    if let Some(node) = &a.node {
        return cmd_mount_node(node, &a);
    }
    let mut mopts = MountOptions::default();
    let mut fopts = FuseOptions::default();
    for o in &a.options {
        parse_mount_options(o, &mut mopts, &mut fopts)?;
    }
    let recover = a.recover;
    let mem_bytes = match &a.mem {
        Some(v) => {
            let n = mkfs::parse_size(v).map_err(Usage)?;
            if n < 16 << 20 {
                return usage(format!("--mem size '{v}' is below 16M"));
            }
            Some(n)
        }
        None => None,
    };
    let paths = a.paths;
    if recover && mem_bytes.is_some() {
        return usage("--recover is for volumes, not --mem");
    }
    let dir = match (mem_bytes, paths.as_slice()) {
        (Some(_), [dir]) | (None, [_, _, dir]) => dir.clone(),
        (Some(_), _) => return usage("mount --mem needs exactly one DIR"),
        (None, _) => return usage("mount needs META, DATA and DIR"),
    };
    if let Err(e) = check_mount_dir(&dir) {
        return Ok(fail(e));
    }
    let (opener, what) = match (mem_bytes, paths.as_slice()) {
        (Some(n), _) => (
            volume::mem_opener(n, mopts),
            format!("an in-memory volume ({} MiB of data)", n >> 20),
        ),
        (None, [meta, data, _]) => {
            let devs = match volume::open_for_mount(meta, data, recover) {
                Ok(d) => d,
                Err(e) => return Ok(fail(e)),
            };
            let what = format!(
                "volume {} (fsid {:x}, meta '{meta}', data '{data}')",
                devs.sb.uuid_string(),
                devs.sb.hdr.fsid
            );
            (volume::volume_opener(devs, mopts), what)
        }
        (None, _) => return usage("mount needs META, DATA and DIR"),
    };
    let shown = dir.clone();
    let r = scoutvm_image::fuse::run_foreground(opener, Path::new(&dir), &fopts, || {
        println!("scoutvm: mounted {what} on {shown}");
        println!("scoutvm: serving until `umount {shown}` or SIGINT/SIGTERM");
        let _ = std::io::stdout().flush();
    });
    Ok(match r {
        Ok(stats) => {
            println!(
                "scoutvm: unmounted {dir} cleanly ({} requests, {} periodic commit checks)",
                stats.jobs, stats.ticks
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    })
}

/// `mount --node ADDR:PORT DIR`: relay the host's FUSE to an appliance.
fn cmd_mount_node(node: &str, a: &MountArgs) -> Result<ExitCode, Usage> {
    if a.mem.is_some() || a.recover || !a.options.is_empty() {
        return usage("mount --node takes no -o, --mem or --recover");
    }
    let [dir] = a.paths.as_slice() else {
        return usage("mount --node needs exactly one DIR");
    };
    if let Err(e) = check_mount_dir(dir) {
        return Ok(fail(e));
    }
    let shown = dir.clone();
    let r = scoutvm_image::fuse_relay::run_relay(node, Path::new(dir), || {
        println!("scoutvm: mounted the appliance at {node} on {shown}");
        println!("scoutvm: relaying until `umount {shown}` or SIGINT/SIGTERM");
        let _ = std::io::stdout().flush();
    });
    Ok(match r {
        Ok(s) => {
            println!(
                "scoutvm: unmounted {dir} cleanly ({} requests, {} replies relayed)",
                s.requests, s.replies
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    })
}

fn check_mount_dir(dir: &str) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("mount point '{dir}' is not a directory")),
        Err(e) => Err(format!("mount point '{dir}': {e}")),
    }
}

fn open_locked(path: &str, which: &str) -> Result<FileDev, ExitCode> {
    volume::open_locked(path, which).map_err(fail)
}

fn cmd_change_quorum(a: ChangeQuorumArgs) -> Result<ExitCode, Usage> {
    debug_assert!(a.offline, "clap requires --offline");
    let mut qconf = QuorumConfig::default();
    for q in &a.quorum_slot {
        mkfs::parse_quorum_slot(&mut qconf, q).map_err(Usage)?;
    }
    let meta = match open_locked(&a.meta, "meta") {
        Ok(d) => d,
        Err(c) => return Ok(c),
    };
    Ok(match offline::change_quorum_config(&meta, &qconf) {
        Ok(sb) => {
            print!(
                "{}{}",
                offline::describe_change(
                    "Successfully changed quorum config for scoutfs filesystem:",
                    &sb,
                    &[("meta", &a.meta)],
                    24
                ),
                offline::describe_quorum(&sb)
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    })
}

fn cmd_change_format(a: ChangeFormatArgs) -> Result<ExitCode, Usage> {
    debug_assert!(a.offline, "clap requires --offline");
    let meta = match open_locked(&a.meta, "meta") {
        Ok(d) => d,
        Err(c) => return Ok(c),
    };
    let data = match open_locked(&a.data, "data") {
        Ok(d) => d,
        Err(c) => return Ok(c),
    };
    Ok(
        match offline::change_format_version(&meta, &data, a.format_version) {
            Ok(FormatChange::Unchanged) => {
                println!(
                    "both metadata and data device format version are already {}, nothing to do.",
                    a.format_version
                );
                ExitCode::SUCCESS
            }
            Ok(FormatChange::Changed(sb)) => {
                println!(
                    "{}  {:<22}{}",
                    offline::describe_change(
                        "Successfully updated format version for scoutfs filesystem:",
                        &sb,
                        &[("meta", &a.meta), ("data", &a.data)],
                        22
                    ),
                    "format version:",
                    sb.fmt_vers
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    )
}

fn cmd_prepare_data(a: PrepareDataArgs) -> Result<ExitCode, Usage> {
    let meta = match open_locked(&a.meta, "meta") {
        Ok(d) => d,
        Err(c) => return Ok(c),
    };
    let data = match a.data.as_deref().map(|p| open_locked(p, "data")) {
        Some(Err(c)) => return Ok(c),
        Some(Ok(d)) => Some(d),
        None => None,
    };
    let target = match (&data, a.data.as_deref()) {
        (Some(d), Some(p)) => Some((d as &dyn BlockDev, p)),
        _ => None,
    };
    let r = offline::prepare_empty_data_device(&meta, target, a.check);
    Ok(match (r, a.check) {
        (Ok(_), true) => {
            println!("All checks passed.");
            ExitCode::SUCCESS
        }
        (Err(e), true) => {
            eprintln!("scoutvm: {e}");
            println!(
                "Errors were found that must be addressed before a new empty data device \
                 could be prepared and used."
            );
            ExitCode::from(1)
        }
        (Ok(sb), false) => {
            let data_path = a.data.as_deref().unwrap_or_default();
            print!(
                "{}{}",
                offline::describe_change(
                    "Successfully initialized empty data device for scoutfs filesystem:",
                    &sb,
                    &[("meta", &a.meta), ("data", data_path)],
                    24
                ),
                offline::describe_sizes(&sb)
            );
            ExitCode::SUCCESS
        }
        (Err(e), false) => fail(e),
    })
}
