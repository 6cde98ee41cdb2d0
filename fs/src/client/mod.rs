//! A node's persistent half and its composition: the typed requests to the
//! server ([`requests`]), the client's log-tree transactions ([`log_txn`]),
//! forest reads ([`forest`]), the merge worker's btree merge
//! ([`btree_merge`]), and [`node`], which wires the server role, the client
//! and the POSIX mount into one node.
pub mod btree_merge;
pub mod cluster_node;
pub mod forest;
pub mod log_txn;
pub mod node;
pub mod requests;
