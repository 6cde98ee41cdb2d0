//! The 9P service: listen on TCP 564 and serve the mounted volume, one
//! task per connection (and the server's own task per request).
//!
//! Owns the listener task and the glue from `net::TcpStream` to the
//! server's `ByteStream`; the server itself (`scoutvm_net::p9`) owns
//! connections, fids and locks. Configured from the command line:
//! `p9.allow=CIDR[,CIDR]|any` (default: the node's own subnet),
//! `p9.root_squash=1`, `p9.msize=BYTES` (largest negotiated),
//! `p9.port=PORT` (564). Invariant: after [`stop`] no connection is
//! accepted and every connection has released its fids.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use core::cell::RefCell;

use scoutvm_fs::runtime::exec::JoinHandle;
use scoutvm_net::p9::access::{AllowList, Cidr};
use scoutvm_net::p9::server::MSIZE_MIN;
use scoutvm_net::p9::wire::MSIZE_MAX;
use scoutvm_net::p9::{serve, ByteStream, Peer, Server, ServerConfig, StreamClosed};

use crate::net::{self, TcpListener, TcpStream};
use crate::runtime::{self, Local};
use crate::volume::Volume;

/// The 9P2000.L port.
pub const P9_PORT: u16 = 564;
/// Listening sockets kept ready (clients connecting at once).
const BACKLOG: usize = 4;
/// TCP buffer per direction of a 9P connection: room for a 512 KiB
/// message in flight with window scaling.
const TCP_BUFFER_BYTES: usize = 256 * 1024;
/// How often to look for an address while the network comes up.
const ADDRESS_POLL_NS: u64 = 200_000_000;

static LISTENER: Local<RefCell<Option<JoinHandle<()>>>> = Local::new(RefCell::new(None));

/// A TCP connection as a server's byte stream (9P and the admin API).
pub(crate) struct TcpConn(pub(crate) TcpStream);

impl ByteStream for TcpConn {
    async fn read(&self, buf: &mut [u8]) -> Result<usize, StreamClosed> {
        self.0.read(buf).await.map_err(|_| StreamClosed)
    }

    async fn write_all(&self, buf: &[u8]) -> Result<(), StreamClosed> {
        self.0.write_all(buf).await.map_err(|_| StreamClosed)
    }

    fn close(&self) {
        self.0.abort();
    }
}

fn flag(v: &str) -> Result<bool, String> {
    match v {
        "1" | "yes" | "on" | "true" => Ok(true),
        "0" | "no" | "off" | "false" => Ok(false),
        _ => Err(format!("'{v}' is not a boolean (1/0)")),
    }
}

/// The server configuration from the command line; `own` is the node's
/// subnet (the default allow-list).
pub fn config(own: Option<Cidr>) -> Result<(ServerConfig, u16), String> {
    let cmd = runtime::cmdline();
    let allow = match cmd.get("p9.allow") {
        Some(v) => AllowList::parse(v).map_err(|e| format!("p9.allow: {e}"))?,
        None => AllowList::of(own.into_iter().collect()),
    };
    let mut c = ServerConfig {
        allow,
        ..ServerConfig::default()
    };
    if let Some(v) = cmd.get("p9.root_squash") {
        c.root_squash = flag(v).map_err(|e| format!("p9.root_squash: {e}"))?;
    }
    if let Some(v) = cmd.get("p9.msize") {
        c.msize_max = match v.parse::<u32>() {
            Ok(m) if (MSIZE_MIN..=MSIZE_MAX).contains(&m) => m,
            _ => return Err(format!("p9.msize={v}: expected {MSIZE_MIN}..={MSIZE_MAX}")),
        };
    }
    let port = match cmd.get("p9.port") {
        Some(v) => v
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("p9.port={v}: expected 1..=65535"))?,
        None => P9_PORT,
    };
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
        log::warn!("p9: no network interface; not serving 9P");
        return Ok(());
    }
    let v = v.clone();
    let h = runtime::handle();
    let h2 = h.clone();
    // Until "serving" (or why not) is logged: the first prompt waits for it.
    let step = crate::boot_steps::BootStep::begin();
    let task = h
        .spawn_named("p9.accept", async move {
            let mut said = false;
            let own = loop {
                if let Some(c) = own_subnet() {
                    break c;
                }
                if !said {
                    log::info!("p9: waiting for a network address");
                    said = true;
                }
                h2.sleep_ns(ADDRESS_POLL_NS).await;
            };
            let (cfg, port) = match config(Some(own)) {
                Ok(c) => c,
                Err(e) => {
                    log::error!("p9: {e}");
                    return;
                }
            };
            let listener =
                match TcpListener::bind_with(port, BACKLOG, TCP_BUFFER_BYTES, TCP_BUFFER_BYTES) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("p9: cannot listen on TCP {port}: {e}");
                        return;
                    }
                };
            log::info!(
                "p9: serving 9P2000.L on TCP {} (clients {}, msize up to {}{})",
                port,
                cfg.allow,
                cfg.msize_max,
                if cfg.root_squash {
                    ", root squashed"
                } else {
                    ""
                }
            );
            drop(step);
            let server = Server::new(v.mount.clone(), h2.clone(), cfg);
            *v.p9.borrow_mut() = Some(server.clone());
            loop {
                let stream = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("p9: accept: {e}");
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
                log::debug!("p9: connection from {peer}");
                let conn = serve(server.clone(), Rc::new(TcpConn(stream)), peer);
                if h2.spawn_named("p9.conn", conn).is_err() {
                    scoutvm_fs::counter!("p9.spawn_failed").inc();
                    log::warn!("p9: too many tasks, connection from {peer} dropped");
                }
            }
        })
        .map_err(|e| e.to_string())?;
    *LISTENER.borrow_mut() = Some(task);
    Ok(())
}

/// Stop accepting and close every connection (their fids are released).
pub async fn stop(server: &Rc<Server>) {
    if let Some(t) = LISTENER.borrow_mut().take() {
        t.abort();
    }
    server.shutdown().await;
}
