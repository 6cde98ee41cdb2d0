//! The guest's RAM as the frontend shares it (SET_MEM_TABLE: one memfd per
//! region), mapped into this process, plus the frontend-virtual-address to
//! guest-physical translation the vring addresses need. Every access is
//! bounds-checked by `vm-memory` against the regions: a bad address from the
//! guest is an error, never a stray access.

use std::fs::File;
use std::sync::atomic::Ordering;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend as _, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};

/// At most this many regions (QEMU's vhost-user limit is 8; 509 with
/// memory slots, which we do not offer).
pub const MAX_REGIONS: usize = 32;

/// One region as the frontend describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionDesc {
    pub guest_phys: u64,
    pub size: u64,
    /// Where the frontend has it mapped (vring addresses are in this space).
    pub user_addr: u64,
    /// Offset of the region in its file.
    pub mmap_offset: u64,
}

#[derive(Debug)]
pub enum MemError {
    TooManyRegions(usize),
    BadRegion(RegionDesc, String),
    /// A guest-physical range outside every region.
    OutOfRange {
        addr: u64,
        len: u64,
    },
    /// A frontend virtual address outside every region.
    BadUserAddr(u64),
    Misaligned(u64),
}

impl std::fmt::Display for MemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemError::TooManyRegions(n) => write!(f, "{n} memory regions (at most {MAX_REGIONS})"),
            MemError::BadRegion(r, e) => write!(f, "memory region {r:x?}: {e}"),
            MemError::OutOfRange { addr, len } => {
                write!(f, "guest range {addr:#x}+{len:#x} outside guest memory")
            }
            MemError::BadUserAddr(a) => write!(f, "frontend address {a:#x} outside guest memory"),
            MemError::Misaligned(a) => write!(f, "misaligned ring field at {a:#x}"),
        }
    }
}

/// The mapped guest memory.
pub struct GuestMem {
    mem: GuestMemoryMmap,
    regions: Vec<RegionDesc>,
}

impl GuestMem {
    /// Maps the frontend's regions (each `files[i]` backs `regions[i]`).
    pub fn from_files(regions: &[RegionDesc], files: Vec<File>) -> Result<Self, MemError> {
        if regions.len() > MAX_REGIONS {
            return Err(MemError::TooManyRegions(regions.len()));
        }
        if files.len() != regions.len() {
            return Err(MemError::BadRegion(
                regions.first().copied().unwrap_or(RegionDesc {
                    guest_phys: 0,
                    size: 0,
                    user_addr: 0,
                    mmap_offset: 0,
                }),
                format!("{} regions but {} fds", regions.len(), files.len()),
            ));
        }
        let mut mapped = Vec::with_capacity(regions.len());
        for (r, file) in regions.iter().zip(files) {
            let size = Self::check_desc(r)?;
            let map = MmapRegion::from_file(FileOffset::new(file, r.mmap_offset), size)
                .map_err(|e| MemError::BadRegion(*r, e.to_string()))?;
            let region = GuestRegionMmap::new(map, GuestAddress(r.guest_phys))
                .ok_or_else(|| MemError::BadRegion(*r, "address overflow".into()))?;
            mapped.push(region);
        }
        Self::build(mapped, regions.to_vec())
    }

    /// Anonymous memory at the given regions (tests; `user_addr` as given).
    pub fn anonymous(regions: &[RegionDesc]) -> Result<Self, MemError> {
        if regions.len() > MAX_REGIONS {
            return Err(MemError::TooManyRegions(regions.len()));
        }
        let mut mapped = Vec::with_capacity(regions.len());
        for r in regions {
            let size = Self::check_desc(r)?;
            let region = GuestRegionMmap::from_range(GuestAddress(r.guest_phys), size, None)
                .map_err(|e| MemError::BadRegion(*r, e.to_string()))?;
            mapped.push(region);
        }
        Self::build(mapped, regions.to_vec())
    }

    fn check_desc(r: &RegionDesc) -> Result<usize, MemError> {
        let bad = |why: &str| MemError::BadRegion(*r, why.to_string());
        if r.size == 0 {
            return Err(bad("empty"));
        }
        r.guest_phys
            .checked_add(r.size)
            .ok_or_else(|| bad("guest address overflow"))?;
        r.user_addr
            .checked_add(r.size)
            .ok_or_else(|| bad("frontend address overflow"))?;
        usize::try_from(r.size).map_err(|_| bad("too large"))
    }

    fn build(mapped: Vec<GuestRegionMmap>, regions: Vec<RegionDesc>) -> Result<Self, MemError> {
        let first = regions.first().copied();
        let mem = GuestMemoryMmap::from_regions(mapped).map_err(|e| {
            MemError::BadRegion(
                first.unwrap_or(RegionDesc {
                    guest_phys: 0,
                    size: 0,
                    user_addr: 0,
                    mmap_offset: 0,
                }),
                format!("overlapping or unsorted regions: {e}"),
            )
        })?;
        Ok(GuestMem { mem, regions })
    }

    /// The guest-physical address of a frontend virtual address.
    pub fn user_to_guest(&self, user_addr: u64) -> Result<u64, MemError> {
        self.regions
            .iter()
            .find(|r| user_addr >= r.user_addr && user_addr - r.user_addr < r.size)
            .map(|r| r.guest_phys + (user_addr - r.user_addr))
            .ok_or(MemError::BadUserAddr(user_addr))
    }

    /// Is `[addr, addr + len)` wholly inside guest memory (possibly across
    /// adjacent regions)?
    pub fn check(&self, addr: u64, len: u64) -> Result<(), MemError> {
        let bad = MemError::OutOfRange { addr, len };
        if len == 0 {
            // a zero-length buffer touches nothing, but its address must
            // still be a real one
            return self
                .mem
                .address_in_range(GuestAddress(addr))
                .then_some(())
                .ok_or(bad);
        }
        let n = usize::try_from(len).map_err(|_| MemError::OutOfRange { addr, len })?;
        if addr.checked_add(len).is_none() || !self.mem.check_range(GuestAddress(addr), n) {
            return Err(bad);
        }
        Ok(())
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.check(addr, buf.len() as u64)?;
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| MemError::OutOfRange {
                addr,
                len: buf.len() as u64,
            })
    }

    pub fn write(&self, addr: u64, buf: &[u8]) -> Result<(), MemError> {
        self.check(addr, buf.len() as u64)?;
        self.mem
            .write_slice(buf, GuestAddress(addr))
            .map_err(|_| MemError::OutOfRange {
                addr,
                len: buf.len() as u64,
            })
    }

    pub fn read_u16(&self, addr: u64) -> Result<u16, MemError> {
        let mut b = [0u8; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn read_u32(&self, addr: u64) -> Result<u32, MemError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn read_u64(&self, addr: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// An atomic load of a ring index (acquire: what the driver wrote
    /// before publishing the index is visible after).
    pub fn load_u16_acquire(&self, addr: u64) -> Result<u16, MemError> {
        if !addr.is_multiple_of(2) {
            return Err(MemError::Misaligned(addr));
        }
        self.check(addr, 2)?;
        self.mem
            .load::<u16>(GuestAddress(addr), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|_| MemError::OutOfRange { addr, len: 2 })
    }

    /// An atomic store of a ring index (release: the used elements written
    /// before are visible to the driver once it sees the index).
    pub fn store_u16_release(&self, addr: u64, v: u16) -> Result<(), MemError> {
        if !addr.is_multiple_of(2) {
            return Err(MemError::Misaligned(addr));
        }
        self.check(addr, 2)?;
        self.mem
            .store::<u16>(v.to_le(), GuestAddress(addr), Ordering::Release)
            .map_err(|_| MemError::OutOfRange { addr, len: 2 })
    }
}
