//! print: dump a volume's metadata the way the reference `scoutfs print`
//! does (same order and line formats for the super, quorum blocks, alloc
//! list blocks and btree blocks), into any `core::fmt::Write`. Items are
//! decoded by the tree they are in: free extents, fs items (inode, xattr,
//! dirent/readdir/backref, symlink, extent, index, orphan, quota, totl,
//! indx), log trees (whose own allocators, srch files and item trees follow
//! logs_root), mounted clients, log merge and srch items, and the srch
//! files' parent and leaf blocks with their delta-coded entries.
//!
//! A dumper, not a checker: it reads raw blocks, shows crc mismatches and
//! carries on; unreadable blocks are reported in the text. Trees are
//! printed level by level from the root (breadth first), bounded by the
//! maximum btree height so a damaged volume cannot loop it.

use crate::format::alloc::ALLOC_LIST_MAX_BLOCKS;
use crate::format::block::*;
use crate::format::hash::crc32c_block;
use crate::format::items::{
    indx_key_fields, InodeItem, DIRENT_HEADER_BYTES, TOTL_VAL_BYTES, XATTR_HEADER_BYTES,
};
use crate::format::key::{ty, zone, Key, KEY_BYTES};
use crate::format::le::*;
use crate::format::log::{
    lt_off, LogTrees, MergeComplete, MergeFreeing, MergeRange, MergeRequest, MergeStatus,
    MountedClient, SrchEntry, SrchFile,
};
use crate::format::quorum::{QuorumBlock, QUORUM_EVENT_NAMES};
use crate::format::super_block::*;
use crate::format::{
    LG_BLOCK_SHIFT, LG_BLOCK_SIZE, MAGIC_BTREE, NAME_LEN_MAX, QUORUM_BLKNO, QUORUM_BLOCKS,
    SM_BLOCK_SHIFT, SM_BLOCK_SIZE, SUPER_BLKNO,
};
use crate::storage::btree_block as bb;
use crate::storage::dev::BlockDev;
use ::alloc::collections::BTreeSet;
use ::alloc::format;
use ::alloc::string::String;
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

/// How the items of a tree are decoded (the tree they are in says what
/// they are).
#[derive(Clone, Copy)]
enum Items {
    /// Free extents (the allocator trees).
    Alloc,
    /// fs_root and the log trees' item trees.
    Fs,
    LogTrees,
    MountedClients,
    LogMerge,
    Srch,
}

/// The key of a parent item: the reference prints it the way the tree's
/// leaf printer prints a key without a value.
fn print_parent_key(out: &mut dyn Write, kind: Items, k: &Key) -> fmt::Result {
    match kind {
        Items::Alloc => print_free_extent(out, k),
        Items::Fs => writeln!(out, "    {k} 0 -"),
        Items::LogTrees => writeln!(out, "    rid {} nr {}", k.first, k.second),
        Items::MountedClients => writeln!(out, "    rid {:016x}", k.first),
        Items::LogMerge => Ok(()),
        Items::Srch => writeln!(out, "    {k}"),
    }
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
        Items::Alloc => print_free_extent(out, k),
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
        Items::LogTrees => print_log_trees(out, k, val),
        Items::MountedClients => print_mounted_client(out, k, val),
        Items::LogMerge => print_log_merge(out, k, val),
        Items::Srch => print_srch_item(out, k, val),
    }
}

/// A free extent from its key alone (leaf and parent keys alike; the
/// arithmetic wraps as the reference's does on a key that is no extent).
fn print_free_extent(out: &mut dyn Write, k: &Key) -> fmt::Result {
    if k.zone == zone::FREE_EXTENT_BLKNO {
        let (end, len) = (k.first, k.second);
        writeln!(
            out,
            "    free extent: blkno {} len {len} end {end}",
            end.wrapping_sub(len).wrapping_add(1)
        )
    } else {
        let (revord, end, len) = (k.first, k.second, k.third);
        writeln!(
            out,
            "    free extent: blkno {} len {len} order {}",
            end.wrapping_sub(len).wrapping_add(1),
            u64::MAX - revord
        )
    }
}

/// Name bytes as the reference shows them: at most 255, unprintable
/// bytes as '.'.
fn printable(b: &[u8]) -> String {
    b.iter()
        .take(NAME_LEN_MAX)
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '.'
            }
        })
        .collect()
}

fn short(out: &mut dyn Write, what: &str, val: &[u8]) -> fmt::Result {
    writeln!(out, "      (short {what} value: val_len {})", val.len())
}

fn print_fs_value(out: &mut dyn Write, k: &Key, val: &[u8]) -> fmt::Result {
    match k.zone {
        zone::INODE_INDEX
            if (ty::INODE_INDEX_META_SEQ..=ty::INODE_INDEX_DATA_SEQ).contains(&k.ty) =>
        {
            writeln!(out, "      index: major {} ino {}", k.second, k.third)
        }
        zone::ORPHAN if k.ty == ty::ORPHAN => writeln!(out, "    orphan: ino {}", k.second),
        zone::QUOTA => print_quota(out, k, val),
        zone::XATTR_TOTL => {
            if val.len() < TOTL_VAL_BYTES {
                return short(out, "xattr totl", val);
            }
            // signed: a log tree holds deltas
            writeln!(
                out,
                "    xattr totl: {}.{}.{} = {}, {}",
                k.first,
                k.second,
                k.third,
                get_u64(val, 0) as i64,
                get_u64(val, 8) as i64
            )
        }
        // The reference leaves the newline off this line; we end it.
        zone::XATTR_INDX => {
            let (major, minor, ino, xid) = indx_key_fields(k);
            writeln!(
                out,
                "    xattr indx: major {major} minor {minor} ino {ino} xid {xid}"
            )
        }
        zone::FS => match k.ty {
            ty::INODE => print_inode(out, k, val),
            ty::XATTR => print_xattr(out, k, val),
            ty::DIRENT | ty::READDIR | ty::LINK_BACKREF => print_dirent(out, k, val),
            ty::SYMLINK => {
                // the stored target ends in a NUL: not shown
                let t = match val {
                    [t @ .., 0] => t,
                    t => t,
                };
                writeln!(out, "    symlink: ino {} nr {}", k.first, k.second)?;
                writeln!(out, "      target {}", printable(t))
            }
            ty::DATA_EXTENT => {
                if val.len() < 9 {
                    return short(out, "extent", val);
                }
                writeln!(
                    out,
                    "    extent: ino {} iblock {} len {} blkno {} flags {:x}",
                    k.first,
                    k.second.wrapping_sub(k.third).wrapping_add(1),
                    k.third,
                    get_u64(val, 0),
                    val[8]
                )
            }
            _ => writeln!(out, "      (unknown zone {} type {})", k.zone, k.ty),
        },
        _ => writeln!(out, "      (unknown zone {} type {})", k.zone, k.ty),
    }
}

/// `scoutfs_quota_rule_val`: three name values, the limit, then prio, op,
/// rule flags, three name sources and three name flags.
const QUOTA_RULE_VAL_BYTES: usize = 48;

fn print_quota(out: &mut dyn Write, k: &Key, val: &[u8]) -> fmt::Result {
    writeln!(
        out,
        "    quota rule: hash 0x{:016x} coll_nr {}",
        k.second, k.third
    )?;
    if val.len() < QUOTA_RULE_VAL_BYTES {
        return short(out, "quota rule", val);
    }
    let name = |i: usize| format!("{},{},{:x}", get_u64(val, i * 8), val[35 + i], val[38 + i]);
    writeln!(
        out,
        "      [{} {} {} {} {} {} {:x}]",
        val[32],
        name(0),
        name(1),
        name(2),
        val[33],
        get_u64(val, 24),
        val[34]
    )
}

fn print_inode(out: &mut dyn Write, k: &Key, val: &[u8]) -> fmt::Result {
    let Ok(i) = InodeItem::decode(val) else {
        return writeln!(out, "      (bad inode value: {} bytes)", val.len());
    };
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

fn print_xattr(out: &mut dyn Write, k: &Key, val: &[u8]) -> fmt::Result {
    writeln!(
        out,
        "    xattr: ino {} name_hash {:08x} id {} part {}",
        k.first, k.second as u32, k.third, k.fourth
    )?;
    if k.fourth != 0 {
        return Ok(());
    }
    if val.len() < XATTR_HEADER_BYTES {
        return short(out, "xattr", val);
    }
    let name_len = val[2] as usize;
    let end = val.len().min(XATTR_HEADER_BYTES + name_len);
    writeln!(
        out,
        "      name_len {name_len} val_len {} name {}",
        get_u16(val, 0),
        printable(&val[XATTR_HEADER_BYTES..end])
    )
}

/// DIRENT, READDIR and LINK_BACKREF values are all dirents.
fn print_dirent(out: &mut dyn Write, k: &Key, val: &[u8]) -> fmt::Result {
    if val.len() < DIRENT_HEADER_BYTES {
        return short(out, "dirent", val);
    }
    writeln!(
        out,
        "    dirent: dir {} hash {:016x} pos {} type {} ino {}",
        k.first,
        get_u64(val, 8),
        get_u64(val, 16),
        val[24],
        get_u64(val, 0)
    )?;
    writeln!(out, "      name {}", printable(&val[DIRENT_HEADER_BYTES..]))
}

fn key_at(b: &[u8], o: usize) -> Key {
    let mut k = [0u8; KEY_BYTES];
    k.copy_from_slice(&b[o..o + KEY_BYTES]);
    Key::decode(&k)
}

/// A btree root with its seq in decimal (log merge items), where the
/// super's roots show it in hex.
fn btroot_dec(b: &[u8], o: usize) -> String {
    let r = BtreeRoot::decode(&b[o..o + BtreeRoot::BYTES]);
    format!(
        "blkno {} seq {} height {}",
        r.bref.blkno, r.bref.seq, r.height
    )
}

fn srch_entry(e: &SrchEntry) -> String {
    format!("{:016x}.{}.{}", e.hash, e.ino, e.id)
}

fn srch_file(f: &SrchFile) -> String {
    format!(
        "f {} l {} blks {} ents {} hei {} blkno {} seq {:016x}",
        srch_entry(&f.first),
        srch_entry(&f.last),
        f.blocks,
        f.entries,
        f.height,
        f.bref.blkno,
        f.bref.seq
    )
}

/// A log trees value, whatever its flags say (a dumper shows them).
fn decode_log_trees(val: &[u8]) -> Option<LogTrees> {
    if val.len() != LogTrees::BYTES {
        return None;
    }
    let mut b = [0u8; LogTrees::BYTES];
    b.copy_from_slice(val);
    b[lt_off::FLAGS..lt_off::FLAGS + 8].fill(0);
    let mut lt = LogTrees::decode(&b).ok()?;
    lt.flags = get_u64(val, lt_off::FLAGS);
    Some(lt)
}

fn print_log_trees(out: &mut dyn Write, k: &Key, val: &[u8]) -> fmt::Result {
    writeln!(out, "    rid {} nr {}", k.first, k.second)?;
    let Some(lt) = decode_log_trees(val) else {
        return writeln!(out, "      (bad log trees value: val_len {})", val.len());
    };
    writeln!(out, "      meta_avail: {}", alhead(&lt.meta_avail))?;
    writeln!(out, "      meta_freed: {}", alhead(&lt.meta_freed))?;
    writeln!(
        out,
        "      item_root: height {} blkno {} seq {}",
        lt.item_root.height, lt.item_root.bref.blkno, lt.item_root.bref.seq
    )?;
    writeln!(
        out,
        "      bloom_ref: blkno {} seq {}",
        lt.bloom_ref.blkno, lt.bloom_ref.seq
    )?;
    writeln!(out, "      data_avail: {}", alroot(&lt.data_avail))?;
    writeln!(out, "      data_freed: {}", alroot(&lt.data_freed))?;
    writeln!(out, "      srch_file: {}", srch_file(&lt.srch_file))?;
    writeln!(
        out,
        "      inode_count_delta: {}",
        lt.inode_count_delta as i64
    )?;
    writeln!(out, "      get_trans_seq: {}", lt.get_trans_seq as i64)?;
    writeln!(
        out,
        "      commit_trans_seq: {}",
        lt.commit_trans_seq as i64
    )?;
    writeln!(out, "      max_item_seq: {}", lt.max_item_seq)?;
    writeln!(out, "      finalize_seq: {}", lt.finalize_seq)?;
    writeln!(out, "      rid: {:016x}", lt.rid)?;
    writeln!(out, "      nr: {}", lt.nr)?;
    writeln!(out, "      flags: {:x}", lt.flags)?;
    writeln!(
        out,
        "      data_alloc_zone_blocks: {}",
        lt.data_alloc_zone_blocks
    )?;
    let mut s = String::from("      data_alloc_zones: ");
    for (i, w) in lt.data_alloc_zones.iter().enumerate() {
        let mut z = *w;
        while z != 0 {
            s.push_str(&format!("{} ", i * 64 + z.trailing_zeros() as usize));
            z &= z - 1;
        }
    }
    writeln!(out, "{s}")
}

fn print_mounted_client(out: &mut dyn Write, k: &Key, val: &[u8]) -> fmt::Result {
    if val.len() < MountedClient::BYTES {
        return writeln!(
            out,
            "    rid {:016x} (short mounted client value: val_len {})",
            k.first,
            val.len()
        );
    }
    // an ipv4 inet address: family, port, then the address
    let a = get_u32(val, 4);
    writeln!(
        out,
        "    rid {:016x} ipv4_addr {}.{}.{}.{} flags 0x{:x}",
        k.first,
        a >> 24,
        (a >> 16) & 0xff,
        (a >> 8) & 0xff,
        a & 0xff,
        val[32]
    )
}

fn print_log_merge(out: &mut dyn Write, k: &Key, val: &[u8]) -> fmt::Result {
    let need = match k.zone {
        zone::LOG_MERGE_STATUS => MergeStatus::BYTES,
        zone::LOG_MERGE_RANGE => MergeRange::BYTES,
        zone::LOG_MERGE_REQUEST => MergeRequest::BYTES,
        zone::LOG_MERGE_COMPLETE => MergeComplete::BYTES,
        zone::LOG_MERGE_FREEING => MergeFreeing::BYTES,
        z => return writeln!(out, "    (unknown log merge key zone {z})"),
    };
    if val.len() < need {
        return writeln!(
            out,
            "    (short log merge value: zone {} val_len {})",
            k.zone,
            val.len()
        );
    }
    let u = |o: usize| get_u64(val, o);
    match k.zone {
        zone::LOG_MERGE_STATUS => writeln!(
            out,
            "    status: next_range_key {} nr_req {} nr_comp {} seq {}",
            key_at(val, 0),
            u(32),
            u(40),
            u(48)
        ),
        zone::LOG_MERGE_RANGE => writeln!(
            out,
            "    range: start {} end {}",
            key_at(val, 0),
            key_at(val, 32)
        ),
        // (the reference names both roots "logs_root")
        zone::LOG_MERGE_REQUEST => writeln!(
            out,
            "    request: logs_root {} logs_root {} start {} end {} input_seq {} rid {:016x} seq {} flags 0x{:x}",
            btroot_dec(val, 64),
            btroot_dec(val, 88),
            key_at(val, 112),
            key_at(val, 144),
            u(176),
            u(184),
            u(192),
            u(200)
        ),
        zone::LOG_MERGE_COMPLETE => writeln!(
            out,
            "    complete: root {} start {} end {} remain {} rid {:016x} seq {} flags {:x}",
            btroot_dec(val, 64),
            key_at(val, 88),
            key_at(val, 120),
            key_at(val, 152),
            u(184),
            u(192),
            u(200)
        ),
        _ => writeln!(
            out,
            "    freeing: root {} key {} seq {}",
            btroot_dec(val, 0),
            key_at(val, 24),
            u(56)
        ),
    }
}

/// `scoutfs_srch_compact`: two list heads, id, nr, flags, the output file,
/// then [`SRCH_COMPACT_NR`] inputs of (file, blk, pos).
const SRCH_COMPACT_NR: usize = 4;
const SRCH_COMPACT_IN_OFF: usize = 80 + SrchFile::BYTES;
const SRCH_COMPACT_IN_BYTES: usize = SrchFile::BYTES + 16;
const SRCH_COMPACT_BYTES: usize = SRCH_COMPACT_IN_OFF + SRCH_COMPACT_NR * SRCH_COMPACT_IN_BYTES;

fn print_srch_item(out: &mut dyn Write, k: &Key, val: &[u8]) -> fmt::Result {
    writeln!(out, "    {k}")?;
    if k.ty == ty::SRCH_PENDING || k.ty == ty::SRCH_BUSY {
        if val.len() < SRCH_COMPACT_BYTES {
            return writeln!(
                out,
                "      (short srch compact value: val_len {})",
                val.len()
            );
        }
        let (nr, flags) = (val[72], val[73]);
        let what = if k.ty == ty::SRCH_PENDING {
            "pending"
        } else {
            "busy"
        };
        writeln!(out, "      compact {what}: nr {nr} flags 0x{flags:x}")?;
        // a damaged nr cannot read past the inputs
        for i in 0..(nr as usize).min(SRCH_COMPACT_NR) {
            let o = SRCH_COMPACT_IN_OFF + i * SRCH_COMPACT_IN_BYTES;
            let sfl = SrchFile::decode(&val[o..o + SrchFile::BYTES]);
            writeln!(
                out,
                "        [{i}] blk {} pos {} sfl {}",
                get_u64(val, o + SrchFile::BYTES),
                get_u64(val, o + SrchFile::BYTES + 8),
                srch_file(&sfl)
            )?;
        }
        Ok(())
    } else if val.len() < SrchFile::BYTES {
        writeln!(out, "      (short srch file value: val_len {})", val.len())
    } else {
        writeln!(out, "      {}", srch_file(&SrchFile::decode(val)))
    }
}

/// The child reference in a parent item's value.
fn child_ref(val: &[u8]) -> Option<BlockRef> {
    (val.len() >= BlockRef::BYTES).then(|| BlockRef::decode(val))
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
            let Some(c) = child_ref(val) else { continue };
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
            print_parent_key(out, kind, &k)?;
            match child_ref(val) {
                Some(c) => writeln!(out, "    ref blkno {} seq {}", c.blkno, c.seq)?,
                None => writeln!(out, "    (short block ref: val_len {})", val.len())?,
            }
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

/// The leaf items of a tree in key order (for following the log trees'
/// own roots). Blocks that do not read or verify are skipped: the tree's
/// own dump already said so.
fn collect_leaf_items(
    dev: &dyn BlockDev,
    bref: &BlockRef,
    at: u8,
    seen: &mut BTreeSet<u64>,
    items: &mut Vec<(Key, Vec<u8>)>,
) {
    if !seen.insert(bref.blkno) {
        return;
    }
    let Some(b) = read_lg(dev, bref.blkno) else {
        return;
    };
    if BlockHeader::decode(&b).magic != MAGIC_BTREE || bb::verify(&b, at).is_err() {
        return;
    }
    for o in bb::ordered(&b) {
        let val = bb::item_val(&b, o);
        if at == 0 {
            items.push((bb::item_key(&b, o), val.to_vec()));
        } else if let Some(c) = child_ref(val) {
            if c.blkno != 0 {
                collect_leaf_items(dev, &c, at - 1, seen, items);
            }
        }
    }
}

fn leaf_items(dev: &dyn BlockDev, root: &BtreeRoot) -> Vec<(Key, Vec<u8>)> {
    let mut items = Vec::new();
    if root.height > 0 && root.height <= BtreeRoot::MAX_HEIGHT {
        let mut seen = BTreeSet::new();
        collect_leaf_items(dev, &root.bref, root.height - 1, &mut seen, &mut items);
    }
    items
}

/// What `print` leaves out.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrintOptions {
    /// `-S`, the reference's `--skip-likely-huge`: leave out the
    /// allocator trees, the srch files and fs_root.
    pub skip_likely_huge: bool,
}

/// Dump the volume on `meta`. Fails (after printing the super) when the
/// device is not a scoutfs meta device.
pub fn print_volume(dev: &dyn BlockDev, out: &mut dyn Write) -> Result<(), PrintError> {
    print_volume_with(dev, out, &PrintOptions::default())
}

/// [`print_volume`] with options.
pub fn print_volume_with(
    dev: &dyn BlockDev,
    out: &mut dyn Write,
    opts: &PrintOptions,
) -> Result<(), PrintError> {
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
    print_structures(dev, &sb, opts, out)
}

/// Everything `print` shows after the quorum blocks, reached from the
/// roots in `sb`: the server's trees and lists, the allocators, the log
/// trees with their own allocators and item trees, and fs_root, in the
/// reference's order.
pub fn print_structures(
    dev: &dyn BlockDev,
    sb: &SuperBlock,
    opts: &PrintOptions,
    out: &mut dyn Write,
) -> Result<(), PrintError> {
    print_tree(
        out,
        dev,
        "mounted_clients",
        &sb.mounted_clients,
        Items::MountedClients,
    )?;
    print_tree(out, dev, "log_merge", &sb.log_merge, Items::LogMerge)?;
    for i in 0..2 {
        print_list(
            out,
            dev,
            &format!("server_meta_avail[{i}]"),
            &sb.server_meta_avail[i],
        )?;
    }
    for i in 0..2 {
        print_list(
            out,
            dev,
            &format!("server_meta_freed[{i}]"),
            &sb.server_meta_freed[i],
        )?;
    }
    if !opts.skip_likely_huge {
        for i in 0..2 {
            print_tree(
                out,
                dev,
                &format!("meta_alloc[{i}]"),
                &sb.meta_alloc[i].root,
                Items::Alloc,
            )?;
        }
        print_tree(out, dev, "data_alloc", &sb.data_alloc.root, Items::Alloc)?;
    }
    print_tree(out, dev, "srch_root", &sb.srch_root, Items::Srch)?;
    print_tree(out, dev, "logs_root", &sb.logs_root, Items::LogTrees)?;
    if !opts.skip_likely_huge {
        for (k, val) in leaf_items(dev, &sb.srch_root) {
            print_srch_files(out, dev, &k, &val)?;
        }
    }
    for (_, val) in leaf_items(dev, &sb.logs_root) {
        // a value that does not decode was shown as such above
        let Some(lt) = decode_log_trees(&val) else {
            continue;
        };
        print_list(out, dev, "lt_meta_avail", &lt.meta_avail)?;
        print_list(out, dev, "lt_meta_freed", &lt.meta_freed)?;
        print_tree(out, dev, "data_avail", &lt.data_avail.root, Items::Alloc)?;
        print_tree(out, dev, "data_freed", &lt.data_freed.root, Items::Alloc)?;
        print_srch_file(out, dev, &lt.srch_file)?;
        // the reference names the log trees' item trees ""
        print_tree(out, dev, "", &lt.item_root, Items::Fs)?;
    }
    if !opts.skip_likely_huge {
        print_tree(out, dev, "fs_root", &sb.fs_root, Items::Fs)?;
    }
    Ok(())
}

/// The srch files a srch_root item names.
fn print_srch_files(out: &mut dyn Write, dev: &dyn BlockDev, k: &Key, val: &[u8]) -> fmt::Result {
    if k.ty == ty::SRCH_PENDING || k.ty == ty::SRCH_BUSY {
        if val.len() < SRCH_COMPACT_BYTES {
            return Ok(());
        }
        for i in 0..(val[72] as usize).min(SRCH_COMPACT_NR) {
            let o = SRCH_COMPACT_IN_OFF + i * SRCH_COMPACT_IN_BYTES;
            let sfl = SrchFile::decode(&val[o..o + SrchFile::BYTES]);
            print_srch_file(out, dev, &sfl)?;
        }
        Ok(())
    } else if val.len() >= SrchFile::BYTES {
        print_srch_file(out, dev, &SrchFile::decode(val))
    } else {
        Ok(())
    }
}

/// `SCOUTFS_SRCH_PARENT_REFS`: block refs after a parent's header.
const SRCH_PARENT_REFS: usize = (LG_BLOCK_SIZE - BlockHeader::BYTES) / BlockRef::BYTES;
/// Where a srch leaf block's encoded entries start.
const SRCH_ENTRIES_OFF: usize = BlockHeader::BYTES + 3 * SrchEntry::BYTES + 8;
/// `SCOUTFS_SRCH_ENTRY_MAX_BYTES`: a length word and three full deltas.
const SRCH_ENTRY_MAX_BYTES: usize = 2 + 3 * 8;
/// Entries start at most here, so a whole entry fits in the block.
const SRCH_BLOCK_SAFE_BYTES: usize = LG_BLOCK_SIZE - SRCH_ENTRIES_OFF - SRCH_ENTRY_MAX_BYTES;

/// Decode the srch entry at `b[0..]` after `prev`: a little-endian u16 of
/// three 4-bit byte counts, then the three zigzag-coded deltas (hash, ino,
/// id) in that many bytes each. Returns the entry and its encoded length.
fn srch_decode_entry(b: &[u8], prev: &SrchEntry) -> (SrchEntry, usize) {
    let lengths = get_u16(b, 0);
    let mut tot = 2;
    let mut diffs = [0u64; 3];
    for (i, d) in diffs.iter_mut().enumerate() {
        let bytes = (((lengths >> (i * 4)) & 15) as usize).min(8);
        let mut w = [0u8; 8];
        w[..bytes].copy_from_slice(&b[tot..tot + bytes]);
        let v = u64::from_le_bytes(w);
        *d = (v >> 1) ^ 0u64.wrapping_sub(v & 1);
        tot += bytes;
    }
    let e = SrchEntry {
        hash: prev.hash.wrapping_add(diffs[0]),
        ino: prev.ino.wrapping_add(diffs[1]),
        id: prev.id.wrapping_add(diffs[2]),
    };
    (e, tot)
}

/// A srch file: its parent blocks (refs listed, then each child) down to
/// the leaf blocks and their decoded entries.
fn print_srch_file(out: &mut dyn Write, dev: &dyn BlockDev, f: &SrchFile) -> fmt::Result {
    let mut seen = BTreeSet::new();
    print_srch_block(out, dev, &f.bref, f.height.saturating_sub(1), &mut seen)
}

fn print_srch_block(
    out: &mut dyn Write,
    dev: &dyn BlockDev,
    bref: &BlockRef,
    level: u8,
    seen: &mut BTreeSet<u64>,
) -> fmt::Result {
    if bref.blkno == 0 {
        return Ok(());
    }
    let parent = if level > 0 { "parent " } else { "" };
    if !seen.insert(bref.blkno) {
        return writeln!(
            out,
            "srch {parent}block blkno {}: (referenced again)",
            bref.blkno
        );
    }
    let Some(b) = read_lg(dev, bref.blkno) else {
        return writeln!(out, "srch {parent}block blkno {}: (unreadable)", bref.blkno);
    };
    writeln!(out, "srch {parent}block blkno {}", bref.blkno)?;
    hdr_line(out, &b)?;
    if level > 0 {
        let refs: Vec<(usize, BlockRef)> = (0..SRCH_PARENT_REFS)
            .map(|i| {
                let o = BlockHeader::BYTES + i * BlockRef::BYTES;
                (i, BlockRef::decode(&b[o..o + BlockRef::BYTES]))
            })
            .filter(|(_, r)| r.blkno != 0)
            .collect();
        for (i, r) in &refs {
            writeln!(out, "  [{i}]: blkno {} seq {}", r.blkno, r.seq)?;
        }
        for (_, r) in &refs {
            print_srch_block(out, dev, r, level - 1, seen)?;
        }
        return Ok(());
    }
    let e = |o: usize| SrchEntry::decode(&b[o..o + SrchEntry::BYTES]);
    let h = BlockHeader::BYTES;
    let entry_nr = get_u32(&b, h + 72);
    writeln!(
        out,
        "  first {} last {} tail {}",
        srch_entry(&e(h)),
        srch_entry(&e(h + 24)),
        srch_entry(&e(h + 48))
    )?;
    writeln!(
        out,
        "  entry_nr {entry_nr} entry_bytes {}",
        get_u32(&b, h + 76)
    )?;
    let entries = &b[SRCH_ENTRIES_OFF..];
    let (mut pos, mut prev) = (0usize, SrchEntry::default());
    for i in 0..entry_nr {
        // past here an entry could run off the block: the block is damaged
        if pos > SRCH_BLOCK_SAFE_BYTES {
            return writeln!(out, "  (entries run past the end of the block)");
        }
        let (sre, n) = srch_decode_entry(&entries[pos..], &prev);
        pos += n;
        prev = sre;
        writeln!(out, "  [{i}]: ({n}) {}", srch_entry(&sre))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::items::{indx_key, orphan_key, totl_key, TotlVal};
    use crate::format::log::{log_trees_key, merge_status_key, mounted_client_key};

    fn item(kind: Items, k: &Key, seq: u64, flags: u8, val: &[u8]) -> String {
        let mut s = String::new();
        print_item(&mut s, kind, k, seq, flags, val).unwrap();
        s
    }

    fn parent(kind: Items, k: &Key) -> String {
        let mut s = String::new();
        print_parent_key(&mut s, kind, k).unwrap();
        s
    }

    #[test]
    fn parent_keys_print_like_their_leaves() {
        let by_blkno = Key::new(zone::FREE_EXTENT_BLKNO, 100, 0, 10, 0, 0);
        assert_eq!(
            parent(Items::Alloc, &by_blkno),
            "    free extent: blkno 91 len 10 end 100\n"
        );
        let by_order = Key::new(zone::FREE_EXTENT_ORDER, u64::MAX - 3, 0, 100, 10, 0);
        assert_eq!(
            parent(Items::Alloc, &by_order),
            "    free extent: blkno 91 len 10 order 3\n"
        );
        // the last parent key of a tree is the largest key: no panic
        assert_eq!(
            parent(Items::Alloc, &Key::MAX),
            format!("    free extent: blkno 1 len {m} order 0\n", m = u64::MAX)
        );
        let fs = Key::fs(1098, ty::INODE, 0, 0);
        assert_eq!(parent(Items::Fs, &fs), "    16.1098.4.0.0.0 0 -\n");
        assert_eq!(
            parent(Items::LogTrees, &log_trees_key(77, 2)),
            "    rid 77 nr 2\n"
        );
        assert_eq!(
            parent(Items::MountedClients, &mounted_client_key(0xab)),
            "    rid 00000000000000ab\n"
        );
        assert_eq!(parent(Items::LogMerge, &merge_status_key()), "");
    }

    #[test]
    fn fs_items_without_a_reference_dump() {
        let totl = TotlVal {
            total: (-5i64) as u64,
            count: 2,
        };
        assert_eq!(
            item(Items::Fs, &totl_key(1, 2, 3), 7, 0, &totl.encode()),
            "    12.1.0.2.3.0 7 -\n    xattr totl: 1.2.3 = -5, 2\n"
        );
        let k = indx_key(3, 0x1234, 77, 9);
        assert!(item(Items::Fs, &k, 1, 0, &[])
            .ends_with("\n    xattr indx: major 3 minor 4660 ino 77 xid 9\n"));
        assert!(item(Items::Fs, &orphan_key(42), 1, 0, &[]).ends_with("\n    orphan: ino 42\n"));
        // a deletion has no value to show
        assert_eq!(
            item(Items::Fs, &orphan_key(42), 5, 1, &[]),
            "    8.0.4.42.0.0 5 d\n"
        );
        // short values are said to be short, never read past
        let d = Key::fs(2, ty::DIRENT, 9, 3);
        assert!(item(Items::Fs, &d, 1, 0, &[1, 2, 3])
            .ends_with("      (short dirent value: val_len 3)\n"));
        let x = Key::new(zone::FS, 2, ty::XATTR, 5, 6, 0);
        assert!(
            item(Items::Fs, &x, 1, 0, &[0; 4]).ends_with("      (short xattr value: val_len 4)\n")
        );
        // a name longer than its value is cut at the value
        let mut v = vec![0u8; 10];
        v[2] = 200;
        v[8..].copy_from_slice(b"a\x01");
        assert!(item(Items::Fs, &x, 1, 0, &v).ends_with("      name_len 200 val_len 0 name a.\n"));
        // symlink: the NUL is not shown, unprintable bytes are '.'
        let s = Key::fs(3, ty::SYMLINK, 0, 0);
        assert!(item(Items::Fs, &s, 1, 0, b"a\tb\0")
            .ends_with("    symlink: ino 3 nr 0\n      target a.b\n"));
        assert!(item(Items::Fs, &Key::fs(3, 99, 0, 0), 1, 0, &[])
            .ends_with("      (unknown zone 16 type 99)\n"));
    }

    #[test]
    fn server_items() {
        let mut v = [0u8; MountedClient::BYTES];
        v[0] = 1;
        v[2..4].copy_from_slice(&7100u16.to_le_bytes());
        v[4..8].copy_from_slice(&0x0a00_0203u32.to_le_bytes());
        v[32] = 1;
        assert_eq!(
            item(Items::MountedClients, &mounted_client_key(0xab), 0, 0, &v),
            "    rid 00000000000000ab ipv4_addr 10.0.2.3 flags 0x1\n"
        );
        assert!(
            item(Items::MountedClients, &mounted_client_key(1), 0, 0, &v[..5])
                .contains("(short mounted client value: val_len 5)")
        );
        let st = MergeStatus {
            next_range_key: Key::fs(5, ty::INODE, 0, 0),
            nr_requests: 2,
            nr_complete: 1,
            seq: 9,
        };
        assert_eq!(
            item(Items::LogMerge, &merge_status_key(), 0, 0, &st.encode()),
            "    status: next_range_key 16.5.4.0.0.0 nr_req 2 nr_comp 1 seq 9\n"
        );
        let r = Key::new(zone::LOG_MERGE_RANGE, 0, 0, 0, 0, 0);
        assert_eq!(
            item(Items::LogMerge, &r, 0, 0, &[0; 3]),
            "    (short log merge value: zone 48 val_len 3)\n"
        );
        let mut lt = LogTrees {
            rid: 0x1234,
            nr: 3,
            flags: 1,
            ..Default::default()
        };
        lt.data_alloc_zones[1] = 0b101;
        let s = item(
            Items::LogTrees,
            &log_trees_key(0x1234, 3),
            0,
            0,
            &lt.encode(),
        );
        assert!(
            s.starts_with("    rid 4660 nr 3\n      meta_avail: blkno 0 "),
            "{s}"
        );
        assert!(s.contains("\n      rid: 0000000000001234\n      nr: 3\n      flags: 1\n"));
        assert!(s.ends_with("\n      data_alloc_zones: 64 66 \n"), "{s}");
        assert!(item(Items::LogTrees, &log_trees_key(1, 1), 0, 0, &[0; 8])
            .ends_with("      (bad log trees value: val_len 8)\n"));
        let f = SrchFile {
            first: SrchEntry {
                hash: 0xff,
                ino: 2,
                id: 3,
            },
            blocks: 4,
            entries: 5,
            height: 1,
            bref: BlockRef { blkno: 6, seq: 7 },
            ..Default::default()
        };
        let mut b = [0u8; SrchFile::BYTES];
        f.encode(&mut b);
        let k = Key::new(zone::SRCH, 1, ty::SRCH_BLOCKS, 0, 0, 0);
        assert_eq!(
            item(Items::Srch, &k, 0, 0, &b),
            "    32.1.8.0.0.0\n      f 00000000000000ff.2.3 l 0000000000000000.0.0 blks 4 ents 5 hei 1 blkno 6 seq 0000000000000007\n"
        );
    }

    /// The reference's srch entry encoding (for building test blocks).
    fn srch_encode(e: &SrchEntry, prev: &SrchEntry, out: &mut Vec<u8>) {
        let diffs = [
            e.hash.wrapping_sub(prev.hash),
            e.ino.wrapping_sub(prev.ino),
            e.id.wrapping_sub(prev.id),
        ];
        let mut lengths = 0u16;
        let mut body = Vec::new();
        for (i, d) in diffs.iter().enumerate() {
            let v = (d << 1) ^ ((*d as i64 >> 63) as u64);
            let bytes = (64 - v.leading_zeros() as usize).div_ceil(8);
            lengths |= (bytes as u16) << (i * 4);
            body.extend_from_slice(&v.to_le_bytes()[..bytes]);
        }
        out.extend_from_slice(&lengths.to_le_bytes());
        out.extend_from_slice(&body);
    }

    #[test]
    fn srch_files_and_quota_rules() {
        use crate::storage::dev::MemDev;
        let dev = MemDev::new(1 << 20);
        let ents = [
            SrchEntry {
                hash: 0x10,
                ino: 5,
                id: 1,
            },
            // a negative delta
            SrchEntry {
                hash: 0x10,
                ino: 3,
                id: 2,
            },
        ];
        let mut enc = Vec::new();
        let mut prev = SrchEntry::default();
        for e in &ents {
            srch_encode(e, &prev, &mut enc);
            prev = *e;
        }
        assert_eq!(enc.len(), 9);
        // the filesystem's encoder writes the same bytes
        let mut leaf = vec![0u8; LG_BLOCK_SIZE];
        for e in &ents {
            assert!(crate::format::srch::leaf_append(&mut leaf, e).unwrap());
        }
        assert_eq!(
            &leaf[SRCH_ENTRIES_OFF..SRCH_ENTRIES_OFF + enc.len()],
            &enc[..]
        );
        let mut leaf = vec![0u8; LG_BLOCK_SIZE];
        put_u64(&mut leaf, 24, 3);
        ents[0].encode(&mut leaf[32..56]);
        ents[1].encode(&mut leaf[56..80]);
        put_u32(&mut leaf, 104, 2);
        put_u32(&mut leaf, 108, enc.len() as u32);
        leaf[SRCH_ENTRIES_OFF..SRCH_ENTRIES_OFF + enc.len()].copy_from_slice(&enc);
        dev.write(3 << LG_BLOCK_SHIFT, &leaf).unwrap();
        let mut par = vec![0u8; LG_BLOCK_SIZE];
        put_u64(&mut par, 24, 4);
        BlockRef { blkno: 3, seq: 9 }.encode(&mut par[32 + 5 * 16..32 + 6 * 16]);
        dev.write(4 << LG_BLOCK_SHIFT, &par).unwrap();
        let f = SrchFile {
            bref: BlockRef { blkno: 4, seq: 1 },
            height: 2,
            ..Default::default()
        };
        let mut s = String::new();
        print_srch_file(&mut s, &dev, &f).unwrap();
        let want = [
            "srch parent block blkno 4",
            "  [5]: blkno 3 seq 9",
            "srch block blkno 3",
            "  first 0000000000000010.5.1 last 0000000000000010.3.2 tail 0000000000000000.0.0",
            "  entry_nr 2 entry_bytes 9",
            "  [0]: (5) 0000000000000010.5.1",
            "  [1]: (4) 0000000000000010.3.2",
        ];
        let got: Vec<&str> = s.lines().filter(|l| !l.starts_with("  hdr:")).collect();
        assert_eq!(got, want, "{s}");
        // a damaged entry count stops at the end of the block
        put_u32(&mut leaf, 104, 1_000_000);
        dev.write(3 << LG_BLOCK_SHIFT, &leaf).unwrap();
        let mut s = String::new();
        print_srch_file(&mut s, &dev, &f).unwrap();
        assert!(s.ends_with("  (entries run past the end of the block)\n"));

        let mut v = [0u8; QUOTA_RULE_VAL_BYTES];
        put_u64(&mut v, 0, 7);
        put_u64(&mut v, 24, 100);
        v[32..35].copy_from_slice(&[3, 1, 2]);
        v[35] = 4;
        v[38] = 5;
        let k = Key::new(zone::QUOTA, 0, ty::QUOTA_RULE, 0xabc, 1, 0);
        assert_eq!(
            item(Items::Fs, &k, 2, 0, &v),
            "    10.0.4.2748.1.0 2 -\n    quota rule: hash 0x0000000000000abc coll_nr 1\n      [3 7,4,5 0,0,0 0,0,0 1 100 2]\n"
        );
    }
}
