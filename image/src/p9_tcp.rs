//! The appliance's 9P service in a host process: a volume opened on the
//! fs thread (`fs_thread`) served by `scoutvm_net::p9` on a TCP port, for
//! tests of 9P clients (`scoutvm p9load`) without booting a VM. The
//! plumbing (per-connection reader threads feeding inboxes on the fs
//! thread, replies written from the fs thread) is `fuse_tcp`'s.
//! Invariant: after [`TcpP9Server::stop`] every connection has released
//! its fids and locks and the volume is closed cleanly.

use std::cell::RefCell;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use scoutvm_fs::runtime::exec::Handle;
use scoutvm_net::p9::{serve, ByteStream, Peer, Server, ServerConfig};

use crate::fs_thread::{FsThread, OpenCtx, Opener, Submitter};
use crate::fuse_tcp::{on_fs_thread, read_loop, Inbox, Sock, INBOX};

thread_local! {
    // On the fs thread: its executor and the server.
    static HANDLE: RefCell<Option<Handle>> = const { RefCell::new(None) };
    static SERVER: RefCell<Option<Rc<Server>>> = const { RefCell::new(None) };
}

/// A volume served over 9P2000.L on a TCP port of this host.
pub struct TcpP9Server {
    fs: FsThread,
    port: u16,
    stopping: Arc<AtomicBool>,
}

impl TcpP9Server {
    /// Open `opener`'s volume and serve it on `bind` (e.g. `127.0.0.1:0`
    /// for a free port).
    pub fn start(opener: Opener, config: ServerConfig, bind: &str) -> Result<Self, String> {
        let listener = TcpListener::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("bind {bind}: {e}"))?
            .port();
        let opener: Opener = Box::new(move |ctx: OpenCtx| {
            HANDLE.with(|h| *h.borrow_mut() = Some(ctx.handle.clone()));
            opener(ctx)
        });
        let fs = FsThread::start(opener)?;
        let sub = fs.submitter();
        let made = on_fs_thread(&sub, move |m| {
            let h = HANDLE
                .with(|h| h.borrow().clone())
                .expect("set by the opener");
            let s = Server::new(m, h, config);
            SERVER.with(|x| *x.borrow_mut() = Some(s));
        });
        if !made {
            return Err("the fs thread stopped".into());
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        std::thread::Builder::new()
            .name("scoutvm-p9-accept".into())
            .spawn(move || accept_loop(listener, sub, stop))
            .map_err(|e| format!("cannot start the accept thread: {e}"))?;
        Ok(TcpP9Server { fs, port, stopping })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stop accepting, close every connection, close the volume cleanly.
    pub fn stop(self) -> Result<(), String> {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept thread.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let sub = self.fs.submitter();
        let queued = sub.submit(Box::new(|_| {
            Box::pin(async {
                let s = SERVER.with(|s| s.borrow_mut().take());
                if let Some(s) = s {
                    s.shutdown().await;
                }
            })
        }));
        if !queued {
            return Err("the fs thread stopped".into());
        }
        self.fs.shutdown()
    }
}

fn accept_loop(listener: TcpListener, sub: Submitter, stopping: Arc<AtomicBool>) {
    for (id, stream) in listener.incoming().enumerate() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let id = id as u64;
        let _ = stream.set_nodelay(true);
        let Ok(out) = stream.try_clone() else {
            continue;
        };
        let peer = match stream.peer_addr() {
            Ok(std::net::SocketAddr::V4(a)) => Peer {
                addr: a.ip().octets(),
                port: a.port(),
            },
            _ => Peer {
                addr: [0; 4],
                port: 0,
            },
        };
        let started = on_fs_thread(&sub, move |_| {
            let (Some(server), Some(h)) = (
                SERVER.with(|s| s.borrow().clone()),
                HANDLE.with(|h| h.borrow().clone()),
            ) else {
                let _ = out.shutdown(Shutdown::Both);
                return;
            };
            let inbox = Rc::new(Inbox::default());
            INBOX.with(|i| i.borrow_mut().insert(id, inbox.clone()));
            let sock = Rc::new(Sock { id, inbox, out });
            if h.spawn(serve(server, sock.clone(), peer)).is_err() {
                sock.close();
            }
        });
        if !started {
            return;
        }
        let sub = sub.clone();
        let spawned = std::thread::Builder::new()
            .name("scoutvm-p9-conn".into())
            .spawn(move || read_loop(stream, id, sub));
        if spawned.is_err() {
            eprintln!("scoutvm: cannot start a connection's reader thread");
        }
    }
}
