//! The ScoutVM appliance kernel. Built for `x86_64-unknown-none`; on the
//! host this is an empty program so `cargo test --workspace` stays green.
//!
//! `kmain` brings the machine up in order (console, memory map and heap,
//! IDT, interrupt controllers, clock, command line, devices, network,
//! services) and then runs the main loop: service device interrupts, poll
//! the network, run the executor, and `hlt` until the next interrupt or
//! timer deadline. Interrupts only wake this loop; all work happens here.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod apisvc;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
#[macro_use]
mod console;
#[cfg(target_os = "none")]
mod boot_steps;
#[cfg(target_os = "none")]
mod cluster_net;
#[cfg(target_os = "none")]
mod commands;
#[cfg(target_os = "none")]
mod devices;
#[cfg(target_os = "none")]
mod fscmds;
#[cfg(target_os = "none")]
mod fusesvc;
#[cfg(target_os = "none")]
mod interrupts;
#[cfg(target_os = "none")]
mod mem;
#[cfg(target_os = "none")]
mod net;
#[cfg(target_os = "none")]
mod p9svc;
#[cfg(target_os = "none")]
mod platform;
#[cfg(target_os = "none")]
mod runtime;
#[cfg(target_os = "none")]
mod services;
#[cfg(target_os = "none")]
mod shell;
#[cfg(target_os = "none")]
mod volume;
#[cfg(target_os = "none")]
mod volume_service;

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod appliance {
    use scoutvm_drivers::serial::COM1_IRQ;
    use scoutvm_drivers::{clock, irq};
    use scoutvm_fs::runtime::exec::{Executor, Limits};
    use scoutvm_fs::runtime::trace::{self, Tracepoint};
    use scoutvm_kernel::cmdline::{Cmdline, Config, LogLevel};

    use crate::{boot, console, devices, interrupts, mem, net, runtime, services};

    /// Boot progress: stage 1 heap, 2 interrupts, 3 clock, 4 devices,
    /// 5 network, 6 services (shell prompt next).
    static BOOT_STAGE: Tracepoint = Tracepoint::new("boot_stage", &["stage", "detail"]);

    /// Longest sleep with nothing scheduled: a safety net, not a tick.
    const IDLE_MAX_NS: u64 = 10_000_000_000;

    fn level(l: LogLevel) -> log::LevelFilter {
        match l {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }

    #[unsafe(no_mangle)]
    extern "C" fn kmain(start_info_paddr: u64) -> ! {
        console::init();
        let info = match boot::start_info(start_info_paddr) {
            Ok(i) => i,
            Err(e) => panic!("{e}"),
        };
        let (_, kernel_end) = boot::kernel_range();
        let heap_bytes = mem::init(&info.memmap, kernel_end);
        interrupts::init();
        irq::init();
        let cal = clock::calibrate();
        trace::set_clock(clock::monotonic_ns);
        BOOT_STAGE.emit(&[1, heap_bytes >> 20]);
        BOOT_STAGE.emit(&[2, irq::has_second_ioapic() as u64]);
        BOOT_STAGE.emit(&[3, cal.tsc_hz / 1_000_000]);

        let cmdline = Cmdline::parse(&info.cmdline);
        let (config, errors) = Config::from_cmdline(&cmdline);
        console::init_log(level(config.log));
        log::info!(
            "ScoutVM {} node '{}': {} MiB heap, tsc {} MHz",
            crate::commands::VERSION,
            config.node,
            heap_bytes >> 20,
            cal.tsc_hz / 1_000_000
        );
        for e in &errors {
            log::warn!("cmdline: {e}");
        }
        if config.panic_at_boot {
            panic!("debug.panic=boot requested on the kernel command line");
        }

        let executor = Executor::new(Limits::default());
        // every poll timed by the TSC: `exec` and `counters` show the longest
        executor.set_poll_clock(clock::monotonic_ns);
        runtime::init(executor.handle(), cmdline, config.clone());

        // Interrupts on before device I/O: disk waits sleep in `hlt`.
        irq::route(COM1_IRQ as u32, irq::Trigger::EdgeHigh);
        console::SERIAL.enable_rx_interrupt();
        irq::enable();

        let nics = devices::probe();
        BOOT_STAGE.emit(&[4, devices::blocks().len() as u64]);
        if nics.is_empty() {
            log::info!("net: no virtio-net device");
        }
        BOOT_STAGE.emit(&[5, nics.len() as u64]);
        let cards = nics
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, config.net_for(i)))
            .collect();
        let seed =
            scoutvm_fs::runtime::env::Entropy::next_u64(&crate::platform::KernelEntropy::new());
        net::init(cards, clock::monotonic_ns(), seed);
        crate::cluster_net::announce(&config.cluster);
        services::start_all(&executor.handle());
        BOOT_STAGE.emit(&[6, 0]);
        main_loop(&executor)
    }

    fn main_loop(executor: &Executor) -> ! {
        loop {
            let pending = irq::take_pending();
            if pending & (1 << COM1_IRQ) != 0 {
                irq::unmask(COM1_IRQ as u32);
            }
            // The UART is cheap to check; edge interrupts can be missed
            // while its line is masked, so drain it every turn.
            console::drain_serial();
            if pending != 0 {
                devices::service(pending);
            }
            let now = clock::monotonic_ns();
            net::poll(now);
            let report = executor.run_until_stalled(now);
            let net_deadline = net::poll(clock::monotonic_ns());
            if report.more_ready || executor.has_ready() || irq::pending() != 0 || net::has_rx() {
                continue;
            }
            let now = clock::monotonic_ns();
            let deadline = [executor.next_deadline_ns(), net_deadline]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + IDLE_MAX_NS);
            irq::halt_until(u64::MAX, Some(deadline.saturating_sub(now).max(1)));
        }
    }
}
