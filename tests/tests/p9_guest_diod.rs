//! The Linux client guest and its tools against a real 9P2000.L server on
//! the host: Debian's `diod`, exporting a temporary directory on a free
//! loopback port, mounted by the guest over user networking (10.0.2.2).
//!
//! Proves `qemu/linux-guest.sh`, p9check, p9fsx and p9bench work before
//! ScoutVM's own server exists. diod is path-based and cannot stat or
//! truncate a file through its fd once it is unlinked, so that check
//! (`p9check fattr-unlinked`, `p9fsx` fstat of held files) is left out here
//! and nowhere else; and it answers every Tgetlock with EINVAL, so
//! `p9check locks` runs on its own and is asserted to pass or to fail at
//! F_GETLK with EINVAL, nowhere else.
//! Runs in a few minutes under TCG.
//!
//! The guest reaches diod through a proxy in this test that decodes every
//! frame of both directions with ScoutVM's codec (`scoutvm_net::p9::wire`):
//! real Linux v9fs requests and real diod replies must decode, re-encode to
//! the same bytes, and cover the messages the server will have to handle.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scoutvm_net::p9::wire::{self, Dirents, Msg, Rmsg};
use scoutvm_net::p9::FrameReader;
use scoutvm_tests::{free_tcp_port, workspace_root, Reaped};

/// Find diod, installing Debian's package if we may.
fn diod_path() -> PathBuf {
    for p in ["/usr/sbin/diod", "/usr/bin/diod"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    if root {
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "diod"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            // The lists may be missing on a fresh machine.
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-q", "diod"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
        }
        if Path::new("/usr/sbin/diod").exists() {
            return PathBuf::from("/usr/sbin/diod");
        }
    }
    panic!(
        "diod is not installed and could not be installed (root: {root}); \
         run `apt-get install diod` — this test needs a reference 9P2000.L server"
    );
}

fn wait_listening(port: u16, diod: &mut Reaped, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = diod.child.try_wait() {
            panic!(
                "diod exited ({status}) before listening: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("diod is not listening on port {port} after 20 s");
}

/// What the checking proxy saw: frames per type code, and every problem.
#[derive(Default)]
struct Seen {
    types: BTreeMap<u8, u64>,
    problems: Vec<String>,
}

/// Forward `from` to `to`, decoding each frame with the codec on the way.
fn pump(mut from: TcpStream, mut to: TcpStream, requests: bool, seen: Arc<Mutex<Seen>>) {
    let mut reader = FrameReader::new(wire::MSIZE_MAX);
    let mut buf = vec![0u8; 256 * 1024];
    let problem = |what: String| {
        let mut s = seen.lock().unwrap();
        if s.problems.len() < 20 {
            s.problems.push(what);
        }
    };
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            let fed = reader.feed(chunk);
            chunk = &chunk[fed..];
            loop {
                match reader.next_frame() {
                    Ok(Some(frame)) => check_frame(&frame, requests, &seen, &problem),
                    Ok(None) => break,
                    Err(e) => {
                        problem(format!("framing: {e}"));
                        return;
                    }
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn check_frame(frame: &[u8], requests: bool, seen: &Mutex<Seen>, problem: &dyn Fn(String)) {
    let decoded = if requests {
        wire::decode_request(frame).map(|(tag, t)| (tag, Msg::T(t)))
    } else {
        wire::decode_reply(frame).map(|(tag, r)| (tag, Msg::R(r)))
    };
    let (tag, msg) = match decoded {
        Ok(x) => x,
        Err(e) => {
            return problem(format!(
                "decode: {e} in {:02x?}",
                &frame[..frame.len().min(64)]
            ))
        }
    };
    let mut again = Vec::new();
    let call = wire::Fcall { tag, msg };
    match wire::encode(&call, &mut again) {
        Ok(_) if again == frame => {}
        Ok(_) => problem(format!("re-encoding {} differs", wire::type_name(frame[4]))),
        Err(e) => problem(format!("re-encoding {}: {e}", wire::type_name(frame[4]))),
    }
    if let Msg::R(Rmsg::Readdir { data }) = &call.msg {
        let mut entries = 0;
        for d in Dirents::new(data) {
            match d {
                Ok(_) => entries += 1,
                Err(e) => problem(format!("Rreaddir entry {entries}: {e}")),
            }
        }
    }
    *seen.lock().unwrap().types.entry(frame[4]).or_default() += 1;
}

/// Accept guest connections on `listener` and splice each to diod at
/// `server_port`, checking every frame.
fn start_proxy(
    listener: TcpListener,
    server_port: u16,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(client) = conn else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)) else {
                seen.lock()
                    .unwrap()
                    .problems
                    .push("proxy: cannot reach diod".into());
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (seen_a, seen_b) = (seen.clone(), seen.clone());
            std::thread::spawn(move || pump(client, server, true, seen_a));
            std::thread::spawn(move || pump(s2, c2, false, seen_b));
        }
    });
}

#[test]
fn linux_guest_tools_pass_against_diod() {
    let diod = diod_path();
    let export = std::env::temp_dir().join(format!("scoutvm-diod-{}", std::process::id()));
    let _ = fs::remove_dir_all(&export);
    fs::create_dir_all(&export).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&export)
        .status()
        .unwrap();
    let log = export.with_extension("log");
    let port = free_tcp_port();

    // -n: no auth (munge); the user database stays on, so the guest's
    // non-root checks run as nobody (65534), which exists on the host.
    let mut diod = Reaped {
        child: Command::new(&diod)
            .args(["-f", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-e")
            .arg(&export)
            .arg("-L")
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start diod"),
        name: "diod",
    };
    wait_listening(port, &mut diod, &log);

    let proxy = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let proxy_port = proxy.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    start_proxy(proxy, port, seen.clone(), stop.clone());

    let files = 1000;
    let guest_cmd = format!(
        "(p9check locks /mnt; true) && p9check all /mnt --files {files} --mib 32 --uid 65534 \
         --gid 65534 --skip fattr-unlinked,locks && p9check verify /mnt && p9fsx /mnt --seed 7 --ops 1500 --no-fd-stat && p9bench /mnt --files 300 --mib 16"
    );
    let script = workspace_root().join("qemu/linux-guest.sh");
    let mut guest = Reaped {
        child: Command::new(&script)
            .arg("run")
            .arg("--server")
            .arg(format!("10.0.2.2:{proxy_port}"))
            .arg("--mount-opts")
            .arg(format!("aname={},access=user", export.display()))
            .arg("--timeout")
            .arg("1200")
            .arg("--")
            .arg(&guest_cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qemu/linux-guest.sh"),
        name: "linux-guest.sh",
    };
    let mut console = String::new();
    guest
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut console)
        .unwrap();
    let status = guest.child.wait().unwrap();
    drop(guest);
    stop.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(("127.0.0.1", proxy_port)); // wake the accept loop
    drop(diod);
    let diod_log = fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = console.lines().rev().take(60).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let context = format!(
        "guest exit {status}\n--- console tail ---\n{}\n--- diod log ---\n{diod_log}",
        tail.join("\n")
    );

    assert!(status.success(), "guest run failed: {context}");
    for marker in [
        "SCOUTVM-GUEST-MOUNTED",
        "P9CHECK-RESULT ok command=all",
        "P9CHECK-RESULT ok command=verify",
        "P9FSX ok seed=7 ops=1500",
        "P9BENCH files=300 ",
        "SCOUTVM-GUEST-RESULT rc=0 stage=cmd",
    ] {
        assert!(console.contains(marker), "missing {marker:?}: {context}");
    }
    // Locks ran on their own (diod answers every Tgetlock with EINVAL):
    // taking, releasing and flock must pass; the one failure allowed is
    // F_GETLK with EINVAL, and only that.
    let locks = console
        .lines()
        .find(|l| l.starts_with("P9CHECK check=locks "))
        .unwrap_or_else(|| panic!("no locks result: {context}"));
    let locks_ok = locks.starts_with("P9CHECK check=locks ok");
    let getlk_einval = locks.starts_with("P9CHECK check=locks FAIL: fcntl F_GETLK ")
        && locks.ends_with("(os error 22)");
    assert!(
        locks_ok || getlk_einval,
        "locks failed other than diod's F_GETLK EINVAL: {locks}\n{context}"
    );
    for check in [
        "basic",
        "xattr",
        "perms",
        "unlink-open",
        "bigfile",
        "smallfiles",
        "readdir-churn",
    ] {
        assert!(
            console.contains(&format!("P9CHECK check={check} ok")),
            "check {check} did not pass: {context}"
        );
    }

    // What the guest wrote went through diod into the export on the host.
    let small = export.join("p9check/smallfiles");
    let n = fs::read_dir(&small).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, files, "files in {} on the host", small.display());
    let big = fs::metadata(export.join("p9check/bigfile/big")).expect("big file on the host");
    assert_eq!(big.len(), 32 << 20);
    assert!(export.join("p9check.manifest").exists());
    let owned =
        fs::metadata(export.join("p9check/perms/userfile")).expect("user's file on the host");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&owned),
        65534,
        "owner seen by the host"
    );

    // The codec understood every frame, and the traffic covered what the
    // Linux client sends for these workloads.
    let seen = seen.lock().unwrap();
    assert!(
        seen.problems.is_empty(),
        "codec problems on real traffic: {:#?}",
        seen.problems
    );
    let names: Vec<String> = seen
        .types
        .iter()
        .map(|(t, n)| format!("{}={n}", wire::type_name(*t)))
        .collect();
    eprintln!("frames seen: {}", names.join(" "));
    for t in [
        "Tversion",
        "Tattach",
        "Twalk",
        "Tlopen",
        "Tlcreate",
        "Tmkdir",
        "Tmknod",
        "Tsymlink",
        "Tlink",
        "Treadlink",
        "Tgetattr",
        "Tsetattr",
        "Treaddir",
        "Tread",
        "Twrite",
        "Tfsync",
        "Tstatfs",
        "Txattrwalk",
        "Txattrcreate",
        "Tlock",
        "Tgetlock",
        "Tclunk",
        "Tunlinkat",
        "Rlerror",
        "Rgetattr",
        "Rreaddir",
        "Rread",
        "Rwalk",
    ] {
        assert!(
            seen.types.keys().any(|&c| wire::type_name(c) == t),
            "no {t} in the traffic; saw {names:?}"
        );
    }
    assert!(
        seen.types
            .keys()
            .any(|&c| matches!(wire::type_name(c), "Trename" | "Trenameat")),
        "no rename in the traffic"
    );

    let _ = fs::remove_dir_all(&export);
    let _ = fs::remove_file(&log);
}
