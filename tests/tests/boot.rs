//! Boot to the shell on microvm and q35 and check what the basic commands
//! print; an unknown command or bad argument errors and the shell lives on;
//! the trace ring and counters show events from boot.

use scoutvm_tests::{standard_vm, Machine, TempImage, Vm, TIMEOUT};

fn boot_and_check_shell(machine: Machine) {
    let meta = TempImage::new("meta", 64 << 20).unwrap();
    let data = TempImage::new("data", 32 << 20).unwrap();
    let cfg = standard_vm(machine, &meta, &data).node("n1");
    let mut vm = Vm::spawn(&cfg).unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();

    let version = vm.run("version").unwrap();
    assert!(version.contains("ScoutVM 0.1.0"), "{version}");
    assert!(version.contains("node n1"), "{version}");

    let transport = match machine {
        Machine::Microvm => "mmio",
        Machine::Q35 => "pci",
    };
    let devices = vm.run("devices").unwrap();
    let vda = devices
        .lines()
        .find(|l| l.starts_with("vda "))
        .unwrap_or_else(|| panic!("{devices}"));
    assert!(vda.contains(&format!("virtio-blk {transport}")), "{vda}");
    assert!(
        vda.contains("(67108864 bytes)")
            && vda.contains("serial 'meta'")
            && vda.contains("role meta"),
        "{vda}"
    );
    let vdb = devices
        .lines()
        .find(|l| l.starts_with("vdb "))
        .unwrap_or_else(|| panic!("{devices}"));
    assert!(
        vdb.contains("(33554432 bytes)") && vdb.contains("serial 'data'"),
        "{vdb}"
    );
    let eth = devices
        .lines()
        .find(|l| l.starts_with("eth0 "))
        .unwrap_or_else(|| panic!("{devices}"));
    assert!(
        eth.contains(&format!("virtio-net {transport}")) && eth.contains("mac 52:54:00:12:34:56"),
        "{eth}"
    );

    let mem = vm.run("mem").unwrap();
    for field in ["ram ", "heap ", "heap used", "heap free"] {
        assert!(mem.contains(field), "{field} missing: {mem}");
    }
    assert!(mem.contains("MiB"), "{mem}");

    let bad = vm.run("frobnicate now").unwrap();
    assert_eq!(
        bad.trim(),
        "error: unknown command 'frobnicate' (try 'help')"
    );
    let bad_args = vm.run("ping").unwrap();
    assert!(
        bad_args.trim().starts_with("error: ping: usage: ping HOST"),
        "{bad_args}"
    );
    let bad_ip = vm.run("ping 10.0.2.300").unwrap();
    assert_eq!(bad_ip.trim(), "error: ping: bad IPv4 address '10.0.2.300'");
    let bad_dev = vm.run("blkread vdz 0").unwrap();
    assert_eq!(bad_dev.trim(), "error: blkread: no block device 'vdz'");

    // The shell survived all of that.
    let uptime = vm.run("uptime").unwrap();
    assert!(
        uptime.starts_with("up ") && uptime.contains("UTC"),
        "{uptime}"
    );
    let help = vm.run("help").unwrap();
    for cmd in [
        "devices",
        "counters",
        "trace",
        "poweroff",
        "ping HOST [COUNT]",
    ] {
        assert!(help.contains(cmd), "{cmd} not in help: {help}");
    }
    vm.poweroff().unwrap();
}

#[test]
fn boot_to_prompt_and_shell_microvm() {
    boot_and_check_shell(Machine::Microvm);
}

#[test]
fn boot_to_prompt_and_shell_q35() {
    boot_and_check_shell(Machine::Q35);
}

#[test]
fn line_editing_backspace_and_history() {
    let meta = TempImage::new("meta", 16 << 20).unwrap();
    let data = TempImage::new("data", 16 << 20).unwrap();
    let mut vm = Vm::spawn(&standard_vm(Machine::Microvm, &meta, &data)).unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    // "versiom" + backspace + "n" is "version".
    vm.send_line("versiom\x7fn").unwrap();
    vm.wait_for("ScoutVM 0.1.0", TIMEOUT).unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    vm.run("echo second").unwrap();
    // Up twice recalls "version".
    vm.send_line("\x1b[A\x1b[A").unwrap();
    vm.wait_for("ScoutVM 0.1.0", TIMEOUT).unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    vm.poweroff().unwrap();
}

#[test]
fn trace_and_counters_show_boot_events() {
    let meta = TempImage::new("meta", 16 << 20).unwrap();
    let data = TempImage::new("data", 16 << 20).unwrap();
    let mut vm = Vm::spawn(&standard_vm(Machine::Microvm, &meta, &data)).unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();

    let trace = vm.run("trace").unwrap();
    assert!(trace.lines().next().unwrap().contains("emitted"), "{trace}");
    for stage in 1..=6 {
        assert!(
            trace.contains(&format!("boot_stage stage={stage}")),
            "stage {stage}: {trace}"
        );
    }
    let stage4 = trace
        .lines()
        .find(|l| l.contains("boot_stage stage=4"))
        .unwrap();
    assert!(stage4.ends_with("detail=2"), "two disks found: {stage4}");

    let counters = vm.run("counters").unwrap();
    let value = |name: &str| -> u64 {
        counters
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {counters}"))
    };
    assert!(value("exec.spawned") >= 1);
    assert!(value("net.tx_frames") >= 1, "DHCP sent at boot");
    assert!(value("shell.commands") >= 1);
    assert!(value("trace.emitted") >= 6);
    let filtered = vm.run("counters net.").unwrap();
    assert!(
        filtered.lines().all(|l| l.starts_with("net.")),
        "{filtered}"
    );
    let none = vm.run("counters nosuchprefix").unwrap();
    assert_eq!(
        none.trim(),
        "error: counters: no counter starts with 'nosuchprefix'"
    );
    vm.poweroff().unwrap();
}

/// `volume=ram` is a real volume on two RAM disks: mkfs'd at boot, mounted
/// through the server role and the client like a disk volume, so fsck can
/// check it; it is gone at power off.
#[test]
fn ram_volume_runs_the_real_backend() {
    let meta = TempImage::new("meta", 16 << 20).unwrap();
    let data = TempImage::new("data", 16 << 20).unwrap();
    let cfg = standard_vm(Machine::Microvm, &meta, &data).append("volume=ram:64");
    let mut vm = Vm::spawn(&cfg).unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    vm.wait_for("volume: mounted in memory (64 MiB", TIMEOUT)
        .unwrap();
    // Then 9P starts and logs once it has an address; wait for it so no log
    // line lands between a command and its prompt.
    vm.wait_for("p9: serving", TIMEOUT).unwrap();
    let out = vm.run("mkdir /ramdir").unwrap();
    assert!(!out.contains("error"), "{out}");
    let out = vm.run("ls /").unwrap();
    assert!(out.contains("ramdir"), "{out}");
    let out = vm.run("fsck").unwrap();
    assert!(out.lines().any(|l| l.trim() == "clean"), "{out}");
    assert!(out.contains("items"), "{out}");
    // The disk images were never touched: the volume lives in RAM.
    assert!(meta.read_at(0, 1 << 20).unwrap().iter().all(|&b| b == 0));
    vm.poweroff().unwrap();
}
