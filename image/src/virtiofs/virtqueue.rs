//! The device side of a split virtqueue (virtio 1.x, 2.7): pop the chains
//! the driver made available, hand back used ones. Indirect descriptor
//! tables when negotiated (Linux 6.1's virtio-fs does not cap a request's
//! pages by the queue size: a 1 MiB write is ~260 descriptors, more than a
//! 128-entry ring holds); no event index. Everything read from the rings
//! is checked: a chain that leaves guest memory, loops, mixes writable
//! before readable or misuses an indirect table is a `BadChain` the caller
//! completes with length 0; a broken ring (an available index running more
//! than a queue ahead) stops the queue.

use super::guest_memory::{GuestMem, MemError};
use std::sync::atomic::{fence, Ordering};

pub const MAX_QUEUE_SIZE: u16 = 32768;
/// The most descriptors in one indirect table (QEMU's bound too).
pub const MAX_INDIRECT: u32 = 1024;

const DESC_SIZE: u64 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A guest buffer: guest-physical address and length, checked in range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
}

/// A descriptor chain: the device-readable buffers then the writable ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub readable: Vec<Buf>,
    pub writable: Vec<Buf>,
}

impl Chain {
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|b| u64::from(b.len)).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// The readable bytes, in order (at most `max` of them, else `None`).
    pub fn read_all(&self, mem: &GuestMem, max: u64) -> Result<Option<Vec<u8>>, MemError> {
        let total = self.readable_len();
        if total > max {
            return Ok(None);
        }
        let mut out = vec![0u8; total as usize];
        let mut at = 0usize;
        for b in &self.readable {
            let n = b.len as usize;
            mem.read(b.addr, &mut out[at..at + n])?;
            at += n;
        }
        Ok(Some(out))
    }

    /// Scatters `data` into the writable buffers; `false` (nothing written)
    /// if it does not fit.
    pub fn write_all(&self, mem: &GuestMem, data: &[u8]) -> Result<bool, MemError> {
        if data.len() as u64 > self.writable_len() {
            return Ok(false);
        }
        let mut rest = data;
        for b in &self.writable {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(b.len as usize);
            mem.write(b.addr, &rest[..n])?;
            rest = &rest[n..];
        }
        Ok(true)
    }
}

#[derive(Debug)]
pub enum ChainError {
    HeadOutOfRange(u16),
    /// A `next` index past the table.
    NextOutOfRange(u16),
    /// More descriptors than the queue has: a loop.
    Loop,
    ReadableAfterWritable,
    /// An indirect descriptor not negotiated, nested, chained on, or
    /// with a table of a bad size.
    Indirect,
    Mem(MemError),
}

#[derive(Debug)]
pub enum QueueError {
    /// Not configured (size, addresses) or the rings lie outside memory.
    NotReady(&'static str),
    /// The driver's available index is more than a queue ahead of ours.
    AvailRunaway {
        avail: u16,
        next: u16,
    },
    Mem(MemError),
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainError::HeadOutOfRange(h) => write!(f, "chain head {h} out of the table"),
            ChainError::NextOutOfRange(n) => write!(f, "next index {n} out of the table"),
            ChainError::Loop => write!(f, "chain longer than the queue (loop)"),
            ChainError::ReadableAfterWritable => {
                write!(f, "readable descriptor after a writable one")
            }
            ChainError::Indirect => write!(f, "bad or unnegotiated indirect descriptor"),
            ChainError::Mem(e) => write!(f, "{e}"),
        }
    }
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::NotReady(why) => write!(f, "queue not ready: {why}"),
            QueueError::AvailRunaway { avail, next } => {
                write!(
                    f,
                    "available index {avail} runs more than a queue ahead of {next}"
                )
            }
            QueueError::Mem(e) => write!(f, "{e}"),
        }
    }
}

/// What `pop` found at the next available slot.
#[derive(Debug)]
pub enum Popped {
    Chain(Chain),
    /// A malformed chain; complete `head` with length 0.
    Bad {
        head: u16,
        error: ChainError,
    },
}

/// One split virtqueue's device-side state.
#[derive(Clone, Debug, Default)]
pub struct SplitQueue {
    pub size: u16,
    /// Guest-physical addresses of the descriptor table, available and used rings.
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// The next available slot to read (the vring base).
    pub next_avail: u16,
    /// The next used slot to write.
    pub next_used: u16,
    /// VIRTIO_RING_F_INDIRECT_DESC was negotiated.
    pub indirect: bool,
}

impl SplitQueue {
    /// Checks size, alignment and that the three rings are in memory.
    pub fn validate(&self, mem: &GuestMem) -> Result<(), QueueError> {
        let n = u64::from(self.size);
        if self.size == 0 || self.size > MAX_QUEUE_SIZE || !self.size.is_power_of_two() {
            return Err(QueueError::NotReady(
                "queue size not a power of two up to 32768",
            ));
        }
        if !self.desc.is_multiple_of(16)
            || !self.avail.is_multiple_of(2)
            || !self.used.is_multiple_of(4)
        {
            return Err(QueueError::NotReady("misaligned ring"));
        }
        mem.check(self.desc, DESC_SIZE * n)
            .map_err(QueueError::Mem)?;
        mem.check(self.avail, 6 + 2 * n).map_err(QueueError::Mem)?;
        mem.check(self.used, 6 + 8 * n).map_err(QueueError::Mem)?;
        Ok(())
    }

    /// The next available chain, if any.
    pub fn pop(&mut self, mem: &GuestMem) -> Result<Option<Popped>, QueueError> {
        self.validate(mem)?;
        let avail_idx = mem
            .load_u16_acquire(self.avail + 2)
            .map_err(QueueError::Mem)?;
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(QueueError::AvailRunaway {
                avail: avail_idx,
                next: self.next_avail,
            });
        }
        let slot = u64::from(self.next_avail % self.size);
        let head = mem
            .read_u16(self.avail + 4 + 2 * slot)
            .map_err(QueueError::Mem)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(Some(match self.walk(mem, head) {
            Ok(chain) => Popped::Chain(chain),
            Err(error) => Popped::Bad { head, error },
        }))
    }

    fn walk(&self, mem: &GuestMem, head: u16) -> Result<Chain, ChainError> {
        if head >= self.size {
            return Err(ChainError::HeadOutOfRange(head));
        }
        let mut chain = Chain {
            head,
            readable: Vec::new(),
            writable: Vec::new(),
        };
        // the table being walked: the ring's, or one indirect table
        let mut table = self.desc;
        let mut table_len = u32::from(self.size);
        let mut in_indirect = false;
        let mut index = head;
        let mut count = 0u32;
        loop {
            count += 1;
            if count > table_len {
                return Err(ChainError::Loop);
            }
            let at = table + DESC_SIZE * u64::from(index);
            let addr = mem.read_u64(at).map_err(ChainError::Mem)?;
            let len = mem.read_u32(at + 8).map_err(ChainError::Mem)?;
            let flags = mem.read_u16(at + 12).map_err(ChainError::Mem)?;
            let next = mem.read_u16(at + 14).map_err(ChainError::Mem)?;
            if flags & F_INDIRECT != 0 {
                let entries = len / DESC_SIZE as u32;
                if !self.indirect
                    || in_indirect
                    || flags & F_NEXT != 0
                    || len % DESC_SIZE as u32 != 0
                    || entries == 0
                    || entries > MAX_INDIRECT
                {
                    return Err(ChainError::Indirect);
                }
                mem.check(addr, u64::from(len)).map_err(ChainError::Mem)?;
                table = addr;
                table_len = entries;
                in_indirect = true;
                index = 0;
                count = 0;
                continue;
            }
            mem.check(addr, u64::from(len)).map_err(ChainError::Mem)?;
            let buf = Buf { addr, len };
            if flags & F_WRITE != 0 {
                chain.writable.push(buf);
            } else if chain.writable.is_empty() {
                chain.readable.push(buf);
            } else {
                return Err(ChainError::ReadableAfterWritable);
            }
            if flags & F_NEXT == 0 {
                return Ok(chain);
            }
            if u32::from(next) >= table_len {
                return Err(ChainError::NextOutOfRange(next));
            }
            index = next;
        }
    }

    /// Hands chain `head` back with `len` bytes written.
    pub fn push_used(&mut self, mem: &GuestMem, head: u16, len: u32) -> Result<(), QueueError> {
        self.validate(mem)?;
        let slot = u64::from(self.next_used % self.size);
        let elem = self.used + 4 + 8 * slot;
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        bytes[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(elem, &bytes).map_err(QueueError::Mem)?;
        self.next_used = self.next_used.wrapping_add(1);
        // the element is visible before the index that publishes it
        fence(Ordering::Release);
        mem.store_u16_release(self.used + 2, self.next_used)
            .map_err(QueueError::Mem)
    }
}

#[cfg(test)]
mod tests {
    use super::super::guest_memory::RegionDesc;
    use super::*;
    use proptest::prelude::*;

    const SIZE: u16 = 8;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const DATA: u64 = 0x4000;
    const MEM_END: u64 = 0x10000;

    fn mem() -> GuestMem {
        GuestMem::anonymous(&[RegionDesc {
            guest_phys: 0,
            size: MEM_END,
            user_addr: 0x7f00_0000_0000,
            mmap_offset: 0,
        }])
        .unwrap()
    }

    fn queue() -> SplitQueue {
        SplitQueue {
            size: SIZE,
            desc: DESC,
            avail: AVAIL,
            used: USED,
            ..Default::default()
        }
    }

    fn put_desc(mem: &GuestMem, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + 16 * u64::from(i);
        mem.write(at, &addr.to_le_bytes()).unwrap();
        mem.write(at + 8, &len.to_le_bytes()).unwrap();
        mem.write(at + 12, &flags.to_le_bytes()).unwrap();
        mem.write(at + 14, &next.to_le_bytes()).unwrap();
    }

    /// Makes `heads` available after the driver's current index.
    fn offer(mem: &GuestMem, heads: &[u16]) {
        let mut idx = mem.read_u16(AVAIL + 2).unwrap();
        for &h in heads {
            let slot = u64::from(idx % SIZE);
            mem.write(AVAIL + 4 + 2 * slot, &h.to_le_bytes()).unwrap();
            idx = idx.wrapping_add(1);
        }
        mem.write(AVAIL + 2, &idx.to_le_bytes()).unwrap();
    }

    fn used_elem(mem: &GuestMem, slot: u16) -> (u32, u32) {
        let at = USED + 4 + 8 * u64::from(slot % SIZE);
        (mem.read_u32(at).unwrap(), mem.read_u32(at + 4).unwrap())
    }

    fn chain(q: &mut SplitQueue, mem: &GuestMem) -> Chain {
        match q.pop(mem).unwrap() {
            Some(Popped::Chain(c)) => c,
            other => panic!("expected a chain, got {other:?}"),
        }
    }

    fn bad(q: &mut SplitQueue, mem: &GuestMem) -> (u16, ChainError) {
        match q.pop(mem).unwrap() {
            Some(Popped::Bad { head, error }) => (head, error),
            other => panic!("expected a bad chain, got {other:?}"),
        }
    }

    #[test]
    fn readable_then_writable_chain_round_trip() {
        let mem = mem();
        let mut q = queue();
        mem.write(DATA, b"hello ").unwrap();
        mem.write(DATA + 0x100, b"world").unwrap();
        put_desc(&mem, 3, DATA, 6, F_NEXT, 5);
        put_desc(&mem, 5, DATA + 0x100, 5, F_NEXT, 1);
        put_desc(&mem, 1, DATA + 0x200, 4, F_WRITE | F_NEXT, 2);
        put_desc(&mem, 2, DATA + 0x300, 16, F_WRITE, 0);
        assert!(q.pop(&mem).unwrap().is_none());
        offer(&mem, &[3]);
        let c = chain(&mut q, &mem);
        assert_eq!(c.head, 3);
        assert_eq!(c.readable.len(), 2);
        assert_eq!(c.writable_len(), 20);
        assert_eq!(c.read_all(&mem, 100).unwrap().unwrap(), b"hello world");
        assert!(c.read_all(&mem, 10).unwrap().is_none(), "over the limit");
        assert!(c.write_all(&mem, b"0123456789").unwrap());
        let mut got = [0u8; 6];
        mem.read(DATA + 0x300, &mut got).unwrap();
        assert_eq!(&got, b"456789");
        assert!(!c.write_all(&mem, &[7u8; 21]).unwrap(), "21 bytes into 20");
        q.push_used(&mem, c.head, 10).unwrap();
        assert_eq!(mem.read_u16(USED + 2).unwrap(), 1);
        assert_eq!(used_elem(&mem, 0), (3, 10));
        assert!(q.pop(&mem).unwrap().is_none());
    }

    #[test]
    fn out_of_range_buffers_are_bad_chains() {
        let mem = mem();
        let mut q = queue();
        put_desc(&mem, 0, MEM_END - 4, 8, 0, 0); // straddles the end
        put_desc(&mem, 1, u64::MAX - 2, 8, F_WRITE, 0); // wraps
        put_desc(&mem, 2, MEM_END + 0x1000, 0, 0, 0); // zero length, nowhere
        put_desc(&mem, 3, DATA, 8, F_NEXT, 200); // next past the table
        offer(&mem, &[0, 1, 2, 3, 9]); // 9: head past the table
        assert!(matches!(bad(&mut q, &mem), (0, ChainError::Mem(_))));
        assert!(matches!(bad(&mut q, &mem), (1, ChainError::Mem(_))));
        assert!(matches!(bad(&mut q, &mem), (2, ChainError::Mem(_))));
        assert!(matches!(
            bad(&mut q, &mem),
            (3, ChainError::NextOutOfRange(200))
        ));
        assert!(matches!(
            bad(&mut q, &mem),
            (9, ChainError::HeadOutOfRange(9))
        ));
        assert!(q.pop(&mem).unwrap().is_none());
    }

    #[test]
    fn loops_indirect_and_misordered_chains_are_bad() {
        let mem = mem();
        let mut q = queue();
        put_desc(&mem, 0, DATA, 8, F_NEXT, 1);
        put_desc(&mem, 1, DATA, 8, F_NEXT, 0); // 0 -> 1 -> 0
        put_desc(&mem, 2, DATA, 8, F_NEXT, 2); // self loop
        put_desc(&mem, 3, DATA, 16, F_INDIRECT, 0);
        put_desc(&mem, 4, DATA, 8, F_WRITE | F_NEXT, 5);
        put_desc(&mem, 5, DATA, 8, 0, 0); // readable after writable
        offer(&mem, &[0, 2, 3, 4]);
        assert!(matches!(bad(&mut q, &mem), (0, ChainError::Loop)));
        assert!(matches!(bad(&mut q, &mem), (2, ChainError::Loop)));
        assert!(matches!(bad(&mut q, &mem), (3, ChainError::Indirect)));
        assert!(matches!(
            bad(&mut q, &mem),
            (4, ChainError::ReadableAfterWritable)
        ));
    }

    fn put_at(mem: &GuestMem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = table + 16 * u64::from(i);
        mem.write(at, &addr.to_le_bytes()).unwrap();
        mem.write(at + 8, &len.to_le_bytes()).unwrap();
        mem.write(at + 12, &flags.to_le_bytes()).unwrap();
        mem.write(at + 14, &next.to_le_bytes()).unwrap();
    }

    #[test]
    fn indirect_tables_when_negotiated() {
        let mem = mem();
        let mut q = queue();
        let table = DATA + 0x1000;
        // 20 entries: more than the ring has
        for i in 0..20u16 {
            let flags = if i < 19 { F_NEXT } else { 0 } | if i >= 10 { F_WRITE } else { 0 };
            put_at(&mem, table, i, DATA + 64 * u64::from(i), 64, flags, i + 1);
        }
        put_desc(&mem, 0, table, 20 * 16, F_INDIRECT, 0);
        offer(&mem, &[0]);
        assert!(
            matches!(bad(&mut q, &mem), (0, ChainError::Indirect)),
            "not negotiated"
        );
        q.indirect = true;
        offer(&mem, &[0]);
        let c = chain(&mut q, &mem);
        assert_eq!((c.readable.len(), c.writable.len()), (10, 10));
        assert_eq!(c.writable[0].addr, DATA + 640);
        // a loop inside the table, a nested table, a chained-on indirect,
        // a table of a bad size, a next past the table
        put_at(&mem, table, 19, DATA, 64, F_WRITE | F_NEXT, 5);
        offer(&mem, &[0]);
        assert!(matches!(bad(&mut q, &mem), (0, ChainError::Loop)));
        put_at(&mem, table, 0, table, 32, F_INDIRECT, 0);
        offer(&mem, &[0]);
        assert!(matches!(bad(&mut q, &mem), (0, ChainError::Indirect)));
        put_desc(&mem, 1, table, 32, F_INDIRECT | F_NEXT, 2);
        put_desc(&mem, 2, table, 33, F_INDIRECT, 0);
        put_desc(&mem, 3, MEM_END - 16, 32, F_INDIRECT, 0);
        put_at(&mem, table + 0x800, 0, DATA, 8, F_NEXT, 2);
        put_desc(&mem, 4, table + 0x800, 32, F_INDIRECT, 0);
        offer(&mem, &[1, 2, 3, 4]);
        assert!(matches!(bad(&mut q, &mem), (1, ChainError::Indirect)));
        assert!(matches!(bad(&mut q, &mem), (2, ChainError::Indirect)));
        assert!(matches!(bad(&mut q, &mem), (3, ChainError::Mem(_))));
        assert!(matches!(
            bad(&mut q, &mem),
            (4, ChainError::NextOutOfRange(2))
        ));
    }

    #[test]
    fn zero_length_buffers_and_wrapped_indices() {
        let mem = mem();
        let mut q = queue();
        // both sides start just below the u16 wrap
        q.next_avail = 65533;
        q.next_used = 65533;
        mem.write(AVAIL + 2, &65533u16.to_le_bytes()).unwrap();
        put_desc(&mem, 0, DATA, 0, F_NEXT, 1);
        put_desc(&mem, 1, DATA + 8, 0, F_WRITE, 0);
        for round in 0..6u16 {
            offer(&mem, &[0]);
            let c = chain(&mut q, &mem);
            assert_eq!(c.readable_len() + c.writable_len(), 0);
            assert_eq!(c.read_all(&mem, 0).unwrap().unwrap(), Vec::<u8>::new());
            q.push_used(&mem, c.head, 0).unwrap();
            let expect = 65533u16.wrapping_add(round + 1);
            assert_eq!(mem.read_u16(USED + 2).unwrap(), expect);
            assert_eq!(used_elem(&mem, expect.wrapping_sub(1)), (0, 0));
        }
        assert_eq!(q.next_avail, 3);
    }

    #[test]
    fn runaway_available_index_and_bad_rings_stop_the_queue() {
        let mem = mem();
        let mut q = queue();
        mem.write(AVAIL + 2, &(SIZE + 1).to_le_bytes()).unwrap();
        assert!(matches!(q.pop(&mem), Err(QueueError::AvailRunaway { .. })));
        let mut q = queue();
        q.used = MEM_END - 8;
        assert!(matches!(q.pop(&mem), Err(QueueError::Mem(_))));
        assert!(q.push_used(&mem, 0, 0).is_err());
        let mut q = queue();
        q.size = 6;
        assert!(matches!(q.pop(&mem), Err(QueueError::NotReady(_))));
        let mut q = queue();
        q.avail = AVAIL + 1;
        assert!(matches!(q.pop(&mem), Err(QueueError::NotReady(_))));
    }

    #[test]
    fn regions_translate_and_bound_addresses() {
        let mem = GuestMem::anonymous(&[
            RegionDesc {
                guest_phys: 0,
                size: 0x1000,
                user_addr: 0x10_0000,
                mmap_offset: 0,
            },
            RegionDesc {
                guest_phys: 0x1000,
                size: 0x1000,
                user_addr: 0x50_0000,
                mmap_offset: 0,
            },
        ])
        .unwrap();
        assert_eq!(mem.user_to_guest(0x10_0010).unwrap(), 0x10);
        assert_eq!(mem.user_to_guest(0x50_0fff).unwrap(), 0x1fff);
        assert!(mem.user_to_guest(0x10_1000).is_err());
        // adjacent regions: an access may cross
        mem.write(0xffc, &[1u8; 8]).unwrap();
        assert!(mem.check(0x1ffc, 8).is_err());
        assert!(mem.load_u16_acquire(0x11).is_err());
        assert!(GuestMem::anonymous(&[RegionDesc {
            guest_phys: u64::MAX - 10,
            size: 0x1000,
            user_addr: 0,
            mmap_offset: 0,
        }])
        .is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Random descriptor tables and rings never panic, and every chain
        /// popped is in memory, ordered and no longer than the queue.
        #[test]
        fn random_rings_never_panic(
            table in proptest::collection::vec(
                (prop_oneof![0u64..MEM_END, any::<u64>()], prop_oneof![0u32..0x2000, any::<u32>()], 0u16..8, 0u16..12),
                SIZE as usize),
            heads in proptest::collection::vec(0u16..12, 0..20),
            avail_idx in any::<u16>(),
            start in any::<u16>(),
            indirect in any::<bool>(),
        ) {
            let mem = mem();
            let mut q = queue();
            q.indirect = indirect;
            q.next_avail = start;
            q.next_used = start;
            for (i, &(addr, len, flags, next)) in table.iter().enumerate() {
                put_desc(&mem, i as u16, addr, len, flags, next);
            }
            for (slot, h) in heads.iter().enumerate() {
                mem.write(AVAIL + 4 + 2 * (slot as u64 % u64::from(SIZE)), &h.to_le_bytes()).unwrap();
            }
            mem.write(AVAIL + 2, &avail_idx.to_le_bytes()).unwrap();
            let mut popped = 0u32;
            loop {
                match q.pop(&mem) {
                    Ok(None) => break,
                    Ok(Some(Popped::Chain(c))) => {
                        prop_assert!(c.readable.len() + c.writable.len() <= SIZE as usize + MAX_INDIRECT as usize);
                        for b in c.readable.iter().chain(&c.writable) {
                            prop_assert!(mem.check(b.addr, u64::from(b.len)).is_ok());
                        }
                        let _ = c.read_all(&mem, 1 << 20).unwrap();
                        let _ = c.write_all(&mem, &[0xa5; 64]).unwrap();
                        q.push_used(&mem, c.head, 0).unwrap();
                    }
                    Ok(Some(Popped::Bad { head, .. })) => {
                        q.push_used(&mem, head, 0).unwrap();
                    }
                    Err(QueueError::AvailRunaway { .. }) => {
                        prop_assert!(avail_idx.wrapping_sub(start) > SIZE);
                        break;
                    }
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
                popped += 1;
                prop_assert!(popped <= u32::from(SIZE));
            }
        }
    }
}
