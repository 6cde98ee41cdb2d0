//! The kernel heap: a buddy allocator (`buddy_system_allocator`) fed with
//! every usable RAM range of the PVH memory map above the kernel image and
//! below 4 GiB (what the boot page tables map), with size-class free lists
//! in front of it for small allocations. Pages are not touched at boot
//! (first touch is slow under TCG). Never used from interrupt handlers.
//!
//! Why the size classes: the buddy allocator's free looks for the freed
//! block's buddy by walking the whole free list of its order, so freeing is
//! O(free blocks of that size). A client commit of ~200 000 items (a few
//! seconds of creates) frees that many small blocks whose buddies are still
//! in use; each free then walked a list hundreds of thousands long and the
//! node stopped for minutes (one task polled for 13 s at a time). Blocks of
//! up to [`SLAB_MAX`] bytes now come from per-class lists carved out of
//! [`SLAB_CHUNK`] blocks of the buddy heap: alloc and free are O(1); a
//! class keeps what it was given (reused by later allocations of the class,
//! never merged back).

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

/// The smallest size class (it holds the free list's next pointer).
const SLAB_MIN_SHIFT: u32 = 4;
/// Allocations up to this size (and alignment) use the size classes.
const SLAB_MAX_SHIFT: u32 = 11;
const SLAB_MAX: usize = 1 << SLAB_MAX_SHIFT;
const SLAB_CLASSES: usize = (SLAB_MAX_SHIFT - SLAB_MIN_SHIFT + 1) as usize;
/// What a class takes from the buddy heap at a time (aligned to its size,
/// so every object in it is aligned to the class size).
const SLAB_CHUNK: usize = 64 << 10;

/// The size class of `layout`, if small enough: its objects are
/// `1 << (class + SLAB_MIN_SHIFT)` bytes, at least size and alignment.
fn slab_class(layout: Layout) -> Option<usize> {
    let size = layout
        .size()
        .max(layout.align())
        .max(1 << SLAB_MIN_SHIFT)
        .next_power_of_two();
    (size <= SLAB_MAX).then(|| (size.trailing_zeros() - SLAB_MIN_SHIFT) as usize)
}

/// Intrusive free lists, one per size class: a free object's first word
/// is the address of the next (0 ends the list).
struct Slabs {
    heads: [usize; SLAB_CLASSES],
    /// Bytes taken from the buddy heap for the classes.
    chunk_bytes: usize,
    /// Bytes sitting free in the lists.
    free_bytes: usize,
    /// What callers asked for, of the objects handed out.
    user_bytes: usize,
}

struct Inner {
    buddy: Heap<ORDER>,
    slabs: Slabs,
}

impl Inner {
    fn alloc_small(&mut self, class: usize, layout: Layout) -> *mut u8 {
        let size = 1usize << (class as u32 + SLAB_MIN_SHIFT);
        if self.slabs.heads[class] == 0 {
            let chunk = Layout::from_size_align(SLAB_CHUNK, SLAB_CHUNK).expect("a valid layout");
            let Ok(base) = self.buddy.alloc(chunk) else {
                return null_mut();
            };
            let base = base.as_ptr() as usize;
            // link the chunk's objects, lowest first
            let mut next = 0usize;
            for i in (0..SLAB_CHUNK / size).rev() {
                let obj = base + i * size;
                // SAFETY: `obj` is inside the chunk the buddy heap just
                // handed out (exclusively ours), aligned to `size` >= 16.
                unsafe { (obj as *mut usize).write(next) };
                next = obj;
            }
            self.slabs.heads[class] = next;
            self.slabs.chunk_bytes += SLAB_CHUNK;
            self.slabs.free_bytes += SLAB_CHUNK;
        }
        let obj = self.slabs.heads[class];
        // SAFETY: `obj` heads this class's free list: a free object of the
        // class whose first word holds the next free one.
        self.slabs.heads[class] = unsafe { (obj as *const usize).read() };
        self.slabs.free_bytes -= size;
        self.slabs.user_bytes += layout.size();
        obj as *mut u8
    }

    /// # Safety
    /// `ptr` came from `alloc_small(class, layout)` and is not used again.
    unsafe fn dealloc_small(&mut self, class: usize, ptr: *mut u8, layout: Layout) {
        let size = 1usize << (class as u32 + SLAB_MIN_SHIFT);
        // SAFETY: per the contract, `ptr` is a whole free object of the
        // class now, aligned to `size` >= 16 bytes.
        unsafe { (ptr as *mut usize).write(self.slabs.heads[class]) };
        self.slabs.heads[class] = ptr as usize;
        self.slabs.free_bytes += size;
        self.slabs.user_bytes -= layout.size();
    }
}

struct KernelHeap(Mutex<Inner>);

// SAFETY: the buddy heap hands out disjoint, aligned blocks from memory we
// gave it exclusively; the size classes hand out disjoint objects of chunks
// taken from it, each object to one caller at a time; the mutex serialises
// all access.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut h = self.0.lock();
        match slab_class(layout) {
            Some(class) => h.alloc_small(class, layout),
            None => h.buddy.alloc(layout).map_or(null_mut(), |p| p.as_ptr()),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(p) = NonNull::new(ptr) else {
            return;
        };
        let mut h = self.0.lock();
        match slab_class(layout) {
            // SAFETY: `ptr` came from `alloc` with this layout, which the
            // same class served.
            Some(class) => unsafe { h.dealloc_small(class, ptr, layout) },
            // SAFETY: `ptr` came from `alloc` with this layout.
            None => unsafe { h.buddy.dealloc(p, layout) },
        }
    }
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(Mutex::new(Inner {
    buddy: Heap::empty(),
    slabs: Slabs {
        heads: [0; SLAB_CLASSES],
        chunk_bytes: 0,
        free_bytes: 0,
        user_bytes: 0,
    },
}));

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
    let mut inner = HEAP.0.lock();
    let heap = &mut inner.buddy;
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
    let h = HEAP.0.lock();
    let s = &h.slabs;
    // the classes' chunks count as used by the buddy heap; what sits free
    // in the lists is not in use
    MemStats {
        ram_bytes: RAM_TOTAL.load(Ordering::Relaxed),
        heap_bytes: h.buddy.stats_total_bytes() as u64,
        heap_used_bytes: (h.buddy.stats_alloc_actual() - s.free_bytes) as u64,
        heap_requested_bytes: (h.buddy.stats_alloc_user() - s.chunk_bytes + s.user_bytes) as u64,
    }
}
