//! Orphan items: an inode whose last link is gone gets an ORPHAN item in
//! the same transaction; the item goes away with the inode's last item.
//! After a crash (or an unmount with the inode still open) the next mount
//! finds the orphans here and finishes the deletion. Called by `vfs`.
//!
//! On a cluster another mount may still have the inode open: before a
//! deletion the mount asks the server for every other mount's open map
//! of the inode's group ([`OthersOpen`]), and the orphan scanner tries
//! the orphans again every [`ORPHAN_SCAN_DELAY_MS`] (docs/cluster.md).

use alloc::vec::Vec;

use crate::cluster::msg::OmapBits;
use crate::errno::FsResult;
use crate::format::items::orphan_key;
use crate::posix::backend::BoxFut;
use crate::posix::item::ItemCache;

/// `orphan_scan_delay_ms`: the orphan scanner's period (reference
/// default 10 s, ±20 % jitter, 100..=60 000 ms).
pub const ORPHAN_SCAN_DELAY_MS: u64 = 10_000;
pub const ORPHAN_SCAN_DELAY_MIN_MS: u64 = 100;
pub const ORPHAN_SCAN_DELAY_MAX_MS: u64 = 60_000;

/// The scanner's next pause (ns) for a period of `delay_ms` (clamped to
/// the allowed range) and a random `r`: within ±20 % of the period.
pub fn scan_pause_ns(delay_ms: u64, r: u64) -> u64 {
    let ms = delay_ms.clamp(ORPHAN_SCAN_DELAY_MIN_MS, ORPHAN_SCAN_DELAY_MAX_MS);
    let ns = ms * 1_000_000;
    let jitter = ns / 5;
    ns - jitter + r % (2 * jitter + 1)
}

/// Which inodes of a group other mounts have open: the server's union of
/// their open maps (a cluster mount's client implements it).
pub trait OthersOpen {
    fn others_open<'a>(&'a self, group_nr: u64) -> BoxFut<'a, FsResult<OmapBits>>;
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_pauses_stay_within_a_fifth_of_the_clamped_period() {
        for r in [0, 1, 7, 4_000_000_000, u64::MAX] {
            let p = scan_pause_ns(10_000, r);
            assert!((8_000_000_000..=12_000_000_000).contains(&p), "{p}");
            let p = scan_pause_ns(1, r);
            assert!((80_000_000..=120_000_000).contains(&p), "{p}");
            let p = scan_pause_ns(u64::MAX, r);
            assert!((48_000_000_000..=72_000_000_000).contains(&p), "{p}");
        }
        assert_eq!(scan_pause_ns(10_000, 0), 8_000_000_000);
        assert_eq!(scan_pause_ns(10_000, 4_000_000_000), 12_000_000_000);
    }
}
