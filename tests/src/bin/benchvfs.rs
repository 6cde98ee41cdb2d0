//! `scoutvm-benchvfs`: virtio-fs against 9P on one ScoutVM appliance, with
//! QEMU's own virtiofsd serving a host directory as the reference, side
//! by side in one run. Run by `cargo xtask bench-virtiofs`.
//!
//! Boots an appliance (microvm, TCG) on fresh sparse images (mkfs from its
//! shell; `--ram`: a RAM volume) with its 9P and FUSE ports forwarded to
//! free host ports, then for each round runs the same Linux guest bench
//! (`p9bench`: create, stat, readdir, unlink of N files, a streaming
//! write and read of M MiB) three ways, in turn:
//! - `9p`: the guest mounts the appliance over 9P (user networking);
//! - `virtio-fs`: `scoutvm virtiofs` relays the guest's virtio-fs queues to
//!   the appliance's FUSE service;
//! - `virtiofsd`: QEMU's virtiofsd serves a host directory (the host's own
//!   file system, no network, no appliance): what virtio-fs can do here.
//!
//! Prints every `P9BENCH` line, then the medians of each way and the
//! ratios virtio-fs / 9p and virtio-fs / virtiofsd. The machine is shared
//! and noisy: only figures of one run compare.
//!
//! Usage: scoutvm-benchvfs [--files N] [--mib M] [--rounds R] [--ram]
//!        [--virtiofsd PATH]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{exit, Command, Stdio};
use std::time::{Duration, Instant};

use scoutvm_tests::guest::{host_tool, run_linux_guest};
use scoutvm_tests::{free_tcp_port, Machine, Net, Reaped, TempImage, Vm, VmConfig};

fn fail(msg: &str) -> ! {
    eprintln!("benchvfs: {msg}");
    exit(1)
}

struct Args {
    files: u32,
    mib: u32,
    rounds: u32,
    ram: bool,
    virtiofsd: PathBuf,
}

const USAGE: &str =
    "usage: scoutvm-benchvfs [--files N] [--mib M] [--rounds R] [--ram] [--virtiofsd PATH]";

fn parse() -> Args {
    let mut a = Args {
        files: 1000,
        mib: 64,
        rounds: 3,
        ram: false,
        virtiofsd: PathBuf::from("/usr/lib/qemu/virtiofsd"),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = |i: usize| -> &str {
            argv.get(i + 1)
                .map(String::as_str)
                .unwrap_or_else(|| fail(&format!("{} needs a value\n{USAGE}", argv[i])))
        };
        let num = |i: usize| -> u32 {
            match val(i).parse() {
                Ok(n) if n > 0 => n,
                _ => fail(&format!("{} needs a positive number", argv[i])),
            }
        };
        match argv[i].as_str() {
            "--files" => a.files = num(i),
            "--mib" => a.mib = num(i),
            "--rounds" => a.rounds = num(i),
            "--virtiofsd" => a.virtiofsd = PathBuf::from(val(i)),
            "--ram" => {
                a.ram = true;
                i += 1;
                continue;
            }
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                exit(0)
            }
            s => fail(&format!("unknown argument {s}\n{USAGE}")),
        }
        i += 2;
    }
    a
}

/// The `P9BENCH` line of a guest console.
fn bench_line(console: &str) -> Option<String> {
    console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| l.starts_with("P9BENCH "))
        .map(str::to_string)
}

/// The numbers of a `P9BENCH` line by key.
fn fields(line: &str) -> BTreeMap<String, f64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

fn guest_cmd(a: &Args) -> String {
    format!("p9bench /mnt --files {} --mib {}", a.files, a.mib)
}

/// The guest bench over 9P to the appliance's forwarded port.
fn over_9p(a: &Args, p9_port: u16) -> Result<String, String> {
    let args: Vec<String> = [
        "--server",
        &format!("10.0.2.2:{p9_port}"),
        "--mount-opts",
        "access=user",
        "--timeout",
        "3600",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = run_linux_guest(&args, &guest_cmd(a)).map_err(|e| format!("9p guest: {e}"))?;
    match bench_line(&run.console) {
        Some(l) if run.status.success() => Ok(l),
        _ => Err(format!("9p guest failed: {}", run.tail(30))),
    }
}

/// Start a vhost-user-fs backend (`cmd`) and wait for its socket.
fn start_backend(
    mut cmd: Command,
    sock: &Path,
    log: &Path,
    name: &'static str,
) -> Result<Reaped, String> {
    let _ = std::fs::remove_file(sock);
    let logf = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .map_err(|e| format!("start {name}: {e}"))?;
    let mut backend = Reaped { name, child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        if let Ok(Some(st)) = backend.child.try_wait() {
            return Err(format!(
                "{name} exited ({st}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("{name}: no socket {}", sock.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(backend)
}

/// The guest bench on virtio-fs through the backend `cmd` serving `sock`.
fn over_virtiofs(
    a: &Args,
    cmd: Command,
    sock: &Path,
    log: &Path,
    name: &'static str,
) -> Result<String, String> {
    let backend = start_backend(cmd, sock, log, name)?;
    let args: Vec<String> = ["--virtiofs", &sock.to_string_lossy(), "--timeout", "3600"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let run = run_linux_guest(&args, &guest_cmd(a));
    // the backend ends when QEMU goes; stopped by its pid if not
    drop(backend);
    let run = run.map_err(|e| format!("{name} guest: {e}"))?;
    match bench_line(&run.console) {
        Some(l) if run.status.success() => Ok(l),
        _ => Err(format!(
            "{name} guest failed: {}\nbackend: {}",
            run.tail(30),
            std::fs::read_to_string(log).unwrap_or_default()
        )),
    }
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

const KEYS: [(&str, &str); 6] = [
    ("create_ops", "create/s"),
    ("stat_ops", "stat/s"),
    ("readdir_ops", "readdir/s"),
    ("unlink_ops", "unlink/s"),
    ("write_mbs", "write MB/s"),
    ("read_mbs", "read MB/s"),
];

fn main() {
    let a = parse();
    if !a.virtiofsd.exists() {
        fail(&format!(
            "no virtiofsd at {} (Debian: qemu-system-common; --virtiofsd PATH)",
            a.virtiofsd.display()
        ));
    }
    let tool = host_tool();
    let p9_port = free_tcp_port();
    let mut fuse_port = free_tcp_port();
    while fuse_port == p9_port {
        fuse_port = free_tcp_port();
    }
    let meta = TempImage::new("benchvfs-meta", 4 << 30).expect("meta image");
    let data = TempImage::new("benchvfs-data", 16 << 30).expect("data image");
    let mut cfg = VmConfig::new(Machine::Microvm)
        .disk(&meta.path, "meta")
        .disk(&data.path, "data")
        .net(Net::User {
            hostfwd: vec![(p9_port, 564), (fuse_port, 7564)],
        });
    if a.ram {
        cfg = cfg.append("volume=ram:2048");
    }
    cfg.mem_mb = if a.ram { 3072 } else { 1024 };
    let mut vm = Vm::spawn(&cfg).unwrap_or_else(|e| fail(&format!("start QEMU: {e}")));
    let long = Duration::from_secs(300);
    if !a.ram {
        vm.wait_for("no scoutfs volume", long)
            .unwrap_or_else(|e| fail(&format!("{e}")));
        let out = vm
            .run_timeout("mkfs -A -Q 0,10.0.2.15,7100", long)
            .unwrap_or_else(|e| fail(&format!("{e}")));
        if !out.contains("mounted") {
            fail(&format!("mkfs: {out}"));
        }
    }
    vm.wait_for("fuse: serving", long)
        .unwrap_or_else(|e| fail(&format!("{e}")));

    let dir = std::env::temp_dir().join(format!("scoutvm-benchvfs-{}", std::process::id()));
    let share = dir.join("share");
    std::fs::create_dir_all(&share).expect("work dir");
    let mut rows: BTreeMap<&str, Vec<BTreeMap<String, f64>>> = BTreeMap::new();
    for round in 1..=a.rounds {
        let vfs_sock = dir.join("scoutvm.sock");
        let mut scoutvm = Command::new(&tool);
        scoutvm
            .args([
                "virtiofs",
                "--node",
                &format!("127.0.0.1:{fuse_port}"),
                "--socket",
            ])
            .arg(&vfs_sock);
        let ref_sock = dir.join("virtiofsd.sock");
        let mut reference = Command::new(&a.virtiofsd);
        reference
            .arg(format!("--socket-path={}", ref_sock.display()))
            .args([
                "-o",
                &format!("source={}", share.display()),
                "-o",
                "cache=auto",
            ]);
        let ways: [(&str, Result<String, String>); 3] = [
            ("9p", over_9p(&a, p9_port)),
            (
                "virtio-fs",
                over_virtiofs(
                    &a,
                    scoutvm,
                    &vfs_sock,
                    &dir.join("scoutvm.log"),
                    "scoutvm virtiofs",
                ),
            ),
            (
                "virtiofsd",
                over_virtiofs(
                    &a,
                    reference,
                    &ref_sock,
                    &dir.join("virtiofsd.log"),
                    "virtiofsd",
                ),
            ),
        ];
        for (way, r) in ways {
            match r {
                Ok(line) => {
                    println!("round {round} {way:10} {line}");
                    rows.entry(way).or_default().push(fields(&line));
                }
                Err(e) => fail(&format!("round {round} {way}: {e}")),
            }
        }
    }
    if let Err(e) = vm.poweroff() {
        eprintln!("benchvfs: poweroff: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);

    let what = if a.ram { "RAM volume" } else { "disk volume" };
    println!(
        "\nmedians of {} rounds, {} files, {} MiB (appliance: {what}; virtiofsd: a host directory)",
        a.rounds, a.files, a.mib
    );
    print!("{:12}", "");
    for (_, label) in KEYS {
        print!("{label:>12}");
    }
    println!();
    let med = |way: &str, key: &str| -> f64 {
        median(
            rows[way]
                .iter()
                .map(|r| r.get(key).copied().unwrap_or(0.0))
                .collect(),
        )
    };
    for way in ["9p", "virtio-fs", "virtiofsd"] {
        print!("{way:12}");
        for (k, _) in KEYS {
            print!("{:>12.1}", med(way, k));
        }
        println!();
    }
    for (num, den) in [("virtio-fs", "9p"), ("virtio-fs", "virtiofsd")] {
        print!("{:12}", format!("{num}/{den}"));
        for (k, _) in KEYS {
            let d = med(den, k);
            if d > 0.0 {
                print!("{:>11.2}x", med(num, k) / d);
            } else {
                print!("{:>12}", "-");
            }
        }
        println!();
    }
}
