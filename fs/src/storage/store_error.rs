//! The typed errors of the storage layer (block cache, btree, allocators,
//! commit) and their mapping onto [`Errno`].
//!
//! `Stale` is the retryable one: a ref whose block fails its crc, magic,
//! fsid, seq or blkno check. Callers re-read their roots and retry once; a
//! second `Stale` becomes `Corrupt`/EIO ([`retry_stale`]).

use crate::errno::Errno;
use crate::storage::dev::IoError;
use core::fmt;

/// Why a block read through a ref was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleReason {
    Crc,
    Magic,
    Fsid,
    Seq,
    Blkno,
}

impl StaleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::Crc => "crc mismatch",
            StaleReason::Magic => "bad magic",
            StaleReason::Fsid => "wrong fsid",
            StaleReason::Seq => "seq mismatch",
            StaleReason::Blkno => "blkno mismatch",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The block behind a ref is not the one the ref names (retry once).
    Stale { blkno: u64, reason: StaleReason },
    /// A block passed its checks but its contents are inconsistent, or a
    /// ref went stale twice.
    Corrupt { blkno: u64, what: &'static str },
    /// The device failed.
    Io(IoError),
    /// An allocator ran out of blocks.
    NoSpace,
    /// Insert of a key that exists.
    Exists,
    /// Update/delete of a key that does not exist.
    NotFound,
    /// A caller passed something out of range (value too long, bad extent).
    Invalid(&'static str),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    pub fn errno(&self) -> Errno {
        match self {
            StoreError::Stale { .. } => Errno::ESTALE,
            StoreError::Corrupt { .. } | StoreError::Io(_) => Errno::EIO,
            StoreError::NoSpace => Errno::ENOSPC,
            StoreError::Exists => Errno::EEXIST,
            StoreError::NotFound => Errno::ENOENT,
            StoreError::Invalid(_) => Errno::EINVAL,
        }
    }

    /// The metadata block the error is about, if any.
    pub fn blkno(&self) -> Option<u64> {
        match self {
            StoreError::Stale { blkno, .. } | StoreError::Corrupt { blkno, .. } => Some(*blkno),
            _ => None,
        }
    }
}

impl From<IoError> for StoreError {
    fn from(e: IoError) -> Self {
        StoreError::Io(e)
    }
}

impl From<StoreError> for Errno {
    fn from(e: StoreError) -> Self {
        e.errno()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Stale { blkno, reason } => {
                write!(f, "stale block {blkno}: {}", reason.as_str())
            }
            StoreError::Corrupt { blkno, what } => write!(f, "corrupt block {blkno}: {what}"),
            StoreError::Io(e) => write!(f, "i/o error: {e}"),
            StoreError::NoSpace => f.write_str("no space left in allocator"),
            StoreError::Exists => f.write_str("item exists"),
            StoreError::NotFound => f.write_str("item not found"),
            StoreError::Invalid(w) => write!(f, "invalid argument: {w}"),
        }
    }
}

/// Run `op`, and once more if it reports a stale block (after `on_stale`
/// has dropped cached state and the caller re-read its roots). A second
/// stale result is promoted to [`StoreError::Corrupt`], i.e. EIO.
pub fn retry_stale<T>(
    mut op: impl FnMut() -> StoreResult<T>,
    mut on_stale: impl FnMut(u64),
) -> StoreResult<T> {
    match op() {
        Err(StoreError::Stale { blkno, .. }) => {
            on_stale(blkno);
            match op() {
                Err(StoreError::Stale { blkno, reason }) => Err(StoreError::Corrupt {
                    blkno,
                    what: match reason {
                        StaleReason::Crc => "stale twice: crc mismatch",
                        StaleReason::Magic => "stale twice: bad magic",
                        StaleReason::Fsid => "stale twice: wrong fsid",
                        StaleReason::Seq => "stale twice: seq mismatch",
                        StaleReason::Blkno => "stale twice: blkno mismatch",
                    },
                }),
                r => r,
            }
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_twice_is_eio() {
        let mut calls = 0;
        let r: StoreResult<()> = retry_stale(
            || {
                calls += 1;
                Err(StoreError::Stale {
                    blkno: 9,
                    reason: StaleReason::Seq,
                })
            },
            |_| {},
        );
        assert_eq!(calls, 2);
        assert_eq!(r.unwrap_err().errno(), Errno::EIO);

        let mut n = 0;
        let r = retry_stale(
            || {
                n += 1;
                if n == 1 {
                    Err(StoreError::Stale {
                        blkno: 1,
                        reason: StaleReason::Crc,
                    })
                } else {
                    Ok(5)
                }
            },
            |b| assert_eq!(b, 1),
        );
        assert_eq!(r, Ok(5));
    }
}
