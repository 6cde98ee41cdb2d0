//! Directory entries: the DIRENT (by name hash), READDIR (by position) and
//! LINK_BACKREF (by parent, in the target) items of each link.
//!
//! Owns name lookup (walk every DIRENT with the name's hash, compare
//! names), adding and removing the three items of a link, readdir in
//! position order and finding a directory's parent through its backref.
//! Callers (`vfs`) keep the inode fields (`next_readdir_pos`, size, nlink).

use alloc::vec::Vec;

use crate::errno::{Errno, FsResult};
use crate::format::hash::dirent_name_hash;
use crate::format::items::{backref_key, dirent_key, readdir_key, Dirent, DIRENT_LAST_POS};
use crate::format::key::Key;
use crate::posix::item::ItemCache;
use crate::posix::types::scoutfs_dtype_of_mode;

/// Find the entry called `name` in `dir`.
pub async fn lookup(items: &ItemCache, dir: u64, name: &[u8]) -> FsResult<Option<Dirent>> {
    let hash = dirent_name_hash(name);
    let last = dirent_key(dir, hash, u64::MAX);
    let mut cur = dirent_key(dir, hash, 0);
    while let Some((key, val)) = items.next(cur, last).await? {
        if Dirent::name_of(&val)? == name {
            let d = Dirent::decode(&val)?;
            if d.hash != hash || d.pos != key.third {
                return Err(Errno::EIO);
            }
            return Ok(Some(d));
        }
        if key == last {
            break;
        }
        cur = key.inc();
    }
    Ok(None)
}

/// Create the three items of a new link at the fresh position `pos`.
pub fn add(items: &ItemCache, dir: u64, name: &[u8], pos: u64, ino: u64, mode: u32) -> Dirent {
    let d = Dirent {
        ino,
        hash: dirent_name_hash(name),
        pos,
        dtype: scoutfs_dtype_of_mode(mode),
        name: name.to_vec(),
    };
    let val = d.encode();
    items.create_new(dirent_key(dir, d.hash, pos), &val);
    items.create_new(readdir_key(dir, pos), &val);
    items.create_new(backref_key(ino, dir, pos), &val);
    d
}

/// Delete the three items of an existing link.
pub fn remove(items: &ItemCache, dir: u64, d: &Dirent) {
    items.delete(dirent_key(dir, d.hash, d.pos));
    items.delete(readdir_key(dir, d.pos));
    items.delete(backref_key(d.ino, dir, d.pos));
}

/// The parent of a directory (its only link backref), or None.
pub async fn parent_of(items: &ItemCache, ino: u64) -> FsResult<Option<u64>> {
    let first = backref_key(ino, 0, 0);
    let last = backref_key(ino, u64::MAX, u64::MAX);
    Ok(items.next(first, last).await?.map(|(k, _)| k.second))
}

/// Up to `max` links to `ino` at or after `(dir, pos)`, in that order,
/// each with its directory (from the LINK_BACKREF items).
pub async fn backrefs(
    items: &ItemCache,
    ino: u64,
    dir: u64,
    pos: u64,
    max: usize,
) -> FsResult<Vec<(u64, Dirent)>> {
    let mut out = Vec::new();
    let last = backref_key(ino, u64::MAX, u64::MAX);
    let mut cur = backref_key(ino, dir, pos);
    while out.len() < max {
        let Some((key, val)) = items.next(cur, last).await? else {
            break;
        };
        let d = Dirent::decode(&val)?;
        if d.pos != key.third || d.ino != ino {
            return Err(Errno::EIO);
        }
        out.push((key.second, d));
        if key == last {
            break;
        }
        cur = key.inc();
    }
    Ok(out)
}

/// Up to `max` entries at positions >= `pos`, in position order.
pub async fn read_from(items: &ItemCache, dir: u64, pos: u64, max: usize) -> FsResult<Vec<Dirent>> {
    let mut out = Vec::new();
    let last = readdir_key(dir, DIRENT_LAST_POS);
    let mut cur = readdir_key(dir, pos);
    while out.len() < max {
        let Some((key, val)) = items.next(cur, last).await? else {
            break;
        };
        let d = Dirent::decode(&val)?;
        if d.pos != key.second {
            return Err(Errno::EIO);
        }
        out.push(d);
        cur = Key::inc(&key);
    }
    Ok(out)
}
