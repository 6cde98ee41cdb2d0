//! `\EFI\BOOT\BOOTX64.EFI` of the ScoutVM disk image (built for
//! `x86_64-unknown-uefi`; on the host this is an empty program so the
//! workspace builds everywhere).
//!
//! It reads `scoutvm.elf` (the same PVH kernel QEMU boots with `-kernel`)
//! and `cmdline.txt` from the ESP it was loaded from, loads the kernel's
//! segments at their physical addresses, takes the ACPI RSDP from the
//! configuration table and the memory map from the firmware, exits boot
//! services and enters the kernel exactly as a PVH loader does: 32-bit
//! protected mode, paging off, `%ebx` = `hvm_start_info`.
//!
//! Why drop to 32-bit rather than give the kernel a 64-bit entry: the
//! kernel then has one entry and one boot path (its own GDT, page tables
//! and stack set up by `pvh_start32`), and the loader never depends on
//! the firmware's page tables staying valid once it has left. The drop is
//! the architectural sequence (far return to a 32-bit code segment in
//! compatibility mode, clear CR0.PG, clear EFER.LME), run from a page below
//! 4 GiB that the loader copied it to, so it is identity-mapped whether the
//! firmware loaded this image high or low.
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(not(target_os = "uefi"))]
fn main() {}

#[cfg(target_os = "uefi")]
mod uefi_main {
    use core::arch::{asm, global_asm};
    use core::ffi::c_void;
    use core::ptr::{null_mut, write_bytes};

    use r_efi::efi;
    use r_efi::protocols::{file, loaded_image, simple_file_system};
    use scoutvm_loader::cmdline::{self, Writer};
    use scoutvm_loader::elf;
    use scoutvm_loader::memmap::{self, Entry};
    use scoutvm_loader::start_info;

    const KERNEL_FILE: &str = "\\scoutvm.elf";
    const CMDLINE_FILE: &str = "\\cmdline.txt";
    /// Largest kernel file read (the kernel is ~1.3 MiB).
    const KERNEL_MAX: u64 = 64 << 20;
    /// Largest cmdline.txt read.
    const CMDLINE_FILE_MAX: u64 = 64 << 10;
    /// The low block: trampoline page, start info + cmdline, memory map
    /// table, stack.
    const LOW_PAGES: usize = 4;
    const LOW_START_INFO: usize = 4096;
    const LOW_CMDLINE: usize = LOW_START_INFO + 64;
    const LOW_MEMMAP: usize = 2 * 4096 + 256;
    const MEMMAP_ENTRIES: usize = 128;
    const LOW_STACK_TOP: usize = LOW_PAGES * 4096;
    const _: () = assert!(LOW_CMDLINE + cmdline::MAX < LOW_MEMMAP);
    const _: () =
        assert!(LOW_MEMMAP + MEMMAP_ENTRIES * start_info::ENTRY_SIZE + 1024 <= LOW_STACK_TOP);

    global_asm!(
        r#"
    .text
    .globl scoutvm_tramp_start
    .globl scoutvm_tramp_end
    .p2align 4
scoutvm_tramp_start:
    /* sysv64: rdi = start info, rsi = 32-bit entry, rdx = stack top */
    cli
    mov rsp, rdx
    lea rax, [rip + scoutvm_tramp_gdt]
    mov qword ptr [rip + scoutvm_tramp_gdt_base], rax
    lgdt [rip + scoutvm_tramp_gdt_ptr]
    lea rax, [rip + scoutvm_tramp_32]
    push 0x10
    push rax
    /* retfq: to the 32-bit code segment (compatibility mode) */
    .byte 0x48, 0xcb
    .code32
scoutvm_tramp_32:
    mov ax, 0x18
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    /* paging off: leaves long mode */
    mov eax, cr0
    and eax, 0x7fffffff
    mov cr0, eax
    /* EFER.LME off */
    mov ecx, 0xC0000080
    rdmsr
    and eax, 0xfffffeff
    wrmsr
    /* CR4.PAE off, as a PVH loader leaves it */
    mov eax, cr4
    and eax, 0xffffffdf
    mov cr4, eax
    mov ebx, edi
    jmp esi
    .code64
    .p2align 3
scoutvm_tramp_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
scoutvm_tramp_gdt_ptr:
    .word 31
scoutvm_tramp_gdt_base:
    .quad 0
scoutvm_tramp_end:
    "#
    );

    unsafe extern "C" {
        static scoutvm_tramp_start: u8;
        static scoutvm_tramp_end: u8;
    }

    /// Boot services of the firmware, and its text console.
    struct Fw {
        image: efi::Handle,
        st: *mut efi::SystemTable,
        bs: *mut efi::BootServices,
    }

    impl Fw {
        /// Print one line on the firmware console (serial under OVMF).
        fn say(&self, line: &[u8]) {
            let mut buf = [0u16; 256];
            let mut n = 0;
            for &b in b"scoutvm loader: ".iter().chain(line).chain(b"\r\n") {
                if n + 1 < buf.len() {
                    buf[n] = b as u16;
                    n += 1;
                }
            }
            buf[n] = 0;
            // SAFETY: the system table is valid until ExitBootServices and
            // con_out is its text output protocol; buf is NUL-terminated.
            unsafe {
                let out = (*self.st).con_out;
                if !out.is_null() {
                    ((*out).output_string)(out, buf.as_mut_ptr());
                }
            }
        }

        fn say_status(&self, what: &[u8], s: efi::Status) {
            let mut buf = [0u8; 200];
            let mut w = Writer {
                out: &mut buf,
                len: 0,
            };
            w.put(what);
            w.put(b" (EFI status 0x");
            w.hex(s.as_usize() as u64, 16);
            w.put(b")");
            let n = w.len;
            self.say(&buf[..n]);
        }

        fn protocol<T>(
            &self,
            handle: efi::Handle,
            guid: &efi::Guid,
        ) -> Result<*mut T, efi::Status> {
            let mut guid = *guid;
            let mut out: *mut c_void = null_mut();
            // SAFETY: boot services are valid before exit; handle_protocol
            // writes an interface pointer for this GUID into `out`.
            let s = unsafe { ((*self.bs).handle_protocol)(handle, &mut guid, &mut out) };
            if s.is_error() || out.is_null() {
                return Err(s);
            }
            Ok(out.cast())
        }

        /// The root directory of the volume this image was loaded from.
        fn esp_root(&self) -> Result<*mut file::Protocol, efi::Status> {
            let li: *mut loaded_image::Protocol =
                self.protocol(self.image, &loaded_image::PROTOCOL_GUID)?;
            // SAFETY: li is the firmware's loaded-image protocol of this image.
            let device = unsafe { (*li).device_handle };
            let fs: *mut simple_file_system::Protocol =
                self.protocol(device, &simple_file_system::PROTOCOL_GUID)?;
            let mut root = null_mut();
            // SAFETY: fs is a simple file system protocol instance.
            let s = unsafe { ((*fs).open_volume)(fs, &mut root) };
            if s.is_error() || root.is_null() {
                return Err(s);
            }
            Ok(root)
        }

        fn pool(&self, bytes: usize) -> Result<*mut u8, efi::Status> {
            let mut p: *mut c_void = null_mut();
            // SAFETY: boot services valid; allocate_pool writes the pointer.
            let s = unsafe { ((*self.bs).allocate_pool)(efi::LOADER_DATA, bytes.max(1), &mut p) };
            if s.is_error() || p.is_null() {
                return Err(s);
            }
            Ok(p.cast())
        }

        /// Read a whole file of at most `max` bytes from the ESP root.
        fn read_file(
            &self,
            root: *mut file::Protocol,
            name: &str,
            max: u64,
        ) -> Result<&'static [u8], efi::Status> {
            let mut path = [0u16; 64];
            for (i, c) in name.encode_utf16().take(path.len() - 1).enumerate() {
                path[i] = c;
            }
            let mut f: *mut file::Protocol = null_mut();
            // SAFETY: root is an open directory; path is NUL-terminated.
            let s = unsafe { ((*root).open)(root, &mut f, path.as_mut_ptr(), file::MODE_READ, 0) };
            if s.is_error() || f.is_null() {
                return Err(if s.is_error() {
                    s
                } else {
                    efi::Status::NOT_FOUND
                });
            }
            let mut size = 0u64;
            // SAFETY: f is an open file; seeking to the all-ones position
            // moves to its end, whose position is its size.
            let s = unsafe {
                ((*f).set_position)(f, u64::MAX);
                ((*f).get_position)(f, &mut size)
            };
            if s.is_error() || size > max {
                // SAFETY: f is open.
                unsafe { ((*f).close)(f) };
                return Err(if s.is_error() {
                    s
                } else {
                    efi::Status::BAD_BUFFER_SIZE
                });
            }
            let buf = match self.pool(size as usize) {
                Ok(b) => b,
                Err(s) => {
                    // SAFETY: f is open.
                    unsafe { ((*f).close)(f) };
                    return Err(s);
                }
            };
            let mut done = 0usize;
            // SAFETY: f is open; each read writes at most the bytes left in
            // `buf`, which is `size` bytes long.
            let s = unsafe {
                ((*f).set_position)(f, 0);
                let mut s = efi::Status::SUCCESS;
                while done < size as usize {
                    let mut n = size as usize - done;
                    s = ((*f).read)(f, &mut n, buf.add(done).cast());
                    if s.is_error() || n == 0 {
                        break;
                    }
                    done += n;
                }
                ((*f).close)(f);
                s
            };
            if s.is_error() || done != size as usize {
                return Err(if s.is_error() {
                    s
                } else {
                    efi::Status::END_OF_FILE
                });
            }
            // SAFETY: `done` bytes of the pool block were written; the
            // block lives until the kernel reuses the memory.
            Ok(unsafe { core::slice::from_raw_parts(buf, done) })
        }

        fn pages_at(
            &self,
            addr: u64,
            pages: usize,
            kind: efi::MemoryType,
        ) -> Result<(), efi::Status> {
            let mut a = addr;
            // SAFETY: boot services valid; the firmware either gives us
            // exactly [addr, addr + pages * 4096) or fails.
            let s =
                unsafe { ((*self.bs).allocate_pages)(efi::ALLOCATE_ADDRESS, kind, pages, &mut a) };
            if s.is_error() {
                return Err(s);
            }
            Ok(())
        }

        fn pages_below_4g(&self, pages: usize, kind: efi::MemoryType) -> Result<u64, efi::Status> {
            let mut a = 0xffff_ffffu64;
            // SAFETY: boot services valid; allocate_pages writes the base.
            let s = unsafe {
                ((*self.bs).allocate_pages)(efi::ALLOCATE_MAX_ADDRESS, kind, pages, &mut a)
            };
            if s.is_error() {
                return Err(s);
            }
            Ok(a)
        }

        /// The ACPI RSDP from the configuration table (2.0 preferred), or 0.
        fn rsdp(&self) -> u64 {
            // SAFETY: the configuration table has number_of_table_entries
            // entries while boot services run.
            let tables = unsafe {
                core::slice::from_raw_parts(
                    (*self.st).configuration_table,
                    (*self.st).number_of_table_entries,
                )
            };
            for guid in [efi::ACPI_20_TABLE_GUID, efi::ACPI_10_TABLE_GUID] {
                if let Some(t) = tables.iter().find(|t| t.vendor_guid == guid) {
                    return t.vendor_table as u64;
                }
            }
            0
        }
    }

    /// Write one line straight to COM1 (after ExitBootServices there is no
    /// firmware console; the UART is as the firmware programmed it).
    fn com1(line: &[u8]) {
        for &b in b"scoutvm loader: ".iter().chain(line).chain(b"\r\n") {
            for _ in 0..100_000 {
                let lsr: u8;
                // SAFETY: reading the 16550 line status register of COM1.
                unsafe {
                    asm!("in al, dx", out("al") lsr, in("dx") 0x3fdu16, options(nomem, nostack))
                };
                if lsr & 0x20 != 0 {
                    break;
                }
            }
            // SAFETY: writing the transmit register of COM1.
            unsafe { asm!("out dx, al", in("al") b, in("dx") 0x3f8u16, options(nomem, nostack)) };
        }
    }

    /// Everything up to the jump; an error is printed by the caller.
    fn boot(fw: &Fw) -> Result<core::convert::Infallible, (&'static [u8], efi::Status)> {
        let root = fw
            .esp_root()
            .map_err(|s| (&b"cannot open the EFI system partition"[..], s))?;
        let kernel_file = fw
            .read_file(root, KERNEL_FILE, KERNEL_MAX)
            .map_err(|s| (&b"cannot read \\scoutvm.elf from the ESP"[..], s))?;
        let kernel = match elf::parse(kernel_file) {
            Ok(k) => k,
            Err(e) => {
                fw.say(e.describe().as_bytes());
                return Err((
                    b"\\scoutvm.elf is not a bootable PVH kernel",
                    efi::Status::LOAD_ERROR,
                ));
            }
        };

        // The command line: cmdline.txt, else the built-in default.
        let mut line = [0u8; cmdline::MAX];
        let text = match fw.read_file(root, CMDLINE_FILE, CMDLINE_FILE_MAX) {
            Ok(t) => t,
            Err(s) => {
                fw.say_status(b"cannot read \\cmdline.txt on the ESP; booting with the built-in default command line", s);
                cmdline::DEFAULT_TEXT
            }
        };
        let len = match cmdline::parse(text, &mut line) {
            Ok(n) => n,
            Err(e) => {
                let mut msg = [0u8; 200];
                let mut w = Writer {
                    out: &mut msg,
                    len: 0,
                };
                w.put(b"cmdline.txt: ");
                let mut why = [0u8; 80];
                let n = e.describe(&mut why);
                w.put(&why[..n]);
                w.put(b"; booting with the built-in default command line");
                let n = w.len;
                fw.say(&msg[..n]);
                cmdline::parse(cmdline::DEFAULT_TEXT, &mut line).unwrap_or(0)
            }
        };
        {
            let mut msg = [0u8; 200];
            let mut w = Writer {
                out: &mut msg,
                len: 0,
            };
            w.put(b"command line: ");
            w.put(&line[..len.min(150)]);
            let n = w.len;
            fw.say(&msg[..n]);
        }

        // Claim the kernel's physical range and copy the segments.
        let segs = kernel.segments();
        let lo = segs.iter().map(|s| s.paddr).min().unwrap_or(0) & !4095;
        let hi = segs.iter().map(|s| s.paddr + s.memsz).max().unwrap_or(0);
        let pages = ((hi - lo).div_ceil(4096)) as usize;
        if let Err(s) = fw.pages_at(lo, pages, efi::LOADER_DATA) {
            let mut msg = [0u8; 160];
            let mut w = Writer {
                out: &mut msg,
                len: 0,
            };
            w.put(b"the kernel's load range 0x");
            w.hex(lo, 8);
            w.put(b"..0x");
            w.hex(hi, 8);
            w.put(b" is in use by the firmware");
            let n = w.len;
            fw.say(&msg[..n]);
            return Err((b"cannot place the kernel", s));
        }
        for s in segs {
            // SAFETY: [paddr, paddr + memsz) lies in the range allocated
            // above (identity-mapped by the firmware); elf::parse checked
            // that [offset, offset + filesz) lies in the file.
            unsafe {
                let dst = s.paddr as *mut u8;
                core::ptr::copy_nonoverlapping(
                    kernel_file.as_ptr().add(s.offset as usize),
                    dst,
                    s.filesz as usize,
                );
                write_bytes(dst.add(s.filesz as usize), 0, (s.memsz - s.filesz) as usize);
            }
        }

        // The low block (below 4 GiB, executable: the trampoline runs there).
        let low = fw
            .pages_below_4g(LOW_PAGES, efi::LOADER_CODE)
            .map_err(|s| (&b"no memory below 4 GiB for the start info"[..], s))?;
        // SAFETY: the block is ours, LOW_PAGES pages long.
        let lowmem = unsafe { core::slice::from_raw_parts_mut(low as *mut u8, LOW_PAGES * 4096) };
        lowmem.fill(0);
        // SAFETY: linker symbols around the trampoline; only read.
        let tramp = unsafe {
            let a = &scoutvm_tramp_start as *const u8;
            let b = &scoutvm_tramp_end as *const u8;
            core::slice::from_raw_parts(a, b as usize - a as usize)
        };
        lowmem[..tramp.len()].copy_from_slice(tramp);
        lowmem[LOW_CMDLINE..LOW_CMDLINE + len].copy_from_slice(&line[..len]);
        let rsdp = fw.rsdp();
        if rsdp == 0 {
            fw.say(b"the firmware has no ACPI RSDP; the kernel boots without one");
        }

        let mut msg = [0u8; 120];
        let mut w = Writer {
            out: &mut msg,
            len: 0,
        };
        w.put(b"kernel 0x");
        w.hex(lo, 8);
        w.put(b"..0x");
        w.hex(hi, 8);
        w.put(b", entry 0x");
        w.hex(kernel.entry32 as u64, 8);
        w.put(b"; exiting boot services");
        let n = w.len;
        fw.say(&msg[..n]);

        let map = exit_boot_services(fw)?;
        // From here on: no firmware calls.
        let mut entries = [Entry::default(); MEMMAP_ENTRIES];
        let conv = memmap::convert(map.descriptors(), &mut entries);
        let table = &mut lowmem[LOW_MEMMAP..LOW_MEMMAP + MEMMAP_ENTRIES * start_info::ENTRY_SIZE];
        let mut info = [0u8; start_info::SIZE];
        start_info::write(
            &mut info,
            &start_info::Addrs {
                cmdline: low + LOW_CMDLINE as u64,
                rsdp,
                memmap: low + LOW_MEMMAP as u64,
            },
            &entries[..conv.count],
            table,
        );
        lowmem[LOW_START_INFO..LOW_START_INFO + start_info::SIZE].copy_from_slice(&info);
        let mut msg = [0u8; 120];
        let mut w = Writer {
            out: &mut msg,
            len: 0,
        };
        w.put(b"entering the kernel (PVH, 32-bit); memory map of ");
        w.dec(conv.count as u64);
        w.put(b" entries");
        if conv.dropped > 0 {
            w.put(b", ");
            w.dec(conv.dropped as u64);
            w.put(b" high ones dropped");
        }
        let n = w.len;
        com1(&msg[..n]);
        // SAFETY: the low block holds the trampoline (position-independent,
        // copied whole) and is identity-mapped below 4 GiB; the kernel is
        // loaded at its physical addresses; boot services are gone, so
        // nothing else owns the machine. The trampoline never returns.
        unsafe {
            let enter: extern "sysv64" fn(u64, u64, u64) -> ! = core::mem::transmute(low as usize);
            enter(
                low + LOW_START_INFO as u64,
                kernel.entry32 as u64,
                low + LOW_STACK_TOP as u64,
            )
        }
    }

    /// The final memory map (a pool buffer of descriptors).
    struct Map {
        buf: *const u8,
        size: usize,
        desc_size: usize,
    }

    impl Map {
        fn descriptors(&self) -> impl Iterator<Item = (u32, u64, u64)> + '_ {
            (0..self.size / self.desc_size).map(move |i| {
                // SAFETY: the firmware wrote `size` bytes of descriptors of
                // `desc_size` bytes each (at least a MemoryDescriptor).
                let d = unsafe {
                    core::ptr::read_unaligned(
                        self.buf
                            .add(i * self.desc_size)
                            .cast::<efi::MemoryDescriptor>(),
                    )
                };
                (d.r#type, d.physical_start, d.number_of_pages)
            })
        }
    }

    fn exit_boot_services(fw: &Fw) -> Result<Map, (&'static [u8], efi::Status)> {
        let mut size = 0usize;
        let mut key = 0usize;
        let mut desc_size = 0usize;
        let mut version = 0u32;
        // SAFETY: a size query with a null buffer; the firmware writes the
        // sizes it needs.
        unsafe {
            ((*fw.bs).get_memory_map)(
                &mut size,
                null_mut(),
                &mut key,
                &mut desc_size,
                &mut version,
            )
        };
        if desc_size < core::mem::size_of::<efi::MemoryDescriptor>() {
            return Err((
                b"the firmware's memory map is malformed",
                efi::Status::LOAD_ERROR,
            ));
        }
        // Room for the entries the allocation itself adds.
        let cap = size + 16 * desc_size;
        let buf = fw
            .pool(cap)
            .map_err(|s| (&b"no memory for the memory map"[..], s))?;
        let mut last = efi::Status::SUCCESS;
        for _ in 0..4 {
            size = cap;
            // SAFETY: buf holds `cap` bytes.
            let s = unsafe {
                ((*fw.bs).get_memory_map)(
                    &mut size,
                    buf.cast(),
                    &mut key,
                    &mut desc_size,
                    &mut version,
                )
            };
            if s.is_error() {
                return Err((b"cannot read the memory map", s));
            }
            // SAFETY: key is the current map key; on success boot services
            // end and this loader owns the machine.
            last = unsafe { ((*fw.bs).exit_boot_services)(fw.image, key) };
            if !last.is_error() {
                return Ok(Map {
                    buf,
                    size,
                    desc_size,
                });
            }
            // The map changed under us (an event ran): read it again.
        }
        Err((b"ExitBootServices keeps failing", last))
    }

    #[unsafe(no_mangle)]
    extern "efiapi" fn efi_main(image: efi::Handle, st: *mut efi::SystemTable) -> efi::Status {
        // SAFETY: the firmware passes a valid system table.
        let bs = unsafe { (*st).boot_services };
        let fw = Fw { image, st, bs };
        fw.say(b"start");
        let Err((what, status)) = boot(&fw);
        fw.say_status(what, status);
        fw.say(b"cannot boot ScoutVM; returning to the firmware in 10 s");
        // SAFETY: boot services are still valid (boot() only fails before
        // ExitBootServices succeeds).
        unsafe { ((*bs).stall)(10_000_000) };
        status
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        com1(b"panic in the loader");
        loop {
            // SAFETY: parking the CPU with interrupts off.
            unsafe { asm!("cli; hlt", options(nomem, nostack)) };
        }
    }
}
