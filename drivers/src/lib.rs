//! Hardware drivers for the ScoutVM appliance. This crate and `kernel` are
//! the only places with `unsafe`, each block with a `// SAFETY:` line.
#![no_std]

extern crate alloc;
