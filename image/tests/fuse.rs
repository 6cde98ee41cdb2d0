//! `scoutvm mount` through the kernel's FUSE: ordinary tools create,
//! write, rename, link and remove files (`tests/fuse/tools.sh`) on an
//! in-memory volume and on a real one (fsck clean after unmount, all of it
//! there after a remount), the process unmounts cleanly on `umount` and on
//! SIGTERM, a volume mounted twice, locked by another process or left
//! listed by a crashed mount is refused (`--recover` reclaims the
//! latter), and bad arguments and non-volumes are refused.
//!
//! Needs root and /dev/fuse: without them these tests fail, saying so.
//! Every mount is made by a guard that unmounts it (lazily if busy) and
//! kills the mount process by its pid if it does not exit.

use scoutvm_image::filedev::FileDev;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Seconds a tools.sh phase may take (it takes about one).
const SCRIPT_TIMEOUT_S: &str = "300";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scoutvm"))
}

fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the FUSE tests need the fuse module (modprobe fuse) \
         or the device passed into the container"
    );
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the FUSE tests mount without fusermount and need root"
    );
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scoutvm-fuse-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn is_mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .any(|m| Path::new(m) == dir)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A running `scoutvm mount`, unmounted and reaped on drop.
struct MountProc {
    child: Option<Child>,
    dir: PathBuf,
    stdout: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl MountProc {
    /// Start `scoutvm mount ARGS` and wait for its "mounted" line.
    fn start(args: &[&str], dir: &Path) -> MountProc {
        let mut child = bin()
            .arg("mount")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn scoutvm mount");
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut m = MountProc {
            child: Some(child),
            dir: dir.to_path_buf(),
            stdout: rx,
            stderr: Some(stderr),
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match m.stdout.recv_timeout(left) {
                Ok(l) if l.starts_with("scoutvm: mounted ") => break,
                Ok(_) => continue,
                Err(_) => {
                    let (status, out, err) = m.finish();
                    panic!("scoutvm mount did not mount ({status:?}):\n{out}{err}");
                }
            }
        }
        assert!(
            is_mounted(dir),
            "{} is not in the mount table",
            dir.display()
        );
        m
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Wait for the process to exit (killing it by pid past the timeout);
    /// its status, the rest of stdout, and stderr.
    fn finish(&mut self) -> (Option<ExitStatus>, String, String) {
        let Some(mut child) = self.child.take() else {
            return (None, String::new(), String::new());
        };
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!("scoutvm mount pid {} did not exit: killing it", child.id());
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let out: Vec<String> = self.stdout.try_iter().collect();
        let err = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status, out.join("\n"), err)
    }

    /// `umount DIR`, then the process must exit 0 having closed the
    /// volume cleanly.
    fn unmount(mut self) {
        let o = Command::new("umount").arg(&self.dir).output().unwrap();
        assert!(o.status.success(), "umount: {}", text(&o));
        let (status, out, err) = self.finish();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "scoutvm mount exit:\n{out}\n{err}"
        );
        assert!(out.contains("cleanly"), "{out}\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!is_mounted(&self.dir));
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if is_mounted(&self.dir) {
            let ok = Command::new("umount")
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
        let _ = self.finish();
    }
}

#[track_caller]
fn tools(phase: &str, mnt: &Path, state: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuse/tools.sh");
    let o = Command::new("timeout")
        .arg(SCRIPT_TIMEOUT_S)
        .arg("bash")
        .arg(&script)
        .arg(phase)
        .arg(mnt)
        .arg(state)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tools.sh {phase} failed ({}):\n{}",
        o.status,
        text(&o)
    );
    assert!(text(&o).contains(&format!("{phase}: ok")), "{}", text(&o));
}

#[test]
fn ordinary_tools_through_an_in_memory_mount() {
    require_fuse();
    let d = tmpdir("mem-tools");
    let (mnt, state) = (d.join("mnt"), d.join("state"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let m = MountProc::start(&["--mem", "8G", mnt.to_str().unwrap()], &mnt);
    tools("populate", &mnt, &state);
    tools("verify", &mnt, &state);
    m.unmount();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sigterm_and_sigint_unmount_and_exit_cleanly() {
    require_fuse();
    let d = tmpdir("signals");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    for sig in ["-TERM", "-INT"] {
        let mut m = MountProc::start(
            &["--mem", "64M", "-o", "commit_s=1", mnt.to_str().unwrap()],
            &mnt,
        );
        std::fs::write(mnt.join("f"), b"data").unwrap();
        let k = Command::new("kill")
            .arg(sig)
            .arg(m.pid().to_string())
            .status()
            .unwrap();
        assert!(k.success());
        let (status, out, err) = m.finish();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{sig}:\n{out}\n{err}"
        );
        assert!(out.contains("cleanly"), "{out}\n{err}");
        assert!(err.contains("unmounting"), "{err}");
        assert!(!is_mounted(&mnt));
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[track_caller]
fn fsck_clean(meta: &Path, data: &Path) {
    let o = bin().arg("fsck").arg(meta).arg(data).output().unwrap();
    assert!(o.status.success(), "fsck:\n{}", text(&o));
    assert!(text(&o).contains("clean"), "{}", text(&o));
}

#[test]
fn ordinary_tools_through_a_volume_persist_across_remounts() {
    require_fuse();
    let d = tmpdir("volume-tools");
    let (mnt, state) = (d.join("mnt"), d.join("state"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let (meta, data) = (d.join("meta.img"), d.join("data.img"));
    mkfs(&meta, &data);
    let (m, dd, dir) = (
        meta.to_str().unwrap(),
        data.to_str().unwrap(),
        mnt.to_str().unwrap(),
    );
    let first = MountProc::start(&[m, dd, dir], &mnt);
    tools("populate", &mnt, &state);
    tools("verify", &mnt, &state);
    first.unmount();
    fsck_clean(&meta, &data);

    let second = MountProc::start(&[m, dd, dir], &mnt);
    tools("verify", &mnt, &state);
    // the same volume cannot be mounted twice at once
    let other = d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    refused(&[m, dd, other.to_str().unwrap()], 1, "is in use");
    assert!(!is_mounted(&other));
    second.unmount();
    fsck_clean(&meta, &data);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_crashed_mount_is_refused_until_recovered() {
    require_fuse();
    let d = tmpdir("crash");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (meta, data) = (d.join("meta.img"), d.join("data.img"));
    mkfs(&meta, &data);
    let (m, dd, dir) = (
        meta.to_str().unwrap(),
        data.to_str().unwrap(),
        mnt.to_str().unwrap(),
    );
    let mut crashed = MountProc::start(&[m, dd, dir], &mnt);
    std::fs::write(mnt.join("durable"), b"fsynced before the crash").unwrap();
    std::fs::File::open(mnt.join("durable"))
        .unwrap()
        .sync_all()
        .unwrap();
    let k = Command::new("kill")
        .arg("-KILL")
        .arg(crashed.pid().to_string())
        .status()
        .unwrap();
    assert!(k.success());
    let (status, _, _) = crashed.finish();
    assert!(status.is_some_and(|s| !s.success()));
    // the kernel mount is left without its server
    let o = Command::new("umount").arg("-l").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    drop(crashed);

    refused(&[m, dd, dir], 1, "mounted elsewhere");
    refused(&[m, dd, dir], 1, "--recover");
    let recovered = MountProc::start(&["--recover", m, dd, dir], &mnt);
    assert_eq!(
        std::fs::read(mnt.join("durable")).unwrap(),
        b"fsynced before the crash"
    );
    recovered.unmount();
    fsck_clean(&meta, &data);
    // reclaimed: an ordinary mount works again
    MountProc::start(&[m, dd, dir], &mnt).unmount();
    fsck_clean(&meta, &data);
    let _ = std::fs::remove_dir_all(&d);
}

#[track_caller]
fn refused(args: &[&str], code: i32, says: &str) {
    let o = bin().arg("mount").args(args).output().unwrap();
    assert_eq!(o.status.code(), Some(code), "{args:?}:\n{}", text(&o));
    assert!(
        text(&o).contains(says),
        "{args:?}: wanted '{says}':\n{}",
        text(&o)
    );
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
}

fn mkfs(meta: &Path, data: &Path) {
    for p in [meta, data] {
        std::fs::File::create(p).unwrap().set_len(4 << 30).unwrap();
    }
    let o = bin()
        .args(["mkfs", "-A", "-Q", "0,127.0.0.1,7100"])
        .arg(meta)
        .arg(data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn bad_arguments_and_non_volumes_are_refused() {
    let d = tmpdir("refuse");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (meta, data) = (d.join("meta.img"), d.join("data.img"));
    for p in [&meta, &data] {
        std::fs::File::create(p).unwrap().set_len(1 << 30).unwrap();
    }
    let (m, dd, dir) = (
        meta.to_str().unwrap(),
        data.to_str().unwrap(),
        mnt.to_str().unwrap(),
    );
    refused(&[], 64, "mount needs META, DATA and DIR");
    refused(&[m, dir], 64, "mount needs META, DATA and DIR");
    refused(
        &["-o", "bogus", m, dd, dir],
        64,
        "unknown mount option 'bogus'",
    );
    refused(&["-o", "cache_mb=0", m, dd, dir], 64, "must be 1..=");
    refused(&["-o"], 64, "a value is required");
    refused(&["--mem", "1K", dir], 64, "below 16M");
    refused(&["--mem", "1G", m, dir], 64, "exactly one DIR");
    refused(
        &["--bogus", m, dd, dir],
        64,
        "unexpected argument '--bogus'",
    );
    refused(&["--recover", "--mem", "1G", dir], 64, "not --mem");
    refused(
        &[m, dd, "/nonexistent/dir"],
        1,
        "mount point '/nonexistent/dir'",
    );
    refused(&[m, dd, m], 1, "is not a directory");
    refused(&[m, m, dir], 1, "must be different");
    refused(&[m, dd, dir], 1, "holds no scoutfs volume");
    refused(
        &["/nonexistent.img", dd, dir],
        1,
        "failed to open meta device",
    );
    // swapped devices of a real volume
    mkfs(&meta, &data);
    refused(&[dd, m, dir], 1, "are not one volume");
    assert!(!is_mounted(&mnt));
    let _ = std::fs::remove_dir_all(&d);
}

/// QEMU paused with `img` as a virtio-blk device: it locks the image as
/// it starts.
fn qemu_with(img: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-nodefaults",
        "-display",
        "none",
        "-S",
        "-machine",
        "microvm",
    ])
    .args(["-accel", "tcg", "-drive"])
    .arg(format!("file={},format=raw,if=none,id=d0", img.display()))
    .args(["-device", "virtio-blk-device,drive=d0"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

/// Stops a QEMU by its pid when dropped.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn qemu_and_scoutvm_mount_exclude_each_other() {
    assert!(
        Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "qemu-system-x86_64 is missing (cargo xtask test installs it)"
    );
    let d = tmpdir("qemu");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (meta, data) = (d.join("meta.img"), d.join("data.img"));
    mkfs(&meta, &data);
    let (m, dd, dir) = (
        meta.to_str().unwrap(),
        data.to_str().unwrap(),
        mnt.to_str().unwrap(),
    );

    // An appliance using the data device: the mount is refused.
    let mut q = Qemu(qemu_with(&data).spawn().expect("start qemu"));
    let probe = FileDev::open(&data, false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !probe.locked_elsewhere().unwrap() {
        assert!(
            q.0.try_wait().unwrap().is_none(),
            "qemu exited before locking the image"
        );
        assert!(Instant::now() < deadline, "qemu never locked the image");
        std::thread::sleep(Duration::from_millis(20));
    }
    refused(&[m, dd, dir], 1, "data device");
    refused(&[m, dd, dir], 1, "is in use");
    drop(q);

    // The volume held (as `scoutvm mount` holds it): QEMU refuses it.
    let held = FileDev::open(&meta, true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.lock_exclusive().is_err() {
        // QEMU's descriptor may take a moment to close after the kill
        assert!(Instant::now() < deadline, "the image stayed locked");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut q = Qemu(qemu_with(&meta).spawn().expect("start qemu"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = q.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "qemu started on a locked image");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    q.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("lock"), "qemu said: {err}");
    drop(held);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_volume_locked_by_another_process_is_refused() {
    let d = tmpdir("locked");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (meta, data) = (d.join("meta.img"), d.join("data.img"));
    mkfs(&meta, &data);
    let (m, dd, dir) = (
        meta.to_str().unwrap(),
        data.to_str().unwrap(),
        mnt.to_str().unwrap(),
    );
    // What QEMU or another scoutvm mount holds: an OFD lock on the device.
    for (held, which) in [(&meta, "meta"), (&data, "data")] {
        let dev = FileDev::open(held, true).unwrap();
        dev.lock_exclusive().unwrap();
        refused(&[m, dd, dir], 1, &format!("{which} device"));
        refused(&[m, dd, dir], 1, "is in use");
        // a second lock from another open file conflicts too
        let again = FileDev::open(held, true).unwrap();
        assert!(again.lock_exclusive().is_err());
        drop(dev);
        // A child forked by a parallel test may hold a copy of the locked
        // descriptor until its exec closes it: retry for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        while again.lock_exclusive().is_err() {
            assert!(Instant::now() < deadline, "the lock outlived its file");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(!is_mounted(&mnt));
    let _ = std::fs::remove_dir_all(&d);
}

/// The offline changes leave a volume that mounts and works: a v1 volume
/// upgraded by `change-format-version`, with new quorum slots from
/// `change-quorum-config`, and (its files holding no data blocks) moved to
/// a new data device by `prepare-empty-data-device`.
#[test]
fn volumes_changed_offline_mount_and_work() {
    require_fuse();
    let d = tmpdir("offline");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (meta, data, fresh) = (d.join("meta.img"), d.join("data.img"), d.join("fresh.img"));
    for p in [&meta, &data, &fresh] {
        std::fs::File::create(p).unwrap().set_len(4 << 30).unwrap();
    }
    let (m, dd, nd, dir) = (
        meta.to_str().unwrap(),
        data.to_str().unwrap(),
        fresh.to_str().unwrap(),
        mnt.to_str().unwrap(),
    );
    let run = |args: &[&str]| {
        let o = bin().args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", text(&o));
    };
    run(&["mkfs", "-AV1", "-Q", "0,127.0.0.1,7100", m, dd]);
    run(&["change-format-version", "-F", m, dd]);
    run(&["change-quorum-config", "-F", "-Q", "1,127.0.0.1,7200", m]);
    // an empty volume's data device can be replaced
    run(&["prepare-empty-data-device", m, nd]);
    let first = MountProc::start(&[m, nd, dir], &mnt);
    std::fs::create_dir(mnt.join("d")).unwrap();
    std::fs::write(mnt.join("d/f"), vec![7u8; 100_000]).unwrap();
    first.unmount();
    fsck_clean(&meta, &fresh);
    let second = MountProc::start(&[m, nd, dir], &mnt);
    assert_eq!(std::fs::read(mnt.join("d/f")).unwrap(), vec![7u8; 100_000]);
    second.unmount();
    // now its files hold data: a new data device is refused
    let o = bin()
        .args(["prepare-empty-data-device", "--check", m])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&d);
}

/// `scoutvm` with arguments, its exit code and output.
fn cli(args: &[&str]) -> (Option<i32>, String) {
    let o = bin().args(args).output().expect("run scoutvm");
    (o.status.code(), text(&o))
}

/// Poll `scoutvm data-waiting` until a line contains `want`.
#[track_caller]
fn wait_listed(mnt: &str, want: &str) {
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    loop {
        let (code, out) = cli(&["data-waiting", "-I", "0", "-B", "0", "-p", mnt]);
        assert_eq!(code, Some(0), "{out}");
        if out.lines().any(|l| l == want) {
            return;
        }
        assert!(Instant::now() < deadline, "never listed '{want}': {out}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The archival subcommands on a FUSE mount: release a file, a reader
/// of it waits (listed by data-waiting) and gets its bytes once stage
/// brings them back; data-wait-err fails a waiting reader; walk-inodes
/// finds the file once committed; bad versions and arguments fail.
#[test]
fn archival_subcommands_through_an_in_memory_mount() {
    use std::os::unix::fs::MetadataExt;
    require_fuse();
    let d = tmpdir("archival");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = MountProc::start(&["--mem", "1G", mnt.to_str().unwrap()], &mnt);
    let mnt_s = mnt.to_str().unwrap().to_string();
    let file = mnt.join("file");
    let file_s = file.to_str().unwrap().to_string();
    let golden: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i * 31 + (i >> 12)) as u8)
        .collect();
    let golden_path = d.join("golden");
    std::fs::write(&golden_path, &golden).unwrap();
    std::fs::write(&file, &golden).unwrap();
    let ino = std::fs::metadata(&file).unwrap().ino();
    let stat = |field: &str| -> u64 {
        let (code, out) = cli(&["stat", "-s", field, &file_s]);
        assert_eq!(code, Some(0), "{out}");
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("stat {field}: {out}"))
    };
    let vers = stat("data_version").to_string();
    assert_eq!(stat("online_blocks"), 256);

    // release; a stale version and bad arguments fail
    let (code, out) = cli(&["release", &file_s, "-V", "999", "-o", "0", "-l", "1M"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("Stale"), "{out}");
    let (code, out) = cli(&["release", &file_s, "-V", &vers, "-o", "1", "-l", "4K"]);
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = cli(&["release", &file_s, "-V", &vers, "-o", "0", "-l", "1M"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!((stat("online_blocks"), stat("offline_blocks")), (0, 256));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 20);

    // a reader waits, is listed, and gets its bytes after the stage
    let reader = {
        let f = file.clone();
        std::thread::spawn(move || std::fs::read(f))
    };
    wait_listed(&mnt_s, &format!("ino {ino} iblock 0 ops read"));
    let g = golden_path.to_str().unwrap();
    let (code, out) = cli(&["stage", g, &file_s, "-V", &vers, "-o", "0", "-l", "1M"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(reader.join().unwrap().unwrap(), golden);
    assert_eq!((stat("online_blocks"), stat("offline_blocks")), (256, 0));
    assert_eq!(stat("data_version").to_string(), vers, "stage keeps it");
    let (_, out) = cli(&["data-waiting", "-I", "0", "-B", "0", "-p", &mnt_s]);
    assert!(!out.contains(&format!("ino {ino} ")), "{out}");

    // data-wait-err fails a waiting reader with EIO
    let (code, out) = cli(&["release", &file_s, "-V", &vers, "-o", "0", "-l", "4K"]);
    assert_eq!(code, Some(0), "{out}");
    let reader = {
        let f = file.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut b = [0u8; 10];
            std::fs::File::open(f)?.read_exact(&mut b)
        })
    };
    wait_listed(&mnt_s, &format!("ino {ino} iblock 0 ops read"));
    let ino_s = ino.to_string();
    // the kernel retries a failed readahead once with a read of its own,
    // which waits again: fail waiters until the reader gives up
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    while !reader.is_finished() {
        let (code, out) = cli(&[
            "data-wait-err",
            "-p",
            &mnt_s,
            "-I",
            &ino_s,
            "-V",
            &vers,
            "-F",
            "0",
            "-C",
            "4096",
            "-O",
            "read",
            "-E",
            "-5",
        ]);
        assert_eq!(code, Some(0), "{out}");
        assert!(Instant::now() < deadline, "the reader never failed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = reader.join().unwrap().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(5), "{e}");
    let (code, out) = cli(&["stage", g, &file_s, "-V", &vers, "-o", "0", "-l", "4K"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(std::fs::read(&file).unwrap(), golden);

    // walk-inodes finds the file once its change is committed (fsync)
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    let data_seq = stat("data_seq");
    let (code, out) = cli(&["walk-inodes", "-p", &mnt_s, "data_seq", "0", "-1"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.lines().any(|l| l == format!("{data_seq} 0 {ino}")),
        "{out}"
    );
    let (code, out) = cli(&["walk-inodes", "-p", &mnt_s, "nope", "0", "-1"]);
    assert_eq!(code, Some(64), "{out}");

    // read-xattr-totals sums the committed .totl. xattrs of the volume
    for (name, val) in [("scoutfs.totl.a.1.2.3", "7"), ("scoutfs.totl.b.1.2.3", "5")] {
        rustix::fs::setxattr(&file, name, val.as_bytes(), rustix::fs::XattrFlags::empty()).unwrap();
    }
    let e = rustix::fs::setxattr(
        &file,
        "scoutfs.totl.c.1.2",
        b"1",
        rustix::fs::XattrFlags::empty(),
    );
    assert_eq!(e, Err(rustix::io::Errno::INVAL));
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    let (code, out) = cli(&["read-xattr-totals", "-p", &mnt_s]);
    assert_eq!((code, out.as_str()), (Some(0), "1.2.3 = 12, 2\n"));

    // read-xattr-index lists the inode under its committed .indx. position
    rustix::fs::setxattr(
        &file,
        "scoutfs.indx.t.4.99",
        b"",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    let (code, out) = cli(&[
        "read-xattr-index",
        "-p",
        &mnt_s,
        "0.0.0",
        "255.18446744073709551615.18446744073709551615",
    ]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), format!("4.99.{ino}\n").as_str())
    );
    let (code, out) = cli(&["read-xattr-index", "-p", &mnt_s, "5.0.0", "6.0.0"]);
    assert_eq!((code, out.as_str()), (Some(0), ""));
    let (code, _) = cli(&["read-xattr-index", "-p", &mnt_s, "4.99", "5.0.0"]);
    assert_eq!(code, Some(64), "a position needs MAJOR.MINOR.INO");

    // get-referring-entries and ino-path: the names a walk finds
    for i in 1..=3 {
        let dir = mnt.join(format!("dir-{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::hard_link(&file, dir.join(format!("file-{i}"))).unwrap();
    }
    let (code, out) = cli(&["get-referring-entries", "-p", &mnt_s, &ino_s]);
    assert_eq!(code, Some(0), "{out}");
    let mut names: Vec<&str> = out
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.splitn(8, ' ').collect();
            assert_eq!(
                (w[0], w[2], w[4], w[5], w[6]),
                ("dir", "pos", "type", "8", "name")
            );
            w[7]
        })
        .collect();
    names.sort();
    assert_eq!(names, ["file", "file-1", "file-2", "file-3"], "{out}");
    let (code, out) = cli(&["ino-path", &ino_s, &mnt_s]);
    assert_eq!(code, Some(0), "{out}");
    let mut paths: Vec<&str> = out.lines().collect();
    paths.sort();
    assert_eq!(
        paths,
        ["dir-1/file-1", "dir-2/file-2", "dir-3/file-3", "file"]
    );
    let (code, out) = cli(&["get-referring-entries", "-p", &mnt_s, "1"]);
    assert_eq!((code, out.as_str()), (Some(0), ""));

    // setattr: an offline stub of 3 blocks, staged, one block punched
    let stub = mnt.join("stub");
    std::fs::File::create(&stub).unwrap();
    let stub_s = stub.to_str().unwrap().to_string();
    let (code, out) = cli(&["setattr", "-V", "0", "-s", "1", &stub_s]);
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = cli(&[
        "setattr",
        "-V",
        "9",
        "-o",
        "-s",
        "12K",
        "-t",
        "67305985.5",
        &stub_s,
    ]);
    assert_eq!(code, Some(0), "{out}");
    let md = std::fs::metadata(&stub).unwrap();
    assert_eq!(
        (md.len(), md.ctime(), md.ctime_nsec()),
        (12288, 67305985, 500_000_000)
    );
    let (_, out) = cli(&["stat", "-s", "offline_blocks", &stub_s]);
    assert_eq!(out.trim(), "3");
    let (code, out) = cli(&["stage", g, &stub_s, "-V", "9", "-o", "0", "-l", "4K"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = cli(&["punch-offline", &stub_s, "-V", "9", "-o", "4K", "-l", "4K"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = cli(&["punch-offline", &stub_s, "-V", "9", "-o", "1", "-l", "4K"]);
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = cli(&["punch-offline", &stub_s, "-o", "0", "-l", "4K"]);
    assert_eq!(code, Some(64), "{out}");
    let (_, out) = cli(&["stat", "-s", "offline_blocks", &stub_s]);
    assert_eq!(out.trim(), "1");
    // stage the last block too: the kernel's readahead would wait on it
    let (code, out) = cli(&["stage", g, &stub_s, "-V", "9", "-o", "8K", "-l", "4K"]);
    assert_eq!(code, Some(0), "{out}");
    let mut want = golden[..4096].to_vec();
    want.extend_from_slice(&[0u8; 4096]);
    let head = {
        use std::io::Read;
        let mut b = vec![0u8; 8192];
        std::fs::File::open(&stub)
            .unwrap()
            .read_exact(&mut b)
            .unwrap();
        b
    };
    assert_eq!(head, want);
    m.unmount();
    let _ = std::fs::remove_dir_all(&d);
}

/// `scoutvm search-xattrs` on a FUSE mount: the files that have a
/// `.srch.` xattr, one inode number a line, none after removal or unlink;
/// an untagged name fails.
#[test]
fn search_xattrs_through_a_mount() {
    use std::os::unix::fs::MetadataExt;
    require_fuse();
    let d = tmpdir("srch");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = MountProc::start(&["--mem", "1G", mnt.to_str().unwrap()], &mnt);
    let mnt_s = mnt.to_str().unwrap().to_string();
    let mut inos = Vec::new();
    for i in 0..5 {
        let f = mnt.join(format!("s{i}"));
        std::fs::write(&f, b"x").unwrap();
        if i != 2 {
            rustix::fs::setxattr(
                &f,
                "scoutfs.srch.tape",
                b"1",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap();
            inos.push(std::fs::metadata(&f).unwrap().ino());
        }
    }
    let search = |name: &str| {
        let (code, out) = cli(&["search-xattrs", "-p", &mnt_s, name]);
        assert_eq!(code, Some(0), "{out}");
        out.lines()
            .map(|l| l.parse::<u64>().unwrap())
            .collect::<Vec<u64>>()
    };
    inos.sort();
    assert_eq!(search("scoutfs.srch.tape"), inos);
    rustix::fs::removexattr(mnt.join("s0"), "scoutfs.srch.tape").unwrap();
    std::fs::remove_file(mnt.join("s1")).unwrap();
    let left: Vec<u64> = ["s3", "s4"]
        .iter()
        .map(|n| std::fs::metadata(mnt.join(n)).unwrap().ino())
        .collect();
    assert_eq!(search("scoutfs.srch.tape"), left);
    assert!(search("scoutfs.srch.other").is_empty());
    let (code, out) = cli(&["search-xattrs", "-p", &mnt_s, "user.plain"]);
    assert_eq!(code, Some(1), "{out}");
    m.unmount();
    let _ = std::fs::remove_dir_all(&d);
}

/// The reference test move-blocks through `scoutvm move-blocks` on a
/// FUSE mount: its argument errors with their messages (wrapped offsets,
/// the same file, another filesystem, misaligned, an existing extent,
/// offline extents), moves compared against copies made by hand, the
/// final partial block, moving backwards, combining files; plus
/// `--stage` into a released file.
#[test]
fn move_blocks_through_a_mount() {
    require_fuse();
    const BS: u64 = 4096;
    const BLOCKS: u64 = 8;
    const PART: u64 = 123;
    const LEN: u64 = BS * BLOCKS + PART;
    let d = tmpdir("move-blocks");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = MountProc::start(&["--mem", "1G", mnt.to_str().unwrap()], &mnt);
    let from = mnt.join("from");
    let to = mnt.join("to");
    let (from_s, to_s) = (from.to_str().unwrap(), to.to_str().unwrap());
    let mut seed = 1u32;
    let mut random = |len: u64| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect()
    };
    let regenerate = |random: &mut dyn FnMut(u64) -> Vec<u8>| {
        let _ = std::fs::remove_file(&from);
        let _ = std::fs::remove_file(&to);
        std::fs::write(&from, random(LEN)).unwrap();
        std::fs::write(&to, b"").unwrap();
    };
    let mb = |f: &str, fo: &str, l: &str, t: &str, to_off: &str| {
        cli(&["move-blocks", f, "-f", fo, "-l", l, t, "-t", to_off])
    };
    let fails = |r: (Option<i32>, String), says: &str| {
        assert_eq!(r.0, Some(1), "{}", r.1);
        assert_eq!(
            r.1.trim(),
            format!("scoutvm: move-blocks failed: {says}"),
            "{}",
            r.1
        );
    };
    // the reference's move_and_compare
    let move_and_compare = |f: &Path, fo: u64, len: u64, t: &Path, to_off: u64| {
        let (src, dst) = (std::fs::read(f).unwrap(), std::fs::read(t).unwrap());
        let end = (fo + len.div_ceil(BS) * BS).min(src.len() as u64) as usize;
        let mut want_from = src.clone();
        want_from[fo as usize..end].fill(0);
        let mut want_to = dst;
        let t_end = to_off as usize + end - fo as usize;
        if want_to.len() < t_end {
            want_to.resize(t_end, 0);
        }
        want_to[to_off as usize..t_end].copy_from_slice(&src[fo as usize..end]);
        let (code, out) = mb(
            f.to_str().unwrap(),
            &fo.to_string(),
            &len.to_string(),
            t.to_str().unwrap(),
            &to_off.to_string(),
        );
        assert_eq!(code, Some(0), "{out}");
        assert_eq!(std::fs::read(f).unwrap(), want_from, "from {fo}+{len}");
        assert_eq!(std::fs::read(t).unwrap(), want_to, "to {fo}+{len}");
    };

    // build test files
    regenerate(&mut random);
    let hard = mnt.join("hardlink");
    std::fs::hard_link(&from, &hard).unwrap();
    let other = d.join("other");
    std::fs::write(&other, b"").unwrap();

    let huge = "0xfffffffffffff000";
    let e_overflow = "Value too large for defined data type (os error 75)";
    let e_inval = "Invalid argument (os error 22)";
    fails(mb(from_s, huge, "8192", to_s, "0"), e_overflow);
    fails(mb(from_s, "0", huge, to_s, "8192"), e_overflow);
    fails(
        mb(from_s, "0", "4096", hard.to_str().unwrap(), "0"),
        e_inval,
    );
    fails(
        mb(other.to_str().unwrap(), "0", "4096", to_s, "0"),
        "Invalid cross-device link (os error 18)",
    );
    fails(mb(from_s, "1", "4096", to_s, "0"), e_inval);
    fails(mb(from_s, "0", "1", to_s, "0"), e_inval);
    fails(mb(from_s, "0", "4096", to_s, "1"), e_inval);
    // can't move onto an existing extent
    std::fs::write(&to, random(BS)).unwrap();
    fails(mb(from_s, "0", "4096", to_s, "0"), e_inval);
    // can't move between files with offline extents
    let release = |p: &str| {
        let (_, v) = cli(&["stat", "-s", "data_version", p]);
        let (code, out) = cli(&["release", p, "-V", v.trim(), "-o", "0", "-l", "4K"]);
        assert_eq!(code, Some(0), "{out}");
    };
    let e_nodata = "No data available (os error 61)";
    std::fs::write(&to, [0u8; BS as usize]).unwrap();
    release(to_s);
    fails(mb(from_s, "0", "4096", to_s, "0"), e_nodata);
    regenerate(&mut random);
    release(from_s);
    fails(mb(from_s, "0", "4096", to_s, "0"), e_nodata);
    // usage: all three offsets are required
    let (code, out) = cli(&["move-blocks", from_s, "-f", "0", "-l", "4K", to_s]);
    assert_eq!(code, Some(64), "{out}");

    // basic moves work
    for (fo, len, to_off) in [(0, BS, 0), (0, BS, BS), (0, LEN, 0)] {
        regenerate(&mut random);
        move_and_compare(&from, fo, len, &to, to_off);
    }
    // moving the final partial block sets a partial size
    regenerate(&mut random);
    move_and_compare(&from, LEN - PART, PART, &to, 0);
    assert_eq!(std::fs::metadata(&to).unwrap().len(), PART);
    // moving blocks backwards works
    regenerate(&mut random);
    let orig = std::fs::read(&from).unwrap();
    move_and_compare(&from, LEN - PART, PART, &to, LEN - PART);
    for i in (0..BLOCKS).rev() {
        move_and_compare(&from, i * BS, BS, &to, i * BS);
    }
    assert_eq!(std::fs::read(&to).unwrap(), orig);
    // combine many files into one
    regenerate(&mut random);
    let mut large = Vec::new();
    for i in 0..4u64 {
        let piece_path = mnt.join(format!("from.{i}"));
        let piece = random(BS * BLOCKS);
        std::fs::write(&piece_path, &piece).unwrap();
        large.extend_from_slice(&piece);
        move_and_compare(&piece_path, 0, BS * BLOCKS, &to, i * BS * BLOCKS);
    }
    large.extend_from_slice(&std::fs::read(&from).unwrap());
    move_and_compare(&from, 0, LEN, &to, 4 * BS * BLOCKS);
    assert_eq!(std::fs::read(&to).unwrap(), large);

    // --stage moves a scratch copy into a released file's offline range
    let target = mnt.join("target");
    let target_s = target.to_str().unwrap();
    let golden = random(4 * BS);
    std::fs::write(&target, &golden).unwrap();
    let (_, v) = cli(&["stat", "-s", "data_version", target_s]);
    let vers = v.trim().to_string();
    let (code, out) = cli(&["release", target_s, "-V", &vers, "-o", "0", "-l", "16K"]);
    assert_eq!(code, Some(0), "{out}");
    let scratch = mnt.join("scratch");
    std::fs::write(&scratch, &golden).unwrap();
    let stage = |v: &str| {
        cli(&[
            "move-blocks",
            scratch.to_str().unwrap(),
            "-f",
            "0",
            "-l",
            "16K",
            target_s,
            "-t",
            "0",
            "--stage",
            "-V",
            v,
        ])
    };
    fails(stage("999"), "Stale file handle (os error 116)");
    let (code, out) = stage(&vers);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(std::fs::read(&target).unwrap(), golden);
    let (_, v) = cli(&["stat", "-s", "data_version", target_s]);
    assert_eq!(v.trim(), vers, "a staging move keeps the data_version");
    let (_, off) = cli(&["stat", "-s", "offline_blocks", target_s]);
    assert_eq!(off.trim(), "0");
    // (st_blocks of the source may be the kernel's cached value for a
    // second: it saw no request on that file)
    let (_, on) = cli(&["stat", "-s", "online_blocks", scratch.to_str().unwrap()]);
    assert_eq!(on.trim(), "0");
    m.unmount();
}
