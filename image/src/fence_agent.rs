//! `scoutvm fence-agent`: the host side of fencing for a `qemu/cluster.sh`
//! cluster. Appliances started with `fence.agent=IP:PORT` send each fence
//! request here (the line protocol of `scoutvm_fs::cluster::host_fence`,
//! docs/cluster.md). The agent maps the rid to a node of the run directory
//! by the `... through the cluster as rid R` line each node prints on its
//! console (the address `10.77.0.X:port` of the node's `ip1=` word when the
//! rid is unknown), stops that node's QEMU through its QMP socket (`quit`;
//! SIGKILL if QMP does not answer), waits until the pid is gone, and only
//! then answers `FENCED`. A rid of an earlier life of a node (the node was
//! restarted since) is already gone: `FENCED` without touching the new
//! life. A rid no node ever had: `ERROR`. Every request and answer is
//! appended to the log file.

use scoutvm_fs::cluster::host_fence::{parse_request, LineReader, ParsedRequest};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the agent waits for a stopped QEMU's pid to disappear.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// What to do about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// The node's running life (its directory) is the one to stop.
    Running(PathBuf),
    /// The rid belonged to a life that is no longer running.
    Gone(String),
}

/// The `nodeI` directories of a run directory.
fn node_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .and_then(|n| n.strip_prefix("node"))
                            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The rids a node's console shows per life (oldest first).
fn lives(node: &Path) -> Vec<Vec<u64>> {
    let log = std::fs::read(node.join("console.log")).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let mut lives: Vec<Vec<u64>> = Vec::new();
    for line in log.lines() {
        // a killed life's last line may lack its newline (a prompt): the
        // start marker then follows it on the same line
        let line = match line.find("=== node") {
            Some(at) if line[at..].contains(" start ") => {
                rid_of_line(&line[..at], &mut lives);
                lives.push(Vec::new());
                continue;
            }
            _ => line,
        };
        rid_of_line(line, &mut lives);
    }
    lives
}

/// A mount's `... through the cluster as rid R` line: R joins the last life.
fn rid_of_line(line: &str, lives: &mut [Vec<u64>]) {
    {
        if let Some((_, r)) = line.split_once("through the cluster as rid ") {
            let hex: String = r.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
            if let (Ok(rid), Some(l)) = (u64::from_str_radix(&hex, 16), lives.last_mut()) {
                l.push(rid);
            }
        }
    }
}

/// The node whose `ip1=` word holds the IP of `addr` ("a.b.c.d:port").
fn node_by_addr(dir: &Path, addr: &str) -> Option<PathBuf> {
    let ip = addr.rsplit_once(':').map(|(ip, _)| ip)?;
    node_dirs(dir).into_iter().find(|n| {
        std::fs::read_to_string(n.join("cmdline"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|w| {
                w.strip_prefix("ip1=")
                    .and_then(|v| v.split('/').next())
                    .is_some_and(|v| v == ip)
            })
    })
}

/// Which machine a request is about.
pub fn resolve(dir: &Path, req: &ParsedRequest) -> Result<Target, String> {
    for n in node_dirs(dir) {
        let l = lives(&n);
        let Some(at) = l.iter().rposition(|rids| rids.contains(&req.rid)) else {
            continue;
        };
        let name = n
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        return Ok(if at + 1 == l.len() {
            Target::Running(n)
        } else {
            Target::Gone(format!("{name} (an earlier life; it was restarted since)"))
        });
    }
    // a rid never printed: the node died before it mounted, or it is not
    // one of ours; the address names the slot's node
    let Some(addr) = &req.addr else {
        return Err(format!(
            "no node of {} has rid {:016x}",
            dir.display(),
            req.rid
        ));
    };
    let n = node_by_addr(dir, addr)
        .ok_or_else(|| format!("no node has rid {:016x} or address {addr}", req.rid))?;
    let name = n
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    match lives(&n).last() {
        // its running life mounted under another rid: the rid was an
        // earlier life's
        Some(r) if !r.is_empty() => Ok(Target::Gone(format!(
            "{name} (rid {:016x} is not its running life's)",
            req.rid
        ))),
        _ => Ok(Target::Running(n)),
    }
}

/// The pid of the node's QEMU if it runs (its command line names the
/// node's console socket, so a reused pid is never taken for it).
pub fn qemu_pid(node: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(node.join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let sock = node.join("console.sock");
    if !String::from_utf8_lossy(&cmd).contains(&*sock.to_string_lossy()) {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(") ").map(|(_, s)| s.chars().next())?;
    (state != Some('Z')).then_some(pid)
}

/// `quit` through the QMP socket.
fn qmp_quit(sock: &Path) -> Result<(), String> {
    let s = UnixStream::connect(sock).map_err(|e| format!("QMP {}: {e}", sock.display()))?;
    let t = Some(Duration::from_secs(5));
    s.set_read_timeout(t).map_err(|e| e.to_string())?;
    s.set_write_timeout(t).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("QMP greeting: {e}"))?;
    if !line.contains("\"QMP\"") {
        return Err(format!("QMP greeting: {}", line.trim()));
    }
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .map_err(|e| format!("QMP: {e}"))?;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| format!("QMP: {e}"))? == 0 {
            return Err("QMP closed".into());
        }
        if line.contains("\"return\"") {
            break;
        }
        if line.contains("\"error\"") {
            return Err(format!("QMP: {}", line.trim()));
        }
    }
    w.write_all(b"{\"execute\":\"quit\"}\n")
        .map_err(|e| format!("QMP quit: {e}"))?;
    // the answer (or the close) does not matter: the pid is the proof
    line.clear();
    let _ = r.read_line(&mut line);
    Ok(())
}

/// Stop the node's QEMU and wait until it is gone: what was done.
pub fn stop(node: &Path) -> Result<String, String> {
    let Some(pid) = qemu_pid(node) else {
        return Ok("its QEMU was not running".into());
    };
    let t0 = Instant::now();
    let how = match qmp_quit(&node.join("qmp.sock")) {
        Ok(()) => "quit through QMP".to_string(),
        Err(e) => {
            // kill(2) on a pid just checked to be this node's QEMU
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            format!("SIGKILL ({e})")
        }
    };
    while qemu_pid(node) == Some(pid) {
        if t0.elapsed() > STOP_WAIT {
            return Err(format!("QEMU pid {pid} still runs after {how}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(format!(
        "{how}, pid {pid} gone after {} ms",
        t0.elapsed().as_millis()
    ))
}

/// Answer one request line: (answer line, what to log).
pub fn answer(dir: &Path, line: &str) -> (String, String) {
    let req = match parse_request(line) {
        Ok(r) => r,
        Err(e) => {
            return (
                format!("ERROR 0000000000000000 bad request: {e}\n"),
                format!("bad request: {e}"),
            )
        }
    };
    let rid = req.rid;
    let r = resolve(dir, &req).and_then(|t| match t {
        Target::Gone(why) => Ok(format!("{why}: already gone")),
        Target::Running(n) => {
            let name = n
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            stop(&n).map(|how| format!("{name}: {how}"))
        }
    });
    match r {
        Ok(what) => (
            format!("FENCED {rid:016x}\n"),
            format!("FENCED {rid:016x}: {what}"),
        ),
        Err(e) => {
            let e = e.replace('\n', " ");
            (
                format!("ERROR {rid:016x} {e}\n"),
                format!("ERROR {rid:016x}: {e}"),
            )
        }
    }
}

fn read_request(s: &mut TcpStream) -> Result<String, String> {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut rd = LineReader::default();
    let mut buf = [0u8; 256];
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a whole request".into());
        }
        if let Some(l) = rd.feed(&buf[..n])? {
            return Ok(l);
        }
    }
}

fn stamp() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", t.as_secs(), t.subsec_millis())
}

/// Serve fence requests on `listener` forever, for the nodes under `dir`,
/// logging to `log`. One thread per connection; stops are serialized.
pub fn serve(listener: TcpListener, dir: PathBuf, log: PathBuf) -> std::io::Result<()> {
    let lock = std::sync::Arc::new(Mutex::new(()));
    let say = move |lock: &Mutex<()>, text: &str| {
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            let _ = writeln!(f, "{} {text}", stamp());
        }
    };
    let say = std::sync::Arc::new(say);
    let stopping = std::sync::Arc::new(Mutex::new(()));
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let (dir, lock, say, stopping) = (dir.clone(), lock.clone(), say.clone(), stopping.clone());
        std::thread::spawn(move || {
            let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let line = match read_request(&mut s) {
                Ok(l) => l,
                Err(e) => {
                    say(&lock, &format!("from {peer}: {e}"));
                    return;
                }
            };
            say(&lock, &format!("from {peer}: {line}"));
            let (ans, what) = {
                let _one = stopping.lock().unwrap_or_else(|p| p.into_inner());
                answer(&dir, &line)
            };
            say(&lock, &format!("to {peer}: {what}"));
            let _ = s.write_all(ans.as_bytes());
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fence-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn node(dir: &Path, i: usize, console: &str) -> PathBuf {
        let n = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&n).unwrap();
        std::fs::write(n.join("console.log"), console).unwrap();
        std::fs::write(
            n.join("cmdline"),
            format!("node=node{i} ip1=10.77.0.{}/24 quorum_slot_nr={i}", 10 + i),
        )
        .unwrap();
        n
    }

    /// A process that looks like the node's QEMU (its command line names
    /// the console socket), and a QMP socket that quits it.
    fn fake_qemu(n: &Path) -> Child {
        let sock = n.join("console.sock");
        let child = Command::new("sh")
            .args(["-c", "while :; do sleep 1; done", &sock.to_string_lossy()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::fs::write(n.join("qemu.pid"), child.id().to_string()).unwrap();
        let l = std::os::unix::net::UnixListener::bind(n.join("qmp.sock")).unwrap();
        let pid = child.id() as i32;
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {}}}\n").unwrap();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("qmp_capabilities") {
                    w.write_all(b"{\"return\": {}}\n").unwrap();
                }
                if line.contains("quit") {
                    w.write_all(b"{\"return\": {}}\n").unwrap();
                    Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status()
                        .unwrap();
                    return;
                }
                line.clear();
            }
        });
        child
    }

    const LIFE0: &str = "=== node0 start 2026: node=node0\n\
        [ 0.8] INFO scoutvm_kernel::volume: volume: mounted vda (meta) + vdb (data) through the cluster as rid 00000000000000a0\n";

    #[test]
    fn rids_map_to_lives_and_unknown_rids_are_errors() {
        let d = tmp("map");
        // node0's first life was killed at its prompt (no newline)
        node(
            &d,
            0,
            &format!("{LIFE0}node0> === node0 start 2027: node=node0\n"),
        );
        node(
            &d,
            1,
            "=== node1 start 1\nINFO volume: mounted x through the cluster as rid 00000000000000b1\n  rid 00000000000000a0\n",
        );
        let req = |rid: u64, addr: Option<&str>| ParsedRequest {
            rid,
            addr: addr.map(String::from),
            reason: scoutvm_fs::cluster::fence::FenceReason::ClientRecovery,
            term: 1,
        };
        assert!(matches!(resolve(&d, &req(0xa0, None)), Ok(Target::Gone(_))));
        assert_eq!(
            resolve(&d, &req(0xb1, None)),
            Ok(Target::Running(d.join("node1")))
        );
        assert!(resolve(&d, &req(0xc3, None))
            .unwrap_err()
            .contains("no node"));
        // unknown rid, a known address: node0's running life printed no rid
        assert_eq!(
            resolve(&d, &req(0xc3, Some("10.77.0.10:7100"))),
            Ok(Target::Running(d.join("node0")))
        );
        // node1's running life has another rid: the asked one is gone
        assert!(matches!(
            resolve(&d, &req(0xc3, Some("10.77.0.11:7100"))),
            Ok(Target::Gone(_))
        ));
        assert!(resolve(&d, &req(0xc3, Some("10.9.9.9:1"))).is_err());
        let (a, _) = answer(&d, "FENCE zz - client_recovery 1");
        assert!(a.starts_with("ERROR 0000000000000000 bad request"), "{a}");
        let (a, _) = answer(&d, "FENCE 00000000000000c3 - client_recovery 1");
        assert!(a.starts_with("ERROR 00000000000000c3 no node"), "{a}");
        let (a, log) = answer(&d, "FENCE 00000000000000a0 - client_recovery 1");
        assert_eq!(a, "FENCED 00000000000000a0\n");
        assert!(log.contains("earlier life"), "{log}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_running_node_is_quit_through_qmp_before_fenced() {
        let d = tmp("qmp");
        let n = node(&d, 0, LIFE0);
        let mut child = fake_qemu(&n);
        // the child shows its own command line once it has exec'd
        for _ in 0..500 {
            if qemu_pid(&n).is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(qemu_pid(&n).is_some());
        // the agent's own reaping is the init's job; here the test reaps
        let waiter = std::thread::spawn(move || child.wait());
        let (a, log) = answer(
            &d,
            "FENCE 00000000000000a0 10.77.0.10:7100 quorum_block_leader 2",
        );
        assert_eq!(a, "FENCED 00000000000000a0\n", "{log}");
        assert!(log.contains("node0: quit through QMP"), "{log}");
        assert!(waiter.join().is_ok());
        assert_eq!(qemu_pid(&n), None);
        // asked again: nothing runs, still fenced
        let (a, log) = answer(&d, "FENCE 00000000000000a0 - client_recovery 2");
        assert_eq!(a, "FENCED 00000000000000a0\n");
        assert!(log.contains("not running"), "{log}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn served_over_tcp_with_a_log() {
        let d = tmp("tcp");
        node(&d, 0, LIFE0);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let log = d.join("fence-agent.log");
        let (dd, ll) = (d.clone(), log.clone());
        std::thread::spawn(move || serve(l, dd, ll));
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"FENCE 00000000000000a0 - client_recovery 4\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(out, "FENCED 00000000000000a0\n");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("FENCE 00000000000000a0 - client_recovery 4"),
            "{text}"
        );
        assert!(text.contains("FENCED 00000000000000a0: node0"), "{text}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
