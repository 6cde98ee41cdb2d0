//! The offline changes of an unmounted volume, as the reference tool makes
//! them: `change-quorum-config` (new quorum slots, config version + 1),
//! `change-format-version` (upgrade both supers) and
//! `prepare-empty-data-device` (a new, empty data device for a volume whose
//! files hold no data blocks).
//!
//! Each refuses a volume that may be in use: one whose super lists mounted
//! clients, or a configured quorum slot whose last `begin` event is newer
//! than its `end` event (a mount that may still be running). Only super
//! blocks are written; nothing is changed when a check fails. Errors are
//! the reference's messages, as text for the CLI.

use crate::format::quorum::QuorumBlock;
use crate::format::super_block::{QuorumConfig, SuperBlock, FLAG_IS_META_BDEV};
use crate::format::{
    DATA_DEV_START_BLKNO, FORMAT_VERSION_MAX, FORMAT_VERSION_MIN, LG_BLOCK_SIZE, QUORUM_BLKNO,
    SM_BLOCK_SHIFT, SM_BLOCK_SIZE,
};
use crate::storage::block::{read_super_from, write_super_to};
use crate::storage::dev::BlockDev;
use crate::tools::mkfs::{base_size, size_blocks};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;

/// Index of the `begin` and `end` events in a quorum block.
const EVENT_BEGIN: usize = 0;
const EVENT_END: usize = 5;

fn read_super(dev: &dyn BlockDev, which: &str) -> Result<SuperBlock, String> {
    read_super_from(dev).map_err(|e| format!("failed to read {which} super block: {e}"))
}

/// The reference's "in use" check: no mounted clients and no quorum slot
/// that began a mount it did not end.
pub fn check_not_in_use(meta: &dyn BlockDev, sb: &SuperBlock) -> Result<(), String> {
    if !sb.mounted_clients.is_empty() {
        return Err("meta superblock mounted clients btree is not empty.".into());
    }
    let mut b = vec![0u8; SM_BLOCK_SIZE];
    for (i, _) in sb.qconf.configured() {
        let blkno = QUORUM_BLKNO + i as u64;
        meta.read(blkno << SM_BLOCK_SHIFT, &mut b)
            .map_err(|e| format!("error reading quorum block for slot {i}: {e}"))?;
        let q = QuorumBlock::decode(&b);
        let (beg, end) = (&q.events[EVENT_BEGIN], &q.events[EVENT_END]);
        if beg.write_nr > end.write_nr {
            return Err(format!(
                "mount in quorum slot {i} could still be running.\n  \
                 begin event: write_nr {} timestamp {}.{:08}\n    \
                 end event: write_nr {} timestamp {}.{:08}",
                beg.write_nr, beg.ts.sec, beg.ts.nsec, end.write_nr, end.ts.sec, end.ts.nsec
            ));
        }
    }
    Ok(())
}

fn not_in_use(meta: &dyn BlockDev, sb: &SuperBlock, to: &str) -> Result<(), String> {
    check_not_in_use(meta, sb).map_err(|e| {
        format!("{e}\nThe filesystem must be fully recovered and cleanly unmounted to {to}")
    })
}

fn write_super(dev: &dyn BlockDev, sb: &SuperBlock, which: &str) -> Result<(), String> {
    write_super_to(dev, sb)
        .and_then(|()| dev.flush().map_err(Into::into))
        .map_err(|e| format!("error writing {which} super block: {e}"))
}

/// Replace the quorum slots of the volume on `meta` with those of `slots`
/// (at least one) and bump the config version. Returns the new super.
pub fn change_quorum_config(
    meta: &dyn BlockDev,
    slots: &QuorumConfig,
) -> Result<SuperBlock, String> {
    if slots.configured().next().is_none() {
        return Err("must specify at least one quorum slot".into());
    }
    let mut sb = read_super(meta, "meta")?;
    if sb.flags & FLAG_IS_META_BDEV == 0 {
        return Err("device is not a meta device".into());
    }
    not_in_use(meta, &sb, "change the quorum config")?;
    sb.qconf.slots = slots.slots;
    sb.qconf.version = sb
        .qconf
        .version
        .checked_add(1)
        .ok_or("quorum config version would overflow")?;
    write_super(meta, &sb, "meta")?;
    Ok(sb)
}

/// What [`change_format_version`] did.
#[derive(Debug)]
pub enum FormatChange {
    /// Both supers already had the version.
    Unchanged,
    /// The supers now have the version (the meta super returned).
    Changed(Box<SuperBlock>),
}

/// Upgrade the format version of both devices' supers to `vers`.
pub fn change_format_version(
    meta: &dyn BlockDev,
    data: &dyn BlockDev,
    vers: u64,
) -> Result<FormatChange, String> {
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION_MAX).contains(&vers) {
        return Err(format!(
            "format-version {vers} is outside supported range of \
             {FORMAT_VERSION_MIN}-{FORMAT_VERSION_MAX}"
        ));
    }
    let mut msb = read_super(meta, "meta")?;
    let mut dsb = read_super(data, "data")?;
    if dsb.hdr.fsid != msb.hdr.fsid {
        return Err("failed to read data super block: it belongs to another volume (fsid)".into());
    }
    if msb.fmt_vers == vers && dsb.fmt_vers == vers {
        return Ok(FormatChange::Unchanged);
    }
    if msb.flags & FLAG_IS_META_BDEV == 0 {
        return Err("device argument #1 is not a meta device (swap arguments?)".into());
    }
    if dsb.flags & FLAG_IS_META_BDEV != 0 {
        return Err("device argument #2 is not a data device (swap arguments?)".into());
    }
    for (which, sb) in [("meta", &msb), ("data", &dsb)] {
        if !(FORMAT_VERSION_MIN..=FORMAT_VERSION_MAX).contains(&sb.fmt_vers) {
            return Err(format!(
                "{which} super block has format version {} outside of supported version \
                 range {FORMAT_VERSION_MIN}-{FORMAT_VERSION_MAX}",
                sb.fmt_vers
            ));
        }
    }
    not_in_use(meta, &msb, "change the format version")?;
    if msb.fmt_vers > vers || dsb.fmt_vers > vers {
        return Err(format!(
            "Downgrade of Meta Format Version: {} and Data Format Version: {} to Format \
             Version: {vers} is not allowed",
            msb.fmt_vers, dsb.fmt_vers
        ));
    }
    let wrote_meta = msb.fmt_vers != vers;
    if wrote_meta {
        msb.fmt_vers = vers;
        write_super(meta, &msb, "meta")?;
    }
    if dsb.fmt_vers != vers {
        dsb.fmt_vers = vers;
        write_super(data, &dsb, "data").map_err(|e| {
            if wrote_meta {
                format!(
                    "{e}\nError writing data super block after writing the meta super \
                     block. The two super blocks may now be out of sync which would prevent \
                     mounting. Correct the source of the write error and retry changing the \
                     version to write both super blocks."
                )
            } else {
                e
            }
        })?;
    }
    Ok(FormatChange::Changed(Box::new(msb)))
}

/// Check that the volume on `meta` can take a new empty data device (and
/// that `data`, when given, is large enough); unless `check_only`, write
/// the new data device's super. Returns the meta super.
pub fn prepare_empty_data_device(
    meta: &dyn BlockDev,
    data: Option<(&dyn BlockDev, &str)>,
    check_only: bool,
) -> Result<SuperBlock, String> {
    let msb = read_super(meta, "meta")?;
    if msb.flags & FLAG_IS_META_BDEV == 0 {
        return Err("device argument #1 is not a meta device (swap arguments?)".into());
    }
    not_in_use(meta, &msb, "determine if the data device is empty.")?;
    let used = msb
        .total_data_blocks
        .checked_sub(DATA_DEV_START_BLKNO)
        .and_then(|n| n.checked_sub(msb.data_alloc.total_len))
        .ok_or("the data allocator holds more blocks than the data device")?;
    if used != 0 {
        return Err(format!(
            "Data block allocator metadata shows {} data blocks used by files.  They must \
             be removed, truncated, or released before a new empty data device can be used.",
            size_blocks(used, SM_BLOCK_SIZE as u64)
        ));
    }
    let Some((data, path)) = data else {
        return if check_only {
            Ok(msb)
        } else {
            Err("no data device argument given".into())
        };
    };
    let size = data.size_bytes();
    let blocks = size >> SM_BLOCK_SHIFT;
    if blocks < msb.total_data_blocks {
        return Err(format!(
            "new data device {path} of size {} has {blocks} 4KiB blocks, it needs at least \
             {} blocks.",
            base_size(size),
            size_blocks(msb.total_data_blocks, SM_BLOCK_SIZE as u64)
        ));
    }
    if check_only {
        return Ok(msb);
    }
    // the data device's super carries only what identifies the volume
    let mut dsb = SuperBlock::default();
    dsb.hdr.fsid = msb.hdr.fsid;
    dsb.hdr.seq = 1;
    dsb.id = msb.id;
    dsb.fmt_vers = msb.fmt_vers;
    dsb.flags = msb.flags & !FLAG_IS_META_BDEV;
    dsb.uuid = msb.uuid;
    dsb.seq = msb.seq;
    dsb.total_meta_blocks = msb.total_meta_blocks;
    dsb.total_data_blocks = msb.total_data_blocks;
    write_super(data, &dsb, "data")?;
    Ok(msb)
}

/// The reference's report after a change: `title`, then the device paths,
/// fsid and uuid with their values in column `width` + 2.
pub fn describe_change(
    title: &str,
    sb: &SuperBlock,
    paths: &[(&str, &str)],
    width: usize,
) -> String {
    let mut s = format!("{title}\n");
    for (what, path) in paths {
        let label = format!("{what} device path:");
        s.push_str(&format!("  {label:<width$}{path}\n"));
    }
    s.push_str(&format!("  {:<width$}{:x}\n", "fsid:", sb.hdr.fsid));
    s.push_str(&format!("  {:<width$}{}\n", "uuid:", sb.uuid_string()));
    s
}

/// The quorum lines of `change-quorum-config`'s report.
pub fn describe_quorum(sb: &SuperBlock) -> String {
    let mut s = format!("  {:<24}{}\n", "quorum config version:", sb.qconf.version);
    s.push_str(&format!("  {:<24}", "quorum slots:"));
    for (n, (i, a)) in sb.qconf.configured().enumerate() {
        if n > 0 {
            s.push_str(&format!("{:26}", ""));
        }
        s.push_str(&format!("{i}: {a}\n"));
    }
    s
}

/// The size lines of `prepare-empty-data-device`'s report.
pub fn describe_sizes(sb: &SuperBlock) -> String {
    format!(
        "  {:<24}{}\n  {:<24}{}\n  {:<24}{}\n",
        "format version:",
        sb.fmt_vers,
        "64KB metadata blocks:",
        size_blocks(sb.total_meta_blocks, LG_BLOCK_SIZE as u64),
        "4KB data blocks:",
        size_blocks(sb.total_data_blocks, SM_BLOCK_SIZE as u64)
    )
}
