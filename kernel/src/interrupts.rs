//! The IDT and interrupt entry. Every vector has an assembly stub that
//! saves all general registers and calls [`interrupt_dispatch`]: CPU
//! exceptions (0..32) print vector, name, RIP, error code and registers on
//! the serial port and exit non-zero through isa-debug-exit; other vectors
//! go to `drivers::irq::handle_vector`, which never locks or allocates.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;

use scoutvm_drivers::irq;

use crate::console;

global_asm!(
    r#"
    .section .text
isr_common:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    mov rbp, rsp
    and rsp, -16
    call interrupt_dispatch
    mov rsp, rbp
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    add rsp, 16
    iretq
"#
);

global_asm!(include_str!("isr_stubs.s"));

/// Registers as the entry stub leaves them, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    zero: u32,
}

const EMPTY_GATE: Gate = Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    zero: 0,
};

#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: written once by `init` on the boot CPU before interrupts are
// enabled; only the CPU reads it afterwards.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([EMPTY_GATE; 256]));

unsafe extern "C" {
    static isr_table: [u64; 256];
}

#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

/// Fill and load the IDT. Call once, with interrupts off.
pub fn init() {
    // SAFETY: single writer at boot (see `Idt`); `isr_table` is the stub
    // address table assembled above.
    unsafe {
        let gates = &mut *IDT.0.get();
        for (v, gate) in gates.iter_mut().enumerate() {
            let addr = isr_table[v];
            *gate = Gate {
                offset_low: addr as u16,
                selector: 0x08,
                ist: 0,
                type_attr: 0x8e,
                offset_mid: (addr >> 16) as u16,
                offset_high: (addr >> 32) as u32,
                zero: 0,
            };
        }
        let ptr = IdtPointer {
            limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
            base: IDT.0.get() as u64,
        };
        asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags));
    }
}

fn exception_name(v: u64) -> &'static str {
    match v {
        0 => "divide error",
        1 => "debug",
        2 => "NMI",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack fault",
        13 => "general protection fault",
        14 => "page fault",
        16 => "x87 floating point",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating point",
        _ => "reserved",
    }
}

#[unsafe(no_mangle)]
extern "C" fn interrupt_dispatch(frame: &mut Frame) {
    if frame.vector >= 32 {
        irq::handle_vector(frame.vector as u8);
        return;
    }
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    let mut out = console::RawWriter;
    use core::fmt::Write;
    let _ = write!(
        out,
        "\nEXCEPTION: vector {} ({}) rip={:#018x} error={:#x} cr2={:#x}\n  \
         rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x}\n  \
         rbp={:#x} rsp={:#x} r8={:#x} r9={:#x} r10={:#x} r11={:#x}\n  \
         r12={:#x} r13={:#x} r14={:#x} r15={:#x} rflags={:#x} cs={:#x}\n",
        frame.vector,
        exception_name(frame.vector),
        frame.rip,
        frame.error,
        cr2,
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi,
        frame.rbp,
        frame.rsp,
        frame.r8,
        frame.r9,
        frame.r10,
        frame.r11,
        frame.r12,
        frame.r13,
        frame.r14,
        frame.r15,
        frame.rflags,
        frame.cs
    );
    console::exit(console::EXIT_EXCEPTION);
}

/// Load an empty IDT and raise an exception: the CPU cannot deliver it,
/// nor the double fault, and resets (a triple fault). For tests that the
/// harness does not mistake a reset for success.
pub fn force_triple_fault() -> ! {
    let ptr = IdtPointer { limit: 0, base: 0 };
    // SAFETY: deliberately fatal; nothing runs after this.
    unsafe {
        asm!("cli", "lidt [{}]", "int3", in(reg) &ptr, options(nostack));
    }
    loop {
        // SAFETY: only reached if the CPU did not reset; stop here.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}

/// Raise an invalid opcode exception (tests of the exception report).
pub fn force_exception() -> ! {
    // SAFETY: deliberately raises #UD, whose handler exits the VM.
    unsafe { asm!("ud2", options(nomem, nostack)) };
    unreachable!("#UD handler returned")
}
