//! `scoutvm`: make, dump, check and mount scoutfs volumes on image files
//! or block devices: `mkfs`, `print` and `fsck`, with the reference tool's
//! flags and output, and `mount` (a host FUSE mount). The work is done by
//! `scoutvm_fs::{tools::mkfs, tools::print, tools::fsck}` and `scoutvm_image::{fuse, volume}`;
//! this file parses arguments, opens devices, draws randomness and shows
//! progress. Exit status: 0 success, 1 operation failed or fsck found
//! problems, 2 usage error.

use scoutvm_fs::format::super_block::QuorumConfig;
use scoutvm_fs::format::{FORMAT_VERSION_MAX, LG_BLOCK_SIZE, SM_BLOCK_SIZE};
use scoutvm_fs::posix::mount::MountOptions;
use scoutvm_fs::runtime::env::Timespec;
use scoutvm_fs::storage::dev::BlockDev;
use scoutvm_fs::tools::mkfs::{self, MkfsParams};
use scoutvm_image::filedev::FileDev;
use scoutvm_image::fuse::FuseOptions;
use scoutvm_image::volume;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "\
usage: scoutvm <command> [options]

commands:
  mkfs [-f] [-A] [-V VERS] [-m SIZE] [-d SIZE] [-z BLOCKS] -Q NR,ADDR,PORT [-Q ...] META DATA
      make a new volume on the metadata and data devices
        -Q NR,ADDR,PORT  quorum slot (repeatable, at least one)
        -m SIZE, -d SIZE use at most SIZE bytes of the meta/data device (K/M/G/T/P)
        -V VERS          format version, 1 or 2 (default 2)
        -A               allow devices smaller than 64 GiB
        -f               overwrite an existing volume
        -z BLOCKS        data_alloc_zone_blocks volume option
  print META
      dump the super, quorum blocks, allocators and trees of a volume
  fsck META [DATA]
      check a volume; exit 0 only when it is clean
  mount [-o OPTIONS] [--recover] META DATA DIR
  mount --mem SIZE [-o OPTIONS] DIR
      serve a volume on DIR through FUSE (needs root and /dev/fuse), in the
      foreground until `umount DIR` or SIGINT/SIGTERM, then commit and exit;
      the devices are locked and a volume in use elsewhere is refused
        --recover        the mounts the volume lists are dead (a crashed
                         mount): reclaim them; only when no node on any
                         host has the volume mounted
        --mem SIZE       an in-memory volume with SIZE of data (K/M/G/T),
                         discarded at unmount
        -o OPTIONS       comma-separated:
                           cache_mb=N   item cache budget (default 64)
                           dirty_mb=N   commit at N MiB of dirty items (default 32)
                           commit_s=N   commit every N seconds (default 10)
                           ttl_ms=N     kernel attribute/name cache (default 1000)
                           fsname=NAME  source name in the mount table
                           private      only the mounting user may enter
";

/// A usage error: message, exit 2.
struct Usage(String);

fn usage<T>(msg: impl Into<String>) -> Result<T, Usage> {
    Err(Usage(msg.into()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let r = match cmd.as_str() {
        "mkfs" => cmd_mkfs(rest),
        "print" => cmd_print(rest),
        "fsck" => cmd_fsck(rest),
        "mount" => cmd_mount(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => usage(format!("unknown command '{other}'")),
    };
    match r {
        Ok(code) => code,
        Err(Usage(m)) => {
            eprintln!("scoutvm: {m}");
            eprintln!("try 'scoutvm help'");
            ExitCode::from(2)
        }
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

fn take_value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, Usage> {
    *i += 1;
    match args.get(*i) {
        Some(v) => Ok(v),
        None => usage(format!("option {flag} needs a value")),
    }
}

fn cmd_mkfs(args: &[String]) -> Result<ExitCode, Usage> {
    let mut force = false;
    let mut allow_small = false;
    let mut fmt_vers = FORMAT_VERSION_MAX;
    let mut max_meta = 0u64;
    let mut max_data = 0u64;
    let mut zone_blocks = 0u64;
    let mut qconf = QuorumConfig::default();
    let mut paths = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        // accept "-Q0,1.2.3.4,5" as well as "-Q 0,1.2.3.4,5"
        let (flag, inline) = if a.len() > 2 && a.starts_with('-') && !a.starts_with("--") {
            (&a[..2], Some(&a[2..]))
        } else {
            (a, None)
        };
        let val = |i: &mut usize| -> Result<String, Usage> {
            match inline {
                Some(v) => Ok(v.to_string()),
                None => take_value(args, i, flag).map(str::to_string),
            }
        };
        match flag {
            "-f" | "--force" if inline.is_none() => force = true,
            "-A" | "--allow-small-size" if inline.is_none() => allow_small = true,
            "-V" | "--format-version" => {
                let v = val(&mut i)?;
                fmt_vers = match v.parse::<u64>() {
                    Ok(n) if (1..=FORMAT_VERSION_MAX).contains(&n) => n,
                    _ => {
                        return usage(format!(
                            "format version '{v}' must be 1 or {FORMAT_VERSION_MAX}"
                        ))
                    }
                };
            }
            "-m" | "--max-meta-size" => {
                let v = val(&mut i)?;
                let n = mkfs::parse_size(&v).map_err(Usage)?;
                max_meta = n - n % LG_BLOCK_SIZE as u64;
                if max_meta != n {
                    eprintln!("Meta dev size {n} rounded down to {max_meta} bytes");
                }
                if max_meta == 0 {
                    return usage(format!("meta size '{v}' is smaller than one 64KB block"));
                }
            }
            "-d" | "--max-data-size" => {
                let v = val(&mut i)?;
                let n = mkfs::parse_size(&v).map_err(Usage)?;
                max_data = n - n % SM_BLOCK_SIZE as u64;
                if max_data != n {
                    eprintln!("Data dev size {n} rounded down to {max_data} bytes");
                }
                if max_data == 0 {
                    return usage(format!("data size '{v}' is smaller than one 4KB block"));
                }
            }
            "-z" | "--data-alloc-zone-blocks" => {
                let v = val(&mut i)?;
                zone_blocks = v
                    .parse()
                    .map_err(|_| Usage(format!("invalid zone blocks '{v}'")))?;
            }
            "-Q" | "--quorum-slot" => {
                let v = val(&mut i)?;
                mkfs::parse_quorum_slot(&mut qconf, &v).map_err(Usage)?;
            }
            _ if a.starts_with('-') && a.len() > 1 => {
                return usage(format!("unknown option '{a}'"))
            }
            _ => paths.push(a.to_string()),
        }
        i += 1;
    }
    if paths.len() != 2 {
        return usage("mkfs needs a META and a DATA device");
    }
    if qconf.configured().next().is_none() {
        return usage("must configure quorum slots with -Q options");
    }
    let (meta_path, data_path) = (&paths[0], &paths[1]);
    Ok(run_mkfs(
        meta_path,
        data_path,
        force,
        allow_small,
        fmt_vers,
        max_meta,
        max_data,
        zone_blocks,
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

fn cmd_print(args: &[String]) -> Result<ExitCode, Usage> {
    let [path] = args else {
        return usage("print needs exactly one META device");
    };
    let dev = match open_dev(path, false, "meta") {
        Ok(d) => d,
        Err(c) => return Ok(c),
    };
    let mut out = StdoutFmt {
        out: std::io::BufWriter::new(std::io::stdout()),
        failed: false,
    };
    let r = scoutvm_fs::tools::print::print_volume(&dev, &mut out);
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

fn cmd_fsck(args: &[String]) -> Result<ExitCode, Usage> {
    let (meta_path, data_path) = match args {
        [m] => (m, None),
        [m, d] => (m, Some(d)),
        _ => return usage("fsck needs a META device and optionally a DATA device"),
    };
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

fn cmd_mount(args: &[String]) -> Result<ExitCode, Usage> {
    let mut mopts = MountOptions::default();
    let mut fopts = FuseOptions::default();
    let mut mem_bytes = None;
    let mut recover = false;
    let mut paths = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "-o" => {
                let v = take_value(args, &mut i, a)?;
                parse_mount_options(v, &mut mopts, &mut fopts)?;
            }
            "--recover" => recover = true,
            "--mem" => {
                let v = take_value(args, &mut i, a)?;
                let n = mkfs::parse_size(v).map_err(Usage)?;
                if n < 16 << 20 {
                    return usage(format!("--mem size '{v}' is below 16M"));
                }
                mem_bytes = Some(n);
            }
            _ if a.starts_with("-o") && a.len() > 2 => {
                parse_mount_options(&a[2..], &mut mopts, &mut fopts)?
            }
            _ if a.starts_with('-') && a.len() > 1 => {
                return usage(format!("unknown option '{a}'"))
            }
            _ => paths.push(a.to_string()),
        }
        i += 1;
    }
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

fn check_mount_dir(dir: &str) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("mount point '{dir}' is not a directory")),
        Err(e) => Err(format!("mount point '{dir}': {e}")),
    }
}
