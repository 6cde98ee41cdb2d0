//! The appliance's 9P service in a host process (`host_service`): a
//! volume served by `scoutvm_net::p9` on a TCP port, for tests of 9P
//! clients (`scoutvm p9load`) without booting a VM.

use std::rc::Rc;

use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::runtime::exec::Handle;
use scoutvm_net::p9::{serve, Peer, Server, ServerConfig};

use crate::host_service::{HostService, Sock, Task, TcpHostServer};

/// `net::p9` as a host service.
pub struct P9Service;

impl HostService for P9Service {
    type Server = Server;
    type Config = ServerConfig;
    const NAME: &'static str = "p9";

    fn new_server(m: Rc<Mount>, h: Handle, config: ServerConfig) -> Rc<Server> {
        Server::new(m, h, config)
    }

    fn serve(server: Rc<Server>, sock: Rc<Sock>, peer: Peer) -> Task {
        Box::pin(serve(server, sock, peer))
    }

    fn shutdown(server: Rc<Server>) -> Task {
        Box::pin(async move { server.shutdown().await })
    }
}

/// A volume served over 9P2000.L on a TCP port of this host.
pub type TcpP9Server = TcpHostServer<P9Service>;
