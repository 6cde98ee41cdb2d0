//! FUSE, the protocol virtio-fs guests and the host's `/dev/fuse` speak,
//! served over a TCP byte stream.
//!
//! The stream carries raw FUSE messages back to back, exactly as the
//! Linux kernel writes them: client to server a `fuse_in_header` and the
//! opcode's body, server to client a `fuse_out_header` and the reply body
//! (replies in completion order, matched by `unique`; `FORGET`,
//! `BATCH_FORGET` and `INTERRUPT` get none). [`wire`] is the codec;
//! [`server`] what all connections share (config, the POSIX lock table of
//! `p9::locks`, the registry); [`conn`] one connection's state, its
//! dispatch and [`serve`]; `ops` the operations over
//! `posix::mount::Mount`. Access control is the 9P server's
//! (`p9::access`: allow-list, root squash). None of it does I/O: bytes
//! come and go through a `p9::ByteStream`.

pub mod conn;
mod ops;
pub mod server;
pub mod wire;

pub use conn::{serve, Conn, ConnError};
pub use ops::setattr_of;
pub use server::{ClientInfo, Server, ServerConfig};
