//! The UEFI disk image (`cargo xtask image`, docs/image.md) boots under
//! QEMU q35 + OVMF: the loader reads `cmdline.txt` from the ESP, the kernel
//! finds its disks and network card on PCI, makes and mounts a volume on
//! two blank disks and powers off cleanly; a bad `cmdline.txt` is reported
//! and the default used; the boot disk (GPT) is never made a volume even
//! when its serial says `meta`. Skipped, with a message, when Debian's
//! `ovmf` package is not installed. Each boot takes ~10-20 s under TCG.

use std::path::Path;

use scoutvm_image::disk_image::{esp_range, write_esp_file};
use scoutvm_tests::{
    disk_image_path, Machine, Net, TempImage, UefiBoot, Vm, VmConfig, OVMF_CODE, OVMF_VARS, TIMEOUT,
};

fn ovmf_present() -> bool {
    if Path::new(OVMF_CODE).exists() && Path::new(OVMF_VARS).exists() {
        return true;
    }
    eprintln!("SKIPPED: OVMF is not installed ({OVMF_CODE}); apt-get install ovmf");
    false
}

/// A private copy of the image with `cmdline` as its cmdline.txt, and of
/// the OVMF variable store.
struct Boot {
    image: TempImage,
    vars: TempImage,
}

impl Boot {
    fn new(cmdline: &[u8]) -> Boot {
        let mut img = std::fs::read(disk_image_path()).unwrap();
        write_esp_file(&mut img, "cmdline.txt", cmdline).unwrap();
        let image = TempImage::new("uefi-boot", 0).unwrap();
        std::fs::write(&image.path, &img).unwrap();
        let vars = TempImage::new("ovmf-vars", 0).unwrap();
        std::fs::copy(OVMF_VARS, &vars.path).unwrap();
        Boot { image, vars }
    }

    fn uefi(&self, serial: &str) -> UefiBoot {
        UefiBoot {
            code: OVMF_CODE.into(),
            vars: self.vars.path.clone(),
            image: self.image.path.clone(),
            serial: serial.into(),
        }
    }
}

#[test]
fn uefi_image_boots_makes_a_volume_and_powers_off() {
    if !ovmf_present() {
        return;
    }
    let boot = Boot::new(b"# written by the test\nnode=imgtest\n  log=info # comment\n");
    let head_before = boot.image.read_at(0, 64 << 10).unwrap();
    let meta = TempImage::new("meta", 4 << 30).unwrap();
    let data = TempImage::new("data", 1 << 30).unwrap();
    let cfg = VmConfig::new(Machine::Q35)
        .node("imgtest")
        .uefi(boot.uefi(""))
        .disk(&meta.path, "meta")
        .disk(&data.path, "data")
        .net(Net::User {
            hostfwd: Vec::new(),
        });
    let mut vm = Vm::spawn(&cfg).unwrap();
    vm.wait_for(
        "scoutvm loader: command line: node=imgtest log=info",
        TIMEOUT,
    )
    .unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    let out = vm.run("devices").unwrap();
    assert!(
        out.contains("vda") && out.contains("GPT-partitioned"),
        "{out}"
    );
    assert!(out.contains("serial 'meta' role meta"), "{out}");
    assert!(out.contains("virtio-net pci"), "{out}");
    let out = vm
        .run_timeout("mkfs -A -Q 0,10.0.2.15,7100", TIMEOUT)
        .unwrap();
    assert!(!out.contains("error"), "{out}");
    let c = vm.console();
    assert!(c.contains("volume: mounted vdb (meta) + vdc (data)"), "{c}");
    let out = vm.run("mkdir /from-uefi").unwrap();
    assert!(!out.contains("error"), "{out}");
    let out = vm.run("ls /").unwrap();
    assert!(out.contains("from-uefi"), "{out}");
    vm.poweroff().unwrap();
    // the boot disk's partition table and ESP are as they were
    let head_after = boot.image.read_at(0, 64 << 10).unwrap();
    assert_eq!(head_before, head_after);
    let img = std::fs::read(&boot.image.path).unwrap();
    esp_range(&img).unwrap();
}

#[test]
fn bad_cmdline_txt_uses_the_default_and_the_boot_disk_is_never_a_volume() {
    if !ovmf_present() {
        return;
    }
    let boot = Boot::new(b"node=caf\xe9\n");
    let data = TempImage::new("data", 1 << 30).unwrap();
    // the boot disk claims to be the metadata disk
    let cfg = VmConfig::new(Machine::Q35)
        .node("scoutvm")
        .uefi(boot.uefi("meta"))
        .disk(&data.path, "data");
    let mut vm = Vm::spawn(&cfg).unwrap();
    vm.wait_for(
        "cmdline.txt: byte 0xe9 at offset 8 is not printable ASCII; booting with the built-in default",
        TIMEOUT,
    )
    .unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    let head_before = boot.image.read_at(0, 64 << 10).unwrap();
    let out = vm
        .run_timeout("mkfs -A -Q 0,10.0.2.15,7100", TIMEOUT)
        .unwrap();
    assert!(
        out.contains("vda holds a GPT partition table"),
        "mkfs must refuse the boot disk: {out}"
    );
    vm.poweroff().unwrap();
    assert_eq!(boot.image.read_at(0, 64 << 10).unwrap(), head_before);
}
