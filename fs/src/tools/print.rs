//! print: dump a volume's metadata the way the reference `scoutfs print`
//! does (same order and line formats for the super, quorum blocks, alloc
//! list blocks and btree blocks), into any `core::fmt::Write`.
//!
//! A dumper, not a checker: it reads raw blocks, shows crc mismatches and
//! carries on; unreadable blocks are reported in the text. Trees are
//! printed level by level from the root (breadth first), bounded by the
//! maximum btree height so a damaged volume cannot loop it.

use crate::format::alloc::{extent_from_key, ALLOC_LIST_MAX_BLOCKS};
use crate::format::block::*;
use crate::format::hash::crc32c_block;
use crate::format::items::InodeItem;
use crate::format::key::{ty, zone, Key};
use crate::format::le::*;
use crate::format::quorum::{QuorumBlock, QUORUM_EVENT_NAMES};
use crate::format::super_block::*;
use crate::format::{
    LG_BLOCK_SHIFT, LG_BLOCK_SIZE, MAGIC_BTREE, QUORUM_BLKNO, QUORUM_BLOCKS, SM_BLOCK_SHIFT,
    SM_BLOCK_SIZE, SUPER_BLKNO,
};
use crate::storage::btree_block as bb;
use crate::storage::dev::BlockDev;
use ::alloc::vec;
use ::alloc::vec::Vec;
use core::fmt::{self, Write};

/// Why print stopped early.
#[derive(Debug)]
pub enum PrintError {
    Fmt,
    Io(crate::storage::dev::IoError),
    /// Not a scoutfs metadata device.
    NotMeta(&'static str),
}

impl From<fmt::Error> for PrintError {
    fn from(_: fmt::Error) -> Self {
        PrintError::Fmt
    }
}

impl fmt::Display for PrintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrintError::Fmt => f.write_str("output error"),
            PrintError::Io(e) => write!(f, "i/o error: {e}"),
            PrintError::NotMeta(w) => f.write_str(w),
        }
    }
}

fn hdr_line(out: &mut dyn Write, b: &[u8]) -> fmt::Result {
    let h = BlockHeader::decode(b);
    let crc = crc32c_block(b);
    let bad = if crc != h.crc {
        ::alloc::format!("(!= {crc:08x}) ")
    } else {
        ::alloc::string::String::new()
    };
    writeln!(
        out,
        "  hdr: crc {:08x} {bad}magic {:08x} fsid {:x} blkno {} seq {}",
        h.crc, h.magic, h.fsid, h.blkno, h.seq
    )
}

fn alroot(r: &AllocRoot) -> ::alloc::string::String {
    ::alloc::format!(
        "blkno {} seq {} height {} total_len {} flags 0x{:x}",
        r.root.bref.blkno,
        r.root.bref.seq,
        r.root.height,
        r.total_len,
        r.flags
    )
}

fn alhead(h: &AllocListHead) -> ::alloc::string::String {
    ::alloc::format!(
        "blkno {} seq {} total_nr {} first_nr {} flags 0x{:x}",
        h.bref.blkno,
        h.bref.seq,
        h.total_nr,
        h.first_nr,
        h.flags
    )
}

fn btroot(r: &BtreeRoot) -> ::alloc::string::String {
    ::alloc::format!(
        "blkno {} seq {:016x} height {}",
        r.bref.blkno,
        r.bref.seq,
        r.height
    )
}

/// Print the super block.
pub fn print_super(out: &mut dyn Write, sb: &SuperBlock, raw: &[u8]) -> fmt::Result {
    writeln!(out, "super blkno {SUPER_BLKNO}")?;
    hdr_line(out, raw)?;
    writeln!(out, "  fmt_vers {} uuid {}", sb.fmt_vers, sb.uuid_string())?;
    writeln!(out, "  flags: 0x{:016x}", sb.flags)?;
    writeln!(
        out,
        "  next_ino {} inode_count {} seq {}",
        sb.next_ino, sb.inode_count, sb.seq
    )?;
    writeln!(
        out,
        "  total_meta_blocks {} total_data_blocks {}",
        sb.total_meta_blocks, sb.total_data_blocks
    )?;
    writeln!(out, "  meta_alloc[0]: {}", alroot(&sb.meta_alloc[0]))?;
    writeln!(out, "  meta_alloc[1]: {}", alroot(&sb.meta_alloc[1]))?;
    writeln!(out, "  data_alloc: {}", alroot(&sb.data_alloc))?;
    for i in 0..2 {
        writeln!(
            out,
            "  server_meta_avail[{i}]: {}",
            alhead(&sb.server_meta_avail[i])
        )?;
    }
    for i in 0..2 {
        writeln!(
            out,
            "  server_meta_freed[{i}]: {}",
            alhead(&sb.server_meta_freed[i])
        )?;
    }
    writeln!(out, "  fs_root: {}", btroot(&sb.fs_root))?;
    writeln!(out, "  logs_root: {}", btroot(&sb.logs_root))?;
    writeln!(out, "  log_merge: {}", btroot(&sb.log_merge))?;
    writeln!(out, "  mounted_clients: {}", btroot(&sb.mounted_clients))?;
    writeln!(out, "  srch_root: {}", btroot(&sb.srch_root))?;
    writeln!(out, "  volume options:")?;
    writeln!(out, "    set_bits: {:016x}", sb.volopt.set_bits)?;
    if sb.volopt.set_bits & VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT != 0 {
        writeln!(
            out,
            "    data_alloc_zone_blocks: {}",
            sb.volopt.data_alloc_zone_blocks
        )?;
    }
    writeln!(out, "  quorum config version {}", sb.qconf.version)?;
    for (i, a) in sb.qconf.slots.iter().enumerate() {
        if a.family() == AF_IPV4 {
            writeln!(out, "    quorum slot {i:2}: {a}")?;
        }
    }
    Ok(())
}

fn print_quorum(out: &mut dyn Write, dev: &dyn BlockDev) -> Result<(), PrintError> {
    let mut b = vec![0u8; SM_BLOCK_SIZE];
    for i in 0..QUORUM_BLOCKS {
        let blkno = QUORUM_BLKNO + i;
        dev.read(blkno << SM_BLOCK_SHIFT, &mut b)
            .map_err(PrintError::Io)?;
        let q = QuorumBlock::decode(&b);
        writeln!(out, "quorum blkno {blkno} (slot {i})")?;
        hdr_line(out, &b)?;
        writeln!(out, "  write_nr {}", q.write_nr)?;
        for (e, name) in q.events.iter().zip(QUORUM_EVENT_NAMES) {
            writeln!(
                out,
                "  {name:>12}: rid {:016x} term {} write_nr {} ts {}.{:08}",
                e.rid, e.term, e.write_nr, e.ts.sec, e.ts.nsec
            )?;
        }
    }
    Ok(())
}

fn read_lg(dev: &dyn BlockDev, blkno: u64) -> Option<Vec<u8>> {
    let mut b = vec![0u8; LG_BLOCK_SIZE];
    let off = blkno.checked_mul(1u64 << LG_BLOCK_SHIFT)?;
    dev.read(off, &mut b).ok()?;
    Some(b)
}

fn print_list(
    out: &mut dyn Write,
    dev: &dyn BlockDev,
    name: &str,
    head: &AllocListHead,
) -> fmt::Result {
    let mut r = head.bref;
    let mut seen = ::alloc::collections::BTreeSet::new();
    while r.blkno != 0 {
        if !seen.insert(r.blkno) {
            return writeln!(
                out,
                "{name} alloc_list_block blkno {}: (list loops back)",
                r.blkno
            );
        }
        let Some(b) = read_lg(dev, r.blkno) else {
            return writeln!(
                out,
                "{name} alloc_list_block blkno {}: (unreadable)",
                r.blkno
            );
        };
        writeln!(out, "{name} alloc_list_block blkno {}", r.blkno)?;
        hdr_line(out, &b)?;
        let next = crate::storage::allocator::lb_next(&b);
        let (st, nr) = (
            crate::storage::allocator::lb_start(&b),
            crate::storage::allocator::lb_nr(&b),
        );
        writeln!(
            out,
            "  next blkno {} seq {} start {st} nr {nr}",
            next.blkno, next.seq
        )?;
        if st >= ALLOC_LIST_MAX_BLOCKS
            || nr > ALLOC_LIST_MAX_BLOCKS
            || st + nr > ALLOC_LIST_MAX_BLOCKS
        {
            writeln!(out, "  (invalid start and nr fields)")?;
        } else if nr > 0 {
            let mut line = ::alloc::string::String::from("  exts: ");
            let mut wid = line.len();
            let mut i = 0;
            while i < nr {
                let s = lb_blkno_at(&b, st + i);
                let mut len = 1;
                while i + len < nr && lb_blkno_at(&b, st + i + len) == s + len as u64 {
                    len += 1;
                }
                if wid >= 72 {
                    line.push_str("\n        ");
                    wid = 8;
                }
                let piece = ::alloc::format!("{s},{len} ");
                wid += piece.len();
                line.push_str(&piece);
                i += len;
            }
            writeln!(out, "{line}")?;
        }
        r = next;
    }
    Ok(())
}

fn lb_blkno_at(b: &[u8], i: usize) -> u64 {
    crate::storage::allocator::lb_blkno(b, i)
}

#[derive(Clone, Copy)]
enum Items {
    Alloc,
    Fs,
    Generic,
}

fn print_item(
    out: &mut dyn Write,
    kind: Items,
    k: &Key,
    seq: u64,
    flags: u8,
    val: &[u8],
) -> fmt::Result {
    match kind {
        Items::Alloc => {
            if let Some((s, l)) = extent_from_key(k) {
                if k.zone == zone::FREE_EXTENT_BLKNO {
                    return writeln!(out, "    free extent: blkno {s} len {l} end {}", k.first);
                }
                return writeln!(
                    out,
                    "    free extent: blkno {s} len {l} order {}",
                    u64::MAX - k.first
                );
            }
            writeln!(out, "    {k} {seq} (not a free extent)")
        }
        Items::Fs => {
            let d = if flags & crate::format::btree::ITEM_FLAG_DELETION != 0 {
                'd'
            } else {
                '-'
            };
            writeln!(out, "    {k} {seq} {d}")?;
            if d == 'd' {
                return Ok(());
            }
            print_fs_value(out, k, val)
        }
        Items::Generic => {
            writeln!(out, "    {k} {seq} flags 0x{flags:x} val_len {}", val.len())
        }
    }
}

fn print_fs_value(out: &mut dyn Write, k: &Key, val: &[u8]) -> fmt::Result {
    match (k.zone, k.ty) {
        (zone::INODE_INDEX, ty::INODE_INDEX_META_SEQ | ty::INODE_INDEX_DATA_SEQ) => {
            writeln!(out, "      index: major {} ino {}", k.second, k.third)
        }
        (zone::ORPHAN, ty::ORPHAN) => writeln!(out, "    orphan: ino {}", k.second),
        (zone::FS, ty::INODE) => match InodeItem::decode(val) {
            Ok(i) => {
                writeln!(
                    out,
                    "    inode: ino {} size {} version {} proj {} nlink {}",
                    k.first, i.size, i.version, i.proj, i.nlink
                )?;
                writeln!(
                    out,
                    "      uid {} gid {} mode 0{:o} rdev 0x{:x} flags 0x{:x}",
                    i.uid, i.gid, i.mode, i.rdev, i.flags
                )?;
                writeln!(
                    out,
                    "      next_readdir_pos {} meta_seq {} data_seq {} data_version {}",
                    i.next_readdir_pos, i.meta_seq, i.data_seq, i.data_version
                )?;
                writeln!(
                    out,
                    "      atime {}.{:08} ctime {}.{:08}",
                    i.atime.sec, i.atime.nsec, i.ctime.sec, i.ctime.nsec
                )?;
                writeln!(out, "      mtime {}.{:08}", i.mtime.sec, i.mtime.nsec)
            }
            Err(_) => writeln!(out, "      (bad inode value: {} bytes)", val.len()),
        },
        (zone::FS, ty::DATA_EXTENT) if val.len() == 16 => writeln!(
            out,
            "    extent: ino {} iblock {} len {} blkno {} flags {:x}",
            k.first,
            k.second.wrapping_sub(k.third).wrapping_add(1),
            k.third,
            get_u64(val, 0),
            val[8]
        ),
        _ => writeln!(out, "      (unknown zone {} type {})", k.zone, k.ty),
    }
}

fn print_tree(
    out: &mut dyn Write,
    dev: &dyn BlockDev,
    name: &str,
    root: &BtreeRoot,
    kind: Items,
) -> fmt::Result {
    if root.height == 0 || root.height > BtreeRoot::MAX_HEIGHT {
        return Ok(());
    }
    for level in (0..root.height).rev() {
        let mut seen = ::alloc::collections::BTreeSet::new();
        print_level(
            out,
            dev,
            name,
            &root.bref,
            root.height - 1,
            level,
            kind,
            &mut seen,
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn print_level(
    out: &mut dyn Write,
    dev: &dyn BlockDev,
    name: &str,
    bref: &BlockRef,
    at: u8,
    want: u8,
    kind: Items,
    seen: &mut ::alloc::collections::BTreeSet<u64>,
) -> fmt::Result {
    // a damaged tree may reference a block twice: print it once
    if !seen.insert(bref.blkno) {
        return writeln!(out, "{name} btree blkno {}: (referenced again)", bref.blkno);
    }
    let Some(b) = read_lg(dev, bref.blkno) else {
        return writeln!(out, "{name} btree blkno {}: (unreadable)", bref.blkno);
    };
    let h = BlockHeader::decode(&b);
    if h.magic != MAGIC_BTREE || bb::verify(&b, at).is_err() {
        return writeln!(
            out,
            "{name} btree blkno {}: (not a valid btree block at level {at})",
            bref.blkno
        );
    }
    if at == want {
        writeln!(out, "{name} btree blkno {}", bref.blkno)?;
        let crc = crc32c_block(&b);
        let bad = if crc != h.crc {
            ::alloc::format!("(!= {crc:08x}) ")
        } else {
            ::alloc::string::String::new()
        };
        writeln!(
            out,
            "  crc {:08x} {bad}fsid {:x} seq {} blkno {} ",
            h.crc, h.fsid, h.seq, h.blkno
        )?;
        writeln!(
            out,
            "  total_item_bytes {} mid_free_len {}",
            bb::total_item_bytes(&b),
            bb::mid_free_len(&b)
        )?;
        writeln!(
            out,
            "  level {} nr_items {} item_root.node {}",
            bb::level(&b),
            bb::nr_items(&b),
            get_u16(&b, 32)
        )?;
        if at == 0 {
            print_hash(out, &b)?;
        }
    }
    for (i, o) in bb::ordered(&b).into_iter().enumerate() {
        let k = bb::item_key(&b, o);
        let val = bb::item_val(&b, o);
        if want < at {
            let c = BlockRef::decode(val);
            if c.blkno != 0 {
                print_level(out, dev, name, &c, at - 1, want, kind, seen)?;
            }
            continue;
        }
        writeln!(
            out,
            "  [{i}] off {o} par {} l {} r {} h {} vo {} vl {}",
            get_u16(&b, o),
            get_u16(&b, o + 2),
            get_u16(&b, o + 4),
            b[o + 6],
            bb::item_val_off(&b, o),
            val.len()
        )?;
        if at > 0 {
            let c = BlockRef::decode(val);
            writeln!(out, "    {k}")?;
            writeln!(out, "    ref blkno {} seq {}", c.blkno, c.seq)?;
        } else {
            print_item(
                out,
                kind,
                &k,
                bb::item_seq(&b, o),
                bb::item_flags(&b, o),
                val,
            )?;
        }
    }
    Ok(())
}

fn print_hash(out: &mut dyn Write, b: &[u8]) -> fmt::Result {
    let entries = bb::hash_entries(b);
    let mut s = ::alloc::string::String::from("  item hash: ");
    let mut col = 13;
    for (i, o) in &entries {
        let piece = ::alloc::format!("{i},{o} ");
        col += piece.len();
        if col >= 78 {
            s.push_str("\n   ");
            col = 3;
        }
        s.push_str(&piece);
    }
    if col != 3 {
        s.push('\n');
    }
    out.write_str(&s)?;
    writeln!(
        out,
        "    ({} / {} populated, {}% load)",
        entries.len(),
        crate::format::btree::BTREE_LEAF_ITEM_HASH_NR,
        entries.len() * 100 / crate::format::btree::BTREE_LEAF_ITEM_HASH_NR
    )
}

/// Dump the volume on `meta`. Fails (after printing the super) when the
/// device is not a scoutfs meta device.
pub fn print_volume(dev: &dyn BlockDev, out: &mut dyn Write) -> Result<(), PrintError> {
    let mut raw = vec![0u8; SM_BLOCK_SIZE];
    dev.read(SUPER_BLKNO << SM_BLOCK_SHIFT, &mut raw)
        .map_err(PrintError::Io)?;
    let sb = SuperBlock::decode(&raw);
    if sb.hdr.magic != crate::format::MAGIC_SUPER {
        return Err(PrintError::NotMeta("no scoutfs super block found"));
    }
    print_super(out, &sb, &raw)?;
    if sb.flags & FLAG_IS_META_BDEV == 0 {
        return Err(PrintError::NotMeta(
            "printing from the data device is not allowed",
        ));
    }
    print_quorum(out, dev)?;
    print_tree(
        out,
        dev,
        "mounted_clients",
        &sb.mounted_clients,
        Items::Generic,
    )?;
    print_tree(out, dev, "log_merge", &sb.log_merge, Items::Generic)?;
    for i in 0..2 {
        print_list(
            out,
            dev,
            &::alloc::format!("server_meta_avail[{i}]"),
            &sb.server_meta_avail[i],
        )?;
    }
    for i in 0..2 {
        print_list(
            out,
            dev,
            &::alloc::format!("server_meta_freed[{i}]"),
            &sb.server_meta_freed[i],
        )?;
    }
    for i in 0..2 {
        print_tree(
            out,
            dev,
            &::alloc::format!("meta_alloc[{i}]"),
            &sb.meta_alloc[i].root,
            Items::Alloc,
        )?;
    }
    print_tree(out, dev, "data_alloc", &sb.data_alloc.root, Items::Alloc)?;
    print_tree(out, dev, "srch_root", &sb.srch_root, Items::Generic)?;
    print_tree(out, dev, "logs_root", &sb.logs_root, Items::Generic)?;
    print_tree(out, dev, "fs_root", &sb.fs_root, Items::Fs)?;
    Ok(())
}
