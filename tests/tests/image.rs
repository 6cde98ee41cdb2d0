//! The UEFI disk image (`cargo xtask image`, docs/image.md) boots under
//! QEMU q35 + OVMF: the loader reads `cmdline.txt` from the ESP, the kernel
//! finds its disks and network card on PCI, makes and mounts a volume on
//! two blank disks, answers a 9P version handshake from the host, serves a
//! Linux guest over 9P and
//! powers off cleanly; a bad `cmdline.txt` is reported
//! and the default used; the boot disk (GPT) is never made a volume even
//! when its serial says `meta`; no cmdline.txt and no volume disks still
//! reach the shell with a message. Skipped, with a message, when Debian's
//! `ovmf` package is not installed. Each boot takes ~10-20 s under TCG.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use scoutvm_image::disk_image::{esp_range, remove_esp_file, write_esp_file};
use scoutvm_tests::guest::run_linux_guest;
use scoutvm_tests::{
    disk_image_path, free_tcp_port, Machine, Net, TempImage, UefiBoot, Vm, VmConfig, OVMF_CODE,
    OVMF_VARS, TIMEOUT,
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
    /// `cmdline`: the file's bytes, or `None` for no cmdline.txt at all.
    fn new(cmdline: Option<&[u8]>) -> Boot {
        let mut img = std::fs::read(disk_image_path()).unwrap();
        match cmdline {
            Some(text) => write_esp_file(&mut img, "cmdline.txt", text).unwrap(),
            None => remove_esp_file(&mut img, "cmdline.txt").unwrap(),
        }
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
    let boot = Boot::new(Some(
        b"# written by the test\nnode=imgtest\n  log=info # comment\n",
    ));
    let head_before = boot.image.read_at(0, 64 << 10).unwrap();
    let meta = TempImage::new("meta", 4 << 30).unwrap();
    let data = TempImage::new("data", 1 << 30).unwrap();
    let p9_port = free_tcp_port();
    let cfg = VmConfig::new(Machine::Q35)
        .node("imgtest")
        .uefi(boot.uefi(""))
        .disk(&meta.path, "meta")
        .disk(&data.path, "data")
        .net(Net::User {
            hostfwd: vec![(p9_port, 564)],
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
    if !vm.console().contains("p9: serving") {
        vm.wait_for("p9: serving", TIMEOUT).unwrap();
    }
    assert_eq!(p9_version(p9_port), "9P2000.L");
    // a Linux guest mounts it over 9P (the forwarded port, reached at the
    // host's 10.0.2.2), lists what the shell made and writes a file back
    let args: Vec<String> = [
        "--no-mount".to_string(),
        "--mount".into(),
        format!("/mnt/v=10.0.2.2:{p9_port}"),
        "--mount-opts".into(),
        "access=user,cache=none".into(),
        "--timeout".into(),
        "300".into(),
    ]
    .to_vec();
    let cmd = "ls /mnt/v && echo from-the-guest > /mnt/v/guest-file && \
               echo \"GUEST READ $(cat /mnt/v/guest-file)\"";
    let run = run_linux_guest(&args, cmd).expect("start qemu/linux-guest.sh");
    assert!(
        run.console.lines().any(|l| l.trim_end() == "from-uefi"),
        "the guest did not list /from-uefi:\n{}",
        run.tail(30)
    );
    assert!(
        run.console
            .lines()
            .any(|l| l.trim_end() == "GUEST READ from-the-guest"),
        "{}",
        run.tail(30)
    );
    let out = vm.run("ls /").unwrap();
    assert!(out.contains("guest-file"), "{out}");
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
    let boot = Boot::new(Some(b"node=caf\xe9\n"));
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

/// A 9P `Tversion` from the host through the user-network forward; the
/// version the server answers with in its `Rversion`.
fn p9_version(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let version = b"9P2000.L";
    let mut msg = Vec::new();
    let size = 4 + 1 + 2 + 4 + 2 + version.len();
    msg.extend_from_slice(&(size as u32).to_le_bytes());
    msg.push(100); // Tversion
    msg.extend_from_slice(&0xffffu16.to_le_bytes()); // NOTAG
    msg.extend_from_slice(&65536u32.to_le_bytes());
    msg.extend_from_slice(&(version.len() as u16).to_le_bytes());
    msg.extend_from_slice(version);
    s.write_all(&msg).unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).unwrap();
    let len = u32::from_le_bytes(head) as usize;
    assert!((13..4096).contains(&len), "Rversion size {len}");
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).unwrap();
    assert_eq!(body[0], 101, "Rversion type: {body:?}");
    let vlen = u16::from_le_bytes([body[7], body[8]]) as usize;
    String::from_utf8_lossy(&body[9..9 + vlen]).into_owned()
}

#[test]
fn missing_cmdline_txt_and_no_volume_disks_still_reach_the_shell() {
    if !ovmf_present() {
        return;
    }
    let boot = Boot::new(None);
    let cfg = VmConfig::new(Machine::Q35)
        .node("scoutvm")
        .uefi(boot.uefi(""));
    let mut vm = Vm::spawn(&cfg).unwrap();
    vm.wait_for(
        "cannot read \\cmdline.txt on the ESP; booting with the built-in default command line",
        TIMEOUT,
    )
    .unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    if !vm.console().contains("volume: no metadata disk") {
        vm.wait_for("volume: no metadata disk", TIMEOUT).unwrap();
    }
    let out = vm.run("devices").unwrap();
    assert!(out.contains("vda") && !out.contains("vdb"), "{out}");
    vm.poweroff().unwrap();
}
