//! Value encodings and key constructors of the items a mount stores: the
//! FS zone (inode, xattr parts, dirents, symlink chunks, data extents) and
//! the ORPHAN, INODE_INDEX, XATTR_TOTL and XATTR_INDX zones.
//!
//! Pure byte layout, no I/O. Decoders never panic on bad input: a value of
//! the wrong size or with impossible fields is a [`BadItem`] (the callers
//! report it as `EIO`, as scoutfs reports corrupt items).

use alloc::vec;
use alloc::vec::Vec;

use super::key::{ty, zone, Key};
use super::{BTREE_MAX_VAL_LEN, NAME_LEN_MAX, XATTR_NAME_MAX, XATTR_SIZE_MAX};
use crate::errno::Errno;
use crate::runtime::env::Timespec;

/// An item value that does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadItem(pub &'static str);

impl From<BadItem> for Errno {
    fn from(_: BadItem) -> Errno {
        Errno::EIO
    }
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

fn le32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

// ---------------------------------------------------------------------------
// Timespec (16 bytes: sec le64, nsec le32, 4 pad)

pub const TIMESPEC_BYTES: usize = 16;

fn put_ts(b: &mut [u8], off: usize, ts: Timespec) {
    put64(b, off, ts.sec);
    put32(b, off + 8, ts.nsec);
    b[off + 12..off + 16].fill(0);
}

fn get_ts(b: &[u8], off: usize) -> Timespec {
    Timespec {
        sec: le64(b, off),
        nsec: le32(b, off + 8),
    }
}

// ---------------------------------------------------------------------------
// Inode item: `scoutfs_inode`

/// Bytes of a format-v1 inode (everything before `proj`).
pub const INODE_V1_BYTES: usize = 160;
/// Bytes of a format-v2 inode.
pub const INODE_V2_BYTES: usize = 168;

/// Inode flags.
pub const INO_FLAG_TRUNCATE: u32 = 0x1;
pub const INO_FLAG_RETENTION: u32 = 0x2;

/// The inode item value, field for field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InodeItem {
    pub size: u64,
    pub meta_seq: u64,
    pub data_seq: u64,
    pub data_version: u64,
    pub online_blocks: u64,
    pub offline_blocks: u64,
    pub next_readdir_pos: u64,
    pub next_xattr_id: u64,
    pub version: u64,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub rdev: u32,
    pub flags: u32,
    pub atime: Timespec,
    pub ctime: Timespec,
    pub mtime: Timespec,
    pub crtime: Timespec,
    /// Project id (format v2; always 0 in a v1 item).
    pub proj: u64,
}

/// The inode item size a writer of format `fmt_vers` emits.
pub fn inode_bytes_for_version(fmt_vers: u64) -> usize {
    if fmt_vers == 1 {
        INODE_V1_BYTES
    } else {
        INODE_V2_BYTES
    }
}

impl InodeItem {
    /// Encode at the size of format `fmt_vers` (v1 drops `proj`).
    pub fn encode(&self, fmt_vers: u64) -> Vec<u8> {
        let mut b = vec![0u8; INODE_V2_BYTES];
        put64(&mut b, 0, self.size);
        put64(&mut b, 8, self.meta_seq);
        put64(&mut b, 16, self.data_seq);
        put64(&mut b, 24, self.data_version);
        put64(&mut b, 32, self.online_blocks);
        put64(&mut b, 40, self.offline_blocks);
        put64(&mut b, 48, self.next_readdir_pos);
        put64(&mut b, 56, self.next_xattr_id);
        put64(&mut b, 64, self.version);
        put32(&mut b, 72, self.nlink);
        put32(&mut b, 76, self.uid);
        put32(&mut b, 80, self.gid);
        put32(&mut b, 84, self.mode);
        put32(&mut b, 88, self.rdev);
        put32(&mut b, 92, self.flags);
        put_ts(&mut b, 96, self.atime);
        put_ts(&mut b, 112, self.ctime);
        put_ts(&mut b, 128, self.mtime);
        put_ts(&mut b, 144, self.crtime);
        put64(&mut b, 160, self.proj);
        b.truncate(inode_bytes_for_version(fmt_vers));
        b
    }

    /// Decode a v1 (160 B) or v2 (168 B) inode item.
    pub fn decode(b: &[u8]) -> Result<InodeItem, BadItem> {
        if b.len() != INODE_V1_BYTES && b.len() != INODE_V2_BYTES {
            return Err(BadItem("inode item size"));
        }
        Ok(InodeItem {
            size: le64(b, 0),
            meta_seq: le64(b, 8),
            data_seq: le64(b, 16),
            data_version: le64(b, 24),
            online_blocks: le64(b, 32),
            offline_blocks: le64(b, 40),
            next_readdir_pos: le64(b, 48),
            next_xattr_id: le64(b, 56),
            version: le64(b, 64),
            nlink: le32(b, 72),
            uid: le32(b, 76),
            gid: le32(b, 80),
            mode: le32(b, 84),
            rdev: le32(b, 88),
            flags: le32(b, 92),
            atime: get_ts(b, 96),
            ctime: get_ts(b, 112),
            mtime: get_ts(b, 128),
            crtime: get_ts(b, 144),
            proj: if b.len() == INODE_V2_BYTES {
                le64(b, 160)
            } else {
                0
            },
        })
    }
}

pub fn inode_key(ino: u64) -> Key {
    Key::fs(ino, ty::INODE, 0, 0)
}

// ---------------------------------------------------------------------------
// Directory entries: `scoutfs_dirent`, 32-byte header then the name.

pub const DIRENT_HEADER_BYTES: usize = 32;
/// Readdir positions: 0 and 1 are "." and "..".
pub const DIRENT_FIRST_POS: u64 = 2;
pub const DIRENT_LAST_POS: u64 = u64::MAX - 1;

/// scoutfs' own dirent type codes (not the Linux `DT_*` values).
pub mod sdt {
    pub const FIFO: u8 = 0;
    pub const CHR: u8 = 1;
    pub const DIR: u8 = 2;
    pub const BLK: u8 = 3;
    pub const REG: u8 = 4;
    pub const LNK: u8 = 5;
    pub const SOCK: u8 = 6;
    pub const WHT: u8 = 7;
}

/// A dirent value (identical in the DIRENT, READDIR and LINK_BACKREF items).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirent {
    pub ino: u64,
    pub hash: u64,
    pub pos: u64,
    /// A scoutfs type code ([`sdt`]).
    pub dtype: u8,
    pub name: Vec<u8>,
}

impl Dirent {
    pub fn encode(&self) -> Vec<u8> {
        assert!(!self.name.is_empty() && self.name.len() <= NAME_LEN_MAX);
        let mut b = vec![0u8; DIRENT_HEADER_BYTES + self.name.len()];
        put64(&mut b, 0, self.ino);
        put64(&mut b, 8, self.hash);
        put64(&mut b, 16, self.pos);
        b[24] = self.dtype;
        b[DIRENT_HEADER_BYTES..].copy_from_slice(&self.name);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Dirent, BadItem> {
        if b.len() <= DIRENT_HEADER_BYTES || b.len() > DIRENT_HEADER_BYTES + NAME_LEN_MAX {
            return Err(BadItem("dirent name length"));
        }
        if b[24] > sdt::WHT {
            return Err(BadItem("dirent type"));
        }
        Ok(Dirent {
            ino: le64(b, 0),
            hash: le64(b, 8),
            pos: le64(b, 16),
            dtype: b[24],
            name: b[DIRENT_HEADER_BYTES..].to_vec(),
        })
    }

    /// Only the name of an encoded dirent (for cheap name comparisons).
    pub fn name_of(b: &[u8]) -> Result<&[u8], BadItem> {
        if b.len() <= DIRENT_HEADER_BYTES || b.len() > DIRENT_HEADER_BYTES + NAME_LEN_MAX {
            return Err(BadItem("dirent name length"));
        }
        Ok(&b[DIRENT_HEADER_BYTES..])
    }
}

/// DIRENT item: lookup by name hash, in the directory.
pub fn dirent_key(dir: u64, hash: u64, pos: u64) -> Key {
    Key::fs(dir, ty::DIRENT, hash, pos)
}

/// READDIR item: entries in position order, in the directory.
pub fn readdir_key(dir: u64, pos: u64) -> Key {
    Key::fs(dir, ty::READDIR, pos, 0)
}

/// LINK_BACKREF item: in the target inode, by parent dir and position.
pub fn backref_key(target: u64, dir: u64, pos: u64) -> Key {
    Key::fs(target, ty::LINK_BACKREF, dir, pos)
}

// ---------------------------------------------------------------------------
// Xattrs: part 0 = 8-byte header, name, first value bytes; further parts
// continue the value. Every part is at most BTREE_MAX_VAL_LEN bytes.

pub const XATTR_HEADER_BYTES: usize = 8;
pub const XATTR_PART_MAX: usize = BTREE_MAX_VAL_LEN;

/// Number of items an xattr with these lengths takes.
pub fn xattr_nr_parts(name_len: usize, val_len: usize) -> usize {
    (XATTR_HEADER_BYTES + name_len + val_len).div_ceil(XATTR_PART_MAX)
}

/// Split an xattr into its part values (part 0 first).
pub fn xattr_encode_parts(name: &[u8], value: &[u8]) -> Vec<Vec<u8>> {
    assert!(!name.is_empty() && name.len() <= XATTR_NAME_MAX);
    assert!(value.len() <= XATTR_SIZE_MAX);
    let mut whole = Vec::with_capacity(XATTR_HEADER_BYTES + name.len() + value.len());
    whole.extend_from_slice(&(value.len() as u16).to_le_bytes());
    whole.push(name.len() as u8);
    whole.extend_from_slice(&[0u8; 5]);
    whole.extend_from_slice(name);
    whole.extend_from_slice(value);
    let parts: Vec<Vec<u8>> = whole.chunks(XATTR_PART_MAX).map(|c| c.to_vec()).collect();
    debug_assert_eq!(parts.len(), xattr_nr_parts(name.len(), value.len()));
    parts
}

/// The decoded header of an xattr's part 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XattrHeader {
    pub val_len: usize,
    pub name_len: usize,
}

impl XattrHeader {
    /// Parse the header of a part-0 value and check the name fits in it.
    pub fn decode(part0: &[u8]) -> Result<XattrHeader, BadItem> {
        if part0.len() < XATTR_HEADER_BYTES {
            return Err(BadItem("xattr header"));
        }
        let h = XattrHeader {
            val_len: le16(part0, 0) as usize,
            name_len: part0[2] as usize,
        };
        let whole = XATTR_HEADER_BYTES + h.name_len + h.val_len;
        let want = whole.min(XATTR_PART_MAX);
        if h.name_len == 0 || part0.len() != want {
            return Err(BadItem("xattr part 0 length"));
        }
        Ok(h)
    }

    pub fn nr_parts(&self) -> usize {
        xattr_nr_parts(self.name_len, self.val_len)
    }

    pub fn name<'a>(&self, part0: &'a [u8]) -> &'a [u8] {
        &part0[XATTR_HEADER_BYTES..XATTR_HEADER_BYTES + self.name_len]
    }

    /// The value bytes carried in part 0.
    pub fn value_head<'a>(&self, part0: &'a [u8]) -> &'a [u8] {
        &part0[XATTR_HEADER_BYTES + self.name_len..]
    }

    /// Expected length of part `nr` (>= 1).
    pub fn part_len(&self, nr: usize) -> usize {
        let whole = XATTR_HEADER_BYTES + self.name_len + self.val_len;
        let start = nr * XATTR_PART_MAX;
        whole.saturating_sub(start).min(XATTR_PART_MAX)
    }
}

pub fn xattr_key(ino: u64, name_hash: u32, id: u64, part: u8) -> Key {
    Key::new(zone::FS, ino, ty::XATTR, name_hash as u64, id, part)
}

// ---------------------------------------------------------------------------
// Symlink targets: the target plus its NUL, in chunks of up to 896 bytes.

pub const SYMLINK_CHUNK_MAX: usize = BTREE_MAX_VAL_LEN;

pub fn symlink_key(ino: u64, nr: u64) -> Key {
    Key::fs(ino, ty::SYMLINK, nr, 0)
}

/// Chunks for a target (without NUL; the NUL is appended here).
pub fn symlink_encode_chunks(target: &[u8]) -> Vec<Vec<u8>> {
    let mut whole = Vec::with_capacity(target.len() + 1);
    whole.extend_from_slice(target);
    whole.push(0);
    whole
        .chunks(SYMLINK_CHUNK_MAX)
        .map(|c| c.to_vec())
        .collect()
}

/// How many chunks a stored size (target length + 1) takes.
pub fn symlink_nr_chunks(stored_size: u64) -> u64 {
    stored_size.div_ceil(SYMLINK_CHUNK_MAX as u64)
}

// ---------------------------------------------------------------------------
// Data extents: key (ino, DATA_EXTENT, last logical block, len), value
// `scoutfs_data_extent_val` {blkno le64, flags u8, pad 7}.

pub const DATA_EXTENT_VAL_BYTES: usize = 16;
/// Data is in the archive, not on the device.
pub const SEF_OFFLINE: u8 = 1 << 0;
/// Blocks are allocated but read as zeros.
pub const SEF_UNWRITTEN: u8 = 1 << 1;
pub const SEF_KNOWN: u8 = SEF_OFFLINE | SEF_UNWRITTEN;

/// The last logical 4 KiB block a 64-bit file offset can reach.
pub const EXTENT_LAST_BLOCK: u64 = u64::MAX >> 12;

/// One extent of a file's block map. `blkno` 0 means unmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataExtent {
    /// First logical 4 KiB block.
    pub start: u64,
    pub len: u64,
    pub blkno: u64,
    pub flags: u8,
}

impl DataExtent {
    pub fn last(&self) -> u64 {
        self.start + self.len - 1
    }

    pub fn key(&self, ino: u64) -> Key {
        data_extent_key(ino, self.last(), self.len)
    }

    pub fn encode_val(&self) -> Vec<u8> {
        let mut b = vec![0u8; DATA_EXTENT_VAL_BYTES];
        put64(&mut b, 0, self.blkno);
        b[8] = self.flags;
        b
    }

    /// Rebuild from a key and value.
    pub fn decode(key: &Key, val: &[u8]) -> Result<DataExtent, BadItem> {
        if val.len() != DATA_EXTENT_VAL_BYTES {
            return Err(BadItem("extent value size"));
        }
        let (last, len) = (key.second, key.third);
        if len == 0 || len - 1 > last || last > EXTENT_LAST_BLOCK {
            return Err(BadItem("extent key"));
        }
        let flags = val[8];
        if flags & !SEF_KNOWN != 0 {
            return Err(BadItem("extent flags"));
        }
        let blkno = le64(val, 0);
        // the whole run must have byte offsets that fit in 64 bits, so
        // `phys * 4096` never overflows for any block of it
        if blkno != 0
            && blkno
                .checked_add(len)
                .is_none_or(|end| end > EXTENT_LAST_BLOCK + 1)
        {
            return Err(BadItem("extent blkno"));
        }
        Ok(DataExtent {
            start: last - (len - 1),
            len,
            blkno,
            flags,
        })
    }
}

pub fn data_extent_key(ino: u64, last: u64, len: u64) -> Key {
    Key::fs(ino, ty::DATA_EXTENT, last, len)
}

// ---------------------------------------------------------------------------
// Orphans and inode indexes (empty values).

pub fn orphan_key(ino: u64) -> Key {
    Key::new(zone::ORPHAN, 0, ty::ORPHAN, ino, 0, 0)
}

/// `ty` is `INODE_INDEX_META_SEQ` or `INODE_INDEX_DATA_SEQ`.
pub fn inode_index_key(index_type: u8, major: u64, ino: u64) -> Key {
    Key::new(zone::INODE_INDEX, 0, index_type, major, ino, 0)
}

// ---------------------------------------------------------------------------
// .totl. and .indx. tag items.

pub const TOTL_VAL_BYTES: usize = 16;

/// A `.totl.` total (fs_root) or delta (log trees); counts are two's
/// complement so a delta can be negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TotlVal {
    pub total: u64,
    pub count: u64,
}

impl TotlVal {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; TOTL_VAL_BYTES];
        put64(&mut b, 0, self.total);
        put64(&mut b, 8, self.count);
        b
    }

    pub fn decode(b: &[u8]) -> Result<TotlVal, BadItem> {
        if b.len() != TOTL_VAL_BYTES {
            return Err(BadItem("totl value size"));
        }
        Ok(TotlVal {
            total: le64(b, 0),
            count: le64(b, 8),
        })
    }
}

pub fn totl_key(a: u64, b: u64, c: u64) -> Key {
    Key::new(zone::XATTR_TOTL, a, 0, b, c, 0)
}

/// `.indx.` key: (major, minor, ino, xattr id) bit-packed so that the key
/// order is that tuple's order.
pub fn indx_key(major: u8, minor: u64, ino: u64, xid: u64) -> Key {
    Key::new(
        zone::XATTR_INDX,
        ((major as u64) << 56) | (minor >> 8),
        0,
        (minor << 56) | (ino >> 8),
        (ino << 56) | (xid >> 8),
        (xid & 0xff) as u8,
    )
}

/// Unpack an `.indx.` key into (major, minor, ino, xid).
pub fn indx_key_fields(k: &Key) -> (u8, u64, u64, u64) {
    let major = (k.first >> 56) as u8;
    let minor = (k.first << 8) | (k.second >> 56);
    let ino = (k.second << 8) | (k.third >> 56);
    let xid = (k.third << 8) | k.fourth as u64;
    (major, minor, ino, xid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The root inode item of the reference mkfs's v2 golden image
    /// (`meta-v2.img`, fs_root leaf at LG block 2, value offset 62344).
    const GOLDEN_ROOT_V2: &str = "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000020000000000000000000000000000000000000000000000020000000000000000000000ed41000000000000000000004c9b026b0000000080acf820000000004c9b026b0000000080acf820000000004c9b026b0000000080acf820000000004c9b026b0000000080acf820000000000000000000000000";
    /// Same, from `meta-v1.img` (160 bytes, no proj).
    const GOLDEN_ROOT_V1: &str = "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000020000000000000000000000000000000000000000000000020000000000000000000000ed41000000000000000000004c9b026b0000000090798421000000004c9b026b0000000090798421000000004c9b026b0000000090798421000000004c9b026b000000009079842100000000";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn golden_root_inode_v2() {
        let b = unhex(GOLDEN_ROOT_V2);
        assert_eq!(b.len(), INODE_V2_BYTES);
        let i = InodeItem::decode(&b).unwrap();
        // print-meta-v2.txt: ino 1 size 0 version 0 proj 0 nlink 2 uid 0
        // gid 0 mode 040755 next_readdir_pos 2, times 1795332940.553168000
        assert_eq!(i.nlink, 2);
        assert_eq!(i.mode, 0o040755);
        assert_eq!(i.next_readdir_pos, 2);
        assert_eq!((i.size, i.version, i.proj, i.meta_seq), (0, 0, 0, 0));
        let t = Timespec {
            sec: 1795332940,
            nsec: 553168000,
        };
        assert_eq!((i.atime, i.ctime, i.mtime, i.crtime), (t, t, t, t));
        assert_eq!(i.encode(2), b);
    }

    #[test]
    fn golden_root_inode_v1() {
        let b = unhex(GOLDEN_ROOT_V1);
        assert_eq!(b.len(), INODE_V1_BYTES);
        let i = InodeItem::decode(&b).unwrap();
        assert_eq!(i.mtime.nsec, 562330000);
        assert_eq!(i.encode(1), b);
        assert_eq!(i.encode(2).len(), INODE_V2_BYTES);
        assert!(InodeItem::decode(&b[..100]).is_err());
    }

    #[test]
    fn inode_field_offsets() {
        let i = InodeItem {
            size: 1,
            meta_seq: 2,
            data_seq: 3,
            data_version: 4,
            online_blocks: 5,
            offline_blocks: 6,
            next_readdir_pos: 7,
            next_xattr_id: 8,
            version: 9,
            nlink: 10,
            uid: 11,
            gid: 12,
            mode: 13,
            rdev: 14,
            flags: 15,
            atime: Timespec { sec: 16, nsec: 17 },
            ctime: Timespec { sec: 18, nsec: 19 },
            mtime: Timespec { sec: 20, nsec: 21 },
            crtime: Timespec { sec: 22, nsec: 23 },
            proj: 24,
        };
        let b = i.encode(2);
        for (off, v) in [(0, 1u64), (8, 2), (16, 3), (24, 4), (32, 5), (40, 6)] {
            assert_eq!(le64(&b, off), v);
        }
        for (off, v) in [(48, 7u64), (56, 8), (64, 9), (160, 24)] {
            assert_eq!(le64(&b, off), v);
        }
        for (off, v) in [
            (72, 10u32),
            (76, 11),
            (80, 12),
            (84, 13),
            (88, 14),
            (92, 15),
        ] {
            assert_eq!(le32(&b, off), v);
        }
        for (off, s, n) in [(96, 16, 17), (112, 18, 19), (128, 20, 21), (144, 22, 23)] {
            assert_eq!(le64(&b, off), s);
            assert_eq!(le32(&b, off + 8), n);
            assert_eq!(&b[off + 12..off + 16], &[0, 0, 0, 0]);
        }
        assert_eq!(InodeItem::decode(&b).unwrap(), i);
        let v1 = InodeItem::decode(&i.encode(1)).unwrap();
        assert_eq!(v1.proj, 0);
    }

    #[test]
    fn dirent_layout() {
        let d = Dirent {
            ino: 0x1122,
            hash: 0xaabb_ccdd_0011_2233,
            pos: 7,
            dtype: sdt::REG,
            name: b"hello".to_vec(),
        };
        let b = d.encode();
        let mut want = Vec::new();
        want.extend_from_slice(&0x1122u64.to_le_bytes());
        want.extend_from_slice(&0xaabb_ccdd_0011_2233u64.to_le_bytes());
        want.extend_from_slice(&7u64.to_le_bytes());
        want.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(b"hello");
        assert_eq!(b, want);
        assert_eq!(Dirent::decode(&b).unwrap(), d);
        assert_eq!(Dirent::name_of(&b).unwrap(), b"hello");
        assert!(Dirent::decode(&b[..32]).is_err());
        let mut bad = b.clone();
        bad[24] = 8;
        assert!(Dirent::decode(&bad).is_err());
        assert_eq!(dirent_key(5, 9, 3), Key::new(16, 5, 12, 9, 3, 0));
        assert_eq!(readdir_key(5, 3), Key::new(16, 5, 16, 3, 0, 0));
        assert_eq!(backref_key(8, 5, 3), Key::new(16, 8, 20, 5, 3, 0));
    }

    #[test]
    fn xattr_parts_layout() {
        let name = b"user.a";
        let parts = xattr_encode_parts(name, b"xyz");
        assert_eq!(parts.len(), 1);
        assert_eq!(
            parts[0],
            [&[3, 0, 6, 0, 0, 0, 0, 0][..], b"user.a", b"xyz"].concat()
        );
        let h = XattrHeader::decode(&parts[0]).unwrap();
        assert_eq!((h.val_len, h.name_len), (3, 6));
        assert_eq!(h.name(&parts[0]), name);
        assert_eq!(h.value_head(&parts[0]), b"xyz");

        // 8 + 6 + 2000 = 2014 bytes: parts of 896, 896, 222.
        let value: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
        let parts = xattr_encode_parts(name, &value);
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [896, 896, 222]
        );
        let h = XattrHeader::decode(&parts[0]).unwrap();
        assert_eq!(h.nr_parts(), 3);
        assert_eq!((h.part_len(1), h.part_len(2)), (896, 222));
        let mut back = h.value_head(&parts[0]).to_vec();
        back.extend_from_slice(&parts[1]);
        back.extend_from_slice(&parts[2]);
        assert_eq!(back, value);
        assert_eq!(xattr_nr_parts(255, 65535), 74);
        // exactly one full part
        assert_eq!(xattr_nr_parts(6, 896 - 14), 1);
        assert_eq!(xattr_nr_parts(6, 896 - 13), 2);
        assert!(XattrHeader::decode(&parts[0][..100]).is_err());
        assert_eq!(
            xattr_key(3, 0xdead_beef, 4, 2),
            Key::new(16, 3, 8, 0xdead_beef, 4, 2)
        );
    }

    #[test]
    fn symlink_chunks() {
        let t = vec![b'a'; 1000];
        let c = symlink_encode_chunks(&t);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].len(), 896);
        assert_eq!(c[1].len(), 105);
        assert_eq!(*c[1].last().unwrap(), 0);
        assert_eq!(symlink_nr_chunks(1001), 2);
        assert_eq!(symlink_nr_chunks(896), 1);
        assert_eq!(symlink_key(9, 1), Key::new(16, 9, 24, 1, 0, 0));
    }

    #[test]
    fn extent_layout() {
        let e = DataExtent {
            start: 10,
            len: 5,
            blkno: 0x1234,
            flags: SEF_UNWRITTEN,
        };
        let k = e.key(7);
        assert_eq!(k, Key::new(16, 7, 28, 14, 5, 0));
        let v = e.encode_val();
        assert_eq!(v, [0x34, 0x12, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(DataExtent::decode(&k, &v).unwrap(), e);
        assert!(DataExtent::decode(&Key::new(16, 7, 28, 3, 5, 0), &v).is_err());
        assert!(DataExtent::decode(&Key::new(16, 7, 28, u64::MAX, 5, 0), &v).is_err());
        assert!(DataExtent::decode(&k, &v[..8]).is_err());
        let mut badf = v.clone();
        badf[8] = 4;
        assert!(DataExtent::decode(&k, &badf).is_err());
        // a run whose byte offsets would overflow (phys * 4096) is bad
        for (blkno, ok) in [
            (EXTENT_LAST_BLOCK + 1 - 5, true),
            (EXTENT_LAST_BLOCK + 2 - 5, false),
            (u64::MAX - 2, false),
        ] {
            let mut bv = v.clone();
            bv[..8].copy_from_slice(&blkno.to_le_bytes());
            assert_eq!(DataExtent::decode(&k, &bv).is_ok(), ok, "blkno {blkno:#x}");
        }
    }

    #[test]
    fn index_orphan_tag_keys() {
        // The golden mkfs root index item prints as 4.0.4.0.1.0.
        assert_eq!(
            format!("{}", inode_index_key(ty::INODE_INDEX_META_SEQ, 0, 1)),
            "4.0.4.0.1.0"
        );
        assert_eq!(orphan_key(77), Key::new(8, 0, 4, 77, 0, 0));
        assert_eq!(totl_key(1, 2, 3), Key::new(12, 1, 0, 2, 3, 0));
        let k = indx_key(
            0xab,
            0x0102_0304_0506_0708,
            0x1112_1314_1516_1718,
            0x2122_2324_2526_2728,
        );
        assert_eq!(
            indx_key_fields(&k),
            (
                0xab,
                0x0102_0304_0506_0708,
                0x1112_1314_1516_1718,
                0x2122_2324_2526_2728
            )
        );
        assert_eq!(k.first, 0xab01_0203_0405_0607);
        assert_eq!(k.fourth, 0x28);
        // order follows (major, minor, ino, xid)
        assert!(indx_key(1, 5, 9, 0) < indx_key(1, 6, 0, 0));
        assert!(indx_key(1, 5, 9, 300) < indx_key(1, 5, 10, 0));
        let t = TotlVal {
            total: 5,
            count: u64::MAX,
        };
        assert_eq!(TotlVal::decode(&t.encode()).unwrap(), t);
    }
}
