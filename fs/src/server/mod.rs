//! The server: what the elected leader runs for the whole cluster (scoutfs
//! calls this role "the server").
//!
//! - [`role`]: the role itself: accepts client connections, answers their
//!   requests, batches them into server commits, runs background jobs;
//! - [`commit`]: the storage core under it: the dirty super, the server's
//!   metadata allocators and seq, and [`commit::ServerTxn`], one server
//!   transaction made durable with a new super;
//! - [`log_trees`], [`log_merge`]: the operations on clients' log trees and
//!   the merge of finalized trees into fs_root;
//! - [`omap`]: the open-inode map fan-out (who has an inode open).
pub mod commit;
pub mod log_merge;
pub mod log_trees;
pub mod omap;
pub mod role;
pub mod srch_compact;
