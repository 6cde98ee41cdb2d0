//! A Linux guest mounts `-t virtiofs` through `scoutvm virtiofs` (the
//! vhost-user-fs backend on the host) and a FUSE server reached over TCP:
//! here a small fake serving a read-only file and a write sink, so the
//! backend's virtqueue and relay paths meet the real Linux virtio-fs driver
//! and QEMU's vhost-user-fs-pci (memory table, rings, kicks, calls, the
//! hiprio queue's FORGETs) before the appliance's own FUSE server is in.
//! The guest lists the root, reads the file, writes 1 MiB into the sink and
//! unmounts; the test checks what the server saw and the backend's counters.
//! About 15 s under TCG.
//!
//! `linux_guest_on_the_fuse_server`: the same path to ScoutVM's own FUSE
//! server (`scoutvm_net::fuse`) over an in-memory volume, served in this
//! process on a loopback port: POSIX operations, `p9check all` and
//! `p9fsx`, and the files found in the volume afterwards. About 40 s.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::posix::types::Cred;
use scoutvm_fs::runtime::env::{ManualClock, Timespec};
use scoutvm_fs::runtime::exec::{yield_now, Executor};
use scoutvm_fs::sim::mem_backend::{MemBackend, MemMkfs, MemStore};
use scoutvm_fs::storage::dev::MemDev;
use scoutvm_net::fuse::{serve, Server, ServerConfig};
use scoutvm_net::p9::{ByteStream, Peer, StreamClosed};

use scoutvm_tests::guest::{host_tool, run_linux_guest};
use scoutvm_tests::Reaped;

const ROOT: u64 = 1;
const HELLO: u64 = 2;
const SINK: u64 = 3;
const ENOENT: i32 = 2;
const ENOSYS: i32 = 38;

#[derive(Default)]
struct Seen {
    opcodes: BTreeMap<u32, u32>,
    sink_bytes: u64,
    sink_nonzero: bool,
    sink_gap: bool,
}

struct Fake {
    hello: Vec<u8>,
    seen: Arc<Mutex<Seen>>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Fake {
    fn attr(&self, ino: u64) -> Vec<u8> {
        let (mode, nlink, size) = match ino {
            ROOT => (0o40755u32, 2u32, 0u64),
            HELLO => (0o100644, 1, self.hello.len() as u64),
            _ => (0o100644, 1, self.seen.lock().unwrap().sink_bytes),
        };
        let mut a = Vec::with_capacity(88);
        for v in [ino, size, size.div_ceil(512), 0, 0, 0] {
            a.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0u32, 0, 0, mode, nlink, 0, 0, 0, 4096, 0] {
            a.extend_from_slice(&v.to_le_bytes());
        }
        a
    }

    fn attr_out(&self, ino: u64) -> Vec<u8> {
        let mut o = Vec::new();
        o.extend_from_slice(&1u64.to_le_bytes());
        o.extend_from_slice(&[0u8; 8]);
        o.extend_from_slice(&self.attr(ino));
        o
    }

    fn entry_out(&self, ino: u64) -> Vec<u8> {
        let mut o = Vec::new();
        for v in [ino, 0, 1, 1] {
            o.extend_from_slice(&v.to_le_bytes());
        }
        o.extend_from_slice(&[0u8; 8]);
        o.extend_from_slice(&self.attr(ino));
        o
    }

    /// The reply body (or an errno) for one request; `None`: no reply.
    fn answer(&self, req: &[u8]) -> Option<Result<Vec<u8>, i32>> {
        let opcode = u32_at(req, 4);
        let node = u64_at(req, 16);
        let body = &req[40..];
        *self.seen.lock().unwrap().opcodes.entry(opcode).or_default() += 1;
        Some(match opcode {
            2 | 42 => return None, // FORGET, BATCH_FORGET
            26 => {
                // INIT: 7.31, the guest's readahead, 128 KiB writes
                let mut o = Vec::new();
                for v in [7u32, 31, u32_at(body, 8), 0] {
                    o.extend_from_slice(&v.to_le_bytes());
                }
                o.extend_from_slice(&16u16.to_le_bytes());
                o.extend_from_slice(&12u16.to_le_bytes());
                o.extend_from_slice(&(128u32 << 10).to_le_bytes());
                o.extend_from_slice(&1u32.to_le_bytes());
                o.extend_from_slice(&32u16.to_le_bytes());
                o.extend_from_slice(&[0u8; 2 + 4 + 28]);
                Ok(o)
            }
            1 => {
                let name = body.split(|&c| c == 0).next().unwrap_or_default();
                match (node, name) {
                    (ROOT, b"hello") => Ok(self.entry_out(HELLO)),
                    (ROOT, b"sink") => Ok(self.entry_out(SINK)),
                    _ => Err(ENOENT),
                }
            }
            3 | 4 => Ok(self.attr_out(node)), // GETATTR, SETATTR
            14 | 27 => Ok(vec![0u8; 16]),     // OPEN, OPENDIR
            15 => {
                let (off, size) = (u64_at(body, 8) as usize, u32_at(body, 16) as usize);
                let start = off.min(self.hello.len());
                Ok(self.hello[start..(start + size).min(self.hello.len())].to_vec())
            }
            16 => {
                let (off, size) = (u64_at(body, 8), u32_at(body, 16));
                let data = &body[40..];
                let mut s = self.seen.lock().unwrap();
                s.sink_gap |= node != SINK || off != s.sink_bytes || data.len() != size as usize;
                s.sink_nonzero |= data.iter().any(|&b| b != 0);
                s.sink_bytes += data.len() as u64;
                let mut o = size.to_le_bytes().to_vec();
                o.extend_from_slice(&[0u8; 4]);
                Ok(o)
            }
            28 => {
                let (off, size) = (u64_at(body, 8) as usize, u32_at(body, 16) as usize);
                let names: [(&[u8], u64, u32); 4] = [
                    (b".", ROOT, 4),
                    (b"..", ROOT, 4),
                    (b"hello", HELLO, 8),
                    (b"sink", SINK, 8),
                ];
                let mut o = Vec::new();
                for (i, (name, ino, ty)) in names.iter().enumerate().skip(off) {
                    let mut d = Vec::new();
                    d.extend_from_slice(&ino.to_le_bytes());
                    d.extend_from_slice(&(i as u64 + 1).to_le_bytes());
                    d.extend_from_slice(&(name.len() as u32).to_le_bytes());
                    d.extend_from_slice(&ty.to_le_bytes());
                    d.extend_from_slice(name);
                    d.resize(d.len().next_multiple_of(8), 0);
                    if o.len() + d.len() > size {
                        break;
                    }
                    o.extend_from_slice(&d);
                }
                Ok(o)
            }
            17 => {
                let mut o = vec![0u8; 80];
                o[40..44].copy_from_slice(&4096u32.to_le_bytes());
                o[44..48].copy_from_slice(&255u32.to_le_bytes());
                Ok(o)
            }
            18 | 20 | 25 | 29 | 38 => Ok(Vec::new()), // RELEASE, FSYNC, FLUSH, RELEASEDIR, DESTROY
            _ => Err(ENOSYS),
        })
    }

    fn serve(&self, mut s: TcpStream) {
        loop {
            let mut h = [0u8; 4];
            if s.read_exact(&mut h).is_err() {
                return;
            }
            let len = u32::from_le_bytes(h) as usize;
            assert!((40..=(16 << 20)).contains(&len), "request length {len}");
            let mut req = vec![0u8; len];
            req[..4].copy_from_slice(&h);
            s.read_exact(&mut req[4..]).unwrap();
            let Some(answer) = self.answer(&req) else {
                continue;
            };
            let (error, body) = match answer {
                Ok(b) => (0, b),
                Err(e) => (-e, Vec::new()),
            };
            let mut reply = Vec::with_capacity(16 + body.len());
            reply.extend_from_slice(&(16 + body.len() as u32).to_le_bytes());
            reply.extend_from_slice(&error.to_le_bytes());
            reply.extend_from_slice(&req[8..16]);
            reply.extend_from_slice(&body);
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    }
}

fn wait_for_socket(path: &Path, backend: &mut Reaped) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Ok(Some(st)) = backend.child.try_wait() {
            panic!("scoutvm virtiofs exited ({st}) before listening");
        }
        assert!(
            Instant::now() < deadline,
            "no vhost-user socket at {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `scoutvm virtiofs` relaying to `port`, once its socket is there.
fn start_backend(dir: &Path, port: u16) -> (Reaped, PathBuf, PathBuf) {
    let sock = dir.join("vfs.sock");
    let log = dir.join("backend.log");
    let mut backend = Reaped {
        name: "scoutvm virtiofs",
        child: Command::new(host_tool())
            .args([
                "virtiofs",
                "--node",
                &format!("127.0.0.1:{port}"),
                "--socket",
            ])
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start scoutvm virtiofs"),
    };
    wait_for_socket(&sock, &mut backend);
    (backend, sock, log)
}

/// Waits for the backend to exit (its frontend gone) and returns its log;
/// it must have exited cleanly.
fn backend_exit(mut backend: Reaped, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(st)) = backend.child.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(status.map(|s| s.success()), Some(true), "backend: {text}");
    text
}

/// The backend's closing summary must show nothing malformed or lost.
fn assert_clean_summary(backend_log: &str) {
    let stats = backend_log
        .lines()
        .find(|l| l.contains("frontend gone"))
        .unwrap_or_else(|| panic!("no summary in the backend log: {backend_log}"));
    for zero in [
        "bad_chains 0",
        "bad_requests 0",
        "too_big 0",
        "unmatched 0",
        "not_connected 0",
        "broken_rings 0",
    ] {
        assert!(stats.contains(zero), "{stats}");
    }
}

/// A non-blocking socket as the FUSE server's stream: while no bytes are
/// there the executor runs its other tasks (the reply writer, the
/// operations), then the thread naps briefly.
struct Polled(TcpStream);

impl ByteStream for Polled {
    async fn read(&self, buf: &mut [u8]) -> Result<usize, StreamClosed> {
        loop {
            match (&self.0).read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    yield_now().await;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(StreamClosed),
            }
        }
    }

    async fn write_all(&self, mut buf: &[u8]) -> Result<(), StreamClosed> {
        while !buf.is_empty() {
            match (&self.0).write(buf) {
                Ok(0) => return Err(StreamClosed),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    yield_now().await;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(StreamClosed),
            }
        }
        Ok(())
    }

    fn close(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// What the volume holds after the guest is gone.
struct VolumeAfter {
    /// /vfs/keep's content, if there is such a file.
    keep: Option<Vec<u8>>,
    /// The names in /vfs.
    names: Vec<String>,
}

/// ScoutVM's FUSE server over a fresh in-memory volume, on a loopback
/// port, in a thread of its own: serves one connection, then reports.
fn start_fuse_server() -> (u16, mpsc::Receiver<VolumeAfter>) {
    let (port_tx, port_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let ex = Executor::default();
        let mk = MemMkfs {
            data_blocks: 1 << 14,
            ..MemMkfs::default()
        };
        let data = Rc::new(MemDev::new(mk.data_blocks * 4096));
        let clock = Rc::new(ManualClock::new(Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        }));
        let mount = ex
            .block_on(Mount::mount(
                MemBackend::new(MemStore::mkfs(mk)),
                data,
                clock,
                MountOptions::default(),
            ))
            .expect("executor")
            .expect("mount");
        let mount = Rc::new(mount);
        let server = Server::new(mount.clone(), ex.handle(), ServerConfig::default());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        port_tx.send(l.local_addr().unwrap().port()).unwrap();
        let (s, peer) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let peer = Peer {
            addr: [127, 0, 0, 1],
            port: peer.port(),
        };
        ex.block_on(serve(server, Rc::new(Polled(s)), peer))
            .expect("executor");
        let root = Cred::root();
        let after = ex
            .block_on(async {
                let Ok(vfs) = mount.lookup(&root, 1, b"vfs").await else {
                    return VolumeAfter {
                        keep: None,
                        names: Vec::new(),
                    };
                };
                let keep = match mount.lookup(&root, vfs.ino, b"keep").await {
                    Ok(k) => mount.read(k.ino, 0, 1 << 20).await.ok(),
                    Err(_) => None,
                };
                let names = mount
                    .readdir(&root, vfs.ino, 0, 1000)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                    .collect();
                VolumeAfter { keep, names }
            })
            .expect("executor");
        let _ = done_tx.send(after);
    });
    (port_rx.recv().unwrap(), done_rx)
}

#[test]
fn linux_guest_on_the_fuse_server() {
    let (port, after) = start_fuse_server();
    let dir = std::env::temp_dir().join(format!("scoutvm-virtiofs-srv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (backend, sock, log) = start_backend(&dir, port);
    // POSIX by hand, then the 9P test's checker and exerciser
    let cmd = "set -e; cd /mnt; mkdir vfs; cd vfs; \
        echo hello > f; test \"$(cat f)\" = hello; \
        dd if=/dev/urandom of=/tmp/r bs=65536 count=40 2>/dev/null; cp /tmp/r big; \
        echo 3 > /proc/sys/vm/drop_caches; cmp /tmp/r big; \
        mv f g; test ! -e f; ln -s g s; test \"$(readlink s)\" = g; ln g h; \
        test \"$(stat -c %h g)\" = 2; rm h; mkdir -p e/f; rmdir e/f e; \
        truncate -s 1000 big; test \"$(stat -c %s big)\" = 1000; \
        echo kept > keep; ls -la; df /mnt >/dev/null; \
        p9check all /mnt/vfs/pc --files 200 --mib 4; p9fsx /mnt/vfs/fsx --seed 7 --ops 400; \
        echo GUEST-DONE";
    let args: Vec<String> = ["--virtiofs", sock.to_str().unwrap(), "--timeout", "240"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let run = run_linux_guest(&args, cmd).expect("run the Linux guest");
    let backend_log = backend_exit(backend, &log);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        run.status.success(),
        "guest failed: {}\nbackend: {backend_log}",
        run.tail(60)
    );
    assert!(run.console.contains("GUEST-DONE"));
    assert_clean_summary(&backend_log);
    let after = after
        .recv_timeout(Duration::from_secs(60))
        .expect("the FUSE server reports the volume");
    assert_eq!(after.keep.as_deref(), Some(&b"kept\n"[..]));
    for n in ["g", "s", "big", "keep", "pc", "fsx"] {
        assert!(
            after.names.iter().any(|x| x == n),
            "{n} not in /vfs: {:?}",
            after.names
        );
    }
}

#[test]
fn linux_guest_mounts_virtiofs_through_the_backend() {
    let token = format!("{:x}", std::process::id() as u64 * 2654435761 % (1 << 32));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let fake = Arc::new(Fake {
        hello: format!("virtiofs says {token}\n").into_bytes(),
        seen: seen.clone(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = {
        let fake = fake.clone();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            fake.serve(s);
        })
    };

    let dir = std::env::temp_dir().join(format!("scoutvm-virtiofs-guest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (backend, sock, log) = start_backend(&dir, port);

    let cmd = "set -e; ls -a /mnt; cat /mnt/hello; test ! -e /mnt/nope; \
               dd if=/dev/zero of=/mnt/sink bs=65536 count=16 conv=notrunc; \
               stat -c 'sink-size=%s' /mnt/sink; df /mnt >/dev/null; echo GUEST-DONE";
    let args: Vec<String> = ["--virtiofs", sock.to_str().unwrap(), "--timeout", "150"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let run = run_linux_guest(&args, cmd).expect("run the Linux guest");
    // QEMU gone: the backend sees its frontend disconnect and exits
    let backend_log = backend_exit(backend, &log);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        run.status.success(),
        "guest failed: {}\nbackend: {backend_log}",
        run.tail(40)
    );
    assert!(run
        .console
        .contains("SCOUTVM-GUEST-MOUNTED virtiofs scoutvm on /mnt"));
    assert!(
        run.console.contains(&format!("virtiofs says {token}")),
        "{}",
        run.tail(30)
    );
    assert!(
        run.console.contains("sink-size=1048576"),
        "{}",
        run.tail(30)
    );
    assert!(run.console.contains("GUEST-DONE"));
    let s = seen.lock().unwrap();
    assert_eq!(s.sink_bytes, 1 << 20);
    assert!(
        !s.sink_nonzero && !s.sink_gap,
        "writes arrived intact and in order"
    );
    for (op, name) in [
        (26, "INIT"),
        (1, "LOOKUP"),
        (28, "READDIR"),
        (15, "READ"),
        (16, "WRITE"),
    ] {
        assert!(
            s.opcodes.contains_key(&op),
            "no {name} reached the server: {:?}",
            s.opcodes
        );
    }
    assert_clean_summary(&backend_log);
    drop(s);
    let _ = server.join();
}
