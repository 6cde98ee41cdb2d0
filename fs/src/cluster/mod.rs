//! The cluster machines. Today: the client/server messages ([`msg`]), the
//! framed request/response connection ([`rpc`]), the stream transport seam
//! with its in-process loopback ([`transport`]), the reliable session over
//! reconnects ([`session`]), the cluster lock seam ([`lock`]), the quorum
//! election ([`quorum`] machine, [`quorum_wire`] datagrams,
//! [`quorum_blocks`] on disk, [`quorum_agent`] driver) and fencing
//! ([`fence`]), the lock server's machine ([`lock_server`]), the
//! mount's lock client ([`lock_client`]) and the cluster key's tags on
//! every frame and datagram ([`auth`]), and what a new server life
//! recovers from the mounts of the last ([`recovery`]).
pub mod auth;
pub mod fence;
pub mod host_fence;
pub mod lock;
pub mod lock_client;
pub mod lock_server;
pub mod msg;
pub mod quorum;
pub mod quorum_agent;
pub mod quorum_blocks;
pub mod quorum_wire;
pub mod recovery;
pub mod rpc;
pub mod session;
pub mod transport;
