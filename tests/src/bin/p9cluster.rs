//! p9cluster: the syscalls tests/guest/cluster-posix.sh needs and busybox
//! lacks, for checks across two 9P mounts of one cluster (issue 11): xattr
//! get/set/list/remove, the two-process name race (renameat2
//! RENAME_NOREPLACE, or link(2) / O_EXCL create, which a 9P client can
//! always pass to the server), and the setxattr ping-pong of
//! lock-ex-race-processes. Built static, run in the Linux guest.
//!
//! Exit status: 0 when what was asked held, 1 when a check failed (with a
//! `p9cluster: ...` line saying what), 2 on bad usage.

#[path = "p9tools/common.rs"]
mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use common::{errno_of, getxattr, listxattr, removexattr, setxattr, Args};

const USAGE: &str = "usage: p9cluster COMMAND ...
  xattr set PATH NAME VALUE [create|replace]
  xattr get PATH NAME        print the value, or `ENODATA`
  xattr list PATH            the names, sorted, one a line
  xattr rm PATH NAME
  race DIR_A DIR_B --op renameat2|link|excl [--rounds N]
      DIR_A and DIR_B are one directory seen through two mounts. Each round
      two processes, one per mount, race to make the same name (rename
      with RENAME_NOREPLACE / link / O_CREAT|O_EXCL of a per-process
      source): exactly one must win, the other get EEXIST, and both mounts
      must then see the winner's file. `--op renameat2` exits 3 when the
      9P client refuses the flag (EINVAL) before any round ran.
  pingpong --secs S --tag T FILE...
      setxattr user.pp on FILE... in turn for S seconds, each followed by a
      read of a well-formed value, and user.own.T (this process's own
      attribute) read back as last set; prints `PINGPONG tag=T ops=N`.
  handoff FILE_A FILE_B [--rounds N]
      one file seen through two mounts: write 4 KiB at offset 0 through
      FILE_A, then FILE_B, alternately (open, pwrite, close), N times each;
      then N writes through FILE_A only. Prints `HANDOFF alternate ...`
      and `HANDOFF same-mount ...` with median and p99 per write in us.
  creates DIR... [--files N]
      one thread per DIR creating N empty files in it (open O_CREAT|O_EXCL,
      close) at once; prints `CREATES dirs=D files=TOTAL secs=S per_sec=R`.";

type Res<T = ()> = Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("xattr") => xattr_cmd(&args[1..]),
        Some("race") => race_cmd(&args[1..]),
        Some("race-child") => race_child(),
        Some("pingpong") => pingpong_cmd(&args[1..]),
        Some("handoff") => handoff_cmd(&args[1..]),
        Some("creates") => creates_cmd(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match res {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            println!("p9cluster: {e}");
            ExitCode::from(1)
        }
    }
}

fn errno_name(e: i32) -> String {
    match e {
        libc::ENOENT => "ENOENT".into(),
        libc::EEXIST => "EEXIST".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ENODATA => "ENODATA".into(),
        libc::ENOTEMPTY => "ENOTEMPTY".into(),
        libc::EIO => "EIO".into(),
        libc::ESTALE => "ESTALE".into(),
        e => format!("errno {e}"),
    }
}

fn xattr_cmd(a: &[String]) -> Res<u8> {
    let s = |i: usize| a.get(i).map(String::as_str);
    match (s(0), s(1), s(2), s(3), s(4)) {
        (Some("set"), Some(p), Some(n), Some(v), flag) => {
            let flags = match flag {
                None => 0,
                Some("create") => libc::XATTR_CREATE,
                Some("replace") => libc::XATTR_REPLACE,
                Some(f) => return Err(format!("xattr set: unknown flag {f}")),
            };
            setxattr(Path::new(p), n, v.as_bytes(), flags)
                .map_err(|e| format!("setxattr {p} {n}: {}", errno_name(errno_of(&e))))?;
        }
        (Some("get"), Some(p), Some(n), None, None) => match getxattr(Path::new(p), n) {
            Ok(v) => println!("{}", String::from_utf8_lossy(&v)),
            Err(e) if errno_of(&e) == libc::ENODATA => println!("ENODATA"),
            Err(e) => return Err(format!("getxattr {p} {n}: {}", errno_name(errno_of(&e)))),
        },
        (Some("list"), Some(p), None, None, None) => {
            let names = listxattr(Path::new(p))
                .map_err(|e| format!("listxattr {p}: {}", errno_name(errno_of(&e))))?;
            for n in names {
                println!("{n}");
            }
        }
        (Some("rm"), Some(p), Some(n), None, None) => {
            removexattr(Path::new(p), n)
                .map_err(|e| format!("removexattr {p} {n}: {}", errno_name(errno_of(&e))))?;
        }
        _ => {
            eprintln!("{USAGE}");
            return Ok(2);
        }
    }
    Ok(0)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// `renameat2(src, dst, RENAME_NOREPLACE)`.
fn rename_noreplace(src: &Path, dst: &Path) -> io::Result<()> {
    let (s, d) = (cpath(src)?, cpath(dst)?);
    // SAFETY: two valid NUL-terminated paths, relative to the cwd.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            s.as_ptr(),
            libc::AT_FDCWD,
            d.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One racer: reads `OP SRC DST` lines, does it, answers `ok` or the errno.
fn race_child() -> Res<u8> {
    let stdin = io::stdin();
    let mut out = io::stdout();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| format!("race-child: stdin: {e}"))?;
        let w: Vec<&str> = line.split(' ').collect();
        let [op, src, dst] = w[..] else {
            return Err(format!("race-child: bad line {line:?}"));
        };
        let (src, dst) = (Path::new(src), Path::new(dst));
        let r = match op {
            "renameat2" => rename_noreplace(src, dst),
            "link" => fs::hard_link(src, dst),
            "excl" => OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dst)
                .and_then(|mut f| f.write_all(&fs::read(src)?)),
            _ => return Err(format!("race-child: unknown op {op}")),
        };
        let answer = match r {
            Ok(()) => "ok".to_string(),
            Err(e) => errno_name(errno_of(&e)),
        };
        writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
    }
    Ok(0)
}

struct Racer {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Racer {
    fn spawn() -> Res<Racer> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .arg("race-child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn race-child: {e}"))?;
        let input = child.stdin.take().ok_or("race-child stdin")?;
        let output = BufReader::new(child.stdout.take().ok_or("race-child stdout")?);
        Ok(Racer {
            child,
            input,
            output,
        })
    }

    fn send(&mut self, line: &str) -> Res {
        writeln!(self.input, "{line}")
            .and_then(|()| self.input.flush())
            .map_err(|e| format!("to race-child: {e}"))
    }

    fn answer(&mut self) -> Res<String> {
        let mut s = String::new();
        self.output
            .read_line(&mut s)
            .map_err(|e| format!("from race-child: {e}"))?;
        if s.is_empty() {
            return Err("race-child died".into());
        }
        Ok(s.trim().to_string())
    }
}

impl Drop for Racer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exists(p: &Path) -> Res<bool> {
    match fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("stat {}: {e}", p.display())),
    }
}

fn race_cmd(a: &[String]) -> Res<u8> {
    let args = Args::parse(a.iter().cloned(), &[])?;
    if let Some(e) = args.unknown(&["op", "rounds"]) {
        return Err(e);
    }
    let [da, db] = &args.positional[..] else {
        eprintln!("{USAGE}");
        return Ok(2);
    };
    let (da, db) = (PathBuf::from(da), PathBuf::from(db));
    let op = args.get("op").unwrap_or("renameat2").to_string();
    if !["renameat2", "link", "excl"].contains(&op.as_str()) {
        return Err(format!("race: unknown --op {op}"));
    }
    let rounds: u32 = args.num("rounds", 20)?;
    let mut racers = [Racer::spawn()?, Racer::spawn()?];
    let dirs = [&da, &db];
    let (mut wins_a, mut wins_b) = (0u32, 0u32);
    for round in 0..rounds {
        // Each racer's own source, made through its own mount.
        let srcs: Vec<PathBuf> = (0..2)
            .map(|i| dirs[i].join(format!("src-{op}-{round}-{i}")))
            .collect();
        // The order alternates, so both get to win: the racer told first
        // is the one whose mount did not write the directory last (the
        // other holds its lock), so both ask the lock server at once.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            fs::write(&srcs[i], format!("racer {i} round {round}\n"))
                .map_err(|e| format!("write {}: {e}", srcs[i].display()))?;
        }
        let name = format!("target-{op}-{round}");
        for i in order {
            racers[i].send(&format!(
                "{op} {} {}",
                srcs[i].display(),
                dirs[i].join(&name).display()
            ))?;
        }
        let answers = [racers[0].answer()?, racers[1].answer()?];
        if op == "renameat2" && round == 0 && answers.iter().all(|a| a == "EINVAL") {
            for src in &srcs {
                fs::remove_file(src).map_err(|e| format!("rm {}: {e}", src.display()))?;
            }
            println!(
                "p9cluster: renameat2 RENAME_NOREPLACE: EINVAL from the client on both mounts"
            );
            return Ok(3);
        }
        let winner = match (answers[0].as_str(), answers[1].as_str()) {
            ("ok", "EEXIST") => 0,
            ("EEXIST", "ok") => 1,
            (x, y) => {
                return Err(format!(
                    "{op} round {round}: racer on {} got {x}, racer on {} got {y} \
                     (exactly one must win, the other get EEXIST)",
                    da.display(),
                    db.display()
                ))
            }
        };
        if winner == 0 {
            wins_a += 1;
        } else {
            wins_b += 1;
        }
        let want = format!("racer {winner} round {round}\n");
        for d in dirs {
            let got = fs::read_to_string(d.join(&name))
                .map_err(|e| format!("{op} round {round}: read {name} in {}: {e}", d.display()))?;
            if got != want {
                return Err(format!(
                    "{op} round {round}: {name} in {} holds {got:?}, the winner wrote {want:?}",
                    d.display()
                ));
            }
        }
        // A rename moved the winner's source; the loser's stays.
        let moved = op == "renameat2";
        for (i, src) in srcs.iter().enumerate() {
            let leaf = src.file_name().ok_or("no file name")?;
            for d in dirs {
                let there = exists(&d.join(leaf))?;
                let want_there = !(moved && i == winner);
                if there != want_there {
                    return Err(format!(
                        "{op} round {round}: source {} of racer {i} {} in {}",
                        leaf.to_string_lossy(),
                        if there { "still there" } else { "missing" },
                        d.display()
                    ));
                }
            }
        }
        for src in &srcs {
            if exists(src)? {
                fs::remove_file(src).map_err(|e| format!("rm {}: {e}", src.display()))?;
            }
        }
        fs::remove_file(da.join(&name)).map_err(|e| format!("rm {name}: {e}"))?;
    }
    println!("RACE op={op} rounds={rounds} wins_a={wins_a} wins_b={wins_b}");
    Ok(0)
}

fn pingpong_cmd(a: &[String]) -> Res<u8> {
    let args = Args::parse(a.iter().cloned(), &[])?;
    if let Some(e) = args.unknown(&["secs", "tag"]) {
        return Err(e);
    }
    let secs: u64 = args.num("secs", 8)?;
    let tag = args.get("tag").ok_or("pingpong: --tag T")?.to_string();
    if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!("pingpong: tag {tag:?} must be alphanumeric"));
    }
    let files: Vec<PathBuf> = args.positional.iter().map(PathBuf::from).collect();
    if files.is_empty() {
        return Err("pingpong: no files".into());
    }
    for f in &files {
        if !exists(f)? {
            File::create(f).map_err(|e| format!("create {}: {e}", f.display()))?;
        }
    }
    let own = format!("user.own.{tag}");
    let end = Instant::now() + Duration::from_secs(secs);
    let mut ops = 0u64;
    while Instant::now() < end {
        for f in &files {
            let value = format!("{tag}:{ops}");
            let fail = |what: &str, e: io::Error| {
                format!(
                    "pingpong {tag} op {ops}: {what} {}: {}",
                    f.display(),
                    errno_name(errno_of(&e))
                )
            };
            setxattr(f, "user.pp", value.as_bytes(), 0).map_err(|e| fail("setxattr", e))?;
            setxattr(f, &own, value.as_bytes(), 0).map_err(|e| fail("setxattr own", e))?;
            let shared = getxattr(f, "user.pp").map_err(|e| fail("getxattr", e))?;
            let shared = String::from_utf8_lossy(&shared).into_owned();
            let well_formed = shared
                .split_once(':')
                .is_some_and(|(t, n)| !t.is_empty() && n.parse::<u64>().is_ok());
            if !well_formed {
                return Err(format!(
                    "pingpong {tag}: user.pp of {} is {shared:?}",
                    f.display()
                ));
            }
            let mine = getxattr(f, &own).map_err(|e| fail("getxattr own", e))?;
            if mine != value.as_bytes() {
                return Err(format!(
                    "pingpong {tag}: {own} of {} reads {:?} right after setting {value:?}",
                    f.display(),
                    String::from_utf8_lossy(&mine)
                ));
            }
            ops += 1;
        }
    }
    println!("PINGPONG tag={tag} ops={ops}");
    Ok(0)
}

/// Median and 99th percentile of `us`, sorted in place.
fn median_p99(us: &mut [u64]) -> (u64, u64) {
    us.sort_unstable();
    let at = |q: usize| us[((us.len() - 1) * q) / 100];
    (at(50), at(99))
}

/// One open, 4 KiB pwrite at 0, close; its duration in microseconds.
fn timed_write(path: &Path, buf: &[u8]) -> Res<u64> {
    use std::os::unix::fs::FileExt;
    let t = Instant::now();
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    f.write_all_at(buf, 0)
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    drop(f);
    Ok(t.elapsed().as_micros() as u64)
}

fn handoff_cmd(a: &[String]) -> Res<u8> {
    let args = Args::parse(a.iter().cloned(), &[])?;
    if let Some(e) = args.unknown(&["rounds"]) {
        return Err(e);
    }
    let [fa, fb] = &args.positional[..] else {
        eprintln!("{USAGE}");
        return Ok(2);
    };
    let (fa, fb) = (PathBuf::from(fa), PathBuf::from(fb));
    let rounds: usize = args.num("rounds", 50)?;
    if rounds == 0 {
        return Err("handoff: --rounds must be > 0".into());
    }
    fs::write(&fa, [0u8; 4096]).map_err(|e| format!("create {}: {e}", fa.display()))?;
    let mut alternate = Vec::with_capacity(2 * rounds);
    for r in 0..rounds {
        let buf = [(r % 251) as u8; 4096];
        alternate.push(timed_write(&fa, &buf)?);
        alternate.push(timed_write(&fb, &buf)?);
    }
    // What the other mount reads is the last write.
    let last = fs::read(&fa).map_err(|e| format!("read {}: {e}", fa.display()))?;
    if last != [((rounds - 1) % 251) as u8; 4096] {
        return Err("handoff: the file does not hold the last write".into());
    }
    let mut same = Vec::with_capacity(rounds);
    for r in 0..rounds {
        same.push(timed_write(&fa, &[(r % 251) as u8; 4096])?);
    }
    let (m, p) = median_p99(&mut alternate);
    println!(
        "HANDOFF alternate writes={} median_us={m} p99_us={p}",
        alternate.len()
    );
    let (m, p) = median_p99(&mut same);
    println!(
        "HANDOFF same-mount writes={} median_us={m} p99_us={p}",
        same.len()
    );
    Ok(0)
}

fn creates_cmd(a: &[String]) -> Res<u8> {
    let args = Args::parse(a.iter().cloned(), &[])?;
    if let Some(e) = args.unknown(&["files"]) {
        return Err(e);
    }
    let files: u64 = args.num("files", 1000)?;
    let dirs: Vec<PathBuf> = args.positional.iter().map(PathBuf::from).collect();
    if dirs.is_empty() {
        return Err("creates: no directories".into());
    }
    for d in &dirs {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    let t = Instant::now();
    let workers: Vec<_> = dirs
        .iter()
        .cloned()
        .map(|d| {
            std::thread::spawn(move || -> Res {
                for i in 0..files {
                    let p = d.join(format!("f{i}"));
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&p)
                        .map_err(|e| format!("create {}: {e}", p.display()))?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "creates: a worker panicked")??;
    }
    let secs = t.elapsed().as_secs_f64();
    let total = files * dirs.len() as u64;
    println!(
        "CREATES dirs={} files={total} secs={secs:.2} per_sec={:.0}",
        dirs.len(),
        total as f64 / secs
    );
    Ok(0)
}
