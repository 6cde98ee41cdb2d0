//! scoutfs, rebuilt: everything that *is* the filesystem.
//!
//! This crate owns the on-disk format (scoutfs format v1/v2), the block
//! layer, btrees, allocators, items, transactions, the POSIX operations and
//! the cluster machines. It never touches hardware, time or randomness
//! itself: block devices, clocks and entropy come in through the traits in
//! [`storage::dev`] and [`runtime::env`], so the same code runs in the
//! appliance, in host tools, in tests and in the simulator.
//!
//! One folder per subsystem (docs/layout.md says why these and what may
//! import what); lower layers never import higher ones:
//!
//! | folder | what |
//! |---|---|
//! | [`runtime`] | executor, time and entropy, counters, trace ring |
//! | [`format`] | on-disk structures and their hashes, byte by byte |
//! | [`storage`] | devices, block cache, btrees, allocators |
//! | [`cluster`] | client/server messages, framed connections, transports, cluster locks |
//! | [`server`] | the elected server role: commits, log trees, log merge |
//! | [`posix`] | the `Mount`, its POSIX operations, the item cache |
//! | [`client`] | a node's persistent half: log-tree transactions, forest reads, merge worker, node composition |
//! | [`tools`] | mkfs, fsck, print |
//! | `sim` | test and simulator only (feature `sim`): in-memory backend, fault-injecting devices, the simulator |
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(all(feature = "std", not(test)))]
extern crate std;

pub mod client;
pub mod cluster;
pub mod errno;
pub mod format;
pub mod posix;
pub mod runtime;
pub mod server;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod storage;
pub mod tools;
