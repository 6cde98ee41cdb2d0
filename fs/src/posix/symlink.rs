//! Symlink targets: SYMLINK items holding the target and its NUL in chunks
//! of up to 896 bytes; the inode's size is the stored length (target + 1).
//! Called by `vfs` (symlink, readlink); deletion is the inode's.

use alloc::vec::Vec;

use crate::errno::{Errno, FsResult};
use crate::format::items::{symlink_encode_chunks, symlink_key, symlink_nr_chunks};
use crate::format::SYMLINK_MAX_SIZE;
use crate::posix::item::ItemCache;

/// Create the chunks of a new symlink inode; returns the stored size.
pub fn create(items: &ItemCache, ino: u64, target: &[u8]) -> u64 {
    let chunks = symlink_encode_chunks(target);
    for (nr, c) in chunks.iter().enumerate() {
        items.create_new(symlink_key(ino, nr as u64), c);
    }
    target.len() as u64 + 1
}

/// Read the target back (without its NUL). A missing chunk, a bad length
/// or a missing NUL is corruption (`EIO`).
pub async fn read(items: &ItemCache, ino: u64, stored_size: u64) -> FsResult<Vec<u8>> {
    if stored_size == 0 || stored_size > SYMLINK_MAX_SIZE as u64 {
        return Err(Errno::EIO);
    }
    let mut out = Vec::with_capacity(stored_size as usize);
    for nr in 0..symlink_nr_chunks(stored_size) {
        let chunk = items
            .lookup(symlink_key(ino, nr))
            .await?
            .ok_or(Errno::EIO)?;
        out.extend_from_slice(&chunk);
    }
    if out.len() as u64 != stored_size || out.pop() != Some(0) || out.contains(&0) {
        return Err(Errno::EIO);
    }
    Ok(out)
}
