//! p9bench: a metadata and streaming benchmark for a mounted filesystem,
//! run inside the Linux guest against a 9P mount (qemu/p9bench.sh drives it).
//!
//! Phases: create, stat, readdir, unlink of N empty files in one directory
//! (mdtest-like), then a streaming write (ended by fsync) and a read of a
//! large file in 1 MiB requests. Prints one machine-readable line:
//! `P9BENCH files=N create_ops=.. stat_ops=.. readdir_ops=.. unlink_ops=..
//!  mib=M write_mbs=.. read_mbs=..` (ops per second; MB = 10^6 bytes).

#[path = "p9tools/common.rs"]
mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use common::{drop_caches, pattern_fill, Args};

const USAGE: &str = "usage: p9bench DIR [--files N] [--mib M] [--block-kib K]";

fn main() -> ExitCode {
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("p9bench: {e}");
            println!("P9BENCH-FAIL {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<String, String> {
    let args = Args::parse(std::env::args().skip(1), &[])?;
    if let Some(e) = args.unknown(&["files", "mib", "block-kib"]) {
        return Err(format!("{e}\n{USAGE}"));
    }
    let [dir] = &args.positional[..] else {
        return Err(USAGE.to_string());
    };
    let files: u64 = args.num("files", 1000)?;
    let mib: u64 = args.num("mib", 256)?;
    let block = args.num::<usize>("block-kib", 1024)? * 1024;
    if files == 0 || mib == 0 || block == 0 {
        return Err("--files, --mib and --block-kib must be positive".into());
    }
    let work = Path::new(dir).join(format!("p9bench.{}", std::process::id()));
    fs::create_dir(&work).map_err(|e| format!("mkdir {}: {e}", work.display()))?;

    let names: Vec<PathBuf> = (0..files).map(|i| work.join(format!("f{i:08}"))).collect();
    let create = timed(|| {
        for p in &names {
            File::create(p).map_err(|e| format!("create {}: {e}", p.display()))?;
        }
        Ok(())
    })?;
    let stat = timed(|| {
        for p in &names {
            let m = fs::metadata(p).map_err(|e| format!("stat {}: {e}", p.display()))?;
            if !m.is_file() || m.len() != 0 {
                return Err(format!("stat {}: not an empty file", p.display()));
            }
        }
        Ok(())
    })?;
    let readdir = timed(|| {
        let mut seen = 0u64;
        for e in fs::read_dir(&work).map_err(|e| format!("readdir: {e}"))? {
            e.map_err(|e| format!("readdir: {e}"))?;
            seen += 1;
        }
        if seen != files {
            return Err(format!("readdir saw {seen} entries, want {files}"));
        }
        Ok(())
    })?;
    let unlink = timed(|| {
        for p in &names {
            fs::remove_file(p).map_err(|e| format!("unlink {}: {e}", p.display()))?;
        }
        Ok(())
    })?;

    let big = work.join("stream");
    let bytes = mib * 1024 * 1024;
    let mut buf = vec![0u8; block];
    let write = timed(|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&big)
            .map_err(|e| format!("create stream file: {e}"))?;
        let mut off = 0u64;
        while off < bytes {
            let n = (bytes - off).min(block as u64) as usize;
            pattern_fill(7, off, &mut buf[..n]);
            f.write_all(&buf[..n])
                .map_err(|e| format!("write at {off}: {e}"))?;
            off += n as u64;
        }
        f.sync_all().map_err(|e| format!("fsync: {e}"))
    })?;
    drop_caches();
    let mut want = vec![0u8; block];
    let read = timed(|| {
        let mut f = File::open(&big).map_err(|e| format!("open stream file: {e}"))?;
        let mut off = 0u64;
        while off < bytes {
            let n = (bytes - off).min(block as u64) as usize;
            f.read_exact(&mut buf[..n])
                .map_err(|e| format!("read at {off}: {e}"))?;
            // Check a sample of each block: the bench must not time a
            // server that returns garbage, nor pay for a full compare.
            let sample = n.min(4096);
            pattern_fill(7, off, &mut want[..sample]);
            if buf[..sample] != want[..sample] {
                return Err(format!("stream file differs at offset {off}"));
            }
            off += n as u64;
        }
        Ok(())
    })?;
    fs::remove_file(&big).map_err(|e| format!("unlink stream file: {e}"))?;
    fs::remove_dir(&work).map_err(|e| format!("rmdir {}: {e}", work.display()))?;

    let ops = |secs: f64| files as f64 / secs;
    let mbs = |secs: f64| bytes as f64 / 1e6 / secs;
    Ok(format!(
        "P9BENCH files={files} create_ops={:.0} stat_ops={:.0} readdir_ops={:.0} unlink_ops={:.0} mib={mib} write_mbs={:.1} read_mbs={:.1}",
        ops(create),
        ops(stat),
        ops(readdir),
        ops(unlink),
        mbs(write),
        mbs(read),
    ))
}

/// Seconds `f` took (never zero, so rates stay finite).
fn timed(f: impl FnOnce() -> Result<(), String>) -> Result<f64, String> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64().max(1e-9))
}
