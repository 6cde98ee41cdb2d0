//! scoutfs, rebuilt: everything that *is* the filesystem.
//!
//! This crate owns the on-disk format (scoutfs format v1/v2), the block
//! layer, btrees, allocators, items, transactions and the POSIX operations.
//! It never touches hardware, time or randomness itself: block devices,
//! clocks and entropy come in through the traits in [`dev`] and [`env`], so
//! the same code runs in the appliance, in host tools and in tests.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod backend;
pub mod data;
pub mod dev;
pub mod dir;
pub mod env;
pub mod errno;
pub mod format;
pub mod hash;
pub mod inode;
pub mod item;
pub mod mem_backend;
pub mod orphan;
pub mod perm;
pub mod posix;
pub mod symlink;
pub mod txn;
pub mod vfs;
pub mod xattr;
