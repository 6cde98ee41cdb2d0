//! File data: the block map in DATA_EXTENT items and the bytes on the data
//! device.
//!
//! Owns extent lookup, changing a range of the map (splitting and
//! merging extents, keeping `online_blocks`/`offline_blocks`), writes
//! (allocate holes, fill UNWRITTEN blocks, read-modify-write partial blocks
//! in place), reads (holes and UNWRITTEN read as zeros), punching ranges
//! out (truncate, hole punch; freed blocks go back to the backend) and
//! preallocation. Data reaches the device before the commit that maps it:
//! every write goes to the device here, synchronously; the commit flushes
//! the device first. Called by `vfs` under a transaction hold; inode
//! fields other than the block counts are the caller's.

use alloc::vec;
use alloc::vec::Vec;

use crate::errno::{Errno, FsResult};
use crate::format::items::{data_extent_key, DataExtent, SEF_OFFLINE, SEF_UNWRITTEN};
use crate::format::SM_BLOCK_SIZE;
use crate::posix::backend::{Backend, DataRun};
use crate::posix::inode::Inode;
use crate::posix::item::ItemCache;
use crate::storage::dev::BlockDev;

const BS: u64 = SM_BLOCK_SIZE as u64;
/// Largest logical block of a file (offsets are 64 bit).
pub const LAST_BLOCK: u64 = u64::MAX >> 12;
/// Largest file size: Linux's MAX_LFS_FILESIZE on 64-bit.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Most blocks moved through one device request (bounds buffers).
pub const MAX_RUN_BLOCKS: u64 = 256;

/// What data operations need.
pub struct DataCtx<'a> {
    pub items: &'a ItemCache,
    pub backend: &'a dyn Backend,
    pub dev: &'a dyn BlockDev,
}

fn dev_err(_: crate::storage::dev::IoError) -> Errno {
    Errno::EIO
}

/// The first extent of `ino` that ends at or after `iblock`.
pub async fn next_extent(items: &ItemCache, ino: u64, iblock: u64) -> FsResult<Option<DataExtent>> {
    let first = data_extent_key(ino, iblock, 0);
    let last = data_extent_key(ino, u64::MAX, u64::MAX);
    match items.next(first, last).await? {
        Some((k, v)) => Ok(Some(DataExtent::decode(&k, &v)?)),
        None => Ok(None),
    }
}

fn mergeable(a: &DataExtent, b: &DataExtent) -> bool {
    debug_assert_eq!(a.last() + 1, b.start);
    a.flags == b.flags
        && ((a.blkno == 0 && b.blkno == 0)
            || (a.blkno != 0 && b.blkno != 0 && a.blkno.checked_add(a.len) == Some(b.blkno)))
}

fn add_counts(inode: &mut Inode, e: &DataExtent, sign: i64) {
    let len = e.len as i64 * sign;
    if e.blkno != 0 && e.flags & SEF_UNWRITTEN == 0 {
        inode.item.online_blocks = inode.item.online_blocks.wrapping_add(len as u64);
    } else if e.flags & SEF_OFFLINE != 0 {
        inode.item.offline_blocks = inode.item.offline_blocks.wrapping_add(len as u64);
    }
}

fn put_extent(items: &ItemCache, inode: &mut Inode, e: &DataExtent) {
    items.write(e.key(inode.ino), &e.encode_val());
    add_counts(inode, e, 1);
}

fn drop_extent(items: &ItemCache, inode: &mut Inode, e: &DataExtent) {
    items.delete(e.key(inode.ino));
    add_counts(inode, e, -1);
}

/// Make blocks `[start, start + len)` map to `blkno..` with `flags`
/// (`blkno` 0 and no flags: a hole). Returns the pieces of the old map
/// that were replaced; the caller frees their blocks when appropriate.
pub async fn set_mapping(
    items: &ItemCache,
    inode: &mut Inode,
    start: u64,
    len: u64,
    blkno: u64,
    flags: u8,
) -> FsResult<Vec<DataExtent>> {
    assert!(len > 0 && start.checked_add(len - 1).is_some_and(|l| l <= LAST_BLOCK));
    let ino = inode.ino;
    let end = start + len - 1;
    let mut replaced = Vec::new();
    let mut cur = start;
    while let Some(e) = next_extent(items, ino, cur).await? {
        if e.start > end {
            break;
        }
        drop_extent(items, inode, &e);
        if e.start < start {
            let left = DataExtent {
                start: e.start,
                len: start - e.start,
                blkno: e.blkno,
                flags: e.flags,
            };
            put_extent(items, inode, &left);
        }
        if e.last() > end {
            let skip = end + 1 - e.start;
            let right = DataExtent {
                start: end + 1,
                len: e.last() - end,
                blkno: if e.blkno != 0 { e.blkno + skip } else { 0 },
                flags: e.flags,
            };
            put_extent(items, inode, &right);
        }
        let os = e.start.max(start);
        let oe = e.last().min(end);
        replaced.push(DataExtent {
            start: os,
            len: oe - os + 1,
            blkno: if e.blkno != 0 {
                e.blkno + (os - e.start)
            } else {
                0
            },
            flags: e.flags,
        });
        if e.last() >= end {
            break;
        }
        cur = e.last() + 1;
    }
    if blkno == 0 && flags == 0 {
        return Ok(replaced);
    }
    let mut new = DataExtent {
        start,
        len,
        blkno,
        flags,
    };
    if start > 0 {
        if let Some(l) = next_extent(items, ino, start - 1).await? {
            if l.last() == start - 1 && mergeable(&l, &new) {
                drop_extent(items, inode, &l);
                new.start = l.start;
                new.len += l.len;
                new.blkno = l.blkno;
            }
        }
    }
    if end < LAST_BLOCK {
        if let Some(r) = next_extent(items, ino, end + 1).await? {
            if r.start == end + 1 && mergeable(&new, &r) {
                drop_extent(items, inode, &r);
                new.len += r.len;
            }
        }
    }
    put_extent(items, inode, &new);
    Ok(replaced)
}

/// Write `data` at `off` into blocks `phys..` whose first logical block
/// holds `off`. `rmw`: keep the existing bytes of partial blocks (written
/// extents); otherwise the rest of partial blocks is zero (holes,
/// UNWRITTEN).
fn write_run(
    dev: &dyn BlockDev,
    phys: u64,
    nblocks: u64,
    off: u64,
    data: &[u8],
    rmw: bool,
) -> FsResult<()> {
    let first_byte = (off / BS) * BS;
    let run_bytes = (nblocks * BS) as usize;
    let in_off = (off - first_byte) as usize;
    assert!(in_off + data.len() <= run_bytes);
    let mut buf = vec![0u8; run_bytes];
    if rmw {
        if in_off != 0 {
            dev.read(phys * BS, &mut buf[..BS as usize])
                .map_err(dev_err)?;
        }
        let tail = in_off + data.len();
        if !tail.is_multiple_of(BS as usize) {
            let lb = tail / BS as usize;
            if !(lb == 0 && in_off != 0) {
                let s = lb * BS as usize;
                dev.read((phys + lb as u64) * BS, &mut buf[s..s + BS as usize])
                    .map_err(dev_err)?;
            }
        }
    }
    buf[in_off..in_off + data.len()].copy_from_slice(data);
    dev.write(phys * BS, &buf).map_err(dev_err)
}

/// How a write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    pub written: usize,
    /// Stopped because the allocator needs a commit (`ENOBUFS`).
    pub needs_commit: bool,
}

/// Write `data` at byte `off` (the caller bounds it by the maximum file
/// size and updates size and times).
pub async fn write(
    ctx: &DataCtx<'_>,
    inode: &mut Inode,
    off: u64,
    data: &[u8],
) -> FsResult<WriteOutcome> {
    let end = off + data.len() as u64;
    let mut pos = off;
    while pos < end {
        let iblock = pos / BS;
        let last_block = (end - 1) / BS;
        let cap = last_block.min(iblock + MAX_RUN_BLOCKS - 1);
        let ext = next_extent(ctx.items, inode.ino, iblock).await?;
        let run_last;
        match ext {
            Some(e) if e.start <= iblock => {
                if e.flags & SEF_OFFLINE != 0 || e.blkno == 0 {
                    return Err(Errno::EIO);
                }
                run_last = e.last().min(cap);
                let phys = e.blkno + (iblock - e.start);
                let n = run_last - iblock + 1;
                let chunk_end = end.min((run_last + 1) * BS);
                let chunk = &data[(pos - off) as usize..(chunk_end - off) as usize];
                if e.flags & SEF_UNWRITTEN != 0 {
                    write_run(ctx.dev, phys, n, pos, chunk, false)?;
                    set_mapping(ctx.items, inode, iblock, n, phys, e.flags & !SEF_UNWRITTEN)
                        .await?;
                } else {
                    write_run(ctx.dev, phys, n, pos, chunk, true)?;
                }
            }
            other => {
                let hole_last = match other {
                    Some(e) => (e.start - 1).min(cap),
                    None => cap,
                };
                let want = hole_last - iblock + 1;
                let run = match ctx.backend.alloc_data(want).await {
                    Ok(r) => r,
                    Err(Errno::ENOBUFS) => {
                        return Ok(WriteOutcome {
                            written: (pos - off) as usize,
                            needs_commit: true,
                        })
                    }
                    Err(e) => {
                        if pos > off {
                            return Ok(WriteOutcome {
                                written: (pos - off) as usize,
                                needs_commit: false,
                            });
                        }
                        return Err(e);
                    }
                };
                if run.len == 0 || run.len > want {
                    return Err(Errno::EIO);
                }
                run_last = iblock + run.len - 1;
                let chunk_end = end.min((run_last + 1) * BS);
                let chunk = &data[(pos - off) as usize..(chunk_end - off) as usize];
                write_run(ctx.dev, run.blkno, run.len, pos, chunk, false)?;
                set_mapping(ctx.items, inode, iblock, run.len, run.blkno, 0).await?;
            }
        }
        pos = end.min((run_last + 1) * BS);
    }
    Ok(WriteOutcome {
        written: data.len(),
        needs_commit: false,
    })
}

/// Read `buf.len()` bytes at `off` (the caller clips to the file size).
pub async fn read(ctx: &DataCtx<'_>, inode: &Inode, off: u64, buf: &mut [u8]) -> FsResult<()> {
    buf.fill(0);
    if buf.is_empty() {
        return Ok(());
    }
    let end = off + buf.len() as u64;
    let last_block = (end - 1) / BS;
    let mut iblock = off / BS;
    let mut scratch = Vec::new();
    while iblock <= last_block {
        let Some(e) = next_extent(ctx.items, inode.ino, iblock).await? else {
            break;
        };
        if e.start > last_block {
            break;
        }
        iblock = iblock.max(e.start);
        let run_last = e.last().min(last_block).min(iblock + MAX_RUN_BLOCKS - 1);
        if e.flags & SEF_OFFLINE != 0 {
            return Err(Errno::EIO);
        }
        if e.blkno != 0 && e.flags & SEF_UNWRITTEN == 0 {
            let n = (run_last - iblock + 1) as usize;
            scratch.resize(n * BS as usize, 0);
            let phys = e.blkno + (iblock - e.start);
            ctx.dev.read(phys * BS, &mut scratch).map_err(dev_err)?;
            let run_start = iblock * BS;
            let s = off.max(run_start);
            let t = end.min((run_last + 1) * BS);
            buf[(s - off) as usize..(t - off) as usize]
                .copy_from_slice(&scratch[(s - run_start) as usize..(t - run_start) as usize]);
        }
        iblock = run_last + 1;
    }
    Ok(())
}

/// Zero bytes `[from, to)` inside logical block `iblock` if it holds
/// written data (truncate and punch edges).
pub async fn zero_in_block(
    ctx: &DataCtx<'_>,
    inode: &Inode,
    iblock: u64,
    from: usize,
    to: usize,
) -> FsResult<()> {
    assert!(from <= to && to <= BS as usize);
    if from == to {
        return Ok(());
    }
    let Some(e) = next_extent(ctx.items, inode.ino, iblock).await? else {
        return Ok(());
    };
    if e.start > iblock || e.blkno == 0 || e.flags & SEF_UNWRITTEN != 0 {
        return Ok(());
    }
    let phys = e.blkno + (iblock - e.start);
    let mut b = vec![0u8; BS as usize];
    ctx.dev.read(phys * BS, &mut b).map_err(dev_err)?;
    b[from..to].fill(0);
    ctx.dev.write(phys * BS, &b).map_err(dev_err)
}

/// Unmap blocks `[first, last]`, freeing their blocks, touching at most
/// `max_extents` extents. Returns the block to continue from, or `None`
/// when the range is done.
pub async fn punch(
    ctx: &DataCtx<'_>,
    inode: &mut Inode,
    first: u64,
    last: u64,
    max_extents: usize,
) -> FsResult<Option<u64>> {
    unmap(ctx, inode, first, last, max_extents, Unmap::Punch).await
}

/// What [`unmap`] does to the extents of its range.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unmap {
    /// Every extent becomes a hole; mapped blocks are freed.
    Punch,
    /// Mapped extents are freed and become OFFLINE; the rest stay.
    Release,
    /// OFFLINE unmapped extents become holes; the rest stay.
    PunchOffline,
}

/// Walk the extents of blocks `[first, last]`, at most `max_extents` of
/// them, doing `how` to each piece in range. Returns the block to
/// continue from, or `None` when the range is done.
async fn unmap(
    ctx: &DataCtx<'_>,
    inode: &mut Inode,
    first: u64,
    last: u64,
    max_extents: usize,
    how: Unmap,
) -> FsResult<Option<u64>> {
    let mut cur = first;
    for _ in 0..max_extents {
        if cur > last {
            return Ok(None);
        }
        let Some(e) = next_extent(ctx.items, inode.ino, cur).await? else {
            return Ok(None);
        };
        if e.start > last {
            return Ok(None);
        }
        // never hand blocks past the data device to the allocator
        if how != Unmap::PunchOffline
            && e.blkno != 0
            && e.blkno
                .checked_add(e.len)
                .is_none_or(|end| end > ctx.dev.size_bytes() / BS)
        {
            return Err(Errno::EIO);
        }
        let s = e.start.max(cur);
        let t = e.last().min(last);
        let flags = match how {
            Unmap::Punch => Some(0),
            Unmap::Release => (e.blkno != 0).then_some(SEF_OFFLINE),
            Unmap::PunchOffline => (e.blkno == 0 && e.flags & SEF_OFFLINE != 0).then_some(0),
        };
        if let Some(flags) = flags {
            for old in set_mapping(ctx.items, inode, s, t - s + 1, 0, flags).await? {
                if old.blkno != 0 {
                    ctx.backend
                        .free_data(DataRun {
                            blkno: old.blkno,
                            len: old.len,
                        })
                        .await?;
                }
            }
        }
        if t == LAST_BLOCK {
            return Ok(None);
        }
        cur = t + 1;
    }
    Ok(if cur > last { None } else { Some(cur) })
}

/// Preallocate UNWRITTEN blocks in the holes of `[first, last]`. Returns
/// the block to continue from (`None`: done) and whether the allocator
/// needs a commit first.
pub async fn preallocate(
    ctx: &DataCtx<'_>,
    inode: &mut Inode,
    first: u64,
    last: u64,
    max_runs: usize,
) -> FsResult<(Option<u64>, bool)> {
    let mut cur = first;
    for _ in 0..max_runs {
        if cur > last {
            return Ok((None, false));
        }
        let ext = next_extent(ctx.items, inode.ino, cur).await?;
        let hole_last = match ext {
            Some(e) if e.start <= cur => {
                if e.last() >= last {
                    return Ok((None, false));
                }
                cur = e.last() + 1;
                continue;
            }
            Some(e) => (e.start - 1).min(last),
            None => last,
        };
        let want = (hole_last - cur + 1).min(MAX_RUN_BLOCKS * 32);
        let run = match ctx.backend.alloc_data(want).await {
            Ok(r) => r,
            Err(Errno::ENOBUFS) => return Ok((Some(cur), true)),
            Err(e) => return Err(e),
        };
        if run.len == 0 || run.len > want {
            return Err(Errno::EIO);
        }
        set_mapping(ctx.items, inode, cur, run.len, run.blkno, SEF_UNWRITTEN).await?;
        cur += run.len;
    }
    Ok((if cur > last { None } else { Some(cur) }, false))
}

// -- archival: offline extents ----------------------------------------------

/// The first OFFLINE block of `ino` in `[first, last]`, if any.
pub async fn first_offline(
    items: &ItemCache,
    ino: u64,
    first: u64,
    last: u64,
) -> FsResult<Option<u64>> {
    let mut cur = first;
    while cur <= last {
        let Some(e) = next_extent(items, ino, cur).await? else {
            return Ok(None);
        };
        if e.start > last {
            return Ok(None);
        }
        if e.flags & SEF_OFFLINE != 0 {
            return Ok(Some(e.start.max(cur)));
        }
        if e.last() >= last {
            return Ok(None);
        }
        cur = e.last() + 1;
    }
    Ok(None)
}

/// Release blocks `[first, last]`: mapped blocks (written or UNWRITTEN)
/// are freed and become OFFLINE (unmapped) extents, merged with offline
/// neighbours; holes and offline blocks stay as they are. Touches at
/// most `max_extents` extents; returns the block to continue from, or
/// `None` when the range is done.
pub async fn release(
    ctx: &DataCtx<'_>,
    inode: &mut Inode,
    first: u64,
    last: u64,
    max_extents: usize,
) -> FsResult<Option<u64>> {
    unmap(ctx, inode, first, last, max_extents, Unmap::Release).await
}

/// Turn the OFFLINE unmapped extents of blocks `[first, last]` into holes
/// (`punch_offline`); online, unwritten and sparse parts stay. Stops after
/// `max_extents` extents: returns the block to continue from.
pub async fn punch_offline(
    ctx: &DataCtx<'_>,
    inode: &mut Inode,
    first: u64,
    last: u64,
    max_extents: usize,
) -> FsResult<Option<u64>> {
    unmap(ctx, inode, first, last, max_extents, Unmap::PunchOffline).await
}

/// Stage `data` at byte `off` (block aligned; the caller checked the
/// range against the file size): the OFFLINE blocks of the range get
/// fresh blocks holding the archived bytes (the rest of a final partial
/// block is zero); online blocks and holes of the range are left as they
/// are. The caller leaves `data_version`, `data_seq` and the times alone.
pub async fn stage(
    ctx: &DataCtx<'_>,
    inode: &mut Inode,
    off: u64,
    data: &[u8],
) -> FsResult<WriteOutcome> {
    assert!(off.is_multiple_of(BS));
    let end = off + data.len() as u64;
    let mut pos = off;
    while pos < end {
        let iblock = pos / BS;
        let last_block = (end - 1) / BS;
        let cap = last_block.min(iblock + MAX_RUN_BLOCKS - 1);
        let run_last = match next_extent(ctx.items, inode.ino, iblock).await? {
            Some(e) if e.start <= iblock && e.flags & SEF_OFFLINE != 0 && e.blkno == 0 => {
                let want = e.last().min(cap) - iblock + 1;
                let run = match ctx.backend.alloc_data(want).await {
                    Ok(r) => r,
                    Err(Errno::ENOBUFS) => {
                        return Ok(WriteOutcome {
                            written: (pos - off) as usize,
                            needs_commit: true,
                        })
                    }
                    Err(e) => return Err(e),
                };
                if run.len == 0 || run.len > want {
                    return Err(Errno::EIO);
                }
                let run_last = iblock + run.len - 1;
                let chunk_end = end.min((run_last + 1) * BS);
                let chunk = &data[(pos - off) as usize..(chunk_end - off) as usize];
                write_run(ctx.dev, run.blkno, run.len, pos, chunk, false)?;
                set_mapping(ctx.items, inode, iblock, run.len, run.blkno, 0).await?;
                run_last
            }
            // online (or unwritten) blocks: already staged
            Some(e) if e.start <= iblock => e.last().min(cap),
            // a hole: nothing was archived there
            Some(e) => (e.start - 1).min(cap),
            None => last_block,
        };
        pos = end.min((run_last + 1) * BS);
    }
    Ok(WriteOutcome {
        written: data.len(),
        needs_commit: false,
    })
}

/// Move the extents of source blocks `[cur, first + count)` of `from` to
/// the same places relative to `to_first` in `to` (scoutfs
/// `move_blocks`; the caller checked the arguments, the files and their
/// offline blocks): each source piece's blocks change owner, no data is
/// copied, and the source piece becomes a hole. Without `stage` the
/// target blocks must be holes, with `stage` one OFFLINE unmapped extent
/// (`EINVAL` otherwise; pieces moved before stay moved, as in the
/// reference). The target grows to cover what it got, keeping the
/// source's final partial block. Touches at most `max_extents` source
/// extents; returns the source block to continue from, or `None`.
#[allow(clippy::too_many_arguments)]
pub async fn move_blocks(
    items: &ItemCache,
    from: &mut Inode,
    to: &mut Inode,
    cur: u64,
    first: u64,
    count: u64,
    to_first: u64,
    stage: bool,
    max_extents: usize,
) -> FsResult<Option<u64>> {
    assert!(count > 0 && first <= cur);
    let last = first + (count - 1);
    let mut cur = cur;
    for _ in 0..max_extents {
        if cur > last {
            return Ok(None);
        }
        let Some(e) = next_extent(items, from.ino, cur).await? else {
            return Ok(None);
        };
        if e.start > last {
            return Ok(None);
        }
        let s = e.start.max(cur);
        let t = e.last().min(last);
        let len = t - s + 1;
        if e.blkno == 0 || e.flags & SEF_OFFLINE != 0 {
            // the caller refused sources with offline blocks; an unmapped
            // extent that is not offline is damage
            return Err(Errno::EIO);
        }
        let blkno = e.blkno + (s - e.start);
        let ts = to_first + (s - first);
        let tl = ts + (len - 1);
        let there = next_extent(items, to.ino, ts).await?;
        let fits = match there {
            Some(o) if stage => {
                o.start <= ts && o.last() >= tl && o.blkno == 0 && o.flags & SEF_OFFLINE != 0
            }
            Some(o) => o.start > tl,
            None => !stage,
        };
        if !fits {
            return Err(Errno::EINVAL);
        }
        set_mapping(items, to, ts, len, blkno, e.flags).await?;
        set_mapping(items, from, s, len, 0, 0).await?;
        // the target's size covers the moved blocks, but a source's final
        // partial block stays partial
        let mut to_end = (tl + 1).checked_mul(BS).ok_or(Errno::EFBIG)?;
        let from_end = (t + 1) * BS;
        if from_end > from.item.size {
            to_end -= from_end - from.item.size;
        }
        if to_end > to.item.size {
            to.item.size = to_end;
        }
        if t == LAST_BLOCK {
            return Ok(None);
        }
        cur = t + 1;
    }
    Ok(if cur > last { None } else { Some(cur) })
}
