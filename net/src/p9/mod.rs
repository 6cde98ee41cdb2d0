//! 9P2000.L, the protocol ScoutVM serves files with.
//!
//! [`wire`] is the codec (every message, decode and encode side by side);
//! [`frame`] cuts a TCP byte stream into whole frames bounded by `msize`.
//! The server (fid table, one task per request) builds on both; so does the
//! in-process test client. Neither module does I/O or keeps connection state
//! beyond the bytes handed to it.

pub mod frame;
pub mod wire;

#[cfg(test)]
mod tests;

pub use frame::FrameReader;
pub use wire::{
    decode, decode_reply, decode_request, encode, DecodeError, Dirent, Dirents, EncodeError, Fcall,
    GetattrMask, LockStatus, LockType, Msg, Qid, QidType, Rmsg, SetattrValid, Tmsg,
};
