//! The metadata block layer: a bounded cache of 64 KiB blocks, ref
//! validation, copy-on-write dirtying and the ordered writer.
//!
//! Called by the btree, the allocators and the commit. Invariants: a clean
//! (stable) block is never modified; dirtying always copies into a freshly
//! allocated blkno with a new random header seq; dirty blocks are pinned
//! until [`BlockCache::write_dirty`] checksums and writes them in blkno
//! order and flushes the device. Clean blocks are evicted LRU-first when
//! the cache holds more than its memory budget.

use crate::format::block::{BlockHeader, BlockRef};
use crate::format::hash::crc32c_block;
use crate::format::super_block::SuperBlock;
use crate::format::{LG_BLOCK_SIZE, MAGIC_SUPER, SM_BLOCK_SIZE, SUPER_BLKNO};
use crate::runtime::env::Entropy;
use crate::storage::dev::BlockDev;
use crate::storage::store_error::{StaleReason, StoreError, StoreResult};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

/// A 64 KiB block in memory, shared between the cache and its users.
pub type BlockBuf = Rc<RefCell<Vec<u8>>>;

/// Where the metadata blocks a copy-on-write needs come from and where the
/// blocks it replaces go. Implemented by the list allocator.
pub trait MetaAlloc {
    /// A free metadata blkno for this transaction.
    fn alloc_meta(&mut self, cache: &mut BlockCache) -> StoreResult<u64>;
    /// Record that `blkno` is no longer referenced once this transaction
    /// commits; it must not be reused before that commit is durable.
    fn free_meta(&mut self, cache: &mut BlockCache, blkno: u64) -> StoreResult<()>;
}

/// Event counters of the block layer (read them for the shell/trace).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCounters {
    pub cache_hit: u64,
    pub cache_miss: u64,
    pub dev_read: u64,
    pub dev_write: u64,
    pub dev_flush: u64,
    pub evict: u64,
    pub stale: u64,
    /// Cached clean copies that no longer matched a ref and were re-read.
    pub cache_refresh: u64,
    /// Blocks that passed their checks but failed structural verification.
    pub corrupt: u64,
    pub cow: u64,
    pub dirty_reuse: u64,
    pub forget: u64,
    /// Times the dirty set alone exceeded the memory budget.
    pub over_budget: u64,
}

struct CleanEntry {
    buf: BlockBuf,
    tick: u64,
}

/// The cache of metadata blocks of one volume.
pub struct BlockCache {
    dev: Box<dyn BlockDev>,
    entropy: Box<dyn Entropy>,
    fsid: u64,
    budget_bytes: usize,
    clean: BTreeMap<u64, CleanEntry>,
    lru: BTreeMap<u64, u64>,
    tick: u64,
    dirty: BTreeMap<u64, BlockBuf>,
    /// Set when a modification failed half way: the dirty blocks may be
    /// inconsistent and must never be written.
    poisoned: Option<&'static str>,
    /// A write-out in steps is under way ([`BlockCache::begin_write_dirty`]):
    /// the dirty set must not change until it finishes.
    writing: bool,
    pub counters: BlockCounters,
}

/// Dirty blocks one [`BlockCache::write_dirty_step`] of the callers that
/// yield between steps writes (4 MiB of large blocks).
pub const WRITE_STEP_BLOCKS: usize = 64;

/// A write-out of the dirty blocks in bounded steps, so a caller can yield
/// to other tasks between them: [`BlockCache::begin_write_dirty`], then
/// [`BlockCache::write_dirty_step`] until it says done, then
/// [`BlockCache::finish_write_dirty`]. Same blocks, same order, same single
/// flush as [`BlockCache::write_dirty`].
#[derive(Debug)]
#[must_use = "a write-out must be stepped and finished"]
pub struct WriteOut {
    blknos: Vec<u64>,
    next: usize,
}

impl WriteOut {
    /// Blocks of the write-out.
    pub fn len(&self) -> usize {
        self.blknos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blknos.is_empty()
    }

    /// Every block has been written (the flush is still to come).
    pub fn is_written(&self) -> bool {
        self.next >= self.blknos.len()
    }
}

/// Default memory budget of the cache: 64 MiB.
pub const DEFAULT_CACHE_BUDGET_BYTES: usize = 64 << 20;

fn lg_off(blkno: u64) -> u64 {
    blkno << crate::format::LG_BLOCK_SHIFT
}

/// Validate a block read through `bref`.
pub fn check_block(data: &[u8], bref: &BlockRef, magic: u32, fsid: u64) -> Result<(), StaleReason> {
    let hdr = BlockHeader::decode(data);
    if hdr.crc != crc32c_block(data) {
        return Err(StaleReason::Crc);
    }
    check_header(&hdr, bref, magic, fsid)
}

fn check_header(
    hdr: &BlockHeader,
    bref: &BlockRef,
    magic: u32,
    fsid: u64,
) -> Result<(), StaleReason> {
    if hdr.magic != magic {
        Err(StaleReason::Magic)
    } else if hdr.fsid != fsid {
        Err(StaleReason::Fsid)
    } else if hdr.seq != bref.seq {
        Err(StaleReason::Seq)
    } else if hdr.blkno != bref.blkno {
        Err(StaleReason::Blkno)
    } else {
        Ok(())
    }
}

/// Stamp the crc of a block whose header is filled in.
pub fn seal_block(data: &mut [u8]) {
    let crc = crc32c_block(data);
    data[0..4].copy_from_slice(&crc.to_le_bytes());
}

impl BlockCache {
    pub fn new(
        dev: Box<dyn BlockDev>,
        entropy: Box<dyn Entropy>,
        fsid: u64,
        budget_bytes: usize,
    ) -> Self {
        assert!(
            budget_bytes >= LG_BLOCK_SIZE,
            "cache budget below one block"
        );
        BlockCache {
            dev,
            entropy,
            fsid,
            budget_bytes,
            clean: BTreeMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            dirty: BTreeMap::new(),
            poisoned: None,
            writing: false,
            counters: BlockCounters::default(),
        }
    }

    pub fn fsid(&self) -> u64 {
        self.fsid
    }

    pub fn dev(&self) -> &dyn BlockDev {
        &*self.dev
    }

    pub fn entropy(&self) -> &dyn Entropy {
        &*self.entropy
    }

    /// Bytes of block memory held (clean + dirty).
    pub fn memory_bytes(&self) -> usize {
        (self.clean.len() + self.dirty.len()) * LG_BLOCK_SIZE
    }

    pub fn clean_blocks(&self) -> usize {
        self.clean.len()
    }

    pub fn dirty_blocks(&self) -> usize {
        self.dirty.len()
    }

    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// Is the block `bref` names dirty in the current transaction?
    pub fn is_dirty(&self, bref: &BlockRef) -> bool {
        match self.dirty.get(&bref.blkno) {
            Some(b) => BlockHeader::decode(&b.borrow()).seq == bref.seq,
            None => false,
        }
    }

    /// Blknos of the dirty blocks, in order.
    pub fn dirty_blknos(&self) -> Vec<u64> {
        self.dirty.keys().copied().collect()
    }

    fn touch(&mut self, blkno: u64) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.clean.get_mut(&blkno) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, blkno);
        }
    }

    fn insert_clean(&mut self, blkno: u64, buf: BlockBuf) {
        self.drop_clean(blkno);
        self.tick += 1;
        self.clean.insert(
            blkno,
            CleanEntry {
                buf,
                tick: self.tick,
            },
        );
        self.lru.insert(self.tick, blkno);
        self.evict_to_budget();
    }

    fn drop_clean(&mut self, blkno: u64) {
        if let Some(e) = self.clean.remove(&blkno) {
            self.lru.remove(&e.tick);
        }
    }

    fn evict_to_budget(&mut self) {
        while self.memory_bytes() > self.budget_bytes {
            let Some((&tick, &blkno)) = self.lru.iter().next() else {
                self.counters.over_budget += 1;
                return;
            };
            self.lru.remove(&tick);
            self.clean.remove(&blkno);
            self.counters.evict += 1;
        }
    }

    /// Drop every clean block (tests use it to force re-reads).
    pub fn drop_clean_all(&mut self) {
        self.clean.clear();
        self.lru.clear();
    }

    /// Drop a cached copy so the next read goes to the device (after a
    /// stale result).
    pub fn invalidate(&mut self, blkno: u64) {
        self.drop_clean(blkno);
    }

    /// Read the block `bref` names and check it is that block.
    pub fn read_ref(&mut self, bref: &BlockRef, magic: u32) -> StoreResult<BlockBuf> {
        if bref.blkno == 0 {
            self.counters.corrupt += 1;
            return Err(StoreError::Corrupt {
                blkno: 0,
                what: "reference to block 0",
            });
        }
        // a ref past the device end is bad metadata, not an i/o error (and a
        // blkno of 2^48 or more would alias a low block in lg_off)
        if bref.blkno >= self.dev.size_bytes() / LG_BLOCK_SIZE as u64 {
            self.counters.corrupt += 1;
            return Err(StoreError::Corrupt {
                blkno: bref.blkno,
                what: "reference past the device end",
            });
        }
        let stale = |reason| StoreError::Stale {
            blkno: bref.blkno,
            reason,
        };
        if let Some(b) = self.dirty.get(&bref.blkno) {
            let hdr = BlockHeader::decode(&b.borrow());
            let b = b.clone();
            return match check_header(&hdr, bref, magic, self.fsid) {
                Ok(()) => {
                    self.counters.cache_hit += 1;
                    Ok(b)
                }
                Err(r) => {
                    self.counters.stale += 1;
                    Err(stale(r))
                }
            };
        }
        if let Some(e) = self.clean.get(&bref.blkno) {
            let b = e.buf.clone();
            let hdr = BlockHeader::decode(&b.borrow());
            match check_header(&hdr, bref, magic, self.fsid) {
                Ok(()) => {
                    self.counters.cache_hit += 1;
                    self.touch(bref.blkno);
                    return Ok(b);
                }
                Err(_) => {
                    // another writer of the shared device (the server, a
                    // client, a merge) may have reused the blkno since we
                    // cached it: the device copy decides
                    self.counters.cache_refresh += 1;
                    self.drop_clean(bref.blkno);
                }
            }
        }
        self.counters.cache_miss += 1;
        let mut data = vec![0u8; LG_BLOCK_SIZE];
        self.counters.dev_read += 1;
        self.dev.read(lg_off(bref.blkno), &mut data)?;
        if let Err(r) = check_block(&data, bref, magic, self.fsid) {
            self.counters.stale += 1;
            return Err(stale(r));
        }
        let buf = Rc::new(RefCell::new(data));
        self.insert_clean(bref.blkno, buf.clone());
        Ok(buf)
    }

    /// Like [`Self::read_ref`], and run `verify` over a block the first time
    /// it comes from the device; a failure is [`StoreError::Corrupt`] and
    /// the block is not cached.
    pub fn read_ref_verified(
        &mut self,
        bref: &BlockRef,
        magic: u32,
        verify: &dyn Fn(&[u8]) -> Result<(), &'static str>,
    ) -> StoreResult<BlockBuf> {
        let matches = |b: &BlockBuf| {
            check_header(&BlockHeader::decode(&b.borrow()), bref, magic, self.fsid).is_ok()
        };
        let cached = self.dirty.get(&bref.blkno).is_some_and(matches)
            || self.clean.get(&bref.blkno).is_some_and(|e| matches(&e.buf));
        let buf = self.read_ref(bref, magic)?;
        if !cached {
            let res = verify(&buf.borrow());
            if let Err(what) = res {
                self.drop_clean(bref.blkno);
                self.counters.corrupt += 1;
                return Err(StoreError::Corrupt {
                    blkno: bref.blkno,
                    what,
                });
            }
        }
        Ok(buf)
    }

    /// Make the block `bref` names writable in this transaction. A block
    /// already dirty is returned as is; otherwise it is copied (or, for a
    /// null ref, zero-filled) into a new blkno from `alloc` with a fresh
    /// random seq, the old blkno is freed, and `bref` is updated.
    pub fn dirty_ref(
        &mut self,
        bref: &mut BlockRef,
        magic: u32,
        alloc: &mut dyn MetaAlloc,
    ) -> StoreResult<BlockBuf> {
        assert!(!self.writing, "block dirtied during a write-out");
        if !bref.is_null() && self.is_dirty(bref) {
            self.counters.dirty_reuse += 1;
            let b = self.dirty[&bref.blkno].clone();
            if BlockHeader::decode(&b.borrow()).magic != magic {
                return Err(StoreError::Stale {
                    blkno: bref.blkno,
                    reason: StaleReason::Magic,
                });
            }
            return Ok(b);
        }
        // read (and validate) the old block before allocating
        let old = if bref.is_null() {
            None
        } else {
            Some(self.read_ref(bref, magic)?)
        };
        let new_blkno = alloc.alloc_meta(self)?;
        let (buf, old_blkno) = self.cow_into(bref, magic, old, new_blkno)?;
        if let Some(o) = old_blkno {
            alloc.free_meta(self, o)?;
        }
        Ok(buf)
    }

    /// Copy-on-write into a blkno the caller already allocated (the list
    /// allocator's self-COW). Returns the dirty block and the old blkno,
    /// which the caller must free.
    pub fn dirty_ref_into(
        &mut self,
        bref: &mut BlockRef,
        magic: u32,
        new_blkno: u64,
    ) -> StoreResult<(BlockBuf, Option<u64>)> {
        let old = if bref.is_null() {
            None
        } else {
            Some(self.read_ref(bref, magic)?)
        };
        self.cow_into(bref, magic, old, new_blkno)
    }

    /// Is `blkno` one an allocator may hand out: past the super, inside
    /// the device, and not already dirty in this transaction? The blknos
    /// come from allocator list blocks on disk; a crc-valid list block
    /// can still hold 0, a block past the end or a duplicate.
    fn check_new_blkno(&mut self, blkno: u64) -> StoreResult<()> {
        let what = if blkno < crate::format::META_DEV_START_BLKNO {
            Some("allocator handed out a block before the metadata area")
        } else if blkno >= self.dev.size_bytes() / LG_BLOCK_SIZE as u64 {
            Some("allocator handed out a block past the device end")
        } else if self.dirty.contains_key(&blkno) {
            Some("allocator handed out a block twice")
        } else {
            None
        };
        match what {
            Some(what) => {
                self.counters.corrupt += 1;
                Err(StoreError::Corrupt { blkno, what })
            }
            None => Ok(()),
        }
    }

    fn cow_into(
        &mut self,
        bref: &mut BlockRef,
        magic: u32,
        old: Option<BlockBuf>,
        new_blkno: u64,
    ) -> StoreResult<(BlockBuf, Option<u64>)> {
        assert!(!self.writing, "block dirtied during a write-out");
        self.check_new_blkno(new_blkno)?;
        let mut data = match &old {
            Some(b) => b.borrow().clone(),
            None => vec![0u8; LG_BLOCK_SIZE],
        };
        let seq = loop {
            // a seq of 0 would look like a null ref
            let s = self.entropy.next_u64();
            if s != 0 && s != bref.seq {
                break s;
            }
        };
        BlockHeader {
            crc: 0,
            magic,
            fsid: self.fsid,
            seq,
            blkno: new_blkno,
        }
        .encode(&mut data);
        self.drop_clean(new_blkno);
        let buf = Rc::new(RefCell::new(data));
        self.dirty.insert(new_blkno, buf.clone());
        self.counters.cow += 1;
        if self.memory_bytes() > self.budget_bytes {
            self.evict_to_budget();
        }
        let old_blkno = if bref.is_null() {
            None
        } else {
            Some(bref.blkno)
        };
        *bref = BlockRef {
            blkno: new_blkno,
            seq,
        };
        Ok((buf, old_blkno))
    }

    /// Forget any cached copy of a block that was just freed; a dirty copy
    /// will not be written.
    pub fn forget(&mut self, blkno: u64) {
        assert!(!self.writing, "block forgotten during a write-out");
        if self.dirty.remove(&blkno).is_some() {
            self.counters.forget += 1;
        }
        self.drop_clean(blkno);
    }

    /// Refuse to write this transaction's dirty blocks: a modification
    /// failed half way through them.
    pub fn poison(&mut self, why: &'static str) {
        if self.poisoned.is_none() {
            self.poisoned = Some(why);
        }
    }

    pub fn poisoned(&self) -> Option<&'static str> {
        self.poisoned
    }

    /// Write every dirty block (checksummed, in blkno order), then flush.
    /// On success the blocks become clean cached blocks. On error the
    /// dirty set is kept so nothing is lost in memory.
    pub fn write_dirty(&mut self) -> StoreResult<usize> {
        let mut w = self.begin_write_dirty()?;
        while !self.write_dirty_step(&mut w, usize::MAX)? {}
        self.finish_write_dirty(w)
    }

    /// Start a write-out in steps of every dirty block (see [`WriteOut`]).
    /// Until it finishes (or fails) no block may be dirtied or forgotten.
    pub fn begin_write_dirty(&mut self) -> StoreResult<WriteOut> {
        if let Some(what) = self.poisoned {
            return Err(StoreError::Corrupt { blkno: 0, what });
        }
        assert!(!self.writing, "two write-outs at once");
        self.writing = true;
        Ok(WriteOut {
            blknos: self.dirty.keys().copied().collect(),
            next: 0,
        })
    }

    /// Seal and write up to `max_blocks` more blocks of `w`, in blkno
    /// order. True once every block is written. On error the write-out
    /// ends and the dirty set is kept, as with [`Self::write_dirty`]. A
    /// write-out whose blocks were discarded meanwhile
    /// ([`Self::discard_dirty`]: the transaction was abandoned) fails.
    pub fn write_dirty_step(&mut self, w: &mut WriteOut, max_blocks: usize) -> StoreResult<bool> {
        if !self.writing {
            return Err(StoreError::Invalid("write-out abandoned"));
        }
        let end = w.blknos.len().min(w.next.saturating_add(max_blocks.max(1)));
        while w.next < end {
            let blkno = w.blknos[w.next];
            let buf = self.dirty[&blkno].clone();
            let mut data = buf.borrow_mut();
            let hdr = BlockHeader::decode(&data);
            assert_eq!(hdr.blkno, blkno, "dirty block header blkno mismatch");
            assert_eq!(hdr.fsid, self.fsid, "dirty block header fsid mismatch");
            assert!(hdr.seq != 0 && hdr.magic != 0, "dirty block header unset");
            seal_block(&mut data);
            self.counters.dev_write += 1;
            if let Err(e) = self.dev.write(lg_off(blkno), &data) {
                self.writing = false;
                return Err(e.into());
            }
            debug_assert_eq!(crc32c_block(&data), BlockHeader::decode(&data).crc);
            w.next += 1;
        }
        Ok(w.is_written())
    }

    /// Flush the written blocks of `w` and make them clean cached blocks.
    /// Returns how many there were.
    pub fn finish_write_dirty(&mut self, w: WriteOut) -> StoreResult<usize> {
        if !self.writing {
            return Err(StoreError::Invalid("write-out abandoned"));
        }
        assert!(
            w.is_written(),
            "write-out finished before every block was written"
        );
        assert_eq!(
            self.dirty.len(),
            w.blknos.len(),
            "dirty set changed during a write-out"
        );
        self.writing = false;
        self.counters.dev_flush += 1;
        self.dev.flush()?;
        let n = w.blknos.len();
        for blkno in w.blknos {
            if let Some(buf) = self.dirty.remove(&blkno) {
                self.insert_clean(blkno, buf);
            }
        }
        Ok(n)
    }

    /// Is a write-out in steps under way?
    pub fn is_writing(&self) -> bool {
        self.writing
    }

    /// Drop every dirty block without writing (abandoning a transaction).
    pub fn discard_dirty(&mut self) {
        self.dirty.clear();
        self.poisoned = None;
        self.writing = false;
    }

    /// Read and validate the super block of this volume's meta device.
    pub fn read_super(&mut self) -> StoreResult<SuperBlock> {
        self.counters.dev_read += 1;
        let sb = read_super_from(&*self.dev)?;
        if sb.hdr.fsid != self.fsid {
            return Err(StoreError::Stale {
                blkno: SUPER_BLKNO,
                reason: StaleReason::Fsid,
            });
        }
        Ok(sb)
    }

    /// Write the super block (4 KiB, in place) between two flushes: the
    /// commit point.
    pub fn write_super(&mut self, sb: &SuperBlock) -> StoreResult<()> {
        assert_eq!(sb.hdr.fsid, self.fsid, "super of another volume");
        assert!(self.dirty.is_empty(), "super written before dirty blocks");
        self.counters.dev_flush += 1;
        self.dev.flush()?;
        write_super_to(&*self.dev, sb)?;
        self.counters.dev_write += 1;
        self.counters.dev_flush += 1;
        self.dev.flush()?;
        Ok(())
    }
}

/// Encode, seal and write a super block to `dev` (no flush).
pub fn write_super_to(dev: &dyn BlockDev, sb: &SuperBlock) -> StoreResult<()> {
    let mut b = vec![0u8; SM_BLOCK_SIZE];
    let mut s = *sb;
    s.hdr.magic = MAGIC_SUPER;
    s.hdr.blkno = SUPER_BLKNO;
    s.encode(&mut b);
    seal_block(&mut b);
    dev.write(SUPER_BLKNO * SM_BLOCK_SIZE as u64, &b)?;
    Ok(())
}

/// Read a super block and check crc, magic and blkno (not fsid).
pub fn read_super_from(dev: &dyn BlockDev) -> StoreResult<SuperBlock> {
    let mut b = vec![0u8; SM_BLOCK_SIZE];
    dev.read(SUPER_BLKNO * SM_BLOCK_SIZE as u64, &mut b)?;
    let sb = SuperBlock::decode(&b);
    let stale = |reason| StoreError::Stale {
        blkno: SUPER_BLKNO,
        reason,
    };
    if sb.hdr.magic != MAGIC_SUPER {
        return Err(stale(StaleReason::Magic));
    }
    if sb.hdr.crc != crc32c_block(&b) {
        return Err(stale(StaleReason::Crc));
    }
    if sb.hdr.blkno != SUPER_BLKNO {
        return Err(stale(StaleReason::Blkno));
    }
    Ok(sb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::MAGIC_BTREE;
    use crate::runtime::env::SeededEntropy;
    use crate::storage::dev::MemDev;

    struct Bump(u64, Vec<u64>);
    impl MetaAlloc for Bump {
        fn alloc_meta(&mut self, _: &mut BlockCache) -> StoreResult<u64> {
            self.0 += 1;
            Ok(self.0)
        }
        fn free_meta(&mut self, _: &mut BlockCache, b: u64) -> StoreResult<()> {
            self.1.push(b);
            Ok(())
        }
    }

    fn cache(budget: usize) -> (Rc<MemDev>, BlockCache) {
        let dev = Rc::new(MemDev::new(64 << 20));
        let c = BlockCache::new(
            Box::new(dev.clone()),
            Box::new(SeededEntropy::new(1)),
            77,
            budget,
        );
        (dev, c)
    }

    /// Dirty `n` fresh blocks with distinct contents.
    fn dirty_n(c: &mut BlockCache, a: &mut Bump, n: usize) -> Vec<BlockRef> {
        (0..n)
            .map(|i| {
                let mut r = BlockRef::default();
                let b = c.dirty_ref(&mut r, MAGIC_BTREE, a).unwrap();
                b.borrow_mut()[200] = i as u8;
                r
            })
            .collect()
    }

    #[test]
    fn write_out_in_steps_writes_what_write_dirty_writes() {
        let (dev1, mut c1) = cache(8 << 20);
        let (dev2, mut c2) = cache(8 << 20);
        let refs = dirty_n(&mut c1, &mut Bump(10, Vec::new()), 10);
        assert_eq!(dirty_n(&mut c2, &mut Bump(10, Vec::new()), 10), refs);
        assert_eq!(c1.write_dirty().unwrap(), 10);

        let mut w = c2.begin_write_dirty().unwrap();
        assert_eq!(w.len(), 10);
        let mut steps = 0;
        while !c2.write_dirty_step(&mut w, 3).unwrap() {
            steps += 1;
            // written but not flushed: the blocks are still dirty
            assert_eq!(c2.dirty_blocks(), 10);
            assert!(c2.is_writing());
        }
        assert_eq!(steps, 3);
        assert_eq!(c2.counters.dev_flush, 0);
        assert_eq!(c2.finish_write_dirty(w).unwrap(), 10);
        assert!(!c2.is_writing());
        assert_eq!(c2.dirty_blocks(), 0);
        assert_eq!((c1.counters.dev_write, c1.counters.dev_flush), (10, 1));
        assert_eq!((c2.counters.dev_write, c2.counters.dev_flush), (10, 1));
        for r in &refs {
            let (mut a, mut b) = (vec![0u8; LG_BLOCK_SIZE], vec![0u8; LG_BLOCK_SIZE]);
            dev1.read(lg_off(r.blkno), &mut a).unwrap();
            dev2.read(lg_off(r.blkno), &mut b).unwrap();
            assert_eq!(a, b);
            assert!(c2.read_ref(r, MAGIC_BTREE).is_ok());
        }
    }

    #[test]
    #[should_panic(expected = "block dirtied during a write-out")]
    fn dirtying_during_a_write_out_is_a_broken_invariant() {
        let (_dev, mut c) = cache(8 << 20);
        let mut a = Bump(10, Vec::new());
        dirty_n(&mut c, &mut a, 2);
        let mut w = c.begin_write_dirty().unwrap();
        let _ = c.write_dirty_step(&mut w, 1).unwrap();
        dirty_n(&mut c, &mut a, 1);
    }

    #[test]
    fn discard_ends_a_write_out() {
        let (_dev, mut c) = cache(8 << 20);
        let mut a = Bump(10, Vec::new());
        dirty_n(&mut c, &mut a, 2);
        let mut w = c.begin_write_dirty().unwrap();
        let _ = c.write_dirty_step(&mut w, 1).unwrap();
        c.discard_dirty();
        assert!(!c.is_writing());
        // the abandoned write-out goes no further
        assert!(c.write_dirty_step(&mut w, 1).is_err());
        assert!(c.finish_write_dirty(w).is_err());
        dirty_n(&mut c, &mut a, 1);
        assert_eq!(c.write_dirty().unwrap(), 1);
    }

    #[test]
    fn cow_write_read_and_stale() {
        let (_dev, mut c) = cache(1 << 20);
        let mut a = Bump(10, Vec::new());
        let mut r = BlockRef::default();
        let b = c.dirty_ref(&mut r, MAGIC_BTREE, &mut a).unwrap();
        b.borrow_mut()[100] = 42;
        assert_eq!(r.blkno, 11);
        assert!(c.is_dirty(&r));
        // dirty again: same block
        let r0 = r;
        c.dirty_ref(&mut r, MAGIC_BTREE, &mut a).unwrap();
        assert_eq!(r, r0);
        assert_eq!(c.write_dirty().unwrap(), 1);
        c.drop_clean_all();
        let b = c.read_ref(&r, MAGIC_BTREE).unwrap();
        assert_eq!(b.borrow()[100], 42);
        // wrong seq / magic are stale
        let bad = BlockRef {
            blkno: r.blkno,
            seq: r.seq ^ 1,
        };
        assert!(matches!(
            c.read_ref(&bad, MAGIC_BTREE),
            Err(StoreError::Stale {
                reason: StaleReason::Seq,
                ..
            })
        ));
        c.drop_clean_all();
        assert!(matches!(
            c.read_ref(&r, crate::format::MAGIC_ALLOC_LIST),
            Err(StoreError::Stale {
                reason: StaleReason::Magic,
                ..
            })
        ));
        // cow of a clean block moves it and frees the old one
        let mut r2 = r;
        let nb = c.dirty_ref(&mut r2, MAGIC_BTREE, &mut a).unwrap();
        assert_ne!(r2.blkno, r.blkno);
        assert_ne!(r2.seq, r.seq);
        assert_eq!(nb.borrow()[100], 42);
        assert_eq!(a.1, vec![r.blkno]);
    }

    #[test]
    fn crc_failure_is_stale_and_eviction_bounds_memory() {
        let (dev, mut c) = cache(4 * LG_BLOCK_SIZE);
        let mut a = Bump(1, Vec::new());
        let mut refs = Vec::new();
        for _ in 0..10 {
            let mut r = BlockRef::default();
            c.dirty_ref(&mut r, MAGIC_BTREE, &mut a).unwrap();
            refs.push(r);
        }
        c.write_dirty().unwrap();
        assert!(c.memory_bytes() <= 4 * LG_BLOCK_SIZE);
        for r in &refs {
            c.read_ref(r, MAGIC_BTREE).unwrap();
            assert!(c.memory_bytes() <= 4 * LG_BLOCK_SIZE);
        }
        assert!(c.counters.evict > 0);
        // flip a byte on disk
        let r = refs[0];
        let mut blk = vec![0u8; LG_BLOCK_SIZE];
        dev.read(lg_off(r.blkno), &mut blk).unwrap();
        blk[5000] ^= 1;
        dev.write(lg_off(r.blkno), &blk).unwrap();
        c.drop_clean_all();
        assert!(matches!(
            c.read_ref(&r, MAGIC_BTREE),
            Err(StoreError::Stale {
                reason: StaleReason::Crc,
                ..
            })
        ));
    }
}
