//! The appliance's FUSE service (`kernel/src/fusesvc.rs`) end to end: one
//! node on a RAM volume, its FUSE port forwarded to a free host port, the
//! host mounts it with `scoutvm mount --node` and runs file operations
//! through its kernel; the appliance's shell sees the files and lists the
//! connection in `clients`; `umount` ends the relay cleanly.
//!
//! Needs root and /dev/fuse on the host: without them it says so and
//! passes without booting. `SCOUTVM_TOOL` names the host tool (default:
//! built in release).

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scoutvm_tests::guest::host_tool;
use scoutvm_tests::{free_tcp_port, Machine, Net, Vm, VmConfig};

const TIMEOUT: Duration = Duration::from_secs(120);

fn is_mounted(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
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

/// Unmounts (lazily if busy) and stops the relay if the test fails.
struct Relay {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = scoutvm_image::fuse::unmount_dir(&self.dir);
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn host_mounts_a_booted_appliance_over_fuse() {
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if !Path::new("/dev/fuse").exists() || !root {
        eprintln!("fuse_service: skipped: needs root and /dev/fuse");
        return;
    }
    let port = free_tcp_port();
    let cfg = VmConfig::new(Machine::Microvm)
        .net(Net::User {
            hostfwd: vec![(port, 7564)],
        })
        .append("volume=ram");
    let mut vm = Vm::spawn(&cfg).expect("boot the appliance");
    vm.wait_for("fuse: serving FUSE", TIMEOUT)
        .expect("the FUSE service listens");
    vm.wait_prompt(TIMEOUT).expect("prompt");

    let dir = std::env::temp_dir().join(format!("scoutvm-fuse-svc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new(host_tool())
        .args(["mount", "--node", &format!("127.0.0.1:{port}")])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut relay = Relay {
        child,
        dir: dir.clone(),
    };
    let deadline = Instant::now() + TIMEOUT;
    while !is_mounted(&dir) {
        if let Some(st) = relay.child.try_wait().unwrap() {
            panic!("the relay exited ({st}): {}", output_of(&mut relay.child));
        }
        assert!(Instant::now() < deadline, "not mounted in time");
        std::thread::sleep(Duration::from_millis(50));
    }

    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let f = dir.join("big");
    std::fs::write(&f, &body).unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), body);
    std::fs::create_dir(dir.join("d")).unwrap();
    std::fs::write(dir.join("d/hello"), b"hello from the host\n").unwrap();
    std::fs::rename(dir.join("d/hello"), dir.join("hello")).unwrap();
    std::os::unix::fs::symlink("hello", dir.join("s")).unwrap();
    assert_eq!(
        std::fs::read_link(dir.join("s")).unwrap(),
        Path::new("hello")
    );
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o640);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(1000)
        .unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 1000);
    std::fs::remove_dir(dir.join("d")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["big", "hello", "s"]);

    // The appliance sees what the host wrote, and the connection.
    let cat = vm.run("cat /hello").expect("cat");
    assert!(cat.contains("hello from the host"), "{cat}");
    let clients = vm.run("clients").expect("clients");
    assert!(clients.contains("FUSE: 1 connection(s)"), "{clients}");

    scoutvm_image::fuse::unmount_dir(&dir).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let st = loop {
        if let Some(st) = relay.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the relay did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = output_of(&mut relay.child);
    assert!(st.success(), "relay: {st}: {out}");
    // The connection is gone once the relay closed it.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let c = vm.run("clients").expect("clients");
        if c.contains("FUSE: 0 connection(s)") {
            break;
        }
        assert!(Instant::now() < deadline, "the FUSE connection stayed: {c}");
        std::thread::sleep(Duration::from_millis(200));
    }
    vm.poweroff().expect("poweroff");
    let _ = std::fs::remove_dir_all(&dir);
}
