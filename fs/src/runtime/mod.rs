//! What every subsystem runs on: the executor, time and entropy, named
//! counters and the trace ring. Imports nothing else of the crate.
pub mod counters;
pub mod env;
pub mod exec;
pub mod node;
pub mod trace;
