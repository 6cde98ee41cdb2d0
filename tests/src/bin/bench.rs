//! `cargo xtask bench`: the appliance's figures, measured from the host.
//! Boot to shell prompt (median of N runs, microvm and q35, from QEMU
//! spawn to the prompt on serial), ELF size, host CPU of an idle appliance
//! over 10 s (utime+stime of the QEMU process from /proc; blank disks, then
//! a mounted volume serving 9P), and virtio-blk
//! sequential write/read MB/s measured inside by `blkbench`. Prints a
//! table and one machine-readable `BENCH` line. `--quick` does fewer runs.

use std::time::Duration;

use scoutvm_tests::{elf_path, standard_vm, Machine, TempImage, Vm, VmConfig, TIMEOUT};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn boot_ms(machine: Machine, runs: usize) -> (f64, f64, f64) {
    let meta = TempImage::new("bench-meta", 256 << 20).expect("image");
    let data = TempImage::new("bench-data", 256 << 20).expect("image");
    let mut times = Vec::new();
    for _ in 0..runs {
        let cfg = standard_vm(machine, &meta, &data);
        let mut vm = Vm::spawn(&cfg).expect("spawn qemu");
        vm.wait_prompt(TIMEOUT).expect("prompt");
        times.push(vm.elapsed().as_secs_f64() * 1e3);
        vm.poweroff().expect("poweroff");
    }
    let min = times.iter().cloned().fold(f64::MAX, f64::min);
    let max = times.iter().cloned().fold(0.0, f64::max);
    (median(times), min, max)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Host CPU of an idle appliance: `mounted` makes and mounts a volume with
/// the shell's `mkfs` first, so the leader's server, the client's commit
/// timer and the 9P listener all run and should still leave it in `hlt`.
fn idle_cpu_percent(window: Duration, mounted: bool) -> f64 {
    let size = if mounted { 2 << 30 } else { 64 << 20 };
    let meta = TempImage::new("bench-meta", size).expect("image");
    let data = TempImage::new("bench-data", size).expect("image");
    let mut vm = Vm::spawn(&standard_vm(Machine::Microvm, &meta, &data)).expect("spawn qemu");
    vm.wait_for("no scoutfs volume", TIMEOUT)
        .expect("the volume service reports blank disks");
    if mounted {
        // Slirp's DHCP hands out 10.0.2.15; the quorum slot names it.
        let out = vm
            .run_timeout("mkfs -A -Q 0,10.0.2.15,7100", Duration::from_secs(300))
            .expect("mkfs");
        assert!(out.contains("mounted vda"), "mkfs did not mount: {out}");
    }
    // Let DHCP, the first commit and the leader settle.
    std::thread::sleep(Duration::from_secs(5));
    let t0 = cpu_ticks(vm.pid());
    std::thread::sleep(window);
    let t1 = cpu_ticks(vm.pid());
    vm.poweroff().expect("poweroff");
    (t1 - t0) as f64 / clk_tck() / window.as_secs_f64() * 100.0
}

fn parse_mbps(out: &str, what: &str) -> f64 {
    out.lines()
        .find(|l| l.contains(&format!(" {what}: ")))
        .and_then(|l| l.split("= ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no {what} figure in: {out}"))
}

fn blk_mbps(machine: Machine, mib: u32) -> (f64, f64) {
    let scratch = TempImage::new("bench-scratch", 512 << 20).expect("image");
    let cfg = VmConfig::new(machine).disk(&scratch.path, "scratch");
    let mut vm = Vm::spawn(&cfg).expect("spawn qemu");
    vm.wait_prompt(TIMEOUT).expect("prompt");
    let out = vm
        .run_timeout(
            &format!("blkbench vda {mib} write"),
            Duration::from_secs(300),
        )
        .expect("blkbench");
    vm.poweroff().expect("poweroff");
    (parse_mbps(&out, "write"), parse_mbps(&out, "read"))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 3 } else { 10 };
    let idle_window = Duration::from_secs(if quick { 5 } else { 10 });
    let mib = if quick { 64 } else { 256 };
    let elf = elf_path();
    let elf_bytes = std::fs::metadata(&elf).expect("elf").len();

    let (micro, micro_min, micro_max) = boot_ms(Machine::Microvm, runs);
    let (q35, q35_min, q35_max) = boot_ms(Machine::Q35, runs);
    let idle = idle_cpu_percent(idle_window, false);
    let idle_mounted = idle_cpu_percent(idle_window, true);
    let (mw, mr) = blk_mbps(Machine::Microvm, mib);
    let (qw, qr) = blk_mbps(Machine::Q35, mib);

    println!("ScoutVM bench ({} boots per machine, -accel tcg)", runs);
    println!("  {:<40} {:>12}", "measure", "value");
    println!(
        "  {:<40} {:>9.1} ms  (min {:.1}, max {:.1})",
        "boot to prompt, microvm (median)", micro, micro_min, micro_max
    );
    println!(
        "  {:<40} {:>9.1} ms  (min {:.1}, max {:.1})",
        "boot to prompt, q35 (median)", q35, q35_min, q35_max
    );
    println!(
        "  {:<40} {:>9} bytes ({:.0} KiB)",
        "ELF size",
        elf_bytes,
        elf_bytes as f64 / 1024.0
    );
    println!(
        "  {:<40} {:>9.2} % of a core over {} s",
        "idle appliance host CPU (microvm)",
        idle,
        idle_window.as_secs()
    );
    println!(
        "  {:<40} {:>9.2} % of a core over {} s",
        "idle, volume mounted + serving 9P",
        idle_mounted,
        idle_window.as_secs()
    );
    println!(
        "  {:<40} {:>9.1} MB/s ({} MiB, incl. flush)",
        "virtio-blk seq write, microvm (mmio)", mw, mib
    );
    println!(
        "  {:<40} {:>9.1} MB/s",
        "virtio-blk seq read, microvm (mmio)", mr
    );
    println!(
        "  {:<40} {:>9.1} MB/s ({} MiB, incl. flush)",
        "virtio-blk seq write, q35 (pci)", qw, mib
    );
    println!(
        "  {:<40} {:>9.1} MB/s",
        "virtio-blk seq read, q35 (pci)", qr
    );
    println!(
        "BENCH boot_ms_microvm={micro:.1} boot_ms_q35={q35:.1} elf_bytes={elf_bytes} idle_cpu_pct={idle:.2} idle_mounted_cpu_pct={idle_mounted:.2} \
         blk_write_mbps_microvm={mw:.1} blk_read_mbps_microvm={mr:.1} blk_write_mbps_q35={qw:.1} blk_read_mbps_q35={qr:.1}"
    );
}
