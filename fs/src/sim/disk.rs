//! Shared simulated disks.
//!
//! A [`SimDisk`] is one sparse device (4 KiB pages) that several nodes
//! reach, each through its own [`DiskHandle`] (a [`BlockDev`]). A handle
//! has a volatile write cache: a completed write is visible to the node
//! that wrote it at once, to the other nodes only once it is flushed
//! (made durable). When the node loses power its unflushed writes are all
//! lost, all kept, or kept one by one with one multi-page write torn at
//! 4 KiB granularity, drawn from the world's seed (the same selection the
//! single-device [`FaultDev`] uses: [`power_cut_image`]).
//!
//! Every write is tagged with the node, the node's life (boot count) and
//! a per-disk sequence number; the tag of the newest durable write of each
//! page is kept for checkers ([`SimDisk::last_writer`]). Every write,
//! flush and power cut goes into the world's event log.
//!
//! The block device seam is synchronous, so disks have no latency: virtual
//! time passes on the network and in timers only.

use crate::runtime::node::NodeId;
use crate::sim::faultdev::{apply, power_cut_image, FaultDev, LossPolicy, PageMap, WriteFate};
use crate::sim::world::{Core, Event};
use crate::storage::dev::{check_request, BlockDev, IoError, DEV_ALIGN};
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

const PAGE: usize = DEV_ALIGN as usize;

/// A disk's index in the world.
pub type DiskId = usize;

/// Who wrote a page, for checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteTag {
    pub node: NodeId,
    /// The node's boot count when it wrote.
    pub life: u32,
    /// Per-disk write sequence number (from 1).
    pub seq: u64,
    pub time_ns: u64,
}

/// One shared device.
pub struct SimDisk {
    id: DiskId,
    name: String,
    size: u64,
    durable: RefCell<Rc<PageMap>>,
    last_writer: RefCell<BTreeMap<u64, WriteTag>>,
    seq: Cell<u64>,
    /// A broken disk (tests of the checkers): flushes are acknowledged but
    /// make nothing durable.
    lying_flush: Cell<bool>,
    core: Rc<Core>,
}

impl SimDisk {
    pub(crate) fn new(id: DiskId, name: &str, size: u64, core: Rc<Core>) -> SimDisk {
        SimDisk {
            id,
            name: name.into(),
            size: size - size % DEV_ALIGN,
            durable: RefCell::new(Rc::new(PageMap::new())),
            last_writer: RefCell::new(BTreeMap::new()),
            seq: Cell::new(0),
            lying_flush: Cell::new(false),
            core,
        }
    }

    pub fn id(&self) -> DiskId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The durable pages (a cheap copy-on-write snapshot).
    pub fn durable_pages(&self) -> Rc<PageMap> {
        self.durable.borrow().clone()
    }

    /// Replace the durable contents (an image made elsewhere, e.g. a
    /// cached mkfs). Tags are cleared.
    pub fn set_pages(&self, pages: Rc<PageMap>) {
        *self.durable.borrow_mut() = pages;
        self.last_writer.borrow_mut().clear();
    }

    /// What a reboot would read now, as an offline device (fsck, tools).
    pub fn snapshot(&self) -> FaultDev {
        FaultDev::from_pages(self.size, self.durable_pages())
    }

    /// Run `f` on an offline device over the durable contents and keep
    /// what it flushed (mkfs before any node boots).
    pub fn with_offline<R>(&self, f: impl FnOnce(&FaultDev) -> R) -> R {
        let dev = self.snapshot();
        let r = f(&dev);
        let _ = dev.flush();
        self.set_pages(dev.durable_pages());
        r
    }

    /// The newest durable write of the page holding byte `off`.
    pub fn last_writer(&self, off: u64) -> Option<WriteTag> {
        self.last_writer.borrow().get(&(off / DEV_ALIGN)).copied()
    }

    /// Make flushes lie (tests of the crash checker).
    pub fn set_lying_flush(&self, on: bool) {
        self.lying_flush.set(on);
    }

    fn make_durable(&self, off: u64, data: &[u8], tag: WriteTag) {
        let mut d = self.durable.borrow_mut();
        apply(Rc::make_mut(&mut d), off, data);
        let mut lw = self.last_writer.borrow_mut();
        for i in 0..data.len() / PAGE {
            lw.insert(off / DEV_ALIGN + i as u64, tag);
        }
    }
}

/// A node's power for one life: on until the node crashes or an armed
/// trigger cuts it from inside a disk write.
pub struct Power {
    node: NodeId,
    life: u32,
    on: Cell<bool>,
    crash_after_writes: Cell<Option<u64>>,
    core: Rc<Core>,
}

impl Power {
    pub(crate) fn new(node: NodeId, life: u32, core: Rc<Core>) -> Power {
        Power {
            node,
            life,
            on: Cell::new(true),
            crash_after_writes: Cell::new(None),
            core,
        }
    }

    pub fn is_on(&self) -> bool {
        self.on.get()
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn life(&self) -> u32 {
        self.life
    }

    pub(crate) fn cut(&self) {
        self.on.set(false);
    }

    /// Lose power right after the `n`th next write (n >= 1).
    pub(crate) fn crash_after_writes(&self, n: u64) {
        self.crash_after_writes.set(Some(n.max(1)));
    }

    pub(crate) fn disarm(&self) {
        self.crash_after_writes.set(None);
    }

    /// A write completed: count it against an armed trigger.
    fn wrote(&self) {
        if let Some(n) = self.crash_after_writes.get() {
            if n <= 1 {
                self.crash_after_writes.set(None);
                self.on.set(false);
                self.core
                    .log(self.node, "power_lost_after_write", &[self.life as u64], "");
                self.core.schedule(
                    self.core.now(),
                    Event::PowerLost {
                        node: self.node,
                        life: self.life,
                    },
                );
            } else {
                self.crash_after_writes.set(Some(n - 1));
            }
        }
    }
}

struct Pending {
    off: u64,
    data: Rc<[u8]>,
    tag: WriteTag,
}

/// What a power cut did to one handle's unflushed writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    pub kept: usize,
    pub lost: usize,
    pub torn: usize,
}

/// One node's access to a [`SimDisk`] for one life.
pub struct DiskHandle {
    disk: Rc<SimDisk>,
    power: Rc<Power>,
    volatile: RefCell<PageMap>,
    pending: RefCell<Vec<Pending>>,
    revoked: Cell<bool>,
}

impl DiskHandle {
    pub(crate) fn new(disk: Rc<SimDisk>, power: Rc<Power>) -> DiskHandle {
        DiskHandle {
            disk,
            power,
            volatile: RefCell::new(PageMap::new()),
            pending: RefCell::new(Vec::new()),
            revoked: Cell::new(false),
        }
    }

    pub fn disk(&self) -> &Rc<SimDisk> {
        &self.disk
    }

    /// Writes not yet flushed.
    pub fn unflushed(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Fence this node off the disk (the simulated fence agent): every
    /// later request fails; unflushed writes are dropped.
    pub fn revoke(&self) {
        if !self.revoked.replace(true) {
            self.pending.borrow_mut().clear();
            self.volatile.borrow_mut().clear();
            self.disk.core.log(
                self.power.node,
                "disk_revoke",
                &[self.disk.id as u64, self.power.life as u64],
                "",
            );
        }
    }

    fn alive(&self) -> Result<(), IoError> {
        if self.power.is_on() && !self.revoked.get() {
            Ok(())
        } else {
            Err(IoError::Gone)
        }
    }

    /// The node lost power: unflushed writes reach the media by `policy`;
    /// the handle fails every later request.
    pub(crate) fn power_cut(&self, policy: LossPolicy) -> CutReport {
        self.power.cut();
        let pending = core::mem::take(&mut *self.pending.borrow_mut());
        self.volatile.borrow_mut().clear();
        if self.revoked.get() || pending.is_empty() {
            return CutReport {
                lost: pending.len(),
                ..CutReport::default()
            };
        }
        let durable = self.disk.durable_pages();
        let (img, fates) =
            power_cut_image(&durable, pending.iter().map(|p| (p.off, &p.data)), policy);
        *self.disk.durable.borrow_mut() = img;
        let mut rep = CutReport::default();
        let mut lw = self.disk.last_writer.borrow_mut();
        for (p, fate) in pending.iter().zip(fates) {
            let pages = match fate {
                WriteFate::Kept => {
                    rep.kept += 1;
                    p.data.len() / PAGE
                }
                WriteFate::Lost => {
                    rep.lost += 1;
                    0
                }
                WriteFate::Torn { pages } => {
                    rep.torn += 1;
                    pages
                }
            };
            for i in 0..pages {
                lw.insert(p.off / DEV_ALIGN + i as u64, p.tag);
            }
        }
        drop(lw);
        self.disk.core.log(
            self.power.node,
            "disk_power_cut",
            &[
                self.disk.id as u64,
                rep.kept as u64,
                rep.lost as u64,
                rep.torn as u64,
            ],
            "",
        );
        rep
    }
}

impl BlockDev for DiskHandle {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.alive()?;
        check_request(off, buf.len(), self.disk.size)?;
        let vol = self.volatile.borrow();
        let dur = self.disk.durable.borrow();
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
        self.alive()?;
        check_request(off, buf.len(), self.disk.size)?;
        let seq = self.disk.seq.get() + 1;
        self.disk.seq.set(seq);
        let tag = WriteTag {
            node: self.power.node,
            life: self.power.life,
            seq,
            time_ns: self.disk.core.now(),
        };
        {
            let mut vol = self.volatile.borrow_mut();
            for (i, chunk) in buf.chunks(PAGE).enumerate() {
                vol.insert(off / DEV_ALIGN + i as u64, Rc::from(chunk));
            }
        }
        self.pending.borrow_mut().push(Pending {
            off,
            data: Rc::from(buf),
            tag,
        });
        self.disk.core.log(
            self.power.node,
            "disk_write",
            &[
                self.disk.id as u64,
                off / DEV_ALIGN,
                buf.len() as u64 / DEV_ALIGN,
            ],
            "",
        );
        self.power.wrote();
        Ok(())
    }

    fn flush(&self) -> Result<(), IoError> {
        self.alive()?;
        let lying = self.disk.lying_flush.get();
        let n = self.pending.borrow().len();
        if !lying {
            for p in core::mem::take(&mut *self.pending.borrow_mut()) {
                self.disk.make_durable(p.off, &p.data, p.tag);
            }
            self.volatile.borrow_mut().clear();
        }
        self.disk.core.log(
            self.power.node,
            "disk_flush",
            &[self.disk.id as u64, n as u64, lying as u64],
            "",
        );
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.disk.size
    }
}
