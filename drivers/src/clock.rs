//! Time: the TSC calibrated against PIT channel 0 (channel 2 needs the
//! speaker gate, which microvm lacks), the LAPIC timer calibrated in the
//! same window, and CMOS wall time at boot. After [`calibrate`],
//! [`monotonic_ns`] never goes backwards and costs one `rdtsc`.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::port::{inb, outb};

const PIT_HZ: u64 = 1_193_182;
/// Calibration window: 2 ms keeps boot fast and the error well under 0.1 %.
const CALIBRATION_TICKS: u64 = 2_386;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_ORIGIN: AtomicU64 = AtomicU64::new(0);
/// ns = (ticks * NS_MULT) >> 32.
static NS_MULT: AtomicU64 = AtomicU64::new(0);
static WALL_BASE_SEC: AtomicU64 = AtomicU64::new(0);
static LAST_NS: AtomicU64 = AtomicU64::new(0);

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc has no side effects.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    ((hi as u64) << 32) | lo as u64
}

fn pit_read() -> u64 {
    // SAFETY: PIT command/data ports; latch channel 0 and read it.
    unsafe {
        outb(0x43, 0x00);
        let lo = inb(0x40) as u64;
        let hi = inb(0x40) as u64;
        (hi << 8) | lo
    }
}

/// Calibration results.
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    pub tsc_hz: u64,
    pub lapic_hz: u64,
}

/// Measure the TSC and LAPIC timer rates against the PIT, set the clock
/// origin to now and read the RTC. Call once, with interrupts off, after
/// [`crate::irq::init`].
pub fn calibrate() -> Calibration {
    // SAFETY: PIT channel 0, lobyte/hibyte, mode 0, counting from 0xffff:
    // it will not wrap within the window.
    unsafe {
        outb(0x43, 0x30);
        outb(0x40, 0xff);
        outb(0x40, 0xff);
    }
    crate::irq::lapic_start_free_run();
    // Wait for the counter to start moving, then measure.
    let mut start = pit_read();
    for _ in 0..1_000_000 {
        let v = pit_read();
        if v != start {
            start = v;
            break;
        }
    }
    let tsc0 = rdtsc();
    let apic0 = crate::irq::lapic_current_count();
    let mut now = start;
    let mut spins = 0u64;
    while start.saturating_sub(now) < CALIBRATION_TICKS && spins < 50_000_000 {
        now = pit_read();
        spins += 1;
    }
    let tsc1 = rdtsc();
    let apic1 = crate::irq::lapic_current_count();
    let ticks = start.saturating_sub(now).max(1);
    let tsc_hz = ((tsc1 - tsc0) as u128 * PIT_HZ as u128 / ticks as u128) as u64;
    let lapic_hz = ((apic0 - apic1) as u128 * PIT_HZ as u128 / ticks as u128) as u64;
    let tsc_hz = tsc_hz.max(1_000_000);
    let lapic_hz = lapic_hz.max(1_000);
    TSC_HZ.store(tsc_hz, Ordering::Relaxed);
    NS_MULT.store(
        ((1_000_000_000u128 << 32) / tsc_hz as u128) as u64,
        Ordering::Relaxed,
    );
    TSC_ORIGIN.store(tsc0, Ordering::Relaxed);
    crate::irq::set_lapic_hz(lapic_hz);
    WALL_BASE_SEC.store(crate::cmos::read_unix_seconds(), Ordering::Relaxed);
    Calibration { tsc_hz, lapic_hz }
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Convert TSC ticks since boot to nanoseconds.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    ((ticks as u128 * NS_MULT.load(Ordering::Relaxed) as u128) >> 32) as u64
}

/// Nanoseconds since calibration; monotonic.
pub fn monotonic_ns() -> u64 {
    let origin = TSC_ORIGIN.load(Ordering::Relaxed);
    let ns = ticks_to_ns(rdtsc().saturating_sub(origin));
    // Keep it monotonic even if the TSC were ever observed to step back.
    let last = LAST_NS.fetch_max(ns, Ordering::Relaxed);
    ns.max(last)
}

/// Wall-clock seconds at the calibration instant (from the RTC).
pub fn wall_base_seconds() -> u64 {
    WALL_BASE_SEC.load(Ordering::Relaxed)
}

/// Wall-clock time now as (seconds, nanoseconds) since the Unix epoch.
pub fn wall_now() -> (u64, u32) {
    let ns = monotonic_ns();
    (
        WALL_BASE_SEC.load(Ordering::Relaxed) + ns / 1_000_000_000,
        (ns % 1_000_000_000) as u32,
    )
}

/// Busy-wait (used only before interrupts exist).
pub fn spin_ns(ns: u64) {
    let end = monotonic_ns() + ns;
    while monotonic_ns() < end {
        core::hint::spin_loop();
    }
}
