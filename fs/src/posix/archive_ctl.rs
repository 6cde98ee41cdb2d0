//! The archival control channel of a mounted filesystem: requests and
//! answers carried by extended attributes in the `scoutvm.ctl.` namespace
//! on any file of the mount (what scoutfs does with ioctls). A front end
//! that can carry xattrs (the host FUSE mount, 9P) hands names with this
//! prefix here instead of to the filesystem's xattrs; the host CLI speaks
//! it with `getxattr(2)` / `setxattr(2)` on a path inside the mount.
//!
//! Requests (numbers decimal; text answers one record a line):
//! * get `scoutvm.ctl.stat` -> `meta_seq N`, `data_seq N`,
//!   `data_version N`, `online_blocks N`, `offline_blocks N`,
//!   `crtime SEC.NSEC`, `size N` of the file.
//! * set `scoutvm.ctl.release` = `VERS OFF LEN`.
//! * set `scoutvm.ctl.stage` = `VERS OFF\n` then the bytes to stage.
//! * get `scoutvm.ctl.data_waiting.AFTER_INO.AFTER_IBLOCK` -> up to
//!   [`MAX_LINES`] lines `ino N iblock N ops read,write,change_size`.
//! * set `scoutvm.ctl.data_wait_err` = `INO VERS OFF COUNT OPS ERR`
//!   (`OPS` a mask of 1 read, 2 write, 4 change_size; `ERR` negative).
//! * get `scoutvm.ctl.walk.INDEX.FIRST_MAJOR.FIRST_INO.LAST_MAJOR.LAST_INO`
//!   (`INDEX` `meta_seq` or `data_seq`) -> up to [`MAX_LINES`] lines
//!   `MAJOR MINOR INO`.
//!
//! Changing requests need root. Answers stay under the kernel's 64 KiB
//! xattr limit; callers page with the last record as the next cursor.
//! Malformed requests are `EINVAL`, unknown names `EOPNOTSUPP`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::errno::{Errno, FsResult};
use crate::posix::archive::{dwo_names, WalkEntry, WalkIndex};
use crate::posix::mount::Mount;
use crate::posix::types::{Cred, Ino};

/// The namespace of control requests.
pub const CTL_PREFIX: &[u8] = b"scoutvm.ctl.";
/// Most records in one answer (each line is well under 64 bytes).
pub const MAX_LINES: usize = 1000;

/// Is `name` a control request rather than an xattr?
pub fn is_ctl(name: &[u8]) -> bool {
    name.starts_with(CTL_PREFIX)
}

fn text(b: &[u8]) -> FsResult<&str> {
    core::str::from_utf8(b).map_err(|_| Errno::EINVAL)
}

fn num<T: core::str::FromStr>(s: Option<&str>) -> FsResult<T> {
    s.and_then(|s| s.parse().ok()).ok_or(Errno::EINVAL)
}

/// Answer a get request on `ino`.
pub async fn ctl_get(m: &Mount, _cred: &Cred, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
    let req = text(&name[CTL_PREFIX.len()..])?;
    let mut parts = req.split('.');
    let mut out = String::new();
    match parts.next() {
        Some("stat") if parts.next().is_none() => {
            let s = m.stat_more(ino).await?;
            let _ = write!(
                out,
                "meta_seq {}\ndata_seq {}\ndata_version {}\nonline_blocks {}\n\
                 offline_blocks {}\ncrtime {}.{:09}\nsize {}\n",
                s.meta_seq,
                s.data_seq,
                s.data_version,
                s.online_blocks,
                s.offline_blocks,
                s.crtime.sec,
                s.crtime.nsec,
                s.size
            );
        }
        Some("data_waiting") => {
            let after_ino: u64 = num(parts.next())?;
            let after_iblock: u64 = num(parts.next())?;
            if parts.next().is_some() {
                return Err(Errno::EINVAL);
            }
            for e in m.data_waiting(after_ino, after_iblock, MAX_LINES) {
                let _ = writeln!(
                    out,
                    "ino {} iblock {} ops {}",
                    e.ino,
                    e.iblock,
                    dwo_names(e.ops)
                );
            }
        }
        Some("walk") => {
            let index = parts
                .next()
                .and_then(WalkIndex::parse)
                .ok_or(Errno::EINVAL)?;
            let first = WalkEntry {
                major: num(parts.next())?,
                minor: 0,
                ino: num(parts.next())?,
            };
            let last = WalkEntry {
                major: num(parts.next())?,
                minor: 0,
                ino: num(parts.next())?,
            };
            if parts.next().is_some() {
                return Err(Errno::EINVAL);
            }
            for e in m.walk_inodes(index, first, last, MAX_LINES).await? {
                let _ = writeln!(out, "{} {} {}", e.major, e.minor, e.ino);
            }
        }
        _ => return Err(Errno::EOPNOTSUPP),
    }
    Ok(out.into_bytes())
}

/// Carry out a set request on `ino`.
pub async fn ctl_set(m: &Mount, cred: &Cred, ino: Ino, name: &[u8], value: &[u8]) -> FsResult<()> {
    let req = text(&name[CTL_PREFIX.len()..])?;
    if !matches!(req, "release" | "stage" | "data_wait_err") {
        return Err(Errno::EOPNOTSUPP);
    }
    if cred.uid != 0 {
        return Err(Errno::EPERM);
    }
    match req {
        "release" => {
            let v = text(value)?;
            let mut w = v.split_ascii_whitespace();
            let (vers, off, len) = (num(w.next())?, num(w.next())?, num(w.next())?);
            if w.next().is_some() {
                return Err(Errno::EINVAL);
            }
            m.release_data(ino, off, len, vers).await
        }
        "stage" => {
            let nl = value
                .iter()
                .position(|&b| b == b'\n')
                .ok_or(Errno::EINVAL)?;
            let head = text(&value[..nl])?;
            let mut w = head.split_ascii_whitespace();
            let (vers, off) = (num(w.next())?, num(w.next())?);
            if w.next().is_some() {
                return Err(Errno::EINVAL);
            }
            m.stage(ino, vers, off, &value[nl + 1..]).await
        }
        _ => {
            let v = text(value)?;
            let mut w = v.split_ascii_whitespace();
            let target: u64 = num(w.next())?;
            let vers = num(w.next())?;
            let off = num(w.next())?;
            let count = num(w.next())?;
            let ops = num(w.next())?;
            let err: i64 = num(w.next())?;
            if w.next().is_some() {
                return Err(Errno::EINVAL);
            }
            m.data_wait_err(target, vers, off, count, ops, err)
                .await
                .map(|_| ())
        }
    }
}

/// The request name of a walk from `first` to `last`.
pub fn walk_name(index: WalkIndex, first: WalkEntry, last: WalkEntry) -> String {
    format!(
        "scoutvm.ctl.walk.{}.{}.{}.{}.{}",
        index.name(),
        first.major,
        first.ino,
        last.major,
        last.ino
    )
}
