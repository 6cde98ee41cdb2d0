//! The appliance's FUSE-over-TCP service in a host process
//! (`host_service`): a volume served by `scoutvm_net::fuse` on a TCP
//! port, for tests and benches of FUSE clients (`scoutvm mount --node`, a
//! vhost-user-fs relay) without booting a VM.

use std::rc::Rc;

use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::runtime::exec::Handle;
use scoutvm_net::fuse::{serve, Server, ServerConfig};
use scoutvm_net::p9::Peer;

use crate::host_service::{HostService, Sock, Task, TcpHostServer};

/// `net::fuse` as a host service.
pub struct FuseService;

impl HostService for FuseService {
    type Server = Server;
    type Config = ServerConfig;
    const NAME: &'static str = "fuse";

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

/// A volume served over FUSE on a TCP port of this host.
pub type TcpFuseServer = TcpHostServer<FuseService>;
