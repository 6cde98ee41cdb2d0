//! x86 port I/O: the only way to reach the 16550, PIT, CMOS, PCI config
//! space and the debug-exit device. Callers own the meaning of each port;
//! this file only wraps the instructions.

use core::arch::asm;

/// Write a byte to an I/O port.
///
/// # Safety
/// The port must belong to a device whose side effects the caller owns.
#[inline]
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller guarantees the port write has no unexpected effect.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Read a byte from an I/O port.
///
/// # Safety
/// The port must belong to a device whose side effects the caller owns.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller guarantees the port read has no unexpected effect.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Write a 32-bit value to an I/O port.
///
/// # Safety
/// The port must belong to a device whose side effects the caller owns.
#[inline]
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller guarantees the port write has no unexpected effect.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Write a 16-bit value to an I/O port.
///
/// # Safety
/// The port must belong to a device whose side effects the caller owns.
#[inline]
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: the caller guarantees the port write has no unexpected effect.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Read a 32-bit value from an I/O port.
///
/// # Safety
/// The port must belong to a device whose side effects the caller owns.
#[inline]
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: the caller guarantees the port read has no unexpected effect.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}
