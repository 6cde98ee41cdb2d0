//! The storage layer: the block device seam, the metadata block cache,
//! btrees and allocators, and their typed errors. Imports `format` and
//! `runtime` only.
pub mod allocator;
pub mod avl;
pub mod block;
pub mod btree;
pub mod btree_block;
pub mod dev;
pub mod srch_file;
pub mod store_error;
