//! The FUSE service: listen on TCP 7564 and serve the mounted volume to
//! FUSE clients (a host's `scoutvm mount --node`, a vhost-user-fs relay
//! for virtio-fs guests), one task per connection and the server's own
//! task per request.
//!
//! Owns the listener task; the server itself (`scoutvm_net::fuse`) owns
//! connections, node lookup counts, handles and locks. Configured from
//! the command line: `fuse.port=PORT` (7564), `fuse.allow=CIDR[,CIDR]|any`
//! (default: `p9.allow=`, else the node's own subnet),
//! `fuse.root_squash=1` (default: `p9.root_squash=`),
//! `fuse.max_write=BYTES` (1 MiB). Invariant: after [`stop`] no
//! connection is accepted and every connection has released its handles
//! and locks.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use core::cell::RefCell;

use scoutvm_fs::runtime::exec::JoinHandle;
use scoutvm_net::fuse::server::{MAX_WRITE_MAX, MAX_WRITE_MIN};
use scoutvm_net::fuse::{serve, Server, ServerConfig};
use scoutvm_net::p9::access::{AllowList, Cidr};
use scoutvm_net::p9::Peer;

use crate::net::{self, TcpListener};
use crate::p9svc::TcpConn;
use crate::runtime::{self, Local};
use crate::volume::Volume;

/// The FUSE-over-TCP port.
pub const FUSE_PORT: u16 = 7564;
/// Listening sockets kept ready.
const BACKLOG: usize = 4;
/// TCP buffer per direction: room for a 1 MiB write in flight.
const TCP_BUFFER_BYTES: usize = 256 * 1024;
/// How often to look for an address while the network comes up.
const ADDRESS_POLL_NS: u64 = 200_000_000;

static LISTENER: Local<RefCell<Option<JoinHandle<()>>>> = Local::new(RefCell::new(None));

fn flag(v: &str) -> Result<bool, String> {
    match v {
        "1" | "yes" | "on" | "true" => Ok(true),
        "0" | "no" | "off" | "false" => Ok(false),
        _ => Err(format!("'{v}' is not a boolean (1/0)")),
    }
}

/// The server configuration and port from the command line; `own` is the
/// node's subnet (the default allow-list).
pub fn config(own: Option<Cidr>) -> Result<(ServerConfig, u16), String> {
    let cmd = runtime::cmdline();
    let allow = match (cmd.get("fuse.allow"), cmd.get("p9.allow")) {
        (Some(v), _) => AllowList::parse(v).map_err(|e| format!("fuse.allow: {e}"))?,
        (None, Some(v)) => AllowList::parse(v).map_err(|e| format!("p9.allow: {e}"))?,
        (None, None) => AllowList::of(own.into_iter().collect()),
    };
    let mut c = ServerConfig {
        allow,
        ..ServerConfig::default()
    };
    match (cmd.get("fuse.root_squash"), cmd.get("p9.root_squash")) {
        (Some(v), _) => c.root_squash = flag(v).map_err(|e| format!("fuse.root_squash: {e}"))?,
        (None, Some(v)) => c.root_squash = flag(v).map_err(|e| format!("p9.root_squash: {e}"))?,
        (None, None) => {}
    }
    if let Some(v) = cmd.get("fuse.max_write") {
        c.max_write = match v.parse::<u32>() {
            Ok(m) if (MAX_WRITE_MIN..=MAX_WRITE_MAX).contains(&m) => m,
            _ => {
                return Err(format!(
                    "fuse.max_write={v}: expected {MAX_WRITE_MIN}..={MAX_WRITE_MAX}"
                ))
            }
        };
        // Room for a request and its reply at the largest size.
        c.conn_memory_max_bytes = c
            .conn_memory_max_bytes
            .max(4 * (c.max_write as usize + 64 * 1024));
    }
    let port = scoutvm_kernel::cmdline::port_word(cmd, "fuse.port", FUSE_PORT)?;
    Ok((c, port))
}

fn own_subnet() -> Option<Cidr> {
    let a = net::info()?.addr?;
    Some(Cidr::network(a.address().octets(), a.prefix_len()))
}

/// Start serving `v` once the network has an address.
pub fn start(v: &Rc<Volume>) -> Result<(), String> {
    // Reject a bad command line now, where the operator sees it.
    config(None)?;
    if net::info().is_none() {
        log::warn!("fuse: no network interface; not serving FUSE");
        return Ok(());
    }
    let v = v.clone();
    let h = runtime::handle();
    let h2 = h.clone();
    let step = crate::boot_steps::BootStep::begin();
    let task = h
        .spawn_named("fuse.accept", async move {
            let own = loop {
                if let Some(c) = own_subnet() {
                    break c;
                }
                h2.sleep_ns(ADDRESS_POLL_NS).await;
            };
            let (cfg, port) = match config(Some(own)) {
                Ok(c) => c,
                Err(e) => {
                    log::error!("fuse: {e}");
                    return;
                }
            };
            let listener =
                match TcpListener::bind_with(port, BACKLOG, TCP_BUFFER_BYTES, TCP_BUFFER_BYTES) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("fuse: cannot listen on TCP {port}: {e}");
                        return;
                    }
                };
            log::info!(
                "fuse: serving FUSE 7.{} on TCP {} (clients {}, max_write {}{})",
                scoutvm_net::fuse::wire::KERNEL_MINOR_VERSION,
                port,
                cfg.allow,
                cfg.max_write,
                if cfg.root_squash {
                    ", root squashed"
                } else {
                    ""
                }
            );
            drop(step);
            let server = Server::new(v.mount.clone(), h2.clone(), cfg);
            *v.fuse.borrow_mut() = Some(server.clone());
            loop {
                let stream = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("fuse: accept: {e}");
                        h2.sleep_ns(ADDRESS_POLL_NS).await;
                        continue;
                    }
                };
                if server.is_stopping() {
                    stream.abort();
                    continue;
                }
                let (addr, port) = stream.peer().unwrap_or(([0; 4], 0));
                let peer = Peer { addr, port };
                log::debug!("fuse: connection from {peer}");
                let conn = serve(server.clone(), Rc::new(TcpConn(stream)), peer);
                if h2.spawn_named("fuse.conn", conn).is_err() {
                    scoutvm_fs::counter!("fuse.spawn_failed").inc();
                    log::warn!("fuse: too many tasks, connection from {peer} dropped");
                }
            }
        })
        .map_err(|e| e.to_string())?;
    *LISTENER.borrow_mut() = Some(task);
    Ok(())
}

/// Stop accepting and close every connection (handles and locks are
/// released).
pub async fn stop(server: &Rc<Server>) {
    if let Some(t) = LISTENER.borrow_mut().take() {
        t.abort();
    }
    server.shutdown().await;
}
