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
//! * set `scoutvm.ctl.setattr` = `VERS SIZE OFFLINE CTIME CRTIME`
//!   (`setattr_more`; `-` leaves a field alone, `OFFLINE` 0 or 1, times
//!   `SEC.NSEC`).
//! * set `scoutvm.ctl.punch_offline` = `VERS OFF LEN`.
//! * set `scoutvm.ctl.move_blocks` = `FROM_INO FROM_OFF LEN TO_OFF VERS
//!   FLAGS` on the target file (`move_blocks`; `FLAGS` 1 stages into the
//!   target's offline extents, `VERS` is then the target's data_version).
//! * get `scoutvm.ctl.referring.INO.DIR.POS` -> the links to `INO` from
//!   the cursor `(DIR, POS)` on, a record each:
//!   `DIR POS INO DTYPE NAMELEN NAME\n` (`DTYPE` the Linux `DT_*` code,
//!   `NAME` its `NAMELEN` raw bytes).
//! * get `scoutvm.ctl.ino_path.INO.DIR.POS` -> the paths of the links to
//!   `INO` from the cursor on, a record each: `DIR POS LEN PATH\n`
//!   (`PATH` from the root without a leading `/`, `LEN` raw bytes).
//! * get `scoutvm.ctl.totals.A.B.C` -> the `.totl.` totals of the volume
//!   from the name `A.B.C` on, up to [`MAX_LINES`] lines
//!   `A.B.C = TOTAL, COUNT` (signed, as `scoutfs read-xattr-totals`
//!   prints them); committed deltas of every mount, no lock taken.
//! * get `scoutvm.ctl.indx.MAJ.MIN.INO.LAST_MAJ.LAST_MIN.LAST_INO` -> the
//!   `.indx.` index from the first position to the last, up to
//!   [`MAX_LINES`] lines `MAJOR MINOR INO` (committed entries of every
//!   mount, no lock taken); page from the last line's `INO + 1`.
//!
//! * get `scoutvm.ctl.search.FIRST_INO.LAST_INO.NAME` (`NAME` the full
//!   `.srch.`-tagged xattr name, dots and all) -> a first line
//!   `last N` (the answer covers inodes up to `N`; below `LAST_INO` when
//!   the search was capped at [`MAX_LINES`] entries: ask again from
//!   `N + 1`), then one line per inode that has the xattr, ascending.
//!
//! Answers of names end when [`NAMES_BUDGET`] bytes are used; the next
//! cursor is the last record's `(DIR, POS + 1)`.
//!
//! Changing requests need root. Answers stay under the kernel's 64 KiB
//! xattr limit; callers page with the last record as the next cursor.
//! Malformed requests are `EINVAL`, unknown names `EOPNOTSUPP`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::errno::{Errno, FsResult};
use crate::posix::archive::{dwo_names, MoveBlocks, SetAttrMore, WalkEntry, WalkIndex};
use crate::posix::mount::{IndxEntry, Mount, XattrTotal};
use crate::posix::types::{Cred, Ino};
use crate::runtime::env::Timespec;

/// The namespace of control requests.
pub const CTL_PREFIX: &[u8] = b"scoutvm.ctl.";
/// Most records in one answer (each line is well under 64 bytes).
pub const MAX_LINES: usize = 1000;

/// Answers with names stop growing past this many bytes (one more record
/// of at most a path fits under 64 KiB).
pub const NAMES_BUDGET: usize = 56 << 10;

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

/// A field that may be `-` (left alone).
fn opt<T>(s: Option<&str>, parse: fn(Option<&str>) -> FsResult<T>) -> FsResult<Option<T>> {
    match s {
        Some("-") => Ok(None),
        s => parse(s).map(Some),
    }
}

/// `SEC.NSEC` (`NSEC` below 10^9, any number of digits up to 9) or `SEC`.
pub fn timespec(s: Option<&str>) -> FsResult<Timespec> {
    let s = s.ok_or(Errno::EINVAL)?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec = sec.parse().map_err(|_| Errno::EINVAL)?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Errno::EINVAL);
    }
    let mut nsec = 0u32;
    for i in 0..9 {
        nsec = nsec * 10 + frac.as_bytes().get(i).map_or(0, |b| (b - b'0') as u32);
    }
    Ok(Timespec { sec, nsec })
}

/// Answer a get request on `ino`.
pub async fn ctl_get(m: &Mount, _cred: &Cred, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
    let req = text(&name[CTL_PREFIX.len()..])?;
    if let Some(rest) = req.strip_prefix("search.") {
        let mut p = rest.splitn(3, '.');
        let first: u64 = num(p.next())?;
        let last: u64 = num(p.next())?;
        let xname = p.next().ok_or(Errno::EINVAL)?;
        let r = m
            .search_xattrs(xname.as_bytes(), first, last, MAX_LINES)
            .await?;
        let mut out = format!("last {}\n", r.last_ino);
        for ino in r.inos {
            let _ = writeln!(out, "{ino}");
        }
        return Ok(out.into_bytes());
    }
    let mut parts = req.split('.');
    let mut out = String::new();
    match parts.next() {
        Some(which @ ("referring" | "ino_path")) => {
            let target: u64 = num(parts.next())?;
            let dir: u64 = num(parts.next())?;
            let pos: u64 = num(parts.next())?;
            if parts.next().is_some() {
                return Err(Errno::EINVAL);
            }
            return if which == "referring" {
                referring(m, target, dir, pos).await
            } else {
                ino_paths(m, target, dir, pos).await
            };
        }
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
        Some("indx") => {
            let first = IndxEntry {
                major: num(parts.next())?,
                minor: num(parts.next())?,
                ino: num(parts.next())?,
            };
            let last = IndxEntry {
                major: num(parts.next())?,
                minor: num(parts.next())?,
                ino: num(parts.next())?,
            };
            if parts.next().is_some() {
                return Err(Errno::EINVAL);
            }
            for e in m.read_xattr_index(first, last, MAX_LINES).await? {
                let _ = writeln!(out, "{} {} {}", e.major, e.minor, e.ino);
            }
        }
        Some("totals") => {
            let from = [num(parts.next())?, num(parts.next())?, num(parts.next())?];
            if parts.next().is_some() {
                return Err(Errno::EINVAL);
            }
            for t in m.read_xattr_totals(from, MAX_LINES).await? {
                let _ = writeln!(out, "{}", totals_line(&t));
            }
        }
        _ => return Err(Errno::EOPNOTSUPP),
    }
    Ok(out.into_bytes())
}

/// An `.indx.` position as `scoutfs read-xattr-index` names it on its
/// command line and prints it: `MAJOR.MINOR.INO`.
pub fn parse_indx_entry(s: &str) -> Option<IndxEntry> {
    let mut it = s.split('.');
    let e = IndxEntry {
        major: it.next()?.parse().ok()?,
        minor: it.next()?.parse().ok()?,
        ino: it.next()?.parse().ok()?,
    };
    it.next().is_none().then_some(e)
}

/// The position after `e` (to page on from the last entry answered).
pub fn next_indx_entry(e: IndxEntry) -> Option<IndxEntry> {
    if let Some(ino) = e.ino.checked_add(1) {
        return Some(IndxEntry { ino, ..e });
    }
    if let Some(minor) = e.minor.checked_add(1) {
        return Some(IndxEntry { minor, ino: 0, ..e });
    }
    e.major.checked_add(1).map(|major| IndxEntry {
        major,
        minor: 0,
        ino: 0,
    })
}

/// A total as `scoutfs read-xattr-totals` prints it: `A.B.C = TOTAL, COUNT`.
pub fn totals_line(t: &XattrTotal) -> String {
    format!(
        "{}.{}.{} = {}, {}",
        t.name[0], t.name[1], t.name[2], t.total, t.count
    )
}

/// The name after `name` in totals order (`A.B.C` counting up from `C`),
/// or None past the last.
pub fn next_totals_name(name: [u64; 3]) -> Option<[u64; 3]> {
    let [a, b, c] = name;
    match (c.checked_add(1), b.checked_add(1), a.checked_add(1)) {
        (Some(c), _, _) => Some([a, b, c]),
        (None, Some(b), _) => Some([a, b, 0]),
        (None, None, Some(a)) => Some([a, 0, 0]),
        (None, None, None) => None,
    }
}

/// The next cursor after the link at `(dir, pos)`, or None past the last.
fn next_cursor(dir: u64, pos: u64) -> Option<(u64, u64)> {
    match pos.checked_add(1) {
        Some(p) => Some((dir, p)),
        None => dir.checked_add(1).map(|d| (d, 0)),
    }
}

async fn referring(m: &Mount, ino: Ino, dir: u64, pos: u64) -> FsResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Some((dir, pos));
    while let Some((dir, pos)) = cur {
        if out.len() >= NAMES_BUDGET {
            break;
        }
        let found = m.referring_entries(ino, dir, pos, 64).await?;
        let Some(last) = found.last() else {
            break;
        };
        cur = next_cursor(last.dir, last.pos);
        for e in found {
            if out.len() >= NAMES_BUDGET {
                // the cursor starts again at this entry
                cur = Some((e.dir, e.pos));
                break;
            }
            out.extend_from_slice(
                format!(
                    "{} {} {} {} {} ",
                    e.dir,
                    e.pos,
                    e.ino,
                    e.dtype,
                    e.name.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(&e.name);
            out.push(b'\n');
        }
    }
    Ok(out)
}

async fn ino_paths(m: &Mount, ino: Ino, dir: u64, pos: u64) -> FsResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Some((dir, pos));
    while let Some((dir, pos)) = cur {
        if out.len() >= NAMES_BUDGET {
            break;
        }
        let Some(p) = m.ino_path(ino, dir, pos).await? else {
            break;
        };
        out.extend_from_slice(format!("{} {} {} ", p.dir, p.pos, p.path.len()).as_bytes());
        out.extend_from_slice(&p.path);
        out.push(b'\n');
        cur = next_cursor(p.dir, p.pos);
    }
    Ok(out)
}

/// One record of a names answer.
#[derive(Debug, PartialEq, Eq)]
pub struct NamedRecord<'a> {
    pub dir: u64,
    pub pos: u64,
    /// The fields between `POS` and `LEN`.
    pub numbers: Vec<u64>,
    pub name: &'a [u8],
}

/// The first record of a names answer and the rest of the answer.
/// `numbers` is how many decimal fields sit between `POS` and `LEN`.
pub fn parse_named_record(b: &[u8], numbers: usize) -> Option<(NamedRecord<'_>, &[u8])> {
    let mut fields = Vec::new();
    let mut rest = b;
    for _ in 0..numbers + 3 {
        let sp = rest.iter().position(|&c| c == b' ')?;
        fields.push(
            core::str::from_utf8(&rest[..sp])
                .ok()?
                .parse::<u64>()
                .ok()?,
        );
        rest = &rest[sp + 1..];
    }
    let len = usize::try_from(*fields.last()?).ok()?;
    if rest.len() <= len || rest[len] != b'\n' {
        return None;
    }
    let (name, tail) = (&rest[..len], &rest[len + 1..]);
    let rec = NamedRecord {
        dir: fields[0],
        pos: fields[1],
        numbers: fields[2..2 + numbers].to_vec(),
        name,
    };
    Some((rec, tail))
}

/// Carry out a set request on `ino`.
pub async fn ctl_set(m: &Mount, cred: &Cred, ino: Ino, name: &[u8], value: &[u8]) -> FsResult<()> {
    let req = text(&name[CTL_PREFIX.len()..])?;
    if !matches!(
        req,
        "release" | "stage" | "data_wait_err" | "setattr" | "punch_offline" | "move_blocks"
    ) {
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
        "setattr" => {
            let v = text(value)?;
            let mut w = v.split_ascii_whitespace();
            let data_version = opt(w.next(), num)?;
            let size = opt(w.next(), num)?;
            let offline = match w.next() {
                Some("0") => false,
                Some("1") => true,
                _ => return Err(Errno::EINVAL),
            };
            let ctime = opt(w.next(), timespec)?;
            let crtime = opt(w.next(), timespec)?;
            if w.next().is_some() {
                return Err(Errno::EINVAL);
            }
            let sa = SetAttrMore {
                data_version,
                size,
                offline,
                ctime,
                crtime,
            };
            m.setattr_more(ino, &sa).await
        }
        "punch_offline" => {
            let v = text(value)?;
            let mut w = v.split_ascii_whitespace();
            let (vers, off, len) = (num(w.next())?, num(w.next())?, num(w.next())?);
            if w.next().is_some() {
                return Err(Errno::EINVAL);
            }
            m.punch_offline(ino, vers, off, len).await
        }
        "move_blocks" => {
            let v = text(value)?;
            let mut w = v.split_ascii_whitespace();
            let mb = MoveBlocks {
                from: num(w.next())?,
                from_off: num(w.next())?,
                len: num(w.next())?,
                to_off: num(w.next())?,
                data_version: num(w.next())?,
                flags: num(w.next())?,
            };
            if w.next().is_some() {
                return Err(Errno::EINVAL);
            }
            m.move_blocks(cred, ino, &mb).await
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
/// The request name of a search (see the module comment).
pub fn search_name(first_ino: u64, last_ino: u64, xattr: &str) -> String {
    format!("scoutvm.ctl.search.{first_ino}.{last_ino}.{xattr}")
}

/// Parse a search answer: how far it covers and the inodes.
pub fn parse_search_answer(ans: &str) -> Option<(u64, Vec<u64>)> {
    let mut lines = ans.lines();
    let last = lines.next()?.strip_prefix("last ")?.parse().ok()?;
    let inos = lines
        .map(|l| l.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    Some((last, inos))
}

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
