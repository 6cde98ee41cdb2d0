//! The kernel heap: a buddy allocator (`buddy_system_allocator`) fed with
//! every usable RAM range of the PVH memory map above the kernel image and
//! below 4 GiB (what the boot page tables map). Pages are not touched at
//! boot (first touch is slow under TCG). Never used from interrupt handlers.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicU64, Ordering};

use buddy_system_allocator::Heap;
use spin::Mutex;

use crate::boot::MemRange;

/// Largest block order: 2^32 bytes.
const ORDER: usize = 33;
/// Physical memory below this is left to firmware and boot data.
const LOW_MEMORY_END: u64 = 0x10_0000;
const MAPPED_END: u64 = 1 << 32;

struct KernelHeap(Mutex<Heap<ORDER>>);

// SAFETY: the buddy heap hands out disjoint, aligned blocks from memory we
// gave it exclusively; the mutex serialises all access.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0
            .lock()
            .alloc(layout)
            .map_or(null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: `ptr` came from `alloc` with this layout.
            unsafe { self.0.lock().dealloc(p, layout) }
        }
    }
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(Mutex::new(Heap::empty()));

static RAM_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Memory figures for the `mem` command.
#[derive(Clone, Copy, Debug)]
pub struct MemStats {
    pub ram_bytes: u64,
    pub heap_bytes: u64,
    pub heap_used_bytes: u64,
    pub heap_requested_bytes: u64,
}

/// Give the heap every usable range. Returns the heap size in bytes.
pub fn init(memmap: &[MemRange], kernel_end: u64) -> u64 {
    let mut heap = HEAP.0.lock();
    let mut ram = 0;
    for r in memmap.iter().filter(|r| r.kind == 1) {
        ram += r.size;
        let start = r.addr.max(kernel_end).max(LOW_MEMORY_END);
        let end = r.addr.saturating_add(r.size).min(MAPPED_END);
        let start = (start + 4095) & !4095;
        let end = end & !4095;
        if end > start + 4096 {
            // SAFETY: [start, end) is usable RAM per the firmware, above the
            // kernel image and boot stack, identity-mapped, and given to the
            // heap exactly once.
            unsafe { heap.add_to_heap(start as usize, end as usize) };
        }
    }
    RAM_TOTAL.store(ram, Ordering::Relaxed);
    heap.stats_total_bytes() as u64
}

pub fn stats() -> MemStats {
    let heap = HEAP.0.lock();
    MemStats {
        ram_bytes: RAM_TOTAL.load(Ordering::Relaxed),
        heap_bytes: heap.stats_total_bytes() as u64,
        heap_used_bytes: heap.stats_alloc_actual() as u64,
        heap_requested_bytes: heap.stats_alloc_user() as u64,
    }
}
