//! Identity mappings for MMIO above 4 GiB. The boot page tables map only
//! 0..4 GiB; UEFI firmware (OVMF) puts 64-bit PCI BARs, virtio-pci's
//! among them, in a window at the top of the physical address space
//! (SeaBIOS keeps them low). [`map_mmio`] adds 2 MiB identity pages,
//! uncached, for such a BAR, taking page-table pages from the heap (which
//! is identity-mapped below 4 GiB, so their physical address is the
//! pointer). Called while probing devices, before any of them runs.

use alloc::alloc::alloc_zeroed;
use core::alloc::Layout;
use core::arch::asm;

use spin::Mutex;

const PRESENT_WRITABLE: u64 = 0x3;
/// Page-level write-through and cache disable: MMIO.
const UNCACHED: u64 = 0x18;
const HUGE: u64 = 0x80;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PAGE_2M: u64 = 2 << 20;
/// 4-level paging reaches 48 bits.
const ADDR_LIMIT: u64 = 1 << 48;
/// Largest range mapped in one call (BARs are KiB to MiB).
const MAP_MAX: u64 = 1 << 30;
/// What the boot page tables already map.
const BOOT_MAPPED: u64 = 1 << 32;

static LOCK: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The range is larger than 1 GiB or past 48 bits.
    BadRange,
    /// No heap for a page-table page.
    NoMemory,
}

/// A zeroed page-table page.
fn table_page() -> Result<u64, MapError> {
    let layout = Layout::from_size_align(4096, 4096).map_err(|_| MapError::NoMemory)?;
    // SAFETY: the layout has a non-zero size. The page is never freed: it
    // becomes part of the page tables.
    let p = unsafe { alloc_zeroed(layout) };
    if p.is_null() {
        return Err(MapError::NoMemory);
    }
    Ok(p as u64)
}

/// The next-level table of `entry` in `table`, made if absent. `None` when
/// the entry is a huge page (already mapped).
///
/// # Safety
/// `table` is a live, identity-mapped page-table page.
unsafe fn next_table(table: u64, index: u64) -> Result<Option<u64>, MapError> {
    let slot = (table + index * 8) as *mut u64;
    // SAFETY: per the contract, slot is one of the table's 512 entries.
    let entry = unsafe { slot.read_volatile() };
    if entry & 1 == 0 {
        let page = table_page()?;
        // SAFETY: as above; the new table is zeroed (nothing mapped yet).
        unsafe { slot.write_volatile(page | PRESENT_WRITABLE) };
        return Ok(Some(page));
    }
    if entry & HUGE != 0 {
        return Ok(None);
    }
    Ok(Some(entry & ADDR_MASK))
}

/// Identity-map `[paddr, paddr + size)` (uncached) if it lies above what
/// the boot page tables map. Mapping a range twice is harmless.
pub fn map_mmio(paddr: u64, size: u64) -> Result<(), MapError> {
    let end = paddr.checked_add(size).ok_or(MapError::BadRange)?;
    if end <= BOOT_MAPPED {
        return Ok(());
    }
    if size > MAP_MAX || end > ADDR_LIMIT {
        return Err(MapError::BadRange);
    }
    let _guard = LOCK.lock();
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    let pml4 = cr3 & ADDR_MASK;
    let mut page = paddr & !(PAGE_2M - 1);
    while page < end {
        // SAFETY: CR3 names the live PML4, and every table below it is
        // identity-mapped (boot tables in the kernel image, later ones
        // from the heap below 4 GiB).
        unsafe {
            if let Some(pdpt) = next_table(pml4, (page >> 39) & 511)? {
                if let Some(pd) = next_table(pdpt, (page >> 30) & 511)? {
                    let slot = (pd + ((page >> 21) & 511) * 8) as *mut u64;
                    if slot.read_volatile() & 1 == 0 {
                        slot.write_volatile(page | PRESENT_WRITABLE | UNCACHED | HUGE);
                    }
                }
            }
        }
        page += PAGE_2M;
    }
    // SAFETY: reloading CR3 with its own value flushes the TLB; the new
    // entries only add mappings.
    unsafe { asm!("mov cr3, {}", in(reg) cr3, options(nostack)) };
    Ok(())
}
