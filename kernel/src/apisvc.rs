//! The admin API service: listen on TCP `api.port=` (default 8564) and
//! answer HTTP/1.1 + JSON requests with a bearer token
//! (`scoutvm_net::api`, docs/archival.md) over the mounted volume, one
//! task per connection. Off unless the command line sets
//! `api.token=TOKEN` (8 to 256 visible ASCII characters); the boot log
//! says which. A connection idle for 60 s is closed. Invariant: after [`stop`] no connection is accepted or
//! served.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use core::cell::{Cell, RefCell};

use scoutvm_fs::runtime::exec::{Handle, JoinHandle};
use scoutvm_net::api::{serve, token_ok, Api};
use scoutvm_net::p9::{ByteStream, StreamClosed};

use crate::net::{self, TcpListener};
use crate::p9svc::TcpConn;
use crate::runtime::{self, Local};
use crate::volume::Volume;

/// The API's default port.
pub const API_PORT: u16 = 8564;
/// Listening sockets kept ready.
const BACKLOG: usize = 4;
/// Connections served at once; more are closed at accept.
const MAX_CONNS: usize = 16;
/// TCP buffer per direction: a stage request of 260 KiB in a few windows.
const TCP_BUFFER_BYTES: usize = 64 * 1024;
/// How often to look for an address while the network comes up.
const ADDRESS_POLL_NS: u64 = 200_000_000;
/// A connection that sends nothing for this long is closed (its slot of
/// [`MAX_CONNS`] is not held for ever).
const IDLE_NS: u64 = 60_000_000_000;

/// A connection whose reads give up after [`IDLE_NS`] of silence.
struct IdleConn {
    conn: TcpConn,
    h: Handle,
}

impl ByteStream for IdleConn {
    async fn read(&self, buf: &mut [u8]) -> Result<usize, StreamClosed> {
        match self.h.timeout_ns(IDLE_NS, self.conn.read(buf)).await {
            Ok(r) => r,
            Err(_) => {
                scoutvm_fs::counter!("api.idle_closed").inc();
                Err(StreamClosed)
            }
        }
    }

    async fn write_all(&self, buf: &[u8]) -> Result<(), StreamClosed> {
        self.conn.write_all(buf).await
    }

    fn close(&self) {
        self.conn.close();
    }
}

static LISTENER: Local<RefCell<Option<JoinHandle<()>>>> = Local::new(RefCell::new(None));
static CONNS: Local<RefCell<BTreeMap<u64, JoinHandle<()>>>> =
    Local::new(RefCell::new(BTreeMap::new()));
static NEXT_CONN: Local<Cell<u64>> = Local::new(Cell::new(0));

/// The token and port from the command line; `None`: the API is off.
pub fn config() -> Result<Option<(String, u16)>, String> {
    let cmd = runtime::cmdline();
    let Some(token) = cmd.get("api.token") else {
        return Ok(None);
    };
    if !token_ok(token) {
        return Err("api.token: expected 8 to 256 visible ASCII characters".into());
    }
    let port = match cmd.get("api.port") {
        Some(v) => v
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("api.port={v}: expected 1..=65535"))?,
        None => API_PORT,
    };
    Ok(Some((token.to_string(), port)))
}

/// Start the API over `v` once the network has an address (if a token
/// is set).
pub fn start(v: &Rc<Volume>) -> Result<(), String> {
    let Some((token, port)) = config()? else {
        log::info!("api: no api.token= on the command line; the admin API is off");
        return Ok(());
    };
    if net::info().is_none() {
        log::warn!("api: no network interface; the admin API is off");
        return Ok(());
    }
    let api = Rc::new(Api::new(v.mount.clone(), &token));
    let h = runtime::handle();
    let h2 = h.clone();
    let step = crate::boot_steps::BootStep::begin();
    let task = h
        .spawn_named("api.accept", async move {
            while net::info().and_then(|i| i.addr).is_none() {
                h2.sleep_ns(ADDRESS_POLL_NS).await;
            }
            let listener =
                match TcpListener::bind_with(port, BACKLOG, TCP_BUFFER_BYTES, TCP_BUFFER_BYTES) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("api: cannot listen on TCP {port}: {e}");
                        return;
                    }
                };
            log::info!("api: admin API (HTTP/1.1, bearer token) on TCP {port}");
            drop(step);
            loop {
                let stream = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("api: accept: {e}");
                        h2.sleep_ns(ADDRESS_POLL_NS).await;
                        continue;
                    }
                };
                if CONNS.borrow().len() >= MAX_CONNS {
                    scoutvm_fs::counter!("api.conns_refused").inc();
                    stream.abort();
                    continue;
                }
                let id = NEXT_CONN.get();
                NEXT_CONN.set(id + 1);
                let api = api.clone();
                let h3 = h2.clone();
                let conn = async move {
                    let s = IdleConn {
                        conn: TcpConn(stream),
                        h: h3,
                    };
                    serve(&api, &s).await;
                    CONNS.borrow_mut().remove(&id);
                };
                match h2.spawn_named("api.conn", conn) {
                    Ok(t) => {
                        CONNS.borrow_mut().insert(id, t);
                    }
                    Err(_) => {
                        scoutvm_fs::counter!("api.spawn_failed").inc();
                        log::warn!("api: too many tasks, a connection dropped");
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;
    *LISTENER.borrow_mut() = Some(task);
    Ok(())
}

/// Stop accepting and end every connection (before the volume goes).
pub fn stop() {
    if let Some(t) = LISTENER.borrow_mut().take() {
        t.abort();
    }
    let conns = core::mem::take(&mut *CONNS.borrow_mut());
    for (_, t) in conns {
        t.abort();
    }
}
