//! `scoutvm-bench9p-load`: the server alone, side by side. Run by `cargo
//! xtask bench-9p-load`.
//!
//! Alternates, for R rounds, a freshly booted appliance (microvm, TCG,
//! fresh sparse images and the shell's `mkfs`, like `bench-9p`) and the
//! diod peer VM (`../shared/peers/diod-vm`, or `$SCOUTVM_DIOD_PEER`;
//! fresh ext4 per start), over QEMU user networking with a forwarded port
//! (`--net user`) and/or over a direct link (`--net link`: the server's
//! `-netdev dgram` end is owned by this process's `LinkRelay`, a native
//! TCP/IP stack, so no slirp is on the server's side and no root is
//! needed), and loads each from this host with `scoutvm_image::p9load` (the
//! code of `scoutvm p9load`) at 1 and at 16 requests outstanding. Prints
//! every `P9LOAD` line as it comes, then per op and outstanding the
//! medians of both and their ratio. Every QEMU it starts is stopped by
//! pid (the appliance's child process; the peer through `peer-stop.sh`,
//! which uses its pid file). No timing assertions: figures only.
//!
//! Usage: scoutvm-bench9p-load [--rounds R] [--seconds S] [--msize N]
//!        [--ops LIST] [--net user|link|both] [--no-peer] [--ram]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{exit, Command, Stdio};
use std::time::Duration;

use scoutvm_image::p9load::{self, Budget, Config, Op, OpReport};
use scoutvm_tests::guest::{GuestLink, APPLIANCE_IP};
use scoutvm_tests::link_relay::LinkRelay;
use scoutvm_tests::{free_tcp_port, workspace_root, Machine, Net, TempImage, Vm, VmConfig};

fn fail(msg: &str) -> ! {
    eprintln!("bench9p-load: {msg}");
    exit(1)
}

struct Args {
    rounds: u32,
    seconds: f64,
    msize: u32,
    ops: Vec<Op>,
    peer: bool,
    ram: bool,
    nets: Vec<Link>,
}

/// How the host reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Link {
    /// QEMU user networking, a forwarded 127.0.0.1 port.
    User,
    /// A `-netdev dgram` Ethernet to this process's relay.
    Direct,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::User => "user",
            Link::Direct => "link",
        }
    }
}

/// The server's IP on a direct link, as an array.
fn link_ip() -> [u8; 4] {
    let v: Vec<u8> = APPLIANCE_IP
        .split('.')
        .map(|o| o.parse().expect("a dotted quad"))
        .collect();
    [v[0], v[1], v[2], v[3]]
}

const USAGE: &str = "usage: scoutvm-bench9p-load [--rounds R] [--seconds S] [--msize N] \
                     [--ops LIST] [--net user|link|both] [--no-peer] [--ram]";

fn parse() -> Args {
    let mut a = Args {
        rounds: 3,
        seconds: 2.0,
        // diod caps msize at 64 KiB: ask both for the same.
        msize: 64 << 10,
        ops: Op::ALL.to_vec(),
        peer: true,
        ram: false,
        nets: vec![Link::User, Link::Direct],
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = |i: usize| -> &str {
            argv.get(i + 1)
                .map(|s| s.as_str())
                .unwrap_or_else(|| fail(&format!("{} needs a value", argv[i])))
        };
        let bad = |i: usize| -> ! { fail(&format!("{}: bad value {:?}", argv[i], argv[i + 1])) };
        match argv[i].as_str() {
            "--rounds" => {
                a.rounds = val(i)
                    .parse()
                    .ok()
                    .filter(|&r| r > 0)
                    .unwrap_or_else(|| bad(i));
                i += 1;
            }
            "--seconds" => {
                a.seconds = val(i)
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && s.is_finite())
                    .unwrap_or_else(|| bad(i));
                i += 1;
            }
            "--msize" => {
                a.msize = val(i).parse().ok().unwrap_or_else(|| bad(i));
                i += 1;
            }
            "--ops" => {
                a.ops = p9load::parse_ops(val(i)).unwrap_or_else(|e| fail(&e));
                i += 1;
            }
            "--net" => {
                a.nets = match val(i) {
                    "user" => vec![Link::User],
                    "link" => vec![Link::Direct],
                    "both" => vec![Link::User, Link::Direct],
                    _ => bad(i),
                };
                i += 1;
            }
            "--no-peer" => a.peer = false,
            "--ram" => a.ram = true,
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                exit(0)
            }
            s => fail(&format!("unknown argument {s}\n{USAGE}")),
        }
        i += 1;
    }
    a
}

/// Figures per (server, outstanding, op name), one per round.
type Results = BTreeMap<(Link, &'static str, usize, String), Vec<OpReport>>;

/// Load `server` at 1 and 16 outstanding; every line printed as it comes.
#[allow(clippy::too_many_arguments)]
fn load(
    a: &Args,
    who: &'static str,
    net: Link,
    round: u32,
    server: &str,
    aname: &str,
    levels: &[usize],
    res: &mut Results,
) {
    for &outstanding in levels {
        let mut cfg = Config::new(server);
        cfg.aname = aname.into();
        cfg.msize = a.msize;
        cfg.outstanding = outstanding;
        cfg.budget = Budget::Seconds(a.seconds);
        cfg.ops = a.ops.clone();
        let r = p9load::run_with(&cfg, &mut |rep| {
            println!("{}    # {who}, {}, round {round}", rep.line(), net.name());
            res.entry((net, who, outstanding, rep.op.name()))
                .or_default()
                .push(rep.clone());
        });
        if let Err(e) = r {
            println!(
                "# {who}, {}, round {round}, {outstanding} outstanding: p9load failed: {e}",
                net.name()
            );
        }
    }
}

/// Boot an appliance on fresh images with a forwarded 9P port, load it,
/// power it off (the QEMU child is killed by pid if it does not end).
fn round_appliance(a: &Args, net: Link, round: u32, res: &mut Results) -> Result<(), String> {
    let port = free_tcp_port();
    let link = GuestLink::new();
    let meta = TempImage::new("p9load-meta", 4 << 30).map_err(|e| format!("meta image: {e}"))?;
    let data = TempImage::new("p9load-data", 16 << 30).map_err(|e| format!("data image: {e}"))?;
    let mut cfg = VmConfig::new(Machine::Microvm)
        .disk(&meta.path, "meta")
        .disk(&data.path, "data")
        .net(match net {
            Link::User => Net::User {
                hostfwd: vec![(port, 564)],
            },
            Link::Direct => Net::Dgram {
                local_port: link.appliance_port,
                remote_port: link.guest_port,
            },
        });
    if net == Link::Direct {
        cfg = cfg.append(&link.appliance_cmdline());
    }
    if a.ram {
        cfg = cfg.append("volume=ram:2048");
    }
    cfg.mem_mb = if a.ram { 3072 } else { 1024 };
    let mut vm = Vm::spawn(&cfg).map_err(|e| format!("start QEMU: {e}"))?;
    let long = Duration::from_secs(300);
    if !a.ram {
        vm.wait_for("no scoutfs volume", long)
            .map_err(|e| e.to_string())?;
        let out = vm
            .run_timeout(
                &format!(
                    "mkfs -A -Q 0,{},7100",
                    if net == Link::Direct {
                        APPLIANCE_IP
                    } else {
                        "10.0.2.15"
                    }
                ),
                long,
            )
            .map_err(|e| e.to_string())?;
        if !out.contains("mounted") {
            return Err(format!("mkfs: {out}"));
        }
    }
    vm.wait_for("p9: serving", long)
        .map_err(|e| e.to_string())?;
    let relay = match net {
        Link::User => None,
        Link::Direct => Some(
            LinkRelay::start(link.guest_port, link.appliance_port, link_ip(), 564)
                .map_err(|e| format!("link relay: {e}"))?,
        ),
    };
    let server_port = relay.as_ref().map(|r| r.port()).unwrap_or(port);
    for outstanding in [1, 16] {
        let before = p9_counters(&mut vm);
        load(
            a,
            "appliance",
            net,
            round,
            &format!("127.0.0.1:{server_port}"),
            "",
            &[outstanding],
            res,
        );
        let after = p9_counters(&mut vm);
        print_split(net, round, outstanding, &before, &after);
    }
    drop(relay);
    if let Err(e) = vm.poweroff() {
        eprintln!("bench9p-load: poweroff: {e}");
    }
    Ok(())
}

/// The appliance's `p9.` counters (the shell's `counters p9.`).
fn p9_counters(vm: &mut Vm) -> BTreeMap<String, u64> {
    let out = vm.run("counters p9.").unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            let v = w.next()?.parse().ok()?;
            name.starts_with("p9.").then(|| (name.to_string(), v))
        })
        .collect()
}

/// Where the appliance's requests spent their time during one load: per
/// request, the mean of decode and bookkeeping up to the task's spawn,
/// waiting to run, the operation with its reply's encoding, and writing
/// the reply into the TCP socket (back-pressure included).
fn print_split(
    net: Link,
    round: u32,
    outstanding: usize,
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) {
    let d = |k: &str| {
        after
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(k).copied().unwrap_or(0))
    };
    let n = d("p9.requests");
    if n == 0 {
        println!("# appliance, {}, round {round}: no p9 counters", net.name());
        return;
    }
    let us = |k: &str| d(k) as f64 / n as f64 / 1000.0;
    println!(
        "P9SPLIT net={} out={outstanding} requests={n} dispatch_us={:.1} queued_us={:.1} op_us={:.1} transmit_us={:.1}    # appliance, round {round}",
        net.name(),
        us("p9.ns_dispatch"),
        us("p9.ns_queued"),
        us("p9.ns_op"),
        us("p9.ns_transmit"),
    );
}

/// The diod peer VM, stopped (by its pid file) when dropped.
struct Peer {
    dir: PathBuf,
    build: PathBuf,
    port: u16,
    /// On a direct link: its `-netdev dgram` ports.
    link: Option<GuestLink>,
}

impl Peer {
    fn script(&self, name: &str) -> Command {
        let mut c = Command::new(self.dir.join(name));
        c.arg(self.port.to_string())
            .env("PEER_BUILD_DIR", &self.build)
            .stdin(Stdio::null());
        if let Some(l) = self.link {
            c.env(
                "PEER_NETDEV",
                format!(
                    "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={},\
                     remote.type=inet,remote.host=127.0.0.1,remote.port={}",
                    l.appliance_port, l.guest_port
                ),
            )
            .env(
                "PEER_APPEND",
                format!("peer.ip={APPLIANCE_IP}/24 peer.gw=10.0.3.1"),
            );
        }
        c
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.script("peer-stop.sh").output();
    }
}

fn peer_dir() -> PathBuf {
    std::env::var_os("SCOUTVM_DIOD_PEER")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/peers/diod-vm"))
}

fn peer_build_dir() -> PathBuf {
    std::env::var_os("PEER_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/diod-peer"))
}

fn round_peer(a: &Args, net: Link, round: u32, res: &mut Results) -> Result<(), String> {
    let dir = peer_dir();
    if !dir.join("peer-start.sh").exists() {
        return Err(format!("no diod peer at {}", dir.display()));
    }
    let peer = Peer {
        dir,
        build: peer_build_dir(),
        port: free_tcp_port(),
        link: (net == Link::Direct).then(GuestLink::new),
    };
    // The relay owns the link's other end before the peer boots.
    let relay = match peer.link {
        None => None,
        Some(l) => Some(
            LinkRelay::start(l.guest_port, l.appliance_port, link_ip(), 564)
                .map_err(|e| format!("link relay: {e}"))?,
        ),
    };
    let started = peer
        .script("peer-start.sh")
        .output()
        .map_err(|e| format!("cannot run peer-start.sh: {e}"))?;
    if !started.status.success() {
        return Err(format!(
            "peer-start.sh failed ({}): {}",
            started.status,
            String::from_utf8_lossy(&started.stderr).trim()
        ));
    }
    let server_port = relay.as_ref().map(|r| r.port()).unwrap_or(peer.port);
    load(
        a,
        "diod-vm",
        net,
        round,
        &format!("127.0.0.1:{server_port}"),
        "/export",
        &[1, 16],
        res,
    );
    drop(relay);
    drop(peer);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn summary(a: &Args, net: Link, res: &Results) {
    println!(
        "# medians of {} rounds, {} networking, msize asked {}",
        a.rounds,
        net.name(),
        a.msize
    );
    println!(
        "# {:<9} {:>3}  {:>12} {:>12} {:>7}   {:>9} {:>9} {:>7}   {:>8} {:>8}",
        "op",
        "out",
        "appl ops/s",
        "diod ops/s",
        "ratio",
        "appl MB/s",
        "diod MB/s",
        "ratio",
        "appl p50",
        "diod p50"
    );
    for outstanding in [1, 16] {
        for op in &a.ops {
            let get = |who: &'static str| res.get(&(net, who, outstanding, op.name()));
            let (Some(s), d) = (get("appliance"), get("diod-vm")) else {
                continue;
            };
            let med = |r: Option<&Vec<OpReport>>, f: &dyn Fn(&OpReport) -> f64| {
                r.map(|v| median(v.iter().map(f).collect()))
            };
            let (so, do_) = (
                med(Some(s), &|r| r.ops_per_sec()),
                med(d, &|r| r.ops_per_sec()),
            );
            let (sm, dm) = (
                med(Some(s), &|r| r.mb_per_sec()),
                med(d, &|r| r.mb_per_sec()),
            );
            let (sp, dp) = (
                med(Some(s), &|r| r.p50_us as f64),
                med(d, &|r| r.p50_us as f64),
            );
            let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
                (Some(x), Some(y)) if y > 0.0 => format!("{:.2}x", x / y),
                _ => "-".into(),
            };
            let num = |x: Option<f64>, prec: usize| {
                x.map(|x| format!("{x:.prec$}"))
                    .unwrap_or_else(|| "-".into())
            };
            let data = matches!(op, Op::Read(_) | Op::Write(_));
            println!(
                "P9LOADCMP net={} op={:<9} out={:>2}  {:>12} {:>12} {:>7}   {:>9} {:>9} {:>7}   {:>8} {:>8}",
                net.name(),
                op.name(),
                outstanding,
                num(so, 1),
                num(do_, 1),
                ratio(so, do_),
                if data { num(sm, 2) } else { "-".into() },
                if data { num(dm, 2) } else { "-".into() },
                if data { ratio(sm, dm) } else { "-".into() },
                num(sp, 0),
                num(dp, 0),
            );
        }
    }
}

fn main() {
    let a = parse();
    let mut res = Results::new();
    for round in 1..=a.rounds {
        for &net in &a.nets {
            if let Err(e) = round_appliance(&a, net, round, &mut res) {
                println!(
                    "# appliance, {}, round {round}: not measured: {e}",
                    net.name()
                );
            }
            if a.peer {
                if let Err(e) = round_peer(&a, net, round, &mut res) {
                    println!(
                        "# diod-vm, {}, round {round}: not measured: {e}",
                        net.name()
                    );
                }
            }
        }
    }
    for &net in &a.nets {
        summary(&a, net, &res);
    }
}
