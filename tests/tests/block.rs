//! virtio-blk end to end on both transports: a block the host wrote is read
//! by the appliance, and blocks the appliance wrote (single, multi-block,
//! and larger than one request) are in the image file afterwards.

use scoutvm_tests::{standard_vm, Machine, TempImage, Vm, TIMEOUT};

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn block_round_trip(machine: Machine, microvm_acpi: bool) {
    let meta = TempImage::new("meta", 64 << 20).unwrap();
    let data = TempImage::new("data", 64 << 20).unwrap();
    let host_block: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    data.write_at(3 << 20, &host_block).unwrap();

    let mut cfg = standard_vm(machine, &meta, &data);
    cfg.microvm_acpi = microvm_acpi;
    let mut vm = Vm::spawn(&cfg).unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    if machine == Machine::Microvm {
        // Boot stage 2 records whether the second I/O APIC answered.
        let trace = vm.run("trace").unwrap();
        let want = format!("boot_stage stage=2 detail={}", microvm_acpi as u8);
        assert!(trace.contains(&want), "want {want:?} in:\n{trace}");
    }

    // Host -> appliance.
    let out = vm.run("blkread vdb 3145728 8192").unwrap();
    let expect_head: String = host_block[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        out.contains(&format!("crc32c {:08x}", crc32c(&host_block))),
        "{out}"
    );
    assert!(out.contains(&format!("head {expect_head}")), "{out}");

    // Appliance -> host: one block, two blocks, and 300 KiB (two requests).
    vm.run("blkwrite vda 0x100000 0x5a").unwrap();
    vm.run("blkwrite vda 0x200000 0xc3 8192").unwrap();
    let out = vm.run("blkwrite vdb 0x400000 0x11 307200").unwrap();
    assert!(out.contains("vdb wrote 307200 bytes of 0x11"), "{out}");
    // Misaligned and out-of-range requests are clean errors.
    let out = vm.run("blkwrite vda 100 0x1").unwrap();
    assert_eq!(out.trim(), "error: blkwrite: misaligned request");
    let out = vm.run("blkread vda 0x4000000").unwrap();
    assert_eq!(out.trim(), "error: blkread: request beyond end of device");
    // Read back what we wrote through the device as well.
    let out = vm.run("blkread vda 0x200000 8192").unwrap();
    assert!(
        out.contains(&format!("crc32c {:08x}", crc32c(&[0xc3; 8192]))),
        "{out}"
    );
    vm.poweroff().unwrap();

    assert!(meta
        .read_at(1 << 20, 4096)
        .unwrap()
        .iter()
        .all(|&b| b == 0x5a));
    assert!(meta
        .read_at((1 << 20) + 4096, 4096)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    assert!(meta
        .read_at(2 << 20, 8192)
        .unwrap()
        .iter()
        .all(|&b| b == 0xc3));
    assert!(data
        .read_at(4 << 20, 307200)
        .unwrap()
        .iter()
        .all(|&b| b == 0x11));
    assert!(data
        .read_at((4 << 20) + 307200, 4096)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    assert_eq!(data.read_at(3 << 20, 8192).unwrap(), host_block);
}

#[test]
fn block_round_trip_microvm() {
    block_round_trip(Machine::Microvm, false);
}

/// microvm as QEMU builds it by default (ACPI on): a second I/O APIC and
/// virtio-mmio interrupts on GSI 24 and up, which the kernel probes for.
#[test]
fn block_round_trip_microvm_with_acpi() {
    block_round_trip(Machine::Microvm, true);
}

#[test]
fn block_round_trip_q35() {
    block_round_trip(Machine::Q35, false);
}
