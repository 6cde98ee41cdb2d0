//! `cargo xtask`: build, run, test and bench the appliance.
//!
//! - `build`: the bootable ELF at `target/scoutvm/scoutvm.elf`.
//! - `image [--cmdline FILE] [--esp-mib N]`: the UEFI disk image
//!   `target/scoutvm/scoutvm.img` (raw, GPT, one FAT EFI system partition
//!   with `\EFI\BOOT\BOOTX64.EFI`, `scoutvm.elf` and `cmdline.txt`) and
//!   `scoutvm.qcow2` (docs/image.md).
//! - `run [--q35] [--meta IMG --data IMG] [-- CMDLINE...]`: build, then
//!   boot one node through `qemu/run.sh` (serial on this terminal). Blank
//!   or missing images are made (sparse) and formatted with the host
//!   `scoutvm mkfs` first, so the node mounts its volume and serves 9P
//!   (forwarded to 127.0.0.1:5640).
//! - `test`: the whole CI. Installs what a fresh machine lacks (QEMU, the
//!   rustup target, cargo-deny), then fmt, clippy (host and appliance),
//!   the licence check, the ELF and the UEFI disk image, and every test in
//!   the workspace.
//! - `bench`: boot time, image size, idle CPU, virtio-blk MB/s.
//! - `bench-image [--runs N]`: boot to the shell prompt from the UEFI disk
//!   image under OVMF against `-kernel` (PVH) on q35, split into the
//!   firmware's, the loader's and the kernel's share; image sizes.
//! - `bench-9p [ADDR:PORT] [--files N] [--mib M] [--ram] [--no-diod]`:
//!   the 9P bench from a Linux guest (mdtest-like pass, streaming write
//!   and read) against a freshly booted appliance, or the server at
//!   ADDR:PORT, then against the diod peer VM in the same run.
//! - `bench-virtiofs [--files N] [--mib M] [--rounds R] [--ram]`: the same
//!   guest bench over virtio-fs (`scoutvm virtiofs` to the appliance's FUSE
//!   service) and over 9P on one appliance, with QEMU's virtiofsd serving
//!   a host directory as the reference, rounds alternating; medians and
//!   ratios.
//! - `bench-9p-load [--rounds R] [--seconds S] [--msize N] [--ops LIST]
//!   [--no-peer] [--ram]`: the server alone: `scoutvm p9load` from this
//!   host against a fresh appliance and the diod peer VM, alternating,
//!   over user networking, at 1 and 16 requests outstanding; medians and
//!   ratios (docs/9p.md).
//! - `bench-cluster [--nodes N] [--seconds S] [--minutes M] [--outstanding K]`:
//!   many writers (issue 12): a cluster of N appliances loaded from this
//!   host, creates per second through 1..N nodes at once, then the log
//!   trees and log-merge items per second over an M-minute write.
//! - `fuzz [--iterations N] [--seed S] [--target NAME]...`: the wire
//!   decoders (9P codec and framer, cluster frames and payloads) fuzzed by
//!   `scoutvm-fuzz` (release build, stable toolchain): one line per target
//!   with its inputs and executions per second.
//! - `sim [--seeds N] [--seed S] [--nodes K] [--steps X] [--minutes M]
//!   [--workload posix|crash|session|all] ...`: the deterministic simulator
//!   (`scoutvm-sim`, release build; docs/simulator.md). One line per run
//!   with its seed and hash, the replay command of every failure, and the
//!   simulated seconds per host second.
//!
//! Every step prints what it runs; the first failure stops with non-zero.
use std::path::{Path, PathBuf};
use std::process::{exit, Command, Stdio};

const TARGET: &str = "x86_64-unknown-none";
const UEFI_TARGET: &str = "x86_64-unknown-uefi";
/// Default size of the EFI system partition: room for a few kernels.
const ESP_MIB: u64 = 32;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("image/ has a parent")
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn fail(msg: &str) -> ! {
    eprintln!("xtask: {msg}");
    exit(1)
}

/// Run a command in the workspace root, echoing it; stop on failure.
fn run(program: &str, args: &[&str]) {
    eprintln!("xtask: $ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(root())
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run {program}: {e}")));
    if !status.success() {
        fail(&format!("`{program} {}` failed ({status})", args.join(" ")));
    }
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn ensure_qemu() {
    let ovmf = Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").exists();
    if succeeds("qemu-system-x86_64", &["--version"]) && ovmf {
        return;
    }
    eprintln!(
        "xtask: qemu-system-x86_64 or OVMF is missing; installing Debian's qemu-system-x86 and ovmf"
    );
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let (prog, pre): (&str, Vec<&str>) = if root_user {
        ("apt-get", vec![])
    } else {
        ("sudo", vec!["apt-get"])
    };
    let mut update = pre.clone();
    update.extend(["update", "-q"]);
    run(prog, &update);
    let mut install = pre;
    // ovmf: the UEFI firmware the disk-image test boots (tests/tests/image.rs)
    install.extend(["install", "-y", "-q", "qemu-system-x86", "ovmf"]);
    run(prog, &install);
    if !succeeds("qemu-system-x86_64", &["--version"]) {
        fail("qemu-system-x86_64 still missing after installing qemu-system-x86");
    }
}

fn ensure_target() {
    ensure_rust_target(TARGET);
}

fn ensure_rust_target(target: &str) {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == target)
        })
        .unwrap_or(false);
    if !installed {
        eprintln!("xtask: rust target {target} is missing; adding it with rustup");
        run("rustup", &["target", "add", target]);
    }
}

fn ensure_cargo_deny() {
    if succeeds(&cargo(), &["deny", "--version"]) {
        return;
    }
    eprintln!("xtask: cargo-deny is missing; installing it (takes a few minutes)");
    run(&cargo(), &["install", "cargo-deny", "--locked"]);
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(p) => {
            let p = PathBuf::from(p);
            if p.is_relative() {
                root().join(p)
            } else {
                p
            }
        }
        None => root().join("target"),
    }
}

fn elf_path() -> PathBuf {
    root().join("target/scoutvm/scoutvm.elf")
}

fn build() -> PathBuf {
    ensure_target();
    run(
        &cargo(),
        &[
            "build",
            "--release",
            "-p",
            "scoutvm-kernel",
            "--bin",
            "scoutvm-kernel",
            "--target",
            TARGET,
        ],
    );
    let built = target_dir().join(TARGET).join("release/scoutvm-kernel");
    let out = elf_path();
    std::fs::create_dir_all(out.parent().expect("has parent"))
        .unwrap_or_else(|e| fail(&format!("mkdir target/scoutvm: {e}")));
    // The boot image carries no symbol table (it is a fifth of the file and
    // QEMU never reads it); the unstripped build stays where cargo put it
    // for `addr2line -e` on a RIP from an exception report. objcopy comes
    // with binutils, which the host linker needs anyway; without it the
    // image is copied whole.
    let stripped = Command::new("objcopy")
        .arg("--strip-all")
        .arg(&built)
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        eprintln!("xtask: objcopy not available, the image keeps its symbols");
        std::fs::copy(&built, &out)
            .unwrap_or_else(|e| fail(&format!("copy {}: {e}", built.display())));
    }
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    eprintln!("xtask: built {} ({} bytes)", out.display(), size);
    out
}

/// Build the UEFI loader; returns the path of its `.efi`.
fn build_loader() -> PathBuf {
    ensure_rust_target(UEFI_TARGET);
    run(
        &cargo(),
        &[
            "build",
            "--release",
            "-p",
            "scoutvm-loader",
            "--bin",
            "scoutvm-loader",
            "--target",
            UEFI_TARGET,
        ],
    );
    target_dir()
        .join(UEFI_TARGET)
        .join("release/scoutvm-loader.efi")
}

/// Write `data` to `path` leaving all-zero 64 KiB runs as holes.
fn write_sparse(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::create(path)?;
    for chunk in data.chunks(64 << 10) {
        if chunk.iter().all(|&b| b == 0) {
            f.seek(SeekFrom::Current(chunk.len() as i64))?;
        } else {
            f.write_all(chunk)?;
        }
    }
    f.set_len(data.len() as u64)
}

/// `cargo xtask image`: the kernel and the loader on a GPT disk with one
/// EFI system partition, raw and qcow2.
fn make_image(args: &[String]) -> PathBuf {
    use scoutvm_image::disk_image::{build_disk, EspFile};
    let elf = build();
    let loader = build_loader();
    let read =
        |p: &Path| std::fs::read(p).unwrap_or_else(|e| fail(&format!("read {}: {e}", p.display())));
    let cmdline_path = flag_value(args, "--cmdline")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("loader/cmdline.txt"));
    let esp_mib = match flag_value(args, "--esp-mib") {
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|m| (1..=4096).contains(m))
            .unwrap_or_else(|| fail(&format!("--esp-mib {v}: want 1..=4096"))),
        None => ESP_MIB,
    };
    let (elf_bytes, loader_bytes, cmdline) = (read(&elf), read(&loader), read(&cmdline_path));
    // the loader would boot with its default instead: refuse it here
    let mut words = [0u8; scoutvm_loader::cmdline::MAX];
    if let Err(e) = scoutvm_loader::cmdline::parse(&cmdline, &mut words) {
        let mut why = [0u8; 80];
        let n = e.describe(&mut why);
        fail(&format!(
            "{}: {}",
            cmdline_path.display(),
            String::from_utf8_lossy(&why[..n])
        ));
    }
    let files = [
        EspFile {
            path: "EFI/BOOT/BOOTX64.EFI",
            data: &loader_bytes,
        },
        EspFile {
            path: "scoutvm.elf",
            data: &elf_bytes,
        },
        EspFile {
            path: "cmdline.txt",
            data: &cmdline,
        },
    ];
    let img = build_disk(&files, esp_mib << 20).unwrap_or_else(|e| fail(&e));
    let raw = root().join("target/scoutvm/scoutvm.img");
    write_sparse(&raw, &img).unwrap_or_else(|e| fail(&format!("write {}: {e}", raw.display())));
    eprintln!(
        "xtask: wrote {} ({} MiB raw: ESP {} MiB with loader {} B, kernel {} B, cmdline.txt {} B)",
        raw.display(),
        img.len() >> 20,
        esp_mib,
        loader_bytes.len(),
        elf_bytes.len(),
        cmdline.len()
    );
    let qcow = root().join("target/scoutvm/scoutvm.qcow2");
    let converted = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .status()
        .is_ok_and(|s| s.success());
    if converted {
        let size = std::fs::metadata(&qcow).map(|m| m.len()).unwrap_or(0);
        eprintln!("xtask: wrote {} ({size} bytes)", qcow.display());
    } else {
        eprintln!(
            "xtask: qemu-img is not available: no scoutvm.qcow2 (the raw image boots as it is)"
        );
    }
    raw
}

/// The value of `--flag VALUE` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let mut it = args.iter().take_while(|a| a.as_str() != "--");
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().map(|s| s.as_str());
        }
    }
    None
}

/// Build the host `scoutvm` tool; returns its path.
fn host_tool() -> PathBuf {
    run(
        &cargo(),
        &[
            "build",
            "--quiet",
            "--release",
            "-p",
            "scoutvm-image",
            "--bin",
            "scoutvm",
        ],
    );
    target_dir().join("release/scoutvm")
}

/// Make sure `meta`/`data` exist and hold a volume: create missing images
/// (sparse) and run the host mkfs on blank ones.
fn ensure_volume(meta: &Path, data: &Path) {
    for (img, size) in [(meta, 4u64 << 30), (data, 16u64 << 30)] {
        if !img.exists() {
            if let Some(dir) = img.parent() {
                std::fs::create_dir_all(dir)
                    .unwrap_or_else(|e| fail(&format!("mkdir {}: {e}", dir.display())));
            }
            let f = std::fs::File::create(img)
                .unwrap_or_else(|e| fail(&format!("create {}: {e}", img.display())));
            f.set_len(size)
                .unwrap_or_else(|e| fail(&format!("size {}: {e}", img.display())));
            eprintln!(
                "xtask: created {} ({} GiB, sparse)",
                img.display(),
                size >> 30
            );
        }
    }
    let tool = host_tool();
    let has_volume = Command::new(&tool)
        .arg("print")
        .arg(meta)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if has_volume {
        return;
    }
    eprintln!("xtask: no volume on {}; making one", meta.display());
    let (m, d) = (meta.display().to_string(), data.display().to_string());
    // 10.0.2.15 is the node's DHCP address under QEMU user networking.
    run(
        &tool.display().to_string(),
        &["mkfs", "-A", "-Q", "0,10.0.2.15,7100", &m, &d],
    );
}

fn cmd_run(args: &[String]) {
    ensure_qemu();
    build();
    let meta = flag_value(args, "--meta")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/scoutvm/meta.img"));
    let data = flag_value(args, "--data")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/scoutvm/data.img"));
    ensure_volume(&meta, &data);
    eprintln!(
        "xtask: booting; 9P is on 127.0.0.1:5640. From a Linux guest:\n\
         xtask:   qemu/linux-guest.sh run --server 10.0.2.2:5640 --mount-opts access=user -- 'ls -la /mnt'"
    );
    let script = root().join("qemu/run.sh");
    let status = Command::new(&script)
        .args(args)
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", script.display())));
    // 33 is the appliance's clean poweroff through isa-debug-exit.
    match status.code() {
        Some(0) | Some(33) => {}
        Some(c) => fail(&format!("appliance exited with status {c}")),
        None => fail("QEMU was killed by a signal"),
    }
}

fn cmd_test() {
    ensure_qemu();
    ensure_target();
    ensure_rust_target(UEFI_TARGET);
    ensure_cargo_deny();
    let c = cargo();
    run(&c, &["fmt", "--all", "--", "--check"]);
    run(
        &c,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    );
    run(
        &c,
        &[
            "clippy",
            "--release",
            "-p",
            "scoutvm-kernel",
            "--bin",
            "scoutvm-kernel",
            "--target",
            TARGET,
            "--",
            "-D",
            "warnings",
        ],
    );
    run(
        &c,
        &[
            "clippy",
            "--release",
            "-p",
            "scoutvm-loader",
            "--bin",
            "scoutvm-loader",
            "--target",
            UEFI_TARGET,
            "--",
            "-D",
            "warnings",
        ],
    );
    run(&c, &["deny", "check", "licenses"]);
    let elf = build();
    let img = make_image(&[]);
    let nextest = succeeds(&c, &["nextest", "--version"]);
    let args: Vec<&str> = if nextest {
        vec!["nextest", "run", "--workspace", "--no-fail-fast"]
    } else {
        vec!["test", "--workspace", "--no-fail-fast"]
    };
    eprintln!(
        "xtask: $ {c} {} (SCOUTVM_ELF={})",
        args.join(" "),
        elf.display()
    );
    let status = Command::new(&c)
        .args(&args)
        .env("SCOUTVM_ELF", &elf)
        .env("SCOUTVM_IMG", &img)
        .current_dir(root())
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run tests: {e}")));
    if !status.success() {
        fail("tests failed");
    }
    eprintln!("xtask: all checks passed");
}

/// Build the image and run one of the bench binaries of `scoutvm-tests`
/// (release) against it, passing `args` through.
fn run_bench_bin(bin: &str, args: &[String]) {
    ensure_qemu();
    let elf = build();
    // the boot-path bench also boots the UEFI disk image
    let img = if bin == "scoutvm-bench-image" {
        make_image(&[])
    } else {
        PathBuf::new()
    };
    let c = cargo();
    let mut a: Vec<&str> = vec![
        "run",
        "--quiet",
        "--release",
        "-p",
        "scoutvm-tests",
        "--bin",
        bin,
        "--",
    ];
    a.extend(args.iter().map(|s| s.as_str()));
    eprintln!("xtask: $ {c} {}", a.join(" "));
    let status = Command::new(&c)
        .args(&a)
        .env("SCOUTVM_ELF", &elf)
        .env("SCOUTVM_IMG", &img)
        .current_dir(root())
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run {bin}: {e}")));
    if !status.success() {
        fail(&format!("{bin} failed"));
    }
}

/// Run the simulator (release) with `args` passed through.
fn cmd_sim(args: &[String]) {
    let c = cargo();
    let mut a: Vec<&str> = vec![
        "run",
        "--quiet",
        "--release",
        "-p",
        "scoutvm-tests",
        "--bin",
        "scoutvm-sim",
        "--",
    ];
    a.extend(args.iter().map(|s| s.as_str()));
    eprintln!("xtask: $ {c} {}", a.join(" "));
    let status = Command::new(&c)
        .args(&a)
        .current_dir(root())
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run scoutvm-sim: {e}")));
    if !status.success() {
        fail("simulator runs failed (see the replay commands above)");
    }
}

/// The stable-toolchain fuzzer of the wire decoders (no QEMU, no image).
fn cmd_fuzz(args: &[String]) {
    let c = cargo();
    let mut a: Vec<&str> = vec![
        "run",
        "--quiet",
        "--release",
        "-p",
        "scoutvm-tests",
        "--bin",
        "scoutvm-fuzz",
        "--",
    ];
    a.extend(args.iter().map(|s| s.as_str()));
    eprintln!("xtask: $ {c} {}", a.join(" "));
    let status = Command::new(&c)
        .args(&a)
        .current_dir(root())
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run scoutvm-fuzz: {e}")));
    if !status.success() {
        fail("fuzzing found a failure (input saved under target/)");
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo xtask <command>\n\
         \n  build                         build target/scoutvm/scoutvm.elf\
         \n  image [--cmdline FILE] [--esp-mib N]\
         \n                                the UEFI disk image target/scoutvm/scoutvm.img and .qcow2\
         \n  run [--q35] [--meta IMG] [--data IMG] [-- CMDLINE...]\
         \n                                boot one appliance on this terminal\
         \n  test                          the whole CI (fmt, clippy, deny, image, tests)\
         \n  bench [--quick]               boot time, size, idle CPU, disk MB/s\
         \n  bench-image [--runs N]        boot to prompt: UEFI disk image vs -kernel, image sizes\
         \n  bench-9p [ADDR:PORT] [--files N] [--mib M] [--ram] [--no-diod]\
         \n                                9P bench from a Linux guest (boots an appliance,\
         \n                                then the diod peer VM)\
         \n  bench-virtiofs [--files N] [--mib M] [--rounds R] [--ram]\
         \n                                virtio-fs vs 9P on one appliance, QEMU's virtiofsd\
         \n                                on a host directory as the reference\
         \n  bench-9p-load [--rounds R] [--seconds S] [--msize N] [--ops LIST] [--no-peer] [--ram]\
         \n                                host-native 9P load: appliance vs diod peer VM\
         \n  bench-cluster [--nodes N] [--seconds S] [--minutes M] [--outstanding K]\
         \n                                creates/s through 1..N cluster nodes, log trees over a write\
         \n  fuzz [--iterations N] [--seed S] [--target p9|p9_framing|cluster|cluster_auth|fuse]...\
         \n                                fuzz the wire decoders (1000000 inputs each)\
         \n  sim [--seeds N] [--seed S] [--nodes K] [--steps X] [--minutes M]\
         \n      [--workload posix|crash|session|all] [--trace] ...\
         \n                                the deterministic simulator (docs/simulator.md)"
    );
    exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { usage() };
    match cmd.as_str() {
        "build" => {
            build();
        }
        "image" => {
            make_image(&args[1..]);
        }
        "run" => cmd_run(&args[1..]),
        "test" => cmd_test(),
        "bench" => run_bench_bin("scoutvm-bench", &args[1..]),
        "bench-9p" => run_bench_bin("scoutvm-bench9p", &args[1..]),
        "bench-virtiofs" => run_bench_bin("scoutvm-benchvfs", &args[1..]),
        "bench-9p-load" => run_bench_bin("scoutvm-bench9p-load", &args[1..]),
        "bench-image" => run_bench_bin("scoutvm-bench-image", &args[1..]),
        "bench-cluster" => run_bench_bin("scoutvm-bench-cluster", &args[1..]),
        "sim" => cmd_sim(&args[1..]),
        "fuzz" => cmd_fuzz(&args[1..]),
        _ => usage(),
    }
}
