//! Hardware drivers for the ScoutVM appliance: port I/O, the 16550 serial
//! port, CMOS RTC, TSC/PIT/LAPIC clocks, interrupt controllers, PCI and
//! virtio-mmio discovery, virtio-blk (a `BlockDev`) and virtio-net (a
//! smoltcp `Device`). This crate, `kernel` and the UEFI loader's firmware side
//! (`loader/src/main.rs`) are the only places with
//! `unsafe`, each block with a `// SAFETY:` line (tests/tests/layout.rs).
//!
//! Compiled for the host too (so the workspace checks and lints), but only
//! meaningful on `x86_64-unknown-none` inside the appliance.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod blk;
pub mod clock;
pub mod cmos;
pub mod irq;
pub mod net;
pub mod paging;
pub mod pci;
pub mod port;
pub mod serial;
pub mod virtio;
