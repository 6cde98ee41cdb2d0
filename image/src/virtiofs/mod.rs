//! `scoutvm virtiofs`: a vhost-user-fs backend (the device side of
//! virtio-fs) that relays a Linux guest's FUSE requests to a running
//! appliance's FUSE-over-TCP service and its replies back.
//!
//! - `guest_memory.rs`: the guest RAM the frontend shares, bounds-checked;
//! - `virtqueue.rs`: the split virtqueue, device side;
//! - `vhost_user.rs`: the vhost-user messages (`vhost` crate) and the queues' state;
//! - `relay.rs`: requests out over TCP, replies back into the queues.

pub mod guest_memory;
pub mod relay;
pub mod vhost_user;
pub mod virtqueue;

use relay::{Reconnect, Relay};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vhost::vhost_user::{BackendReqHandler, Error as VuError};

/// Connects to the appliance's FUSE service at `node` (ADDR:PORT).
pub fn connect_node(node: &str) -> Result<TcpStream, String> {
    let addrs: Vec<_> = node
        .to_socket_addrs()
        .map_err(|e| format!("--node {node}: {e}"))?
        .collect();
    let mut last = format!("--node {node}: no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("connecting to the appliance at {a}: {e}"),
        }
    }
    Err(last)
}

/// Serves one vhost-user frontend connection until it disconnects,
/// relaying to `node`. Returns the relay (its `stats`).
/// With `reconnect`, a lost appliance connection is made again (see
/// relay.rs).
pub fn serve(
    frontend: UnixStream,
    node: TcpStream,
    reconnect: Option<Reconnect>,
) -> Result<Arc<Relay>, String> {
    let reader = node
        .try_clone()
        .map_err(|e| format!("appliance socket: {e}"))?;
    let relay = Relay::new(node, reconnect).map_err(|e| format!("wake-up socket: {e}"))?;
    let queues = {
        let r = relay.clone();
        std::thread::spawn(move || r.run_queues())
    };
    let replies = {
        let r = relay.clone();
        std::thread::spawn(move || r.run_replies(reader))
    };
    let handler = vhost_user::Handler {
        relay: relay.clone(),
    };
    let mut backend = BackendReqHandler::from_stream(frontend, Arc::new(Mutex::new(handler)));
    let result = loop {
        match backend.handle_request() {
            Ok(()) => {}
            Err(VuError::Disconnected) | Err(VuError::PartialMessage) => break Ok(()),
            Err(e) => break Err(format!("vhost-user frontend: {e}")),
        }
    };
    relay.stop();
    let _ = queues.join();
    let _ = replies.join();
    result.map(|()| relay)
}

/// `scoutvm virtiofs`: connect to the appliance, listen on `socket`, serve
/// the first frontend (QEMU's vhost-user-fs device) until it goes away.
/// `reconnect_secs`: how long to try to connect again when the appliance
/// connection is lost (0: not at all).
pub fn run(node: &str, socket: &Path, reconnect_secs: u64) -> Result<(), String> {
    let tcp = connect_node(node)?;
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        if !meta.file_type().is_socket() {
            return Err(format!("{}: exists and is not a socket", socket.display()));
        }
        std::fs::remove_file(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    }
    let listener = UnixListener::bind(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    eprintln!(
        "scoutvm virtiofs: relaying to {node}, waiting for the frontend on {}",
        socket.display()
    );
    let (frontend, _) = listener
        .accept()
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    drop(listener);
    let _ = std::fs::remove_file(socket);
    let reconnect = (reconnect_secs > 0).then(|| Reconnect {
        node: node.to_string(),
        window: Duration::from_secs(reconnect_secs),
    });
    let relay = serve(frontend, tcp, reconnect)?;
    eprintln!("scoutvm virtiofs: frontend gone; {}", relay.stats);
    Ok(())
}

#[cfg(test)]
mod tests;
