//! The ScoutVM appliance kernel. Built for `x86_64-unknown-none`; on the
//! host this is an empty program so `cargo test --workspace` stays green.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
#[macro_use]
mod console;
#[cfg(target_os = "none")]
mod interrupts;
#[cfg(target_os = "none")]
mod mem;

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
extern "C" fn kmain(start_info_paddr: u64) -> ! {
    use scoutvm_drivers::{clock, irq};
    console::init();
    let info = match boot::start_info(start_info_paddr) {
        Ok(i) => i,
        Err(e) => panic!("{e}"),
    };
    let (_, kernel_end) = boot::kernel_range();
    let heap = mem::init(&info.memmap, kernel_end);
    interrupts::init();
    irq::init();
    let cal = clock::calibrate();
    kprintln!("ScoutVM: heap {} KiB tsc {} Hz lapic {} Hz cmdline '{}'", heap / 1024, cal.tsc_hz, cal.lapic_hz, info.cmdline);
    let v = alloc::vec![1u8; 1000];
    kprintln!("alloc ok {}", v.len());
    console::exit(console::EXIT_POWEROFF);
}
