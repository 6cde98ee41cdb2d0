//! PVH entry: QEMU jumps to `pvh_start32` in 32-bit protected mode with
//! `%ebx` = physical address of `hvm_start_info`. We load our own GDT,
//! identity-map 0..4 GiB with 2 MiB pages, enter long mode and call
//! `kmain`. Also reads the start_info block (cmdline, memory map).
//! Invariant: nothing here allocates; the heap does not exist yet.

use core::arch::global_asm;

/// Boot stack size (deep async call chains and smoltcp live on it).
pub const BOOT_STACK_BYTES: usize = 512 * 1024;

global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov edi, ebx
    lgdt [boot_gdt_ptr]

    /* PML4[0] -> PDPT */
    mov eax, offset boot_pdpt
    or eax, 3
    mov dword ptr [boot_pml4], eax
    mov dword ptr [boot_pml4 + 4], 0

    /* PDPT[0..4] -> four page directories */
    xor ecx, ecx
1:
    mov eax, ecx
    shl eax, 12
    add eax, offset boot_pd
    or eax, 3
    mov dword ptr [boot_pdpt + ecx * 8], eax
    mov dword ptr [boot_pdpt + ecx * 8 + 4], 0
    inc ecx
    cmp ecx, 4
    jne 1b

    /* 2048 x 2 MiB pages: 0..4 GiB, present|writable|huge */
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [boot_pd + ecx * 8], eax
    mov dword ptr [boot_pd + ecx * 8 + 4], 0
    inc ecx
    cmp ecx, 2048
    jne 2b

    /* CR4: PAE | OSFXSR | OSXMMEXCPT */
    mov eax, cr4
    or eax, 0x620
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    /* EFER.LME */
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    wrmsr
    /* CR0: PG | PE | MP, clear EM */
    mov eax, cr0
    and eax, 0xFFFFFFFB
    or eax, 0x80000003
    mov cr0, eax

    push 0x08
    mov eax, offset long_mode_entry
    push eax
    retf

    .code64
long_mode_entry:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + boot_stack_top]
    xor ebp, ebp
    mov edi, edi
    call kmain
3:
    cli
    hlt
    jmp 3b

    .section .rodata
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
boot_gdt_end:
    .balign 4
    .word 0
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    .balign 16
boot_stack_bottom:
    .skip {stack}
boot_stack_top:
"#,
    stack = const BOOT_STACK_BYTES,
);

const START_INFO_MAGIC: u32 = 0x336e_c578;
/// At most this many memory map entries are read.
pub const MEMMAP_MAX: usize = 64;

/// A RAM range from the firmware's memory map.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemRange {
    pub addr: u64,
    pub size: u64,
    /// E820 type: 1 = usable RAM.
    pub kind: u32,
}

/// Longest kernel command line kept.
pub const CMDLINE_MAX: usize = 4096;

/// What the boot loader told us, copied out of boot memory (which the
/// heap may reuse) before the heap exists.
pub struct StartInfo {
    pub cmdline: heapless::String<CMDLINE_MAX>,
    pub memmap: heapless::Vec<MemRange, MEMMAP_MAX>,
}

fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: PVH guarantees start_info and what it points to are in RAM
    // below 4 GiB, which is identity-mapped; we read plain integers.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// Parse `hvm_start_info` at physical `addr`.
pub fn start_info(addr: u64) -> Result<StartInfo, &'static str> {
    if addr == 0 || read::<u32>(addr) != START_INFO_MAGIC {
        return Err("bad hvm_start_info magic (not booted through PVH?)");
    }
    let version = read::<u32>(addr + 4);
    let cmdline_paddr = read::<u64>(addr + 24);
    let mut cmdline = heapless::String::new();
    if cmdline_paddr != 0 {
        for i in 0..CMDLINE_MAX as u64 {
            let b = read::<u8>(cmdline_paddr + i);
            // Non-ASCII bytes are dropped: keys and values are ASCII.
            if b == 0 {
                break;
            }
            if b.is_ascii() && cmdline.push(b as char).is_err() {
                break;
            }
        }
    }
    let mut memmap = heapless::Vec::new();
    if version >= 1 {
        let map = read::<u64>(addr + 40);
        let entries = read::<u32>(addr + 48) as u64;
        for i in 0..entries.min(MEMMAP_MAX as u64) {
            let e = map + i * 24;
            let range = MemRange {
                addr: read::<u64>(e),
                size: read::<u64>(e + 8),
                kind: read::<u32>(e + 16),
            };
            let _ = memmap.push(range);
        }
    }
    Ok(StartInfo { cmdline, memmap })
}

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The kernel image's physical range (text through bss and boot stack).
pub fn kernel_range() -> (u64, u64) {
    // SAFETY: linker-defined symbols; only their addresses are taken.
    unsafe {
        (
            &__kernel_start as *const u8 as u64,
            &__kernel_end as *const u8 as u64,
        )
    }
}
