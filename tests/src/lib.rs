//! Test harness shared by the integration tests and the bench: build or
//! find the appliance image, start QEMU (`-accel tcg`) with the machine,
//! disks, network and command line a test asks for, drive the serial
//! console (wait for a pattern, run a shell command and collect its output
//! up to the next prompt), pick free ports at run time, and classify how
//! the VM ended. Every QEMU started is killed by its pid when its [`Vm`]
//! is dropped. A QEMU exit status of 0 is a reset or triple fault (our
//! appliance only leaves through isa-debug-exit), never a success.

pub mod cluster_sh;
pub mod fuzz;
pub mod guest;
pub mod link_relay;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// isa-debug-exit codes the kernel uses; QEMU exits with `(code << 1) | 1`.
pub const EXIT_POWEROFF: i32 = (0x10 << 1) | 1;
pub const EXIT_PANIC: i32 = (0x11 << 1) | 1;
pub const EXIT_EXCEPTION: i32 = (0x12 << 1) | 1;

/// Generous default for anything a VM does under TCG.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where `cargo xtask build` puts the image.
pub fn default_elf_path() -> PathBuf {
    workspace_root().join("target/scoutvm/scoutvm.elf")
}

/// Build the appliance with `cargo xtask build`, the one place that knows
/// how the image is made (release, bare-metal target, symbols stripped),
/// and return `target/scoutvm/scoutvm.elf`.
pub fn build_image() -> io::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["xtask", "build"])
        .status()?;
    if !status.success() {
        return Err(io::Error::other("building the appliance failed"));
    }
    Ok(default_elf_path())
}

/// The image tests boot: `$SCOUTVM_ELF` if set, else built once per test
/// process (cheap when nothing changed).
pub fn elf_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("SCOUTVM_ELF") {
            let p = PathBuf::from(p);
            assert!(p.exists(), "SCOUTVM_ELF={} does not exist", p.display());
            return p;
        }
        build_image().expect("could not build the appliance image (cargo xtask build)")
    })
    .clone()
}

/// Which QEMU machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    Microvm,
    Q35,
}

impl Machine {
    pub fn name(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
}

/// One virtio-blk disk.
#[derive(Clone, Debug)]
pub struct Disk {
    pub path: PathBuf,
    /// The virtio ID string (`serial=`), e.g. "meta".
    pub serial: String,
}

/// How the VM's network card is connected.
#[derive(Clone, Debug)]
pub enum Net {
    None,
    /// QEMU user networking (10.0.2.0/24, gateway 10.0.2.2) with TCP
    /// forwards (host 127.0.0.1 port, guest port).
    User {
        hostfwd: Vec<(u16, u16)>,
    },
    /// `-netdev dgram` between two local UDP ports: a point-to-point
    /// Ethernet wire between two VMs.
    Dgram {
        local_port: u16,
        remote_port: u16,
    },
}

/// Everything needed to start one appliance.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub machine: Machine,
    pub mem_mb: u32,
    pub node: String,
    pub disks: Vec<Disk>,
    pub net: Net,
    pub mac: Option<String>,
    /// Extra kernel command line words (besides `node=`).
    pub cmdline: String,
    /// microvm with QEMU's ACPI tables and second I/O APIC (virtio-mmio on
    /// GSI 24+). Off by default: the kernel reads no ACPI, and building
    /// the tables costs QEMU ~5 ms of a ~45 ms boot.
    pub microvm_acpi: bool,
    /// Boot the UEFI disk image with OVMF instead of `-kernel` (q35 only):
    /// the command line then comes from the image's `cmdline.txt`.
    pub uefi: Option<UefiBoot>,
}

/// What a UEFI boot needs: the firmware code, a private copy of its
/// variable store, and the disk image (a private copy: firmware and tests
/// write to it).
#[derive(Clone, Debug)]
pub struct UefiBoot {
    pub code: PathBuf,
    pub vars: PathBuf,
    pub image: PathBuf,
    /// The boot disk's virtio serial ("" for none).
    pub serial: String,
}

/// Debian's `ovmf` package: firmware code and the variable store template.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Build the UEFI disk image with `cargo xtask image` (or take
/// `$SCOUTVM_IMG`) and return `target/scoutvm/scoutvm.img`.
pub fn disk_image_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("SCOUTVM_IMG") {
            let p = PathBuf::from(p);
            assert!(p.exists(), "SCOUTVM_IMG={} does not exist", p.display());
            return p;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["xtask", "image"])
            .status()
            .expect("cannot run cargo xtask image");
        assert!(status.success(), "cargo xtask image failed");
        workspace_root().join("target/scoutvm/scoutvm.img")
    })
    .clone()
}

impl VmConfig {
    pub fn new(machine: Machine) -> Self {
        VmConfig {
            machine,
            mem_mb: 256,
            node: "scoutvm".into(),
            disks: Vec::new(),
            net: Net::None,
            mac: None,
            cmdline: String::new(),
            microvm_acpi: false,
            uefi: None,
        }
    }

    pub fn node(mut self, name: &str) -> Self {
        self.node = name.into();
        self
    }

    pub fn disk(mut self, path: &Path, serial: &str) -> Self {
        self.disks.push(Disk {
            path: path.to_path_buf(),
            serial: serial.into(),
        });
        self
    }

    pub fn net(mut self, net: Net) -> Self {
        self.net = net;
        self
    }

    pub fn mac(mut self, mac: &str) -> Self {
        self.mac = Some(mac.into());
        self
    }

    /// Boot `boot.image` under OVMF (the machine becomes q35).
    pub fn uefi(mut self, boot: UefiBoot) -> Self {
        self.machine = Machine::Q35;
        self.uefi = Some(boot);
        self
    }

    pub fn append(mut self, words: &str) -> Self {
        if !self.cmdline.is_empty() {
            self.cmdline.push(' ');
        }
        self.cmdline.push_str(words);
        self
    }

    /// The prompt this VM's shell prints.
    pub fn prompt(&self) -> String {
        format!("{}> ", self.node)
    }

    /// The QEMU arguments (without the program name).
    pub fn qemu_args(&self, elf: &Path) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &str| a.push(s.to_string());
        match self.machine {
            Machine::Microvm => {
                push("-M");
                push(if self.microvm_acpi {
                    "microvm"
                } else {
                    "microvm,acpi=off"
                });
                push("-global");
                push("virtio-mmio.force-legacy=false");
            }
            Machine::Q35 => {
                push("-M");
                push("q35");
            }
        }
        let (blk, netdev) = match self.machine {
            Machine::Microvm => ("virtio-blk-device", "virtio-net-device"),
            Machine::Q35 => ("virtio-blk-pci", "virtio-net-pci"),
        };
        for s in [
            "-accel",
            "tcg",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ] {
            push(s);
        }
        push("-m");
        push(&format!("{}M", self.mem_mb));
        if let Some(u) = &self.uefi {
            push("-drive");
            push(&format!(
                "if=pflash,format=raw,readonly=on,file={}",
                u.code.display()
            ));
            push("-drive");
            push(&format!("if=pflash,format=raw,file={}", u.vars.display()));
            push("-drive");
            push(&format!(
                "file={},format=raw,if=none,id=boot",
                u.image.display()
            ));
            push("-device");
            let mut dev = format!("{blk},drive=boot,bootindex=0");
            if !u.serial.is_empty() {
                dev.push_str(&format!(",serial={}", u.serial));
            }
            push(&dev);
        }
        for (i, d) in self.disks.iter().enumerate() {
            push("-drive");
            push(&format!(
                "file={},format=raw,if=none,id=d{i},cache=writeback",
                d.path.display()
            ));
            push("-device");
            push(&format!("{blk},drive=d{i},serial={}", d.serial));
        }
        let netdev_arg = match &self.net {
            Net::None => None,
            Net::User { hostfwd } => {
                let mut s = String::from("user,id=n0");
                for (host, guest) in hostfwd {
                    s.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
                }
                Some(s)
            }
            Net::Dgram {
                local_port,
                remote_port,
            } => Some(format!(
                "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={local_port},\
                 remote.type=inet,remote.host=127.0.0.1,remote.port={remote_port}"
            )),
        };
        if let Some(n) = netdev_arg {
            push("-netdev");
            push(&n);
            let mut dev = format!("{netdev},netdev=n0");
            if self.machine == Machine::Q35 {
                dev.push_str(",romfile=");
            }
            if let Some(mac) = &self.mac {
                dev.push_str(&format!(",mac={mac}"));
            }
            push("-device");
            push(&dev);
        }
        if self.uefi.is_some() {
            return a;
        }
        push("-kernel");
        push(&elf.display().to_string());
        push("-append");
        let mut cmdline = format!("node={}", self.node);
        if !self.cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&self.cmdline);
        }
        push(&cmdline);
        a
    }
}

/// How a VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// `poweroff` (isa-debug-exit 0x10).
    Poweroff,
    /// A kernel panic (0x11).
    Panic,
    /// A CPU exception report (0x12).
    Exception,
    /// QEMU exited 0: a reset, i.e. a triple fault under `-no-reboot`.
    /// Never a success.
    Reset,
    /// Any other status.
    Other(i32),
    /// Killed by a signal.
    Signal,
}

impl ExitKind {
    pub fn from_status(s: ExitStatus) -> Self {
        match s.code() {
            Some(EXIT_POWEROFF) => ExitKind::Poweroff,
            Some(EXIT_PANIC) => ExitKind::Panic,
            Some(EXIT_EXCEPTION) => ExitKind::Exception,
            Some(0) => ExitKind::Reset,
            Some(c) => ExitKind::Other(c),
            None => ExitKind::Signal,
        }
    }

    /// Only a clean poweroff counts as success.
    pub fn is_success(self) -> bool {
        self == ExitKind::Poweroff
    }
}

/// Harness failures carry the console output so far.
#[derive(Debug)]
pub struct HarnessError {
    pub what: String,
    pub console: String,
}

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- console ---\n{}\n---------------",
            self.what, self.console
        )
    }
}

impl std::error::Error for HarnessError {}

/// A running appliance.
pub struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    /// Bytes of `out` already consumed by waits.
    cursor: usize,
    prompt: String,
    exit: Option<ExitKind>,
    started: Instant,
}

fn pump(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                // Drop CRs at the source so patterns match plain "\n".
                Ok(n) => into
                    .lock()
                    .expect("console buffer")
                    .extend(buf[..n].iter().filter(|&&b| b != b'\r')),
            }
        }
    });
}

/// `text` without the kernel's log records (`[  12.345678] LEVEL ...`
/// through the end of their line), wherever they start: the serial
/// console interleaves them with shell output.
pub fn without_log_records(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('[') {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        if let Some(len) = log_record_len(from) {
            rest = &from[len..];
        } else {
            out.push('[');
            rest = &from[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The length of the log record at the start of `s` (its newline
/// included), if one starts there.
fn log_record_len(s: &str) -> Option<usize> {
    let close = s.find(']')?;
    let stamp = s[1..close].trim();
    let (secs, frac) = stamp.split_once('.')?;
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || frac.len() != 6
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let after = &s[close + 1..];
    ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
        .iter()
        .find(|l| after.trim_start().starts_with(**l))?;
    let end = after
        .find('\n')
        .map(|i| close + 1 + i + 1)
        .unwrap_or(s.len());
    Some(end)
}

fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\r', "")
}

impl Vm {
    /// Start QEMU for `cfg` with the default image.
    pub fn spawn(cfg: &VmConfig) -> io::Result<Vm> {
        Self::spawn_with(cfg, &elf_path())
    }

    pub fn spawn_with(cfg: &VmConfig, elf: &Path) -> io::Result<Vm> {
        let mut child = Command::new("qemu-system-x86_64")
            .args(cfg.qemu_args(elf))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        pump(child.stdout.take().expect("piped"), out.clone());
        pump(child.stderr.take().expect("piped"), err.clone());
        Ok(Vm {
            stdin: child.stdin.take(),
            child,
            out,
            err,
            cursor: 0,
            prompt: cfg.prompt(),
            exit: None,
            started: Instant::now(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Everything the console printed so far (CR removed).
    pub fn console(&self) -> String {
        clean(&self.out.lock().expect("console buffer"))
    }

    /// QEMU's own stderr so far.
    pub fn stderr(&self) -> String {
        clean(&self.err.lock().expect("stderr buffer"))
    }

    fn error(&self, what: String) -> HarnessError {
        HarnessError {
            what,
            console: format!("{}\n--- qemu stderr ---\n{}", self.console(), self.stderr()),
        }
    }

    fn poll_exit(&mut self) -> Option<ExitKind> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(ExitKind::from_status(status));
            }
        }
        self.exit
    }

    /// Wait until `pattern` appears after the cursor; returns the text from
    /// the cursor through the match and moves the cursor past it.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let out = self.out.lock().expect("console buffer");
                let tail = &out[self.cursor.min(out.len())..];
                if let Some(pos) = find(tail, pattern.as_bytes()) {
                    let end = pos + pattern.len();
                    let text = clean(&tail[..end]);
                    self.cursor += end;
                    return Ok(text);
                }
            }
            if let Some(kind) = self.poll_exit() {
                // Give the pump a moment to collect the last bytes.
                thread::sleep(Duration::from_millis(50));
                let out = self.out.lock().expect("console buffer");
                if find(&out[self.cursor.min(out.len())..], pattern.as_bytes()).is_none() {
                    drop(out);
                    return Err(
                        self.error(format!("VM exited ({kind:?}) before printing {pattern:?}"))
                    );
                }
                continue;
            }
            if Instant::now() >= deadline {
                return Err(self.error(format!(
                    "timed out after {timeout:?} waiting for {pattern:?}"
                )));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Wait for the shell prompt.
    pub fn wait_prompt(&mut self, timeout: Duration) -> Result<String, HarnessError> {
        let p = self.prompt.clone();
        self.wait_for(&p, timeout)
    }

    /// Type a line (CR-terminated, like a terminal).
    pub fn send_line(&mut self, line: &str) -> Result<(), HarnessError> {
        let r = match self.stdin.as_mut() {
            Some(s) => s
                .write_all(line.as_bytes())
                .and_then(|_| s.write_all(b"\r"))
                .and_then(|_| s.flush()),
            None => Err(io::Error::other("stdin closed")),
        };
        r.map_err(|e| self.error(format!("writing to the console: {e}")))
    }

    /// Run a shell command (the prompt must be showing) and return what it
    /// printed, without the echo and the next prompt.
    pub fn run(&mut self, command: &str) -> Result<String, HarnessError> {
        self.run_timeout(command, TIMEOUT)
    }

    pub fn run_timeout(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        self.send_line(command)?;
        // Everything up to the prompt after this command: its echo and its
        // output, with any log records the kernel printed meanwhile taken
        // out (a log line may land in the middle of the echo).
        let prompt = format!("\n{}", self.prompt);
        let echo = format!("{command}\n");
        let deadline = Instant::now() + timeout;
        let mut text = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            text.push_str(&self.wait_for(&prompt, left)?);
            // The prompt pattern took the newline that ends the output
            // (or the echo, when there is no output).
            let body = without_log_records(&text[..text.len() - prompt.len()]) + "\n";
            if let Some(at) = body.find(&echo) {
                return Ok(body[at + echo.len()..].to_string());
            }
            // The prompt of a line typed before this one: keep reading.
        }
    }

    /// Wait for QEMU to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitKind, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(k) = self.poll_exit() {
                thread::sleep(Duration::from_millis(50));
                return Ok(k);
            }
            if Instant::now() >= deadline {
                return Err(self.error(format!("VM still running after {timeout:?}")));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// `poweroff` and insist on a clean exit.
    pub fn poweroff(&mut self) -> Result<(), HarnessError> {
        self.send_line("poweroff")?;
        self.expect_exit(ExitKind::Poweroff)
    }

    /// Wait for the VM to end and fail unless it ended as `want`.
    pub fn expect_exit(&mut self, want: ExitKind) -> Result<(), HarnessError> {
        let got = self.wait_exit(TIMEOUT)?;
        if got != want {
            return Err(self.error(format!("VM ended as {got:?}, expected {want:?}")));
        }
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            // Child::kill sends SIGKILL to this child's pid only.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A child process (a script, a server) stopped by its pid when dropped:
/// SIGTERM first, so a script's own cleanup stops what it started, then
/// SIGKILL if it lingers past 10 s.
pub struct Reaped {
    pub child: Child,
    /// What to call it in the one message a stubborn child gets.
    pub name: &'static str,
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not
            // reaped yet, so the pid cannot have been reused.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("{}: did not stop on SIGTERM, killing", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral TCP port")
}

/// A UDP port free on 127.0.0.1 right now.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral UDP port")
}

/// A sparse raw image file, removed when dropped.
pub struct TempImage {
    pub path: PathBuf,
}

impl TempImage {
    pub fn new(tag: &str, size_bytes: u64) -> io::Result<TempImage> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = workspace_root().join("target/scoutvm/test-images");
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!(
            "{tag}-{}-{}.img",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let f = File::create(&path)?;
        f.set_len(size_bytes)?;
        Ok(TempImage { path })
    }

    pub fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        fs::OpenOptions::new()
            .write(true)
            .open(&self.path)?
            .write_all_at(data, off)
    }

    pub fn read_at(&self, off: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        File::open(&self.path)?.read_exact_at(&mut buf, off)?;
        Ok(buf)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The usual node: a metadata and a data disk and user networking.
pub fn standard_vm(machine: Machine, meta: &TempImage, data: &TempImage) -> VmConfig {
    VmConfig::new(machine)
        .disk(&meta.path, "meta")
        .disk(&data.path, "data")
        .net(Net::User {
            hostfwd: Vec::new(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_are_taken_out_wherever_they_land() {
        let console = "tc[    0.017837] INFO  scoutvm_kernel::net: net: DHCP address 10.0.2.15/24\npecho 564 16\nlistening\n[ 12.000001] WARN  x: y\n";
        assert_eq!(without_log_records(console), "tcpecho 564 16\nlistening\n");
        // Trace lines and brackets in output stay.
        let trace = "[    1.500000] #3 n0 boot_stage stage=1\na[0] = [1]\n";
        assert_eq!(without_log_records(trace), trace);
    }

    #[test]
    fn exit_codes_classify_and_reset_is_failure() {
        use std::os::unix::process::ExitStatusExt;
        let st = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(ExitKind::from_status(st(33)), ExitKind::Poweroff);
        assert_eq!(ExitKind::from_status(st(35)), ExitKind::Panic);
        assert_eq!(ExitKind::from_status(st(37)), ExitKind::Exception);
        assert_eq!(ExitKind::from_status(st(0)), ExitKind::Reset);
        assert!(!ExitKind::Reset.is_success());
        assert!(ExitKind::Poweroff.is_success());
        assert_eq!(
            ExitKind::from_status(ExitStatus::from_raw(9)),
            ExitKind::Signal
        );
    }

    #[test]
    fn qemu_args_for_both_machines() {
        let cfg = VmConfig::new(Machine::Q35)
            .node("n1")
            .disk(Path::new("/tmp/m.img"), "meta")
            .net(Net::User {
                hostfwd: vec![(5640, 564)],
            })
            .mac("52:54:00:00:00:01")
            .append("ip=dhcp");
        let a = cfg.qemu_args(Path::new("/k.elf")).join(" ");
        assert!(a.contains("-M q35"));
        assert!(a.contains("virtio-blk-pci,drive=d0,serial=meta"));
        assert!(a.contains("hostfwd=tcp:127.0.0.1:5640-:564"));
        assert!(a.contains("virtio-net-pci,netdev=n0,romfile=,mac=52:54:00:00:00:01"));
        assert!(a.ends_with("-append node=n1 ip=dhcp"));
        let m = VmConfig::new(Machine::Microvm)
            .net(Net::Dgram {
                local_port: 1,
                remote_port: 2,
            })
            .qemu_args(Path::new("/k.elf"))
            .join(" ");
        assert!(m.contains("virtio-mmio.force-legacy=false"));
        assert!(m.contains("dgram,id=n0,local.type=inet"));
        assert!(m.contains("virtio-net-device,netdev=n0"));
    }

    #[test]
    fn qemu_args_for_a_uefi_boot() {
        let u = VmConfig::new(Machine::Microvm)
            .uefi(UefiBoot {
                code: "/c.fd".into(),
                vars: "/v.fd".into(),
                image: "/i.img".into(),
                serial: "meta".into(),
            })
            .disk(Path::new("/tmp/d.img"), "data")
            .qemu_args(Path::new("/k.elf"))
            .join(" ");
        assert!(u.contains("-M q35"), "{u}");
        assert!(u.contains("if=pflash,format=raw,readonly=on,file=/c.fd"));
        assert!(u.contains("if=pflash,format=raw,file=/v.fd"));
        assert!(u.contains("virtio-blk-pci,drive=boot,bootindex=0,serial=meta"));
        // the boot disk comes first: it is vda
        assert!(u.find("drive=boot").unwrap() < u.find("drive=d0").unwrap());
        assert!(!u.contains("-kernel") && !u.contains("-append"), "{u}");
    }

    #[test]
    fn free_ports_differ_from_zero() {
        assert_ne!(free_tcp_port(), 0);
        assert_ne!(free_udp_port(), 0);
    }

    #[test]
    fn temp_images_round_trip_and_vanish() {
        let path;
        {
            let img = TempImage::new("unit", 1 << 20).unwrap();
            img.write_at(4096, b"hello").unwrap();
            assert_eq!(img.read_at(4096, 5).unwrap(), b"hello");
            assert_eq!(fs::metadata(&img.path).unwrap().len(), 1 << 20);
            path = img.path.clone();
        }
        assert!(!path.exists());
    }
}
