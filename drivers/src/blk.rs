//! virtio-blk as a `scoutvm_fs::storage::dev::BlockDev`: byte offsets, 4 KiB
//! aligned, split into requests of at most [`MAX_REQUEST_BYTES`]. One
//! request is in flight at a time; the caller waits in `hlt` for the
//! device interrupt (with a short timer as a backstop), so a blocked
//! request costs no host CPU. Asserts that every completion matches the
//! request it waits for.

use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};

use scoutvm_fs::counter;
use scoutvm_fs::runtime::trace::Tracepoint;
use scoutvm_fs::storage::dev::{check_request, BlockDev, IoError};
use spin::Mutex;
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::SomeTransport;

use crate::irq::{self, Trigger};
use crate::virtio::{Found, KernelHal, Location};

/// Largest single virtio-blk request we issue.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Backstop for a lost interrupt: re-check the used ring this often.
const WAIT_SLICE_NS: u64 = 2_000_000;
/// A device that has not answered in this long is broken.
const REQUEST_TIMEOUT_NS: u64 = 60_000_000_000;

static BLK_IO: Tracepoint = Tracepoint::new("blk_io", &["dev", "write", "off", "len"]);
static BLK_ERR: Tracepoint = Tracepoint::new("blk_error", &["dev", "write", "off", "len"]);

type Inner = VirtIOBlk<KernelHal, SomeTransport<'static>>;

/// One virtio-blk disk.
pub struct VirtioBlk {
    dev: Mutex<Inner>,
    index: u32,
    size_bytes: u64,
    serial: String,
    readonly: bool,
    location: Location,
    irq: Option<(u32, Trigger)>,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
}

#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
}

impl VirtioBlk {
    /// Attach the driver; `index` names it in traces (vda = 0).
    pub fn new(found: Found, index: u32) -> Result<Self, virtio_drivers::Error> {
        let mut dev = Inner::new(found.transport)?;
        let mut id = [0u8; 20];
        let serial = match dev.device_id(&mut id) {
            Ok(n) => String::from_utf8_lossy(&id[..n]).into_owned(),
            Err(_) => String::new(),
        };
        let size_bytes = dev.capacity() * SECTOR_SIZE as u64;
        let readonly = dev.readonly();
        dev.enable_interrupts();
        dev.ack_interrupt();
        if let Some((gsi, trigger)) = found.irq {
            irq::route(gsi, trigger);
        }
        Ok(VirtioBlk {
            dev: Mutex::new(dev),
            index,
            size_bytes,
            serial,
            readonly,
            location: found.location,
            irq: found.irq,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        })
    }

    /// The ID string (`-drive ...,serial=` in QEMU).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    pub fn location(&self) -> Location {
        self.location
    }

    pub fn gsi(&self) -> Option<u32> {
        self.irq.map(|i| i.0)
    }

    /// Acknowledge a device interrupt the main loop saw (a completion
    /// whose interrupt arrived after its waiter returned).
    pub fn service_interrupt(&self) {
        if let Some(mut dev) = self.dev.try_lock() {
            dev.ack_interrupt();
        }
    }

    fn wait_for(&self, dev: &mut Inner, token: u16) {
        let start = crate::clock::monotonic_ns();
        loop {
            match dev.peek_used() {
                Some(t) if t == token => break,
                Some(t) => panic!("virtio-blk: completion {t} while waiting for {token}"),
                None => {}
            }
            assert!(
                crate::clock::monotonic_ns() - start < REQUEST_TIMEOUT_NS,
                "virtio-blk vd{}: device stopped answering",
                (b'a' + self.index as u8) as char
            );
            match self.irq {
                Some((gsi, _)) => {
                    irq::halt_until(1 << gsi, Some(WAIT_SLICE_NS));
                    irq::clear_pending(1 << gsi);
                    dev.ack_interrupt();
                    irq::unmask(gsi);
                }
                None => core::hint::spin_loop(),
            }
        }
    }

    fn after_request(&self, dev: &mut Inner) {
        dev.ack_interrupt();
        if let Some((gsi, _)) = self.irq {
            irq::clear_pending(1 << gsi);
            irq::unmask(gsi);
        }
    }

    fn one_request(&self, op: Op, off: u64, buf: *mut u8, len: usize) -> Result<(), IoError> {
        debug_assert!(len > 0 && len <= MAX_REQUEST_BYTES && len.is_multiple_of(SECTOR_SIZE));
        let sector = (off / SECTOR_SIZE as u64) as usize;
        let mut req = BlkReq::default();
        let mut resp = BlkResp::default();
        let mut dev = self.dev.lock();
        // SAFETY: `buf..buf+len` is a live slice borrowed by our caller for
        // this whole call; req/resp live on this frame; we do not return
        // before the device has handed the request back (wait_for), so the
        // device never touches them after they are gone.
        let result = unsafe {
            match op {
                Op::Read => {
                    let data = core::slice::from_raw_parts_mut(buf, len);
                    let token = dev
                        .read_blocks_nb(sector, &mut req, data, &mut resp)
                        .map_err(|_| IoError::Device)?;
                    self.wait_for(&mut dev, token);
                    dev.complete_read_blocks(token, &req, data, &mut resp)
                }
                Op::Write => {
                    let data = core::slice::from_raw_parts(buf as *const u8, len);
                    let token = dev
                        .write_blocks_nb(sector, &mut req, data, &mut resp)
                        .map_err(|_| IoError::Device)?;
                    self.wait_for(&mut dev, token);
                    dev.complete_write_blocks(token, &req, data, &mut resp)
                }
            }
        };
        self.after_request(&mut dev);
        result.map_err(|_| IoError::Device)
    }

    fn io(&self, op: Op, off: u64, buf: *mut u8, len: usize) -> Result<(), IoError> {
        check_request(off, len, self.size_bytes)?;
        let write = matches!(op, Op::Write) as u64;
        BLK_IO.emit(&[self.index as u64, write, off, len as u64]);
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(MAX_REQUEST_BYTES);
            // SAFETY: done + n <= len, inside the caller's buffer.
            let chunk = unsafe { buf.add(done) };
            if let Err(e) = self.one_request(op, off + done as u64, chunk, n) {
                BLK_ERR.emit(&[self.index as u64, write, off + done as u64, n as u64]);
                counter!("blk.errors").inc();
                return Err(e);
            }
            done += n;
        }
        Ok(())
    }
}

impl BlockDev for VirtioBlk {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.io(Op::Read, off, buf.as_mut_ptr(), buf.len())?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        counter!("blk.read_requests").inc();
        counter!("blk.read_bytes").add(buf.len() as u64);
        Ok(())
    }

    fn write(&self, off: u64, buf: &[u8]) -> Result<(), IoError> {
        if self.readonly {
            return Err(IoError::Device);
        }
        // The device only reads this buffer; the pointer is cast for the
        // shared request path, which never writes through it for writes.
        self.io(Op::Write, off, buf.as_ptr() as *mut u8, buf.len())?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        counter!("blk.write_requests").inc();
        counter!("blk.write_bytes").add(buf.len() as u64);
        Ok(())
    }

    fn flush(&self) -> Result<(), IoError> {
        let mut dev = self.dev.lock();
        let r = dev.flush().map_err(|_| IoError::Device);
        self.after_request(&mut dev);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        counter!("blk.flushes").inc();
        r
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
}
