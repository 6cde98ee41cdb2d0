//! The serial console: locked output for the shell and the log, a raw
//! writer for the panic and exception paths (which may interrupt a holder
//! of the lock), the input queue the main loop fills from the UART and the
//! shell drains, the `log` backend, and exit through isa-debug-exit.

use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::future::poll_fn;
use core::task::{Poll, Waker};

use scoutvm_drivers::port::outl;
use scoutvm_drivers::serial::{Serial, COM1};
use scoutvm_fs::counter;
use spin::Mutex;

/// isa-debug-exit port; QEMU exits with status `(code << 1) | 1`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Clean `poweroff`: QEMU status 33.
pub const EXIT_POWEROFF: u32 = 0x10;
/// Panic: QEMU status 35.
pub const EXIT_PANIC: u32 = 0x11;
/// CPU exception: QEMU status 37.
pub const EXIT_EXCEPTION: u32 = 0x12;

/// Input bytes held for the shell; more are dropped (and counted).
const INPUT_MAX: usize = 4096;

pub static SERIAL: Serial = Serial::new(COM1);
static OUT: Mutex<()> = Mutex::new(());
static INPUT: Mutex<heapless::Deque<u8, INPUT_MAX>> = Mutex::new(heapless::Deque::new());
static INPUT_WAKER: Mutex<Option<Waker>> = Mutex::new(None);
/// What the shell shows on the current line while it waits for input (its
/// prompt and the text typed so far); `None` while a command runs. A log
/// record printed meanwhile erases that line, prints itself and shows the
/// line again, so the prompt always follows the log.
static INPUT_LINE: Mutex<Option<Vec<u8>>> = Mutex::new(None);

pub fn init() {
    SERIAL.init();
}

/// Locked console output.
pub fn write_str(s: &str) {
    let _g = OUT.lock();
    SERIAL.write_bytes(s.as_bytes());
}

pub fn write_bytes(b: &[u8]) {
    let _g = OUT.lock();
    for &c in b {
        SERIAL.write_byte(c);
    }
}

pub fn print_fmt(args: fmt::Arguments) {
    let _g = OUT.lock();
    let mut s = SERIAL;
    let _ = s.write_fmt(args);
}

/// The shell waits for input showing `line` (prompt and typed text), or
/// runs a command (`None`): see [`INPUT_LINE`].
pub fn set_input_line(line: Option<Vec<u8>>) {
    let _g = OUT.lock();
    *INPUT_LINE.lock() = line;
}

/// Print a log record: if the shell's prompt line is showing, erase it
/// first (CR, erase to end of line) and show it again after the record.
fn print_record(args: fmt::Arguments) {
    let _g = OUT.lock();
    let shown = INPUT_LINE.lock();
    if shown.is_some() {
        SERIAL.write_bytes(b"\r\x1b[K");
    }
    let mut s = SERIAL;
    let _ = s.write_fmt(args);
    if let Some(line) = shown.as_ref() {
        for &c in line {
            SERIAL.write_byte(c);
        }
    }
}

/// Unlocked output for fatal paths only.
pub struct RawWriter;

impl Write for RawWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        SERIAL.write_bytes(s.as_bytes());
        Ok(())
    }
}

#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! kprintln {
    () => { $crate::console::write_str("\n") };
    ($($arg:tt)*) => {{
        $crate::console::print_fmt(format_args!($($arg)*));
        $crate::console::write_str("\n");
    }};
}

/// Move every byte the UART holds into the input queue; wake the reader.
pub fn drain_serial() {
    let mut got = false;
    for _ in 0..INPUT_MAX {
        let Some(b) = SERIAL.read_byte() else { break };
        got = true;
        if INPUT.lock().push_back(b).is_err() {
            counter!("console.input_dropped").inc();
        }
    }
    if got {
        if let Some(w) = INPUT_WAKER.lock().take() {
            w.wake();
        }
    }
}

/// Wait for input; returns every byte queued so far (at least one).
pub async fn read_input() -> Vec<u8> {
    poll_fn(|cx| {
        let mut q = INPUT.lock();
        if q.is_empty() {
            *INPUT_WAKER.lock() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut out = Vec::with_capacity(q.len());
        while let Some(b) = q.pop_front() {
            out.push(b);
        }
        Poll::Ready(out)
    })
    .await
}

/// QEMU q35's ACPI PM1a control register (ICH9 PMBASE 0x600, as SeaBIOS
/// and OVMF program it, + 4) and its S5 sleep request (SLP_TYP 0 | SLP_EN).
const Q35_PM1A_CNT: u16 = 0x604;
const Q35_SLEEP_S5: u16 = 1 << 13;

/// Leave the VM with `code` (QEMU exit status `(code << 1) | 1`). Without
/// the debug-exit device (libvirt, a cloud), a power-off asks q35's ACPI
/// power management for S5 (elsewhere the port is unused and the write is
/// ignored); anything else stops the CPU.
pub fn exit(code: u32) -> ! {
    // SAFETY: isa-debug-exit's port; the write ends the VM when present.
    unsafe { outl(DEBUG_EXIT_PORT, code) };
    if code == EXIT_POWEROFF {
        // SAFETY: the PM1a control port of q35's ICH9; on machines without
        // it nothing decodes the port.
        unsafe { scoutvm_drivers::port::outw(Q35_PM1A_CNT, Q35_SLEEP_S5) };
    }
    loop {
        // SAFETY: nothing left to do; park the CPU with interrupts off.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        // Library chatter (device negotiation, smoltcp) only at trace level.
        let library = m.target().starts_with("virtio_drivers") || m.target().starts_with("smoltcp");
        let max = if library && log::max_level() < log::LevelFilter::Trace {
            log::LevelFilter::Warn
        } else {
            log::max_level()
        };
        m.level() <= max
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let ns = scoutvm_drivers::clock::monotonic_ns();
        print_record(format_args!(
            "[{:5}.{:06}] {:5} {}: {}\n",
            ns / 1_000_000_000,
            (ns % 1_000_000_000) / 1_000,
            record.level(),
            record.target(),
            record.args()
        ));
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

pub fn init_log(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // SAFETY: stop taking interrupts; we are going down.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
    let mut w = RawWriter;
    let _ = write!(w, "\nPANIC: {info}\n");
    exit(EXIT_PANIC)
}
