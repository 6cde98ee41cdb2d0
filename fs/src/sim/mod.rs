//! Test and simulator support: the in-memory backend, the
//! fault-injecting block devices, a slow, commit-demanding cluster lock
//! provider, and (feature `sim`) the deterministic simulator: a whole
//! cluster of nodes in one process on one virtual clock, from one seed
//! (docs/simulator.md).
//!
//! | module | what |
//! |---|---|
//! | [`mem_backend`] | the in-memory `Backend` of POSIX tests and `scoutvm mount --mem` |
//! | [`faultdev`] | RAM disks with volatile caches, power cuts and torn writes |
//! | [`slow_locks`] | a lock provider that grants late and demands commits first |
//! | [`world`] | the event loop, virtual clock, node table, harness executor |
//! | [`net`] | simulated streams (the `Transport` seam) and datagrams |
//! | [`disk`] | shared disks with per-node write caches and power cuts |
//! | [`fault`] | the fault vocabulary and background pauses |
//! | [`hash`] | the event log and its 64-bit digest |
//! | [`fsnode`] | a real scoutfs node (server, client, mount) on a world node |
//! | [`workload`] | workloads and their checkers (POSIX model, crash cycles, quorum) |
//! | [`run`] | one seed, end to end: the runner's and CI's entry point |
pub mod faultdev;
pub mod mem_backend;
pub mod slow_locks;

#[cfg(feature = "sim")]
pub mod disk;
#[cfg(feature = "sim")]
pub mod fault;
#[cfg(feature = "sim")]
pub mod fsnode;
#[cfg(feature = "sim")]
pub mod hash;
#[cfg(feature = "sim")]
pub mod net;
#[cfg(feature = "sim")]
pub mod run;
#[cfg(feature = "sim")]
pub mod workload;
#[cfg(feature = "sim")]
pub mod world;
