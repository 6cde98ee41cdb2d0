//! The appliance's admin API: HTTP/1.1 with JSON bodies and a bearer
//! token, for archive agents on other hosts (and the host CLI's `--node`
//! mode). Sans-IO like the 9P server: [`http`] frames requests and
//! answers, [`json`] reads and writes bodies, [`handler`] checks the token,
//! routes and calls the mount, [`serve`] runs one connection over a
//! [`crate::p9::ByteStream`]. The endpoints are in docs/archival.md.

pub mod handler;
pub mod http;
pub mod json;
mod serve;

#[cfg(test)]
mod tests;

pub use handler::{token_ok, Api, ENDPOINTS};
pub use serve::serve;
