//! `scoutvm-bench9p`: the 9P bench against a ScoutVM appliance, and in
//! the same run against diod, with the same arguments. Run by
//! `cargo xtask bench-9p`.
//!
//! Without an address it boots an appliance (microvm, TCG) on fresh sparse
//! images, makes a volume with the shell's `mkfs`, links a Linux guest to
//! it over `-netdev dgram` and runs `qemu/p9bench.sh` (an mdtest-like
//! create/stat/readdir/unlink pass and a streaming write and read) on the
//! mount; with `ADDR:PORT` it runs the same bench against that server.
//! Then it starts the diod peer VM (`../shared/peers/diod-vm`, or
//! `$SCOUTVM_DIOD_PEER`: Linux, ext4 on virtio-blk, Debian's diod, under
//! the same QEMU TCG) on a link of the same kind and runs the same bench
//! against it. Prints both `P9BENCH ...` lines; when diod cannot be
//! measured it says why and prints no figures for it (`--no-diod` skips
//! it). The machine is shared: only the two lines of one run compare.
//!
//! Usage: scoutvm-bench9p [--files N] [--mib M] [--ram] [--no-diod] [ADDR:PORT]

use std::path::PathBuf;
use std::process::{exit, Command, Stdio};
use std::time::Duration;

use scoutvm_tests::guest::{GuestLink, APPLIANCE_IP};
use scoutvm_tests::{free_tcp_port, workspace_root, Machine, TempImage, Vm, VmConfig};

fn fail(msg: &str) -> ! {
    eprintln!("bench9p: {msg}");
    exit(1)
}

struct Args {
    files: u32,
    mib: u32,
    ram: bool,
    diod: bool,
    server: Option<String>,
}

fn parse() -> Args {
    let mut a = Args {
        files: 1000,
        mib: 256,
        ram: false,
        diod: true,
        server: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let num = |i: usize| -> u32 {
            argv.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| fail(&format!("{} needs a number", argv[i])))
        };
        match argv[i].as_str() {
            "--files" => {
                a.files = num(i);
                i += 1;
            }
            "--mib" => {
                a.mib = num(i);
                i += 1;
            }
            "--ram" => a.ram = true,
            "--no-diod" => a.diod = false,
            "-h" | "--help" => {
                eprintln!(
                    "usage: scoutvm-bench9p [--files N] [--mib M] [--ram] [--no-diod] [ADDR:PORT]"
                );
                exit(0)
            }
            s if s.starts_with('-') => fail(&format!("unknown option {s}")),
            s => a.server = Some(s.to_string()),
        }
        i += 1;
    }
    a
}

/// Run qemu/p9bench.sh; returns its P9BENCH line.
fn p9bench(a: &Args, guest_opts: &[String], server: &str) -> String {
    p9bench_with(a, "access=user", guest_opts, server).unwrap_or_else(|e| fail(&e))
}

fn p9bench_with(
    a: &Args,
    mount_opts: &str,
    guest_opts: &[String],
    server: &str,
) -> Result<String, String> {
    let script = workspace_root().join("qemu/p9bench.sh");
    let out = Command::new(&script)
        .arg("--files")
        .arg(a.files.to_string())
        .arg("--mib")
        .arg(a.mib.to_string())
        .arg("--mount-opts")
        .arg(mount_opts)
        .arg("--timeout")
        .arg("3600")
        .args(guest_opts)
        .arg(server)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().find(|l| l.starts_with("P9BENCH ")) {
        Some(l) if out.status.success() => Ok(l.to_string()),
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(format!(
                "the bench failed ({}): {text}\n{}",
                out.status,
                tail.join("\n")
            ))
        }
    }
}

/// The diod peer VM's scripts.
fn diod_peer_dir() -> PathBuf {
    std::env::var_os("SCOUTVM_DIOD_PEER")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/peers/diod-vm"))
}

/// Boot the diod peer on a direct link like the appliance's, run the same
/// bench against it, stop it. Its build and disks live under
/// `target/diod-peer` unless `PEER_BUILD_DIR` says otherwise.
fn bench_diod(a: &Args) -> Result<String, String> {
    let dir = diod_peer_dir();
    if !dir.join("peer-start.sh").exists() {
        return Err(format!("no diod peer at {}", dir.display()));
    }
    let build = std::env::var_os("PEER_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/diod-peer"));
    let link = GuestLink::new();
    // Only names the run: the peer is reached over the link.
    let name = free_tcp_port().to_string();
    let peer = |script: &str| {
        let mut c = Command::new(dir.join(script));
        c.arg(&name)
            .env("PEER_BUILD_DIR", &build)
            .env(
                "PEER_NETDEV",
                format!(
                    "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={},\
                     remote.type=inet,remote.host=127.0.0.1,remote.port={}",
                    link.appliance_port, link.guest_port
                ),
            )
            .env(
                "PEER_APPEND",
                format!("peer.ip={APPLIANCE_IP}/24 peer.gw=10.0.3.1"),
            )
            .stdin(Stdio::null());
        c
    };
    let started = peer("peer-start.sh")
        .output()
        .map_err(|e| format!("cannot run peer-start.sh: {e}"))?;
    if !started.status.success() {
        let _ = peer("peer-stop.sh").output();
        return Err(format!(
            "peer-start.sh failed ({}): {}",
            started.status,
            String::from_utf8_lossy(&started.stderr).trim()
        ));
    }
    let mut opts = link.guest_args();
    let server = opts.split_off(opts.len() - 2).pop().expect("server");
    let line = p9bench_with(a, "access=user,aname=/export", &opts, &server);
    let _ = peer("peer-stop.sh").output();
    line
}

fn main() {
    let a = parse();
    let line = match &a.server {
        Some(server) => p9bench(&a, &[], server),
        None => {
            let link = GuestLink::new();
            let meta = TempImage::new("bench9p-meta", 4 << 30).expect("meta image");
            let data = TempImage::new("bench9p-data", 16 << 30).expect("data image");
            let mut cfg = VmConfig::new(Machine::Microvm)
                .disk(&meta.path, "meta")
                .disk(&data.path, "data")
                .net(link.appliance_net())
                .append(&link.appliance_cmdline());
            if a.ram {
                cfg = cfg.append("volume=ram:2048");
            }
            cfg.mem_mb = if a.ram { 3072 } else { 1024 };
            let mut vm = Vm::spawn(&cfg).unwrap_or_else(|e| fail(&format!("start QEMU: {e}")));
            let long = Duration::from_secs(300);
            if !a.ram {
                if let Err(e) = vm.wait_for("no scoutfs volume", long) {
                    fail(&format!("{e}"));
                }
                let out = vm
                    .run_timeout(&format!("mkfs -A -Q 0,{APPLIANCE_IP},7100"), long)
                    .unwrap_or_else(|e| fail(&format!("{e}")));
                if !out.contains("mounted") {
                    fail(&format!("mkfs: {out}"));
                }
            }
            if let Err(e) = vm.wait_for("p9: serving", long) {
                fail(&format!("{e}"));
            }
            let mut opts = link.guest_args();
            // The server address is the positional argument of p9bench.sh.
            let server = opts.split_off(opts.len() - 2).pop().expect("server");
            let line = p9bench(&a, &opts, &server);
            if let Err(e) = vm.poweroff() {
                eprintln!("bench9p: poweroff: {e}");
            }
            line
        }
    };
    let what = match (&a.server, a.ram) {
        (Some(s), _) => format!("server {s}"),
        (None, true) => "ScoutVM appliance, RAM volume".to_string(),
        (None, false) => "ScoutVM appliance, disk volume".to_string(),
    };
    println!("{line}    # {what}");
    if a.diod {
        match bench_diod(&a) {
            Ok(l) => println!("{l}    # diod peer VM (ext4 on virtio-blk), this run"),
            Err(e) => println!("# diod not measured: {e}"),
        }
    }
}
