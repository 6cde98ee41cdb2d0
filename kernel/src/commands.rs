//! The built-in shell commands: help, version, uptime, mem, devices, net,
//! ping, counters, trace, exec, blkbench, echo, debug, poweroff. Each is a plain
//! async fn registered in [`register_builtins`]; later subsystems register
//! their own the same way (see `shell::register`).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use scoutvm_drivers::{clock, irq};
use scoutvm_fs::runtime::counters;
use scoutvm_fs::runtime::trace;
use scoutvm_fs::storage::dev::BlockDev;
use scoutvm_kernel::cmdline::{parse_ipv4, NetConfig};
use scoutvm_kernel::datetime::Utc;

use crate::shell::{boxed, expect_args, parse_arg, register, CmdFuture, CmdResult, Command};
use crate::{console, devices, interrupts, mem, net};

const BUILTINS: &[Command] = &[
    Command {
        name: "help",
        usage: "",
        help: "list commands",
        run: |a| boxed(help(a)),
    },
    Command {
        name: "version",
        usage: "",
        help: "software version",
        run: |a| boxed(version(a)),
    },
    Command {
        name: "uptime",
        usage: "",
        help: "time since boot and wall-clock time",
        run: |a| boxed(uptime(a)),
    },
    Command {
        name: "mem",
        usage: "",
        help: "RAM and heap usage",
        run: |a| boxed(mem_cmd(a)),
    },
    Command {
        name: "devices",
        usage: "",
        help: "virtio devices: type, transport, size or MAC",
        run: |a| boxed(devices_cmd(a)),
    },
    Command {
        name: "net",
        usage: "",
        help: "interface address, link and counters",
        run: |a| boxed(net_cmd(a)),
    },
    Command {
        name: "ping",
        usage: "HOST [COUNT]",
        help: "ICMP echo to an IPv4 address",
        run: |a| boxed(ping(a)),
    },
    Command {
        name: "counters",
        usage: "[PREFIX]",
        help: "named counters",
        run: |a| boxed(counters_cmd(a)),
    },
    Command {
        name: "trace",
        usage: "[PREFIX] [COUNT]",
        help: "newest trace ring events (those whose name starts with PREFIX)",
        run: |a| boxed(trace_cmd(a)),
    },
    Command {
        name: "exec",
        usage: "[reset]",
        help: "executor: tasks, polls, the longest poll and its task",
        run: |a| boxed(exec_cmd(a)),
    },
    Command {
        name: "blkread",
        usage: "DEV OFFSET [LEN]",
        help: "read bytes; print crc32c and the first 16 bytes",
        run: |a| boxed(blkread(a)),
    },
    Command {
        name: "blkwrite",
        usage: "DEV OFFSET BYTE [LEN]",
        help: "fill LEN bytes (default 4096) with BYTE, then flush",
        run: |a| boxed(blkwrite(a)),
    },
    Command {
        name: "blkbench",
        usage: "DEV [MIB] [write]",
        help: "sequential read (and with 'write', DESTRUCTIVE write) MB/s",
        run: |a| boxed(blkbench(a)),
    },
    Command {
        name: "tcpecho",
        usage: "PORT [BACKLOG]",
        help: "serve TCP echo on PORT (tests the socket API)",
        run: |a| boxed(tcpecho(a)),
    },
    Command {
        name: "tcpsend",
        usage: "HOST PORT TEXT",
        help: "connect, send TEXT, print the echoed reply",
        run: |a| boxed(tcpsend(a)),
    },
    Command {
        name: "udpecho",
        usage: "PORT",
        help: "serve UDP echo on PORT",
        run: |a| boxed(udpecho(a)),
    },
    Command {
        name: "echo",
        usage: "[WORDS...]",
        help: "print the words",
        run: |a| boxed(echo(a)),
    },
    Command {
        name: "debug",
        usage: "panic|exception|triplefault",
        help: "crash on purpose (tests)",
        run: |a| boxed(debug(a)),
    },
    Command {
        name: "poweroff",
        usage: "",
        help: "unmount the volume, flush disks and power off",
        run: |a| boxed(poweroff(a)),
    },
];

pub fn register_builtins() {
    for c in BUILTINS {
        register(*c).expect("built-in command names are unique");
    }
}

/// Keep the run-time type visible to readers of BUILTINS.
#[allow(dead_code)]
fn _type_check(f: fn(Vec<String>) -> CmdFuture) -> fn(Vec<String>) -> CmdFuture {
    f
}

async fn help(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "help")?;
    for c in crate::shell::commands() {
        let synopsis = if c.usage.is_empty() {
            c.name.to_string()
        } else {
            format!("{} {}", c.name, c.usage)
        };
        kprintln!("  {:<28} {}", synopsis, c.help);
    }
    Ok(())
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

async fn version(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "version")?;
    kprintln!(
        "ScoutVM {} (x86_64 unikernel, scoutfs format v2) node {}",
        VERSION,
        crate::runtime::config().node
    );
    Ok(())
}

pub fn format_wall(sec: u64) -> String {
    format!("{} UTC", Utc(sec))
}

async fn uptime(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "uptime")?;
    use scoutvm_fs::runtime::env::Clock;
    let c = crate::platform::KernelClock;
    let ns = c.monotonic_ns();
    let wall = c.wall().sec;
    kprintln!(
        "up {}.{:03} s, wall clock {}, tsc {} MHz",
        ns / 1_000_000_000,
        (ns / 1_000_000) % 1000,
        format_wall(wall),
        clock::tsc_hz() / 1_000_000
    );
    Ok(())
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

async fn mem_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "mem")?;
    let m = mem::stats();
    kprintln!("ram        {}", size(m.ram_bytes));
    kprintln!("heap       {}", size(m.heap_bytes));
    kprintln!(
        "heap used  {} (requested {})",
        size(m.heap_used_bytes),
        size(m.heap_requested_bytes)
    );
    kprintln!("heap free  {}", size(m.heap_bytes - m.heap_used_bytes));
    Ok(())
}

fn mac_str(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

fn irq_str(gsi: Option<u32>) -> String {
    use core::sync::atomic::Ordering::Relaxed;
    match gsi {
        None => "polled".to_string(),
        Some(g) => format!(
            "irq {g} ({} taken)",
            irq::GSI_IRQS[g as usize].load(Relaxed)
        ),
    }
}

async fn devices_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "devices")?;
    let list = devices::list();
    let meta = devices::role("meta").map(|b| b.name.as_str());
    let data = devices::role("data").map(|b| b.name.as_str());
    for b in &list.blocks {
        let d = b.dev;
        let role = if meta == Some(b.name.as_str()) {
            " role meta"
        } else if data == Some(b.name.as_str()) {
            " role data"
        } else {
            ""
        };
        let role = match devices::partition_table(b) {
            Some("GPT") => " GPT-partitioned (not a volume disk)",
            Some(_) => " partitioned (not a volume disk)",
            None => role,
        };
        kprintln!(
            "{:<5} virtio-blk {:<4} {:<16} size {} ({} bytes) serial '{}'{}{} {}",
            b.name,
            d.location().transport_name(),
            format!("{}", d.location()),
            size(d.size_bytes()),
            d.size_bytes(),
            d.serial(),
            role,
            if d.readonly() { " read-only" } else { "" },
            irq_str(d.gsi())
        );
    }
    for (i, &(mac, loc, gsi)) in list.nets.iter().enumerate() {
        kprintln!(
            "{:<5} virtio-net {:<4} {:<16} mac {} {}",
            format!("eth{i}"),
            loc.transport_name(),
            format!("{loc}"),
            mac_str(mac),
            irq_str(gsi)
        );
    }
    for o in &list.others {
        kprintln!(
            "{:<5} {:<10} {:<4} {:<16} {}",
            "-",
            o.kind,
            o.location.transport_name(),
            format!("{}", o.location),
            o.note
        );
    }
    if list.blocks.is_empty() && list.nets.is_empty() && list.others.is_empty() {
        kprintln!("no virtio devices");
    }
    Ok(())
}

async fn net_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "net")?;
    let infos = net::infos();
    if infos.is_empty() {
        return Err("no network interface".to_string());
    }
    for info in &infos {
        let mode = match info.mode {
            NetConfig::Dhcp => "dhcp",
            NetConfig::Static { .. } => "static",
            NetConfig::Off => "off",
        };
        kprintln!(
            "{:<5} mac {}  link up  mtu {}",
            info.name,
            mac_str(info.mac),
            net::mtu().unwrap_or(0)
        );
        match info.addr {
            Some(a) => kprintln!("      inet {} ({})", a, mode),
            None => kprintln!(
                "      inet none ({}{})",
                mode,
                if mode == "dhcp" {
                    ", waiting for lease"
                } else {
                    ""
                }
            ),
        }
        if let Some(g) = info.gateway {
            kprintln!("      gateway {}.{}.{}.{}", g[0], g[1], g[2], g[3]);
        }
    }
    let info = &infos[0];
    let c = |n| counters::get(n).unwrap_or(0);
    kprintln!(
        "      rx {} frames {} bytes",
        c("net.rx_frames"),
        c("net.rx_bytes")
    );
    kprintln!(
        "      tx {} frames {} bytes, {} errors",
        c("net.tx_frames"),
        c("net.tx_bytes"),
        c("net.tx_errors")
    );
    kprintln!("      sockets {} of {}", info.sockets, net::SOCKETS_MAX);
    Ok(())
}

async fn ping(args: Vec<String>) -> CmdResult {
    expect_args(&args, 1, 2, "ping HOST [COUNT]")?;
    let host = parse_ipv4(&args[0]).ok_or_else(|| format!("bad IPv4 address '{}'", args[0]))?;
    let count: u16 = match args.get(1) {
        Some(c) => parse_arg("count", c)?,
        None => 3,
    };
    if count == 0 || count > 1000 {
        return Err("count must be 1..1000".to_string());
    }
    let h = crate::runtime::handle();
    let mut received = 0;
    for seq in 1..=count {
        match net::ping(host, seq, 2_000_000_000).await {
            Ok(rtt) => {
                received += 1;
                kprintln!(
                    "reply from {}: seq={} time={}.{:03} ms",
                    args[0],
                    seq,
                    rtt / 1_000_000,
                    (rtt / 1000) % 1000
                );
            }
            Err(net::NetError::Timeout) => kprintln!("timeout seq={}", seq),
            Err(e) => return Err(format!("{e}")),
        }
        if seq < count {
            h.sleep_ns(200_000_000).await;
        }
    }
    kprintln!("{} sent, {} received", count, received);
    if received == 0 {
        return Err(format!("no reply from {}", args[0]));
    }
    Ok(())
}

/// Mirror the interrupt layer's atomics into named counters.
fn refresh_counters() {
    use core::sync::atomic::Ordering::Relaxed;
    scoutvm_fs::counter!("irq.timer").set(irq::TIMER_IRQS.load(Relaxed));
    scoutvm_fs::counter!("irq.device").set(irq::DEVICE_IRQS.load(Relaxed));
    scoutvm_fs::counter!("irq.spurious").set(irq::SPURIOUS_IRQS.load(Relaxed));
    scoutvm_fs::counter!("cpu.halts").set(irq::HALTS.load(Relaxed));
    let s = crate::runtime::handle().stats();
    scoutvm_fs::counter!("exec.alive").set(s.alive as u64);
    scoutvm_fs::counter!("exec.polls").set(s.polls);
    scoutvm_fs::counter!("exec.timers_fired").set(s.timers_fired);
    // exec.max_poll_ns and exec.long_polls are kept by the executor itself
    let t = trace::stats();
    scoutvm_fs::counter!("trace.emitted").set(t.emitted);
    scoutvm_fs::counter!("trace.overwritten").set(t.overwritten);
}

async fn counters_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 1, "counters [PREFIX]")?;
    refresh_counters();
    let prefix = args.first().map(|s| s.as_str()).unwrap_or("");
    let list = counters::snapshot_prefix(prefix);
    if list.is_empty() {
        return Err(format!("no counter starts with '{prefix}'"));
    }
    for (name, v) in list {
        kprintln!("{:<32} {}", name, v);
    }
    Ok(())
}

async fn exec_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 1, "exec [reset]")?;
    let reset = match args.first().map(|a| a.as_str()) {
        None => false,
        Some("reset") => true,
        Some(other) => return Err(format!("unknown argument '{other}' (usage: exec [reset])")),
    };
    let h = crate::runtime::handle();
    let s = h.stats();
    kprintln!(
        "tasks: {} alive, {} spawned, {} completed, {} aborted, {} refused",
        s.alive,
        s.spawned,
        s.completed,
        s.aborted,
        s.rejected
    );
    kprintln!("polls: {}, timers fired: {}", s.polls, s.timers_fired);
    kprintln!(
        "longest poll: {}.{:03} ms (task #{} {}), {} over {} ms",
        s.max_poll_ns / 1_000_000,
        (s.max_poll_ns / 1_000) % 1_000,
        s.max_poll_task,
        s.max_poll_name,
        s.long_polls,
        scoutvm_fs::runtime::exec::LONG_POLL_NS / 1_000_000
    );
    if reset {
        h.reset_max_poll();
        kprintln!("longest poll reset");
    }
    Ok(())
}

async fn trace_cmd(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 2, "trace [PREFIX] [COUNT]")?;
    // a name prefix (`trace recov`, `trace lock_server`) and/or a count
    let mut n: usize = 50;
    let mut prefix: Option<&str> = None;
    for a in &args {
        if a.bytes().all(|b| b.is_ascii_digit()) {
            n = parse_arg("count", a)?;
        } else if prefix.is_none() {
            prefix = Some(a.as_str());
        } else {
            return Err("usage: trace [PREFIX] [COUNT]".to_string());
        }
    }
    let s = trace::stats();
    kprintln!(
        "trace: {} emitted, {} held of {}, {} overwritten by newer ones",
        s.emitted,
        s.held,
        s.capacity,
        s.overwritten
    );
    let events = match prefix {
        // filter the whole ring, then keep the newest n
        Some(p) => {
            let mut v: alloc::vec::Vec<_> = trace::recent(usize::MAX)
                .into_iter()
                .filter(|e| e.point.name.starts_with(p))
                .collect();
            let skip = v.len().saturating_sub(n);
            v.drain(..skip);
            v
        }
        None => trace::recent(n),
    };
    for e in events {
        kprintln!("{}", e);
    }
    Ok(())
}

async fn blkbench(args: Vec<String>) -> CmdResult {
    expect_args(&args, 1, 3, "blkbench DEV [MIB] [write]")?;
    let entry = devices::block(&args[0]).ok_or_else(|| format!("no block device '{}'", args[0]))?;
    let mut mib: u64 = 16;
    let mut write = false;
    for a in &args[1..] {
        if a == "write" {
            write = true;
        } else {
            mib = parse_arg("size in MiB", a)?;
        }
    }
    let dev = entry.dev;
    if mib == 0 || mib << 20 > dev.size_bytes() {
        return Err(format!("size must be 1..{} MiB", dev.size_bytes() >> 20));
    }
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    if write {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let t0 = clock::monotonic_ns();
        for i in 0..mib {
            dev.write(i * CHUNK as u64, &buf)
                .map_err(|e| format!("write: {e}"))?;
        }
        dev.flush().map_err(|e| format!("flush: {e}"))?;
        report("write", &entry.name, mib, clock::monotonic_ns() - t0);
    }
    let t0 = clock::monotonic_ns();
    for i in 0..mib {
        dev.read(i * CHUNK as u64, &mut buf)
            .map_err(|e| format!("read: {e}"))?;
    }
    report("read", &entry.name, mib, clock::monotonic_ns() - t0);
    Ok(())
}

fn report(what: &str, dev: &str, mib: u64, ns: u64) {
    let ns = ns.max(1);
    let mbps = (mib << 20) as f64 / (ns as f64 / 1e9) / 1e6;
    kprintln!(
        "blkbench {} {}: {} MiB in {}.{:03} s = {:.1} MB/s",
        dev,
        what,
        mib,
        ns / 1_000_000_000,
        (ns / 1_000_000) % 1000,
        mbps
    );
}

async fn echo(args: Vec<String>) -> CmdResult {
    kprintln!("{}", args.join(" "));
    Ok(())
}

async fn debug(args: Vec<String>) -> CmdResult {
    expect_args(&args, 1, 1, "debug panic|exception|triplefault")?;
    match args[0].as_str() {
        "panic" => panic!("debug panic requested from the shell"),
        "exception" => interrupts::force_exception(),
        "triplefault" => interrupts::force_triple_fault(),
        other => Err(format!("unknown debug action '{other}'")),
    }
}

async fn poweroff(args: Vec<String>) -> CmdResult {
    expect_args(&args, 0, 0, "poweroff")?;
    // Stop 9P, commit and unmount before the disks are flushed.
    if let Err(e) = crate::volume_service::shutdown().await {
        kprintln!("warning: unmount: {}", e);
    }
    for b in devices::blocks() {
        if let Err(e) = b.dev.flush() {
            kprintln!("warning: flush {}: {}", b.name, e);
        }
    }
    kprintln!("powering off");
    console::exit(console::EXIT_POWEROFF)
}

async fn tcpecho(args: Vec<String>) -> CmdResult {
    expect_args(&args, 1, 2, "tcpecho PORT [BACKLOG]")?;
    let port: u16 = parse_arg("port", &args[0])?;
    let backlog: usize = match args.get(1) {
        Some(b) => parse_arg("backlog", b)?,
        None => 8,
    };
    if backlog == 0 || backlog > 64 {
        return Err("backlog must be 1..64".to_string());
    }
    let listener = net::TcpListener::bind(port, backlog).map_err(|e| format!("{e}"))?;
    let h = crate::runtime::handle();
    let h2 = h.clone();
    h.spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("tcpecho {}: accept: {}", listener.port(), e);
                    return;
                }
            };
            if let Some((a, p)) = stream.peer() {
                log::debug!(
                    "tcpecho: connection from {}.{}.{}.{}:{}",
                    a[0],
                    a[1],
                    a[2],
                    a[3],
                    p
                );
            }
            let spawned = h2.spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = stream.flush().await;
                stream.shutdown();
            });
            if spawned.is_err() {
                log::warn!("tcpecho: too many tasks, connection dropped");
            }
        }
    })
    .map_err(|e| format!("{e}"))?;
    kprintln!("tcp echo listening on port {} (backlog {})", port, backlog);
    Ok(())
}

async fn udpecho(args: Vec<String>) -> CmdResult {
    expect_args(&args, 1, 1, "udpecho PORT")?;
    let port: u16 = parse_arg("port", &args[0])?;
    let sock = net::UdpSocket::bind(port).map_err(|e| format!("{e}"))?;
    crate::runtime::handle()
        .spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let _ = sock.send_to(&buf[..n], from).await;
            }
        })
        .map_err(|e| format!("{e}"))?;
    kprintln!("udp echo listening on port {}", port);
    Ok(())
}

async fn tcpsend(args: Vec<String>) -> CmdResult {
    expect_args(&args, 3, 3, "tcpsend HOST PORT TEXT")?;
    let host = parse_ipv4(&args[0]).ok_or_else(|| format!("bad IPv4 address '{}'", args[0]))?;
    let port: u16 = parse_arg("port", &args[1])?;
    let h = crate::runtime::handle();
    let text = args[2].clone();
    let exchange = async {
        let s = net::TcpStream::connect(host, port).await?;
        s.write_all(text.as_bytes()).await?;
        let mut reply = vec![0u8; text.len()];
        s.read_exact(&mut reply).await?;
        s.shutdown();
        Ok::<_, net::NetError>(reply)
    };
    match h.timeout_ns(5_000_000_000, exchange).await {
        Ok(Ok(reply)) => {
            kprintln!("reply: {}", String::from_utf8_lossy(&reply));
            Ok(())
        }
        Ok(Err(e)) => Err(format!("{e}")),
        Err(_) => Err("timed out".to_string()),
    }
}

/// Parse a number in decimal or with a 0x prefix.
fn parse_num(what: &str, s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("bad {what} '{s}'"))
}

/// Largest LEN accepted by blkread/blkwrite.
const BLK_CMD_LEN_MAX: u64 = 16 << 20;

async fn blkread(args: Vec<String>) -> CmdResult {
    expect_args(&args, 2, 3, "blkread DEV OFFSET [LEN]")?;
    let entry = devices::block(&args[0]).ok_or_else(|| format!("no block device '{}'", args[0]))?;
    let off = parse_num("offset", &args[1])?;
    let len = match args.get(2) {
        Some(l) => parse_num("length", l)?,
        None => 4096,
    };
    if len == 0 || len > BLK_CMD_LEN_MAX {
        return Err(format!("length must be 1..{BLK_CMD_LEN_MAX}"));
    }
    let mut buf = vec![0u8; len as usize];
    entry.dev.read(off, &mut buf).map_err(|e| format!("{e}"))?;
    let head: String = buf.iter().take(16).map(|b| format!("{b:02x}")).collect();
    kprintln!(
        "{} off {} len {} crc32c {:08x} head {}",
        entry.name,
        off,
        len,
        scoutvm_fs::format::hash::crc32c_raw(!0, &buf),
        head
    );
    Ok(())
}

async fn blkwrite(args: Vec<String>) -> CmdResult {
    expect_args(&args, 3, 4, "blkwrite DEV OFFSET BYTE [LEN]")?;
    let entry = devices::block(&args[0]).ok_or_else(|| format!("no block device '{}'", args[0]))?;
    let off = parse_num("offset", &args[1])?;
    let byte = parse_num("byte", &args[2])?;
    if byte > 0xff {
        return Err(format!("byte must be 0..255, not {byte}"));
    }
    let len = match args.get(3) {
        Some(l) => parse_num("length", l)?,
        None => 4096,
    };
    if len == 0 || len > BLK_CMD_LEN_MAX {
        return Err(format!("length must be 1..{BLK_CMD_LEN_MAX}"));
    }
    let buf = vec![byte as u8; len as usize];
    entry.dev.write(off, &buf).map_err(|e| format!("{e}"))?;
    entry.dev.flush().map_err(|e| format!("flush: {e}"))?;
    kprintln!(
        "{} wrote {} bytes of {:#04x} at {}",
        entry.name,
        len,
        byte,
        off
    );
    Ok(())
}
