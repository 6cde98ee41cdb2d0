//! Test and simulator support: the in-memory backend, the
//! fault-injecting block devices and a slow, commit-demanding cluster
//! lock provider.
pub mod faultdev;
pub mod mem_backend;
pub mod slow_locks;
