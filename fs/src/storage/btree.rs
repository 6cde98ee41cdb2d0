//! Btrees of 64 KiB blocks: lookups, ordered iteration, insert/update/
//! delete with split, join, compaction, root growth and collapse, bulk
//! insert, level-1 parent get/set, and incremental freeing.
//!
//! Any number of roots (`BtreeRoot` values owned by the caller) share one
//! [`BlockCache`]; modifications copy-on-write every block on the path
//! through a [`MetaAlloc`]. Invariants: parent item keys are the greatest
//! key their child subtree may hold, the right spine uses `Key::MAX`, a
//! non-root block is joined when it drops under a quarter of its space,
//! a root parent with one child collapses, an empty root leaf is freed.
//! Reads return `Stale` for refs that do not match; callers retry with
//! fresh roots (`store_error::retry_stale`).

use crate::format::block::{BlockRef, BtreeRoot};
use crate::format::btree::{btree_item_bytes, btree_usable};
use crate::format::key::Key;
use crate::format::{BTREE_MAX_VAL_LEN, MAGIC_BTREE};
use crate::storage::block::{BlockBuf, BlockCache, MetaAlloc};
use crate::storage::btree_block as bb;
pub use crate::storage::btree_block::Item;
use crate::storage::store_error::{StoreError, StoreResult};
use alloc::vec::Vec;

/// The leaf that covers a key, and the key range it covers.
pub struct LeafItems {
    pub items: Vec<Item>,
    /// Smallest key the leaf may hold.
    pub start: Key,
    /// Greatest key the leaf may hold.
    pub end: Key,
}

fn corrupt(blkno: u64, what: &'static str) -> StoreError {
    StoreError::Corrupt { blkno, what }
}

fn blkno_of(buf: &BlockBuf) -> u64 {
    crate::format::block::BlockHeader::decode(&buf.borrow()).blkno
}

/// Read a btree block expected at `level`, verifying it on first read.
pub fn read_block(cache: &mut BlockCache, bref: &BlockRef, level: u8) -> StoreResult<BlockBuf> {
    let buf = cache.read_ref_verified(bref, MAGIC_BTREE, &|b| bb::verify(b, bb::level(b)))?;
    if bb::level(&buf.borrow()) != level {
        return Err(corrupt(bref.blkno, "btree block at unexpected level"));
    }
    Ok(buf)
}

fn check_root(root: &BtreeRoot) -> StoreResult<()> {
    if root.height > BtreeRoot::MAX_HEIGHT || (root.height > 0 && root.bref.is_null()) {
        return Err(corrupt(root.bref.blkno, "btree root height out of range"));
    }
    Ok(())
}

fn child_ref(b: &[u8], ioff: usize) -> BlockRef {
    BlockRef::decode(bb::item_val(b, ioff))
}

/// Descend to the leaf covering `key`.
fn descend(
    cache: &mut BlockCache,
    root: &BtreeRoot,
    key: &Key,
) -> StoreResult<Option<(BlockBuf, Key, Key)>> {
    check_root(root)?;
    if root.height == 0 {
        return Ok(None);
    }
    let mut bref = root.bref;
    let mut level = root.height - 1;
    let (mut start, mut end) = (Key::MIN, Key::MAX);
    loop {
        let buf = read_block(cache, &bref, level)?;
        if level == 0 {
            return Ok(Some((buf, start, end)));
        }
        let next_ref = {
            let b = buf.borrow();
            let Some(ioff) = bb::find_ge(&b, key) else {
                return Err(corrupt(bref.blkno, "parent block does not cover key"));
            };
            let k = bb::item_key(&b, ioff);
            if k < end {
                end = k;
            }
            if let Some(p) = bb::prev(&b, ioff) {
                let pk = bb::item_key(&b, p).inc();
                if pk > start {
                    start = pk;
                }
            }
            child_ref(&b, ioff)
        };
        bref = next_ref;
        level -= 1;
    }
}

/// The item with exactly `key`.
pub fn lookup(cache: &mut BlockCache, root: &BtreeRoot, key: &Key) -> StoreResult<Option<Item>> {
    let Some((buf, _, _)) = descend(cache, root, key)? else {
        return Ok(None);
    };
    let b = buf.borrow();
    Ok(bb::find(&b, key).map(|o| bb::item(&b, o)))
}

/// The first item with a key >= `key`.
pub fn next(cache: &mut BlockCache, root: &BtreeRoot, key: &Key) -> StoreResult<Option<Item>> {
    let mut key = *key;
    loop {
        let Some((buf, _, end)) = descend(cache, root, &key)? else {
            return Ok(None);
        };
        {
            let b = buf.borrow();
            if let Some(o) = bb::find_ge(&b, &key) {
                return Ok(Some(bb::item(&b, o)));
            }
        }
        if end == Key::MAX {
            return Ok(None);
        }
        key = end.inc();
    }
}

/// The last item with a key <= `key`.
pub fn prev(cache: &mut BlockCache, root: &BtreeRoot, key: &Key) -> StoreResult<Option<Item>> {
    let mut key = *key;
    loop {
        let Some((buf, start, _)) = descend(cache, root, &key)? else {
            return Ok(None);
        };
        {
            let b = buf.borrow();
            if let Some(o) = bb::find_le(&b, &key) {
                return Ok(Some(bb::item(&b, o)));
            }
        }
        if start == Key::MIN {
            return Ok(None);
        }
        key = start.dec();
    }
}

/// The items of the leaf that covers `key`, limited to `[start, end]`,
/// and the (limited) key range that leaf covers. Items outside the
/// returned range are not in the tree.
pub fn read_items(
    cache: &mut BlockCache,
    root: &BtreeRoot,
    key: &Key,
    start: &Key,
    end: &Key,
) -> StoreResult<LeafItems> {
    let Some((buf, ls, le)) = descend(cache, root, key)? else {
        return Ok(LeafItems {
            items: Vec::new(),
            start: *start,
            end: *end,
        });
    };
    let s = if ls > *start { ls } else { *start };
    let e = if le < *end { le } else { *end };
    let b = buf.borrow();
    let mut items = Vec::new();
    let mut o = bb::find_ge(&b, &s);
    while let Some(io) = o {
        let k = bb::item_key(&b, io);
        if k > e {
            break;
        }
        items.push(bb::item(&b, io));
        o = bb::next(&b, io);
    }
    Ok(LeafItems {
        items,
        start: s,
        end: e,
    })
}

/// Call `f` on every item in `[start, end]` in order until it returns
/// false. Returns the number of items visited.
pub fn for_each_range(
    cache: &mut BlockCache,
    root: &BtreeRoot,
    start: &Key,
    end: &Key,
    mut f: impl FnMut(&Item) -> bool,
) -> StoreResult<u64> {
    let mut key = *start;
    let mut n = 0;
    loop {
        if key > *end {
            return Ok(n);
        }
        let li = read_items(cache, root, &key, &key, end)?;
        for it in &li.items {
            n += 1;
            if !f(it) {
                return Ok(n);
            }
        }
        if li.end >= *end || li.end == Key::MAX {
            return Ok(n);
        }
        key = li.end.inc();
    }
}

/// Every item of the tree, in order (tests, fsck, small trees).
pub fn collect_all(cache: &mut BlockCache, root: &BtreeRoot) -> StoreResult<Vec<Item>> {
    let mut out = Vec::new();
    for_each_range(cache, root, &Key::MIN, &Key::MAX, |it| {
        out.push(it.clone());
        true
    })?;
    Ok(out)
}

// ---- modification ----

/// Dirty the path from the root to the block at `stop_level` covering
/// `key`; path[0] is the root. Creates an empty leaf for an empty tree.
fn walk_dirty(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    key: &Key,
    stop_level: u8,
) -> StoreResult<Vec<BlockBuf>> {
    walk_dirty_range(cache, alloc, root, key, stop_level).map(|(p, _)| p)
}

/// [`walk_dirty`], also returning the greatest key the last block on the
/// path may hold.
fn walk_dirty_range(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    key: &Key,
    stop_level: u8,
) -> StoreResult<(Vec<BlockBuf>, Key)> {
    let mut end = Key::MAX;
    check_root(root)?;
    if root.height == 0 {
        let mut r = BlockRef::default();
        let buf = cache.dirty_ref(&mut r, MAGIC_BTREE, alloc)?;
        bb::init(&mut buf.borrow_mut(), 0);
        root.bref = r;
        root.height = 1;
    }
    let mut level = root.height - 1;
    read_block(cache, &root.bref, level)?;
    let top = cache.dirty_ref(&mut root.bref, MAGIC_BTREE, alloc)?;
    let mut path = alloc::vec![top];
    while level > stop_level {
        let parent = path.last().unwrap().clone();
        let (ioff, mut cref) = {
            let b = parent.borrow();
            let Some(ioff) = bb::find_ge(&b, key) else {
                return Err(corrupt(
                    blkno_of(&parent),
                    "parent block does not cover key",
                ));
            };
            let k = bb::item_key(&b, ioff);
            if k < end {
                end = k;
            }
            (ioff, child_ref(&b, ioff))
        };
        read_block(cache, &cref, level - 1)?;
        let child = cache.dirty_ref(&mut cref, MAGIC_BTREE, alloc)?;
        {
            let mut b = parent.borrow_mut();
            let vo = bb::item_val_off(&b, ioff);
            cref.encode(&mut b[vo..vo + 16]);
        }
        path.push(child);
        level -= 1;
    }
    Ok((path, end))
}

fn split_point(items: &[Item]) -> usize {
    let total: usize = items.iter().map(Item::bytes).sum();
    let mut acc = 0;
    for (i, it) in items.iter().enumerate() {
        acc += it.bytes();
        if acc * 2 >= total {
            return (i + 1).clamp(1, items.len() - 1);
        }
    }
    items.len() / 2
}

fn parent_item(key: Key, bref: &BlockRef) -> Item {
    Item {
        key,
        seq: 0,
        flags: 0,
        val: bref.to_bytes().to_vec(),
    }
}

/// Put `item` into path[idx], compacting or splitting as needed (splits
/// insert into the parent, growing the root when path[0] splits).
fn insert_at(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    path: &[BlockBuf],
    idx: usize,
    item: Item,
) -> StoreResult<()> {
    let buf = path[idx].clone();
    let blkno = blkno_of(&buf);
    let level = bb::level(&buf.borrow());
    let need = item.bytes();
    {
        let mut b = buf.borrow_mut();
        if !bb::fits_in_gap(&b, item.val.len()) {
            let after = bb::total_item_bytes(&b) + need;
            if after <= btree_usable(level) && after * 5 < btree_usable(level) * 4 {
                bb::compact(&mut b);
            }
        }
        if bb::fits_in_gap(&b, item.val.len()) {
            bb::insert(&mut b, &item.key, item.seq, item.flags, &item.val)
                .map_err(|w| corrupt(blkno, w))?;
            return Ok(());
        }
    }
    // split: the new left block takes the lower half by bytes, the
    // existing block keeps the upper half and its parent key
    let mut items = bb::items(&buf.borrow());
    let pos = items.partition_point(|it| it.key < item.key);
    items.insert(pos, item);
    let at = split_point(&items);
    let right = items.split_off(at);
    let left = items;
    let mut lref = BlockRef::default();
    let lbuf = cache.dirty_ref(&mut lref, MAGIC_BTREE, alloc)?;
    bb::rebuild(&mut lbuf.borrow_mut(), level, &left).map_err(|w| corrupt(lref.blkno, w))?;
    bb::rebuild(&mut buf.borrow_mut(), level, &right).map_err(|w| corrupt(blkno, w))?;
    let up = parent_item(left.last().unwrap().key, &lref);
    if idx == 0 {
        if root.height >= BtreeRoot::MAX_HEIGHT {
            return Err(StoreError::NoSpace);
        }
        let mut rref = BlockRef::default();
        let rbuf = cache.dirty_ref(&mut rref, MAGIC_BTREE, alloc)?;
        let items = [up, parent_item(Key::MAX, &root.bref)];
        bb::rebuild(&mut rbuf.borrow_mut(), level + 1, &items)
            .map_err(|w| corrupt(rref.blkno, w))?;
        root.bref = rref;
        root.height += 1;
        Ok(())
    } else {
        insert_at(cache, alloc, root, path, idx - 1, up)
    }
}

fn free_block(cache: &mut BlockCache, alloc: &mut dyn MetaAlloc, blkno: u64) -> StoreResult<()> {
    cache.forget(blkno);
    alloc.free_meta(cache, blkno)
}

/// After path[idx] lost bytes: join under-full blocks with a sibling,
/// collapse a single-child root, free an empty root leaf.
fn shrink_fixup(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    path: &mut Vec<BlockBuf>,
    mut idx: usize,
    key: &Key,
) -> StoreResult<()> {
    loop {
        let buf = path[idx].clone();
        let (level, nr, total) = {
            let b = buf.borrow();
            (bb::level(&b), bb::nr_items(&b), bb::total_item_bytes(&b))
        };
        if idx == 0 {
            if level == 0 && nr == 0 {
                free_block(cache, alloc, blkno_of(&buf))?;
                *root = BtreeRoot::default();
                return Ok(());
            }
            if level > 0 && nr == 1 {
                let c = {
                    let b = buf.borrow();
                    child_ref(&b, bb::first(&b).unwrap())
                };
                free_block(cache, alloc, blkno_of(&buf))?;
                root.bref = c;
                root.height -= 1;
                // the surviving child is dirty (it was on the path or was
                // the sibling a join dirtied): it is the new root
                let nb = read_block(cache, &root.bref, root.height - 1)?;
                debug_assert!(cache.is_dirty(&root.bref));
                path.clear();
                path.push(nb);
                continue;
            }
            return Ok(());
        }
        if total * 4 >= btree_usable(level) {
            return Ok(());
        }
        join(cache, alloc, &path[idx - 1], &buf, level, key)?;
        idx -= 1;
    }
}

/// Merge `child` with a sibling, or even out their bytes.
fn join(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    parent: &BlockBuf,
    child: &BlockBuf,
    level: u8,
    key: &Key,
) -> StoreResult<()> {
    let pblk = blkno_of(parent);
    let (cio, sio, sib_is_left, mut sref) = {
        let b = parent.borrow();
        let Some(cio) = bb::find_ge(&b, key) else {
            return Err(corrupt(pblk, "parent block does not cover key"));
        };
        match (bb::prev(&b, cio), bb::next(&b, cio)) {
            (Some(p), _) => (cio, p, true, child_ref(&b, p)),
            (None, Some(n)) => (cio, n, false, child_ref(&b, n)),
            (None, None) => return Ok(()),
        }
    };
    read_block(cache, &sref, level)?;
    let sib = cache.dirty_ref(&mut sref, MAGIC_BTREE, alloc)?;
    {
        let mut b = parent.borrow_mut();
        let vo = bb::item_val_off(&b, sio);
        sref.encode(&mut b[vo..vo + 16]);
    }
    let (lbuf, rbuf, lio) = if sib_is_left {
        (sib, child.clone(), sio)
    } else {
        (child.clone(), sib, cio)
    };
    let mut all = bb::items(&lbuf.borrow());
    all.extend(bb::items(&rbuf.borrow()));
    let total: usize = all.iter().map(Item::bytes).sum();
    if total * 4 <= btree_usable(level) * 3 {
        let rblk = blkno_of(&rbuf);
        bb::rebuild(&mut rbuf.borrow_mut(), level, &all).map_err(|w| corrupt(rblk, w))?;
        bb::delete(&mut parent.borrow_mut(), lio).map_err(|w| corrupt(pblk, w))?;
        free_block(cache, alloc, blkno_of(&lbuf))?;
    } else {
        let at = split_point(&all);
        let right = all.split_off(at);
        let lblk = blkno_of(&lbuf);
        let rblk = blkno_of(&rbuf);
        bb::rebuild(&mut lbuf.borrow_mut(), level, &all).map_err(|w| corrupt(lblk, w))?;
        bb::rebuild(&mut rbuf.borrow_mut(), level, &right).map_err(|w| corrupt(rblk, w))?;
        bb::set_parent_key(&mut parent.borrow_mut(), lio, &all.last().unwrap().key);
    }
    Ok(())
}

fn check_val(val: &[u8]) -> StoreResult<()> {
    if val.len() > BTREE_MAX_VAL_LEN {
        return Err(StoreError::Invalid("btree value longer than 896 bytes"));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Insert,
    Update,
    Force,
}

/// Errors after a tree modification began leave dirty blocks that must
/// not be committed; errors found before any change do not.
fn poison_on_err<T>(cache: &mut BlockCache, r: StoreResult<T>) -> StoreResult<T> {
    if let Err(e) = &r {
        if !matches!(
            e,
            StoreError::Exists | StoreError::NotFound | StoreError::Invalid(_)
        ) {
            cache.poison("a btree modification failed half way");
        }
    }
    r
}

fn modify(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    item: Item,
    mode: Mode,
) -> StoreResult<()> {
    check_val(&item.val)?;
    let key = item.key;
    if mode == Mode::Update && root.height == 0 {
        return Err(StoreError::NotFound);
    }
    let mut path = walk_dirty(cache, alloc, root, &key, 0)?;
    let leaf = path.last().unwrap().clone();
    let lblk = blkno_of(&leaf);
    let found = bb::find(&leaf.borrow(), &key);
    match (found, mode) {
        (Some(_), Mode::Insert) => Err(StoreError::Exists),
        (None, Mode::Update) => Err(StoreError::NotFound),
        (None, _) => {
            let idx = path.len() - 1;
            insert_at(cache, alloc, root, &path, idx, item)
        }
        (Some(ioff), _) => {
            let old_bytes = btree_item_bytes(bb::item_val_len(&leaf.borrow(), ioff));
            let done = bb::set_value(
                &mut leaf.borrow_mut(),
                ioff,
                item.seq,
                item.flags,
                &item.val,
            );
            let idx = path.len() - 1;
            if done {
                if item.bytes() < old_bytes {
                    shrink_fixup(cache, alloc, root, &mut path, idx, &key)?;
                }
                return Ok(());
            }
            bb::delete(&mut leaf.borrow_mut(), ioff).map_err(|w| corrupt(lblk, w))?;
            insert_at(cache, alloc, root, &path, idx, item)
        }
    }
}

/// Insert a new item; `Exists` if the key is present.
pub fn insert(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    item: Item,
) -> StoreResult<()> {
    let r = modify(cache, alloc, root, item, Mode::Insert);
    poison_on_err(cache, r)
}

/// Replace an existing item; `NotFound` if the key is absent.
pub fn update(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    item: Item,
) -> StoreResult<()> {
    let r = modify(cache, alloc, root, item, Mode::Update);
    poison_on_err(cache, r)
}

/// Insert or replace.
pub fn force(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    item: Item,
) -> StoreResult<()> {
    let r = modify(cache, alloc, root, item, Mode::Force);
    poison_on_err(cache, r)
}

/// Remove `key` and return its item; `NotFound` if absent.
pub fn delete(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    key: &Key,
) -> StoreResult<Item> {
    let r = delete_inner(cache, alloc, root, key);
    poison_on_err(cache, r)
}

fn delete_inner(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    key: &Key,
) -> StoreResult<Item> {
    if root.height == 0 {
        return Err(StoreError::NotFound);
    }
    if lookup(cache, root, key)?.is_none() {
        return Err(StoreError::NotFound);
    }
    let mut path = walk_dirty(cache, alloc, root, key, 0)?;
    let leaf = path.last().unwrap().clone();
    let lblk = blkno_of(&leaf);
    let ioff = bb::find(&leaf.borrow(), key).ok_or(StoreError::NotFound)?;
    let item = bb::item(&leaf.borrow(), ioff);
    bb::delete(&mut leaf.borrow_mut(), ioff).map_err(|w| corrupt(lblk, w))?;
    let idx = path.len() - 1;
    shrink_fixup(cache, alloc, root, &mut path, idx, key)?;
    Ok(item)
}

/// Insert or replace a batch of items sorted by key (e.g. a log-tree
/// commit or a merge window); `items` must be strictly increasing.
pub fn insert_list(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    items: Vec<Item>,
) -> StoreResult<()> {
    if items.windows(2).any(|w| w[0].key >= w[1].key) {
        return Err(StoreError::Invalid("insert_list items not sorted"));
    }
    for it in &items {
        check_val(&it.val)?;
    }
    let r = insert_list_inner(cache, alloc, root, items);
    poison_on_err(cache, r)
}

/// One descent per leaf: items that fit go straight into the leaf the
/// walk reached; an item that needs a split takes the general path and the
/// next item starts a new walk.
fn insert_list_inner(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    items: Vec<Item>,
) -> StoreResult<()> {
    let mut it = items.into_iter().peekable();
    while let Some(first) = it.next() {
        let (path, end) = walk_dirty_range(cache, alloc, root, &first.key, 0)?;
        let leaf = path.last().unwrap().clone();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            let placed = {
                let mut b = leaf.borrow_mut();
                match bb::find(&b, &item.key) {
                    Some(o) => bb::set_value(&mut b, o, item.seq, item.flags, &item.val),
                    None if bb::fits_in_gap(&b, item.val.len()) => {
                        bb::insert(&mut b, &item.key, item.seq, item.flags, &item.val)
                            .map_err(|w| corrupt(blkno_of(&leaf), w))?;
                        true
                    }
                    None => false,
                }
            };
            if !placed {
                modify(cache, alloc, root, item, Mode::Force)?;
                break;
            }
            if it.peek().is_some_and(|n| n.key <= end) {
                next = it.next();
            }
        }
    }
    Ok(())
}

/// The subtree rooted at the level-1 block that leads to `key` (the whole
/// tree when its height is <= 2), with the key range that block covers.
pub fn get_parent(
    cache: &mut BlockCache,
    root: &BtreeRoot,
    key: &Key,
) -> StoreResult<(BtreeRoot, Key, Key)> {
    check_root(root)?;
    if root.height <= 2 {
        return Ok((*root, Key::MIN, Key::MAX));
    }
    let mut bref = root.bref;
    let mut level = root.height - 1;
    let (mut start, mut end) = (Key::MIN, Key::MAX);
    loop {
        let buf = read_block(cache, &bref, level)?;
        let b = buf.borrow();
        let Some(ioff) = bb::find_ge(&b, key) else {
            return Err(corrupt(bref.blkno, "parent block does not cover key"));
        };
        let k = bb::item_key(&b, ioff);
        if k < end {
            end = k;
        }
        if let Some(p) = bb::prev(&b, ioff) {
            let pk = bb::item_key(&b, p).inc();
            if pk > start {
                start = pk;
            }
        }
        bref = child_ref(&b, ioff);
        level -= 1;
        if level == 1 {
            return Ok((BtreeRoot { bref, height: 2 }, start, end));
        }
    }
}

/// Replace the level-1 subtree that leads to `key` with `par` (height 2),
/// or the whole tree when its height is <= 2. The replaced blocks are not
/// freed: the caller owns them (merge completions account for them).
pub fn set_parent(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    key: &Key,
    par: &BtreeRoot,
) -> StoreResult<()> {
    let r = set_parent_inner(cache, alloc, root, key, par);
    poison_on_err(cache, r)
}

fn set_parent_inner(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    key: &Key,
    par: &BtreeRoot,
) -> StoreResult<()> {
    if root.height <= 2 {
        *root = *par;
        return Ok(());
    }
    if par.height != 2 {
        return Err(StoreError::Invalid("set_parent subtree must have height 2"));
    }
    let path = walk_dirty(cache, alloc, root, key, 2)?;
    let l2 = path.last().unwrap();
    let mut b = l2.borrow_mut();
    let Some(ioff) = bb::find_ge(&b, key) else {
        return Err(corrupt(blkno_of(l2), "parent block does not cover key"));
    };
    let vo = bb::item_val_off(&b, ioff);
    par.bref.encode(&mut b[vo..vo + 16]);
    Ok(())
}

/// Free up to `max_blocks` blocks of the tree, leftmost first, leaving a
/// smaller valid tree behind; leaves are freed without being read.
/// Returns true once the tree is empty.
pub fn free_blocks(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    max_blocks: usize,
) -> StoreResult<bool> {
    let r = free_blocks_inner(cache, alloc, root, max_blocks);
    poison_on_err(cache, r)
}

fn free_blocks_inner(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    max_blocks: usize,
) -> StoreResult<bool> {
    let mut freed = 0;
    while freed < max_blocks {
        check_root(root)?;
        if root.height == 0 {
            return Ok(true);
        }
        if root.height == 1 {
            free_block(cache, alloc, root.bref.blkno)?;
            *root = BtreeRoot::default();
            return Ok(true);
        }
        let path = walk_dirty(cache, alloc, root, &Key::MIN, 1)?;
        let l1 = path.last().unwrap().clone();
        let l1blk = blkno_of(&l1);
        loop {
            if freed >= max_blocks {
                break;
            }
            let first = bb::first(&l1.borrow());
            let Some(ioff) = first else { break };
            let c = child_ref(&l1.borrow(), ioff);
            free_block(cache, alloc, c.blkno)?;
            bb::delete(&mut l1.borrow_mut(), ioff).map_err(|w| corrupt(l1blk, w))?;
            freed += 1;
        }
        // free emptied parents up the leftmost path
        let mut idx = path.len() - 1;
        while bb::nr_items(&path[idx].borrow()) == 0 {
            free_block(cache, alloc, blkno_of(&path[idx]))?;
            freed += 1;
            if idx == 0 {
                *root = BtreeRoot::default();
                return Ok(true);
            }
            idx -= 1;
            let p = path[idx].clone();
            let pblk = blkno_of(&p);
            let f = bb::first(&p.borrow()).ok_or(corrupt(pblk, "empty parent on free path"))?;
            bb::delete(&mut p.borrow_mut(), f).map_err(|w| corrupt(pblk, w))?;
        }
    }
    Ok(root.height == 0)
}

/// Copy-on-write the path from the root to the leaf covering `key` (a
/// merge makes sure it replaces at least one block). An empty tree is
/// left empty.
pub fn touch(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    key: &Key,
) -> StoreResult<()> {
    if root.height == 0 {
        return Ok(());
    }
    let r = walk_dirty(cache, alloc, root, key, 0).map(|_| ());
    poison_on_err(cache, r)
}

/// Fill of the root block: (level, items, item bytes, usable bytes).
pub fn root_fill(
    cache: &mut BlockCache,
    root: &BtreeRoot,
) -> StoreResult<(u8, usize, usize, usize)> {
    check_root(root)?;
    if root.height == 0 {
        return Ok((0, 0, 0, btree_usable(0)));
    }
    let buf = read_block(cache, &root.bref, root.height - 1)?;
    let b = buf.borrow();
    let level = bb::level(&b);
    Ok((
        level,
        bb::nr_items(&b),
        bb::total_item_bytes(&b),
        btree_usable(level),
    ))
}

/// Bytes a parent item takes (key + block ref value).
pub const PARENT_ITEM_BYTES: usize = crate::format::btree::BTREE_ITEM_BYTES + 16;

/// Can a subtree root (a level-1 block merged into as if it were a root)
/// take one more modification without splitting (a child split adds a
/// parent item) or collapsing (a child join removes one)?
pub fn subtree_root_has_room(items: usize, item_bytes: usize, usable: usize) -> bool {
    items >= 3 && (item_bytes + 2 * PARENT_ITEM_BYTES) * 5 < usable * 4
}

/// A level-1 block this full is split by [`rebalance`] so merges into it
/// as a subtree root can make progress.
fn parent_too_full(item_bytes: usize, usable: usize) -> bool {
    item_bytes * 4 >= usable * 3
}

/// Split path[idx] in two by bytes, adding the new left block's parent
/// item to path[idx-1] (which may split in turn).
fn split_block(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    path: &[BlockBuf],
    idx: usize,
) -> StoreResult<()> {
    assert!(idx > 0, "split_block of the root");
    let buf = path[idx].clone();
    let blkno = blkno_of(&buf);
    let level = bb::level(&buf.borrow());
    let mut items = bb::items(&buf.borrow());
    if items.len() < 2 {
        return Ok(());
    }
    let at = split_point(&items);
    let right = items.split_off(at);
    let left = items;
    let mut lref = BlockRef::default();
    let lbuf = cache.dirty_ref(&mut lref, MAGIC_BTREE, alloc)?;
    bb::rebuild(&mut lbuf.borrow_mut(), level, &left).map_err(|w| corrupt(lref.blkno, w))?;
    bb::rebuild(&mut buf.borrow_mut(), level, &right).map_err(|w| corrupt(blkno, w))?;
    let up = parent_item(left.last().unwrap().key, &lref);
    insert_at(cache, alloc, root, path, idx - 1, up)
}

/// Bring the blocks on the path to `key` back within the fill bounds a
/// merge relies on: a non-root level-1 block that is three quarters full
/// is split, and any non-root block under a quarter full is joined with a
/// sibling. Used after splicing a merged subtree into the fs root.
pub fn rebalance(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    key: &Key,
) -> StoreResult<()> {
    let r = rebalance_inner(cache, alloc, root, key);
    poison_on_err(cache, r)
}

fn rebalance_inner(
    cache: &mut BlockCache,
    alloc: &mut dyn MetaAlloc,
    root: &mut BtreeRoot,
    key: &Key,
) -> StoreResult<()> {
    // each round fixes one block; the tree is at most 20 high
    for _ in 0..4 * BtreeRoot::MAX_HEIGHT as usize {
        if root.height < 2 {
            return Ok(());
        }
        let path = walk_dirty(cache, alloc, root, key, 0)?;
        let mut fixed = false;
        for idx in (1..path.len()).rev() {
            let (level, total) = {
                let b = path[idx].borrow();
                (bb::level(&b), bb::total_item_bytes(&b))
            };
            let usable = btree_usable(level);
            if level == 1 && parent_too_full(total, usable) {
                split_block(cache, alloc, root, &path, idx)?;
                fixed = true;
                break;
            }
            if total * 4 < usable {
                let parent = path[idx - 1].clone();
                let before = (bb::nr_items(&parent.borrow()), total);
                join(cache, alloc, &parent, &path[idx], level, key)?;
                let after = (
                    bb::nr_items(&parent.borrow()),
                    bb::total_item_bytes(&path[idx].borrow()),
                );
                if after == before {
                    // an only child: nothing to join with at this level
                    continue;
                }
                if idx == 1 && bb::nr_items(&parent.borrow()) == 1 {
                    let mut p = path.clone();
                    shrink_fixup(cache, alloc, root, &mut p, 0, key)?;
                }
                fixed = true;
                break;
            }
        }
        if !fixed {
            return Ok(());
        }
    }
    Ok(())
}
