//! The `qemu/cluster.sh` harness of the cluster tests: a run directory
//! under target/, a run of free host ports for the nodes' 9P, the script
//! run with the test's timeouts, the consoles for failure messages, and on
//! drop every recorded QEMU powered off, then killed by its pid.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::{elf_path, workspace_root};

/// A cluster run by `qemu/cluster.sh` in its own run directory.
pub struct Cluster {
    pub dir: PathBuf,
    pub elf: PathBuf,
    /// Node `i`'s 9P is forwarded to host port `p9_base + i`.
    pub p9_base: u16,
    /// Node `i`'s admin API (on with `api.token=`) is forwarded to host
    /// port `api_base + i`.
    pub api_base: u16,
    /// Node `i`'s FUSE service is forwarded to host port `fuse_base + i`.
    pub fuse_base: u16,
    /// `CLUSTER_BOOT_TIMEOUT` and `CLUSTER_SHELL_TIMEOUT`, in seconds.
    pub boot_timeout: u32,
    pub shell_timeout: u32,
    /// How many node consoles (node0..) failure messages show, and how
    /// many last lines of each (`None`: all of it).
    pub consoles: usize,
    pub console_tail: Option<usize>,
}

/// A base port with `n` free TCP ports after it on 127.0.0.1.
pub fn free_port_run(n: u16) -> u16 {
    'outer: for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("an ephemeral port");
        if base > u16::MAX - n {
            continue;
        }
        let mut held = Vec::new();
        for p in base..base + n {
            match TcpListener::bind(("127.0.0.1", p)) {
                Ok(l) => held.push(l),
                Err(_) => continue 'outer,
            }
        }
        return base;
    }
    panic!("no run of {n} free TCP ports");
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The value of counter `name` in a shell `counters` listing (0 when
/// absent: counters appear at their first use).
pub fn counter(listing: &str, name: &str) -> u64 {
    listing
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next().and_then(|v| v.parse().ok()))?
        })
        .unwrap_or(0)
}

impl Cluster {
    /// A cluster in `target/scoutvm/<name>-<pid>` with `ports` free 9P
    /// ports; callers set the timeouts and consoles fields as they need.
    pub fn new(name: &str, ports: u16) -> Cluster {
        let p9_base = free_port_run(ports);
        let mut api_base = free_port_run(ports);
        while api_base.abs_diff(p9_base) < ports {
            api_base = free_port_run(ports);
        }
        // the FUSE forwards too: cluster.sh's default base is fixed, and
        // two clusters at once (CI) would take the same ports
        let mut fuse_base = free_port_run(ports);
        while fuse_base.abs_diff(p9_base) < ports || fuse_base.abs_diff(api_base) < ports {
            fuse_base = free_port_run(ports);
        }
        Cluster {
            dir: workspace_root().join(format!("target/scoutvm/{name}-{}", std::process::id())),
            elf: elf_path(),
            p9_base,
            api_base,
            fuse_base,
            boot_timeout: 180,
            shell_timeout: 60,
            consoles: ports.into(),
            console_tail: None,
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(workspace_root().join("qemu/cluster.sh"))
            .args(args)
            .env("CLUSTER_DIR", &self.dir)
            .env("SCOUTVM_ELF", &self.elf)
            .env("CLUSTER_P9_BASE", self.p9_base.to_string())
            .env("CLUSTER_API_BASE", self.api_base.to_string())
            .env("CLUSTER_FUSE_BASE", self.fuse_base.to_string())
            .env("CLUSTER_BOOT_TIMEOUT", self.boot_timeout.to_string())
            .env("CLUSTER_SHELL_TIMEOUT", self.shell_timeout.to_string())
            .output()
            .expect("run qemu/cluster.sh")
    }

    /// Run and insist on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "cluster.sh {args:?} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.consoles()
        );
        stdout
    }

    /// Run `cmd` (split on whitespace) in `node`'s shell; insist on success.
    pub fn shell(&self, node: usize, cmd: &str) -> String {
        let n = node.to_string();
        let mut args = vec!["shell", n.as_str()];
        args.extend(cmd.split_whitespace());
        self.ok(&args)
    }

    /// Poll `cmd` on `node` until `done` holds (generous: TCG, loaded host).
    pub fn wait_shell(&self, node: usize, cmd: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let n = node.to_string();
            let mut args = vec!["shell", n.as_str()];
            args.extend(cmd.split_whitespace());
            // not mounted yet: the command errors, try again
            let out = String::from_utf8_lossy(&self.run(&args).stdout).into_owned();
            if done(&out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{cmd} on node{node}: {out}\n{}",
                self.consoles()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Wait until `node` has the volume mounted (its `ls /` answers).
    pub fn wait_mounted(&self, node: usize) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let n = node.to_string();
        loop {
            let out = self.run(&["shell", &n, "ls", "/"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node{node} did not mount: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                self.consoles()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The node consoles (or their last lines), for failure messages.
    pub fn consoles(&self) -> String {
        let mut s = String::new();
        for i in 0..self.consoles {
            let p = self.dir.join(format!("node{i}/console.log"));
            if let Ok(text) = fs::read_to_string(&p) {
                match self.console_tail {
                    None => s.push_str(&format!("--- node{i} console ---\n{text}\n")),
                    Some(n) => {
                        let lines: Vec<&str> = text.lines().collect();
                        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
                        s.push_str(&format!("--- node{i} console (tail) ---\n{tail}\n"));
                    }
                }
            }
        }
        s
    }

    /// `qemu/linux-guest.sh run` options mounting node0's 9P on /mnt/a and
    /// node1's on /mnt/b (no /mnt), uncached (`access=user,cache=none`:
    /// what a node answers is what the cluster holds), the guest killed
    /// after `timeout_secs`.
    pub fn two_node_guest_args(&self, timeout_secs: u64) -> Vec<String> {
        let (pa, pb) = (self.p9_base, self.p9_base + 1);
        [
            "--no-mount".to_string(),
            "--mount".into(),
            format!("/mnt/a=10.0.2.2:{pa}"),
            "--mount".into(),
            format!("/mnt/b=10.0.2.2:{pb}"),
            "--mount-opts".into(),
            "access=user,cache=none".into(),
            "--timeout".into(),
            timeout_secs.to_string(),
        ]
        .to_vec()
    }

    /// Power off all `nodes` nodes and insist that each powered off, no
    /// QEMU of the run is left, and the host fsck of the images `meta` and
    /// `data` is clean.
    pub fn down_clean(&self, nodes: usize, meta: &Path, data: &Path) {
        let pids = self.recorded_pids();
        assert_eq!(pids.len(), nodes);
        let down = self.ok(&["down"]);
        for i in 0..nodes {
            assert!(
                down.contains(&format!("node{i}: powered off")),
                "{down}\n{}",
                self.consoles()
            );
        }
        for pid in pids {
            assert!(!alive(pid), "QEMU {pid} left running");
        }
        let (clean, report) = crate::guest::fsck_images(meta, data);
        assert!(clean, "fsck after the run:\n{report}");
    }

    /// Node `node`'s QEMU pid as its pid file records it.
    pub fn pid_of(&self, node: usize) -> u32 {
        fs::read_to_string(self.dir.join(format!("node{node}/qemu.pid")))
            .expect("a pid file")
            .trim()
            .parse()
            .expect("a pid")
    }

    /// The pids the run directory recorded (running or not).
    pub fn recorded_pids(&self) -> Vec<u32> {
        recorded_qemu_pids(&self.dir)
    }

    /// For programs built with `panic = "abort"` (the release profile),
    /// where `Drop` does not run: a panic first kills every QEMU and the
    /// fence agent this run directory recorded.
    pub fn kill_on_panic(&self) {
        let dir = self.dir.clone();
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let mut pids = recorded_qemu_pids(&dir);
            if let Some(agent) = fs::read_to_string(dir.join("fence-agent.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                pids.push(agent);
            }
            for pid in pids {
                if alive(pid) {
                    // SAFETY: kill(2) on a pid this run recorded and just saw alive.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
            prev(info);
        }));
    }
}

/// The QEMU pids recorded under a cluster run directory.
fn recorded_qemu_pids(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let f = entry.path().join("qemu.pid");
        if let Some(pid) = fs::read_to_string(&f)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            pids.push(pid);
        }
    }
    pids
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // On a failed assertion: power off what is left, then kill by pid.
        let _ = self.run(&["down"]);
        for pid in self.recorded_pids() {
            if alive(pid) {
                // SAFETY: kill(2) on a pid this run recorded and just saw alive.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
