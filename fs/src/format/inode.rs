//! `scoutfs_inode`: the value of FS-zone INODE items (160 bytes in format
//! v1, 168 in v2 which adds `proj`). Readers accept both sizes.

use super::le::*;
use crate::env::Timespec;

pub const INODE_FMT_V1_BYTES: usize = 160;
pub const INODE_FMT_V2_BYTES: usize = 168;

/// Inode flags.
pub const INODE_FLAG_TRUNCATE: u32 = 0x1;
pub const INODE_FLAG_RETENTION: u32 = 0x2;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inode {
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
    pub proj: u64,
}

/// Bytes of an inode value in format version `fmt_vers`.
pub fn inode_bytes(fmt_vers: u64) -> usize {
    if fmt_vers >= 2 {
        INODE_FMT_V2_BYTES
    } else {
        INODE_FMT_V1_BYTES
    }
}

fn get_ts(b: &[u8], o: usize) -> Timespec {
    Timespec {
        sec: get_u64(b, o),
        nsec: get_u32(b, o + 8),
    }
}

fn put_ts(b: &mut [u8], o: usize, t: &Timespec) {
    put_u64(b, o, t.sec);
    put_u32(b, o + 8, t.nsec);
    put_u32(b, o + 12, 0);
}

impl Inode {
    /// Decode a v1 (160) or v2 (168) inode value; other sizes are invalid.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != INODE_FMT_V1_BYTES && b.len() != INODE_FMT_V2_BYTES {
            return None;
        }
        let q = |i: usize| get_u64(b, i * 8);
        let w = |i: usize| get_u32(b, 72 + i * 4);
        Some(Inode {
            size: q(0),
            meta_seq: q(1),
            data_seq: q(2),
            data_version: q(3),
            online_blocks: q(4),
            offline_blocks: q(5),
            next_readdir_pos: q(6),
            next_xattr_id: q(7),
            version: q(8),
            nlink: w(0),
            uid: w(1),
            gid: w(2),
            mode: w(3),
            rdev: w(4),
            flags: w(5),
            atime: get_ts(b, 96),
            ctime: get_ts(b, 112),
            mtime: get_ts(b, 128),
            crtime: get_ts(b, 144),
            proj: if b.len() == INODE_FMT_V2_BYTES {
                get_u64(b, 160)
            } else {
                0
            },
        })
    }

    /// Encode for format version `fmt_vers` (v1 drops `proj`).
    pub fn encode(&self, fmt_vers: u64) -> alloc::vec::Vec<u8> {
        let mut b = alloc::vec![0u8; inode_bytes(fmt_vers)];
        let qs = [
            self.size,
            self.meta_seq,
            self.data_seq,
            self.data_version,
            self.online_blocks,
            self.offline_blocks,
            self.next_readdir_pos,
            self.next_xattr_id,
            self.version,
        ];
        for (i, v) in qs.iter().enumerate() {
            put_u64(&mut b, i * 8, *v);
        }
        let ws = [
            self.nlink, self.uid, self.gid, self.mode, self.rdev, self.flags,
        ];
        for (i, v) in ws.iter().enumerate() {
            put_u32(&mut b, 72 + i * 4, *v);
        }
        put_ts(&mut b, 96, &self.atime);
        put_ts(&mut b, 112, &self.ctime);
        put_ts(&mut b, 128, &self.mtime);
        put_ts(&mut b, 144, &self.crtime);
        if b.len() == INODE_FMT_V2_BYTES {
            put_u64(&mut b, 160, self.proj);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_v2_round_trip() {
        let i = Inode {
            size: 1,
            nlink: 2,
            mode: 0o40755,
            mtime: Timespec { sec: 9, nsec: 8 },
            proj: 77,
            ..Default::default()
        };
        let v2 = i.encode(2);
        assert_eq!(v2.len(), 168);
        assert_eq!(Inode::decode(&v2), Some(i));
        let v1 = i.encode(1);
        assert_eq!(v1.len(), 160);
        assert_eq!(Inode::decode(&v1), Some(Inode { proj: 0, ..i }));
        assert_eq!(Inode::decode(&v1[..100]), None);
    }
}
