//! Fault-injecting block devices for crash and corruption tests.
//!
//! [`FaultDev`] is a sparse RAM disk with a volatile write cache: writes
//! are readable at once but only durable after `flush`. It can cut power
//! after the Nth write (every later request fails with `IoError::Gone`),
//! and [`FaultDev::power_loss_image`] builds the disk a reboot would see:
//! the durable pages plus a chosen subset of the unflushed writes, one of
//! which may be torn (only a prefix of its 4 KiB pages reached the media).
//! It can also record a trace of writes and flushes so a test can rebuild
//! the disk at every crash point of one run ([`CrashImages`]).

use crate::runtime::env::{Entropy, SeededEntropy};
use crate::storage::dev::{check_request, BlockDev, IoError, DEV_ALIGN};
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

const PAGE: usize = DEV_ALIGN as usize;

/// 4 KiB pages by page number; shared copy-on-write between snapshots.
pub type PageMap = BTreeMap<u64, Rc<[u8]>>;

/// One device request, as recorded in a trace.
#[derive(Clone, Debug)]
pub enum TraceOp {
    Write { off: u64, data: Rc<[u8]> },
    Flush,
}

/// What happens to writes that were not flushed when power is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossPolicy {
    /// Every unflushed write reached the media.
    KeepAll,
    /// No unflushed write reached the media.
    LoseAll,
    /// Each unflushed write independently reached the media or not, and
    /// (if `tear`) one multi-page write that did may be torn.
    Random { seed: u64, tear: bool },
}

pub struct FaultDev {
    size: u64,
    durable: RefCell<Rc<PageMap>>,
    volatile: RefCell<PageMap>,
    pending: RefCell<Vec<(u64, Rc<[u8]>)>>,
    writes: Cell<u64>,
    crash_after: Cell<Option<u64>>,
    dead: Cell<bool>,
    trace: RefCell<Option<Vec<TraceOp>>>,
    shared: RefCell<Option<(usize, SharedTrace)>>,
}

/// One trace recorded by several devices in the order their requests
/// happened: `(device number, op)`.
pub type SharedTrace = Rc<RefCell<Vec<(usize, TraceOp)>>>;

/// Put `data` at byte `off` into `pages` (all-zero pages are dropped).
pub fn apply(pages: &mut PageMap, off: u64, data: &[u8]) {
    for (i, chunk) in data.chunks(PAGE).enumerate() {
        let p = off / DEV_ALIGN + i as u64;
        if chunk.iter().all(|&b| b == 0) {
            pages.remove(&p);
        } else {
            pages.insert(p, Rc::from(chunk));
        }
    }
}

impl FaultDev {
    pub fn new(size: u64) -> Self {
        Self::from_pages(size, Rc::new(PageMap::new()))
    }

    /// A device whose durable contents are `pages`.
    pub fn from_pages(size: u64, pages: Rc<PageMap>) -> Self {
        FaultDev {
            size: size - size % DEV_ALIGN,
            durable: RefCell::new(pages),
            volatile: RefCell::new(PageMap::new()),
            pending: RefCell::new(Vec::new()),
            writes: Cell::new(0),
            crash_after: Cell::new(None),
            dead: Cell::new(false),
            trace: RefCell::new(None),
            shared: RefCell::new(None),
        }
    }

    /// Record writes and flushes into `trace`, tagged as device `dev`
    /// (crash points across a volume's meta and data devices).
    pub fn start_shared_trace(&self, dev: usize, trace: SharedTrace) {
        *self.shared.borrow_mut() = Some((dev, trace));
    }

    /// Stop recording into a shared trace.
    pub fn stop_shared_trace(&self) {
        *self.shared.borrow_mut() = None;
    }

    /// Cut power once `n` more writes have completed.
    pub fn crash_after_writes(&self, n: u64) {
        self.crash_after.set(Some(self.writes.get() + n));
    }

    /// Cut power now.
    pub fn cut_power(&self) {
        self.dead.set(true);
    }

    pub fn is_dead(&self) -> bool {
        self.dead.get()
    }

    /// Writes completed so far.
    pub fn writes(&self) -> u64 {
        self.writes.get()
    }

    /// Start recording writes and flushes.
    pub fn start_trace(&self) {
        *self.trace.borrow_mut() = Some(Vec::new());
    }

    pub fn take_trace(&self) -> Vec<TraceOp> {
        self.trace.borrow_mut().take().unwrap_or_default()
    }

    /// The durable pages (a cheap shared snapshot).
    pub fn durable_pages(&self) -> Rc<PageMap> {
        self.durable.borrow().clone()
    }

    /// Flip bits of the byte at `off`, in place and durably (corruption
    /// tests).
    pub fn corrupt_byte(&self, off: u64, xor: u8) {
        let mut pages = self.durable.borrow_mut();
        let map = Rc::make_mut(&mut pages);
        let p = off / DEV_ALIGN;
        let mut page = map
            .get(&p)
            .map(|d| d.to_vec())
            .unwrap_or_else(|| vec![0; PAGE]);
        page[(off % DEV_ALIGN) as usize] ^= xor;
        map.insert(p, Rc::from(page));
        self.volatile.borrow_mut().remove(&p);
    }

    /// The disk as a reboot after a power cut now would find it.
    pub fn power_loss_image(&self, policy: LossPolicy) -> FaultDev {
        let pending = self.pending.borrow();
        let img = image_with(&self.durable.borrow(), &pending, policy);
        FaultDev::from_pages(self.size, img)
    }
}

/// Durable pages plus the unflushed writes `policy` lets through.
fn image_with(
    durable: &Rc<PageMap>,
    pending: &[(u64, Rc<[u8]>)],
    policy: LossPolicy,
) -> Rc<PageMap> {
    power_cut_image(durable, pending.iter().map(|(o, d)| (*o, d)), policy).0
}

/// What a power cut did to one unflushed write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFate {
    /// Every page reached the media.
    Kept,
    /// No page reached the media.
    Lost,
    /// Only the first `pages` 4 KiB pages reached the media.
    Torn { pages: usize },
}

/// Durable pages plus the unflushed writes (`(offset, data)`, oldest
/// first) that `policy` lets through, and what happened to each write.
/// Shared by [`FaultDev`] and the simulator's shared disks.
pub fn power_cut_image<'a>(
    durable: &Rc<PageMap>,
    pending: impl ExactSizeIterator<Item = (u64, &'a Rc<[u8]>)> + Clone,
    policy: LossPolicy,
) -> (Rc<PageMap>, Vec<WriteFate>) {
    let mut img = durable.clone();
    let n = pending.len();
    if n == 0 || policy == LossPolicy::LoseAll {
        return (img, vec![WriteFate::Lost; n]);
    }
    let map = Rc::make_mut(&mut img);
    let mut fates = vec![WriteFate::Kept; n];
    match policy {
        LossPolicy::KeepAll => {
            for (off, data) in pending {
                apply(map, off, data);
            }
        }
        LossPolicy::LoseAll => {}
        LossPolicy::Random { seed, tear } => {
            let rng = SeededEntropy::new(seed);
            let kept: Vec<bool> = (0..n).map(|_| rng.next_u64() & 1 == 1).collect();
            let multi: Vec<usize> = pending
                .clone()
                .enumerate()
                .filter(|(i, (_, d))| kept[*i] && d.len() > PAGE)
                .map(|(i, _)| i)
                .collect();
            let torn = if tear && !multi.is_empty() {
                Some(multi[(rng.next_u64() % multi.len() as u64) as usize])
            } else {
                None
            };
            for (i, (off, data)) in pending.enumerate() {
                if !kept[i] {
                    fates[i] = WriteFate::Lost;
                    continue;
                }
                if Some(i) == torn {
                    let pages = data.len() / PAGE;
                    let keep = 1 + (rng.next_u64() % (pages as u64 - 1)) as usize;
                    apply(map, off, &data[..keep * PAGE]);
                    fates[i] = WriteFate::Torn { pages: keep };
                } else {
                    apply(map, off, data);
                }
            }
        }
    }
    (img, fates)
}

impl BlockDev for FaultDev {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError> {
        if self.dead.get() {
            return Err(IoError::Gone);
        }
        check_request(off, buf.len(), self.size)?;
        let vol = self.volatile.borrow();
        let dur = self.durable.borrow();
        for (i, chunk) in buf.chunks_mut(PAGE).enumerate() {
            let p = off / DEV_ALIGN + i as u64;
            match vol.get(&p).or_else(|| dur.get(&p)) {
                Some(d) => chunk.copy_from_slice(d),
                None => chunk.fill(0),
            }
        }
        Ok(())
    }

    fn write(&self, off: u64, buf: &[u8]) -> Result<(), IoError> {
        if self.dead.get() {
            return Err(IoError::Gone);
        }
        check_request(off, buf.len(), self.size)?;
        let data: Rc<[u8]> = Rc::from(buf);
        {
            let mut vol = self.volatile.borrow_mut();
            for (i, chunk) in buf.chunks(PAGE).enumerate() {
                vol.insert(off / DEV_ALIGN + i as u64, Rc::from(chunk));
            }
        }
        self.pending.borrow_mut().push((off, data.clone()));
        if let Some((dev, t)) = self.shared.borrow().as_ref() {
            t.borrow_mut().push((
                *dev,
                TraceOp::Write {
                    off,
                    data: data.clone(),
                },
            ));
        }
        if let Some(t) = self.trace.borrow_mut().as_mut() {
            t.push(TraceOp::Write { off, data });
        }
        self.writes.set(self.writes.get() + 1);
        if self.crash_after.get() == Some(self.writes.get()) {
            self.dead.set(true);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), IoError> {
        if self.dead.get() {
            return Err(IoError::Gone);
        }
        let pending = core::mem::take(&mut *self.pending.borrow_mut());
        if !pending.is_empty() {
            let mut dur = self.durable.borrow_mut();
            let map = Rc::make_mut(&mut dur);
            for (off, data) in &pending {
                apply(map, *off, data);
            }
        }
        self.volatile.borrow_mut().clear();
        if let Some((dev, t)) = self.shared.borrow().as_ref() {
            t.borrow_mut().push((*dev, TraceOp::Flush));
        }
        if let Some(t) = self.trace.borrow_mut().as_mut() {
            t.push(TraceOp::Flush);
        }
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.size
    }
}

/// Every crash point of a recorded run: after write `n` (1-based) the
/// disk holds `base`, every write flushed before it, and the unflushed
/// writes up to and including `n` filtered by a policy.
pub struct CrashImages {
    size: u64,
    trace: Vec<TraceOp>,
    pos: usize,
    durable: Rc<PageMap>,
    pending: Vec<(u64, Rc<[u8]>)>,
    writes: u64,
}

impl CrashImages {
    pub fn new(size: u64, base: Rc<PageMap>, trace: Vec<TraceOp>) -> Self {
        CrashImages {
            size,
            trace,
            pos: 0,
            durable: base,
            pending: Vec::new(),
            writes: 0,
        }
    }

    /// Total writes in the trace.
    pub fn total_writes(&self) -> u64 {
        self.trace
            .iter()
            .filter(|o| matches!(o, TraceOp::Write { .. }))
            .count() as u64
    }

    /// Advance to the next write; returns its 1-based index and the disk
    /// after a power cut right after it, or None at the end of the trace.
    pub fn next_image(&mut self, policy: LossPolicy) -> Option<(u64, FaultDev)> {
        let n = self.advance()?;
        Some((n, self.image(policy)))
    }

    /// Advance past the next write (applying flushes on the way); returns
    /// its 1-based index, or None at the end of the trace.
    pub fn advance(&mut self) -> Option<u64> {
        loop {
            let op = self.trace.get(self.pos)?.clone();
            self.pos += 1;
            match op {
                TraceOp::Flush => {
                    let map = Rc::make_mut(&mut self.durable);
                    for (off, data) in self.pending.drain(..) {
                        apply(map, off, &data);
                    }
                }
                TraceOp::Write { off, data } => {
                    self.pending.push((off, data));
                    self.writes += 1;
                    return Some(self.writes);
                }
            }
        }
    }

    /// The disk after a power cut right after the current write.
    pub fn image(&self, policy: LossPolicy) -> FaultDev {
        FaultDev::from_pages(self.size, image_with(&self.durable, &self.pending, policy))
    }

    /// The (offset, length) of the current write.
    pub fn current_write(&self) -> Option<(u64, usize)> {
        self.pending.last().map(|(o, d)| (*o, d.len()))
    }
}

/// [`CrashImages`] for several devices sharing one power supply: a
/// crash point is a write of any device in the shared trace; each device
/// keeps what it flushed before and loses unflushed writes by the policy.
pub struct MultiCrashImages {
    sizes: Vec<u64>,
    trace: Vec<(usize, TraceOp)>,
    pos: usize,
    durable: Vec<Rc<PageMap>>,
    pending: Vec<Vec<(u64, Rc<[u8]>)>>,
    writes: u64,
}

impl MultiCrashImages {
    /// `bases[i]`: device `i`'s durable pages when the trace started.
    pub fn new(sizes: Vec<u64>, bases: Vec<Rc<PageMap>>, trace: Vec<(usize, TraceOp)>) -> Self {
        assert_eq!(sizes.len(), bases.len());
        let n = sizes.len();
        assert!(
            trace.iter().all(|(d, _)| *d < n),
            "trace names an unknown device"
        );
        MultiCrashImages {
            sizes,
            trace,
            pos: 0,
            durable: bases,
            pending: alloc::vec![Vec::new(); n],
            writes: 0,
        }
    }

    /// Total writes in the trace.
    pub fn total_writes(&self) -> u64 {
        self.trace
            .iter()
            .filter(|(_, o)| matches!(o, TraceOp::Write { .. }))
            .count() as u64
    }

    /// Advance past the next write of any device (applying flushes on the
    /// way); returns its 1-based index and device, or None at the end.
    pub fn advance(&mut self) -> Option<(u64, usize)> {
        loop {
            let (dev, op) = self.trace.get(self.pos)?.clone();
            self.pos += 1;
            match op {
                TraceOp::Flush => {
                    let map = Rc::make_mut(&mut self.durable[dev]);
                    for (off, data) in self.pending[dev].drain(..) {
                        apply(map, off, &data);
                    }
                }
                TraceOp::Write { off, data } => {
                    self.pending[dev].push((off, data));
                    self.writes += 1;
                    return Some((self.writes, dev));
                }
            }
        }
    }

    /// Every device after a power cut right after the current write
    /// (random policies draw independently per device).
    pub fn images(&self, policy: LossPolicy) -> Vec<FaultDev> {
        (0..self.sizes.len())
            .map(|d| {
                let p = match policy {
                    LossPolicy::Random { seed, tear } => LossPolicy::Random {
                        seed: seed.wrapping_add(d as u64 * 0x9e37_79b9),
                        tear,
                    },
                    p => p,
                };
                FaultDev::from_pages(
                    self.sizes[d],
                    image_with(&self.durable[d], &self.pending[d], p),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unflushed_writes_can_be_lost_or_torn() {
        let d = FaultDev::new(1 << 20);
        d.write(0, &[1u8; 4096]).unwrap();
        d.flush().unwrap();
        d.write(0, &[2u8; 4096]).unwrap();
        d.write(8192, &[3u8; 16384]).unwrap();
        let mut b = [0u8; 4096];
        d.read(0, &mut b).unwrap();
        assert_eq!(b[0], 2);
        let lost = d.power_loss_image(LossPolicy::LoseAll);
        lost.read(0, &mut b).unwrap();
        assert_eq!(b[0], 1);
        lost.read(8192, &mut b).unwrap();
        assert_eq!(b[0], 0);
        let kept = d.power_loss_image(LossPolicy::KeepAll);
        kept.read(8192 + 12288, &mut b).unwrap();
        assert_eq!(b[0], 3);
        // some seed tears the 4-page write: a prefix written, the rest not
        let mut saw_torn = false;
        for seed in 0..64 {
            let img = d.power_loss_image(LossPolicy::Random { seed, tear: true });
            let mut big = [0u8; 16384];
            img.read(8192, &mut big).unwrap();
            let first = big[0] == 3;
            let last = big[16383] == 3;
            if first && !last {
                saw_torn = true;
            }
            assert!(!last || first, "torn writes keep a prefix");
        }
        assert!(saw_torn);
    }

    #[test]
    fn crash_after_n_writes_and_trace_replay() {
        let d = FaultDev::new(1 << 20);
        d.start_trace();
        let base = d.durable_pages();
        d.write(0, &[1u8; 4096]).unwrap();
        d.flush().unwrap();
        d.write(4096, &[2u8; 4096]).unwrap();
        d.crash_after_writes(1);
        d.write(0, &[9u8; 4096]).unwrap();
        assert!(d.is_dead());
        assert_eq!(d.write(0, &[9u8; 4096]), Err(IoError::Gone));
        assert_eq!(d.flush(), Err(IoError::Gone));
        let trace = d.take_trace();
        let mut imgs = CrashImages::new(1 << 20, base, trace);
        assert_eq!(imgs.total_writes(), 3);
        let mut b = [0u8; 4096];
        let (n, img) = imgs.next_image(LossPolicy::LoseAll).unwrap();
        assert_eq!(n, 1);
        img.read(0, &mut b).unwrap();
        assert_eq!(b[0], 0);
        let (_, img) = imgs.next_image(LossPolicy::LoseAll).unwrap();
        img.read(0, &mut b).unwrap();
        assert_eq!(b[0], 1);
        let (n, img) = imgs.next_image(LossPolicy::KeepAll).unwrap();
        assert_eq!(n, 3);
        img.read(0, &mut b).unwrap();
        assert_eq!(b[0], 9);
        assert!(imgs.next_image(LossPolicy::KeepAll).is_none());
    }
}
