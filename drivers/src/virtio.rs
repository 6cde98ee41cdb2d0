//! virtio plumbing shared by the block and net drivers: the DMA/MMIO `Hal`
//! for an identity-mapped kernel, and discovery of virtio devices on PCI
//! (q35) or in the virtio-mmio slots (microvm), each with the interrupt
//! line (GSI) it raises.

use alloc::alloc::{alloc_zeroed, dealloc};
use alloc::vec::Vec;
use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::pci::bus::{Command, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::{DeviceType, SomeTransport, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::irq::Trigger;
use crate::pci::{self, PortCam};

/// microvm's virtio-mmio window: 24 slots of 512 bytes.
pub const MMIO_BASE: usize = 0xfeb0_0000;
pub const MMIO_SLOT_SIZE: usize = 0x200;
pub const MMIO_SLOTS: usize = 24;
const MMIO_MAGIC: u32 = 0x7472_6976;

/// DMA and MMIO for an identity-mapped kernel: physical == virtual.
pub struct KernelHal;

// SAFETY: allocations are page-aligned, zeroed, owned until dealloc, and
// identity-mapped, so the physical address the device sees is the pointer.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Ok(layout) = Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE) else {
            return (0, NonNull::dangling());
        };
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        match NonNull::new(ptr) {
            Some(p) => (ptr as u64, p),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let layout = Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE)
            .expect("layout was valid at allocation");
        // SAFETY: the caller passes back what dma_alloc returned.
        unsafe { dealloc(vaddr.as_ptr(), layout) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // UEFI firmware puts 64-bit BARs above what the boot tables map.
        if let Err(e) = crate::paging::map_mmio(paddr, size as u64) {
            panic!("virtio BAR at {paddr:#x} ({size} bytes) cannot be mapped: {e:?}");
        }
        NonNull::new(paddr as *mut u8).expect("BAR at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Where a virtio device sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    Pci(DeviceFunction),
    Mmio { base: usize, slot: usize },
}

impl Location {
    pub fn transport_name(&self) -> &'static str {
        match self {
            Location::Pci(_) => "pci",
            Location::Mmio { .. } => "mmio",
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Pci(df) => write!(f, "{df}"),
            Location::Mmio { base, slot } => write!(f, "{base:#x}/{slot}"),
        }
    }
}

/// A discovered device, ready for its driver.
pub struct Found {
    pub transport: SomeTransport<'static>,
    pub kind: DeviceType,
    pub location: Location,
    /// Interrupt line and how it signals; `None` means poll it.
    pub irq: Option<(u32, Trigger)>,
}

/// A device we saw but could not attach, for the `devices` listing.
pub struct Skipped {
    pub location: Location,
    pub reason: &'static str,
}

/// Find every virtio device, in the order the QEMU command line gave them.
pub fn probe() -> (Vec<Found>, Vec<Skipped>) {
    if pci::present() {
        probe_pci()
    } else {
        probe_mmio()
    }
}

fn probe_pci() -> (Vec<Found>, Vec<Skipped>) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let mut root = PciRoot::new(PortCam);
    let list: Vec<_> = root.enumerate_bus(0).collect();
    for (df, info) in list {
        let Some(kind) = virtio_device_type(&info) else {
            continue;
        };
        let (_, command) = root.get_status_command(df);
        let command =
            (command | Command::MEMORY_SPACE | Command::BUS_MASTER) & !Command::INTERRUPT_DISABLE;
        root.set_command(df, command);
        let pin = (pci::read_config(df, 0x3c) >> 8) as u8;
        let irq = pci::q35_intx_gsi(df.device, pin).map(|g| (g, Trigger::LevelLow));
        match PciTransport::new::<KernelHal, _>(&mut root, df) {
            Ok(t) => found.push(Found {
                transport: t.into(),
                kind,
                location: Location::Pci(df),
                irq,
            }),
            Err(_) => skipped.push(Skipped {
                location: Location::Pci(df),
                reason: "not a modern virtio-pci device",
            }),
        }
    }
    (found, skipped)
}

fn probe_mmio() -> (Vec<Found>, Vec<Skipped>) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let gsi_base = if crate::irq::has_second_ioapic() {
        24
    } else {
        5
    };
    // QEMU fills the slots from the top down: the first -device is slot 23.
    for slot in (0..MMIO_SLOTS).rev() {
        let base = MMIO_BASE + slot * MMIO_SLOT_SIZE;
        // SAFETY: the virtio-mmio window is identity-mapped MMIO; magic and
        // device id are read-only registers.
        let (magic, device_id) = unsafe {
            (
                core::ptr::read_volatile(base as *const u32),
                core::ptr::read_volatile((base + 8) as *const u32),
            )
        };
        if magic != MMIO_MAGIC || device_id == 0 {
            continue;
        }
        let location = Location::Mmio { base, slot };
        let header = NonNull::new(base as *mut VirtIOHeader).expect("non-null MMIO base");
        // SAFETY: `base` is a virtio-mmio slot owned by this driver for the
        // life of the kernel; nothing else maps it.
        match unsafe { MmioTransport::new(header, MMIO_SLOT_SIZE) } {
            Ok(t) => {
                let kind = t.device_type();
                let gsi = gsi_base + slot as u32;
                found.push(Found {
                    transport: t.into(),
                    kind,
                    location,
                    irq: Some((gsi, Trigger::LevelHigh)),
                });
            }
            Err(_) => skipped.push(Skipped {
                location,
                reason: "unsupported virtio-mmio header",
            }),
        }
    }
    (found, skipped)
}

pub fn kind_name(kind: DeviceType) -> &'static str {
    match kind {
        DeviceType::Block => "virtio-blk",
        DeviceType::Network => "virtio-net",
        DeviceType::Console => "virtio-console",
        DeviceType::EntropySource => "virtio-rng",
        DeviceType::_9P => "virtio-9p",
        DeviceType::Socket => "virtio-vsock",
        _ => "virtio-other",
    }
}
