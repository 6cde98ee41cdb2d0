//! An appliance network service (9P, FUSE) in a host process: a volume
//! opened on the fs thread (`fs_thread`) served by a `scoutvm_net`
//! server on a TCP port, for tests and benches of its clients without
//! booting a VM. `fuse_tcp` and `p9_tcp` say which server.
//!
//! The server and every connection live on the fs thread; per connection
//! a reader thread moves the bytes the socket delivers into the
//! connection's inbox as fs-thread jobs, and replies are written to the
//! socket from the fs thread (blocking: the client drains its socket).
//! What a connection has sent and the server not yet taken is bounded by
//! the fs thread's job queue (`QUEUE_DEPTH` reads of at most 256 KiB).
//! Invariant: after [`TcpHostServer::stop`] every connection has released
//! its handles and locks and the volume is closed cleanly.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io::{Read, Write};
use std::marker::PhantomData;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::runtime::exec::{Handle, Notify};
use scoutvm_net::p9::{ByteStream, Peer, StreamClosed};

use crate::fs_thread::{FsThread, OpenCtx, Opener, Submitter};

/// Bytes a reader thread takes from a socket at a time.
const READ_CHUNK: usize = 256 * 1024;

thread_local! {
    // On the fs thread: its executor, the server, each connection's inbox.
    static HANDLE: RefCell<Option<Handle>> = const { RefCell::new(None) };
    static SERVER: RefCell<Option<Rc<dyn Any>>> = const { RefCell::new(None) };
    static INBOX: RefCell<BTreeMap<u64, Rc<Inbox>>> = const { RefCell::new(BTreeMap::new()) };
}

/// A future run on the fs thread.
pub type Task = Pin<Box<dyn Future<Output = ()>>>;

/// Which appliance server a [`TcpHostServer`] runs.
pub trait HostService: 'static {
    type Server: 'static;
    type Config: Send + 'static;
    /// Names its threads (`scoutvm-NAME-accept`, `scoutvm-NAME-conn`).
    const NAME: &'static str;
    fn new_server(m: Rc<Mount>, h: Handle, config: Self::Config) -> Rc<Self::Server>;
    /// Serve one connection until it closes.
    fn serve(server: Rc<Self::Server>, sock: Rc<Sock>, peer: Peer) -> Task;
    /// Close every connection (handles and locks released).
    fn shutdown(server: Rc<Self::Server>) -> Task;
}

/// The server of this fs thread, if it is an `S`.
fn server_of<S: HostService>() -> Option<Rc<S::Server>> {
    SERVER
        .with(|s| s.borrow().clone())
        .and_then(|s| s.downcast::<S::Server>().ok())
}

/// Bytes a reader thread brought in for one connection.
#[derive(Default)]
struct Inbox {
    buf: RefCell<VecDeque<u8>>,
    notify: Notify,
    closed: Cell<bool>,
}

/// The server's end of a connection.
pub struct Sock {
    id: u64,
    inbox: Rc<Inbox>,
    out: TcpStream,
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
fn on_fs_thread(sub: &Submitter, f: impl FnOnce(Rc<Mount>) + Send + 'static) -> bool {
    sub.submit(Box::new(move |m| {
        f(m);
        Box::pin(async {})
    }))
}

/// A volume served by `S` on a TCP port of this host.
pub struct TcpHostServer<S: HostService> {
    fs: FsThread,
    port: u16,
    stopping: Arc<AtomicBool>,
    service: PhantomData<S>,
}

impl<S: HostService> TcpHostServer<S> {
    /// Open `opener`'s volume and serve it on `bind` (e.g.
    /// `127.0.0.1:0` for a free port).
    pub fn start(opener: Opener, config: S::Config, bind: &str) -> Result<Self, String> {
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
            let s: Rc<dyn Any> = S::new_server(m, h, config);
            SERVER.with(|x| *x.borrow_mut() = Some(s));
        });
        if !made {
            return Err("the fs thread stopped".into());
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        std::thread::Builder::new()
            .name(format!("scoutvm-{}-accept", S::NAME))
            .spawn(move || accept_loop::<S>(listener, sub, stop))
            .map_err(|e| format!("cannot start the accept thread: {e}"))?;
        Ok(TcpHostServer {
            fs,
            port,
            stopping,
            service: PhantomData,
        })
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
            let s = server_of::<S>();
            SERVER.with(|s| s.borrow_mut().take());
            match s {
                Some(s) => S::shutdown(s),
                None => Box::pin(async {}),
            }
        }));
        if !queued {
            return Err("the fs thread stopped".into());
        }
        self.fs.shutdown()
    }
}

fn accept_loop<S: HostService>(listener: TcpListener, sub: Submitter, stopping: Arc<AtomicBool>) {
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
            let (Some(server), Some(h)) = (server_of::<S>(), HANDLE.with(|h| h.borrow().clone()))
            else {
                let _ = out.shutdown(Shutdown::Both);
                return;
            };
            let inbox = Rc::new(Inbox::default());
            INBOX.with(|i| i.borrow_mut().insert(id, inbox.clone()));
            let sock = Rc::new(Sock { id, inbox, out });
            if h.spawn(S::serve(server, sock.clone(), peer)).is_err() {
                sock.close();
            }
        });
        if !started {
            return;
        }
        let sub = sub.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("scoutvm-{}-conn", S::NAME))
            .spawn(move || read_loop(stream, id, sub));
        if spawned.is_err() {
            eprintln!("scoutvm: cannot start a connection's reader thread");
        }
    }
}

/// Move what the socket delivers into connection `id`'s inbox.
fn read_loop(mut s: TcpStream, id: u64, sub: Submitter) {
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
