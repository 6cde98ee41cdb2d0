//! The Linux client guest and the host `scoutvm` tool, for tests and
//! benches that mount an appliance from Linux: run `qemu/linux-guest.sh`
//! with a command (its QEMU is stopped through the script, by pid, if the
//! test gives up) and build/find the host tool for `mkfs`/`fsck` on
//! images. Also the L2 link between an appliance and a guest: a pair of
//! UDP ports (`-netdev dgram`) and the addresses on it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{free_udp_port, workspace_root, Net, Reaped};

/// The appliance's address on a guest link.
pub const APPLIANCE_IP: &str = "10.0.3.10";
/// The guest's address on it.
pub const GUEST_IP: &str = "10.0.3.20";

/// A point-to-point Ethernet between an appliance and a Linux guest.
#[derive(Clone, Copy, Debug)]
pub struct GuestLink {
    pub appliance_port: u16,
    pub guest_port: u16,
}

impl GuestLink {
    pub fn new() -> GuestLink {
        let a = free_udp_port();
        let mut g = free_udp_port();
        while g == a {
            g = free_udp_port();
        }
        GuestLink {
            appliance_port: a,
            guest_port: g,
        }
    }

    /// The appliance's network.
    pub fn appliance_net(&self) -> Net {
        Net::Dgram {
            local_port: self.appliance_port,
            remote_port: self.guest_port,
        }
    }

    /// The appliance's command line words for this link.
    pub fn appliance_cmdline(&self) -> String {
        format!("ip={APPLIANCE_IP}/24")
    }

    /// `qemu/linux-guest.sh run` options putting the guest on this link
    /// and pointing it at the appliance's 9P port.
    pub fn guest_args(&self) -> Vec<String> {
        vec![
            "--net".into(),
            format!("dgram={}:{}", self.guest_port, self.appliance_port),
            "--ip".into(),
            format!("{GUEST_IP}/24"),
            "--server".into(),
            format!("{APPLIANCE_IP}:564"),
        ]
    }
}

impl Default for GuestLink {
    fn default() -> Self {
        GuestLink::new()
    }
}

/// What a guest run printed and how it ended.
pub struct GuestRun {
    pub status: ExitStatus,
    pub console: String,
    pub elapsed: Duration,
}

impl GuestRun {
    /// The last `n` console lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Insist that a guest check script (tests/guest/*.sh) passed: no
    /// `PREFIX FAIL ...` line, a `PREFIX PASS CHECK` line for every one of
    /// `checks`, its last `PREFIX DONE failed=0` and a zero exit. Failure
    /// messages carry the console's tail and `context` (e.g. the nodes'
    /// consoles).
    pub fn assert_checks_passed(&self, prefix: &str, checks: &[&str], context: &str) {
        let fail = format!("{prefix} FAIL");
        let fails: Vec<&str> = self.console.lines().filter(|l| l.contains(&fail)).collect();
        assert!(
            fails.is_empty(),
            "checks failed:\n{}\n\nguest tail:\n{}\n{context}",
            fails.join("\n"),
            self.tail(40)
        );
        for check in checks {
            let pass = format!("{prefix} PASS {check}");
            assert!(
                self.console.lines().any(|l| l.trim_end() == pass),
                "no PASS for {check}:\n{}\n{context}",
                self.tail(80)
            );
        }
        assert!(
            self.console.contains(&format!("{prefix} DONE failed=0")),
            "{}",
            self.tail(80)
        );
        assert!(
            self.status.success(),
            "guest exit {}:\n{}",
            self.status,
            self.tail(40)
        );
    }
}

/// Run `command` in a Linux guest (`qemu/linux-guest.sh run ARGS --
/// COMMAND`); the guest console goes to this process's stderr as well.
pub fn run_linux_guest(args: &[String], command: &str) -> std::io::Result<GuestRun> {
    let script = workspace_root().join("qemu/linux-guest.sh");
    let started = Instant::now();
    let mut s = Reaped {
        name: "linux-guest.sh",
        child: Command::new(&script)
            .arg("run")
            .args(args)
            .arg("--")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    };
    let mut out = s.child.stdout.take().expect("piped");
    let mut console = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                eprint!("{}", String::from_utf8_lossy(&buf[..n]));
                console.extend_from_slice(&buf[..n]);
            }
        }
    }
    let status = s.child.wait()?;
    Ok(GuestRun {
        status,
        console: String::from_utf8_lossy(&console).replace('\r', ""),
        elapsed: started.elapsed(),
    })
}

/// The host `scoutvm` tool (mkfs, print, fsck), built once per process
/// (release) unless `$SCOUTVM_TOOL` names one.
pub fn host_tool() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("SCOUTVM_TOOL") {
            return PathBuf::from(p);
        }
        let root = workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "scoutvm-image",
                "--bin",
                "scoutvm",
            ])
            .status()
            .expect("run cargo to build the scoutvm tool");
        assert!(status.success(), "building the scoutvm host tool failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|p| if p.is_relative() { root.join(p) } else { p })
            .unwrap_or_else(|| root.join("target"));
        target.join("release/scoutvm")
    })
    .clone()
}

/// Run the host tool; returns (success, stdout + stderr).
pub fn scoutvm_tool(args: &[&str]) -> (bool, String) {
    let out = Command::new(host_tool())
        .args(args)
        .output()
        .expect("run the scoutvm tool");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `scoutvm fsck META DATA`.
pub fn fsck_images(meta: &Path, data: &Path) -> (bool, String) {
    scoutvm_tool(&[
        "fsck",
        &meta.display().to_string(),
        &data.display().to_string(),
    ])
}
