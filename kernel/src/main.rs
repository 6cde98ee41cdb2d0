//! The ScoutVM appliance kernel. Built for `x86_64-unknown-none`; on the
//! host this is an empty program so `cargo test --workspace` stays green.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}
