//! `cargo xtask bench-image [--runs N]`: boot to the shell prompt on q35
//! from the UEFI disk image (OVMF, `\EFI\BOOT\BOOTX64.EFI`, the PVH kernel)
//! against `-kernel` (QEMU's PVH loading through SeaBIOS), medians of N
//! runs (default 3), from QEMU spawn, timed on the host as lines appear on
//! the serial console:
//! - firmware: spawn to the loader's first line (UEFI) or to the kernel's
//!   first line (`-kernel`: SeaBIOS and the PVH option ROM);
//! - loader: its first line to "entering the kernel" (reading the ESP,
//!   ExitBootServices);
//! - kernel: from there to the prompt.
//!
//! Then the image sizes. Prints a table and one `BENCH_IMAGE` line.

use std::path::Path;
use std::time::Duration;

use scoutvm_tests::{
    disk_image_path, standard_vm, Machine, TempImage, UefiBoot, Vm, OVMF_CODE, OVMF_VARS, TIMEOUT,
};

/// The kernel's first console line (its boot banner).
const KERNEL_FIRST: &str = "scoutvm_kernel::appliance: ScoutVM";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (firmware, loader, kernel, total) in ms of one boot.
fn boot_once(uefi: Option<UefiBoot>) -> (f64, f64, f64, f64) {
    let meta = TempImage::new("bench-meta", 256 << 20).expect("image");
    let data = TempImage::new("bench-data", 256 << 20).expect("image");
    let mut cfg = standard_vm(Machine::Q35, &meta, &data);
    let is_uefi = uefi.is_some();
    if let Some(u) = uefi {
        cfg = cfg.uefi(u);
    }
    let mut vm = Vm::spawn(&cfg).expect("spawn qemu");
    let (fw, loader_end) = if is_uefi {
        vm.wait_for("scoutvm loader: start", TIMEOUT)
            .expect("loader");
        let fw = ms(vm.elapsed());
        vm.wait_for("scoutvm loader: entering the kernel", TIMEOUT)
            .expect("loader end");
        (fw, ms(vm.elapsed()))
    } else {
        vm.wait_for(KERNEL_FIRST, TIMEOUT).expect("kernel banner");
        let fw = ms(vm.elapsed());
        (fw, fw)
    };
    vm.wait_prompt(TIMEOUT).expect("prompt");
    let total = ms(vm.elapsed());
    vm.poweroff().expect("poweroff");
    (fw, loader_end - fw, total - loader_end, total)
}

fn medians(runs: usize, mut one: impl FnMut() -> (f64, f64, f64, f64)) -> [f64; 4] {
    let all: Vec<_> = (0..runs).map(|_| one()).collect();
    [
        median(all.iter().map(|r| r.0).collect()),
        median(all.iter().map(|r| r.1).collect()),
        median(all.iter().map(|r| r.2).collect()),
        median(all.iter().map(|r| r.3).collect()),
    ]
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<usize>().expect("--runs N"))
        .unwrap_or(3)
        .max(1);
    if !Path::new(OVMF_CODE).exists() {
        eprintln!("bench-image: OVMF is not installed ({OVMF_CODE}); apt-get install ovmf");
        std::process::exit(1);
    }
    let img = disk_image_path();
    let image = TempImage::new("bench-uefi", 0).expect("temp");
    std::fs::copy(&img, &image.path).expect("copy image");
    let vars = TempImage::new("bench-vars", 0).expect("temp");
    let uefi = || {
        std::fs::copy(OVMF_VARS, &vars.path).expect("copy OVMF vars");
        UefiBoot {
            code: OVMF_CODE.into(),
            vars: vars.path.clone(),
            image: image.path.clone(),
            serial: String::new(),
        }
    };
    let k = medians(runs, || boot_once(None));
    let u = medians(runs, || boot_once(Some(uefi())));

    let dir = img.parent().expect("target/scoutvm");
    let elf = size(&dir.join("scoutvm.elf"));
    let raw = size(&img);
    let raw_alloc = allocated(&img);
    let qcow = size(&dir.join("scoutvm.qcow2"));
    println!("ScoutVM boot paths on q35 (-accel tcg, median of {runs}; ms from QEMU spawn)");
    println!(
        "  {:<28} {:>10} {:>10} {:>10} {:>10}",
        "", "firmware", "loader", "kernel", "total"
    );
    println!(
        "  {:<28} {:>10.1} {:>10} {:>10.1} {:>10.1}",
        "-kernel (SeaBIOS, PVH)", k[0], "-", k[2], k[3]
    );
    println!(
        "  {:<28} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
        "disk image (OVMF, loader)", u[0], u[1], u[2], u[3]
    );
    println!("  sizes: ELF {elf} B; scoutvm.img {raw} B raw ({raw_alloc} B allocated); scoutvm.qcow2 {qcow} B");
    println!(
        "BENCH_IMAGE kernel_total_ms={:.1} kernel_fw_ms={:.1} uefi_total_ms={:.1} uefi_fw_ms={:.1} uefi_loader_ms={:.1} uefi_kernel_ms={:.1} elf_bytes={elf} img_bytes={raw} qcow2_bytes={qcow}",
        k[3], k[0], u[3], u[0], u[1], u[2]
    );
}
