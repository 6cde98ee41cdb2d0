//! The block device seam: the only way the filesystem reaches a disk.
//!
//! Implemented by the virtio-blk driver in the appliance, by a file-backed
//! device in the host tools, and by [`MemDev`] (plus the fault-injecting
//! devices of the block layer) in tests. Offsets and lengths are in bytes
//! and must be multiples of [`DEV_ALIGN`]; every scoutfs block (4 KiB super
//! and quorum blocks, 64 KiB metadata blocks, 4 KiB data blocks) satisfies
//! that.
//!
//! Writes may sit in a volatile cache until [`BlockDev::flush`] returns;
//! callers that promise durability must flush (before and after the super).

use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

/// Alignment of every offset and length handed to a [`BlockDev`].
pub const DEV_ALIGN: u64 = 4096;

/// Why a device request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// The request reaches past the end of the device.
    OutOfRange,
    /// Offset or length is not a multiple of [`DEV_ALIGN`].
    Misaligned,
    /// The device reported an error for this request.
    Device,
    /// The device is gone (fenced, powered off, or a test cut its power).
    Gone,
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoError::OutOfRange => "request beyond end of device",
            IoError::Misaligned => "misaligned request",
            IoError::Device => "device error",
            IoError::Gone => "device gone",
        })
    }
}

/// A block device. Methods take `&self` so one device can be shared by the
/// client and server halves of a node; implementations use interior
/// mutability.
pub trait BlockDev {
    /// Fill `buf` from byte offset `off`.
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError>;
    /// Write `buf` at byte offset `off`. Not durable until [`Self::flush`].
    fn write(&self, off: u64, buf: &[u8]) -> Result<(), IoError>;
    /// Make every completed write durable.
    fn flush(&self) -> Result<(), IoError>;
    /// Size of the device in bytes.
    fn size_bytes(&self) -> u64;
}

/// Check alignment and bounds of a request; shared by implementations.
pub fn check_request(off: u64, len: usize, size: u64) -> Result<(), IoError> {
    let len = len as u64;
    if !off.is_multiple_of(DEV_ALIGN) || !len.is_multiple_of(DEV_ALIGN) {
        return Err(IoError::Misaligned);
    }
    match off.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(IoError::OutOfRange),
    }
}

impl<T: BlockDev + ?Sized> BlockDev for &T {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError> {
        (**self).read(off, buf)
    }
    fn write(&self, off: u64, buf: &[u8]) -> Result<(), IoError> {
        (**self).write(off, buf)
    }
    fn flush(&self) -> Result<(), IoError> {
        (**self).flush()
    }
    fn size_bytes(&self) -> u64 {
        (**self).size_bytes()
    }
}

impl<T: BlockDev + ?Sized> BlockDev for alloc::rc::Rc<T> {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError> {
        (**self).read(off, buf)
    }
    fn write(&self, off: u64, buf: &[u8]) -> Result<(), IoError> {
        (**self).write(off, buf)
    }
    fn flush(&self) -> Result<(), IoError> {
        (**self).flush()
    }
    fn size_bytes(&self) -> u64 {
        (**self).size_bytes()
    }
}

/// A RAM disk. Sparse: storage is kept per 4 KiB page and unwritten pages
/// read as zeros, so a "64 GiB" test volume costs only what is written.
pub struct MemDev {
    size: u64,
    pages: RefCell<alloc::collections::BTreeMap<u64, Vec<u8>>>,
}

impl MemDev {
    /// A zero-filled device of `size` bytes (rounded down to [`DEV_ALIGN`]).
    pub fn new(size: u64) -> Self {
        MemDev {
            size: size - size % DEV_ALIGN,
            pages: RefCell::new(Default::default()),
        }
    }

    /// Number of 4 KiB pages that hold data (for memory accounting in tests).
    pub fn pages_in_use(&self) -> usize {
        self.pages.borrow().len()
    }
}

impl BlockDev for MemDev {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check_request(off, buf.len(), self.size)?;
        let pages = self.pages.borrow();
        for (i, chunk) in buf.chunks_mut(DEV_ALIGN as usize).enumerate() {
            let page = off / DEV_ALIGN + i as u64;
            match pages.get(&page) {
                Some(data) => chunk.copy_from_slice(data),
                None => chunk.fill(0),
            }
        }
        Ok(())
    }

    fn write(&self, off: u64, buf: &[u8]) -> Result<(), IoError> {
        check_request(off, buf.len(), self.size)?;
        let mut pages = self.pages.borrow_mut();
        for (i, chunk) in buf.chunks(DEV_ALIGN as usize).enumerate() {
            let page = off / DEV_ALIGN + i as u64;
            if chunk.iter().all(|&b| b == 0) {
                pages.remove(&page);
            } else {
                pages
                    .entry(page)
                    .or_insert_with(|| vec![0; DEV_ALIGN as usize])
                    .copy_from_slice(chunk);
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memdev_round_trip_and_bounds() {
        let dev = MemDev::new(1 << 20);
        let data = vec![0xabu8; 8192];
        dev.write(4096, &data).unwrap();
        let mut back = vec![0u8; 12288];
        dev.read(0, &mut back).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert!(back[4096..].iter().all(|&b| b == 0xab));
        assert_eq!(dev.pages_in_use(), 2);
        assert_eq!(dev.read(1, &mut back), Err(IoError::Misaligned));
        assert_eq!(dev.read(1 << 20, &mut back), Err(IoError::OutOfRange));
        assert_eq!(dev.write(u64::MAX - 4095, &data), Err(IoError::OutOfRange));
        assert_eq!(dev.write((1 << 20) - 4096, &data), Err(IoError::OutOfRange));
    }
}
