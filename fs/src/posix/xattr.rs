//! Extended attributes: XATTR part items keyed by (ino, name hash, id,
//! part), and the scoutfs tag prefixes with their side items.
//!
//! Owns name parsing (namespaces `user.`, `trusted.`, `security.`,
//! `scoutfs.`; tags `hide.`, `srch.`, `totl.`, `indx.` after `scoutfs.`),
//! lookup by name (walk the ids under a name hash), create/replace/remove
//! and listing, and the tag effects: `.totl.` deltas, `.indx.` index items,
//! `.srch.` entries. Permission rules are the caller's (`vfs`).

use alloc::vec::Vec;

use crate::errno::{Errno, FsResult};
use crate::format::hash::{fnv1a64, xattr_name_hash};
use crate::format::items::{indx_key, totl_key, xattr_encode_parts, xattr_key, XattrHeader};
use crate::format::key::Key;
use crate::posix::backend::{Backend, SrchEntry};
use crate::posix::inode::Inode;
use crate::posix::item::ItemCache;
use crate::posix::types::{XATTR_CREATE, XATTR_REPLACE};

/// The namespace of an xattr name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Namespace {
    User,
    Trusted,
    Security,
    Scoutfs,
}

const PREFIXES: [(&[u8], Namespace); 4] = [
    (b"user.", Namespace::User),
    (b"trusted.", Namespace::Trusted),
    (b"security.", Namespace::Security),
    (b"scoutfs.", Namespace::Scoutfs),
];

/// Which prefix a name starts with, if any (before validation).
pub fn namespace_of(name: &[u8]) -> Option<Namespace> {
    PREFIXES
        .iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|(_, ns)| *ns)
}

/// scoutfs tags found after `scoutfs.`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tags {
    pub hide: bool,
    pub srch: bool,
    pub totl: bool,
    pub indx: bool,
}

impl Tags {
    pub fn any(&self) -> bool {
        self.hide || self.srch || self.totl || self.indx
    }
}

const TAG_LEN: usize = 5;

/// Parse the tags of a name as scoutfs does: names that do not start with
/// `scoutfs.` or are too short to hold a tag and one more byte are
/// untagged; a `scoutfs.` name whose first word is not a tag, or that
/// repeats a tag, is `EINVAL`.
pub fn parse_tags(name: &[u8]) -> FsResult<Tags> {
    let mut t = Tags::default();
    let prefix = b"scoutfs.";
    if name.len() < prefix.len() + TAG_LEN + 1 || !name.starts_with(prefix) {
        return Ok(t);
    }
    let mut rest = &name[prefix.len()..];
    let mut found = false;
    loop {
        let slot = if rest.starts_with(b"hide.") {
            &mut t.hide
        } else if rest.starts_with(b"indx.") {
            &mut t.indx
        } else if rest.starts_with(b"srch.") {
            &mut t.srch
        } else if rest.starts_with(b"totl.") {
            &mut t.totl
        } else {
            if !found {
                return Err(Errno::EINVAL);
            }
            break;
        };
        if *slot {
            return Err(Errno::EINVAL);
        }
        *slot = true;
        found = true;
        rest = &rest[TAG_LEN..];
    }
    Ok(t)
}

/// A u64 as scoutfs accepts it in `.totl.` names and values: 1..=23 chars,
/// kstrtoull base 0 (0x hex, leading-0 octal, decimal), no leading `+`, no
/// trailing newline.
pub fn parse_totl_u64(s: &[u8]) -> FsResult<u64> {
    if s.is_empty() || s.len() > 23 || s[0] == b'+' || s[s.len() - 1] == b'\n' {
        return Err(Errno::EINVAL);
    }
    let (digits, radix) =
        if s.len() >= 3 && s[0] == b'0' && (s[1] | 0x20) == b'x' && s[2].is_ascii_hexdigit() {
            (&s[2..], 16)
        } else if s[0] == b'0' {
            (s, 8)
        } else {
            (s, 10)
        };
    let mut v: u64 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix).ok_or(Errno::EINVAL)?;
        v = v
            .checked_mul(radix as u64)
            .and_then(|v| v.checked_add(d as u64))
            .ok_or(Errno::EINVAL)?;
    }
    Ok(v)
}

/// The last `N` dot-separated u64s of a name (`....a.b.c`).
fn parse_dotted<const N: usize>(name: &[u8]) -> FsResult<[u64; N]> {
    let mut out = [0u64; N];
    let mut end = name.len();
    let mut u = N;
    let mut i = name.len();
    while u > 0 && i > 0 {
        i -= 1;
        if name[i] != b'.' {
            continue;
        }
        out[u - 1] = parse_totl_u64(&name[i + 1..end])?;
        end = i;
        u -= 1;
    }
    if u == 0 {
        Ok(out)
    } else {
        Err(Errno::EINVAL)
    }
}

/// The `.totl.` item key a name maps to.
pub fn totl_key_of(name: &[u8]) -> FsResult<Key> {
    let [a, b, c] = parse_dotted::<3>(name)?;
    Ok(totl_key(a, b, c))
}

/// (major, minor) of an `.indx.` name.
pub fn indx_of(name: &[u8]) -> FsResult<(u8, u64)> {
    let [major, minor] = parse_dotted::<2>(name)?;
    let major = u8::try_from(major).map_err(|_| Errno::EINVAL)?;
    Ok((major, minor))
}

/// An xattr found on an inode.
#[derive(Clone, Debug)]
pub struct Found {
    pub id: u64,
    pub header: XattrHeader,
    pub part0: crate::posix::backend::Value,
}

impl Found {
    /// The value bytes in part 0.
    pub fn value_head(&self) -> &[u8] {
        self.header.value_head(&self.part0)
    }
}

fn xattr_range(ino: u64) -> (Key, Key) {
    (
        xattr_key(ino, 0, 0, 0),
        xattr_key(ino, u32::MAX, u64::MAX, u8::MAX),
    )
}

/// Find the xattr called `name`.
pub async fn find(items: &ItemCache, ino: u64, name: &[u8]) -> FsResult<Option<Found>> {
    let hash = xattr_name_hash(name);
    let last = xattr_key(ino, hash, u64::MAX, u8::MAX);
    let mut cur = xattr_key(ino, hash, 0, 0);
    while let Some((key, val)) = items.next(cur, last).await? {
        if key.fourth != 0 {
            return Err(Errno::EIO);
        }
        let header = XattrHeader::decode(&val)?;
        if header.name(&val) == name {
            return Ok(Some(Found {
                id: key.third,
                header,
                part0: val,
            }));
        }
        if key.third == u64::MAX {
            break;
        }
        cur = xattr_key(ino, hash, key.third + 1, 0);
    }
    Ok(None)
}

/// The whole value of a found xattr.
pub async fn read_value(items: &ItemCache, ino: u64, name: &[u8], f: &Found) -> FsResult<Vec<u8>> {
    let mut v = Vec::with_capacity(f.header.val_len);
    v.extend_from_slice(f.value_head());
    let hash = xattr_name_hash(name);
    for part in 1..f.header.nr_parts() {
        let val = items
            .lookup(xattr_key(ino, hash, f.id, part as u8))
            .await?
            .ok_or(Errno::EIO)?;
        if val.len() != f.header.part_len(part) {
            return Err(Errno::EIO);
        }
        v.extend_from_slice(&val);
    }
    if v.len() != f.header.val_len {
        return Err(Errno::EIO);
    }
    Ok(v)
}

/// Every xattr name of the inode in key order; hidden (`.hide.`) names
/// only when `show_hidden`.
pub async fn list(items: &ItemCache, ino: u64, show_hidden: bool) -> FsResult<Vec<Vec<u8>>> {
    let (mut cur, last) = xattr_range(ino);
    let mut out = Vec::new();
    while let Some((key, val)) = items.next(cur, last).await? {
        if key.fourth != 0 {
            return Err(Errno::EIO);
        }
        let h = XattrHeader::decode(&val)?;
        let name = h.name(&val);
        let hidden = parse_tags(name).map(|t| t.hide).unwrap_or(false);
        if show_hidden || !hidden {
            out.push(name.to_vec());
        }
        // the next xattr id (or name hash)
        cur = if key.third < u64::MAX {
            Key::new(key.zone, ino, key.ty, key.second, key.third + 1, 0)
        } else if key.second < u64::MAX {
            Key::new(key.zone, ino, key.ty, key.second + 1, 0, 0)
        } else {
            break;
        };
    }
    Ok(out)
}

/// Create, replace (value `Some`) or remove (`None`) an xattr whose name
/// and permissions the caller validated. `tags` are the name's tags.
/// Updates `next_xattr_id` in `inode` (the caller stores the inode).
pub async fn set(
    items: &ItemCache,
    backend: &dyn Backend,
    inode: &mut Inode,
    name: &[u8],
    tags: Tags,
    value: Option<&[u8]>,
    flags: u32,
) -> FsResult<()> {
    let ino = inode.ino;
    let totl_k = if tags.totl {
        Some(totl_key_of(name)?)
    } else {
        None
    };
    let indx = if tags.indx {
        if backend.format_version() < 2 {
            return Err(Errno::EINVAL);
        }
        Some(indx_of(name)?)
    } else {
        None
    };
    let found = find(items, ino, name).await?;
    match (&found, flags) {
        (None, f) if f & XATTR_REPLACE != 0 => return Err(Errno::ENODATA),
        (Some(_), f) if f & XATTR_CREATE != 0 => return Err(Errno::EEXIST),
        _ => {}
    }
    if found.is_none() && value.is_none() {
        return Ok(());
    }
    if indx.is_some() {
        if value.is_some_and(|v| !v.is_empty()) {
            return Err(Errno::EINVAL);
        }
        if found.is_some() && value.is_some() {
            return Ok(());
        }
    }
    let mut totl_delta = (0i64, 0i64);
    if let Some(f) = &found {
        if tags.totl {
            let old = parse_totl_u64(f.value_head())?;
            totl_delta.0 = totl_delta.0.wrapping_sub(old as i64);
            totl_delta.1 -= 1;
        }
    }
    if let Some(v) = value {
        if tags.totl {
            let new = parse_totl_u64(v)?;
            totl_delta.0 = totl_delta.0.wrapping_add(new as i64);
            totl_delta.1 += 1;
        }
    }

    let hash = xattr_name_hash(name);
    let id = match &found {
        Some(f) => f.id,
        None => {
            let id = inode.item.next_xattr_id;
            inode.item.next_xattr_id = id.checked_add(1).ok_or(Errno::EOVERFLOW)?;
            id
        }
    };
    // Tag side effects.
    if let Some((major, minor)) = indx {
        let k = indx_key(major, minor, ino, id);
        match value {
            Some(_) => items.write(k, &[]),
            None => items.delete(k),
        }
    }
    if tags.srch && !(found.is_some() && value.is_some()) {
        items.srch_add(SrchEntry {
            hash: fnv1a64(name),
            ino,
            id,
        });
    }
    if let Some(k) = totl_k {
        items.totl_delta(k, totl_delta.0, totl_delta.1);
    }
    // The part items.
    let old_parts = found.as_ref().map_or(0, |f| f.header.nr_parts());
    let new_parts = match value {
        Some(v) => {
            let parts = xattr_encode_parts(name, v);
            for (i, p) in parts.iter().enumerate() {
                let k = xattr_key(ino, hash, id, i as u8);
                if i < old_parts {
                    items.write(k, p);
                } else {
                    items.create_new(k, p);
                }
            }
            parts.len()
        }
        None => 0,
    };
    for i in new_parts..old_parts {
        items.delete(xattr_key(ino, hash, id, i as u8));
    }
    Ok(())
}

/// Undo the tag effects of an xattr whose items are being deleted with its
/// inode (`part0` is its first item).
pub fn forget_tags(items: &ItemCache, ino: u64, key: &Key, part0: &[u8]) -> FsResult<()> {
    let h = XattrHeader::decode(part0)?;
    let name = h.name(part0);
    let Ok(tags) = parse_tags(name) else {
        return Ok(());
    };
    let id = key.third;
    if tags.srch {
        items.srch_add(SrchEntry {
            hash: fnv1a64(name),
            ino,
            id,
        });
    }
    if tags.totl {
        if let (Ok(k), Ok(v)) = (totl_key_of(name), parse_totl_u64(h.value_head(part0))) {
            items.totl_delta(k, (v as i64).wrapping_neg(), -1);
        }
    }
    if tags.indx {
        if let Ok((major, minor)) = indx_of(name) {
            items.delete(indx_key(major, minor, ino, id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_like_scoutfs() {
        assert_eq!(parse_tags(b"user.foo").unwrap(), Tags::default());
        assert_eq!(
            parse_tags(b"scoutfs.hide.").unwrap(),
            Tags::default(),
            "too short to hold a tag"
        );
        let t = parse_tags(b"scoutfs.hide.srch.name").unwrap();
        assert!(t.hide && t.srch && !t.totl && !t.indx);
        assert_eq!(parse_tags(b"scoutfs.other.name"), Err(Errno::EINVAL));
        assert_eq!(parse_tags(b"scoutfs.hide.hide.x"), Err(Errno::EINVAL));
        assert!(parse_tags(b"scoutfs.totl.a.1.2.3").unwrap().totl);
    }

    #[test]
    fn totl_numbers() {
        assert_eq!(parse_totl_u64(b"123"), Ok(123));
        assert_eq!(parse_totl_u64(b"0x1f"), Ok(31));
        assert_eq!(parse_totl_u64(b"017"), Ok(15));
        assert_eq!(parse_totl_u64(b"0"), Ok(0));
        assert_eq!(parse_totl_u64(b"18446744073709551615"), Ok(u64::MAX));
        for bad in [
            &b""[..],
            b"+1",
            b"1\n",
            b"-1",
            b"12a",
            b"09",
            b"0x",
            b"18446744073709551616",
        ] {
            assert_eq!(parse_totl_u64(bad), Err(Errno::EINVAL), "{bad:?}");
        }
        assert_eq!(totl_key_of(b"scoutfs.totl.n.1.2.3"), Ok(totl_key(1, 2, 3)));
        assert_eq!(totl_key_of(b"scoutfs.totl.2.3"), Err(Errno::EINVAL));
        assert_eq!(totl_key_of(b"scoutfs.totl.x.1..3"), Err(Errno::EINVAL));
        assert_eq!(indx_of(b"scoutfs.indx.a.7.99"), Ok((7, 99)));
        assert_eq!(indx_of(b"scoutfs.indx.a.256.99"), Err(Errno::EINVAL));
    }
}
