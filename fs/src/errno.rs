//! Error numbers returned by filesystem operations.
//!
//! The values are Linux's, because the two front ends that carry them
//! (9P2000.L `Rlerror` and FUSE replies) both speak Linux errno on the wire.

use core::fmt;

/// A Linux errno value (always positive).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident = $val:expr, $text:expr;)*) => {
        impl Errno {
            $(pub const $name: Errno = Errno($val);)*

            /// The symbolic name, e.g. `"ENOENT"`.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($val => stringify!($name),)*
                    _ => "E?",
                }
            }

            /// A short human description.
            pub fn text(self) -> &'static str {
                match self.0 {
                    $($val => $text,)*
                    _ => "unknown error",
                }
            }
        }
    };
}

errnos! {
    EPERM = 1, "operation not permitted";
    ENOENT = 2, "no such file or directory";
    EINTR = 4, "interrupted";
    EIO = 5, "input/output error";
    ENXIO = 6, "no such device or address";
    E2BIG = 7, "argument list too long";
    EBADF = 9, "bad file descriptor";
    EAGAIN = 11, "try again";
    ENOMEM = 12, "out of memory";
    EACCES = 13, "permission denied";
    EFAULT = 14, "bad address";
    EBUSY = 16, "device or resource busy";
    EEXIST = 17, "file exists";
    EXDEV = 18, "cross-device link";
    ENODEV = 19, "no such device";
    ENOTDIR = 20, "not a directory";
    EISDIR = 21, "is a directory";
    EINVAL = 22, "invalid argument";
    ENFILE = 23, "too many open files in system";
    EMFILE = 24, "too many open files";
    ETXTBSY = 26, "text file busy";
    EFBIG = 27, "file too large";
    ENOSPC = 28, "no space left on device";
    ESPIPE = 29, "illegal seek";
    EROFS = 30, "read-only file system";
    EMLINK = 31, "too many links";
    ERANGE = 34, "result out of range";
    EDEADLK = 35, "resource deadlock avoided";
    ENAMETOOLONG = 36, "file name too long";
    ENOLCK = 37, "no locks available";
    ENOSYS = 38, "function not implemented";
    ENOTEMPTY = 39, "directory not empty";
    ELOOP = 40, "too many levels of symbolic links";
    ENODATA = 61, "no data available";
    ENOLINK = 67, "link has been severed";
    EPROTO = 71, "protocol error";
    EBADMSG = 74, "bad message";
    EOVERFLOW = 75, "value too large for defined data type";
    EOPNOTSUPP = 95, "operation not supported";
    ECONNABORTED = 103, "connection aborted";
    ECONNRESET = 104, "connection reset";
    ENOBUFS = 105, "no buffer space available";
    ETIMEDOUT = 110, "timed out";
    ECONNREFUSED = 111, "connection refused";
    ESTALE = 116, "stale file handle";
    EUCLEAN = 117, "structure needs cleaning";
    EDQUOT = 122, "disk quota exceeded";
    ECANCELED = 125, "operation canceled";
}

impl Errno {
    /// `ENODATA` is what Linux calls `ENOATTR` for xattrs.
    pub const ENOATTR: Errno = Errno::ENODATA;
    /// `EOPNOTSUPP` and `ENOTSUP` are the same value on Linux.
    pub const ENOTSUP: Errno = Errno::EOPNOTSUPP;
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.text(), self.name())
    }
}

/// The result type of filesystem operations.
pub type FsResult<T> = Result<T, Errno>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_are_linux() {
        assert_eq!(Errno::ENOENT.0, 2);
        assert_eq!(Errno::ENOTEMPTY.0, 39);
        assert_eq!(Errno::ENOENT.name(), "ENOENT");
        assert_eq!(Errno(9999).name(), "E?");
        assert_eq!(format!("{:?}", Errno::EIO), "EIO(5)");
    }
}
