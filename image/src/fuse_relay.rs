//! `scoutvm mount --node ADDR:PORT DIR`: the host's kernel FUSE client
//! mounted on a running appliance's volume through its FUSE-over-TCP
//! service (`fuse.port=`, docs/fuse.md).
//!
//! The relay opens `/dev/fuse`, mounts it on DIR with mount(2) (we run as
//! root), then moves raw FUSE messages both ways, one thread per
//! direction: the kernel's requests to the TCP stream as read, the
//! appliance's replies to `/dev/fuse` one message per write. It reads
//! nothing but the headers, except the `INIT` reply, whose `max_write` it
//! bounds by its read buffer. It ends when DIR is unmounted (`umount DIR`,
//! SIGINT/SIGTERM/SIGHUP, which unmount it) or the appliance goes away
//! (then the FUSE connection is aborted, so waiting callers get an error,
//! and DIR is unmounted).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use scoutvm_net::fuse::wire::{self, InHeader, OutHeader, OUT_HEADER_LEN};

/// The largest `max_write` the relay lets the appliance negotiate.
pub const RELAY_MAX_WRITE: u32 = 1 << 20;
/// `/dev/fuse` wants a read buffer of at least max_write + a page (and
/// 8 KiB); a `SETXATTR` of 64 KiB fits too.
const READ_BUF_BYTES: usize = RELAY_MAX_WRITE as usize + 64 * 1024;
/// The longest reply the relay accepts from the appliance.
const REPLY_MAX_BYTES: usize = RELAY_MAX_WRITE as usize + 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a relay session moved.
#[derive(Clone, Copy, Debug, Default)]
pub struct RelayStats {
    pub requests: u64,
    pub replies: u64,
}

fn connect(node: &str) -> Result<TcpStream, String> {
    let addrs: Vec<_> = node
        .to_socket_addrs()
        .map_err(|e| format!("--node '{node}': {e} (expected ADDR:PORT)"))?
        .collect();
    let mut last = format!("--node '{node}': no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    Err(last)
}

/// The FUSE connection number of the mount on `dir` (the minor of its
/// device), from /proc/self/mountinfo (a stat would ask the server).
fn fuse_conn_of(dir: &Path) -> Option<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = dir.to_str()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        if f.get(4) != Some(&want) {
            return None;
        }
        let (_, minor) = f.get(2)?.split_once(':')?;
        minor.parse().ok()
    })
}

/// Abort the FUSE connection (callers waiting on it get `ENOTCONN`).
fn abort_conn(conn: Option<u32>) {
    if let Some(n) = conn {
        let p = format!("/sys/fs/fuse/connections/{n}/abort");
        if let Err(e) = std::fs::write(&p, b"1") {
            eprintln!("scoutvm: cannot abort the FUSE connection ({p}): {e}");
        }
    }
}

/// Bound an `INIT` reply's `max_write` (and `max_pages`) by the relay's
/// buffer; `body` is the reply after its header.
fn clamp_init_reply(body: &mut [u8]) {
    if body.len() < 24 {
        return;
    }
    let mw = u32::from_le_bytes(body[20..24].try_into().expect("4 bytes"));
    if mw > RELAY_MAX_WRITE {
        body[20..24].copy_from_slice(&RELAY_MAX_WRITE.to_le_bytes());
    }
    if body.len() >= 30 {
        let pages = (RELAY_MAX_WRITE / 4096) as u16;
        let mp = u16::from_le_bytes([body[28], body[29]]);
        if mp > pages {
            body[28..30].copy_from_slice(&pages.to_le_bytes());
        }
    }
}

/// Kernel requests to the appliance, until the mount goes away (ENODEV)
/// or the stream breaks.
fn pump_requests(dev: &File, mut tcp: &TcpStream, init_unique: &AtomicU64) -> u64 {
    let mut buf = vec![0u8; READ_BUF_BYTES];
    let mut n_req = 0u64;
    loop {
        let n = match (&*dev).read(&mut buf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                // an interrupted request vanished before we read it
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
                // unmounted
                Some(libc::ENODEV) => break,
                _ => {
                    eprintln!("scoutvm: reading /dev/fuse: {e}");
                    break;
                }
            },
        };
        let Some(h) = InHeader::decode(&buf[..n]).filter(|h| h.len as usize == n) else {
            eprintln!("scoutvm: /dev/fuse gave a {n}-byte message without a valid header");
            continue;
        };
        if h.opcode == wire::op::INIT {
            init_unique.store(h.unique, Ordering::SeqCst);
        }
        n_req += 1;
        if tcp.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = tcp.shutdown(Shutdown::Write);
    n_req
}

/// Appliance replies to the kernel; `Ok` at end of stream.
fn pump_replies(dev: &File, mut tcp: &TcpStream, init_unique: &AtomicU64) -> (u64, bool) {
    let mut n_rep = 0u64;
    let mut msg = Vec::with_capacity(64 * 1024);
    loop {
        let mut head = [0u8; OUT_HEADER_LEN];
        match tcp.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return (n_rep, true),
            Err(_) => return (n_rep, false),
        }
        let h = OutHeader::decode(&head).expect("16 bytes");
        let len = h.len as usize;
        if !(OUT_HEADER_LEN..=REPLY_MAX_BYTES).contains(&len) {
            eprintln!("scoutvm: the appliance sent a reply of {len} bytes; closing");
            return (n_rep, false);
        }
        msg.clear();
        msg.extend_from_slice(&head);
        msg.resize(len, 0);
        if tcp.read_exact(&mut msg[OUT_HEADER_LEN..]).is_err() {
            return (n_rep, false);
        }
        if h.unique == init_unique.load(Ordering::SeqCst) && h.error == 0 {
            clamp_init_reply(&mut msg[OUT_HEADER_LEN..]);
        }
        n_rep += 1;
        if let Err(e) = (&*dev).write_all(&msg) {
            match e.raw_os_error() {
                // the request was interrupted and is gone
                Some(libc::ENOENT) => {}
                Some(libc::ENODEV) => return (n_rep, true),
                _ => eprintln!("scoutvm: writing a reply to /dev/fuse: {e}"),
            }
        }
    }
}

/// Mount `dir` on the appliance at `node` and relay until it is unmounted
/// or the appliance goes away. `mounted` runs once the mount is in place.
pub fn run_relay(node: &str, dir: &Path, mounted: impl FnOnce()) -> Result<RelayStats, String> {
    use nix::mount::{mount, MsFlags};
    use nix::sys::signal::{SigSet, Signal};
    let dir: PathBuf =
        std::fs::canonicalize(dir).map_err(|e| format!("mount point '{}': {e}", dir.display()))?;
    // Blocked before any thread starts; only the signal thread takes them.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGHUP);
    sigs.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let tcp = connect(node)?;
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| format!("cannot open /dev/fuse: {e} (modprobe fuse?)"))?;
    // The mounting user: the owner of our own /proc entry.
    let me = std::fs::metadata("/proc/self").map_err(|e| format!("/proc/self: {e}"))?;
    let data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},allow_other,default_permissions",
        dev.as_raw_fd(),
        me.uid(),
        me.gid()
    );
    mount(
        Some("scoutvm"),
        &dir,
        Some("fuse.scoutvm"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| {
        format!(
            "cannot mount FUSE on '{}': {e} (root needed)",
            dir.display()
        )
    })?;
    let conn = fuse_conn_of(&dir);
    let sig_dir = dir.clone();
    std::thread::Builder::new()
        .name("scoutvm-signals".into())
        .spawn(move || {
            while let Ok(sig) = sigs.wait() {
                eprintln!("scoutvm: {sig}: unmounting {}", sig_dir.display());
                if let Err(e) = crate::fuse::unmount_dir(&sig_dir) {
                    eprintln!("scoutvm: {e}");
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    let dev = Arc::new(dev);
    let tcp = Arc::new(tcp);
    let init_unique = Arc::new(AtomicU64::new(u64::MAX));
    let replies = {
        let (dev, tcp, iu) = (dev.clone(), tcp.clone(), init_unique.clone());
        std::thread::Builder::new()
            .name("scoutvm-relay-in".into())
            .spawn(move || pump_replies(&dev, &tcp, &iu))
            .map_err(|e| format!("cannot start the relay thread: {e}"))?
    };
    mounted();
    let requests = {
        let (dev, tcp, iu) = (dev.clone(), tcp.clone(), init_unique.clone());
        std::thread::Builder::new()
            .name("scoutvm-relay-out".into())
            .spawn(move || pump_requests(&dev, &tcp, &iu))
            .map_err(|e| format!("cannot start the relay thread: {e}"))?
    };
    let (n_rep, clean_eof) = replies.join().unwrap_or((0, false));
    let lost = is_mounted(&dir);
    if lost {
        // The appliance went away under a live mount: fail what waits,
        // then take the mount down.
        eprintln!(
            "scoutvm: the appliance at {node} closed the connection{}; unmounting {}",
            if clean_eof { "" } else { " (broken)" },
            dir.display()
        );
        abort_conn(conn);
        if let Err(e) = crate::fuse::unmount_dir(&dir) {
            eprintln!("scoutvm: {e}");
        }
    }
    let _ = tcp.shutdown(Shutdown::Both);
    let n_req = requests.join().unwrap_or(0);
    if lost {
        return Err(format!("the appliance at {node} went away"));
    }
    Ok(RelayStats {
        requests: n_req,
        replies: n_rep,
    })
}

/// Is something mounted on `dir` (canonical)?
fn is_mounted(dir: &Path) -> bool {
    let Some(want) = dir.to_str() else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().any(|l| l.split(' ').nth(4) == Some(want)))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_reply_max_write_is_bounded() {
        let mut b = vec![0u8; 64];
        b[20..24].copy_from_slice(&(16u32 << 20).to_le_bytes());
        b[28..30].copy_from_slice(&4096u16.to_le_bytes());
        clamp_init_reply(&mut b);
        assert_eq!(
            u32::from_le_bytes(b[20..24].try_into().unwrap()),
            RELAY_MAX_WRITE
        );
        assert_eq!(u16::from_le_bytes([b[28], b[29]]), 256);
        let mut small = vec![0u8; 64];
        small[20..24].copy_from_slice(&65536u32.to_le_bytes());
        small[28..30].copy_from_slice(&16u16.to_le_bytes());
        let before = small.clone();
        clamp_init_reply(&mut small);
        assert_eq!(small, before);
        // A short (compat) reply without max_pages, and a truncated one.
        let mut compat = vec![0u8; 24];
        compat[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        clamp_init_reply(&mut compat);
        assert_eq!(
            u32::from_le_bytes(compat[20..24].try_into().unwrap()),
            RELAY_MAX_WRITE
        );
        clamp_init_reply(&mut [0u8; 3]);
        assert!(READ_BUF_BYTES >= RELAY_MAX_WRITE as usize + 8192);
    }
}
