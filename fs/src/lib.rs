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

pub mod allocator;
pub mod avl;
pub mod backend;
pub mod block;
pub mod btree;
pub mod btree_block;
pub mod btree_merge;
pub mod client;
pub mod counters;
pub mod data;
pub mod dev;
pub mod dir;
pub mod env;
pub mod errno;
pub mod exec;
pub mod faultdev;
pub mod forest;
pub mod format;
pub mod fsck;
pub mod hash;
pub mod inode;
pub mod item;
pub mod leader;
pub mod log_merge;
pub mod log_trees;
pub mod mem_backend;
pub mod mkfs;
pub mod msg;
pub mod node;
pub mod orphan;
pub mod perm;
pub mod posix;
pub mod print;
pub mod rpc;
pub mod server;
pub mod store_error;
pub mod symlink;
pub mod trace;
pub mod trans;
pub mod transport;
pub mod txn;
pub mod vfs;
pub mod xattr;
