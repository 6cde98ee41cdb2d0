//! Operations inside one btree block: the dense item array, the AVL order,
//! values carved from the top of the free gap, compaction, the leaf item
//! hash table, rebuilding from sorted items, and structural verification.
//!
//! Called by `btree.rs` (tree walks) and `tools/fsck.rs`. Invariants kept by every
//! writer: items dense in `[48, 48+56*nr)`, values 8-aligned at or above
//! the gap top, `total_item_bytes` exact, `mid_free_len` never larger than
//! the true gap, every leaf item findable through the hash table (FNV-1a,
//! linear probing with wrap), zeroed pads.

use crate::format::btree::*;
use crate::format::hash::fnv1a32;
use crate::format::key::{Key, KEY_BYTES};
use crate::format::le::*;
use crate::format::BTREE_MAX_VAL_LEN;
use crate::storage::avl;
use alloc::vec::Vec;
use core::cmp::Ordering;

/// An item copied out of a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: Key,
    pub seq: u64,
    pub flags: u8,
    pub val: Vec<u8>,
}

impl Item {
    pub fn new(key: Key, seq: u64, val: &[u8]) -> Self {
        Item {
            key,
            seq,
            flags: 0,
            val: val.to_vec(),
        }
    }

    pub fn is_deletion(&self) -> bool {
        self.flags & ITEM_FLAG_DELETION != 0
    }

    /// Bytes this item consumes in a block.
    pub fn bytes(&self) -> usize {
        btree_item_bytes(self.val.len())
    }
}

#[inline]
pub fn level(b: &[u8]) -> u8 {
    b[off::LEVEL]
}
#[inline]
pub fn nr_items(b: &[u8]) -> usize {
    get_u16(b, off::NR_ITEMS) as usize
}
#[inline]
pub fn total_item_bytes(b: &[u8]) -> usize {
    get_u16(b, off::TOTAL_ITEM_BYTES) as usize
}
#[inline]
pub fn mid_free_len(b: &[u8]) -> usize {
    get_u16(b, off::MID_FREE_LEN) as usize
}
#[inline]
fn set_nr(b: &mut [u8], n: usize) {
    put_u16(b, off::NR_ITEMS, n as u16)
}
#[inline]
fn set_total(b: &mut [u8], n: usize) {
    put_u16(b, off::TOTAL_ITEM_BYTES, n as u16)
}
#[inline]
fn set_mid_free(b: &mut [u8], n: usize) {
    put_u16(b, off::MID_FREE_LEN, n as u16)
}

/// Block offset of item index `i`.
#[inline]
pub const fn index_off(i: usize) -> usize {
    off::ITEMS + i * BTREE_ITEM_BYTES
}
#[inline]
fn node(ioff: usize) -> u16 {
    (ioff - AVL_BASE) as u16
}
#[inline]
fn ioff_of(n: u16) -> usize {
    n as usize + AVL_BASE
}
#[inline]
fn items_end(b: &[u8]) -> usize {
    index_off(nr_items(b))
}
/// First byte above the free gap.
#[inline]
pub fn gap_top(b: &[u8]) -> usize {
    items_end(b) + mid_free_len(b)
}

pub fn item_key(b: &[u8], ioff: usize) -> Key {
    let mut k = [0u8; KEY_BYTES];
    k.copy_from_slice(&b[ioff + item_off::KEY..ioff + item_off::KEY + KEY_BYTES]);
    Key::decode(&k)
}
pub fn item_seq(b: &[u8], ioff: usize) -> u64 {
    get_u64(b, ioff + item_off::SEQ)
}
pub fn item_flags(b: &[u8], ioff: usize) -> u8 {
    b[ioff + item_off::FLAGS]
}
pub fn item_val_len(b: &[u8], ioff: usize) -> usize {
    get_u16(b, ioff + item_off::VAL_LEN) as usize
}
pub fn item_val_off(b: &[u8], ioff: usize) -> usize {
    get_u16(b, ioff + item_off::VAL_OFF) as usize
}
pub fn item_val(b: &[u8], ioff: usize) -> &[u8] {
    let len = item_val_len(b, ioff);
    if len == 0 {
        return &[];
    }
    let o = item_val_off(b, ioff);
    &b[o..o + len]
}
pub fn item(b: &[u8], ioff: usize) -> Item {
    Item {
        key: item_key(b, ioff),
        seq: item_seq(b, ioff),
        flags: item_flags(b, ioff),
        val: item_val(b, ioff).to_vec(),
    }
}

/// Reset a block (keeping its 32-byte header) to an empty block of `lvl`.
pub fn init(b: &mut [u8], lvl: u8) {
    b[AVL_BASE..].fill(0);
    b[off::LEVEL] = lvl;
    set_mid_free(b, btree_usable(lvl));
}

/// Items in key order, as block offsets.
pub fn ordered(b: &[u8]) -> Vec<usize> {
    let mut out = Vec::with_capacity(nr_items(b));
    let mut n = avl::first(b);
    while n != 0 {
        out.push(ioff_of(n));
        n = avl::next(b, n);
    }
    out
}

/// All items in key order.
pub fn items(b: &[u8]) -> Vec<Item> {
    ordered(b).into_iter().map(|o| item(b, o)).collect()
}

pub fn search(b: &[u8], key: &Key) -> avl::Search {
    avl::search(b, |n| key.cmp(&item_key(b, ioff_of(n))))
}

pub fn find(b: &[u8], key: &Key) -> Option<usize> {
    let s = search(b, key);
    (s.node != 0 && s.cmp == Ordering::Equal).then(|| ioff_of(s.node))
}

/// The first item with a key >= `key`.
pub fn find_ge(b: &[u8], key: &Key) -> Option<usize> {
    let s = search(b, key);
    if s.node != 0 && s.cmp == Ordering::Equal {
        return Some(ioff_of(s.node));
    }
    (s.next != 0).then(|| ioff_of(s.next))
}

/// The last item with a key <= `key`.
pub fn find_le(b: &[u8], key: &Key) -> Option<usize> {
    let s = search(b, key);
    if s.node != 0 && s.cmp == Ordering::Equal {
        return Some(ioff_of(s.node));
    }
    (s.prev != 0).then(|| ioff_of(s.prev))
}

pub fn first(b: &[u8]) -> Option<usize> {
    let n = avl::first(b);
    (n != 0).then(|| ioff_of(n))
}
pub fn last(b: &[u8]) -> Option<usize> {
    let n = avl::last(b);
    (n != 0).then(|| ioff_of(n))
}
pub fn next(b: &[u8], ioff: usize) -> Option<usize> {
    let n = avl::next(b, node(ioff));
    (n != 0).then(|| ioff_of(n))
}
pub fn prev(b: &[u8], ioff: usize) -> Option<usize> {
    let n = avl::prev(b, node(ioff));
    (n != 0).then(|| ioff_of(n))
}

// ---- leaf item hash table ----

fn hash_base() -> usize {
    crate::format::LG_BLOCK_SIZE - BTREE_LEAF_ITEM_HASH_BYTES
}
fn bucket_get(b: &[u8], i: usize) -> u16 {
    get_u16(b, hash_base() + i * 2)
}
fn bucket_set(b: &mut [u8], i: usize, v: u16) {
    put_u16(b, hash_base() + i * 2, v)
}
/// The first bucket probed for `key`.
pub fn hash_bucket(key: &Key) -> usize {
    fnv1a32(&key.to_bytes()) as usize % BTREE_LEAF_ITEM_HASH_NR
}
fn next_bucket(i: usize) -> usize {
    if i + 1 >= BTREE_LEAF_ITEM_HASH_NR {
        0
    } else {
        i + 1
    }
}

fn hash_insert(b: &mut [u8], key: &Key, ioff: usize) -> Result<(), &'static str> {
    let mut i = hash_bucket(key);
    for _ in 0..BTREE_LEAF_ITEM_HASH_NR {
        if bucket_get(b, i) == 0 {
            bucket_set(b, i, ioff as u16);
            return Ok(());
        }
        i = next_bucket(i);
    }
    Err("leaf item hash table full")
}

/// Kernel-style lookup: probe from the key's bucket until an empty one.
pub fn hash_search(b: &[u8], key: &Key) -> Option<usize> {
    let nr = nr_items(b);
    let mut i = hash_bucket(key);
    for _ in 0..BTREE_LEAF_ITEM_HASH_NR {
        let o = bucket_get(b, i) as usize;
        if o == 0 {
            return None;
        }
        if valid_ioff(o, nr) && item_key(b, o) == *key {
            return Some(o);
        }
        i = next_bucket(i);
    }
    None
}

fn hash_delete(b: &mut [u8], key: &Key, ioff: usize) -> Result<(), &'static str> {
    let mut i = hash_bucket(key);
    let mut found = false;
    for _ in 0..BTREE_LEAF_ITEM_HASH_NR {
        let o = bucket_get(b, i) as usize;
        if o == 0 {
            break;
        }
        if o == ioff {
            bucket_set(b, i, 0);
            found = true;
            break;
        }
        i = next_bucket(i);
    }
    if !found {
        return Err("leaf item missing from hash table");
    }
    // re-insert the run after the hole so probes do not stop early
    let mut j = next_bucket(i);
    for _ in 0..BTREE_LEAF_ITEM_HASH_NR {
        let o = bucket_get(b, j) as usize;
        if o == 0 {
            break;
        }
        if !valid_ioff(o, nr_items(b)) {
            return Err("leaf hash bucket points at no item");
        }
        bucket_set(b, j, 0);
        let k = item_key(b, o);
        hash_insert(b, &k, o)?;
        j = next_bucket(j);
    }
    Ok(())
}

fn hash_change(b: &mut [u8], key: &Key, to: usize, from: usize) -> Result<(), &'static str> {
    let mut i = hash_bucket(key);
    for _ in 0..BTREE_LEAF_ITEM_HASH_NR {
        let o = bucket_get(b, i) as usize;
        if o == 0 {
            break;
        }
        if o == from {
            bucket_set(b, i, to as u16);
            return Ok(());
        }
        i = next_bucket(i);
    }
    Err("moved leaf item missing from hash table")
}

/// Populated buckets as (bucket, item offset), for print and fsck.
pub fn hash_entries(b: &[u8]) -> Vec<(usize, u16)> {
    (0..BTREE_LEAF_ITEM_HASH_NR)
        .filter_map(|i| {
            let o = bucket_get(b, i);
            (o != 0).then_some((i, o))
        })
        .collect()
}

// ---- modification ----

/// Can an item with a `val_len` value go into the gap without compaction?
pub fn fits_in_gap(b: &[u8], val_len: usize) -> bool {
    mid_free_len(b) >= btree_item_bytes(val_len)
}

/// Bytes free in the block counting holes (what compaction would give).
pub fn free_total(b: &[u8]) -> usize {
    btree_usable(level(b)) - total_item_bytes(b)
}

fn write_val(b: &mut [u8], ioff: usize, val: &[u8]) {
    let r8 = round8(val.len());
    let top = gap_top(b);
    let vo = top - r8;
    b[vo..vo + val.len()].copy_from_slice(val);
    b[vo + val.len()..top].fill(0);
    put_u16(b, ioff + item_off::VAL_OFF, vo as u16);
    put_u16(b, ioff + item_off::VAL_LEN, val.len() as u16);
    set_mid_free(b, mid_free_len(b) - r8);
}

/// Insert an absent key. The caller checked [`fits_in_gap`].
pub fn insert(
    b: &mut [u8],
    key: &Key,
    seq: u64,
    flags: u8,
    val: &[u8],
) -> Result<usize, &'static str> {
    assert!(val.len() <= BTREE_MAX_VAL_LEN, "btree value too long");
    assert!(fits_in_gap(b, val.len()), "btree insert without room");
    let s = search(b, key);
    assert!(
        s.node == 0 || s.cmp != Ordering::Equal,
        "btree block insert of an existing key"
    );
    let nr = nr_items(b);
    let ioff = index_off(nr);
    b[ioff..ioff + BTREE_ITEM_BYTES].fill(0);
    b[ioff + item_off::KEY..ioff + item_off::KEY + KEY_BYTES].copy_from_slice(&key.to_bytes());
    put_u64(b, ioff + item_off::SEQ, seq);
    b[ioff + item_off::FLAGS] = flags;
    set_nr(b, nr + 1);
    set_mid_free(b, mid_free_len(b) - BTREE_ITEM_BYTES);
    if !val.is_empty() {
        write_val(b, ioff, val);
    }
    set_total(b, total_item_bytes(b) + btree_item_bytes(val.len()));
    avl::insert(b, s.node, node(ioff), s.cmp);
    if level(b) == 0 {
        hash_insert(b, key, ioff)?;
    }
    Ok(ioff)
}

fn release_val(b: &mut [u8], ioff: usize) {
    let len = item_val_len(b, ioff);
    if len == 0 {
        return;
    }
    let vo = item_val_off(b, ioff);
    if vo == gap_top(b) {
        // the value sat right on top of the gap: give it back
        set_mid_free(b, mid_free_len(b) + round8(len));
    }
    put_u16(b, ioff + item_off::VAL_OFF, 0);
    put_u16(b, ioff + item_off::VAL_LEN, 0);
}

/// Remove the item at `ioff`; the last array item moves into its slot.
pub fn delete(b: &mut [u8], ioff: usize) -> Result<(), &'static str> {
    let key = item_key(b, ioff);
    let len = item_val_len(b, ioff);
    if level(b) == 0 {
        hash_delete(b, &key, ioff)?;
    }
    avl::delete(b, node(ioff));
    release_val(b, ioff);
    set_total(b, total_item_bytes(b) - btree_item_bytes(len));
    let nr = nr_items(b);
    let last = index_off(nr - 1);
    if last != ioff {
        b.copy_within(last..last + BTREE_ITEM_BYTES, ioff);
        avl::relocate(b, node(ioff), node(last));
        if level(b) == 0 {
            let k = item_key(b, ioff);
            hash_change(b, &k, ioff, last)?;
        }
    }
    b[last..last + BTREE_ITEM_BYTES].fill(0);
    set_nr(b, nr - 1);
    set_mid_free(b, mid_free_len(b) + BTREE_ITEM_BYTES);
    Ok(())
}

/// Replace the value (and seq/flags) of the item at `ioff`. Returns false,
/// changing nothing, when the new value needs compaction or a split.
pub fn set_value(b: &mut [u8], ioff: usize, seq: u64, flags: u8, val: &[u8]) -> bool {
    assert!(val.len() <= BTREE_MAX_VAL_LEN, "btree value too long");
    let old_len = item_val_len(b, ioff);
    let old_r8 = round8(old_len);
    let new_r8 = round8(val.len());
    if old_len != 0 && old_r8 == new_r8 {
        let vo = item_val_off(b, ioff);
        b[vo..vo + val.len()].copy_from_slice(val);
        b[vo + val.len()..vo + new_r8].fill(0);
        put_u16(b, ioff + item_off::VAL_LEN, val.len() as u16);
    } else if val.is_empty() || mid_free_len(b) >= new_r8 {
        release_val(b, ioff);
        if !val.is_empty() {
            write_val(b, ioff, val);
        }
        set_total(b, total_item_bytes(b) - old_r8 + new_r8);
    } else {
        return false;
    }
    put_u64(b, ioff + item_off::SEQ, seq);
    b[ioff + item_off::FLAGS] = flags;
    true
}

/// Overwrite the key of a parent item (the new key must keep its place in
/// the order; used when a child's greatest key changes).
pub fn set_parent_key(b: &mut [u8], ioff: usize, key: &Key) {
    assert!(level(b) > 0, "set_parent_key on a leaf");
    debug_assert!(prev(b, ioff).is_none_or(|p| item_key(b, p) < *key));
    debug_assert!(next(b, ioff).is_none_or(|n| item_key(b, n) > *key));
    b[ioff + item_off::KEY..ioff + item_off::KEY + KEY_BYTES].copy_from_slice(&key.to_bytes());
}

/// Slide all values to the end of the block so holes join the gap.
pub fn compact(b: &mut [u8]) {
    let end = btree_end_off(level(b));
    let mut vals: Vec<(usize, usize, usize)> = (0..nr_items(b))
        .map(index_off)
        .filter(|&o| item_val_len(b, o) != 0)
        .map(|o| (item_val_off(b, o), o, round8(item_val_len(b, o))))
        .collect();
    vals.sort_unstable_by_key(|v| core::cmp::Reverse(v.0));
    let mut top = end;
    for (vo, ioff, r8) in vals {
        let dst = top - r8;
        if dst != vo {
            b.copy_within(vo..vo + r8, dst);
            put_u16(b, ioff + item_off::VAL_OFF, dst as u16);
        }
        top = dst;
    }
    let ie = items_end(b);
    b[ie..top].fill(0);
    set_mid_free(b, top - ie);
}

/// Rewrite the block (header kept) to hold exactly `items`, sorted by key,
/// with a balanced AVL and fresh hash table.
pub fn rebuild(b: &mut [u8], lvl: u8, items: &[Item]) -> Result<(), &'static str> {
    let bytes: usize = items.iter().map(Item::bytes).sum();
    assert!(bytes <= btree_usable(lvl), "rebuild overflows block");
    init(b, lvl);
    let mut nodes = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        debug_assert!(
            i == 0 || items[i - 1].key < it.key,
            "rebuild of unsorted items"
        );
        let ioff = index_off(i);
        b[ioff + item_off::KEY..ioff + item_off::KEY + KEY_BYTES]
            .copy_from_slice(&it.key.to_bytes());
        put_u64(b, ioff + item_off::SEQ, it.seq);
        b[ioff + item_off::FLAGS] = it.flags;
        set_nr(b, i + 1);
        set_mid_free(b, mid_free_len(b) - BTREE_ITEM_BYTES);
        if !it.val.is_empty() {
            write_val(b, ioff, &it.val);
        }
        nodes.push(node(ioff));
    }
    set_total(b, bytes);
    avl::build_sorted(b, &nodes);
    if lvl == 0 {
        for (i, it) in items.iter().enumerate() {
            hash_insert(b, &it.key, index_off(i))?;
        }
    }
    Ok(())
}

// ---- verification ----

fn valid_ioff(o: usize, nr: usize) -> bool {
    o >= off::ITEMS
        && (o - off::ITEMS).is_multiple_of(BTREE_ITEM_BYTES)
        && (o - off::ITEMS) / BTREE_ITEM_BYTES < nr
}

/// Structural checks a reader needs before trusting a block from disk:
/// level, counts, offsets, value bounds, byte totals, and an AVL that
/// links every item exactly once in strictly increasing key order. Does
/// not look at AVL heights (mkfs writes wrong ones) or the hash table.
pub fn verify(b: &[u8], want_level: u8) -> Result<(), &'static str> {
    let lvl = level(b);
    if lvl != want_level {
        return Err("btree block at unexpected level");
    }
    let end = btree_end_off(lvl);
    let nr = nr_items(b);
    if index_off(nr) > end {
        return Err("nr_items out of range");
    }
    let top = index_off(nr) + mid_free_len(b);
    if top > end {
        return Err("mid_free_len beyond block end");
    }
    let mut total = 0usize;
    for i in 0..nr {
        let o = index_off(i);
        let len = item_val_len(b, o);
        if len > BTREE_MAX_VAL_LEN {
            return Err("item value too long");
        }
        if lvl > 0 && len != crate::format::block::BlockRef::BYTES {
            return Err("parent item value is not a block ref");
        }
        if len != 0 {
            let vo = item_val_off(b, o);
            if !vo.is_multiple_of(8) {
                return Err("item value not 8-byte aligned");
            }
            if vo < top || vo + round8(len) > end {
                return Err("item value outside the value area");
            }
        }
        total += btree_item_bytes(len);
    }
    if total != total_item_bytes(b) {
        return Err("total_item_bytes does not match items");
    }
    let order = avl::walk_checked(b, nr, |n| valid_ioff(ioff_of(n), nr))?;
    if order.len() != nr {
        return Err("avl tree does not reach every item");
    }
    for w in order.windows(2) {
        if item_key(b, ioff_of(w[0])) >= item_key(b, ioff_of(w[1])) {
            return Err("avl order is not strictly increasing");
        }
    }
    Ok(())
}

/// Deeper checks for fsck (after [`verify`] passed): values do not overlap,
/// pads are zero, and the leaf hash table finds every item and nothing else.
pub fn check_deep(b: &[u8]) -> Vec<&'static str> {
    let mut bad = Vec::new();
    let nr = nr_items(b);
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for i in 0..nr {
        let o = index_off(i);
        if b[o + item_off::NODE_PAD] != 0 || b[o + item_off::PAD..o + item_off::PAD + 3] != [0; 3] {
            bad.push("item pad bytes not zero");
        }
        if b[o + item_off::KEY + 27..o + item_off::KEY + 32] != [0; 5] {
            bad.push("key pad bytes not zero");
        }
        let len = item_val_len(b, o);
        if len != 0 {
            let vo = item_val_off(b, o);
            spans.push((vo, vo + len));
        }
    }
    if b[off::LEVEL + 1..off::ITEMS] != [0; 7] {
        bad.push("block header pad not zero");
    }
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[0].1 > w[1].0) {
        bad.push("item values overlap");
    }
    if level(b) == 0 {
        let entries = hash_entries(b);
        if entries.len() != nr {
            bad.push("leaf hash table entry count differs from nr_items");
        }
        for (_, o) in &entries {
            if !valid_ioff(*o as usize, nr) {
                bad.push("leaf hash bucket points at no item");
            }
        }
        for i in 0..nr {
            let o = index_off(i);
            if hash_search(b, &item_key(b, o)) != Some(o) {
                bad.push("leaf item not found through hash table");
            }
        }
    }
    bad.sort_unstable();
    bad.dedup();
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec;
    use proptest::prelude::*;

    fn k(i: u64) -> Key {
        Key::fs(i, 4, 0, 0)
    }

    proptest! {
        #[test]
        fn leaf_ops_match_model(ops in proptest::collection::vec((0u8..4, 0u64..150, 0usize..300), 1..300)) {
            let mut b = vec![0u8; crate::format::LG_BLOCK_SIZE];
            init(&mut b, 0);
            let mut model: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
            for (op, i, len) in ops {
                let key = k(i);
                let val = vec![(i as u8) ^ (len as u8); len];
                match op {
                    0 | 1 => match find(&b, &key) {
                        None => {
                            if !fits_in_gap(&b, len) {
                                if free_total(&b) >= btree_item_bytes(len) { compact(&mut b); } else { continue; }
                            }
                            insert(&mut b, &key, 1, 0, &val).unwrap();
                            model.insert(key, val);
                        }
                        Some(o) => {
                            if !set_value(&mut b, o, 2, 0, &val) {
                                if free_total(&b) + btree_item_bytes(item_val_len(&b, o)) < btree_item_bytes(len) { continue; }
                                compact(&mut b);
                                let o = find(&b, &key).unwrap();
                                if !set_value(&mut b, o, 2, 0, &val) {
                                    delete(&mut b, o).unwrap();
                                    compact(&mut b);
                                    insert(&mut b, &key, 2, 0, &val).unwrap();
                                }
                            }
                            model.insert(key, val);
                        }
                    },
                    2 => if let Some(o) = find(&b, &key) { delete(&mut b, o).unwrap(); model.remove(&key); },
                    _ => compact(&mut b),
                }
                verify(&b, 0).map_err(TestCaseError::fail)?;
                prop_assert!(check_deep(&b).is_empty(), "{:?}", check_deep(&b));
                let got: Vec<(Key, Vec<u8>)> = items(&b).into_iter().map(|it| (it.key, it.val)).collect();
                let want: Vec<(Key, Vec<u8>)> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
                prop_assert_eq!(got, want);
            }
            let all = items(&b);
            rebuild(&mut b, 0, &all).unwrap();
            verify(&b, 0).unwrap();
            prop_assert!(check_deep(&b).is_empty());
            prop_assert_eq!(items(&b), all);
        }
    }

    proptest! {
        /// Damaged blocks: verify never panics, and a block it accepts can
        /// be read and modified without panics (errors are fine).
        #[test]
        fn damaged_blocks_never_panic(seed in any::<u64>(), flips in proptest::collection::vec((0usize..65536, any::<u8>()), 1..6)) {
            let mut b = vec![0u8; crate::format::LG_BLOCK_SIZE];
            init(&mut b, 0);
            for i in 0..40u64 {
                insert(&mut b, &k(i * 3 + seed % 3), i, 0, &vec![i as u8; (i * 7 % 100) as usize]).unwrap();
            }
            for (o, v) in flips {
                // mostly hit the header, items and hash table
                let o = match o % 3 { 0 => o, 1 => 32 + o % 2300, _ => 62512 + o % 3024 };
                b[o] = v;
            }
            if verify(&b, level(&b)).is_ok() {
                let _ = items(&b);
                let _ = check_deep(&b);
                for i in 0..130u64 {
                    let key = k(i);
                    match find(&b, &key) {
                        Some(o) if i % 2 == 0 => { let _ = delete(&mut b, o); }
                        Some(o) => { let _ = set_value(&mut b, o, 1, 0, &[1, 2, 3]); }
                        None if fits_in_gap(&b, 8) => { let _ = insert(&mut b, &key, 1, 0, &[0; 8]); }
                        None => compact(&mut b),
                    }
                }
            }
        }
    }

    #[test]
    fn ge_le_and_verify_rejects_damage() {
        let mut b = vec![0u8; crate::format::LG_BLOCK_SIZE];
        init(&mut b, 0);
        for i in [10u64, 20, 30] {
            insert(&mut b, &k(i), 1, 0, &[1, 2, 3]).unwrap();
        }
        assert_eq!(item_key(&b, find_ge(&b, &k(15)).unwrap()), k(20));
        assert_eq!(item_key(&b, find_le(&b, &k(15)).unwrap()), k(10));
        assert!(find_ge(&b, &k(31)).is_none());
        assert!(find_le(&b, &k(9)).is_none());
        let mut bad = b.clone();
        put_u16(&mut bad, off::MID_FREE_LEN, 65000);
        assert!(verify(&bad, 0).is_err());
        let mut bad = b.clone();
        put_u16(&mut bad, off::TOTAL_ITEM_BYTES, 1);
        assert!(verify(&bad, 0).is_err());
        let mut bad = b.clone();
        put_u16(&mut bad, index_off(1) + item_off::NODE_LEFT, 3);
        assert!(verify(&bad, 0).is_err());
        assert!(verify(&b, 1).is_err());
    }
}
