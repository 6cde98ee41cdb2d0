//! The pure parts of the UEFI loader, tested on the host: the kernel's ELF
//! (its loadable segments and PVH entry), `cmdline.txt`, the UEFI memory
//! map turned into the E820-style map PVH hands over, and the
//! `hvm_start_info` block. The firmware calls and the jump into the kernel
//! live in `main.rs` (built for `x86_64-unknown-uefi` only).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod cmdline;
pub mod elf;
pub mod memmap;
pub mod start_info;
