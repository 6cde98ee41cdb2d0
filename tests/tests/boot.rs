//! Boot to the shell on microvm and q35 and check what the basic commands
//! print; an unknown command or bad argument errors and the shell lives on;
//! the trace ring and counters show events from boot.

use scoutvm_tests::{standard_vm, Machine, TempImage, Vm, TIMEOUT};

fn boot_and_check_shell(machine: Machine) {
    let meta = TempImage::new("meta", 64 << 20).unwrap();
    let data = TempImage::new("data", 32 << 20).unwrap();
    let cfg = standard_vm(machine, &meta, &data).node("n1");
    let mut vm = Vm::spawn(&cfg).unwrap();
    // The boot messages (blank disks: no volume; DHCP: the address, in
    // either order) and then the prompt, without a key pressed.
    prompt_after(&mut vm, &cfg.prompt(), &["DHCP address", "volume: "]);
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

/// Wait until every message is on the console and a prompt follows the
/// last of them.
fn prompt_after(vm: &mut Vm, prompt: &str, messages: &[&str]) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let c = vm.console();
        let last = messages
            .iter()
            .map(|m| c.rfind(m))
            .collect::<Option<Vec<_>>>()
            .and_then(|at| at.into_iter().max());
        if let Some(last) = last {
            if c[last..].contains(prompt) {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no prompt after the boot messages {messages:?}:\n{c}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
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
    vm.wait_for("volume: mounted in memory (64 MiB", TIMEOUT)
        .unwrap();
    // Then 9P starts and logs once it has an address: the last boot
    // message, and the prompt comes after it without a key pressed.
    prompt_after(&mut vm, &cfg.prompt(), &["p9: serving"]);
    vm.wait_prompt(TIMEOUT).unwrap();
    let out = vm.run("mkdir /ramdir").unwrap();
    assert!(!out.contains("error"), "{out}");
    let out = vm.run("ls /").unwrap();
    assert!(out.contains("ramdir"), "{out}");

    // Times as UTC dates: `ls -l` to the second, `stat` with nanoseconds,
    // both the clock's (the RTC is the host's UTC) and the same mtime.
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ls = vm.run("ls -l /").unwrap();
    let line = ls.lines().find(|l| l.ends_with(" ramdir")).unwrap();
    let w: Vec<&str> = line.split_whitespace().collect();
    let (ls_date, ls_time) = (w[w.len() - 3], w[w.len() - 2]);
    let shown = epoch_of(ls_date, ls_time).unwrap_or_else(|| panic!("{line}"));
    assert!(shown.abs_diff(host_now) < 86_400, "{line} vs {host_now}");
    let st = vm.run("stat /ramdir").unwrap();
    let mtime = st
        .lines()
        .find_map(|l| l.trim().strip_prefix("mtime: "))
        .unwrap_or_else(|| panic!("{st}"));
    let (date, rest) = mtime.split_once(' ').unwrap();
    let (time, nanos) = rest.trim_end_matches(" UTC").split_once('.').unwrap();
    assert_eq!((date, time), (ls_date, ls_time), "{st}\n{line}");
    assert!(
        nanos.len() == 9 && nanos.bytes().all(|b| b.is_ascii_digit()),
        "{st}"
    );
    assert!(mtime.ends_with(" UTC"), "{st}");

    // df: metadata and data devices apart, like the reference df.
    let df = vm.run("df").unwrap();
    let row = |kind: &str| -> Vec<u64> {
        let l = df
            .lines()
            .find(|l| l.split_whitespace().next() == Some(kind))
            .unwrap_or_else(|| panic!("{kind}: {df}"));
        l.split_whitespace()
            .skip(2)
            .map(|v| v.parse().unwrap())
            .collect()
    };
    assert!(
        df.lines().any(|l| l
            .split_whitespace()
            .eq(["Type", "Size", "Total", "Used", "Free", "Use%"])),
        "{df}"
    );
    let (meta_row, data_row) = (row("MetaData"), row("Data"));
    // volume=ram:64: a 64 MiB data device of 4 KiB blocks (its row holds
    // no metadata blocks) and a metadata device of 64 KiB blocks; each
    // row's used + free is its total.
    assert!(data_row[0] > 0 && data_row[0] <= 16_384, "{df}");
    assert!(meta_row[0] > 0, "{df}");
    for r in [&meta_row, &data_row] {
        assert_eq!(r[1] + r[2], r[0], "{df}");
    }
    assert!(meta_row[1] > 0, "metadata in use: {df}");
    let out = vm.run("fsck").unwrap();
    assert!(out.lines().any(|l| l.trim() == "clean"), "{out}");
    assert!(out.contains("items"), "{out}");
    // The disk images were never touched: the volume lives in RAM.
    assert!(meta.read_at(0, 1 << 20).unwrap().iter().all(|&b| b == 0));
    vm.poweroff().unwrap();
}

/// Seconds since the epoch of `YYYY-MM-DD` `HH:MM:SS` (UTC), counted by
/// whole years and months.
fn epoch_of(date: &str, time: &str) -> Option<u64> {
    let d: Vec<u64> = date
        .split('-')
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<u64> = time
        .split(':')
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 || d[0] < 1970 || !(1..=12).contains(&d[1]) {
        return None;
    }
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let mut days: u64 = (1970..d[0]).map(|y| if leap(y) { 366 } else { 365 }).sum();
    for m in 1..d[1] {
        days += match m {
            2 if leap(d[0]) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
    }
    days += d[2] - 1;
    Some(days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2])
}

/// A disk volume with one quorum slot mounts through the quorum (the node
/// is slot 0 and elects itself), and after the node is killed it comes
/// back by itself on the next boot: its crashed earlier life is the
/// predecessor of its own slot, which it fences itself.
#[test]
fn single_slot_volume_mounts_through_quorum_and_after_a_crash() {
    let meta = TempImage::new("meta", 4 << 30).unwrap();
    let data = TempImage::new("data", 1 << 30).unwrap();
    let cfg = standard_vm(Machine::Microvm, &meta, &data);
    let mut vm = Vm::spawn(&cfg).unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    let out = vm
        .run_timeout("mkfs -A -Q 0,10.0.2.15,7100", TIMEOUT)
        .unwrap();
    assert!(!out.contains("error"), "{out}");
    let c = vm.console();
    assert!(c.contains("this node is slot 0"), "{c}");
    assert!(c.contains("volume: mounted"), "{c}");
    let out = vm.run("mkdir /before-crash").unwrap();
    assert!(!out.contains("error"), "{out}");
    let out = vm.run("sync").unwrap();
    assert!(!out.contains("error"), "{out}");
    drop(vm); // SIGKILL: no unmount, the quorum blocks keep the election

    let mut vm = Vm::spawn(&cfg).unwrap();
    vm.wait_for("own slot: acked", TIMEOUT).unwrap();
    vm.wait_for("volume: mounted", TIMEOUT).unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    let out = vm.run("ls /").unwrap();
    assert!(out.contains("before-crash"), "{out}");
    vm.poweroff().unwrap();
}

/// A node holding slot 0 of a 3-slot volume with nobody else running never
/// gets a majority: it never leads, never mounts, and the super block on
/// its meta disk stays as it was.
#[test]
fn cluster_node_without_majority_never_writes() {
    let meta = TempImage::new("meta", 4 << 30).unwrap();
    let data = TempImage::new("data", 1 << 30).unwrap();
    let cfg = standard_vm(Machine::Microvm, &meta, &data);
    let mut vm = Vm::spawn(&cfg).unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    let out = vm
        .run_timeout(
            "mkfs -A -Q 0,10.0.2.15,7100 -Q 1,10.0.2.16,7100 -Q 2,10.0.2.17,7100",
            TIMEOUT,
        )
        .unwrap();
    assert!(!out.contains("error"), "{out}");
    vm.poweroff().unwrap();
    let before = meta.read_at(16 * 4096, 4096).unwrap();

    let cfg = cfg.append("quorum_slot_nr=0 quorum_heartbeat_timeout_ms=2000 cluster.insecure=1");
    let mut vm = Vm::spawn(&cfg).unwrap();
    vm.wait_for("joining as quorum slot 0", TIMEOUT).unwrap();
    // several election rounds (2 s heartbeat, elections every ~0.3 s)
    std::thread::sleep(std::time::Duration::from_secs(8));
    vm.wait_prompt(TIMEOUT).ok();
    let out = vm.run("volume").unwrap_or_default();
    let c = vm.console();
    assert!(!c.contains("leading term"), "{c}");
    assert!(!c.contains("volume: mounted"), "{c}\n{out}");
    assert_eq!(
        meta.read_at(16 * 4096, 4096).unwrap(),
        before,
        "the super block was written without quorum"
    );
}
