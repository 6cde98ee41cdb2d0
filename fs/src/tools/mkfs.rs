//! mkfs: write a new scoutfs volume exactly as the reference mkfs lays it
//! out (storage reference 1.10), through two `BlockDev`s.
//!
//! Called by the host `scoutvm mkfs` and the appliance shell. Layout: LG
//! block 2 fs_root leaf (root inode + its META_SEQ index item), 3 the
//! server's first avail list (1024 blknos from 4), then the data_alloc
//! leaf and the two meta_alloc leaves splitting the remaining metadata
//! blocks; quorum blocks with valid headers; the super on the data device
//! (without the meta flag) and then on the meta device. Blocks, flush,
//! super, flush.

use crate::format::alloc::{extent_blkno_key, extent_order_key, ALLOC_LIST_MAX_BLOCKS};
use crate::format::block::*;
use crate::format::items::InodeItem;
use crate::format::key::{ty, zone, Key};
use crate::format::le::*;
use crate::format::quorum::QuorumBlock;
use crate::format::super_block::*;
use crate::format::{
    DATA_DEV_START_BLKNO, FORMAT_VERSION_MAX, FORMAT_VERSION_MIN, LG_BLOCK_SHIFT, LG_BLOCK_SIZE,
    MAGIC_ALLOC_LIST, MAGIC_BTREE, MAGIC_QUORUM, MAGIC_SUPER, META_DEV_START_BLKNO, QUORUM_BLKNO,
    QUORUM_BLOCKS, ROOT_INO, SM_BLOCK_SHIFT, SM_BLOCK_SIZE, SUPER_BLKNO,
};
use crate::runtime::env::Timespec;
use crate::storage::block::{seal_block, write_super_to};
use crate::storage::btree_block::{self as bb, Item};
use crate::storage::dev::BlockDev;
use ::alloc::format;
use ::alloc::string::String;
use ::alloc::vec;
use ::alloc::vec::Vec;

/// Reference minimum device size without `-A`.
pub const MIN_DEVICE_BYTES: u64 = 64 << 30;
/// Blocks mkfs uses before the meta_alloc extents (blknos 0..1031).
const FIRST_FREE_META: u64 = 1031;
/// Smallest volume the layout fits: every allocator must get a block.
pub const MIN_META_BLOCKS: u64 = FIRST_FREE_META + 2;
pub const MIN_DATA_BLOCKS: u64 = DATA_DEV_START_BLKNO + 1;
/// `SCOUTFS_DATA_ALLOC_MAX_ZONES`.
pub const DATA_ALLOC_MAX_ZONES: u64 = 1024;
/// `SCOUTFS_SERVER_DATA_FILL_TARGET` (4 GiB of 4 KiB blocks).
pub const SERVER_DATA_FILL_TARGET: u64 = (4u64 << 30) >> SM_BLOCK_SHIFT;
/// Blocks of the server's first avail list: 64 MiB.
const FIRST_LIST_BLOCKS: u64 = (64 << 20) >> LG_BLOCK_SHIFT;

/// Everything mkfs needs; randomness and time come from the caller.
#[derive(Clone, Debug)]
pub struct MkfsParams {
    pub fmt_vers: u64,
    /// Bytes of the meta device to use (already limited by `-m`).
    pub meta_bytes: u64,
    /// Bytes of the data device to use (already limited by `-d`).
    pub data_bytes: u64,
    pub qconf: QuorumConfig,
    pub fsid: u64,
    pub uuid: [u8; 16],
    pub now: Timespec,
    /// 0 = option unset.
    pub data_alloc_zone_blocks: u64,
}

/// Why mkfs refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MkfsError {
    Invalid(String),
    Io(crate::storage::dev::IoError),
}

impl core::fmt::Display for MkfsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MkfsError::Invalid(s) => f.write_str(s),
            MkfsError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl From<crate::storage::dev::IoError> for MkfsError {
    fn from(e: crate::storage::dev::IoError) -> Self {
        MkfsError::Io(e)
    }
}

impl From<crate::storage::store_error::StoreError> for MkfsError {
    fn from(e: crate::storage::store_error::StoreError) -> Self {
        match e {
            crate::storage::store_error::StoreError::Io(e) => MkfsError::Io(e),
            e => MkfsError::Invalid(format!("{e}")),
        }
    }
}

/// A size the way the reference prints it: "1.00GB".
pub fn base_size(bytes: u64) -> String {
    let (x, s) = scale(bytes as f64);
    format!("{x:.2}{s}")
}

fn scale(mut x: f64) -> (f64, &'static str) {
    const SUF: [&str; 9] = ["B", "KB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut i = 0;
    while x >= 1024.0 && i < SUF.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    (x, SUF[i])
}

/// "16384 (1.00 GB)", as the reference prints block counts.
pub fn size_blocks(nr: u64, block: u64) -> String {
    let (x, s) = scale(nr as f64 * block as f64);
    format!("{nr} ({x:.2} {s})")
}

/// The reference `limit_device_size`: apply a `-m`/`-d` limit and the
/// 64 GiB minimum. Returns the size to use and the messages to print
/// (stdout notes, stderr warnings) or an error.
pub fn limit_device_size(
    dev_bytes: u64,
    max_bytes: u64,
    allow_small: bool,
    which: &str,
) -> Result<(u64, Vec<String>, Vec<String>), String> {
    let mut notes = Vec::new();
    let mut warns = Vec::new();
    let mut size = dev_bytes;
    if max_bytes != 0 {
        if size > max_bytes {
            notes.push(format!(
                "Limiting use of {} {which} device to {}",
                base_size(size),
                base_size(max_bytes)
            ));
            size = max_bytes;
        } else if size < max_bytes {
            notes.push(format!(
                "Device size limit of {} for {which} device is greater than {} available, ignored.",
                base_size(max_bytes),
                base_size(size)
            ));
        }
    }
    if size < MIN_DEVICE_BYTES {
        let msg = format!(
            "{} too small for min {} {which} device{}",
            base_size(size),
            base_size(MIN_DEVICE_BYTES),
            if allow_small {
                ", allowing with -A"
            } else {
                ""
            }
        );
        if !allow_small {
            return Err(msg);
        }
        warns.push(msg);
    }
    Ok((size, notes, warns))
}

fn check_params(p: &MkfsParams) -> Result<(u64, u64), MkfsError> {
    let bad = |s: String| Err(MkfsError::Invalid(s));
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION_MAX).contains(&p.fmt_vers) {
        return bad(format!(
            "format version {} not supported, must be {FORMAT_VERSION_MIN}..={FORMAT_VERSION_MAX}",
            p.fmt_vers
        ));
    }
    let meta_blocks = p.meta_bytes >> LG_BLOCK_SHIFT;
    let data_blocks = p.data_bytes >> SM_BLOCK_SHIFT;
    if meta_blocks < MIN_META_BLOCKS {
        return bad(format!(
            "meta device of {} holds {meta_blocks} 64KB blocks, need at least {MIN_META_BLOCKS}",
            base_size(p.meta_bytes)
        ));
    }
    if data_blocks < MIN_DATA_BLOCKS {
        return bad(format!(
            "data device of {} holds {data_blocks} 4KB blocks, need at least {MIN_DATA_BLOCKS}",
            base_size(p.data_bytes)
        ));
    }
    if p.qconf.configured().next().is_none() {
        return bad("must configure at least one quorum slot (-Q)".into());
    }
    let z = p.data_alloc_zone_blocks;
    if z != 0 {
        if z < SERVER_DATA_FILL_TARGET {
            return bad(format!(
                "data_alloc_zone_blocks {z} must be at least {SERVER_DATA_FILL_TARGET} blocks"
            ));
        }
        if z < data_blocks / DATA_ALLOC_MAX_ZONES {
            return bad(format!(
                "data_alloc_zone_blocks {z} must be greater than {} blocks (max {DATA_ALLOC_MAX_ZONES} zones)",
                data_blocks / DATA_ALLOC_MAX_ZONES
            ));
        }
        if z > data_blocks {
            return bad(format!(
                "data_alloc_zone_blocks {z} must be at most {data_blocks} total data blocks"
            ));
        }
    }
    Ok((meta_blocks, data_blocks))
}

fn header(buf: &mut [u8], magic: u32, fsid: u64, blkno: u64) {
    BlockHeader {
        crc: 0,
        magic,
        fsid,
        seq: 1,
        blkno,
    }
    .encode(buf);
}

fn write_lg(dev: &dyn BlockDev, blkno: u64, buf: &mut [u8]) -> Result<(), MkfsError> {
    seal_block(buf);
    dev.write(blkno << LG_BLOCK_SHIFT, buf)?;
    Ok(())
}

fn leaf(fsid: u64, blkno: u64, items: &[Item]) -> Result<Vec<u8>, MkfsError> {
    let mut b = vec![0u8; LG_BLOCK_SIZE];
    header(&mut b, MAGIC_BTREE, fsid, blkno);
    bb::rebuild(&mut b, 0, items).map_err(|w| MkfsError::Invalid(w.into()))?;
    Ok(b)
}

fn extent_items(start: u64, len: u64) -> [Item; 2] {
    [
        Item::new(extent_blkno_key(start, len), 1, &[]),
        Item::new(extent_order_key(start, len), 1, &[]),
    ]
}

fn single_root(blkno: u64) -> BtreeRoot {
    BtreeRoot {
        bref: BlockRef { blkno, seq: 1 },
        height: 1,
    }
}

/// Make the volume. Returns the super written to the meta device.
pub fn mkfs(
    meta: &dyn BlockDev,
    data: &dyn BlockDev,
    p: &MkfsParams,
) -> Result<SuperBlock, MkfsError> {
    let (meta_blocks, data_blocks) = check_params(p)?;
    if meta_blocks << LG_BLOCK_SHIFT > meta.size_bytes()
        || data_blocks << SM_BLOCK_SHIFT > data.size_bytes()
    {
        return Err(MkfsError::Invalid("volume larger than its device".into()));
    }
    let fsid = p.fsid;
    let last_meta = meta_blocks - 1;
    let first_data = DATA_DEV_START_BLKNO;
    let last_data = data_blocks - 1;

    let mut sb = SuperBlock {
        fmt_vers: p.fmt_vers,
        uuid: p.uuid,
        next_ino: (ROOT_INO + 1).next_multiple_of(1024),
        inode_count: 1,
        seq: 1,
        total_meta_blocks: meta_blocks,
        total_data_blocks: data_blocks,
        qconf: p.qconf,
        ..Default::default()
    };
    sb.qconf.version = 1;
    sb.hdr = BlockHeader {
        crc: 0,
        magic: MAGIC_SUPER,
        fsid,
        seq: 1,
        blkno: SUPER_BLKNO,
    };
    if p.data_alloc_zone_blocks != 0 {
        sb.volopt.set_bits |= VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT;
        sb.volopt.data_alloc_zone_blocks = p.data_alloc_zone_blocks;
    }

    // fs root: the root inode's META_SEQ index item and the root inode
    let mut next_meta = META_DEV_START_BLKNO;
    let blkno = next_meta;
    next_meta += 1;
    let inode = InodeItem {
        next_readdir_pos: 2,
        nlink: 2,
        mode: 0o040755,
        atime: p.now,
        ctime: p.now,
        mtime: p.now,
        crtime: p.now,
        ..Default::default()
    };
    let items = [
        Item::new(
            Key::new(
                zone::INODE_INDEX,
                0,
                ty::INODE_INDEX_META_SEQ,
                0,
                ROOT_INO,
                0,
            ),
            1,
            &[],
        ),
        Item::new(
            Key::fs(ROOT_INO, ty::INODE, 0, 0),
            1,
            &inode.encode(p.fmt_vers),
        ),
    ];
    write_lg(meta, blkno, &mut leaf(fsid, blkno, &items)?)?;
    sb.fs_root = single_root(blkno);

    // the server's first avail list: 64 MiB of blocks after it
    let blkno = next_meta;
    next_meta += 1;
    let mut lb = vec![0u8; LG_BLOCK_SIZE];
    header(&mut lb, MAGIC_ALLOC_LIST, fsid, blkno);
    let n = FIRST_LIST_BLOCKS.min(ALLOC_LIST_MAX_BLOCKS as u64);
    for i in 0..n {
        put_u64(
            &mut lb,
            crate::format::alloc::off::BLKNOS + i as usize * 8,
            next_meta,
        );
        next_meta += 1;
    }
    put_u32(&mut lb, crate::format::alloc::off::NR, n as u32);
    write_lg(meta, blkno, &mut lb)?;
    sb.server_meta_avail[0] = AllocListHead {
        bref: BlockRef { blkno, seq: 1 },
        total_nr: n,
        first_nr: n as u32,
        flags: 0,
    };

    // the data allocator: one extent of the whole data device
    let blkno = next_meta;
    next_meta += 1;
    let len = last_data - first_data + 1;
    write_lg(
        meta,
        blkno,
        &mut leaf(fsid, blkno, &extent_items(first_data, len))?,
    )?;
    sb.data_alloc = AllocRoot {
        total_len: len,
        flags: 0,
        root: single_root(blkno),
    };

    // the two meta allocators split the remaining metadata blocks
    let mut meta_start = next_meta + 2;
    let meta_len = (last_meta - meta_start + 1).div_ceil(2);
    for i in 0..2 {
        let blkno = next_meta;
        next_meta += 1;
        let len = meta_len.min(last_meta - meta_start + 1);
        write_lg(
            meta,
            blkno,
            &mut leaf(fsid, blkno, &extent_items(meta_start, len))?,
        )?;
        sb.meta_alloc[i] = AllocRoot {
            total_len: len,
            flags: 0,
            root: single_root(blkno),
        };
        meta_start += meta_len;
    }
    debug_assert_eq!(next_meta, FIRST_FREE_META);

    // quorum blocks: zeroed, with valid headers
    for i in 0..QUORUM_BLOCKS {
        let mut qb = vec![0u8; SM_BLOCK_SIZE];
        QuorumBlock::default().encode(&mut qb);
        header(&mut qb, MAGIC_QUORUM, fsid, QUORUM_BLKNO + i);
        seal_block(&mut qb);
        meta.write((QUORUM_BLKNO + i) << SM_BLOCK_SHIFT, &qb)?;
    }
    meta.flush()?;

    // super: data device first (no meta flag), then the meta device
    write_super_to(data, &sb)?;
    data.flush()?;
    sb.flags |= FLAG_IS_META_BDEV;
    write_super_to(meta, &sb)?;
    meta.flush()?;
    Ok(sb)
}

/// Is there a scoutfs super block on `dev` (magic and crc good)?
pub fn has_volume(dev: &dyn BlockDev) -> bool {
    crate::storage::block::read_super_from(dev).is_ok()
}

/// What the reference mkfs prints after making a volume.
pub fn describe(sb: &SuperBlock, meta_path: &str, data_path: &str) -> String {
    let mut s = String::new();
    s.push_str("Created scoutfs filesystem:\n");
    s.push_str(&format!("  meta device path:       {meta_path}\n"));
    s.push_str(&format!("  data device path:       {data_path}\n"));
    s.push_str(&format!("  fsid:                   {:x}\n", sb.hdr.fsid));
    s.push_str(&format!("  uuid:                   {}\n", sb.uuid_string()));
    s.push_str(&format!("  format version:         {}\n", sb.fmt_vers));
    s.push_str(&format!(
        "  64KB metadata blocks:   {}\n",
        size_blocks(sb.total_meta_blocks, LG_BLOCK_SIZE as u64)
    ));
    s.push_str(&format!(
        "  4KB data blocks:        {}\n",
        size_blocks(sb.total_data_blocks, SM_BLOCK_SIZE as u64)
    ));
    s.push_str(&format!("  quorum config version:  {}\n", sb.qconf.version));
    s.push_str("  quorum slots:           ");
    let mut first = true;
    for (i, a) in sb.qconf.configured() {
        if !first {
            s.push_str("                          ");
        }
        first = false;
        s.push_str(&format!("{i}: {a}\n"));
    }
    if first {
        s.push('\n');
    }
    s
}

/// Parse a `-Q slot,addr,port` argument into the config.
pub fn parse_quorum_slot(q: &mut QuorumConfig, arg: &str) -> Result<(), String> {
    let parts: Vec<&str> = arg.split(',').collect();
    if parts.len() != 3 {
        return Err(format!(
            "failed to parse all three NR,ADDR,PORT tokens in quorum slot '{arg}'"
        ));
    }
    let nr: usize = parts[0]
        .trim()
        .parse()
        .map_err(|_| format!("invalid slot number '{}' in quorum slot '{arg}'", parts[0]))?;
    if nr >= QUORUM_MAX_SLOTS {
        return Err(format!(
            "invalid nr '{nr}' in quorum slot '{arg}', must be between 0 and {}",
            QUORUM_MAX_SLOTS - 1
        ));
    }
    let addr = parse_ipv4(parts[1])
        .ok_or_else(|| format!("invalid ipv4 address '{}' in quorum slot '{arg}'", parts[1]))?;
    let port: u32 = parts[2]
        .trim()
        .parse()
        .map_err(|_| format!("invalid ipv4 port '{}' in quorum slot '{arg}'", parts[2]))?;
    if port == 0 || port > u16::MAX as u32 {
        return Err(format!(
            "invalid ipv4 port '{port}' in quorum slot '{arg}', must be between 1 and {}",
            u16::MAX
        ));
    }
    if q.slots[nr].family() != AF_NONE {
        return Err(format!(
            "Quorum slot {nr} already specified before slot '{arg}'"
        ));
    }
    let a = InetAddr::ipv4(addr, port as u16);
    if q.configured().any(|(_, b)| *b == a) {
        return Err(format!("quorum address {a} used by more than one slot"));
    }
    q.slots[nr] = a;
    Ok(())
}

/// Parse a size with an optional K/M/G/T/P suffix (powers of 1024).
pub fn parse_size(arg: &str) -> Result<u64, String> {
    let s = arg.trim();
    let (num, shift) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 10),
        Some(b'M') => (&s[..s.len() - 1], 20),
        Some(b'G') => (&s[..s.len() - 1], 30),
        Some(b'T') => (&s[..s.len() - 1], 40),
        Some(b'P') => (&s[..s.len() - 1], 50),
        _ => (s, 0),
    };
    let v: u64 = if let Some(h) = num.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else {
        num.parse()
    }
    .map_err(|_| format!("invalid size '{arg}'"))?;
    v.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{arg}' overflows 64 bits"))
}

/// A random (version 4) uuid from two random words.
pub fn uuid_from_random(a: u64, b: u64) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&a.to_le_bytes());
    u[8..].copy_from_slice(&b.to_le_bytes());
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_slots_parse_like_reference() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("12"), Ok(12));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("99999999999T").is_err());
        let mut q = QuorumConfig::default();
        parse_quorum_slot(&mut q, "0,10.0.2.15,7100").unwrap();
        assert_eq!(format!("{}", q.slots[0]), "10.0.2.15:7100");
        assert!(parse_quorum_slot(&mut q, "0,10.0.2.16,7100").is_err());
        assert!(parse_quorum_slot(&mut q, "1,10.0.2.15,7100").is_err());
        assert!(parse_quorum_slot(&mut q, "15,10.0.2.1,7100").is_err());
        assert!(parse_quorum_slot(&mut q, "1,10.0.2,7100").is_err());
        assert!(parse_quorum_slot(&mut q, "1,10.0.2.1,0").is_err());
        assert!(parse_quorum_slot(&mut q, "1,10.0.2.1").is_err());
        assert_eq!(base_size(1 << 30), "1.00GB");
        assert_eq!(size_blocks(16384, 65536), "16384 (1.00 GB)");
        let e = limit_device_size(1 << 30, 0, false, "meta").unwrap_err();
        assert_eq!(e, "1.00GB too small for min 64.00GB meta device");
        let (s, _, w) = limit_device_size(2 << 30, 1 << 30, true, "data").unwrap();
        assert_eq!(s, 1 << 30);
        assert_eq!(
            w[0],
            "1.00GB too small for min 64.00GB data device, allowing with -A"
        );
    }
}
