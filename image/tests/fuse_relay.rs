//! `scoutvm mount --node ADDR:PORT DIR` end to end without a VM: the
//! FUSE server (`scoutvm_net::fuse`) serves a file volume in this process
//! over TCP on 127.0.0.1 (`scoutvm_image::fuse_tcp`, on the `fs_thread`
//! that `scoutvm mount` uses),
//! the relay mounts it through the kernel's FUSE, and ordinary file
//! operations (std::fs: create, write, read, readdir, rename, unlink,
//! xattrs, symlink, hard link, chmod, truncate, append) go through the
//! kernel to the server; then `umount`, the relay exits 0, the volume is
//! closed and fsck is clean.
//!
//! Needs root and /dev/fuse: without them the test says so and passes
//! without running (the FUSE tests of image/tests/fuse.rs fail instead).

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scoutvm_fs::posix::mount::MountOptions;
use scoutvm_image::fuse_tcp::TcpFuseServer;
use scoutvm_net::fuse::ServerConfig;

const TIMEOUT: Duration = Duration::from_secs(60);

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scoutvm"))
}

/// Serve the volume on `meta`/`data` over FUSE on a free port.
fn start_server(meta: &Path, data: &Path) -> TcpFuseServer {
    let devs = scoutvm_image::volume::open_for_mount(
        meta.to_str().unwrap(),
        data.to_str().unwrap(),
        false,
    )
    .expect("open the volume");
    let opener = scoutvm_image::volume::volume_opener(devs, MountOptions::default());
    TcpFuseServer::start(opener, ServerConfig::default(), "127.0.0.1:0").expect("serve")
}

fn is_mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .any(|m| Path::new(m) == dir)
}

fn output_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(o) = child.stdout.as_mut() {
        let _ = o.read_to_string(&mut s);
    }
    if let Some(e) = child.stderr.as_mut() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the relay did not exit: {}", output_of(child));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn can_mount_fuse() -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if !Path::new("/dev/fuse").exists() || !root {
        eprintln!("fuse_relay: skipped: needs root and /dev/fuse");
        return false;
    }
    true
}

/// Unmounts (lazily if busy) if the test fails half way.
struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = scoutvm_image::fuse::unmount_dir(&self.0);
        }
    }
}

#[test]
fn file_operations_through_the_kernel_and_the_relay() {
    if !can_mount_fuse() {
        return;
    }
    let d = std::env::temp_dir().join(format!("scoutvm-fuse-relay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let (meta, data, mnt) = (d.join("meta"), d.join("data"), d.join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    mkfs(&meta, &data);
    let server = start_server(&meta, &data);
    let port = server.port();

    let mut child = bin()
        .args(["mount", "--node", &format!("127.0.0.1:{port}")])
        .arg(&mnt)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = Guard(mnt.clone());
    let deadline = Instant::now() + TIMEOUT;
    while !is_mounted(&mnt) {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the relay exited ({st}): {}", output_of(&mut child));
        }
        assert!(Instant::now() < deadline, "not mounted in time");
        std::thread::sleep(Duration::from_millis(20));
    }

    // create, write, read
    let dir = mnt.join("d");
    std::fs::create_dir(&dir).unwrap();
    let f = dir.join("f");
    let body: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&f, &body).unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), body);
    assert_eq!(std::fs::metadata(&f).unwrap().len(), body.len() as u64);
    // readdir
    for i in 0..20 {
        std::fs::write(dir.join(format!("n{i}")), format!("{i}")).unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 21);
    assert!(names.contains(&"f".to_string()) && names.contains(&"n19".to_string()));
    assert_eq!(std::fs::read_to_string(dir.join("n7")).unwrap(), "7");
    // rename
    let g = mnt.join("g");
    std::fs::rename(&f, &g).unwrap();
    assert!(!f.exists());
    assert_eq!(std::fs::read(&g).unwrap(), body);
    // symlink and hard link
    std::os::unix::fs::symlink("g", mnt.join("s")).unwrap();
    assert_eq!(std::fs::read_link(mnt.join("s")).unwrap(), Path::new("g"));
    assert_eq!(std::fs::read(mnt.join("s")).unwrap().len(), body.len());
    std::fs::hard_link(&g, mnt.join("h")).unwrap();
    assert_eq!(std::fs::metadata(&g).unwrap().nlink(), 2);
    // chmod, truncate, append
    std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(&g).unwrap().mode() & 0o7777, 0o600);
    let fh = std::fs::OpenOptions::new().write(true).open(&g).unwrap();
    fh.set_len(10).unwrap();
    drop(fh);
    assert_eq!(std::fs::read(&g).unwrap(), &body[..10]);
    let mut a = std::fs::OpenOptions::new().append(true).open(&g).unwrap();
    a.write_all(b"tail").unwrap();
    drop(a);
    assert_eq!(std::fs::metadata(&g).unwrap().len(), 14);
    // xattrs
    rustix::fs::setxattr(&g, "user.k", b"value", rustix::fs::XattrFlags::empty()).unwrap();
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(&g, "user.k", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"value");
    let mut list = [0u8; 256];
    let n = rustix::fs::listxattr(&g, &mut list).unwrap();
    assert!(list[..n].split(|&b| b == 0).any(|x| x == b"user.k"));
    rustix::fs::removexattr(&g, "user.k").unwrap();
    assert!(rustix::fs::getxattr(&g, "user.k", &mut buf).is_err());
    // unlink, rmdir
    std::fs::remove_file(mnt.join("h")).unwrap();
    assert_eq!(std::fs::metadata(&g).unwrap().nlink(), 1);
    std::fs::remove_file(mnt.join("s")).unwrap();
    for i in 0..20 {
        std::fs::remove_file(dir.join(format!("n{i}"))).unwrap();
    }
    std::fs::remove_dir(&dir).unwrap();
    assert!(!dir.exists());
    // (a ReadDir kept alive would keep the mount busy)
    let left = std::fs::read_dir(&mnt).unwrap().count();
    assert_eq!(left, 1, "only g is left");

    if let Some(mb) = std::env::var("FUSE_RELAY_BENCH_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        bench(&mnt, mb);
    }

    // umount: the relay exits 0.
    scoutvm_image::fuse::unmount_dir(&mnt).unwrap();
    let st = wait_exit(&mut child);
    let out = output_of(&mut child);
    assert!(st.success(), "relay: {st}: {out}");
    assert!(out.contains("unmounted"), "{out}");
    drop(guard);
    server.stop().expect("clean close of the volume");
    let o = bin().arg("fsck").arg(&meta).arg(&data).output().unwrap();
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && text.contains("clean"), "fsck: {text}");
    let _ = std::fs::remove_dir_all(&d);
}

/// `FUSE_RELAY_BENCH_MB=N`: stream N MiB in and out through the kernel,
/// the relay and the server, and create, stat and unlink small files;
/// prints the rates (figures, not assertions).
fn bench(mnt: &Path, mb: usize) {
    let chunk = vec![0x5au8; 1 << 20];
    let f = mnt.join("bench");
    let t = Instant::now();
    let mut w = std::fs::File::create(&f).unwrap();
    for _ in 0..mb {
        w.write_all(&chunk).unwrap();
    }
    w.sync_all().unwrap();
    drop(w);
    let wr = mb as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut r = std::fs::File::open(&f).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, mb << 20);
    let rd = mb as f64 / t.elapsed().as_secs_f64();
    std::fs::remove_file(&f).unwrap();
    let n = 2000;
    let d = mnt.join("bench-d");
    std::fs::create_dir(&d).unwrap();
    let t = Instant::now();
    for i in 0..n {
        std::fs::File::create(d.join(format!("f{i}"))).unwrap();
    }
    let creates = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        std::fs::metadata(d.join(format!("f{i}"))).unwrap();
    }
    let stats = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), n);
    let readdir = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        std::fs::remove_file(d.join(format!("f{i}"))).unwrap();
    }
    let unlinks = n as f64 / t.elapsed().as_secs_f64();
    std::fs::remove_dir(&d).unwrap();
    eprintln!(
        "fuse_relay bench: write {wr:.0} MB/s, read {rd:.0} MB/s ({mb} MiB); \
         {creates:.0} creates/s, {stats:.0} stats/s, {readdir:.0} readdir entries/s, \
         {unlinks:.0} unlinks/s ({n} files)"
    );
}

#[test]
fn bad_node_arguments_are_refused() {
    let d = std::env::temp_dir().join(format!("scoutvm-fuse-relay-args-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let dir = d.to_str().unwrap();
    for (args, says) in [
        (
            vec!["mount", "--node", "127.0.0.1:1", dir, dir],
            "exactly one DIR",
        ),
        (
            vec!["mount", "--node", "127.0.0.1:1", "--mem", "64M", dir],
            "takes no",
        ),
        (
            vec!["mount", "--node", "nonsense", dir],
            "--node 'nonsense'",
        ),
    ] {
        let o = bin().args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{args:?}");
        assert!(text.contains(says), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
