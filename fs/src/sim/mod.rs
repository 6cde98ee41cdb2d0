//! Test and simulator support: the in-memory backend and the
//! fault-injecting block devices.
pub mod faultdev;
pub mod mem_backend;
