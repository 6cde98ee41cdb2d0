//! The FUSE wire format: the messages the Linux kernel writes to
//! `/dev/fuse` (and virtio-fs puts in a request's descriptors), decoded
//! into [`Request`]s, and the replies encoded back.
//!
//! Layouts are the facts of the Linux uapi `fuse.h` (protocol 7.x, all
//! little-endian, structures 8-byte aligned). Decoding checks every length
//! and offset: a message whose header is readable but whose body is not
//! gets a [`DecodeError`] carrying its header (the server answers
//! `EINVAL`), a frame too short for a header carries none (dropped).

use alloc::vec::Vec;

use scoutvm_fs::posix::types::Attr;

/// `fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// `fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;
/// The protocol major version spoken.
pub const KERNEL_VERSION: u32 = 7;
/// The highest minor version spoken; clients asking for more get this.
pub const KERNEL_MINOR_VERSION: u32 = 31;
/// The lowest minor version served (7.12: the current `mknod`/`create`
/// layouts with a umask, 64-bit `fuse_attr` with `blksize`).
pub const MINOR_MIN: u32 = 12;
/// The node id of the root directory (also its inode number).
pub const ROOT_ID: u64 = 1;
/// `fuse_attr`.
pub const ATTR_LEN: usize = 88;
/// `fuse_entry_out`.
pub const ENTRY_OUT_LEN: usize = 40 + ATTR_LEN;
/// `fuse_attr_out`.
pub const ATTR_OUT_LEN: usize = 16 + ATTR_LEN;
/// `fuse_open_out`.
pub const OPEN_OUT_LEN: usize = 16;
/// `fuse_init_out` since 7.23.
pub const INIT_OUT_LEN: usize = 64;
/// `fuse_init_out` before 7.23.
pub const INIT_OUT_COMPAT_LEN: usize = 24;
/// `fuse_kstatfs` in `fuse_statfs_out`.
pub const STATFS_OUT_LEN: usize = 80;
/// `fuse_dirent` without its name.
pub const DIRENT_LEN: usize = 24;
/// `fuse_lk_out`.
pub const LK_OUT_LEN: usize = 24;
/// `fuse_write_out`, `fuse_getxattr_out`.
pub const WRITE_OUT_LEN: usize = 8;
/// `fuse_lseek_out`.
pub const LSEEK_OUT_LEN: usize = 8;
/// Longest name in a request.
pub const NAME_MAX: usize = 255;
/// Longest symlink target or xattr name carried.
pub const PATH_MAX: usize = 4096;

/// Opcodes (`enum fuse_opcode`).
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
}

/// `fuse_init_in.flags` / `fuse_init_out.flags` bits.
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const POSIX_LOCKS: u32 = 1 << 1;
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const READDIRPLUS_AUTO: u32 = 1 << 14;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
    pub const CACHE_SYMLINKS: u32 = 1 << 23;
}

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
}

/// `fcntl` lock types in `fuse_file_lock.type`.
pub const F_RDLCK: u32 = 0;
pub const F_WRLCK: u32 = 1;
pub const F_UNLCK: u32 = 2;
/// `fuse_lk_in.lk_flags`: a `flock(2)` lock, not a POSIX one.
pub const LK_FLOCK: u32 = 1;
/// `lseek` whences the kernel forwards.
pub const SEEK_DATA: u32 = 3;
pub const SEEK_HOLE: u32 = 4;

/// `fuse_in_header`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Extension bytes at the end, in 8-byte units (7.37+; we speak 7.31,
    /// so a client sends none, but their length is honoured).
    pub total_extlen: u16,
}

impl InHeader {
    /// The header at the start of `b`, if `b` holds one.
    pub fn decode(b: &[u8]) -> Option<InHeader> {
        let mut r = Reader::new(b.get(..IN_HEADER_LEN)?);
        let h = InHeader {
            len: r.u32().ok()?,
            opcode: r.u32().ok()?,
            unique: r.u64().ok()?,
            nodeid: r.u64().ok()?,
            uid: r.u32().ok()?,
            gid: r.u32().ok()?,
            pid: r.u32().ok()?,
            total_extlen: r.u16().ok()?,
        };
        Some(h)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.len);
        put_u32(out, self.opcode);
        put_u64(out, self.unique);
        put_u64(out, self.nodeid);
        put_u32(out, self.uid);
        put_u32(out, self.gid);
        put_u32(out, self.pid);
        put_u16(out, self.total_extlen);
        put_u16(out, 0);
    }
}

/// `fuse_out_header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutHeader {
    pub len: u32,
    /// 0 or a negative errno.
    pub error: i32,
    pub unique: u64,
}

impl OutHeader {
    pub fn decode(b: &[u8]) -> Option<OutHeader> {
        let mut r = Reader::new(b.get(..OUT_HEADER_LEN)?);
        Some(OutHeader {
            len: r.u32().ok()?,
            error: r.u32().ok()? as i32,
            unique: r.u64().ok()?,
        })
    }
}

/// A message that cannot be served as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than `fuse_in_header`, or `len` disagrees with the frame:
    /// nothing to answer.
    NoHeader,
    /// The header is readable, the body is not (short, missing a NUL, a
    /// length out of range).
    BadBody(InHeader),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::NoHeader => f.write_str("no valid fuse_in_header"),
            DecodeError::BadBody(h) => write!(
                f,
                "malformed body of opcode {} (len {}, unique {})",
                h.opcode, h.len, h.unique
            ),
        }
    }
}

/// A short read inside a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Short;

/// A bounds-checked little-endian cursor.
pub struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b, pos: 0 }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Short> {
        let end = self.pos.checked_add(n).ok_or(Short)?;
        let s = self.b.get(self.pos..end).ok_or(Short)?;
        self.pos = end;
        Ok(s)
    }

    pub fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_le_bytes(
            self.bytes(2)?.try_into().map_err(|_| Short)?,
        ))
    }

    pub fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_le_bytes(
            self.bytes(4)?.try_into().map_err(|_| Short)?,
        ))
    }

    pub fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_le_bytes(
            self.bytes(8)?.try_into().map_err(|_| Short)?,
        ))
    }

    /// A NUL-terminated string of at most `max` bytes (NUL excluded).
    pub fn cstr(&mut self, max: usize) -> Result<&'a [u8], Short> {
        let rest = &self.b[self.pos..];
        let n = rest.iter().position(|&c| c == 0).ok_or(Short)?;
        if n > max {
            return Err(Short);
        }
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let r = &self.b[self.pos..];
        self.pos = self.b.len();
        r
    }

    pub fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
}

/// `fuse_setattr_in`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetattrIn {
    pub valid: u32,
    pub fh: u64,
    pub size: u64,
    pub lock_owner: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `fuse_file_lock` with the rest of `fuse_lk_in`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LkIn {
    pub fh: u64,
    pub owner: u64,
    pub start: u64,
    /// Inclusive; `i64::MAX as u64` (`OFFSET_MAX`) means to the end.
    pub end: u64,
    pub ty: u32,
    pub pid: u32,
    pub lk_flags: u32,
}

/// One decoded request body.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Init {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u32,
    },
    Destroy,
    Lookup {
        name: &'a [u8],
    },
    Forget {
        nlookup: u64,
    },
    /// `(nodeid, nlookup)` pairs, as many as the body holds.
    BatchForget {
        forgets: Vec<(u64, u64)>,
    },
    Getattr {
        flags: u32,
        fh: u64,
    },
    Setattr(SetattrIn),
    Readlink,
    Symlink {
        name: &'a [u8],
        target: &'a [u8],
    },
    Mknod {
        mode: u32,
        rdev: u32,
        umask: u32,
        name: &'a [u8],
    },
    Mkdir {
        mode: u32,
        umask: u32,
        name: &'a [u8],
    },
    Unlink {
        name: &'a [u8],
    },
    Rmdir {
        name: &'a [u8],
    },
    /// `RENAME` (flags 0) and `RENAME2`.
    Rename {
        newdir: u64,
        flags: u32,
        old: &'a [u8],
        new: &'a [u8],
    },
    Link {
        oldnodeid: u64,
        name: &'a [u8],
    },
    Open {
        flags: u32,
    },
    Opendir {
        flags: u32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Readdir {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Readdirplus {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        write_flags: u32,
        data: &'a [u8],
    },
    Statfs,
    Release {
        fh: u64,
        flags: u32,
        release_flags: u32,
        lock_owner: u64,
    },
    Releasedir {
        fh: u64,
    },
    Fsync {
        fh: u64,
        flags: u32,
    },
    Fsyncdir {
        fh: u64,
        flags: u32,
    },
    Setxattr {
        name: &'a [u8],
        value: &'a [u8],
        flags: u32,
    },
    Getxattr {
        name: &'a [u8],
        size: u32,
    },
    Listxattr {
        size: u32,
    },
    Removexattr {
        name: &'a [u8],
    },
    Flush {
        fh: u64,
        lock_owner: u64,
    },
    Getlk(LkIn),
    Setlk(LkIn),
    Setlkw(LkIn),
    Access {
        mask: u32,
    },
    Create {
        flags: u32,
        mode: u32,
        umask: u32,
        name: &'a [u8],
    },
    Interrupt {
        unique: u64,
    },
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    },
    Lseek {
        fh: u64,
        offset: u64,
        whence: u32,
    },
    CopyFileRange {
        fh_in: u64,
        off_in: u64,
        nodeid_out: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u64,
    },
    /// `NOTIFY_REPLY`: the answer to a notification we never send.
    NotifyReply,
    /// An opcode not served (`ENOSYS`).
    Unknown(u32),
}

impl Request<'_> {
    /// Requests the kernel expects no reply to.
    pub fn is_unanswered(opcode: u32) -> bool {
        matches!(
            opcode,
            op::FORGET | op::BATCH_FORGET | op::INTERRUPT | op::NOTIFY_REPLY
        )
    }
}

fn read_in(r: &mut Reader<'_>) -> Result<(u64, u64, u32), Short> {
    let fh = r.u64()?;
    let offset = r.u64()?;
    let size = r.u32()?;
    let _read_flags = r.u32()?;
    let _lock_owner = r.u64()?;
    let _flags = r.u32()?;
    let _padding = r.u32()?;
    Ok((fh, offset, size))
}

fn lk_in(r: &mut Reader<'_>) -> Result<LkIn, Short> {
    let fh = r.u64()?;
    let owner = r.u64()?;
    let start = r.u64()?;
    let end = r.u64()?;
    let ty = r.u32()?;
    let pid = r.u32()?;
    let lk_flags = r.u32()?;
    let _padding = r.u32()?;
    Ok(LkIn {
        fh,
        owner,
        start,
        end,
        ty,
        pid,
        lk_flags,
    })
}

fn name<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], Short> {
    r.cstr(NAME_MAX)
}

/// Decode one whole frame (its `len` must equal the frame's length).
pub fn decode_request(frame: &[u8]) -> Result<(InHeader, Request<'_>), DecodeError> {
    let h = InHeader::decode(frame).ok_or(DecodeError::NoHeader)?;
    if h.len as usize != frame.len() {
        return Err(DecodeError::NoHeader);
    }
    let ext = h.total_extlen as usize * 8;
    let body_end = frame
        .len()
        .checked_sub(ext)
        .filter(|&e| e >= IN_HEADER_LEN)
        .ok_or(DecodeError::BadBody(h))?;
    let body = &frame[IN_HEADER_LEN..body_end];
    decode_body(&h, body)
        .map(|r| (h, r))
        .map_err(|Short| DecodeError::BadBody(h))
}

fn decode_body<'a>(h: &InHeader, body: &'a [u8]) -> Result<Request<'a>, Short> {
    let r = &mut Reader::new(body);
    let req = match h.opcode {
        op::INIT => {
            let major = r.u32()?;
            let minor = r.u32()?;
            // Before 7.6 the body ended here.
            let (max_readahead, flags) = if r.remaining() >= 8 {
                (r.u32()?, r.u32()?)
            } else {
                (0, 0)
            };
            r.rest();
            Request::Init {
                major,
                minor,
                max_readahead,
                flags,
            }
        }
        op::DESTROY => Request::Destroy,
        op::LOOKUP => Request::Lookup { name: name(r)? },
        op::FORGET => Request::Forget { nlookup: r.u64()? },
        op::BATCH_FORGET => {
            let count = r.u32()? as usize;
            let _dummy = r.u32()?;
            // Each pair is 16 bytes, so the body bounds the count.
            if count > r.remaining() / 16 {
                return Err(Short);
            }
            let mut forgets = Vec::with_capacity(count);
            for _ in 0..count {
                forgets.push((r.u64()?, r.u64()?));
            }
            Request::BatchForget { forgets }
        }
        op::GETATTR => {
            let flags = r.u32()?;
            let _dummy = r.u32()?;
            Request::Getattr {
                flags,
                fh: r.u64()?,
            }
        }
        op::SETATTR => {
            let valid = r.u32()?;
            let _padding = r.u32()?;
            let fh = r.u64()?;
            let size = r.u64()?;
            let lock_owner = r.u64()?;
            let atime = r.u64()?;
            let mtime = r.u64()?;
            let ctime = r.u64()?;
            let atimensec = r.u32()?;
            let mtimensec = r.u32()?;
            let ctimensec = r.u32()?;
            let mode = r.u32()?;
            let _unused4 = r.u32()?;
            let uid = r.u32()?;
            let gid = r.u32()?;
            let _unused5 = r.u32()?;
            Request::Setattr(SetattrIn {
                valid,
                fh,
                size,
                lock_owner,
                atime,
                mtime,
                ctime,
                atimensec,
                mtimensec,
                ctimensec,
                mode,
                uid,
                gid,
            })
        }
        op::READLINK => Request::Readlink,
        op::SYMLINK => Request::Symlink {
            name: name(r)?,
            target: r.cstr(PATH_MAX)?,
        },
        op::MKNOD => {
            let mode = r.u32()?;
            let rdev = r.u32()?;
            let umask = r.u32()?;
            let _padding = r.u32()?;
            Request::Mknod {
                mode,
                rdev,
                umask,
                name: name(r)?,
            }
        }
        op::MKDIR => {
            let mode = r.u32()?;
            let umask = r.u32()?;
            Request::Mkdir {
                mode,
                umask,
                name: name(r)?,
            }
        }
        op::UNLINK => Request::Unlink { name: name(r)? },
        op::RMDIR => Request::Rmdir { name: name(r)? },
        op::RENAME | op::RENAME2 => {
            let newdir = r.u64()?;
            let flags = if h.opcode == op::RENAME2 {
                let f = r.u32()?;
                let _padding = r.u32()?;
                f
            } else {
                0
            };
            Request::Rename {
                newdir,
                flags,
                old: name(r)?,
                new: name(r)?,
            }
        }
        op::LINK => Request::Link {
            oldnodeid: r.u64()?,
            name: name(r)?,
        },
        op::OPEN | op::OPENDIR => {
            let flags = r.u32()?;
            let _open_flags = r.u32()?;
            if h.opcode == op::OPEN {
                Request::Open { flags }
            } else {
                Request::Opendir { flags }
            }
        }
        op::READ | op::READDIR | op::READDIRPLUS => {
            let (fh, offset, size) = read_in(r)?;
            match h.opcode {
                op::READ => Request::Read { fh, offset, size },
                op::READDIR => Request::Readdir { fh, offset, size },
                _ => Request::Readdirplus { fh, offset, size },
            }
        }
        op::WRITE => {
            let fh = r.u64()?;
            let offset = r.u64()?;
            let size = r.u32()? as usize;
            let write_flags = r.u32()?;
            let _lock_owner = r.u64()?;
            let _flags = r.u32()?;
            let _padding = r.u32()?;
            if r.remaining() != size {
                return Err(Short);
            }
            Request::Write {
                fh,
                offset,
                write_flags,
                data: r.bytes(size)?,
            }
        }
        op::STATFS => Request::Statfs,
        op::RELEASE | op::RELEASEDIR => {
            let fh = r.u64()?;
            let flags = r.u32()?;
            let release_flags = r.u32()?;
            let lock_owner = r.u64()?;
            if h.opcode == op::RELEASE {
                Request::Release {
                    fh,
                    flags,
                    release_flags,
                    lock_owner,
                }
            } else {
                Request::Releasedir { fh }
            }
        }
        op::FSYNC | op::FSYNCDIR => {
            let fh = r.u64()?;
            let flags = r.u32()?;
            let _padding = r.u32()?;
            if h.opcode == op::FSYNC {
                Request::Fsync { fh, flags }
            } else {
                Request::Fsyncdir { fh, flags }
            }
        }
        op::SETXATTR => {
            let size = r.u32()? as usize;
            let flags = r.u32()?;
            let name = r.cstr(NAME_MAX)?;
            if r.remaining() != size {
                return Err(Short);
            }
            Request::Setxattr {
                name,
                value: r.bytes(size)?,
                flags,
            }
        }
        op::GETXATTR | op::LISTXATTR => {
            let size = r.u32()?;
            let _padding = r.u32()?;
            if h.opcode == op::GETXATTR {
                Request::Getxattr {
                    name: r.cstr(NAME_MAX)?,
                    size,
                }
            } else {
                Request::Listxattr { size }
            }
        }
        op::REMOVEXATTR => Request::Removexattr {
            name: r.cstr(NAME_MAX)?,
        },
        op::FLUSH => {
            let fh = r.u64()?;
            let _unused = r.u32()?;
            let _padding = r.u32()?;
            Request::Flush {
                fh,
                lock_owner: r.u64()?,
            }
        }
        op::GETLK => Request::Getlk(lk_in(r)?),
        op::SETLK => Request::Setlk(lk_in(r)?),
        op::SETLKW => Request::Setlkw(lk_in(r)?),
        op::ACCESS => {
            let mask = r.u32()?;
            let _padding = r.u32()?;
            Request::Access { mask }
        }
        op::CREATE => {
            let flags = r.u32()?;
            let mode = r.u32()?;
            let umask = r.u32()?;
            let _open_flags = r.u32()?;
            Request::Create {
                flags,
                mode,
                umask,
                name: name(r)?,
            }
        }
        op::INTERRUPT => Request::Interrupt { unique: r.u64()? },
        op::FALLOCATE => {
            let fh = r.u64()?;
            let offset = r.u64()?;
            let length = r.u64()?;
            let mode = r.u32()?;
            let _padding = r.u32()?;
            Request::Fallocate {
                fh,
                offset,
                length,
                mode,
            }
        }
        op::LSEEK => {
            let fh = r.u64()?;
            let offset = r.u64()?;
            let whence = r.u32()?;
            let _padding = r.u32()?;
            Request::Lseek { fh, offset, whence }
        }
        op::COPY_FILE_RANGE => Request::CopyFileRange {
            fh_in: r.u64()?,
            off_in: r.u64()?,
            nodeid_out: r.u64()?,
            fh_out: r.u64()?,
            off_out: r.u64()?,
            len: r.u64()?,
            flags: r.u64()?,
        },
        op::NOTIFY_REPLY => Request::NotifyReply,
        other => Request::Unknown(other),
    };
    Ok(req)
}

// -- encoding ------------------------------------------------------------------

pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Start a reply in `out` (empty): a header whose length
/// [`finish_reply`] fills in.
pub fn start_reply(out: &mut Vec<u8>, unique: u64) {
    debug_assert!(out.is_empty());
    put_u32(out, 0);
    put_u32(out, 0);
    put_u64(out, unique);
}

/// Set the reply's length field; `out` is the whole reply.
pub fn finish_reply(out: &mut [u8]) {
    let len = u32::try_from(out.len()).expect("replies are bounded by max_write");
    out[..4].copy_from_slice(&len.to_le_bytes());
}

/// An error reply (`errno` positive).
pub fn error_reply(unique: u64, errno: i32) -> Vec<u8> {
    debug_assert!(errno > 0 && errno < 4096);
    let mut out = Vec::with_capacity(OUT_HEADER_LEN);
    put_u32(&mut out, OUT_HEADER_LEN as u32);
    put_u32(&mut out, (-errno) as u32);
    put_u64(&mut out, unique);
    out
}

/// Validity of cached entries and attributes the server hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub entry_ns: u64,
    pub attr_ns: u64,
}

fn split_ns(ns: u64) -> (u64, u32) {
    (ns / 1_000_000_000, (ns % 1_000_000_000) as u32)
}

/// `fuse_attr`.
pub fn put_attr(out: &mut Vec<u8>, a: &Attr) {
    put_u64(out, a.ino);
    put_u64(out, a.size);
    put_u64(out, a.blocks);
    put_u64(out, a.atime.sec);
    put_u64(out, a.mtime.sec);
    put_u64(out, a.ctime.sec);
    put_u32(out, a.atime.nsec);
    put_u32(out, a.mtime.nsec);
    put_u32(out, a.ctime.nsec);
    put_u32(out, a.mode);
    put_u32(out, a.nlink);
    put_u32(out, a.uid);
    put_u32(out, a.gid);
    put_u32(out, a.rdev);
    put_u32(out, 4096); // blksize
    put_u32(out, 0); // flags
}

/// `fuse_entry_out` for `a` (node id = inode number).
pub fn put_entry(out: &mut Vec<u8>, a: &Attr, v: Validity) {
    let (es, ens) = split_ns(v.entry_ns);
    let (as_, ans) = split_ns(v.attr_ns);
    put_u64(out, a.ino);
    put_u64(out, 0); // generation: inode numbers are never reused
    put_u64(out, es);
    put_u64(out, as_);
    put_u32(out, ens);
    put_u32(out, ans);
    put_attr(out, a);
}

/// `fuse_attr_out`.
pub fn put_attr_out(out: &mut Vec<u8>, a: &Attr, v: Validity) {
    let (s, ns) = split_ns(v.attr_ns);
    put_u64(out, s);
    put_u32(out, ns);
    put_u32(out, 0);
    put_attr(out, a);
}

/// `fuse_open_out`.
pub fn put_open_out(out: &mut Vec<u8>, fh: u64, open_flags: u32) {
    put_u64(out, fh);
    put_u32(out, open_flags);
    put_u32(out, 0);
}

/// The size of a `fuse_dirent` with a `name_len`-byte name, padded.
pub fn dirent_size(name_len: usize) -> usize {
    (DIRENT_LEN + name_len + 7) & !7
}

/// `fuse_dirent`, padded to 8 bytes.
pub fn put_dirent(out: &mut Vec<u8>, ino: u64, off: u64, dtype: u8, name: &[u8]) {
    let start = out.len();
    put_u64(out, ino);
    put_u64(out, off);
    put_u32(out, name.len() as u32);
    put_u32(out, dtype as u32);
    out.extend_from_slice(name);
    out.resize(start + dirent_size(name.len()), 0);
}

/// Build a request frame (for clients and tests): header fields and the
/// body, `len` computed.
pub fn encode_request(
    opcode: u32,
    unique: u64,
    nodeid: u64,
    uid: u32,
    gid: u32,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(IN_HEADER_LEN + body.len());
    InHeader {
        len: (IN_HEADER_LEN + body.len()) as u32,
        opcode,
        unique,
        nodeid,
        uid,
        gid,
        pid: 1,
        total_extlen: 0,
    }
    .encode(&mut out);
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checks() {
        let f = encode_request(op::LOOKUP, 7, 1, 1000, 100, b"abc\0");
        let (h, r) = decode_request(&f).unwrap();
        assert_eq!((h.unique, h.nodeid, h.uid, h.gid), (7, 1, 1000, 100));
        assert_eq!(r, Request::Lookup { name: b"abc" });
        // No NUL: the body is bad but the header answers.
        let f = encode_request(op::LOOKUP, 8, 1, 0, 0, b"abc");
        assert!(matches!(decode_request(&f), Err(DecodeError::BadBody(h)) if h.unique == 8));
        // len disagreeing with the frame.
        let mut f = encode_request(op::STATFS, 9, 1, 0, 0, b"");
        f.push(0);
        assert_eq!(decode_request(&f), Err(DecodeError::NoHeader));
        assert_eq!(decode_request(&f[..20]), Err(DecodeError::NoHeader));
        // Extension length beyond the frame.
        let mut f = encode_request(op::STATFS, 10, 1, 0, 0, b"");
        f[36] = 9;
        assert!(matches!(decode_request(&f), Err(DecodeError::BadBody(_))));
        // A write whose size disagrees with its data.
        let mut b = Vec::new();
        put_u64(&mut b, 1);
        put_u64(&mut b, 0);
        put_u32(&mut b, 10);
        b.resize(40, 0);
        b.extend_from_slice(b"12345");
        let f = encode_request(op::WRITE, 11, 2, 0, 0, &b);
        assert!(matches!(decode_request(&f), Err(DecodeError::BadBody(_))));
        // A batch forget claiming more pairs than it carries.
        let mut b = Vec::new();
        put_u32(&mut b, u32::MAX);
        put_u32(&mut b, 0);
        put_u64(&mut b, 5);
        put_u64(&mut b, 1);
        let f = encode_request(op::BATCH_FORGET, 12, 0, 0, 0, &b);
        assert!(matches!(decode_request(&f), Err(DecodeError::BadBody(_))));
        assert_eq!(
            decode_request(&encode_request(999, 13, 1, 0, 0, b""))
                .unwrap()
                .1,
            Request::Unknown(999)
        );
    }

    #[test]
    fn dirents_are_padded() {
        let mut out = Vec::new();
        put_dirent(&mut out, 5, 3, 8, b"a");
        assert_eq!(out.len(), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
        let e = error_reply(3, 2);
        assert_eq!(
            OutHeader::decode(&e),
            Some(OutHeader {
                len: 16,
                error: -2,
                unique: 3
            })
        );
    }
}
