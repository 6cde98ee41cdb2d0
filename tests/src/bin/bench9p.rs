//! `scoutvm-bench9p`: the 9P bench against a ScoutVM appliance, next to
//! the diod baseline. Run by `cargo xtask bench-9p`.
//!
//! Without an address it boots an appliance (microvm, TCG) on fresh sparse
//! images, makes a volume with the shell's `mkfs`, links a Linux guest to
//! it over `-netdev dgram` and runs `qemu/p9bench.sh` (an mdtest-like
//! create/stat/readdir/unlink pass and a streaming write and read) on the
//! mount; with `ADDR:PORT` it runs the same bench against that server.
//! Prints the guest's `P9BENCH ...` line, then the baseline.
//!
//! Usage: scoutvm-bench9p [--files N] [--mib M] [--ram] [ADDR:PORT]

use std::process::{exit, Command};
use std::time::Duration;

use scoutvm_tests::guest::{GuestLink, APPLIANCE_IP};
use scoutvm_tests::{workspace_root, Machine, TempImage, Vm, VmConfig};

/// diod 1.0.24 on the host, same guest and bench (docs/9p.md).
const DIOD_BASELINE: &str = "P9BENCH files=1000 create_ops=215 stat_ops=384 readdir_ops=88953 \
                             unlink_ops=310 mib=256 write_mbs=28.5 read_mbs=76.1";

fn fail(msg: &str) -> ! {
    eprintln!("bench9p: {msg}");
    exit(1)
}

struct Args {
    files: u32,
    mib: u32,
    ram: bool,
    server: Option<String>,
}

fn parse() -> Args {
    let mut a = Args {
        files: 1000,
        mib: 256,
        ram: false,
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
            "-h" | "--help" => {
                eprintln!("usage: scoutvm-bench9p [--files N] [--mib M] [--ram] [ADDR:PORT]");
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
    let script = workspace_root().join("qemu/p9bench.sh");
    let out = Command::new(&script)
        .arg("--files")
        .arg(a.files.to_string())
        .arg("--mib")
        .arg(a.mib.to_string())
        .arg("--mount-opts")
        .arg("access=user")
        .arg("--timeout")
        .arg("3600")
        .args(guest_opts)
        .arg(server)
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", script.display())));
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().find(|l| l.starts_with("P9BENCH ")) {
        Some(l) if out.status.success() => l.to_string(),
        _ => fail(&format!("the bench failed ({}): {text}", out.status)),
    }
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
    println!("{DIOD_BASELINE}    # diod baseline (docs/9p.md)");
}
