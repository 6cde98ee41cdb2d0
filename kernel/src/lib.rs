//! The hardware-free parts of the appliance kernel, built for the host too
//! so they have unit tests: kernel command line parsing and configuration
//! ([`cmdline`]), the serial shell's line editor ([`lineedit`]), dates
//! for the shell ([`datetime`]), partition tables ([`partition`], so the
//! boot disk is never a volume device) and the argument parsing of the volume
//! commands ([`fsargs`]). The bootable binary (`main.rs`) uses them.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cmdline;
pub mod datetime;
pub mod fsargs;
pub mod lineedit;
pub mod partition;
