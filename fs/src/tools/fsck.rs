//! fsck: the offline checker and the test oracle.
//!
//! Reads a volume through `BlockDev`s (no cache, no writes) and proves what
//! it can: both supers agree with each other and the devices; the quorum
//! config is sane and configured quorum blocks are valid; every btree
//! block is reachable exactly once through a valid ref, is structurally
//! sound (AVL, values, byte counts, leaf hash table), holds keys inside
//! its parent's range with an all-ones right spine; allocator lists and
//! extent trees are consistent with their heads and roots; and every
//! metadata block from META_DEV_START_BLKNO to the end is referenced or
//! free exactly once. That includes the forest: every client log tree
//! (its four allocators, item btree, bloom block and srch file), the log
//! merge items (request and completion allocators, the blocks a completion
//! replaced and still pending, FREEING trees) and srch files. Log items
//! must be sane (seqs within the super's and their tree's, deletions empty,
//! bloom bits set for every item's lock). Data extents of the merged view
//! (fs_root plus log trees, highest seq wins) must be free or mapped
//! exactly once, and inode counts must add up. Each finding names the
//! block it is about.

use crate::format::alloc::extent_from_key;
use crate::format::block::*;
use crate::format::items::InodeItem;
use crate::format::key::{ty, zone, Key};
use crate::format::le::get_u64;
use crate::format::log::*;
use crate::format::quorum::QuorumBlock;
use crate::format::super_block::*;
use crate::format::{
    DATA_DEV_START_BLKNO, LG_BLOCK_SHIFT, LG_BLOCK_SIZE, MAGIC_ALLOC_LIST, MAGIC_BLOOM,
    MAGIC_BTREE, MAGIC_QUORUM, MAGIC_SRCH_BLOCK, MAGIC_SRCH_PARENT, META_DEV_START_BLKNO,
    QUORUM_BLKNO, SM_BLOCK_SHIFT, SM_BLOCK_SIZE, SUPER_BLKNO,
};
use crate::storage::block::check_block;
use crate::storage::btree_block as bb;
use crate::storage::dev::BlockDev;

/// `SCOUTFS_SRCH_PARENT_REFS`.
const SRCH_PARENT_REFS: usize = (LG_BLOCK_SIZE - 32) / 16;
use crate::format::hash::crc32c_block;
use ::alloc::collections::{BTreeMap, BTreeSet};
use ::alloc::format;
use ::alloc::string::String;
use ::alloc::vec;
use ::alloc::vec::Vec;
use core::fmt;

/// One problem found, and the metadata block it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub blkno: Option<u64>,
    pub msg: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.blkno {
            Some(b) => write!(f, "meta block {b}: {}", self.msg),
            None => f.write_str(&self.msg),
        }
    }
}

/// What fsck found and counted.
#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    pub findings: Vec<Finding>,
    /// Things fsck could not check (reported, not failures).
    pub notes: Vec<String>,
    pub meta_referenced: u64,
    pub meta_free: u64,
    pub data_free: u64,
    pub data_mapped: u64,
    pub btree_blocks: u64,
    pub items: u64,
    /// Every metadata block reached through a reference, sorted.
    pub referenced: Vec<u64>,
    /// srch files (rotated, sorted and the log trees' own) and the
    /// entries their leaves hold.
    pub srch_files: u64,
    pub srch_sorted_files: u64,
    pub srch_entries: u64,
}

/// What a walk of one srch file gathered.
#[derive(Default)]
struct SrchWalk {
    sorted: bool,
    leaves: u64,
    entries: u64,
    min: Option<crate::format::log::SrchEntry>,
    max: Option<crate::format::log::SrchEntry>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// Human-readable report, one finding per line.
    pub fn render(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        for n in &self.notes {
            writeln!(out, "note: {n}")?;
        }
        for f in &self.findings {
            writeln!(out, "{f}")?;
        }
        writeln!(
            out,
            "{} metadata blocks referenced, {} free; {} btree blocks, {} items; {} data blocks free, {} mapped",
            self.meta_referenced, self.meta_free, self.btree_blocks, self.items, self.data_free, self.data_mapped
        )?;
        if self.srch_files > 0 {
            writeln!(
                out,
                "{} srch files ({} sorted), {} srch entries",
                self.srch_files, self.srch_sorted_files, self.srch_entries
            )?;
        }
        if self.is_clean() {
            writeln!(out, "clean")
        } else {
            writeln!(out, "{} problem(s) found", self.findings.len())
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fs,
    MetaAlloc,
    DataAlloc,
    LogTrees,
    LogItems,
    LogMerge,
    SrchRoot,
    Other,
}

/// One version of an item in the merged (fs_root + log trees) view.
#[derive(Clone, Copy)]
struct ViewEntry {
    seq: u64,
    deletion: bool,
    /// Data extents: mapped physical block (0 = unmapped) and length.
    pblk: u64,
    len: u64,
}

const UNSEEN: u8 = 0;
const REFERENCED: u8 = 1;
const FREE: u8 = 2;

struct Checker<'a> {
    meta: &'a dyn BlockDev,
    sb: SuperBlock,
    rep: FsckReport,
    /// 2 bits per metadata block: UNSEEN / REFERENCED / FREE
    state: Vec<u8>,
    owners: BTreeMap<u64, String>,
    data_free: Vec<(u64, u64, String)>,
    data_used: Vec<(u64, u64)>,
    inode_deltas: u64,
    max_ino: u64,
    /// extents of the allocator tree being walked, by index
    ext_blkno: Vec<(u64, u64)>,
    ext_order: Vec<(u64, u64)>,
    /// Inode and data extent items of the merged view.
    view: BTreeMap<Key, ViewEntry>,
    /// The log tree being walked: its max_item_seq and its items' locks.
    lt_max_seq: u64,
    bloom_keys: BTreeSet<Key>,
    /// Walking a merge completion's subtree: blocks fs_root references
    /// are shared with it, not referenced twice.
    shared_with_fs: bool,
    progress: &'a mut dyn FnMut(&str, u64, u64),
}

/// Progress callbacks happen at most this often (in blocks).
const PROGRESS_STEP: u64 = 1 << 16;

impl Checker<'_> {
    fn find(&mut self, blkno: Option<u64>, msg: String) {
        // bounded: a badly damaged volume must not exhaust memory
        if self.rep.findings.len() < 10_000 {
            self.rep.findings.push(Finding { blkno, msg });
        }
    }

    fn get(&self, b: u64) -> u8 {
        (self.state[(b / 4) as usize] >> ((b % 4) * 2)) & 3
    }

    fn set(&mut self, b: u64, v: u8) {
        let i = (b / 4) as usize;
        let sh = (b % 4) * 2;
        self.state[i] = (self.state[i] & !(3 << sh)) | (v << sh);
    }

    fn in_meta(&self, b: u64) -> bool {
        b >= META_DEV_START_BLKNO && b < self.sb.total_meta_blocks
    }

    /// Claim a block as referenced by `who`; false if it must not be read.
    fn claim(&mut self, blkno: u64, who: &str) -> bool {
        if !self.in_meta(blkno) {
            self.find(
                Some(blkno),
                format!("{who}: reference outside the metadata device range"),
            );
            return false;
        }
        match self.get(blkno) {
            UNSEEN => {
                self.set(blkno, REFERENCED);
                self.owners.insert(blkno, who.into());
                self.rep.meta_referenced += 1;
                true
            }
            REFERENCED => {
                let prev = self.owners.get(&blkno).cloned().unwrap_or_default();
                self.find(
                    Some(blkno),
                    format!("referenced twice: by {prev} and by {who}"),
                );
                false
            }
            _ => {
                self.find(
                    Some(blkno),
                    format!("{who}: block is referenced but also free"),
                );
                false
            }
        }
    }

    fn mark_free(&mut self, start: u64, len: u64, who: &str) {
        let Some(end) = start.checked_add(len) else {
            self.find(None, format!("{who}: free extent {start}+{len} overflows"));
            return;
        };
        if start < META_DEV_START_BLKNO || end > self.sb.total_meta_blocks {
            self.find(
                None,
                format!("{who}: free extent {start}..{end} outside the metadata device"),
            );
            return;
        }
        let mut reported = false;
        for b in start..end {
            match self.get(b) {
                UNSEEN => {
                    self.set(b, FREE);
                    self.rep.meta_free += 1;
                }
                s if !reported => {
                    reported = true;
                    let what = if s == FREE {
                        "free twice"
                    } else {
                        "free and referenced"
                    };
                    let owner = self.owners.get(&b).cloned().unwrap_or_default();
                    self.find(
                        Some(b),
                        format!(
                            "{what} ({who}{}{owner})",
                            if owner.is_empty() {
                                ""
                            } else {
                                ", referenced by "
                            }
                        ),
                    );
                }
                _ => {}
            }
        }
    }

    fn read_lg(&mut self, bref: &BlockRef, magic: u32, who: &str) -> Option<Vec<u8>> {
        // checked before the shift: a blkno of 2^48 or more would alias
        if bref.blkno == 0 || bref.blkno >= self.meta.size_bytes() >> LG_BLOCK_SHIFT {
            self.find(
                Some(bref.blkno),
                format!("{who}: block reference outside the device"),
            );
            return None;
        }
        let mut buf = vec![0u8; LG_BLOCK_SIZE];
        if let Err(e) = self.meta.read(bref.blkno << LG_BLOCK_SHIFT, &mut buf) {
            self.find(Some(bref.blkno), format!("{who}: read failed: {e}"));
            return None;
        }
        if let Err(r) = check_block(&buf, bref, magic, self.sb.hdr.fsid) {
            self.find(
                Some(bref.blkno),
                format!("{who}: invalid block reference: {}", r.as_str()),
            );
            return None;
        }
        Some(buf)
    }

    // ---- btrees ----

    fn tree(&mut self, name: &str, root: &BtreeRoot, kind: Kind) {
        if root.height == 0 {
            if !root.bref.is_null() {
                self.find(None, format!("{name}: empty root with a block reference"));
            }
            return;
        }
        if root.height > BtreeRoot::MAX_HEIGHT {
            self.find(
                Some(root.bref.blkno),
                format!("{name}: root height {} too large", root.height),
            );
            return;
        }
        (self.progress)(name, 0, 0);
        // a merge completion's subtree is a piece of fs_root: its last
        // parent key is its parent's bound, not the all-ones spine
        let spine = !self.shared_with_fs;
        self.block(
            name,
            &root.bref,
            root.height - 1,
            None,
            Key::MAX,
            spine,
            kind,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &mut self,
        name: &str,
        bref: &BlockRef,
        level: u8,
        lo: Option<Key>,
        hi: Key,
        spine: bool,
        kind: Kind,
    ) {
        let who = format!("{name} level {level}");
        if self.shared_with_fs
            && self.in_meta(bref.blkno)
            && self.get(bref.blkno) == REFERENCED
            && self
                .owners
                .get(&bref.blkno)
                .is_some_and(|o| o.starts_with("fs_root"))
        {
            return;
        }
        if !self.claim(bref.blkno, &who) {
            return;
        }
        let Some(b) = self.read_lg(bref, MAGIC_BTREE, &who) else {
            return;
        };
        self.rep.btree_blocks += 1;
        if let Err(w) = bb::verify(&b, level) {
            self.find(Some(bref.blkno), format!("{who}: {w}"));
            return;
        }
        for w in bb::check_deep(&b) {
            self.find(Some(bref.blkno), format!("{who}: {w}"));
        }
        let order = bb::ordered(&b);
        if order.is_empty() {
            self.find(Some(bref.blkno), format!("{who}: empty btree block"));
            return;
        }
        for &o in &order {
            let k = bb::item_key(&b, o);
            if lo.is_some_and(|l| k <= l) || k > hi {
                self.find(
                    Some(bref.blkno),
                    format!("{who}: key {k} outside its parent's range"),
                );
            }
        }
        if level > 0 {
            let last = bb::item_key(&b, *order.last().unwrap());
            if spine && last != Key::MAX {
                self.find(
                    Some(bref.blkno),
                    format!("{who}: right spine parent key {last} is not all ones"),
                );
            }
            let mut prev = lo;
            for (i, &o) in order.iter().enumerate() {
                let k = bb::item_key(&b, o);
                if bb::item_seq(&b, o) != 0 || bb::item_flags(&b, o) != 0 {
                    self.find(
                        Some(bref.blkno),
                        format!("{who}: parent item {k} has seq or flags"),
                    );
                }
                let child = BlockRef::decode(bb::item_val(&b, o));
                self.block(
                    name,
                    &child,
                    level - 1,
                    prev,
                    k,
                    spine && i + 1 == order.len(),
                    kind,
                );
                prev = Some(k);
            }
            return;
        }
        let mut extents_blkno = Vec::new();
        let mut extents_order = Vec::new();
        for &o in &order {
            self.rep.items += 1;
            let k = bb::item_key(&b, o);
            let seq = bb::item_seq(&b, o);
            let flags = bb::item_flags(&b, o);
            let val = bb::item_val(&b, o);
            if flags & !crate::format::btree::ITEM_FLAG_DELETION != 0 {
                self.find(
                    Some(bref.blkno),
                    format!("{who}: item {k} has unknown flags {flags:#x}"),
                );
            }
            match kind {
                Kind::Fs => self.fs_item(bref.blkno, &who, &k, seq, flags, val),
                Kind::MetaAlloc | Kind::DataAlloc => {
                    if !val.is_empty() || flags != 0 {
                        self.find(
                            Some(bref.blkno),
                            format!("{who}: free extent item {k} has a value or flags"),
                        );
                    }
                    match (k.zone, extent_from_key(&k)) {
                        (zone::FREE_EXTENT_BLKNO, Some(e)) => extents_blkno.push(e),
                        (zone::FREE_EXTENT_ORDER, Some(e)) => {
                            if k.first != u64::MAX - crate::format::alloc::free_extent_order(e.1) {
                                self.find(
                                    Some(bref.blkno),
                                    format!("{who}: order key {k} has the wrong order"),
                                );
                            }
                            extents_order.push(e)
                        }
                        _ => self.find(
                            Some(bref.blkno),
                            format!("{who}: item {k} is not a free extent"),
                        ),
                    }
                }
                Kind::LogTrees => self.log_trees_item(bref.blkno, &who, &k, val),
                Kind::LogItems => self.log_item(bref.blkno, &who, &k, seq, flags, val),
                Kind::LogMerge => self.log_merge_item(bref.blkno, &who, &k, val),
                Kind::SrchRoot => self.srch_root_item(bref.blkno, &who, &k, val),
                Kind::Other => {}
            }
        }
        if matches!(kind, Kind::MetaAlloc | Kind::DataAlloc) {
            self.ext_blkno.extend(extents_blkno);
            self.ext_order.extend(extents_order);
        }
    }

    fn fs_item(&mut self, blkno: u64, who: &str, k: &Key, seq: u64, flags: u8, val: &[u8]) {
        if seq == 0 || seq > self.sb.seq {
            self.find(
                Some(blkno),
                format!("{who}: item {k} seq {seq} outside 1..={}", self.sb.seq),
            );
        }
        if flags != 0 {
            self.find(
                Some(blkno),
                format!("{who}: deletion item {k} in the fs root"),
            );
        }
        self.record(blkno, who, k, seq, flags, val);
    }

    /// Add an item version to the merged view (inodes and extents).
    fn record(&mut self, blkno: u64, who: &str, k: &Key, seq: u64, flags: u8, val: &[u8]) {
        if k.zone != zone::FS {
            return;
        }
        let deletion = flags & crate::format::btree::ITEM_FLAG_DELETION != 0;
        let (mut pblk, mut len) = (0, 0);
        match k.ty {
            ty::INODE => {
                if !deletion && InodeItem::decode(val).is_err() {
                    self.find(
                        Some(blkno),
                        format!("{who}: inode item {k} has a {}-byte value", val.len()),
                    );
                }
            }
            ty::DATA_EXTENT => {
                if !deletion {
                    if val.len() != 16 {
                        self.find(
                            Some(blkno),
                            format!("{who}: extent item {k} has a {}-byte value", val.len()),
                        );
                        return;
                    }
                    pblk = get_u64(val, 0);
                    len = k.third;
                }
            }
            _ => return,
        }
        let e = ViewEntry {
            seq,
            deletion,
            pblk,
            len,
        };
        match self.view.get(k) {
            Some(old) if old.seq >= seq => {}
            _ => {
                self.view.insert(*k, e);
            }
        }
    }

    fn log_item(&mut self, blkno: u64, who: &str, k: &Key, seq: u64, flags: u8, val: &[u8]) {
        if seq == 0 || seq > self.sb.seq || seq > self.lt_max_seq {
            self.find(
                Some(blkno),
                format!(
                    "{who}: log item {k} seq {seq} outside 1..={} (super {}, tree max {})",
                    self.sb.seq.min(self.lt_max_seq),
                    self.sb.seq,
                    self.lt_max_seq
                ),
            );
        }
        let deletion = flags & crate::format::btree::ITEM_FLAG_DELETION != 0;
        if deletion && !val.is_empty() {
            self.find(
                Some(blkno),
                format!("{who}: deletion item {k} carries a value"),
            );
        }
        if k.zone == zone::XATTR_TOTL && (deletion || val.len() != 16) {
            self.find(
                Some(blkno),
                format!("{who}: totl delta item {k} is not a 16-byte delta"),
            );
        }
        if !matches!(
            k.zone,
            zone::INODE_INDEX
                | zone::ORPHAN
                | zone::QUOTA
                | zone::XATTR_TOTL
                | zone::XATTR_INDX
                | zone::FS
        ) {
            self.find(
                Some(blkno),
                format!("{who}: log item {k} outside the filesystem zones"),
            );
        }
        self.bloom_keys.insert(crate::client::forest::bloom_key(k));
        self.record(blkno, who, k, seq, flags, val);
    }

    fn srch_file(&mut self, name: &str, f: &SrchFile, sorted: bool) {
        if f.bref.is_null() {
            if f.blocks != 0 || f.height != 0 || f.entries != 0 {
                self.find(
                    None,
                    format!("{name}: empty srch file with blocks, entries or height"),
                );
            }
            return;
        }
        if f.height == 0 || f.height > crate::format::srch::HEIGHT_MAX {
            self.find(
                Some(f.bref.blkno),
                format!("{name}: srch file height {} out of range", f.height),
            );
            return;
        }
        self.rep.srch_files += 1;
        if sorted {
            self.rep.srch_sorted_files += 1;
        }
        let mut w = SrchWalk {
            sorted,
            ..Default::default()
        };
        self.srch_block(name, &f.bref, f.height, &mut w);
        if w.leaves != f.blocks {
            self.find(
                Some(f.bref.blkno),
                format!(
                    "{name}: srch file claims {} blocks, holds {}",
                    f.blocks, w.leaves
                ),
            );
        }
        if w.entries != f.entries {
            self.find(
                Some(f.bref.blkno),
                format!(
                    "{name}: srch file claims {} entries, its blocks hold {}",
                    f.entries, w.entries
                ),
            );
        }
        // a sorted file's bounds are its ends; a log file's cover it
        let ends_ok = match (w.min, w.max) {
            (Some(lo), Some(hi)) if sorted => f.first == lo && f.last == hi,
            (Some(lo), Some(hi)) => f.first <= lo && f.last >= hi,
            _ => true,
        };
        if !ends_ok {
            self.find(
                Some(f.bref.blkno),
                format!("{name}: srch file first/last do not bound its entries"),
            );
        }
        self.rep.srch_entries += w.entries;
    }

    fn srch_block(&mut self, name: &str, r: &BlockRef, height: u8, w: &mut SrchWalk) {
        let who = format!("{name} srch height {height}");
        if !self.claim(r.blkno, &who) {
            return;
        }
        if height == 1 {
            if let Some(b) = self.read_lg(r, MAGIC_SRCH_BLOCK, &who) {
                w.leaves += 1;
                match crate::format::srch::decode_leaf(&b, w.sorted) {
                    Ok((_, ents)) => {
                        if let (Some(prev), Some(first)) = (w.max, ents.first()) {
                            if w.sorted && *first < prev {
                                self.find(
                                    Some(r.blkno),
                                    format!(
                                        "{who}: sorted srch block starts before the previous ends"
                                    ),
                                );
                            }
                        }
                        for e in &ents {
                            w.min = Some(w.min.map_or(*e, |m| m.min(*e)));
                            w.max = Some(w.max.map_or(*e, |m| m.max(*e)));
                        }
                        w.entries += ents.len() as u64;
                    }
                    Err(e) => self.find(Some(r.blkno), format!("{who}: {}", e.0)),
                }
            }
            return;
        }
        let Some(b) = self.read_lg(r, MAGIC_SRCH_PARENT, &who) else {
            return;
        };
        for i in 0..SRCH_PARENT_REFS {
            let c = BlockRef::decode(&b[32 + i * 16..48 + i * 16]);
            if !c.is_null() {
                self.srch_block(name, &c, height - 1, w);
            }
        }
    }

    fn srch_root_item(&mut self, blkno: u64, who: &str, k: &Key, val: &[u8]) {
        match k.ty {
            ty::SRCH_LOG | ty::SRCH_BLOCKS if val.len() == SrchFile::BYTES => {
                let f = SrchFile::decode(val);
                let sorted = k.ty == ty::SRCH_BLOCKS;
                self.srch_file(&format!("srch file {k}"), &f, sorted);
            }
            ty::SRCH_PENDING | ty::SRCH_BUSY => self.rep.notes.push(format!(
                "srch compaction item {k}: its allocators are not checked"
            )),
            _ => self.find(
                Some(blkno),
                format!("{who}: srch item {k} with a {}-byte value", val.len()),
            ),
        }
    }

    fn log_merge_item(&mut self, blkno: u64, who: &str, k: &Key, val: &[u8]) {
        let bad = |c: &mut Self, what: &str| {
            c.find(Some(blkno), format!("{who}: log merge item {k}: {what}"));
        };
        match k.zone {
            zone::LOG_MERGE_STATUS => match MergeStatus::decode(val) {
                Ok(st) => {
                    if st.seq > self.sb.seq {
                        bad(self, "status seq beyond the super's");
                    }
                }
                Err(e) => bad(self, e.0),
            },
            zone::LOG_MERGE_RANGE => {
                if let Err(e) = MergeRange::decode(val) {
                    bad(self, e.0);
                }
            }
            zone::LOG_MERGE_REQUEST => match MergeRequest::decode(val) {
                Ok(req) => {
                    let name = format!("merge request {}.{}", req.rid, req.seq);
                    self.list(&format!("{name} meta_avail"), &req.meta_avail);
                    self.list(&format!("{name} meta_freed"), &req.meta_freed);
                }
                Err(e) => bad(self, e.0),
            },
            zone::LOG_MERGE_COMPLETE => match MergeComplete::decode(val) {
                Ok(c) => {
                    let name = format!("merge completion {}", c.seq);
                    self.list(&format!("{name} meta_avail"), &c.meta_avail);
                    if !c.is_spliced() {
                        self.list_of(&format!("{name} meta_freed"), &c.meta_freed, true);
                    }
                    self.shared_with_fs = true;
                    self.tree(&format!("{name} root"), &c.root, Kind::Other);
                    self.shared_with_fs = false;
                }
                Err(e) => bad(self, e.0),
            },
            zone::LOG_MERGE_FREEING => match MergeFreeing::decode(val) {
                Ok(f) => {
                    let name = format!("freeing tree {}", f.seq);
                    self.tree(&name, &f.root, Kind::Other);
                }
                Err(e) => bad(self, e.0),
            },
            _ => bad(self, "unknown zone"),
        }
    }

    fn log_trees_item(&mut self, blkno: u64, who: &str, k: &Key, val: &[u8]) {
        if val.len() != 472 {
            self.find(
                Some(blkno),
                format!("{who}: log_trees item {k} has a {}-byte value", val.len()),
            );
            return;
        }
        let lt = match LogTrees::decode(val) {
            Ok(lt) => lt,
            Err(e) => {
                self.find(Some(blkno), format!("{who}: log_trees item {k}: {}", e.0));
                return;
            }
        };
        let name = format!("log tree {}.{}", k.first, k.second);
        if lt.key() != *k {
            self.find(
                Some(blkno),
                format!("{who}: {name}: key and value disagree"),
            );
        }
        if lt.get_trans_seq > self.sb.seq
            || lt.commit_trans_seq > lt.get_trans_seq
            || lt.max_item_seq > self.sb.seq
            || lt.finalize_seq > self.sb.seq
            || (lt.is_finalized() && lt.finalize_seq == 0)
        {
            self.find(
                Some(blkno),
                format!(
                    "{who}: {name}: seqs out of order (get {}, commit {}, max item {}, finalize {}, super {})",
                    lt.get_trans_seq, lt.commit_trans_seq, lt.max_item_seq, lt.finalize_seq, self.sb.seq
                ),
            );
        }
        self.list(&format!("{name} meta_avail"), &lt.meta_avail);
        self.list(&format!("{name} meta_freed"), &lt.meta_freed);
        self.lt_max_seq = lt.max_item_seq;
        self.bloom_keys.clear();
        self.tree(&format!("{name} item_root"), &lt.item_root, Kind::LogItems);
        let keys = core::mem::take(&mut self.bloom_keys);
        let bloom = lt.bloom_ref;
        if bloom.is_null() {
            if !keys.is_empty() {
                self.find(Some(blkno), format!("{name}: items but no bloom block"));
            }
        } else if self.claim(bloom.blkno, &format!("{name} bloom")) {
            if let Some(b) = self.read_lg(&bloom, MAGIC_BLOOM, &format!("{name} bloom")) {
                let set = get_u64(&b, BLOOM_TOTAL_SET_OFF);
                if set != bloom_count(&b) {
                    self.find(
                        Some(bloom.blkno),
                        format!(
                            "{name} bloom: total_set {set} but {} bits set",
                            bloom_count(&b)
                        ),
                    );
                }
                for key in keys {
                    if !bloom_bits(&key).iter().all(|&n| bloom_test(&b, n)) {
                        self.find(
                            Some(bloom.blkno),
                            format!("{name} bloom: bits of lock {key} not set"),
                        );
                        break;
                    }
                }
            }
        }
        self.alloc_root(
            &format!("{name} data_avail"),
            &lt.data_avail,
            Kind::DataAlloc,
        );
        self.alloc_root(
            &format!("{name} data_freed"),
            &lt.data_freed,
            Kind::DataAlloc,
        );
        self.srch_file(&format!("{name} srch"), &lt.srch_file, false);
        self.inode_deltas = self.inode_deltas.wrapping_add(lt.inode_count_delta);
    }

    // ---- allocators ----

    fn alloc_root(&mut self, name: &str, root: &AllocRoot, kind: Kind) {
        self.ext_blkno.clear();
        self.ext_order.clear();
        self.tree(name, &root.root, kind);
        let mut bl = core::mem::take(&mut self.ext_blkno);
        let mut or = core::mem::take(&mut self.ext_order);
        bl.sort_unstable();
        or.sort_unstable();
        if bl != or {
            self.find(
                Some(root.root.bref.blkno),
                format!("{name}: BLKNO and ORDER extent indexes differ"),
            );
        }
        let sum: u64 = bl.iter().map(|e| e.1).sum();
        if sum != root.total_len {
            self.find(
                Some(root.root.bref.blkno),
                format!(
                    "{name}: total_len {} but extents sum to {sum}",
                    root.total_len
                ),
            );
        }
        for w in bl.windows(2) {
            if w[0].0.saturating_add(w[0].1) > w[1].0 {
                self.find(
                    None,
                    format!("{name}: free extents {:?} and {:?} overlap", w[0], w[1]),
                );
            }
        }
        for (s, l) in bl {
            match kind {
                Kind::MetaAlloc => self.mark_free(s, l, name),
                _ => self.data_free.push((s, l, name.into())),
            }
        }
    }

    fn list(&mut self, name: &str, head: &AllocListHead) {
        self.list_of(name, head, false);
    }

    /// Walk an allocator list. Its entries are free blocks, unless
    /// `pending_free`: a list of blocks a merge replaced, which fs_root
    /// still references until the completion is spliced (entries nothing
    /// references, e.g. list blocks of the request allocator, are free).
    fn list_of(&mut self, name: &str, head: &AllocListHead, pending_free: bool) {
        let mut r = head.bref;
        let mut total = 0u64;
        let mut first = true;
        let mut blocks = 0u64;
        while !r.is_null() {
            blocks += 1;
            if blocks > self.sb.total_meta_blocks {
                break;
            }
            if !self.claim(r.blkno, &format!("{name} list block")) {
                return;
            }
            let Some(b) = self.read_lg(&r, MAGIC_ALLOC_LIST, name) else {
                return;
            };
            if !crate::storage::allocator::lb_window_valid(&b) {
                self.find(Some(r.blkno), format!("{name}: list start/nr out of range"));
                return;
            }
            let entries = crate::storage::allocator::lb_entries(&b);
            if first && entries.len() as u64 != head.first_nr as u64 {
                self.find(
                    Some(r.blkno),
                    format!(
                        "{name}: head first_nr {} but block holds {}",
                        head.first_nr,
                        entries.len()
                    ),
                );
            }
            first = false;
            total += entries.len() as u64;
            for e in entries {
                if pending_free && self.in_meta(e) && self.get(e) == REFERENCED {
                    let owner = self.owners.get(&e).cloned().unwrap_or_default();
                    if !owner.starts_with("fs_root") {
                        self.find(
                            Some(e),
                            format!("{name}: pending free referenced by {owner}, not fs_root"),
                        );
                    }
                } else {
                    self.mark_free(e, 1, name);
                }
            }
            r = crate::storage::allocator::lb_next(&b);
        }
        if total != head.total_nr {
            self.find(
                Some(head.bref.blkno).filter(|&b| b != 0),
                format!(
                    "{name}: head total_nr {} but lists hold {total}",
                    head.total_nr
                ),
            );
        }
    }
}

/// Check the quorum config in a super.
fn check_qconf(sb: &SuperBlock, find: &mut dyn FnMut(String)) {
    if sb.qconf.version == 0 {
        find("quorum config version is 0".into());
    }
    let mut seen: Vec<InetAddr> = Vec::new();
    let mut n = 0;
    for (i, a) in sb.qconf.slots.iter().enumerate() {
        match a.family() {
            AF_NONE => continue,
            AF_IPV4 => {}
            f => {
                find(format!("quorum slot {i}: unsupported address family {f}"));
                continue;
            }
        }
        n += 1;
        if a.port() == 0 {
            find(format!("quorum slot {i}: port 0"));
        }
        if a.ipv4_octets() == [0; 4] {
            find(format!("quorum slot {i}: address 0.0.0.0"));
        }
        if seen.contains(a) {
            find(format!("quorum slot {i}: address {a} used by another slot"));
        }
        seen.push(*a);
    }
    if n == 0 {
        find("no quorum slots configured".into());
    }
}

/// Check a volume. `data` may be None to check the metadata device alone.
/// `progress(phase, done, total)` is called as work proceeds.
pub fn fsck(
    meta: &dyn BlockDev,
    data: Option<&dyn BlockDev>,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> FsckReport {
    let mut rep = FsckReport::default();
    let mut sbuf = vec![0u8; SM_BLOCK_SIZE];
    if let Err(e) = meta.read(SUPER_BLKNO << SM_BLOCK_SHIFT, &mut sbuf) {
        rep.findings.push(Finding {
            blkno: None,
            msg: format!("cannot read the super block: {e}"),
        });
        return rep;
    }
    let sb = SuperBlock::decode(&sbuf);
    let super_bad = |msg: &str| Finding {
        blkno: None,
        msg: format!("super block (4KB block {SUPER_BLKNO}): {msg}"),
    };
    if sb.hdr.magic != crate::format::MAGIC_SUPER {
        rep.findings
            .push(super_bad("bad magic: not a scoutfs volume"));
        return rep;
    }
    if sb.hdr.crc != crc32c_block(&sbuf) {
        rep.findings.push(super_bad("crc mismatch"));
        return rep;
    }
    if sb.hdr.blkno != SUPER_BLKNO {
        rep.findings.push(super_bad("header blkno is not 16"));
    }
    let dsb = data.map(crate::storage::block::read_super_from);
    match (&dsb, data) {
        (Some(Ok(d)), Some(ddev)) => {
            if let Err(w) =
                crate::server::commit::check_supers(&sb, d, meta.size_bytes(), ddev.size_bytes())
            {
                rep.findings.push(super_bad(w));
                return rep;
            }
        }
        (Some(Err(e)), _) => {
            rep.findings.push(Finding {
                blkno: None,
                msg: format!("data device super block: {e}"),
            });
            return rep;
        }
        _ => {
            if sb.flags & FLAG_IS_META_BDEV == 0 {
                rep.findings
                    .push(super_bad("meta flag not set (is this the data device?)"));
                return rep;
            }
            if sb.total_meta_blocks <= META_DEV_START_BLKNO
                || sb
                    .total_meta_blocks
                    .checked_mul(1u64 << LG_BLOCK_SHIFT)
                    .is_none_or(|b| b > meta.size_bytes())
            {
                rep.findings
                    .push(super_bad("total_meta_blocks does not fit the meta device"));
                return rep;
            }
        }
    }
    let mut qf = Vec::new();
    check_qconf(&sb, &mut |m| qf.push(m));
    rep.findings.extend(qf.into_iter().map(|m| Finding {
        blkno: None,
        msg: m,
    }));
    for (i, _) in sb.qconf.configured() {
        let blk = QUORUM_BLKNO + i as u64;
        let mut q = vec![0u8; SM_BLOCK_SIZE];
        let what = match meta.read(blk << SM_BLOCK_SHIFT, &mut q) {
            Err(e) => Some(format!("read failed: {e}")),
            Ok(()) => {
                let h = QuorumBlock::decode(&q).hdr;
                if h.crc != crc32c_block(&q) {
                    Some("crc mismatch".into())
                } else if h.magic != MAGIC_QUORUM || h.fsid != sb.hdr.fsid || h.blkno != blk {
                    Some("bad header (magic, fsid or blkno)".into())
                } else {
                    None
                }
            }
        };
        if let Some(w) = what {
            rep.findings.push(Finding {
                blkno: None,
                msg: format!("quorum block {blk} (slot {i}, 4KB units): {w}"),
            });
        }
    }

    let nblocks = sb.total_meta_blocks;
    let mut ck = Checker {
        meta,
        sb,
        rep,
        state: vec![0u8; nblocks.div_ceil(4) as usize],
        owners: BTreeMap::new(),
        data_free: Vec::new(),
        data_used: Vec::new(),
        inode_deltas: 0,
        max_ino: 0,
        view: BTreeMap::new(),
        lt_max_seq: 0,
        bloom_keys: BTreeSet::new(),
        shared_with_fs: false,
        ext_blkno: Vec::new(),
        ext_order: Vec::new(),
        progress,
    };
    ck.run();
    ck.rep.referenced = ck.owners.keys().copied().collect();
    ck.rep
}

impl Checker<'_> {
    fn run(&mut self) {
        let c = self;
        let sb = c.sb;
        for i in 0..2 {
            c.list(&format!("server_meta_avail[{i}]"), &sb.server_meta_avail[i]);
            c.list(&format!("server_meta_freed[{i}]"), &sb.server_meta_freed[i]);
        }
        for i in 0..2 {
            c.alloc_root(
                &format!("meta_alloc[{i}]"),
                &sb.meta_alloc[i],
                Kind::MetaAlloc,
            );
        }
        c.alloc_root("data_alloc", &sb.data_alloc, Kind::DataAlloc);
        c.tree("fs_root", &sb.fs_root, Kind::Fs);
        c.tree("logs_root", &sb.logs_root, Kind::LogTrees);
        c.tree("mounted_clients", &sb.mounted_clients, Kind::Other);
        c.tree("srch_root", &sb.srch_root, Kind::SrchRoot);
        c.tree("log_merge", &sb.log_merge, Kind::LogMerge);

        // the merged view: what a reader sees
        let view = core::mem::take(&mut c.view);
        let mut inodes = 0u64;
        for (k, e) in &view {
            if e.deletion {
                continue;
            }
            if k.first > c.max_ino {
                c.max_ino = k.first;
            }
            match k.ty {
                ty::INODE => inodes += 1,
                ty::DATA_EXTENT if e.pblk != 0 => c.data_used.push((e.pblk, e.len)),
                _ => {}
            }
        }
        let expect = sb.inode_count.wrapping_add(c.inode_deltas);
        if inodes != expect {
            c.find(
                None,
                format!(
                    "super inode_count {} plus log tree deltas {} is {expect}, but {inodes} inodes are live",
                    sb.inode_count, c.inode_deltas as i64
                ),
            );
        }
        if c.max_ino >= sb.next_ino {
            c.find(
                None,
                format!(
                    "inode {} at or beyond super next_ino {}",
                    c.max_ino, sb.next_ino
                ),
            );
        }

        // every metadata block referenced or free exactly once
        let complete = c.rep.notes.is_empty();
        let total = sb.total_meta_blocks;
        let mut run: Option<(u64, u64)> = None;
        let mut leaks: Vec<(u64, u64)> = Vec::new();
        for b in META_DEV_START_BLKNO..total {
            if b % PROGRESS_STEP == 0 {
                (c.progress)("metadata accounting", b, total);
            }
            if c.get(b) == UNSEEN {
                run = match run {
                    Some((s, n)) if s + n == b => Some((s, n + 1)),
                    Some(r) => {
                        leaks.push(r);
                        Some((b, 1))
                    }
                    None => Some((b, 1)),
                };
            }
        }
        leaks.extend(run);
        for (s, n) in leaks {
            let msg = format!(
                "{n} metadata block(s) {s}..={} neither referenced nor free",
                s + n - 1
            );
            if complete {
                c.find(Some(s), msg);
            } else {
                c.rep.notes.push(msg);
            }
        }

        // data: free extents and mapped extents disjoint, inside the device
        let tdata = sb.total_data_blocks;
        let mut spans: Vec<(u64, u64, String)> = core::mem::take(&mut c.data_free);
        c.rep.data_free = spans.iter().map(|s| s.1).sum();
        c.rep.data_mapped = c.data_used.iter().map(|s| s.1).sum();
        let used = core::mem::take(&mut c.data_used);
        spans.extend(
            used.into_iter()
                .map(|(s, l)| (s, l, String::from("fs_root extent"))),
        );
        spans.sort_unstable_by_key(|s| s.0);
        let mut covered = 0u64;
        let mut reach = DATA_DEV_START_BLKNO;
        for (s, l, who) in &spans {
            if *s < DATA_DEV_START_BLKNO || s.checked_add(*l).is_none_or(|e| e > tdata) {
                c.find(
                    None,
                    format!("{who}: data extent {s}+{l} outside the data device"),
                );
                continue;
            }
            if *s < reach {
                c.find(
                    None,
                    format!("{who}: data extent {s}+{l} overlaps another free or mapped extent"),
                );
            }
            covered += l;
            reach = reach.max(s + l);
        }
        let data_total = tdata.saturating_sub(DATA_DEV_START_BLKNO);
        if complete && covered < data_total {
            c.find(
                None,
                format!(
                    "{} data block(s) neither free nor mapped",
                    data_total - covered
                ),
            );
        }
        (c.progress)("done", total, total);
    }
}
