//! Inode items and their index items.
//!
//! Owns the rules that tie an inode item to the INODE_INDEX zone: every
//! inode has a META_SEQ index item keyed by its `meta_seq`, regular files
//! also a DATA_SEQ item keyed by `data_seq`. Each rewrite of the item sets
//! `meta_seq` to the open transaction's seq (and bumps `version`), and the
//! index items move with the seqs. Called by `vfs`, `data` and `orphan`.

use crate::cluster::lock::{LockMode, LockRange, LockSink};
use crate::errno::{Errno, FsResult};
use crate::format::items::{
    inode_index_key, inode_key, InodeItem, DIRENT_FIRST_POS, DIRENT_LAST_POS, INO_FLAG_RETENTION,
};
use crate::format::key::ty;
use crate::posix::backend::Backend;
use crate::posix::item::ItemCache;
use crate::posix::perm::Owner;
use crate::posix::types::{Attr, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

/// An inode as loaded: its item and the seqs its index items are keyed by.
#[derive(Clone, Debug)]
pub struct Inode {
    pub ino: u64,
    pub item: InodeItem,
    indexed_meta_seq: u64,
    indexed_data_seq: u64,
}

/// Does this mode get a DATA_SEQ index item?
pub fn has_data_index(mode: u32) -> bool {
    mode & S_IFMT == S_IFREG
}

impl Inode {
    pub fn owner(&self) -> Owner {
        Owner {
            mode: self.item.mode,
            uid: self.item.uid,
            gid: self.item.gid,
        }
    }

    pub fn kind(&self) -> u32 {
        self.item.mode & S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == S_IFDIR
    }

    pub fn is_reg(&self) -> bool {
        self.kind() == S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.kind() == S_IFLNK
    }

    /// Retention-flagged inodes refuse modification.
    pub fn check_retention(&self) -> FsResult<()> {
        if self.item.flags & INO_FLAG_RETENTION != 0 {
            Err(Errno::EPERM)
        } else {
            Ok(())
        }
    }

    /// File contents changed in this transaction.
    pub fn touch_data(&mut self, trans_seq: u64) {
        self.item.data_seq = trans_seq;
        self.item.data_version = self.item.data_version.wrapping_add(1);
    }

    /// The next readdir position of a directory (`EOVERFLOW` once the
    /// positions are used up; they are never reused).
    pub fn take_readdir_pos(&mut self) -> FsResult<u64> {
        let pos = self.item.next_readdir_pos;
        if !(DIRENT_FIRST_POS..=DIRENT_LAST_POS).contains(&pos) {
            return Err(Errno::EOVERFLOW);
        }
        self.item.next_readdir_pos = pos + 1;
        Ok(pos)
    }

    pub fn attr(&self) -> Attr {
        let i = &self.item;
        // scoutfs stores a symlink's size with its NUL; stat reports the
        // target length.
        let size = if self.is_symlink() {
            i.size.saturating_sub(1)
        } else {
            i.size
        };
        Attr {
            ino: self.ino,
            mode: i.mode,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev,
            size,
            blocks: i
                .online_blocks
                .saturating_add(i.offline_blocks)
                .saturating_mul(8),
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.crtime,
            version: i.version,
            data_version: i.data_version,
            meta_seq: i.meta_seq,
            data_seq: i.data_seq,
            online_blocks: i.online_blocks,
            offline_blocks: i.offline_blocks,
            flags: i.flags,
            proj: i.proj,
        }
    }
}

/// The index locks [`store`] needs at transaction seq `trans_seq`: the
/// groups of the index items it deletes (the indexed seqs) and creates
/// (`trans_seq`; for regular files also the data seq, which is either
/// unchanged or `trans_seq`). Write-only: index items are blind writes.
pub fn store_locks(inode: &Inode, trans_seq: u64, set: &mut impl LockSink) {
    let meta = ty::INODE_INDEX_META_SEQ;
    set.add_lock(
        LockRange::inode_index(meta, inode.indexed_meta_seq),
        LockMode::WriteOnly,
    );
    set.add_lock(LockRange::inode_index(meta, trans_seq), LockMode::WriteOnly);
    if has_data_index(inode.item.mode) {
        let data = ty::INODE_INDEX_DATA_SEQ;
        set.add_lock(
            LockRange::inode_index(data, inode.indexed_data_seq),
            LockMode::WriteOnly,
        );
        set.add_lock(LockRange::inode_index(data, trans_seq), LockMode::WriteOnly);
    }
}

/// The index locks [`create`] needs for an inode of `mode`.
pub fn create_locks(mode: u32, trans_seq: u64, set: &mut impl LockSink) {
    set.add_lock(
        LockRange::inode_index(ty::INODE_INDEX_META_SEQ, trans_seq),
        LockMode::WriteOnly,
    );
    if has_data_index(mode) {
        set.add_lock(
            LockRange::inode_index(ty::INODE_INDEX_DATA_SEQ, trans_seq),
            LockMode::WriteOnly,
        );
    }
}

/// The index locks [`delete`] needs.
pub fn delete_locks(inode: &Inode, set: &mut impl LockSink) {
    set.add_lock(
        LockRange::inode_index(ty::INODE_INDEX_META_SEQ, inode.indexed_meta_seq),
        LockMode::WriteOnly,
    );
    if has_data_index(inode.item.mode) {
        set.add_lock(
            LockRange::inode_index(ty::INODE_INDEX_DATA_SEQ, inode.indexed_data_seq),
            LockMode::WriteOnly,
        );
    }
}

/// Read an inode; `ENOENT` when there is no such inode.
pub async fn load(items: &ItemCache, ino: u64) -> FsResult<Inode> {
    let val = items.lookup(inode_key(ino)).await?.ok_or(Errno::ENOENT)?;
    let item = InodeItem::decode(&val)?;
    Ok(Inode {
        ino,
        indexed_meta_seq: item.meta_seq,
        indexed_data_seq: item.data_seq,
        item,
    })
}

/// Create the items of a brand-new inode (a fresh inode number): the inode
/// item and its index items, with both seqs at the open transaction.
pub fn create(items: &ItemCache, backend: &dyn Backend, ino: u64, mut item: InodeItem) -> Inode {
    let seq = backend.trans_seq();
    item.meta_seq = seq;
    item.data_seq = seq;
    items.create_new(inode_key(ino), &item.encode(backend.format_version()));
    items.create_new(inode_index_key(ty::INODE_INDEX_META_SEQ, seq, ino), &[]);
    if has_data_index(item.mode) {
        items.create_new(inode_index_key(ty::INODE_INDEX_DATA_SEQ, seq, ino), &[]);
    }
    Inode {
        ino,
        item,
        indexed_meta_seq: seq,
        indexed_data_seq: seq,
    }
}

fn move_index(items: &ItemCache, index_type: u8, ino: u64, old: u64, new: u64) {
    if old != new {
        items.delete(inode_index_key(index_type, old, ino));
        items.create_new(inode_index_key(index_type, new, ino), &[]);
    }
}

/// Write back a changed inode: `meta_seq` becomes the transaction's seq,
/// `version` is bumped, and the index items follow the seqs.
pub fn store(items: &ItemCache, backend: &dyn Backend, inode: &mut Inode) {
    let seq = backend.trans_seq();
    inode.item.meta_seq = seq;
    inode.item.version = inode.item.version.wrapping_add(1);
    move_index(
        items,
        ty::INODE_INDEX_META_SEQ,
        inode.ino,
        inode.indexed_meta_seq,
        seq,
    );
    inode.indexed_meta_seq = seq;
    if has_data_index(inode.item.mode) {
        let ds = inode.item.data_seq;
        move_index(
            items,
            ty::INODE_INDEX_DATA_SEQ,
            inode.ino,
            inode.indexed_data_seq,
            ds,
        );
        inode.indexed_data_seq = ds;
    }
    items.write(
        inode_key(inode.ino),
        &inode.item.encode(backend.format_version()),
    );
}

/// Delete the inode item and its index items (the last step of deleting
/// an inode).
pub fn delete(items: &ItemCache, inode: &Inode) {
    items.delete(inode_index_key(
        ty::INODE_INDEX_META_SEQ,
        inode.indexed_meta_seq,
        inode.ino,
    ));
    if has_data_index(inode.item.mode) {
        items.delete(inode_index_key(
            ty::INODE_INDEX_DATA_SEQ,
            inode.indexed_data_seq,
            inode.ino,
        ));
    }
    items.delete(inode_key(inode.ino));
}
