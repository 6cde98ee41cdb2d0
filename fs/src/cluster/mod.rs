//! The cluster machines. Today: the client/server messages ([`msg`]), the
//! framed request/response connection ([`rpc`]), the stream transport seam
//! with its in-process loopback ([`transport`]), the reliable session over
//! reconnects ([`session`]) and the cluster lock seam
//! ([`lock`]). The quorum, lock server, recovery and fencing join
//! them here.
pub mod lock;
pub mod msg;
pub mod rpc;
pub mod session;
pub mod transport;
