//! virtio-fs against a booted appliance (issue 15's host half end to end):
//! one node on blank disk images (mkfs from its shell), its FUSE (7564) and
//! 9P ports forwarded to free host ports. `scoutvm virtiofs --node
//! 127.0.0.1:PORT` relays a Linux guest mounted `-t virtiofs`, which writes
//! a file and runs `p9check all` and `p9fsx`; a second guest on 9P reads that file
//! (same md5) and writes one of its own. A third guest, on virtio-fs,
//! writes a file and waits for a directory to appear; meanwhile the
//! appliance powers off and boots again, the backend connects again and
//! replays the FUSE session, the appliance's shell makes the directory and
//! the same guest mount reads its file back and appends to it. A fourth
//! guest, through a fresh backend, reads every file and `p9check verify`s
//! the tree. The appliance's fsck and the host fsck of the images are
//! clean.
//!
//! The first virtio-fs guest also runs `p9fsx` (the random-operation
//! exerciser of the 9P end-to-end test). Needs the appliance image
//! (`SCOUTVM_ELF`, else `cargo xtask build`); about 60 s under TCG.
//! `SCOUTVM_TOOL` names the host tool (default: built in release).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scoutvm_tests::guest::{fsck_images, host_tool, run_linux_guest, GuestRun};
use scoutvm_tests::{free_tcp_port, Machine, Net, Reaped, TempImage, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(120);
const SHELL: Duration = Duration::from_secs(300);

/// `scoutvm virtiofs` relaying to `node`, once its socket is there.
fn start_backend(dir: &Path, node: &str, name: &str) -> (Reaped, PathBuf, PathBuf) {
    let sock = dir.join(format!("{name}.sock"));
    let log = dir.join(format!("{name}.log"));
    let mut backend = Reaped {
        name: "scoutvm virtiofs",
        child: Command::new(host_tool())
            .args(["virtiofs", "--node", node, "--socket"])
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start scoutvm virtiofs"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        if let Ok(Some(st)) = backend.child.try_wait() {
            panic!(
                "scoutvm virtiofs exited ({st}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no socket {}", sock.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    (backend, sock, log)
}

/// Runs `cmd` in a guest on virtio-fs through a fresh backend; the guest
/// must succeed and the backend end cleanly with nothing malformed.
fn virtiofs_guest(dir: &Path, node: &str, name: &str, cmd: &str) -> GuestRun {
    let (mut backend, sock, log) = start_backend(dir, node, name);
    let args: Vec<String> = ["--virtiofs", sock.to_str().unwrap(), "--timeout", "300"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let run = run_linux_guest(&args, cmd).expect("run the Linux guest");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(st)) = backend.child.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        run.status.success(),
        "{name} guest failed: {}\nbackend: {text}",
        run.tail(60)
    );
    assert_eq!(status.map(|s| s.success()), Some(true), "backend: {text}");
    let summary = text
        .lines()
        .find(|l| l.contains("frontend gone"))
        .unwrap_or_else(|| panic!("no summary: {text}"));
    for zero in [
        "bad_chains 0",
        "bad_requests 0",
        "too_big 0",
        "unmatched 0",
        "not_connected 0",
    ] {
        assert!(summary.contains(zero), "{summary}");
    }
    eprintln!("{name}: {summary}");
    if name == "live" {
        assert!(!summary.contains("reconnects 0"), "{summary}");
    }
    run
}

/// The md5 printed on a line `MD5 <hex>`.
fn md5_of(run: &GuestRun) -> String {
    run.console
        .lines()
        .find_map(|l| l.strip_prefix("MD5 "))
        .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no MD5 line: {}", run.tail(30)))
}

#[test]
fn virtiofs_and_9p_guests_on_a_booted_appliance_across_a_reboot() {
    let fuse_port = free_tcp_port();
    let mut p9_port = free_tcp_port();
    while p9_port == fuse_port {
        p9_port = free_tcp_port();
    }
    let meta = TempImage::new("vfs-meta", 2 << 30).unwrap();
    let data = TempImage::new("vfs-data", 4 << 30).unwrap();
    let mut cfg = VmConfig::new(Machine::Microvm)
        .disk(&meta.path, "meta")
        .disk(&data.path, "data")
        .net(Net::User {
            hostfwd: vec![(p9_port, 564), (fuse_port, 7564)],
        });
    cfg.mem_mb = 1024;
    let dir = std::env::temp_dir().join(format!("scoutvm-virtiofs-app-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let node = format!("127.0.0.1:{fuse_port}");

    // Boot 1: blank disks; mkfs mounts and serves 9P and FUSE.
    let mut vm = Vm::spawn(&cfg).expect("boot the appliance");
    vm.wait_for("no scoutfs volume", BOOT).expect("blank disks");
    let out = vm
        .run_timeout("mkfs -A -Q 0,10.0.2.15,7100", SHELL)
        .unwrap();
    assert!(out.contains("Created scoutfs filesystem"), "{out}");
    vm.wait_for("fuse: serving", BOOT)
        .expect("the FUSE service listens");

    let first = virtiofs_guest(
        &dir,
        &node,
        "vfs1",
        "set -e; mkdir /mnt/v; seq 1 30000 > /mnt/v/f; echo MD5 $(md5sum < /mnt/v/f); \
         p9check all /mnt/v/pc --files 100 --mib 4; \
         p9fsx /mnt/v/fsx --seed 11 --ops 400; echo VFS1-DONE",
    );
    assert!(first.console.contains("VFS1-DONE"));
    let written = md5_of(&first);

    let p9_args: Vec<String> = [
        "--server",
        &format!("10.0.2.2:{p9_port}"),
        "--mount-opts",
        "access=user,cache=none",
        "--timeout",
        "300",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let p9 = run_linux_guest(
        &p9_args,
        "set -e; echo MD5 $(md5sum < /mnt/v/f); echo from-9p > /mnt/g; echo P9-DONE",
    )
    .expect("run the 9P guest");
    assert!(p9.status.success(), "9P guest failed: {}", p9.tail(40));
    assert_eq!(
        md5_of(&p9),
        written,
        "the 9P guest reads the virtio-fs guest's file"
    );

    // A guest mounted across the reboot: it writes, then waits for /go.
    let live = {
        let (dir, node) = (dir.clone(), node.clone());
        std::thread::spawn(move || {
            virtiofs_guest(
                &dir,
                &node,
                "live",
                "set -e; echo before > /mnt/live; \
                 while [ ! -d /mnt/go ]; do sleep 0.5; done; \
                 test \"$(cat /mnt/live)\" = before; echo after >> /mnt/live; echo LIVE-DONE",
            )
        })
    };
    let deadline = Instant::now() + BOOT;
    while !vm.run_timeout("ls /", SHELL).unwrap().contains("live") {
        assert!(!live.is_finished(), "the live guest ended early");
        assert!(Instant::now() < deadline, "the live guest never wrote");
        std::thread::sleep(Duration::from_millis(500));
    }
    vm.poweroff().expect("clean power off");
    drop(vm);

    // Boot 2: the volume mounts by itself; the live guest's backend
    // connects again and its mount carries on.
    let mut vm = Vm::spawn(&cfg).expect("boot the appliance again");
    vm.wait_for("fuse: serving", BOOT)
        .expect("the FUSE service listens again");
    vm.wait_prompt(BOOT).expect("prompt");
    let out = vm.run("mkdir /go").unwrap();
    assert!(!out.contains("error"), "{out}");
    let live = live.join().expect("the live guest");
    assert!(live.console.contains("LIVE-DONE"), "{}", live.tail(30));

    let second = virtiofs_guest(
        &dir,
        &node,
        "vfs2",
        "set -e; test \"$(cat /mnt/g)\" = from-9p; echo MD5 $(md5sum < /mnt/v/f); \
         printf 'before\\nafter\\n' | cmp - /mnt/live; \
         p9check verify /mnt/v/pc; echo VFS2-DONE",
    );
    assert!(second.console.contains("VFS2-DONE"));
    assert_eq!(md5_of(&second), written);
    let fsck = vm.run_timeout("fsck", SHELL).unwrap();
    assert!(fsck.contains("clean"), "appliance fsck: {fsck}");
    vm.poweroff().expect("clean power off after verify");
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
    let (clean, report) = fsck_images(&meta.path, &data.path);
    assert!(clean, "host fsck of the images:\n{report}");
}
