//! The vocabulary of the POSIX API: what callers pass in and get back.
//!
//! These types are the contract between the filesystem (`vfs::Mount`) and
//! its front ends: the 9P2000.L server, the host FUSE mount and the admin
//! shell. They carry no behaviour beyond small helpers; every operation is
//! an `async fn` on `vfs::Mount` returning [`FsResult`].
//!
//! Conventions:
//! * names are raw bytes without NUL or `/`, 1..=255 long;
//! * `mode` is the Linux `st_mode`: file type bits (`S_IFMT`) plus
//!   permission bits;
//! * times are wall-clock [`Timespec`]s.

use alloc::vec::Vec;

pub use crate::errno::{Errno, FsResult};
pub use crate::runtime::env::Timespec;

/// An inode number.
pub type Ino = u64;

/// File type bits of `mode` (Linux values).
pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_ISUID: u32 = 0o4000;
pub const S_ISGID: u32 = 0o2000;
pub const S_ISVTX: u32 = 0o1000;

/// `d_type` codes, as stored in scoutfs dirents and returned by readdir.
pub const DT_FIFO: u8 = 1;
pub const DT_CHR: u8 = 2;
pub const DT_DIR: u8 = 4;
pub const DT_BLK: u8 = 6;
pub const DT_REG: u8 = 8;
pub const DT_LNK: u8 = 10;
pub const DT_SOCK: u8 = 12;

pub const DT_UNKNOWN: u8 = 0;
pub const DT_WHT: u8 = 14;

/// The Linux `d_type` of a scoutfs dirent type code (FIFO=0, CHR, DIR,
/// BLK, REG, LNK, SOCK, WHT=7); unknown codes give `DT_UNKNOWN`.
pub fn dtype_from_scoutfs(code: u8) -> u8 {
    match code {
        0 => DT_FIFO,
        1 => DT_CHR,
        2 => DT_DIR,
        3 => DT_BLK,
        4 => DT_REG,
        5 => DT_LNK,
        6 => DT_SOCK,
        7 => DT_WHT,
        _ => DT_UNKNOWN,
    }
}

/// The scoutfs dirent type code stored for a mode.
pub fn scoutfs_dtype_of_mode(mode: u32) -> u8 {
    match mode & S_IFMT {
        S_IFIFO => 0,
        S_IFCHR => 1,
        S_IFDIR => 2,
        S_IFBLK => 3,
        S_IFLNK => 5,
        S_IFSOCK => 6,
        _ => 4,
    }
}

/// The Linux `d_type` for a mode.
pub fn dtype_of_mode(mode: u32) -> u8 {
    match mode & S_IFMT {
        S_IFIFO => DT_FIFO,
        S_IFCHR => DT_CHR,
        S_IFDIR => DT_DIR,
        S_IFBLK => DT_BLK,
        S_IFLNK => DT_LNK,
        S_IFSOCK => DT_SOCK,
        _ => DT_REG,
    }
}

/// Access bits for [`Cred`] checks (`access(2)` values).
pub const MAY_EXEC: u32 = 1;
pub const MAY_WRITE: u32 = 2;
pub const MAY_READ: u32 = 4;

/// Who is asking. Root (uid 0) bypasses permission bits, as on Linux.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Cred {
    pub fn root() -> Cred {
        Cred {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    pub fn user(uid: u32, gid: u32) -> Cred {
        Cred {
            uid,
            gid,
            groups: Vec::new(),
        }
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// Everything `stat` and the archival tools report about an inode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    /// 512-byte units allocated (online blocks), as `st_blocks`.
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    /// Bumped on every change to the inode (the VFS i_version); 9P uses it
    /// as the qid version.
    pub version: u64,
    pub data_version: u64,
    pub meta_seq: u64,
    pub data_seq: u64,
    pub online_blocks: u64,
    pub offline_blocks: u64,
    /// scoutfs inode flags (`TRUNCATE`, `RETENTION`).
    pub flags: u32,
    pub proj: u64,
}

impl Attr {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }
}

/// How to set a timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// The filesystem's current time.
    Now,
    At(Timespec),
}

/// The changes of a `setattr`; `None` leaves a field alone. A `size` change
/// is a truncate or an extension.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    pub ctime: Option<Timespec>,
}

/// One directory entry from `readdir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    /// Pass this back as `pos` to continue after this entry. Positions are
    /// stable across inserts and deletes of other entries.
    pub next_pos: u64,
    /// A `DT_*` code.
    pub dtype: u8,
    pub name: Vec<u8>,
}

/// `rename` flags (Linux `renameat2` values).
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// `open` flags the filesystem cares about (Linux values).
pub const O_ACCMODE: u32 = 0o3;
pub const O_RDONLY: u32 = 0o0;
pub const O_WRONLY: u32 = 0o1;
pub const O_RDWR: u32 = 0o2;
pub const O_CREAT: u32 = 0o100;
pub const O_EXCL: u32 = 0o200;
pub const O_TRUNC: u32 = 0o1000;
pub const O_APPEND: u32 = 0o2000;
pub const O_DIRECTORY: u32 = 0o200000;

/// `setxattr` flags.
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

/// `fallocate` modes (Linux values).
pub const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
pub const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;

/// `statfs` results. Block counts are in `bsize` units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    pub bsize: u32,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub fsid: u64,
    pub namelen: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_follows_mode() {
        assert_eq!(dtype_of_mode(S_IFDIR | 0o755), DT_DIR);
        assert_eq!(dtype_of_mode(S_IFLNK | 0o777), DT_LNK);
        assert_eq!(dtype_of_mode(S_IFREG | 0o644), DT_REG);
        for m in [
            S_IFIFO, S_IFCHR, S_IFDIR, S_IFBLK, S_IFREG, S_IFLNK, S_IFSOCK,
        ] {
            assert_eq!(
                dtype_from_scoutfs(scoutfs_dtype_of_mode(m)),
                dtype_of_mode(m)
            );
        }
        assert_eq!(scoutfs_dtype_of_mode(S_IFREG), 4);
        assert_eq!(dtype_from_scoutfs(7), DT_WHT);
        assert_eq!(dtype_from_scoutfs(8), DT_UNKNOWN);
        assert!(Cred::user(5, 6).in_group(6));
        assert!(!Cred::user(5, 6).in_group(7));
    }
}
