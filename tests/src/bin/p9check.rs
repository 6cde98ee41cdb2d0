//! p9check: the POSIX checks the end-to-end tests run inside the Linux
//! guest against a 9P mount. Each subcommand works under DIR/p9check/<name>,
//! asserts what it did and leaves its files in place, so that `manifest`
//! can record the tree and `verify` can compare it after the server reboots.
//!
//! Prints `P9CHECK check=NAME ok ms=T` per check, `P9CHECK check=NAME FAIL:
//! reason` on the first failure, and exits non-zero if anything failed.

#[path = "p9tools/common.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use common::{
    drop_caches, errno_of, getxattr, listxattr, pattern_fill, removexattr, setxattr, Args,
    Checksum, Rng,
};

const USAGE: &str = "usage: p9check COMMAND DIR [options]
commands:
  all DIR [--files N] [--mib M] [--uid U --gid G] [--skip CHECK,...]
                      every check below, then manifest
  basic DIR           create/write/read with checksums, append, truncate, rename,
                      hard and symbolic links, mkdir/rmdir, fifo, errors
  xattr DIR           set/get/list/remove user xattrs, create/replace flags
  perms DIR [--uid U --gid G]   chmod/chown and permission checks as a non-root user
  locks DIR           fcntl record locks (set, test, release) and flock
  unlink-open DIR     files and directories stay usable after unlink/rmdir/rename
  fattr-unlinked DIR  fstat/ftruncate/fchmod through the fd of an unlinked file
  bigfile DIR [--mib M]          stream a large file, verify checksum and samples
  smallfiles DIR [--files N]     N small files in one directory, full readdir
  readdir-churn DIR [--files N]  readdir while entries are removed and added
  manifest DIR        record DIR/p9check (types, modes, owners, sizes, checksums,
                      link targets, xattrs) in DIR/p9check.manifest
  verify DIR          compare DIR/p9check with the manifest (after a reboot)";

type Res<T = ()> = Result<T, String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*));
        }
    };
}

/// Attach the path and operation to an io error.
trait Ctx<T> {
    fn ctx(self, what: &str, path: &Path) -> Res<T>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, what: &str, path: &Path) -> Res<T> {
        self.map_err(|e| format!("{what} {}: {e}", path.display()))
    }
}

/// Expect an operation to fail with `errno`.
fn expect_errno<T>(r: io::Result<T>, errno: i32, what: &str) -> Res {
    match r {
        Ok(_) => Err(format!("{what}: succeeded, want errno {errno}")),
        Err(e) if errno_of(&e) == errno => Ok(()),
        Err(e) => Err(format!("{what}: got {e}, want errno {errno}")),
    }
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let Some(cmd) = argv.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let args = match Args::parse(argv, &[]) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("p9check: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = dispatch(&cmd, &args);
    if cmd == "perms-as-user" {
        // The child half of `perms`: its parent reports.
        return if result.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match result {
        Ok(()) => {
            println!("P9CHECK-RESULT ok command={cmd}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("P9CHECK-RESULT FAIL command={cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

type CheckFn = dyn Fn(&Opts, &Path) -> Res;

struct Opts {
    dir: PathBuf,
    files: u64,
    mib: u64,
    uid: u32,
    gid: u32,
    /// Checks `all` leaves out (a server's known limitation).
    skip: Vec<String>,
}

fn dispatch(cmd: &str, args: &Args) -> Res {
    if let Some(e) = args.unknown(&["files", "mib", "uid", "gid", "skip"]) {
        return Err(e);
    }
    let [dir] = &args.positional[..] else {
        return Err(format!("{cmd}: one DIR expected\n{USAGE}"));
    };
    let o = Opts {
        dir: PathBuf::from(dir),
        files: args.num("files", 10_000)?,
        mib: args.num("mib", 256)?,
        uid: args.num("uid", 1000)?,
        gid: args.num("gid", 1000)?,
        skip: args
            .get("skip")
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
    };
    let root = o.dir.join("p9check");
    match cmd {
        "all" => {
            let checks: [(&str, &CheckFn); 9] = [
                ("basic", &|_, d| basic(d)),
                ("xattr", &|_, d| xattr(d)),
                ("perms", &|o, d| perms(d, o.uid, o.gid)),
                ("locks", &|_, d| locks(d)),
                ("unlink-open", &|_, d| unlink_open(d)),
                ("fattr-unlinked", &|_, d| fattr_unlinked(d)),
                ("bigfile", &|o, d| bigfile(d, o.mib)),
                ("smallfiles", &|o, d| smallfiles(d, o.files)),
                // Capped: 3000 long names already span several replies.
                ("readdir-churn", &|o, d| readdir_churn(d, o.files.min(3000))),
            ];
            for (name, f) in checks {
                if o.skip.iter().any(|s| s == name) {
                    println!("P9CHECK check={name} skipped");
                    continue;
                }
                run_check(name, &root, |d| f(&o, d))?;
            }
            run_check("manifest", &root, |_| write_manifest(&o.dir))
        }
        "basic" => run_check(cmd, &root, basic),
        "xattr" => run_check(cmd, &root, xattr),
        "perms" => run_check(cmd, &root, |d| perms(d, o.uid, o.gid)),
        "perms-as-user" => perms_as_user(&o.dir),
        "locks" => run_check(cmd, &root, locks),
        "unlink-open" => run_check(cmd, &root, unlink_open),
        "fattr-unlinked" => run_check(cmd, &root, fattr_unlinked),
        "bigfile" => run_check(cmd, &root, |d| bigfile(d, o.mib)),
        "smallfiles" => run_check(cmd, &root, |d| smallfiles(d, o.files)),
        "readdir-churn" => run_check(cmd, &root, |d| readdir_churn(d, o.files)),
        "manifest" => run_check(cmd, &root, |_| write_manifest(&o.dir)),
        "verify" => run_check(cmd, &root, |_| verify_manifest(&o.dir)),
        _ => Err(format!("unknown command {cmd}\n{USAGE}")),
    }
}

/// Run one check in `root/name` (created fresh), report it.
fn run_check(name: &str, root: &Path, f: impl FnOnce(&Path) -> Res) -> Res {
    let dir = root.join(name);
    let start = Instant::now();
    let result = (|| {
        if !matches!(name, "manifest" | "verify") {
            fs::create_dir_all(root).ctx("mkdir", root)?;
            if dir.exists() {
                fs::remove_dir_all(&dir).ctx("clean old", &dir)?;
            }
            fs::create_dir(&dir).ctx("mkdir", &dir)?;
        }
        f(&dir)
    })();
    let ms = start.elapsed().as_millis();
    match &result {
        Ok(()) => println!("P9CHECK check={name} ok ms={ms}"),
        Err(e) => println!("P9CHECK check={name} FAIL: {e}"),
    }
    result.map_err(|e| format!("{name}: {e}"))
}

// ---------------------------------------------------------------------------
// Content helpers.

fn write_pattern(path: &Path, key: u64, len: u64) -> Res<u64> {
    let mut f = File::create(path).ctx("create", path)?;
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        pattern_fill(key, off, &mut buf[..n]);
        f.write_all(&buf[..n]).ctx("write", path)?;
        sum.update(&buf[..n]);
        off += n as u64;
    }
    f.sync_all().ctx("fsync", path)?;
    Ok(sum.finish())
}

fn checksum_file(path: &Path) -> Res<(u64, u64)> {
    let mut f = File::open(path).ctx("open", path)?;
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0;
    loop {
        let n = f.read(&mut buf).ctx("read", path)?;
        if n == 0 {
            return Ok((sum.finish(), len));
        }
        sum.update(&buf[..n]);
        len += n as u64;
    }
}

fn check_pattern_at(f: &File, path: &Path, key: u64, off: u64, len: usize) -> Res {
    let mut got = vec![0u8; len];
    f.read_exact_at(&mut got, off).ctx("pread", path)?;
    let mut want = vec![0u8; len];
    pattern_fill(key, off, &mut want);
    ensure!(
        got == want,
        "{}: {len} bytes at {off} differ from what was written",
        path.display()
    );
    Ok(())
}

fn names_in(dir: &Path) -> Res<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for e in fs::read_dir(dir).ctx("readdir", dir)? {
        let e = e.ctx("readdir", dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        ensure!(
            names.insert(name.clone()),
            "readdir {}: {name} listed twice",
            dir.display()
        );
    }
    Ok(names)
}

fn set_of(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------
// basic

fn basic(d: &Path) -> Res {
    // Create, write, read back with checksums, sizes around block edges.
    let sizes = [0u64, 1, 7, 4095, 4096, 4097, 65539, (1 << 20) + 13, 3 << 20];
    for (i, &len) in sizes.iter().enumerate() {
        let p = d.join(format!("size-{len}"));
        let want = write_pattern(&p, 100 + i as u64, len)?;
        let m = fs::metadata(&p).ctx("stat", &p)?;
        ensure!(
            m.len() == len && m.is_file(),
            "{}: size {} want {len}",
            p.display(),
            m.len()
        );
        let (got, got_len) = checksum_file(&p)?;
        ensure!(
            got == want && got_len == len,
            "{}: checksum differs",
            p.display()
        );
        if len > 16 {
            let f = File::open(&p).ctx("open", &p)?;
            let mut rng = Rng::new(len);
            for _ in 0..8 {
                let off = rng.below(len - 8);
                let n = rng.below((len - off).min(70_000)) as usize + 1;
                check_pattern_at(&f, &p, 100 + i as u64, off, n)?;
            }
        }
    }

    // Overwrite in the middle.
    let p = d.join("overwrite");
    write_pattern(&p, 1, 200_000)?;
    {
        let f = OpenOptions::new().write(true).open(&p).ctx("open", &p)?;
        f.write_all_at(&[0xAB; 5000], 100_000).ctx("pwrite", &p)?;
    }
    let data = fs::read(&p).ctx("read", &p)?;
    let mut want = vec![0u8; 200_000];
    pattern_fill(1, 0, &mut want);
    want[100_000..105_000].fill(0xAB);
    ensure!(data == want, "overwrite: content differs");

    // Append.
    let p = d.join("append");
    let mut want = Vec::new();
    for round in 0..3u8 {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&p)
            .ctx("open append", &p)?;
        let chunk = vec![b'a' + round; 1000 + round as usize * 777];
        f.write_all(&chunk).ctx("append", &p)?;
        want.extend_from_slice(&chunk);
    }
    {
        // O_APPEND writes go to the end whatever the file offset says.
        let mut f = OpenOptions::new()
            .append(true)
            .open(&p)
            .ctx("open append", &p)?;
        f.seek(SeekFrom::Start(0)).ctx("seek", &p)?;
        f.write_all(b"tail").ctx("append", &p)?;
        want.extend_from_slice(b"tail");
    }
    ensure!(
        fs::read(&p).ctx("read", &p)? == want,
        "append: content differs"
    );

    // Truncate down, up (zero fill), to zero.
    let p = d.join("truncate");
    write_pattern(&p, 2, 50_000)?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .ctx("open", &p)?;
    f.set_len(1000).ctx("truncate", &p)?;
    ensure!(
        f.metadata().ctx("fstat", &p)?.len() == 1000,
        "truncate down: wrong size"
    );
    check_pattern_at(&f, &p, 2, 0, 1000)?;
    f.set_len(10_000).ctx("truncate up", &p)?;
    let mut tail = vec![1u8; 9000];
    f.read_exact_at(&mut tail, 1000).ctx("pread", &p)?;
    ensure!(
        tail.iter().all(|&b| b == 0),
        "truncate up: extension is not zeros"
    );
    check_pattern_at(&f, &p, 2, 0, 1000)?;
    drop(f);
    let p0 = d.join("truncate-zero");
    write_pattern(&p0, 3, 9000)?;
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p0)
        .ctx("open O_TRUNC", &p0)?;
    ensure!(
        fs::metadata(&p0).ctx("stat", &p0)?.len() == 0,
        "O_TRUNC: not empty"
    );

    // Rename: plain, over an existing file, a directory with contents,
    // across directories.
    let a = d.join("ren-a");
    let b = d.join("ren-b");
    let sum = write_pattern(&a, 4, 12_345)?;
    fs::rename(&a, &b).ctx("rename", &a)?;
    expect_errno(fs::metadata(&a), libc::ENOENT, "stat renamed-away name")?;
    ensure!(checksum_file(&b)?.0 == sum, "rename: content changed");
    let c = d.join("ren-c");
    write_pattern(&c, 5, 99)?;
    fs::rename(&b, &c).ctx("rename over", &b)?;
    ensure!(
        checksum_file(&c)?.0 == sum,
        "rename over: wrong content survived"
    );
    expect_errno(fs::metadata(&b), libc::ENOENT, "stat source of rename-over")?;
    let sub = d.join("ren-dir");
    fs::create_dir_all(sub.join("inner")).ctx("mkdir", &sub)?;
    write_pattern(&sub.join("inner/file"), 6, 3333)?;
    let sub2 = d.join("ren-dir2");
    fs::rename(&sub, &sub2).ctx("rename dir", &sub)?;
    ensure!(
        checksum_file(&sub2.join("inner/file"))?.1 == 3333,
        "renamed dir lost its file"
    );
    fs::rename(sub2.join("inner/file"), d.join("ren-moved")).ctx("rename across dirs", &sub2)?;
    ensure!(
        names_in(&sub2.join("inner"))?.is_empty(),
        "rename across dirs left the source"
    );
    // Renaming a directory over a non-empty one fails.
    fs::create_dir(d.join("ren-full")).ctx("mkdir", d)?;
    File::create(d.join("ren-full/x")).ctx("create", d)?;
    let r = fs::rename(&sub2, d.join("ren-full"));
    ensure!(
        matches!(
            r.as_ref().map_err(errno_of),
            Err(libc::ENOTEMPTY) | Err(libc::EEXIST)
        ),
        "rename dir over non-empty dir: {r:?}"
    );

    // Hard links.
    let f1 = d.join("link-1");
    let f2 = d.join("link-2");
    write_pattern(&f1, 7, 5000)?;
    fs::hard_link(&f1, &f2).ctx("link", &f1)?;
    let (m1, m2) = (
        fs::metadata(&f1).ctx("stat", &f1)?,
        fs::metadata(&f2).ctx("stat", &f2)?,
    );
    ensure!(
        m1.nlink() == 2 && m2.nlink() == 2,
        "link: nlink {} {}",
        m1.nlink(),
        m2.nlink()
    );
    ensure!(m1.ino() == m2.ino(), "link: inode numbers differ");
    {
        let f = OpenOptions::new().write(true).open(&f2).ctx("open", &f2)?;
        f.write_all_at(b"via link", 10).ctx("pwrite", &f2)?;
    }
    let mut buf = [0u8; 8];
    File::open(&f1)
        .ctx("open", &f1)?
        .read_exact_at(&mut buf, 10)
        .ctx("pread", &f1)?;
    ensure!(
        &buf == b"via link",
        "link: write through one name not seen through the other"
    );
    let f3 = d.join("link-3");
    fs::hard_link(&f1, &f3).ctx("link", &f1)?;
    fs::remove_file(&f1).ctx("unlink", &f1)?;
    ensure!(
        fs::metadata(&f2).ctx("stat", &f2)?.nlink() == 2,
        "unlink of one link: nlink not 2"
    );
    expect_errno(
        fs::hard_link(&f2, &f3),
        libc::EEXIST,
        "link onto existing name",
    )?;

    // Symbolic links.
    let target = d.join("sym-target");
    write_pattern(&target, 8, 777)?;
    let s = d.join("sym");
    std::os::unix::fs::symlink("sym-target", &s).ctx("symlink", &s)?;
    ensure!(
        fs::read_link(&s).ctx("readlink", &s)? == Path::new("sym-target"),
        "readlink differs"
    );
    ensure!(
        fs::symlink_metadata(&s)
            .ctx("lstat", &s)?
            .file_type()
            .is_symlink(),
        "lstat: not a symlink"
    );
    ensure!(checksum_file(&s)?.1 == 777, "reading through a symlink");
    let dangling = d.join("sym-dangling");
    let long_target = "x/".repeat(100) + "nowhere";
    std::os::unix::fs::symlink(&long_target, &dangling).ctx("symlink", &dangling)?;
    ensure!(
        fs::read_link(&dangling).ctx("readlink", &dangling)? == Path::new(&long_target),
        "long readlink"
    );
    expect_errno(
        fs::metadata(&dangling),
        libc::ENOENT,
        "stat dangling symlink",
    )?;
    std::os::unix::fs::symlink("ren-dir2", d.join("sym-dir")).ctx("symlink", d)?;
    ensure!(
        names_in(&d.join("sym-dir"))? == set_of(&["inner"]),
        "listing through a dir symlink"
    );

    // Directories and the errors POSIX promises.
    let nest = d.join("nest/a/b/c");
    fs::create_dir_all(&nest).ctx("mkdir -p", &nest)?;
    expect_errno(fs::create_dir(&nest), libc::EEXIST, "mkdir existing")?;
    expect_errno(
        fs::remove_dir(d.join("nest/a")),
        libc::ENOTEMPTY,
        "rmdir non-empty",
    )?;
    expect_errno(
        fs::remove_dir(d.join("link-2")),
        libc::ENOTDIR,
        "rmdir a file",
    )?;
    expect_errno(
        fs::remove_file(d.join("nest")),
        libc::EISDIR,
        "unlink a dir",
    )?;
    expect_errno(File::open(d.join("missing")), libc::ENOENT, "open missing")?;
    expect_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(d.join("link-2")),
        libc::EEXIST,
        "O_EXCL on existing",
    )?;
    expect_errno(
        File::open(d.join("link-2/x")),
        libc::ENOTDIR,
        "path through a file",
    )?;
    fs::remove_dir(&nest).ctx("rmdir", &nest)?;
    let m = fs::metadata(d.join("nest/a/b")).ctx("stat", d)?;
    ensure!(m.is_dir(), "nest/a/b: not a dir");

    // A fifo (Tmknod).
    let fifo = d.join("fifo");
    let cfifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(cfifo.as_ptr(), 0o644) };
    ensure!(rc == 0, "mkfifo: {}", io::Error::last_os_error());
    ensure!(
        fs::symlink_metadata(&fifo)
            .ctx("stat", &fifo)?
            .file_type()
            .is_fifo(),
        "fifo: wrong type"
    );

    // statfs (Tstatfs) answers with something sane.
    let st = statvfs(d).ctx("statvfs", d)?;
    ensure!(
        st.f_bsize > 0 && st.f_blocks > 0,
        "statvfs: bsize {} blocks {}",
        st.f_bsize,
        st.f_blocks
    );
    ensure!(st.f_namemax >= 255, "statvfs: namemax {}", st.f_namemax);

    // The directory lists exactly what is there; fsync of file and dir.
    let want = set_of(&[
        "append",
        "fifo",
        "link-2",
        "link-3",
        "nest",
        "overwrite",
        "ren-c",
        "ren-dir2",
        "ren-full",
        "ren-moved",
        "size-0",
        "size-1",
        "size-1048589",
        "size-3145728",
        "size-4095",
        "size-4096",
        "size-4097",
        "size-65539",
        "size-7",
        "sym",
        "sym-dangling",
        "sym-dir",
        "sym-target",
        "truncate",
        "truncate-zero",
    ]);
    let got = names_in(d)?;
    ensure!(got == want, "readdir: got {got:?}");
    File::open(d)
        .ctx("open dir", d)?
        .sync_all()
        .ctx("fsync dir", d)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// locks

/// POSIX record locks and flock (Tlock, Tgetlock): taking, testing and
/// releasing locks works, and our own lock never conflicts with us.
fn locks(d: &Path) -> Res {
    let lp = d.join("locks");
    write_pattern(&lp, 18, 4096)?;
    let lf = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lp)
        .ctx("open", &lp)?;
    record_lock(&lf, libc::F_WRLCK as i16, 0, 100).ctx("fcntl F_SETLKW write", &lp)?;
    record_lock(&lf, libc::F_UNLCK as i16, 0, 100).ctx("fcntl unlock", &lp)?;
    record_lock(&lf, libc::F_RDLCK as i16, 200, 0).ctx("fcntl F_SETLKW read to EOF", &lp)?;
    record_lock(&lf, libc::F_UNLCK as i16, 200, 0).ctx("fcntl unlock", &lp)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lf);
    // SAFETY: flock on a live fd.
    let rc = unsafe { libc::flock(fd, libc::LOCK_EX) };
    ensure!(rc == 0, "flock LOCK_EX: {}", io::Error::last_os_error());
    // SAFETY: as above.
    let rc = unsafe { libc::flock(fd, libc::LOCK_UN) };
    ensure!(rc == 0, "flock LOCK_UN: {}", io::Error::last_os_error());
    record_lock(&lf, libc::F_WRLCK as i16, 0, 100).ctx("fcntl F_SETLKW write", &lp)?;
    let seen = test_lock(&lf, libc::F_WRLCK as i16, 0, 100).ctx("fcntl F_GETLK", &lp)?;
    ensure!(
        seen == libc::F_UNLCK as i16,
        "F_GETLK on our own lock: type {seen}"
    );
    record_lock(&lf, libc::F_UNLCK as i16, 0, 100).ctx("fcntl unlock", &lp)?;
    Ok(())
}

/// `fcntl(F_SETLKW)` on `[start, start+len)` (len 0: to the end).
fn record_lock(f: &File, ty: i16, start: i64, len: i64) -> io::Result<()> {
    let mut fl = flock_of(ty, start, len);
    // SAFETY: a live fd and a valid, initialised struct flock.
    let rc = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(f), libc::F_SETLKW, &mut fl) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fcntl(F_GETLK)`: the type of a lock that would block ours, or F_UNLCK.
fn test_lock(f: &File, ty: i16, start: i64, len: i64) -> io::Result<i16> {
    let mut fl = flock_of(ty, start, len);
    // SAFETY: a live fd and a valid, initialised struct flock.
    let rc = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(f), libc::F_GETLK, &mut fl) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type)
}

fn flock_of(ty: i16, start: i64, len: i64) -> libc::flock {
    // SAFETY: struct flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

fn statvfs(p: &Path) -> io::Result<libc::statvfs> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: all-zero is a valid statvfs to be filled in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a live out-struct.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

// ---------------------------------------------------------------------------
// xattr

fn xattr(d: &Path) -> Res {
    let p = d.join("file");
    write_pattern(&p, 9, 100)?;
    let big: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
    setxattr(&p, "user.small", b"1", 0).ctx("setxattr", &p)?;
    setxattr(&p, "user.big", &big, 0).ctx("setxattr big", &p)?;
    ensure!(
        getxattr(&p, "user.small").ctx("getxattr", &p)? == b"1",
        "user.small differs"
    );
    ensure!(
        getxattr(&p, "user.big").ctx("getxattr", &p)? == big,
        "user.big differs"
    );
    let names = listxattr(&p).ctx("listxattr", &p)?;
    ensure!(
        names.contains(&"user.small".to_string()) && names.contains(&"user.big".to_string()),
        "listxattr: {names:?}"
    );
    expect_errno(
        setxattr(&p, "user.small", b"2", libc::XATTR_CREATE),
        libc::EEXIST,
        "XATTR_CREATE existing",
    )?;
    expect_errno(
        setxattr(&p, "user.none", b"2", libc::XATTR_REPLACE),
        libc::ENODATA,
        "XATTR_REPLACE missing",
    )?;
    setxattr(&p, "user.small", b"replaced", libc::XATTR_REPLACE).ctx("setxattr replace", &p)?;
    ensure!(
        getxattr(&p, "user.small").ctx("getxattr", &p)? == b"replaced",
        "replace not seen"
    );
    setxattr(&p, "user.gone", b"x", 0).ctx("setxattr", &p)?;
    removexattr(&p, "user.gone").ctx("removexattr", &p)?;
    expect_errno(getxattr(&p, "user.gone"), libc::ENODATA, "getxattr removed")?;
    expect_errno(
        removexattr(&p, "user.gone"),
        libc::ENODATA,
        "removexattr removed",
    )?;
    let sub = d.join("dir");
    fs::create_dir(&sub).ctx("mkdir", &sub)?;
    setxattr(&sub, "user.on-dir", b"dir value", 0).ctx("setxattr dir", &sub)?;
    ensure!(
        getxattr(&sub, "user.on-dir").ctx("getxattr", &sub)? == b"dir value",
        "dir xattr differs"
    );
    // The file's content is untouched by all that.
    let f = File::open(&p).ctx("open", &p)?;
    check_pattern_at(&f, &p, 9, 0, 100)
}

// ---------------------------------------------------------------------------
// perms: root prepares, a child process running as uid:gid probes.

fn perms(d: &Path, uid: u32, gid: u32) -> Res {
    ensure!(uid != 0, "--uid must not be root");
    // SAFETY: getuid has no preconditions.
    ensure!(unsafe { libc::getuid() } == 0, "perms must start as root");
    fs::set_permissions(d, fs::Permissions::from_mode(0o777)).ctx("chmod", d)?;
    let owned = d.join("owned");
    write_pattern(&owned, 10, 100)?;
    std::os::unix::fs::chown(&owned, Some(uid), Some(gid)).ctx("chown", &owned)?;
    fs::set_permissions(&owned, fs::Permissions::from_mode(0o640)).ctx("chmod", &owned)?;
    let m = fs::metadata(&owned).ctx("stat", &owned)?;
    ensure!(
        m.uid() == uid && m.gid() == gid,
        "chown by root: owner {}:{}",
        m.uid(),
        m.gid()
    );
    ensure!(
        m.mode() & 0o7777 == 0o640,
        "chmod by root: mode {:o}",
        m.mode()
    );
    let secret = d.join("rootonly");
    write_pattern(&secret, 11, 100)?;
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).ctx("chmod", &secret)?;
    let closed = d.join("closed");
    fs::create_dir(&closed).ctx("mkdir", &closed)?;
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o755)).ctx("chmod", &closed)?;

    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let out = Command::new(exe)
        .arg("perms-as-user")
        .arg(d)
        .uid(uid)
        .gid(gid)
        .output()
        .map_err(|e| format!("spawn as {uid}: {e}"))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    ensure!(
        out.status.success(),
        "as uid {uid}: {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("no output")
    );

    // What the user did is visible to root with the right owners.
    let m = fs::metadata(&owned).ctx("stat", &owned)?;
    ensure!(
        m.mode() & 0o7777 == 0o600,
        "chmod by owner: mode {:o}",
        m.mode()
    );
    let made = d.join("userfile");
    let m = fs::metadata(&made).ctx("stat", &made)?;
    ensure!(
        m.uid() == uid && m.gid() == gid,
        "file made by user has owner {}:{}",
        m.uid(),
        m.gid()
    );
    let m = fs::metadata(d.join("userdir")).ctx("stat", d)?;
    ensure!(
        m.uid() == uid && m.is_dir(),
        "dir made by user has owner {}",
        m.uid()
    );
    Ok(())
}

/// The user's half of `perms` (runs as the non-root uid).
fn perms_as_user(d: &Path) -> Res {
    let r = perms_as_user_steps(d);
    if let Err(e) = &r {
        println!("P9CHECK perms-as-user FAIL: {e}");
    }
    r
}

fn perms_as_user_steps(d: &Path) -> Res {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    ensure!(uid != 0, "perms-as-user runs as root");
    let owned = d.join("owned");
    {
        let f = OpenOptions::new()
            .write(true)
            .open(&owned)
            .ctx("open own file for write", &owned)?;
        f.write_all_at(b"user wrote", 0)
            .ctx("write own file", &owned)?;
    }
    ensure!(
        fs::read(&owned)
            .ctx("read own file", &owned)?
            .starts_with(b"user wrote"),
        "own write lost"
    );
    expect_errno(
        File::open(d.join("rootonly")),
        libc::EACCES,
        "read root's 0600 file",
    )?;
    expect_errno(
        OpenOptions::new().write(true).open(d.join("rootonly")),
        libc::EACCES,
        "write root's 0600 file",
    )?;
    fs::set_permissions(&owned, fs::Permissions::from_mode(0o600)).ctx("chmod own file", &owned)?;
    expect_errno(
        fs::set_permissions(d.join("rootonly"), fs::Permissions::from_mode(0o666)),
        libc::EPERM,
        "chmod root's file",
    )?;
    expect_errno(
        std::os::unix::fs::chown(&owned, Some(0), None),
        libc::EPERM,
        "chown own file to root",
    )?;
    expect_errno(
        std::os::unix::fs::chown(&owned, None, Some(gid + 4242)),
        libc::EPERM,
        "chgrp to a group not ours",
    )?;
    expect_errno(
        fs::create_dir(d.join("closed/sub")),
        libc::EACCES,
        "mkdir in root's 0755 dir",
    )?;
    expect_errno(
        File::create(d.join("closed/f")),
        libc::EACCES,
        "create in root's 0755 dir",
    )?;
    let made = d.join("userfile");
    write_pattern(&made, 12, 4096)?;
    let m = fs::metadata(&made).ctx("stat", &made)?;
    ensure!(
        m.uid() == uid && m.gid() == gid,
        "new file owner {}:{} want {uid}:{gid}",
        m.uid(),
        m.gid()
    );
    fs::create_dir(d.join("userdir")).ctx("mkdir", d)?;
    println!("P9CHECK perms-as-user uid={uid} ok");
    Ok(())
}

// ---------------------------------------------------------------------------
// unlink-open

fn unlink_open(d: &Path) -> Res {
    // A file unlinked while open stays readable and writable through the fd.
    let p = d.join("victim");
    write_pattern(&p, 13, 70_000)?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .ctx("open", &p)?;
    fs::remove_file(&p).ctx("unlink", &p)?;
    expect_errno(fs::metadata(&p), libc::ENOENT, "stat unlinked name")?;
    ensure!(
        !names_in(d)?.contains("victim"),
        "unlinked name still listed"
    );
    check_pattern_at(&f, &p, 13, 0, 70_000)?;
    f.write_all_at(b"after unlink", 69_990)
        .ctx("write after unlink", &p)?;
    let mut buf = vec![0u8; 12];
    f.read_exact_at(&mut buf, 69_990)
        .ctx("read after unlink", &p)?;
    ensure!(buf == b"after unlink", "write after unlink not read back");
    f.seek(SeekFrom::Start(0)).ctx("seek", &p)?;
    let mut all = Vec::new();
    f.read_to_end(&mut all).ctx("read", &p)?;
    ensure!(
        all.len() == 70_002,
        "read after unlink: {} bytes",
        all.len()
    );
    drop(f);

    // Renaming over an open file leaves the old content to the fd.
    let old = d.join("old");
    let new = d.join("new");
    write_pattern(&old, 14, 5000)?;
    write_pattern(&new, 15, 6000)?;
    let f = File::open(&old).ctx("open", &old)?;
    fs::rename(&new, &old).ctx("rename over open file", &new)?;
    check_pattern_at(&f, &old, 14, 0, 5000)?;
    ensure!(
        checksum_file(&old)?.1 == 6000,
        "new name has the wrong file"
    );
    drop(f);

    // A directory removed while open.
    let sub = d.join("gone-dir");
    fs::create_dir(&sub).ctx("mkdir", &sub)?;
    let dfd = File::open(&sub).ctx("open dir", &sub)?;
    fs::remove_dir(&sub).ctx("rmdir open dir", &sub)?;
    expect_errno(fs::metadata(&sub), libc::ENOENT, "stat removed dir")?;
    drop(dfd);

    // Many files open and unlinked at once, then closed.
    let mut open = Vec::new();
    for i in 0..16 {
        let p = d.join(format!("many-{i}"));
        write_pattern(&p, 100 + i, 1000 + i * 10)?;
        open.push((File::open(&p).ctx("open", &p)?, p.clone(), i));
        fs::remove_file(&p).ctx("unlink", &p)?;
    }
    for (f, p, i) in &open {
        check_pattern_at(f, p, 100 + i, 0, (1000 + i * 10) as usize)?;
    }
    drop(open);
    let left = names_in(d)?;
    ensure!(left == set_of(&["old"]), "after unlinks: {left:?}");
    Ok(())
}

/// Attributes through the fd of an unlinked file or removed directory
/// (fstat, ftruncate, fchmod): the server must apply them to the open
/// file, not to its path.
fn fattr_unlinked(d: &Path) -> Res {
    let p = d.join("victim");
    write_pattern(&p, 17, 50_000)?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .ctx("open", &p)?;
    fs::remove_file(&p).ctx("unlink", &p)?;
    ensure!(
        f.metadata().ctx("fstat after unlink", &p)?.len() == 50_000,
        "fstat size after unlink"
    );
    f.set_len(80_000).ctx("ftruncate up after unlink", &p)?;
    ensure!(
        f.metadata().ctx("fstat", &p)?.len() == 80_000,
        "fstat after ftruncate up"
    );
    let mut tail = vec![1u8; 30_000];
    f.read_exact_at(&mut tail, 50_000).ctx("pread", &p)?;
    ensure!(
        tail.iter().all(|&b| b == 0),
        "ftruncate up after unlink: not zeros"
    );
    f.set_len(1000).ctx("ftruncate down after unlink", &p)?;
    check_pattern_at(&f, &p, 17, 0, 1000)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .ctx("fchmod after unlink", &p)?;
    let m = f.metadata().ctx("fstat", &p)?;
    ensure!(
        m.len() == 1000 && m.mode() & 0o7777 == 0o600,
        "fstat after fchmod: {:o} {}",
        m.mode(),
        m.len()
    );
    ensure!(names_in(d)?.is_empty(), "unlinked file listed");

    let sub = d.join("gone-dir");
    fs::create_dir(&sub).ctx("mkdir", &sub)?;
    let dfd = File::open(&sub).ctx("open dir", &sub)?;
    fs::remove_dir(&sub).ctx("rmdir open dir", &sub)?;
    ensure!(
        dfd.metadata().ctx("fstat removed dir", &sub)?.is_dir(),
        "fstat removed dir: not a dir"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// bigfile

fn bigfile(d: &Path, mib: u64) -> Res {
    let p = d.join("big");
    let len = mib << 20;
    let start = Instant::now();
    let want = write_pattern(&p, 16, len)?;
    let wsecs = start.elapsed().as_secs_f64();
    drop_caches();
    let start = Instant::now();
    let (got, got_len) = checksum_file(&p)?;
    let rsecs = start.elapsed().as_secs_f64();
    ensure!(got_len == len, "big file: read {got_len} bytes, want {len}");
    ensure!(got == want, "big file: checksum differs");
    let f = File::open(&p).ctx("open", &p)?;
    let mut rng = Rng::new(mib);
    for _ in 0..64 {
        let off = rng.below(len.max(2) - 1);
        let n = rng.below((len - off).min(300_000)) as usize + 1;
        check_pattern_at(&f, &p, 16, off, n)?;
    }
    ensure!(
        f.metadata().ctx("fstat", &p)?.len() == len,
        "big file: wrong size"
    );
    println!(
        "P9CHECK bigfile mib={mib} write_mbs={:.1} read_mbs={:.1}",
        len as f64 / 1e6 / wsecs.max(1e-9),
        len as f64 / 1e6 / rsecs.max(1e-9)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// smallfiles

fn small_len(i: u64) -> u64 {
    i % 200 + 1
}

fn smallfiles(d: &Path, n: u64) -> Res {
    for i in 0..n {
        let p = d.join(format!("s{i:06}"));
        let mut data = vec![0u8; small_len(i) as usize];
        pattern_fill(1000 + i, 0, &mut data);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .ctx("create", &p)?;
        f.write_all(&data).ctx("write", &p)?;
    }
    let names = names_in(d)?;
    ensure!(
        names.len() as u64 == n,
        "readdir: {} entries, want {n}",
        names.len()
    );
    for (i, name) in names.iter().enumerate() {
        ensure!(
            *name == format!("s{i:06}"),
            "readdir: unexpected entry {name}"
        );
    }
    for i in 0..n {
        let p = d.join(format!("s{i:06}"));
        let m = fs::metadata(&p).ctx("stat", &p)?;
        ensure!(m.len() == small_len(i), "{}: size {}", p.display(), m.len());
        if i % 97 == 0 {
            let f = File::open(&p).ctx("open", &p)?;
            check_pattern_at(&f, &p, 1000 + i, 0, small_len(i) as usize)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// readdir-churn

fn readdir_churn(d: &Path, n: u64) -> Res {
    let n = n.max(100);
    // Long names: the listing must span several Treaddir replies even at a
    // 512 KiB msize, so the changes land between two of them.
    let pad = "x".repeat(200);
    let old_name = |i: u64| format!("c{i:06}-{pad}");
    for i in 0..n {
        File::create(d.join(old_name(i))).ctx("create", d)?;
    }
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut removed = BTreeSet::new();
    let mut added = BTreeSet::new();
    let mut iter = fs::read_dir(d).ctx("readdir", d)?;
    let mut count = 0u64;
    loop {
        let Some(e) = iter.next() else { break };
        let e = e.ctx("readdir", d)?;
        *seen
            .entry(e.file_name().to_string_lossy().into_owned())
            .or_default() += 1;
        count += 1;
        if count == n / 3 {
            // Mid-listing: remove the odd files, add some new ones.
            for i in (1..n).step_by(2) {
                let name = old_name(i);
                fs::remove_file(d.join(&name)).ctx("unlink", d)?;
                removed.insert(name);
            }
            for i in 0..n / 10 {
                let name = format!("new{i:06}");
                File::create(d.join(&name)).ctx("create", d)?;
                added.insert(name);
            }
        }
    }
    for (name, times) in &seen {
        ensure!(
            *times == 1,
            "readdir during changes: {name} returned {times} times"
        );
        ensure!(
            name.starts_with('c') || added.contains(name),
            "readdir during changes: unknown entry {name}"
        );
    }
    for i in (0..n).step_by(2) {
        let name = old_name(i);
        ensure!(
            seen.contains_key(&name),
            "readdir during changes: untouched entry {name} missed"
        );
    }
    let after = names_in(d)?;
    ensure!(
        after.len() as u64 == n - removed.len() as u64 + added.len() as u64,
        "after churn: {} entries",
        after.len()
    );
    // Not kept for the manifest: it would only repeat smallfiles.
    fs::remove_dir_all(d).ctx("rm -r", d)?;
    fs::create_dir(d).ctx("mkdir", d)
}

// ---------------------------------------------------------------------------
// manifest and verify

/// A path, its manifest line without the link group, and its inode number
/// if it is a file with several links.
type Described = (String, String, Option<u64>);

/// One line per path under the tree, sorted: everything that must survive a
/// server restart. Entries are described by a few threads at once: each is
/// a handful of round trips, and latency, not CPU, is the limit.
fn scan(root: &Path) -> Res<BTreeMap<String, String>> {
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).ctx("readdir", &dir)? {
            let e = e.ctx("readdir", &dir)?;
            let p = e.path();
            if e.file_type().ctx("file type", &p)?.is_dir() {
                stack.push(p.clone());
            }
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            paths.push((rel, p));
        }
    }
    paths.sort();
    let threads = 4;
    let chunk = paths.len().div_ceil(threads).max(1);
    let described: Vec<Res<Vec<Described>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(rel, p)| describe(p).map(|(line, ino)| (rel.clone(), line, ino)))
                        .collect::<Res<Vec<_>>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("scan thread panicked".into()))
            })
            .collect()
    });
    // Hard links: each line names the first path (in sorted order) with
    // the same inode, so the grouping is stable across scans.
    let mut out = BTreeMap::new();
    let mut first_of: HashMap<u64, String> = HashMap::new();
    for part in described {
        for (rel, line, ino) in part? {
            let group = match ino {
                Some(ino) => first_of.entry(ino).or_insert_with(|| rel.clone()).clone(),
                None => String::new(),
            };
            out.insert(rel, format!("{line}\t{group}"));
        }
    }
    Ok(out)
}

/// The manifest line of one path (without its link group), and its inode
/// number if it is a file with more than one link.
fn describe(p: &Path) -> Res<(String, Option<u64>)> {
    let m = fs::symlink_metadata(p).ctx("lstat", p)?;
    let ft = m.file_type();
    let (kind, detail) = if ft.is_dir() {
        ("dir", String::new())
    } else if ft.is_symlink() {
        let target = fs::read_link(p).ctx("readlink", p)?;
        ("symlink", target.to_string_lossy().into_owned())
    } else if ft.is_file() {
        let (sum, len) = checksum_file(p)?;
        ensure!(
            len == m.len(),
            "{}: read {len} bytes, stat says {}",
            p.display(),
            m.len()
        );
        ("file", format!("{sum:016x}"))
    } else if ft.is_fifo() {
        ("fifo", String::new())
    } else {
        ("other", String::new())
    };
    let size = if ft.is_dir() { 0 } else { m.len() };
    let mut xattrs = Vec::new();
    if !ft.is_symlink() && !ft.is_fifo() {
        for x in listxattr(p).ctx("listxattr", p)? {
            if x.starts_with("user.") {
                let v = getxattr(p, &x).ctx("getxattr", p)?;
                xattrs.push(format!("{x}={:016x}", Checksum::of(&v)));
            }
        }
    }
    let line = format!(
        "{kind}\tmode={:o}\tuid={}\tgid={}\tsize={size}\tnlink={}\tmtime={}.{:09}\t{detail}\t{}",
        m.mode() & 0o7777,
        m.uid(),
        m.gid(),
        if ft.is_dir() { 0 } else { m.nlink() },
        m.mtime(),
        m.mtime_nsec(),
        xattrs.join(","),
    );
    let ino = (ft.is_file() && m.nlink() > 1).then(|| m.ino());
    Ok((line, ino))
}

fn write_manifest(dir: &Path) -> Res {
    let tree = scan(&dir.join("p9check"))?;
    ensure!(
        !tree.is_empty(),
        "nothing to record under {}",
        dir.display()
    );
    let mut text = String::new();
    for (path, line) in &tree {
        text.push_str(&format!("{path}\t{line}\n"));
    }
    let sum = Checksum::of(text.as_bytes());
    text.push_str(&format!("#end entries={} sum={sum:016x}\n", tree.len()));
    let p = dir.join("p9check.manifest");
    let mut f = File::create(&p).ctx("create", &p)?;
    f.write_all(text.as_bytes()).ctx("write", &p)?;
    f.sync_all().ctx("fsync", &p)?;
    println!("P9CHECK manifest entries={} sum={sum:016x}", tree.len());
    Ok(())
}

fn verify_manifest(dir: &Path) -> Res {
    let p = dir.join("p9check.manifest");
    let text = fs::read_to_string(&p).ctx("read", &p)?;
    let (body, trailer) = text
        .trim_end_matches('\n')
        .rsplit_once('\n')
        .ok_or("manifest: no trailer line")?;
    let body = format!("{body}\n");
    let sum = Checksum::of(body.as_bytes());
    ensure!(
        trailer.ends_with(&format!("sum={sum:016x}")),
        "manifest: damaged ({trailer})"
    );
    let mut want = BTreeMap::new();
    for line in body.lines() {
        let (path, rest) = line.split_once('\t').ok_or("manifest: bad line")?;
        want.insert(path.to_string(), rest.to_string());
    }
    let got = scan(&dir.join("p9check"))?;
    let mut diffs = Vec::new();
    for (path, w) in &want {
        match got.get(path) {
            None => diffs.push(format!("missing {path}")),
            Some(g) if g != w => diffs.push(format!("changed {path}: want [{w}] got [{g}]")),
            Some(_) => {}
        }
    }
    for path in got.keys().filter(|k| !want.contains_key(*k)) {
        diffs.push(format!("unexpected {path}"));
    }
    if !diffs.is_empty() {
        for d in diffs.iter().take(20) {
            println!("P9CHECK verify: {d}");
        }
        return Err(format!("{} differences from the manifest", diffs.len()));
    }
    println!("P9CHECK verify entries={} ok", want.len());
    Ok(())
}
