//! The appliance's FUSE-over-TCP service in a host process: a volume
//! opened on the fs thread (`fs_thread`) served by `scoutvm_net::fuse`
//! on a TCP port, for tests and benches of FUSE clients (`scoutvm mount
//! --node`, a vhost-user-fs relay) without booting a VM.
//!
//! The server and every connection live on the fs thread; per connection
//! a reader thread moves the bytes the socket delivers into the
//! connection's inbox as fs-thread jobs, and replies are written to the
//! socket from the fs thread (blocking: the client drains its socket).
//! What a connection has sent and the server not yet taken is bounded by
//! the fs thread's job queue (`QUEUE_DEPTH` reads of at most 256 KiB).
//! Invariant: after [`TcpFuseServer::stop`] every connection has released
//! its handles and locks and the volume is closed cleanly.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::runtime::exec::{Handle, Notify};
use scoutvm_net::fuse::{serve, Server, ServerConfig};
use scoutvm_net::p9::{ByteStream, Peer, StreamClosed};

use crate::fs_thread::{FsThread, OpenCtx, Opener, Submitter};

/// Bytes a reader thread takes from a socket at a time.
const READ_CHUNK: usize = 256 * 1024;

thread_local! {
    // On the fs thread: its executor, the server, each connection's inbox.
    static HANDLE: RefCell<Option<Handle>> = const { RefCell::new(None) };
    static SERVER: RefCell<Option<Rc<Server>>> = const { RefCell::new(None) };
    pub(crate) static INBOX: RefCell<BTreeMap<u64, Rc<Inbox>>> = const { RefCell::new(BTreeMap::new()) };
}

/// Bytes a reader thread brought in for one connection.
#[derive(Default)]
pub(crate) struct Inbox {
    buf: RefCell<VecDeque<u8>>,
    notify: Notify,
    closed: Cell<bool>,
}

/// The server's end of a connection.
pub(crate) struct Sock {
    pub(crate) id: u64,
    pub(crate) inbox: Rc<Inbox>,
    pub(crate) out: TcpStream,
}

impl ByteStream for Sock {
    async fn read(&self, buf: &mut [u8]) -> Result<usize, StreamClosed> {
        loop {
            let n = self.inbox.notify.notified();
            {
                let mut q = self.inbox.buf.borrow_mut();
                if !q.is_empty() {
                    let k = q.len().min(buf.len());
                    for (dst, b) in buf.iter_mut().zip(q.drain(..k)) {
                        *dst = b;
                    }
                    return Ok(k);
                }
            }
            if self.inbox.closed.get() {
                return Ok(0);
            }
            n.await;
        }
    }

    fn write_all<'a>(
        &'a self,
        buf: &'a [u8],
    ) -> impl Future<Output = Result<(), StreamClosed>> + 'a {
        std::future::ready((&self.out).write_all(buf).map_err(|_| StreamClosed))
    }

    fn close(&self) {
        let _ = self.out.shutdown(Shutdown::Both);
        self.inbox.closed.set(true);
        self.inbox.notify.notify();
        INBOX.with(|i| i.borrow_mut().remove(&self.id));
    }
}

/// Run `f` on the fs thread as a job; `false` if the thread is gone.
pub(crate) fn on_fs_thread(sub: &Submitter, f: impl FnOnce(Rc<Mount>) + Send + 'static) -> bool {
    sub.submit(Box::new(move |m| {
        f(m);
        Box::pin(async {})
    }))
}

/// A volume served over FUSE on a TCP port of this host.
pub struct TcpFuseServer {
    fs: FsThread,
    port: u16,
    stopping: Arc<AtomicBool>,
}

impl TcpFuseServer {
    /// Open `opener`'s volume and serve it on `bind` (e.g.
    /// `127.0.0.1:0` for a free port).
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
            .name("scoutvm-fuse-accept".into())
            .spawn(move || accept_loop(listener, sub, stop))
            .map_err(|e| format!("cannot start the accept thread: {e}"))?;
        Ok(TcpFuseServer { fs, port, stopping })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stop accepting, close every connection (handles and locks are
    /// released), close the volume cleanly.
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
            .name("scoutvm-fuse-conn".into())
            .spawn(move || read_loop(stream, id, sub));
        if spawned.is_err() {
            eprintln!("scoutvm: cannot start a connection's reader thread");
        }
    }
}

/// Move what the socket delivers into connection `id`'s inbox.
pub(crate) fn read_loop(mut s: TcpStream, id: u64, sub: Submitter) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        let bytes = buf[..n].to_vec();
        let ok = on_fs_thread(&sub, move |_| {
            INBOX.with(|i| {
                if let Some(ib) = i.borrow().get(&id) {
                    if n == 0 {
                        ib.closed.set(true);
                    } else {
                        ib.buf.borrow_mut().extend(bytes);
                    }
                    ib.notify.notify();
                }
            });
        });
        if n == 0 || !ok {
            return;
        }
    }
}
