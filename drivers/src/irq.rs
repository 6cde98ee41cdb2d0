//! Interrupt controllers: the local APIC (one-shot timer, EOI), the I/O
//! APICs (device lines, GSI 0..48) and the legacy 8259 pair (remapped out
//! of the way and masked). Called by the kernel's interrupt entry
//! ([`handle_vector`]) and by whoever waits for a device ([`halt_until`]).
//!
//! Invariant: an interrupt handler never takes a lock and never allocates.
//! A device line that fires is masked and recorded in a pending bitmap;
//! the device's owner acknowledges the device, then unmasks the line. So a
//! level-triggered line cannot storm, and no state is shared with handlers
//! beyond atomics.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::port::outb;

/// LAPIC one-shot timer vector.
pub const TIMER_VECTOR: u8 = 0x20;
/// Vector of GSI `n` is `GSI_VECTOR_BASE + n`.
pub const GSI_VECTOR_BASE: u8 = 0x30;
/// Number of GSIs we route (two 24-pin I/O APICs on microvm).
pub const GSI_MAX: u32 = 48;
/// Where the 8259s are parked; their (spurious) vectors are ignored.
pub const PIC_VECTOR_BASE: u8 = 0xe0;
pub const SPURIOUS_VECTOR: u8 = 0xff;

const LAPIC_DEFAULT_BASE: usize = 0xfee0_0000;
const IOAPIC_BASE: usize = 0xfec0_0000;
const IOAPIC2_BASE: usize = 0xfec1_0000;

const LAPIC_ID: usize = 0x20;
const LAPIC_TPR: usize = 0x80;
const LAPIC_EOI: usize = 0xb0;
const LAPIC_SVR: usize = 0xf0;
const LAPIC_LVT_TIMER: usize = 0x320;
const LAPIC_TIMER_INIT: usize = 0x380;
const LAPIC_TIMER_CUR: usize = 0x390;
const LAPIC_TIMER_DIV: usize = 0x3e0;
const LVT_MASKED: u32 = 1 << 16;

static LAPIC_BASE: AtomicUsize = AtomicUsize::new(0);
static LAPIC_HZ: AtomicU64 = AtomicU64::new(0);
static LAPIC_ID_VALUE: AtomicU32 = AtomicU32::new(0);
static IOAPIC2_PRESENT: AtomicBool = AtomicBool::new(false);
static PENDING_GSI: AtomicU64 = AtomicU64::new(0);
static TIMER_FIRED: AtomicBool = AtomicBool::new(false);

/// Interrupts taken, by kind; read by the kernel's counters.
pub static TIMER_IRQS: AtomicU64 = AtomicU64::new(0);
pub static DEVICE_IRQS: AtomicU64 = AtomicU64::new(0);
pub static SPURIOUS_IRQS: AtomicU64 = AtomicU64::new(0);
pub static HALTS: AtomicU64 = AtomicU64::new(0);
/// Interrupts taken per GSI.
pub static GSI_IRQS: [AtomicU64; GSI_MAX as usize] =
    [const { AtomicU64::new(0) }; GSI_MAX as usize];

/// Line polarity and trigger of a GSI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// ISA devices (serial): edge, active high.
    EdgeHigh,
    /// virtio-mmio on microvm: level, active high.
    LevelHigh,
    /// PCI INTx: level, active low.
    LevelLow,
}

fn lapic_read(reg: usize) -> u32 {
    let base = LAPIC_BASE.load(Ordering::Relaxed);
    assert!(base != 0, "lapic used before init");
    // SAFETY: the LAPIC page is identity-mapped MMIO and `reg` is one of its
    // 32-bit registers.
    unsafe { core::ptr::read_volatile((base + reg) as *const u32) }
}

fn lapic_write(reg: usize, value: u32) {
    let base = LAPIC_BASE.load(Ordering::Relaxed);
    assert!(base != 0, "lapic used before init");
    // SAFETY: as in `lapic_read`.
    unsafe { core::ptr::write_volatile((base + reg) as *mut u32, value) }
}

fn ioapic_read(base: usize, reg: u32) -> u32 {
    // SAFETY: I/O APIC index/data registers, identity-mapped MMIO. Callers
    // hold interrupts off so a handler cannot move the index in between.
    unsafe {
        core::ptr::write_volatile(base as *mut u32, reg);
        core::ptr::read_volatile((base + 0x10) as *const u32)
    }
}

fn ioapic_write(base: usize, reg: u32, value: u32) {
    // SAFETY: as in `ioapic_read`.
    unsafe {
        core::ptr::write_volatile(base as *mut u32, reg);
        core::ptr::write_volatile((base + 0x10) as *mut u32, value);
    }
}

/// Whether maskable interrupts are enabled.
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS only.
    unsafe { asm!("pushfq; pop {}", out(reg) flags, options(preserves_flags)) };
    flags & (1 << 9) != 0
}

/// Run `f` with interrupts off, restoring the previous state.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was = interrupts_enabled();
    // SAFETY: masking interrupts on the only CPU; restored below.
    unsafe { asm!("cli", options(nomem, nostack)) };
    let r = f();
    if was {
        // SAFETY: restores the state we found.
        unsafe { asm!("sti", options(nomem, nostack)) };
    }
    r
}

/// Enable maskable interrupts.
pub fn enable() {
    // SAFETY: the IDT and controllers are set up before the kernel calls this.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

fn ioapic_for(gsi: u32) -> Option<(usize, u32)> {
    match gsi {
        0..=23 => Some((IOAPIC_BASE, gsi)),
        24..=47 if IOAPIC2_PRESENT.load(Ordering::Relaxed) => Some((IOAPIC2_BASE, gsi - 24)),
        _ => None,
    }
}

fn ioapic_present(base: usize) -> bool {
    let version = ioapic_read(base, 1);
    let max_entry = (version >> 16) & 0xff;
    let v = version & 0xff;
    version != 0xffff_ffff && (0x11..=0x20).contains(&v) && max_entry == 23
}

/// Bring up the LAPIC, park the 8259s, mask every I/O APIC pin.
/// Interrupts stay disabled; the kernel enables them when the IDT is ready.
pub fn init() {
    // Remap the 8259s to PIC_VECTOR_BASE and mask all their lines.
    // SAFETY: standard 8259 initialisation sequence on its fixed ports.
    unsafe {
        outb(0x20, 0x11);
        outb(0xa0, 0x11);
        outb(0x21, PIC_VECTOR_BASE);
        outb(0xa1, PIC_VECTOR_BASE + 8);
        outb(0x21, 4);
        outb(0xa1, 2);
        outb(0x21, 1);
        outb(0xa1, 1);
        outb(0x21, 0xff);
        outb(0xa1, 0xff);
    }
    // SAFETY: IA32_APIC_BASE MSR; we keep its address and set the enable bit.
    let apic_msr = unsafe { rdmsr(0x1b) };
    let base = (apic_msr & 0xffff_f000) as usize;
    let base = if base == 0 { LAPIC_DEFAULT_BASE } else { base };
    // SAFETY: same MSR, enable bit set.
    unsafe { wrmsr(0x1b, apic_msr | (1 << 11)) };
    LAPIC_BASE.store(base, Ordering::Relaxed);
    lapic_write(LAPIC_SVR, 0x100 | SPURIOUS_VECTOR as u32);
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | TIMER_VECTOR as u32);
    lapic_write(LAPIC_TIMER_DIV, 0x3);
    LAPIC_ID_VALUE.store(lapic_read(LAPIC_ID) >> 24, Ordering::Relaxed);

    without_interrupts(|| {
        IOAPIC2_PRESENT.store(ioapic_present(IOAPIC2_BASE), Ordering::Relaxed);
        for gsi in 0..GSI_MAX {
            if let Some((base, pin)) = ioapic_for(gsi) {
                ioapic_write(base, 0x10 + 2 * pin, 1 << 16);
            }
        }
    });
}

/// Whether microvm's second I/O APIC (GSI 24..47) answered.
pub fn has_second_ioapic() -> bool {
    IOAPIC2_PRESENT.load(Ordering::Relaxed)
}

/// Route `gsi` to its vector with the given trigger, unmasked.
pub fn route(gsi: u32, trigger: Trigger) -> bool {
    let Some((base, pin)) = ioapic_for(gsi) else {
        return false;
    };
    let mut low = (GSI_VECTOR_BASE as u32) + gsi;
    match trigger {
        Trigger::EdgeHigh => {}
        Trigger::LevelHigh => low |= 1 << 15,
        Trigger::LevelLow => low |= (1 << 15) | (1 << 13),
    }
    let high = LAPIC_ID_VALUE.load(Ordering::Relaxed) << 24;
    without_interrupts(|| {
        ioapic_write(base, 0x11 + 2 * pin, high);
        ioapic_write(base, 0x10 + 2 * pin, low);
    });
    true
}

fn set_mask(gsi: u32, masked: bool) {
    if let Some((base, pin)) = ioapic_for(gsi) {
        let reg = 0x10 + 2 * pin;
        let low = ioapic_read(base, reg);
        let low = if masked {
            low | (1 << 16)
        } else {
            low & !(1 << 16)
        };
        ioapic_write(base, reg, low);
    }
}

/// Unmask a line after its device was acknowledged.
pub fn unmask(gsi: u32) {
    without_interrupts(|| set_mask(gsi, false));
}

/// Take and clear the set of lines that fired (bit n = GSI n).
pub fn take_pending() -> u64 {
    PENDING_GSI.swap(0, Ordering::AcqRel)
}

/// Clear the pending bits in `mask` (a waiter serviced them itself).
pub fn clear_pending(mask: u64) {
    PENDING_GSI.fetch_and(!mask, Ordering::AcqRel);
}

pub fn pending() -> u64 {
    PENDING_GSI.load(Ordering::Acquire)
}

fn eoi() {
    lapic_write(LAPIC_EOI, 0);
}

/// Called from the interrupt entry for every vector >= 32.
pub fn handle_vector(vector: u8) {
    match vector {
        TIMER_VECTOR => {
            TIMER_IRQS.fetch_add(1, Ordering::Relaxed);
            TIMER_FIRED.store(true, Ordering::Release);
            eoi();
        }
        v if v >= GSI_VECTOR_BASE && ((v - GSI_VECTOR_BASE) as u32) < GSI_MAX => {
            let gsi = (v - GSI_VECTOR_BASE) as u32;
            DEVICE_IRQS.fetch_add(1, Ordering::Relaxed);
            GSI_IRQS[gsi as usize].fetch_add(1, Ordering::Relaxed);
            set_mask(gsi, true);
            PENDING_GSI.fetch_or(1 << gsi, Ordering::AcqRel);
            eoi();
        }
        _ => {
            // 8259 spurious vectors and the LAPIC spurious vector take no EOI.
            SPURIOUS_IRQS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Calibrated LAPIC timer rate (after [`crate::clock::calibrate`]).
pub fn set_lapic_hz(hz: u64) {
    LAPIC_HZ.store(hz, Ordering::Relaxed);
}

pub fn lapic_current_count() -> u32 {
    lapic_read(LAPIC_TIMER_CUR)
}

/// Start the LAPIC counter free-running from its maximum, masked (for
/// calibration).
pub fn lapic_start_free_run() {
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | TIMER_VECTOR as u32);
    lapic_write(LAPIC_TIMER_INIT, u32::MAX);
}

fn arm_timer(timeout_ns: Option<u64>) {
    match timeout_ns {
        None => lapic_write(LAPIC_TIMER_INIT, 0),
        Some(ns) => {
            let hz = LAPIC_HZ.load(Ordering::Relaxed).max(1);
            let ticks = (ns as u128 * hz as u128 / 1_000_000_000).clamp(1, u32::MAX as u128) as u32;
            lapic_write(LAPIC_LVT_TIMER, TIMER_VECTOR as u32);
            lapic_write(LAPIC_TIMER_INIT, ticks);
        }
    }
}

/// Sleep in `hlt` until an interrupt arrives, unless one of the lines in
/// `wake_mask` is already pending. With `timeout_ns`, the LAPIC timer
/// bounds the sleep. Returns with interrupts enabled.
pub fn halt_until(wake_mask: u64, timeout_ns: Option<u64>) {
    // SAFETY: interrupts off while we decide, so a wakeup cannot slip in
    // between the check and the halt; `sti; hlt` is atomic (sti shadow).
    unsafe { asm!("cli", options(nomem, nostack)) };
    TIMER_FIRED.store(false, Ordering::Relaxed);
    if PENDING_GSI.load(Ordering::Acquire) & wake_mask != 0 || timeout_ns == Some(0) {
        enable();
        return;
    }
    arm_timer(timeout_ns);
    HALTS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: see above.
    unsafe { asm!("sti; hlt", options(nomem, nostack)) };
}

/// Read a model-specific register.
///
/// # Safety
/// `msr` must exist on this CPU.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    ((hi as u64) << 32) | lo as u64
}

/// Write a model-specific register.
///
/// # Safety
/// `msr` must exist and the value must be valid for it.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the MSR and value are valid.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack))
    };
}
