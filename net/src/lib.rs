//! The network face of ScoutVM: the 9P2000.L and FUSE wire codecs and file
//! servers, and the glue that carries them over smoltcp sockets.
//!
//! `no_std + alloc`, no I/O of its own: bytes come in and go out through
//! the caller.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod api;
mod conns;
pub mod fuse;
pub mod p9;
