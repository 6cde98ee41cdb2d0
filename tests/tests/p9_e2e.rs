//! End to end: the Linux kernel's 9P client mounts the appliance and works
//! on files that live on its virtio-blk disks, across a reboot.
//!
//! One appliance (microvm, TCG) with blank meta/data images and a Linux
//! guest on a point-to-point link (`-netdev dgram`). The appliance says it
//! has no volume; `mkfs` in its shell makes one, mounts it and serves 9P.
//! The guest mounts with `access=user` and runs `p9check all` (create,
//! checksummed write/read, append, rename, hard and symbolic links,
//! xattrs, chmod/chown as a non-root user, truncate, unlink-while-open,
//! locks, a big file, many small files, readdir under churn) and a seeded
//! `p9fsx`. The appliance is powered off and booted again; the guest's
//! `p9check verify` finds every file with the same content, type, mode,
//! owner, links and xattrs; the host `scoutvm fsck` finds the images clean.
//!
//! Sizes: by default (and in CI) the full size, 10 000 small files,
//! a 256 MiB file and 5000 fsx operations (about 12 minutes under TCG);
//! `SCOUTVM_E2E_QUICK=1` runs 3000 files, 64 MiB and 1500 operations for
//! quicker local iterations.

use std::time::{Duration, Instant};

use scoutvm_tests::guest::{fsck_images, run_linux_guest, GuestLink, GuestRun, APPLIANCE_IP};
use scoutvm_tests::{Machine, TempImage, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(120);
const SHELL: Duration = Duration::from_secs(300);

struct Sizes {
    files: u32,
    mib: u32,
    fsx_ops: u32,
}

fn sizes() -> Sizes {
    if std::env::var_os("SCOUTVM_E2E_QUICK").is_some_and(|v| v != "0") {
        Sizes {
            files: 3000,
            mib: 64,
            fsx_ops: 1500,
        }
    } else {
        Sizes {
            files: 10_000,
            mib: 256,
            fsx_ops: 5000,
        }
    }
}

fn appliance(meta: &TempImage, data: &TempImage, link: &GuestLink) -> VmConfig {
    let mut cfg = VmConfig::new(Machine::Microvm)
        .disk(&meta.path, "meta")
        .disk(&data.path, "data")
        .net(link.appliance_net())
        .append(&link.appliance_cmdline());
    cfg.mem_mb = 1024;
    cfg
}

/// Wait until the appliance serves 9P (its `clients` command answers).
fn wait_serving(vm: &mut Vm) {
    let deadline = Instant::now() + BOOT;
    loop {
        let out = vm.run_timeout("clients", SHELL).expect("clients");
        if out.contains("connection(s)") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "9P not served after {BOOT:?}: {out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Run a shell command that succeeds silently: its echo is followed
/// directly by the next prompt.
fn quiet(vm: &mut Vm, command: &str) {
    vm.send_line(command).unwrap();
    vm.wait_for(&format!("{command}\nscoutvm> "), SHELL)
        .unwrap_or_else(|e| panic!("{command} printed something or hung: {e}"));
}

fn guest(link: &GuestLink, command: &str) -> GuestRun {
    let mut args = link.guest_args();
    args.extend(
        ["--mount-opts", "access=user", "--timeout", "2400"]
            .iter()
            .map(|s| s.to_string()),
    );
    let run = run_linux_guest(&args, command).expect("start qemu/linux-guest.sh");
    eprintln!("guest run took {:?}", run.elapsed);
    run
}

fn assert_markers(run: &GuestRun, markers: &[&str]) {
    for m in markers {
        assert!(
            run.console.contains(m),
            "guest output lacks {m:?} (exit {}):\n{}",
            run.status,
            run.tail(80)
        );
    }
    assert!(
        run.status.success(),
        "guest failed ({}):\n{}",
        run.status,
        run.tail(80)
    );
}

#[test]
fn linux_guest_works_on_the_appliance_across_a_reboot() {
    let s = sizes();
    let meta = TempImage::new("e2e-meta", 4 << 30).unwrap();
    let data = TempImage::new("e2e-data", 8 << 30).unwrap();
    let link = GuestLink::new();
    let cfg = appliance(&meta, &data, &link);

    // Boot 1: blank disks. The node says so; mkfs makes, mounts, serves.
    let mut vm = Vm::spawn(&cfg).expect("start the appliance");
    // (The prompt comes first; the volume service reports right after.)
    vm.wait_for("no scoutfs volume", BOOT)
        .expect("the appliance reports blank disks");
    let err = vm.run("ls /").unwrap();
    assert!(err.contains("error: ls: no volume mounted"), "{err}");
    let out = vm
        .run_timeout(&format!("mkfs -A -Q 0,{APPLIANCE_IP},7100"), SHELL)
        .unwrap();
    assert!(out.contains("Created scoutfs filesystem"), "{out}");
    assert!(out.contains("mounted vda (meta) + vdb (data)"), "{out}");
    let again = vm.run("mkfs -A -f").unwrap();
    assert!(again.contains("mkfs refuses a mounted volume"), "{again}");
    wait_serving(&mut vm);

    let cmd = format!(
        "p9check all /mnt --files {} --mib {} --uid 1000 --gid 1000 && p9fsx /mnt --seed 11 --ops {}",
        s.files, s.mib, s.fsx_ops
    );
    let run = guest(&link, &cmd);
    assert_markers(
        &run,
        &[
            "SCOUTVM-GUEST-MOUNTED",
            "P9CHECK check=basic ok",
            "P9CHECK check=xattr ok",
            "P9CHECK check=perms ok",
            "P9CHECK check=locks ok",
            "P9CHECK check=unlink-open ok",
            "P9CHECK check=fattr-unlinked ok",
            "P9CHECK check=bigfile ok",
            "P9CHECK check=smallfiles ok",
            "P9CHECK check=readdir-churn ok",
            "P9CHECK-RESULT ok command=all",
            &format!("P9FSX ok seed=11 ops={}", s.fsx_ops),
            "SCOUTVM-GUEST-RESULT rc=0 stage=cmd",
        ],
    );

    // The shell sees what the guest made; the guest has gone.
    let clients = vm.run("clients").unwrap();
    assert!(clients.contains("0 connection(s)"), "{clients}");
    let ls = vm.run("ls /p9check").unwrap();
    for d in ["basic", "bigfile", "smallfiles", "perms", "xattr"] {
        assert!(ls.contains(d), "ls /p9check lacks {d}: {ls}");
    }
    let st = vm.run("stat /p9check/bigfile/big").unwrap();
    assert!(
        st.contains(&format!("size: {}", (s.mib as u64) << 20)),
        "{st}"
    );
    let df = vm.run("df").unwrap();
    assert!(df.contains("inodes"), "{df}");
    // Shell commands on the volume, and their one-line errors.
    quiet(&mut vm, "mkdir /from-shell");
    assert!(vm.run("ls -l /").unwrap().contains("from-shell"));
    quiet(&mut vm, "rm /from-shell");
    assert!(!vm.run("ls /").unwrap().contains("from-shell"));
    for (cmd, want) in [
        ("stat", "error: stat: usage: stat PATH"),
        (
            "cat /nope",
            "error: cat: /nope: no such file or directory (ENOENT)",
        ),
        (
            "rm /p9check",
            "error: rm: /p9check: directory not empty (ENOTEMPTY)",
        ),
        ("ls -z", "error: ls: unknown option '-z'"),
        (
            "mkfs -V 9",
            "error: mkfs: format version '9' must be 1 or 2",
        ),
        ("cat /p9check", "error: cat: /p9check: is a directory"),
    ] {
        let out = vm.run(cmd).unwrap();
        assert!(out.starts_with(want), "{cmd}: {out}");
        assert_eq!(out.lines().count(), 1, "{cmd}: one line: {out}");
    }
    vm.poweroff().expect("clean poweroff after the workload");
    drop(vm);

    // Boot 2: the volume mounts by itself; everything is still there.
    let mut vm = Vm::spawn(&cfg).expect("start the appliance again");
    vm.wait_prompt(BOOT).expect("prompt");
    wait_serving(&mut vm);
    let run = guest(&link, "p9check verify /mnt");
    assert_markers(
        &run,
        &[
            "P9CHECK-RESULT ok command=verify",
            "SCOUTVM-GUEST-RESULT rc=0 stage=cmd",
        ],
    );
    let fsck = vm.run_timeout("fsck", SHELL).unwrap();
    assert!(fsck.contains("clean"), "appliance fsck: {fsck}");
    vm.poweroff().expect("clean poweroff after verify");
    drop(vm);

    let (clean, report) = fsck_images(&meta.path, &data.path);
    assert!(clean, "host fsck of the images:\n{report}");
}
