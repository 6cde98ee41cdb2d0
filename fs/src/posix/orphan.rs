//! Orphan items: an inode whose last link is gone gets an ORPHAN item in
//! the same transaction; the item goes away with the inode's last item.
//! After a crash (or an unmount with the inode still open) the next mount
//! finds the orphans here and finishes the deletion. Called by `vfs`.

use alloc::vec::Vec;

use crate::errno::FsResult;
use crate::format::items::orphan_key;
use crate::posix::item::ItemCache;

/// Mark `ino` (nlink just reached 0) for deletion after a crash.
pub fn create(items: &ItemCache, ino: u64) {
    items.write(orphan_key(ino), &[]);
}

pub fn delete(items: &ItemCache, ino: u64) {
    items.delete(orphan_key(ino));
}

/// Up to `max` orphaned inode numbers >= `from`.
pub async fn scan(items: &ItemCache, from: u64, max: usize) -> FsResult<Vec<u64>> {
    let mut out = Vec::new();
    let last = orphan_key(u64::MAX);
    let mut cur = orphan_key(from);
    while out.len() < max {
        let Some((key, _)) = items.next(cur, last).await? else {
            break;
        };
        out.push(key.second);
        if key == last {
            break;
        }
        cur = key.inc();
    }
    Ok(out)
}
