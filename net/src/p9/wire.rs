//! The 9P2000.L wire codec: every T and R message the Linux v9fs client
//! sends or expects, decoded and encoded from one layout table, so the server
//! and the in-process test client share the same code.
//!
//! Owns nothing but bytes. Invariants: decoding never panics and never reads
//! past the frame (bad input is a [`DecodeError`]); `encode(decode(f)) == f`
//! for every frame `decode` accepts; an encoded frame's `size` field always
//! equals its length. Read/write/readdir payloads and names are borrowed
//! from the input (zero copy).
//!
//! # Frame layout
//!
//! Every message is `size[4] type[1] tag[2] body`, little endian, where
//! `size` counts the whole frame including itself. Strings are `len[2]`
//! bytes (not NUL-terminated, not checked for UTF-8: Linux names are bytes);
//! a qid is `type[1] version[4] path[8]`.
//!
//! # API
//!
//! ```
//! use scoutvm_net::p9::wire::{self, Fcall, Msg, Qid, QidType, Rmsg, Tmsg};
//!
//! // Client side: encode a request.
//! let mut out = Vec::new();
//! let walk = Tmsg::Walk { fid: 1, newfid: 2, wnames: vec![&b"etc"[..], &b"passwd"[..]] };
//! walk.encode(7, &mut out).unwrap();
//!
//! // Server side: decode it (borrowing the names from `out`), answer.
//! let (tag, request) = wire::decode_request(&out).unwrap();
//! assert_eq!((tag, &request), (7, &walk));
//! let mut reply = Vec::new();
//! let qids = vec![Qid { ty: QidType::DIR, version: 0, path: 2 }, Qid { ty: QidType::FILE, version: 3, path: 9 }];
//! Rmsg::Walk { qids }.encode(tag, &mut reply).unwrap();
//!
//! // Any frame: `decode` says how many bytes it used.
//! let (call, used) = wire::decode(&reply).unwrap();
//! assert!(matches!(call, Fcall { tag: 7, msg: Msg::R(Rmsg::Walk { .. }) }));
//! assert_eq!(used, reply.len());
//! ```
//!
//! Field layouts follow Linux `include/net/9p/9p.h` and `net/9p/client.c`.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Deref;

use scoutvm_fs::errno::Errno;

/// `size[4] type[1] tag[2]`.
pub const HEADER_LEN: usize = 7;
/// The largest msize ScoutVM negotiates (Linux asks for what `msize=` says;
/// 512 KiB is the documented mount option).
pub const MSIZE_MAX: u32 = 1 << 20;
/// The tag of `Tversion`, which runs outside the tag space.
pub const NOTAG: u16 = 0xffff;
/// "No fid", e.g. the `afid` of an attach without authentication.
pub const NOFID: u32 = 0xffff_ffff;
/// Most names a `Twalk` may carry, and most qids in an `Rwalk`.
pub const MAXWELEM: usize = 16;
/// Bytes of a `Tread`/`Twrite`/`Rread` frame that are not payload, as Linux
/// counts them: `iounit = msize - IOHDRSZ`.
pub const IOHDRSZ: u32 = 24;
/// Bytes of an `Rreaddir` frame that are not entries, as Linux counts them.
pub const READDIRHDRSZ: u32 = 24;
/// Encoded size of a [`Qid`].
pub const QID_LEN: usize = 13;
/// The only protocol version ScoutVM speaks.
pub const VERSION_9P2000_L: &[u8] = b"9P2000.L";
/// What `Rversion` carries when the client's version is not understood.
pub const VERSION_UNKNOWN: &[u8] = b"unknown";
/// Linux's `V9FS_MAGIC`, the `type` a 9P server reports in `Rstatfs`.
pub const V9FS_MAGIC: u32 = 0x0102_1997;

/// `Tunlinkat` flag: remove a directory (Linux `AT_REMOVEDIR`).
pub const AT_REMOVEDIR: u32 = 0x200;
/// `Tlock` flag: the client waits (it retries on `Blocked`).
pub const LOCK_FLAGS_BLOCK: u32 = 1;
/// `Tlock` flag: reclaim after a server restart.
pub const LOCK_FLAGS_RECLAIM: u32 = 2;

// ---------------------------------------------------------------------------
// Scalar and composite field types.

/// The type byte of a [`Qid`]: the kind of file, as bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct QidType(pub u8);

impl QidType {
    pub const DIR: QidType = QidType(0x80);
    pub const APPEND: QidType = QidType(0x40);
    pub const EXCL: QidType = QidType(0x20);
    pub const MOUNT: QidType = QidType(0x10);
    pub const AUTH: QidType = QidType(0x08);
    pub const TMP: QidType = QidType(0x04);
    pub const SYMLINK: QidType = QidType(0x02);
    pub const LINK: QidType = QidType(0x01);
    pub const FILE: QidType = QidType(0x00);

    /// The qid type of a Linux `st_mode`.
    pub fn of_mode(mode: u32) -> QidType {
        match mode & scoutvm_fs::posix::types::S_IFMT {
            scoutvm_fs::posix::types::S_IFDIR => QidType::DIR,
            scoutvm_fs::posix::types::S_IFLNK => QidType::SYMLINK,
            _ => QidType::FILE,
        }
    }

    pub fn contains(self, other: QidType) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Debug for QidType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QidType({:#04x})", self.0)
    }
}

/// The server's unique identity of a file: `path` is unique per file and
/// stable for its life, `version` changes when the file does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Qid {
    pub ty: QidType,
    pub version: u32,
    pub path: u64,
}

macro_rules! bit_set {
    ($(#[$m:meta])* $Name:ident($Int:ty) { $($(#[$cm:meta])* $C:ident = $v:expr;)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $Name(pub $Int);

        impl $Name {
            $($(#[$cm])* pub const $C: $Name = $Name($v);)*

            /// True if every bit of `other` is set.
            pub fn contains(self, other: $Name) -> bool {
                self.0 & other.0 == other.0
            }
            /// True if any bit of `other` is set.
            pub fn intersects(self, other: $Name) -> bool {
                self.0 & other.0 != 0
            }
        }

        impl core::ops::BitOr for $Name {
            type Output = $Name;
            fn bitor(self, rhs: $Name) -> $Name {
                $Name(self.0 | rhs.0)
            }
        }

        impl fmt::Debug for $Name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($Name), "({:#x}"), self.0)?;
                $(if $v != 0 && self.0 & $v == $v { write!(f, concat!(" ", stringify!($C)))?; })*
                write!(f, ")")
            }
        }
    };
}

bit_set! {
    /// `Tgetattr` request mask and `Rgetattr` valid mask (`P9_STATS_*`).
    GetattrMask(u64) {
        MODE = 0x0000_0001;
        NLINK = 0x0000_0002;
        UID = 0x0000_0004;
        GID = 0x0000_0008;
        RDEV = 0x0000_0010;
        ATIME = 0x0000_0020;
        MTIME = 0x0000_0040;
        CTIME = 0x0000_0080;
        INO = 0x0000_0100;
        SIZE = 0x0000_0200;
        BLOCKS = 0x0000_0400;
        BTIME = 0x0000_0800;
        GEN = 0x0000_1000;
        DATA_VERSION = 0x0000_2000;
        /// Everything `stat(2)` reports.
        BASIC = 0x0000_07ff;
        ALL = 0x0000_3fff;
    }
}

bit_set! {
    /// `Tsetattr` valid bits (`P9_ATTR_*`): which fields to apply.
    SetattrValid(u32) {
        MODE = 0x0000_0001;
        UID = 0x0000_0002;
        GID = 0x0000_0004;
        SIZE = 0x0000_0008;
        /// Set atime: to `atime_*` if `ATIME_SET`, else to now.
        ATIME = 0x0000_0010;
        /// Set mtime: to `mtime_*` if `MTIME_SET`, else to now.
        MTIME = 0x0000_0020;
        /// Set ctime to now.
        CTIME = 0x0000_0040;
        ATIME_SET = 0x0000_0080;
        MTIME_SET = 0x0000_0100;
    }
}

/// `Tlock`/`Tgetlock` lock type (`P9_LOCK_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockType {
    Read = 0,
    Write = 1,
    Unlock = 2,
}

impl LockType {
    fn from_u8(v: u8) -> Option<LockType> {
        match v {
            0 => Some(LockType::Read),
            1 => Some(LockType::Write),
            2 => Some(LockType::Unlock),
            _ => None,
        }
    }
}

/// `Rlock` status (`P9_LOCK_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockStatus {
    Success = 0,
    /// Conflict; the client retries if it asked to block.
    Blocked = 1,
    Error = 2,
    /// The server is in its reclaim grace period.
    Grace = 3,
}

impl LockStatus {
    fn from_u8(v: u8) -> Option<LockStatus> {
        match v {
            0 => Some(LockStatus::Success),
            1 => Some(LockStatus::Blocked),
            2 => Some(LockStatus::Error),
            3 => Some(LockStatus::Grace),
            _ => None,
        }
    }
}

/// A counted payload (`count[4] bytes`): read/write data and readdir
/// entries. Borrowed, so a decoded `Twrite` points into the frame.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Data<'a>(pub &'a [u8]);

impl Deref for Data<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0
    }
}

impl fmt::Debug for Data<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Data({} bytes)", self.0.len())
    }
}

// ---------------------------------------------------------------------------
// Errors.

/// Why bytes are not a 9P2000.L frame. Variants carrying a `tag` came from a
/// well-framed message: the server can answer it with `Rlerror` (see
/// [`DecodeError::reply_errno`]). The others mean the byte stream is lost
/// and the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer holds `have` bytes of a frame that needs `need`; feed more.
    Incomplete { have: usize, need: usize },
    /// The `size` field is smaller than the 7-byte header.
    BadSize { size: u32 },
    /// The `size` field exceeds the negotiated `msize`.
    TooBig { size: u32, max: u32 },
    /// The type byte names no 9P2000.L message.
    UnknownType { ty: u8, tag: u16 },
    /// A known type whose fields do not fit its layout.
    Malformed {
        ty: u8,
        tag: u16,
        reason: &'static str,
    },
    /// A reply where a request was expected, or the other way round.
    WrongDirection { ty: u8, tag: u16 },
    /// An `Rreaddir` payload entry that runs past the payload.
    BadDirent { offset: usize },
}

impl DecodeError {
    /// The tag of the offending message, if it was framed well enough to
    /// have one that can be answered.
    pub fn tag(&self) -> Option<u16> {
        match *self {
            DecodeError::UnknownType { tag, .. }
            | DecodeError::Malformed { tag, .. }
            | DecodeError::WrongDirection { tag, .. } => Some(tag),
            _ => None,
        }
    }

    /// The errno a server answers this with, or `None` when the stream is
    /// lost and the connection must be closed instead.
    pub fn reply_errno(&self) -> Option<Errno> {
        match self {
            DecodeError::UnknownType { .. } => Some(Errno::EOPNOTSUPP),
            DecodeError::Malformed { .. } | DecodeError::WrongDirection { .. } => {
                Some(Errno::EPROTO)
            }
            _ => None,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::Incomplete { have, need } => {
                write!(f, "incomplete frame: {have} of {need} bytes")
            }
            DecodeError::BadSize { size } => write!(f, "frame size {size} below header size"),
            DecodeError::TooBig { size, max } => {
                write!(f, "frame size {size} exceeds msize {max}")
            }
            DecodeError::UnknownType { ty, tag } => {
                write!(f, "unknown message type {ty} (tag {tag})")
            }
            DecodeError::Malformed { ty, tag, reason } => {
                write!(f, "malformed {} (tag {tag}): {reason}", type_name(ty))
            }
            DecodeError::WrongDirection { ty, tag } => {
                write!(f, "unexpected {} (tag {tag})", type_name(ty))
            }
            DecodeError::BadDirent { offset } => {
                write!(f, "readdir entry at byte {offset} runs past the payload")
            }
        }
    }
}

/// Why a message cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// A string longer than 65535 bytes.
    StringTooLong { len: usize },
    /// More than [`MAXWELEM`] walk names or qids.
    TooManyWalkElements { count: usize },
    /// The frame would not fit a 32-bit size.
    FrameTooBig { len: usize },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::StringTooLong { len } => write!(f, "string of {len} bytes exceeds 65535"),
            EncodeError::TooManyWalkElements { count } => {
                write!(f, "{count} walk elements exceed {MAXWELEM}")
            }
            EncodeError::FrameTooBig { len } => write!(f, "frame of {len} bytes exceeds 4 GiB"),
        }
    }
}

// ---------------------------------------------------------------------------
// Field codec: one impl per field type, shared by every message.

/// A bounded cursor over one frame's body.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const SHORT: &str = "field runs past the end of the frame";

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.remaining() < n {
            return Err(SHORT);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

/// One field type's wire form.
trait Field<'a>: Sized {
    fn get(r: &mut Reader<'a>) -> Result<Self, &'static str>;
    fn put(&self, out: &mut Vec<u8>);
    fn len(&self) -> usize;
    /// Whether `put` can represent this value.
    fn check(&self) -> Result<(), EncodeError> {
        Ok(())
    }
    #[cfg(any(test, feature = "arbitrary"))]
    fn arb(g: &mut Gen<'a>) -> Self;
}

macro_rules! int_field {
    ($($T:ty),*) => {$(
        impl<'a> Field<'a> for $T {
            fn get(r: &mut Reader<'a>) -> Result<Self, &'static str> {
                Ok(<$T>::from_le_bytes(r.array()?))
            }
            fn put(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn len(&self) -> usize {
                core::mem::size_of::<$T>()
            }
            #[cfg(any(test, feature = "arbitrary"))]
            fn arb(g: &mut Gen<'a>) -> Self {
                <$T>::from_le_bytes(g.array())
            }
        }
    )*};
}

int_field!(u8, u16, u32, u64);

impl<'a> Field<'a> for Qid {
    fn get(r: &mut Reader<'a>) -> Result<Self, &'static str> {
        Ok(Qid {
            ty: QidType(u8::get(r)?),
            version: u32::get(r)?,
            path: u64::get(r)?,
        })
    }
    fn put(&self, out: &mut Vec<u8>) {
        self.ty.0.put(out);
        self.version.put(out);
        self.path.put(out);
    }
    fn len(&self) -> usize {
        QID_LEN
    }
    #[cfg(any(test, feature = "arbitrary"))]
    fn arb(g: &mut Gen<'a>) -> Self {
        Qid {
            ty: QidType(u8::arb(g)),
            version: u32::arb(g),
            path: u64::arb(g),
        }
    }
}

/// A string: `len[2] bytes`.
impl<'a> Field<'a> for &'a [u8] {
    fn get(r: &mut Reader<'a>) -> Result<Self, &'static str> {
        let len = u16::get(r)?;
        r.take(len as usize)
    }
    fn put(&self, out: &mut Vec<u8>) {
        debug_assert!(<[u8]>::len(self) <= u16::MAX as usize);
        (<[u8]>::len(self) as u16).put(out);
        out.extend_from_slice(self);
    }
    fn len(&self) -> usize {
        2 + <[u8]>::len(self)
    }
    fn check(&self) -> Result<(), EncodeError> {
        if <[u8]>::len(self) > u16::MAX as usize {
            return Err(EncodeError::StringTooLong {
                len: <[u8]>::len(self),
            });
        }
        Ok(())
    }
    #[cfg(any(test, feature = "arbitrary"))]
    fn arb(g: &mut Gen<'a>) -> Self {
        let len = g.u8() as usize % 48;
        g.bytes(len)
    }
}

/// A payload: `count[4] bytes`.
impl<'a> Field<'a> for Data<'a> {
    fn get(r: &mut Reader<'a>) -> Result<Self, &'static str> {
        let count = u32::get(r)?;
        Ok(Data(r.take(count as usize)?))
    }
    fn put(&self, out: &mut Vec<u8>) {
        (self.0.len() as u32).put(out);
        out.extend_from_slice(self.0);
    }
    fn len(&self) -> usize {
        4 + self.0.len()
    }
    fn check(&self) -> Result<(), EncodeError> {
        if self.0.len() > u32::MAX as usize {
            return Err(EncodeError::FrameTooBig { len: self.0.len() });
        }
        Ok(())
    }
    #[cfg(any(test, feature = "arbitrary"))]
    fn arb(g: &mut Gen<'a>) -> Self {
        let len = g.u16() as usize % 4096;
        Data(g.bytes(len))
    }
}

/// Walk names: `nwname[2] nwname*(wname[s])`, at most [`MAXWELEM`].
impl<'a> Field<'a> for Vec<&'a [u8]> {
    fn get(r: &mut Reader<'a>) -> Result<Self, &'static str> {
        let count = u16::get(r)? as usize;
        if count > MAXWELEM {
            return Err("more than 16 walk names");
        }
        let mut names = Vec::with_capacity(count);
        for _ in 0..count {
            names.push(<&[u8]>::get(r)?);
        }
        Ok(names)
    }
    fn put(&self, out: &mut Vec<u8>) {
        (Vec::len(self) as u16).put(out);
        for name in self {
            name.put(out);
        }
    }
    fn len(&self) -> usize {
        2 + self.iter().map(Field::len).sum::<usize>()
    }
    fn check(&self) -> Result<(), EncodeError> {
        if Vec::len(self) > MAXWELEM {
            return Err(EncodeError::TooManyWalkElements {
                count: Vec::len(self),
            });
        }
        self.iter().try_for_each(|n| n.check())
    }
    #[cfg(any(test, feature = "arbitrary"))]
    fn arb(g: &mut Gen<'a>) -> Self {
        let count = g.u8() as usize % (MAXWELEM + 1);
        (0..count).map(|_| <&[u8]>::arb(g)).collect()
    }
}

/// Walk qids: `nwqid[2] nwqid*(qid[13])`, at most [`MAXWELEM`].
impl<'a> Field<'a> for Vec<Qid> {
    fn get(r: &mut Reader<'a>) -> Result<Self, &'static str> {
        let count = u16::get(r)? as usize;
        if count > MAXWELEM {
            return Err("more than 16 walk qids");
        }
        let mut qids = Vec::with_capacity(count);
        for _ in 0..count {
            qids.push(Qid::get(r)?);
        }
        Ok(qids)
    }
    fn put(&self, out: &mut Vec<u8>) {
        (Vec::len(self) as u16).put(out);
        for qid in self {
            qid.put(out);
        }
    }
    fn len(&self) -> usize {
        2 + QID_LEN * Vec::len(self)
    }
    fn check(&self) -> Result<(), EncodeError> {
        if Vec::len(self) > MAXWELEM {
            return Err(EncodeError::TooManyWalkElements {
                count: Vec::len(self),
            });
        }
        Ok(())
    }
    #[cfg(any(test, feature = "arbitrary"))]
    fn arb(g: &mut Gen<'a>) -> Self {
        let count = g.u8() as usize % (MAXWELEM + 1);
        (0..count).map(|_| Qid::arb(g)).collect()
    }
}

macro_rules! newtype_field {
    ($($T:ident($Int:ty)),*) => {$(
        impl<'a> Field<'a> for $T {
            fn get(r: &mut Reader<'a>) -> Result<Self, &'static str> {
                Ok($T(<$Int>::get(r)?))
            }
            fn put(&self, out: &mut Vec<u8>) {
                self.0.put(out);
            }
            fn len(&self) -> usize {
                core::mem::size_of::<$Int>()
            }
            #[cfg(any(test, feature = "arbitrary"))]
            fn arb(g: &mut Gen<'a>) -> Self {
                $T(<$Int>::arb(g))
            }
        }
    )*};
}

newtype_field!(GetattrMask(u64), SetattrValid(u32));

macro_rules! enum_field {
    ($($T:ident, $n:expr, $what:expr;)*) => {$(
        impl<'a> Field<'a> for $T {
            fn get(r: &mut Reader<'a>) -> Result<Self, &'static str> {
                $T::from_u8(u8::get(r)?).ok_or($what)
            }
            fn put(&self, out: &mut Vec<u8>) {
                (*self as u8).put(out);
            }
            fn len(&self) -> usize {
                1
            }
            #[cfg(any(test, feature = "arbitrary"))]
            fn arb(g: &mut Gen<'a>) -> Self {
                $T::from_u8(g.u8() % $n).expect("in range")
            }
        }
    )*};
}

enum_field! {
    LockType, 3, "unknown lock type";
    LockStatus, 4, "unknown lock status";
}

// ---------------------------------------------------------------------------
// The layout table: one line per message, in wire order.

macro_rules! messages {
    (
        $(#[$m:meta])*
        pub enum $Enum:ident<$lt:lifetime> {
            $(
                $(#[$vm:meta])*
                $Var:ident = $code:literal {
                    $( $(#[$fm:meta])* $f:ident : $T:ty ),* $(,)?
                }
            ),* $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum $Enum<$lt> {
            $( $(#[$vm])* $Var { $( $(#[$fm])* $f: $T ),* } ),*
        }

        impl<$lt> $Enum<$lt> {
            /// Every type code of this direction, in table order.
            pub const TYPE_CODES: &'static [u8] = &[$($code),*];

            /// The wire type code.
            pub fn type_code(&self) -> u8 {
                match self { $( Self::$Var { .. } => $code ),* }
            }

            /// The body after the header, or `Ok(None)` if `ty` is not of
            /// this direction.
            fn decode_body(ty: u8, r: &mut Reader<$lt>) -> Result<Option<Self>, &'static str> {
                Ok(Some(match ty {
                    $( $code => Self::$Var { $( $f: <$T as Field<$lt>>::get(r)? ),* }, )*
                    _ => return Ok(None),
                }))
            }

            fn body_len(&self) -> usize {
                match self {
                    $( Self::$Var { $($f),* } => 0 $( + Field::len($f) )* ),*
                }
            }

            fn check(&self) -> Result<(), EncodeError> {
                match self {
                    $( Self::$Var { $($f),* } => { $( Field::check($f)?; )* Ok(()) } ),*
                }
            }

            fn put_body(&self, out: &mut Vec<u8>) {
                match self {
                    $( Self::$Var { $($f),* } => { $( Field::put($f, out); )* } ),*
                }
            }

            /// A message of type `code` with fields drawn from `g`, or
            /// `None` if `code` is not of this direction. For tests and
            /// fuzzing.
            #[cfg(any(test, feature = "arbitrary"))]
            pub fn arbitrary_of(code: u8, g: &mut Gen<$lt>) -> Option<Self> {
                Some(match code {
                    $( $code => Self::$Var { $( $f: <$T as Field<$lt>>::arb(g) ),* }, )*
                    _ => return None,
                })
            }

            /// The encoded frame length, header included.
            pub fn encoded_len(&self) -> usize {
                HEADER_LEN + self.body_len()
            }

            /// Append the frame to `out`; returns its length.
            pub fn encode(&self, tag: u16, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
                self.check()?;
                encode_frame(self.type_code(), tag, self.encoded_len(), out, |out| self.put_body(out))
            }
        }
    };
}

messages! {
    /// A request (client to server).
    pub enum Tmsg<'a> {
        /// Negotiate `msize` and protocol; tag is [`NOTAG`].
        Version = 100 { msize: u32, version: &'a [u8] },
        /// Authenticate; ScoutVM answers with an error (no auth fids).
        Auth = 102 { afid: u32, uname: &'a [u8], aname: &'a [u8], n_uname: u32 },
        /// Bind `fid` to the root of `aname` as user `n_uname` (or `uname`).
        Attach = 104 { fid: u32, afid: u32, uname: &'a [u8], aname: &'a [u8], n_uname: u32 },
        /// Abort request `oldtag`; answered after it.
        Flush = 108 { oldtag: u16 },
        /// Walk `wnames` from `fid`; on full success `newfid` names the end.
        Walk = 110 { fid: u32, newfid: u32, wnames: Vec<&'a [u8]> },
        Read = 116 { fid: u32, offset: u64, count: u32 },
        Write = 118 { fid: u32, offset: u64, data: Data<'a> },
        Clunk = 120 { fid: u32 },
        /// Remove the file and clunk `fid`, even on error.
        Remove = 122 { fid: u32 },
        Statfs = 8 { fid: u32 },
        /// Open `fid`; `flags` are Linux open flags.
        Lopen = 12 { fid: u32, flags: u32 },
        /// Create `name` in directory `fid` and open it; `fid` becomes the file.
        Lcreate = 14 { fid: u32, name: &'a [u8], flags: u32, mode: u32, gid: u32 },
        Symlink = 16 { fid: u32, name: &'a [u8], symtgt: &'a [u8], gid: u32 },
        Mknod = 18 { dfid: u32, name: &'a [u8], mode: u32, major: u32, minor: u32, gid: u32 },
        /// Move the file of `fid` to `name` in directory `dfid`.
        Rename = 20 { fid: u32, dfid: u32, name: &'a [u8] },
        Readlink = 22 { fid: u32 },
        Getattr = 24 { fid: u32, request_mask: GetattrMask },
        Setattr = 26 {
            fid: u32,
            valid: SetattrValid,
            mode: u32,
            uid: u32,
            gid: u32,
            size: u64,
            atime_sec: u64,
            atime_nsec: u64,
            mtime_sec: u64,
            mtime_nsec: u64,
        },
        /// Make `newfid` a reader of xattr `name` (empty: the name list).
        Xattrwalk = 30 { fid: u32, newfid: u32, name: &'a [u8] },
        /// Turn `fid` into a writer of xattr `name`, `attr_size` bytes,
        /// set on clunk; `flags` are `XATTR_CREATE`/`XATTR_REPLACE`.
        Xattrcreate = 32 { fid: u32, name: &'a [u8], attr_size: u64, flags: u32 },
        /// Entries from directory position `offset`, at most `count` bytes.
        Readdir = 40 { fid: u32, offset: u64, count: u32 },
        Fsync = 50 { fid: u32, datasync: u32 },
        Lock = 52 {
            fid: u32,
            ty: LockType,
            flags: u32,
            start: u64,
            length: u64,
            proc_id: u32,
            client_id: &'a [u8],
        },
        Getlock = 54 { fid: u32, ty: LockType, start: u64, length: u64, proc_id: u32, client_id: &'a [u8] },
        /// Hard link the file of `fid` as `name` in directory `dfid`.
        Link = 70 { dfid: u32, fid: u32, name: &'a [u8] },
        Mkdir = 72 { dfid: u32, name: &'a [u8], mode: u32, gid: u32 },
        Renameat = 74 { olddirfid: u32, oldname: &'a [u8], newdirfid: u32, newname: &'a [u8] },
        /// `flags` may hold [`AT_REMOVEDIR`].
        Unlinkat = 76 { dirfd: u32, name: &'a [u8], flags: u32 },
    }
}

messages! {
    /// A reply (server to client).
    pub enum Rmsg<'a> {
        /// The error reply of 9P2000.L: a Linux errno.
        Lerror = 7 { ecode: u32 },
        Version = 101 { msize: u32, version: &'a [u8] },
        Auth = 103 { aqid: Qid },
        Attach = 105 { qid: Qid },
        Flush = 109 {},
        /// One qid per name walked; fewer than asked means the walk stopped.
        Walk = 111 { qids: Vec<Qid> },
        Read = 117 { data: Data<'a> },
        Write = 119 { count: u32 },
        Clunk = 121 {},
        Remove = 123 {},
        Statfs = 9 {
            ty: u32,
            bsize: u32,
            blocks: u64,
            bfree: u64,
            bavail: u64,
            files: u64,
            ffree: u64,
            fsid: u64,
            namelen: u32,
        },
        Lopen = 13 { qid: Qid, iounit: u32 },
        Lcreate = 15 { qid: Qid, iounit: u32 },
        Symlink = 17 { qid: Qid },
        Mknod = 19 { qid: Qid },
        Rename = 21 {},
        Readlink = 23 { target: &'a [u8] },
        Getattr = 25 {
            /// Which of the fields below are filled in.
            valid: GetattrMask,
            qid: Qid,
            mode: u32,
            uid: u32,
            gid: u32,
            nlink: u64,
            rdev: u64,
            size: u64,
            blksize: u64,
            blocks: u64,
            atime_sec: u64,
            atime_nsec: u64,
            mtime_sec: u64,
            mtime_nsec: u64,
            ctime_sec: u64,
            ctime_nsec: u64,
            btime_sec: u64,
            btime_nsec: u64,
            gen: u64,
            data_version: u64,
        },
        Setattr = 27 {},
        /// The xattr's (or name list's) size; read it through the new fid.
        Xattrwalk = 31 { size: u64 },
        Xattrcreate = 33 {},
        /// Packed [`Dirent`]s; iterate with [`Dirents`].
        Readdir = 41 { data: Data<'a> },
        Fsync = 51 {},
        Lock = 53 { status: LockStatus },
        Getlock = 55 { ty: LockType, start: u64, length: u64, proc_id: u32, client_id: &'a [u8] },
        Link = 71 {},
        Mkdir = 73 { qid: Qid },
        Renameat = 75 {},
        Unlinkat = 77 {},
    }
}

impl Rmsg<'static> {
    /// The error reply for `errno`.
    pub fn lerror(errno: Errno) -> Rmsg<'static> {
        debug_assert!(errno.0 > 0);
        Rmsg::Lerror {
            ecode: errno.0 as u32,
        }
    }
}

/// The name of a type code, for messages and traces.
pub fn type_name(ty: u8) -> &'static str {
    match ty {
        7 => "Rlerror",
        8 => "Tstatfs",
        9 => "Rstatfs",
        12 => "Tlopen",
        13 => "Rlopen",
        14 => "Tlcreate",
        15 => "Rlcreate",
        16 => "Tsymlink",
        17 => "Rsymlink",
        18 => "Tmknod",
        19 => "Rmknod",
        20 => "Trename",
        21 => "Rrename",
        22 => "Treadlink",
        23 => "Rreadlink",
        24 => "Tgetattr",
        25 => "Rgetattr",
        26 => "Tsetattr",
        27 => "Rsetattr",
        30 => "Txattrwalk",
        31 => "Rxattrwalk",
        32 => "Txattrcreate",
        33 => "Rxattrcreate",
        40 => "Treaddir",
        41 => "Rreaddir",
        50 => "Tfsync",
        51 => "Rfsync",
        52 => "Tlock",
        53 => "Rlock",
        54 => "Tgetlock",
        55 => "Rgetlock",
        70 => "Tlink",
        71 => "Rlink",
        72 => "Tmkdir",
        73 => "Rmkdir",
        74 => "Trenameat",
        75 => "Rrenameat",
        76 => "Tunlinkat",
        77 => "Runlinkat",
        100 => "Tversion",
        101 => "Rversion",
        102 => "Tauth",
        103 => "Rauth",
        104 => "Tattach",
        105 => "Rattach",
        108 => "Tflush",
        109 => "Rflush",
        110 => "Twalk",
        111 => "Rwalk",
        116 => "Tread",
        117 => "Rread",
        118 => "Twrite",
        119 => "Rwrite",
        120 => "Tclunk",
        121 => "Rclunk",
        122 => "Tremove",
        123 => "Rremove",
        _ => "unknown message",
    }
}

// ---------------------------------------------------------------------------
// Whole frames.

/// Either direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    T(Tmsg<'a>),
    R(Rmsg<'a>),
}

impl Msg<'_> {
    pub fn type_code(&self) -> u8 {
        match self {
            Msg::T(t) => t.type_code(),
            Msg::R(r) => r.type_code(),
        }
    }

    pub fn encoded_len(&self) -> usize {
        match self {
            Msg::T(t) => t.encoded_len(),
            Msg::R(r) => r.encoded_len(),
        }
    }
}

/// A decoded frame: its tag and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fcall<'a> {
    pub tag: u16,
    pub msg: Msg<'a>,
}

/// The length of the frame at the start of `buf`, from its `size` field:
/// `Ok(None)` if fewer than 4 bytes are there yet.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let size = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if (size as usize) < HEADER_LEN {
        return Err(DecodeError::BadSize { size });
    }
    Ok(Some(size as usize))
}

/// Decode the frame at the start of `buf`, of either direction. Returns the
/// message (borrowing names and payloads from `buf`) and the bytes used;
/// bytes after the frame are left alone.
pub fn decode(buf: &[u8]) -> Result<(Fcall<'_>, usize), DecodeError> {
    let size = match frame_len(buf)? {
        Some(size) => size,
        None => {
            return Err(DecodeError::Incomplete {
                have: buf.len(),
                need: HEADER_LEN,
            })
        }
    };
    if buf.len() < size {
        return Err(DecodeError::Incomplete {
            have: buf.len(),
            need: size,
        });
    }
    let ty = buf[4];
    let tag = u16::from_le_bytes([buf[5], buf[6]]);
    let malformed = |reason| DecodeError::Malformed { ty, tag, reason };
    let mut r = Reader::new(&buf[HEADER_LEN..size]);
    let msg = match Tmsg::decode_body(ty, &mut r).map_err(malformed)? {
        Some(t) => Msg::T(t),
        None => match Rmsg::decode_body(ty, &mut r).map_err(malformed)? {
            Some(m) => Msg::R(m),
            None => return Err(DecodeError::UnknownType { ty, tag }),
        },
    };
    if r.remaining() != 0 {
        return Err(malformed("bytes left after the last field"));
    }
    Ok((Fcall { tag, msg }, size))
}

/// Decode one whole request frame (`frame` must be exactly one frame, as
/// [`crate::p9::FrameReader`] hands them out).
pub fn decode_request(frame: &[u8]) -> Result<(u16, Tmsg<'_>), DecodeError> {
    match decode_exact(frame)? {
        Fcall {
            tag,
            msg: Msg::T(t),
        } => Ok((tag, t)),
        Fcall { tag, msg } => Err(DecodeError::WrongDirection {
            ty: msg.type_code(),
            tag,
        }),
    }
}

/// Decode one whole reply frame.
pub fn decode_reply(frame: &[u8]) -> Result<(u16, Rmsg<'_>), DecodeError> {
    match decode_exact(frame)? {
        Fcall {
            tag,
            msg: Msg::R(r),
        } => Ok((tag, r)),
        Fcall { tag, msg } => Err(DecodeError::WrongDirection {
            ty: msg.type_code(),
            tag,
        }),
    }
}

fn decode_exact(frame: &[u8]) -> Result<Fcall<'_>, DecodeError> {
    let (call, used) = decode(frame)?;
    if used != frame.len() {
        let (ty, tag) = (frame[4], u16::from_le_bytes([frame[5], frame[6]]));
        return Err(DecodeError::Malformed {
            ty,
            tag,
            reason: "frame size field disagrees with the frame",
        });
    }
    Ok(call)
}

/// Append a frame of either direction to `out`; returns its length.
pub fn encode(call: &Fcall<'_>, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    match &call.msg {
        Msg::T(t) => t.encode(call.tag, out),
        Msg::R(r) => r.encode(call.tag, out),
    }
}

fn encode_frame(
    ty: u8,
    tag: u16,
    len: usize,
    out: &mut Vec<u8>,
    put_body: impl FnOnce(&mut Vec<u8>),
) -> Result<usize, EncodeError> {
    if len > u32::MAX as usize {
        return Err(EncodeError::FrameTooBig { len });
    }
    let start = out.len();
    out.reserve(len);
    (len as u32).put(out);
    ty.put(out);
    tag.put(out);
    put_body(out);
    assert_eq!(
        out.len() - start,
        len,
        "encoded length disagrees with {}",
        type_name(ty)
    );
    Ok(len)
}

/// Bytes of an `Rread` frame before its data: header and `count[4]`.
pub const RREAD_HEADER_LEN: usize = HEADER_LEN + 4;

/// Write the header of an `Rread` carrying `count` data bytes into
/// `hdr` (exactly [`RREAD_HEADER_LEN`] bytes), for a server that read the
/// data in place right after it.
pub fn put_rread_header(hdr: &mut [u8], tag: u16, count: u32) {
    assert_eq!(hdr.len(), RREAD_HEADER_LEN, "Rread header slice length");
    let size = RREAD_HEADER_LEN as u32 + count;
    hdr[0..4].copy_from_slice(&size.to_le_bytes());
    hdr[4] = 117;
    hdr[5..7].copy_from_slice(&tag.to_le_bytes());
    hdr[7..11].copy_from_slice(&count.to_le_bytes());
}

/// Append an `Rread` whose data `fill` appends to `out` directly, so a
/// server reads file data straight into the reply. Returns the frame length.
pub fn encode_rread_with(
    tag: u16,
    out: &mut Vec<u8>,
    fill: impl FnOnce(&mut Vec<u8>),
) -> Result<usize, EncodeError> {
    encode_payload_with(117, tag, out, fill)
}

/// Append an `Rreaddir` whose entries `fill` appends (with
/// [`Dirent::encode`]). Returns the frame length.
pub fn encode_rreaddir_with(
    tag: u16,
    out: &mut Vec<u8>,
    fill: impl FnOnce(&mut Vec<u8>),
) -> Result<usize, EncodeError> {
    encode_payload_with(41, tag, out, fill)
}

fn encode_payload_with(
    ty: u8,
    tag: u16,
    out: &mut Vec<u8>,
    fill: impl FnOnce(&mut Vec<u8>),
) -> Result<usize, EncodeError> {
    let start = out.len();
    0u32.put(out);
    ty.put(out);
    tag.put(out);
    0u32.put(out);
    let payload_start = out.len();
    fill(out);
    let count = out.len() - payload_start;
    let len = out.len() - start;
    if len > u32::MAX as usize {
        out.truncate(start);
        return Err(EncodeError::FrameTooBig { len });
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[payload_start - 4..payload_start].copy_from_slice(&(count as u32).to_le_bytes());
    Ok(len)
}

// ---------------------------------------------------------------------------
// Readdir entries.

/// One entry of an `Rreaddir` payload: `qid[13] offset[8] type[1] name[s]`.
/// `offset` is the directory position to pass in the next `Treaddir` to
/// continue after this entry; `ty` is a Linux `DT_*` code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirent<'a> {
    pub qid: Qid,
    pub offset: u64,
    pub ty: u8,
    pub name: &'a [u8],
}

impl<'a> Dirent<'a> {
    /// Bytes this entry takes in the payload.
    pub fn encoded_len(&self) -> usize {
        QID_LEN + 8 + 1 + 2 + self.name.len()
    }

    /// Append this entry. Names are at most 255 bytes in ScoutVM; longer
    /// than a 9P string can hold is an error.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.name.check()?;
        self.qid.put(out);
        self.offset.put(out);
        self.ty.put(out);
        self.name.put(out);
        Ok(())
    }

    fn get(r: &mut Reader<'a>) -> Result<Dirent<'a>, &'static str> {
        Ok(Dirent {
            qid: Qid::get(r)?,
            offset: u64::get(r)?,
            ty: u8::get(r)?,
            name: <&[u8]>::get(r)?,
        })
    }
}

/// Iterator over the entries of an `Rreaddir` payload; yields an error (and
/// then stops) at an entry that runs past the payload.
pub struct Dirents<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> Dirents<'a> {
    pub fn new(payload: &'a [u8]) -> Dirents<'a> {
        Dirents {
            r: Reader::new(payload),
            failed: false,
        }
    }
}

impl<'a> Iterator for Dirents<'a> {
    type Item = Result<Dirent<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.remaining() == 0 {
            return None;
        }
        let offset = self.r.pos;
        match Dirent::get(&mut self.r) {
            Ok(d) => Some(Ok(d)),
            Err(_) => {
                self.failed = true;
                Some(Err(DecodeError::BadDirent { offset }))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Test and fuzz support.

/// A deterministic source of field values drawn from a byte string (like the
/// `arbitrary` crate's `Unstructured`): names and payloads borrow from it,
/// and an exhausted source yields zeros and empty slices.
#[cfg(any(test, feature = "arbitrary"))]
pub struct Gen<'a> {
    bytes: &'a [u8],
    pos: usize,
}

#[cfg(any(test, feature = "arbitrary"))]
impl<'a> Gen<'a> {
    pub fn new(bytes: &'a [u8]) -> Gen<'a> {
        Gen { bytes, pos: 0 }
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in out.iter_mut() {
            if let Some(&v) = self.bytes.get(self.pos) {
                *b = v;
                self.pos += 1;
            }
        }
        out
    }

    /// Up to `len` bytes (fewer if the source runs out).
    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let len = len.min(self.bytes.len() - self.pos);
        let out = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        out
    }
}
