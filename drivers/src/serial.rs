//! The 16550 UART on COM1: the admin console and the log. Output is polled
//! (bounded wait for the transmit register); input raises IRQ 4 and is
//! drained by the main loop. The FIFO control register is never written:
//! QEMU drops already queued input bytes when it is.

use crate::port::{inb, outb};

/// I/O base of COM1.
pub const COM1: u16 = 0x3f8;
/// ISA IRQ line of COM1.
pub const COM1_IRQ: u8 = 4;

const DATA: u16 = 0;
const IER: u16 = 1;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;
/// Spins allowed for the transmit register to empty before a byte is dropped.
const TX_SPIN_MAX: u32 = 1_000_000;

/// A 16550 UART at an I/O base. Copyable: it holds no state of its own.
#[derive(Clone, Copy, Debug)]
pub struct Serial {
    base: u16,
}

impl Serial {
    pub const fn new(base: u16) -> Self {
        Serial { base }
    }

    /// 115200 8N1, interrupts off, OUT2 set so the IRQ reaches the
    /// interrupt controller once enabled.
    pub fn init(&self) {
        // SAFETY: the ports are the UART's own registers.
        unsafe {
            outb(self.base + IER, 0x00);
            outb(self.base + LCR, 0x80);
            outb(self.base + DATA, 0x01);
            outb(self.base + IER, 0x00);
            outb(self.base + LCR, 0x03);
            outb(self.base + MCR, 0x0b);
        }
    }

    /// Raise an interrupt when a received byte is ready.
    pub fn enable_rx_interrupt(&self) {
        // SAFETY: the port is the UART's interrupt enable register.
        unsafe { outb(self.base + IER, 0x01) }
    }

    /// Send one byte, waiting a bounded time for the transmitter.
    pub fn write_byte(&self, byte: u8) {
        for _ in 0..TX_SPIN_MAX {
            // SAFETY: reading the line status register has no side effect.
            if unsafe { inb(self.base + LSR) } & LSR_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: the port is the UART's transmit register.
        unsafe { outb(self.base + DATA, byte) }
    }

    pub fn write_bytes(&self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
    }

    /// A received byte, if one is waiting.
    pub fn read_byte(&self) -> Option<u8> {
        // SAFETY: the ports are the UART's status and receive registers;
        // reading the receive register consumes the byte, which we return.
        unsafe {
            if inb(self.base + LSR) & LSR_DATA_READY != 0 {
                Some(inb(self.base + DATA))
            } else {
                None
            }
        }
    }
}

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}
