//! 9P2000.L, the protocol ScoutVM serves files with.
//!
//! [`wire`] is the codec (every message, decode and encode side by side);
//! [`frame`] cuts a TCP byte stream into whole frames bounded by `msize`.
//! The server builds on both: [`server`] (what all connections share:
//! config, locks, the connection registry), [`conn`] (one connection's state),
//! `dispatch` (one task per request, flush, teardown, [`serve`]), `ops` (the operations over
//! `posix::mount::Mount`), [`fid`] (the fid table), [`locks`] (POSIX byte-range
//! locks) and [`access`] (identities and the client allow-list). None of
//! them does I/O: bytes come and go through a [`ByteStream`].

pub mod access;
pub mod conn;
mod dispatch;
pub mod fid;
pub mod frame;
pub mod locks;
mod ops;
pub mod server;
pub mod wire;

#[cfg(test)]
mod tests;

pub use conn::{ByteStream, Conn, StreamClosed};
pub use dispatch::serve;
pub use frame::FrameReader;
pub(crate) use ops::{error_kind, ErrorKind};
pub use server::{ClientInfo, Peer, Server, ServerConfig};
pub use wire::{
    decode, decode_reply, decode_request, encode, DecodeError, Dirent, Dirents, EncodeError, Fcall,
    GetattrMask, LockStatus, LockType, Msg, Qid, QidType, Rmsg, SetattrValid, Tmsg,
};
